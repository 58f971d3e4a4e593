"""2-d convolution in the form that is fastest for its shape.

XLA's CPU convolution is pathological on small spatial maps: a 3x3 convolution with 512
channels on a 2x2 map, batch 16, takes about 100 ms where torch needs 1.4 ms. The same
convolution written as *slice patches* (the kh*kw strided slices of the padded input,
concatenated on the channel axis, then one matrix product) takes about 1 ms, and its
derivatives are again slices, pads and matrix products. On large maps the patches are
memory-bound and XLA's convolution (NHWC) wins. :func:`conv2d` picks between the two by a
cost model calibrated with ``benchmarks/bench_conv.py`` (:data:`SLICES_ALWAYS_PIXELS`,
:data:`SLICES_MAX_ROWS`).
Both forms give the same numbers to float32 rounding.

The weights are arguments of every compiled program, so any re-layout of them is paid on
every call: XLA's convolution wants them HWIO, a copy of the OIHW array (7 ms for one
512x512x3x3 weight, more than the convolution itself at batch 1). Where the patches are
smaller than the weight (fewer patch rows N*Ho*Wo than output channels), the slice form
orders the patches (c, i, j) like torch's weight and uses the weight as it is; 1x1
convolutions are always a (strided) slice and one product with the (O, C) weight.

``lax.conv_general_dilated_patches`` is not the slice-patches form: it is itself a
convolution (with an identity kernel) and inherits XLA's slow path.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

__all__ = ["conv2d", "conv2d_slices", "conv2d_xla", "use_slices"]

#: Output maps up to this many pixels (Ho*Wo, 2x2) are computed as slice patches at any
#: batch size and depth: XLA's CPU convolution is pathological there (5x at 64 channels,
#: 70x at 512; benchmarks/bench_conv.py).
SLICES_ALWAYS_PIXELS = 4
#: Deeper convolutions (C*kh*kw at least this, e.g. 3x3 from 256 channels) use slice
#: patches while the matrix product has at most :data:`SLICES_MAX_ROWS` rows (N*Ho*Wo) or
#: the map is at most :data:`SLICES_DEEP_PIXELS`; shallower ones use XLA's convolution,
#: which runs as fast or faster there and compiles 2-4x faster (its derivatives are one
#: convolution each, the slice form's are kh*kw pads).
SLICES_MIN_DEPTH = 2048
#: Beyond this many product rows XLA's convolution is as fast or faster (memory-bound
#: patches) ...
SLICES_MAX_ROWS = 512
#: ... except on maps this small (4x4), where it stays 2x slower at any batch.
SLICES_DEEP_PIXELS = 16
#: And the patches' size: above it the copy dominates whatever the map size.
SLICES_MAX_BYTES = 64 << 20


def _out_size(size: int, k: int, stride: int, pads: tuple[int, int], dilation: int) -> int:
    return (size + pads[0] + pads[1] - dilation * (k - 1) - 1) // stride + 1


def use_slices(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    stride: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    itemsize: int = 4,
) -> bool:
    """Whether :func:`conv2d` computes this (ungrouped, NCHW) convolution as slice patches.

    Args:
        x_shape: Input shape (N, C, H, W).
        w_shape: Weight shape (O, C, kh, kw).
        stride, pads, dilation: As for :func:`conv2d`.
        itemsize: Bytes per element.

    Returns:
        True for a 1x1 kernel, a tiny output map (:data:`SLICES_ALWAYS_PIXELS`), or a deep
        convolution (:data:`SLICES_MIN_DEPTH`) with few product rows N*Ho*Wo
        (:data:`SLICES_MAX_ROWS`) or a small map (:data:`SLICES_DEEP_PIXELS`), whose
        patches stay within :data:`SLICES_MAX_BYTES`.

    Example:
        >>> use_slices((16, 512, 2, 2), (512, 512, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1))
        True
        >>> use_slices((8, 64, 56, 56), (64, 64, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1))
        False
    """
    n, c, h, w = x_shape
    _, _, kh, kw = w_shape
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        return False
    ho = _out_size(h, kh, stride[0], tuple(pads[0]), dilation[0])
    wo = _out_size(w, kw, stride[1], tuple(pads[1]), dilation[1])
    if ho <= 0 or wo <= 0:
        return False
    patch_bytes = n * ho * wo * c * kh * kw * itemsize
    small = (
        (kh, kw) == (1, 1)  # no patches to copy: a (strided) slice and one product
        or ho * wo <= SLICES_ALWAYS_PIXELS
        or (
            c * kh * kw >= SLICES_MIN_DEPTH
            and (n * ho * wo <= SLICES_MAX_ROWS or ho * wo <= SLICES_DEEP_PIXELS)
        )
    )
    return small and patch_bytes <= SLICES_MAX_BYTES


def conv2d_slices(
    x: jnp.ndarray,
    w: jnp.ndarray,
    stride: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
) -> jnp.ndarray:
    """Ungrouped 2-d convolution as slice patches and one matrix product.

    Args:
        x: Input, shape (N, C, H, W).
        w: Weight, shape (O, C, kh, kw) (torch's layout; cross-correlation as torch).
        stride: (sh, sw).
        pads: ((top, bottom), (left, right)), non-negative.
        dilation: (dh, dw).

    Returns:
        The output, shape (N, O, Ho, Wo).

    Example:
        >>> import numpy as np
        >>> x = np.random.rand(2, 3, 5, 5).astype(np.float32)
        >>> w = np.random.rand(4, 3, 3, 3).astype(np.float32)
        >>> a = conv2d_slices(x, w, (1, 1), [(1, 1), (1, 1)], (1, 1))
        >>> b = conv2d_xla(x, w, (1, 1), [(1, 1), (1, 1)], (1, 1))
        >>> a.shape, bool(np.allclose(a, b, atol=1e-5))
        ((2, 4, 5, 5), True)
    """
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho = _out_size(h, kh, stride[0], tuple(pads[0]), dilation[0])
    wo = _out_size(wd, kw, stride[1], tuple(pads[1]), dilation[1])
    xt = jnp.transpose(x, (0, 2, 3, 1))  # NHWC: the channel axis is contiguous
    if any(p for pair in pads for p in pair):
        xt = jnp.pad(xt, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    taps = [
        lax.slice(
            xt,
            (0, i * dilation[0], j * dilation[1], 0),
            (
                n,
                i * dilation[0] + (ho - 1) * stride[0] + 1,
                j * dilation[1] + (wo - 1) * stride[1] + 1,
                c,
            ),
            (1, stride[0], stride[1], 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]  # each (N, Ho, Wo, C)
    dims = (((3,), (1,)), ((), ()))
    if len(taps) == 1:  # 1x1: the weight as it is, (O, C)
        out = lax.dot_general(taps[0], w.reshape(o, c), dims)
    elif n * ho * wo <= o:
        # fewer patch rows than output channels: the patches are smaller than the weight,
        # so order them (c, i, j) like torch's weight, which is then used as it is; a
        # transposed copy of a large weight (512x512x3x3) costs more than the product
        cols = jnp.stack(taps, axis=-1).reshape(n, ho, wo, c * kh * kw)
        out = lax.dot_general(cols, w.reshape(o, c * kh * kw), dims)
    else:  # patches ordered (i, j, c): a contiguous copy; the (smaller) weight transposed
        cols = jnp.concatenate(taps, axis=-1)  # (N, Ho, Wo, kh*kw*C)
        wm = jnp.transpose(w, (2, 3, 1, 0)).reshape(kh * kw * c, o)
        out = lax.dot_general(cols, wm, (((3,), (0,)), ((), ())))
    return jnp.transpose(out, (0, 3, 1, 2))  # (N, O, Ho, Wo)


def conv2d_xla(
    x: jnp.ndarray,
    w: jnp.ndarray,
    stride: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    groups: int = 1,
    lhs_dilation: Sequence[int] | None = None,
) -> jnp.ndarray:
    """XLA's convolution, run in NHWC (its faster CPU layout) for NCHW data.

    Args:
        x: Input, shape (N, C, H, W).
        w: Weight, shape (O, C/groups, kh, kw).
        stride, pads, dilation: As for :func:`conv2d`.
        groups: Feature groups (depthwise: ``groups == C``).
        lhs_dilation: Input dilation (transposed convolutions).

    Returns:
        The output, shape (N, O, Ho, Wo).

    Example:
        >>> import numpy as np
        >>> conv2d_xla(np.ones((1, 2, 4, 4), np.float32), np.ones((3, 2, 3, 3), np.float32),
        ...            (1, 1), [(0, 0), (0, 0)], (1, 1)).shape
        (1, 3, 2, 2)
    """
    xt = jnp.transpose(x, (0, 2, 3, 1))
    wt = jnp.transpose(w, (2, 3, 1, 0))
    out = lax.conv_general_dilated(
        xt,
        wt,
        tuple(stride),
        [tuple(p) for p in pads],
        lhs_dilation=None if lhs_dilation is None else tuple(lhs_dilation),
        rhs_dilation=tuple(dilation),
        feature_group_count=groups,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return jnp.transpose(out, (0, 3, 1, 2))


def conv2d(
    x: jnp.ndarray,
    w: jnp.ndarray,
    stride: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    groups: int = 1,
    lhs_dilation: Sequence[int] | None = None,
) -> jnp.ndarray:
    """A 2-d convolution (NCHW, torch's weight layout) in its fastest form for the shape.

    Slice patches (:func:`conv2d_slices`) for ungrouped convolutions on small output maps,
    XLA's convolution (:func:`conv2d_xla`) otherwise; see :func:`use_slices`. Derivatives
    follow the chosen form (both are differentiable to any order).

    Args:
        x: Input, shape (N, C, H, W).
        w: Weight, shape (O, C/groups, kh, kw).
        stride: (sh, sw).
        pads: ((top, bottom), (left, right)).
        dilation: (dh, dw).
        groups: Feature groups.
        lhs_dilation: Input dilation (transposed convolutions: always XLA's form).

    Returns:
        The output, shape (N, O, Ho, Wo).

    Example:
        >>> import numpy as np
        >>> conv2d(np.ones((16, 8, 2, 2), np.float32), np.ones((8, 8, 3, 3), np.float32),
        ...        (1, 1), [(1, 1), (1, 1)], (1, 1)).shape
        (16, 8, 2, 2)
    """
    pads = [tuple(p) for p in pads]
    if (
        groups == 1
        and lhs_dilation is None
        and use_slices(x.shape, w.shape, stride, pads, dilation, jnp.dtype(x.dtype).itemsize)
    ):
        return conv2d_slices(x, w, stride, pads, dilation)
    return conv2d_xla(x, w, stride, pads, dilation, groups, lhs_dilation)
