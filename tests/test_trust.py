"""No silent wrong answers: models are arguments, inputs are validated, memory is bounded.

Every public method that explains a model is run twice on one model object, the second
time after ``model.params = new``: the attribution must change (the weights are traced
arguments, not constants baked into a compiled program) and nothing may recompile.
"""

from __future__ import annotations

import contextlib
import inspect
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr
from jaxattr import _taps
from jaxattr.flax import from_linen

KEY = jax.random.key(0)


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(4, (3, 3), name="conv2")(x))
        x = x.mean(axis=(1, 2))
        return nn.Dense(3, name="fc")(x)


def _tiny():
    net = _Tiny()
    variables = net.init(jax.random.key(1), jnp.ones((1, 6, 6, 2)))
    return from_linen(net, variables, jnp.ones((1, 6, 6, 2)))


X = jax.random.uniform(jax.random.key(2), (2, 6, 6, 2))
ATTR = jnp.ones_like(X)
MASK = jnp.arange(72).reshape(6, 6, 2) // 18


def _perturb(key, x):
    eps = 0.1 * jax.random.normal(key, x.shape)
    return eps, x - eps


def _nt(model, x, **kw):
    return jaxattr.noise_tunnel(jaxattr.saliency, nt_samples=2)(model, x, key=KEY, **kw)


def _fusion(model, x, **kw):
    fused = jaxattr.fusion_grad(jaxattr.saliency, n=2, m=1)
    return fused(model.apply, model.params, x, key=KEY, **kw)


def _lb_perturb(key, x0):  # lime_base's functions: module level, so keys stay stable
    return jax.random.bernoulli(key, 0.5, (1, 4)).astype(jnp.float32)


def _lb_from(z, x0):
    return x0 * z[0][MASK][None]


def _lb_sim(x0, xp, z):
    return jnp.exp(-jnp.sum((x0 - xp) ** 2))


