"""Localisation and complexity metrics of Quantus 0.6.0 in JAX.

Localisation: attribution localisation, top-k intersection, relevance mass accuracy,
relevance rank accuracy and AUC compare an attribution map with a ground-truth mask
(Quantus's ``s_batch``). Complexity: sparseness, complexity and effective complexity
describe the map alone. All are pure array functions of (N, ...) attributions, jitted,
one value per example; examples with an empty mask score NaN, as in Quantus. No model is
needed (Quantus's classes take one but do not use it).
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
    "attribution_localisation",
    "auc",
    "complexity",
    "effective_complexity",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "sparseness",
    "top_k_intersection",
]


def _check(attributions: Any, masks: Any | None, abs, normalise, normalise_func):  # noqa: A002
    """Validate on the host: ``(attributions, masks or None, post options)``."""
    a = attributions
    if not isinstance(a, jax.Array):
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
    if a.ndim < 2:
        raise ValueError(
            f"attributions must have shape (N, ...) with N examples, got {tuple(a.shape)}"
        )
    _core.check_finite(a, "attributions")
    post = qc.post_options(abs, normalise, normalise_func)
    if masks is None:
        return jnp.asarray(a), None, post
    s = masks if isinstance(masks, jax.Array) else np.asarray(masks)
    n = a.shape[0]
    per = math.prod(a.shape[1:])
    if s.ndim < 1 or s.shape[0] != n or math.prod(s.shape[1:]) != per:
        raise ValueError(
            f"masks must have one element per attribution value: attributions have shape "
            f"{tuple(a.shape)}, masks {tuple(s.shape)} (e.g. both (N, 1, H, W))"
        )
    return jnp.asarray(a), jnp.asarray(s), post


def _flat(a, s, post):
    """Inside the compiled cores: post-processed (N, K) attributions and boolean masks."""
    n = a.shape[0]
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)
    af = qc.apply_post(a, post).reshape(n, -1)
    return af, (None if s is None else s.reshape(n, -1).astype(bool))


def _nan_where(values: jax.Array, empty: jax.Array) -> jax.Array:
    return jnp.where(empty, jnp.nan, values)


def _agg(return_aggregate, aggregate_func):
    if not qc.check_bool(return_aggregate, "return_aggregate"):
        return None
    return jnp.mean if aggregate_func is None else aggregate_func


def _out(value, agg):
    return value if agg is None else agg(value)


_jit = functools.partial(_caching.jit, static_argnames=("post", "agg", "opts"))


@_jit
def _attribution_localisation(a, s, *, post, agg, opts):
    weighted, positive = opts
    af, s = _flat(a, s, post)
    if positive:
        af = jnp.clip(af, 0, None)
    inside = jnp.sum(af * s.astype(af.dtype), axis=1)
    ratio = inside / (jnp.sum(af, axis=1) + 1e-9)
    size = jnp.sum(s, axis=1)
    ratio = jnp.where((size == 0) | (ratio > 1), jnp.nan, ratio)
    if weighted:
        ratio = ratio * size.astype(ratio.dtype) / s.shape[1]
    return _out(ratio, agg)


def _descending_order(af: jax.Array) -> jax.Array:
    return jnp.argsort(-af, axis=1, stable=True)


@_jit
def _top_k(a, s, *, post, agg, opts):
    k, concept = opts
    af, s = _flat(a, s, post)
    tki = jnp.take_along_axis(s, _descending_order(af)[:, :k], axis=1).mean(axis=1)
    sums = jnp.sum(s, axis=1)
    if concept:
        tki = tki * af.shape[1] / sums.astype(tki.dtype)
    return _out(_nan_where(tki, sums == 0), agg)


@_jit
def _mass(a, s, *, post, agg, opts):
    af, s = _flat(a, s, post)
    acc = jnp.sum(af * s.astype(af.dtype), axis=1) / jnp.sum(af, axis=1)
    return _out(_nan_where(acc, jnp.sum(s, axis=1) == 0), agg)


@_jit
def _rank(a, s, *, post, agg, opts):
    af, s = _flat(a, s, post)
    sums = jnp.sum(s, axis=1)
    ranked = jnp.take_along_axis(s, _descending_order(af), axis=1)
    within = jnp.arange(af.shape[1])[None] < sums[:, None]
    acc = jnp.sum(ranked & within, axis=1) / jnp.maximum(sums, 1)
    return _out(_nan_where(acc, sums == 0), agg)


@_jit
def _auc(a, s, *, post, agg, opts):
    af, s = _flat(a, s, post)
    ranks = qc.rankdata(af)
    pos = jnp.sum(s, axis=1).astype(af.dtype)
    neg = af.shape[1] - pos
    u = jnp.sum(jnp.where(s, ranks, 0.0), axis=1) - pos * (pos + 1) / 2
    return _out(_nan_where(u / (pos * neg), (pos == 0) | (neg == 0)), agg)


@_jit
def _sparseness(a, s, *, post, agg, opts):
    af, _ = _flat(a, None, post)
    m = af.shape[1]
    v = jnp.sort(af + 1e-7, axis=1)
    coef = 2 * jnp.arange(1, m + 1, dtype=v.dtype) - m - 1
    return _out(jnp.sum(coef[None] * v, axis=1) / (m * jnp.sum(v, axis=1)), agg)


@_jit
def _complexity(a, s, *, post, agg, opts):
    af, _ = _flat(a, None, post)
    p = af / jnp.sum(jnp.abs(af), axis=1, keepdims=True)
    return _out(-jnp.sum(p * jnp.log(p + 1e-12), axis=1), agg)


@_jit
def _effective(a, s, *, post, agg, opts):
    af, _ = _flat(a, None, post)
    return _out(jnp.sum(af > opts, axis=1).astype(jnp.int32), agg)


def attribution_localisation(
    attributions: Any,
    masks: Any,
    *,
    weighted: bool = False,
    max_size: float = 1.0,
    positive_attributions: bool = False,
    abs: bool = True,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Attribution localisation (Kohlbrenner et al., 2020), Quantus's ``AttributionLocalisation``.

    The share of the attribution inside the mask, ``sum(a * s) / (sum(a) + 1e-9)``; NaN for
    an empty mask or a share above 1. With ``weighted`` it is multiplied by the mask's
    share of the map, ``|s| / size`` (``max_size`` only bounds that share in Quantus's
    warning). ``positive_attributions`` clips negative values first.

    Quantus divides ``|s|`` by the size of ``x_batch[2:]`` (every example after the
    second, all channels) where the per-example size is meant; jaxattr uses the size of an
    example's mask, so weighted scores differ from Quantus's by that factor.

    Args:
        attributions: (N, ...) maps, e.g. (N, 1, H, W).
        masks: Ground truth with one element per attribution value (boolean or 0/1).
        weighted: Multiply by the mask's share of the map.
        max_size: Kept for Quantus's signature (a warning threshold there).
        positive_attributions: Clip negative attributions to 0.
        abs: Absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default :func:`normalise_by_max`, per example).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.

    Returns:
        The share per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> a = jnp.array([[3.0, 1.0, 0.0, 0.0]])
        >>> s = jnp.array([[True, False, False, False]])
        >>> metrics.attribution_localisation(a, s).round(4)
        Array([0.75], dtype=float32)
    """
    qc.check_number(max_size, "max_size")
    a, s, post = _check(attributions, masks, abs, normalise, normalise_func)
    opts = (
        qc.check_bool(weighted, "weighted"),
        qc.check_bool(positive_attributions, "positive_attributions"),
    )
    return _attribution_localisation(
        a, s, post=post, opts=opts, agg=_agg(return_aggregate, aggregate_func)
    )


