"""Parity of the rule-based methods with Captum on the same weights.

Captum's GuidedBackprop, Deconvolution, LRP, DeepLift and DeepLiftShap on small torch
nets converted with the torch bridge (SmallNet: every nonlinearity its own module, as
Captum's hooks require). Tolerances: float32 on both sides, ``rtol=1e-4`` with an absolute
floor of ``1e-4 * max|reference|``. Observed ``max|ours - ref| / max|ref|``: guided
backprop, deconvolution, LRP, DeepLift, DeepLiftShap ~2e-7 to 4e-7; DeepLift through
ELU/sigmoid/tanh/softplus/LeakyReLU ~1.3e-5; softmax ~3e-6.
"""

from __future__ import annotations

import captum.attr as ca
import numpy as np
import pytest
import torch
from torch import nn

import jaxattr
from jaxattr import bridge
from tests.helpers import assert_close, linear
from tests.helpers import normal as _x
from tests.torch_models import Activations, SmallNet


def test_guided_backprop_and_deconvolution_match_captum(small):
    model, conv, x = small
    ref = ca.GuidedBackprop(model).attribute(torch.from_numpy(x), target=[1, 4, 7])
    assert_close(jaxattr.guided_backprop(conv, x, target=[1, 4, 7]), ref)
    ref = ca.Deconvolution(model).attribute(torch.from_numpy(x), target=3)
    assert_close(jaxattr.deconvolution(conv, x, target=3), ref)


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_deep_lift_matches_captum(small_avg, multiply_by_inputs):
    model, conv, x = small_avg
    base = _x((1, 3, 16, 16), 3) * 0.1
    dl = ca.DeepLift(model, multiply_by_inputs=multiply_by_inputs)
    ref, ref_delta = dl.attribute(
        torch.from_numpy(x), torch.from_numpy(base), target=[0, 5, 9], return_convergence_delta=True
    )
    ours, delta = jaxattr.deep_lift(
        conv,
        x,
        baselines=base,
        target=[0, 5, 9],
        multiply_by_inputs=multiply_by_inputs,
        return_delta=True,
    )
    assert_close(ours, ref)
    if multiply_by_inputs:
        np.testing.assert_allclose(delta, ref_delta.detach().numpy(), atol=1e-4)


def test_deep_lift_activations_and_custom_func():
    torch.manual_seed(3)
    model = Activations().eval()
    conv = bridge.from_torch(model, torch.randn(2, 6))
    x, base = _x((4, 6), 4), _x((4, 6), 5)
    ref = ca.DeepLift(model).attribute(torch.from_numpy(x), torch.from_numpy(base), target=2)
    assert_close(jaxattr.deep_lift(conv, x, baselines=base, target=2), ref)
    func = lambda m, i, b: (m[0] * (i[0] - b[0]) ** 2,)  # noqa: E731
    ref = ca.DeepLift(model).attribute(
        torch.from_numpy(x), torch.from_numpy(base), target=1, custom_attribution_func=func
    )
    ours = jaxattr.deep_lift(
        conv, x, baselines=base, target=1, custom_attribution_func=lambda m, i, b: m * (i - b) ** 2
    )
    assert_close(ours, ref)


def test_deep_lift_softmax_matches_captum_for_one_example():
    torch.manual_seed(4)
    model = SmallNet(softmax=True, max_pool=False).eval()
    conv = bridge.from_torch(model, torch.randn(2, 3, 16, 16))
    x = _x((1, 3, 16, 16), 6)
    ref = ca.DeepLift(model).attribute(torch.from_numpy(x), target=4)
    assert_close(jaxattr.deep_lift(conv, x, target=4), ref, rtol=5e-4)


