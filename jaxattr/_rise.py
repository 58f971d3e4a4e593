"""RISE: randomized input sampling, with masks drawn as TorchRay draws them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core, _torchray
from jaxattr._core import PyTree
from jaxattr._perturbation import (
    _attr_dtype,
    _check_batch_size,
    _eager,
    _per_example_scalar,
    _prepare,
)
from jaxattr._progress import progress, sync

__all__ = [
    "rise",
]

Model = Any


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
        masked = [
            leaf * _core.expand_rank(m.astype(leaf.dtype), leaf.ndim)
            for leaf, m in zip(leaves, ms, strict=True)
        ]
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