SEGMENTS = (jnp.arange(36).reshape(6, 6) // 9).astype(jnp.int32)

#: How to call each method on the tiny model; anything not named here gets defaults by
#: parameter name (``target``, ``key``, ``layer``, ...). Keys must cover jaxattr.__all__.
SPECIAL = {
    "noise_tunnel": _nt,
    "fusion_grad": _fusion,
    "occlusion": lambda m, x, **kw: jaxattr.occlusion(m, x, sliding_window_shapes=(2, 2, 2), **kw),
    "tiled_occlusion": lambda m, x, **kw: jaxattr.tiled_occlusion(m, x, k=2, window=2, **kw),
    "shapley_values": lambda m, x, **kw: jaxattr.shapley_values(m, x, feature_mask=MASK, **kw),
    "feature_permutation": lambda m, x, **kw: jaxattr.feature_permutation(m, x, key=KEY, **kw),
    "rise": lambda m, x, **kw: jaxattr.rise(m, x, key=KEY, num_masks=4, num_cells=2, **kw),
    # with the history: on this 6x2 "spatial" input TorchRay's first step empties the mask
    # (the area regulariser wins) whatever the weights; the rewards show the new weights
    "extremal_perturbation": lambda m, x, **kw: jaxattr.extremal_perturbation(
        m, x, max_iter=2, return_history=True, **kw
    ),
    "fgsm": lambda m, x, **kw: jaxattr.fgsm(m, x, epsilon=0.1, **kw),
    "pgd": lambda m, x, **kw: jaxattr.pgd(m, x, radius=0.1, step_size=0.05, step_num=2, **kw),
    "contrastive_excitation_backprop": lambda m, x, **kw: jaxattr.contrastive_excitation_backprop(
        m, x, contrast_layer="conv2", classifier_layer="fc", **kw
    ),
    "deep_lift_shap": lambda m, x, **kw: jaxattr.deep_lift_shap(m, x, baselines=X * 0.5, **kw),
    "gradient_shap": lambda m, x, **kw: jaxattr.gradient_shap(
        m, x, baselines=X * 0.5, key=KEY, **kw
    ),
    "layer_gradient_shap": lambda m, x, **kw: jaxattr.layer_gradient_shap(
        m, x, "conv2", baselines=X * 0.5, key=KEY, **kw
    ),
    "layer_deep_lift_shap": lambda m, x, **kw: jaxattr.layer_deep_lift_shap(
        m, x, "conv2", baselines=X * 0.5, **kw
    ),
    "neuron_deep_lift_shap": lambda m, x, **kw: jaxattr.neuron_deep_lift_shap(
        m, x, "conv2", (0, 1, 2), baselines=X * 0.5
    ),
    "neuron_gradient_shap": lambda m, x, **kw: jaxattr.neuron_gradient_shap(
        m, x, "conv2", (0, 1, 2), baselines=X * 0.5, key=KEY
    ),
    "lime": lambda m, x, **kw: jaxattr.lime(m, x, key=KEY, feature_mask=MASK, n_samples=32, **kw),
    "for_each_target": lambda m, x, **kw: jaxattr.for_each_target(jaxattr.saliency, m, x, [0, 1]),
    "for_each_neuron": lambda m, x, **kw: jaxattr.for_each_neuron(
        jaxattr.neuron_gradient, m, x, "conv2", [(0, 1, 2), (2, 2, 1)]
    ),
    "probe": lambda m, x, **kw: jaxattr.probe(m, x, "conv2", **kw),
    "layer_activation": lambda m, x, **kw: jaxattr.layer_activation(m, x, "conv2"),
    "neuron_model": lambda m, x, **kw: jaxattr.gradient(
        jaxattr.neuron_model(m, "conv2", (0, 1, 2)), x
    ),
    "lime_base": lambda m, x, **kw: jaxattr.lime_base(
        m,
        x,
        key=KEY,
        n_samples=16,
        interpretable_model="linear",
        similarity_func=_lb_sim,
        perturb_func=_lb_perturb,
        from_interp_rep_transform=_lb_from,
        **kw,
    ),
    "xrai": lambda m, x, **kw: jaxattr.xrai(
        m,
        x,
        segments=SEGMENTS,
        channel_axis=-1,
        extra_parameters=jaxattr.XRAIParameters(steps=4, experimental_params={"min_pixel_diff": 2}),
        **kw,
    ),
    "interpolate": None,  # a resizing helper, no model
    "completeness": lambda m, x, **kw: jaxattr.completeness(m, x, ATTR, **kw),
    "deletion_curve": lambda m, x, **kw: jaxattr.deletion_curve(m, x, ATTR, n_steps=3, **kw).auc,
    "insertion_curve": lambda m, x, **kw: jaxattr.insertion_curve(m, x, ATTR, n_steps=3, **kw).auc,
    "infidelity": lambda m, x, **kw: jaxattr.infidelity(
        m, _perturb, x, ATTR, key=KEY, n_perturb_samples=2, **kw
    ),
    "sensitivity_max": lambda m, x, **kw: jaxattr.sensitivity_max(
        jaxattr.saliency, m, x, key=KEY, n_perturb_samples=2, **kw
    ),
}
#: Public functions that take no model.
NOT_METHODS = {
    "draw_noise", "fusion_grad_draws", "gradient_shap_draws", "occlude_independent",
    "permute_feature", "pgd_random_start", "smoothgrad_draws", "uniform_perturb", "interpolate",
    "xrai_segments",
}  # fmt: skip


def _default_call(method):
    params = inspect.signature(method).parameters
    defaults = {"layer": "conv2", "neuron_selector": (0, 1, 2), "key": KEY,
                "composite": jaxattr.epsilon_plus(), "channel_axis": -1}  # fmt: skip

    def call(model, x, **kw):
        pos, extra = [], {}
        for name, value in defaults.items():
            if name not in params or params[name].default is not inspect.Parameter.empty:
                if name not in params or name in ("layer", "neuron_selector"):
                    continue
            if params[name].kind is inspect.Parameter.KEYWORD_ONLY:
                extra[name] = value
            else:
                pos.append(value)
        if "target" not in params:
            kw.pop("target", None)
        return method(model, x, *pos, **extra, **kw)

    return call


def _methods():
    out = {}
    for name in jaxattr.__all__:
        obj = getattr(jaxattr, name)
        if not inspect.isfunction(obj) or name in NOT_METHODS:
            continue
        if not {"x", "method"} & set(inspect.signature(obj).parameters):
            continue
        if name in ("noise_tunnel", "fusion_grad") or "x" in inspect.signature(obj).parameters:
            out[name] = SPECIAL.get(name) or _default_call(obj)
    return out


METHODS = _methods()


def test_every_model_taking_public_function_is_covered():
    names = set(METHODS)
    assert {"saliency", "grad_cam", "neuron_conductance", "layer_lrp", "lrp"} <= names
    assert {"noise_tunnel", "fusion_grad", "completeness"} <= names
    assert len(names) >= 58, sorted(names)


@contextlib.contextmanager
def count_compiles():
    """Count XLA compilations (jax_log_compiles) inside the block."""
    messages: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling "):
                messages.append(record.getMessage())

    handler = Handler(level=logging.DEBUG)
    logger = logging.getLogger("jax")
    old_level, old_flag = logger.level, jax.config.jax_log_compiles
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    jax.config.update("jax_log_compiles", True)
    try:
        yield messages
    finally:
        jax.config.update("jax_log_compiles", old_flag)
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


def _leaves(tree):
    return [np.asarray(a, np.float32) for a in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_new_weights_change_the_attribution_without_recompiling(tiny, name):
    call = METHODS[name]
    old = tiny.params
    new = jax.tree_util.tree_map(lambda a: a * 1.7 - 0.05, old)
    try:
        tiny.params = old
        a = call(tiny, X, target=0)
        tiny.params = new
        b_first = call(tiny, X, target=0)  # eager helpers of the new call are warm now
        tiny.params = old
        call(tiny, X, target=0)
        tiny.params = new
        with count_compiles() as compiled:
            b = call(tiny, X, target=0)
    finally:
        tiny.params = old
    assert not compiled, compiled
    for lb, lf in zip(_leaves(b), _leaves(b_first), strict=True):
        np.testing.assert_array_equal(lb, lf)
    assert any(not np.allclose(la, lb) for la, lb in zip(_leaves(a), _leaves(b), strict=True))


def test_model_as_an_argument_of_jit(tiny):
    eager = jaxattr.saliency(tiny, X, target=1)
    jitted = jax.jit(lambda m, x: jaxattr.saliency(m, x, target=1))(tiny, X)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    lrp = jax.jit(lambda m, x: jaxattr.lrp(m, x, composite=jaxattr.epsilon_plus(), target=1))
    np.testing.assert_allclose(
        lrp(tiny, X), jaxattr.lrp(tiny, X, composite=jaxattr.epsilon_plus(), target=1), rtol=1e-5
    )


def test_partial_with_params_is_seen_and_plain_closure_is_fixed():
    """The documented contract for plain functions."""
    apply = lambda p, x: x @ p  # noqa: E731
    x = jnp.ones((1, 2))
    w1, w2 = jnp.array([[1.0], [2.0]]), jnp.array([[3.0], [5.0]])
    a = jaxattr.gradient(jax.tree_util.Partial(apply, w1), x, target=0)
    b = jaxattr.gradient(jax.tree_util.Partial(apply, w2), x, target=0)
    np.testing.assert_array_equal(a, [[1.0, 2.0]])
    np.testing.assert_array_equal(b, [[3.0, 5.0]])


def test_static_options_are_keyed_by_type_and_value():
    fn = lambda x: x @ jnp.array([[1.0, 0.0], [0.0, 2.0]])  # noqa: E731
    x = jnp.ones((1, 2))
    tunnel = jaxattr.noise_tunnel(jaxattr.integrated_gradients, nt_samples=2, stdevs=0.0)
    a = tunnel(fn, x, key=KEY, target=1, n_steps=4)
    with pytest.raises(TypeError, match="float scalar"):
        tunnel(fn, x, key=KEY, target=np.float32(1.0), n_steps=4)
    c = tunnel(fn, x, key=KEY, target=1, n_steps=4, multiply_by_inputs=True)
    d = tunnel(fn, x, key=KEY, target=1, n_steps=4, multiply_by_inputs=1.0)
    np.testing.assert_allclose(a, [[0.0, 2.0]], atol=1e-6)
    np.testing.assert_allclose(c, d)
    from jaxattr._caching import static_key

    assert static_key(1) != static_key(1.0) != static_key(np.float32(1.0))
    assert static_key(True) != static_key(1)


@pytest.mark.parametrize(
    "target", [np.float32(1.0), 1.0, jnp.array(1.0), np.array(1.0, np.float64)], ids=str
)
def test_float_scalar_target_is_a_named_error(target):
    fn = lambda x: x @ jnp.ones((3, 2))  # noqa: E731
    with pytest.raises(TypeError, match="float scalar is ambiguous"):
        jaxattr.saliency(fn, jnp.ones((2, 3)), target=target)
    with pytest.raises(TypeError, match="float scalar is ambiguous"):
        jaxattr.for_each_target(jaxattr.saliency, fn, jnp.ones((2, 3)), [target])


def test_integer_scalars_are_class_indices():
    fn = lambda x: x * jnp.array([[1.0, 2.0, 3.0]])  # noqa: E731
    x = jnp.ones((1, 3))
    for t in (2, np.int64(2), jnp.array(2), np.array(2)):
        np.testing.assert_array_equal(jaxattr.gradient(fn, x, target=t), [[0.0, 0.0, 3.0]])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_nan_input_is_a_named_error(tiny, name):
    bad = X.at[1, 2, 3, 0].set(jnp.nan)
    with pytest.raises(jaxattr.NonFiniteInputError, match=r"x holds 1 NaN/Inf.*\(1, 2, 3, 0\)"):
        METHODS[name](tiny, bad, target=0)


def test_nan_baselines_and_opt_out():
    fn = lambda x: (x**2).sum(1)  # noqa: E731
    x = jnp.ones((1, 3))
    with pytest.raises(jaxattr.NonFiniteInputError, match="baselines holds 1"):
        jaxattr.integrated_gradients(fn, x, baselines=jnp.array([0.0, jnp.inf, 0.0]))
    bad = x.at[0, 1].set(jnp.inf)
    with pytest.raises(jaxattr.NonFiniteInputError):
        jaxattr.gradient(fn, bad)
    g = jaxattr.gradient(fn, bad, check_finite=False)
    assert np.isinf(g[0, 1])
    assert "check_finite" in inspect.signature(jaxattr.occlusion).parameters
    assert "check_finite" in jaxattr.occlusion.__doc__
    # inside a trace there is nothing to look at: no error, no host sync
    jax.jit(lambda v: jaxattr.gradient(fn, v))(bad)


def test_chunks_follow_the_memory_budget():
    from jaxattr import _core

    calls = []
    fn = lambda x: jnp.tanh(x @ jnp.ones((64, 64))) @ jnp.ones((64, 2))  # noqa: E731
    x = jax.random.normal(KEY, (4, 64))
    whole = jaxattr.integrated_gradients(fn, x, target=0, n_steps=32)
    old = _core.batched_chunks

    def spy(total, batch_size):
        out = old(total, batch_size)
        calls.append(len(out))
        return out

    _core.batched_chunks = spy
    try:
        jaxattr.set_memory_budget(8 * 1024)  # a few steps' activations
        small = jaxattr.integrated_gradients(fn, x, target=0, n_steps=32)
        jaxattr.set_memory_budget(None)
        jaxattr.integrated_gradients(fn, x, target=0, n_steps=32)
        jaxattr.set_memory_budget(8 * 1024)
        explicit = jaxattr.integrated_gradients(fn, x, target=0, n_steps=32, batch_size=32)
    finally:
        _core.batched_chunks = old
        jaxattr.set_memory_budget(None)
    assert calls[0] > 1 and calls[1] == 1 and calls[2] == 1
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(explicit, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="nbytes must be >= 1"):
        jaxattr.set_memory_budget(0)


def test_clear_caches_empties_every_cache():
    from jaxattr import _caching

    jaxattr.saliency(lambda x: (x * 2.0).sum(1), jnp.ones((1, 2)))
    assert any(len(c) for c in _caching._CACHES)
    jaxattr.clear_caches()
    assert not any(len(c) for c in _caching._CACHES)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _fresh_attributed_model(seed, x):
    """A freshly converted torch net with 8 MiB of weights (50 kept alive would be 400+
    MiB), attributed with saliency and canonized LRP: ``(net, model, sum of both)``."""
    import torch
    from jaxattr.bridge import from_torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 7000), torch.nn.ReLU(), torch.nn.Linear(7000, 4),
    ).eval()  # fmt: skip
    model = from_torch(net, torch.from_numpy(x))
    a = jaxattr.saliency(model, x, target=1)
    # with a canonizer: its cache and its closures must not hold the model either
    canon = [jaxattr.canonizers.merge_batch_norm]
    b = jaxattr.lrp(model, x, composite=jaxattr.epsilon_plus(), canonizers=canon, target=1)
    return net, model, float(a.sum() + b.sum())


