"""Bridge features: .pt2 round trip, errors, inputs, layer overrides and taps vs Captum."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_models as tm
from bridge_harness import assert_close, check_model

from jaxattr import bridge
from jaxattr.structure import LAYER_KINDS, StructuredModel


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = tm.randomize_norm_stats(tm.resnet_small()).eval()  # ResNet-18's blocks, fewer
    return model, bridge.from_torch(model, torch.randn(2, 3, 64, 64))


def test_structured_model_protocol(resnet):
    _, conv = resnet
    assert isinstance(conv, StructuredModel)
    assert all(lay.kind in LAYER_KINDS for lay in conv.layers.values())
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 64, 64)), jnp.float32)
    seen = []

    def identity(layer, fn, p, *xs):
        seen.append(layer.name)
        return fn(p, *xs)

    y0 = jax.jit(conv.fn)(conv.params, x)  # jit: eager runs compile every op (130 programs)
    y1 = jax.jit(lambda p, x: conv.apply(p, x, intercept=identity))(conv.params, x)
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(y1))
    assert seen == list(conv.layers)  # every layer once, in execution order
    assert conv.output_layer("layer3") == "layer3.1.relu:1"
    assert conv.module_layers("layer1.0")[:2] == ["layer1.0.conv1", "layer1.0.bn1"]


def test_batch1_example_stays_dynamic_and_vmap_extra_axis():
    torch.manual_seed(0)
    model = tm.seed_cnn().eval()
    conv = bridge.from_torch(model, torch.randn(1, 3, 32, 32))
    x = torch.randn(5, 3, 32, 32)
    assert_close(conv(x.numpy()), model(x))
    xs = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 3, 32, 32)), jnp.float32)
    ys = jax.vmap(conv.fn, in_axes=(None, 0))(conv.params, xs)
    assert ys.shape == (2, 4, 10)
    assert_close(ys[1], model(torch.from_numpy(np.asarray(xs[1]))))


def test_pt2_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tm.randomize_norm_stats(tm.mobilenet_small()).eval()
    x = torch.randn(3, 3, 32, 32)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "model.pt2"
    torch.export.save(ep, str(path))
    loaded = bridge.load(str(path))
    direct = bridge.from_torch(model, x)
    assert_close(loaded(x.numpy()), model(x), atol=2e-5)
    np.testing.assert_allclose(
        np.asarray(loaded(x.numpy())), np.asarray(direct(x.numpy())), rtol=1e-6, atol=1e-6
    )
    assert list(loaded.layers) == list(direct.layers)
    assert set(loaded.params) == set(direct.params)
    assert_close(loaded(x[:1].numpy()), model(x[:1]), atol=2e-5)  # batch still dynamic


class FFTNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return torch.fft.rfft(self.proj(x)).abs() + torch.special.bessel_j0(x).sum()


def test_unsupported_ops_listed_before_running():
    with pytest.raises(bridge.UnsupportedOpsError) as e:
        bridge.from_torch(FFTNet().eval(), torch.randn(2, 8))
    ops = e.value.ops
    assert any("fft" in op for op in ops), ops
    assert any("bessel_j0" in op for op in ops), ops
    assert "fft" in str(e.value) and "<root module>" in str(e.value)


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def test_data_dependent_control_flow_error():
    with pytest.raises(bridge.ExportError, match="data-dependent"):
        bridge.from_torch(Branchy(), torch.randn(2, 3))


def test_train_mode_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(bridge.TrainModeError, match=r"\.eval\(\)"):
        bridge.from_torch(model, torch.randn(2, 3, 8, 8))
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5))
    with pytest.raises(bridge.TrainModeError, match="Dropout"):
        bridge.from_torch(model, torch.randn(2, 3))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Conv1d(2, 4, 3, padding=1)

    def forward(self, x, y, *, scale=None):
        out = self.a(x)[:, :, None] * self.b(y)
        return out if scale is None else out * scale[:, None, None]


def test_several_positional_and_keyword_inputs():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    x, y, s = torch.randn(3, 6), torch.randn(3, 2, 5), torch.rand(3)
    conv = check_model(model, (x, y), {"scale": s}, name="two_inputs")
    assert conv.input_names == ("x", "y") and conv.kwarg_names == ("scale",)
    with pytest.raises(TypeError, match="keyword inputs"):
        conv(x.numpy(), y.numpy())


def test_int64_token_ids():
    torch.manual_seed(0)
    model = tm.LSTMClassifier().eval()
    ids = torch.randint(0, 50, (3, 7))
    conv = bridge.from_torch(model, ids)
    assert_close(conv(ids), model(ids))  # int64 torch tensor in, checked and cast
    assert_close(conv(ids.numpy()), model(ids))
    big = ids.numpy().copy()
    big[0, 0] = 2**40
    with pytest.raises(OverflowError, match="int32"):
        conv(big)


# ----------------------------------------------------------------- guided backprop
@jax.custom_vjp
def _guided_relu(x):
    return jax.nn.relu(x)


def _guided_fwd(x):
    return jax.nn.relu(x), x


def _guided_bwd(x, g):
    return (jax.nn.relu(jnp.where(x > 0, g, 0.0)),)


_guided_relu.defvjp(_guided_fwd, _guided_bwd)


def guided_intercept(layer, fn, params, *xs):
    if layer.kind == "activation" and layer.op in ("ReLU", "aten.relu.default"):
        return _guided_relu(xs[0])
    return fn(params, *xs)


def test_guided_backprop_matches_captum(resnet):
    from captum.attr import GuidedBackprop

    model, conv = resnet
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False  # Captum's backward hooks reject in-place outputs
    x = torch.randn(2, 3, 64, 64)
    target = [3, 7]
    want = GuidedBackprop(model).attribute(x, target=target)

    def score(xj):
        y = conv.apply(conv.params, xj, intercept=guided_intercept)
        return y[jnp.arange(2), jnp.asarray(target)].sum()

    got = jax.jit(jax.grad(score))(jnp.asarray(x.numpy()))
    assert_close(got, want, atol=5e-5)
    plain = jax.jit(
        jax.grad(lambda xj: conv.fn(conv.params, xj)[jnp.arange(2), jnp.asarray(target)].sum())
    )(jnp.asarray(x.numpy()))
    assert not np.allclose(np.asarray(plain), np.asarray(got))  # the override did something


# ----------------------------------------------------------------- layer tap: Grad-CAM
def test_layer_tap_gradcam_matches_captum(resnet):
    from captum.attr import LayerGradCam

    model, conv = resnet
    x = torch.randn(2, 3, 64, 64)
    target = [1, 4]
    want = LayerGradCam(model, model.layer4).attribute(x, target=target, relu_attributions=True)
    tap = conv.output_layer("layer4")
    xj = jnp.asarray(x.numpy())

    def run(eps):
        acts = {}

        def intercept(layer, fn, params, *xs):
            out = fn(params, *xs)
            if layer.name == tap:
                out = out + eps
                acts["a"] = out
            return out

        y = conv.apply(conv.params, xj, intercept=intercept)
        return y[jnp.arange(2), jnp.asarray(target)].sum(), acts["a"]

    shape = jax.eval_shape(lambda: run(jnp.zeros((2, 128, 2, 2)))[1]).shape
    grads, acts = jax.jit(jax.grad(run, has_aux=True))(jnp.zeros(shape))
    weights = grads.mean(axis=(2, 3), keepdims=True)
    cam = jax.nn.relu((weights * acts).sum(axis=1, keepdims=True))
    assert_close(cam, want, atol=5e-5)


class _TransposedWeights(nn.Module):
    """Linear layers written as products with a transposed weight."""

    def __init__(self, linear: nn.Linear, head: nn.Linear):
        super().__init__()
        self.w, self.b, self.w2 = linear.weight, linear.bias, head.weight

    def forward(self, x):
        h = torch.relu(torch.addmm(self.b, x, self.w.t()))
        return h @ self.w2.t()


class _Gram(nn.Module):
    def forward(self, x):
        return torch.relu(x) @ x.t()  # activations on both sides: stays a product


def test_transposed_weight_products_become_linear_layers(tmp_path):
    """``addmm(b, x, W.t())`` and ``x @ W.t()`` convert to ``linear`` (XLA's CPU backend
    copies a transposed dot operand on every call: 20x slower at batch 1 for a large
    weight); results, gradients and LRP equal those of the same model built from
    ``nn.Linear``; core-ATen-decomposed ``.pt2`` files (``permute`` + ``addmm``) too."""
    import jaxattr

    torch.manual_seed(0)
    lin, head = nn.Linear(12, 8), nn.Linear(8, 3, bias=False)
    m = _TransposedWeights(lin, head).eval()
    ref = nn.Sequential(lin, nn.ReLU(), head).eval()
    x = torch.randn(4, 12)
    conv = bridge.from_torch(m, x)
    keys = [i.key for i in conv._instrs]
    assert keys.count("aten.linear.default") == 2, keys
    assert "aten.addmm.default" not in keys
    assert_close(conv(x.numpy()), m(x))
    gram = bridge.from_torch(_Gram(), x)
    assert "aten.linear.default" not in [i.key for i in gram._instrs]
    assert [la.kind for la in gram.layers.values()] == ["activation", "mul"]
    assert_close(gram(x.numpy()), _Gram()(x))
    plain = bridge.from_torch(ref, x)
    comp = jaxattr.composites.epsilon_plus_flat()
    a = jaxattr.lrp(conv, x.numpy(), composite=comp, target=1)
    b = jaxattr.lrp(plain, x.numpy(), composite=comp, target=1)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    g = jaxattr.gradient(conv, x.numpy(), target=2)
    xt = x.clone().requires_grad_()
    m(xt)[:, 2].sum().backward()
    assert_close(g, xt.grad)
    path = tmp_path / "decomposed.pt2"
    torch.export.save(torch.export.export(ref, (x,)).run_decompositions(), path)
    loaded = bridge.load(path)
    keys = [i.key for i in loaded._instrs]
    assert keys.count("aten.linear.default") == 2 and "aten.addmm.default" not in keys, keys
    assert_close(loaded(x.numpy()), ref(x))
