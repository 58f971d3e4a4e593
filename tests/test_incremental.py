"""Incremental occlusion and feature ablation on bridged CNNs (jaxattr/_incremental.py).

Every incremental result is compared with the full computation (the bridged model on
every perturbed input, one batch, the attribution assembled here in NumPy) and, for
occlusion, with Captum's ``Occlusion`` on the same weights. "Exact" means equal to float32
rounding of the model's scores: the two paths compute the same values by different
summation orders (a convolution on a box and its halo instead of the whole map), so the
attributions, which are differences of scores, agree to a few float32 ulps of the scores:
``max|incremental - full| <= 1e-5 * max|f(x)|``.
"""

from __future__ import annotations

import captum.attr as ca
import numpy as np
import pytest
import torch
import torch.nn as nn

import jaxattr
from jaxattr import _caching, _incremental, bridge
from tests.helpers import assert_close


def _exact(ours, full, scale: float) -> None:
    """Equal to float32 rounding of scores of size ``scale``."""
    for o, f in zip(_leaves(ours), _leaves(full), strict=True):
        o, f = np.asarray(o, np.float64), np.asarray(f, np.float64)
        assert o.shape == f.shape, (o.shape, f.shape)
        err = float(np.abs(o - f).max())
        assert err <= 1e-5 * scale, f"max |incremental - full| = {err:.3g}, scores ~{scale:.3g}"
        assert float(np.abs(f).max()) > 100 * err  # not a vacuous comparison


def _leaves(a):
    return list(a) if isinstance(a, tuple) else [a]


class _Block(nn.Module):
    """ResNet's basic block (conv-bn-relu-conv-bn, residual add, optional downsample)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.down is None else self.down(x)))


class _ResLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1))
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 7, 2, 3, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer1 = _Block(8, 8)
        self.layer2 = _Block(8, 16, stride=2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem((x - self.mean) / 0.25))))


class _VGGLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(12, 12, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Linear(12 * 9, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class _Mixed(nn.Module):
    """Dilated, depthwise and strided convolutions, padding of every kind, channel
    concatenation, average pools (one whose padding is not counted: computed in full),
    leaky ReLU, hardswish, a PReLU."""

    def __init__(self):
        super().__init__()
        self.dil = nn.Conv2d(3, 6, 3, padding=2, dilation=2)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.side = nn.Conv2d(6, 4, 1)
        self.prelu = nn.PReLU(10)
        self.depthwise = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.down = nn.Conv2d(10, 8, 3, stride=2)
        self.pool2 = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.fc = nn.Linear(8 * 7 * 7, 3)

    def forward(self, x):
        a = self.pool(self.act(self.bn(self.dil(x))))
        a = self.prelu(torch.cat([a, nn.functional.hardswish(self.side(a))], 1))
        return self.fc(torch.flatten(self.pool2(self.down(self.depthwise(a))), 1))


class _FullyConv(nn.Module):
    """A map output (N, 2, 8, 8): the local nodes reach the output."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 2, 3, stride=2, padding=1)
        )

    def forward(self, x):
        return self.net(x)