def test_fresh_models_are_not_kept_alive_by_the_caches():
    """Caches hold no models: once dropped, attributed models and their weights are freed.

    The quick form of the fifty-model RSS check below (marked slow): every converted model
    attributed here is garbage once the test drops it, and the device arrays alive after
    three such models are those alive after the first."""
    import gc
    import weakref

    pytest.importorskip("torch")
    x = np.random.default_rng(0).random((2, 3, 8, 8), np.float32)
    alive = []

    def one(seed):
        net, model, score = _fresh_attributed_model(seed, x)
        alive.extend(
            [weakref.ref(net), weakref.ref(model)]
            + [weakref.ref(p) for p in jax.tree_util.tree_leaves(model.params)]
        )
        return score

    one(0)
    gc.collect()
    before = sum(a.nbytes for a in jax.live_arrays())
    for seed in (1, 2):
        one(seed)
    gc.collect()
    assert not [r for r in alive if r() is not None], "a cache keeps a model or its weights"
    grown = sum(a.nbytes for a in jax.live_arrays()) - before
    assert grown < 2**20, f"{grown / 2**20:.1f} MiB of device arrays outlive two models"


def test_influence_caches_do_not_keep_a_function_model_alive():
    """TracInCP / TracInCPFast on a plain ``model(params, *x)``: its programs belong to the
    instance (a module cache keyed by the function held up to 16 of them, with whatever
    they close over); a structured model's are shared by structure, holding no weights."""
    import gc
    import weakref

    from jaxattr import influence

    rng = np.random.default_rng(0)
    x, y = rng.random((4, 3), np.float32), np.array([0, 1, 0, 1])
    params = {"w": jnp.asarray(rng.random((3, 2), np.float32))}
    loss = lambda out, lab: -jnp.take_along_axis(out, lab[:, None], 1)[:, 0]  # noqa: E731

    class Closure:  # what a user's model may close over (a big table, a tokenizer, ...)
        pass

    refs = []
    for fast in (False, True):
        held = Closure()

        def model(p, a, held=held):
            return a @ p["w"]

        if fast:
            features = lambda p, a: a  # noqa: E731
            tracin = influence.TracInCPFast(model, features, (x, y), [params], loss_fn=loss)
        else:
            tracin = influence.TracInCP(model, (x, y), [params], loss_fn=loss, batch_size=2)
        scores = tracin.self_influence()
        assert scores.shape == (4,)
        refs += [weakref.ref(model), weakref.ref(held)]
        del tracin, model, held
    gc.collect()
    assert not [r for r in refs if r() is not None], "an influence cache keeps a model alive"


