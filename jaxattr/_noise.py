"""Noise methods: the noise tunnel wrapper, SmoothGrad (Zennit) and GradientSHAP."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core
from jaxattr._core import PyTree
from jaxattr._gradient import completeness_delta

__all__ = [
    "NT_TYPES",
    "draw_noise",
    "gradient_shap",
    "gradient_shap_draws",
    "noise_tunnel",
    "smoothgrad",
    "smoothgrad_draws",
]

#: The smoothing types of Captum's ``NoiseTunnel``.
NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _per_leaf(value: Any, x: PyTree, name: str) -> list:
    """A scalar option, or one value per input of a tuple/pytree ``x``."""
    n_leaves = len(jax.tree_util.tree_leaves(x))
    single = lambda v: not isinstance(v, (tuple, list))  # noqa: E731
    values = _core.per_leaf(value, n_leaves, name, single=single)
    for v in values:
        if not isinstance(v, (int, float, np.number)) or isinstance(v, bool):
            raise TypeError(f"{name} must be a float or a tuple of floats, got {value!r}")
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    return [float(v) for v in values]


def draw_noise(key: jax.Array, x: PyTree, stdevs: Any, n_samples: int) -> PyTree:
    """Gaussian noise for ``n_samples`` copies of x: leaves of shape (n_samples, *leaf.shape).

    The draw behind :func:`noise_tunnel` and :func:`gradient_shap`, exposed so tests (and
    users comparing with another library) can reproduce it exactly.
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    sds = _per_leaf(stdevs, x, "stdevs")
    keys = jax.random.split(key, len(leaves))
    noise = [
        sd * jax.random.normal(k, (n_samples, *leaf.shape), leaf.dtype)
        for k, leaf, sd in zip(keys, leaves, sds, strict=False)
    ]
    return jax.tree_util.tree_unflatten(treedef, noise)


#: Method options whose arrays fix shapes (the number of features): kept static.
STATIC_ARRAY_OPTIONS = ("feature_mask",)


class _StaticArray:
    """A concrete array carried as a static option (hashed by its contents)."""

    __slots__ = ("array", "_key")

    def __init__(self, array: Any):
        self.array = np.asarray(array)
        self._key = (self.array.shape, str(self.array.dtype), self.array.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _StaticArray) and self._key == other._key


def _freeze_static_arrays(kwargs: dict) -> dict:
    """Mark the concrete arrays of shape-fixing options (``feature_mask``) static, so
    that a wrapped method sees them concrete inside the wrapper's compiled program."""
    out = dict(kwargs)
    for name in STATIC_ARRAY_OPTIONS:
        if out.get(name) is not None:
            out[name] = jax.tree_util.tree_map(
                lambda a: _StaticArray(a) if _core.is_concrete(a) and hasattr(a, "shape") else a,
                out[name],
            )
    return out


def _thaw_static_arrays(kwargs: dict) -> dict:
    out = dict(kwargs)
    for name in STATIC_ARRAY_OPTIONS:
        if out.get(name) is not None:
            out[name] = jax.tree_util.tree_map(
                lambda a: a.array if isinstance(a, _StaticArray) else a, out[name]
            )
    return out


def _split_static(kwargs: dict) -> tuple[list, tuple]:
    """Split method kwargs into traced arrays and a hashable static description.

    Arrays of ``feature_mask`` stay concrete (static): they fix the number of features.
    """
    kwargs = _freeze_static_arrays(kwargs)
    leaves, treedef = jax.tree_util.tree_flatten(kwargs)
    dynamic, static = [], []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, (jax.Array, np.ndarray)):
            dynamic.append(leaf)
        else:
            static.append((i, leaf))
    return dynamic, (treedef, tuple(static), len(leaves))


def _join_static(dynamic: list, spec: tuple) -> dict:
    treedef, static, count = spec
    leaves = [None] * count
    it = iter(dynamic)
    static_map = dict(static)
    for i in range(count):
        leaves[i] = static_map[i] if i in static_map else next(it)
    return _thaw_static_arrays(jax.tree_util.tree_unflatten(treedef, leaves))


