"""The method contract, checked on every public method with the same tests.

Each entry of ``CASES`` says how to call a method, whether it is random (takes ``key``),
how it chunks its expansion, and whether it has a completeness delta. Every method is
then checked for: shape/dtype following x (array and tuple inputs), jit == eager,
chunked == unchunked, vmap == loop, fixed key -> fixed result, every target form, no
recompilation on a second call, and clear errors for bad input.

``MODEL_CASES`` does the same for the methods that explain a structured model's layer or
neuron (layer, neuron and CAM methods) and the image-only input methods, on a tiny Flax
CNN: shape/dtype as documented, jit(vmap) == eager loop, chunked == unchunked, fixed key
-> fixed result, and named errors (target, layer, neuron). Coverage is derived from
``jaxattr.__all__``: every public function is a case here or in ``NOT_METHODS``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr

W1 = jax.random.normal(jax.random.key(0), (4, 8))
W2 = jax.random.normal(jax.random.key(1), (8, 3))
V1 = jax.random.normal(jax.random.key(2), (2, 8))


def mlp(x):
    return jnp.tanh(x.astype(W1.dtype) @ W1) @ W2


def mlp2(x1, x2):
    return jnp.tanh(x1.astype(W1.dtype) @ W1 + x2.astype(V1.dtype) @ V1) @ W2


def mlp_cube(x):  # (N, 4) -> (N, 3, 2)
    return jnp.stack([mlp(x), mlp(x) ** 2], axis=-1)


def mlp_scalar(x):  # (N, 4) -> (N,)
    return mlp(x)[:, 0]


X = jax.random.normal(jax.random.key(3), (3, 4))
X2 = (X, jax.random.normal(jax.random.key(4), (3, 2)))
KEY = jax.random.key(7)


@dataclasses.dataclass
class Case:
    call: Callable
    random: bool = False
    chunk: str | None = None  # keyword that chunks the expansion
    baselines: str | None = None  # "point" (broadcast) or "distribution"
    delta: bool = False
    captum_perturbation: bool = False  # int inputs accepted (no gradients taken)
    every_output: bool = False  # target=None attributes every output element (Captum)

    def __call__(self, fn, x, **kw):
        if self.random:
            kw.setdefault("key", KEY)
        if self.baselines == "distribution" and "baselines" not in kw:
            kw["baselines"] = jax.tree_util.tree_map(
                lambda a: jnp.linspace(-1, 1, 5 * a[0].size).reshape(5, *a.shape[1:]), x
            )
        return self.call(fn, x, **kw)


def _nt(method, **method_kw):
    def call(fn, x, nt_samples_batch_size=None, **kw):
        tunnel = jaxattr.noise_tunnel(
            method, nt_samples=3, stdevs=0.1, nt_samples_batch_size=nt_samples_batch_size
        )
        return tunnel(fn, x, **method_kw, **kw)

    return call


CASES = {
    "gradient": Case(jaxattr.gradient),
    "saliency": Case(jaxattr.saliency),
    "input_x_gradient": Case(jaxattr.input_x_gradient),
    "sensitivity": Case(jaxattr.sensitivity),
    "input_baseline_x_gradient": Case(
        jaxattr.input_baseline_x_gradient, random=True, baselines="point", delta=True
    ),
    "integrated_gradients": Case(
        lambda fn, x, **kw: jaxattr.integrated_gradients(fn, x, n_steps=7, **kw),
        chunk="batch_size",
        baselines="point",
        delta=True,
    ),
    "noise_tunnel(saliency)": Case(
        _nt(jaxattr.saliency), random=True, chunk="nt_samples_batch_size"
    ),
    "noise_tunnel(integrated_gradients)": Case(
        _nt(jaxattr.integrated_gradients, n_steps=4),
        random=True,
        chunk="nt_samples_batch_size",
        baselines="point",
        delta=True,
    ),
    "smoothgrad": Case(
        lambda fn, x, **kw: jaxattr.smoothgrad(fn, x, n_iter=5, **kw),
        random=True,
        chunk="batch_size",
    ),
    "gradient_shap": Case(jaxattr.gradient_shap, random=True, baselines="distribution", delta=True),
}


@functools.cache
def _with_params(fn):
    """The contract's model as ``fn(params, *x)`` with a scalar params pytree."""
    return lambda p, *xs: fn(*xs) * p


def _fusion(fn, x, batch_size=None, **kw):
    fused = jaxattr.fusion_grad(
        jaxattr.saliency, n=2, m=2, sg_additive_noise=True, batch_size=batch_size
    )
    return fused(_with_params(fn), jnp.ones(()), x, **kw)