@pytest.mark.slow  # ~100 CPU-s (55 conversions); test_fresh_models_are_not_kept_alive_... above
@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="Linux only")
def test_fifty_fresh_models_do_not_grow_memory():
    """Caches hold no models: attributing freshly converted models stays bounded."""
    import gc

    pytest.importorskip("torch")
    x = np.random.default_rng(0).random((2, 3, 8, 8), np.float32)

    def one(seed):
        return _fresh_attributed_model(seed, x)[2]

    for seed in range(5):  # warm up imports, JAX's own caches, the allocator
        one(seed)
    gc.collect()
    before = _rss_bytes()
    for seed in range(5, 55):
        one(seed)
    gc.collect()
    grown = _rss_bytes() - before
    assert grown < 300 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB over 50 models"


def _multi_relu(torch):
    class MultiRelu(torch.nn.Module):  # Captum's test module: returns a tuple
        def __init__(self):
            super().__init__()
            self.relu1, self.relu2 = torch.nn.ReLU(), torch.nn.ReLU()

        def forward(self, a, b):
            return self.relu1(a), self.relu2(b)

    return MultiRelu()


def _multi_relu_model(head=None):
    """lin1 -> MultiRelu(h, -h) -> [head] -> lin2; ``head``: a nonlinearity after the tuple."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = torch.nn.Linear(3, 4)
            self.multi = _multi_relu(torch)
            self.lin2 = torch.nn.Linear(4, 2)
            self.head = head

        def forward(self, x):
            h = self.lin1(x)
            a, b = self.multi(h, -h)
            h = a + 2 * b
            return self.lin2(h if self.head is None else self.head(h))

    torch.manual_seed(0)
    return Net().eval()


def _multi_relu_conv_model():
    """conv -> MultiRelu(h, -h) -> linear: a tuple of two (N, C, H, W) tensors."""
    torch = pytest.importorskip("torch")

    class ConvNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
            self.multi = _multi_relu(torch)
            self.fc = torch.nn.Linear(48, 3)

        def forward(self, x):
            a, b = self.multi(self.conv(x), -self.conv(x))
            return self.fc(torch.flatten(a - 0.5 * b, 1))

    torch.manual_seed(1)
    return ConvNet().eval()


def test_a_layer_returning_a_tuple_gives_a_tuple_like_captum():
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    from jaxattr.bridge import from_torch

    net = _multi_relu_model()
    x = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
    model = from_torch(net, torch.from_numpy(x))
    assert model.output_layers("multi") == ["multi.relu1", "multi.relu2"]
    tx = torch.from_numpy(x)
    acts = jaxattr.layer_activation(model, x, "multi")
    ref = captum.LayerActivation(net, net.multi).attribute(tx)
    assert isinstance(acts, tuple) and len(acts) == 2
    for a, r in zip(acts, ref, strict=True):
        np.testing.assert_allclose(a, r.detach().numpy(), rtol=1e-5, atol=1e-6)
    gxa = jaxattr.layer_gradient_x_activation(model, x, "multi", target=1)
    ref = captum.LayerGradientXActivation(net, net.multi).attribute(tx, target=1)
    for a, r in zip(gxa, ref, strict=True):
        np.testing.assert_allclose(a, r.detach().numpy(), rtol=1e-5, atol=1e-6)
    # path methods interpolate both tensors jointly, as Captum does
    pairs = [
        (jaxattr.layer_integrated_gradients, captum.LayerIntegratedGradients, "riemann_trapezoid"),
        (jaxattr.layer_conductance, captum.LayerConductance, "riemann_trapezoid"),
        (jaxattr.internal_influence, captum.InternalInfluence, "riemann_trapezoid"),
    ]
    for ours, theirs, quad in pairs:
        got = ours(model, x, "multi", target=1, n_steps=16, method=quad)
        ref = theirs(net, net.multi).attribute(tx, target=1, n_steps=16, method=quad)
        assert isinstance(got, tuple) and len(got) == 2, ours.__name__
        for a, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(a, r.detach().numpy(), rtol=1e-4, atol=1e-5)
    attr, delta = jaxattr.layer_integrated_gradients(
        model, x, "multi", target=1, n_steps=64, return_delta=True
    )
    y = net(tx)[:, 1] - net(torch.zeros_like(tx))[:, 1]
    np.testing.assert_allclose(sum(a.sum((1,)) for a in attr), y.detach().numpy(), atol=1e-3)
    np.testing.assert_allclose(delta, 0.0, atol=1e-3)
    # one tensor only: Score-CAM, Guided Grad-CAM (Captum asserts) and neuron indices
    # (Captum: "Cannot select neuron index from layer with multiple tensors")
    msg = r"'multi' returns a tuple of 2 tensors .*layer_feature_ablation, grad_cam"
    with pytest.raises(ValueError, match=msg):
        jaxattr.score_cam(model, x, "multi", target=1)
    with pytest.raises(ValueError, match=msg):
        jaxattr.guided_grad_cam(model, x, "multi", target=1)
    with pytest.raises(ValueError, match=msg):
        jaxattr.neuron_gradient(model, x, "multi", (0,))


def _close(got, ref, rtol=1e-5, atol=1e-6):
    """A tuple of attributions equals Captum's tuple, tensor by tensor."""
    assert isinstance(got, tuple) and isinstance(ref, tuple), (type(got), type(ref))
    assert len(got) == len(ref) == 2
    for a, r in zip(got, ref, strict=True):
        r = r.detach().numpy()
        assert a.shape == r.shape, (a.shape, r.shape)
        np.testing.assert_allclose(np.asarray(a), r, rtol=rtol, atol=atol)


