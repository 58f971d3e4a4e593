"""Shared pieces of the Quantus metrics: inputs, attributions, normalisation, baselines,
similarity functions and aggregation.

Quantus (``quantus`` 0.6.0) is the reference. Its conventions kept here:

- Attributions are expanded to the input's number of dimensions (Quantus's
  ``expand_attribution_channel``: an (N, H, W) map for an (N, C, H, W) input gets a
  channel axis of size 1) and broadcast to the input where a metric perturbs features.
- ``normalise`` (by default :func:`normalise_by_max`) runs before ``abs``.
- Baselines (``perturb_baseline``) are ``"black"`` (the example's minimum), ``"white"``
  (its maximum), ``"mean"``, ``"uniform"`` (``U(uniform_low, uniform_high)``) or a number.

One difference runs through all metrics: :func:`normalise_by_max` divides each example by
its own maximum. Quantus's default divides the whole batch it is given by the batch's
maximum (``normalise_axes=None`` covers the batch axis), so a Quantus score can depend on
the other examples of the batch; it equals jaxattr's with Quantus's
``normalise_func_kwargs={"normalise_axes": (1, ..., ndim - 1)}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core

__all__ = [
    "BASELINES",
    "check_baseline",
    "correlation_kendall_tau",
    "correlation_pearson",
    "correlation_spearman",
    "distance_euclidean",
    "distance_manhattan",
    "expand_attributions",
    "fro_norm",
    "l2_norm",
    "linf_norm",
    "normalise_by_max",
    "normalise_by_negative",
    "prepare_attributions",
    "ssim",
]

#: The named ``perturb_baseline`` values (besides plain numbers).
BASELINES = ("black", "white", "mean", "uniform")


# --------------------------------------------------------------------------------------
# Inputs, targets, attributions
# --------------------------------------------------------------------------------------


def as_x(x: Any, name: str = "x", min_ndim: int = 2, check: bool = True) -> jax.Array:
    """A floating input array (N, ...) (numpy input converted on the host, no compile)."""
    if isinstance(x, (tuple, list, dict)):
        raise TypeError(
            f"{name} must be one array (N, ...) for the Quantus metrics, got a {type(x).__name__}"
        )
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
    elif not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions (N, ...), got shape {tuple(x.shape)}"
        )
    if check:
        _core.check_finite(x, name)
    return jnp.asarray(x)


def as_attr(attributions: Any, x: jax.Array, name: str = "attributions"):
    """``(array, expanded shape)``: the raw attributions and the shape Quantus's channel
    expansion gives them (applied inside the compiled metric, see :func:`expand_shape`)."""
    a = attributions
    if not isinstance(a, jax.Array):
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
    elif not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)
    shape = expand_shape(tuple(a.shape), tuple(x.shape), name)
    _core.check_finite(a, name)
    return jnp.asarray(a), shape


def check_image(x: jax.Array, name: str = "x") -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{name} must be a channel-first image batch (N, C, H, W), got shape {tuple(x.shape)}"
        )


def expand_shape(a_shape: tuple, x_shape: tuple, name: str = "attributions") -> tuple:
    """The shape of attributions after Quantus's channel expansion, checked against x.

    ``a_shape`` may be x's shape, have size 1 on some axes, or have fewer dimensions that
    match a leading or trailing run of x's non-batch axes (an (N, H, W) map for an
    (N, C, H, W) input), which get axes of size 1.
    """
    if len(a_shape) == 0 or a_shape[0] != x_shape[0]:
        raise ValueError(
            f"{name} must lead with the batch size N={x_shape[0]} of x, got shape {a_shape}"
        )
    if len(a_shape) > len(x_shape):
        raise ValueError(
            f"{name} must not have more dimensions than x {x_shape}, got shape {a_shape}"
        )
    shape = a_shape
    if len(a_shape) < len(x_shape):
        inner, rest = a_shape[1:], x_shape[1:]
        k = len(rest) - len(inner)
        if inner == rest[k:]:
            shape = (x_shape[0],) + (1,) * k + inner
        elif inner == rest[: len(inner)]:
            shape = (x_shape[0],) + inner + (1,) * k
        else:
            raise ValueError(
                f"{name} of shape {a_shape} must match a leading or trailing run of x's axes "
                f"{x_shape} (e.g. (N, H, W) for (N, C, H, W))"
            )
    for i, (da, dx) in enumerate(zip(shape, x_shape, strict=True)):
        if da not in (1, dx):
            raise ValueError(
                f"{name} of shape {a_shape} must broadcast to x's shape {x_shape} (axis {i}: "
                f"{da} vs {dx})"
            )
    return tuple(shape)


def expand_attributions(attributions: Any, x: jax.Array, name: str = "attributions") -> jax.Array:
    """Attributions with x's number of dimensions, broadcastable to x (Quantus's expansion,
    see :func:`expand_shape`).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr._quantus_common import expand_attributions
        >>> expand_attributions(jnp.ones((2, 4, 4)), jnp.ones((2, 3, 4, 4))).shape
        (2, 1, 4, 4)
    """
    a = jnp.asarray(attributions)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)
    return a.reshape(expand_shape(tuple(a.shape), tuple(x.shape), name))


def normalise_by_max(a: jax.Array) -> jax.Array:
    """Divide each example by its largest absolute value (Quantus's ``normalise_by_max``).

    An all-zero example is returned unchanged. Quantus divides the whole batch by one
    maximum by default; here each example is scaled on its own (see the module notes).

    Args:
        a: Attributions (N, ...).

    Returns:
        ``a / max|a|`` per example, same shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import normalise_by_max
        >>> normalise_by_max(jnp.array([[1.0, -4.0], [0.0, 0.0]]))
        Array([[ 0.25, -1.  ],
               [ 0.  ,  0.  ]], dtype=float32)
    """
    a = jnp.asarray(a)
    axes = tuple(range(1, a.ndim))
    m = jnp.max(jnp.abs(a), axis=axes, keepdims=True)
    return a / jnp.where(m == 0, 1, m)


def normalise_by_negative(a: jax.Array) -> jax.Array:
    """Quantus's ``normalise_by_negative`` per example: positives by the maximum, negatives
    by ``|minimum|``, so the result spans [-1, 1] with 0 kept.

    Args:
        a: Attributions (N, ...).

    Returns:
        The normalised attributions, same shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import normalise_by_negative
        >>> normalise_by_negative(jnp.array([[2.0, -4.0, 1.0]]))
        Array([[ 1. , -1. ,  0.5]], dtype=float32)
    """
    a = jnp.asarray(a)
    axes = tuple(range(1, a.ndim))
    hi = jnp.max(a, axis=axes, keepdims=True)
    lo = jnp.min(a, axis=axes, keepdims=True)
    pos = jnp.where(hi != 0, a / jnp.where(hi != 0, hi, 1), 0.0)
    neg = jnp.where(lo != 0, a / jnp.where(lo != 0, lo, 1), 0.0)
    return jnp.where(
        lo >= 0,
        pos,
        jnp.where(hi <= 0, -neg, (a > 0).astype(pos.dtype) * pos - (a < 0).astype(neg.dtype) * neg),
    ).astype(a.dtype)


def prepare_attributions(
    attributions: Any,
    x: jax.Array,
    *,
    abs: bool,  # noqa: A002 - Quantus's option name
    normalise: bool,
    normalise_func: Callable[[jax.Array], jax.Array] | None,
    name: str = "attributions",
) -> jax.Array:
    """Expand, then normalise, then take ``abs`` (Quantus's order)."""
    a = expand_attributions(attributions, x, name)
    return postprocess(a, abs=abs, normalise=normalise, normalise_func=normalise_func)


def post_options(abs: Any, normalise: Any, normalise_func: Any) -> tuple:  # noqa: A002
    """The static ``(abs, normalise, normalise_func)`` of a metric, validated."""
    if normalise_func is not None and not callable(normalise_func):
        raise TypeError(f"normalise_func must be callable, got {type(normalise_func).__name__}")
    return (check_bool(abs, "abs"), check_bool(normalise, "normalise"), normalise_func)


def apply_post(a: jax.Array, post: tuple) -> jax.Array:
    return postprocess(a, abs=post[0], normalise=post[1], normalise_func=post[2])


def postprocess(a, *, abs, normalise, normalise_func):  # noqa: A002
    if normalise:
        a = (normalise_by_max if normalise_func is None else normalise_func)(a)
    if abs:
        a = jnp.abs(a)
    return a


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_number(
    value: Any, name: str, *, minimum: float | None = None, strict: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def prepare_target(target: Any, fn: Callable, x: jax.Array) -> _core.Target:
    inputs = _core.as_inputs(x, need_float=False)
    return _core.prepare_target(target, fn, inputs, x, ())


def labels(target: Any, n: int, name: str = "target") -> Any:
    """Integer class labels (N,) from an int or one int per example."""
    if isinstance(target, (bool, np.bool_)) or target is None:
        raise TypeError(f"{name} must be an int class index or N of them, got {target!r}")
    if isinstance(target, (int, np.integer)):
        return np.full((n,), int(target), np.int32)
    arr = target if isinstance(target, jax.Array) else np.asarray(target)
    if not jnp.issubdtype(arr.dtype, jnp.integer) or tuple(arr.shape) != (n,):
        raise ValueError(
            f"{name} must be an int class index or N={n} of them (shape ({n},), integer), got "
            f"shape {tuple(arr.shape)} dtype {arr.dtype}"
        )
    return arr.astype(np.int32) if isinstance(arr, np.ndarray) else arr


def outputs(fn: Callable, softmax: bool, x: jax.Array) -> jax.Array:
    y = fn(x)
    return jax.nn.softmax(y, axis=-1) if softmax else y


def scores(fn: Callable, softmax: bool, x: jax.Array, target: _core.Target) -> jax.Array:
    return _core.target_score(outputs(fn, softmax, x), target)


# --------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------


def uniform(key: jax.Array, shape: tuple, dtype: Any, low: Any = 0.0, high: Any = 1.0):
    """``jax.random.uniform`` drawn flat and reshaped: the same values, but XLA on CPU
    compiles the flat draw several times faster than a 4-D one."""
    return jax.random.uniform(key, (math.prod(shape),), dtype, low, high).reshape(shape)


def normal(key: jax.Array, shape: tuple, dtype: Any):
    """``jax.random.normal`` drawn flat and reshaped (see :func:`uniform`)."""
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def check_baseline(value: Any, name: str = "perturb_baseline") -> str | float:
    if isinstance(value, str):
        low = value.lower()
        if low == "random":
            raise ValueError(
                f"{name}='random' was removed in Quantus; use 'uniform' (with "
                f"perturb_func_kwargs={{'uniform_low': .., 'uniform_high': ..}})"
            )
        if low not in BASELINES:
            raise ValueError(f"{name} must be one of {list(BASELINES)} or a number, got {value!r}")
        return low
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"{name} must be one of {list(BASELINES)} or a number, got {type(value).__name__}"
        )
    return float(value)


def uniform_bounds(perturb_func_kwargs: dict | None) -> tuple[float, float]:
    kw = dict(perturb_func_kwargs or {})
    unknown = set(kw) - {"uniform_low", "uniform_high"}
    if unknown:
        raise ValueError(
            f"perturb_func_kwargs may hold 'uniform_low' and 'uniform_high' (for the default "
            f"baseline replacement), got {sorted(unknown)}"
        )
    return float(kw.get("uniform_low", 0.0)), float(kw.get("uniform_high", 1.0))


def static_fill(kind: str | float, xf: jax.Array) -> jax.Array:
    """The baseline of each example (N,) for the non-random kinds (xf is (N, F))."""
    if kind == "black":
        return xf.min(axis=1)
    if kind == "white":
        return xf.max(axis=1)
    if kind == "mean":
        return xf.mean(axis=1)
    return jnp.full((xf.shape[0],), kind, xf.dtype)


def step_fills(
    kind: str | float,
    xf: jax.Array,
    step_of: jax.Array,
    n_steps: int,
    *,
    cumulative: bool,
    key: jax.Array | None,
    bounds: tuple[float, float],
    extra: tuple[int, ...] = (),
) -> jax.Array:
    """The baseline value used at every step, shape (*extra, n_steps, N).

    Quantus recomputes the baseline on the array it perturbs. Cumulative metrics perturb
    an array whose earlier steps are already replaced: its minimum and maximum stay those
    of x, its mean moves, and ``"uniform"`` draws one value per example at every call.
    """
    n = xf.shape[0]
    if kind == "uniform":
        lo, hi = bounds
        return uniform(key, extra + (n_steps, n), xf.dtype, lo, hi)
    if kind == "mean" and cumulative:
        fill = _sequential_mean(xf, step_of, n_steps)
    else:
        fill = jnp.broadcast_to(static_fill(kind, xf)[None], (n_steps, n))
    return jnp.broadcast_to(fill, extra + (n_steps, n))


@_caching.jit
def _sequential_mean_core(xf, step_of, like_steps):
    n_steps = like_steps.shape[0]  # static: the length of a (n_steps, 0) placeholder
    size = xf.shape[1]

    def sums(xr, sr):
        seg = jnp.where(sr < n_steps, sr, n_steps)
        s = jax.ops.segment_sum(xr, seg, num_segments=n_steps + 1)[:n_steps]
        c = jax.ops.segment_sum(jnp.ones_like(xr), seg, num_segments=n_steps + 1)[:n_steps]
        return s, c

    xs, cs = jax.vmap(sums)(xf, step_of)  # (N, S)

    def body(total, k):
        m = total / size
        return total - xs[:, k] + cs[:, k] * m, m

    _, means = jax.lax.scan(body, xf.sum(axis=1), jnp.arange(n_steps))
    return means  # (S, N)


def _sequential_mean(xf, step_of, n_steps):
    return _sequential_mean_core(xf, step_of, jnp.zeros((n_steps, 0)))


def fill_map(fills: jax.Array, step_of: jax.Array) -> jax.Array:
    """Per-feature fill (N, F) from per-step fills (S, N): the value at the feature's step."""
    idx = jnp.clip(step_of, 0, fills.shape[0] - 1)
    return jnp.take_along_axis(fills.T, idx, axis=1)


# --------------------------------------------------------------------------------------
# Similarity functions, norms (batched: (N, K) arrays to (N,))
# --------------------------------------------------------------------------------------


def _rows(a: Any, b: Any, name: str) -> tuple[jax.Array, jax.Array]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name} compares rows: a and b must have one shape (N, K), got {a.shape} and {b.shape}"
        )
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)
    if not jnp.issubdtype(b.dtype, jnp.floating):
        b = b.astype(jnp.float32)
    return a, b


