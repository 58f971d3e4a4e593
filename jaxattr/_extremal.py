"""Extremal perturbations (Fong et al., 2019), TorchRay's algorithm step for step."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core, _torchray
from jaxattr._core import PyTree
from jaxattr._rise import _spatial_axes

__all__ = ["extremal_perturbation", "smooth_mask"]

PERTURBATIONS = ("blur", "fade")
VARIANTS = ("preserve", "delete", "dual")
REWARDS = ("simple", "contrastive")
#: TorchRay's softmax-pooling coldness of the smooth mask.
COLDNESS = 20.0
#: TorchRay's optimiser: SGD, momentum 0.9 with dampening 0.9.
MOMENTUM = 0.9
#: The growth of the area regulariser's weight per iteration.
REGUL_GROWTH = 1.0035
#: The value TorchRay's contrastive reward gives the target before taking the max of the
#: other outputs.
CONTRAST_FILL = -100.0


@_caching.lru(32)
def _mask_tables(spatial: tuple, step: int, sigma: float):
    """TorchRay's ``MaskGenerator`` geometry, in float32 as TorchRay computes it.

    The mask is produced on an extended grid ``shape_out`` (the input plus a margin of
    ``sigma`` pixels before it and some after). Output pixel ``u`` (per axis) reads the
    parameter cells ``floor(u * mid / up) + k - padding`` for ``k`` in ``[0, 2 radius]``
    (cells outside the parameter grid read zero); a cell ``i`` sits at pixel
    ``margin + step * i`` and weighs ``exp(-2 max(d / sigma - 1/2, 0)^2)`` at distance
    ``d``.

    Returns:
        ``(shape_in, padding, index, weight, shape_out, crop)``: ``index[d]`` (out_d, K_d)
        indexes axis d of the parameters padded by ``padding``; ``weight`` (U, K) over the
        flattened output pixels and neighbour offsets; ``crop`` is where the input starts.
    """
    margin = float(sigma)
    padding = 1 + int(math.ceil((margin + sigma) / step))
    radius = 1 + int(math.ceil(sigma / step))
    kk = 2 * radius + 1
    shape_in = tuple(int(math.ceil(z / step)) for z in spatial)
    shape_mid = tuple(z + 2 * padding - kk + 1 for z in shape_in)
    shape_up = tuple(step * z for z in shape_mid)
    shape_out = tuple(z - step + 1 for z in shape_up)
    index, centres, coords = [], [], []
    for mid, up, out in zip(shape_mid, shape_up, shape_out, strict=True):
        step_inv = np.float32(mid) / np.float32(up)
        u = np.arange(out, dtype=np.float32)
        base = np.floor(u * step_inv)  # torch's nearest-neighbour source index, float32
        k = np.arange(kk, dtype=np.float32)
        cell = base[:, None] + k[None, :] - np.float32(padding)  # (out, K_d)
        index.append((base.astype(np.int64)[:, None] + np.arange(kk)[None, :]).astype(np.int32))
        centres.append(np.float32(margin) + np.float32(step) * cell)
        coords.append(u)
    d = len(spatial)
    sq = None
    for ax in range(d):
        # (u_ax - c_ax)^2 laid out over (out_0..out_{d-1}, K_0..K_{d-1})
        diff = coords[ax][:, None] - centres[ax]
        shape = [1] * (2 * d)
        shape[ax], shape[d + ax] = diff.shape
        term = (diff * diff).reshape(shape)
        sq = term if sq is None else sq + term
    delta = np.sqrt(sq).astype(np.float32)
    z = np.maximum(delta / np.float32(sigma) - np.float32(0.5), np.float32(0))
    weight = np.exp(np.float32(-2) * z * z).astype(np.float32)
    weight = weight.reshape(math.prod(shape_out), kk**d)
    crop = round(margin)
    for size, out in zip(spatial, shape_out, strict=True):
        if crop + size > out:
            raise ValueError(
                f"step={step} and sigma={sigma:g}: TorchRay's mask grid ({out} pixels with a "
                f"margin of {crop}) does not cover an axis of {size} pixels (TorchRay fails "
                f"there too); use a sigma that is a multiple of step, as its defaults 7 and 21"
            )
    return shape_in, padding, tuple(index), weight, shape_out, crop


def _full_mask(params: jax.Array, spatial: tuple, step: int, sigma: float, weight=None):
    """The clamped mask on TorchRay's extended grid: (..., *shape_out)."""
    shape_in, padding, index, table, shape_out, _ = _mask_tables(spatial, step, sigma)
    d = len(spatial)
    lead = params.shape[: params.ndim - d]
    padded = jnp.pad(params, [(0, 0)] * len(lead) + [(padding, padding)] * d)
    idx = []
    for ax, ind in enumerate(index):
        shape = [1] * (2 * d)
        shape[ax], shape[d + ax] = ind.shape
        idx.append(ind.reshape(shape))
    vals = padded[(Ellipsis, *idx)]  # (..., *shape_out, *K_d)
    vals = vals.reshape(*lead, table.shape[0], table.shape[1])
    a = vals * _core.expand_rank(table if weight is None else weight, vals.ndim)
    m = jnp.sum(a * jax.nn.softmax(COLDNESS * a, axis=-1), axis=-1)
    return jnp.clip(m, 0.0, 1.0).reshape(*lead, *shape_out)


