"""Layer and neuron methods composed with the rule family and perturbations, against Captum.

Same models and tolerances as tests/test_parity_captum_rules.py (SmallNet: every nonlinearity its
own module, as Captum's LRP and DeepLift need; an average-pool variant for DeepLift, whose
Captum max-pool rule does not take effect with torch 2.13).
"""

from __future__ import annotations

import captum.attr as ca
import numpy as np
import torch

import jaxattr
from tests.helpers import assert_close

CAPTUM_RULES = jaxattr.Composite(
    layer_map=(
        ("activation", jaxattr.pass_rule()),
        (("conv", "linear", "max_pool", "avg_pool", "batch_norm"), jaxattr.epsilon(1e-9)),
    )
)


def test_layer_lrp_matches_captum(small):  # noqa: F811
    model, conv, x = small
    xt = torch.from_numpy(x)
    for to_input in (False, True):
        ref = ca.LayerLRP(model, model.conv2).attribute(
            xt, target=[3, 1, 8], attribute_to_layer_input=to_input
        )
        ours = jaxattr.layer_lrp(
            conv,
            x,
            "conv2",
            composite=CAPTUM_RULES,
            target=[3, 1, 8],
            attribute_to_layer_input=to_input,
            captum_normalize=True,
        )
        assert_close(ours, ref)


def test_layer_lrp_at_the_input_is_lrp(small):  # noqa: F811
    _, conv, x = small
    first = next(iter(conv.layers))
    ours = jaxattr.layer_lrp(
        conv, x, first, composite=jaxattr.epsilon_plus(), target=2, attribute_to_layer_input=True
    )
    np.testing.assert_allclose(
        ours, jaxattr.lrp(conv, x, composite=jaxattr.epsilon_plus(), target=2), rtol=1e-5, atol=1e-7
    )


def test_layer_deep_lift_matches_captum(small_avg):  # noqa: F811
    model, conv, x = small_avg
    base = np.full((1, 3, 16, 16), 0.1, np.float32)
    for lay, mod in [("conv2", model.conv2), ("fc1", model.fc1)]:
        for mult in (True, False):
            ref = ca.LayerDeepLift(model, mod, multiply_by_inputs=mult).attribute(
                torch.from_numpy(x), torch.from_numpy(base), target=[0, 5, 9]
            )
            ours = jaxattr.layer_deep_lift(
                conv, x, lay, baselines=base, target=[0, 5, 9], multiply_by_inputs=mult
            )
            assert_close(ours, ref)


def test_neuron_deep_lift_and_guided_backprop_match_captum(small_avg):  # noqa: F811
    model, conv, x = small_avg
    xt = torch.from_numpy(x)
    base = np.zeros((1, 3, 16, 16), np.float32)
    ref = ca.NeuronDeepLift(model, model.conv2).attribute(xt, (2, 3, 3), torch.from_numpy(base))
    assert_close(jaxattr.neuron_deep_lift(conv, x, "conv2", (2, 3, 3), baselines=base), ref)
    ref = ca.NeuronGuidedBackprop(model, model.fc1).attribute(xt, 4)
    assert_close(jaxattr.neuron_guided_backprop(conv, x, "fc1", 4), ref)


def test_neuron_feature_ablation_matches_captum(small_avg):  # noqa: F811
    model, conv, x = small_avg
    mask = np.arange(16).reshape(4, 4).repeat(4, 0).repeat(4, 1)[None, None]
    ref = ca.NeuronFeatureAblation(model, model.fc1).attribute(
        torch.from_numpy(x), 4, feature_mask=torch.from_numpy(mask)
    )
    assert_close(jaxattr.neuron_feature_ablation(conv, x, "fc1", 4, feature_mask=mask), ref)


def test_guided_grad_cam_matches_captum(small):  # noqa: F811
    model, conv, x = small
    for mode in ("nearest", "bilinear"):
        ref = ca.GuidedGradCam(model, model.conv2).attribute(
            torch.from_numpy(x), target=[1, 2, 3], interpolate_mode=mode
        )
        ours = jaxattr.guided_grad_cam(conv, x, "conv2", target=[1, 2, 3], interpolate_mode=mode)
        assert_close(ours, ref)
