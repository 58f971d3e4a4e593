"""Feature masks, feature ablation and feature permutation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core, _incremental
from jaxattr._core import Inputs, PyTree
from jaxattr._perturbation import (
    _attr_dtype,
    _base_scores,
    _check_batch_size,
    _check_mask_outputs,
    _eager,
    _n_outputs,
    _prepare,
    _scores,
)
from jaxattr._progress import progress, sync

__all__ = [
    "feature_ablation",
    "feature_permutation",
    "permute_feature",
]

Model = Any


# --------------------------------------------------------------------------------------
# Feature masks: ablation, permutation, Shapley, KernelSHAP, LIME
# --------------------------------------------------------------------------------------


def _feature_masks(feature_mask: Any, x: PyTree, inputs: Inputs) -> tuple[list, int]:
    """Validate ``feature_mask`` and renumber its ids to 0..F-1 (shared across inputs).

    Returns per leaf an int32 array of shape (1 or N, *leaf.shape[1:]) and F.
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    if feature_mask is None:
        out, start = [], 0
        for leaf in leaves:
            size = math.prod(leaf.shape[1:])
            out.append(np.arange(start, start + size, dtype=np.int32).reshape((1, *leaf.shape[1:])))
            start += size
        return out, start
    if hasattr(feature_mask, "shape") or len(leaves) == 1:
        masks = [feature_mask] * len(leaves) if len(leaves) > 1 else [feature_mask]
    else:
        try:
            masks = treedef.flatten_up_to(feature_mask)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"feature_mask must be an array or match the structure of x ({treedef})"
            ) from err
    arrays = []
    for i, (leaf, m) in enumerate(zip(leaves, masks, strict=False)):
        name = f"feature_mask[{i}]" if len(leaves) > 1 else "feature_mask"
        if isinstance(m, jax.core.Tracer):
            raise ValueError(
                f"{name} must be concrete (a numpy array or a jax array created "
                f"outside jit): the number of features fixes the batch of "
                f"perturbations"
            )
        a = np.asarray(m)
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name} must hold integer feature ids, got dtype {a.dtype}")
        if a.ndim > leaf.ndim:
            raise ValueError(
                f"{name} has shape {a.shape}, which does not broadcast to the "
                f"input shape {tuple(leaf.shape)}"
            )
        a = a.reshape((1,) * (leaf.ndim - a.ndim) + a.shape)
        ok = all(s in (1, d) for s, d in zip(a.shape, leaf.shape, strict=False))
        if not ok:
            raise ValueError(
                f"{name} has shape {tuple(np.asarray(m).shape)}, which does not "
                f"broadcast to the input shape {tuple(leaf.shape)}"
            )
        arrays.append(np.broadcast_to(a, (a.shape[0], *leaf.shape[1:])))
    ids = np.unique(np.concatenate([a.reshape(-1) for a in arrays]))
    out = [np.searchsorted(ids, a).astype(np.int32) for a in arrays]
    return out, int(len(ids))


def _gather_mask(off: jax.Array, fm: jax.Array) -> jax.Array:
    """``off`` (P, Nn, F) bool, ``fm`` (Nf, ...) ids -> (P, max(Nn, Nf), ...) bool."""
    p, nn, _ = off.shape
    nf = fm.shape[0]
    n = max(nn, nf)
    flat = jnp.broadcast_to(fm.reshape(nf, -1), (n, math.prod(fm.shape[1:])))
    off = jnp.broadcast_to(off, (p, n, off.shape[2]))
    got = jnp.take_along_axis(off, jnp.broadcast_to(flat[None], (p, *flat.shape)), axis=2)
    return got.reshape((p, n, *fm.shape[1:]))