def _crop(full: jax.Array, spatial: tuple, crop: int) -> jax.Array:
    d = len(spatial)
    idx = (Ellipsis, *[slice(crop, crop + s) for s in spatial])
    assert full.ndim >= d
    return full[idx]


def smooth_mask(params: jax.Array, spatial: tuple, step: int = 7, sigma: float = 21.0) -> jax.Array:
    """TorchRay's smooth mask (its ``MaskGenerator``) from its low-resolution parameters.

    Args:
        params: Parameters of shape (..., *ceil(spatial / step)) in [0, 1].
        spatial: The mask's spatial shape.
        step: Parameterisation step in pixels.
        sigma: Smoothing kernel size in pixels (also the margin of the extended grid).

    Returns:
        A mask of shape (..., *spatial) in [0, 1]: at every pixel, the softmax-pooled
        (coldness 20) kernel-weighted parameters of the nearby cells, cropped from
        TorchRay's extended grid as its ``MaskGenerator.generate`` does.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> jaxattr.smooth_mask(jnp.ones((2, 2)), (8, 8), step=4, sigma=4.0).shape
        (8, 8)
    """
    return _smooth_mask(
        jnp.asarray(params),
        spatial=tuple(int(s) for s in spatial),
        step=int(step),
        sigma=float(sigma),
    )


@functools.partial(_caching.jit, static_argnames=("spatial", "step", "sigma"))
def _smooth_mask(params, *, spatial, step, sigma):
    crop = _mask_tables(spatial, step, sigma)[5]
    return _crop(_full_mask(params, spatial, step, sigma), spatial, crop)


def _pyramid(leaf, axes, num_levels, kind, max_blur):
    """TorchRay's ``Perturbation`` pyramid: level l is blurred with standard deviation
    ``(1 - l / (L-1)) max_blur`` (zero padding) or faded to ``l / (L-1)`` of x."""
    levels = []
    for lev in np.linspace(0.0, 1.0, num_levels, dtype=np.float32):
        if kind == "blur":
            sigma = float((np.float32(1) - lev) * np.float32(max_blur))
            levels.append(_torchray.imsmooth(leaf, sigma, axes, "constant").astype(leaf.dtype))
        else:
            levels.append(leaf * lev.astype(leaf.dtype))
    return jnp.stack(levels)  # (L, N, ...)