CASES.update(
    {
        "occlusion": Case(
            lambda fn, x, **kw: jaxattr.occlusion(fn, x, sliding_window_shapes=(2,), **kw),
            chunk="batch_size",
            baselines="point",
            captum_perturbation=True,
            every_output=True,
        ),
        "occlusion(zennit)": Case(
            lambda fn, x, **kw: jaxattr.occlusion(
                fn, x, window=2, stride=1, occlusion_fn=jaxattr.occlude_independent, **kw
            ),
            chunk="batch_size",
            captum_perturbation=True,
            every_output=True,
        ),
        "tiled_occlusion": Case(
            lambda fn, x, **kw: jaxattr.tiled_occlusion(fn, x, k=2, window=2, **kw),
            chunk="batch_size",
            baselines="point",
            captum_perturbation=True,
            every_output=True,
        ),
        "feature_ablation": Case(
            jaxattr.feature_ablation,
            chunk="batch_size",
            baselines="point",
            captum_perturbation=True,
            every_output=True,
        ),
        "feature_permutation": Case(
            jaxattr.feature_permutation,
            random=True,
            chunk="batch_size",
            captum_perturbation=True,
            every_output=True,
        ),
        "shapley_value_sampling": Case(
            lambda fn, x, **kw: jaxattr.shapley_value_sampling(fn, x, n_samples=3, **kw),
            random=True,
            chunk="batch_size",
            baselines="point",
            captum_perturbation=True,
            every_output=True,
        ),
        "shapley_values": Case(
            jaxattr.shapley_values,
            chunk="batch_size",
            baselines="point",
            captum_perturbation=True,
            every_output=True,
        ),
        "kernel_shap": Case(
            lambda fn, x, **kw: jaxattr.kernel_shap(fn, x, n_samples=12, **kw),
            random=True,
            chunk="batch_size",
            baselines="point",
            captum_perturbation=True,
        ),
        "lime": Case(
            lambda fn, x, **kw: jaxattr.lime(fn, x, n_samples=12, **kw),
            random=True,
            chunk="batch_size",
            baselines="point",
            captum_perturbation=True,
        ),
        "rise": Case(
            lambda fn, x, **kw: jaxattr.rise(fn, x, num_masks=8, num_cells=2, **kw),
            random=True,
            chunk="batch_size",
            every_output=True,  # TorchRay's rise: one map per output element
        ),
        "extremal_perturbation": Case(
            lambda fn, x, **kw: jaxattr.extremal_perturbation(fn, x, max_iter=3, **kw),
        ),
        "fusion_grad(saliency)": Case(_fusion, random=True, chunk="batch_size"),
        "fgsm": Case(lambda fn, x, **kw: jaxattr.fgsm(fn, x, epsilon=0.1, **kw)),
        "pgd": Case(
            lambda fn, x, **kw: jaxattr.pgd(
                fn, x, radius=0.3, step_size=0.1, step_num=3, random_start=True, **kw
            ),
            random=True,
        ),
    }
)


@functools.cache
def _as_model(fn):
    """The contract's function as a one-layer structured model (for the rule methods)."""
    from jaxattr.structure import Layer

    class OneLayer:
        params: dict = {}
        layers = {"f": Layer("f", "linear", "fn")}

        def apply(self, params, *xs, intercept=None):
            intercept = intercept or jaxattr.structure.default_intercept
            return intercept(self.layers["f"], lambda p, *a: fn(*a), params, *xs)

    return OneLayer()


def _structured(method, **method_kw):
    def call(fn, x, **kw):
        return method(_as_model(fn), x, **method_kw, **kw)

    return call


CASES.update(
    {
        "guided_backprop": Case(jaxattr.guided_backprop),
        "deconvolution": Case(jaxattr.deconvolution),
        "lrp": Case(_structured(jaxattr.lrp, composite=jaxattr.epsilon_plus()), delta=True),
        "lrp(captum_normalize)": Case(
            _structured(jaxattr.lrp, composite=jaxattr.epsilon_plus(), captum_normalize=True),
            delta=True,
        ),
        "excitation_backprop": Case(_structured(jaxattr.excitation_backprop, sum_channels=False)),
        "contrastive_excitation_backprop": Case(
            _structured(
                jaxattr.contrastive_excitation_backprop,
                contrast_layer="f",
                classifier_layer="f",
                sum_channels=False,
            )
        ),
        "deep_lift": Case(_structured(jaxattr.deep_lift), baselines="point", delta=True),
        "deep_lift(fn)": Case(jaxattr.deep_lift, baselines="point", delta=True),
        "deep_lift_shap": Case(
            _structured(jaxattr.deep_lift_shap), baselines="distribution", delta=True
        ),
    }
)


@functools.cache
def _inputs_as_layer(fn, n):
    """The contract's function as a structured model whose ``n`` inputs each pass an
    identity layer (``in0``, ``in1``, ...); the container name ``"x"`` stands for all of
    them (a tuple of tensors for a tuple input), so a layer method at ``"x"`` attributes
    the inputs themselves."""
    from jaxattr.structure import Layer

    names = [f"in{i}" for i in range(n)]

    class InputsAsLayer:
        params: dict = {}
        layers = {**{k: Layer(k, "other", "identity") for k in names}, "f": Layer("f", "linear")}

        def output_layers(self, path):
            if path != "x":
                raise KeyError(path)
            return names

        def output_layer(self, path):
            return self.output_layers(path)[0]

        def apply(self, params, *xs, intercept=None):
            intercept = intercept or jaxattr.structure.default_intercept
            xs = [
                intercept(self.layers[k], lambda p, a: a, params, v)
                for k, v in zip(names, xs, strict=True)
            ]
            return intercept(self.layers["f"], lambda p, *a: fn(*a), params, *xs)

    return InputsAsLayer()