def correlation_pearson(a: Any, b: Any) -> jax.Array:
    """Pearson's r of every row pair (``scipy.stats.pearsonr`` along axis 1).

    Args:
        a: (N, K) or (K,).
        b: Same shape.

    Returns:
        r per row, shape (N,); NaN for a constant row (as scipy).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import correlation_pearson
        >>> a, b = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[2.0, 4.0, 7.0]])
        >>> correlation_pearson(a, b).round(4)
        Array([0.9934], dtype=float32)
    """
    a, b = _rows(a, b, "correlation_pearson")
    am = a - a.mean(axis=1, keepdims=True)
    bm = b - b.mean(axis=1, keepdims=True)
    na = jnp.linalg.norm(am, axis=1, keepdims=True)
    nb = jnp.linalg.norm(bm, axis=1, keepdims=True)
    r = jnp.sum((am / na) * (bm / nb), axis=1)
    return jnp.clip(r, -1.0, 1.0)


def rankdata(v: jax.Array) -> jax.Array:
    """Average ranks 1..K along the last axis (``scipy.stats.rankdata``, ties averaged)."""

    def one(row):
        s = jnp.sort(row)
        lo = jnp.searchsorted(s, row, side="left")
        hi = jnp.searchsorted(s, row, side="right")
        return (lo + hi + 1).astype(row.dtype) / 2

    flat = v.reshape(-1, v.shape[-1])
    return jax.vmap(one)(flat).reshape(v.shape)