def _apply(pyr, mask, num_levels):
    """Pick a pyramid level per element by the mask (linear between levels).

    ``pyr`` (L, N, ...), ``mask`` (K, N, ...) broadcastable -> (K, N, ...).
    """
    w = mask * (num_levels - 1)
    k = jnp.floor(jax.lax.stop_gradient(w))
    frac = w - k
    k = k.astype(jnp.int32)
    shape = jnp.broadcast_shapes(mask.shape, (mask.shape[0], *pyr.shape[1:]))
    k0 = jnp.broadcast_to(k, shape)
    k1 = jnp.minimum(k0 + 1, num_levels - 1)
    take = jax.vmap(lambda kk: jnp.take_along_axis(pyr, kk[None], axis=0)[0])
    frac, y0, y1 = _core.promote(frac, take(k0), take(k1))
    return ((1 - frac) * y0 + frac * y1).astype(pyr.dtype)


def _reward(y, target, reward_func):
    """The reward of each perturbed example, (N,): TorchRay's ``simple_reward`` (the
    target), ``contrastive_reward`` (the target minus the largest other output, the
    target itself counted as -100) or a callable's output averaged over its trailing axes
    (TorchRay's spatial mean)."""
    if callable(reward_func):
        r = jnp.asarray(reward_func(y)).astype(jnp.float32)
        return r.reshape(r.shape[0], -1).mean(axis=1) if r.ndim > 1 else r
    s = _core.target_score(y, target).astype(jnp.float32)
    if reward_func == "simple":
        return s
    sel = jax.grad(lambda y_: jnp.sum(_core.target_score(y_, target)))(y)
    others = jnp.where(sel != 0, jnp.asarray(CONTRAST_FILL, y.dtype), y)
    return s - jnp.max(others.reshape(y.shape[0], -1), axis=1).astype(jnp.float32)