@_core.cached_jit(("fn", "method", "spec", "takes_key", "return_delta"))
def _tunnel_chunk(*, fn, method, x, noise, baselines, keys, dynamic, spec, takes_key, return_delta):
    """Run ``method`` on x + noise[s] for every sample s of the chunk (one vmap)."""
    kwargs = _join_static(dynamic, spec)

    def one(noise_s, base_s, key_s):
        xs = jax.tree_util.tree_map(jnp.add, x, noise_s)
        kw = dict(kwargs)
        if base_s is not None:
            kw["baselines"] = base_s
        if takes_key:
            kw["key"] = key_s
        if return_delta:
            kw["return_delta"] = True
        return method(fn, xs, **kw)

    out = jax.vmap(one)(noise, baselines, keys)
    attr, delta = out if return_delta else (out, None)
    total = jax.tree_util.tree_map(lambda a: a.sum(0), attr)
    total_sq = jax.tree_util.tree_map(lambda a: (a * a).sum(0), attr)
    return total, total_sq, delta


def noise_tunnel(
    method: Callable[..., Any],
    *,
    nt_type: str = "smoothgrad",
    nt_samples: int = 5,
    nt_samples_batch_size: int | None = None,
    stdevs: float | tuple[float, ...] = 1.0,
    draw_baseline_from_distrib: bool = False,
) -> Callable[..., Any]:
    """Wrap any attribution method in Captum's ``NoiseTunnel`` (SmoothGrad, VarGrad).

    The returned method adds ``N(0, stdevs^2)`` noise to the input ``nt_samples`` times,
    runs ``method`` on each noisy copy (the samples are one ``vmap``-ped batch, chunked by
    ``nt_samples_batch_size``) and combines the attributions: their mean (``smoothgrad``),
    the mean of their squares (``smoothgrad_sq``) or their variance (``vargrad``).

    Args:
        method: A jaxattr method ``method(fn, x, **kwargs)``, e.g.
            :func:`jaxattr.saliency` or :func:`jaxattr.integrated_gradients`.
        nt_type: ``smoothgrad``, ``smoothgrad_sq`` or ``vargrad``.
        nt_samples: Noisy samples per example.
        nt_samples_batch_size: At most this many samples per compiled call.
        stdevs: Standard deviation of the noise, or one per input of a tuple ``x``.
        draw_baseline_from_distrib: Treat ``baselines`` (shape (M, ...) per input) as a
            distribution and draw one baseline for every example and sample.

    Returns:
        A method ``tunnel(fn, x, *, key, target=None, return_delta=False, args=(),
        **kwargs)``; ``key`` seeds the noise, other keywords (``baselines``, ``n_steps``,
        ...) go to ``method``. With ``return_delta=True`` it returns
        ``(attribution, delta)`` with one delta per example and sample, shape
        (N, nt_samples).

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> sg = jaxattr.noise_tunnel(jaxattr.saliency, nt_samples=4, stdevs=0.1)
        >>> fn = lambda x: (3.0 * x).sum(1)
        >>> sg(fn, jnp.ones((2, 5)), key=jax.random.key(0)).shape
        (2, 5)
    """
    _core.check_choice(nt_type, "nt_type", NT_TYPES)
    nt_samples = _core.check_positive_int(nt_samples, "nt_samples")
    if nt_samples_batch_size is not None:
        nt_samples_batch_size = _core.check_positive_int(
            nt_samples_batch_size, "nt_samples_batch_size"
        )
    if not callable(method):
        raise TypeError(f"method must be a jaxattr method, got {type(method).__name__}")
    try:
        takes_key = "key" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes_key = False

    @_core.contract
    def tunnel(
        fn: Callable[..., Any],
        x: PyTree,
        *,
        key: jax.Array | None = None,
        return_delta: bool = False,
        **kwargs: Any,
    ):
        key = _core.check_key(key, "noise_tunnel")
        x = _core.to_arrays(x)
        inputs = _core.as_inputs(x)
        k_noise, k_base, k_method = jax.random.split(key, 3)
        noise = draw_noise(k_noise, x, stdevs, nt_samples)
        if "target" in kwargs:  # validate eagerly, with the full error message
            _core.prepare_target(kwargs["target"], fn, inputs, x, tuple(kwargs.get("args", ())))
        baselines = None
        if draw_baseline_from_distrib:
            dist = _core.baseline_distribution(kwargs.pop("baselines", None), x)
            m = jax.tree_util.tree_leaves(dist)[0].shape[0]
            idx = jax.random.randint(k_base, (nt_samples, inputs.n), 0, m)
            baselines = jax.tree_util.tree_map(lambda d: d[idx], dist)
        kwargs = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
        dynamic, spec = _split_static(kwargs)
        keys = jax.random.split(k_method, nt_samples)
        total = total_sq = None
        deltas = []
        for start, stop in _core.batched_chunks(nt_samples, nt_samples_batch_size):
            part = functools.partial(jax.tree_util.tree_map, lambda a, s=start, e=stop: a[s:e])
            t, t_sq, d = _tunnel_chunk(
                fn=fn,
                method=method,
                x=x,
                noise=part(noise),
                baselines=None if baselines is None else part(baselines),
                keys=keys[start:stop],
                dynamic=dynamic,
                spec=spec,
                takes_key=takes_key,
                return_delta=return_delta,
            )
            total, total_sq = _core.tree_add(total, t), _core.tree_add(total_sq, t_sq)
            deltas.append(d)
        mean = jax.tree_util.tree_map(lambda a: a / nt_samples, total)
        mean_sq = jax.tree_util.tree_map(lambda a: a / nt_samples, total_sq)
        if nt_type == "smoothgrad":
            attr = mean
        elif nt_type == "smoothgrad_sq":
            attr = mean_sq
        else:
            attr = jax.tree_util.tree_map(lambda m2, m: m2 - m * m, mean_sq, mean)
        if return_delta:
            return attr, jnp.concatenate(deltas, axis=0).T
        return attr

    tunnel.__name__ = f"noise_tunnel({getattr(method, '__name__', 'method')})"
    tunnel.__doc__ = (
        f"``{getattr(method, '__name__', 'method')}`` under a noise tunnel "
        f"(nt_type={nt_type!r}, nt_samples={nt_samples}, stdevs={stdevs!r})."
    )
    return tunnel


