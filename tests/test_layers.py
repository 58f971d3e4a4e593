"""Layer, neuron and CAM methods against Captum on the same weights (bridged torch models).

Tolerance: float32 on both sides; relative error ``rtol=1e-4`` with an absolute floor of
``1e-4 * max|reference|`` (observed ~1e-6). Grad-CAM++ and Score-CAM, which Captum does not
have, are checked against slow references written from their papers' formulas.
"""

from __future__ import annotations

import captum.attr as ca
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jaxattr
from tests import torch_models as tm
from tests.helpers import Replay, assert_close, samples_interleaved

bridge = pytest.importorskip("jaxattr.bridge")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    m = tm.randomize_norm_stats(tm.resnet_small()).eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    return m, bridge.from_torch(m, torch.zeros(2, 3, 64, 64)), x, torch.from_numpy(x)


@pytest.fixture(scope="module")
def bert():
    """transformers' BertForSequenceClassification, converted as users do: no wrapper class,
    the ModelOutput's logits selected with ``output=``, the model's own layer names."""
    torch.manual_seed(0)
    m = tm.hf_bert_classifier()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    conv = bridge.from_torch(m, ids, kwargs={"attention_mask": mask}, output="logits")
    return m, conv, ids, mask


def test_layer_activation_and_input(resnet):
    m, conv, x, xt = resnet
    assert_close(
        jaxattr.layer_activation(conv, x, "layer3.1.conv2"),
        ca.LayerActivation(m, m.layer3[1].conv2).attribute(xt),
    )
    assert_close(
        jaxattr.layer_activation(conv, x, "layer3", attribute_to_layer_input=True),
        ca.LayerActivation(m, m.layer3).attribute(xt, attribute_to_layer_input=True),
    )


def test_layer_gradient_x_activation_several_layers(resnet):
    m, conv, x, xt = resnet
    names, mods = ["layer2", "layer4.0.conv1"], [m.layer2, m.layer4[0].conv1]
    ours = jaxattr.layer_gradient_x_activation(conv, x, names, target=[2, 7])
    ref = ca.LayerGradientXActivation(m, mods).attribute(xt, target=[2, 7])
    assert isinstance(ours, list) and len(ours) == 2
    for a, b in zip(ours, ref, strict=False):
        assert_close(a, b)


