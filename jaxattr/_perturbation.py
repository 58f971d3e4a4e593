"""Perturbation methods: occlusion, ablation, permutation, Shapley values, KernelSHAP, LIME, RISE.

Every method here is black-box: it evaluates ``fn`` on a set of perturbed copies of the
input and combines the scores. The whole perturbation set is one ``vmap``-ped batch;
``batch_size`` evaluates it in chunks of at most that many perturbations per compiled
call (a short Python loop over one jitted chunk function), and the result is the same
chunked or not.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core, _incremental, _torchray
from jaxattr._core import Inputs, PyTree
from jaxattr._progress import progress, sync

__all__ = [
    "INTERPRETABLE_MODELS",
    "feature_ablation",
    "feature_permutation",
    "fit_lasso",
    "fit_linear",
    "fit_ridge",
    "fit_sgd",
    "get_exp_kernel_similarity_function",
    "kernel_shap",
    "kernel_shap_samples",
    "lime",
    "lime_base",
    "lime_samples",
    "occlude_independent",
    "occlusion",
    "permute_feature",
    "rise",
    "shapley_value_sampling",
    "shapley_values",
    "tiled_occlusion",
]

#: Most features :func:`shapley_values` enumerates (it evaluates ``2**F`` coalitions).
MAX_EXACT_SHAPLEY_FEATURES = 16


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None:
        return None
    return _core.check_positive_int(batch_size, "batch_size")


def _attr_dtype(leaf: Any) -> Any:
    """An attribution's dtype: the input's when floating, else float32 (int/bool inputs)."""
    return leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else jnp.float32


def _inputs(x: PyTree, *, mixed_batch: bool = False) -> _core.Inputs:
    """Validate x for a black-box method: any dtype (no gradients are taken).

    With ``mixed_batch`` the leaves may lead with different batch sizes (Captum allows it
    when ``fn`` returns one value for the whole batch); ``Inputs.n`` is then the first
    leaf's.
    """
    leaves = jax.tree_util.tree_leaves(x)
    if not mixed_batch or len({getattr(a, "shape", (None,))[:1] for a in leaves}) <= 1:
        return _core.as_inputs(x, need_float=False)
    for path, leaf in _core._leaf_paths(x):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"{path} must be an array, got {type(leaf).__name__}")
        if leaf.ndim == 0:
            raise ValueError(
                f"{path} must lead with the batch dimension N, got a scalar (shape ()); "
                f"use x[None] for a single example"
            )
    _core.check_finite(x, "x")
    return _core.Inputs(is_tuple=isinstance(x, tuple), n=int(leaves[0].shape[0]))


def _output_shape(fn, inputs, x, args) -> tuple:
    """The shape of ``fn``'s output on x, any shape allowed (aggregate outputs too)."""
    from jaxattr import _caching

    out, value_bytes = _caching.probe(_core._call_fn, (inputs, fn, args), x)
    scope = _core._SCOPE.get()
    if scope is not None and scope.value_bytes is None:  # the first probe sizes chunks
        scope.value_bytes = value_bytes
    if not hasattr(out, "shape"):
        raise TypeError(
            f"fn must return one array, got {type(out).__name__}; select the output to "
            f"explain inside fn"
        )
    return tuple(out.shape)


def _resolve_target(target: Any, out_shape: tuple, n: int) -> _core.Target | None:
    """``None`` (every output element, Captum's ``target=None``) or a normalised target.

    An int (or a list / 1-D array of ints) on an output (N, C, 1, ...) whose trailing
    axes have size 1 selects ``[:, target]`` as Captum does.
    """
    if target is None:
        return None
    if len(out_shape) == 0 or out_shape[0] != n:
        raise ValueError(
            f"target={target!r} selects one output per example, but fn returns shape "
            f"{out_shape} with no per-example dimension (N={n}); an aggregate output (one "
            f"value for the whole batch) takes target=None"
        )
    trailing = len(out_shape) > 2 and all(s == 1 for s in out_shape[2:])
    if trailing:
        pad = (0,) * (len(out_shape) - 2)
        if isinstance(target, (int, np.integer)) and not isinstance(target, (bool, np.bool_)):
            target = (int(target), *pad)
        elif isinstance(target, list) and all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in target
        ):
            target = [(int(t), *pad) for t in target]
        elif (
            hasattr(target, "ndim")
            and target.ndim == 1
            and jnp.issubdtype(target.dtype, jnp.integer)
        ):
            target = jnp.concatenate(
                [
                    jnp.reshape(target, (-1, 1)),
                    jnp.zeros((target.shape[0], len(pad)), target.dtype),
                ],
                axis=1,
            )
    return _core.normalize_target(target, out_shape)


def _prepare(fn, x, target, args, *, mixed_batch: bool = False):
    """Validate x and target: ``(x, args, inputs, target, out_shape)``.

    The target is ``None`` for ``target=None``: every element of the output is explained
    (one per example for a per-example scalar output, one in all for an aggregate
    output), as in Captum's perturbation methods.
    """
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _inputs(x, mixed_batch=mixed_batch)
    out_shape = _output_shape(fn, inputs, x, args)
    t = _resolve_target(target, out_shape, inputs.n)
    return x, args, inputs, t, out_shape


def _n_outputs(t: Any, out_shape: tuple, n: int) -> int:
    """How many scores every evaluation gives: N for a target, else every output element."""
    return n if t is not None else int(math.prod(out_shape))


def _scores(fn, inputs, x, args, target):
    """The explained scores, float32: ``(N,)`` for a target, the flat output for None."""
    y = inputs.call(fn, x, args)
    if target is None:
        return jnp.reshape(jnp.asarray(y), (-1,)).astype(jnp.float32)
    return _core.target_score(y, target).astype(jnp.float32)


def _per_example_scalar(t: Any, out_shape: tuple, n: int) -> bool:
    """Whether every example has exactly one explained score (x-shaped attributions)."""
    if t is not None:
        return True
    return len(out_shape) >= 1 and out_shape[0] == n and math.prod(out_shape[1:]) == 1


def _check_mask_outputs(fmasks: list, n_out: int, out_shape: tuple, name: str = "feature_mask"):
    """A per-example mask (leading dimension N > 1) needs one score per example."""
    for i, fm in enumerate(fmasks):
        if fm.shape[0] > 1 and fm.shape[0] != n_out:
            where = f"{name}[{i}]" if len(fmasks) > 1 else name
            raise ValueError(
                f"{where} gives one mask per example (leading dimension {fm.shape[0]}), "
                f"which needs one explained output per example, but fn returns shape "
                f"{out_shape} ({n_out} output(s) explained); give the mask a leading "
                f"dimension of 1, or pass a target"
            )


def _eager(x: PyTree, show_progress: bool) -> bool:
    return bool(show_progress) and _core.is_concrete(x)


@_core.cached_jit(("fn", "inputs"))
def _base_scores(*, fn, inputs, x, args, target):
    return _scores(fn, inputs, x, args, target)


@_core.cached_jit(("fn", "inputs"))
def _baseline_scores(*, fn, inputs, x, baselines, args, target):
    b = _core.expand_baselines(baselines, x)
    return _scores(fn, inputs, b, args, target)


def _per_leaf_option(value: Any, x: PyTree, name: str) -> list:
    """A geometry option given once (applies to every input) or once per input.

    As in Captum, for an ``x`` with several inputs a tuple or list with one entry per
    input is read per input; anything else applies to every input.
    """
    n_leaves = len(jax.tree_util.tree_leaves(x))
    if (
        n_leaves == 1
        and isinstance(value, (tuple, list))
        and len(value) == 1
        and isinstance(value[0], (tuple, list))
    ):
        return [value[0]]  # Captum's one-entry-per-input form for a single input
    if n_leaves > 1 and isinstance(value, (tuple, list)) and len(value) == n_leaves:
        return list(value)
    if n_leaves > 1 and isinstance(value, list):
        raise ValueError(f"{name} gives one entry per input: expected {n_leaves}, got {len(value)}")
    return [value] * n_leaves


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),)
    if isinstance(value, (tuple, list)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        return tuple(int(v) for v in value)
    raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}")


# --------------------------------------------------------------------------------------
# Occlusion
# --------------------------------------------------------------------------------------


def occlude_independent(
    x: jax.Array,
    mask: jax.Array,
    *,
    fill_fn: Callable[..., jax.Array] = jnp.zeros_like,
    invert: bool = False,
    key: jax.Array | None = None,
) -> jax.Array:
    """Zennit's ``occlude_independent``: fill ``x`` outside ``mask`` with ``fill_fn(x)``.

    Exactly Zennit's convention: values where ``mask`` is true are *kept* and every other
    value is replaced by ``fill_fn(x)``; ``invert=True`` occludes inside the mask instead.
    Use it (through :func:`functools.partial`) as the ``occlusion_fn`` of
    :func:`occlusion`. When :func:`occlusion` is given a ``key``, each window passes its
    own key here and ``fill_fn`` is called as ``fill_fn(x, key)`` (e.g. noise).

    Args:
        x: An input leaf, shape (N, ...).
        mask: Boolean array of x's shape, true inside the sliding window.
        fill_fn: ``x -> fill`` (or ``(x, key) -> fill`` with a key), same shape as x.
        invert: Occlude inside the mask rather than outside.
        key: Optional PRNG key forwarded to ``fill_fn``.

    Returns:
        The occluded input, x's shape and dtype.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> jaxattr.occlude_independent(jnp.ones((1, 4)), jnp.array([[True, True, False, False]]))
        Array([[1., 1., 0., 0.]], dtype=float32)
    """
    mask = jnp.asarray(mask, bool)
    if invert:
        mask = ~mask
    fill = fill_fn(x) if key is None else fill_fn(x, key)
    return jnp.where(mask, x, jnp.asarray(fill, x.dtype))


def _captum_geometry(shape: tuple, window: tuple, stride: Any, where: str):
    """Window start positions per dimension, as Captum's Occlusion places them."""
    dims = shape[1:]
    if len(window) != len(dims):
        raise ValueError(
            f"sliding_window_shapes{where} must give one size per non-batch dimension of "
            f"the input: expected {len(dims)} values for shape {tuple(shape)}, got {window}"
        )
    strides = _int_tuple(stride, "strides")
    if len(strides) == 1:
        strides = strides * len(dims)
    if len(strides) != len(dims):
        raise ValueError(
            f"strides{where} must be an int or one value per non-batch dimension: expected "
            f"{len(dims)} values, got {strides}"
        )
    positions = []
    for size, w, s in zip(dims, window, strides, strict=False):
        if w < 1 or s < 1:
            raise ValueError(
                f"sliding_window_shapes and strides must be >= 1, got {window}, {strides}"
            )
        if w > size:
            raise ValueError(
                f"sliding_window_shapes{where} {window} cannot exceed the input dimensions "
                f"{tuple(dims)}"
            )
        if s > w and size != w:
            raise ValueError(
                f"strides{where} {strides} cannot be larger than sliding_window_shapes {window}"
            )
        count = int(math.ceil((size - w) / s)) + 1
        positions.append(np.arange(count) * s)
    return positions, tuple(window)