@_core.cached_jit(
    (
        "fn",
        "inputs",
        "areas",
        "perturbation",
        "variant",
        "max_iter",
        "num_levels",
        "step",
        "sigma",
        "max_blur",
        "jitter",
        "reward_func",
    )
)
def _extremal_core(
    *,
    fn,
    inputs,
    x,
    args,
    target,
    areas,
    perturbation,
    variant,
    max_iter,
    num_levels,
    step,
    sigma,
    max_blur,
    jitter,
    reward_func,
    learning_rate,
    regul_weights,
    weights,
):
    leaves, treedef = jax.tree_util.tree_flatten(x)
    n = inputs.n
    n_areas = len(areas)
    geo = []
    for leaf in leaves:
        axes = _spatial_axes(leaf)
        spatial = tuple(leaf.shape[a] for a in axes)
        shape_in, _, _, _, shape_out, crop = _mask_tables(spatial, step, sigma)
        mshape = [1] * (leaf.ndim - 1)
        for a in axes:
            mshape[a - 1] = leaf.shape[a]
        u = math.prod(shape_out)
        zeros = jnp.asarray([int(u * (1 - a)) for a in areas], jnp.int32)
        ref = (jnp.arange(u, dtype=jnp.int32)[None, :] >= zeros[:, None]).astype(jnp.float32)
        geo.append((axes, spatial, shape_in, tuple(mshape), ref, crop))
    pyramids = [
        _pyramid(leaf, g[0], num_levels, perturbation, max_blur)
        for leaf, g in zip(leaves, geo, strict=True)
    ]

    def masks_of(pm):
        """Per leaf: (full mask (A, N, *shape_out), cropped mask (A, N, *mask_shape))."""
        out = []
        for p, w, (_, spatial, _, mshape, _, crop) in zip(pm, weights, geo, strict=True):
            full = _full_mask(p, spatial, step, sigma, w)
            out.append((full, _crop(full, spatial, crop).reshape(n_areas, n, *mshape)))
        return out

    def energy(pm, t, weight):
        masks = masks_of(pm)
        cropped = [m for _, m in masks]
        parts = []
        if variant in ("preserve", "dual"):
            parts.append([_apply(p, m, num_levels) for p, m in zip(pyramids, cropped, strict=True)])
        if variant in ("delete", "dual"):
            parts.append(
                [_apply(p, 1 - m, num_levels) for p, m in zip(pyramids, cropped, strict=True)]
            )
        batch = [jnp.concatenate(ls) for ls in zip(*parts, strict=True)]  # (K, N, ...)
        if jitter:
            flip = (t % 2) == 0
            batch = [jnp.where(flip, jnp.flip(b, axis=b.ndim - 1), b) for b in batch]

        def score(*xs):
            xp = jax.tree_util.tree_unflatten(treedef, list(xs))
            return _reward(inputs.call(fn, xp, args), target, reward_func)

        r = jax.vmap(score)(*batch)  # (K, N)
        if variant == "preserve":
            reward = r
        elif variant == "delete":
            reward = -r
        else:
            reward = r[:n_areas] - r[n_areas:]
        regul = jnp.zeros((n_areas, n), jnp.float32)
        for (full, _), (*_, ref, _) in zip(masks, geo, strict=True):
            flat = jnp.sort(full.reshape(n_areas, n, -1), axis=-1)
            regul = regul - jnp.mean((flat - ref[:, None, :]) ** 2, axis=-1) * weight
        return -jnp.sum(reward + regul), (reward, regul, cropped)

    pm0 = [jnp.ones((n_areas, n, *g[2]), jnp.float32) for g in geo]
    grad_fn = jax.grad(energy, has_aux=True)

    def body(t, carry):
        pm, buf, hist, _ = carry
        grads, (reward, regul, cropped) = grad_fn(pm, t, regul_weights[t])
        # torch.optim.SGD(momentum=0.9, dampening=0.9): the first step's buffer is the
        # gradient itself, later ones 0.9 * buffer + 0.1 * gradient
        buf = [
            jnp.where(t == 0, g, MOMENTUM * b + (1 - MOMENTUM) * g)
            for b, g in zip(buf, grads, strict=True)
        ]
        pm = [jnp.clip(p - learning_rate * b, 0.0, 1.0) for p, b in zip(pm, buf, strict=True)]
        hist = hist.at[t].set(jnp.stack([reward, regul], axis=-1))  # (A, N, 2)
        return pm, buf, hist, cropped

    hist0 = jnp.zeros((max_iter, n_areas, n, 2), jnp.float32)
    zeros = [jnp.zeros_like(p) for p in pm0]
    # TorchRay returns the mask of the last iteration, made before its parameter update
    # (with no iteration: the initial mask)
    first = [m for _, m in masks_of(pm0)]
    _, _, hist, masks = jax.lax.fori_loop(0, max_iter, body, (pm0, zeros, hist0, first))
    return masks, jnp.transpose(hist, (2, 1, 3, 0))  # (N, A, 2, T)


