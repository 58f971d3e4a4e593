"""Perturbation methods: occlusion, ablation, permutation, Shapley values, KernelSHAP, LIME, RISE.

Every method here is black-box: it evaluates ``fn`` on a set of perturbed copies of the
input and combines the scores. The whole perturbation set is one ``vmap``-ped batch;
``batch_size`` evaluates it in chunks of at most that many perturbations per compiled
call (a short Python loop over one jitted chunk function), and the result is the same
chunked or not.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core
from jaxattr._core import Inputs, PyTree
from jaxattr._progress import progress

__all__ = [
    "feature_ablation",
    "feature_permutation",
    "kernel_shap",
    "lime",
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


def _prepare(fn, x, target, args):
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _core.as_inputs(x)
    t = _core.prepare_target(target, fn, inputs, x, args)
    return x, args, inputs, t


def _eager(x: PyTree, show_progress: bool) -> bool:
    return bool(show_progress) and _core.is_concrete(x)


@_core.cached_jit(("fn", "inputs"))
def _base_scores(*, fn, inputs, x, args, target):
    return _core.scores(fn, inputs, x, args, target).astype(jnp.float32)


@_core.cached_jit(("fn", "inputs"))
def _baseline_scores(*, fn, inputs, x, baselines, args, target):
    b = _core.expand_baselines(baselines, x)
    return _core.scores(fn, inputs, b, args, target).astype(jnp.float32)


def _slice_tree(tree, start, stop):
    return jax.tree_util.tree_map(lambda a: a[start:stop], tree)


def _per_leaf_option(value: Any, x: PyTree, name: str) -> list:
    """A geometry option given once (applies to every input) or once per input.

    As in Captum, for an ``x`` with several inputs a tuple or list with one entry per
    input is read per input; anything else applies to every input.
    """
    n_leaves = len(jax.tree_util.tree_leaves(x))
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
        return _core.scores(fn, inputs, xp, args, target).astype(jnp.float32), masks

    s, masks = jax.vmap(one)(starts, leaf_ids, keys)
    w = s if zennit else base[None] - s
    return [jnp.tensordot(w, m.astype(jnp.float32), axes=((0,), (0,))) for m in masks]


def _window_counts(positions, window, dims, wrap):
    """How many windows cover each element (separable: product of per-dim counts)."""
    total = None
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
        total = c if total is None else total * c
    return np.broadcast_to(total, dims)


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
):
    """Evaluate every window of every leaf (one batch, chunked) and combine."""
    leaves, treedef = jax.tree_util.tree_flatten(x)
    starts_per_leaf, leaf_ids, windows = [], [], []
    for idx, (positions, window) in enumerate(geometries):
        grid = np.stack(np.meshgrid(*positions, indexing="ij"), -1).reshape(-1, len(window))
        starts_per_leaf.append(grid.astype(np.int32))
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
    chunks = _core.batched_chunks(total, batch_size, backward=False)
    for start, stop in progress(
        chunks, total=len(chunks), desc="occlusion", enabled=_eager(x, show_progress)
    ):
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
    out = []
    for a, leaf, (positions, window) in zip(acc, leaves, geometries, strict=False):
        if divide:
            counts = _window_counts(positions, window, leaf.shape[1:], wrap)
            a = a / np.where(counts > 0, counts, 1.0).astype(np.float32)
        out.append((a * scale).astype(leaf.dtype))
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

    Returns:
        The attribution with x's structure, shapes and dtypes.

    Raises:
        ValueError: Neither or both of ``sliding_window_shapes`` and ``window``; a window
            larger than the input; a stride larger than the window (Captum mode).

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
    x, args, inputs, t = _prepare(fn, x, target, args)
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
    )


@_core.contract
def tiled_occlusion(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    target: Any = None,
    k: Any = (1, 2, 2),
    window: Any = (3, 10, 10),
    baselines: Any = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree:
    """Tiled occlusion (extra-attributions' ``TiledOcclusion``).

    Occlusion averaged over ``k`` shifted tilings: along every dimension the input is
    tiled by non-overlapping windows of size ``window``, and the ``k`` tilings are shifted
    by multiples of ``window / k``. Every element is covered by exactly one window of each
    tiling (windows at the edges are cut), and its attribution is the mean over the
    ``prod(k)`` tilings of ``f(x) - f(x with that window set to the baseline)``. The
    output resolution is ``window / k``; per dimension there are
    ``(size + window - stride) / stride`` windows (``stride = window / k``), the cost of
    plain occlusion with that stride over the input padded by ``window - stride`` on
    both sides. ``k=1`` is plain (Captum) occlusion with ``strides=window``. All windows
    of all tilings are one batch.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...) with 1 to 4 non-batch dimensions, or a tuple of
            such arrays.
        target: What to explain (see :func:`jaxattr.select_target`).
        k: Tilings per dimension: an int (every dimension) or one per non-batch dimension.
        window: Window size: an int or one per non-batch dimension; divisible by ``k``.
        baselines: Fill value (``None``: zeros), scalar or broadcastable array.
        batch_size: At most this many windows per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes.

    Raises:
        ValueError: ``window`` not divisible by ``k``, a window larger than the input, or
            an input with more than 4 non-batch dimensions.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x.sum(1)
        >>> jaxattr.tiled_occlusion(fn, jnp.ones((1, 4)), k=2, window=2)
        Array([[1.5, 2. , 2. , 1.5]], dtype=float32)
    """
    batch_size = _check_batch_size(batch_size)
    x, args, inputs, t = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    leaves = jax.tree_util.tree_leaves(x)
    geometries = []
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
        positions = []
        for kd, wd, size in zip(kt, wt, dims, strict=False):
            s = wd // kd
            # starts congruent to j*s (mod window) for the k tilings, cut at both edges
            positions.append(np.arange(-(kd - 1) * s, size, s))
        geometries.append((positions, wt))
    # every element is covered by exactly prod(k) windows: dividing by the window count
    # is the mean over the tilings
    return _run_windows(
        fn,
        x,
        args,
        inputs,
        t,
        b,
        geometries,
        wrap=False,
        zennit=False,
        occlusion_fn=None,
        key=None,
        batch_size=batch_size,
        show_progress=show_progress,
        divide=True,
    )


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
    """Scores of the perturbed inputs for a chunk of perturbations.

    ``off`` (P, Nn, F): features replaced (by the baseline, or permuted across the batch
    with ``perm_func``). Also returns each perturbed input's dot product with x, squared
    norm, and squared distance to x (summed over all inputs), for LIME's kernel.
    """
    x_leaves, treedef = jax.tree_util.tree_flatten(x)
    b_leaves = treedef.flatten_up_to(_core.expand_baselines(baselines, x))
    masks = [_gather_mask(off, fm) for fm in fmasks]
    n = inputs.n

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
        s = _core.scores(fn, inputs, xp, args, target).astype(jnp.float32)
        dot = sq = dist = jnp.zeros((n,), jnp.float32)
        for xl, pl in zip(x_leaves, pert, strict=False):
            a = xl.reshape(n, -1).astype(jnp.float32)
            b = pl.reshape(n, -1).astype(jnp.float32)
            dot, sq, dist = dot + (a * b).sum(1), sq + (b * b).sum(1), dist + ((a - b) ** 2).sum(1)
        return s, dot, sq, dist

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
    """Evaluate every perturbation ``off`` (P, Nn, F) in chunks -> four (P, N) arrays."""
    total = off.shape[0]
    outs = []
    chunks = _core.batched_chunks(total, batch_size, backward=False)
    for start, stop in progress(
        chunks, total=len(chunks), desc=desc, enabled=_eager(x, show_progress)
    ):
        outs.append(
            _feature_chunk(
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
        )
    if len(outs) == 1:
        return outs[0]
    return tuple(jnp.concatenate(parts, axis=0) for parts in zip(*outs, strict=False))


def _spread(values: jax.Array, fmasks: list, x: PyTree) -> PyTree:
    """Per-feature values (N, F) -> attribution with x's structure (value of its feature)."""
    leaves, treedef = jax.tree_util.tree_flatten(x)
    out = []
    for leaf, fm in zip(leaves, fmasks, strict=False):
        got = _gather_mask(values[None], jnp.asarray(fm))[0]
        out.append(jnp.broadcast_to(got, leaf.shape).astype(leaf.dtype))
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
) -> PyTree:
    """Feature ablation, Captum's ``FeatureAblation``.

    Each feature (a group of input elements with the same id in ``feature_mask``; by
    default every element is its own feature) is replaced by the baseline in turn, and
    every element of the feature gets ``f(x) - f(x with the feature ablated)``. Feature
    ids are shared across the inputs of a tuple ``x`` (one id ablates its elements in
    every input, as Captum's cross-tensor masks); ids need not be consecutive. All
    ablations are one batch.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        target: What to explain (see :func:`jaxattr.select_target`).
        baselines: Replacement values: ``None`` (zeros), a scalar, or an array
            broadcastable to x (one per input for a tuple).
        feature_mask: Integer ids broadcastable to x (leading dimension 1 or N), one per
            input for a tuple; concrete (not traced).
        batch_size: At most this many ablations per compiled call (Captum's
            ``perturbations_per_eval``).
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (x ** 2).sum(1)
        >>> jaxattr.feature_ablation(fn, jnp.array([[1.0, 2.0, 3.0]]),
        ...                          feature_mask=jnp.array([[0, 0, 1]]))
        Array([[5., 5., 9.]], dtype=float32)
    """
    batch_size = _check_batch_size(batch_size)
    x, args, inputs, t = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    off = jnp.eye(f, dtype=bool)[:, None, :]
    s = _run_features(
        fn, x, args, inputs, t, b, fmasks, off, batch_size, show_progress, "feature_ablation"
    )[0]
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
    feature gets ``f(x) - f(x with the feature permuted)``. Needs N >= 2.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...) with N >= 2, or a tuple/pytree of such arrays.
        key: PRNG key; feature ``i`` (in the order of its id) permutes with
            ``jax.random.split(key, F)[i]`` folded with the input's index.
        target: What to explain (see :func:`jaxattr.select_target`).
        feature_mask: Integer ids broadcastable to x (see :func:`feature_ablation`).
        perm_func: ``perm_func(x_leaf, mask, key) -> perturbed leaf``; default
            :func:`permute_feature`.
        batch_size: At most this many perturbations per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes.

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
    x, args, inputs, t = _prepare(fn, x, target, args)
    if inputs.n < 2:
        raise ValueError(
            f"feature_permutation shuffles features across the batch and needs "
            f"N >= 2 examples, got N={inputs.n}"
        )
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    off = jnp.eye(f, dtype=bool)[:, None, :]
    keys = jax.random.split(key, f)
    b = _core.broadcast_baselines(None, x, inputs)
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
        keys=keys,
        perm_func=perm_func,
    )[0]
    base = _base_scores(fn=fn, inputs=inputs, x=x, args=args, target=t)
    return _spread((base[None] - s).T, fmasks, x)