# to_input=True is slow: layer IG stays with False, and the layer-input tap with Captum's
# LayerActivation (test_layer_activation_and_input) and layer LRP (test_layers_rules).
@pytest.mark.parametrize("to_input", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_layer_integrated_gradients(resnet, to_input):
    m, conv, x, xt = resnet
    ours, delta = jaxattr.layer_integrated_gradients(
        conv,
        x,
        "layer3",
        target=2,
        n_steps=10,
        attribute_to_layer_input=to_input,
        return_delta=True,
        batch_size=4,
    )
    ref, ref_delta = ca.LayerIntegratedGradients(m, m.layer3).attribute(
        xt, target=2, n_steps=10, attribute_to_layer_input=to_input, return_convergence_delta=True
    )
    assert_close(ours, ref)
    np.testing.assert_allclose(delta, ref_delta.detach().numpy(), atol=1e-4)


def test_layer_integrated_gradients_bert_embeddings(bert):
    """Per-token attribution of a token model through its embedding layer."""
    m, conv, ids, mask = bert
    ours, delta = jaxattr.layer_integrated_gradients(
        conv,
        ids.numpy(),
        "bert.embeddings",
        baselines=0,
        kwargs={"attention_mask": mask.numpy()},
        target=1,
        n_steps=20,
        return_delta=True,
    )

    def forward(ids, mask):  # Captum's side: the logits of the same model
        return m(ids, attention_mask=mask).logits

    ref, ref_delta = ca.LayerIntegratedGradients(forward, m.bert.embeddings).attribute(
        ids,
        baselines=torch.zeros_like(ids),
        additional_forward_args=(mask,),
        target=1,
        n_steps=20,
        return_convergence_delta=True,
    )
    assert ours.shape == (2, 12, 32)
    assert_close(ours, ref)
    np.testing.assert_allclose(delta, ref_delta.detach().numpy(), atol=1e-5)
    per_token = np.asarray(ours).sum(-1)  # the usual per-token summary
    assert per_token.shape == (2, 12)


def test_layer_conductance_and_completeness(resnet):
    m, conv, x, xt = resnet
    ours, delta = jaxattr.layer_conductance(
        conv, x, "layer4.0.conv1", target=2, n_steps=10, return_delta=True, batch_size=3
    )
    ref = ca.LayerConductance(m, m.layer4[0].conv1).attribute(xt, target=2, n_steps=10)
    assert_close(ours, ref)
    # a whole layer's conductance adds up to f(x) - f(0) as the steps grow
    _, delta = jaxattr.layer_conductance(
        conv, x, "layer3", target=2, n_steps=64, method="riemann_trapezoid", return_delta=True
    )
    out = np.abs(np.asarray(conv(x))[:, 2]).max()
    assert np.abs(np.asarray(delta)).max() < 0.05 * out


def test_layer_ig_completeness_on_an_analytic_case(resnet):
    _, conv, x, _ = resnet
    _, delta = jaxattr.layer_integrated_gradients(
        conv, x, "layer4", target=5, n_steps=128, return_delta=True
    )
    assert np.abs(np.asarray(delta)).max() < 1e-3


def test_internal_influence(resnet):
    m, conv, x, xt = resnet
    assert_close(
        jaxattr.internal_influence(conv, x, "layer4.0.conv1", target=2, n_steps=10),
        ca.InternalInfluence(m, m.layer4[0].conv1).attribute(xt, target=2, n_steps=10),
    )


def test_layer_gradient_shap(resnet, monkeypatch):
    m, conv, x, xt = resnet
    dist = np.random.default_rng(3).normal(size=(4, 3, 64, 64)).astype(np.float32)
    key = jax.random.key(2)
    noise, idx, alphas = jaxattr.gradient_shap_draws(key, x, 4, 3, 0.1)
    monkeypatch.setattr(np.random, "choice", Replay([np.asarray(idx).T.reshape(-1)]))
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    monkeypatch.setattr(np.random, "uniform", Replay([np.asarray(alphas).T.reshape(-1)]))
    ref = ca.LayerGradientShap(m, m.layer4[0].conv1).attribute(
        xt, torch.from_numpy(dist), n_samples=3, stdevs=0.1, target=1
    )
    monkeypatch.undo()
    ours = jaxattr.layer_gradient_shap(
        conv, x, "layer4.0.conv1", baselines=dist, key=key, n_samples=3, stdevs=0.1, target=1
    )
    assert_close(ours, ref)


def test_layer_feature_ablation(resnet):
    m, conv, x, xt = resnet
    mask = np.arange(128).reshape(1, 128, 1, 1) // 16
    assert_close(
        jaxattr.layer_feature_ablation(conv, x, "layer4", target=2, layer_mask=mask, batch_size=3),
        ca.LayerFeatureAblation(m, m.layer4).attribute(
            xt, target=2, layer_mask=torch.from_numpy(mask)
        ),
    )
    # default: every unit alone (the 10 units of the last layer; Captum loops over them)
    assert_close(
        jaxattr.layer_feature_ablation(conv, x, "fc", target=2, layer_baselines=0.5),
        ca.LayerFeatureAblation(m, m.fc).attribute(xt, target=2, layer_baselines=0.5),
    )


# relu=True is slow: test_compat_captum checks LayerGradCam's relu_attributions both ways,
# and test_bridge_features::test_layer_tap_gradcam_matches_captum with relu on a ResNet.
@pytest.mark.parametrize("relu", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_grad_cam(resnet, relu):
    m, conv, x, xt = resnet
    ref = ca.LayerGradCam(m, m.layer4).attribute(xt, target=[3, 4], relu_attributions=relu)
    assert_close(jaxattr.grad_cam(conv, x, "layer4", target=[3, 4], relu_attributions=relu), ref)
    for mode in ("nearest", "bilinear"):
        up = ca.LayerAttribution.interpolate(ref, (64, 64), interpolate_mode=mode)
        assert_close(
            jaxattr.grad_cam(
                conv,
                x,
                "layer4",
                target=[3, 4],
                relu_attributions=relu,
                interpolate_to="input",
                interpolate_mode=mode,
            ),
            up,
        )
    ref = ca.LayerGradCam(m, m.layer3).attribute(xt, target=1, attr_dim_summation=False)
    assert_close(jaxattr.grad_cam(conv, x, "layer3", target=1, attr_dim_summation=False), ref)


def test_interpolate_matches_torch_nearest_non_integer_factor():
    a = np.random.default_rng(0).normal(size=(1, 2, 5, 7)).astype(np.float32)
    for mode in ("nearest", "bilinear"):
        ref = F.interpolate(torch.from_numpy(a), size=(11, 9), mode=mode)
        assert_close(jaxattr.interpolate(a, (11, 9), mode=mode), ref)


def test_neuron_methods(resnet):
    m, conv, x, xt = resnet
    lay, mod = "layer4.0.conv1", m.layer4[0].conv1
    for sel in [(3, 1, 1), (slice(0, 5), 1, slice(0, 2))]:
        assert_close(
            jaxattr.neuron_gradient(conv, x, lay, sel), ca.NeuronGradient(m, mod).attribute(xt, sel)
        )
    sel = lambda a: a[:, 7].sum((1, 2))  # noqa: E731 - a callable selector
    assert_close(
        jaxattr.neuron_gradient(conv, x, lay, sel), ca.NeuronGradient(m, mod).attribute(xt, sel)
    )
    # A neuron in layer2: for deep neurons of this random 64x64 ResNet, an integration point
    # can land within float rounding of a ReLU kink, where torch and XLA take different
    # branches (checked point by point for layer4.0.conv1: 9 of 10 points agree to 5e-8,
    # one differs by 4e-4); the shallower neuron's path crosses no such kink.
    assert_close(
        jaxattr.neuron_integrated_gradients(conv, x, "layer2.0.conv1", (3, 2, 2), n_steps=10),
        ca.NeuronIntegratedGradients(m, m.layer2[0].conv1).attribute(xt, (3, 2, 2), n_steps=10),
    )
    assert_close(
        jaxattr.neuron_conductance(conv, x, lay, (3, 1, 1), target=2, n_steps=10),
        ca.NeuronConductance(m, mod).attribute(xt, (3, 1, 1), target=2, n_steps=10),
    )
    assert_close(
        jaxattr.neuron_conductance(
            conv, x, lay, (slice(2, 6), 0, 1), target=2, n_steps=6, method="gausslegendre"
        ),
        ca.NeuronConductance(m, mod).attribute(
            xt, (slice(2, 6), 0, 1), target=2, n_steps=6, method="gausslegendre"
        ),
    )


def test_neuron_gradient_shap(resnet, monkeypatch):
    m, conv, x, xt = resnet
    dist = np.zeros((2, 3, 64, 64), np.float32)
    key = jax.random.key(4)
    noise, idx, alphas = jaxattr.gradient_shap_draws(key, x, 2, 2, 0.2)
    monkeypatch.setattr(np.random, "choice", Replay([np.asarray(idx).T.reshape(-1)]))
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    monkeypatch.setattr(np.random, "uniform", Replay([np.asarray(alphas).T.reshape(-1)]))
    ref = ca.NeuronGradientShap(m, m.fc).attribute(
        xt, 3, torch.from_numpy(dist), n_samples=2, stdevs=0.2
    )
    monkeypatch.undo()
    assert_close(
        jaxattr.neuron_gradient_shap(
            conv, x, "fc", 3, baselines=dist, key=key, n_samples=2, stdevs=0.2
        ),
        ref,
    )


@pytest.mark.slow  # for_each_target vs one target at a time: test_trust (IG), test_llm (LIG)
def test_for_each_target_is_one_vmap(resnet):
    _, conv, x, _ = resnet
    many = jaxattr.for_each_target(jaxattr.grad_cam, conv, x, range(10), layer="layer4")
    assert many.shape == (10, 2, 1, 2, 2)
    for t in (0, 7):
        np.testing.assert_allclose(
            many[t], jaxattr.grad_cam(conv, x, "layer4", target=t), rtol=1e-4, atol=1e-6
        )
    ig = jaxattr.for_each_target(jaxattr.integrated_gradients, conv, x, [1, 2], n_steps=4)
    np.testing.assert_allclose(
        ig[1], jaxattr.integrated_gradients(conv, x, target=2, n_steps=4), rtol=1e-4, atol=1e-6
    )


def test_for_each_neuron(resnet):
    _, conv, x, _ = resnet
    sels = [(0, 1, 1), (5, 0, 0), (9, 1, 0)]
    many = jaxattr.for_each_neuron(jaxattr.neuron_gradient, conv, x, "layer4.0.conv1", sels)
    assert many.shape == (3, *x.shape)
    for i, s in enumerate(sels):
        np.testing.assert_allclose(
            many[i], jaxattr.neuron_gradient(conv, x, "layer4.0.conv1", s), rtol=1e-4, atol=1e-7
        )


def _torch_layer_grad_and_act(m, module, xt, target):
    acts = {}
    h = module.register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
    out = m(xt)
    h.remove()
    a = acts["a"]
    (g,) = torch.autograd.grad(out[:, target].sum(), a)
    return a.detach().numpy(), g.numpy()


def test_grad_cam_plus_plus_against_the_paper(resnet):
    m, conv, x, xt = resnet
    a, g = _torch_layer_grad_and_act(m, m.layer3, xt, 4)
    n, c = a.shape[:2]
    ref = np.zeros((n, 1, *a.shape[2:]), np.float32)
    for i in range(n):  # Chattopadhyay et al. (2018), eqs. 19 and 10, slowly
        cam = np.zeros(a.shape[2:])
        for k in range(c):
            gk, ak = g[i, k], a[i, k]
            denom = 2 * gk**2 + ak.sum() * gk**3
            alpha = np.where(denom != 0, gk**2 / np.where(denom != 0, denom, 1), 0)
            cam += (alpha * np.maximum(gk, 0)).sum() * ak
        ref[i, 0] = np.maximum(cam, 0)
    assert_close(jaxattr.grad_cam_plus_plus(conv, x, "layer3", target=4), ref, rtol=1e-3)


def test_score_cam_against_the_paper():
    """Score-CAM on a small CNN (8 channels at the CAM layer: one masked pass each)."""
    from tests.torch_models import SmallNet

    torch.manual_seed(5)
    m = SmallNet(max_pool=False).eval()
    conv = bridge.from_torch(m, torch.zeros(2, 3, 16, 16))
    x = np.random.default_rng(5).normal(size=(2, 3, 16, 16)).astype(np.float32)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        acts = {}
        h = m.conv2.register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
        m(xt)
        h.remove()
        a = acts["a"]
        n, c = a.shape[:2]
        scores = torch.zeros(n, c)
        for k in range(c):  # Wang et al. (2020), Algorithm 1, one channel at a time
            up = F.interpolate(a[:, k : k + 1], size=(16, 16), mode="bilinear")
            lo = up.amin((1, 2, 3), keepdim=True)
            hi = up.amax((1, 2, 3), keepdim=True)
            mk = torch.where(hi > lo, (up - lo) / (hi - lo).clamp_min(1e-30), 0.0)
            scores[:, k] = m(xt * mk)[:, 6]
        w = torch.softmax(scores, dim=1)
        ref = torch.relu((w[:, :, None, None] * a).sum(1, keepdim=True))
    assert_close(jaxattr.score_cam(conv, x, "conv2", target=6, batch_size=3), ref, rtol=1e-3)


def test_linear_approx_and_gradient_to_saliency(resnet):
    m, conv, x, xt = resnet
    a, g = _torch_layer_grad_and_act(m, m.layer3, xt, 1)
    ref = (a * g).sum(1, keepdims=True)  # TorchRay's linear approximation
    assert_close(jaxattr.linear_approx(conv, x, "layer3", target=1), ref)
    grad = jaxattr.gradient(conv, x, target=1)
    np.testing.assert_allclose(
        jaxattr.gradient_to_saliency(grad), np.abs(np.asarray(grad)).max(1, keepdims=True)
    )


def test_probe(resnet):
    m, conv, x, xt = resnet
    a, g = _torch_layer_grad_and_act(m, m.layer2, xt, 0)
    p = jaxattr.probe(conv, x, ["layer2", "layer3"], target=0)
    assert_close(p["layer2"]["activation"], a)
    assert_close(p["layer2"]["gradient"], g)


def test_layer_methods_compose_with_jit(resnet):
    _, conv, x, _ = resnet
    eager = jaxattr.grad_cam(conv, x, "layer4", target=1)
    jitted = jax.jit(lambda z: jaxattr.grad_cam(conv, z, "layer4", target=1))(x)
    # float32 rounding: the jitted trace folds the weights in as constants, eager passes
    # them as arguments
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5 * float(np.abs(eager).max()))


def test_layer_errors(resnet):
    _, conv, x, _ = resnet
    with pytest.raises(KeyError, match="layer 'layer9' is not a layer of the model"):
        jaxattr.grad_cam(conv, x, "layer9", target=0)
    with pytest.raises(TypeError, match="structured model"):
        jaxattr.grad_cam(lambda z: z, x, "layer4", target=0)
    with pytest.raises(ValueError, match="must index every non-batch axis"):
        jaxattr.neuron_gradient(conv, x, "layer4.0.conv1", (1, 2))
    with pytest.raises(ValueError, match="out of range"):
        jaxattr.neuron_gradient(conv, x, "layer4.0.conv1", (1, 2, 2))
    with pytest.raises(ValueError, match="layer_mask must broadcast"):
        jaxattr.layer_feature_ablation(conv, x, "layer4", target=0, layer_mask=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="target .*out of range"):
        jaxattr.layer_integrated_gradients(conv, x, "layer4", target=10)
    with pytest.raises(ValueError, match="size must give one entry per spatial axis"):
        jaxattr.interpolate(jnp.ones((1, 1, 2, 2)), (4,))


# --------------------------------------------------------------------------------------
# Issue 15: Captum's remaining layer and neuron variants, callable baselines, LRP rules,
# on the small models of test_parity_captum_rules (every nonlinearity its own module)
# --------------------------------------------------------------------------------------

from captum.attr._utils.lrp_rules import (  # noqa: E402
    Alpha1_Beta0_Rule,
    EpsilonRule,
    GammaRule,
)

from tests.helpers import normal as _x  # noqa: E402


def _dist_fn_torch(inp):
    inp = inp[0] if isinstance(inp, tuple) else inp  # Captum's layer classes pass a tuple
    return torch.cat([inp * 0.0, inp * 0.5])


def _dist_fn_jax(x):
    return jnp.concatenate([x * 0.0, x * 0.5])


def test_layer_deep_lift_shap_matches_captum(small_avg):  # noqa: F811
    model, conv, x = small_avg
    xt = torch.from_numpy(x)
    dist = _x((4, 3, 16, 16), 7)
    for lay, mod, to_input in [("conv2", model.conv2, False), ("fc1", model.fc1, True)]:
        ref, ref_delta = ca.LayerDeepLiftShap(model, mod).attribute(
            xt,
            torch.from_numpy(dist),
            target=[2, 2, 6],
            return_convergence_delta=True,
            attribute_to_layer_input=to_input,
        )
        ours, delta = jaxattr.layer_deep_lift_shap(
            conv,
            x,
            lay,
            baselines=dist,
            target=[2, 2, 6],
            return_delta=True,
            attribute_to_layer_input=to_input,
        )
        assert_close(ours, ref)
        assert delta.shape == (3, 4)
        np.testing.assert_allclose(np.asarray(delta).reshape(-1), ref_delta.numpy(), atol=1e-5)
    # Captum's callable baselines (called with the inputs) and custom attribution function
    func_t = lambda m, i, b: (m[0] * (i[0] - b[0]) ** 2,)  # noqa: E731
    ref = ca.LayerDeepLiftShap(model, model.conv2, multiply_by_inputs=False).attribute(
        xt, _dist_fn_torch, target=1, custom_attribution_func=func_t
    )
    ours = jaxattr.layer_deep_lift_shap(
        conv,
        x,
        "conv2",
        baselines=_dist_fn_jax,
        target=1,
        multiply_by_inputs=False,
        custom_attribution_func=lambda m, i, b: m * (i - b) ** 2,
    )
    assert_close(ours, ref)
    with pytest.raises(ValueError, match="more than one baseline"):
        jaxattr.layer_deep_lift_shap(conv, x, "conv2", baselines=dist[:1], target=0)


def test_neuron_deep_lift_shap_and_deconvolution_match_captum(small_avg):  # noqa: F811
    model, conv, x = small_avg
    xt = torch.from_numpy(x)
    dist = _x((3, 3, 16, 16), 8)
    ref = ca.NeuronDeepLiftShap(model, model.conv2).attribute(xt, (2, 3, 3), torch.from_numpy(dist))
    assert_close(jaxattr.neuron_deep_lift_shap(conv, x, "conv2", (2, 3, 3), baselines=dist), ref)
    ref = ca.NeuronDeepLiftShap(model, model.fc1, multiply_by_inputs=False).attribute(
        xt, 5, lambda: torch.from_numpy(dist), attribute_to_neuron_input=True
    )
    ours = jaxattr.neuron_deep_lift_shap(
        conv,
        x,
        "fc1",
        5,
        baselines=lambda: dist,
        multiply_by_inputs=False,
        attribute_to_neuron_input=True,
    )
    assert_close(ours, ref)
    for lay, mod, sel in [("conv2", model.conv2, (1, 2, 2)), ("fc1", model.fc1, 3)]:
        ref = ca.NeuronDeconvolution(model, mod).attribute(xt, sel)
        assert_close(jaxattr.neuron_deconvolution(conv, x, lay, sel), ref)


def test_layer_deep_lift_custom_attribution_func_and_delta(small_avg):  # noqa: F811
    model, conv, x = small_avg
    xt = torch.from_numpy(x)
    base = _x((1, 3, 16, 16), 9) * 0.1
    for arity, ours_f, ref_f in [
        (1, lambda m: 2.0 * m, lambda m: (2.0 * m[0],)),
        (2, lambda m, i: m * i, lambda m, i: (m[0] * i[0],)),
        (3, lambda m, i, b: m * (i - b) ** 2, lambda m, i, b: (m[0] * (i[0] - b[0]) ** 2,)),
    ]:
        ref, ref_delta = ca.LayerDeepLift(model, model.fc1).attribute(
            xt,
            torch.from_numpy(base),
            target=[1, 0, 4],
            custom_attribution_func=ref_f,
            return_convergence_delta=True,
        )
        ours, delta = jaxattr.layer_deep_lift(
            conv,
            x,
            "fc1",
            baselines=base,
            target=[1, 0, 4],
            custom_attribution_func=ours_f,
            return_delta=True,
        )
        assert_close(ours, ref)
        np.testing.assert_allclose(delta, ref_delta.numpy(), atol=1e-4, err_msg=str(arity))
    ref = ca.LayerDeepLift(model, model.conv2).attribute(xt, torch.from_numpy(base), target=3)
    assert_close(jaxattr.layer_deep_lift(conv, x, "conv2", baselines=base, target=3), ref)
    with pytest.raises(TypeError, match="custom_attribution_func must be callable"):
        jaxattr.layer_deep_lift(conv, x, "fc1", baselines=base, target=0, custom_attribution_func=3)


def _captum_rules(model, rules):
    for name, rule in rules.items():
        getattr(model, name).rule = rule


CAPTUM_RULE_CASES = {
    "default": ({}, {}),
    "gamma": (
        {"conv1": GammaRule(), "conv2": GammaRule(gamma=0.5, set_bias_to_zero=True)},
        {"conv1": jaxattr.captum_gamma(), "conv2": jaxattr.captum_gamma(0.5, True)},
    ),
    "alpha1_beta0": (
        {
            "conv1": Alpha1_Beta0_Rule(),
            "fc1": Alpha1_Beta0_Rule(set_bias_to_zero=True),
            "pool2": EpsilonRule(epsilon=1e-3),
            "fc2": EpsilonRule(epsilon=0.1),
        },
        {
            "conv1": jaxattr.captum_alpha1_beta0(),
            "fc1": jaxattr.captum_alpha1_beta0(True),
            "pool2": jaxattr.epsilon(1e-3),
            "fc2": jaxattr.epsilon(0.1),
        },
    ),
}


@pytest.mark.parametrize("case", list(CAPTUM_RULE_CASES))
def test_lrp_captum_rules_match_captum(small, case):  # noqa: F811
    model, conv, x = small
    xt = torch.from_numpy(x)
    ref_rules, our_rules = CAPTUM_RULE_CASES[case]
    comp = jaxattr.captum_lrp_composite(name_map=tuple(our_rules.items()))
    _captum_rules(model, ref_rules)
    ref, ref_delta = ca.LRP(model).attribute(xt, target=[3, 1, 8], return_convergence_delta=True)
    ours, delta = jaxattr.lrp(
        conv, x, composite=comp, target=[3, 1, 8], captum_normalize=True, return_delta=True
    )
    assert_close(ours, ref)
    scale = float(np.abs(model(xt).detach().numpy()).max())
    np.testing.assert_allclose(delta, ref_delta.detach().numpy(), atol=1e-4 * scale)


def test_layer_lrp_with_and_without_delta_matches_captum(small):  # noqa: F811
    model, conv, x = small
    xt = torch.from_numpy(x)
    ref_rules, our_rules = CAPTUM_RULE_CASES["gamma"]
    comp = jaxattr.captum_lrp_composite(name_map=tuple(our_rules.items()))
    scale = float(np.abs(model(xt).detach().numpy()).max())
    _captum_rules(model, ref_rules)
    ref, ref_delta = ca.LayerLRP(model, model.conv2).attribute(
        xt, target=[3, 1, 8], return_convergence_delta=True
    )
    ours, delta = jaxattr.layer_lrp(
        conv, x, "conv2", composite=comp, target=[3, 1, 8], captum_normalize=True, return_delta=True
    )
    assert_close(ours, ref)
    np.testing.assert_allclose(delta, ref_delta.detach().numpy(), atol=1e-4 * scale)
    _captum_rules(model, ref_rules)
    ref = ca.LayerLRP(model, model.conv2).attribute(xt, target=5, attribute_to_layer_input=True)
    ours = jaxattr.layer_lrp(
        conv,
        x,
        "conv2",
        composite=comp,
        target=5,
        attribute_to_layer_input=True,
        captum_normalize=True,
    )
    assert_close(ours, ref)


def test_layer_lrp_delta_for_a_list_of_layers(small):  # noqa: F811
    model, conv, x = small
    xt = torch.from_numpy(x)
    ref, ref_delta = ca.LayerLRP(model, [model.conv1, model.fc1]).attribute(
        xt, target=2, return_convergence_delta=True
    )
    ours, delta = jaxattr.layer_lrp(
        conv,
        x,
        ["conv1", "fc1"],
        composite=jaxattr.captum_lrp_composite(),
        target=2,
        captum_normalize=True,
        return_delta=True,
    )
    scale = float(np.abs(model(xt).detach().numpy()).max())
    for o, r, d, rd in zip(ours, ref, delta, ref_delta, strict=True):
        assert_close(o, r)
        np.testing.assert_allclose(d, rd.detach().numpy(), atol=1e-4 * scale)


def test_layer_feature_permutation_matches_captum(small_avg, monkeypatch):  # noqa: F811
    model, conv, x = small_avg
    x6 = np.concatenate([x, x[::-1] * 0.5])  # N = 6
    key = jax.random.key(6)
    mask = (np.arange(16).reshape(1, 16) // 4).astype(np.int64)  # 4 groups of fc1's units
    perms = []
    for k in jax.random.split(key, 4):  # jaxattr.permute_feature's draw for each group
        p = np.asarray(jax.random.permutation(jax.random.fold_in(k, 0), 6))
        if (p == np.arange(6)).all():
            p = np.roll(np.arange(6), 1)
        perms.append(torch.from_numpy(p.astype(np.int64)))
    monkeypatch.setattr(torch, "randperm", Replay(perms))

    class Score(torch.nn.Module):  # Captum 0.9's LayerFeaturePermutation fails with a
        def __init__(self, net):  # target (it selects the column twice): one score each
            super().__init__()
            self.net = net

        def forward(self, a):
            return self.net(a)[:, 4]

    ref = ca.LayerFeaturePermutation(Score(model), model.fc1).attribute(
        torch.from_numpy(x6), layer_mask=torch.from_numpy(mask)
    )
    monkeypatch.undo()
    ours = jaxattr.layer_feature_permutation(conv, x6, "fc1", key=key, target=4, layer_mask=mask)
    assert_close(ours, ref)
    # default mask: each unit alone
    a = jaxattr.layer_feature_permutation(conv, x6, "fc1", key=key, target=1, batch_size=8)
    assert a.shape == (6, 16) and np.all(np.isfinite(a))


@pytest.mark.parametrize("which", ["layer", "neuron"])
def test_callable_baselines_in_layer_and_neuron_gradient_shap(small_avg, monkeypatch, which):  # noqa: F811
    model, conv, x = small_avg
    xt = torch.from_numpy(x)
    key = jax.random.key(8)
    m = 2 * x.shape[0]  # the callable returns two baselines per example
    noise, idx, alphas = jaxattr.gradient_shap_draws(key, x, m, 2, 0.1)
    cases = {
        "layer": (jaxattr.layer_gradient_shap, ca.LayerGradientShap, ("conv2",)),
        "neuron": (jaxattr.neuron_gradient_shap, ca.NeuronGradientShap, ("conv2", (1, 2, 3))),
    }
    for method, ref_cls, args in [cases[which]]:
        monkeypatch.setattr(np.random, "choice", Replay([np.asarray(idx).T.reshape(-1)]))
        monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
        monkeypatch.setattr(np.random, "uniform", Replay([np.asarray(alphas).T.reshape(-1)]))
        kw = {"target": 3} if ref_cls is ca.LayerGradientShap else {}
        if ref_cls is ca.LayerGradientShap:
            ref = ref_cls(model, model.conv2).attribute(
                xt, _dist_fn_torch, n_samples=2, stdevs=0.1, **kw
            )
        else:
            ref = ref_cls(model, model.conv2).attribute(
                xt, (1, 2, 3), _dist_fn_torch, n_samples=2, stdevs=0.1
            )
        monkeypatch.undo()
        ours = method(
            conv, x, *args, baselines=_dist_fn_jax, key=key, n_samples=2, stdevs=0.1, **kw
        )
        assert_close(ours, ref)


def test_a_layer_the_forward_never_runs_is_named(small):  # noqa: F811
    from jaxattr.compat.captum import LayerGradientXActivation

    model, conv, x = small
    with pytest.raises(
        KeyError,
        match=r"layer 'dropout' is not a layer of the model: no layer "
        r"or module of that name is reached by its forward",
    ):
        jaxattr.layer_activation(conv, x, "dropout")
    model.unused = torch.nn.Linear(2, 2)  # registered, never called by forward
    try:
        with pytest.raises(
            KeyError,
            match=r"layer 'unused' \(Linear\) is a sub-module of the "
            r"model, but the forward pass never reaches it",
        ):
            LayerGradientXActivation(model, model.unused).attribute(torch.from_numpy(x), target=0)
    finally:
        del model.unused


@pytest.mark.parametrize("which", ["deconv", "layer_dls", "neuron_dls", "permutation"])
def test_compat_front_door_new_classes_match_captum(small_avg, which):  # noqa: F811
    from jaxattr.compat import captum as cc

    model, conv, x = small_avg
    xt = torch.from_numpy(x)
    dist = torch.from_numpy(_x((2, 3, 16, 16), 10))
    if which == "deconv":
        ref = ca.NeuronDeconvolution(model, model.conv2).attribute(xt, (1, 2, 2))
        assert_close(cc.NeuronDeconvolution(model, model.conv2).attribute(xt, (1, 2, 2)), ref)
    elif which == "layer_dls":
        ref, ref_delta = ca.LayerDeepLiftShap(model, model.fc1).attribute(
            xt, dist, target=[1, 2, 3], return_convergence_delta=True
        )
        ours, delta = cc.LayerDeepLiftShap(model, model.fc1).attribute(
            xt, dist, target=[1, 2, 3], return_convergence_delta=True
        )
        assert_close(ours, ref)
        assert delta.shape == ref_delta.shape == (6,)
        np.testing.assert_allclose(delta.numpy(), ref_delta.numpy(), atol=1e-5)
    elif which == "neuron_dls":
        ref = ca.NeuronDeepLiftShap(model, model.fc1).attribute(xt, 2, lambda: dist)
        assert_close(cc.NeuronDeepLiftShap(model, model.fc1).attribute(xt, 2, lambda: dist), ref)
    else:
        key = jax.random.key(3)
        ours = cc.LayerFeaturePermutation(model, model.fc1).attribute(xt, target=4, key=key)
        assert_close(ours, jaxattr.layer_feature_permutation(conv, x, "fc1", key=key, target=4))


def test_compat_lrp_takes_captum_gamma_and_alpha1_beta0_rules(small):  # noqa: F811
    from jaxattr.compat import captum as cc

    model, _, x = small
    xt = torch.from_numpy(x)
    rules = {"conv1": GammaRule(gamma=0.5), "fc1": Alpha1_Beta0_Rule(set_bias_to_zero=True)}
    _captum_rules(model, rules)
    ref = ca.LRP(model).attribute(xt, target=2)
    _captum_rules(model, rules)
    try:
        ours = cc.LRP(model).attribute(xt, target=2)
    finally:
        for name in rules:
            if hasattr(getattr(model, name), "rule"):
                delattr(getattr(model, name), "rule")
    assert_close(ours, ref)