@_core.contract
def extremal_perturbation(
    fn: Callable[..., Any],
    x: PyTree,
    *,
    target: Any = None,
    areas: float | Sequence[float] = 0.1,
    perturbation: str = "blur",
    variant: str = "preserve",
    max_iter: int = 800,
    num_levels: int = 8,
    step: int = 7,
    sigma: float = 21.0,
    max_blur: float = 20.0,
    jitter: bool = True,
    smooth: float = 0.0,
    reward_func: str | Callable[[jax.Array], jax.Array] = "simple",
    learning_rate: float = 0.01,
    regul_weight: float = 300.0,
    args: tuple = (),
    resize: bool | str | Sequence[int] = False,
    resize_mode: str = "bilinear",
    return_history: bool = False,
) -> PyTree | tuple[PyTree, jax.Array]:
    """Extremal perturbations (Fong, Patrick and Vedaldi, 2019), TorchRay's algorithm.

    Finds, for each area ``a``, a smooth mask covering a fraction ``a`` of the input that
    maximises the target when only the masked region is kept (``preserve``), minimises it
    when the region is perturbed (``delete``), or both (``dual``). The mask is
    parameterised on a grid of step ``step`` and smoothed with TorchRay's kernel of size
    ``sigma`` on TorchRay's extended grid (:func:`smooth_mask`); the perturbation picks,
    per element, a level of a ``num_levels`` pyramid of increasingly blurred (``blur``,
    up to ``max_blur``, zero padding) or faded (``fade``) copies of x. The area is enforced
    by TorchRay's ranking regulariser on the extended mask (weight ``regul_weight``,
    growing by 1.0035 per iteration); the parameters start at 1 and are optimised for
    ``max_iter`` iterations by TorchRay's SGD (learning rate ``learning_rate``, momentum
    0.9, dampening 0.9, the first step undamped), clipped to [0, 1] after each step.
    ``jitter`` flips the input's last axis on even iterations (TorchRay's "jitter" is
    this deterministic flip, so the method has no randomness). Every example is optimised
    at once, all in one compiled loop; the final mask is resized (``resize``) and then
    smoothed (``smooth``) as TorchRay does.

    TorchRay's ``extremal_perturbation(model, x, target, areas, ...)`` with the same
    options returns ``(masks, hist)``: here ``return_history=True``. Its
    ``reward_func=contrastive_reward`` is ``"contrastive"``; TorchRay's version
    broadcasts wrongly with several areas (each area's reward mixes in the others'
    target scores), so the two agree for one area only. A callable ``reward_func`` here
    takes the model output of the perturbed batch and returns one reward per example
    (averaged over any further axes, TorchRay's spatial mean); the variant is applied to
    it (negated for ``delete``, preserve minus delete for ``dual``), which is what
    TorchRay's built-in rewards do with their ``variant`` argument.

    Masks cover the spatial axes (all axes after the channel axis 1; the single axis of
    an (N, D) input) and are shared over channels; any number of spatial axes works
    (TorchRay: two).

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, C, *spatial) or (N, D), or a tuple of such arrays.
        target: What to explain (see :func:`jaxattr.select_target`); may be left out
            with a callable ``reward_func``.
        areas: The target area fraction, or a sequence of them (TorchRay's ``areas``).
        perturbation: ``"blur"`` or ``"fade"``.
        variant: ``"preserve"``, ``"delete"`` or ``"dual"``.
        max_iter: Optimisation steps.
        num_levels: Levels of the perturbation pyramid.
        step: Mask parameterisation step (pixels).
        sigma: Mask smoothing kernel size (pixels).
        max_blur: Standard deviation of the strongest blur (TorchRay's ``Perturbation``
            default, 20).
        jitter: Flip the last axis on even iterations.
        smooth: If > 0, blur the final mask with TorchRay's ``imsmooth`` of standard
            deviation ``smooth * min(spatial)`` (zero padding), after resizing.
        reward_func: ``"simple"`` (the target score), ``"contrastive"`` (the target
            minus the largest other output) or a callable ``y -> (batch, ...)`` reward.
        learning_rate: SGD learning rate.
        regul_weight: Initial weight of the area regulariser.
        args: Extra positional arrays passed to ``fn`` after ``x``; not perturbed.
        resize: ``False``; ``True`` (or ``"input"``) for x's spatial size; a tuple in
            TorchRay's (width, height) order.
        resize_mode: ``"bilinear"`` (TorchRay's default), ``"linear"``, ``"trilinear"``
            or ``"nearest"``.
        return_history: Also return TorchRay's energy history ``hist``.

    Returns:
        The mask, broadcast to x's structure, shapes and dtypes for a single float area;
        for a sequence of areas, leaves of shape (len(areas), *x_leaf.shape) (``resize``
        changes the spatial sizes). With ``return_history``, ``(masks, history)``:
        ``history`` has shape (N, len(areas), 2, max_iter), the reward and the
        regulariser term of every area at every iteration, before its update (TorchRay's
        ``hist`` for each example).

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: 100.0 * x[:, 0, 8:16, 8:16].mean((1, 2))[:, None]
        >>> x = jnp.ones((1, 1, 24, 24))
        >>> m, hist = jaxattr.extremal_perturbation(fn, x, target=0, areas=0.12,
        ...     max_iter=200, step=4, sigma=8.0, perturbation="fade", return_history=True)
        >>> bool(m[0, 0, 10:14, 10:14].mean() > m[0, 0, :4, :4].mean()), hist.shape
        (True, (1, 1, 2, 200))
    """
    _core.check_choice(perturbation, "perturbation", PERTURBATIONS)
    _core.check_choice(variant, "variant", VARIANTS)
    if not callable(reward_func):
        _core.check_choice(reward_func, "reward_func", REWARDS)
    max_iter = _core.check_positive_int(max_iter, "max_iter", 0)
    num_levels = _core.check_positive_int(num_levels, "num_levels", 2)
    step = _core.check_positive_int(step, "step")
    resize, resize_mode, smooth = _torchray.check_options(resize, resize_mode, smooth)
    single = isinstance(areas, (int, float, np.number))
    area_list = (float(areas),) if single else tuple(float(a) for a in areas)
    if not area_list or any(not 0.0 < a <= 1.0 for a in area_list):
        raise ValueError(f"areas must be fractions in (0, 1], got {areas!r}")
    for name, value in (("sigma", sigma), ("max_blur", max_blur)):
        if not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _core.as_inputs(x)
    if callable(reward_func) and target is None:  # the reward selects what it explains
        t = None
    else:
        t = _core.prepare_target(target, fn, inputs, x, args)
    leaves, treedef = jax.tree_util.tree_flatten(x)
    tables = []
    for leaf in leaves:
        spatial = tuple(leaf.shape[a] for a in _spatial_axes(leaf))
        tables.append(jnp.asarray(_mask_tables(spatial, step, float(sigma))[3]))
    # the regulariser's weight, multiplied by 1.0035 after every step in double precision
    # and used in float32 (as TorchRay's Python float times a float32 tensor)
    weights = float(regul_weight) * REGUL_GROWTH ** np.arange(max(max_iter, 1), dtype=np.float64)
    masks, hist = _extremal_core(
        fn=fn,
        inputs=inputs,
        x=x,
        args=args,
        target=t,
        areas=area_list,
        perturbation=perturbation,
        variant=variant,
        max_iter=max_iter,
        num_levels=num_levels,
        step=step,
        sigma=float(sigma),
        max_blur=float(max_blur),
        jitter=bool(jitter),
        reward_func=reward_func,
        learning_rate=jnp.float32(learning_rate),
        regul_weights=jnp.asarray(weights.astype(np.float32)),
        weights=tables,
    )
    out = []
    for m, leaf in zip(masks, leaves, strict=True):
        m = _finish_mask(m, leaf, resize, resize_mode, smooth)
        shape = (len(area_list), leaf.shape[0], leaf.shape[1], *m.shape[3:])
        if leaf.ndim == 2:
            shape = (len(area_list), *leaf.shape[:1], m.shape[-1])
        m = jnp.broadcast_to(m, shape).astype(leaf.dtype)
        out.append(m[0] if single else m)
    result = jax.tree_util.tree_unflatten(treedef, out)
    return (result, hist) if return_history else result


def _finish_mask(m, leaf, resize, resize_mode, smooth):
    """Resize then smooth (sigma ``smooth * min(spatial)``, zero padding), as TorchRay;
    (A, N, *mask_shape) in, same layout out."""
    if resize is False and smooth <= 0:
        return m
    a, n = m.shape[:2]
    flat = m.reshape(a * n, *m.shape[2:])
    if leaf.ndim == 2:  # (N, D): give the map a channel axis
        flat = flat[:, None]
    ref_spatial = tuple(leaf.shape[i] for i in _spatial_axes(leaf))
    flat = _torchray.finish(
        flat,
        reduce=None,
        channel_axis=1,
        resize=resize,
        resize_mode=resize_mode,
        smooth=smooth,
        reference_spatial=ref_spatial,
        smooth_of="min",
        padding_mode="constant",
    )
    if leaf.ndim == 2:
        flat = flat[:, 0]
    return flat.reshape(a, n, *flat.shape[1:])
