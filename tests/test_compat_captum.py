"""The Captum front door: Captum's documented calls, unchanged, against Captum itself.

Every test makes the same call on ``captum.attr``'s class and on
``jaxattr.compat.captum``'s, on the same torch model, and compares the torch tensors they
return: ``max|ours - ref| / max|ref|`` is at most 1e-4 (float32 on both sides; observed
1e-7 to 5e-6, see the report printed with ``-s``). Random methods are compared on the
same draws: Captum's generators are replaced by the draws jaxattr makes from the key
passed with ``key=`` (the front door's extension), as in test_parity_captum_gradient.

The models are tiny (3x16x16 images, a 4+3-feature two-input MLP, a 12-token embedding
model); the front door converts each once per input signature for the whole module.
"""

from __future__ import annotations

import captum.attr as ca
import jax
import numpy as np
import pytest
import torch
import torch.nn as nn

import jaxattr
import jaxattr.compat as compat
from jaxattr.compat import captum as jc
from tests.helpers import Replay, assert_parity, samples_interleaved

RTOL = 1e-4


class Net(nn.Module):
    """Every nonlinearity its own module, used once (as Captum's DeepLift/LRP need);
    ``features`` is a container, as torchvision's models have."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 8, 3),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.fc1 = nn.Linear(32, 16)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.flatten(self.pool(self.features(x)), 1)
        return self.fc2(self.relu(self.fc1(h)))


class TwoInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(3, 6)
        self.relu = nn.ReLU()
        self.out = nn.Linear(6, 5)

    def forward(self, a, b, scale=1.0):
        return self.out(self.relu(self.fc1(a) + self.fc2(b))) * scale


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids, mask):
        h = (self.emb(ids) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.fc(torch.tanh(h))


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = Net().eval()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(3, 3, 16, 16, generator=g)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(2)
    model = TwoInput().eval()
    g = torch.Generator().manual_seed(3)
    return model, (torch.randn(3, 4, generator=g), torch.randn(3, 3, generator=g))


# --------------------------------------------------------------------------------------
# Gradient and path methods
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_baselines_and_delta(cnn, method):
    model, x = cnn
    base = torch.full((1, 3, 16, 16), 0.1)
    kw = dict(
        baselines=base,
        target=[2, 9, 4],
        n_steps=12,
        method=method,
        internal_batch_size=9,
        return_convergence_delta=True,
    )
    ours, delta = jc.IntegratedGradients(model).attribute(x, **kw)
    ref, ref_delta = ca.IntegratedGradients(model).attribute(x, **kw)
    assert_parity(f"IntegratedGradients({method})", ours, ref)
    assert delta.shape == ref_delta.shape == (3,)
    scale = float(model(x).detach().abs().max())  # the delta: a small difference of large sums
    np.testing.assert_allclose(delta.numpy(), ref_delta.detach().numpy(), atol=RTOL * scale)


def test_integrated_gradients_tuple_inputs_and_additional_args(mlp):
    """Tuple in, tuple out; a non-tensor additional argument (closed over at conversion)."""
    model, (a, b) = mlp
    kw = dict(
        baselines=(0.5, torch.zeros(1, 3)),
        target=[0, 4, 2],
        n_steps=20,
        additional_forward_args=(2.0,),
        return_convergence_delta=True,
    )
    ig = jc.IntegratedGradients(model, multiply_by_inputs=True)
    ours, delta = ig.attribute((a, b), **kw)
    ref, ref_delta = ca.IntegratedGradients(model).attribute((a, b), **kw)
    assert isinstance(ours, tuple) and len(ours) == 2
    assert_parity("IntegratedGradients(tuple, additional_forward_args)", ours, ref)
    np.testing.assert_allclose(delta.numpy(), ref_delta.detach().numpy(), atol=1e-5)
    assert ig.has_convergence_delta() and ig.multiplies_by_inputs


def test_saliency_input_x_gradient_and_a_function(cnn):
    model, x = cnn
    for abs_ in (True, False):
        assert_parity(
            f"Saliency(abs={abs_})",
            jc.Saliency(model).attribute(x, target=torch.tensor([1, 7, 3]), abs=abs_),
            ca.Saliency(model).attribute(x, target=torch.tensor([1, 7, 3]), abs=abs_),
        )
    assert_parity(
        "InputXGradient",
        jc.InputXGradient(model).attribute(x, target=5),
        ca.InputXGradient(model).attribute(x, target=5),
    )

    def probs(inp):  # a forward function of tensors, not a module
        return torch.softmax(model(inp), dim=1)

    assert_parity(
        "Saliency(function)",
        jc.Saliency(probs).attribute(x, target=2),
        ca.Saliency(probs).attribute(x, target=2),
    )


def test_noise_tunnel_smoothgrad(cnn, monkeypatch):
    model, x = cnn
    key = jax.random.key(3)
    noise = jaxattr.draw_noise(jax.random.split(key, 3)[0], x.numpy(), 0.3, 4)
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    ref = ca.NoiseTunnel(ca.Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=4, stdevs=0.3, target=4
    )
    monkeypatch.undo()
    ours = jc.NoiseTunnel(jc.Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=4, stdevs=0.3, target=4, key=key
    )
    assert_parity("NoiseTunnel(Saliency)", ours, ref, rtol=2e-4)
    # without a key the noise is seeded from torch's generator: repeatable
    torch.manual_seed(0)
    first = jc.NoiseTunnel(jc.Saliency(model)).attribute(x, nt_samples=4, stdevs=0.3, target=4)
    torch.manual_seed(0)
    again = jc.NoiseTunnel(jc.Saliency(model)).attribute(x, nt_samples=4, stdevs=0.3, target=4)
    torch.testing.assert_close(first, again)


def test_gradient_shap(cnn, monkeypatch):
    model, x = cnn
    dist = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    key = jax.random.key(5)
    noise, idx, alphas = jaxattr.gradient_shap_draws(key, x.numpy(), 5, 3, 0.1)
    monkeypatch.setattr(np.random, "choice", Replay([np.asarray(idx).T.reshape(-1)]))
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    monkeypatch.setattr(np.random, "uniform", Replay([np.asarray(alphas).T.reshape(-1)]))
    ref, ref_delta = ca.GradientShap(model).attribute(
        x, dist, n_samples=3, stdevs=0.1, target=1, return_convergence_delta=True
    )
    monkeypatch.undo()
    ours, delta = jc.GradientShap(model).attribute(
        x, dist, n_samples=3, stdevs=0.1, target=1, return_convergence_delta=True, key=key
    )
    assert_parity("GradientShap", ours, ref)
    assert delta.shape == ref_delta.shape == (9,)


# --------------------------------------------------------------------------------------
# Rule-based methods
# --------------------------------------------------------------------------------------


def test_deep_lift_and_deep_lift_shap(cnn):
    model, x = cnn
    base = torch.full((1, 3, 16, 16), -0.2)
    ours, delta = jc.DeepLift(model).attribute(
        x, base, target=[0, 5, 9], return_convergence_delta=True
    )
    ref, ref_delta = ca.DeepLift(model).attribute(
        x, base, target=[0, 5, 9], return_convergence_delta=True
    )
    assert_parity("DeepLift", ours, ref)
    np.testing.assert_allclose(delta.numpy(), ref_delta.detach().numpy(), atol=1e-4)
    dist = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    ours, delta = jc.DeepLiftShap(model).attribute(x, dist, target=2, return_convergence_delta=True)
    ref, ref_delta = ca.DeepLiftShap(model).attribute(
        x, dist, target=2, return_convergence_delta=True
    )
    assert_parity("DeepLiftShap", ours, ref)
    assert delta.shape == ref_delta.shape == (12,)


def test_guided_backprop_and_deconvolution(cnn):
    model, x = cnn
    assert_parity(
        "GuidedBackprop",
        jc.GuidedBackprop(model).attribute(x, target=[1, 2, 3]),
        ca.GuidedBackprop(model).attribute(x, target=[1, 2, 3]),
    )
    assert_parity(
        "Deconvolution",
        jc.Deconvolution(model).attribute(x, target=3),
        ca.Deconvolution(model).attribute(x, target=3),
    )


def test_lrp_with_delta_and_a_module_rule(cnn):
    from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule

    model, x = cnn
    ours, delta = jc.LRP(model).attribute(x, target=[3, 1, 8], return_convergence_delta=True)
    ref, ref_delta = ca.LRP(model).attribute(x, target=[3, 1, 8], return_convergence_delta=True)
    assert_parity("LRP", ours, ref)
    scale = float(model(x).detach().abs().max())
    np.testing.assert_allclose(delta.numpy(), ref_delta.detach().numpy(), atol=RTOL * scale)
    # a rule set on a module, as Captum's docs show (Captum deletes it after attribute)
    model.fc1.rule = EpsilonRule(epsilon=0.25)
    ours = jc.LRP(model).attribute(x, target=2)
    model.fc1.rule = EpsilonRule(epsilon=0.25)
    ref = ca.LRP(model).attribute(x, target=2)
    assert not hasattr(model.fc1, "rule")
    assert_parity("LRP(fc1.rule = EpsilonRule(0.25))", ours, ref)
    # GammaRule and Alpha1_Beta0_Rule are served (jaxattr.captum_gamma / captum_alpha1_beta0)
    model.features[0].rule = GammaRule()
    ours = jc.LRP(model).attribute(x, target=2)
    model.features[0].rule = GammaRule()
    assert_parity("LRP(features.0.rule = GammaRule())", ours, ca.LRP(model).attribute(x, target=2))

    class OwnRule(EpsilonRule):  # a rule of one's own: not translatable
        pass

    model.features[0].rule = OwnRule()
    try:
        with pytest.raises(compat.UnsupportedOptionError, match=r"features\.0\.rule = OwnRule"):
            jc.LRP(model).attribute(x, target=2)
    finally:
        del model.features[0].rule


def test_layer_lrp(cnn):
    model, x = cnn
    ours = jc.LayerLRP(model, model.fc1).attribute(x, target=4)
    ref = ca.LayerLRP(model, model.fc1).attribute(x, target=4)
    assert_parity("LayerLRP", ours, ref)


# --------------------------------------------------------------------------------------
# Perturbation methods
# --------------------------------------------------------------------------------------


def test_occlusion_sliding_windows_and_strides(cnn):
    model, x = cnn
    for strides, per_eval in [((3, 4, 4), 1), (2, 8)]:
        kw = dict(
            sliding_window_shapes=(3, 6, 6),
            strides=strides,
            target=[1, 7, 0],
            baselines=0.5,
            perturbations_per_eval=per_eval,
        )
        assert_parity(
            f"Occlusion(strides={strides})",
            jc.Occlusion(model).attribute(x, **kw),
            ca.Occlusion(model).attribute(x, **kw),
        )


def test_feature_ablation_feature_mask(cnn, mlp):
    model, x = cnn
    mask = (torch.arange(16)[:, None] // 4 * 4 + torch.arange(16)[None] // 4)[None, None]
    kw = dict(target=2, feature_mask=mask, baselines=0.1, perturbations_per_eval=4)
    assert_parity(
        "FeatureAblation(feature_mask)",
        jc.FeatureAblation(model).attribute(x, **kw),
        ca.FeatureAblation(model).attribute(x, **kw),
    )
    model2, inputs = mlp
    masks = (torch.tensor([[0, 0, 1, 2]]), torch.tensor([[3, 4, 4]]))
    kw = dict(target=[0, 4, 2], feature_mask=masks, baselines=(0.3, -0.1))
    assert_parity(
        "FeatureAblation(tuple)",
        jc.FeatureAblation(model2).attribute(inputs, **kw),
        ca.FeatureAblation(model2).attribute(inputs, **kw),
    )
    assert_parity(
        "ShapleyValues(tuple)",
        jc.ShapleyValues(model2).attribute(inputs, **kw),
        ca.ShapleyValues(model2).attribute(inputs, **kw),
    )


def test_shapley_value_sampling(mlp, monkeypatch):
    model, inputs = mlp
    key = jax.random.key(7)
    perms = np.asarray(jaxattr.shapley_permutations(key, 7, 4))
    monkeypatch.setattr(
        torch, "randperm", Replay([torch.from_numpy(p.astype(np.int64)) for p in perms])
    )
    ref = ca.ShapleyValueSampling(model).attribute(inputs, target=1, n_samples=4)
    monkeypatch.undo()
    ours = jc.ShapleyValueSampling(model).attribute(inputs, target=1, n_samples=4, key=key)
    assert_parity("ShapleyValueSampling", ours, ref)


def test_kernel_shap_and_lime_run_jaxattr_on_the_same_key(cnn):
    """Captum's default LIME/KernelSHAP surrogates need scikit-learn (not installed), so
    these are checked against jaxattr's own methods, which test_parity_captum_perturbation
    compares with Captum."""
    model, x = cnn
    mask = (torch.arange(16)[:, None] // 8 * 2 + torch.arange(16)[None] // 8)[None, None]
    key = jax.random.key(8)
    conv = jc.Saliency(model)._model.converted([x], ()).conv  # the front door's conversion
    ours = jc.KernelShap(model).attribute(x, target=1, feature_mask=mask, n_samples=20, key=key)
    ref = jaxattr.kernel_shap(
        conv, x.numpy(), key=key, target=1, feature_mask=mask.numpy(), n_samples=20
    )
    assert_parity("KernelShap vs jaxattr.kernel_shap", ours, torch.from_numpy(np.array(ref)))
    from captum._utils.models.linear_model import SkLearnLinearRegression

    lime = jc.Lime(model, interpretable_model=SkLearnLinearRegression())
    ours = lime.attribute(x, target=1, feature_mask=mask, n_samples=20, key=key)
    ref = jaxattr.lime(
        conv,
        x.numpy(),
        key=key,
        target=1,
        feature_mask=mask.numpy(),
        n_samples=20,
        interpretable_model="linear",
    )
    assert_parity(
        "Lime(SkLearnLinearRegression) vs jaxattr.lime",
        ours,
        torch.from_numpy(np.array(ref)),
        rtol=1e-3,
    )


# --------------------------------------------------------------------------------------
# Layer and neuron methods
# --------------------------------------------------------------------------------------


def test_layer_grad_cam_and_interpolate(cnn):
    model, x = cnn
    for relu in (False, True):  # a container: its output, as Captum's hook sees it
        ours = jc.LayerGradCam(model, model.features).attribute(
            x, target=[3, 4, 5], relu_attributions=relu
        )
        ref = ca.LayerGradCam(model, model.features).attribute(
            x, target=[3, 4, 5], relu_attributions=relu
        )
        assert_parity(f"LayerGradCam(relu_attributions={relu})", ours, ref)
    for mode in ("nearest", "bilinear"):
        assert_parity(
            f"LayerAttribution.interpolate({mode})",
            jc.LayerAttribution.interpolate(ours, (16, 16), mode),
            ca.LayerAttribution.interpolate(ref, (16, 16), mode),
        )
    assert_parity(
        "GuidedGradCam",
        jc.GuidedGradCam(model, model.features[3]).attribute(x, target=1),
        ca.GuidedGradCam(model, model.features[3]).attribute(x, target=1),
    )


def test_layer_activation_gradient_x_activation_conductance(cnn):
    model, x = cnn
    assert_parity(
        "LayerActivation",
        jc.LayerActivation(model, model.fc1).attribute(x),
        ca.LayerActivation(model, model.fc1).attribute(x),
    )
    layers = [model.features[3], model.fc1]
    assert_parity(
        "LayerGradientXActivation(list)",
        jc.LayerGradientXActivation(model, layers).attribute(x, target=[2, 7, 1]),
        ca.LayerGradientXActivation(model, layers).attribute(x, target=[2, 7, 1]),
    )
    kw = dict(target=2, n_steps=10, return_convergence_delta=True)
    ours, _ = jc.LayerConductance(model, model.features[3]).attribute(x, **kw)
    ref, _ = ca.LayerConductance(model, model.features[3]).attribute(x, **kw)
    assert_parity("LayerConductance", ours, ref)
    ours, delta = jc.LayerIntegratedGradients(model, model.fc1).attribute(x, **kw)
    ref, ref_delta = ca.LayerIntegratedGradients(model, model.fc1).attribute(x, **kw)
    assert_parity("LayerIntegratedGradients(fc1)", ours, ref)
    np.testing.assert_allclose(delta.numpy(), ref_delta.detach().numpy(), atol=1e-4)


def test_layer_integrated_gradients_on_an_embedding():
    """The tutorial pattern: a forward function, token ids, an embedding layer, the mask
    as an additional forward argument."""
    torch.manual_seed(9)
    model = TokenNet().eval()
    g = torch.Generator().manual_seed(10)
    ids = torch.randint(1, 50, (2, 12), generator=g)
    mask = torch.ones(2, 12)
    mask[1, 9:] = 0

    def forward(ids, mask):
        return model(ids, mask)

    kw = dict(
        baselines=torch.zeros_like(ids),
        additional_forward_args=(mask,),
        target=1,
        n_steps=20,
        return_convergence_delta=True,
    )
    ours, delta = jc.LayerIntegratedGradients(forward, model.emb).attribute(ids, **kw)
    ref, ref_delta = ca.LayerIntegratedGradients(forward, model.emb).attribute(ids, **kw)
    assert ours.shape == (2, 12, 8)
    assert_parity("LayerIntegratedGradients(embedding)", ours, ref)
    np.testing.assert_allclose(delta.numpy(), ref_delta.detach().numpy(), atol=1e-5)


def test_neuron_methods(cnn):
    model, x = cnn
    conv2 = model.features[3]
    assert_parity(
        "NeuronConductance",
        jc.NeuronConductance(model, conv2).attribute(x, (3, 1, 1), target=2, n_steps=10),
        ca.NeuronConductance(model, conv2).attribute(x, (3, 1, 1), target=2, n_steps=10),
    )
    assert_parity(
        "NeuronGradient",
        jc.NeuronGradient(model, model.fc1).attribute(x, 5),
        ca.NeuronGradient(model, model.fc1).attribute(x, 5),
    )
    assert_parity(
        "NeuronIntegratedGradients",
        jc.NeuronIntegratedGradients(model, conv2).attribute(
            x, (slice(0, 4), 1, slice(0, 2)), n_steps=8
        ),
        ca.NeuronIntegratedGradients(model, conv2).attribute(
            x, (slice(0, 4), 1, slice(0, 2)), n_steps=8
        ),
    )


def test_more_layer_and_neuron_classes(cnn):
    model, x = cnn
    conv2, base = model.features[3], torch.full((1, 3, 16, 16), -0.1)
    ours, _ = jc.LayerDeepLift(model, model.fc1).attribute(
        x, base, target=2, return_convergence_delta=True
    )
    ref, _ = ca.LayerDeepLift(model, model.fc1).attribute(
        x, base, target=2, return_convergence_delta=True
    )
    assert_parity("LayerDeepLift", ours, ref)
    assert_parity(
        "InternalInfluence",
        jc.InternalInfluence(model, conv2).attribute(x, target=2, n_steps=8),
        ca.InternalInfluence(model, conv2).attribute(x, target=2, n_steps=8),
    )
    layer_mask = (torch.arange(16) // 4)[None, :]
    assert_parity(
        "LayerFeatureAblation",
        jc.LayerFeatureAblation(model, model.fc1).attribute(x, target=2, layer_mask=layer_mask),
        ca.LayerFeatureAblation(model, model.fc1).attribute(x, target=2, layer_mask=layer_mask),
    )
    assert_parity(
        "NeuronGuidedBackprop",
        jc.NeuronGuidedBackprop(model, model.fc1).attribute(x, 3),
        ca.NeuronGuidedBackprop(model, model.fc1).attribute(x, 3),
    )
    assert_parity(
        "NeuronDeepLift",
        jc.NeuronDeepLift(model, model.fc1).attribute(x, 3, base),
        ca.NeuronDeepLift(model, model.fc1).attribute(x, 3, base),
    )
    mask = (torch.arange(16)[:, None] // 8 * 2 + torch.arange(16)[None] // 8)[None, None]
    assert_parity(
        "NeuronFeatureAblation",
        jc.NeuronFeatureAblation(model, model.fc1).attribute(x, 3, feature_mask=mask),
        ca.NeuronFeatureAblation(model, model.fc1).attribute(x, 3, feature_mask=mask),
    )


def test_layer_and_neuron_gradient_shap_with_additional_args(mlp, monkeypatch):
    model, (a, b) = mlp
    dist = torch.randn(4, 4, generator=torch.Generator().manual_seed(12))
    key = jax.random.key(13)
    kw = dict(n_samples=3, stdevs=0.1, additional_forward_args=(b,))
    for name, ours_cls, ref_cls, extra in [
        ("LayerGradientShap", jc.LayerGradientShap, ca.LayerGradientShap, {"target": 1}),
        ("NeuronGradientShap", jc.NeuronGradientShap, ca.NeuronGradientShap, {}),
    ]:
        args = (a, dist) if extra else (a, 2, dist)  # NeuronGradientShap: neuron_selector
        noise, idx, alphas = jaxattr.gradient_shap_draws(key, a.numpy(), 4, 3, 0.1)
        monkeypatch.setattr(np.random, "choice", Replay([np.asarray(idx).T.reshape(-1)]))
        monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
        monkeypatch.setattr(np.random, "uniform", Replay([np.asarray(alphas).T.reshape(-1)]))
        ref = ref_cls(model, model.fc1).attribute(*args, **kw, **extra)
        monkeypatch.undo()
        ours = ours_cls(model, model.fc1).attribute(*args, **kw, **extra, key=key)
        assert_parity(name, ours, ref)


# --------------------------------------------------------------------------------------
# Conversion cache, weights, errors
# --------------------------------------------------------------------------------------


def test_converted_once_new_weights_seen_replaced_module_reconverted():
    torch.manual_seed(11)
    model = TwoInput().eval()
    inputs = (torch.randn(4, 4), torch.randn(4, 3))
    sal = jc.Saliency(model)
    first = sal.attribute(inputs, target=1)
    n = compat.conversion_count()
    # another class on the same model, another batch size: the same conversion
    jc.InputXGradient(model).attribute((inputs[0][:2], inputs[1][:2]), target=1)
    assert compat.conversion_count() == n
    # an optimizer step changes the weights in place: seen, without converting again
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(*inputs)[:, 1].sum().backward()
    opt.step()
    after = sal.attribute(inputs, target=1)
    assert compat.conversion_count() == n
    assert not torch.allclose(first[0], after[0])
    assert_parity(
        "Saliency after an optimizer step", after, ca.Saliency(model).attribute(inputs, target=1)
    )
    # load_state_dict (copies into the same tensors)
    state = {k: v * 0.5 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert_parity(
        "Saliency after load_state_dict",
        sal.attribute(inputs, target=1),
        ca.Saliency(model).attribute(inputs, target=1),
    )
    assert compat.conversion_count() == n
    # a replaced sub-module is a new architecture: converted again
    model.relu = nn.Tanh()
    assert_parity(
        "Saliency after replacing a module",
        sal.attribute(inputs, target=1),
        ca.Saliency(model).attribute(inputs, target=1),
    )
    assert compat.conversion_count() == n + 1


def test_unsupported_options_raise_a_named_error(cnn):
    model, x = cnn
    err = compat.UnsupportedOptionError
    with pytest.raises(err, match="custom_attribution_func"):
        jc.DeepLift(model).attribute(x, target=1, custom_attribution_func=lambda *a: a)
    with pytest.raises(err, match="grad_kwargs"):
        jc.LayerGradCam(model, model.fc1).attribute(x, target=1, grad_kwargs={})
    with pytest.raises(err, match="similarity_func.*perturb_func"):
        jc.Lime(model, similarity_func=lambda *a: 1.0, perturb_func=lambda *a: None)
    with pytest.raises(err, match="perm_func"):
        jc.FeaturePermutation(model, perm_func=lambda x, m: x)
    with pytest.raises(err, match="a list of layers"):
        jc.LayerIntegratedGradients(model, [model.fc1, model.fc2])
    with pytest.raises(err, match="mask_type"):
        jc.FeatureAblation(model).attribute(x, target=1, mask_type="x")
    with pytest.raises(TypeError, match="jaxattr.compat.captum"):
        jc.NoiseTunnel(ca.Saliency(model))
    assert issubclass(err, NotImplementedError)


def test_import_jaxattr_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, jaxattr; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
