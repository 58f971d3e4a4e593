"""Faithfulness metrics of Quantus 0.6.0 in JAX: faithfulness correlation and estimate,
monotonicity (Arya) and monotonicity correlation (Nguyen), pixel flipping, region
perturbation, selectivity, ROAD, IROF and sufficiency.

Every perturbed copy of the input is an item of one ``vmap``-ped batch (split into
compiled chunks by ``batch_size``, by default from the memory budget); randomness comes
from an explicit ``key``. Option names and defaults are Quantus's. Features are the
elements of the input with the attributions broadcast to it (Quantus's convention: an
(N, 1, H, W) map over an (N, 3, H, W) image gives three tied features per pixel), ranked
with a stable sort (ties in index order; numpy's default sort in Quantus leaves tied
features in an unspecified order).

A custom ``perturb_func(key, x, mask) -> x_perturbed`` (x (N, ...), ``mask`` a boolean
array of x's shape marking the features to perturb) replaces the default baseline
replacement. Cumulative metrics call it with the original x and the mask of every feature
removed so far (Quantus passes the array perturbed by the earlier steps instead; the two
agree for any replacement that does not depend on the values it replaces).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core
from jaxattr import _quantus_common as qc

__all__ = [
    "faithfulness_correlation",
    "faithfulness_estimate",
    "irof",
    "monotonicity",
    "monotonicity_correlation",
    "noisy_linear_imputation",
    "pixel_flipping",
    "region_perturbation",
    "road",
    "selectivity",
    "sufficiency",
]


# --------------------------------------------------------------------------------------
# Shared machinery: features ranked into steps, perturbed copies scored in one vmap
# --------------------------------------------------------------------------------------


def _ranks(values: jax.Array, descending: bool) -> jax.Array:
    """Rank 0..F-1 of every feature (N, F) in (stably) sorted order."""
    n, f = values.shape
    order = jnp.argsort(-values if descending else values, axis=1, stable=True)
    return jnp.zeros_like(order).at[jnp.arange(n)[:, None], order].set(jnp.arange(f)[None])


def _key(key: Any, name: str, needed: bool) -> jax.Array:
    if needed:
        return _core.check_key(key, name)
    if key is not None and not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax.random key, got {type(key).__name__}")
    return jax.random.key(0) if key is None else key


def _check_perturb_func(perturb_func: Any) -> None:
    if perturb_func is not None and not callable(perturb_func):
        raise TypeError(
            f"perturb_func must be None or callable (key, x, mask) -> x_perturbed, got "
            f"{type(perturb_func).__name__}"
        )


@_core.cached_jit(("fn", "softmax", "mode", "perturb_func", "crop"))
def _step_scores(
    *, fn, softmax, mode, perturb_func, crop, x, step_of, fmap, steps, fills, keys, target
):
    """Scores of x perturbed at every item: ``single`` replaces the features of step k,
    ``cumulative`` those of steps <= k, ``insert`` starts from ``fmap`` and restores the
    features of steps <= k."""
    n = x.shape[0]
    xf = x.reshape(n, -1)

    def one(k, fill, key):
        m = step_of == k if mode == "single" else step_of <= k
        if perturb_func is None:
            if mode == "single":
                xp = jnp.where(m, fill[:, None].astype(x.dtype), xf)
            elif mode == "cumulative":
                xp = jnp.where(m, fmap, xf)
            else:
                xp = jnp.where(m, xf, fmap)
            xp = xp.reshape(x.shape)
        else:
            pm = ~m if mode == "insert" else m
            xp = perturb_func(key, x, pm.reshape(x.shape))
        if crop is not None:
            h0, h1, w0, w1 = crop
            xp = xp[..., h0 : xp.shape[-2] - h1, w0 : xp.shape[-1] - w1]
        return qc.scores(fn, softmax, xp, target)

    return jax.vmap(one)(steps, fills, keys)


def _run_steps(
    *,
    fn,
    softmax,
    mode,
    perturb_func,
    x,
    step_of,
    steps,
    target,
    batch_size,
    fmap=None,
    fills=None,
    keys=None,
    crop=None,
):
    """``_step_scores`` over all items, chunked: (M, N)."""
    m = steps.shape[0]
    n = x.shape[0]
    if fmap is None:
        fmap = np.zeros((n, 1), x.dtype)
    if fills is None:
        fills = np.zeros((m, n), x.dtype)
    if keys is None:
        keys = jax.random.split(jax.random.key(0), m)
    parts = []
    for start, stop in _core.batched_chunks(m, batch_size, backward=False):
        whole = (start, stop) == (0, m)
        parts.append(
            _step_scores(
                fn=fn,
                softmax=softmax,
                mode=mode,
                perturb_func=perturb_func,
                crop=crop,
                x=x,
                step_of=step_of,
                fmap=fmap,
                steps=steps if whole else steps[start:stop],
                fills=fills if whole else fills[start:stop],
                keys=keys if whole else keys[start:stop],
                target=target,
            )
        )
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)


def _inputs(fn, x, attributions, target, abs, normalise, normalise_func):  # noqa: A002
    """Validate the common arguments: ``(x, target, raw attributions, their expanded
    shape, post options)``; the numerics run inside the compiled cores."""
    if not callable(fn):
        raise TypeError(f"fn must be a callable model, got {type(fn).__name__}")
    x = qc.as_x(x)
    t = qc.prepare_target(target, fn, x)
    a, shape = qc.as_attr(attributions, x)
    return x, t, a, shape, qc.post_options(abs, normalise, normalise_func)


def _features(a, shape, post, x):
    """Post-processed attributions broadcast to x, flattened: (N, F)."""
    a = qc.apply_post(a.reshape(shape), post)
    return jnp.broadcast_to(a, x.shape).reshape(x.shape[0], -1)


@_core.cached_jit(
    ("fn", "softmax", "post", "shape", "order", "fis", "kind", "mode", "n_steps", "samples")
)
def _prep_ranked(
    *,
    fn,
    softmax,
    post,
    shape,
    order,
    fis,
    kind,
    mode,
    n_steps,
    samples,
    x,
    a,
    target,
    key,
    bounds,
):
    """Everything before the perturbed forward passes of the ranked-feature metrics: the
    step of every feature, the baseline values, the item keys, f(x) and the attribution
    sums per step."""
    n = x.shape[0]
    af = _features(a, shape, post, x)
    xf = x.reshape(n, -1)
    f = xf.shape[1]
    if order == "index":
        step_of = jnp.broadcast_to(jnp.arange(f)[None] // fis, (n, f))
    else:
        step_of = _ranks(af, descending=order == "descending") // fis
    k_fill, k_func = jax.random.split(key)
    m = n_steps * samples
    fills = jnp.zeros((m, n), x.dtype)
    fmap = jnp.zeros((n, 1), x.dtype)
    lo, hi = bounds[0], bounds[1]
    if mode == "single":
        if kind == "uniform":
            fills = qc.uniform(k_fill, (n_steps, samples, n), x.dtype, lo, hi)
            fills = fills.reshape(m, n)
        else:
            fills = jnp.broadcast_to(qc.static_fill(kind, xf)[None], (m, n)).astype(x.dtype)
    elif mode == "cumulative":
        per_step = qc.step_fills(
            kind, xf, step_of, n_steps, cumulative=True, key=k_fill, bounds=(lo, hi)
        )
        fmap = qc.fill_map(per_step, step_of).astype(x.dtype)
    else:  # insert: the all-baseline start
        if kind == "uniform":
            start = qc.uniform(k_fill, (n,), x.dtype, lo, hi)
        else:
            start = qc.static_fill(kind, xf)
        fmap = jnp.broadcast_to(start[:, None], xf.shape).astype(x.dtype)
    steps = jnp.repeat(jnp.arange(n_steps), samples)
    y = qc.scores(fn, softmax, x, target)
    return (
        step_of,
        steps,
        fills,
        fmap,
        jax.random.split(k_func, m),
        y,
        _segment_sums(af, step_of, n_steps),
        af,
    )


@functools.partial(_caching.jit, static_argnames=("eps", "fis", "agg"))
def _finish_non_sensitivity(perturbed, y, af, *, eps, fis, agg):
    n, f = af.shape
    s = perturbed.shape[0]
    insensitive = jnp.abs(perturbed.T - y[:, None]) < eps
    low = jnp.pad(af < eps, ((0, 0), (0, s * fis - f)), constant_values=True)
    non_feature = jnp.all(low.reshape(n, s, fis), axis=2)
    count = jnp.sum(insensitive ^ non_feature, axis=1).astype(jnp.int32)
    return count if agg is None else agg(count)


def _bounds(perturb_func_kwargs):
    return jnp.asarray(qc.uniform_bounds(perturb_func_kwargs), jnp.float32)


@functools.partial(_caching.jit, static_argnames=("kind", "sim", "agg", "eps"))
def _finish(perturbed, y, sums, *, kind, sim, agg, eps=0.0):
    """The score from the perturbed outputs (M, N) and f(x) (N,)."""
    if kind == "correlation":  # faithfulness estimate / correlation
        result = sim(sums, (y[None] - perturbed).T)
    elif kind == "monotonic":
        result = jnp.all(jnp.diff(perturbed.T, axis=1) >= 0, axis=1)
    elif kind == "effects":  # monotonicity correlation: perturbed (S, samples, N)
        inv = jnp.where(jnp.abs(y) >= eps, 1.0 / jnp.where(y == 0, 1.0, jnp.abs(y)), 1.0) ** 2
        effects = (jnp.mean((perturbed - y[None, None]) ** 2, axis=1) * inv[None]).T
        result = sim(sums, effects)
    elif kind == "curve":
        result = perturbed.T
    elif kind == "auc":
        result = jnp.trapezoid(perturbed.T, dx=1.0, axis=1)
    else:  # "drop"
        result = y[:, None] - perturbed.T
    return result if agg is None else agg(result)


def _agg(return_aggregate, aggregate_func):
    if not qc.check_bool(return_aggregate, "return_aggregate"):
        return None
    return jnp.mean if aggregate_func is None else aggregate_func


def _segment_sums(values: jax.Array, step_of: jax.Array, n_steps: int) -> jax.Array:
    """Per-step sums (N, S) of per-feature values (N, F)."""
    seg = jnp.where(step_of < n_steps, step_of, n_steps)
    return jax.vmap(lambda v, s: jax.ops.segment_sum(v, s, num_segments=n_steps + 1))(values, seg)[
        :, :n_steps
    ]


def _check_fis(features_in_step: int, n_features: int) -> int:
    fis = _core.check_positive_int(features_in_step, "features_in_step")
    if fis > n_features:
        raise ValueError(
            f"features_in_step must be at most the number of features {n_features}, got {fis}"
        )
    return fis


def _ranked(
    fn,
    x,
    attributions,
    *,
    target,
    key,
    name,
    order,
    features_in_step,
    perturb_baseline,
    perturb_func,
    perturb_func_kwargs,
    mode,
    abs,
    normalise,
    normalise_func,
    softmax,  # noqa: A002
    batch_size,
    finish,
    similarity_func=None,
    return_aggregate=False,
    aggregate_func=None,
    samples=1,
    eps=0.0,
    random_samples=False,
):
    """The ranked-feature metrics: validate, prepare (one compiled call), run the
    perturbed forward passes in chunks, finish (one compiled call)."""
    x, t, a, shape, post = _inputs(fn, x, attributions, target, abs, normalise, normalise_func)
    n_features = math.prod(x.shape[1:])
    fis = _check_fis(features_in_step, n_features)
    kind = qc.check_baseline(perturb_baseline)
    bounds = _bounds(perturb_func_kwargs)
    _check_perturb_func(perturb_func)
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    if random_samples and not (kind == "uniform" or perturb_func is not None):
        samples = 1  # a deterministic perturbation: every sample would be the same
    key = _key(key, name, kind == "uniform")
    s = qc.n_steps(n_features, fis)
    step_of, steps, fills, fmap, keys, y, sums, af = _prep_ranked(
        fn=fn,
        softmax=bool(softmax),
        post=post,
        shape=shape,
        order=order,
        fis=fis,
        kind=kind,
        mode=mode,
        n_steps=s,
        samples=samples,
        x=x,
        a=a,
        target=t,
        key=key,
        bounds=bounds,
    )
    perturbed = _run_steps(
        fn=fn,
        softmax=bool(softmax),
        mode=mode,
        perturb_func=perturb_func,
        x=x,
        step_of=step_of,
        steps=steps,
        fmap=fmap,
        fills=fills,
        keys=keys,
        target=t,
        batch_size=batch_size,
    )
    if finish == "effects":
        perturbed = perturbed.reshape(s, samples, x.shape[0])
    if finish == "non_sensitivity":
        return _finish_non_sensitivity(
            perturbed, y, af, eps=float(eps), fis=fis, agg=_agg(return_aggregate, aggregate_func)
        )
    sim = similarity_func
    if sim is None and finish in ("correlation", "effects"):
        sim = qc.correlation_pearson if finish == "correlation" else qc.correlation_spearman
    return _finish(
        perturbed,
        y,
        sums,
        kind=finish,
        sim=sim,
        agg=_agg(return_aggregate, aggregate_func),
        eps=float(eps),
    )


# --------------------------------------------------------------------------------------
# Faithfulness correlation and estimate
# --------------------------------------------------------------------------------------


def _subsets(key: jax.Array, nr_runs: int, n: int, n_features: int, subset_size: int):
    """The random feature subsets (nr_runs, N, subset_size): run r of example i draws
    ``jax.random.choice(jax.random.split(key, nr_runs * N)[r * N + i], F, (s,), False)``."""
    keys = jax.random.split(key, nr_runs * n).reshape(nr_runs, n)
    draw = lambda k: jax.random.choice(k, n_features, (subset_size,), replace=False)  # noqa: E731
    return jax.vmap(jax.vmap(draw))(keys)


@_core.cached_jit(("fn", "softmax", "post", "shape", "kind", "runs", "size"))
def _prep_subsets(*, fn, softmax, post, shape, kind, runs, size, x, a, target, key, bounds):
    n = x.shape[0]
    af = _features(a, shape, post, x)
    xf = x.reshape(n, -1)
    k_sub, k_fill, k_func = jax.random.split(key, 3)
    idx = _subsets(k_sub, runs, n, xf.shape[1], size)
    if kind == "uniform":
        fills = qc.uniform(k_fill, (runs, n), x.dtype, bounds[0], bounds[1])
    else:
        fills = jnp.broadcast_to(qc.static_fill(kind, xf)[None], (runs, n)).astype(x.dtype)
    sums = jnp.take_along_axis(af[None], idx, axis=2).sum(-1).T  # (N, R)
    y = qc.scores(fn, softmax, x, target)
    return idx, fills, jax.random.split(k_func, runs), y, sums


@_core.cached_jit(("fn", "softmax", "perturb_func"))
def _subset_scores(*, fn, softmax, perturb_func, x, idx, fills, keys, target):
    n = x.shape[0]
    xf = x.reshape(n, -1)
    rows = jnp.arange(n)[:, None]

    def one(ix, fill, key):
        if perturb_func is None:
            xp = xf.at[rows, ix].set(fill[:, None].astype(x.dtype)).reshape(x.shape)
        else:
            mask = jnp.zeros(xf.shape, bool).at[rows, ix].set(True)
            xp = perturb_func(key, x, mask.reshape(x.shape))
        return qc.scores(fn, softmax, xp, target)

    return jax.vmap(one)(idx, fills, keys)


@_core.contract
def faithfulness_correlation(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    nr_runs: int = 100,
    subset_size: int = 224,
    perturb_baseline: str | float = "black",
    perturb_func: Callable[..., jax.Array] | None = None,
    perturb_func_kwargs: dict | None = None,
    similarity_func: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    abs: bool = False,  # noqa: A002 - Quantus's option name
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = True,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    softmax: bool = False,
    batch_size: int | None = None,
) -> jax.Array:
    """Faithfulness correlation (Bhatt et al., 2020), Quantus's ``FaithfulnessCorrelation``.

    ``nr_runs`` times, a random subset of ``subset_size`` features of each example is
    replaced by the baseline; the score is the correlation (``similarity_func``, Pearson by
    default) over the runs between the attribution summed over the subset and the drop of
    the explained output ``f(x) - f(x_perturbed)``. Higher is better.

    Subsets are drawn from ``key`` (run ``r`` of example ``i`` uses the ``r * N + i``-th of
    ``jax.random.split(key, nr_runs * N)``), Quantus's from numpy's global generator. All
    runs are one vmapped batch.

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: Broadcastable to x after Quantus's channel expansion (e.g. (N, H, W)
            or (N, 1, H, W) for (N, C, H, W)).
        target: What to explain (see :func:`jaxattr.select_target`), e.g. class labels.
        key: PRNG key for the subsets (and a ``"uniform"`` baseline).
        nr_runs: Number of random subsets per example.
        subset_size: Features per subset (at most the number of features).
        perturb_baseline: ``"black"``, ``"white"``, ``"mean"``, ``"uniform"`` or a number.
        perturb_func: ``(key, x, mask) -> x_perturbed`` replacing the baseline replacement.
        perturb_func_kwargs: ``uniform_low`` / ``uniform_high`` for ``"uniform"``.
        similarity_func: ``(a, b) -> (N,)`` on (N, nr_runs) arrays; default Pearson.
        abs: Take absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default :func:`normalise_by_max`, per example).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores (Quantus's default: True).
        aggregate_func: Default the mean.
        softmax: Score softmax probabilities instead of ``fn``'s outputs.
        batch_size: At most this many runs per compiled call.

    Returns:
        The correlation per example (N,), or its aggregate.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr import metrics
        >>> w = jnp.arange(1.0, 9.0)
        >>> fn = lambda x: jnp.stack([x @ w, -(x @ w)], 1)
        >>> x = jnp.ones((2, 8))
        >>> a = jaxattr.input_x_gradient(fn, x, target=0)   # exact for a linear model
        >>> metrics.faithfulness_correlation(fn, x, a, target=0, subset_size=3, nr_runs=10,
        ...                                  perturb_baseline=0.0, key=jax.random.key(0),
        ...                                  return_aggregate=False).round(4)
        Array([1., 1.], dtype=float32)
    """
    x, t, a, shape, post = _inputs(fn, x, attributions, target, abs, normalise, normalise_func)
    n_features = math.prod(x.shape[1:])
    runs = _core.check_positive_int(nr_runs, "nr_runs")
    size = _core.check_positive_int(subset_size, "subset_size")
    if size > n_features:
        raise ValueError(
            f"subset_size must be at most the number of features {n_features}, got {size}"
        )
    kind = qc.check_baseline(perturb_baseline)
    bounds = _bounds(perturb_func_kwargs)
    _check_perturb_func(perturb_func)
    key = _core.check_key(key, "faithfulness_correlation")
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    idx, fills, keys, y, sums = _prep_subsets(
        fn=fn,
        softmax=bool(softmax),
        post=post,
        shape=shape,
        kind=kind,
        runs=runs,
        size=size,
        x=x,
        a=a,
        target=t,
        key=key,
        bounds=bounds,
    )
    parts = []
    for start, stop in _core.batched_chunks(runs, batch_size, backward=False):
        cut = slice(None) if (start, stop) == (0, runs) else slice(start, stop)
        parts.append(
            _subset_scores(
                fn=fn,
                softmax=bool(softmax),
                perturb_func=perturb_func,
                x=x,
                idx=idx[cut],
                fills=fills[cut],
                keys=keys[cut],
                target=t,
            )
        )
    perturbed = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)  # (R, N)
    return _finish(
        perturbed,
        y,
        sums,
        kind="correlation",
        sim=qc.correlation_pearson if similarity_func is None else similarity_func,
        agg=_agg(return_aggregate, aggregate_func),
    )


@_core.contract
def faithfulness_estimate(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    features_in_step: int = 1,
    perturb_baseline: str | float = "black",
    perturb_func: Callable[..., jax.Array] | None = None,
    perturb_func_kwargs: dict | None = None,
    similarity_func: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    softmax: bool = False,
    batch_size: int | None = None,
) -> jax.Array:
    """Faithfulness estimate (Alvarez-Melis & Jaakkola, 2018), Quantus's ``FaithfulnessEstimate``.

    Features are ranked by decreasing attribution and taken ``features_in_step`` at a
    time; each group alone is replaced by the baseline. The score is the correlation
    (Pearson by default) over the groups between the group's attribution sum and the drop
    of the explained output. Higher is better. All ``ceil(F / features_in_step)``
    perturbations are one vmapped batch.

    With attributions broadcast over channels, choose ``features_in_step`` as a multiple
    of the channel count so that a pixel's tied features stay in one group (as they do in
    Quantus only then).

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: Broadcastable to x (after channel expansion).
        target: What to explain (see :func:`jaxattr.select_target`).
        key: PRNG key, needed for ``perturb_baseline="uniform"`` or a random
            ``perturb_func``.
        features_in_step: Features per perturbation.
        perturb_baseline: ``"black"``, ``"white"``, ``"mean"``, ``"uniform"`` or a number.
        perturb_func: ``(key, x, mask) -> x_perturbed``.
        perturb_func_kwargs: ``uniform_low`` / ``uniform_high``.
        similarity_func: ``(a, b) -> (N,)``; default Pearson.
        abs: Absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default per-example max).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        softmax: Score softmax probabilities.
        batch_size: At most this many perturbations per compiled call.

    Returns:
        The correlation per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr import metrics
        >>> w = jnp.array([3.0, -1.0, 2.0, 0.5])
        >>> fn = lambda x: jnp.stack([x @ w, -(x @ w)], 1)
        >>> x = jnp.ones((1, 4))
        >>> a = jaxattr.input_x_gradient(fn, x, target=0)
        >>> metrics.faithfulness_estimate(fn, x, a, target=0, perturb_baseline=0.0)
        Array([1.], dtype=float32)
    """
    return _ranked(
        fn,
        x,
        attributions,
        target=target,
        key=key,
        name="faithfulness_estimate",
        order="descending",
        features_in_step=features_in_step,
        perturb_baseline=perturb_baseline,
        perturb_func=perturb_func,
        perturb_func_kwargs=perturb_func_kwargs,
        mode="single",
        abs=abs,
        normalise=normalise,
        normalise_func=normalise_func,
        softmax=softmax,
        batch_size=batch_size,
        finish="correlation",
        similarity_func=similarity_func,
        return_aggregate=return_aggregate,
        aggregate_func=aggregate_func,
    )


# --------------------------------------------------------------------------------------
# Monotonicity (Arya) and monotonicity correlation (Nguyen)
# --------------------------------------------------------------------------------------


@_core.contract
def monotonicity(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    features_in_step: int = 1,
    perturb_baseline: str | float = "black",
    perturb_func: Callable[..., jax.Array] | None = None,
    perturb_func_kwargs: dict | None = None,
    abs: bool = True,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
    """Monotonicity (Arya et al., 2019), Quantus's ``Monotonicity``.

    Starting from the baseline, the features of x are put back ``features_in_step`` at a
    time in order of increasing attribution; the explanation is monotonic when the
    explained output never decreases along the way. Returns ``True`` per monotonic
    example.

    **Differs from Quantus 0.6.0**, whose default replaces features of the all-baseline
    array by the baseline again (its ``perturb_func`` receives the baseline array, not x),
    so no feature is ever restored and every example scores ``True``. jaxattr restores
    x's features, as the paper describes; Quantus gives the same result when its
    ``perturb_func`` writes x's values at the indices (tested). A custom
    ``perturb_func(key, x, mask)`` here perturbs the features not restored yet (``mask``).

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: Broadcastable to x (after channel expansion).
        target: What to explain (see :func:`jaxattr.select_target`).
        key: PRNG key, needed for ``"uniform"`` (one value per example) or a random
            ``perturb_func``.
        features_in_step: Features restored per step.
        perturb_baseline: The start: ``"black"``, ``"white"``, ``"mean"``, ``"uniform"``
            or a number.
        perturb_func: ``(key, x, mask) -> x_perturbed``.
        perturb_func_kwargs: ``uniform_low`` / ``uniform_high``.
        abs: Absolute attributions (Quantus's default True).
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        softmax: Score softmax probabilities (Quantus's default True).
        batch_size: At most this many steps per compiled call.

    Returns:
        Boolean per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([x.sum(1), -x.sum(1)], 1)
        >>> x = jnp.array([[1.0, 2.0, 3.0]])
        >>> metrics.monotonicity(fn, x, x, target=0, perturb_baseline=0.0, softmax=False)
        Array([ True], dtype=bool)
    """
    return _ranked(
        fn,
        x,
        attributions,
        target=target,
        key=key,
        name="monotonicity",
        order="ascending",
        features_in_step=features_in_step,
        perturb_baseline=perturb_baseline,
        perturb_func=perturb_func,
        perturb_func_kwargs=perturb_func_kwargs,
        mode="insert",
        abs=abs,
        normalise=normalise,
        normalise_func=normalise_func,
        softmax=softmax,
        batch_size=batch_size,
        finish="monotonic",
        return_aggregate=return_aggregate,
        aggregate_func=aggregate_func,
    )


@_core.contract
def monotonicity_correlation(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    similarity_func: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    eps: float = 1e-5,
    nr_samples: int = 100,
    features_in_step: int = 1,
    perturb_baseline: str | float = "uniform",
    perturb_func: Callable[..., jax.Array] | None = None,
    perturb_func_kwargs: dict | None = None,
    abs: bool = True,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
    """Monotonicity correlation (Nguyen & Martinez, 2020), Quantus's ``MonotonicityCorrelation``.

    Features are taken ``features_in_step`` at a time in order of increasing attribution;
    each group alone is replaced by the baseline ``nr_samples`` times, and its effect is the
    mean squared change of the explained output divided by ``f(x)^2`` (by 1 when
    ``|f(x)| < eps``). The score is the rank correlation (``similarity_func``, Spearman by
    default) between the groups' attribution sums and their effects. Higher is better.

    The default ``"uniform"`` baseline draws one value per example and sample: all
    ``ceil(F / features_in_step) * nr_samples`` draws come from ``key`` as
    ``jax.random.uniform(k, (steps, nr_samples, N))`` with ``k`` the first of
    ``jax.random.split(key)``. A deterministic baseline is evaluated once per group (every
    sample would be the same). All perturbations are one vmapped batch.

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: Broadcastable to x (after channel expansion).
        target: What to explain (see :func:`jaxattr.select_target`).
        key: PRNG key (needed for the default ``"uniform"`` baseline).
        similarity_func: ``(a, b) -> (N,)``; default Spearman.
        eps: Below this ``|f(x)|`` the effect is not divided by ``f(x)^2``.
        nr_samples: Perturbations per group.
        features_in_step: Features per group.
        perturb_baseline: ``"uniform"`` (default), ``"black"``, ``"white"``, ``"mean"`` or
            a number.
        perturb_func: ``(key, x, mask) -> x_perturbed``.
        perturb_func_kwargs: ``uniform_low`` / ``uniform_high`` (default 0 and 1).
        abs: Absolute attributions (Quantus's default True).
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        softmax: Score softmax probabilities (Quantus's default True).
        batch_size: At most this many perturbations per compiled call.

    Returns:
        The correlation per example (N,), or its aggregate.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([(x ** 2) @ jnp.arange(1.0, 5.0), x.sum(1)], 1)
        >>> x = jnp.ones((1, 4))
        >>> a = jnp.arange(1.0, 5.0)[None]          # ranks the features as their effect
        >>> metrics.monotonicity_correlation(fn, x, a, target=0, perturb_baseline=0.0,
        ...                                  softmax=False).round(4)
        Array([1.], dtype=float32)
    """
    return _ranked(
        fn,
        x,
        attributions,
        target=target,
        key=key,
        name="monotonicity_correlation",
        order="ascending",
        features_in_step=features_in_step,
        perturb_baseline=perturb_baseline,
        perturb_func=perturb_func,
        perturb_func_kwargs=perturb_func_kwargs,
        mode="single",
        abs=abs,
        normalise=normalise,
        normalise_func=normalise_func,
        softmax=softmax,
        batch_size=batch_size,
        finish="effects",
        similarity_func=similarity_func,
        return_aggregate=return_aggregate,
        aggregate_func=aggregate_func,
        samples=_core.check_positive_int(nr_samples, "nr_samples"),
        eps=qc.check_number(eps, "eps", minimum=0.0),
        random_samples=True,
    )


# --------------------------------------------------------------------------------------
# Pixel flipping, region perturbation, selectivity
# --------------------------------------------------------------------------------------


def pixel_flipping(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    features_in_step: int = 1,
    perturb_baseline: str | float = "black",
    perturb_func: Callable[..., jax.Array] | None = None,
    perturb_func_kwargs: dict | None = None,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    return_auc_per_sample: bool = False,
    softmax: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
    """Pixel flipping (Bach et al., 2015), Quantus's ``PixelFlipping``.

    Features are replaced by the baseline ``features_in_step`` at a time, most relevant
    first, cumulatively; the curve is the explained output after every step (without the
    unperturbed start, as Quantus). A faithful explanation makes it fall fast. Every step
    is one item of a vmapped batch.

    The baseline follows Quantus, which recomputes it on the array already perturbed:
    ``"black"``/``"white"`` stay x's minimum/maximum, ``"mean"`` is the mean of the array
    after the earlier steps (computed here by a running sum), ``"uniform"`` draws one value
    per example and step.

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: Broadcastable to x (after channel expansion).
        target: What to explain (see :func:`jaxattr.select_target`).
        key: PRNG key, needed for ``"uniform"`` or a random ``perturb_func``.
        features_in_step: Features removed per step.
        perturb_baseline: ``"black"``, ``"white"``, ``"mean"``, ``"uniform"`` or a number.
        perturb_func: ``(key, x, mask) -> x_perturbed``, called with the mask of all
            features removed so far.
        perturb_func_kwargs: ``uniform_low`` / ``uniform_high``.
        abs: Absolute attributions.
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        return_auc_per_sample: Return the area under each curve (trapezoid, unit steps).
        softmax: Score softmax probabilities (Quantus's default True).
        batch_size: At most this many steps per compiled call.

    Returns:
        The curves (N, ceil(F / features_in_step)), or the AUCs (N,), or an aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([x.sum(1), -x.sum(1)], 1)
        >>> x = jnp.array([[4.0, 1.0, 2.0]])
        >>> metrics.pixel_flipping(fn, x, x, target=0, perturb_baseline=0.0, softmax=False)
        Array([[3., 1., 0.]], dtype=float32)
    """
    return _ranked(
        fn,
        x,
        attributions,
        target=target,
        key=key,
        name="pixel_flipping",
        order="descending",
        features_in_step=features_in_step,
        perturb_baseline=perturb_baseline,
        perturb_func=perturb_func,
        perturb_func_kwargs=perturb_func_kwargs,
        mode="cumulative",
        abs=abs,
        normalise=normalise,
        normalise_func=normalise_func,
        softmax=softmax,
        batch_size=batch_size,
        finish="auc" if qc.check_bool(return_auc_per_sample, "return_auc_per_sample") else "curve",
        return_aggregate=return_aggregate,
        aggregate_func=aggregate_func,
    )


def _padding(size: int, patch: int) -> tuple[int, int]:
    extra = (-size) % patch
    return extra // 2, extra - extra // 2


def _patches(x, a, patch_size):
    """Quantus's patch layout: x edge-padded (attributions zero-padded) to multiples of
    ``patch_size``; each patch spans every channel. Returns the padded x, the patch index
    of every padded feature (C*Hp*Wp,), the patch attribution sums (N, P) and the crop."""
    n, c, h, w = x.shape
    ph, pw = _padding(h, patch_size), _padding(w, patch_size)
    pads = ((0, 0), (0, 0), ph, pw)
    xpad = jnp.pad(x, pads, mode="edge")
    apad = jnp.pad(jnp.broadcast_to(a, x.shape), pads)
    hp, wp = h + sum(ph), w + sum(pw)
    nh, nw = hp // patch_size, wp // patch_size
    sums = apad.reshape(n, c, nh, patch_size, nw, patch_size).sum((1, 3, 5)).reshape(n, -1)
    rows = np.arange(hp) // patch_size
    cols = np.arange(wp) // patch_size
    pid = np.broadcast_to((rows[:, None] * nw + cols[None, :])[None], (c, hp, wp)).reshape(-1)
    return xpad, jnp.asarray(pid), sums, (ph[0], ph[1], pw[0], pw[1])


@_core.cached_jit(("fn", "softmax", "post", "shape", "patch", "order", "steps", "kind"))
def _prep_patches(
    *, fn, softmax, post, shape, patch, order, steps, kind, x, a, target, key, bounds
):
    n = x.shape[0]
    a = qc.apply_post(a.reshape(shape), post)
    xpad, pid, sums, _ = _patches(x, a, patch)
    n_patches = sums.shape[1]
    k_order, k_fill, k_func = jax.random.split(key, 3)
    if order == "random":
        perm = jax.vmap(lambda k: jax.random.permutation(k, n_patches))(
            jax.random.split(k_order, n)
        )
        prank = (
            jnp.zeros_like(perm).at[jnp.arange(n)[:, None], perm].set(jnp.arange(n_patches)[None])
        )
    else:
        prank = _ranks(sums, descending=order == "morf")
    step_of = prank[:, pid]  # (N, C*Hp*Wp)
    xf = xpad.reshape(n, -1)
    per_step = qc.step_fills(
        kind, xf, step_of, steps, cumulative=True, key=k_fill, bounds=(bounds[0], bounds[1])
    )
    fmap = qc.fill_map(per_step, step_of).astype(x.dtype)
    y = qc.scores(fn, softmax, x, target)
    return xpad, step_of, fmap, jax.random.split(k_func, steps), y


def _patch_curve(
    fn,
    x,
    a,
    shape,
    post,
    t,
    *,
    patch_size,
    order,
    regions,
    kind,
    bounds,
    perturb_func,
    key,
    softmax,
    batch_size,
    finish,
    agg,
):
    patch = _core.check_positive_int(patch_size, "patch_size")
    if patch > min(x.shape[2:]):
        raise ValueError(
            f"patch_size must be at most the image's height and width {tuple(x.shape[2:])}, "
            f"got {patch}"
        )
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    h, w = x.shape[2:]
    n_patches = math.ceil(h / patch) * math.ceil(w / patch)
    steps = n_patches if regions is None else min(regions, n_patches)
    ph, pw = _padding(h, patch), _padding(w, patch)
    xpad, step_of, fmap, keys, y = _prep_patches(
        fn=fn,
        softmax=softmax,
        post=post,
        shape=shape,
        patch=patch,
        order=order,
        steps=steps,
        kind=kind,
        x=x,
        a=a,
        target=t,
        key=key,
        bounds=bounds,
    )
    perturbed = _run_steps(
        fn=fn,
        softmax=softmax,
        mode="cumulative",
        perturb_func=perturb_func,
        x=xpad,
        step_of=step_of,
        steps=jnp.arange(steps),
        fmap=fmap,
        keys=keys,
        target=t,
        batch_size=batch_size,
        crop=(ph[0], ph[1], pw[0], pw[1]),
    )
    return _finish(perturbed, y, y, kind=finish, sim=None, agg=agg)


@_core.contract
def region_perturbation(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    patch_size: int = 8,
    order: str = "morf",
    regions_evaluation: int = 100,
    perturb_baseline: str | float = "black",
    perturb_func: Callable[..., jax.Array] | None = None,
    perturb_func_kwargs: dict | None = None,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
    """Region perturbation (Samek et al., 2015), Quantus's ``RegionPerturbation``.

    The image (N, C, H, W) is cut into ``patch_size`` squares (after padding H and W to
    multiples of it: the image by repeating its edges, the attributions by zeros, split
    evenly as Quantus); patches are ranked by their attribution sum (``"morf"``: most
    relevant first, ``"lerf"``: least, ``"random"``: a permutation drawn from ``key``) and
    replaced by the baseline one after another, cumulatively, for ``regions_evaluation``
    steps. The curve is the drop of the explained output ``f(x) - f(x_perturbed)`` after
    every step; for ``"morf"``, a faithful explanation makes it rise fast.

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Image batch (N, C, H, W).
        attributions: Broadcastable to x (after channel expansion).
        target: What to explain (see :func:`jaxattr.select_target`).
        key: PRNG key, needed for ``order="random"``, ``"uniform"`` or a random
            ``perturb_func``.
        patch_size: Side of the square patches.
        order: ``"morf"``, ``"lerf"`` or ``"random"``.
        regions_evaluation: Number of patches removed (at most the number of patches).
        perturb_baseline: ``"black"``, ``"white"``, ``"mean"`` (of the padded array after
            the earlier steps, as Quantus), ``"uniform"`` or a number.
        perturb_func: ``(key, x_padded, mask) -> x_perturbed`` on the padded image.
        perturb_func_kwargs: ``uniform_low`` / ``uniform_high``.
        abs: Absolute attributions.
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        softmax: Score softmax probabilities (Quantus's default True).
        batch_size: At most this many steps per compiled call.

    Returns:
        The curves (N, min(regions_evaluation, patches)), or an aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3))], 1)
        >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        >>> metrics.region_perturbation(fn, x, x, target=0, patch_size=2,
        ...                             perturb_baseline=0.0, softmax=False)
        Array([[ 50.,  92., 110., 120.]], dtype=float32)
    """
    x, t, a, shape, post = _inputs(fn, x, attributions, target, abs, normalise, normalise_func)
    qc.check_image(x)
    order = _core.check_choice(str(order).lower(), "order", ("morf", "lerf", "random"))
    regions = _core.check_positive_int(regions_evaluation, "regions_evaluation")
    kind = qc.check_baseline(perturb_baseline)
    bounds = _bounds(perturb_func_kwargs)
    _check_perturb_func(perturb_func)
    key = _key(key, "region_perturbation", kind == "uniform" or order == "random")
    return _patch_curve(
        fn,
        x,
        a,
        shape,
        post,
        t,
        patch_size=patch_size,
        order=order,
        regions=regions,
        kind=kind,
        bounds=bounds,
        perturb_func=perturb_func,
        key=key,
        softmax=bool(softmax),
        batch_size=batch_size,
        finish="drop",
        agg=_agg(return_aggregate, aggregate_func),
    )


@_core.contract
def selectivity(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    patch_size: int = 8,
    perturb_baseline: str | float = "black",
    perturb_func: Callable[..., jax.Array] | None = None,
    perturb_func_kwargs: dict | None = None,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
    """Selectivity (Montavon et al., 2018), Quantus's ``Selectivity``.

    As :func:`region_perturbation` with ``order="morf"`` over all patches, but the curve is
    the explained output itself after every removed patch. A selective explanation makes it
    fall fast (lower area is better).

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Image batch (N, C, H, W).
        attributions: Broadcastable to x (after channel expansion).
        target: What to explain (see :func:`jaxattr.select_target`).
        key: PRNG key, needed for ``"uniform"`` or a random ``perturb_func``.
        patch_size: Side of the square patches.
        perturb_baseline: ``"black"``, ``"white"``, ``"mean"``, ``"uniform"`` or a number.
        perturb_func: ``(key, x_padded, mask) -> x_perturbed``.
        perturb_func_kwargs: ``uniform_low`` / ``uniform_high``.
        abs: Absolute attributions.
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.
        softmax: Score softmax probabilities (Quantus's default True).
        batch_size: At most this many steps per compiled call.

    Returns:
        The curves (N, patches), or an aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3))], 1)
        >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
        >>> metrics.selectivity(fn, x, x, target=0, patch_size=2, perturb_baseline=0.0,
        ...                     softmax=False)
        Array([[70., 28., 10.,  0.]], dtype=float32)
    """
    x, t, a, shape, post = _inputs(fn, x, attributions, target, abs, normalise, normalise_func)
    qc.check_image(x)
    kind = qc.check_baseline(perturb_baseline)
    bounds = _bounds(perturb_func_kwargs)
    _check_perturb_func(perturb_func)
    key = _key(key, "selectivity", kind == "uniform")
    return _patch_curve(
        fn,
        x,
        a,
        shape,
        post,
        t,
        patch_size=patch_size,
        order="morf",
        regions=None,
        kind=kind,
        bounds=bounds,
        perturb_func=perturb_func,
        key=key,
        softmax=bool(softmax),
        batch_size=batch_size,
        finish="curve",
        agg=_agg(return_aggregate, aggregate_func),
    )


# --------------------------------------------------------------------------------------
# ROAD
# --------------------------------------------------------------------------------------

# (row offset, column offset) and weight of the eight neighbours, ROAD's imputation
_NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def _neighbour_sum(v: jax.Array) -> jax.Array:
    """sum_o w_o v[i + di, j + dj] over the in-image neighbours, v (..., H, W)."""
    h, w = v.shape[-2:]
    p = jnp.pad(v, [(0, 0)] * (v.ndim - 2) + [(1, 1), (1, 1)])
    out = jnp.zeros_like(v)
    for (di, dj), wt in _NEIGHBOURS:
        out = out + wt * p[..., 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]
    return out


def _impute(x, removed, tol, maxiter):
    """Solve ROAD's linear system for the removed pixels of one image x (C, H, W): each
    removed value is the weighted mean of its neighbours (removed ones unknown too). The
    system restricted to the removed pixels is symmetric positive definite (every removed
    region touches a kept pixel): conjugate gradients on the grid, matrix-free."""
    r = removed.astype(x.dtype)[None]
    s = _neighbour_sum(jnp.ones(x.shape[-2:], x.dtype))[None]
    b = r * _neighbour_sum((1 - r) * x)

    def op(v):
        return r * (s * v - _neighbour_sum(r * v))

    bb = jnp.vdot(b, b)

    def cond(c):
        return (c[4] < maxiter) & (c[3] > tol * tol * bb)

    def body(c):
        v, res, p, rr, i = c
        ap = op(p)
        alpha = rr / jnp.vdot(p, ap)
        v = v + alpha * p
        res = res - alpha * ap
        rr_new = jnp.vdot(res, res)
        return v, res, res + (rr_new / rr) * p, rr_new, i + 1

    v, *_ = jax.lax.while_loop(cond, body, (jnp.zeros_like(x), b, b, bb, 0))
    return jnp.where(r > 0, v, x)


def noisy_linear_imputation(
    key: jax.Array | None,
    x: jax.Array,
    mask: jax.Array,
    *,
    noise: float = 0.01,
    tol: float = 1e-6,
    maxiter: int | None = None,
) -> jax.Array:
    """ROAD's noisy linear imputation (Rong et al., 2022), Quantus's ``noisy_linear_imputation``.

    Every pixel in ``mask`` is replaced, in every channel, by the weighted mean of its
    eight neighbours (weight 1/6 for the four sides, 1/12 for the corners, renormalised at
    the border), the unknown neighbours solved for jointly, plus ``noise`` times standard
    normal noise. Quantus solves the sparse system exactly (scipy's ``spsolve``); here the
    symmetric positive definite system is solved by conjugate gradients on the pixel grid
    (to relative residual ``tol``), so batches of images run in one vmap.

    Args:
        key: PRNG key for the noise (unused, may be None, when ``noise=0``).
        x: Image batch (N, C, H, W).
        mask: Removed pixels (N, H, W), boolean; at least one pixel of each image kept.
        noise: Standard deviation of the added noise.
        tol: Relative residual at which the solver stops.
        maxiter: Solver iterations at most (default 10 (H + W) + 100).

    Returns:
        The imputed images, x's shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> x = jnp.ones((1, 1, 3, 3))
        >>> mask = jnp.zeros((1, 3, 3), bool).at[0, 1, 1].set(True)
        >>> metrics.noisy_linear_imputation(None, x.at[0, 0, 1, 1].set(9.0), mask,
        ...                                 noise=0.0)[0, 0, 1, 1].round(5)
        Array(1., dtype=float32)
    """
    x = qc.as_x(x)
    qc.check_image(x)
    mask = jnp.asarray(mask).astype(bool)
    if mask.shape != (x.shape[0],) + tuple(x.shape[2:]):
        raise ValueError(
            f"mask must have shape (N, H, W) = {(x.shape[0],) + tuple(x.shape[2:])}, got "
            f"{tuple(mask.shape)}"
        )
    noise = qc.check_number(noise, "noise", minimum=0.0)
    if noise > 0:
        key = _core.check_key(key, "noisy_linear_imputation")
    else:
        key = jax.random.key(0)
    h, w = x.shape[2:]
    maxiter = (
        10 * (h + w) + 100 if maxiter is None else _core.check_positive_int(maxiter, "maxiter")
    )
    return _impute_batch(x, mask, key, noise=noise, tol=float(tol), maxiter=maxiter)


@functools.partial(_caching.jit, static_argnames=("tol", "maxiter"))
def _impute_batch(x, mask, key, noise, *, tol, maxiter):
    imputed = jax.vmap(lambda xi, mi: _impute(xi, mi, tol, maxiter))(x, mask)
    eps = noise * qc.normal(key, x.shape, x.dtype)
    return jnp.where(mask[:, None], imputed + eps, x)


@_core.cached_jit(("fn", "tol", "maxiter"))
def _road_chunk(*, fn, tol, maxiter, x, rank, counts, keys, noise, labels):
    def one(count, key):
        m = rank < count  # (N, H, W)
        imputed = jax.vmap(lambda xi, mi: _impute(xi, mi, tol, maxiter))(x, m)
        eps = noise * qc.normal(key, x.shape, x.dtype)
        xp = jnp.where(m[:, None], imputed + eps, x)
        return jnp.argmax(fn(xp), axis=-1) == labels

    return jax.vmap(one)(counts, keys)


@_core.cached_jit(("post", "shape"))
def _prep_road(*, post, shape, a, key, count):
    a = qc.apply_post(a.reshape(shape), post)
    n, _, h, w = shape
    pix = a.sum(axis=1) if shape[1] != 1 else a[:, 0]
    rank = _ranks(pix.reshape(n, -1), descending=True).reshape(n, h, w)
    return rank, jax.random.split(key, count.shape[0])


@functools.partial(_caching.jit, static_argnames=("agg",))
def _finish_road(parts, *, agg):
    result = jnp.concatenate(parts, axis=0).T.astype(jnp.int32)
    return result if agg is None else agg(result)


@_core.contract
def road(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any,
    key: jax.Array | None = None,
    percentages: list[float] | None = None,
    noise: float = 0.01,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    tol: float = 1e-6,
    maxiter: int | None = None,
    batch_size: int | None = None,
) -> jax.Array:
    """ROAD, RemOve And Debias (Rong et al., 2022), Quantus's ``ROAD``.

    For every percentage ``p`` the ``int(H * W * p / 100)`` most relevant pixels are
    removed and imputed by :func:`noisy_linear_imputation`; the score records whether the
    model still predicts the label ``target``. A faithful explanation makes the accuracy
    fall fast.

    Pixels are ranked by the attribution map: an (N, H, W) or (N, 1, H, W) attribution as
    is, one with C channels summed over them. Quantus ranks channel-broadcast features
    but imputes pixels, which only works for one-channel images (it indexes past the pixel
    grid otherwise); for those the two agree. Quantus returns ``{p: mean over examples}``
    (``dict(zip(percentages, scores.mean(0)))`` here) from its first data batch only;
    jaxattr returns every example's result. The imputation is solved by conjugate
    gradients instead of a sparse direct solver (see :func:`noisy_linear_imputation`).

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Image batch (N, C, H, W).
        attributions: (N, H, W), (N, 1, H, W) or (N, C, H, W).
        target: Class labels: an int or N ints.
        key: PRNG key for the imputation noise (not needed with ``noise=0``).
        percentages: Percent of pixels removed; default ``range(1, 100, 2)``.
        noise: Standard deviation of the imputation noise.
        abs: Absolute attributions.
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean (over examples and percentages).
        tol: Relative residual of the imputation solver.
        maxiter: Solver iterations at most (default 10 (H + W) + 100).
        batch_size: At most this many percentages per compiled call.

    Returns:
        Whether the label is still predicted, int32 (N, len(percentages)), or an aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([x[:, 0, 0, 0], jnp.full(x.shape[0], 0.5)], 1)
        >>> x = jnp.ones((1, 1, 4, 4)).at[0, 0, 0, 0].set(3.0)
        >>> a = jnp.zeros((1, 4, 4)).at[0, 0, 0].set(1.0)
        >>> metrics.road(fn, x, a, target=0, percentages=[5, 50], noise=0.0)
        Array([[1, 1]], dtype=int32)
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable model, got {type(fn).__name__}")
    x = qc.as_x(x)
    qc.check_image(x)
    n, c, h, w = x.shape
    a, shape = qc.as_attr(attributions, x)
    if shape[2:] != (h, w):
        raise ValueError(
            f"attributions must have the image's height and width {(h, w)}, got "
            f"shape {tuple(a.shape)}"
        )
    post = qc.post_options(abs, normalise, normalise_func)
    labels = qc.labels(target, n)
    pcts = list(range(1, 100, 2)) if percentages is None else list(percentages)
    if not pcts:
        raise ValueError("percentages must not be empty")
    for p in pcts:
        qc.check_number(p, "percentages[i]", minimum=0.0)
        if p > 100:
            raise ValueError(f"percentages must lie in [0, 100], got {p}")
    counts = np.array([int(h * w * p / 100) for p in pcts], np.int32)
    if counts.max() >= h * w:
        raise ValueError("percentages must keep at least one pixel (ROAD's imputation needs one)")
    noise = qc.check_number(noise, "noise", minimum=0.0)
    key = _key(key, "road", noise > 0)
    maxiter = (
        10 * (h + w) + 100 if maxiter is None else _core.check_positive_int(maxiter, "maxiter")
    )
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    rank, keys = _prep_road(post=post, shape=shape, a=a, key=key, count=counts)
    parts = []
    for start, stop in _core.batched_chunks(len(pcts), batch_size, backward=False):
        parts.append(
            _road_chunk(
                fn=fn,
                tol=float(tol),
                maxiter=maxiter,
                x=x,
                rank=rank,
                counts=counts[start:stop],
                keys=keys[start:stop],
                noise=np.asarray(noise, np.float32),
                labels=labels,
            )
        )
    return _finish_road(parts, agg=_agg(return_aggregate, aggregate_func))


# --------------------------------------------------------------------------------------
# IROF
# --------------------------------------------------------------------------------------


def _segment(x: np.ndarray, method: str) -> np.ndarray:
    from jaxattr._pair import felzenszwalb

    img = np.moveaxis(x, 0, -1).astype(np.float64)
    if method == "felzenszwalb":
        return felzenszwalb(img)
    try:
        from skimage.segmentation import slic
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "irof(segmentation_method='slic') calls scikit-image's slic, which is not "
            "installed: pip install scikit-image, or pass segments= (your own "
            "segmentation), or segmentation_method='felzenszwalb' (built in)"
        ) from err
    return slic(img, start_label=0)