class _BatchSoftmax(nn.Module):
    """Scores normalised over the batch: the full part must not mix perturbations."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean((2, 3))
        return torch.softmax(self.fc(h), dim=0)


class _Conv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(2, 4, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(4, 4, 3, padding=1),
            nn.Flatten(),
            nn.Linear(64, 3),
        )

    def forward(self, x):
        return self.net(x)


def _randomize(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


_MODELS: dict = {}


def _model(name: str, shape: tuple):
    if name not in _MODELS:
        torch.manual_seed(1)
        module = _randomize(
            {
                "res": _ResLike,
                "vgg": _VGGLike,
                "mixed": _Mixed,
                "fconv": _FullyConv,
                "bsoft": _BatchSoftmax,
                "conv1d": _Conv1d,
            }[name]()
        )
        x = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
        _MODELS[name] = (module, bridge.from_torch(module, torch.from_numpy(x)), x)
    return _MODELS[name]


def _scale(conv, x) -> float:
    return float(np.abs(_forward(conv, x)).max())


def _forward(conv, xs: np.ndarray) -> np.ndarray:
    """``conv`` on a big batch, in chunks of 64 (one compiled shape per model)."""
    out = []
    for i in range(0, len(xs), 64):
        part = xs[i : i + 64]
        pad = np.zeros((64 - len(part),) + part.shape[1:], part.dtype)
        out.append(np.asarray(conv(np.concatenate([part, pad])))[: len(part)])
    return np.concatenate(out)


def _full(conv, x, masks, baselines, target) -> np.ndarray:
    """The full computation: every perturbed input (x with ``masks[p]`` replaced by the
    baselines) through the whole model, one batch; per perturbation and example the
    score drop ``f(x) - f(x_p)``, (P, N)."""
    b = np.broadcast_to(baselines, x.shape)
    xs = np.concatenate([np.where(m, b, x) for m in masks])
    rows = np.arange(len(x))
    cols = np.broadcast_to(np.asarray(target), (len(x),))
    base = _forward(conv, x)[rows, cols]
    s = _forward(conv, xs).reshape(len(masks), len(x), -1)[:, rows, cols]
    return base[None] - s


def _full_occlusion(conv, x, window, strides, target, baselines) -> np.ndarray:
    """Captum's Occlusion by the full computation (windows at ``0, s, 2s, ...``, the last
    cut at the edge; each element averages the windows that cover it)."""
    dims = x.shape[1:]
    strides = (strides,) * len(dims) if isinstance(strides, int) else strides
    pos = [
        np.arange(-(-(n - w) // st) + 1) * st
        for n, w, st in zip(dims, window, strides, strict=True)
    ]
    masks = []
    for start in np.stack(np.meshgrid(*pos, indexing="ij"), -1).reshape(-1, len(dims)):
        m = np.zeros(dims, bool)
        m[tuple(slice(a, a + w) for a, w in zip(start, window, strict=True))] = True
        masks.append(m)
    masks = np.stack(masks)
    drop = _full(conv, x, masks, baselines, target)  # (P, N)
    total = np.einsum("pn,pd->nd", drop, masks.reshape(len(masks), -1).astype(np.float64))
    return (total / masks.sum(0).reshape(1, -1)).reshape(x.shape)


_CAPTUM_CASE = dict(target=[0, 2, 1], sliding_window_shapes=(1, 5, 5), strides=(1, 3, 3))


@pytest.mark.parametrize("name", ["res", "vgg", "mixed"])
def test_occlusion_matches_full_and_captum(name, monkeypatch):
    """Windows cut at the bottom and right borders, single-channel windows, one baseline
    per example, one target per example; on the ResNet-like model also the default
    (``incremental=None``) choosing the incremental path, and Captum."""
    module, conv, x = _model(name, (3, 3, 16, 16))
    baselines = np.random.default_rng(1).uniform(size=x.shape).astype(np.float32)
    calls = []
    real = _incremental.run_occlusion
    monkeypatch.setattr(_incremental, "run_occlusion", lambda *a: calls.append(1) or real(*a))
    ours = jaxattr.occlusion(conv, x, baselines=baselines, batch_size=27, **_CAPTUM_CASE)
    assert calls == [1]
    full = _full_occlusion(
        conv,
        x,
        _CAPTUM_CASE["sliding_window_shapes"],
        _CAPTUM_CASE["strides"],
        _CAPTUM_CASE["target"],
        baselines,
    )
    _exact(ours, full, _scale(conv, x))
    if name == "res":
        ref = ca.Occlusion(module).attribute(
            torch.from_numpy(x),
            perturbations_per_eval=16,
            baselines=torch.from_numpy(baselines),
            **_CAPTUM_CASE,
        )
        assert_close(ours, ref, rtol=1e-4)


def test_tuple_input_and_baselines_reuse_the_program():
    _, conv, x = _model("res", (3, 3, 16, 16))
    baselines = np.random.default_rng(1).uniform(size=x.shape).astype(np.float32)
    first = jaxattr.occlusion(conv, x, baselines=baselines, batch_size=27, **_CAPTUM_CASE)
    count = _caching.trace_count()
    case = dict(_CAPTUM_CASE, sliding_window_shapes=((1, 5, 5),), strides=((1, 3, 3),))
    ours = jaxattr.occlusion(conv, (x,), baselines=(baselines,), batch_size=27, **case)
    assert _caching.trace_count() == count  # the plan keys the compiled programs by value
    assert isinstance(ours, tuple) and len(ours) == 1
    np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(first))


@pytest.mark.parametrize(
    "name,shape,window,target,ppe",
    [
        ("fconv", (2, 3, 16, 16), (3, 3, 3), (1, 2, 5), 8),  # a map output: boxes written back
        ("bsoft", (3, 3, 12, 12), (3, 4, 4), 2, 1),  # batch softmax: the full part vmapped
        ("conv1d", (2, 2, 32), (2, 5), 1, 8),  # one spatial axis
    ],
)
def test_occlusion_other_graphs(name, shape, window, target, ppe):
    module, conv, x = _model(name, shape)
    kw = dict(target=target, sliding_window_shapes=window, strides=2)
    ours = jaxattr.occlusion(conv, x, incremental=True, **kw)
    ref = ca.Occlusion(module).attribute(torch.from_numpy(x), perturbations_per_eval=ppe, **kw)
    assert_close(ours, ref, rtol=1e-4)
    plan = jaxattr.incremental_plan(
        conv,
        x.shape,
        _incremental.occlusion_changed(np.zeros((1, len(shape) - 1), np.int64), window, x.shape),
    )
    assert plan.program.fold == (name != "bsoft")
    assert plan.local


def test_small_fallback_is_still_exact(monkeypatch):
    _, conv, x = _model("res", (3, 3, 16, 16))
    window, strides = (3, 4, 4), (3, 4, 4)
    grid = np.stack(np.meshgrid(np.arange(4) * 4, np.arange(4) * 4, indexing="ij"), -1)
    changed = _incremental.occlusion_changed(grid.reshape(-1, 2), (4, 4), x.shape)
    early = jaxattr.incremental_plan(conv, x.shape, changed, fallback=0.2)
    default = jaxattr.incremental_plan(conv, x.shape, changed)
    assert len(early.local) < len(default.local)
    assert early.flop_fraction > default.flop_fraction
    monkeypatch.setattr(_incremental, "FALLBACK", 0.2)
    ours = jaxattr.occlusion(
        conv, x, target=1, sliding_window_shapes=window, strides=strides, incremental=True
    )
    full = _full_occlusion(conv, x, window, strides, 1, 0.0)
    _exact(ours, full, _scale(conv, x))


def test_feature_ablation_superpixels():
    _, conv, x = _model("res", (3, 3, 16, 16))
    ids = (np.arange(16)[:, None] // 4) * 4 + np.arange(16)[None] // 4
    ids[5:7, 9:12] = 3  # a feature of two parts: its box spans both
    ours = jaxattr.feature_ablation(
        conv, x, target=[0, 3, 4], feature_mask=ids[None, None], baselines=0.1, incremental=True
    )
    masks = np.stack([np.broadcast_to(ids == f, x.shape[1:]) for f in range(16)])
    drop = _full(conv, x, masks, 0.1, [0, 3, 4])  # (F, N)
    full = np.broadcast_to(drop.T[:, ids][:, None], x.shape)
    _exact(ours, full, _scale(conv, x))


class _Residual(nn.Module):
    def __init__(self, c: int, k: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, padding=(k // 2) * dilation, dilation=dilation)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


class _Branches(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, 2, 1), nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        return torch.cat([self.a(x), torch.sigmoid(self.b(x))], 1)


def _random_layer(rng, c: int) -> tuple[nn.Module, int]:
    """One random spatial layer on ``c`` channels and its output channels."""
    kind = int(rng.integers(0, 11))
    pick = lambda *v: int(rng.choice(v))  # noqa: E731
    if kind == 0:
        k, o = pick(1, 2, 3, 5), int(rng.integers(2, 6))
        conv = nn.Conv2d(c, o, k, pick(1, 1, 2, 3), int(rng.integers(0, k)), pick(1, 1, 2))
        return conv, o
    if kind == 1:  # rectangular kernel and stride
        kh, kw, o = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(2, 6))
        return nn.Conv2d(c, o, (kh, kw), (pick(1, 2), 1), (kh // 2, 0)), o
    if kind in (2, 3):
        k, stride = pick(2, 3), pick(1, 2)
        pad, ceil = int(rng.integers(0, k // 2 + 1)), bool(rng.integers(0, 2))
        if kind == 2:
            return nn.MaxPool2d(k, stride, pad, ceil_mode=ceil), c
        return nn.AvgPool2d(k, stride, pad, ceil, count_include_pad=bool(rng.integers(0, 2))), c
    if kind == 4:
        acts = [nn.ReLU, nn.GELU, nn.Tanh, lambda: nn.LeakyReLU(0.2), nn.ELU, nn.SiLU]
        return acts[int(rng.integers(0, len(acts)))](), c
    if kind == 5:
        return nn.BatchNorm2d(c), c
    if kind == 6:
        return _Residual(c, pick(1, 3), pick(1, 2)), c
    if kind == 7:
        return _Branches(c), 5
    if kind == 8:
        return nn.Conv2d(c, c, 3, padding=1, groups=c), c
    if kind == 9:
        return nn.ConvTranspose2d(c, 3, 2, stride=2), 3
    return nn.Upsample(scale_factor=2, mode="nearest"), c


def _random_net(seed: int) -> tuple[nn.Module, tuple[int, int]]:
    """A random CNN of 2-6 spatial layers (convolutions of any kernel, stride, padding and
    dilation, pools with ceil mode, residual and concatenated branches, transposed
    convolutions, upsampling), then a linear head; and its input map size (9-23 a side)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    h, w = int(rng.integers(9, 24)), int(rng.integers(9, 24))
    layers, c = [], 3
    for _ in range(int(rng.integers(2, 7))):
        layer, c = _random_layer(rng, c)
        layers.append(layer)
    layers += [nn.AdaptiveAvgPool2d(2) if rng.integers(0, 2) else nn.Identity(), nn.Flatten()]
    body = _randomize(nn.Sequential(*layers))
    with torch.no_grad():
        width = body(torch.zeros(1, 3, h, w)).shape[1]
    return nn.Sequential(body, nn.Linear(width, 4)).eval(), (h, w)


