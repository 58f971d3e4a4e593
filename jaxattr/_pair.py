"""PAIR saliency's path and region methods: Blur IG, Guided IG and XRAI.

Reimplements the methods of Google PAIR's ``saliency`` package (0.2.1, its framework-free
``saliency.core``) as pure functions of a batch-first JAX model:

- :func:`blur_ig` (Xu et al., 2020): integrated gradients along a path that blurs the
  input; the blur levels are one ``vmap``-ped batch.
- :func:`guided_ig` (Kapishnikov et al., 2021): integrated gradients along an adaptive path
  that first moves the features with the smallest gradients; sequential in its path, one
  compiled loop for the whole batch.
- :func:`xrai` (Kapishnikov et al., 2019): ranks image regions by the density of any
  attribution (integrated gradients from two baselines by default) with a greedy
  selection over overlapping segments; the segments are the user's, or Felzenszwalb's
  graph segmentation at several scales (:func:`xrai_segments`, :func:`felzenszwalb`),
  implemented here in numpy without scikit-image.

Images are batch-first with the channels on ``channel_axis`` (1 for NCHW, as the rest of
jaxattr; -1 for NHWC, PAIR's layout with a batch axis in front).
"""

from __future__ import annotations

import array
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core
from jaxattr._core import PyTree

__all__ = [
    "XRAIOutput",
    "XRAIParameters",
    "blur_ig",
    "felzenszwalb",
    "guided_ig",
    "xrai",
    "xrai_segments",
]


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def _check_float(value: Any, name: str, *, minimum: float | None = None,
                 maximum: float | None = None, strict: bool = False) -> float:
    """Validate a real option, naming it, the expected range and the value received."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def _channel_axis(channel_axis: Any, ndim: int, name: str = "x") -> int:
    """Normalise ``channel_axis`` to a non-batch axis of an ``ndim``-dimensional input."""
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
        raise TypeError(f"channel_axis must be an int, got {type(channel_axis).__name__}")
    axis = int(channel_axis) % ndim if -ndim <= channel_axis < ndim else None
    if axis is None or axis == 0:
        raise ValueError(
            f"channel_axis must name a non-batch axis of {name} (shape with {ndim} dims), got "
            f"{channel_axis}"
        )
    return axis


def _blur_axes(ndim: int, channel_axis: int) -> tuple[int, ...]:
    """The axes Blur IG blurs: every non-batch axis except the channels (PAIR blurs H and
    W of an HxWxC image); a 2-D input (N, L) is one signal, blurred along L."""
    if ndim == 2:
        return (1,)
    ch = _channel_axis(channel_axis, ndim)
    return tuple(a for a in range(1, ndim) if a != ch)


# --------------------------------------------------------------------------------------
# Blur IG
# --------------------------------------------------------------------------------------


def _gaussian_table(sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radius and normaliser of SciPy's ``gaussian_filter`` kernel (``truncate=4``) for each
    sigma, in float64: ``radius = int(4 sigma + 0.5)``, ``norm = sum_|k|<=r exp(-k^2/2s^2)``."""
    radius = np.array([int(4.0 * float(s) + 0.5) for s in sigmas], dtype=np.int64)
    norm = np.ones(len(sigmas))
    for i, (s, r) in enumerate(zip(sigmas, radius, strict=True)):
        if s > 0:
            k = np.arange(-r, r + 1, dtype=np.float64)
            norm[i] = np.exp(-0.5 / (s * s) * k**2).sum()
    return radius, norm


def _gaussian_matrix(n: int, sigma: jax.Array, radius: jax.Array, norm: jax.Array, dtype):
    """The (n, n) matrix of a 1-D Gaussian blur with zero padding (SciPy ``mode="constant"``);
    the identity for ``sigma == 0``. ``sigma``, ``radius`` and ``norm`` may be traced."""
    d = (jnp.arange(n)[:, None] - jnp.arange(n)[None, :]).astype(jnp.float32)
    s = jnp.where(sigma > 0, sigma, 1.0).astype(jnp.float32)
    w = jnp.exp(-0.5 * d * d / (s * s)) / norm.astype(jnp.float32)
    w = jnp.where(jnp.abs(d) <= radius.astype(jnp.float32), w, 0.0)
    return jnp.where(sigma > 0, w, jnp.eye(n, dtype=jnp.float32)).astype(dtype)


def _blur(leaf: jax.Array, axes: tuple[int, ...], sigma, radius, norm) -> jax.Array:
    for a in axes:
        g = _gaussian_matrix(leaf.shape[a], sigma, radius, norm, leaf.dtype)
        leaf = jnp.moveaxis(
            jnp.tensordot(leaf, g, axes=((a,), (1,)), precision=jax.lax.Precision.HIGHEST),
            -1,
            a,
        )
    return leaf