def correlation_spearman(a: Any, b: Any) -> jax.Array:
    """Spearman's rho of every row pair (``scipy.stats.spearmanr``; ties get average ranks).

    Args:
        a: (N, K) or (K,).
        b: Same shape.

    Returns:
        rho per row, shape (N,).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import correlation_spearman
        >>> a, b = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[2.0, 4.0, 7.0]])
        >>> correlation_spearman(a, b).round(4)
        Array([1.], dtype=float32)
    """
    a, b = _rows(a, b, "correlation_spearman")
    return correlation_pearson(rankdata(a), rankdata(b))


def correlation_kendall_tau(a: Any, b: Any) -> jax.Array:
    """Kendall's tau-b of every row pair (``scipy.stats.kendalltau``), O(K^2) per row.

    Args:
        a: (N, K) or (K,).
        b: Same shape.

    Returns:
        tau per row, shape (N,).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import correlation_kendall_tau
        >>> correlation_kendall_tau(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[3.0, 1.0, 2.0]]))
        Array([-0.33333334], dtype=float32)
    """
    a, b = _rows(a, b, "correlation_kendall_tau")

    def one(ra, rb):
        sa = jnp.sign(ra[:, None] - ra[None, :])
        sb = jnp.sign(rb[:, None] - rb[None, :])
        return jnp.sum(sa * sb) / jnp.sqrt(jnp.sum(jnp.abs(sa)) * jnp.sum(jnp.abs(sb)))

    return jax.vmap(one)(a, b)