@functools.partial(jax.jit, static_argnums=(1, 2))
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
    x, args, inputs, t = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    perms = shapley_permutations(key, f, n_samples)
    return _shapley_from_orders(fn, x, args, inputs, t, b, fmasks, perms, batch_size, show_progress)


def _shapley_from_orders(fn, x, args, inputs, t, b, fmasks, perms, batch_size, show_progress):
    s_count, f = perms.shape
    rank = jnp.argsort(perms, axis=1)  # rank[s, feature] = its position in order s
    steps = jnp.arange(f)
    # perturbation (s, k): features at positions > k still at the baseline
    off = rank[:, None, :] > steps[None, :, None]  # (S, F, F)
    off = off.reshape(s_count * f, 1, f)
    s = _run_features(
        fn, x, args, inputs, t, b, fmasks, off, batch_size, show_progress, "shapley_value_sampling"
    )[0]
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
    x, args, inputs, t = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
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
    )[0]
    return _spread((jnp.asarray(coef) @ s).T, fmasks, x)


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


def _weighted_center(z, y, w):
    p = w / jnp.sum(w)
    zbar = p @ z
    ybar = p @ y
    return z - zbar, y - ybar, p, zbar, ybar


def fit_linear(z: jax.Array, y: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted least squares with intercept (minimum-norm): ``(coef (F,), intercept)``.

    What scikit-learn's ``LinearRegression().fit(z, y, sample_weight=w)`` computes.
    """
    zc, yc, p, zbar, ybar = _weighted_center(z, y, w)
    sq = jnp.sqrt(p)
    coef = jnp.linalg.lstsq(zc * sq[:, None], yc * sq)[0]
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


@functools.partial(jax.jit, static_argnums=0)
def _fit(model, z, y, w, alpha):
    if model == "linear":
        return jax.vmap(lambda y_, w_, z_: fit_linear(z_, y_, w_)[0])(y, w, z)
    return jax.vmap(lambda y_, w_, z_: fit_lasso(z_, y_, w_, alpha)[0])(y, w, z)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def kernel_shap_samples(key: jax.Array, n: int, n_features: int, n_samples: int) -> jax.Array:
    """The binary coalitions :func:`kernel_shap` draws: (N, n_samples, F), 1 = from x.

    As Captum: the first sample is all ones, the second all zeros, then the number of
    features ``k`` is drawn with ``p(k) ~ (F - 1) / (k (F - k))`` and ``k`` features are
    chosen uniformly (the top ``k`` of a normal draw).
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


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def lime_samples(key: jax.Array, n: int, n_features: int, n_samples: int) -> jax.Array:
    """The binary samples :func:`lime` draws: (N, n_samples, F), each bit Bernoulli(0.5)."""
    return jax.random.bernoulli(key, 0.5, (n, n_samples, n_features))


def _surrogate(
    fn,
    x,
    args,
    inputs,
    t,
    b,
    fmasks,
    f,
    z,
    batch_size,
    show_progress,
    desc,
    weights_fn,
    model,
    alpha,
):
    n, s_count, _ = z.shape
    off = jnp.swapaxes(~z, 0, 1)  # (S, N, F)
    s, dot, sq, dist = _run_features(
        fn, x, args, inputs, t, b, fmasks, off, batch_size, show_progress, desc
    )
    w = weights_fn(z, dot.T, sq.T, dist.T)  # (N, S)
    coef = _fit(model, z.astype(jnp.float32), s.T, w, alpha)
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
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree:
    """KernelSHAP (Lundberg and Lee, 2017), Captum's ``KernelShap``.

    Draws ``n_samples`` coalitions per example (:func:`kernel_shap_samples`), evaluates
    x with the absent features at the baseline, and fits a weighted linear regression of
    the scores on the coalitions in JAX; the weights are Captum's (1e6 for the empty and
    full coalitions, 1 otherwise, the Shapley kernel being in the sampling). The
    coefficient of a feature is given to all of its elements.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        key: PRNG key for the coalitions.
        target: What to explain (see :func:`jaxattr.select_target`).
        baselines: ``None`` (zeros), a scalar or an array broadcastable to x.
        feature_mask: Integer ids broadcastable to x (see :func:`feature_ablation`).
        n_samples: Coalitions per example.
        batch_size: At most this many coalitions per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (2.0 * x).sum(1)
        >>> attr = jaxattr.kernel_shap(fn, jnp.ones((1, 3)), key=jax.random.key(0))
        >>> attr.round(3)
        Array([[2., 2., 2.]], dtype=float32)
    """
    key = _core.check_key(key, "kernel_shap")
    n_samples = _core.check_positive_int(n_samples, "n_samples")
    batch_size = _check_batch_size(batch_size)
    x, args, inputs, t = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    z = kernel_shap_samples(key, inputs.n, f, n_samples)

    def weights(z, dot, sq, dist):
        k = z.sum(-1)
        return jnp.where((k == 0) | (k == f), 1e6, 1.0).astype(jnp.float32)

    return _surrogate(
        fn,
        x,
        args,
        inputs,
        t,
        b,
        fmasks,
        f,
        z,
        batch_size,
        show_progress,
        "kernel_shap",
        weights,
        "linear",
        0.0,
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
    interpretable_model: str = "lasso",
    alpha: float = 0.01,
    distance_mode: str = "cosine",
    kernel_width: float = 1.0,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree:
    """LIME (Ribeiro et al., 2016), Captum's ``Lime`` with its defaults.

    Draws ``n_samples`` binary vectors per example (each feature kept with probability
    0.5, :func:`lime_samples`), evaluates x with the dropped features at the baseline,
    weights each sample by the exponential kernel ``exp(-d^2 / (2 width^2))`` of its
    distance ``d`` to x in input space (cosine distance by default), and fits an
    interpretable linear model in JAX: Lasso with ``alpha=0.01`` (scikit-learn's
    objective, by coordinate descent) or weighted linear regression. The coefficient of
    a feature is given to all of its elements.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, ...), or a tuple/pytree of such arrays.
        key: PRNG key for the samples.
        target: What to explain (see :func:`jaxattr.select_target`).
        baselines: ``None`` (zeros), a scalar or an array broadcastable to x.
        feature_mask: Integer ids broadcastable to x (see :func:`feature_ablation`).
        n_samples: Samples per example.
        interpretable_model: ``"lasso"`` or ``"linear"``.
        alpha: The Lasso's L1 weight.
        distance_mode: ``"cosine"`` or ``"euclidean"``.
        kernel_width: Width of the exponential similarity kernel.
        batch_size: At most this many samples per compiled call.
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: (2.0 * x).sum(1)
        >>> attr = jaxattr.lime(fn, jnp.ones((1, 3)), key=jax.random.key(0),
        ...                     interpretable_model="linear")
        >>> attr.round(3)
        Array([[2., 2., 2.]], dtype=float32)
    """
    key = _core.check_key(key, "lime")
    n_samples = _core.check_positive_int(n_samples, "n_samples")
    batch_size = _check_batch_size(batch_size)
    _core.check_choice(interpretable_model, "interpretable_model", ("lasso", "linear"))
    _core.check_choice(distance_mode, "distance_mode", ("cosine", "euclidean"))
    if not isinstance(kernel_width, (int, float)) or kernel_width <= 0:
        raise ValueError(f"kernel_width must be a float > 0, got {kernel_width!r}")
    if not isinstance(alpha, (int, float)) or alpha < 0:
        raise ValueError(f"alpha must be a float >= 0, got {alpha!r}")
    x, args, inputs, t = _prepare(fn, x, target, args)
    b = _core.broadcast_baselines(baselines, x, inputs)
    fmasks, f = _feature_masks(feature_mask, x, inputs)
    z = lime_samples(key, inputs.n, f, n_samples)
    x_sq = sum(
        (leaf.reshape(inputs.n, -1).astype(jnp.float32) ** 2).sum(1)
        for leaf in jax.tree_util.tree_leaves(x)
    )

    def weights(z, dot, sq, dist):
        if distance_mode == "cosine":
            denom = jnp.maximum(jnp.sqrt(x_sq)[:, None] * jnp.sqrt(sq), 1e-8)
            d = 1.0 - dot / denom
        else:
            d = jnp.sqrt(dist)
        return jnp.exp(-(d**2) / (2.0 * kernel_width**2))

    return _surrogate(
        fn,
        x,
        args,
        inputs,
        t,
        b,
        fmasks,
        f,
        z,
        batch_size,
        show_progress,
        "lime",
        weights,
        interpretable_model,
        float(alpha),
    )


# --------------------------------------------------------------------------------------
# RISE
# --------------------------------------------------------------------------------------


def _spatial_axes(leaf) -> tuple[int, ...]:
    """Axes the RISE / extremal masks cover: all after the channel axis (axis 1) for
    inputs with 2+ non-batch dims, else the single non-batch axis."""
    if leaf.ndim >= 3:
        return tuple(range(2, leaf.ndim))
    return (1,)


def _upsample_reflect(grid: jax.Array, cell: tuple, out: tuple) -> jax.Array:
    """TorchRay's RISE upsampling: reflect-pad by one cell, (multi)linear resize, crop."""
    nd = len(cell)
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
    probability ``p``, upsampled (multi)linearly to the input size plus one cell, and
    cropped at a random shift below one cell.
    """
    cell = tuple(int(math.ceil(s / num_cells)) for s in spatial)
    up_size = tuple(s + c for s, c in zip(spatial, cell, strict=False))
    k_grid, k_shift = jax.random.split(key)
    grid = jax.random.uniform(k_grid, (num_masks, *(num_cells,) * len(spatial))) < p
    up = _upsample_reflect(grid.astype(jnp.float32), cell, up_size)
    shifts = jnp.stack(
        [
            jax.random.randint(k, (num_masks,), 0, c)
            for k, c in zip(jax.random.split(k_shift, len(spatial)), cell, strict=False)
        ],
        axis=1,
    )
    return jax.vmap(lambda u, s: jax.lax.dynamic_slice(u, tuple(s), spatial))(up, shifts)


@_core.cached_jit(("fn", "inputs", "output_fn", "num_cells"))
def _rise_chunk(*, fn, inputs, x, keys, p, num_cells, args, target, output_fn):
    leaves, treedef = jax.tree_util.tree_flatten(x)

    def one_leaf_masks(k, idx, leaf):
        axes = _spatial_axes(leaf)
        spatial = tuple(leaf.shape[a] for a in axes)
        m = rise_masks(jax.random.fold_in(k, idx), spatial, 1, num_cells, p)[0]
        shape = [1] * (leaf.ndim - 1)
        for a in axes:
            shape[a - 1] = leaf.shape[a]
        return m.reshape(shape).astype(leaf.dtype)

    def one(k):
        masks = [one_leaf_masks(k, i, leaf) for i, leaf in enumerate(leaves)]
        masked = [leaf * m for leaf, m in zip(leaves, masks, strict=True)]
        xp = jax.tree_util.tree_unflatten(treedef, masked)
        y = inputs.call(fn, xp, args)
        if output_fn is not None:
            y = output_fn(y)
        return _core.target_score(y, target).astype(jnp.float32), masks

    s, masks = jax.vmap(one)(keys)
    return [jnp.tensordot(s, m.astype(jnp.float32), axes=((0,), (0,))) for m in masks]


@_core.contract
def rise(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    key: jax.Array | None = None,
    target: Any = None,
    num_masks: int = 8000,
    num_cells: int = 7,
    p: float = 0.5,
    batch_size: int | None = 32,
    output_fn: Callable[[jax.Array], jax.Array] | None = jax.nn.sigmoid,
    show_progress: bool = False,
    args: tuple = (),
) -> PyTree:
    """RISE (Petsiuk et al., 2018), TorchRay's ``rise``.

    Evaluates x multiplied by ``num_masks`` random smooth masks (:func:`rise_masks`) and
    returns ``sum_m score_m * mask_m / num_masks``, the score being the target of
    ``output_fn(fn(x * mask))`` (TorchRay applies a sigmoid). The masks cover the spatial
    axes (all axes after the channel axis 1; the single axis of an (N, D) input) and are
    shared across channels, so the saliency is the same in every channel. Every example
    uses the same masks. The masks are one batch, ``batch_size`` per compiled call.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, C, *spatial) or (N, D), or a tuple of such arrays
            (each input gets its own masks).
        key: PRNG key for the masks (mask ``m`` uses ``jax.random.split(key, num_masks)[m]``).
        target: What to explain (see :func:`jaxattr.select_target`).
        num_masks: Number of random masks.
        num_cells: Cells of the low-resolution grid per spatial axis.
        p: Probability that a cell is kept (1).
        batch_size: At most this many masks per compiled call.
        output_fn: Applied to the model output before the target is selected
            (``jax.nn.sigmoid`` as TorchRay; ``None`` for the raw output).
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional arrays passed to ``fn`` after ``x``; not attributed.

    Returns:
        The saliency with x's structure, shapes and dtypes.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x[:, 0, :4, :4].mean((1, 2))[:, None]
        >>> sal = jaxattr.rise(fn, jnp.ones((1, 1, 8, 8)), key=jax.random.key(0),
        ...                    num_masks=256, num_cells=4, target=0, output_fn=None)
        >>> bool(sal[0, 0, :4, :4].mean() > sal[0, 0, 4:, 4:].mean())
        True
    """
    key = _core.check_key(key, "rise")
    num_masks = _core.check_positive_int(num_masks, "num_masks")
    num_cells = _core.check_positive_int(num_cells, "num_cells")
    batch_size = _check_batch_size(batch_size)
    if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    x, args, inputs, t = _prepare(fn, x, target, args)
    keys = jax.random.split(key, num_masks)
    acc = None
    chunks = _core.batched_chunks(num_masks, batch_size, backward=False)
    for start, stop in progress(
        chunks, total=len(chunks), desc="rise", enabled=_eager(x, show_progress)
    ):
        part = _rise_chunk(
            fn=fn,
            inputs=inputs,
            x=x,
            keys=keys[start:stop],
            p=float(p),
            num_cells=num_cells,
            args=args,
            target=t,
            output_fn=output_fn,
        )
        acc = part if acc is None else [a + q for a, q in zip(acc, part, strict=False)]
    leaves, treedef = jax.tree_util.tree_flatten(x)
    out = [
        jnp.broadcast_to(a / num_masks, leaf.shape).astype(leaf.dtype)
        for a, leaf in zip(acc, leaves, strict=False)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)