def _blur_ig_sum(fn, inputs, x, args, target, channel_axis, table, grad_step):
    """``sum_i dsigma_i * dblur_i/dsigma * grad f(blur_i(x))`` over the table's steps."""
    sig, rad, nrm, sig2, rad2, nrm2, dsig = table

    def step(s, r, m, s2, r2, m2, ds):
        leaves, treedef = jax.tree_util.tree_flatten(x)
        blurred, slope = [], []
        for leaf in leaves:
            axes = _blur_axes(leaf.ndim, channel_axis)
            lo = _blur(leaf, axes, s, r, m)
            hi = _blur(leaf, axes, s2, r2, m2)
            blurred.append(lo)
            slope.append((hi - lo) / jnp.asarray(grad_step, leaf.dtype) * ds.astype(leaf.dtype))
        point = jax.tree_util.tree_unflatten(treedef, blurred)
        grad = _core.input_gradient(fn, inputs, point, args, target)
        return jax.tree_util.tree_map(
            lambda g, sl: g * sl, grad, jax.tree_util.tree_unflatten(treedef, slope)
        )

    parts = jax.vmap(step)(sig, rad, nrm, sig2, rad2, nrm2, dsig)
    return jax.tree_util.tree_map(lambda p: jnp.sum(p, axis=0), parts)


@_core.cached_jit(("fn", "inputs", "channel_axis", "grad_step"))
def _blur_ig_part(*, fn, inputs, x, args, target, table, channel_axis, grad_step):
    return _blur_ig_sum(fn, inputs, x, args, target, channel_axis, table, grad_step)


@_core.cached_jit(("fn", "inputs", "channel_axis", "grad_step"))
def _blur_ig_core(*, fn, inputs, x, args, target, table, channel_axis, grad_step):
    total = _blur_ig_sum(fn, inputs, x, args, target, channel_axis, table, grad_step)
    return _core.cast_like(jax.tree_util.tree_map(jnp.negative, total), x)


def blur_ig_sigmas(max_sigma: float, steps: int, sqrt: bool = False) -> np.ndarray:
    """The blur levels of Blur IG: ``steps + 1`` sigmas from 0 to ``max_sigma``.

    ``sigma_i = i * max_sigma / steps``, or its square root ``sqrt(i * max_sigma / steps)``
    with ``sqrt=True`` (PAIR's spacing, which ends at ``sqrt(max_sigma)``).

    Args:
        max_sigma: The largest blur (> 0).
        steps: Number of steps (>= 1).
        sqrt: PAIR's square-root spacing.

    Returns:
        A float64 array of shape (steps + 1,).

    Example:
        >>> from jaxattr._pair import blur_ig_sigmas
        >>> blur_ig_sigmas(4.0, 4)
        array([0., 1., 2., 3., 4.])
    """
    max_sigma = _check_float(max_sigma, "max_sigma", minimum=0.0, strict=True)
    steps = _core.check_positive_int(steps, "steps")
    lin = np.array([float(i) * max_sigma / float(steps) for i in range(steps + 1)])
    return np.sqrt(lin) if sqrt else lin