def _at_inputs(method, **method_kw):
    """A layer method run at the inputs' identity layers (see :func:`_inputs_as_layer`)."""

    def call(fn, x, **kw):
        n = len(x) if isinstance(x, tuple) else 1
        return method(_inputs_as_layer(fn, n), x, "x", **method_kw, **kw)

    return call


CASES.update(
    {
        "layer_deep_lift_shap": Case(
            _at_inputs(jaxattr.layer_deep_lift_shap), baselines="distribution", delta=True
        ),
        "layer_feature_permutation": Case(
            _at_inputs(jaxattr.layer_feature_permutation),
            random=True,
            chunk="batch_size",
            captum_perturbation=True,
            every_output=True,
        ),
    }
)
ids = list(CASES)
params = [CASES[k] for k in ids]


def close(a, b, tol=1e-5):
    for la, lb in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(
            np.asarray(la, np.float32), np.asarray(lb, np.float32), rtol=tol, atol=tol
        )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_default_promotion_gives_the_same_results(dtype):
    """The suite runs under strict dtype promotion and raising rank promotion (root
    conftest); users run under JAX's defaults. The library makes every promotion explicit,
    so the defaults give the same bits (here: methods that mix dtypes and ranks inside)."""
    names = ["occlusion", "tiled_occlusion", "kernel_shap", "lime", "rise", "smoothgrad"]
    names += ["extremal_perturbation", "fgsm", "pgd"]
    x = X.astype(dtype)
    strict = [CASES[name](mlp, x, target=1) for name in names]
    jaxattr.clear_caches()  # trace again under the defaults
    # what a user gets: JAX's default promotion (this test needs it, as users have it)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        default = [CASES[name](mlp, x, target=1) for name in names]
    for name, a, b in zip(names, strict, default, strict=True):
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32), name)


@pytest.mark.parametrize("case", params, ids=ids)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shape_and_dtype_follow_x(case, dtype):
    x = X.astype(dtype)
    attr = case(mlp, x, target=1)
    assert attr.shape == x.shape and attr.dtype == x.dtype


# fusion_grad's contract model multiplies the float32 mlp by its params, float64 under x64
X64_IDS = [k for k in ids if not k.startswith("fusion_grad")]


