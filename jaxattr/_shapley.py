"""Shapley values: permutation sampling and exact enumeration over feature groups."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core
from jaxattr._ablation import _feature_masks, _run_features, _spread
from jaxattr._core import PyTree
from jaxattr._perturbation import (
    _baseline_scores,
    _check_batch_size,
    _check_mask_outputs,
    _n_outputs,
    _per_example_scalar,
    _prepare,
)

__all__ = [
    "shapley_value_sampling",
    "shapley_values",
]

Model = Any


#: Most features :func:`shapley_values` enumerates (it evaluates ``2**F`` coalitions).
MAX_EXACT_SHAPLEY_FEATURES = 16


@functools.partial(_caching.jit, static_argnums=(1, 2))
def shapley_permutations(key: jax.Array, n_features: int, n_samples: int) -> jax.Array:
    """The feature orders :func:`shapley_value_sampling` draws from ``key``: (n_samples, F)."""
    return jax.vmap(lambda k: jax.random.permutation(k, n_features))(
        jax.random.split(key, n_samples)
    )


@_core.contract
def shapley_value_sampling(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    target: Any = None,
    baselines: Any = None,
    feature_mask: Any = None,
    n_samples: int = 25,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree:
    """Shapley value sampling (Castro et al., 2009), Captum's ``ShapleyValueSampling``.

    For each of ``n_samples`` random feature orders, start from the baseline and add the
    features of x one at a time; a feature's marginal contribution is the change of the
    target score when it is added. The attribution is the mean contribution, given to
    every element of the feature. Every order telescopes, so the contributions of all
    features sum to ``f(x) - f(baseline)``. All ``n_samples * F`` evaluations are one
    batch; the same orders are used for every example, as in Captum.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        key: PRNG key for the orders (:func:`shapley_permutations`).
        target: What to explain (see :func:`jaxattr.select_target`).
        baselines: ``None`` (zeros), a scalar or an array broadcastable to x.
        feature_mask: Integer ids broadcastable to x (see :func:`feature_ablation`).
        n_samples: Number of random feature orders.
        batch_size: At most this many evaluations per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x[:, 0] * x[:, 1]
        >>> attr = jaxattr.shapley_value_sampling(fn, jnp.array([[2.0, 3.0]]),
        ...                                       key=jax.random.key(0), n_samples=8)
        >>> float(attr.sum())  # efficiency: f(x) - f(0)
        6.0
    """
    key = _core.check_key(key, "shapley_value_sampling")
    n_samples = _core.check_positive_int(n_samples, "n_samples")
    batch_size = _check_batch_size(batch_size)
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    _check_mask_outputs(fmasks, _n_outputs(t, out_shape, inputs.n), out_shape)
    perms = shapley_permutations(key, f, n_samples)
    attr = _shapley_from_orders(fn, x, args, inputs, t, b, fmasks, perms, batch_size, show_progress)
    return _shapley_shape(attr, t, out_shape, inputs.n)


def _shapley_shape(attr: PyTree, t: Any, out_shape: tuple, n: int) -> PyTree:
    """Captum's Shapley layout for ``target=None``: (*y.shape, *d) per input leaf (N, *d),
    (1, *d) for a scalar output; x's shape for a per-example scalar output."""
    if _per_example_scalar(t, out_shape, n):
        return attr
    lead = out_shape if out_shape else (1,)
    return jax.tree_util.tree_map(lambda a: a.reshape(*lead, *a.shape[1:]), attr)