def _zennit_geometry(shape: tuple, window: Any, stride: Any):
    """Zennit's window/stride resolution: int -> every non-batch dim; tuple -> trailing."""
    dims = tuple(shape[1:])
    if isinstance(window, (int, np.integer)):
        win = tuple(min(int(window), s) for s in dims)
    else:
        win = _int_tuple(window, "window")
        if len(win) > len(dims):
            raise ValueError(
                f"window {win} has more entries than the input has non-batch dimensions {dims}"
            )
        win = dims[: len(dims) - len(win)] + win
    if stride is None:
        st = win
    elif isinstance(stride, (int, np.integer)):
        st = tuple(min(int(stride), s) for s in dims)
    else:
        st = _int_tuple(stride, "stride")
        if len(st) > len(win):
            raise ValueError(f"stride {st} has more entries than window {win}")
        st = win[: len(win) - len(st)] + st
    if any(v < 1 for v in win + st):
        raise ValueError(f"window and stride must be >= 1, got {win}, {st}")
    return [np.arange(0, size, s) for size, s in zip(dims, st, strict=False)], win, st


def _window_mask(start, dims, window, wrap):
    """Boolean (*dims) mask of a window starting at ``start`` (D ints, traced)."""
    m = None
    nd = len(dims)
    for d, (size, w) in enumerate(zip(dims, window, strict=False)):
        i = jnp.arange(size)
        if wrap:
            inside = jnp.mod(i - start[d], size) < w
        else:
            inside = (i >= start[d]) & (i < start[d] + w)
        shape = [1] * nd
        shape[d] = size
        inside = inside.reshape(shape)
        m = inside if m is None else m & inside
    if m is None:  # no non-batch dimension: the one window is the whole element
        return jnp.ones(dims, bool)
    return jnp.broadcast_to(m, dims)


@_core.cached_jit(("fn", "inputs", "windows", "wrap", "zennit", "occlusion_fn"))
def _occlusion_chunk(
    *,
    fn,
    inputs,
    x,
    baselines,
    args,
    target,
    base,
    starts,
    leaf_ids,
    keys,
    windows,
    wrap,
    zennit,
    occlusion_fn,
):
    x_leaves, treedef = jax.tree_util.tree_flatten(x)
    b_leaves = treedef.flatten_up_to(_core.expand_baselines(baselines, x))

    def one(start_list, leaf_id, key):
        pert, masks = [], []
        for idx, (xl, bl) in enumerate(zip(x_leaves, b_leaves, strict=False)):
            m = _window_mask(start_list[idx], xl.shape[1:], windows[idx], wrap)
            m = m & (leaf_id == idx)
            masks.append(m)
            full = jnp.broadcast_to(m, xl.shape)
            if zennit:
                kw = {} if key is None else {"key": jax.random.fold_in(key, idx)}
                occluded = occlusion_fn(xl, full, **kw)
                pert.append(jnp.where(leaf_id == idx, occluded.astype(xl.dtype), xl))
            else:
                pert.append(jnp.where(full, bl, xl))
        xp = jax.tree_util.tree_unflatten(treedef, pert)
        return _scores(fn, inputs, xp, args, target), masks

    s, masks = jax.vmap(one)(starts, leaf_ids, keys)
    w = s if zennit else base[None] - s
    return [jnp.tensordot(w, m.astype(jnp.float32), axes=((0,), (0,))) for m in masks]


def _window_counts(positions, window, dims, wrap):
    """How many windows cover each element (separable: product of per-dim counts)."""
    total = np.ones(())
    for d, (pos, w, size) in enumerate(zip(positions, window, dims, strict=False)):
        c = np.zeros(size)
        for p in pos:
            if wrap:
                c[(p + np.arange(w)) % size] += 1
            else:
                c[max(p, 0) : max(min(p + w, size), 0)] += 1
        shape = [1] * len(dims)
        shape[d] = size
        c = c.reshape(shape)
        total = total * c
    return np.broadcast_to(total, dims)


def _start_grid(positions: list) -> np.ndarray:
    """Every window start (count, D): the product of the per-dimension positions."""
    if not positions:  # no non-batch dimension: one window
        return np.zeros((1, 0), np.int32)
    grid = np.stack(np.meshgrid(*positions, indexing="ij"), -1)
    return grid.reshape(-1, len(positions)).astype(np.int32)