@pytest.mark.parametrize("name", X64_IDS)
def test_float64_under_x64(name):
    """With ``jax.enable_x64`` a float64 input gives a float64 attribution, and nothing
    inside mixes the int64 / float64 that x64 makes of ``arange`` and literals with int32 /
    float32 (strict promotion refused two methods: occlusion's window masks and
    extremal_perturbation's area masks)."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.asarray(X), jnp.float64)
        attr = CASES[name](mlp, x, target=1)
        attr = attr[0] if isinstance(attr, tuple) else attr
        assert attr.shape == x.shape and attr.dtype == jnp.float64


@pytest.mark.parametrize("case", params, ids=ids)
def test_tuple_input_gives_tuple_attribution(case):
    attr = case(mlp2, X2, target=2)
    assert isinstance(attr, tuple) and len(attr) == 2
    for a, x in zip(attr, X2, strict=False):
        assert a.shape == x.shape and a.dtype == x.dtype


@pytest.mark.parametrize("case", params, ids=ids)
def test_jit_equals_eager(case):
    eager = case(mlp, X, target=[0, 1, 2])
    jitted = jax.jit(lambda x: case(mlp, x, target=[0, 1, 2]))(X)
    close(jitted, eager)


@pytest.mark.parametrize(
    "case", [c for c in params if c.chunk], ids=[k for k, c in CASES.items() if c.chunk]
)
def test_chunked_equals_unchunked(case):
    whole = case(mlp, X, target=1)
    for size in (1, 2):
        close(case(mlp, X, target=1, **{case.chunk: size}), whole)


@pytest.mark.parametrize("case", params, ids=ids)
def test_vmap_equals_loop(case):
    xs = jnp.stack([X, X * 0.5 + 1.0])  # two batches of three
    vm = jax.vmap(lambda xb: case(mlp, xb, target=1))(xs)
    loop = jnp.stack([case(mlp, xb, target=1) for xb in xs])
    close(vm, loop)


@pytest.mark.parametrize(
    "case", [c for c in params if c.random], ids=[k for k, c in CASES.items() if c.random]
)
def test_fixed_key_fixed_result(case):
    a = case(mlp, X, target=1, key=jax.random.key(1))
    b = case(mlp, X, target=1, key=jax.random.key(1))
    c = case(mlp, X, target=1, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="key"):
        case.call(
            mlp,
            X,
            target=1,
            **({"baselines": jnp.zeros((2, 4))} if case.baselines == "distribution" else {}),
        )


@pytest.mark.parametrize("case", params, ids=ids)
def test_every_target_form(case):
    ref = case(mlp, X, target=1)
    one_hot = jnp.eye(3)[1]
    forms = {
        "list": [1, 1, 1],
        "int array": jnp.array([1, 1, 1]),
        "cotangent row": one_hot[None],
        "cotangent full": jnp.tile(one_hot, (3, 1)),
        "callable": lambda y: jnp.broadcast_to(one_hot, y.shape),
    }
    for name, target in forms.items():
        close(case(mlp, X, target=target), ref), name
    close(case(mlp_cube, X, target=(1, 0)), ref)
    close(case(mlp_cube, X, target=[(1, 0)] * 3), ref)
    close(case(mlp_scalar, X, target=None), case(mlp, X, target=0))
    per_example = case(mlp, X, target=[0, 2, 1])
    for i, t in enumerate([0, 2, 1]):
        close(per_example[i], case(mlp, X, target=t)[i])


def test_second_call_does_not_recompile():
    traces = []

    def counted(x):
        traces.append(1)
        return mlp(x)

    for method in (jaxattr.saliency, jaxattr.integrated_gradients):
        traces.clear()
        method(counted, X, target=1)
        first = len(traces)
        assert first >= 1
        method(counted, X, target=2)  # another class: the index is traced, not static
        method(counted, X + 1.0, target=1)
        assert len(traces) == first, method.__name__


@pytest.mark.parametrize("case", params, ids=ids)
def test_bad_inputs_are_named(case):
    with pytest.raises(ValueError, match=r"target .*out of range"):
        case(mlp, X, target=3)
    if case.every_output:  # Captum: every output element, one attribution each
        every = case(mlp, X, target=None)
        assert every.shape[:2] in ((3 * 3, 4), (3, 3)), every.shape
    else:
        with pytest.raises(ValueError, match="target=None needs one output"):
            case(mlp, X, target=None)
    with pytest.raises(ValueError, match="expected length N=3"):
        case(mlp, X, target=[0, 1])
    with pytest.raises(ValueError, match="broadcast to the output shape"):
        case(mlp, X, target=jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="expected 2 indices"):
        case(mlp_cube, X, target=(1,))
    int_x = jnp.ones((3, 4), jnp.int32)
    if case.captum_perturbation:  # no gradients needed: int inputs are accepted (float out)
        attr = case(lambda x: mlp(x.astype(jnp.float32)), int_x, target=0)
        assert attr.shape == (3, 4) and jnp.issubdtype(attr.dtype, jnp.floating)
    else:
        with pytest.raises(TypeError, match=r"x must be floating point.*int32"):
            case(lambda x: mlp(x.astype(jnp.float32)), int_x, target=0)
    with pytest.raises(ValueError, match=r"same batch size N.*x\[1\]"):
        case(mlp2, (X, jnp.ones((2, 2))), target=0)
    if case.baselines == "point":
        with pytest.raises(ValueError, match=r"baselines has shape \(5,\).*does not broadcast"):
            case(mlp, X, target=0, baselines=jnp.zeros(5))
        with pytest.raises(ValueError, match=r"baselines\[1\] has shape"):
            case(mlp2, X2, target=0, baselines=(0.0, jnp.zeros(3)))
    if case.baselines == "distribution":
        with pytest.raises(ValueError, match=r"expected shape \(M, 4\)"):
            case(mlp, X, target=0, baselines=jnp.zeros((5, 3)))


def test_method_specific_errors():
    with pytest.raises(ValueError, match=r"method must be one of .*'simpson'"):
        jaxattr.integrated_gradients(mlp, X, target=0, method="simpson")
    with pytest.raises(ValueError, match="n_steps must be >= 1, got 0"):
        jaxattr.integrated_gradients(mlp, X, target=0, n_steps=0)
    with pytest.raises(ValueError, match="n_steps must be >= 2"):
        jaxattr.integrated_gradients(mlp, X, target=0, n_steps=1, method="riemann_trapezoid")
    with pytest.raises(TypeError, match="n_steps must be an int"):
        jaxattr.integrated_gradients(mlp, X, target=0, n_steps=2.5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        jaxattr.integrated_gradients(mlp, X, target=0, batch_size=0)
    with pytest.raises(ValueError, match="nt_type must be one of"):
        jaxattr.noise_tunnel(jaxattr.saliency, nt_type="smooth")
    with pytest.raises(ValueError, match="stdevs gives one entry per input: expected 2"):
        jaxattr.noise_tunnel(jaxattr.saliency, stdevs=(0.1,))(mlp2, X2, key=KEY, target=0)
    with pytest.raises(ValueError, match="noise_level must be"):
        jaxattr.smoothgrad(mlp, X, key=KEY, target=0, noise_level=-1.0)
    with pytest.raises(ValueError, match=r"alphas must have shape \(N,\)"):
        jaxattr.input_baseline_x_gradient(mlp, X, alphas=jnp.ones(2), target=0)
    with pytest.raises(ValueError, match="channel_axis"):
        jaxattr.sensitivity(mlp, X, target=0, sum_channels=True, channel_axis=0)
    with pytest.raises(TypeError, match="fn must return one array"):
        jaxattr.gradient(lambda x: (mlp(x), mlp(x)), X, target=0)


@pytest.mark.parametrize(
    "case", [c for c in params if c.delta], ids=[k for k, c in CASES.items() if c.delta]
)
def test_return_delta(case):
    attr, delta = case(mlp, X, target=1, return_delta=True)
    assert attr.shape == X.shape
    assert delta.shape[0] == X.shape[0]
    close(attr, case(mlp, X, target=1))


def test_args_are_passed_after_x():
    scale = jnp.array([2.0])
    fn = lambda x, s: mlp(x) * s[None]
    close(jaxattr.saliency(fn, X, target=1, args=(scale,)), 2 * jaxattr.saliency(mlp, X, target=1))
    close(
        jaxattr.integrated_gradients(fn, X, target=1, args=(scale,)),
        2 * jaxattr.integrated_gradients(mlp, X, target=1),
    )


def test_dict_input_is_passed_whole():
    fn = lambda d: mlp2(d["a"], d["b"])
    attr = jaxattr.integrated_gradients(fn, {"a": X2[0], "b": X2[1]}, target=0)
    ref = jaxattr.integrated_gradients(mlp2, X2, target=0)
    close(attr["a"], ref[0])
    close(attr["b"], ref[1])


def test_grad_through_a_method():
    """Methods are differentiable (e.g. for attribution-regularised training)."""
    g = jax.grad(lambda x: jaxattr.integrated_gradients(mlp, x, target=1, n_steps=4).sum())(X)
    assert g.shape == X.shape and bool(jnp.all(jnp.isfinite(g)))


def _contract_methods():
    import inspect

    return sorted(
        name
        for name in jaxattr.__all__
        if inspect.isfunction(getattr(jaxattr, name))
        and "check_finite" in inspect.signature(getattr(jaxattr, name)).parameters
    )


@pytest.mark.parametrize("name", _contract_methods())
def test_options_after_the_explained_things_are_keyword_only(name):
    """``integrated_gradients(fn, x, 0)`` is an error that says ``target=``, not a baseline."""
    import inspect

    from jaxattr._core import POSITIONAL

    method = getattr(jaxattr, name)
    params = list(inspect.signature(method).parameters.values())
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert set(positional) <= POSITIONAL, positional
    assert positional and positional == [p.name for p in params[: len(positional)]]
    extra = [object()] * (len(positional) + 1)
    with pytest.raises(TypeError, match=r"keyword-only.*by name, e\.g\. "):
        method(*extra)
    if "target" in inspect.signature(method).parameters:
        with pytest.raises(TypeError, match=r"e\.g\. target=\.\.\."):
            method(*extra)


# --------------------------------------------------------------------------------------
# The methods that take a structured model (layer, neuron and CAM methods) and the
# image-only input-space methods, on a tiny Flax CNN: (N, 6, 6, 2) NHWC -> (N, 3).
# --------------------------------------------------------------------------------------


class _TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(4, (3, 3), name="conv2")(x))
        return nn.Dense(3, name="fc")(x.mean(axis=(1, 2)))


@functools.cache
def _tiny():
    from jaxattr.flax import from_linen

    net = _TinyCNN()
    return from_linen(
        net, net.init(jax.random.key(1), jnp.ones((1, 6, 6, 2))), jnp.ones((1, 6, 6, 2))
    )


XI = jax.random.uniform(jax.random.key(2), (3, 6, 6, 2))  # three 6x6 images, 2 channels
LAYER, NEURON = "conv2", (0, 1, 2)  # conv2's output is (N, 6, 6, 4); NEURON: (row, col, channel)
DIST = jnp.stack([XI[0] * 0.5, XI[1] * 0.2])  # a baseline distribution of two images
SEGMENTS = (jnp.arange(36).reshape(6, 6) // 9).astype(jnp.int32)
MASK = jnp.arange(72).reshape(6, 6, 2) // 18  # four features of the image


@dataclasses.dataclass
class ModelCase:
    """How to call a method on ``(model, x)`` with its other arguments bound, and what of
    the contract applies. ``out``, the attribution's shape: like ``"x"``; like the layer's
    output (``"layer"``); that with the channels summed (``"cam"``, channel_axis=-1); like
    x with the channels summed (``"map"``); one coefficient per interpretable feature
    (``"features"``); or a ``"probe"`` dict of the layer's activation and gradient."""

    call: Callable
    out: str = "x"
    random: bool = False
    key_optional: bool = False  # no key: a fixed (unscrambled) design instead of an error
    chunk: str | None = None
    target: bool = True  # takes target= (the neuron methods explain a neuron instead)
    neuron: bool = False  # takes a neuron_selector

    def __call__(self, model, x, **kw):
        if self.random:
            kw.setdefault("key", KEY)
        return self.call(model, x, **kw)