@_core.cached_jit(("fn", "softmax", "post", "shape", "kind", "s_max"))
def _prep_irof(*, fn, softmax, post, shape, kind, s_max, x, a, lab, counts, target, key, bounds):
    n, c = x.shape[:2]
    a = qc.apply_post(a.reshape(shape), post)
    apix = jnp.broadcast_to(a, x.shape).mean(axis=1).reshape(n, -1)
    flat = lab.reshape(n, -1)
    seg_sum = jax.vmap(lambda v, s: jax.ops.segment_sum(v, s, num_segments=s_max))(apix, flat)
    seg_cnt = jax.vmap(
        lambda s: jax.ops.segment_sum(jnp.ones(s.shape, apix.dtype), s, num_segments=s_max)
    )(flat)
    present = jnp.arange(s_max)[None] < counts[:, None]
    seg_mean = jnp.where(present, seg_sum / jnp.maximum(seg_cnt, 1), -jnp.inf)
    srank = _ranks(seg_mean, descending=True)  # absent segments last
    step_pix = jnp.take_along_axis(srank, flat, axis=1)  # (N, H*W)
    step_of = jnp.broadcast_to(step_pix[:, None], (n, c, flat.shape[1])).reshape(n, -1)
    k_fill, k_func = jax.random.split(key)
    xf = x.reshape(n, -1)
    if kind == "uniform":  # Quantus's mask replacement draws one value per element
        fmap = qc.uniform(k_fill, xf.shape, x.dtype, bounds[0], bounds[1])
    else:
        per_step = qc.step_fills(
            kind, xf, step_of, s_max, cumulative=True, key=k_fill, bounds=(bounds[0], bounds[1])
        )
        fmap = qc.fill_map(per_step, step_of).astype(x.dtype)
    y = qc.scores(fn, softmax, x, target)
    return step_of, fmap, jax.random.split(k_func, s_max), y