def top_k_intersection(
    attributions: Any,
    masks: Any,
    *,
    k: int = 1000,
    concept_influence: bool = False,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Top-k intersection (Theiner et al., 2021), Quantus's ``TopKIntersection``.

    The fraction of the ``k`` highest attributions that lie inside the mask; with
    ``concept_influence`` divided by the mask's share of the map. Ties are broken in index
    order (a stable sort; Quantus's numpy sort leaves them unspecified).

    Args:
        attributions: (N, ...) maps.
        masks: Ground truth with one element per attribution value.
        k: Number of top features (smaller than the map).
        concept_influence: Divide by the mask's share.
        abs: Absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default :func:`normalise_by_max`, per example).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.

    Returns:
        The fraction per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> a = jnp.array([[4.0, 3.0, 2.0, 1.0]])
        >>> s = jnp.array([[True, False, True, False]])
        >>> metrics.top_k_intersection(a, s, k=2)
        Array([0.5], dtype=float32)
    """
    a, s, post = _check(attributions, masks, abs, normalise, normalise_func)
    k = _core.check_positive_int(k, "k")
    size = math.prod(a.shape[1:])
    if k > size:
        raise ValueError(f"k must be at most the map size {size}, got {k}")
    opts = (k, qc.check_bool(concept_influence, "concept_influence"))
    return _top_k(a, s, post=post, opts=opts, agg=_agg(return_aggregate, aggregate_func))


def relevance_mass_accuracy(
    attributions: Any,
    masks: Any,
    *,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Relevance mass accuracy (Arras et al., 2021), Quantus's ``RelevanceMassAccuracy``.

    The attribution inside the mask over the total, ``sum(a * s) / sum(a)``.

    Args:
        attributions: (N, ...) maps.
        masks: Ground truth with one element per attribution value.
        abs: Absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default :func:`normalise_by_max`, per example).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.

    Returns:
        The accuracy per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> a = jnp.array([[3.0, 1.0, 0.0, 0.0]])
        >>> metrics.relevance_mass_accuracy(a, jnp.array([[1, 0, 0, 0]]))
        Array([0.75], dtype=float32)
    """
    a, s, post = _check(attributions, masks, abs, normalise, normalise_func)
    return _mass(a, s, post=post, opts=None, agg=_agg(return_aggregate, aggregate_func))


def relevance_rank_accuracy(
    attributions: Any,
    masks: Any,
    *,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Relevance rank accuracy (Arras et al., 2021), Quantus's ``RelevanceRankAccuracy``.

    With ``K`` the mask size, the fraction of the ``K`` highest attributions inside the
    mask (ties broken in index order).

    Args:
        attributions: (N, ...) maps.
        masks: Ground truth with one element per attribution value.
        abs: Absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default :func:`normalise_by_max`, per example).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.

    Returns:
        The accuracy per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> a = jnp.array([[4.0, 3.0, 2.0, 1.0]])
        >>> metrics.relevance_rank_accuracy(a, jnp.array([[1, 0, 1, 0]]))
        Array([0.5], dtype=float32)
    """
    a, s, post = _check(attributions, masks, abs, normalise, normalise_func)
    return _rank(a, s, post=post, opts=None, agg=_agg(return_aggregate, aggregate_func))


def auc(
    attributions: Any,
    masks: Any,
    *,
    abs: bool = False,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Area under the ROC curve of the attribution as a detector of the mask (Fawcett,
    2006), Quantus's ``AUC`` (scikit-learn's ``roc_curve`` and ``auc``).

    Computed as the Mann-Whitney statistic: the fraction of (inside, outside) pairs whose
    inside value is larger, ties counting one half, which equals the trapezoid area of the
    ROC curve with tied scores merged. NaN for an empty mask or a mask covering the map.

    Args:
        attributions: (N, ...) maps.
        masks: Ground truth with one element per attribution value.
        abs: Absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default :func:`normalise_by_max`, per example).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.

    Returns:
        The AUC per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> a = jnp.array([[4.0, 3.0, 2.0, 1.0]])
        >>> metrics.auc(a, jnp.array([[1, 0, 1, 0]]))
        Array([0.75], dtype=float32)
    """
    a, s, post = _check(attributions, masks, abs, normalise, normalise_func)
    return _auc(a, s, post=post, opts=None, agg=_agg(return_aggregate, aggregate_func))


# --------------------------------------------------------------------------------------
# Complexity
# --------------------------------------------------------------------------------------


def sparseness(
    attributions: Any,
    *,
    abs: bool = True,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Sparseness (Chalasani et al., 2020), Quantus's ``Sparseness``: the Gini index of the
    attribution values (plus 1e-7, as Quantus), in [0, 1]; higher is sparser.

    Args:
        attributions: (N, ...) maps (flattened per example).
        abs: Absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default :func:`normalise_by_max`, per example).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.

    Returns:
        The Gini index per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> a = jnp.array([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
        >>> [round(float(v), 3) for v in metrics.sparseness(a)]
        [0.75, 0.5]
    """
    a, _, post = _check(attributions, None, abs, normalise, normalise_func)
    return _sparseness(a, None, post=post, opts=None, agg=_agg(return_aggregate, aggregate_func))


def complexity(
    attributions: Any,
    *,
    abs: bool = True,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Complexity (Bhatt et al., 2020), Quantus's ``Complexity``: the entropy of the
    attribution's distribution ``p = a / sum|a|``, ``-sum p log(p + 1e-12)``; lower is
    simpler.

    Args:
        attributions: (N, ...) maps (flattened per example).
        abs: Absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default :func:`normalise_by_max`, per example).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.

    Returns:
        The entropy per example (N,), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> metrics.complexity(jnp.array([[1.0, 1.0, 1.0, 1.0]])).round(4)   # log 4
        Array([1.3863], dtype=float32)
    """
    a, _, post = _check(attributions, None, abs, normalise, normalise_func)
    return _complexity(a, None, post=post, opts=None, agg=_agg(return_aggregate, aggregate_func))


def effective_complexity(
    attributions: Any,
    *,
    eps: float = 1e-5,
    abs: bool = True,  # noqa: A002
    normalise: bool = True,
    normalise_func: Callable[[jax.Array], jax.Array] | None = None,
    return_aggregate: bool = False,
    aggregate_func: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Effective complexity (Nguyen & Martinez, 2020), Quantus's ``EffectiveComplexity``:
    the number of attribution values above ``eps``; lower is simpler.

    Args:
        attributions: (N, ...) maps.
        eps: The threshold.
        abs: Absolute attributions (after ``normalise``).
        normalise: Apply ``normalise_func`` (default :func:`normalise_by_max`, per example).
        normalise_func: ``(N, ...) -> (N, ...)``.
        return_aggregate: Return ``aggregate_func`` of the scores.
        aggregate_func: Default the mean.

    Returns:
        The count per example (N,) (int32), or its aggregate.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import metrics
        >>> metrics.effective_complexity(jnp.array([[1.0, 1e-7, -0.5, 0.0]]))
        Array([2], dtype=int32)
    """
    eps = qc.check_number(eps, "eps")
    a, _, post = _check(attributions, None, abs, normalise, normalise_func)
    return _effective(a, None, post=post, opts=eps, agg=_agg(return_aggregate, aggregate_func))
