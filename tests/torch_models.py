"""Reference models written in plain torch (torchvision is not available here).

Layer names follow torchvision exactly (``layer4.1.conv2``, ``features.3``,
``classifier.0``) so that tests can address layers the way users of torchvision would.
Transformers models are built from tiny configs with random weights; nothing is downloaded.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = [
    "seed_cnn",
    "resnet18",
    "vgg11",
    "mobilenet_small",
    "LSTMClassifier",
    "GRUClassifier",
    "randomize_norm_stats",
    "hf_bert",
    "hf_gpt2",
    "hf_vit",
    "hf_resnet",
    "hf_convnext",
]


def seed_cnn(num_classes: int = 10) -> nn.Sequential:
    """The seed CNN of the project, for 3x32x32 inputs.

    Example:
        >>> seed_cnn()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 32 * 32, 1024),
        nn.ReLU(),
        nn.Linear(1024, num_classes),
    )


def _block_base() -> type:
    """torchvision's BasicBlock when importable (the tests' stub), so that Zennit's ResNet
    canonizer, which isinstance-checks it, recognises these blocks; else nn.Module."""
    try:
        from torchvision.models.resnet import BasicBlock as TorchvisionBasicBlock

        return TorchvisionBasicBlock
    except Exception:  # noqa: BLE001 - no torchvision at all
        return nn.Module