@_core.contract
def blur_ig(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    target: Any = None,
    max_sigma: float = 50.0,
    steps: int = 100,
    grad_step: float = 0.01,
    sqrt: bool = False,
    channel_axis: int = 1,
    batch_size: int | None = None,
    args: tuple = (),
) -> PyTree:
    """Blur integrated gradients (Xu et al., 2020), PAIR saliency's ``BlurIG``.

    Integrates the gradient along a path from a fully blurred input to ``x``: with
    ``sigma_0 = 0 < ... < sigma_steps`` (see ``sqrt``) and ``B_s`` a Gaussian blur of width
    ``s`` (SciPy's ``gaussian_filter``: ``truncate=4``, zero padding) over every non-batch
    axis except the channels,
    ``attr = -sum_i (sigma_{i+1} - sigma_i) * (B_{sigma_i + grad_step} x - B_{sigma_i} x)
    / grad_step * grad f(B_{sigma_i} x)``. The ``steps`` blur levels are one ``vmap``-ped
    batch; ``batch_size`` splits them into chunks (same result, bounded memory).

    Args:
        fn: Batch-first model, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input of shape (N, C, H, W) (``channel_axis=1``) or (N, H, W, C)
            (``channel_axis=-1``), any rank >= 3 with one channel axis, or (N, L) for
            1-D signals (blurred along L); a tuple/pytree of such arrays.
        target: What to explain (see :func:`jaxattr.select_target`).
        max_sigma: The widest blur (PAIR's ``max_sigma``, > 0).
        steps: Number of blur levels on the path (>= 1).
        grad_step: Finite-difference step of the derivative of the blur in sigma (> 0).
        sqrt: Space the sigmas as ``sqrt(i * max_sigma / steps)`` (PAIR's option).
        channel_axis: The channel axis, which is not blurred (1 or -1 for images).
        batch_size: At most this many blur levels per compiled call (``None``: from the
            memory budget).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes.

    Raises:
        ValueError: ``max_sigma`` or ``grad_step`` not positive, ``steps < 1``, a
            ``channel_axis`` that is not a non-batch axis, or a target that does not fit.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> w = jax.random.normal(jax.random.key(0), (1 * 8 * 8, 3))
        >>> fn = lambda x: jnp.tanh(x.reshape(len(x), -1) @ w)   # (N, 1, 8, 8) -> (N, 3)
        >>> x = jax.random.uniform(jax.random.key(1), (2, 1, 8, 8))
        >>> attr = jaxattr.blur_ig(fn, x, target=1, max_sigma=4.0, steps=16)
        >>> attr.shape
        (2, 1, 8, 8)
    """
    sigmas = blur_ig_sigmas(max_sigma, steps, sqrt)
    steps = len(sigmas) - 1
    grad_step = _check_float(grad_step, "grad_step", minimum=0.0, strict=True)
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _core.as_inputs(x)
    for leaf in jax.tree_util.tree_leaves(x):
        _blur_axes(leaf.ndim, channel_axis)  # validates channel_axis against every leaf
    t = _core.prepare_target(target, fn, inputs, x, args)
    lo = sigmas[:-1]
    hi = lo + grad_step
    rad, nrm = _gaussian_table(lo)
    rad2, nrm2 = _gaussian_table(hi)
    table = tuple(
        np.asarray(a, np.float32) for a in (lo, rad, nrm, hi, rad2, nrm2, np.diff(sigmas))
    )
    kw = dict(fn=fn, inputs=inputs, x=x, args=args, target=t, channel_axis=channel_axis,
              grad_step=grad_step)
    chunks = _core.batched_chunks(steps, batch_size)
    if len(chunks) == 1:
        return _blur_ig_core(table=table, **kw)
    total = None
    for start, stop in chunks:
        part = _blur_ig_part(table=tuple(a[start:stop] for a in table), **kw)
        total = _core.tree_add(total, part)
    return _core.cast_like(jax.tree_util.tree_map(jnp.negative, total), x)


# --------------------------------------------------------------------------------------
# Guided IG
# --------------------------------------------------------------------------------------


def _ravel(x: PyTree) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
    """Flatten every example of x into one row: (N, D), and the inverse."""
    leaves, treedef = jax.tree_util.tree_flatten(x)
    n = leaves[0].shape[0]
    sizes = [math.prod(leaf.shape[1:]) for leaf in leaves]
    flat = jnp.concatenate([leaf.reshape(n, -1) for leaf in leaves], axis=1)

    def unravel(v: jax.Array) -> PyTree:
        out, at = [], 0
        for leaf, size in zip(leaves, sizes, strict=True):
            out.append(v[:, at:at + size].reshape(leaf.shape).astype(leaf.dtype))
            at += size
        return jax.tree_util.tree_unflatten(treedef, out)

    return flat, unravel


def _isclose(a, b, tol):
    """``math.isclose(a, b, rel_tol=tol, abs_tol=tol)``."""
    return jnp.abs(a - b) <= jnp.maximum(tol * jnp.maximum(jnp.abs(a), jnp.abs(b)), tol)


def _guided_step(x, grad, x_in, x_base, alpha, l1_target, max_dist, fraction, tol):
    """One Guided IG step of one example (flat vectors): move x until its L1 distance to
    the input is ``l1_target``, the features with the smallest |gradient| first (PAIR's
    inner ``while gamma > 1`` loop)."""
    d = x.shape[0]
    k = int(math.floor((d - 1) * fraction))  # numpy's quantile(method="lower") index
    alpha_min = jnp.maximum(alpha - max_dist, 0.0)
    alpha_max = jnp.minimum(alpha + max_dist, 1.0)
    span = x_in - x_base
    x_min = x_base + span * alpha_min
    x_max = x_base + span * alpha_max
    moving = span != 0
    safe = jnp.where(moving, span, 1.0)
    inf = jnp.asarray(jnp.inf, x.dtype)

    def cond(state):
        _, gamma, done, it = state
        return (gamma > 1.0) & ~done & (it <= d)

    def body(state):
        x, _, _, it = state
        x_alpha = jnp.where(moving, (x - x_base) / safe, alpha_max)
        x = jnp.where(x_alpha < alpha_min, x_min, x)
        l1_current = jnp.sum(jnp.abs(x - x_in))
        close = _isclose(l1_target, l1_current, tol)
        g = jnp.where(x == x_max, inf, grad)
        ag = jnp.abs(g)
        threshold = jnp.sort(ag)[k]
        s = (ag <= threshold) & (g != inf)
        l1_s = jnp.sum(jnp.abs(x - x_max) * s)
        gamma = jnp.where(l1_s > 0, (l1_current - l1_target) / jnp.where(l1_s > 0, l1_s, 1), inf)
        full = jnp.where(s, x_max, x)
        part = jnp.where(s, x + (x_max - x) * jnp.maximum(gamma, 0.0), x)
        moved = jnp.where(gamma > 1.0, full, part)
        x = jnp.where(close, x, moved)
        # nothing left to move (only reachable through rounding): stop, as PAIR would not
        done = close | (l1_s == 0)
        return x, gamma, done, it + 1

    state = (x, inf, jnp.asarray(False), jnp.asarray(0))
    return jax.lax.while_loop(cond, body, state)[0]


