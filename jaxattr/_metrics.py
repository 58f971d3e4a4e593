"""Metrics of attribution quality: infidelity, max-sensitivity, deletion/insertion,
pointing game and completeness.

``infidelity`` and ``sensitivity_max`` follow Captum's ``captum.metrics`` exactly, with
one difference of interface: randomness comes from an explicit ``key``, so perturbation
functions take the key as their first argument. Perturbation samples are one ``vmap``-ped
batch, split by ``batch_size`` into compiled chunks, like the expansions of the methods.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core
from jaxattr._core import PyTree
from jaxattr._gradient import completeness_delta
from jaxattr._noise import _join_static, _split_static

__all__ = [
    "Curve",
    "completeness",
    "deletion_curve",
    "infidelity",
    "insertion_curve",
    "pointing_game",
    "sensitivity_max",
    "uniform_perturb",
]


def _flat_sum(tree: PyTree) -> jax.Array:
    """Per-example sum over every leaf, shape (N,)."""
    return sum(jnp.sum(a.reshape(a.shape[0], -1), axis=1) for a in jax.tree_util.tree_leaves(tree))


def _check_like_x(value: PyTree, x: PyTree, name: str, convert: bool = True) -> PyTree:
    """``value`` must have x's structure and shapes (attributions, perturbations)."""
    x_leaves, treedef = jax.tree_util.tree_flatten(x)
    try:
        leaves = treedef.flatten_up_to(value)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{name} must have the structure of x ({treedef}), got "
            f"{jax.tree_util.tree_structure(value)}"
        ) from err
    out = []
    for i, (xl, vl) in enumerate(zip(x_leaves, leaves, strict=False)):
        shape = tuple(getattr(vl, "shape", np.shape(vl)))
        if shape != tuple(xl.shape):
            where = f"{name}[{i}]" if len(x_leaves) > 1 else name
            raise ValueError(
                f"{where} must have the shape of the matching input {tuple(xl.shape)}, got {shape}"
            )
        out.append(vl if isinstance(vl, jax.Array) or not convert else jnp.asarray(vl))
    return jax.tree_util.tree_unflatten(treedef, out)