@functools.partial(_caching.jit, static_argnames=("agg",))
def _finish_irof(preds, y, counts, *, agg):
    ratio = preds.T / y[:, None]
    valid = jnp.arange(ratio.shape[1] - 1)[None] < (counts[:, None] - 1)
    trap = jnp.sum(jnp.where(valid, (ratio[:, :-1] + ratio[:, 1:]) / 2, 0.0), axis=1)
    aoc = counts.astype(ratio.dtype) - trap
    return aoc if agg is None else agg(aoc)


@_core.contract
def irof(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    target: Any = None,
    key: jax.Array | None = None,
    segments: Any = None,
    segmentation_method: str = "slic",
    perturb_baseline: str | float = "mean",
    perturb_func: Callable[..., jax.Array] | None = None,
    perturb_func_kwargs: dict | None = None,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = True,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
    softmax: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
    """Iterative removal of features, IROF (Rieger & Hansen, 2020), Quantus's ``IROF``.

    The image is segmented into superpixels, ranked by their mean attribution and removed
    (replaced by the baseline) one after another, most relevant first, cumulatively. The
    score is the area over the curve of the explained output relative to the clean one,
    ``S - trapz(f(x_k) / f(x))`` with ``S`` segments and unit steps (Quantus's formula).
    Higher is better. Every step is one item of a vmapped batch.

    Segments: ``segments`` (N, H, W) integer labels, or ``segmentation_method``
    ``"felzenszwalb"`` (built in, scikit-image's labels, see :func:`jaxattr.felzenszwalb`)
    or ``"slic"`` (Quantus's default: calls scikit-image's ``slic``, an optional
    dependency, on each image as Quantus does). Labels are renumbered 0..S-1.

    **Differs from Quantus** in two places, both equal to Quantus with ``batch_size=1``:
    the ``"mean"`` baseline is the mean of each example (after the earlier steps; Quantus
    takes the mean over its whole data batch), and an example's area covers its own ``S``
    steps (Quantus pads shorter examples with zeros, which adds ``-f(x_S)/(2 f(x))``).

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Image batch (N, C, H, W).
        attributions: Broadcastable to x (after channel expansion).
        target: What to explain (see :func:`jaxattr.select_target`).
        key: PRNG key, needed for ``"uniform"`` or a random ``perturb_func``.
        segments: (N, H, W) integer segment labels; computed when None.
        segmentation_method: ``"slic"`` or ``"felzenszwalb"``.
        perturb_baseline: ``"mean"`` (default), ``"black"``, ``"white"``, ``"uniform"`` (one
            value per removed element) or a number.
        perturb_func: ``(key, x, mask) -> x_perturbed``, called with the mask of all
            segments removed so far.
        perturb_func_kwargs: ``uniform_low`` / ``uniform_high``.
        abs: Absolute attributions.
        normalise: Apply ``normalise_func``.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores (Quantus's default True).
        aggregate_func: Default the mean.
        softmax: Score softmax probabilities (Quantus's default True).
        batch_size: At most this many steps per compiled call.

    Returns:
        The area over the curve per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> fn = lambda x: jnp.stack([x.sum((1, 2, 3)), -x.sum((1, 2, 3))], 1)
        >>> x = jnp.ones((1, 1, 2, 4))
        >>> segments = jnp.array([[[0, 0, 1, 1], [0, 0, 1, 1]]])
        >>> a = jnp.array([[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]])
        >>> metrics.irof(fn, x, a, target=0, segments=segments, perturb_baseline=0.0,
        ...              softmax=False)
        Array(1.75, dtype=float32)
    """
    x, t, a, shape, post = _inputs(fn, x, attributions, target, abs, normalise, normalise_func)
    qc.check_image(x)
    n, c, h, w = x.shape
    kind = qc.check_baseline(perturb_baseline)
    bounds = _bounds(perturb_func_kwargs)
    _check_perturb_func(perturb_func)
    if batch_size is not None:
        batch_size = _core.check_positive_int(batch_size, "batch_size")
    key = _key(key, "irof", kind == "uniform")
    if segments is None:
        method = _core.check_choice(
            segmentation_method, "segmentation_method", ("slic", "felzenszwalb")
        )
        host = np.asarray(x)
        segs = [_segment(host[i], method) for i in range(n)]
    else:
        segs = np.asarray(segments)
        if segs.shape != (n, h, w) or not np.issubdtype(segs.dtype, np.integer):
            raise ValueError(
                f"segments must be integer labels of shape (N, H, W) = {(n, h, w)}, got "
                f"shape {segs.shape} dtype {segs.dtype}"
            )
        segs = list(segs)
    labels, counts = [], []
    for i, sg in enumerate(segs):
        uniq, inv = np.unique(np.asarray(sg), return_inverse=True)
        if uniq.size < 2:
            raise ValueError(f"IROF needs more than one segment; image {i} has {uniq.size}")
        labels.append(inv.reshape(h, w).astype(np.int32))
        counts.append(uniq.size)
    s_max = max(counts)
    counts = np.asarray(counts, np.int32)
    step_of, fmap, keys, y = _prep_irof(
        fn=fn,
        softmax=bool(softmax),
        post=post,
        shape=shape,
        kind=kind,
        s_max=s_max,
        x=x,
        a=a,
        lab=np.stack(labels),
        counts=counts,
        target=t,
        key=key,
        bounds=bounds,
    )
    preds = _run_steps(
        fn=fn,
        softmax=bool(softmax),
        mode="cumulative",
        perturb_func=perturb_func,
        x=x,
        step_of=step_of,
        steps=np.arange(s_max),
        fmap=fmap,
        keys=keys,
        target=t,
        batch_size=batch_size,
    )
    return _finish_irof(preds, y, counts, agg=_agg(return_aggregate, aggregate_func))


# --------------------------------------------------------------------------------------
# Sufficiency
# --------------------------------------------------------------------------------------


@functools.partial(_caching.jit, static_argnames=("fn", "post", "shape", "metric", "agg"))
def _sufficiency_core(x, a, threshold, *, fn, post, shape, metric, agg):
    n = x.shape[0]
    a = qc.apply_post(a.reshape(shape), post)
    d = _pairwise(a.reshape(n, -1), metric)
    top = jnp.max(jnp.abs(d))
    d = jnp.where(top == 0, d, d / jnp.where(top == 0, 1, top))
    close = (d <= threshold) & ~jnp.eye(n, dtype=bool)
    cls = jnp.argmax(fn(x), axis=-1)
    same = cls[None, :] == cls[:, None]
    hits = jnp.sum(close & same, axis=1).astype(x.dtype)
    total = jnp.sum(close, axis=1)
    result = jnp.where(total == 0, 0.0, hits / jnp.maximum(total, 1).astype(hits.dtype))
    return result if agg is None else agg(result)


def _pairwise(a: jax.Array, metric: Any) -> jax.Array:
    if callable(metric):
        return jnp.asarray(metric(a, a))
    diff = a[:, None, :] - a[None, :, :]
    if metric == "seuclidean":
        var = jnp.var(jnp.concatenate([a, a], axis=0), axis=0, ddof=1)
        return jnp.sqrt(jnp.sum(diff**2 / var[None, None], axis=-1))
    if metric == "euclidean":
        return jnp.sqrt(jnp.sum(diff**2, axis=-1))
    if metric == "sqeuclidean":
        return jnp.sum(diff**2, axis=-1)
    if metric == "cityblock":
        return jnp.sum(jnp.abs(diff), axis=-1)
    if metric == "chebyshev":
        return jnp.max(jnp.abs(diff), axis=-1)
    if metric == "cosine":
        u = a / jnp.linalg.norm(a, axis=1, keepdims=True)
        return 1.0 - u @ u.T
    raise ValueError(
        f"distance_func must be a callable or one of {list(_DISTANCES)}, got {metric!r}"
    )


_DISTANCES = ("seuclidean", "euclidean", "sqeuclidean", "cityblock", "chebyshev", "cosine")


@_core.contract
def sufficiency(
    fn: Callable[..., Any],
    x: jax.Array,
    attributions: jax.Array,
    *,
    threshold: float = 0.6,
    distance_func: str | Callable[..., jax.Array] = "seuclidean",
    abs: bool = True,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Sufficiency (Dasgupta et al., 2022), Quantus's ``Sufficiency``.

    Examples whose attributions lie within ``threshold`` of each other (pairwise
    ``distance_func`` distances divided by their largest value) should get the same
    prediction: the score of an example is the fraction of its close neighbours (itself
    excluded) with its predicted class, 0 when it has none. Higher is better.

    The neighbourhood is the batch given (Quantus's is its data batch of ``batch_size``
    64). ``"seuclidean"`` standardises by the feature variances of the stacked pair of
    attribution arrays (ddof 1), as ``scipy.spatial.distance.cdist`` does for one array
    against itself.

    Args:
        fn: Batch-first model, ``fn(x) -> (N, classes)``.
        x: Input (N, ...).
        attributions: Attributions (N, ...) (flattened per example).
        threshold: Largest normalised distance of a close pair.
        distance_func: ``"seuclidean"``, ``"euclidean"``, ``"sqeuclidean"``,
            ``"cityblock"``, ``"chebyshev"``, ``"cosine"`` or ``(a, a) -> (N, N)``.
        abs: Absolute attributions (Quantus's default True).
        normalise: Apply ``normalise_func`` to the attributions.
        normalise_func: Default per-example max.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.

    Returns:
        The score per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> fn = lambda x: x
        >>> x = jnp.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
        >>> metrics.sufficiency(fn, x, x, distance_func="euclidean")
        Array([1., 1., 0.], dtype=float32)
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable model, got {type(fn).__name__}")
    x = qc.as_x(x)
    threshold = qc.check_number(threshold, "threshold")
    a, shape = qc.as_attr(attributions, x)
    post = qc.post_options(abs, normalise, normalise_func)
    if not (callable(distance_func) or distance_func in _DISTANCES):
        raise ValueError(
            f"distance_func must be a callable (a, a) -> (N, N) or one of {list(_DISTANCES)}, "
            f"got {distance_func!r}"
        )
    n = x.shape[0]
    out = jax.eval_shape(
        lambda aa: _pairwise(aa.reshape(n, -1), distance_func), jax.ShapeDtypeStruct(shape, a.dtype)
    )
    if out.shape != (n, n):
        raise ValueError(f"distance_func must return an (N, N) matrix, got {tuple(out.shape)}")
    return _sufficiency_core(
        x,
        a,
        threshold,
        fn=fn,
        post=post,
        shape=shape,
        metric=distance_func,
        agg=_agg(return_aggregate, aggregate_func),
    )