# seeds whose plans compute, box by box, convolutions, both pools (ceil mode, padding),
# adaptive average pooling, batch norm, residual adds and concatenated branches, ReLU,
# ELU, LeakyReLU and sigmoid, with transposed convolutions and upsampling after them (a
# fuzz over 150 seeds of the same generator found no difference between the paths either)
@pytest.mark.parametrize("seed", [0, 9, 15, 21, 23, 24, 72])
def test_random_architectures_match_the_full_path(seed):
    module, (h, w) = _random_net(seed)
    rng = np.random.default_rng(1000 + seed)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    conv = bridge.from_torch(module, torch.from_numpy(x))
    window = (3, int(rng.integers(2, min(h, 8))), int(rng.integers(2, min(w, 8))))
    strides = (3, int(rng.integers(1, window[1] + 1)), int(rng.integers(1, window[2] + 1)))
    kw = dict(target=[1, 3], sliding_window_shapes=window, strides=strides, baselines=0.3)
    ours = jaxattr.occlusion(conv, x, incremental=True, **kw)
    full = jaxattr.occlusion(conv, x, incremental=False, **kw)
    scale = _scale(conv, x)
    _exact(ours, full, scale)
    ids = rng.integers(0, 5, size=(1, 1, h, w))
    kw = dict(target=2, feature_mask=ids)
    _exact(
        jaxattr.feature_ablation(conv, x, incremental=True, **kw),
        jaxattr.feature_ablation(conv, x, incremental=False, **kw),
        scale,
    )
    starts = np.zeros((1, 2), np.int64)
    plan = jaxattr.incremental_plan(
        conv, x.shape, _incremental.occlusion_changed(starts, window[1:], x.shape)
    )
    assert plan.local  # the plan computes something box by box