def test_a_tuple_layer_grad_cam_is_per_tensor_like_captum():
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    from jaxattr.bridge import from_torch

    net = _multi_relu_conv_model()
    x = np.random.default_rng(1).normal(size=(2, 2, 4, 4)).astype(np.float32)
    tx = torch.from_numpy(x)
    model = from_torch(net, tx)
    cam = captum.LayerGradCam(net, net.multi)
    for kw in ({}, {"relu_attributions": True}, {"attr_dim_summation": False}):
        ref = cam.attribute(tx, target=[2, 0], **kw)
        got = jaxattr.grad_cam(model, x, "multi", target=[2, 0], **kw)
        _close(got, ref)
        # each tensor has its own channel weights: the maps differ, as do the tensors
        assert not np.allclose(got[0], got[1])
    ref = cam.attribute(tx, target=1, relu_attributions=True)
    up = tuple(captum.LayerAttribution.interpolate(r, (8, 8), "bilinear") for r in ref)
    got = jaxattr.grad_cam(
        model,
        x,
        "multi",
        target=1,
        relu_attributions=True,
        interpolate_to=(8, 8),
        interpolate_mode="bilinear",
    )
    _close(got, up)
    # Grad-CAM++ (not in Captum): per tensor, as naming each tensor's layer
    got = jaxattr.grad_cam_plus_plus(model, x, "multi", target=1)
    for a, name in zip(got, ("multi.relu1", "multi.relu2"), strict=True):
        np.testing.assert_allclose(a, jaxattr.grad_cam_plus_plus(model, x, name, target=1))


def test_a_tuple_layer_deep_lift_and_delta_match_captum():
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    from jaxattr.bridge import from_torch

    net = _multi_relu_model(head=torch.nn.Tanh())  # a rescale rule after the tuple
    x = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    tx = torch.from_numpy(x)
    model = from_torch(net, tx)
    base = np.array([[0.3, -0.2, 0.1]], np.float32)
    for mult in (True, False):
        ref, ref_delta = captum.LayerDeepLift(net, net.multi, multiply_by_inputs=mult).attribute(
            tx, torch.from_numpy(base), target=[1, 0, 1, 1], return_convergence_delta=True
        )
        got, delta = jaxattr.layer_deep_lift(
            model, x, "multi", baselines=base, target=[1, 0, 1, 1], multiply_by_inputs=mult,
            return_delta=True,
        )  # fmt: skip
        _close(got, ref)
        _close(jaxattr.layer_deep_lift(model, x, "multi", baselines=base, target=[1, 0, 1, 1],
                                       multiply_by_inputs=mult), ref)  # fmt: skip
        # the delta sums the attributions of both tensors (large without multipliers)
        assert delta.shape == (4,)
        np.testing.assert_allclose(delta, ref_delta.detach().numpy(), rtol=1e-5, atol=1e-6)
    y = net(tx) - net(torch.from_numpy(base))
    total = got[0].sum(1) + got[1].sum(1)
    want = y.detach().numpy()[np.arange(4), [1, 0, 1, 1]]
    np.testing.assert_allclose(delta, total - want, rtol=1e-5, atol=1e-6)
    assert np.abs(delta).max() > 1e-2  # the last run did not multiply by inputs


def test_a_tuple_layer_gradient_shap_and_delta_match_captum(monkeypatch):
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    from jaxattr.bridge import from_torch

    from tests.helpers import Replay, samples_interleaved

    net = _multi_relu_model(head=torch.nn.Tanh())  # nonlinear: the delta is not zero
    x = np.random.default_rng(3).normal(size=(3, 3)).astype(np.float32)
    tx = torch.from_numpy(x)
    model = from_torch(net, tx)
    dist = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    key, n_samples, stdevs = jax.random.key(7), 4, 0.2
    noise, idx, alphas = jaxattr.gradient_shap_draws(key, x, 5, n_samples, stdevs)
    # Captum draws, in order: baseline indices, input noise, alphas; all example-major
    monkeypatch.setattr(np.random, "choice", Replay([np.asarray(idx).T.reshape(-1)]))
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    monkeypatch.setattr(np.random, "uniform", Replay([np.asarray(alphas).T.reshape(-1)]))
    ref, ref_delta = captum.LayerGradientShap(net, net.multi).attribute(
        tx, torch.from_numpy(dist), n_samples=n_samples, stdevs=stdevs, target=1,
        return_convergence_delta=True,
    )  # fmt: skip
    monkeypatch.undo()
    got, delta = jaxattr.layer_gradient_shap(
        model, x, "multi", baselines=dist, key=key, n_samples=n_samples, stdevs=stdevs, target=1,
        return_delta=True,
    )  # fmt: skip
    _close(got, ref)
    assert delta.shape == (3, n_samples)
    ref_delta = ref_delta.detach().numpy()
    assert np.abs(ref_delta).max() > 1e-3  # a delta that can tell one tensor from two
    np.testing.assert_allclose(np.asarray(delta).reshape(-1), ref_delta, rtol=1e-5, atol=1e-6)
    plain = jaxattr.layer_gradient_shap(
        model, x, "multi", baselines=dist, key=key, n_samples=n_samples, stdevs=stdevs, target=1
    )
    _close(plain, ref)


