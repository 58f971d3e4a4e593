"""Converted models match torch: outputs, input gradients, parameter gradients."""

from __future__ import annotations

import torch
import torch_models as tm
from bridge_harness import check_model

torch.manual_seed(0)


def test_seed_cnn():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.seed_cnn().eval()
    conv = check_model(model, (torch.randn(3, 3, 32, 32),), name="seed_cnn")
    assert list(conv.layers) == [str(i) for i in range(8)]
    assert conv.layers["0"].kind == "conv" and conv.layers["7"].kind == "linear"


def test_resnet18():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.randomize_norm_stats(tm.resnet18(num_classes=10)).eval()
    conv = check_model(
        model, (torch.randn(3, 3, 64, 64),), name="resnet18", atol=2e-5, grad_atol=5e-5
    )
    names = list(conv.layers)
    for n in (
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1.0.conv1",
        "layer1.0.relu",
        "layer1.0.relu:1",
        "layer1.0.add",
        "layer2.0.downsample.0",
        "layer2.0.downsample.1",
        "layer4.1.conv2",
        "avgpool",
        "fc",
    ):
        assert n in names, n
    assert conv.layers["layer1.0.add"].kind == "add"
    assert conv.layers["layer4.1.bn2"].kind == "batch_norm"
    assert set(conv.layers["layer4.1.bn2"].param_names) == {
        "weight",
        "bias",
        "running_mean",
        "running_var",
    }
    assert "layer4.1.bn2.running_mean" in conv.params
    assert "layer4.1.bn2.num_batches_tracked" not in conv.params
    assert "layer4.1.bn2.num_batches_tracked" in conv.constants
    assert conv.layers["conv1"].attrs["stride"] == (2, 2)


def test_vgg11():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.vgg11(num_classes=10, width_div=8).eval()
    conv = check_model(model, (torch.randn(3, 3, 32, 32),), name="vgg11", atol=2e-5)
    assert "features.0" in conv.layers and "classifier.6" in conv.layers
    assert conv.layers["features.2"].kind == "max_pool"


def test_mobilenet():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.randomize_norm_stats(tm.mobilenet_small()).eval()
    conv = check_model(model, (torch.randn(3, 3, 32, 32),), name="mobilenet", atol=2e-5)
    kinds = {lay.op for lay in conv.layers.values()}
    assert {"Hardswish", "ReLU6", "Hardsigmoid", "Conv2d"} <= kinds
    dw = conv.layers["1.block.3"]
    assert dw.attrs["groups"] == 32


def test_lstm():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.LSTMClassifier().eval()
    ids = torch.randint(0, 50, (3, 7))
    ids[0, :2] = 0  # padding_idx rows get no gradient, as in torch
    conv = check_model(model, (ids,), name="lstm")
    assert conv.layers["lstm"].kind == "recurrent"


def test_gru():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.GRUClassifier().eval()
    conv = check_model(model, (torch.randn(3, 7, 8),), name="gru")
    assert conv.layers["gru"].kind == "recurrent"


def test_hf_bert_with_mask():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.hf_bert()
    ids = torch.randint(1, 100, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    conv = check_model(model, (ids,), {"attention_mask": mask}, name="bert", atol=2e-5)
    assert any(lay.kind == "attention" for lay in conv.layers.values())
    assert conv.layers["embeddings.word_embeddings"].kind == "embedding"


def test_hf_gpt2():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.hf_gpt2()
    conv = check_model(model, (torch.randint(0, 100, (3, 8)),), name="gpt2", atol=2e-5)
    assert any(lay.kind == "attention" for lay in conv.layers.values())


def test_hf_vit():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.hf_vit()
    check_model(model, (torch.randn(3, 3, 32, 32),), name="vit", atol=2e-5)


def test_hf_resnet():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.hf_resnet()
    check_model(model, (torch.randn(3, 3, 32, 32),), name="hf_resnet", atol=2e-5)


def test_hf_convnext():
    torch.manual_seed(0)  # fixed data: float32 ReLU-boundary sign flips are seed-dependent
    model = tm.hf_convnext()
    check_model(model, (torch.randn(3, 3, 32, 32),), name="hf_convnext", atol=2e-5)