def test_auto_choice():
    _, conv, x = _model("res", (3, 3, 16, 16))
    ids = (np.arange(16)[:, None] // 4) * 4 + np.arange(16)[None] // 4
    compact = lambda: _incremental.feature_changed(ids[None, None], 16)  # noqa: E731
    assert _incremental.choose(conv, x, (), None, "m", compact) is not None
    scattered = np.random.default_rng(0).permutation(256).reshape(1, 1, 16, 16) % 16
    spread = lambda: _incremental.feature_changed(scattered, 16)  # noqa: E731
    assert _incremental.choose(conv, x, (), None, "m", spread) is None  # boxes: the image
    assert _incremental.choose(conv, x, (), True, "m", spread) is not None  # forced
    assert _incremental.choose(conv, x, (), False, "m", compact) is None
    assert _incremental.choose(lambda v: conv(v), x, (), None, "m", compact) is None
    assert _incremental.choose(conv, x, (x,), None, "m", compact) is None  # extra args
    assert _incremental.choose(conv, x.astype(np.int32), (), None, "m", compact) is None


def test_plan_boxes_and_describe():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, 2, 1),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 2),
    ).eval()
    conv = bridge.from_torch(net, torch.zeros(2, 3, 32, 32))
    changed = [[[0, 4], [10, 14]], [[28, 32], [28, 32]]]  # near a corner, the far corner
    plan = jaxattr.incremental_plan(conv, (1, 3, 32, 32), changed)
    # 3x3 convolution, padding 1: rows [0, 4) -> [0, 5) (clipped at the top), [28, 32) ->
    # [27, 32); columns [10, 14) -> [9, 15): boxes of 5 rows, 6 columns, the second shifted
    # inside the map
    assert plan.boxes["convolution"] == ((5, 6), (32, 32))
    np.testing.assert_array_equal(plan.starts["convolution"], [[0, 9], [27, 26]])
    # stride 2: rows [0, 3), [13, 16); columns [4, 8), [13, 16); then the 2x2 pool
    assert plan.boxes["convolution_1"] == ((3, 4), (16, 16))
    assert plan.boxes["max_pool2d"] == ((2, 2), (8, 8))
    assert plan.full == ("view", "linear")
    assert 0 < plan.flop_fraction < 0.5
    text = plan.describe()
    assert "convolution_1" in text and "full" in text and "multiply-adds" in text