def test_a_tuple_layer_feature_ablation_masks_each_tensor_like_captum():
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    from jaxattr.bridge import from_torch

    net = _multi_relu_model(head=torch.nn.Tanh())
    x = np.random.default_rng(5).normal(size=(3, 3)).astype(np.float32)
    tx = torch.from_numpy(x)
    model = from_torch(net, tx)
    fa = captum.LayerFeatureAblation(net, net.multi)
    # default: every unit of every tensor alone
    _close(jaxattr.layer_feature_ablation(model, x, "multi", target=1),
           fa.attribute(tx, target=1))  # fmt: skip
    # one mask and one baseline per tensor; id 1 and 2 appear in both masks and are
    # ablated in both tensors at once (Captum's cross-tensor masks)
    m0, m1 = np.array([[0, 0, 1, 2]]), np.array([[1, 2, 2, 3]])
    per_example = np.array([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]])
    for masks, bases in [
        ((m0, m1), (0.5, -0.3)),
        ((m0, m1), (np.array([[0.1, 0.2, 0.3, 0.4]], np.float32), 0.0)),
        ((per_example, m1 + 2), (0.25, 0.25)),
    ]:
        ref = fa.attribute(
            tx, target=1, layer_mask=tuple(map(torch.from_numpy, masks)),
            layer_baselines=tuple(torch.from_numpy(b) if isinstance(b, np.ndarray) else b
                                  for b in bases),
        )  # fmt: skip
        got = jaxattr.layer_feature_ablation(
            model, x, "multi", target=1, layer_mask=masks, layer_baselines=bases, batch_size=2
        )
        _close(got, ref)
    # a scalar baseline serves every tensor (Captum's default None is zero for each)
    _close(
        jaxattr.layer_feature_ablation(model, x, "multi", target=0, layer_baselines=0.0),
        fa.attribute(tx, target=0),
    )
    # Captum ablates only the first tensor for a lone mask: a named error here
    with pytest.raises(ValueError, match="layer_mask must be a tuple of 2 masks"):
        jaxattr.layer_feature_ablation(model, x, "multi", target=1, layer_mask=m0)
    with pytest.raises(ValueError, match="expected 2, got 1"):
        jaxattr.layer_feature_ablation(model, x, "multi", target=1, layer_mask=(m0,))
    with pytest.raises(ValueError, match="layer_baselines must be a scalar or a tuple of 2"):
        jaxattr.layer_feature_ablation(model, x, "multi", target=1, layer_baselines=np.ones(4))


def _add2(torch):
    class Add2(torch.nn.Module):  # Captum-style module taking two tensors
        def forward(self, a, b):
            return torch.relu(a) * b

    return Add2()


def _two_input_model(second=None):
    """lin -> add2(h, second(h)) -> head; ``second``: a module, default ``torch.tanh``.

    ``b`` is made from ``a``: Captum's gradient for ``a`` (autograd on the tensor its
    pre-hook saw) includes the path through ``b``.
    """
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)
            self.add2 = _add2(torch)
            self.second = second
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            h = self.lin(x)
            b = torch.tanh(h) if self.second is None else self.second(h)
            return self.head(self.add2(h, b))

    torch.manual_seed(0)
    return Net().eval()