@_core.cached_jit(("fn", "inputs", "perm_func"))
def _feature_chunk(*, fn, inputs, x, baselines, fmasks, off, keys, args, target, perm_func):
    """Scores of the perturbed inputs for a chunk of perturbations: (P, n_outputs).

    ``off`` (P, Nn, F): features replaced (by the baseline, or permuted across the batch
    with ``perm_func``).
    """
    x_leaves, treedef = jax.tree_util.tree_flatten(x)
    b_leaves = treedef.flatten_up_to(_core.expand_baselines(baselines, x))
    masks = [_gather_mask(off, fm) for fm in fmasks]

    def one(mask_list, key):
        pert = []
        for idx, (xl, bl, m) in enumerate(zip(x_leaves, b_leaves, mask_list, strict=False)):
            full = m  # (1 or N, *leaf.shape[1:])
            if perm_func is not None:
                pert.append(
                    perm_func(
                        xl, jnp.broadcast_to(full, xl.shape), jax.random.fold_in(key, idx)
                    ).astype(xl.dtype)
                )
            else:
                pert.append(jnp.where(full, bl, xl))
        xp = jax.tree_util.tree_unflatten(treedef, pert)
        return _scores(fn, inputs, xp, args, target)

    return jax.vmap(one)(masks, keys)


def _run_features(
    fn,
    x,
    args,
    inputs,
    t,
    baselines,
    fmasks,
    off,
    batch_size,
    show_progress,
    desc,
    keys=None,
    perm_func=None,
):
    """Evaluate every perturbation ``off`` (P, Nn, F) in chunks -> scores (P, n_outputs)."""
    total = off.shape[0]
    outs = []
    show = _eager(x, show_progress)
    chunks = _core.batched_chunks(total, batch_size, backward=False)
    for start, stop in progress(chunks, total=len(chunks), desc=desc, enabled=show):
        part = _feature_chunk(
            fn=fn,
            inputs=inputs,
            x=x,
            baselines=baselines,
            fmasks=fmasks,
            off=off[start:stop],
            keys=None if keys is None else keys[start:stop],
            args=args,
            target=t,
            perm_func=perm_func,
        )
        outs.append(sync(part, show))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)