def _layer(method, **method_kw):
    return lambda model, x, **kw: method(model, x, LAYER, **method_kw, **kw)


def _neuron(method, **method_kw):
    return lambda model, x, **kw: method(model, x, LAYER, NEURON, **method_kw, **kw)


def _lb_perturb(key, x0):  # lime_base's functions: module level, so the keys stay stable
    return jax.random.bernoulli(key, 0.5, (1, 4)).astype(jnp.float32)


def _lb_from(z, x0):
    return x0 * z[0][MASK][None]


def _lb_sim(x0, xp, z):
    return jnp.exp(-jnp.sum((x0 - xp) ** 2))


MODEL_CASES = {
    # layer methods: an attribution of the layer's output
    "layer_activation": ModelCase(_layer(jaxattr.layer_activation), "layer", target=False),
    "layer_gradient_x_activation": ModelCase(_layer(jaxattr.layer_gradient_x_activation), "layer"),
    "layer_integrated_gradients": ModelCase(
        _layer(jaxattr.layer_integrated_gradients, n_steps=4), "layer", chunk="batch_size"
    ),
    "layer_conductance": ModelCase(
        _layer(jaxattr.layer_conductance, n_steps=4), "layer", chunk="batch_size"
    ),
    "internal_influence": ModelCase(
        _layer(jaxattr.internal_influence, n_steps=4), "layer", chunk="batch_size"
    ),
    "layer_gradient_shap": ModelCase(
        _layer(jaxattr.layer_gradient_shap, baselines=DIST, n_samples=2), "layer", random=True
    ),
    "layer_deep_lift": ModelCase(_layer(jaxattr.layer_deep_lift), "layer"),
    "layer_deep_lift_shap(model)": ModelCase(
        _layer(jaxattr.layer_deep_lift_shap, baselines=DIST), "layer"
    ),
    "layer_feature_ablation": ModelCase(
        _layer(jaxattr.layer_feature_ablation), "layer", chunk="batch_size"
    ),
    "layer_feature_permutation(model)": ModelCase(
        _layer(jaxattr.layer_feature_permutation), "layer", random=True, chunk="batch_size"
    ),
    "layer_lrp": ModelCase(_layer(jaxattr.layer_lrp, composite=jaxattr.epsilon_plus()), "layer"),
    "probe": ModelCase(_layer(jaxattr.probe), "probe"),
    # CAMs: one map per example on the layer's grid
    "grad_cam": ModelCase(_layer(jaxattr.grad_cam, channel_axis=-1), "cam"),
    "grad_cam_plus_plus": ModelCase(_layer(jaxattr.grad_cam_plus_plus, channel_axis=-1), "cam"),
    "score_cam": ModelCase(_layer(jaxattr.score_cam, channel_axis=-1), "cam", chunk="batch_size"),
    "linear_approx": ModelCase(_layer(jaxattr.linear_approx, channel_axis=-1), "cam"),
    "guided_grad_cam": ModelCase(_layer(jaxattr.guided_grad_cam, channel_axis=-1)),
    # neuron methods: an attribution of the input for one neuron of the layer
    "neuron_gradient": ModelCase(_neuron(jaxattr.neuron_gradient), target=False, neuron=True),
    "neuron_integrated_gradients": ModelCase(
        _neuron(jaxattr.neuron_integrated_gradients, n_steps=4),
        chunk="batch_size",
        target=False,
        neuron=True,
    ),
    "neuron_conductance": ModelCase(
        _neuron(jaxattr.neuron_conductance, n_steps=4), chunk="batch_size", neuron=True
    ),
    "neuron_gradient_shap": ModelCase(
        _neuron(jaxattr.neuron_gradient_shap, baselines=DIST, n_samples=2),
        random=True,
        target=False,
        neuron=True,
    ),
    "neuron_guided_backprop": ModelCase(
        _neuron(jaxattr.neuron_guided_backprop), target=False, neuron=True
    ),
    "neuron_deconvolution": ModelCase(
        _neuron(jaxattr.neuron_deconvolution), target=False, neuron=True
    ),
    "neuron_deep_lift": ModelCase(_neuron(jaxattr.neuron_deep_lift), target=False, neuron=True),
    "neuron_deep_lift_shap": ModelCase(
        _neuron(jaxattr.neuron_deep_lift_shap, baselines=DIST), target=False, neuron=True
    ),
    "neuron_feature_ablation": ModelCase(
        _neuron(jaxattr.neuron_feature_ablation, feature_mask=MASK),
        chunk="batch_size",
        target=False,
        neuron=True,
    ),
    # input-space methods that need images (a spatial grid or segments)
    "blur_ig": ModelCase(
        lambda m, x, **kw: jaxattr.blur_ig(m, x, steps=4, max_sigma=2.0, channel_axis=-1, **kw),
        chunk="batch_size",
    ),
    "guided_ig": ModelCase(lambda m, x, **kw: jaxattr.guided_ig(m, x, steps=4, **kw)),
    "sobol_attribution": ModelCase(
        lambda m, x, **kw: jaxattr.sobol_attribution(
            m, x, grid_size=2, nb_design=4, channel_axis=-1, **kw
        ),
        "map",
        random=True,
        key_optional=True,
        chunk="batch_size",
    ),
    "hsic_attribution": ModelCase(
        lambda m, x, **kw: jaxattr.hsic_attribution(
            m, x, grid_size=2, nb_design=8, channel_axis=-1, **kw
        ),
        "map",
        random=True,
        key_optional=True,
        chunk="batch_size",
    ),
    "xrai": ModelCase(
        lambda m, x, **kw: jaxattr.xrai(
            m,
            x,
            segments=SEGMENTS,
            channel_axis=-1,
            extra_parameters=jaxattr.XRAIParameters(
                steps=4, experimental_params={"min_pixel_diff": 2}
            ),
            **kw,
        ),
        "map",
        chunk="batch_size",
    ),
    "lime_base": ModelCase(
        lambda m, x, **kw: jaxattr.lime_base(
            m,
            x,
            n_samples=16,
            interpretable_model="linear",
            similarity_func=_lb_sim,
            perturb_func=_lb_perturb,
            from_interp_rep_transform=_lb_from,
            **kw,
        ),
        "features",
        random=True,
        chunk="batch_size",
    ),
}
model_ids = list(MODEL_CASES)