def test_a_layer_receiving_two_tensors_gives_a_tuple_like_captum():
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    from jaxattr.bridge import from_torch

    net = _two_input_model()
    x = np.random.default_rng(6).normal(size=(3, 3)).astype(np.float32)
    tx = torch.from_numpy(x)
    base = np.array([[0.3, -0.2, 0.1]], np.float32)
    tb = torch.from_numpy(base)
    model = from_torch(net, tx)
    assert [(t.layer, t.index) for t in _taps.resolve_layers(model, "add2", True)] == [
        ("add2", 0),
        ("add2", 1),
    ]
    kw = {"attribute_to_layer_input": True}
    _close(jaxattr.layer_activation(model, x, "add2", **kw),
           captum.LayerActivation(net, net.add2).attribute(tx, **kw))  # fmt: skip
    for mult in (True, False):
        _close(
            jaxattr.layer_gradient_x_activation(
                model, x, "add2", target=1, multiply_by_inputs=mult, **kw
            ),
            captum.LayerGradientXActivation(net, net.add2, multiply_by_inputs=mult).attribute(
                tx, target=1, **kw
            ),
        )
    quad = {"n_steps": 16, "method": "riemann_trapezoid"}
    pairs = [
        (jaxattr.layer_conductance, captum.LayerConductance),
        (jaxattr.internal_influence, captum.InternalInfluence),
    ]
    for ours, theirs in pairs:
        got = ours(model, x, "add2", baselines=base, target=[1, 0, 1], **quad, **kw)
        _close(got, theirs(net, net.add2).attribute(tx, tb, target=[1, 0, 1], **quad, **kw),
               rtol=1e-4, atol=1e-6)  # fmt: skip
    got, delta = jaxattr.layer_integrated_gradients(
        model, x, "add2", baselines=base, target=1, return_delta=True, **quad, **kw
    )
    ref, ref_delta = captum.LayerIntegratedGradients(net, net.add2).attribute(
        tx, tb, target=1, return_convergence_delta=True, **quad, **kw
    )
    _close(got, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(delta, ref_delta.detach().numpy(), rtol=1e-4, atol=1e-6)
    for relu in (False, True):
        _close(
            jaxattr.grad_cam(model, x, "add2", target=0, relu_attributions=relu, **kw),
            captum.LayerGradCam(net, net.add2).attribute(
                tx, target=0, relu_attributions=relu, **kw
            ),
        )
    fa = captum.LayerFeatureAblation(net, net.add2)
    _close(jaxattr.layer_feature_ablation(model, x, "add2", target=1, **kw),
           fa.attribute(tx, target=1, **kw))  # fmt: skip
    m0, m1 = np.array([[0, 0, 1, 2]]), np.array([[1, 2, 2, 3]])
    _close(
        jaxattr.layer_feature_ablation(
            model, x, "add2", target=1, layer_mask=(m0, m1), layer_baselines=(0.5, -0.3), **kw
        ),
        fa.attribute(tx, target=1, layer_mask=(torch.from_numpy(m0), torch.from_numpy(m1)),
                     layer_baselines=(0.5, -0.3), **kw),
    )  # fmt: skip
    with pytest.raises(ValueError, match="'add2' receives 2 tensors of shapes"):
        jaxattr.layer_feature_ablation(model, x, "add2", target=1, layer_mask=m0, **kw)
    # a layer receiving one tensor: one tensor, as before
    single = jaxattr.layer_gradient_x_activation(model, x, "head", target=1, **kw)
    ref = captum.LayerGradientXActivation(net, net.head).attribute(tx, target=1, **kw)
    np.testing.assert_allclose(single, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    # one tensor only: the named error, listing the inputs
    msg = r"'add2' receives 2 tensors \(inputs \[\('add2', 0\), \('add2', 1\)\]"
    with pytest.raises(ValueError, match=msg):
        jaxattr.probe(model, x, "add2", target=1, **kw)
    with pytest.raises(ValueError, match=msg):
        jaxattr.guided_grad_cam(model, x, "add2", target=1, **kw)
    with pytest.raises(ValueError, match=msg):
        jaxattr.neuron_gradient(model, x, "add2", (0,), attribute_to_neuron_input=True)
    with pytest.raises(ValueError, match=msg):
        jaxattr.neuron_model(model, "add2", (0,), attribute_to_neuron_input=True)


def test_a_two_input_layer_deep_lift_and_gradient_shap_match_captum(monkeypatch):
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    from jaxattr.bridge import from_torch

    from tests.helpers import Replay, samples_interleaved

    # b = lin2(h): Captum's DeepLift treats torch.tanh (a function, not a module) as
    # linear while the bridge gives it the rescale rule, a difference of DeepLift itself
    net = _two_input_model(second=torch.nn.Linear(4, 4))
    x = np.random.default_rng(7).normal(size=(4, 3)).astype(np.float32)
    tx = torch.from_numpy(x)
    model = from_torch(net, tx)
    base = np.array([[0.3, -0.2, 0.1]], np.float32)
    kw = {"attribute_to_layer_input": True}
    for mult in (True, False):
        ref, ref_delta = captum.LayerDeepLift(net, net.add2, multiply_by_inputs=mult).attribute(
            tx, torch.from_numpy(base), target=[1, 0, 1, 1], return_convergence_delta=True, **kw
        )
        got, delta = jaxattr.layer_deep_lift(
            model, x, "add2", baselines=base, target=[1, 0, 1, 1], multiply_by_inputs=mult,
            return_delta=True, **kw,
        )  # fmt: skip
        _close(got, ref)
        np.testing.assert_allclose(delta, ref_delta.detach().numpy(), rtol=1e-5, atol=1e-6)
    dist = np.random.default_rng(8).normal(size=(5, 3)).astype(np.float32)
    key, n_samples, stdevs = jax.random.key(9), 4, 0.2
    noise, idx, alphas = jaxattr.gradient_shap_draws(key, x, 5, n_samples, stdevs)
    monkeypatch.setattr(np.random, "choice", Replay([np.asarray(idx).T.reshape(-1)]))
    monkeypatch.setattr(torch, "normal", Replay([samples_interleaved(noise)]))
    monkeypatch.setattr(np.random, "uniform", Replay([np.asarray(alphas).T.reshape(-1)]))
    ref, ref_delta = captum.LayerGradientShap(net, net.add2).attribute(
        tx, torch.from_numpy(dist), n_samples=n_samples, stdevs=stdevs, target=1,
        return_convergence_delta=True, **kw,
    )  # fmt: skip
    monkeypatch.undo()
    got, delta = jaxattr.layer_gradient_shap(
        model, x, "add2", baselines=dist, key=key, n_samples=n_samples, stdevs=stdevs, target=1,
        return_delta=True, **kw,
    )  # fmt: skip
    _close(got, ref)
    np.testing.assert_allclose(
        np.asarray(delta).reshape(-1), ref_delta.detach().numpy(), rtol=1e-5, atol=1e-6
    )


def _res2(torch):
    class Res2(torch.nn.Module):  # a container: its inputs first meet different layers
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, a, b):
            return self.fc(a) * b + a  # ``a`` is read by fc and by the residual add

    return Res2()


def test_a_container_receiving_two_tensors_gives_a_tuple_like_captum():
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    from jaxattr.bridge import from_torch

    x = np.random.default_rng(10).normal(size=(3, 3)).astype(np.float32)
    tx = torch.from_numpy(x)
    kw = {"attribute_to_layer_input": True}
    res = _two_input_model()
    res.add2 = _res2(torch)  # lin -> res(h, tanh(h)) -> head
    multi = _multi_relu_model(head=torch.nn.Tanh())  # lin1 -> multi(h, -h) -> lin2
    for net, mod, name, taps in [
        (res, res.add2, "add2", [("add2.fc", 0), ("add2.mul", 1)]),
        (multi, multi.multi, "multi", [("multi.relu1", 0), ("multi.relu2", 0)]),
    ]:
        model = from_torch(net, tx)
        assert [(t.layer, t.index) for t in _taps.resolve_layers(model, name, True)] == taps
        _close(jaxattr.layer_activation(model, x, name, **kw),
               captum.LayerActivation(net, mod).attribute(tx, **kw))  # fmt: skip
        _close(
            jaxattr.layer_gradient_x_activation(model, x, name, target=1, **kw),
            captum.LayerGradientXActivation(net, mod).attribute(tx, target=1, **kw),
        )
        # replaced where the container reads it (both layers reading ``a``), as a pre-hook
        _close(
            jaxattr.layer_integrated_gradients(model, x, name, target=1, n_steps=8, **kw),
            captum.LayerIntegratedGradients(net, mod).attribute(tx, target=1, n_steps=8, **kw),
            rtol=1e-4,
        )
        _close(jaxattr.layer_feature_ablation(model, x, name, target=0, **kw),
               captum.LayerFeatureAblation(net, mod).attribute(tx, target=0, **kw))  # fmt: skip
        with pytest.raises(ValueError, match=f"'{name}' receives 2 tensors"):
            jaxattr.neuron_gradient(model, x, name, (0,), attribute_to_neuron_input=True)


def test_a_layer_input_used_elsewhere_is_differentiated_like_captum():
    """Captum's layer gradient is taken for the input tensor: every use of it counts."""
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    from jaxattr.bridge import from_torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.relu = torch.nn.Linear(3, 4), torch.nn.ReLU()
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            h = self.lin(x)
            return self.head(self.relu(h) + h)

    torch.manual_seed(2)
    net = Net().eval()
    x = np.random.default_rng(11).normal(size=(3, 3)).astype(np.float32)
    tx = torch.from_numpy(x)
    model = from_torch(net, tx)
    kw = {"attribute_to_layer_input": True}
    pairs = [
        (jaxattr.layer_gradient_x_activation, captum.LayerGradientXActivation, {}),
        (jaxattr.internal_influence, captum.InternalInfluence, {"n_steps": 8}),
        (jaxattr.layer_integrated_gradients, captum.LayerIntegratedGradients, {"n_steps": 8}),
    ]
    for ours, theirs, opts in pairs:
        got = ours(model, x, "relu", target=1, **opts, **kw)
        ref = theirs(net, net.relu).attribute(tx, target=1, **opts, **kw)
        np.testing.assert_allclose(got, ref.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_a_flax_layer_receiving_two_tensors_is_a_named_error():
    class Mul2(nn.Module):
        jaxattr_kind = "mul"

        @nn.compact
        def __call__(self, a, b):
            return nn.relu(a) * b

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(4, name="lin")(x)
            return nn.Dense(2, name="head")(Mul2(name="mul2")(h, jnp.tanh(h)))

    x = jnp.ones((2, 3))
    model = from_linen(Net(), Net().init(KEY, x))
    model.discover(x)
    kw = {"attribute_to_layer_input": True}
    assert jaxattr.layer_activation(model, x, "head", **kw).shape == (2, 4)
    with pytest.raises(ValueError, match="'mul2' receives 2 tensors, but this model cannot"):
        jaxattr.layer_activation(model, x, "mul2", **kw)
    with pytest.raises(ValueError, match="'mul2' receives 2 tensors, but this model cannot"):
        jaxattr.layer_gradient_x_activation(model, x, "mul2", target=0, **kw)


def test_input_shape_is_checked_against_the_exported_one():
    torch = pytest.importorskip("torch")
    from jaxattr.bridge import from_torch

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)).eval()
    model = from_torch(net, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"expected shape \('batch', 3, 4\).*got \(2, 4, 3\)"):
        jaxattr.saliency(model, np.zeros((2, 4, 3), np.float32), target=0)
    fixed = from_torch(net, torch.zeros(2, 3, 4), dynamic_batch=False)
    with pytest.raises(ValueError, match="exported for batch size 2 only"):
        fixed(np.zeros((5, 3, 4), np.float32))