def distance_euclidean(a: Any, b: Any) -> jax.Array:
    """Euclidean distance of every row pair, shape (N,) (Quantus's ``distance_euclidean``).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import distance_euclidean
        >>> distance_euclidean(jnp.array([[0.0, 3.0]]), jnp.array([[4.0, 0.0]]))
        Array([5.], dtype=float32)
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    return jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1))


def distance_manhattan(a: Any, b: Any) -> jax.Array:
    """L1 distance of every row pair, shape (N,) (Quantus's ``distance_manhattan``).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import distance_manhattan
        >>> distance_manhattan(jnp.array([[0.0, 3.0]]), jnp.array([[4.0, 0.0]]))
        Array([7.], dtype=float32)
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    return jnp.sum(jnp.abs(a - b), axis=-1)


def fro_norm(a: Any) -> jax.Array:
    """The 2-norm of every row, shape (N,) (Quantus's ``fro_norm`` and ``l2_norm``).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import fro_norm
        >>> fro_norm(jnp.array([[3.0, 4.0]]))
        Array([5.], dtype=float32)
    """
    return jnp.linalg.norm(jnp.asarray(a), axis=-1)


l2_norm = fro_norm


def linf_norm(a: Any) -> jax.Array:
    """The max-norm of every row, shape (N,) (Quantus's ``linf_norm``).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import linf_norm
        >>> linf_norm(jnp.array([[3.0, -4.0]]))
        Array([4.], dtype=float32)
    """
    return jnp.max(jnp.abs(jnp.asarray(a)), axis=-1)


def ssim(a: Any, b: Any, *, win_size: int | None = None) -> jax.Array:
    """Structural similarity of every row pair, Quantus's ``ssim`` (scikit-image's
    ``structural_similarity`` on the flattened attributions).

    As scikit-image with its defaults: a uniform window of ``win_size`` (7) elements,
    sample covariances, ``K1 = 0.01``, ``K2 = 0.03``, ``data_range`` the value range of the
    two rows together, and the mean over the positions at least ``win_size // 2`` from
    the ends.

    Args:
        a: (N, K) or (K,), K >= ``win_size``.
        b: Same shape.
        win_size: Odd window length (default 7).

    Returns:
        The SSIM per row, shape (N,).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.metrics import ssim
        >>> row = jnp.arange(10.0)[None]
        >>> ssim(row, row)
        Array([1.], dtype=float32)
    """
    a, b = _rows(a, b, "ssim")
    w = 7 if win_size is None else _core.check_positive_int(win_size, "win_size")
    if w % 2 == 0:
        raise ValueError(f"win_size must be odd, got {w}")
    if a.shape[1] < w:
        raise ValueError(f"ssim needs rows of at least win_size={w} values, got {a.shape[1]}")
    return _ssim(a, b, w)


@_caching.jit
def _ssim_core(a, b, kernel):
    w = kernel.shape[0]
    lo = jnp.minimum(a.min(1), b.min(1))
    hi = jnp.maximum(a.max(1), b.max(1))
    rng = (hi - lo)[:, None]

    def filt(v):
        return jax.vmap(lambda r: jnp.convolve(r, kernel, mode="valid"))(v)

    ux, uy = filt(a), filt(b)
    uxx, uyy, uxy = filt(a * a), filt(b * b), filt(a * b)
    cov = w / (w - 1.0)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean(axis=1)


def _ssim(a, b, w):
    return _ssim_core(a, b, jnp.full((w,), 1.0 / w, a.dtype))


def resolve_norm(value: Any, name: str) -> Callable[[jax.Array], jax.Array]:
    if callable(value):
        return value
    table = {"fro": fro_norm, "l2": fro_norm, "linf": linf_norm}
    if value in table:
        return table[value]
    raise ValueError(
        f"{name} must be a callable (N, K) -> (N,) or one of {list(table)}, got {value!r}"
    )


def n_steps(n_features: int, features_in_step: int) -> int:
    return math.ceil(n_features / features_in_step)