@_core.cached_jit(("fn", "inputs", "steps", "fraction", "max_dist"))
def _guided_ig_core(*, fn, inputs, x, baselines, args, target, steps, fraction, max_dist):
    baselines = _core.expand_baselines(baselines, x)
    x_in, unravel = _ravel(x)
    x_base, _ = _ravel(baselines)
    dtype = x_in.dtype
    tol = max(1e-9, 4.0 * float(jnp.finfo(dtype).eps)) if dtype != jnp.float64 else 1e-9
    l1_total = jnp.sum(jnp.abs(x_in - x_base), axis=1)

    def grad_at(v):
        return _ravel(_core.input_gradient(fn, inputs, unravel(v), args, target))[0]

    def one_step(i, state):
        xc, attr = state
        grad = grad_at(xc)
        alpha = (i + 1.0) / steps
        l1_target = l1_total * (1.0 - (i + 1.0) / steps)
        step = functools.partial(_guided_step, max_dist=max_dist, fraction=fraction, tol=tol)
        x_new = jax.vmap(step, in_axes=(0, 0, 0, 0, None, 0))(
            xc, grad, x_in, x_base, alpha.astype(dtype), l1_target
        )
        return x_new, attr + (x_new - xc) * grad

    _, attr = jax.lax.fori_loop(0, steps, one_step, (x_base, jnp.zeros_like(x_in)))
    return unravel(attr)


@_core.contract
def guided_ig(
    fn: Callable[..., Any],
    x: PyTree,
    baselines: Any = None,
    *,
    target: Any = None,
    steps: int = 200,
    fraction: float = 0.25,
    max_dist: float = 0.02,
    args: tuple = (),
) -> PyTree:
    """Guided integrated gradients (Kapishnikov et al., 2021), PAIR saliency's ``GuidedIG``.

    Integrates along an adaptive path from the baseline to ``x``: at each of ``steps``
    steps the L1 distance to ``x`` shrinks by ``1/steps`` of the total, moving first the
    ``fraction`` of features with the smallest |gradient| (repeatedly, until the step's
    distance is covered), every feature kept within ``max_dist`` (in path fraction) of the
    straight line. ``max_dist=0`` is integrated gradients (left Riemann sum); ``max_dist=1``
    is unbounded Guided IG. The attribution sums ``(x_new - x_old) * grad f(x_old)``, so it
    adds up to about ``f(x) - f(baseline)``. The path is sequential: one compiled loop
    evaluates the gradient of the whole batch at each step; each example follows its own
    path (the fraction and the distances are per example, over all its features).

    Args:
        fn: Batch-first model, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input of shape (N, ...), or a tuple/pytree of such arrays (an example's features
            are all its leaves together).
        baselines: Start of the path: ``None`` (zeros), a scalar, or an array broadcastable
            to x (one per input for a tuple x).
        target: What to explain (see :func:`jaxattr.select_target`).
        steps: Number of steps along the path (PAIR's ``x_steps``, >= 1).
        fraction: Fraction of the features moved at each inner iteration, in [0, 1].
        max_dist: Largest deviation from the straight-line path, in [0, 1].
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes.

    Raises:
        ValueError: ``steps < 1``, ``fraction`` or ``max_dist`` outside [0, 1], baselines
            that do not broadcast, or a target that does not fit the output.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (x ** 2).sum(1)
        >>> attr = jaxattr.guided_ig(fn, jnp.array([[1.0, 2.0]]), steps=50, max_dist=1.0)
        >>> attr.shape, bool(jnp.abs(attr.sum() - 5.0) < 0.2)
        ((1, 2), True)
    """
    steps = _core.check_positive_int(steps, "steps")
    fraction = _check_float(fraction, "fraction", minimum=0.0, maximum=1.0)
    max_dist = _check_float(max_dist, "max_dist", minimum=0.0, maximum=1.0)
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _core.as_inputs(x)
    t = _core.prepare_target(target, fn, inputs, x, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    return _guided_ig_core(
        fn=fn, inputs=inputs, x=x, baselines=b, args=args, target=t, steps=steps,
        fraction=fraction, max_dist=max_dist,
    )