def test_errors():
    _, conv, x = _model("res", (3, 3, 16, 16))
    with pytest.raises(ValueError, match="fn: incremental evaluation needs a bridged model"):
        jaxattr.occlusion(
            lambda v: conv(v), x, target=0, sliding_window_shapes=(3, 4, 4), incremental=True
        )
    with pytest.raises(ValueError, match="occlusion_fn"):
        jaxattr.occlusion(
            conv, x, target=0, window=4, incremental=True, occlusion_fn=jaxattr.occlude_independent
        )
    with pytest.raises(TypeError, match="incremental: expected None, True or False"):
        jaxattr.occlusion(conv, x, target=0, sliding_window_shapes=(3, 4, 4), incremental=1)
    with pytest.raises(ValueError, match=r"changed: expected integers of shape \(P, 2, 2\)"):
        jaxattr.incremental_plan(conv, x.shape, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="fallback: expected a fraction"):
        jaxattr.incremental_plan(conv, x.shape, np.zeros((1, 2, 2), int), fallback=0.0)
    with pytest.raises(ValueError, match="x_shape: expected"):
        jaxattr.incremental_plan(conv, (3, 16), np.zeros((1, 2, 2), int))
    with pytest.raises(TypeError, match="model: expected a bridged model"):
        jaxattr.incremental_plan(lambda v: v, x.shape, np.zeros((1, 2, 2), int))
