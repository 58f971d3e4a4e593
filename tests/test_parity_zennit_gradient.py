"""Parity with Zennit's attributors (Gradient, SmoothGrad, IntegratedGradients).

Same weights, float32 on both sides; tolerance as in test_parity_captum_gradient (rtol 1e-4 with an
absolute floor of 1e-4 * max|reference|). SmoothGrad is compared on the same draws:
Zennit's ``torch.randn_like`` is replaced by jaxattr's standard-normal draws.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from zennit.attribution import Gradient, IntegratedGradients, SmoothGrad

import jaxattr
from tests import twins
from tests.helpers import Replay, assert_close


@pytest.fixture(scope="module")
def cnn():
    model = twins.seed_cnn(1)
    x = np.random.default_rng(10).normal(size=(2, 3, 32, 32)).astype(np.float32)
    return model, twins.seed_cnn_jax(model), x


def _zennit_one_hot_max(output):
    values, indices = output.max(1)
    return values[:, None] * torch.eye(output.shape[1])[indices]


def test_gradient_one_hot_constant(cnn):
    model, fn, x = cnn
    with Gradient(model) as attributor:
        _, ref = attributor(twins.to_torch(x), torch.eye(10)[[0, 0]])
    assert_close(jaxattr.gradient(fn, x, target=np.eye(10, dtype=np.float32)[[0]]), ref)


def test_gradient_callable_output_relevance(cnn):
    model, fn, x = cnn
    with Gradient(model) as attributor:
        _, ref = attributor(twins.to_torch(x), _zennit_one_hot_max)
    assert_close(jaxattr.gradient(fn, x, target=jaxattr.one_hot_max), ref)


def test_gradient_identity_output_relevance(cnn):
    model, fn, x = cnn
    with Gradient(model, attr_output=lambda y: y) as attributor:
        _, ref = attributor(twins.to_torch(x))
    assert_close(jaxattr.gradient(fn, x, target=lambda y: y), ref)


@pytest.mark.parametrize("n_iter", [1, 6])
def test_smoothgrad(cnn, n_iter, monkeypatch):
    model, fn, x = cnn
    key = jax.random.key(11)
    normal, _ = jaxattr.smoothgrad_draws(key, x, 0.2, n_iter)
    draws = [torch.from_numpy(np.asarray(z)) for z in np.asarray(normal)]
    import zennit.attribution as za

    monkeypatch.setattr(za.torch, "randn_like", Replay(draws))
    with SmoothGrad(model, noise_level=0.2, n_iter=n_iter) as attributor:
        _, ref = attributor(twins.to_torch(x), torch.eye(10)[[4, 4]])
    monkeypatch.undo()
    ours = jaxattr.smoothgrad(fn, x, key=key, noise_level=0.2, n_iter=n_iter, target=4)
    assert_close(ours, ref)
    if n_iter == 1:  # the clean sample alone is the plain gradient
        assert_close(ours, jaxattr.gradient(fn, x, target=4))


def test_integrated_gradients(cnn):
    model, fn, x = cnn
    with IntegratedGradients(model, n_iter=20) as attributor:
        _, ref = attributor(twins.to_torch(x), torch.eye(10)[[6, 6]])
    ours = jaxattr.integrated_gradients(fn, x, target=6, n_steps=20, method="riemann_right")
    assert_close(ours, ref)


# --------------------------------------------------------------------------------------
# The front door (jaxattr.compat.zennit) with Zennit's composite options, rule objects,
# canonizers and IntegratedGradients' baseline_fn, against Zennit on tiny models
# --------------------------------------------------------------------------------------

from torch import nn  # noqa: E402
from zennit import attribution as za  # noqa: E402
from zennit import canonizers as zcan  # noqa: E402
from zennit import composites as zc  # noqa: E402
from zennit import rules as zr  # noqa: E402
from zennit.core import Stabilizer as ZStabilizer  # noqa: E402
from zennit.torchvision import ResNetBottleneckCanonizer  # noqa: E402
from zennit.types import Linear as ZLinear  # noqa: E402

from jaxattr.compat import zennit as jz  # noqa: E402


def _both(model, x, ours_comp, ref_comp, target=(1, 4), n=5):
    out = torch.eye(n)[list(target)]
    with za.Gradient(model, ref_comp) as attributor:
        _, ref = attributor(twins.to_torch(x).requires_grad_(), out)
    with jz.Gradient(model, ours_comp) as attributor:
        _, ours = attributor(twins.to_torch(x), out)
    assert_close(ours.numpy(), ref)


FRONT_DOOR = {
    # Zennit's own rule objects in a stand-in's layer_map (parameters read back)
    "layer_map(zennit rules)": lambda: (
        jz.EpsilonPlus(layer_map=[(nn.Linear, zr.Epsilon(0.25))]),
        zc.EpsilonPlus(layer_map=[(nn.Linear, zr.Epsilon(0.25))]),
    ),
    "first_map(stand-in rules)": lambda: (
        jz.EpsilonPlusFlat(first_map=[(ZLinear, jz.WSquare(zero_params="bias"))]),
        zc.EpsilonPlusFlat(first_map=[(ZLinear, zr.WSquare(zero_params="bias"))]),
    ),
    # Zennit's own composite instances with any parameters
    "zennit EpsilonGammaBox(...)": lambda: (None, None),
    "zennit NameLayerMapComposite": lambda: (
        None,
        zc.NameLayerMapComposite(
            name_map=[(("fc2",), zr.Epsilon(0.5)), (("conv1",), zr.ZBox(-2.0, 2.5))],
            layer_map=[(nn.ReLU, zr.Pass()), (ZLinear, zr.AlphaBeta(1.0, 0.0))],
        ),
    ),
    "stand-in MixedComposite": lambda: (
        jz.MixedComposite(
            [jz.NameMapComposite([(("conv1",), jz.Gamma(0.5))]), jz.EpsilonPlusFlat()]
        ),
        zc.MixedComposite(
            [zc.NameMapComposite([(("conv1",), zr.Gamma(0.5))]), zc.EpsilonPlusFlat()]
        ),
    ),
    "stand-in SpecialFirstLayerMapComposite": lambda: (
        jz.SpecialFirstLayerMapComposite(
            [(nn.ReLU, jz.Pass()), (ZLinear, jz.ZPlus(stabilizer=jz.Stabilizer(0.2, clip=True)))],
            [(ZLinear, jz.Flat())],
        ),
        zc.SpecialFirstLayerMapComposite(
            [(nn.ReLU, zr.Pass()), (ZLinear, zr.ZPlus(stabilizer=ZStabilizer(0.2, clip=True)))],
            [(ZLinear, zr.Flat())],
        ),
    ),
    "stand-in BetaSmooth(3), DeconvNet": lambda: (jz.BetaSmooth(3.0), zc.BetaSmooth(3.0)),
}


@pytest.mark.parametrize("name", list(FRONT_DOOR))
def test_front_door_composite_forms_match_zennit(tiny, name):
    model, _, x = tiny
    ours, ref = FRONT_DOOR[name]()
    if name == "zennit EpsilonGammaBox(...)":
        stab = ZStabilizer(0.3, norm_scale=True)
        ours = ref = zc.EpsilonGammaBox(-2.0, 2.5, epsilon=stab, gamma=0.5, zero_params="bias")
    elif ours is None:
        ours = ref  # Zennit's own instance, given to the front door as is
    _both(model, x, ours, ref)
    if name.startswith("stand-in BetaSmooth"):
        _both(model, x, jz.DeconvNet(), zc.DeconvNet())


@pytest.mark.parametrize("which", ["named", "vgg"])
def test_front_door_canonizers_match_zennit(tiny_bn, which):
    model, _, x = tiny_bn
    named = [(("features.0",), "features.1"), (("features.3",), "features.4")]
    if which == "named":  # Zennit's own canonizer instance, inside Zennit's own composite
        ours = ref = zc.EpsilonAlpha2Beta1(canonizers=[zcan.NamedMergeBatchNorm(named)])
    else:
        ours = jz.EpsilonGammaBox(-3.0, 3.0, canonizers=[jz.VGGCanonizer()])
        ref = zc.EpsilonGammaBox(-3.0, 3.0, canonizers=[zcan.SequentialMergeBatchNorm()])
    _both(model, x, ours, ref, target=(0, 3))


def test_front_door_canonizer_stand_ins_are_jaxattrs():
    """Each canonizer stand-in (and Zennit's own instance) is the jaxattr canonizer that
    the parity tests of test_parity_zennit_rules check against Zennit."""
    named = [(("a",), "bn")]
    cases = [
        (jz.NamedMergeBatchNorm(named), (jaxattr.named_merge_batch_norm(named),)),
        (zcan.NamedMergeBatchNorm(named), (jaxattr.named_merge_batch_norm(named),)),
        (jz.ResNetBottleneckCanonizer(), (jaxattr.residual_sums,)),
        (ResNetBottleneckCanonizer(), (jaxattr.residual_sums,)),
        (jz.VGGCanonizer(), (jaxattr.merge_batch_norm,)),
        (
            zcan.CompositeCanonizer([zcan.SequentialMergeBatchNorm(), ResNetBottleneckCanonizer()]),
            (jaxattr.merge_batch_norm, jaxattr.residual_sums),
        ),
    ]
    for can, expected in cases:
        assert jz._canonizers([can], "test") == expected, can


def test_front_door_integrated_gradients_baseline_fn(tiny):
    """Zennit's IntegratedGradients takes ``baseline_fn`` (Zennit's SmoothGrad has no
    baseline: its noise is centred on the input)."""
    model, _, x = tiny
    out = torch.eye(5)[[2, 0]]
    fn = lambda t: torch.full_like(t, 0.25)  # noqa: E731
    with za.IntegratedGradients(model, baseline_fn=fn, n_iter=6) as attributor:
        _, ref = attributor(twins.to_torch(x), out)
    with jz.IntegratedGradients(model, baseline_fn=fn, n_iter=6) as attributor:
        _, ours = attributor(twins.to_torch(x), out)
    assert_close(ours.numpy(), ref)


def test_front_door_refuses_torch_callables(tiny):
    model, _, _ = tiny
    with pytest.raises(jz.UnsupportedOptionError, match="stabilizer"):
        jz.Gradient(model, zc.EpsilonPlus(epsilon=lambda z: z + 1e-3))
    with pytest.raises(jz.UnsupportedOptionError, match="layer_map"):
        jz.Gradient(model, jz.EpsilonPlus(layer_map=[(nn.Linear, None)]))
    with pytest.raises(jz.UnsupportedOptionError, match="canonizer AttributeCanonizer"):
        jz.Gradient(model, jz.EpsilonPlus(canonizers=[zcan.AttributeCanonizer(lambda n, m: None)]))
