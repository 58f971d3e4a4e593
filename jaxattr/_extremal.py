"""Extremal perturbations (Fong et al., 2019), after TorchRay, optimised with optax."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxattr import _core
from jaxattr._core import PyTree
from jaxattr._perturbation import _spatial_axes

__all__ = ["extremal_perturbation", "smooth_mask"]

PERTURBATIONS = ("blur", "fade")
VARIANTS = ("preserve", "delete", "dual")
REWARDS = ("simple", "contrastive")
#: TorchRay's softmax-pooling coldness of the smooth mask.
COLDNESS = 20.0


@functools.lru_cache(maxsize=32)
def _mask_tables(spatial: tuple, step: int, sigma: float):
    """For every output position, the neighbouring parameter cells and their weights.

    Parameter cell ``c`` sits at the centre of its block, pixel ``step * c + (step-1)/2``;
    the weight of a cell at distance ``d`` is TorchRay's kernel
    ``exp(-2 max(d / sigma - 1/2, 0)^2)``. Cells outside the grid read the zero padding.
    """
    shape_in = tuple(int(math.ceil(s / step)) for s in spatial)
    radius = 1 + int(math.ceil(sigma / step))
    padded = tuple(s + 2 * radius for s in shape_in)
    grids = np.meshgrid(*[np.arange(s) for s in spatial], indexing="ij")
    pos = np.stack([g.reshape(-1) for g in grids], 1)  # (U, D)
    base = pos // step
    offs = np.stack(
        np.meshgrid(*[np.arange(-radius, radius + 1)] * len(spatial), indexing="ij"), -1
    ).reshape(-1, len(spatial))  # (K, D)
    cells = base[:, None, :] + offs[None]  # (U, K, D)
    dist = np.sqrt(((pos[:, None, :] - (step * cells + (step - 1) / 2)) ** 2).sum(-1))
    weight = np.exp(-2 * np.maximum(dist / sigma - 0.5, 0) ** 2)
    idx = np.ravel_multi_index(tuple((cells + radius).transpose(2, 0, 1)), padded)
    return shape_in, radius, idx.astype(np.int32), weight.astype(np.float32)


def smooth_mask(params: jax.Array, spatial: tuple, step: int = 7, sigma: float = 21.0) -> jax.Array:
    """TorchRay's smooth mask from its low-resolution parameters.

    Args:
        params: Parameters of shape (..., *ceil(spatial / step)) in [0, 1].
        spatial: The mask's spatial shape.
        step: Parameterisation step in pixels.
        sigma: Smoothing kernel size in pixels.

    Returns:
        A mask of shape (..., *spatial) in [0, 1]: at every pixel, the softmax-pooled
        (coldness 20) kernel-weighted parameters of the nearby cells.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> jaxattr.smooth_mask(jnp.ones((2, 2)), (8, 8), step=4, sigma=4.0).shape
        (8, 8)
    """
    shape_in, radius, idx, weight = _mask_tables(tuple(spatial), int(step), float(sigma))
    lead = params.shape[: params.ndim - len(spatial)]
    pad = [(0, 0)] * len(lead) + [(radius, radius)] * len(spatial)
    flat = jnp.pad(params, pad).reshape(*lead, -1)
    a = flat[..., idx] * weight  # (..., U, K)
    m = jnp.sum(a * jax.nn.softmax(COLDNESS * a, axis=-1), axis=-1)
    return jnp.clip(m, 0.0, 1.0).reshape(*lead, *spatial)


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """Blur along one axis with zero padding (TorchRay's ``imsmooth``)."""
    if sigma <= 0:
        return np.eye(size, dtype=np.float32)
    w = int(math.ceil(4 * sigma))
    k = np.exp(-0.5 * (np.arange(-w, w + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(max(0, i - w), min(size, i + w + 1)):
            out[i, j] = k[j - i + w]
    return out.astype(np.float32)


def _blur(leaf, axes, sigma):
    for a in axes:
        g = jnp.asarray(_gaussian_matrix(leaf.shape[a], sigma))
        leaf = jnp.moveaxis(jnp.tensordot(leaf, g, axes=((a,), (1,))), -1, a)
    return leaf


def _pyramid(leaf, axes, num_levels, kind, max_blur):
    levels = []
    for lev in np.linspace(0.0, 1.0, num_levels):
        if kind == "blur":
            levels.append(_blur(leaf, axes, float((1 - lev) * max_blur)).astype(leaf.dtype))
        else:
            levels.append(leaf * lev)
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
    y0, y1 = take(k0), take(k1)
    return ((1 - frac) * y0 + frac * y1).astype(pyr.dtype)


def _reward(y, target, reward_func):
    if callable(reward_func):
        return reward_func(y).astype(jnp.float32)
    s = _core.target_score(y, target).astype(jnp.float32)
    if reward_func == "simple":
        return s
    sel = jax.grad(lambda y_: jnp.sum(_core.target_score(y_, target)))(y)
    other = jnp.max(jnp.where(sel != 0, -jnp.inf, y).reshape(y.shape[0], -1), axis=1)
    return s - other.astype(jnp.float32)


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
    regul_weight,
):
    leaves, treedef = jax.tree_util.tree_flatten(x)
    n = inputs.n
    n_areas = len(areas)
    geo = []
    for leaf in leaves:
        axes = _spatial_axes(leaf)
        spatial = tuple(leaf.shape[a] for a in axes)
        shape_in = _mask_tables(spatial, step, sigma)[0]
        mshape = [1] * (leaf.ndim - 1)
        for a in axes:
            mshape[a - 1] = leaf.shape[a]
        u = math.prod(spatial)
        ref = np.ones((n_areas, u), np.float32)
        for i, a in enumerate(areas):
            ref[i, : int(u * (1 - a))] = 0.0
        geo.append((axes, spatial, shape_in, tuple(mshape), ref))
    pyramids = [
        _pyramid(leaf, g[0], num_levels, perturbation, max_blur)
        for leaf, g in zip(leaves, geo, strict=False)
    ]

    def masks_of(pm):
        # pm per leaf: (A, N, *shape_in) -> mask (A, N, *mask_shape)
        out = []
        for p, (_axes, spatial, _, mshape, _) in zip(pm, geo, strict=False):
            m = smooth_mask(p, spatial, step, sigma)
            out.append(m.reshape(n_areas, n, *mshape))
        return out

    def energy(pm, t, weight):
        masks = masks_of(pm)
        parts = []
        if variant in ("preserve", "dual"):
            parts.append([_apply(p, m, num_levels) for p, m in zip(pyramids, masks, strict=True)])
        if variant in ("delete", "dual"):
            parts.append(
                [_apply(p, 1 - m, num_levels) for p, m in zip(pyramids, masks, strict=True)]
            )
        batch = [jnp.concatenate(ls) for ls in zip(*parts, strict=False)]  # (K, N, ...)
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
        regul = 0.0
        for m, (_, _, _, _, ref) in zip(masks, geo, strict=False):
            flat = jnp.sort(m.reshape(n_areas, n, -1), axis=-1)
            regul = regul - jnp.mean((flat - ref[:, None, :]) ** 2, axis=-1) * weight
        return jnp.sum(reward + regul)

    opt = optax.chain(optax.ema(0.9, debias=False), optax.scale(-learning_rate))
    pm0 = [jnp.ones((n_areas, n, *g[2]), jnp.float32) for g in geo]
    state0 = opt.init(pm0)

    def body(t, carry):
        pm, state = carry
        weight = regul_weight * (1.0035 ** t.astype(jnp.float32))
        grads = jax.grad(lambda p: -energy(p, t, weight))(pm)
        updates, state = opt.update(grads, state, pm)
        pm = [jnp.clip(p + u, 0.0, 1.0) for p, u in zip(pm, updates, strict=False)]
        return pm, state

    pm, _ = jax.lax.fori_loop(0, max_iter, body, (pm0, state0))
    return masks_of(pm)


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
) -> PyTree:
    """Extremal perturbations (Fong, Patrick and Vedaldi, 2019), after TorchRay.

    Finds, for each area ``a``, a smooth mask covering a fraction ``a`` of the input that
    maximises the target when only the masked region is kept (``preserve``), minimises it
    when the region is perturbed (``delete``), or both (``dual``). The mask is
    parameterised on a grid of step ``step`` and smoothed with TorchRay's kernel of size
    ``sigma`` (:func:`smooth_mask`); the perturbation picks, per element, a level of a
    ``num_levels`` pyramid of increasingly blurred (``blur``, up to ``max_blur``) or faded
    (``fade``) copies of x. The area is enforced by TorchRay's ranking regulariser
    (weight ``regul_weight``, growing by 1.0035 per iteration); the parameters are
    optimised for ``max_iter`` iterations by optax (SGD with momentum 0.9 and dampening
    0.9, TorchRay's optimiser, as ``ema(0.9)`` then ``scale(-learning_rate)``), clipped
    to [0, 1] after each step. ``jitter`` flips the input's last axis every other
    iteration. Every example is optimised at once, all in one compiled loop.

    Masks cover the spatial axes (all axes after the channel axis 1; the single axis of
    an (N, D) input) and are shared over channels. Unlike TorchRay the mask has no outer
    margin (the area is measured on the input's extent) and any number of spatial axes
    is supported.

    Args:
        fn: Batch-first pure function, ``fn(x) -> y`` with ``y`` of shape (N, ...).
        x: Input array of shape (N, C, *spatial) or (N, D), or a tuple of such arrays.
        target: What to explain (see :func:`jaxattr.select_target`).
        areas: The target area fraction, or a sequence of them (TorchRay's ``areas``).
        perturbation: ``"blur"`` or ``"fade"``.
        variant: ``"preserve"``, ``"delete"`` or ``"dual"``.
        max_iter: Optimisation steps.
        num_levels: Levels of the perturbation pyramid.
        step: Mask parameterisation step (pixels).
        sigma: Mask smoothing kernel size (pixels).
        max_blur: Standard deviation of the strongest blur.
        jitter: Flip the last axis on even iterations.
        smooth: If > 0, blur the final mask with sigma ``smooth * min(spatial)``.
        reward_func: ``"simple"`` (the target score), ``"contrastive"`` (the target
            minus the largest other output) or a callable ``y -> (batch,)`` reward.
        learning_rate: SGD learning rate.
        regul_weight: Initial weight of the area regulariser.
        args: Extra positional arrays passed to ``fn`` after ``x``; not perturbed.

    Returns:
        The mask, broadcast to x's structure, shapes and dtypes for a single float area;
        for a sequence of areas, leaves of shape (len(areas), *x_leaf.shape).

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: 100.0 * x[:, 0, 8:16, 8:16].mean((1, 2))[:, None]
        >>> x = jnp.ones((1, 1, 24, 24))
        >>> m = jaxattr.extremal_perturbation(fn, x, target=0, areas=0.12, max_iter=200,
        ...                                   step=4, sigma=8.0, perturbation="fade")
        >>> bool(m[0, 0, 10:14, 10:14].mean() > m[0, 0, :4, :4].mean())
        True
    """
    _core.check_choice(perturbation, "perturbation", PERTURBATIONS)
    _core.check_choice(variant, "variant", VARIANTS)
    if not callable(reward_func):
        _core.check_choice(reward_func, "reward_func", REWARDS)
    max_iter = _core.check_positive_int(max_iter, "max_iter", 0)
    num_levels = _core.check_positive_int(num_levels, "num_levels", 2)
    step = _core.check_positive_int(step, "step")
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
    t = _core.prepare_target(target, fn, inputs, x, args)
    masks = _extremal_core(
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
        learning_rate=float(learning_rate),
        regul_weight=float(regul_weight),
    )
    leaves, treedef = jax.tree_util.tree_flatten(x)
    out = []
    for m, leaf in zip(masks, leaves, strict=False):
        if smooth > 0:
            axes = [a + 1 for a in _spatial_axes(leaf)]
            spatial = [leaf.shape[a - 1] for a in axes]
            m = _blur(m, axes, float(smooth * min(spatial)))
        m = jnp.broadcast_to(m, (len(area_list), *leaf.shape)).astype(leaf.dtype)
        out.append(m[0] if single else m)
    return jax.tree_util.tree_unflatten(treedef, out)