def test_deep_lift_max_pool_is_complete(small):
    """Captum's max-pool rule (its ``maxpool`` multipliers), here taking effect.

    With torch 2.13 Captum computes these multipliers but its result equals the plain
    max-pool gradient, and its own convergence delta is far from 0. jaxattr's result
    sums to ``f(x) - f(b)`` exactly, as DeepLIFT's rescale rule promises.
    """
    model, conv, x = small
    base = _x((1, 3, 16, 16), 3) * 0.1
    _, ref_delta = ca.DeepLift(model).attribute(
        torch.from_numpy(x), torch.from_numpy(base), target=2, return_convergence_delta=True
    )
    _, delta = jaxattr.deep_lift(conv, x, baselines=base, target=2, return_delta=True)
    scale = float(np.abs(model(torch.from_numpy(x)).detach().numpy()).max())
    np.testing.assert_allclose(delta, 0.0, atol=1e-4 * scale)
    assert np.abs(ref_delta.detach().numpy()).max() > 1e-3 * scale


def test_deep_lift_shap_matches_captum(small_avg):
    model, conv, x = small_avg
    dist = _x((4, 3, 16, 16), 7)
    ref, ref_delta = ca.DeepLiftShap(model).attribute(
        torch.from_numpy(x), torch.from_numpy(dist), target=[2, 2, 6], return_convergence_delta=True
    )
    ours, delta = jaxattr.deep_lift_shap(
        conv, x, baselines=dist, target=[2, 2, 6], return_delta=True
    )
    assert_close(ours, ref)
    assert delta.shape == (3, 4)
    np.testing.assert_allclose(np.asarray(delta).reshape(-1), ref_delta.detach().numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="more than one baseline"):
        jaxattr.deep_lift_shap(conv, x, baselines=dist[:1], target=0)


def test_lrp_matches_captum(small):
    model, conv, x = small
    ref, ref_delta = ca.LRP(model).attribute(
        torch.from_numpy(x), target=[3, 1, 8], return_convergence_delta=True
    )
    captum_rules = jaxattr.Composite(
        layer_map=(
            ("activation", jaxattr.pass_rule()),
            (("conv", "linear", "max_pool", "avg_pool", "batch_norm"), jaxattr.epsilon(1e-9)),
        )
    )
    ours, delta = jaxattr.lrp(
        conv, x, composite=captum_rules, target=[3, 1, 8], captum_normalize=True, return_delta=True
    )
    assert_close(ours, ref)
    scale = float(np.abs(model(torch.from_numpy(x)).detach().numpy()).max())
    np.testing.assert_allclose(delta, ref_delta.detach().numpy(), atol=1e-4 * scale)


def test_deep_lift_on_a_plain_jax_function_matches_captum():
    """No structure needed: jax.nn.relu calls and tanh/sigmoid are found in the jaxpr."""
    import jax
    import jax.numpy as jnp

    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Linear(6, 8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.Tanh(),
        nn.Linear(8, 8),
        nn.Sigmoid(),
        nn.Linear(8, 3),
    ).eval()
    ws = [
        (jnp.asarray(m.weight.detach().numpy()), jnp.asarray(m.bias.detach().numpy()))
        for m in model
        if isinstance(m, nn.Linear)
    ]

    def fn(x):
        h = jax.nn.relu(linear(x, *ws[0]))
        h = jnp.tanh(linear(h, *ws[1]))
        h = jax.nn.sigmoid(linear(h, *ws[2]))
        return linear(h, *ws[3])

    x, base = _x((4, 6), 8), _x((1, 6), 9)
    ref = ca.DeepLift(model).attribute(torch.from_numpy(x), torch.from_numpy(base), target=1)
    assert_close(jaxattr.deep_lift(fn, x, baselines=base, target=1), ref)
    dist = _x((3, 6), 10)
    ref = ca.DeepLiftShap(model).attribute(torch.from_numpy(x), torch.from_numpy(dist), target=2)
    assert_close(jaxattr.deep_lift_shap(fn, x, baselines=dist, target=2), ref)


# --------------------------------------------------------------------------------------
# Zennit: every built-in composite, the rules and canonizers not covered above, and the
# composite options (layer_map, first_map, zero_params, canonizers, name and mixed maps,
# the stabilizer's norm_scale and dim), each on a tiny model (fast to compile)
# --------------------------------------------------------------------------------------