def _run_windows(
    fn,
    x,
    args,
    inputs,
    t,
    baselines,
    geometries,
    wrap,
    zennit,
    occlusion_fn,
    key,
    batch_size,
    show_progress,
    divide,
    scale=1.0,
    desc="occlusion",
    n_out=None,
):
    """Evaluate every window of every leaf (one batch, chunked) and combine.

    ``geometries`` holds per leaf ``(positions, window)``, or ``None`` for a leaf that is
    not occluded. Returns per leaf the attribution, shape (n_out, *leaf.shape[1:]).
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    starts_per_leaf, leaf_ids, windows = [], [], []
    for idx, (leaf, geometry) in enumerate(zip(leaves, geometries, strict=True)):
        nd = leaf.ndim - 1
        if geometry is None:
            grid, window = np.zeros((0, nd), np.int32), (1,) * nd
        else:
            grid, window = _start_grid(geometry[0]), geometry[1]
        starts_per_leaf.append(grid)
        leaf_ids.append(np.full(len(grid), idx, np.int32))
        windows.append(tuple(int(w) for w in window))
    total = sum(len(s) for s in starts_per_leaf)
    # every perturbation carries a start for every leaf (zeros where inactive)
    starts = []
    offset = 0
    for s in starts_per_leaf:
        full = np.zeros((total, s.shape[1]), np.int32)
        full[offset : offset + len(s)] = s
        starts.append(full)
        offset += len(s)
    leaf_ids = np.concatenate(leaf_ids)
    keys = None if key is None else jax.random.split(key, total)
    base = None
    if not zennit:
        base = _base_scores(fn=fn, inputs=inputs, x=x, args=args, target=t)
    acc = None
    if total:
        show = _eager(x, show_progress)
        chunks = _core.batched_chunks(total, batch_size, backward=False)
        for start, stop in progress(chunks, total=len(chunks), desc=desc, enabled=show):
            part = _occlusion_chunk(
                fn=fn,
                inputs=inputs,
                x=x,
                baselines=baselines,
                args=args,
                target=t,
                base=base,
                starts=[s[start:stop] for s in starts],
                leaf_ids=leaf_ids[start:stop],
                keys=None if keys is None else keys[start:stop],
                windows=tuple(windows),
                wrap=wrap,
                zennit=zennit,
                occlusion_fn=occlusion_fn,
            )
            acc = part if acc is None else [a + p for a, p in zip(acc, part, strict=False)]
            sync(acc, show)
    out = []
    for i, (leaf, geometry) in enumerate(zip(leaves, geometries, strict=False)):
        if acc is None:
            rows = n_out if n_out is not None else inputs.n
            a = jnp.zeros((rows, *leaf.shape[1:]), jnp.float32)
        else:
            a = acc[i]
        if divide and geometry is not None:
            counts = _window_counts(geometry[0], geometry[1], leaf.shape[1:], wrap)
            a = a / np.where(counts > 0, counts, 1.0).astype(np.float32)
        out.append((a * scale).astype(_attr_dtype(leaf)))
    return jax.tree_util.tree_unflatten(treedef, out)


@_core.contract
def occlusion(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    target: Any = None,
    sliding_window_shapes: Any = None,
    strides: Any = 1,
    window: Any = None,
    stride: Any = None,
    baselines: Any = None,
    occlusion_fn: Callable[..., jax.Array] | None = None,
    key: jax.Array | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
    incremental: bool | None = None,
) -> PyTree:
    """Occlusion (Zeiler and Fergus, 2014) with Captum's and Zennit's semantics.

    A window slides over every non-batch dimension of the input (any rank); the input is
    evaluated with each window occluded. All windows are one ``vmap``-ped batch.

    - **Captum** (``occlusion_fn=None``): the window is filled with ``baselines`` and the
      attribution of an element is the change of the target score,
      ``f(x) - f(x occluded)``, averaged over the windows that cover it (Captum's
      ``Occlusion``). Windows start at ``0, s, 2s, ...``; the last one is cut at the edge.
    - **Zennit** (``occlusion_fn`` given, e.g. :func:`occlude_independent`): the model
      sees ``occlusion_fn(x, mask)`` with ``mask`` true inside the window, and the score
      of that occluded input, ``sum(y * relevance)`` for a cotangent ``target`` (Zennit's
      output relevance), is added to every element inside the window (summed, not
      averaged). Windows start at ``range(0, size, stride)`` and wrap around the edges, as
      Zennit's rolled masks do. Zennit's own default is
      ``occlusion_fn=jaxattr.occlude_independent`` (keep the window, zero the rest).

    The window is given either Captum's way, ``sliding_window_shapes`` (one size per
    non-batch dimension) with ``strides`` (int or tuple, default 1), or Zennit's way,
    ``window`` with ``stride`` (an int applies to every non-batch dimension, clipped to
    its size; a tuple applies to the trailing dimensions, the leading ones are covered
    whole; ``stride`` defaults to ``window``). For an ``x`` with several inputs, a tuple
    with one entry per input is read per input (Captum's convention); anything else
    applies to every input.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        target: What to explain (see :func:`jaxattr.select_target`).
        sliding_window_shapes: Captum's window shape, one int per non-batch dimension.
        strides: Captum's strides: an int or one per non-batch dimension.
        window: Zennit's window: an int or a tuple for the trailing dimensions.
        stride: Zennit's stride (defaults to ``window``).
        baselines: Fill value of the occluded window (Captum mode): ``None`` (zeros), a
            scalar or an array broadcastable to x.
        occlusion_fn: Zennit mode: ``occlusion_fn(x_leaf, mask)`` returns the occluded
            input (``mask`` has x's shape).
        key: Optional PRNG key; each window then passes its own ``key=`` to
            ``occlusion_fn`` (for noise fills).
        batch_size: At most this many windows per compiled call (Captum's
            ``perturbations_per_eval``).
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.
        incremental: Captum mode on a bridged CNN (``fn`` a
            :class:`jaxattr.bridge.Converted`, one input (N, C, *spatial)): evaluate
            each window incrementally, recomputing only the window's receptive field
            through the convolutions, pools and elementwise layers and the rest of the
            network in full (see :func:`jaxattr.incremental_plan`); same result to
            float32 rounding. ``None`` (default): when ``fn`` is such a model and the
            plan needs at most 75% of the model's multiply-adds. ``True``: always
            (raises where it cannot apply). ``False``: never.

    Returns:
        The attribution with x's structure, shapes and dtypes.

    Raises:
        ValueError: Neither or both of ``sliding_window_shapes`` and ``window``; a window
            larger than the input; a stride larger than the window (Captum mode);
            ``incremental=True`` where it cannot apply.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x.sum((1, 2))
        >>> jaxattr.occlusion(fn, jnp.ones((1, 4, 4)), sliding_window_shapes=(2, 2),
        ...                   strides=2)[0, 0]
        Array([4., 4., 4., 4.], dtype=float32)
    """
    if (sliding_window_shapes is None) == (window is None):
        raise ValueError(
            "occlusion needs exactly one window: sliding_window_shapes=(...) (Captum) or "
            f"window=... (Zennit), got sliding_window_shapes={sliding_window_shapes!r}, "
            f"window={window!r}"
        )
    batch_size = _check_batch_size(batch_size)
    zennit = occlusion_fn is not None
    if zennit and not callable(occlusion_fn):
        raise TypeError(f"occlusion_fn must be callable, got {type(occlusion_fn).__name__}")
    if key is not None:
        key = _core.check_key(key, "occlusion")
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    leaves = jax.tree_util.tree_leaves(x)
    geometries = []
    if sliding_window_shapes is not None:
        wins = _per_leaf_option(sliding_window_shapes, x, "sliding_window_shapes")
        strs = _per_leaf_option(strides, x, "strides")
        for i, (leaf, w, s) in enumerate(zip(leaves, wins, strs, strict=False)):
            where = f"[{i}]" if len(leaves) > 1 else ""
            pos, win = _captum_geometry(
                leaf.shape, _int_tuple(w, "sliding_window_shapes"), s, where
            )
            if zennit:  # Zennit placement: range(0, size, stride), wrapping
                st = _int_tuple(s, "strides")
                st = st * len(win) if len(st) == 1 else st
                pos = [np.arange(0, size, si) for size, si in zip(leaf.shape[1:], st, strict=False)]
            geometries.append((pos, win))
    else:
        wins = _per_leaf_option(window, x, "window")
        strs = _per_leaf_option(stride, x, "stride")
        for leaf, w, s in zip(leaves, wins, strs, strict=False):
            pos, win, st = _zennit_geometry(leaf.shape, w, s)
            if not zennit:  # Captum placement of the resolved window
                pos, win = _captum_geometry(leaf.shape, win, st, "")
            geometries.append((pos, win))
    if zennit and incremental:
        raise ValueError(
            "occlusion(incremental=True): occlusion_fn (Zennit mode) changes the input "
            "outside the window, and incremental evaluation needs a small changed region; "
            "pass incremental=None or False"
        )
    if not zennit:
        plan = _incremental.choose(
            fn,
            x,
            args,
            incremental,
            "occlusion",
            lambda: _incremental.occlusion_changed(
                _start_grid(geometries[0][0]), geometries[0][1], leaves[0].shape
            ),
        )
        if plan is not None:
            pos, win = geometries[0]
            acc = _incremental.run_occlusion(
                plan,
                fn,
                leaves[0],
                jax.tree_util.tree_leaves(b)[0],
                t,
                _start_grid(pos),
                tuple(int(w) for w in win),
                batch_size,
                show_progress,
            )
            counts = _window_counts(pos, win, leaves[0].shape[1:], False)
            a = acc / np.where(counts > 0, counts, 1.0).astype(np.float32)
            treedef = jax.tree_util.tree_structure(x)
            return jax.tree_util.tree_unflatten(treedef, [a.astype(_attr_dtype(leaves[0]))])
    return _run_windows(
        fn,
        x,
        args,
        inputs,
        t,
        b,
        geometries,
        wrap=zennit,
        zennit=zennit,
        occlusion_fn=occlusion_fn,
        key=key,
        batch_size=batch_size,
        show_progress=show_progress,
        divide=not zennit,
        n_out=_n_outputs(t, out_shape, inputs.n),
    )


def _shift(a: jax.Array, axis: int, s: int, j: int, fill: Any) -> jax.Array:
    """Tiling ``j`` of one axis (``s = window / k``): ``a`` padded in front by ``s``
    elements of ``fill``, then the slice ``[s * j, size + s * j)`` of that, cut at its end
    (so tilings ``j >= 2`` are shorter, by ``s * (j - 1)``)."""
    size = a.shape[axis]
    pad_shape = list(a.shape)
    pad_shape[axis] = s
    padded = jnp.concatenate([jnp.full(pad_shape, fill, a.dtype), a], axis=axis)
    stop = min(size + s * j, size + s)
    return jax.lax.slice_in_dim(padded, s * j, stop, axis=axis)


def _unshift(a: jax.Array, axis: int, s: int, j: int, size: int) -> jax.Array:
    """Place a tiling's attribution (``_shift``'s frame) back on the input's ``size``."""
    length = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (s * j, size + s - s * j - length)  # into the padded frame
    return jax.lax.slice_in_dim(jnp.pad(a, pad), s, s + size, axis=axis)


@_core.contract
def tiled_occlusion(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    target: Any = 0,
    k: Any = (1, 2, 2),
    window: Any = (3, 10, 10),
    baselines: Any = 0,
    batch_size: int | None = None,
    show_progress: bool = True,
    args: tuple = (),
) -> PyTree:
    """Tiled occlusion, extra-attributions' ``TiledOcclusion``, exactly.

    Plain occlusion (Captum's ``Occlusion`` with ``strides = sliding_window_shapes =
    window``, non-overlapping windows) is run ``prod(k)`` times, once per shifted copy
    of the input, and the ``prod(k)`` attributions are **summed** (not averaged). Along
    a dimension with ``k > 1`` and step ``s = window / k``, tiling ``j`` (``0 <= j <
    k``) feeds the model the input zero-padded in front by ``s`` elements and cut to the
    slice ``[s * j, size + s * j)`` of the padded array, cropped at its end: ``j = 0``
    moves the input back by ``s`` (zeros enter in front, the last ``s`` elements drop
    out), ``j = 1`` is the input itself, ``j >= 2`` drops ``s * (j - 1)`` leading
    elements and is that much shorter. Each tiling's attribution ``f(shifted) -
    f(shifted with one window at the baseline)`` is placed back on the input's
    elements, so elements near the trailing edge get fewer tilings than the rest. For
    a linear model every interior element gets ``prod(k)`` times its window's sum
    (e.g. 64 for ``k=(1, 2, 2)``, ``window=(1, 4, 4)``, all-ones input and weights) and
    edge elements less. ``k=1`` is plain Captum occlusion with ``strides=window``. The
    windows of one tiling are one batch; the tilings are a Python loop (their shapes
    differ when ``k > 2``).

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...) with 1 to 4 non-batch dimensions, or a tuple of
            such arrays (an extension: each input is tiled in turn, the others kept).
        target: What to explain (see :func:`jaxattr.select_target`); the reference's
            default is ``0``. ``None`` explains every output element (Captum's
            convention): the result then leads with ``prod(y.shape)``.
        k: Tilings per dimension: an int (every dimension) or one per non-batch dimension.
        window: Window size: an int or one per non-batch dimension; divisible by ``k``.
        baselines: Fill value of an occluded window: a scalar (default 0, as the
            reference), or an array broadcastable to x, shifted with the input (zeros
            where the shift pads).
        batch_size: At most this many windows per compiled call (Captum's
            ``perturbations_per_eval``).
        show_progress: Show a progress bar over the tilings and chunks (eager calls);
            on by default, as in the reference.
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure and shapes (float32 for int inputs), or with
        a leading ``prod(y.shape)`` for ``target=None`` on a multi-output ``fn``.

    Raises:
        ValueError: ``window`` not divisible by ``k``, a window larger than the input or
            than a shifted tiling, or an input with more than 4 non-batch dimensions.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x.sum(1, keepdims=True)
        >>> jaxattr.tiled_occlusion(fn, jnp.ones((1, 4)), k=2, window=2, show_progress=False)
        Array([[3., 4., 4., 2.]], dtype=float32)
    """
    batch_size = _check_batch_size(batch_size)
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    leaves, treedef = jax.tree_util.tree_flatten(x)
    b_leaves = treedef.flatten_up_to(b)
    n_out = _n_outputs(t, out_shape, inputs.n)
    plans = []
    for leaf, kk, ww in zip(
        leaves, _per_leaf_option(k, x, "k"), _per_leaf_option(window, x, "window"), strict=False
    ):
        dims = leaf.shape[1:]
        if not 1 <= len(dims) <= 4:
            raise ValueError(
                f"tiled_occlusion supports inputs with 1 to 4 non-batch "
                f"dimensions, got shape {tuple(leaf.shape)}"
            )
        kt, wt = _int_tuple(kk, "k"), _int_tuple(ww, "window")
        kt = kt * len(dims) if len(kt) == 1 else kt
        wt = wt * len(dims) if len(wt) == 1 else wt
        if len(kt) != len(dims) or len(wt) != len(dims):
            raise ValueError(
                f"k and window give one value per non-batch dimension: expected "
                f"{len(dims)} values for shape {tuple(leaf.shape)}, got k={kt}, "
                f"window={wt}"
            )
        for kd, wd, size in zip(kt, wt, dims, strict=False):
            if kd < 1 or wd < 1:
                raise ValueError(f"k and window must be >= 1, got k={kt}, window={wt}")
            if wd % kd:
                raise ValueError(
                    f"window must be divisible by k in every dimension, got window={wt} and k={kt}"
                )
            if wd > size:
                raise ValueError(f"window {wt} cannot exceed the input dimensions {tuple(dims)}")
        plans.append((kt, wt))
    show = _eager(x, show_progress)
    tilings = [
        (i, j) for i, (kt, _) in enumerate(plans) for j in itertools.product(*map(range, kt))
    ]
    totals = [jnp.zeros((n_out, *leaf.shape[1:]), jnp.float32) for leaf in leaves]
    for i, j in progress(tilings, desc="tiled_occlusion", enabled=show):
        kt, wt = plans[i]
        leaf, bl = leaves[i], b_leaves[i]
        shifted, base_s = leaf, bl
        full_b = np.ndim(bl) > 0
        if full_b:
            base_s = jnp.broadcast_to(jnp.asarray(bl, leaf.dtype), leaf.shape)
        for d, (kd, wd, jd) in enumerate(zip(kt, wt, j, strict=True)):
            if kd > 1:
                shifted = _shift(shifted, d + 1, wd // kd, jd, 0)
                if full_b:
                    base_s = _shift(base_s, d + 1, wd // kd, jd, 0)
        if any(w > size for w, size in zip(wt, shifted.shape[1:], strict=True)):
            raise ValueError(
                f"window {wt} is larger than the shifted tiling {j} of shape "
                f"{tuple(shifted.shape)} (tilings j >= 2 drop (j - 1) * window / k leading "
                f"elements); use a larger input or a smaller k"
            )
        xs = jax.tree_util.tree_unflatten(
            treedef, [shifted if m == i else a for m, a in enumerate(leaves)]
        )
        bs = jax.tree_util.tree_unflatten(
            treedef, [base_s if m == i else a for m, a in enumerate(b_leaves)]
        )
        geometries = [None] * len(leaves)
        geometries[i] = _captum_geometry(shifted.shape, wt, wt, "")
        attr = jax.tree_util.tree_leaves(
            _run_windows(
                fn,
                xs,
                args,
                inputs,
                t,
                bs,
                geometries,
                wrap=False,
                zennit=False,
                occlusion_fn=None,
                key=None,
                batch_size=batch_size,
                show_progress=False,
                divide=True,
                n_out=n_out,
            )
        )[i].astype(jnp.float32)
        for d, (kd, wd, jd) in enumerate(zip(kt, wt, j, strict=True)):
            if kd > 1:
                attr = _unshift(attr, d + 1, wd // kd, jd, leaf.shape[d + 1])
        totals[i] = sync(totals[i] + attr, show)
    out = [a.astype(_attr_dtype(leaf)) for a, leaf in zip(totals, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


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
    diff = jnp.zeros((f, base.shape[0]), jnp.float32)
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
    per_feature = jnp.zeros((f, s.shape[2]), jnp.float32)
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
    attr = _spread((jnp.asarray(coef) @ s).T, fmasks, x)
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
    return coef.astype(np.float32)


# ---- interpretable surrogate models (LIME / KernelSHAP) --------------------------------

#: The named surrogates of :func:`lime` (Captum's ``SkLearnLasso``, ``SkLearnRidge``,
#: ``SkLearnLinearRegression``, ``SGDLasso``, ``SGDRidge``, ``SGDLinearRegression``).
INTERPRETABLE_MODELS = ("lasso", "ridge", "linear", "sgd_lasso", "sgd_ridge", "sgd_linear")

_DEFAULT_ALPHA = {"lasso": 0.01, "ridge": 1.0, "linear": 0.0}


def _weighted_center(z, y, w):
    p = w / jnp.sum(w)
    zbar = p @ z
    ybar = p @ y
    return z - zbar, y - ybar, p, zbar, ybar


def fit_linear(z: jax.Array, y: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted least squares with intercept (minimum-norm): ``(coef (F,), intercept)``.

    What scikit-learn's ``LinearRegression().fit(z, y, sample_weight=w)`` computes
    (Captum's ``SkLearnLinearRegression``).

    Args:
        z: Interpretable samples, shape (S, F).
        y: Model scores, shape (S,).
        w: Sample weights, shape (S,).

    Returns:
        ``(coef, intercept)``: shapes (F,) and ().

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
        >>> coef, b = jaxattr.fit_linear(z, z @ jnp.array([2.0, -1.0]) + 3.0, jnp.ones(4))
        >>> coef.round(4), b.round(4)
        (Array([ 2., -1.], dtype=float32), Array(3., dtype=float32))
    """
    zc, yc, p, zbar, ybar = _weighted_center(z, y, w)
    sq = jnp.sqrt(p)
    coef = jnp.linalg.lstsq(zc * sq[:, None], yc * sq)[0]
    return coef, ybar - zbar @ coef


def fit_ridge(
    z: jax.Array, y: jax.Array, w: jax.Array, alpha: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Weighted ridge regression with intercept: ``(coef (F,), intercept)``.

    Minimises ``sum_i w_i (y_i - b - z_i . c)^2 + alpha |c|^2``, scikit-learn's
    ``Ridge(alpha).fit(z, y, sample_weight=w)`` (Captum's ``SkLearnRidge``): the weighted
    means are removed, then the normal equations are solved.

    Args:
        z: Interpretable samples, shape (S, F).
        y: Model scores, shape (S,).
        w: Sample weights, shape (S,).
        alpha: The L2 penalty.

    Returns:
        ``(coef, intercept)``: shapes (F,) and ().

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
        >>> coef, b = jaxattr.fit_ridge(z, z @ jnp.array([2.0, -1.0]), jnp.ones(4), alpha=1.0)
        >>> coef.round(4)
        Array([ 1. , -0.5], dtype=float32)
    """
    zc, yc, p, zbar, ybar = _weighted_center(z, y, w)
    zw = zc * w[:, None]
    gram = zc.T @ zw + alpha * jnp.eye(z.shape[1], dtype=z.dtype)
    coef = jnp.linalg.solve(gram, zw.T @ yc)
    return coef, ybar - zbar @ coef


def fit_lasso(
    z: jax.Array,
    y: jax.Array,
    w: jax.Array,
    alpha: float = 0.01,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> tuple[jax.Array, jax.Array]:
    """Weighted Lasso with intercept by cyclic coordinate descent: ``(coef, intercept)``.

    Minimises ``sum_i p_i (y_i - b - z_i . c)^2 / 2 + alpha * |c|_1`` with
    ``p = w / sum(w)``: scikit-learn's ``Lasso(alpha).fit(z, y, sample_weight=w)``
    objective (the one Captum's ``SkLearnLasso`` fits). Stops when no coefficient moves
    by more than ``tol`` in a sweep, or after ``max_iter`` sweeps.

    Args:
        z: Interpretable samples, shape (S, F).
        y: Model scores, shape (S,).
        w: Sample weights, shape (S,).
        alpha: The L1 penalty.
        max_iter: Most coordinate sweeps.
        tol: Largest coefficient change that stops the sweeps.

    Returns:
        ``(coef, intercept)``: shapes (F,) and ().

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
        >>> coef, b = jaxattr.fit_lasso(z, z @ jnp.array([2.0, 0.0]), jnp.ones(4), alpha=0.1)
        >>> coef.round(3)
        Array([1.6, 0. ], dtype=float32)
    """
    zc, yc, p, zbar, ybar = _weighted_center(z, y, w)
    norms = p @ (zc * zc)  # (F,)
    f = z.shape[1]

    def sweep(state):
        coef, r, _, it = state

        def update(carry, j):
            coef, r, delta = carry
            zj = zc[:, j]
            rho = p @ (zj * r) + norms[j] * coef[j]
            new = jnp.sign(rho) * jnp.maximum(jnp.abs(rho) - alpha, 0.0)
            new = jnp.where(norms[j] > 0, new / jnp.where(norms[j] > 0, norms[j], 1.0), 0.0)
            r = r - zj * (new - coef[j])
            delta = jnp.maximum(delta, jnp.abs(new - coef[j]))
            return (coef.at[j].set(new), r, delta), None

        (coef, r, delta), _ = jax.lax.scan(update, (coef, r, jnp.zeros((), z.dtype)), jnp.arange(f))
        return coef, r, delta, it + 1

    def cond(state):
        return (state[2] > tol) & (state[3] < max_iter)

    init = (jnp.zeros(f, z.dtype), yc, jnp.asarray(jnp.inf, z.dtype), 0)
    coef = jax.lax.while_loop(cond, sweep, init)[0]
    return coef, ybar - zbar @ coef


def fit_sgd(
    z: jax.Array,
    y: jax.Array,
    w: jax.Array,
    alpha: float = 1.0,
    reg_term: int | None = 1,
    *,
    max_epoch: int = 100,
    initial_lr: float = 0.01,
    patience: int = 10,
    threshold: float = 1e-4,
) -> tuple[jax.Array, jax.Array]:
    """Captum's ``sgd_train_linear_model`` on one full batch: ``(coef (F,), intercept)``.

    The surrogate of Captum's ``SGDLasso`` (``reg_term=1``), ``SGDRidge`` (``2``) and
    ``SGDLinearRegression`` (``None``) as LIME trains it (all samples in one batch):
    from zero weights, plain gradient steps of size ``lr`` on
    ``sum_i p_i (y_i - b - z_i . c)^2 / 2 + alpha * ||c||_reg_term`` (``p = w / sum|w|``;
    the norm itself, not squared), at most ``max_epoch`` steps. As in Captum, the loss
    averaged over the last ``S + 1`` steps drives both the learning rate (halved after
    ``patience`` steps without a relative improvement of ``threshold``,
    ``ReduceLROnPlateau``) and the stop (``patience`` steps in a row without a new
    minimum, within ``threshold``). Deterministic: no random initialisation.

    Args:
        z: Interpretable samples, shape (S, F).
        y: Model scores, shape (S,).
        w: Sample weights, shape (S,).
        alpha: Weight of the penalty.
        reg_term: Order of the penalty's norm (1, 2) or ``None`` for none.
        max_epoch: Most steps (one per epoch: the batch is the whole sample set).
        initial_lr: The first step size.
        patience: Steps without improvement before the rate halves / the fit stops.
        threshold: Improvement threshold of both rules.

    Returns:
        ``(coef, intercept)``: shapes (F,) and ().

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> z = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
        >>> coef, b = jaxattr.fit_sgd(z, z @ jnp.array([2.0, -1.0]), jnp.ones(4), reg_term=None)
        >>> coef.shape, bool(coef[0] > 0 > coef[1])
        ((2,), True)
    """
    z = jnp.asarray(z, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    w = jnp.asarray(w, jnp.float32)
    s_count, f = z.shape
    pw = w / jnp.sum(jnp.abs(w))
    window = s_count + 1  # Captum's LossWindow keeps the last S + 1 losses

    def loss_fn(params):
        coef, b = params
        loss = jnp.sum(pw * (y - (z @ coef + b)) ** 2) / 2.0
        if reg_term == 1:  # |c| with torch's subgradient sign(0) = 0
            loss = loss + alpha * jnp.sum(jax.lax.stop_gradient(jnp.sign(coef)) * coef)
        elif reg_term == 2:
            sq = jnp.sum(coef * coef)
            loss = loss + alpha * jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
        elif reg_term is not None:
            loss = loss + alpha * jnp.sum(jnp.abs(coef) ** reg_term) ** (1.0 / reg_term)
        return loss

    inf = jnp.asarray(jnp.inf, jnp.float32)
    init = (
        (jnp.zeros(f, jnp.float32), jnp.zeros((), jnp.float32)),
        jnp.asarray(initial_lr, jnp.float32),
        jnp.zeros(window, jnp.float32),
        0,  # losses seen
        inf,  # tracker's minimum average loss
        0,  # tracker's count of steps without a new minimum
        inf,  # scheduler's best
        0,  # scheduler's bad steps
        0,  # epoch
        False,  # converged
    )

    def cond(state):
        return (state[8] < max_epoch) & ~state[9]

    def body(state):
        params, lr, buf, count, tmin, tcount, best, bad, epoch, _ = state
        loss, grads = jax.value_and_grad(loss_fn)(params)
        buf = buf.at[count % window].set(loss)
        count = count + 1
        avg = jnp.sum(buf) / jnp.minimum(count, window)
        seen = jnp.isfinite(tmin)
        worse = seen & ((avg > tmin) | (jnp.abs(tmin - avg) <= threshold + 1e-5 * jnp.abs(avg)))
        tcount = jnp.where(seen, jnp.where(worse, tcount + 1, 0), tcount)
        converged = worse & (tcount >= patience)
        tmin = jnp.where(~seen | (tmin >= avg), avg, tmin)
        stepped = jax.tree_util.tree_map(lambda p_, g: p_ - lr * g, params, grads)
        params = jax.tree_util.tree_map(lambda a, b_: jnp.where(converged, a, b_), params, stepped)
        better = avg < best * (1.0 - threshold)
        new_best = jnp.where(better, avg, best)
        new_bad = jnp.where(better, 0, bad + 1)
        reduce = new_bad > patience
        half = lr * 0.5
        new_lr = jnp.where(reduce & (lr - half > 1e-8), half, lr)
        new_bad = jnp.where(reduce, 0, new_bad)
        keep = lambda old, new: jnp.where(converged, old, new)  # noqa: E731
        return (
            params,
            keep(lr, new_lr),
            buf,
            count,
            tmin,
            tcount,
            keep(best, new_best),
            keep(bad, new_bad),
            jnp.where(converged, epoch, epoch + 1),
            converged,
        )

    params = jax.lax.while_loop(cond, body, init)[0]
    return params


def _fit_named(model: str, z, y, w, alpha):
    if model == "linear":
        return fit_linear(z, y, w)[0]
    if model == "lasso":
        return fit_lasso(z, y, w, alpha)[0]
    if model == "ridge":
        return fit_ridge(z, y, w, alpha)[0]
    reg = {"sgd_lasso": 1, "sgd_ridge": 2, "sgd_linear": None}[model]
    return fit_sgd(z, y, w, alpha, reg)[0]


@functools.partial(_caching.jit, static_argnums=0)
def _fit(model, z, y, w, alpha):
    return jax.vmap(lambda y_, w_, z_: _fit_named(model, z_, y_, w_, alpha))(y, w, z)


def _surrogate_kind(model: Any) -> str:
    if isinstance(model, str):
        _core.check_choice(model, "interpretable_model", INTERPRETABLE_MODELS)
        return "named"
    if hasattr(model, "fit"):
        return "object"
    if callable(model):
        return "callable"
    raise TypeError(
        f"interpretable_model must be one of {list(INTERPRETABLE_MODELS)}, an object with "
        f"fit(z, y, sample_weight=w) and coef_ (scikit-learn's interface), or a function "
        f"(z, y, w) -> coefficients; got {type(model).__name__}"
    )


def _fit_surrogate(model: Any, z, y, w, alpha: float | None) -> jax.Array:
    """Coefficients (E, F) of one surrogate per row of ``z`` (E, S, F), ``y``/``w`` (E, S)."""
    kind = _surrogate_kind(model)
    z = jnp.asarray(z, jnp.float32)
    if kind == "named":
        a = _DEFAULT_ALPHA.get(model, 1.0) if alpha is None else float(alpha)
        return _fit(model, z, y, w, a)
    if kind == "callable":
        return jax.vmap(lambda z_, y_, w_: jnp.reshape(model(z_, y_, w_), (-1,)))(z, y, w)
    if not _core.is_concrete(z, y, w):
        raise ValueError(
            f"interpretable_model={type(model).__name__}(...) fits on the host (NumPy): call "
            f"the method eagerly, outside jit/vmap, or pass a named model or a JAX function"
        )
    coefs = []
    for z_e, y_e, w_e in zip(np.asarray(z), np.asarray(y), np.asarray(w), strict=True):
        model.fit(z_e, y_e, sample_weight=w_e)
        if not hasattr(model, "coef_"):
            raise TypeError(
                f"interpretable_model {type(model).__name__} has no coef_ after fit: LIME "
                f"returns a linear surrogate's coefficients"
            )
        coefs.append(np.asarray(model.coef_, np.float32).reshape(-1))
    return jnp.asarray(np.stack(coefs))


@functools.partial(_caching.jit, static_argnums=(1, 2, 3))
def kernel_shap_samples(key: jax.Array, n: int, n_features: int, n_samples: int) -> jax.Array:
    """The binary coalitions :func:`kernel_shap` draws: (N, n_samples, F), 1 = from x.

    As Captum: the first sample is all ones, the second all zeros, then the number of
    features ``k`` is drawn with ``p(k) ~ (F - 1) / (k (F - k))`` and ``k`` features are
    chosen uniformly (the top ``k`` of a normal draw).

    Example:
        >>> import jax, jaxattr
        >>> jaxattr.kernel_shap_samples(jax.random.key(0), 1, 3, 4).shape
        (1, 4, 3)
    """
    f = n_features
    head = jnp.stack([jnp.ones(f, bool), jnp.zeros(f, bool)])
    rest = max(n_samples - 2, 0)
    ks = np.arange(f, dtype=np.float64)
    probs = np.zeros(f)
    probs[1:] = (f - 1) / (ks[1:] * (f - ks[1:]))
    logits = jnp.log(jnp.asarray(probs / probs.sum() if probs.sum() > 0 else probs + 1.0))

    def one(k):
        k_num, k_pick = jax.random.split(k)
        num = jax.random.categorical(k_num, logits, shape=(rest,))
        vals = jax.random.normal(k_pick, (rest, f))
        order = jnp.argsort(-vals, axis=1)
        rank = jnp.argsort(order, axis=1)
        tail = rank < num[:, None]
        return jnp.concatenate([head, tail])[:n_samples]

    return jax.vmap(one)(jax.random.split(key, n))


@functools.partial(_caching.jit, static_argnums=(1, 2, 3))
def lime_samples(key: jax.Array, n: int, n_features: int, n_samples: int) -> jax.Array:
    """The binary samples :func:`lime` draws: (N, n_samples, F), each bit Bernoulli(0.5).

    Example:
        >>> import jax, jaxattr
        >>> jaxattr.lime_samples(jax.random.key(0), 2, 3, 5).shape
        (2, 5, 3)
    """
    return jax.random.bernoulli(key, 0.5, (n, n_samples, n_features))


def _flat_concat(tree: PyTree) -> jax.Array:
    return jnp.concatenate(
        [jnp.reshape(a, (-1,)).astype(jnp.float32) for a in jax.tree_util.tree_leaves(tree)]
    )


@dataclasses.dataclass(frozen=True)
class _ExpKernel:
    """Captum's ``get_exp_kernel_similarity_function`` (equal options compare equal)."""

    distance_mode: str = "cosine"
    kernel_width: float = 1.0

    def __call__(self, original_input, perturbed_input, perturbed_interpretable_input, **kw):
        a, b = _flat_concat(original_input), _flat_concat(perturbed_input)
        if self.distance_mode == "cosine":
            denom = jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-8)
            d = 1.0 - jnp.dot(a, b) / denom
        else:
            d = jnp.linalg.norm(a - b)
        return jnp.exp(-(d**2) / (2.0 * self.kernel_width**2))


def get_exp_kernel_similarity_function(
    distance_mode: str = "cosine", kernel_width: float = 1.0
) -> Callable[..., jax.Array]:
    """Captum's exponential similarity kernel for LIME: ``exp(-d^2 / (2 width^2))``.

    ``d`` is the cosine distance (``1 - cos``) or the Euclidean distance between the
    original and the perturbed input, each flattened (a tuple's inputs concatenated).

    Args:
        distance_mode: ``"cosine"`` or ``"euclidean"``.
        kernel_width: The kernel width (> 0).

    Returns:
        ``similarity_func(original_input, perturbed_input, perturbed_interpretable_input,
        **kwargs) -> weight`` (a JAX scalar), for :func:`lime`'s ``similarity_func``.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> sim = jaxattr.get_exp_kernel_similarity_function("euclidean", 1.0)
        >>> round(float(sim(jnp.ones((1, 2)), jnp.array([[1.0, 0.0]]), None)), 4)
        0.6065
    """
    _core.check_choice(distance_mode, "distance_mode", ("cosine", "euclidean"))
    if (
        isinstance(kernel_width, bool)
        or not isinstance(kernel_width, (int, float, np.number))
        or kernel_width <= 0
    ):
        raise ValueError(f"kernel_width must be a float > 0, got {kernel_width!r}")
    return _ExpKernel(distance_mode, float(kernel_width))


@dataclasses.dataclass(frozen=True)
class _KernelShapWeights:
    """Captum's ``kernel_shap_similarity_kernel``: 1e6 for the empty and full coalitions."""

    def __call__(self, original_input, perturbed_input, perturbed_interpretable_input, **kw):
        z = jnp.asarray(perturbed_interpretable_input)
        k = jnp.sum(z)
        return jnp.where((k == 0) | (k == z.size), 1e6, 1.0).astype(jnp.float32)


@_core.cached_jit(
    (
        "fn",
        "inputs",
        "perturb_func",
        "transform",
        "to_interp",
        "similarity",
        "interp_space",
        "agg",
        "lime_kw",
        "n_feat",
    )
)
def _lime_chunk(
    *,
    fn,
    inputs,
    x,
    baselines,
    fmasks,
    z,
    keys,
    args,
    target,
    perturb_func,
    transform,
    to_interp,
    similarity,
    interp_space,
    agg,
    lime_kw,
    n_feat,
):
    """One chunk of LIME samples: ``(z (P, E, F), scores (P, O), weights (P, E))``.

    ``E`` is the number of surrogates: N (one per example, each sees its example as a
    batch of one) or 1 (aggregate ``fn``: one for the whole batch). Samples come from
    ``z`` (P, E, F) or are drawn by ``perturb_func`` from ``keys`` (P, E).
    """
    x_leaves, treedef = jax.tree_util.tree_flatten(x)
    n = inputs.n
    view = (lambda a: a[None]) if agg else (lambda a: a[:, None])  # noqa: E731
    x_e = [view(a) for a in x_leaves]
    b_e = None
    if baselines is not None:
        b_e = [view(a) for a in treedef.flatten_up_to(_core.expand_baselines(baselines, x))]
    fm_e = None
    if fmasks:
        if agg:
            fm_e = [jnp.asarray(fm)[None] for fm in fmasks]
        else:
            fm_e = [jnp.broadcast_to(jnp.asarray(fm), (n, *fm.shape[1:]))[:, None] for fm in fmasks]
    unflatten = functools.partial(jax.tree_util.tree_unflatten, treedef)

    def per_example(xl, bl, fml, z_e, key_e):
        xe = unflatten(xl)
        kw = {}
        if lime_kw:
            kw = {
                "feature_mask": unflatten(fml),
                "baselines": unflatten(bl),
                "num_interp_features": n_feat,
            }
        xp = None
        if z_e is None:
            sample = perturb_func(key_e, xe, **kw)
            if interp_space:
                z_row = jnp.reshape(sample, (1, -1))
            else:
                xp = sample
                z_row = jnp.reshape(to_interp(sample, xe, **kw), (1, -1))
        else:
            z_row = z_e[None]
        if xp is None:
            if transform is not None:
                xp = transform(z_row, xe, **kw)
            else:  # Captum's default_from_interp_rep_transform
                on = [z_row[0].astype(bool)[m] for m in fml]
                xp = unflatten([jnp.where(o, a, b_) for o, a, b_ in zip(on, xl, bl, strict=True)])
        xp_leaves = treedef.flatten_up_to(xp)
        xp_leaves = [jnp.asarray(a).astype(r.dtype) for a, r in zip(xp_leaves, xl, strict=True)]
        w = jnp.reshape(similarity(xe, unflatten(xp_leaves), z_row, **kw), ())
        return z_row[0].astype(jnp.float32), xp_leaves, w.astype(jnp.float32)

    def one(z_p, key_p):
        zs, xps, ws = jax.vmap(per_example)(x_e, b_e, fm_e, z_p, key_p)
        xp = unflatten([a.reshape(-1, *a.shape[2:]) for a in xps])
        return zs, _scores(fn, inputs, xp, args, target), ws

    return jax.vmap(one)(z, keys)


def _lime_run(
    fn,
    x,
    args,
    inputs,
    t,
    *,
    agg,
    baselines,
    fmasks,
    z,
    keys,
    perturb_func,
    transform,
    to_interp,
    similarity,
    interp_space,
    lime_kw,
    n_feat,
    batch_size,
    show_progress,
    desc,
):
    """Evaluate every sample (chunked) -> ``z`` (E, S, F), scores (E, S), weights (E, S)."""
    total = (z if z is not None else keys).shape[0]
    parts = []
    show = _eager(x, show_progress)
    chunks = _core.batched_chunks(total, batch_size, backward=False)
    for start, stop in progress(chunks, total=len(chunks), desc=desc, enabled=show):
        part = _lime_chunk(
            fn=fn,
            inputs=inputs,
            x=x,
            baselines=baselines,
            fmasks=fmasks,
            z=None if z is None else z[start:stop],
            keys=None if keys is None else keys[start:stop],
            args=args,
            target=t,
            perturb_func=perturb_func,
            transform=transform,
            to_interp=to_interp,
            similarity=similarity,
            interp_space=interp_space,
            agg=agg,
            lime_kw=lime_kw,
            n_feat=n_feat,
        )
        parts.append(sync(part, show))
    zs, s, w = (jnp.concatenate(p, axis=0) for p in zip(*parts, strict=True))
    return jnp.swapaxes(zs, 0, 1), s.T, w.T


def _lime_mode(t: Any, out_shape: tuple, n: int, method: str) -> bool:
    """True for one surrogate for the whole batch (aggregate ``fn``), False for one per
    example; anything else is Captum's "Invalid number of outputs" error."""
    if _per_example_scalar(t, out_shape, n):
        return False
    if math.prod(out_shape) == 1:
        return True
    raise ValueError(
        f"target=None needs one output per example (or one for the whole batch), but fn "
        f"returns shape {out_shape}; {method} fits one surrogate per explained output: pass "
        f"target=<class index>, a tuple index, or a cotangent"
    )


def _check_callable(value: Any, name: str) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


def _lime_attribute(
    fn,
    x,
    *,
    key,
    target,
    baselines,
    feature_mask,
    n_samples,
    interpretable_model,
    alpha,
    similarity_func,
    perturb_func,
    from_interp_rep_transform,
    return_input_shape,
    default_samples,
    batch_size,
    show_progress,
    args,
    desc,
):
    """LIME with a binary interpretable space over ``feature_mask`` (Lime, KernelShap)."""
    key = _core.check_key(key, desc)
    n_samples = _core.check_positive_int(n_samples, "n_samples")
    batch_size = _check_batch_size(batch_size)
    _surrogate_kind(interpretable_model)
    for value, name in (
        (similarity_func, "similarity_func"),
        (perturb_func, "perturb_func"),
        (from_interp_rep_transform, "from_interp_rep_transform"),
    ):
        _check_callable(value, name)
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args)
    agg = _lime_mode(t, out_shape, inputs.n, desc)
    b = _core.broadcast_baselines(baselines, x, inputs)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    if agg:
        _check_mask_outputs(fmasks, 1, out_shape)
    e = 1 if agg else inputs.n
    z = keys = None
    if perturb_func is None:
        z = jnp.swapaxes(default_samples(key, e, f, n_samples), 0, 1)  # (S, E, F)
    else:
        keys = jax.random.split(key, (n_samples, e))
    zs, y, w = _lime_run(
        fn,
        x,
        args,
        inputs,
        t,
        agg=agg,
        baselines=b,
        fmasks=fmasks,
        z=z,
        keys=keys,
        perturb_func=perturb_func,
        transform=from_interp_rep_transform,
        to_interp=None,
        similarity=similarity_func,
        interp_space=True,
        lime_kw=True,
        n_feat=f,
        batch_size=batch_size,
        show_progress=show_progress,
        desc=desc,
    )
    coef = _fit_surrogate(interpretable_model, zs, y, w, alpha)
    if not return_input_shape:
        return coef
    return _spread(coef, fmasks, x)


@_core.contract
def kernel_shap(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    target: Any = None,
    baselines: Any = None,
    feature_mask: Any = None,
    n_samples: int = 25,
    return_input_shape: bool = True,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree | jax.Array:
    """KernelSHAP (Lundberg and Lee, 2017), Captum's ``KernelShap``.

    Draws ``n_samples`` coalitions per example (:func:`kernel_shap_samples`), evaluates
    x with the absent features at the baseline, and fits a weighted linear regression of
    the scores on the coalitions in JAX; the weights are Captum's (1e6 for the empty and
    full coalitions, 1 otherwise, the Shapley kernel being in the sampling). The
    coefficient of a feature is given to all of its elements. One surrogate per example;
    an aggregate ``fn`` (one scalar for the whole batch, ``target=None``) gets one
    surrogate for the batch and attributions leading with 1, as in Captum.

    Args:
        fn: Pure function of the batch, ``fn(x) -> y``; ``y`` of shape (N, ...), or a
            scalar for the whole batch.
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays; any dtype.
        key: PRNG key for the coalitions.
        target: What to explain (see :func:`jaxattr.select_target`).
        baselines: ``None`` (zeros), a scalar or an array broadcastable to x.
        feature_mask: Integer ids broadcastable to x (see :func:`feature_ablation`).
        n_samples: Coalitions per example.
        return_input_shape: ``True``: each element gets its feature's coefficient (x's
            structure); ``False``: the surrogates' coefficients, shape (E, F) with E = N
            (or 1 for an aggregate ``fn``) and F the features in sorted id order.
        batch_size: At most this many coalitions per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure (float32 for int/bool inputs), or the (E, F)
        coefficients.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (2.0 * x).sum(1)
        >>> attr = jaxattr.kernel_shap(fn, jnp.ones((1, 3)), key=jax.random.key(0))
        >>> attr.round(3)
        Array([[2., 2., 2.]], dtype=float32)
    """
    return _lime_attribute(
        fn,
        x,
        key=key,
        target=target,
        baselines=baselines,
        feature_mask=feature_mask,
        n_samples=n_samples,
        interpretable_model="linear",
        alpha=None,
        similarity_func=_KernelShapWeights(),
        perturb_func=None,
        from_interp_rep_transform=None,
        return_input_shape=return_input_shape,
        default_samples=kernel_shap_samples,
        batch_size=batch_size,
        show_progress=show_progress,
        args=args,
        desc="kernel_shap",
    )


@_core.contract
def lime(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    target: Any = None,
    baselines: Any = None,
    feature_mask: Any = None,
    n_samples: int = 25,
    interpretable_model: Any = "lasso",
    alpha: float | None = None,
    similarity_func: Callable[..., Any] | None = None,
    perturb_func: Callable[..., Any] | None = None,
    from_interp_rep_transform: Callable[..., Any] | None = None,
    distance_mode: str = "cosine",
    kernel_width: float = 1.0,
    return_input_shape: bool = True,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree | jax.Array:
    """LIME (Ribeiro et al., 2016), Captum's ``Lime`` with its defaults and options.

    Draws ``n_samples`` binary vectors per example (each feature kept with probability
    0.5, :func:`lime_samples`, or ``perturb_func``), evaluates x with the dropped
    features at the baseline (or ``from_interp_rep_transform``), weights each sample by
    ``similarity_func`` (default: the exponential kernel ``exp(-d^2 / (2 width^2))`` of
    its cosine distance to x, :func:`get_exp_kernel_similarity_function`) and fits the
    interpretable linear model. One surrogate per example, which it sees as a batch of
    one (as Captum); an aggregate ``fn`` (one scalar for the whole batch) gets one
    surrogate for the batch, and the attributions lead with 1.

    The user functions are JAX functions (traced, vmapped over examples and samples),
    called as Captum calls them, with the keywords ``feature_mask``, ``baselines`` (the
    example's, with x's structure) and ``num_interp_features``:

    - ``perturb_func(key, original_input, **kwargs)``: one interpretable sample, shape
      (1, F) or (F,).
    - ``from_interp_rep_transform(sample (1, F), original_input, **kwargs)``: the model
      input for that sample, original_input's structure and shapes.
    - ``similarity_func(original_input, perturbed_input, sample (1, F), **kwargs)``:
      the sample's weight (a scalar).

    Args:
        fn: Pure function of the batch, ``fn(x) -> y``; ``y`` of shape (N, ...), or a
            scalar for the whole batch.
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays; any dtype.
        key: PRNG key for the samples.
        target: What to explain (see :func:`jaxattr.select_target`).
        baselines: ``None`` (zeros), a scalar or an array broadcastable to x.
        feature_mask: Integer ids broadcastable to x (see :func:`feature_ablation`).
        n_samples: Samples per example.
        interpretable_model: The surrogate: a name in :data:`INTERPRETABLE_MODELS`
            (``"lasso"``, Captum's default ``SkLearnLasso(alpha=0.01)``; ``"ridge"``,
            ``"linear"``; ``"sgd_lasso"``, ``"sgd_ridge"``, ``"sgd_linear"``: Captum's
            SGD-trained models, :func:`fit_sgd`), all fitted in JAX; an object with
            scikit-learn's ``fit(z, y, sample_weight=w)`` and ``coef_`` (fitted on the
            host, eager calls only); or a JAX function ``(z (S, F), y (S,), w (S,)) ->
            coefficients (F,)``.
        alpha: The named model's penalty; ``None``: 0.01 for ``"lasso"``, 1.0 for
            ``"ridge"`` and the SGD models (Captum's defaults).
        similarity_func: The sample weight (see above); replaces ``distance_mode`` and
            ``kernel_width``.
        perturb_func: The sampler (see above); default Bernoulli(0.5) per feature.
        from_interp_rep_transform: Sample -> model input (see above); default: features
            off take the baseline.
        distance_mode: ``"cosine"`` or ``"euclidean"`` (the default kernel's distance).
        kernel_width: Width of the default exponential kernel.
        return_input_shape: ``True``: each element gets its feature's coefficient (x's
            structure); ``False``: the surrogates' coefficients, shape (E, F) with E = N
            (or 1 for an aggregate ``fn``) and F the features in sorted id order.
        batch_size: At most this many samples per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure (float32 for int/bool inputs), or the (E, F)
        coefficients.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (2.0 * x).sum(1)
        >>> attr = jaxattr.lime(fn, jnp.ones((1, 3)), key=jax.random.key(0),
        ...                     interpretable_model="linear")
        >>> attr.round(3)
        Array([[2., 2., 2.]], dtype=float32)
        >>> jaxattr.lime(fn, jnp.ones((1, 3)), key=jax.random.key(0), n_samples=40,
        ...              interpretable_model="ridge", return_input_shape=False).shape
        (1, 3)
    """
    if similarity_func is None:
        similarity_func = get_exp_kernel_similarity_function(distance_mode, kernel_width)
    else:
        _core.check_choice(distance_mode, "distance_mode", ("cosine", "euclidean"))
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or alpha < 0
    ):
        raise ValueError(f"alpha must be a float >= 0, got {alpha!r}")
    return _lime_attribute(
        fn,
        x,
        key=key,
        target=target,
        baselines=baselines,
        feature_mask=feature_mask,
        n_samples=n_samples,
        interpretable_model=interpretable_model,
        alpha=alpha,
        similarity_func=similarity_func,
        perturb_func=perturb_func,
        from_interp_rep_transform=from_interp_rep_transform,
        return_input_shape=return_input_shape,
        default_samples=lime_samples,
        batch_size=batch_size,
        show_progress=show_progress,
        args=args,
        desc="lime",
    )


@_core.contract
def lime_base(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    interpretable_model: Any = "lasso",
    similarity_func: Callable[..., Any] | None = None,
    perturb_func: Callable[..., Any] | None = None,
    perturb_interpretable_space: bool = True,
    from_interp_rep_transform: Callable[..., Any] | None = None,
    to_interp_rep_transform: Callable[..., Any] | None = None,
    target: Any = None,
    n_samples: int = 50,
    alpha: float | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> jax.Array:
    """The general LIME framework, Captum's ``LimeBase``: returns the surrogate's coefficients.

    ``perturb_func`` draws a sample, either in the interpretable space
    (``perturb_interpretable_space=True``: a vector of F values, mapped to a model input
    by ``from_interp_rep_transform``) or in the input space (``False``: a perturbed
    input, mapped to its interpretable vector by ``to_interp_rep_transform``). The model
    scores the inputs, ``similarity_func`` weighs the samples, and
    ``interpretable_model`` is fitted to (vector, score, weight). The functions are JAX
    functions (traced, vmapped), called without extra keywords:

    - ``perturb_func(key, original_input)``: the sample.
    - ``from_interp_rep_transform(sample (1, F), original_input)`` /
      ``to_interp_rep_transform(perturbed_input, original_input)``.
    - ``similarity_func(original_input, perturbed_input, sample (1, F))``: a scalar.

    As in :func:`lime`, every example of a batch gets its own surrogate and sees itself
    as a batch of one (``original_input`` has batch size 1); an aggregate ``fn`` (one
    scalar for the whole batch) gets one surrogate for the batch.

    Args:
        fn: Pure function of the batch, ``fn(x) -> y``.
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays; any dtype.
        key: PRNG key; sample ``s`` of surrogate ``e`` uses
            ``jax.random.split(key, (n_samples, E))[s, e]``.
        interpretable_model: As in :func:`lime`.
        similarity_func: The sample weight.
        perturb_func: The sampler.
        perturb_interpretable_space: Whether ``perturb_func`` samples in the
            interpretable space.
        from_interp_rep_transform: Interpretable sample -> model input (required when
            sampling in the interpretable space).
        to_interp_rep_transform: Model input -> interpretable vector (required when
            sampling in the input space).
        target: What to explain (see :func:`jaxattr.select_target`).
        n_samples: Samples per surrogate (Captum's default 50).
        alpha: The named model's penalty (see :func:`lime`).
        batch_size: At most this many samples per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The coefficients, shape (E, F): E = N surrogates (1 for an aggregate ``fn``).

    Raises:
        TypeError: A missing or non-callable function.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (x * jnp.array([1.0, -2.0])).sum(1)
        >>> coef = jaxattr.lime_base(
        ...     fn, jnp.ones((1, 2)), key=jax.random.key(0), interpretable_model="linear",
        ...     similarity_func=lambda x, xp, z: 1.0,
        ...     perturb_func=lambda k, x: jax.random.bernoulli(k, 0.5, (2,)),
        ...     from_interp_rep_transform=lambda z, x: x * z)
        >>> coef.round(3)
        Array([[ 1., -2.]], dtype=float32)
    """
    key = _core.check_key(key, "lime_base")
    n_samples = _core.check_positive_int(n_samples, "n_samples")
    batch_size = _check_batch_size(batch_size)
    _surrogate_kind(interpretable_model)
    for value, name in (
        (similarity_func, "similarity_func"),
        (perturb_func, "perturb_func"),
        (from_interp_rep_transform, "from_interp_rep_transform"),
        (to_interp_rep_transform, "to_interp_rep_transform"),
    ):
        _check_callable(value, name)
    if similarity_func is None or perturb_func is None:
        raise TypeError(
            "lime_base needs similarity_func and perturb_func (Captum's LimeBase has no "
            f"defaults), got similarity_func={similarity_func!r}, perturb_func={perturb_func!r}"
        )
    if perturb_interpretable_space and from_interp_rep_transform is None:
        raise TypeError(
            "perturb_interpretable_space=True needs from_interp_rep_transform (interpretable "
            "sample -> model input), got None"
        )
    if not perturb_interpretable_space and to_interp_rep_transform is None:
        raise TypeError(
            "perturb_interpretable_space=False needs to_interp_rep_transform (model input -> "
            "interpretable vector), got None"
        )
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args)
    agg = _lime_mode(t, out_shape, inputs.n, "lime_base")
    e = 1 if agg else inputs.n
    keys = jax.random.split(key, (n_samples, e))
    one_x = jax.tree_util.tree_map(lambda a: a if agg else a[:1], x)
    sample = jax.eval_shape(perturb_func, keys[0, 0], one_x)
    if not perturb_interpretable_space:
        sample = jax.eval_shape(to_interp_rep_transform, sample, one_x)
    n_feat = int(math.prod(sample.shape))
    zs, y, w = _lime_run(
        fn,
        x,
        args,
        inputs,
        t,
        agg=agg,
        baselines=None,
        fmasks=[],
        z=None,
        keys=keys,
        perturb_func=perturb_func,
        transform=from_interp_rep_transform,
        to_interp=to_interp_rep_transform,
        similarity=similarity_func,
        interp_space=bool(perturb_interpretable_space),
        lime_kw=False,
        n_feat=n_feat,
        batch_size=batch_size,
        show_progress=show_progress,
        desc="lime_base",
    )
    return _fit_surrogate(interpretable_model, zs, y, w, alpha)


# --------------------------------------------------------------------------------------
# RISE
# --------------------------------------------------------------------------------------


def _spatial_axes(leaf) -> tuple[int, ...]:
    """Axes the RISE / extremal masks cover: all after the channel axis (axis 1) for
    inputs with 2+ non-batch dims, else the single non-batch axis."""
    if leaf.ndim >= 3:
        return tuple(range(2, leaf.ndim))
    return (1,)


def _upsample_reflect(grid: jax.Array, out: tuple) -> jax.Array:
    """TorchRay's RISE upsampling to size ``out``: reflect-pad the grid by one cell,
    (multi)linear resize to ``cell * (cells + 2)`` with ``cell = ceil(out / cells)``,
    crop ``out`` starting one cell in."""
    nd = len(out)
    cell = tuple(int(math.ceil(o / s)) for o, s in zip(out, grid.shape[1:], strict=True))
    pad = [(0, 0)] + [(1, 1)] * nd
    g = (
        jnp.pad(grid, pad, mode="reflect")
        if min(grid.shape[1:]) > 1
        else jnp.pad(grid, pad, mode="edge")
    )
    size = tuple(c * (s + 2) for c, s in zip(cell, grid.shape[1:], strict=False))
    up = jax.image.resize(g, (g.shape[0], *size), method="linear", antialias=False)
    idx = tuple([slice(None)] + [slice(c, c + o) for c, o in zip(cell, out, strict=False)])
    return up[idx]


def rise_masks(
    key: jax.Array, spatial: tuple, num_masks: int, num_cells: int = 7, p: float = 0.5
) -> jax.Array:
    """The random masks of :func:`rise`: (num_masks, *spatial) in [0, 1].

    TorchRay's generator: a ``num_cells`` grid per spatial axis with each cell 1 with
    probability ``p``, upsampled (multi)linearly to the input size plus one cell (after
    reflection padding by one cell), and cropped at a random shift below one cell.

    Args:
        key: PRNG key.
        spatial: The masks' spatial shape, e.g. (H, W).
        num_masks: How many masks.
        num_cells: Cells of the low-resolution grid per spatial axis.
        p: Probability that a cell is kept (1).

    Returns:
        Masks of shape (num_masks, *spatial).

    Example:
        >>> import jax, jaxattr
        >>> jaxattr.rise_masks(jax.random.key(0), (8, 8), 3, num_cells=2).shape
        (3, 8, 8)
    """
    cell = tuple(int(math.ceil(s / num_cells)) for s in spatial)
    k_grid, k_shift = jax.random.split(key)
    grid = jax.random.uniform(k_grid, (num_masks, *(num_cells,) * len(spatial))) < p
    shifts = jnp.stack(
        [
            jax.random.randint(k, (num_masks,), 0, c)
            for k, c in zip(jax.random.split(k_shift, len(spatial)), cell, strict=False)
        ],
        axis=1,
    )
    return _rise_masks_from(grid, shifts, tuple(spatial))


def _rise_masks_from(grid: jax.Array, shifts: jax.Array, spatial: tuple) -> jax.Array:
    """TorchRay's masks from a given binary grid (M, *cells) and shifts (M, D)."""
    num_cells = grid.shape[1]
    cell = tuple(int(math.ceil(s / num_cells)) for s in spatial)
    up_size = tuple(s + c for s, c in zip(spatial, cell, strict=False))
    up = _upsample_reflect(jnp.asarray(grid).astype(jnp.float32), up_size)
    shifts = jnp.asarray(shifts)
    return jax.vmap(lambda u, s: jax.lax.dynamic_slice(u, tuple(s), spatial))(up, shifts)


def _rise_mask_shape(leaf) -> tuple:
    """The shape of one generated mask of a leaf: spatial axes, size 1 elsewhere."""
    axes = _spatial_axes(leaf)
    shape = [1] * (leaf.ndim - 1)
    for a in axes:
        shape[a - 1] = leaf.shape[a]
    return tuple(shape)


@_core.cached_jit(("fn", "inputs", "output_fn", "num_cells", "all_classes"))
def _rise_chunk(*, fn, inputs, x, keys, masks, p, num_cells, args, target, output_fn, all_classes):
    """Sum over a chunk of masks of ``score * mask``: per leaf (N, *mask) for a target,
    (N, K, *mask) for every class. ``masks`` (given, per leaf) or ``keys`` (drawn)."""
    leaves, treedef = jax.tree_util.tree_flatten(x)

    def drawn(k, idx, leaf):
        shape = _rise_mask_shape(leaf)
        spatial = tuple(leaf.shape[a] for a in _spatial_axes(leaf))
        m = rise_masks(jax.random.fold_in(k, idx), spatial, 1, num_cells, p)[0]
        return m.reshape(shape)

    def one(item):
        if masks is None:
            ms = [drawn(item, i, leaf) for i, leaf in enumerate(leaves)]
        else:
            ms = list(item)
        masked = [leaf * m.astype(leaf.dtype) for leaf, m in zip(leaves, ms, strict=True)]
        y = inputs.call(fn, jax.tree_util.tree_unflatten(treedef, masked), args)
        if output_fn is not None:
            y = output_fn(y)
        if all_classes:
            s = jnp.reshape(y, (y.shape[0], -1)).astype(jnp.float32)  # (N, K)
        else:
            s = _core.target_score(y, target).astype(jnp.float32)  # (N,)
        return s, [m.astype(jnp.float32) for m in ms]

    s, ms = jax.vmap(one)(keys if masks is None else tuple(masks))
    return [jnp.tensordot(s, m, axes=((0,), (0,))) for m in ms]


def _check_filter_masks(filter_masks: Any, leaves: list, num_masks: int | None) -> tuple:
    """Validated per-leaf masks ``(M, *m)`` with ``m`` broadcasting to a leaf's example."""
    given = list(filter_masks) if isinstance(filter_masks, (tuple, list)) else [filter_masks]
    if len(given) != len(leaves):
        raise ValueError(
            f"filter_masks gives one mask array per input: expected {len(leaves)}, got {len(given)}"
        )
    out = []
    for i, (m, leaf) in enumerate(zip(given, leaves, strict=True)):
        name = "filter_masks" if len(leaves) == 1 else f"filter_masks[{i}]"
        m = jnp.asarray(m)
        ok = m.ndim >= 1 and m.ndim - 1 <= leaf.ndim - 1
        if ok:
            try:
                ok = np.broadcast_shapes(m.shape[1:], leaf.shape[1:]) == tuple(leaf.shape[1:])
            except ValueError:
                ok = False
        if not ok:
            raise ValueError(
                f"{name} must have shape (num_masks, ...) with each mask broadcasting to one "
                f"example of shape {tuple(leaf.shape[1:])} (TorchRay's (num_masks, 1, H, W) "
                f"for (N, C, H, W)), got {tuple(m.shape)}"
            )
        if not jnp.issubdtype(m.dtype, jnp.floating):
            m = m.astype(jnp.float32)
        out.append(m)
    counts = {m.shape[0] for m in out}
    if len(counts) != 1:
        raise ValueError(f"filter_masks must hold the same number of masks per input, got {counts}")
    (count,) = counts
    if num_masks is not None and num_masks != count:
        raise ValueError(
            f"num_masks must equal the number of filter_masks (TorchRay asserts it), got "
            f"num_masks={num_masks} and {count} masks"
        )
    return tuple(out), count


def _class_maps(a: jax.Array, leaf, n: int, k: int) -> jax.Array:
    """(N, K, *mask) -> (N, K, *spatial): a shared (size-1) channel axis is dropped."""
    m = a.shape[2:]
    full = (1,) * (leaf.ndim - 1 - len(m)) + tuple(m)
    if leaf.ndim >= 3 and full[0] == 1:
        full = full[1:]
    return jnp.reshape(a, (n, k, *full))


@_core.contract
def rise(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    target: Any = None,
    num_masks: int | None = None,
    num_cells: int = 7,
    p: float = 0.5,
    batch_size: int | None = 32,
    output_fn: Callable[[jax.Array], jax.Array] | None = jax.nn.sigmoid,
    show_progress: bool = False,
    args: tuple = (),
    filter_masks: Any = None,
    resize: bool | str | tuple = False,
    resize_mode: str = "bilinear",
) -> PyTree:
    """RISE (Petsiuk et al., 2018), TorchRay's ``rise`` and ``rise_class``.

    Evaluates x multiplied by ``num_masks`` random smooth masks (:func:`rise_masks`) and
    returns ``sum_m score_m * mask_m / num_masks``, the score being the target of
    ``output_fn(fn(x * mask))`` (TorchRay applies a sigmoid). The masks cover the spatial
    axes (all axes after the channel axis 1; the single axis of an (N, D) input) and are
    shared across channels, so the saliency is the same in every channel. Every example
    uses the same masks. The masks are one batch, ``batch_size`` per compiled call.

    TorchRay: with a ``target`` this is ``rise_class`` (broadcast to x's shape); with
    ``target=None`` on a model with several outputs it is ``rise``: one map per output
    element (class). ``filter_masks`` replaces the random masks by given ones (TorchRay's
    ``filter_masks``, e.g. of shape (num_masks, 1, H, W)), and ``resize`` resizes the
    result as TorchRay's ``resize``. TorchRay draws its masks from torch's generator
    (``seed``); here they come from ``key``, so only given masks reproduce TorchRay's
    numbers exactly.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, C, *spatial) or (N, D), or a tuple of such arrays
            (each input gets its own masks).
        key: PRNG key for the masks (mask ``m`` uses ``jax.random.split(key, num_masks)[m]``);
            not needed with ``filter_masks``.
        target: What to explain (see :func:`jaxattr.select_target`); ``None`` on a model
            with several outputs per example: every output element (TorchRay's ``rise``).
        num_masks: Number of random masks (default 8000, or the number of
            ``filter_masks``, which it must then equal).
        num_cells: Cells of the low-resolution grid per spatial axis.
        p: Probability that a cell is kept (1).
        batch_size: At most this many masks per compiled call.
        output_fn: Applied to the model output before the target is selected
            (``jax.nn.sigmoid`` as TorchRay; ``None`` for the raw output).
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.
        filter_masks: Given masks instead of random ones: an array (a tuple of arrays for
            a tuple x) of shape (num_masks, ...), each mask broadcasting to one example
            (``(M, 1, H, W)`` or ``(M, H, W)`` for (N, C, H, W) inputs).
        resize: ``False``; ``True`` (or ``"input"``) for x's spatial size; a tuple in
            TorchRay's (width, height) order.
        resize_mode: ``"bilinear"`` (TorchRay's default), ``"linear"``, ``"trilinear"``
            or ``"nearest"``.

    Returns:
        With a target: the saliency with x's structure, shapes and dtypes. With
        ``target=None`` and K outputs per example: per input, (N, K, *spatial) (the
        channel axis replaced by the classes, as TorchRay; (N, K, D) for (N, D) inputs).
        ``resize`` changes the spatial sizes.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x[:, 0, :4, :4].mean((1, 2))[:, None]
        >>> sal = jaxattr.rise(fn, jnp.ones((1, 1, 8, 8)), key=jax.random.key(0),
        ...                    num_masks=256, num_cells=4, target=0, output_fn=None)
        >>> bool(sal[0, 0, :4, :4].mean() > sal[0, 0, 4:, 4:].mean())
        True
        >>> two = lambda x: jnp.stack([x[:, 0, :4].mean((1, 2)), x[:, 0, 4:].mean((1, 2))], 1)
        >>> masks = jnp.stack([jnp.ones((1, 8, 8)), jnp.zeros((1, 8, 8))])  # TorchRay layout
        >>> jaxattr.rise(two, jnp.ones((1, 3, 8, 8)), filter_masks=masks).shape  # all classes
        (1, 2, 8, 8)
    """
    num_cells = _core.check_positive_int(num_cells, "num_cells")
    batch_size = _check_batch_size(batch_size)
    if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if num_masks is not None:
        num_masks = _core.check_positive_int(num_masks, "num_masks")
    resize, resize_mode, _ = _torchray.check_options(resize, resize_mode, 0.0)
    _core.as_inputs(_core.to_arrays(x))  # RISE multiplies x by smooth masks: floats only
    x, args, inputs, t, out_shape = _prepare(fn, x, target, args)
    leaves, treedef = jax.tree_util.tree_flatten(x)
    all_classes = t is None and not _per_example_scalar(t, out_shape, inputs.n)
    if all_classes and (len(out_shape) < 2 or out_shape[0] != inputs.n):
        raise ValueError(
            f"target=None needs one output per example, or several per example (one map "
            f"each, TorchRay's rise), but fn returns shape {out_shape}; pass a target"
        )
    n_classes = int(math.prod(out_shape[1:])) if all_classes else 1
    t = _core.Target("none") if t is None and not all_classes else t
    if filter_masks is None:
        key = _core.check_key(key, "rise")
        num_masks = 8000 if num_masks is None else num_masks
        keys = jax.random.split(key, num_masks)
        given = None
    else:
        given, num_masks = _check_filter_masks(filter_masks, leaves, num_masks)
    acc = None
    chunks = _core.batched_chunks(num_masks, batch_size, backward=False)
    show = _eager(x, show_progress)
    for start, stop in progress(chunks, total=len(chunks), desc="rise", enabled=show):
        part = _rise_chunk(
            fn=fn,
            inputs=inputs,
            x=x,
            keys=None if given is not None else keys[start:stop],
            masks=None if given is None else tuple(m[start:stop] for m in given),
            p=float(p),
            num_cells=num_cells,
            args=args,
            target=None if all_classes else t,
            output_fn=output_fn,
            all_classes=all_classes,
        )
        acc = part if acc is None else [a + q for a, q in zip(acc, part, strict=False)]
        sync(acc, show)
    if all_classes:
        out = [
            _class_maps(a / num_masks, leaf, inputs.n, n_classes).astype(_attr_dtype(leaf))
            for a, leaf in zip(acc, leaves, strict=False)
        ]
    else:
        out = [
            jnp.broadcast_to(a / num_masks, leaf.shape).astype(_attr_dtype(leaf))
            for a, leaf in zip(acc, leaves, strict=False)
        ]
    result = jax.tree_util.tree_unflatten(treedef, out)
    return _torchray.finish_tree(
        result,
        x,
        reduce=None,
        channel_axis=1,
        resize=resize,
        resize_mode=resize_mode,
        smooth=0.0,
    )
