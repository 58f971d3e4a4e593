"""Occlusion: sliding windows (Captum), tiled windows (Zennit), independent features."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core, _incremental
from jaxattr._core import PyTree
from jaxattr._perturbation import (
    _attr_dtype,
    _base_scores,
    _check_batch_size,
    _eager,
    _int_tuple,
    _n_outputs,
    _per_leaf_option,
    _prepare,
    _scores,
)
from jaxattr._progress import progress, sync

__all__ = [
    "occlude_independent",
    "occlusion",
    "tiled_occlusion",
]

Model = Any


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
        i = jnp.arange(size, dtype=jnp.result_type(start))  # int64 starts under x64
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
    return [jnp.tensordot(w, m.astype(w.dtype), axes=((0,), (0,))) for m in masks]


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
            a = a / jnp.asarray(np.where(counts > 0, counts, 1.0), a.dtype)[None]
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
            a = acc / jnp.asarray(np.where(counts > 0, counts, 1.0), acc.dtype)[None]
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
    acc_dtypes = [_core.at_least_float32(_attr_dtype(leaf)) for leaf in leaves]
    totals = [
        jnp.zeros((n_out, *leaf.shape[1:]), d) for leaf, d in zip(leaves, acc_dtypes, strict=True)
    ]
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
        )[i].astype(acc_dtypes[i])
        for d, (kd, wd, jd) in enumerate(zip(kt, wt, j, strict=True)):
            if kd > 1:
                attr = _unshift(attr, d + 1, wd // kd, jd, leaf.shape[d + 1])
        totals[i] = sync(totals[i] + attr, show)
    out = [a.astype(_attr_dtype(leaf)) for a, leaf in zip(totals, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)