def _model_ids(flag=None):
    return [k for k in model_ids if flag is None or getattr(MODEL_CASES[k], flag)]


@functools.cache
def _model_eager(name, target=1):
    case = MODEL_CASES[name]
    return case(_tiny(), XI, **({"target": target} if case.target else {}))


def _target(case, t=1):
    return {"target": t} if case.target else {}


@pytest.mark.parametrize("name", model_ids)
def test_model_methods_shape_and_dtype(name):
    case, model = MODEL_CASES[name], _tiny()
    attr = _model_eager(name)
    layer = jaxattr.layer_activation(model, XI, LAYER)
    want = {
        "x": XI.shape,
        "layer": layer.shape,
        "cam": (*layer.shape[:-1], 1),
        "map": XI.shape[:-1],  # one value per pixel (Xplique's maps: channels summed)
        "features": (XI.shape[0], 4),  # lime_base: one coefficient per interpretable feature
    }
    if case.out == "probe":
        assert set(attr) == {LAYER} and set(attr[LAYER]) == {"activation", "gradient"}
        for a in attr[LAYER].values():
            assert a.shape == layer.shape and a.dtype == XI.dtype
    else:
        assert attr.shape == want[case.out] and attr.dtype == XI.dtype, (attr.shape, attr.dtype)
        assert bool(jnp.all(jnp.isfinite(attr)))