class BasicBlock(_block_base()):
    """torchvision's ResNet BasicBlock (same attribute names, one shared ReLU)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision-style ResNet built from BasicBlocks."""

    def __init__(self, layers: list[int], num_classes: int = 1000, width_div: int = 1):
        super().__init__()
        w = [c // width_div for c in (64, 128, 256, 512)]
        self.inplanes = w[0]
        self.conv1 = nn.Conv2d(3, w[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(w[0], layers[0])
        self.layer2 = self._make_layer(w[1], layers[1], 2)
        self.layer3 = self._make_layer(w[2], layers[2], 2)
        self.layer4 = self._make_layer(w[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(w[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 with torchvision's module names.

    Example:
        >>> m = resnet18(num_classes=10).eval()
        >>> m(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """
    return ResNet([2, 2, 2, 2], num_classes)


def resnet_small(num_classes: int = 10) -> ResNet:
    """ResNet-18's module tree with one block per stage but two in ``layer3``, at a
    quarter of its widths (16 to 128 channels).

    Every structure of ResNet-18 (stem, max pool, downsampling and identity residual
    blocks, ``layerN.i.convK`` names up to ``layer3.1``) at about a tenth of the cost
    to compile and run: the default tests' ResNet; ResNet-18 itself runs in the model
    zoo tests (``tests/bridge/test_bridge_models.py``) and the slow ones.

    Example:
        >>> m = resnet_small().eval()
        >>> m(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """
    return ResNet([1, 1, 2, 1], num_classes, width_div=4)


class VGG(nn.Module):
    """torchvision-style VGG (``features.N``, ``avgpool``, ``classifier.N``)."""

    def __init__(self, cfg: list, num_classes: int = 1000, width_div: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                v = v // width_div
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        hidden = 4096 // width_div
        self.classifier = nn.Sequential(
            nn.Linear(c * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg11(num_classes: int = 1000, width_div: int = 1) -> VGG:
    """VGG-11 with torchvision's names; ``width_div`` shrinks channels for fast tests.

    Example:
        >>> vgg11(num_classes=10, width_div=8).eval()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return VGG(
        [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"], num_classes, width_div
    )


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(c // r, c, 1)
        self.scale = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int, se: bool):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = [
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Hardswish(),
        ]
        if se:
            layers.append(SqueezeExcite(mid))
        layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


def mobilenet_small(num_classes: int = 10) -> nn.Module:
    """A MobileNetV3-style net: depthwise conv, hardswish, relu6, squeeze-excite.

    Example:
        >>> mobilenet_small().eval()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()),
        InvertedResidual(16, 16, 2, 1, True),
        InvertedResidual(16, 24, 3, 2, False),
        InvertedResidual(24, 24, 3, 1, True),
        nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.Hardswish()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.Hardswish(),
        nn.Dropout(0.2),
        nn.Linear(32, num_classes),
    )


class LSTMClassifier(nn.Module):
    """Token ids -> embedding -> 2-layer bidirectional LSTM -> linear on the last step.

    Example:
        >>> LSTMClassifier().eval()(torch.randint(0, 50, (2, 7))).shape
        torch.Size([2, 3])
    """

    def __init__(self, vocab: int = 50, emb: int = 16, hidden: int = 24, num_classes: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb, padding_idx=0)
        self.lstm = nn.LSTM(emb, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(ids))
        return self.fc(out[:, -1])


class GRUClassifier(nn.Module):
    """Float sequences (N, T, F) -> 2-layer GRU -> linear on the mean over time.

    Example:
        >>> GRUClassifier().eval()(torch.randn(2, 7, 8)).shape
        torch.Size([2, 3])
    """

    def __init__(self, features: int = 8, hidden: int = 24, num_classes: int = 3):
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h = self.gru(x)
        return self.fc(out.mean(1) + h[-1])


def randomize_norm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running stats and affine params (makes tests strict).

    Example:
        >>> m = randomize_norm_stats(resnet18(10)).eval()
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


# ------------------------------------------------------------------ transformers (tiny)
class _no_torchvision_stub:
    """Hide a torchvision stub module (no ``__spec__``) while transformers looks for it.

    tests/conftest.py may install such a stub for zennit; transformers' availability check
    (``importlib.util.find_spec``) raises on a module whose ``__spec__`` is None.
    """

    def __enter__(self):
        import sys

        self.saved = {
            k: v
            for k, v in sys.modules.items()
            if k.split(".")[0] == "torchvision" and getattr(v, "__spec__", 1) is None
        }
        for k in self.saved:
            del sys.modules[k]

    def __exit__(self, *exc):
        import sys

        sys.modules.update(self.saved)


def hf_bert(num_layers: int = 2, hidden: int = 32, max_positions: int = 64):
    """A BERT-style encoder (random weights, eval mode)."""
    with _no_torchvision_stub():
        import transformers as T

        cfg = T.BertConfig(
            vocab_size=100,
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=2 if hidden <= 64 else hidden // 64,
            intermediate_size=(2 if hidden <= 64 else 4) * hidden,
            max_position_embeddings=max_positions,
        )
        return T.BertModel(cfg).eval()


def hf_bert_classifier(num_layers: int = 2, hidden: int = 32, num_labels: int = 3):
    """transformers' BertForSequenceClassification (random weights, eval mode)."""
    with _no_torchvision_stub():
        import transformers as T

        cfg = T.BertConfig(
            vocab_size=100,
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=64,
            num_labels=num_labels,
        )
        return T.BertForSequenceClassification(cfg).eval()


def hf_gpt2(num_layers: int = 2, hidden: int = 32):
    """A GPT-2-style decoder with LM head (random weights, eval mode, no cache)."""
    with _no_torchvision_stub():
        import transformers as T

        cfg = T.GPT2Config(
            vocab_size=100,
            n_embd=hidden,
            n_layer=num_layers,
            n_head=2,
            n_positions=64,
            use_cache=False,
            bos_token_id=0,
            eos_token_id=0,
        )
        return T.GPT2LMHeadModel(cfg).eval()


def hf_vit(num_layers: int = 2, hidden: int = 32, image: int = 32):
    """A ViT image classifier (random weights, eval mode)."""
    with _no_torchvision_stub():
        import transformers as T

        cfg = T.ViTConfig(
            image_size=image,
            patch_size=8,
            num_channels=3,
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            num_labels=5,
        )
        return T.ViTForImageClassification(cfg).eval()


def hf_resnet():
    """transformers' ResNet image classifier from a tiny config (random weights, eval)."""
    with _no_torchvision_stub():
        import transformers as T

        cfg = T.ResNetConfig(
            embedding_size=16,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            layer_type="basic",
            num_labels=5,
        )
        return randomize_norm_stats(T.ResNetForImageClassification(cfg)).eval()


def hf_convnext():
    """transformers' ConvNeXt image classifier from a tiny config (random weights, eval)."""
    with _no_torchvision_stub():
        import transformers as T

        cfg = T.ConvNextConfig(
            num_stages=2,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            num_labels=5,
            layer_scale_init_value=0.5,
        )
        return T.ConvNextForImageClassification(cfg).eval()


class SmallNet(nn.Module):
    """Every nonlinearity its own module, used once (as Captum's DeepLift/LRP require)."""

    def __init__(self, softmax: bool = False, max_pool: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2) if max_pool else nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d((2, 2))
        self.fc1 = nn.Linear(32, 16)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, 10)
        self.softmax = nn.Softmax(dim=1) if softmax else None

    def forward(self, x):
        h = self.pool2(self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x))))))
        y = self.fc2(self.relu3(self.fc1(torch.flatten(h, 1))))
        return self.softmax(y) if self.softmax is not None else y


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.a1 = nn.Linear(6, 8), nn.ELU()
        self.fc2, self.a2 = nn.Linear(8, 8), nn.Sigmoid()
        self.fc3, self.a3 = nn.Linear(8, 8), nn.Tanh()
        self.fc4, self.a4 = nn.Linear(8, 8), nn.Softplus()
        self.fc5, self.a5 = nn.Linear(8, 8), nn.LeakyReLU(0.1)
        self.fc6 = nn.Linear(8, 4)

    def forward(self, x):
        for i in range(1, 6):
            x = getattr(self, f"a{i}")(getattr(self, f"fc{i}")(x))
        return self.fc6(x)


class TinyNet(nn.Module):
    """conv-relu-conv-relu-avgpool-dense-relu-dense; ``inplace`` ReLUs as torchvision's."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(8 * 5 * 5, 16)
        self.relu3 = nn.ReLU(inplace=inplace)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        h = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc2(self.relu3(self.fc1(torch.flatten(h, 1))))


class TinyVggBn(nn.Module):
    """VGG-style features with batch norms (for VGGCanonizer / NamedMergeBatchNorm)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def tiny_bridged(cls, seed: int, shape: tuple, **kw):
    """``cls(**kw)`` with seeded weights and random norm statistics, bridged, and an input."""
    from jaxattr import bridge
    from tests.helpers import normal

    torch.manual_seed(seed)
    model = randomize_norm_stats(cls(**kw).eval(), seed)
    return model, bridge.from_torch(model, torch.randn(2, *shape[1:])), normal(shape, seed)