def _spread(values: jax.Array, fmasks: list, x: PyTree) -> PyTree:
    """Per-feature values (O, F) -> per leaf (O, *leaf.shape[1:]): the value of its feature.

    ``O`` is the number of explained outputs (N for per-example scores); a per-example
    mask (leading dimension N) needs ``O == N`` (see :func:`_check_mask_outputs`).
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    out = []
    rows = values.shape[0]
    for leaf, fm in zip(leaves, fmasks, strict=False):
        got = _gather_mask(values[None], jnp.asarray(fm))[0]
        out.append(jnp.broadcast_to(got, (rows, *leaf.shape[1:])).astype(_attr_dtype(leaf)))
    return jax.tree_util.tree_unflatten(treedef, out)


@_core.contract
def feature_ablation(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    target: Any = None,
    baselines: Any = None,
    feature_mask: Any = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
    incremental: bool | None = None,
) -> PyTree:
    """Feature ablation, Captum's ``FeatureAblation``.

    Each feature (a group of input elements with the same id in ``feature_mask``; by
    default every element is its own feature) is replaced by the baseline in turn, and
    every element of the feature gets ``f(x) - f(x with the feature ablated)``. Feature
    ids are shared across the inputs of a tuple ``x`` (one id ablates its elements in
    every input, as Captum's cross-tensor masks); ids need not be consecutive. All
    ablations are one batch. Inputs may be integer or boolean (no gradients are taken).

    Outputs as in Captum: with a ``target``, one score per example and x-shaped
    attributions. With ``target=None`` every element of ``fn``'s output is explained:
    the attribution of input leaf (N, *d) has shape (prod(y.shape), *d), row ``o`` for
    ``y.reshape(-1)[o]`` (x's shape when ``y`` is (N,) or (N, 1)); an aggregate ``fn``
    (one scalar for the whole batch, Captum's aggregate mode) gives (1, *d).

    Args:
        fn: Pure function of the batch, ``fn(x) -> y``; ``y`` of shape (N, ...), or any
            shape with ``target=None`` (e.g. a scalar loss over the batch).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays; any dtype.
        target: What to explain (see :func:`jaxattr.select_target`); an int also
            selects ``[:, target]`` of an (N, C, 1, ...) output. ``None``: every output
            element (see above).
        baselines: Replacement values: ``None`` (zeros), a scalar, or an array
            broadcastable to x (one per input for a tuple).
        feature_mask: Integer ids broadcastable to x (leading dimension 1 or N), one per
            input for a tuple; concrete (not traced). A per-example mask (leading N)
            needs one explained output per example.
        batch_size: At most this many ablations per compiled call (Captum's
            ``perturbations_per_eval``).
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.
        incremental: On a bridged CNN (``fn`` a :class:`jaxattr.bridge.Converted`, one
            input (N, C, *spatial)), evaluate each ablation incrementally: only the
            receptive field of the feature's bounding box is recomputed through the
            convolutions, pools and elementwise layers (see
            :func:`jaxattr.incremental_plan`); same result to float32 rounding. Pays
            off for compact features (superpixels, patches). ``None`` (default): when
            ``fn`` is such a model and the plan needs at most 75% of the model's
            multiply-adds. ``True``: always (raises where it cannot apply). ``False``:
            never.

    Returns:
        The attribution with x's structure, shapes and (floating) dtypes; float32 for
        int/bool inputs; leading with the number of explained outputs (see above).

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (x ** 2).sum(1)
        >>> jaxattr.feature_ablation(fn, jnp.array([[1.0, 2.0, 3.0]]),
        ...                          feature_mask=jnp.array([[0, 0, 1]]))
        Array([[5., 5., 9.]], dtype=float32)
        >>> jaxattr.feature_ablation(lambda x: x * 2.0, jnp.array([[1.0, 2.0]])).shape
        (2, 2)
    """
    batch_size = _check_batch_size(batch_size)
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    n_out = _n_outputs(t, out_shape, inputs.n)
    _check_mask_outputs(fmasks, n_out, out_shape)
    plan = _incremental.choose(
        fn,
        x,
        args,
        incremental,
        "feature_ablation",
        lambda: _incremental.feature_changed(fmasks[0], f),
    )
    if plan is not None:
        base, s = _incremental.run_features(
            plan,
            fn,
            jax.tree_util.tree_leaves(x)[0],
            jax.tree_util.tree_leaves(b)[0],
            t,
            fmasks[0],
            batch_size,
            show_progress,
        )
        return _spread((base[None] - s).T, fmasks, x)
    off = jnp.eye(f, dtype=bool)[:, None, :]
    s = _run_features(
        fn, x, args, inputs, t, b, fmasks, off, batch_size, show_progress, "feature_ablation"
    )
    base = _base_scores(fn=fn, inputs=inputs, x=x, args=args, target=t)
    return _spread((base[None] - s).T, fmasks, x)


def permute_feature(x: jax.Array, mask: jax.Array, key: jax.Array) -> jax.Array:
    """Captum's default ``perm_func``: shuffle the masked elements across the batch.

    The batch order is a random permutation drawn from ``key`` (never the identity: an
    identity draw is replaced by a shift by one).

    Args:
        x: An input leaf, shape (N, ...), N >= 2.
        mask: Boolean array broadcastable to x, true on the feature's elements.
        key: PRNG key of this feature.

    Returns:
        ``x`` with the masked elements taken from ``x[perm]``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> out = jaxattr.permute_feature(jnp.array([[1.0], [2.0]]), jnp.array([[True]]),
        ...                               jax.random.key(0))
        >>> out.ravel().tolist()
        [2.0, 1.0]
    """
    n = x.shape[0]
    perm = jax.random.permutation(key, n)
    ident = jnp.arange(n)
    perm = jnp.where(jnp.all(perm == ident), jnp.roll(ident, 1), perm)
    return jnp.where(mask, x[perm], x)


def _skipped_features(fmasks: list, f: int, leaves: list) -> np.ndarray:
    """Captum's FeaturePermutation skips: a feature that touches an input with fewer than
    two examples (nothing to shuffle), or whose inputs are all empty. Bool (F,)."""
    touches = np.zeros((f, len(leaves)), bool)
    for i, fm in enumerate(fmasks):
        if math.prod(fm.shape):
            touches[np.unique(fm), i] = True
    small = np.array([leaf.shape[0] < 2 for leaf in leaves])
    empty = np.array([leaf.size == 0 for leaf in leaves])
    any_small = (touches & small[None]).any(1)
    all_empty = ~(touches & ~empty[None]).any(1)
    return any_small | all_empty


@_core.contract
def feature_permutation(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    target: Any = None,
    feature_mask: Any = None,
    perm_func: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree:
    """Permutation feature importance, Captum's ``FeaturePermutation``.

    Like :func:`feature_ablation`, but a feature is perturbed by shuffling its values
    across the batch rather than replacing them by a baseline: every element of the
    feature gets ``f(x) - f(x with the feature permuted)``. As in Captum, a feature that
    touches an input with fewer than two examples (N=1: nothing to shuffle) or whose
    inputs are all empty (N=0) is skipped and gets 0. The inputs of a tuple may have
    different batch sizes when ``fn`` returns one value for the whole batch (Captum's
    aggregate mode, ``target=None``); each input is shuffled within its own batch.
    Outputs and ``target=None`` as in :func:`feature_ablation`.

    Args:
        fn: Pure function of the batch, ``fn(x) -> y``; ``y`` of shape (N, ...), or any
            shape with ``target=None`` (e.g. a loss over the batch).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays; any dtype.
        key: PRNG key; feature ``i`` (in the order of its id) permutes with
            ``jax.random.split(key, F)[i]`` folded with the input's index.
        target: What to explain (see :func:`jaxattr.select_target`); ``None``: every
            output element.
        feature_mask: Integer ids broadcastable to x (see :func:`feature_ablation`).
        perm_func: ``perm_func(x_leaf, mask, key) -> perturbed leaf``; default
            :func:`permute_feature`.
        batch_size: At most this many perturbations per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure (float32 for int/bool inputs), leading with
        the number of explained outputs (N for a target).

    Raises:
        ValueError: Inputs of different batch sizes with a ``target`` (a per-example
            output needs one batch size).

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x.sum(1)
        >>> jaxattr.feature_permutation(fn, jnp.array([[1.0, 0.0], [3.0, 0.0]]),
        ...                             key=jax.random.key(0))
        Array([[-2.,  0.],
               [ 2.,  0.]], dtype=float32)
    """
    key = _core.check_key(key, "feature_permutation")
    batch_size = _check_batch_size(batch_size)
    perm_func = permute_feature if perm_func is None else perm_func
    if target is not None:  # per-example outputs need one batch size; say so before fn runs
        flat = jax.tree_util.tree_flatten_with_path(x)[0]
        shaped = [(p, leaf) for p, leaf in flat if getattr(leaf, "ndim", 0) >= 1]
        for path, leaf in shaped[1:]:
            if leaf.shape[0] != shaped[0][1].shape[0]:
                raise ValueError(
                    f"every leaf of x must lead with the same batch size N when target is "
                    f"given; x{jax.tree_util.keystr(path)} has shape {tuple(leaf.shape)}, "
                    f"expected leading dimension {shaped[0][1].shape[0]} (inputs of "
                    f"different batch sizes need an aggregate fn and target=None)"
                )
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args, mixed_batch=True)
    leaves = jax.tree_util.tree_leaves(x)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    n_out = _n_outputs(t, out_shape, inputs.n)
    _check_mask_outputs(fmasks, n_out, out_shape)
    keys = jax.random.split(key, f)
    run = np.flatnonzero(~_skipped_features(fmasks, f, leaves))
    base = _base_scores(fn=fn, inputs=inputs, x=x, args=args, target=t)
    diff = jnp.zeros((f, base.shape[0]), base.dtype)
    if len(run):
        b = jax.tree_util.tree_map(lambda a: np.zeros((), a.dtype), x)
        off = jnp.eye(f, dtype=bool)[run][:, None, :]
        s = _run_features(
            fn,
            x,
            args,
            inputs,
            t,
            b,
            fmasks,
            off,
            batch_size,
            show_progress,
            "feature_permutation",
            keys=keys[run],
            perm_func=perm_func,
        )
        diff = diff.at[run].set(base[None] - s)
    return _spread(diff.T, fmasks, x)