@pytest.mark.parametrize("name", _model_ids("chunk"))
def test_model_methods_chunked_equals_unchunked(name):
    case = MODEL_CASES[name]
    close(case(_tiny(), XI, **{case.chunk: 2}, **_target(case)), _model_eager(name), tol=1e-4)


@pytest.mark.parametrize("name", model_ids)
def test_model_methods_jit_vmap_equals_eager_loop(name):
    """jit == eager and vmap == loop in one compilation (these tests' cost is compiling):
    ``jit(vmap(method))`` over two batches equals the eager method run on each; every
    method here is jittable."""
    case, model = MODEL_CASES[name], _tiny()
    xs = jnp.stack([XI, XI * 0.5 + 0.2])  # two batches of three
    vmapped = jax.vmap(lambda xb: case(model, xb, **_target(case)))
    got = jax.jit(vmapped)(xs)
    loop = [_model_eager(name), case(model, xs[1], **_target(case))]
    close(got, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *loop), tol=1e-4)


@pytest.mark.parametrize("name", _model_ids("random"))
def test_model_methods_fixed_key_fixed_result(name):
    case, model = MODEL_CASES[name], _tiny()
    a = case(model, XI, key=jax.random.key(1), **_target(case))
    b = case(model, XI, key=jax.random.key(1), **_target(case))
    c = case(model, XI, key=jax.random.key(2), **_target(case))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    if case.key_optional:
        unkeyed = case.call(model, XI, **_target(case))
        np.testing.assert_array_equal(unkeyed, case.call(model, XI, **_target(case)))
    else:
        with pytest.raises(ValueError, match="key"):
            case.call(model, XI, **_target(case))