# ------------------------------------------------------------------ XLA CPU miscompile
def _reduce_fusion_case():
    """Six lines that XLA CPU (jaxlib 0.10, YNNPACK reduce fusion on) gets wrong: the
    gradient of ``x * sum(x)`` at one element, for 5 targets x 50 steps, summed over
    steps. The 5th target came out 34% off under ``jit(vmap)``."""
    ax = jax.random.normal(jax.random.key(0), (20, 8))
    alphas = jnp.linspace(0.01, 1, 50)

    def per_target(t):
        def step(a):
            return jax.grad(lambda h: (h * jnp.sum(h, -1, keepdims=True))[t[0], t[1]])(a * ax)

        return jnp.sum(jax.vmap(step)(alphas), 0)

    targets = jnp.array([(i, (7 * i) % 8) for i in range(5)])
    # the analytic answer: d/dh[t0, j] of h[t0,t1] * sum(h[t0]) = h[t0,t1] + [j == t1] sum
    a = np.asarray(ax, np.float64)
    expected = np.zeros((5, 20, 8))
    for i, (t0, t1) in enumerate(np.asarray(targets)):
        expected[i, t0] = a[t0, t1]
        expected[i, t0, t1] += a[t0].sum()
    return per_target, targets, expected * float(np.sum(np.asarray(alphas, np.float64)))


def test_programs_compile_around_the_cpu_reduce_fusion_miscompile():
    from jaxattr import _caching

    per_target, targets, expected = _reduce_fusion_case()
    got = _caching.jit(jax.vmap(per_target))(targets)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    # inside the user's own jit the outer program decides: jaxattr's options fix it there
    outer = jax.jit(jax.vmap(per_target), compiler_options=jaxattr.compiler_options())
    np.testing.assert_allclose(outer(targets), expected, rtol=1e-5, atol=1e-4)


def test_for_each_target_ig_is_right_where_xla_cpu_fused_it_wrong():
    """``for_each_target(integrated_gradients)``: 5 targets x 50 steps of a function that
    normalises by a sum, the case the reduce fusion got wrong (1 target in 5 off by 46%)."""
    x = jax.random.normal(jax.random.key(0), (1, 20, 8))
    fn = lambda x: (x * jnp.sum(x, -1, keepdims=True)).reshape(x.shape[0], -1)  # noqa: E731
    targets = [8 * i + (7 * i) % 8 for i in range(5)]
    many = jaxattr.for_each_target(
        jaxattr.integrated_gradients, fn, x, targets, n_steps=50, baselines=0.0
    )
    for i, t in enumerate(targets):
        one = jaxattr.integrated_gradients(fn, x, target=t, n_steps=50, baselines=0.0)
        np.testing.assert_allclose(many[i], one, rtol=1e-5, atol=1e-5)


def test_jaxattr_programs_compose_with_outer_transformations():
    """The options are top-level only; inside jit, grad, vmap and scan the plain program
    runs and gives the same numbers."""
    fn = lambda x: jnp.tanh(x) @ jnp.arange(6.0).reshape(3, 2)  # noqa: E731
    x = jnp.linspace(-1, 1, 6).reshape(2, 3)
    ref = jaxattr.integrated_gradients(fn, x, target=1, n_steps=8)

    def ig(v):
        return jaxattr.integrated_gradients(fn, v, target=1, n_steps=8)

    np.testing.assert_allclose(jax.jit(ig)(x), ref, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(ig)(x[:, None])[:, 0], ref, rtol=1e-6)
    np.testing.assert_allclose(jax.lax.map(ig, x[:, None])[:, 0], ref, rtol=1e-6)
    g = jax.grad(lambda v: jnp.sum(ig(v)))(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))


def test_programs_compile_around_the_cpu_dot_fusion_miscompile():
    """A dot fed by a broadcast constant (``jnp.ones`` in the function's body): with
    XLA CPU's YNNPACK dot fusion on, integrated gradients read uninitialised memory
    (7.7e3 to 2.4e33 where the answer is 67); the chunked and the whole run must agree."""
    fn = lambda x: jnp.tanh(x @ jnp.ones((64, 64))) @ jnp.ones((64, 2))  # noqa: E731
    x = jax.random.normal(KEY, (4, 64))
    whole = jaxattr.integrated_gradients(fn, x, target=0, n_steps=32, batch_size=32)
    chunked = jaxattr.integrated_gradients(fn, x, target=0, n_steps=32, batch_size=4)
    np.testing.assert_allclose(whole, chunked, rtol=1e-5, atol=1e-5)
    alphas = jnp.linspace(0.0, 1.0, 32)

    def ig(v):
        g = jax.vmap(lambda a: jax.grad(lambda u: fn(u)[:, 0].sum())(a * v))(alphas)
        return g.mean(0) * v

    from jaxattr import _caching

    with jax.disable_jit():
        expected = ig(x)
    np.testing.assert_allclose(_caching.jit(ig)(x), expected, rtol=1e-4, atol=1e-4)