def smoothgrad_draws(
    key: jax.Array, x: PyTree, noise_level: float, n_iter: int
) -> tuple[PyTree, PyTree]:
    """The random draws of :func:`smoothgrad` for ``key``.

    Returns:
        ``(normal, sigma)``: standard normal draws with leaves of shape
        (n_iter - 1, *leaf.shape) for the noisy samples (the clean sample needs none), and
        each example's noise scale ``noise_level * (max - min)``, leaves (N, 1, ...).
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    keys = jax.random.split(key, len(leaves))
    normal, sigma = [], []
    for k, leaf in zip(keys, leaves, strict=False):
        axes = tuple(range(1, leaf.ndim))
        sigma.append(noise_level * (leaf.max(axes, keepdims=True) - leaf.min(axes, keepdims=True)))
        normal.append(jax.random.normal(k, (n_iter - 1, *leaf.shape), leaf.dtype))
    unflatten = functools.partial(jax.tree_util.tree_unflatten, treedef)
    return unflatten(normal), unflatten(sigma)


@_core.cached_jit(("fn", "inputs"))
def _smoothgrad_chunk(*, fn, inputs, x, noise, args, target):
    def one(noise_s):
        xs = jax.tree_util.tree_map(jnp.add, x, noise_s)
        return _core.input_gradient(fn, inputs, xs, args, target)

    return jax.tree_util.tree_map(lambda g: g.sum(0), jax.vmap(one)(noise))


@_core.contract
def smoothgrad(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    noise_level: float = 0.1,
    n_iter: int = 20,
    target: Any = None,
    batch_size: int | None = None,
    args: tuple = (),
) -> PyTree:
    """SmoothGrad with Zennit's semantics (Smilkov et al., 2017).

    The mean gradient over ``n_iter`` samples ``x + eps``, ``eps ~ N(0, sigma^2)`` with
    ``sigma = noise_level * (max(x_n) - min(x_n))`` relative to each example's value range.
    One sample is always the clean input, so ``n_iter=1`` equals :func:`gradient`. For
    Captum's ``NoiseTunnel`` semantics (absolute ``stdevs``) use :func:`noise_tunnel`.
    Under an LRP composite's rewritten ``fn`` this is Zennit's hybrid "smooth LRP".

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        key: PRNG key for the noise.
        noise_level: Noise standard deviation relative to each example's value range.
        n_iter: Number of samples, the clean one included.
        target: What to explain (see :func:`jaxattr.select_target`).
        batch_size: At most this many samples per compiled call.
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The mean gradient, with x's structure, shapes and dtypes.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (2.0 * x).sum(1)
        >>> jaxattr.smoothgrad(fn, jnp.ones((1, 3)), key=jax.random.key(0), n_iter=5)
        Array([[2., 2., 2.]], dtype=float32)
    """
    n_iter = _core.check_positive_int(n_iter, "n_iter")
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    if not isinstance(noise_level, (int, float)) or noise_level < 0:
        raise ValueError(f"noise_level must be a float >= 0, got {noise_level!r}")
    key = _core.check_key(key, "smoothgrad")
    x, args, inputs, t = _core.prepare(fn, x, target, args)
    normal, sigma = smoothgrad_draws(key, x, noise_level, n_iter)
    noise = jax.tree_util.tree_map(
        lambda z, s, xl: jnp.concatenate([jnp.zeros((1, *xl.shape), xl.dtype), z * s[None]]),
        normal,
        sigma,
        x,
    )
    total = None
    for start, stop in _core.batched_chunks(n_iter, batch_size):
        part = jax.tree_util.tree_map(lambda a, s=start, e=stop: a[s:e], noise)
        total = _core.tree_add(
            total,
            _smoothgrad_chunk(fn=fn, inputs=inputs, x=x, noise=part, args=args, target=t),
        )
    return _core.cast_like(jax.tree_util.tree_map(lambda a: a / n_iter, total), x)


def resolve_baselines(baselines: Any, x: PyTree) -> Any:
    """Captum's callable baselines: call ``baselines()`` or ``baselines(x)`` for the value.

    A baseline *distribution* can be made by a function rather than passed (Captum's
    ``GradientShap``, ``DeepLiftShap`` and their layer and neuron variants accept
    ``Callable[..., Tensor | tuple]``): a function without parameters is called as is,
    any other with the inputs ``x`` (as given to the method). Anything else is returned
    unchanged.

    Args:
        baselines: Baselines, or a callable making them.
        x: The inputs being attributed.

    Returns:
        The baselines (the callable's value).

    Raises:
        TypeError: The callable returned no array or tuple of arrays.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr._noise import resolve_baselines
        >>> resolve_baselines(lambda: jnp.zeros((2, 3)), jnp.ones((1, 3))).shape
        (2, 3)
        >>> resolve_baselines(lambda x: 0.5 * x, jnp.ones((1, 3)))
        Array([[0.5, 0.5, 0.5]], dtype=float32)
    """
    if not callable(baselines) or hasattr(baselines, "shape"):
        return baselines
    try:
        n_params = len(inspect.signature(baselines).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: give it the inputs
        n_params = 1
    value = baselines() if n_params == 0 else baselines(x)
    if value is None or callable(value) and not hasattr(value, "shape"):
        raise TypeError(
            f"baselines: a callable must return the baselines (an array or one per input), "
            f"got {type(value).__name__} from {getattr(baselines, '__name__', baselines)!r}"
        )
    return value


def gradient_shap_draws(
    key: jax.Array, x: PyTree, n_baselines: int, n_samples: int, stdevs: Any
) -> tuple[PyTree, jax.Array, jax.Array]:
    """The random draws of :func:`gradient_shap` for ``key``.

    Returns:
        ``(noise, baseline_index, alphas)``: input noise with leaves of shape
        (n_samples, N, ...), the drawn baseline of every sample and example (n_samples, N)
        and the interpolation coefficients (n_samples, N).
    """
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    k_noise, k_idx, k_alpha = jax.random.split(key, 3)
    noise = draw_noise(k_noise, x, stdevs, n_samples)
    idx = jax.random.randint(k_idx, (n_samples, n), 0, n_baselines)
    alphas = jax.random.uniform(k_alpha, (n_samples, n))
    return noise, idx, alphas


def gradient_shap_sample(x, dist, noise_s, idx_s, alpha_s):
    """One GradientSHAP sample: ``(noisy input, its baseline, the point between them)``.

    The body every GradientSHAP shares (input, layer and neuron): ``noise_s``, ``idx_s`` and
    ``alpha_s`` are one sample of :func:`gradient_shap_draws`; ``dist`` holds the baselines.
    """
    xs = jax.tree_util.tree_map(jnp.add, x, noise_s)
    bs = jax.tree_util.tree_map(lambda d: d[idx_s], dist)

    def between(xl, bl):
        a = alpha_s.reshape((-1,) + (1,) * (xl.ndim - 1)).astype(xl.dtype)
        return bl + a * (xl - bl)

    return xs, bs, jax.tree_util.tree_map(between, xs, bs)


@_core.cached_jit(("fn", "inputs", "multiply_by_inputs", "return_delta"))
def _gradient_shap_core(
    *, fn, inputs, x, dist, noise, idx, alphas, args, target, multiply_by_inputs, return_delta
):
    def one(noise_s, idx_s, alpha_s):
        xs, bs, point = gradient_shap_sample(x, dist, noise_s, idx_s, alpha_s)
        grad = _core.input_gradient(fn, inputs, point, args, target)
        if multiply_by_inputs:
            attr = jax.tree_util.tree_map(lambda g, xl, bl: g * (xl - bl), grad, xs, bs)
        else:
            attr = grad
        if not return_delta:
            return attr, None
        return attr, completeness_delta(fn, inputs, xs, bs, args, target, attr)

    attr, delta = jax.vmap(one)(noise, idx, alphas)
    mean = _core.cast_like(jax.tree_util.tree_map(lambda a: a.mean(0), attr), x)
    return (mean, delta.T) if return_delta else mean


@_core.contract
def gradient_shap(
    fn: Callable[..., Any],
    x: PyTree,
    baselines: Any,
    *,
    key: jax.Array | None = None,
    n_samples: int = 5,
    stdevs: float | tuple[float, ...] = 0.0,
    target: Any = None,
    multiply_by_inputs: bool = True,
    return_delta: bool = False,
    args: tuple = (),
) -> PyTree | tuple[PyTree, jax.Array]:
    """GradientSHAP (Lundberg and Lee, 2017), Captum's ``GradientShap``.

    For every example, ``n_samples`` times: add ``N(0, stdevs^2)`` noise to the input, draw
    a baseline from the distribution ``baselines`` and a point ``alpha ~ U[0, 1]`` on the
    line between them, and take ``gradient * (noisy input - baseline)``; the attribution
    is the mean. It approximates SHAP values in expectation. All samples are one
    ``vmap``-ped batch.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        baselines: The baseline distribution: per input an array of shape (M, ...)
            (a single baseline (1, ...) works too). One baseline example is drawn whole
            (the same index for every input of a tuple). A callable is Captum's form:
            ``baselines()`` or ``baselines(x)`` gives the distribution
            (:func:`resolve_baselines`).
        key: PRNG key for the noise, baselines and alphas (:func:`gradient_shap_draws`).
        n_samples: Samples per example.
        stdevs: Input noise standard deviation, or one per input.
        target: What to explain (see :func:`jaxattr.select_target`).
        multiply_by_inputs: Multiply by ``(input - baseline)`` (global attribution).
        return_delta: Also return ``sum(attr) - (f(x + noise) - f(baseline))`` for every
            example and sample, shape (N, n_samples).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes, or ``(attribution, delta)``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (2.0 * x).sum(1)
        >>> jaxattr.gradient_shap(fn, jnp.ones((1, 2)), baselines=jnp.zeros((4, 2)),
        ...                       key=jax.random.key(0))
        Array([[2., 2.]], dtype=float32)
    """
    n_samples = _core.check_positive_int(n_samples, "n_samples")
    key = _core.check_key(key, "gradient_shap")
    x, args, inputs, t = _core.prepare(fn, x, target, args)
    dist = _core.baseline_distribution(resolve_baselines(baselines, x), x)
    m = jax.tree_util.tree_leaves(dist)[0].shape[0]
    noise, idx, alphas = gradient_shap_draws(key, x, m, n_samples, stdevs)
    return _gradient_shap_core(
        fn=fn,
        inputs=inputs,
        x=x,
        dist=dist,
        noise=noise,
        idx=idx,
        alphas=alphas,
        args=args,
        target=t,
        multiply_by_inputs=multiply_by_inputs,
        return_delta=return_delta,
    )
