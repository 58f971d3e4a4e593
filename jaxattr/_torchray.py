"""TorchRay's saliency options, shared by the methods that mirror TorchRay.

TorchRay's ``torchray.attribution.common.saliency`` reads a (pseudo-)gradient at the
input or at the output of ``saliency_layer``, converts it to a map with
``gradient_to_saliency`` (max of ``|g|`` over channels for gradient, deconvnet and guided
backprop; a channel sum for excitation backprop), resizes it (``resize``, bilinear with
``align_corners=False``) and smooths it with a Gaussian of standard deviation
``smooth * max(spatial size)`` (replicate padding). This module holds those steps once:
option checks, the gradient at a layer under a rule composite, the resize and TorchRay's
``imsmooth`` filter.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core, _taps

__all__: list[str] = []

RESIZE_MODES = ("bilinear", "linear", "trilinear", "nearest")

#: TorchRay's ``imsmooth`` constants (``torchray.utils``), float32.
_SQRT_TWO = np.float32(math.sqrt(2))
_EPS = np.float32(1.19209290e-07)


# --------------------------------------------------------------------------------------
# Option checks
# --------------------------------------------------------------------------------------


def check_resize(resize: Any) -> Any:
    """``False``/``None`` (keep), ``True``/``"input"`` (the input's size) or a size tuple.

    A tuple is in TorchRay's order, (width, height): the spatial sizes reversed.
    """
    if resize is None or resize is False:
        return False
    if resize is True or resize == "input":
        return True
    if isinstance(resize, (tuple, list)) and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in resize
    ):
        return tuple(int(s) for s in resize)
    raise ValueError(
        f"resize must be False, True (or 'input') or a tuple of positive ints in TorchRay's "
        f"(width, height) order, got {resize!r}"
    )


def check_smooth(smooth: Any) -> float:
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float, np.number)) or smooth < 0:
        raise ValueError(f"smooth must be a number >= 0, got {smooth!r}")
    return float(smooth)


def check_options(resize, resize_mode, smooth):
    """Validated ``(resize, resize_mode, smooth)``."""
    _core.check_choice(resize_mode, "resize_mode", RESIZE_MODES)
    return check_resize(resize), resize_mode, check_smooth(smooth)


def check_gradient_to_saliency(value: Any) -> Any:
    if value is None or value is False:
        return None
    if value is True or callable(value):
        return value
    raise TypeError(
        f"gradient_to_saliency must be False, True (TorchRay's max of |gradient| over "
        f"channels) or a function of the gradient, got {type(value).__name__} {value!r}"
    )


def saliency_layer_alias(layer: str | None, saliency_layer: str | None) -> str | None:
    """``layer`` and TorchRay's ``saliency_layer`` name the same thing; ``""`` is the input."""
    if layer and saliency_layer and layer != saliency_layer:
        raise ValueError(
            f"layer and saliency_layer name the same option; got layer={layer!r} and "
            f"saliency_layer={saliency_layer!r}"
        )
    return (layer or saliency_layer) or None


def max_abs_channels(g: jax.Array, channel_axis: int = 1) -> jax.Array:
    """TorchRay's default ``gradient_to_saliency``: max of ``|g|`` over channels."""
    return jnp.max(jnp.abs(g), axis=channel_axis, keepdims=True)


# --------------------------------------------------------------------------------------
# imsmooth and resize
# --------------------------------------------------------------------------------------


def gaussian_taps(sigma: float) -> np.ndarray:
    """TorchRay's ``imsmooth`` kernel: ``exp(-(i / (sqrt(2) sigma + eps))^2)`` for
    ``|i| <= ceil(4 sigma)``, normalised to sum to one (float32, as TorchRay)."""
    sigma32 = np.float32(sigma)
    width = int(math.ceil(4 * sigma32))
    f = np.arange(-width, width + 1, dtype=np.float32) / (_SQRT_TWO * sigma32 + _EPS)
    f = np.exp(-f * f)
    return (f / f.sum()).astype(np.float32)


@functools.lru_cache(maxsize=128)
def smoothing_matrix(size: int, sigma: float, padding_mode: str) -> np.ndarray:
    """``out = M @ in`` along one axis: the 1-D Gaussian with zero (``constant``) or
    edge (``replicate``) padding, exactly TorchRay's ``imsmooth`` along that axis."""
    taps = gaussian_taps(sigma).astype(np.float64)
    width = (len(taps) - 1) // 2
    m = np.zeros((size, size))
    for i in range(size):
        for k, w in enumerate(taps):
            j = i + k - width
            if padding_mode == "replicate":
                j = min(max(j, 0), size - 1)
            elif not 0 <= j < size:
                continue
            m[i, j] += w
    return m.astype(np.float32)


def imsmooth(a: jax.Array, sigma: float, axes: Sequence[int], padding_mode: str) -> jax.Array:
    """TorchRay's ``imsmooth``: a separable Gaussian along ``axes`` (any number of them)."""
    for ax in axes:
        a, m = _core.promote(a, smoothing_matrix(a.shape[ax], float(sigma), padding_mode))
        a = jnp.moveaxis(jnp.tensordot(a, m, axes=((ax,), (1,))), -1, ax)
    return a


def spatial_axes(ndim: int, channel_axis: int) -> tuple[int, ...]:
    axis = channel_axis % ndim
    return tuple(i for i in range(1, ndim) if i != axis)


def target_size(resize: Any, reference_spatial: Sequence[int], n_spatial: int) -> tuple:
    if resize is True:
        size = tuple(reference_spatial)
    else:
        size = tuple(resize)[::-1]  # TorchRay: (width, height) -> (height, width)
    if len(size) != n_spatial:
        raise ValueError(
            f"resize must give one size per spatial axis ({n_spatial}), got {resize!r}"
        )
    return size


@functools.partial(
    _caching.jit,
    static_argnames=(
        "reduce",
        "channel_axis",
        "resize",
        "resize_mode",
        "smooth",
        "reference_spatial",
        "smooth_of",
        "padding_mode",
    ),
)
def finish(
    a: jax.Array,
    *,
    reduce: Callable[[jax.Array], jax.Array] | None,
    channel_axis: int,
    resize: Any,
    resize_mode: str,
    smooth: float,
    reference_spatial: tuple,
    smooth_of: str = "max",
    padding_mode: str = "replicate",
) -> jax.Array:
    """TorchRay's post-processing of one map: convert, resize, then smooth.

    ``reduce`` converts the gradient (``gradient_to_saliency``); ``resize`` is ``False``,
    ``True`` (``reference_spatial``) or a (width, height) tuple; the smoothing sigma is
    ``smooth`` times the ``max`` (TorchRay's ``saliency``) or ``min`` (its extremal
    perturbation) spatial size after resizing.
    """
    if reduce is not None:
        a = reduce(a)
    if resize is False and smooth <= 0:
        return a
    if a.ndim < 3:
        raise ValueError(
            f"resize and smooth need a map with spatial axes (N, C, *spatial), got shape "
            f"{tuple(a.shape)}"
        )
    axes = spatial_axes(a.ndim, channel_axis)
    if resize is not False:
        from jaxattr._cam import interpolate  # _layers imports this module

        size = target_size(resize, reference_spatial, len(axes))
        a = interpolate(a, size, mode=resize_mode, channel_axis=channel_axis)
    if smooth > 0:
        sizes = [a.shape[i] for i in axes]
        sigma = smooth * (max(sizes) if smooth_of == "max" else min(sizes))
        a = imsmooth(a, sigma, axes, padding_mode).astype(a.dtype)
    return a


def finish_tree(
    result: Any,
    x: Any,
    *,
    reduce: Callable[[jax.Array], jax.Array] | None,
    channel_axis: int,
    resize: Any,
    resize_mode: str,
    smooth: float,
) -> Any:
    """:func:`finish` on every leaf of ``result``; ``resize=True`` uses the matching leaf
    of ``x`` (or its first leaf when the structures differ, for a layer's map)."""
    if reduce is None and resize is False and smooth <= 0:
        return result
    res_leaves, treedef = jax.tree_util.tree_flatten(result)
    x_leaves = jax.tree_util.tree_leaves(x)
    out = []
    for i, leaf in enumerate(res_leaves):
        ref = x_leaves[i] if len(x_leaves) == len(res_leaves) else x_leaves[0]
        ref_spatial = tuple(ref.shape[j] for j in spatial_axes(ref.ndim, channel_axis))
        out.append(
            finish(
                leaf,
                reduce=reduce,
                channel_axis=channel_axis,
                resize=resize,
                resize_mode=resize_mode,
                smooth=smooth,
                reference_spatial=ref_spatial,
            )
        )
    return jax.tree_util.tree_unflatten(treedef, out)


def reducer(gradient_to_saliency: Any, channel_axis: int) -> Callable | None:
    """The conversion function for ``gradient_to_saliency`` (True: max of |g|)."""
    g2s = check_gradient_to_saliency(gradient_to_saliency)
    if g2s is True:
        return functools.partial(max_abs_channels, channel_axis=channel_axis)
    return g2s


# --------------------------------------------------------------------------------------
# The (pseudo-)gradient at a layer's output
# --------------------------------------------------------------------------------------


@_core.cached_jit(("model", "inputs", "taps", "composite"))
def _layer_gradient_core(*, model, inputs, taps, params, x, args, kwargs, target, composite):
    intercept = None if composite is None else composite.intercept(model.layers)
    grads, _, _ = _taps.layer_gradients(
        model, params, inputs, x, args, kwargs, taps, target, intercept=intercept
    )
    return grads[taps[0].key]


def layer_gradient(
    model: Any,
    x: Any,
    target: Any,
    args: tuple,
    saliency_layer: str,
    composite,
    *,
    method: str,
    kwargs: Any = None,
    params: Any = None,
):
    """The gradient of the target at ``saliency_layer``'s output, with ``composite``'s
    rules (``None``: the plain gradient). TorchRay's probe on ``saliency_layer``."""
    if not isinstance(saliency_layer, str):
        raise TypeError(
            f"saliency_layer must be a layer name (str), got {type(saliency_layer).__name__}"
        )
    s = _core.prepare_structured(
        model,
        x,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        method=method,
        name="model (with saliency_layer)",
    )
    tap = _taps.resolve_single(s.model, saliency_layer)
    return _layer_gradient_core(model=s.model, taps=(tap,), composite=composite, **s.core_args())
