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
from jaxattr._integrated import _path_gradient_sum

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


def _check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
) -> float:
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
    kw = dict(
        fn=fn,
        inputs=inputs,
        x=x,
        args=args,
        target=t,
        channel_axis=channel_axis,
        grad_step=grad_step,
    )
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
            out.append(v[:, at : at + size].reshape(leaf.shape).astype(leaf.dtype))
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
        dist = jnp.abs(x - x_max)
        l1_s = jnp.sum(dist * s.astype(dist.dtype))
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
    x, args, inputs, t = _core.prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    return _guided_ig_core(
        fn=fn,
        inputs=inputs,
        x=x,
        baselines=b,
        args=args,
        target=t,
        steps=steps,
        fraction=fraction,
        max_dist=max_dist,
    )


# --------------------------------------------------------------------------------------
# Felzenszwalb segmentation (numpy; scikit-image's algorithm, without scikit-image)
# --------------------------------------------------------------------------------------


def _gaussian_kernel1d(sigma: float, radius: int) -> np.ndarray:
    """SciPy's ``_gaussian_kernel1d`` (order 0), float64."""
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


def _correlate_reflect(a: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """SciPy's ``correlate1d`` with a symmetric kernel and ``mode="reflect"``, in SciPy's
    order of operations (``x0 w0``, then the outermost pair first), so results match to
    the bit: ``acc = x[i] w[0]; acc += (x[i-k] + x[i+k]) w[k]`` for ``k = r, ..., 1``."""
    r = (len(weights) - 1) // 2
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    p = np.pad(a, pad, mode="symmetric")  # SciPy's "reflect" is numpy's "symmetric"

    def at(offset: int) -> np.ndarray:
        index = [slice(None)] * a.ndim
        index[axis] = slice(r + offset, r + offset + n)
        return p[tuple(index)]

    out = at(0) * weights[r]
    for k in range(r, 0, -1):
        out = out + (at(-k) + at(k)) * weights[r - k]
    return out


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """SciPy's ``gaussian_filter(image, [sigma, sigma, 0], mode="reflect")`` (truncate 4)."""
    if sigma <= 1e-15:
        return image
    weights = _gaussian_kernel1d(sigma, int(4.0 * sigma + 0.5))
    return _correlate_reflect(_correlate_reflect(image, weights, 0), weights, 1)


def felzenszwalb(
    image: Any, scale: float = 1.0, sigma: float = 0.8, min_size: int = 20
) -> np.ndarray:
    """Felzenszwalb and Huttenlocher's graph segmentation, scikit-image's variant.

    The algorithm of ``skimage.segmentation.felzenszwalb`` (which PAIR's XRAI uses),
    reimplemented in numpy: smooth the image with a Gaussian (``sigma``, reflecting
    borders), weigh the 8-connected pixel graph's edges by the Euclidean color distance,
    merge greedily along edges of increasing weight while the weight is below both
    components' internal difference plus ``scale / 255 / size``, then merge components
    smaller than ``min_size`` into a neighbour. The edge order, the float32 rounding of
    internal costs and the labelling (by each segment's first pixel in raster order) are
    scikit-image's, so the labels are the same. Host-side (the merge is a sequential
    union-find), not traceable.

    Args:
        image: Array of shape (H, W) or (H, W, C), channels last.
        scale: Larger means larger segments (> 0).
        sigma: Width of the Gaussian pre-smoothing (>= 0).
        min_size: Smallest segment size, in pixels, enforced after the merge (>= 1).

    Returns:
        An int64 label image of shape (H, W), labels ``0 .. S - 1``.

    Raises:
        ValueError: ``image`` is not 2-D or 3-D, or an option is out of range.

    Example:
        >>> import numpy as np, jaxattr
        >>> image = np.zeros((8, 8)); image[:, 4:] = 1.0
        >>> jaxattr.felzenszwalb(image, scale=1.0, sigma=0.0, min_size=2)[0]
        array([0, 0, 0, 0, 1, 1, 1, 1])
    """
    im = np.asarray(image, dtype=np.float64)
    if im.ndim == 2:
        im = im[:, :, None]
    if im.ndim != 3:
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got shape {np.shape(image)}")
    scale = _check_float(scale, "scale", minimum=0.0, strict=True)
    sigma = _check_float(sigma, "sigma", minimum=0.0)
    min_size = _core.check_positive_int(min_size, "min_size")
    im = _smooth(im, sigma)
    h, w = im.shape[:2]

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sqrt(np.sum((a - b) * (a - b), axis=-1))

    costs = np.hstack(
        [
            dist(im[:, 1:], im[:, : w - 1]).ravel(),
            dist(im[1:, :], im[: h - 1, :]).ravel(),
            dist(im[1:, 1:], im[: h - 1, : w - 1]).ravel(),
            dist(im[1:, : w - 1], im[: h - 1, 1:]).ravel(),
        ]
    ).astype(float)
    ids = np.arange(h * w, dtype=np.intp).reshape(h, w)
    edges = np.vstack(
        [
            np.c_[ids[:, 1:].ravel(), ids[:, : w - 1].ravel()],
            np.c_[ids[1:, :].ravel(), ids[: h - 1, :].ravel()],
            np.c_[ids[1:, 1:].ravel(), ids[: h - 1, : w - 1].ravel()],
            np.c_[ids[: h - 1, 1:].ravel(), ids[1:, : w - 1].ravel()],
        ]
    )
    order = np.argsort(costs)
    roots = _union_find(
        h * w,
        edges[order, 0].tolist(),
        edges[order, 1].tolist(),
        costs[order].tolist(),
        scale / 255.0,
        min_size,
    )
    return np.unique(roots, return_inverse=True)[1].reshape(h, w).astype(np.int64)


def _union_find(n, e0, e1, costs, k, min_size):
    """scikit-image's two passes over the sorted edges; roots are each component's
    smallest pixel index. Internal costs are rounded to float32, as its C code stores
    them (``cdef float inner_cost``)."""
    parent = list(range(n))
    size = [1] * n
    cint = [0.0] * n
    f32 = array.array("f", [0.0])
    for a, b, c in zip(e0, e1, costs, strict=True):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        if a == b:
            continue
        f32[0] = min(cint[a] + k / size[a], cint[b] + k / size[b])
        if c < f32[0]:
            if a > b:
                a, b = b, a
            parent[b] = a
            size[a] += size[b]
            cint[a] = c
    for a, b in zip(e0, e1, strict=True):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        if a != b and (size[a] < min_size or size[b] < min_size):
            if a > b:
                a, b = b, a
            parent[b] = a
            size[a] += size[b]
    for i in range(n):
        parent[i] = parent[parent[i]]
    return np.asarray(parent, dtype=np.intp)


#: PAIR's Felzenszwalb settings for XRAI.
XRAI_SCALES = (50.0, 100.0, 150.0, 250.0, 500.0, 1200.0)


def _disk_offsets(radius: int) -> list[tuple[int, int]]:
    """scikit-image's ``disk(radius)`` footprint: offsets with ``dy^2 + dx^2 <= r^2``."""
    r = range(-radius, radius + 1)
    return [(dy, dx) for dy in r for dx in r if dy * dy + dx * dx <= radius * radius]


def _label_masks(labels: np.ndarray, dilation_radius: int) -> np.ndarray:
    """One boolean mask per label ``min .. max`` of a label image (S, H, W), each dilated
    by a disk: a pixel joins label l's mask when a pixel within the disk has label l."""
    lo = int(labels.min())
    lab = labels - lo
    s = int(lab.max()) + 1
    h, w = lab.shape
    masks = np.zeros((s, h, w), dtype=bool)
    offsets = _disk_offsets(dilation_radius) if dilation_radius else [(0, 0)]
    rows, cols = np.indices((h, w))
    for dy, dx in offsets:
        ys, xs = rows + dy, cols + dx
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        masks[lab[ys[ok], xs[ok]], rows[ok], cols[ok]] = True
    return masks


def _resize_linear_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image, pixel centres aligned (``grid_mode``)."""
    h, w = labels.shape
    ys = np.minimum(np.floor((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(int), h - 1)
    xs = np.minimum(np.floor((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(int), w - 1)
    return labels[ys[:, None], xs[None, :]]


def _segments_one(
    image: np.ndarray, resize, scales, sigma, min_size, dilation_radius, value_range
) -> np.ndarray:
    """PAIR's ``_get_segments_felzenszwalb`` on one (H, W, C) image: (S, H, W) masks."""
    lo, hi = value_range
    im = np.asarray(image)
    span = im.max() - im.min()
    im = (im - im.min()) / (span if span else 1) * (hi - lo) + lo
    shape = im.shape[:2]
    if resize is not None and tuple(resize) != shape:
        im = np.asarray(
            jax.image.resize(
                jnp.asarray(im, jnp.float32), (*resize, im.shape[2]), "cubic", antialias=True
            ),
            dtype=np.float64,
        )
    masks = []
    for sc in scales:
        seg = felzenszwalb(im, scale=sc, sigma=sigma, min_size=min_size)
        if seg.shape != shape:
            seg = _resize_linear_nearest(seg, shape)
        masks.append(_label_masks(seg, dilation_radius))
    return np.concatenate(masks, axis=0)


def xrai_segments(
    x: Any,
    *,
    channel_axis: int | None = 1,
    resize: tuple[int, int] | None = (224, 224),
    scales: Sequence[float] = XRAI_SCALES,
    sigma: float = 0.8,
    min_size: int = 150,
    dilation_radius: int = 5,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """XRAI's default segments: Felzenszwalb at several scales, dilated (PAIR's recipe).

    Each image is rescaled to ``value_range``, resized to ``resize`` (PAIR's 224x224, for
    scale-independent settings), segmented with :func:`felzenszwalb` at every scale in
    ``scales`` (``sigma``, ``min_size``), the label images resized back (nearest), split
    into one mask per segment and dilated with a disk of ``dilation_radius``. Images
    already of size ``resize`` (or ``resize=None``) are segmented as they are, which is
    PAIR's result exactly; other sizes are resized with Keys cubic interpolation
    (:func:`jax.image.resize`) where PAIR uses scikit-image's spline resize, so segments
    then differ in detail. Runs on the host (numpy), one image at a time.

    Args:
        x: Images of shape (N, C, H, W) (``channel_axis=1``), (N, H, W, C)
            (``channel_axis=-1``) or (N, H, W) (``channel_axis=None``).
        channel_axis: The channel axis of ``x``, or ``None`` for single-channel images.
        resize: (height, width) to segment at, or ``None`` for the images' own size.
        scales: Felzenszwalb ``scale`` values, one segmentation each.
        sigma: Felzenszwalb's Gaussian pre-smoothing.
        min_size: Felzenszwalb's smallest segment, in pixels of the resized image.
        dilation_radius: Radius of the disk each mask is dilated by (0: none).
        value_range: The range images are rescaled to before segmenting.

    Returns:
        A boolean array (N, S, H, W): S masks per image, padded with empty masks where
        an image has fewer segments than the batch's largest count.

    Example:
        >>> import numpy as np, jaxattr
        >>> x = np.zeros((1, 3, 32, 32), np.float32); x[:, :, :, 16:] = 1.0
        >>> masks = jaxattr.xrai_segments(x, resize=None, scales=(100.0,), sigma=0.0)
        >>> masks.shape, bool(masks[0, 0, 0, 0]), bool(masks[0, 0, 0, 31])
        ((1, 2, 32, 32), True, False)
    """
    images = _images_hwc(x, channel_axis)
    if resize is not None:
        resize = tuple(_core.check_positive_int(r, "resize") for r in resize)
        if len(resize) != 2:
            raise ValueError(f"resize must be (height, width) or None, got {resize!r}")
    if isinstance(dilation_radius, bool) or not isinstance(dilation_radius, (int, np.integer)):
        raise TypeError(f"dilation_radius must be an int, got {dilation_radius!r}")
    if dilation_radius < 0:
        raise ValueError(f"dilation_radius must be >= 0, got {dilation_radius}")
    scales = [_check_float(s, "scales", minimum=0.0, strict=True) for s in scales]
    if not scales:
        raise ValueError("scales must hold at least one scale, got an empty sequence")
    per_image = [
        _segments_one(im, resize, scales, sigma, min_size, int(dilation_radius), value_range)
        for im in images
    ]
    s_max = max(m.shape[0] for m in per_image)
    out = np.zeros((len(per_image), s_max, *images.shape[1:3]), dtype=bool)
    for i, m in enumerate(per_image):
        out[i, : m.shape[0]] = m
    return out


def _images_hwc(x: Any, channel_axis: int | None, name: str = "x") -> np.ndarray:
    """Host copy of a batch of images as (N, H, W, C)."""
    a = np.asarray(x)
    if channel_axis is None:
        if a.ndim != 3:
            raise ValueError(
                f"{name} must have shape (N, H, W) with channel_axis=None, got shape {a.shape}"
            )
        return a[..., None]
    if a.ndim != 4:
        raise ValueError(
            f"{name} must be a batch of images (N, C, H, W) or (N, H, W, C), got shape {a.shape}"
        )
    return np.moveaxis(a, _channel_axis(channel_axis, 4, name), -1)


# --------------------------------------------------------------------------------------
# XRAI
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class XRAIParameters:
    """Options of :func:`xrai` (PAIR's ``XRAIParameters``, same names and defaults).

    Attributes:
        steps: Integration steps of the default integrated-gradients attribution.
        area_threshold: Fraction of the image the full algorithm ranks segments for; the
            rest is one last region (1.0: everything). The fast algorithm ignores it.
        return_baseline_predictions: Accepted for PAIR compatibility (PAIR ignores it).
        return_ig_attributions: Fill ``XRAIOutput.ig_attribution``.
        return_xrai_segments: Fill ``XRAIOutput.segments``.
        flatten_xrai_segments: Segments as one rank image (N, H, W) (1 = most important)
            instead of boolean masks (N, K, H, W), most important first.
        algorithm: ``"full"`` (greedy with overlaps) or ``"fast"`` (segments ranked once).
        experimental_params: ``{"min_pixel_diff": 50}``: masks that add fewer new pixels
            than this are skipped.

    Example:
        >>> import jaxattr
        >>> jaxattr.XRAIParameters(algorithm="fast").experimental_params
        {'min_pixel_diff': 50}
    """

    steps: int = 100
    area_threshold: float = 1.0
    return_baseline_predictions: bool = False
    return_ig_attributions: bool = False
    return_xrai_segments: bool = False
    flatten_xrai_segments: bool = True
    algorithm: str = "full"
    experimental_params: dict = dataclasses.field(default_factory=lambda: {"min_pixel_diff": 50})


@dataclasses.dataclass
class XRAIOutput:
    """What :func:`xrai` returns with ``return_details=True`` (PAIR's ``XRAIOutput``).

    Attributes:
        attribution_mask: The XRAI heatmap, shape (N, H, W).
        baselines: The integrated-gradients baselines used, each of x's shape, or
            ``None`` with a ``base_attribution``.
        ig_attribution: With ``return_ig_attributions``: the attribution per baseline,
            (B, *x.shape), or the ``base_attribution`` given.
        segments: With ``return_xrai_segments``: the rank image (N, H, W) int32, or the
            boolean region masks (N, K, H, W) if ``flatten_xrai_segments=False``.
    """

    attribution_mask: Any
    baselines: Any = None
    ig_attribution: Any = None
    segments: Any = None


def _area_count(threshold: float, p: int) -> int:
    """The largest pixel count c with ``c / p <= threshold`` (PAIR compares the mean)."""
    c = int(math.floor(threshold * p))
    while c >= 0 and c / p > threshold:
        c -= 1
    while c + 1 <= p and (c + 1) / p <= threshold:
        c += 1
    return min(c, p)


def _atoms(masks: np.ndarray, attr: np.ndarray):
    """Group the pixels by the set of masks they belong to: (S, A) membership, pixel
    count and attribution sum per atom, and each pixel's atom."""
    packed = np.packbits(masks, axis=0).T  # (P, ceil(S/8))
    keys, inverse = np.unique(packed, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    member = np.unpackbits(keys, axis=1, count=masks.shape[0]).T.astype(bool)  # (S, A)
    count = np.bincount(inverse, minlength=len(keys)).astype(np.int64)
    total = np.bincount(inverse, weights=attr.astype(np.float64), minlength=len(keys))
    return member, count, total, inverse


def _xrai_greedy_one(attr, masks, algorithm, area_count, min_pixel_diff):
    """PAIR's ``_xrai`` / ``_xrai_fast`` on one image, over pixel atoms.

    Args:
        attr: (P,) attribution per pixel.
        masks: (S, P) boolean segments (empty ones already dropped).

    Returns:
        ``(heatmap (P,) float64, ranks (P,) int32)``.
    """
    p = attr.shape[0]
    s = masks.shape[0]
    out_atom = None
    if s:
        member, count, total, inverse = _atoms(masks, attr)
        m_cnt = member * count[None]  # (S, A) pixels of each mask in each atom
        m_sum = member * total[None]
        avail = np.ones(member.shape[1], dtype=bool)
        out_atom = np.full(member.shape[1], -np.inf)
        step_atom = np.full(member.shape[1], -1)
        gains = []
        if algorithm == "full":
            remaining = np.ones(s, dtype=bool)
            cnt = m_cnt.sum(1)
            tot = m_sum.sum(1)
            covered = 0
            while covered <= area_count:
                remaining &= cnt >= min_pixel_diff
                if not remaining.any():
                    break
                with np.errstate(divide="ignore", invalid="ignore"):
                    gain = np.where(remaining & (cnt > 0), tot / np.maximum(cnt, 1), -np.inf)
                best = int(np.argmax(gain))
                if not gain[best] > -np.inf:
                    break
                diff = member[best] & avail
                out_atom[diff] = gain[best]
                step_atom[diff] = len(gains)
                gains.append(gain[best])
                avail &= ~diff
                cnt = cnt - m_cnt[:, diff].sum(1)
                tot = tot - m_sum[:, diff].sum(1)
                remaining[best] = False
                covered += int(count[diff].sum())
        else:
            cnt0 = m_cnt.sum(1)
            with np.errstate(divide="ignore", invalid="ignore"):
                g0 = np.where(cnt0 > 0, m_sum.sum(1) / np.maximum(cnt0, 1), -np.inf)
            for i in np.argsort(-g0, kind="stable"):
                diff = member[i] & avail
                c = int(count[diff].sum())
                if c < min_pixel_diff:
                    continue
                g = total[diff].sum() / c if c else -np.inf
                out_atom[diff] = g
                step_atom[diff] = len(gains)
                gains.append(g)
                avail &= ~member[i]
        out = out_atom[inverse]
        step = step_atom[inverse]
    else:
        out = np.full(p, -np.inf)
        step = np.full(p, -1)
        gains = []
    unc = step < 0
    if unc.any():
        out[unc] = attr[unc].astype(np.float64).mean()
    order = np.argsort(-np.asarray(gains, dtype=np.float64), kind="stable")
    rank_of_step = np.empty(len(gains), dtype=np.int32)
    rank_of_step[order] = np.arange(1, len(gains) + 1, dtype=np.int32)
    ranks = np.where(unc, len(gains) + 1, rank_of_step[np.maximum(step, 0)] if gains else 0)
    return out, ranks.astype(np.int32)


def _xrai_greedy(attr, masks, algorithm, area_count, min_pixel_diff):
    """The greedy region selection for a batch, on the host: attr (N, H, W), masks
    (N, S, H, W) -> heatmap (N, H, W) float32, ranks (N, H, W) int32."""
    attr = np.asarray(attr)
    masks = np.asarray(masks, dtype=bool)
    n, h, w = attr.shape
    heat = np.empty((n, h, w), np.float32)
    ranks = np.empty((n, h, w), np.int32)
    for i in range(n):
        m = masks[i].reshape(masks.shape[1], -1)
        m = m[m.any(axis=1)]  # empty masks can never be chosen
        o, r = _xrai_greedy_one(attr[i].reshape(-1), m, algorithm, area_count, min_pixel_diff)
        heat[i] = o.reshape(h, w)
        ranks[i] = r.reshape(h, w)
    return heat, ranks


def _segment_masks(segments: Any, n: int, hw: tuple[int, int]) -> Any:
    """User segments as boolean masks (N, S, H, W) (a jax array stays one, for jit)."""
    if isinstance(segments, (list, tuple)):
        segments = np.stack([np.asarray(s) for s in segments])
        if segments.dtype != bool:
            raise TypeError(
                f"a list of segments holds boolean (H, W) masks, got dtype {segments.dtype}"
            )
    if not hasattr(segments, "shape"):
        raise TypeError(f"segments must be an array or a list of masks, got {type(segments)}")
    shape = tuple(segments.shape)
    if segments.dtype == bool:
        if len(shape) == 3 and shape[1:] == hw:
            return (
                jnp.broadcast_to(segments[None], (n, *shape))
                if isinstance(segments, jax.Array)
                else np.broadcast_to(segments[None], (n, *shape))
            )
        if len(shape) == 4 and shape[0] == n and shape[2:] == hw:
            return segments
        raise ValueError(
            f"boolean segments must have shape (S, {hw[0]}, {hw[1]}) (shared by the batch) "
            f"or ({n}, S, {hw[0]}, {hw[1]}), got {shape}"
        )
    if jnp.issubdtype(segments.dtype, jnp.integer):
        if not _core.is_concrete(segments):
            raise TypeError("integer label segments must be concrete; pass boolean masks")
        lab = np.asarray(segments)
        if lab.shape == hw:
            lab = np.broadcast_to(lab, (n, *hw))
        if lab.shape != (n, *hw):
            raise ValueError(
                f"integer segments are label images of shape ({hw[0]}, {hw[1]}) or "
                f"({n}, {hw[0]}, {hw[1]}), got {shape}"
            )
        per = [_label_masks(lab[i], 0) for i in range(n)]
        s_max = max(m.shape[0] for m in per)
        out = np.zeros((n, s_max, *hw), dtype=bool)
        for i, m in enumerate(per):
            out[i, : m.shape[0]] = m
        return out
    raise TypeError(f"segments must be boolean masks or integer labels, got {segments.dtype}")


def _xrai_ig(fn, inputs, x, baseline, args, target, steps, batch_size):
    """PAIR's integrated gradients: ``(x - b) * mean_s grad f(b + a_s (x - b))`` with
    ``a = linspace(0, 1, steps)``."""
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / steps)
    total = None
    for start, stop in _core.batched_chunks(steps, batch_size):
        part = _path_gradient_sum(  # integrated_gradients' compiled step sum
            fn=fn,
            inputs=inputs,
            x=x,
            baselines=baseline,
            args=args,
            target=target,
            alphas=alphas[start:stop],
            weights=weights[start:stop],
        )
        total = _core.tree_add(total, part)
    return total * (x - jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape))


@_core.contract
def xrai(
    fn: Callable[..., Any] | None,
    x: jax.Array,
    baselines: Sequence[Any] | None = None,
    *,
    target: Any = None,
    segments: Any = None,
    base_attribution: Any = None,
    extra_parameters: XRAIParameters | None = None,
    channel_axis: int | None = 1,
    batch_size: int | None = None,
    return_details: bool = False,
    args: tuple = (),
) -> jax.Array | XRAIOutput:
    """XRAI (Kapishnikov et al., 2019), PAIR saliency's ``XRAI``: region attribution.

    Ranks image regions by attribution density. The attribution is ``base_attribution``
    (any method's, e.g. :func:`jaxattr.saliency`), or by default PAIR's integrated
    gradients (``extra_parameters.steps`` points on ``linspace(0, 1)``) averaged over the
    ``baselines`` (default: each image's min and max value). It is reduced to one value
    per pixel (max over channels). The ``"full"`` algorithm then repeatedly adds the
    segment whose pixels not yet covered have the highest mean attribution (segments that
    add fewer than ``min_pixel_diff`` pixels are dropped) until ``area_threshold`` of the
    image is covered; ``"fast"`` ranks the segments once and adds them in that order.
    Each pixel gets the density of the region it joined; pixels no region covered share
    their mean attribution. Segments are the user's, or :func:`xrai_segments` (Felzenszwalb
    at six scales, PAIR's defaults). The integrated gradients are compiled (steps
    ``vmap``-ped); the greedy selection runs on the host over groups of pixels with the
    same segment membership. Under ``jax.jit`` pass ``segments`` as boolean masks: the
    selection then runs as a host callback.

    Args:
        fn: Batch-first model ``fn(x) -> y`` (may be ``None`` with a ``base_attribution``).
        x: Images (N, C, H, W) (``channel_axis=1``), (N, H, W, C) (``channel_axis=-1``)
            or (N, H, W) (``channel_axis=None``).
        baselines: Integrated-gradients baselines: a list of entries, each a scalar or an
            array broadcastable to x; ``None``: each image's min and its max.
        target: What to explain (see :func:`jaxattr.select_target`).
        segments: Boolean masks (S, H, W) shared by the batch, (N, S, H, W) per image, or
            a list of (H, W) masks; or integer label images (H, W) / (N, H, W). ``None``:
            :func:`xrai_segments` with PAIR's settings.
        base_attribution: A precomputed attribution of x's shape (or (N, H, W)).
        extra_parameters: :class:`XRAIParameters` (``None``: the defaults).
        channel_axis: The channel axis of x, or ``None`` for (N, H, W) images.
        batch_size: At most this many integration steps per compiled call.
        return_details: Return an :class:`XRAIOutput` instead of the heatmap.
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The heatmap (N, H, W) in x's dtype, or an :class:`XRAIOutput`.

    Raises:
        ValueError: Unknown ``algorithm``, shapes of ``baselines``, ``segments`` or
            ``base_attribution`` that do not fit x, or a target that does not fit.
        TypeError: No ``fn`` and no ``base_attribution``; default segments under jit.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, jaxattr
        >>> w = jax.random.normal(jax.random.key(0), (3 * 16 * 16, 4))
        >>> fn = lambda x: x.reshape(len(x), -1) @ w              # (N, 3, 16, 16) -> (N, 4)
        >>> x = jax.random.uniform(jax.random.key(1), (2, 3, 16, 16))
        >>> quads = (np.arange(16)[:, None] // 8) * 2 + np.arange(16) // 8  # 4 labels
        >>> heat = jaxattr.xrai(fn, x, target=1, segments=quads,
        ...                     extra_parameters=jaxattr.XRAIParameters(steps=8))
        >>> heat.shape
        (2, 16, 16)
    """
    params = extra_parameters if extra_parameters is not None else XRAIParameters()
    if not isinstance(params, XRAIParameters):
        raise TypeError(f"extra_parameters must be an XRAIParameters, got {type(params).__name__}")
    _core.check_choice(params.algorithm, "extra_parameters.algorithm", ("full", "fast"))
    min_pixel_diff = params.experimental_params.get("min_pixel_diff", 50)
    area = _check_float(params.area_threshold, "extra_parameters.area_threshold")
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
    inputs = _core.as_inputs(x, need_float=base_attribution is None)
    if channel_axis is None:
        if x.ndim != 3:
            raise ValueError(f"x must have shape (N, H, W) with channel_axis=None, got {x.shape}")
        hw = tuple(x.shape[1:])
        ch = None
    else:
        if x.ndim != 4:
            raise ValueError(
                f"x must be a batch of images (N, C, H, W) or (N, H, W, C), got shape "
                f"{tuple(x.shape)}"
            )
        ch = _channel_axis(channel_axis, 4)
        hw = tuple(s for a, s in enumerate(x.shape) if a not in (0, ch))
    n = inputs.n
    args = tuple(args)

    used_baselines = None
    if base_attribution is not None:
        attr_full = jnp.asarray(base_attribution)
        if attr_full.shape not in (x.shape, (n, *hw)):
            raise ValueError(
                f"base_attribution must have x's shape {tuple(x.shape)} or (N, H, W) = "
                f"{(n, *hw)}, got {tuple(attr_full.shape)}"
            )
        ig_attrs = attr_full
    else:
        if fn is None:
            raise TypeError("xrai needs fn to compute integrated gradients, or a base_attribution")
        steps = _core.check_positive_int(params.steps, "extra_parameters.steps")
        t = _core.prepare_target(target, fn, inputs, x, args)
        if baselines is None:
            axes = tuple(range(1, x.ndim))
            used_baselines = [
                jnp.broadcast_to(jnp.min(x, axis=axes, keepdims=True), x.shape),
                jnp.broadcast_to(jnp.max(x, axis=axes, keepdims=True), x.shape),
            ]
        else:
            if not isinstance(baselines, (list, tuple)) or not baselines:
                raise TypeError(
                    f"baselines must be a non-empty list of baselines (each a scalar or an "
                    f"array broadcastable to x), got {type(baselines).__name__}"
                )
            used_baselines = [
                jnp.broadcast_to(
                    _core.broadcast_baselines(b, x, inputs, name=f"baselines[{i}]"), x.shape
                )
                for i, b in enumerate(baselines)
            ]
        ig_attrs = jnp.stack(
            [_xrai_ig(fn, inputs, x, b, args, t, steps, batch_size) for b in used_baselines]
        )
        attr_full = jnp.mean(ig_attrs, axis=0)
    attr = attr_full if attr_full.ndim == 3 else jnp.max(attr_full, axis=ch)

    if segments is None:
        if not _core.is_concrete(x):
            raise TypeError(
                "xrai's default segmentation runs on the host and cannot be traced: under "
                "jit/vmap pass segments= (boolean masks, e.g. from jaxattr.xrai_segments)"
            )
        masks = xrai_segments(x, channel_axis=channel_axis)
    else:
        masks = _segment_masks(segments, n, hw)

    area_count = _area_count(area, hw[0] * hw[1])
    greedy = functools.partial(
        _xrai_greedy,
        algorithm=params.algorithm,
        area_count=area_count,
        min_pixel_diff=int(min_pixel_diff),
    )
    if _core.is_concrete(attr, masks):
        heat, ranks = greedy(np.asarray(attr), np.asarray(masks))
        heat, ranks = jnp.asarray(heat), jnp.asarray(ranks)
    else:
        shapes = (
            jax.ShapeDtypeStruct((n, *hw), jnp.float32),
            jax.ShapeDtypeStruct((n, *hw), jnp.int32),
        )
        heat, ranks = jax.pure_callback(
            greedy, shapes, attr, jnp.asarray(masks), vmap_method="sequential"
        )
    heat = heat.astype(x.dtype)
    if not return_details:
        return heat
    out = XRAIOutput(attribution_mask=heat, baselines=used_baselines)
    if params.return_ig_attributions:
        out.ig_attribution = ig_attrs
    if params.return_xrai_segments:
        if params.flatten_xrai_segments:
            out.segments = ranks
        else:
            k = int(np.asarray(ranks).max())
            out.segments = jnp.asarray(ranks)[:, None] == jnp.arange(1, k + 1)[None, :, None, None]
    return out