def _n_params(func: Callable[..., Any]) -> int:
    try:
        return len(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return 2


# --------------------------------------------------------------------------------------
# Infidelity
# --------------------------------------------------------------------------------------


@_core.cached_jit(("fn", "perturb_func", "inputs", "with_baselines"))
def _infidelity_chunk(
    *, fn, perturb_func, inputs, x, attributions, baselines, keys, args, target, with_baselines
):
    fx = _core.scores(fn, inputs, x, args, target)
    base = _core.expand_baselines(baselines, x) if with_baselines else None

    def one(k):
        pert, xp = perturb_func(k, x, base) if with_baselines else perturb_func(k, x)
        dot = _flat_sum(jax.tree_util.tree_map(jnp.multiply, attributions, pert))
        return dot, fx - _core.scores(fn, inputs, xp, args, target)

    dot, diff = jax.vmap(one)(keys)  # (S, N) each
    return (dot * dot).sum(0), (dot * diff).sum(0), (diff * diff).sum(0), ((dot - diff) ** 2).sum(0)


@_core.contract
def infidelity(
    fn: Callable[..., Any],
    perturb_func: Callable[..., tuple[PyTree, PyTree]],
    x: PyTree,
    attributions: PyTree,
    *,
    baselines: Any = None,
    target: Any = None,
    n_perturb_samples: int = 10,
    normalize: bool = False,
    key: jax.Array | None = None,
    batch_size: int | None = None,
    args: tuple = (),
) -> jax.Array:
    """Infidelity of an explanation (Yeh et al., 2019), Captum's ``infidelity``.

    The expected squared error between the attribution's prediction of an output change,
    ``sum(attributions * I)``, and the actual change ``f(x) - f(x - I)`` under random
    perturbations ``I``: ``mean_I (sum(a * I) - (f(x) - f(x_perturbed)))^2`` per example.
    With ``normalize=True`` the attribution is first rescaled by the least-squares factor
    ``beta = E[a.I * diff] / E[(a.I)^2]``, which makes the score invariant to the
    attribution's scale.

    Unlike Captum, the perturbation function takes a PRNG key first: ``perturb_func(key,
    x)`` (or ``perturb_func(key, x, baselines)`` when ``baselines`` are given) returns
    ``(perturbation, perturbed_x)``, both with x's structure and shapes (N, ...). It is
    called once per sample with ``jax.random.split(key, n_perturb_samples)[s]`` on the
    whole batch, under ``vmap``; Captum calls it on a batch with every example repeated
    ``n_perturb_samples`` times instead. Perturbations are the ``I`` above: for the
    paper's ``x - I`` convention return ``(eps, x - eps)``.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        perturb_func: ``(key, x[, baselines]) -> (perturbation, perturbed_x)``.
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        attributions: The explanation, with x's structure and shapes.
        baselines: Passed to ``perturb_func`` (broadcast to x's shapes) when given.
        target: What to explain (see :func:`jaxattr.select_target`).
        n_perturb_samples: Perturbations per example.
        normalize: Rescale the attribution by ``beta`` first.
        key: PRNG key for the perturbations.
        batch_size: At most this many perturbation samples per compiled call.
        args: Extra positional arrays passed to ``fn`` after ``x``; not perturbed.

    Returns:
        The infidelity of every example, shape (N,).

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (3.0 * x).sum(1)
        >>> def perturb(key, x):
        ...     eps = 0.1 * jax.random.normal(key, x.shape)
        ...     return eps, x - eps
        >>> x = jnp.ones((2, 4))
        >>> attr = jaxattr.gradient(fn, x)  # linear model: exact, infidelity 0
        >>> jaxattr.infidelity(fn, perturb, x, attr, key=jax.random.key(0)).round(6)
        Array([0., 0.], dtype=float32)
    """
    n = _core.check_positive_int(n_perturb_samples, "n_perturb_samples")
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    if not callable(perturb_func):
        raise TypeError(f"perturb_func must be callable, got {type(perturb_func).__name__}")
    key = _core.check_key(key, "infidelity")
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _core.as_inputs(x, need_float=False)
    attributions = _check_like_x(_core.to_arrays(attributions), x, "attributions")
    t = _core.prepare_target(target, fn, inputs, x, args)
    with_baselines = baselines is not None
    base = _core.broadcast_baselines(baselines, x, inputs) if with_baselines else None
    # check what perturb_func returns once, abstractly, for a clear error
    probe_args = (key, x, _core.expand_baselines(base, x)) if with_baselines else (key, x)
    out = jax.eval_shape(perturb_func, *probe_args)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError(
            "perturb_func must return (perturbation, perturbed_x), a pair with x's "
            f"structure each, got {jax.tree_util.tree_structure(out)}"
        )
    _check_like_x(out[0], x, "perturb_func's perturbation", convert=False)
    _check_like_x(out[1], x, "perturb_func's perturbed_x", convert=False)
    keys = jax.random.split(key, n)
    sums = None
    for start, stop in _core.batched_chunks(n, batch_size):
        part = _infidelity_chunk(
            fn=fn,
            perturb_func=perturb_func,
            inputs=inputs,
            x=x,
            attributions=attributions,
            baselines=base,
            keys=keys[start:stop],
            args=args,
            target=t,
            with_baselines=with_baselines,
        )
        sums = part if sums is None else tuple(a + b for a, b in zip(sums, part, strict=False))
    aa, ab, bb, sq = sums
    if normalize:
        beta = ab / jnp.where(aa != 0, aa, 1.0)
        sq = beta * beta * aa - 2.0 * beta * ab + bb
    return sq / n


# --------------------------------------------------------------------------------------
# Max-sensitivity
# --------------------------------------------------------------------------------------


def uniform_perturb(key: jax.Array, x: PyTree, perturb_radius: float = 0.02) -> PyTree:
    """Captum's default ``sensitivity_max`` perturbation: ``x + U(-r, r)`` elementwise.

    Args:
        key: PRNG key.
        x: Input array of shape (N, ...), or a pytree of such arrays.
        perturb_radius: The half-width ``r`` of the uniform noise.

    Returns:
        The perturbed input, x's structure, shapes and dtypes.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> xp = jaxattr.uniform_perturb(jax.random.key(0), jnp.zeros((2, 3)), 0.5)
        >>> bool(jnp.all(jnp.abs(xp) <= 0.5))
        True
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    keys = jax.random.split(key, len(leaves))
    out = [
        leaf + jax.random.uniform(k, leaf.shape, leaf.dtype, -perturb_radius, perturb_radius)
        for k, leaf in zip(keys, leaves, strict=False)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _vector_norm(v: jax.Array, norm_ord: Any) -> jax.Array:
    return jnp.linalg.norm(v, ord=None if norm_ord == "fro" else norm_ord, axis=1)


def _flat_concat(tree: PyTree) -> jax.Array:
    return jnp.concatenate(
        [a.reshape(a.shape[0], -1) for a in jax.tree_util.tree_leaves(tree)], axis=1
    )


@_core.cached_jit(("fn", "method", "perturb_func", "spec", "takes_key", "norm_ord", "n_pf"))
def _sensitivity_chunk(
    *,
    fn,
    method,
    perturb_func,
    x,
    expl,
    keys,
    method_keys,
    dynamic,
    spec,
    takes_key,
    perturb_radius,
    norm_ord,
    n_pf,
):
    kwargs = _join_static(dynamic, spec)
    ref = _flat_concat(expl)
    ref_norm = _vector_norm(ref, norm_ord)
    ref_norm = jnp.where(ref_norm == 0.0, 1.0, ref_norm)

    def one(k, mk):
        xp = perturb_func(k, x, perturb_radius) if n_pf > 2 else perturb_func(k, x)
        kw = dict(kwargs, key=mk) if takes_key else kwargs
        e = method(fn, xp, **kw)
        return _vector_norm(ref - _flat_concat(e), norm_ord) / ref_norm

    return jax.vmap(one)(keys, method_keys).max(0)


@_core.contract
def sensitivity_max(
    method: Callable[..., Any],
    fn: Callable[..., Any],
    x: PyTree,
    *,
    perturb_func: Callable[..., PyTree] = uniform_perturb,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    norm_ord: str | float = "fro",
    key: jax.Array | None = None,
    batch_size: int | None = None,
    **method_kwargs: Any,
) -> jax.Array:
    """Max-sensitivity of an explanation method (Yeh et al., 2019), Captum's ``sensitivity_max``.

    The largest relative change of the explanation under small input perturbations:
    ``max_s ||e(x) - e(x_s)|| / ||e(x)||`` per example, with ``e = method(fn, ., **kw)``,
    the norm taken over all of an example's attribution values (every input of a tuple
    concatenated) and ``||e(x)|| = 0`` replaced by 1, as in Captum.

    Perturbations take a key first (Captum's have none): ``perturb_func(key, x)`` or
    ``perturb_func(key, x, perturb_radius)`` (when it takes three parameters) returns the
    perturbed x, with x's structure and shapes (N, ...). It is called once per sample
    with ``jax.random.split(key)[0]`` split ``n_perturb_samples`` ways, on the whole batch
    under ``vmap``. If ``method`` takes a ``key`` (a random method), every explanation
    gets a fresh one, as every Captum call draws afresh.

    Args:
        method: A jaxattr method ``method(fn, x, **method_kwargs)``.
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        perturb_func: ``(key, x[, perturb_radius]) -> perturbed_x``; default
            :func:`uniform_perturb`.
        perturb_radius: Passed to a three-parameter ``perturb_func``.
        n_perturb_samples: Perturbations per example.
        norm_ord: ``"fro"`` (the 2-norm of the flattened explanation), or a vector norm
            order for ``jnp.linalg.norm`` (``1``, ``2``, ``jnp.inf``, ...).
        key: PRNG key for the perturbations (and the method's keys).
        batch_size: At most this many perturbation samples per compiled call.
        **method_kwargs: Passed to ``method`` (``target``, ``n_steps``, ``baselines``...).

    Returns:
        The max-sensitivity of every example, shape (N,).

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (3.0 * x).sum(1)
        >>> jaxattr.sensitivity_max(jaxattr.saliency, fn, jnp.ones((2, 4)),
        ...                         key=jax.random.key(0))
        Array([0., 0.], dtype=float32)
    """
    n = _core.check_positive_int(n_perturb_samples, "n_perturb_samples")
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    if not (
        norm_ord == "fro" or isinstance(norm_ord, (int, float)) and not isinstance(norm_ord, bool)
    ):
        raise ValueError(f"norm_ord must be 'fro' or a number (1, 2, inf, ...), got {norm_ord!r}")
    if not callable(method):
        raise TypeError(f"method must be a jaxattr method, got {type(method).__name__}")
    key = _core.check_key(key, "sensitivity_max")
    x = _core.to_arrays(x)
    _core.as_inputs(x, need_float=False)
    try:
        takes_key = "key" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes_key = False
    k_pert, k_method = jax.random.split(key)
    method_keys = jax.random.split(k_method, n + 1)
    expl = method(
        fn, x, **(dict(method_kwargs, key=method_keys[0]) if takes_key else method_kwargs)
    )
    kwargs = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in method_kwargs.items()}
    dynamic, spec = _split_static(kwargs)
    keys = jax.random.split(k_pert, n)
    result = None
    for start, stop in _core.batched_chunks(n, batch_size):
        part = _sensitivity_chunk(
            fn=fn,
            method=method,
            perturb_func=perturb_func,
            x=x,
            expl=expl,
            keys=keys[start:stop],
            method_keys=method_keys[1 + start : 1 + stop],
            dynamic=dynamic,
            spec=spec,
            takes_key=takes_key,
            perturb_radius=perturb_radius,
            norm_ord=norm_ord,
            n_pf=_n_params(perturb_func),
        )
        result = part if result is None else jnp.maximum(result, part)
    return result


# --------------------------------------------------------------------------------------
# Deletion and insertion
# --------------------------------------------------------------------------------------


class Curve(NamedTuple):
    """A deletion or insertion curve.

    Attributes:
        fractions: The fraction of features deleted (inserted) at each step, shape
            (n_steps + 1,), from 0 to 1.
        scores: The explained output at each step, shape (N, n_steps + 1).
        auc: The area under each curve over ``fractions`` (trapezoid rule), shape (N,).
    """

    fractions: jax.Array
    scores: jax.Array
    auc: jax.Array


def _gaussian_blur(x: jax.Array, sigma: float, axes: tuple[int, ...]) -> jax.Array:
    """Separable Gaussian blur over ``axes``, kernel cut at 3 sigma, zero padding."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel = jnp.asarray(kernel / kernel.sum(), x.dtype)
    for axis in axes:
        moved = jnp.moveaxis(x, axis, -1)
        rows = moved.reshape(-1, moved.shape[-1])
        rows = jax.vmap(lambda r: jnp.convolve(jnp.pad(r, radius), kernel, mode="valid"))(rows)
        x = jnp.moveaxis(rows.reshape(moved.shape), -1, axis)
    return x


@_core.cached_jit(("fn", "inputs", "insert"))
def _curve_chunk(*, fn, inputs, x, order_rank, substrate, counts, args, target, insert):
    def one(count):
        chosen = jnp.broadcast_to((order_rank < count).reshape(order_rank.shape), x.shape)
        xs = jnp.where(chosen, x, substrate) if insert else jnp.where(chosen, substrate, x)
        return _core.scores(fn, inputs, xs, args, target)

    return jax.vmap(one)(counts)  # (k, N)


def _curve(
    fn,
    x,
    attributions,
    *,
    target,
    n_steps,
    substrate,
    baselines,
    blur_sigma,
    blur_axes,
    batch_size,
    args,
    insert,
    name,
):
    n_steps = _core.check_positive_int(n_steps, "n_steps")
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    _core.check_choice(substrate, "substrate", ("baseline", "blur"))
    x = _core.to_arrays(x)
    if not isinstance(x, jax.Array):
        raise TypeError(f"{name} needs x to be one array (N, ...), got {type(x).__name__}")
    args = tuple(args)
    inputs = _core.as_inputs(x, need_float=False)
    a = jnp.asarray(attributions)
    ok = a.ndim == x.ndim and a.shape[0] == x.shape[0]
    ok = ok and all(s in (1, xs) for s, xs in zip(a.shape[1:], x.shape[1:], strict=False))
    if not ok:
        raise ValueError(
            f"attributions must have x's shape {tuple(x.shape)}, or size 1 on axes to share "
            f"(e.g. (N, 1, H, W) to order whole pixels), got {tuple(a.shape)}"
        )
    t = _core.prepare_target(target, fn, inputs, x, args)
    if substrate == "blur":
        axes = tuple(ax % x.ndim for ax in blur_axes)
        if any(ax == 0 for ax in axes):
            raise ValueError(f"blur_axes must not include the batch axis 0, got {blur_axes!r}")
        sub = _gaussian_blur(x, float(blur_sigma), axes)
    else:
        sub = _core.expand_baselines(_core.broadcast_baselines(baselines, x, inputs), x)
    n = x.shape[0]
    flat = a.reshape(n, -1)
    m = flat.shape[1]
    # rank 0 = largest attribution; ties keep index order (stable sort)
    order = jnp.argsort(-flat, axis=1, stable=True)
    rank = jnp.empty_like(order).at[jnp.arange(n)[:, None], order].set(jnp.arange(m)[None, :])
    rank = rank.reshape(a.shape)
    counts = (np.arange(n_steps + 1) * m + n_steps // 2) // n_steps
    parts = []
    for start, stop in _core.batched_chunks(n_steps + 1, batch_size):
        parts.append(
            _curve_chunk(
                fn=fn,
                inputs=inputs,
                x=x,
                order_rank=rank,
                substrate=sub,
                counts=jnp.asarray(counts[start:stop]),
                args=args,
                target=t,
                insert=insert,
            )
        )
    scores = jnp.concatenate(parts, axis=0).T
    fractions = jnp.asarray(counts / m, scores.dtype)
    auc = jnp.trapezoid(scores, fractions[None], axis=1)  # x given y's rank explicitly
    return Curve(fractions, scores, auc)


@_core.contract
def deletion_curve(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    n_steps: int = 20,
    substrate: str = "baseline",
    baselines: Any = 0.0,
    blur_sigma: float = 5.0,
    blur_axes: tuple[int, ...] = (-2, -1),
    batch_size: int | None = None,
    args: tuple = (),
) -> Curve:
    """The deletion curve of RISE (Petsiuk et al., 2018): remove the most relevant first.

    Features are ordered by decreasing attribution; at step ``k`` of ``n_steps`` the top
    ``round(k * M / n_steps)`` of the ``M`` features are replaced by the substrate and the
    explained output recorded. A good explanation makes the output fall fast: a low area
    under the curve. Attributions of shape (N, 1, H, W) for an (N, C, H, W) input order
    whole pixels (all channels at once); sum channels with ``keepdims=True`` to get one.
    Wrap ``fn`` in a softmax to score probabilities as RISE does. All steps are one
    ``vmap``-ped batch, chunked by ``batch_size``.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...) (a single array).
        attributions: x's shape, or size 1 on the axes whose elements move together.
        target: What to explain (see :func:`jaxattr.select_target`).
        n_steps: Number of deletion steps (the curve has ``n_steps + 1`` points).
        substrate: ``"baseline"`` (replace by ``baselines``) or ``"blur"`` (by a Gaussian
            blur of x).
        baselines: The replacement values for ``substrate="baseline"``: a scalar or an
            array broadcastable to x.
        blur_sigma: Standard deviation of the blur, in elements.
        blur_axes: The axes to blur: ``(-2, -1)`` for NCHW, ``(1, 2)`` for NHWC.
        batch_size: At most this many steps per compiled call.
        args: Extra positional arrays passed to ``fn`` after ``x``.

    Returns:
        A :class:`Curve` ``(fractions, scores, auc)``.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x.sum(1)
        >>> x = jnp.array([[4.0, 3.0, 2.0, 1.0]])
        >>> jaxattr.deletion_curve(fn, x, x, n_steps=4).scores
        Array([[10.,  6.,  3.,  1.,  0.]], dtype=float32)
    """
    return _curve(
        fn,
        x,
        attributions,
        target=target,
        n_steps=n_steps,
        substrate=substrate,
        baselines=baselines,
        blur_sigma=blur_sigma,
        blur_axes=blur_axes,
        batch_size=batch_size,
        args=args,
        insert=False,
        name="deletion_curve",
    )


@_core.contract
def insertion_curve(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    n_steps: int = 20,
    substrate: str = "blur",
    baselines: Any = 0.0,
    blur_sigma: float = 5.0,
    blur_axes: tuple[int, ...] = (-2, -1),
    batch_size: int | None = None,
    args: tuple = (),
) -> Curve:
    """The insertion curve of RISE (Petsiuk et al., 2018): reveal the most relevant first.

    Starts from the substrate (by default a Gaussian blur of x, as in RISE) and at step
    ``k`` restores the top ``round(k * M / n_steps)`` features of x, ordered by decreasing
    attribution. A good explanation makes the output rise fast: a high area under the
    curve. See :func:`deletion_curve` for the arguments.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...) (a single array).
        attributions: x's shape, or size 1 on the axes whose elements move together.
        target: What to explain (see :func:`jaxattr.select_target`).
        n_steps: Number of insertion steps (the curve has ``n_steps + 1`` points).
        substrate: ``"blur"`` or ``"baseline"``.
        baselines: The start values for ``substrate="baseline"``.
        blur_sigma: Standard deviation of the blur, in elements.
        blur_axes: The axes to blur: ``(-2, -1)`` for NCHW, ``(1, 2)`` for NHWC.
        batch_size: At most this many steps per compiled call.
        args: Extra positional arrays passed to ``fn`` after ``x``.

    Returns:
        A :class:`Curve` ``(fractions, scores, auc)``.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x.sum(1)
        >>> x = jnp.array([[4.0, 3.0, 2.0, 1.0]])
        >>> jaxattr.insertion_curve(fn, x, x, n_steps=4, substrate="baseline").scores
        Array([[ 0.,  4.,  7.,  9., 10.]], dtype=float32)
    """
    return _curve(
        fn,
        x,
        attributions,
        target=target,
        n_steps=n_steps,
        substrate=substrate,
        baselines=baselines,
        blur_sigma=blur_sigma,
        blur_axes=blur_axes,
        batch_size=batch_size,
        args=args,
        insert=True,
        name="insertion_curve",
    )


# --------------------------------------------------------------------------------------
# Pointing game and completeness
# --------------------------------------------------------------------------------------


def pointing_game(attributions: Any, masks: Any, *, tolerance: float = 0.0) -> jax.Array:
    """The pointing game (Zhang et al., 2016; TorchRay's ``PointingGame``).

    The maximum of each attribution map is a hit when it lies within ``tolerance`` of
    the ground-truth region ``masks``: some mask element at Euclidean distance (in
    elements) strictly below ``tolerance``, as in TorchRay (which uses 15 pixels on
    224 x 224 images), or the maximum itself inside the mask when ``tolerance=0``. Ties
    take the first maximum in row-major order. An empty mask is a miss (TorchRay skips
    such examples: drop them before averaging).

    Args:
        attributions: Attribution maps (N, *spatial), e.g. (N, H, W) with channels
            reduced.
        masks: Boolean ground-truth regions, same shape.
        tolerance: The acceptance radius, in elements.

    Returns:
        A boolean hit per example, shape (N,).

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> attr = jnp.array([[[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
        >>> mask = jnp.array([[[True, False, False], [False, False, False]]])
        >>> jaxattr.pointing_game(attr, mask), jaxattr.pointing_game(attr, mask, tolerance=3)
        (Array([False], dtype=bool), Array([ True], dtype=bool))
    """
    a = jnp.asarray(attributions)
    m = jnp.asarray(masks)
    if a.ndim < 2:
        raise ValueError(f"attributions must have shape (N, *spatial), got {tuple(a.shape)}")
    if m.shape != a.shape:
        raise ValueError(
            f"masks must have the shape of attributions {tuple(a.shape)}, got {tuple(m.shape)}"
        )
    if not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    return _pointing(a, m.astype(bool), float(tolerance))


@_caching.jit
def _pointing(a, m, tolerance):
    n, spatial = a.shape[0], a.shape[1:]
    flat = jnp.argmax(a.reshape(n, -1), axis=1)
    point = jnp.stack(jnp.unravel_index(flat, spatial), axis=1)  # (N, D)
    grids = jnp.meshgrid(*[jnp.arange(s) for s in spatial], indexing="ij")
    d2 = sum(
        (
            g[None].astype(jnp.float32)
            - point[:, i].reshape((n,) + (1,) * len(spatial)).astype(jnp.float32)
        )
        ** 2
        for i, g in enumerate(grids)
    )
    accept = (d2 < tolerance**2) | (d2 == 0)
    return jnp.any((m & accept).reshape(n, -1), axis=1)


@_core.contract
def completeness(
    fn: Callable[..., Any],
    x: PyTree,
    attributions: PyTree,
    *,
    baselines: Any = None,
    target: Any = None,
    args: tuple = (),
) -> jax.Array:
    """The completeness gap ``sum(attributions) - (f(x) - f(baseline))`` per example.

    Zero for methods with the completeness (efficiency) property: exact IG, DeepLift,
    SHAP, LRP with conserving rules. It is Captum's convergence delta, for any
    attribution.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        attributions: The explanation, with x's structure and shapes.
        baselines: The reference input (``None`` is zeros), broadcastable to x.
        target: What to explain (see :func:`jaxattr.select_target`).
        args: Extra positional arrays passed to ``fn`` after ``x``.

    Returns:
        The gap of every example, shape (N,), float32.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (x ** 2).sum(1)
        >>> x = jnp.array([[1.0, 2.0]])
        >>> jaxattr.completeness(fn, x, jnp.array([[1.0, 4.0]]))
        Array([0.], dtype=float32)
    """
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _core.as_inputs(x, need_float=False)
    attributions = _check_like_x(_core.to_arrays(attributions), x, "attributions")
    t = _core.prepare_target(target, fn, inputs, x, args)
    base = _core.expand_baselines(_core.broadcast_baselines(baselines, x, inputs), x)
    return _completeness(
        fn=fn, inputs=inputs, x=x, baselines=base, args=args, target=t, attr=attributions
    )


@_core.cached_jit(("fn", "inputs"))
def _completeness(*, fn, inputs, x, baselines, args, target, attr):
    return completeness_delta(fn, inputs, x, baselines, args, target, attr)
