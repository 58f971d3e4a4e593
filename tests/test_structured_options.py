"""Every method on a structured model takes the same ``args``, ``kwargs`` and ``params``.

``kwargs`` are the model's keyword inputs and ``params`` replace its weights. The oracle
for ``kwargs`` is the same torch module exported with that input positional (``args``),
whose results the parity suites check against Captum, Zennit and TorchRay; the oracle for
``params`` is the module converted with those weights. Captum's ``GuidedBackprop`` with
``additional_forward_args`` anchors the keyword path to a reference directly.
"""

from __future__ import annotations

import inspect

import captum.attr as ca
import jax
import numpy as np
import pytest
import torch
from torch import nn

import jaxattr
from jaxattr import bridge
from tests.helpers import assert_close, normal

#: Public callables whose first argument is a model but which are builders, not methods.
BUILDERS = {
    "attach",
    "canonize",
    "incremental_plan",
    "layer_graph",
    "merge_batch_norm",
    "model_buffers",
    "neuron_model",
    "residual_sums",
}


class KwNet(nn.Module):
    """conv-relu-pool-dense-relu-dense whose hidden units are scaled by a keyword input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(4 * 4 * 4, 8)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x, scale):
        h = self.pool(self.relu1(self.conv(x))).flatten(1)
        return self.fc2(self.relu2(self.fc1(h) * scale))


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    m = KwNet().eval()
    x, s = normal((2, 3, 8, 8), 0), np.random.default_rng(1).uniform(0.5, 1.5, (2, 8))
    s = s.astype(np.float32)
    xt, st = torch.from_numpy(x), torch.from_numpy(s)
    m2 = KwNet().eval()
    m2.load_state_dict({k: v * 1.25 for k, v in m.state_dict().items()})
    return dict(
        torch=m,
        pos=bridge.from_torch(m, (xt, st)),
        kw=bridge.from_torch(m, xt, kwargs={"scale": st}),
        kw_scaled=bridge.from_torch(m2, xt, kwargs={"scale": st}),
        x=x,
        scale=s,
        dist=normal((3, 3, 8, 8), 2) * 0.1,
    )


def _eps():
    return jaxattr.composites.epsilon_plus_flat()


#: name -> call(method, model, x, dist, **options), one per structured rule/neuron/layer method
CALLS = {
    "lrp": lambda f, m, x, d, **o: f(m, x, target=1, composite=_eps(), **o),
    "guided_backprop": lambda f, m, x, d, **o: f(m, x, target=1, **o),
    "deconvolution": lambda f, m, x, d, **o: f(m, x, target=1, **o),
    "excitation_backprop": lambda f, m, x, d, **o: f(m, x, target=1, **o),
    "contrastive_excitation_backprop": lambda f, m, x, d, **o: f(
        m, x, target=1, contrast_layer="relu2", classifier_layer="fc2", **o
    ),
    "deep_lift": lambda f, m, x, d, **o: f(m, x, target=1, **o),
    "deep_lift_shap": lambda f, m, x, d, **o: f(m, x, baselines=d, target=1, **o),
    "layer_lrp": lambda f, m, x, d, **o: f(m, x, "fc1", target=1, composite=_eps(), **o),
    "layer_deep_lift": lambda f, m, x, d, **o: f(m, x, "fc1", target=1, **o),
    "layer_deep_lift_shap": lambda f, m, x, d, **o: f(m, x, "fc1", baselines=d, target=1, **o),
    "layer_feature_permutation": lambda f, m, x, d, **o: f(
        m, x, "fc1", key=jax.random.key(0), target=1, **o
    ),
    "neuron_guided_backprop": lambda f, m, x, d, **o: f(m, x, "fc1", 2, **o),
    "neuron_deconvolution": lambda f, m, x, d, **o: f(m, x, "fc1", 2, **o),
    "neuron_deep_lift": lambda f, m, x, d, **o: f(m, x, "fc1", 2, **o),
    "neuron_deep_lift_shap": lambda f, m, x, d, **o: f(m, x, "fc1", 2, baselines=d, **o),
    "neuron_feature_ablation": lambda f, m, x, d, **o: f(m, x, "relu1", (1, 3, 3), **o),
    "guided_grad_cam": lambda f, m, x, d, **o: f(m, x, "conv", target=1, **o),
}


def test_every_structured_method_takes_args_kwargs_params():
    """The contract over ``jaxattr.__all__``: a method whose first argument is a model
    takes ``args``, ``kwargs`` and ``params`` (the layer methods, the CAMs, the rule and
    neuron methods alike)."""
    missing = {}
    for name in jaxattr.__all__:
        f = getattr(jaxattr, name)
        if isinstance(f, type) or not callable(f) or name in BUILDERS:
            continue
        params = list(inspect.signature(f).parameters)
        if params[:1] == ["model"]:
            lacks = [p for p in ("args", "kwargs", "params") if p not in params]
            if lacks:
                missing[name] = lacks
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(CALLS))
def test_kwargs_are_the_models_keyword_inputs(nets, name):
    f = getattr(jaxattr, name)
    x, s, d = nets["x"], nets["scale"], nets["dist"]
    ours = CALLS[name](f, nets["kw"], x, d, kwargs={"scale": s})
    ref = CALLS[name](f, nets["pos"], x, d, args=(s,))
    assert_close(ours, ref, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_params_replace_the_models_weights(nets, name):
    f = getattr(jaxattr, name)
    x, s, d = nets["x"], nets["scale"], nets["dist"]
    scaled = jax.tree_util.tree_map(lambda a: a * 1.25, nets["kw"].params)
    ours = CALLS[name](f, nets["kw"], x, d, kwargs={"scale": s}, params=scaled)
    ref = CALLS[name](f, nets["kw_scaled"], x, d, kwargs={"scale": s})
    assert_close(ours, ref, rtol=1e-5)
    own = CALLS[name](f, nets["kw"], x, d, kwargs={"scale": s})
    assert not np.allclose(np.asarray(own), np.asarray(ref)), "the weights must matter here"


def test_keyword_inputs_match_captum_additional_forward_args(nets):
    m, x, s = nets["torch"], nets["x"], nets["scale"]
    ref = ca.GuidedBackprop(m).attribute(
        torch.from_numpy(x), target=1, additional_forward_args=(torch.from_numpy(s),)
    )
    assert_close(jaxattr.guided_backprop(nets["kw"], x, target=1, kwargs={"scale": s}), ref)


def test_kwargs_on_a_plain_function_is_a_named_error():
    fn = lambda x: jax.nn.relu(x).sum(-1, keepdims=True)  # noqa: E731
    with pytest.raises(TypeError, match="kwargs need a structured model"):
        jaxattr.deep_lift(fn, np.ones((1, 3), np.float32), kwargs={"mask": np.ones((1, 3))})


@pytest.mark.parametrize("name", ["lrp", "layer_deep_lift"])
def test_params_of_another_shape_are_a_named_error(nets, name):
    f = getattr(jaxattr, name)
    x, s, d = nets["x"], nets["scale"], nets["dist"]
    bad = dict(nets["kw"].params)
    key = next(iter(bad))
    bad[key] = bad[key][..., :1]
    with pytest.raises(ValueError, match=r"params\[.*\] must have shape"):
        CALLS[name](f, nets["kw"], x, d, kwargs={"scale": s}, params=bad)
    with pytest.raises(ValueError, match="params must have the structure"):
        CALLS[name](f, nets["kw"], x, d, kwargs={"scale": s}, params={"w": np.ones(2)})


@pytest.mark.parametrize(
    "name", sorted({*CALLS, "layer_activation", "layer_conductance", "grad_cam", "score_cam"})
)
def test_a_model_without_the_protocol_is_a_named_error(nets, name):
    """One prologue (``_core.prepare_structured``): a model without the protocol (params,
    layers, apply) is a ``TypeError`` before anything runs (the rule methods also take a
    plain function; this is neither)."""
    f = getattr(jaxattr, name)
    call = CALLS.get(name, lambda f, m, x, d, **o: f(m, x, "fc1", target=1, **o))
    if name == "layer_activation":
        call = lambda f, m, x, d, **o: f(m, x, "fc1", **o)  # noqa: E731

    class NoLayers:  # weights, but no layers and no apply
        params = {}

    with pytest.raises(TypeError, match="structured model"):
        call(f, NoLayers(), nets["x"], nets["dist"])