@pytest.mark.parametrize("name", model_ids)
def test_model_methods_bad_inputs_are_named(name):
    case, model = MODEL_CASES[name], _tiny()
    if case.target:
        with pytest.raises(ValueError, match=r"target .*out of range"):
            case(model, XI, target=3)
        with pytest.raises(ValueError, match="expected length N=3"):
            case(model, XI, target=[0, 1])
    method = getattr(jaxattr, name.split("(")[0])
    kw = {**_target(case, 0), **_required(method)}
    if "layer" in inspect.signature(method).parameters:
        pos = (NEURON,) if case.neuron else ()
        with pytest.raises(KeyError, match="layer 'conv9' is not a layer of the model"):
            method(model, XI, "conv9", *pos, **kw)
    if case.neuron:
        with pytest.raises(ValueError, match="out of range"):
            method(model, XI, LAYER, (0, 1, 4), **kw)
        with pytest.raises(ValueError, match="must index every non-batch axis"):
            method(model, XI, LAYER, (0, 1), **kw)


def _required(method):
    """The keyword arguments a method cannot do without (baselines, composite, key)."""
    params = inspect.signature(method).parameters
    need = {"baselines": DIST, "composite": jaxattr.epsilon_plus(), "key": KEY}
    return {
        k: v
        for k, v in need.items()
        if k in params and (params[k].default is inspect.Parameter.empty or k == "key")
    }


#: Public functions that are not attribution methods (none takes a model or function and
#: the x to explain and returns an attribution of x), by kind. Every other public function
#: must have a contract case above (in CASES or MODEL_CASES).
NOT_METHODS = {
    # the random draws of the methods (to replay them against a reference's)
    "draw_noise", "fusion_grad_draws", "gradient_shap_draws", "kernel_shap_samples",
    "lime_samples", "pgd_random_start", "rise_masks", "shapley_permutations",
    "smoothgrad_draws", "sobol_design", "sobol_sequence", "uniform_perturb",
    # perturbation and segmentation building blocks
    "occlude_independent", "permute_feature", "smooth_mask", "felzenszwalb", "xrai_segments",
    # the plan behind incremental occlusion / feature ablation (for inspection)
    "incremental_plan",
    # estimators and surrogate fits behind sobol, hsic and lime
    "sobol_total_indices", "hsic_indices", "fit_lasso", "fit_linear", "fit_ridge", "fit_sgd",
    "get_exp_kernel_similarity_function",
    # metrics: they score attributions already made (and take them)
    "completeness", "deletion_curve", "insertion_curve", "infidelity", "pointing_game",
    "sensitivity_max",
    # combinators: run a given method over targets, neurons or a dataset, or make a neuron
    # a model; the methods they run are in the contract
    "for_each_target", "for_each_neuron", "attribute_dataset", "neuron_model",
    # LRP rules, composites, canonizers: arguments of lrp / layer_lrp
    "alpha_beta", "beta_smooth", "captum_alpha1_beta0", "captum_gamma", "captum_lrp_composite",
    "epsilon", "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box",
    "epsilon_plus", "epsilon_plus_flat", "excitation_backprop_composite", "gamma",
    "guided_backprop_composite", "layer_map_base", "mixed_composite", "pass_rule",
    "relu_beta_smooth", "relu_guided_backprop", "w_square", "z_box", "z_plus", "apply_rule",
    "stabilize", "is_relu", "named_merge_batch_norm", "merge_batch_norm", "canonize",
    "attach", "residual_sums",
    # model structure, targets, quadrature, resizing
    "layer_graph", "model_buffers", "select_target", "one_hot_max",
    "quadrature", "interpolate", "gradient_to_saliency",
    # configuration
    "clear_caches", "compiler_options", "memory_budget", "set_memory_budget",
}  # fmt: skip


def _looks_like_a_method(fn):
    """By signature: the explained things first, ``(fn | model, x, ...)``, or a method
    transform ``(method)`` (noise_tunnel, fusion_grad) that returns one."""
    pos = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    return pos[:2] in (["fn", "x"], ["model", "x"]) or pos == ["method"]


def test_every_public_method_is_in_the_contract():
    from jaxattr._core import POSITIONAL

    public = {n for n in jaxattr.__all__ if inspect.isfunction(getattr(jaxattr, n))}
    covered = {k.split("(")[0] for k in [*CASES, *MODEL_CASES]}
    assert covered <= public, covered - public
    assert NOT_METHODS <= public, NOT_METHODS - public  # no stale exclusions
    assert not covered & NOT_METHODS, covered & NOT_METHODS
    unclassified = public - covered - NOT_METHODS
    assert not unclassified, f"public functions with no contract case: {sorted(unclassified)}"
    methods = {n for n in public if _looks_like_a_method(getattr(jaxattr, n))}
    # a method-shaped exclusion must be a metric: it takes the attributions it scores
    for name in methods & NOT_METHODS:
        assert "attributions" in inspect.signature(getattr(jaxattr, name)).parameters, name
    assert methods - NOT_METHODS == covered, (methods - NOT_METHODS) ^ covered
    for name in covered:  # the explained things come first, named as the contract names them
        first = next(iter(inspect.signature(getattr(jaxattr, name)).parameters))
        assert first in POSITIONAL, (name, first)