def _shapley_from_orders(fn, x, args, inputs, t, b, fmasks, perms, batch_size, show_progress):
    s_count, f = perms.shape
    rank = jnp.argsort(perms, axis=1)  # rank[s, feature] = its position in order s
    steps = jnp.arange(f)
    # perturbation (s, k): features at positions > k still at the baseline
    off = rank[:, None, :] > steps[None, :, None]  # (S, F, F)
    off = off.reshape(s_count * f, 1, f)
    s = _run_features(
        fn, x, args, inputs, t, b, fmasks, off, batch_size, show_progress, "shapley_value_sampling"
    )
    s = s.reshape(s_count, f, -1)  # (S, step, N)
    start = _baseline_scores(fn=fn, inputs=inputs, x=x, baselines=b, args=args, target=t)
    prev = jnp.concatenate(
        [jnp.broadcast_to(start, (s_count, 1, start.shape[0])), s[:, :-1]], axis=1
    )
    marginal = s - prev  # (S, step, N): contribution of feature perms[s, step]
    per_feature = jnp.zeros((f, s.shape[2]), s.dtype)
    per_feature = per_feature.at[perms.reshape(-1)].add(marginal.reshape(-1, s.shape[2]))
    return _spread((per_feature / s_count).T, fmasks, x)


@_core.contract
def shapley_values(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    target: Any = None,
    baselines: Any = None,
    feature_mask: Any = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree:
    """Exact Shapley values (Shapley, 1953), Captum's ``ShapleyValues``.

    ``phi_i = sum_S |S|! (F - |S| - 1)! / F! * (v(S + i) - v(S))`` over every coalition
    ``S`` of the other features, ``v(S)`` the target score with the features in ``S`` taken
    from x and the rest from the baseline. The ``2**F`` coalitions are one batch (Captum
    enumerates all ``F!`` orders; the values are the same). Each feature's value is given
    to all of its elements.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        target: What to explain (see :func:`jaxattr.select_target`).
        baselines: ``None`` (zeros), a scalar or an array broadcastable to x.
        feature_mask: Integer ids broadcastable to x (see :func:`feature_ablation`); at
            most :data:`MAX_EXACT_SHAPLEY_FEATURES` features.
        batch_size: At most this many coalitions per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes.

    Raises:
        ValueError: More than :data:`MAX_EXACT_SHAPLEY_FEATURES` features.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x[:, 0] * x[:, 1] + x[:, 2]
        >>> jaxattr.shapley_values(fn, jnp.array([[2.0, 3.0, 1.0]])).round(4)
        Array([[3., 3., 1.]], dtype=float32)
    """
    batch_size = _check_batch_size(batch_size)
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    _check_mask_outputs(fmasks, _n_outputs(t, out_shape, inputs.n), out_shape)
    if f > MAX_EXACT_SHAPLEY_FEATURES:
        raise ValueError(
            f"shapley_values evaluates all 2**F coalitions; F={f} features exceeds the limit "
            f"of {MAX_EXACT_SHAPLEY_FEATURES}: group elements with feature_mask or use "
            f"shapley_value_sampling"
        )
    coef = _shapley_coefficients(f)
    bits = (np.arange(2**f)[:, None] >> np.arange(f)[None, :]) & 1  # (2^F, F): in S
    off = jnp.asarray(bits == 0)[:, None, :]
    s = _run_features(
        fn, x, args, inputs, t, b, fmasks, off, batch_size, show_progress, "shapley_values"
    )
    attr = _spread((jnp.asarray(coef, s.dtype) @ s).T, fmasks, x)
    return _shapley_shape(attr, t, out_shape, inputs.n)


@functools.lru_cache(maxsize=32)
def _shapley_coefficients(f: int) -> np.ndarray:
    """(F, 2^F) matrix C with phi = C @ v for the coalition values v."""
    sizes = np.array([bin(s).count("1") for s in range(2**f)])
    fact = [math.factorial(i) for i in range(f + 1)]
    coef = np.zeros((f, 2**f))
    for s in range(2**f):
        k = sizes[s]
        for i in range(f):
            if s >> i & 1:  # S contains i: + w(|S| - 1)
                coef[i, s] += fact[k - 1] * fact[f - k] / fact[f]
            else:  # S without i: - w(|S|)
                coef[i, s] -= fact[k] * fact[f - k - 1] / fact[f]
    return coef
