"""Visualization: heat maps, colormaps, image grids, PNG files, time-series and text views.

Two families, both returning plain arrays so they compose with any plotting library:

- Zennit's image helpers: :func:`imgify` turns an attribution (or image, or a batch of
  them with ``grid=True``) into a uint8 RGB array through a colormap from :data:`CMAPS`
  (``bwr``, ``coldnhot``, ``france``, ...) written in Zennit's color-map language
  (:class:`ColorMap`); :func:`grid` tiles a batch; :func:`palette` gives a colormap's 256
  colors.
- Captum's ``visualize_image_attr`` methods as arrays: :func:`normalize_attr` (sign and
  outlier-percentile scaling), :func:`heatmap`, :func:`blended_heat_map`,
  :func:`masked_image`, :func:`alpha_scaling`.
- PAIR saliency's :func:`visualize_image_grayscale` and :func:`visualize_image_diverging`
  (also under PAIR's names ``VisualizeImageGrayscale`` / ``VisualizeImageDiverging``).

:func:`save_png` writes any of these arrays with ``zlib`` and ``struct`` only, and
:func:`imsave` (Zennit's) colors and writes in one call; :func:`interval_norm_bounds` gives
Zennit's per-example normalisation bounds. All of the above need nothing but numpy.
Figures (:func:`visualize_image_attr`, :func:`visualize_image_attr_multiple`,
:func:`visualize_timeseries_attr`) need matplotlib, the optional extra
``pip install jaxattr[viz]``; :func:`visualize_text` returns an HTML string (from tokens or
from Captum's records, :class:`VisualizationDataRecord`) and needs nothing.

Arrays may be numpy or jax arrays; images are height-first (H, W) or (H, W, C), and a
channel-first (C, H, W) array with C in (1, 3) is recognised as in Zennit.
"""

from __future__ import annotations

import html
import os
import re
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "CMAPS",
    "SIGNS",
    "ColorMap",
    "VisualizationDataRecord",
    "VisualizeImageDiverging",
    "VisualizeImageGrayscale",
    "alpha_scaling",
    "blended_heat_map",
    "get_cmap",
    "grid",
    "heatmap",
    "imgify",
    "imsave",
    "interval_norm_bounds",
    "masked_image",
    "normalize_attr",
    "palette",
    "save_png",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
    "visualize_image_diverging",
    "visualize_image_grayscale",
    "visualize_text",
    "visualize_timeseries_attr",
]


def __dir__() -> list[str]:
    """``dir(jaxattr.viz)`` lists the public functions only (not ``np``, ``os``, ...)."""
    return sorted(__all__)


#: The ``sign`` options of Captum's visualizations.
SIGNS = ("positive", "negative", "absolute_value", "all")

#: Built-in colormaps in Zennit's color-map language (see :class:`ColorMap`). The first
#: eleven are Zennit's; ``rdwhgn``, ``greens``, ``reds`` and ``blues`` are Captum's
#: default heat-map colormaps (matplotlib's red-white-green list and the ColorBrewer
#: sequential maps behind ``Greens``/``Reds``/``Blues``, as evenly spaced stops).
CMAPS: dict[str, str] = {
    "gray": "000,fff",
    "wred": "fff,f00",
    "wblue": "fff,00f",
    "hot": "000,f00,ff0,fff",
    "cold": "000,00f,0ff",
    "coldnhot": "0ff,00f,80:000,f00,ff0,fff",
    "bwr": "00f,80:fff,f00",
    "france": "0055a4,80:fff,ef4135",
    "seismic": "0000d0,80:d0d0d0,d00000",
    "coolio": "00d0d0,80:d0d0d0,d000d0",
    "coleus": "00d000,80:d0d0d0,d000d0",
    "rdwhgn": "ff0000,80:ffffff,008000",
    "greens": "f7fcf5,e5f5e0,c7e9c0,a1d99b,74c476,41ab5d,238b45,006d2c,00441b",
    "reds": "fff5f0,fee0d2,fcbba1,fc9272,fb6a4a,ef3b2c,cb181d,a50f15,67000d",
    "blues": "f7fbff,deebf7,c6dbef,9ecae1,6baed6,4292c6,2171b5,08519c,08306b",
}

_DEFAULT_CMAP = {
    "all": "rdwhgn",
    "positive": "greens",
    "negative": "reds",
    "absolute_value": "blues",
}

_ITEM = re.compile(r"^(?:(?P<index>[0-9a-fA-F]{1,2}):)?(?P<color>[0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


class ColorMap:
    """A piecewise-linear colormap compiled from Zennit's color-map language.

    The source is a comma-separated list of colors, each 3 or 6 hex digits (``f00`` is
    ``ff0000``), optionally prefixed by a position on the 0..255 scale in 1 or 2 hex
    digits and a colon (``80:fff`` puts white at 128; one digit is doubled, ``8`` is
    ``88``). Unpositioned colors are spaced evenly between their positioned neighbours;
    the first color sits at 0 and the last at 255 unless positioned, and a positioned
    first or last color is held constant to the ends. Colors in between are interpolated
    linearly, exactly as Zennit's ``ColorMap``.

    Args:
        source: The color-map source, e.g. ``"00f,80:fff,f00"``.

    Raises:
        ValueError: The source is malformed, has fewer than 2 colors, or its positions
            are not ascending.

    Example:
        >>> from jaxattr.viz import ColorMap
        >>> ColorMap("000,fff")([0.0, 1.0])
        array([[0., 0., 0.],
               [1., 1., 1.]])
    """

    def __init__(self, source: str) -> None:
        if not isinstance(source, str):
            raise TypeError(f"source must be a str, got {type(source).__name__}")
        nodes = []
        for item in source.split(","):
            m = _ITEM.match(item.strip())
            if m is None:
                raise ValueError(
                    f"source must be comma-separated colors like '80:fff' or '0055a4', got "
                    f"the item {item!r} in {source!r}"
                )
            index = m["index"]
            if index is not None:
                index = int(index * 2 if len(index) == 1 else index, 16)
            color = m["color"]
            if len(color) == 3:
                color = "".join(c * 2 for c in color)
            nodes.append((index, [int(color[i : i + 2], 16) for i in (0, 2, 4)]))
        if len(nodes) < 2:
            raise ValueError(f"source needs at least 2 colors, got {source!r}")
        self.source = source
        self._indices, self._colors = self._place(nodes, source)

    @staticmethod
    def _place(nodes: list, source: str) -> tuple[np.ndarray, np.ndarray]:
        first_index, first_color = nodes[0]
        placed = [(0, first_color)]
        if first_index:
            placed.append((first_index, first_color))
        pending = []
        rest = nodes[1:]
        for i, (index, color) in enumerate(rest):
            if index is None:
                if i < len(rest) - 1:
                    pending.append(color)
                    continue
                index = 255
            elif index < placed[-1][0]:
                raise ValueError(
                    f"source positions must be ascending, got {index:02x} after "
                    f"{placed[-1][0]:02x} in {source!r}"
                )
            lo = placed[-1][0]
            for k, c in enumerate(pending, start=1):
                t = k / (len(pending) + 1)
                placed.append((int(lo * (1.0 - t) + index * t), c))
            pending = []
            placed.append((index, color))
        placed.append((256, placed[-1][1]))
        indices = np.array([p[0] for p in placed], dtype=np.float64)
        colors = np.array([p[1] for p in placed], dtype=np.float64)
        return indices, colors

    def __call__(self, x: Any) -> np.ndarray:
        """Map values in [0, 1] (clipped) to RGB in [0, 1]: shape ``x.shape + (3,)``."""
        v = np.clip(np.asarray(x, dtype=np.float64) * 255.0, 0.0, 255.0)
        seg = np.searchsorted(self._indices[:-1], v, side="right")
        lo, hi = self._indices[seg - 1], self._indices[seg]
        t = ((v - lo) / (hi - lo))[..., None]
        return (self._colors[seg - 1] * (1.0 - t) + self._colors[seg] * t) / 255.0

    def palette(self, level: float = 1.0) -> np.ndarray:
        """The 256-color uint8 palette, shape (256, 3), of Zennit's ``ColorMap.palette``.

        ``level`` below 1 narrows the range of colors used (0 gives the center color
        only); above 1 the colors saturate before the ends.
        """
        x = np.clip((np.linspace(-1.0, 1.0, 256) * level + 1.0) / 2.0, 0.0, 1.0)
        return np.clip(np.round(self(x) * 255.0, 12), 0.0, 255.0).astype(np.uint8)

    def __repr__(self) -> str:
        return f"ColorMap({self.source!r})"


def get_cmap(cmap: str | ColorMap) -> ColorMap:
    """A :class:`ColorMap` from a name in :data:`CMAPS`, a source string, or itself.

    Args:
        cmap: A built-in name (``"bwr"``, ``"coldnhot"``, ...), a color-map source
            (``"000,f00"``) or a :class:`ColorMap`.

    Returns:
        The colormap.

    Example:
        >>> from jaxattr.viz import get_cmap
        >>> get_cmap("bwr").palette()[[0, 128, 255]].tolist()
        [[0, 0, 255], [255, 255, 255], [255, 0, 0]]
    """
    if isinstance(cmap, ColorMap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a name, a color-map source or a ColorMap, got {cmap!r}")
    if cmap in CMAPS:
        return _compiled(CMAPS[cmap])
    try:
        return ColorMap(cmap)
    except ValueError as err:
        raise ValueError(
            f"cmap must be one of {sorted(CMAPS)} or a color-map source like "
            f"'00f,80:fff,f00', got {cmap!r}"
        ) from err


_COMPILED: dict[str, ColorMap] = {}


def _compiled(source: str) -> ColorMap:
    """Compile a source once (``CMAPS`` may be extended or changed by users)."""
    if source not in _COMPILED:
        _COMPILED[source] = ColorMap(source)
    return _COMPILED[source]


def palette(cmap: str | ColorMap = "bwr", level: float = 1.0) -> np.ndarray:
    """The 256 colors of a colormap as a uint8 array of shape (256, 3) (Zennit's ``palette``).

    Args:
        cmap: A name in :data:`CMAPS`, a color-map source or a :class:`ColorMap`.
        level: 1 uses the full range; below 1 narrows it towards the center color; above
            1 saturates earlier.

    Returns:
        The palette, shape (256, 3), dtype uint8.

    Example:
        >>> from jaxattr.viz import palette
        >>> palette("gray")[255].tolist()
        [255, 255, 255]
    """
    return get_cmap(cmap).palette(level=level)


def _lut(cmap: Any) -> np.ndarray:
    """256 uint8 RGB colors from a jaxattr colormap or any callable [0,1] -> RGB(A)."""
    if isinstance(cmap, (str, ColorMap)):
        return get_cmap(cmap).palette()
    if callable(cmap):  # e.g. a matplotlib Colormap
        rgb = np.asarray(cmap(np.linspace(0.0, 1.0, 256)), dtype=np.float64)[:, :3]
        return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    raise TypeError(
        f"cmap must be a name in CMAPS, a color-map source, a ColorMap or a callable, got {cmap!r}"
    )


# --------------------------------------------------------------------------------------
# Zennit: imgify and grids
# --------------------------------------------------------------------------------------


def _channels_last(array: np.ndarray, name: str, batched: bool) -> np.ndarray:
    """Move a leading color axis (1 or 3) to the end, as Zennit does."""
    off = 1 if batched else 0
    if array.ndim == 3 + off and array.shape[-1] not in (1, 3):
        if array.shape[off] in (1, 3):
            return np.moveaxis(array, off, -1)
        raise ValueError(
            f"{name} must have 1 or 3 color channels first or last, or none; got shape "
            f"{array.shape}"
        )
    return array


def grid(images: Any, shape: tuple[int, int] | None = None, fill_value: Any = None) -> np.ndarray:
    """Tile a batch of images into one image (Zennit's ``gridify``).

    Args:
        images: (B, H, W), (B, H, W, C) or (B, C, H, W) with C in (1, 3).
        shape: ``(rows, cols)`` of the grid; default ``cols = floor(sqrt(B))`` and as many
            rows as needed.
        fill_value: Value of empty cells; default the minimum over the batch, per channel.

    Returns:
        An array (rows * H, cols * W, C), C = 1 for grayscale input, dtype of ``images``.

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import grid
        >>> grid(np.zeros((5, 4, 6))).shape
        (12, 12, 1)
    """
    array = np.asarray(images)
    if array.ndim not in (3, 4):
        raise ValueError(
            f"images must have shape (B, H, W), (B, H, W, C) or (B, C, H, W), got {array.shape}"
        )
    if array.ndim == 3:
        array = array[..., None]
    array = _channels_last(array, "images", batched=True)
    num, height, width, channels = array.shape
    if shape is None:
        cols = int(num**0.5)
        rows = (num + cols - 1) // cols
    else:
        if len(shape) != 2:
            raise ValueError(f"shape must be (rows, cols), got {shape!r}")
        rows, cols = (int(s) for s in shape)
    if fill_value is None:
        fill = array.min((0, 1, 2), keepdims=True)[0]
    else:
        fill = np.asarray(fill_value).astype(array.dtype)
    cells = np.empty((rows * cols, height, width, channels), array.dtype)
    cells[...] = fill
    used = min(num, rows * cols)
    cells[:used] = array[:used]
    return (
        cells.reshape(rows, cols, height, width, channels)
        .transpose(0, 2, 1, 3, 4)
        .reshape(rows * height, cols * width, channels)
    )


_gridify = grid  # imgify's ``grid`` argument shadows the function


def imgify(
    obj: Any,
    vmin: Any = None,
    vmax: Any = None,
    cmap: str | ColorMap = "bwr",
    level: float = 1.0,
    symmetric: bool = False,
    grid: bool | tuple[int, int] = False,  # noqa: F811 - Zennit's argument name
    gridfill: Any = None,
) -> np.ndarray:
    """Turn an array into an RGB image with Zennit's ``imgify`` semantics.

    Non-uint8 input is rescaled to 0..255 (``(v - vmin) / (vmax - vmin)``, truncated to
    uint8): by default between its minimum and maximum, or with ``symmetric=True`` between
    ``-max|v|`` and ``max|v|`` (so 0 lands on the colormap's center). uint8 input is used
    as is. A single-channel result is colored through ``cmap``; a 3-channel one is
    returned as is. Unlike Zennit, which returns a PIL image, this returns the pixels.

    Args:
        obj: (H, W), (H, W, C) or (C, H, W) with C in (1, 3); with ``grid`` a batch
            (B, H, W), (B, H, W, C) or (B, C, H, W).
        vmin: The value mapped to 0 (scalar, or per example with ``grid``).
        vmax: The value mapped to 255.
        cmap: Colormap for single-channel input (name in :data:`CMAPS`, source string or
            :class:`ColorMap`).
        level: The palette level (see :func:`palette`).
        symmetric: Scale symmetrically around 0.
        grid: ``True`` for a square-ish grid of the batch, ``(rows, cols)`` for a fixed
            one; each example is normalized on its own.
        gridfill: The uint8 value of empty grid cells (default: the minimum).

    Returns:
        uint8 RGB pixels of shape (H, W, 3) (for a grid, (rows * H, cols * W, 3)).

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import imgify
        >>> img = imgify(np.array([[-1.0, 0.0, 1.0]]), symmetric=True)
        >>> img.shape, img[0].tolist()
        ((1, 3, 3), [[0, 0, 255], [253, 253, 255], [255, 0, 0]])
    """
    array = np.asarray(obj)
    if grid:
        if isinstance(grid, (tuple, list)) and len(grid) != 2:
            raise ValueError(f"grid must be True or (rows, cols), got {grid!r}")
        if array.ndim not in (3, 4):
            raise ValueError(
                f"obj must be a batch (B, H, W), (B, H, W, C) or (B, C, H, W) with grid, got "
                f"shape {array.shape}"
            )
        if array.ndim == 4:
            array = _channels_last(array, "obj", batched=True)
    else:
        if array.ndim not in (2, 3):
            raise ValueError(
                f"obj must have shape (H, W), (H, W, C) or (C, H, W) with C in (1, 3), got "
                f"{array.shape}; pass grid=True for a batch"
            )
        array = _channels_last(array, "obj", batched=False)
    if array.dtype != np.uint8:
        axes = tuple(range(1, array.ndim)) if grid else tuple(range(array.ndim))
        if symmetric:
            hi = np.abs(array).max(axes, keepdims=True)
            lo = -hi
        else:
            hi = array.max(axes, keepdims=True)
            lo = array.min(axes, keepdims=True)
        lo = lo if vmin is None else np.asarray(vmin)
        hi = hi if vmax is None else np.asarray(vmax)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = (array - lo) / (hi - lo)
        array = np.nan_to_num(scaled * 255, nan=0.0).clip(0, 255).astype(np.uint8)
    if grid:
        array = _gridify(array, shape=None if grid is True else tuple(grid), fill_value=gridfill)
    elif array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        return palette(cmap, level)[array[..., 0]]
    return np.ascontiguousarray(array)


# --------------------------------------------------------------------------------------
# Captum: normalized attributions and the four image methods, as arrays
# --------------------------------------------------------------------------------------


def _check_sign(sign: str) -> None:
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {list(SIGNS)}, got {sign!r}")


def normalize_attr(attr: Any, sign: str = "absolute_value", outlier_perc: float = 2) -> np.ndarray:
    """Scale an attribution into [-1, 1] as Captum's visualizations do.

    The values of the chosen ``sign`` are kept (``positive``: ``max(a, 0)``;
    ``negative``: ``min(a, 0)``; ``absolute_value``: ``|a|``; ``all``: ``a``), then divided
    by a threshold and clipped to [-1, 1]. The threshold is the smallest ``|a|`` at which
    the cumulative sum of the sorted ``|a|`` reaches ``100 - outlier_perc`` percent of the
    total, so the largest values (the outliers) saturate. For ``negative`` the threshold is
    negated, so the result is in [0, 1] with 1 the most negative attribution. An all-zero
    attribution gives zeros, and a 100% level lost to float rounding uses the maximum
    (Captum fails in both cases).

    Args:
        attr: The attribution, any shape (Captum passes (H, W), channels summed).
        sign: One of :data:`SIGNS`.
        outlier_perc: Percent of the attribution mass treated as outliers, in [0, 100].

    Returns:
        The scaled attribution, ``attr``'s shape and floating dtype.

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import normalize_attr
        >>> normalize_attr(np.array([1.0, -2.0, 4.0]), "all", outlier_perc=0)
        array([ 0.25, -0.5 ,  1.  ])
    """
    _check_sign(sign)
    if not 0 <= outlier_perc <= 100:
        raise ValueError(f"outlier_perc must be in [0, 100], got {outlier_perc!r}")
    a = np.asarray(attr)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if sign == "positive":
        a = np.maximum(a, 0)
    elif sign == "negative":
        a = np.minimum(a, 0)
    elif sign == "absolute_value":
        a = np.abs(a)
    mags = np.sort(np.abs(a).ravel())
    if mags.size == 0:
        return a
    cum = np.cumsum(mags)
    reached = np.nonzero(cum >= cum[-1] * 0.01 * (100.0 - outlier_perc))[0]
    # float rounding can leave the 100% level unreached (Captum then fails): use the max
    threshold = mags[reached[0]] if reached.size else mags[-1]
    if threshold == 0:
        return np.zeros_like(a)
    if sign == "negative":
        threshold = -threshold
    return np.clip(a / threshold, -1, 1)


def _attr_2d(attr: Any, channel_axis: int | None) -> np.ndarray:
    """An attribution map (H, W): channels summed as Captum does."""
    a = np.asarray(attr)
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise ValueError(
            f"attr must have shape (H, W), (H, W, C) or (C, H, W), got {a.shape}; for a "
            f"batch, visualize one example (attr[i]) or use imgify(..., grid=True)"
        )
    if channel_axis is None:
        if a.shape[-1] in (1, 3, 4):
            channel_axis = -1
        elif a.shape[0] in (1, 3, 4):
            channel_axis = 0
        else:
            raise ValueError(
                f"attr of shape {a.shape} has no obvious channel axis; pass channel_axis"
            )
    return a.sum(axis=channel_axis)


def _image_hwc(image: Any, name: str = "image") -> np.ndarray:
    """Captum's image preparation: (H, W, C) with values 0..255 (int if it was <= 1)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"{name} must have shape (H, W), (H, W, C) or (C, H, W), got {img.shape}")
    if img.shape[-1] not in (1, 3, 4) and img.shape[0] in (1, 3, 4):
        img = np.moveaxis(img, 0, -1)
    if np.max(img) <= 1.0:
        img = np.clip((img * 255).astype(int), 0, 255)
    return img


def _heat_t(norm: np.ndarray, sign: str) -> np.ndarray:
    """Position on the colormap: Captum uses vmin=-1 for 'all', else 0; vmax=1."""
    return (norm + 1.0) / 2.0 if sign == "all" else norm


def _apply_lut(t: np.ndarray, lut: np.ndarray) -> np.ndarray:
    idx = np.clip((np.nan_to_num(t) * lut.shape[0]).astype(np.int64), 0, lut.shape[0] - 1)
    return lut[idx]


def heatmap(
    attr: Any,
    *,
    sign: str = "absolute_value",
    outlier_perc: float = 2,
    cmap: Any = None,
    channel_axis: int | None = None,
) -> np.ndarray:
    """Captum's ``heat_map`` as pixels: the normalized attribution through a colormap.

    Channels are summed, the map is scaled by :func:`normalize_attr` and colored over
    [-1, 1] for ``sign="all"`` and [0, 1] otherwise, by Captum's default colormaps
    (red-white-green for ``all``, Greens, Reds, Blues) unless ``cmap`` is given.

    Args:
        attr: (H, W), (H, W, C) or (C, H, W).
        sign: One of :data:`SIGNS`.
        outlier_perc: See :func:`normalize_attr`.
        cmap: A name in :data:`CMAPS`, a color-map source, a :class:`ColorMap` or any
            callable mapping [0, 1] to RGB(A) floats (a matplotlib colormap).
        channel_axis: The channel axis of a 3-D ``attr`` (default: the axis of size 1, 3
            or 4, last first).

    Returns:
        uint8 RGB pixels, shape (H, W, 3).

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import heatmap
        >>> heatmap(np.array([[0.0, 1.0]]), sign="positive", cmap="gray").tolist()
        [[[0, 0, 0], [255, 255, 255]]]
    """
    _check_sign(sign)
    norm = normalize_attr(_attr_2d(attr, channel_axis), sign, outlier_perc)
    lut = _lut(_DEFAULT_CMAP[sign] if cmap is None else cmap)
    return _apply_lut(_heat_t(norm, sign), lut)


def blended_heat_map(
    attr: Any,
    image: Any,
    *,
    sign: str = "absolute_value",
    outlier_perc: float = 2,
    cmap: Any = None,
    alpha_overlay: float = 0.5,
    channel_axis: int | None = None,
) -> np.ndarray:
    """Captum's ``blended_heat_map`` as pixels: the heat map over a gray image.

    The image's channel mean, scaled to its own min..max (as matplotlib's gray ``imshow``
    does), is blended with :func:`heatmap`: ``alpha_overlay * heat + (1 - alpha) * gray``.

    Args:
        attr: (H, W), (H, W, C) or (C, H, W).
        image: The input image (H, W), (H, W, C) or (C, H, W); values in [0, 1] or 0..255.
        sign: One of :data:`SIGNS`.
        outlier_perc: See :func:`normalize_attr`.
        cmap: See :func:`heatmap`.
        alpha_overlay: Opacity of the heat map, in [0, 1].
        channel_axis: See :func:`heatmap`.

    Returns:
        uint8 RGB pixels, shape (H, W, 3).

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import blended_heat_map
        >>> blended_heat_map(np.ones((2, 2)), np.zeros((2, 2, 3))).shape
        (2, 2, 3)
    """
    heat = heatmap(
        attr, sign=sign, outlier_perc=outlier_perc, cmap=cmap, channel_axis=channel_axis
    ).astype(np.float64)
    img = _image_hwc(image).astype(np.float64)
    if img.shape[:2] != heat.shape[:2]:
        raise ValueError(
            f"image must match the attribution's height and width {heat.shape[:2]}, got "
            f"image shape {img.shape}"
        )
    if not 0.0 <= alpha_overlay <= 1.0:
        raise ValueError(f"alpha_overlay must be in [0, 1], got {alpha_overlay!r}")
    gray = img[..., :3].mean(axis=2)
    span = gray.max() - gray.min()
    gray = (gray - gray.min()) / span if span > 0 else np.zeros_like(gray)
    gray = np.repeat(gray[..., None] * 255.0, 3, axis=2)
    out = alpha_overlay * heat + (1.0 - alpha_overlay) * gray
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def masked_image(
    attr: Any,
    image: Any,
    *,
    sign: str = "absolute_value",
    outlier_perc: float = 2,
    channel_axis: int | None = None,
) -> np.ndarray:
    """Captum's ``masked_image`` as pixels: the image times the normalized attribution.

    Args:
        attr: (H, W), (H, W, C) or (C, H, W).
        image: (H, W), (H, W, C) or (C, H, W); values in [0, 1] or 0..255.
        sign: ``positive``, ``negative`` or ``absolute_value`` (not ``all``).
        outlier_perc: See :func:`normalize_attr`.
        channel_axis: See :func:`heatmap`.

    Returns:
        uint8 pixels (H, W, C) with the image's channels.

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import masked_image
        >>> masked_image(np.array([[0.0, 1.0]]), np.ones((1, 2, 3)))[..., 0].tolist()
        [[0, 255]]
    """
    norm = _norm_for_image(attr, sign, outlier_perc, channel_axis, "masked_image")
    img = _image_hwc(image)
    _check_hw(img, norm)
    return np.clip((img * norm[..., None]).astype(int), 0, 255).astype(np.uint8)


def alpha_scaling(
    attr: Any,
    image: Any,
    *,
    sign: str = "absolute_value",
    outlier_perc: float = 2,
    channel_axis: int | None = None,
) -> np.ndarray:
    """Captum's ``alpha_scaling`` as pixels: the image with the attribution as opacity.

    Args:
        attr: (H, W), (H, W, C) or (C, H, W).
        image: (H, W), (H, W, 3) or (3, H, W); values in [0, 1] or 0..255.
        sign: ``positive``, ``negative`` or ``absolute_value`` (not ``all``).
        outlier_perc: See :func:`normalize_attr`.
        channel_axis: See :func:`heatmap`.

    Returns:
        uint8 RGBA pixels, shape (H, W, 4); gray images are repeated to RGB.

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import alpha_scaling
        >>> alpha_scaling(np.array([[0.0, 1.0]]), np.ones((1, 2, 3)))[..., 3].tolist()
        [[0, 255]]
    """
    norm = _norm_for_image(attr, sign, outlier_perc, channel_axis, "alpha_scaling")
    img = _image_hwc(image)
    _check_hw(img, norm)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=2)
    alpha = np.clip((norm[..., None] * 255).astype(int), 0, 255)
    return np.concatenate([np.clip(img[..., :3], 0, 255), alpha], axis=2).astype(np.uint8)


def _norm_for_image(attr, sign, outlier_perc, channel_axis, what):
    _check_sign(sign)
    if sign == "all":
        raise ValueError(
            f"{what} cannot show positive and negative attributions at once: sign must be "
            f"'positive', 'negative' or 'absolute_value', got 'all'"
        )
    return normalize_attr(_attr_2d(attr, channel_axis), sign, outlier_perc)


def _check_hw(img: np.ndarray, norm: np.ndarray) -> None:
    if img.shape[:2] != norm.shape:
        raise ValueError(
            f"image must match the attribution's height and width {norm.shape}, got image "
            f"shape {img.shape}"
        )


# --------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------


def save_png(path: str | os.PathLike, image: Any) -> str:
    """Write uint8 pixels to a PNG file with ``zlib`` and ``struct`` only.

    Args:
        path: The file to write.
        image: uint8 pixels: (H, W) gray, (H, W, 1), (H, W, 2) gray + alpha, (H, W, 3)
            RGB or (H, W, 4) RGBA (e.g. from :func:`imgify` or :func:`heatmap`).

    Returns:
        The path written, as a string.

    Raises:
        TypeError: ``image`` is not uint8.
        ValueError: ``image`` has another shape.

    Example:
        >>> import numpy as np, os, tempfile
        >>> from jaxattr.viz import save_png
        >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
        >>> path = save_png(path, np.zeros((2, 3, 3), np.uint8))
        >>> open(path, "rb").read(8)
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    with open(path, "wb") as f:
        f.write(_png_bytes(image))
    return os.fspath(path)


def _png_bytes(image: Any) -> bytes:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"image must be uint8 pixels (see imgify/heatmap), got dtype {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4) or 0 in img.shape:
        raise ValueError(
            f"image must have shape (H, W) or (H, W, C) with C in 1..4, got {img.shape}"
        )
    height, width, channels = img.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = np.concatenate(
        [np.zeros((height, 1), np.uint8), np.ascontiguousarray(img).reshape(height, -1)], axis=1
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def interval_norm_bounds(
    input: Any,  # noqa: A002 - Zennit's argument name
    symmetric: bool = False,
    dim: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Zennit's ``interval_norm_bounds``: per-example bounds mapping values to [0, 1].

    ``(min, max)`` over ``dim`` (default every axis but the first), or ``(-max|v|,
    max|v|)`` with ``symmetric=True`` (so 0 maps to 0.5), with the reduced axes kept.

    Args:
        input: An array, batch first (N, ...).
        symmetric: Bounds symmetric around 0.
        dim: The axes reduced (default ``tuple(range(1, input.ndim))``).

    Returns:
        ``(vmin, vmax)``, numpy arrays broadcastable against ``input``.

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import interval_norm_bounds
        >>> lo, hi = interval_norm_bounds(np.array([[-1.0, 3.0], [2.0, 4.0]]))
        >>> lo.ravel().tolist(), hi.ravel().tolist()
        ([-1.0, 2.0], [3.0, 4.0])
        >>> interval_norm_bounds(np.array([[-1.0, 3.0]]), symmetric=True)[0].tolist()
        [[-3.0]]
    """
    a = np.asarray(input)
    if a.ndim < 1:
        raise ValueError("input must have at least one axis (the batch), got a scalar")
    axes = tuple(range(1, a.ndim)) if dim is None else tuple(dim)
    if symmetric:
        vmax = np.abs(a).max(axes, keepdims=True)
        return -vmax, vmax
    return a.min(axes, keepdims=True), a.max(axes, keepdims=True)


def imsave(
    fp: Any,
    obj: Any,
    vmin: Any = None,
    vmax: Any = None,
    cmap: str | ColorMap = "bwr",
    level: float = 1.0,
    grid: bool | tuple[int, int] = False,  # noqa: F811 - Zennit's argument name
    format: str | None = None,  # noqa: A002 - Zennit's argument name
    writer_params: dict | None = None,
    symmetric: bool = False,
    gridfill: Any = None,
) -> None:
    """Zennit's ``imsave``: :func:`imgify` an array and write the image to ``fp``.

    PNG files are written by jaxattr itself (no Pillow); another ``format`` (or a file name
    with another suffix) is handed to Pillow's ``Image.save`` with ``writer_params``, as
    Zennit does. Zennit stores a one-channel map as a palette image; jaxattr stores the
    colored RGB pixels, which are equal to the palette image converted to RGB.

    Args:
        fp: A file name, path or binary file object.
        obj: The array (see :func:`imgify`; a batch with ``grid``).
        vmin: The value mapped to the first color.
        vmax: The value mapped to the last color.
        cmap: Colormap name, source or :class:`ColorMap`.
        level: Palette level (see :func:`palette`).
        grid: ``True`` or ``(rows, cols)`` to tile a batch.
        format: Image format; default from the file name (PNG for file objects).
        writer_params: Keyword arguments of Pillow's ``save`` (other formats only).
        symmetric: Scale symmetrically around 0.
        gridfill: The uint8 value of empty grid cells.

    Example:
        >>> import io, numpy as np
        >>> from jaxattr.viz import imsave
        >>> buf = io.BytesIO()
        >>> imsave(buf, np.array([[-1.0, 0.0, 1.0]]), symmetric=True)
        >>> buf.getvalue()[:4]
        b'\\x89PNG'
    """
    pixels = imgify(
        obj,
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
        level=level,
        symmetric=symmetric,
        grid=grid,
        gridfill=gridfill,
    )
    name = os.fspath(fp) if isinstance(fp, (str, os.PathLike)) else None
    fmt = format
    if fmt is None and name is not None:
        suffix = os.path.splitext(name)[1].lower()
        fmt = "png" if suffix == ".png" else (suffix[1:] or None)
    if fmt is None or str(fmt).lower() == "png":
        if writer_params:
            raise ValueError(
                f"writer_params are Pillow's options; jaxattr writes PNG itself, got "
                f"{sorted(writer_params)}"
            )
        data = _png_bytes(pixels)
        if name is not None:
            with open(name, "wb") as f:
                f.write(data)
        else:
            fp.write(data)
        return
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"imsave writes PNG itself; format {fmt!r} needs Pillow (pip install Pillow)"
        ) from err
    Image.fromarray(pixels).save(fp, format=format, **(writer_params or {}))


# --------------------------------------------------------------------------------------
# PAIR saliency: grayscale and diverging maps
# --------------------------------------------------------------------------------------


def _image_3d(image_3d: Any) -> np.ndarray:
    a = np.asarray(image_3d)
    if a.ndim != 3:
        raise ValueError(
            f"image_3d must have shape (H, W, C) (channels last, as PAIR), got {a.shape}"
        )
    return a


def visualize_image_grayscale(image_3d: Any, percentile: float = 99) -> np.ndarray:
    """PAIR saliency's ``VisualizeImageGrayscale``: a mask as a [0, 1] grayscale map.

    ``|a|`` summed over channels, scaled so that its minimum is 0 and its
    ``percentile``-th percentile is 1, clipped to [0, 1].

    Args:
        image_3d: The attribution, (H, W, C), channels last.
        percentile: The percentile mapped to 1.

    Returns:
        (H, W) floats in [0, 1].

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import visualize_image_grayscale
        >>> visualize_image_grayscale(np.array([[[0.0], [-1.0]], [[2.0], [4.0]]]),
        ...                           percentile=50).tolist()
        [[0.0, 0.6666666666666666], [1.0, 1.0]]
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    image_2d = np.sum(np.abs(_image_3d(image_3d)), axis=2)
    vmax = np.percentile(image_2d, percentile)
    vmin = np.min(image_2d)
    return np.clip((image_2d - vmin) / (vmax - vmin), 0, 1)


def visualize_image_diverging(image_3d: Any, percentile: float = 99) -> np.ndarray:
    """PAIR saliency's ``VisualizeImageDiverging``: a signed mask on [0, 1], 0.5 at zero.

    The channel sum ``s`` is scaled by ``span = |percentile(s, percentile)|`` to
    ``(s + span) / (2 span)`` and clipped to [-1, 1], as PAIR does (so values below
    ``-span`` go negative down to -1).

    Args:
        image_3d: The attribution, (H, W, C), channels last.
        percentile: The percentile of the channel sum that sets the span.

    Returns:
        (H, W) floats.

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import visualize_image_diverging
        >>> visualize_image_diverging(np.array([[[-2.0], [0.0], [2.0]]]), percentile=100)
        array([[0. , 0.5, 1. ]])
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    image_2d = np.sum(_image_3d(image_3d), axis=2)
    span = abs(np.percentile(image_2d, percentile))
    return np.clip((image_2d + span) / (2 * span), -1, 1)


#: PAIR's name of :func:`visualize_image_grayscale`.
VisualizeImageGrayscale = visualize_image_grayscale
#: PAIR's name of :func:`visualize_image_diverging`.
VisualizeImageDiverging = visualize_image_diverging


# --------------------------------------------------------------------------------------
# matplotlib figures
# --------------------------------------------------------------------------------------


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jaxattr.viz figures need matplotlib: pip install jaxattr[viz] (the array "
            "functions heatmap, imgify, save_png, ... work without it)"
        ) from err
    return Figure


def _listed(lut: np.ndarray):
    from matplotlib.colors import ListedColormap

    return ListedColormap(lut.astype(np.float64) / 255.0)


def _fig_axis(plt_fig_axis, fig_size, **kwargs):
    Figure = _matplotlib()
    if plt_fig_axis is not None:
        return plt_fig_axis
    fig = Figure(figsize=fig_size)
    return fig, fig.subplots(**kwargs)


def visualize_image_attr(
    attr: Any,
    image: Any = None,
    *,
    method: str = "heat_map",
    sign: str = "absolute_value",
    outlier_perc: float = 2,
    cmap: Any = None,
    alpha_overlay: float = 0.5,
    show_colorbar: bool = False,
    title: str | None = None,
    fig_size: tuple[float, float] = (6, 6),
    plt_fig_axis: tuple[Any, Any] | None = None,
    channel_axis: int | None = None,
) -> tuple[Any, Any]:
    """Captum's ``visualize_image_attr``: a matplotlib figure of an image attribution.

    Draws with the array functions of this module, so the pixels equal :func:`heatmap`,
    :func:`masked_image` and :func:`alpha_scaling`. The figure is a
    ``matplotlib.figure.Figure`` made without pyplot (nothing is shown; save it with
    ``fig.savefig``), unless ``plt_fig_axis`` gives one to draw into.

    Args:
        attr: (H, W), (H, W, C) or (C, H, W) attribution of one example.
        image: The input image (H, W), (H, W, C) or (C, H, W); needed for every method
            but ``heat_map``.
        method: ``heat_map``, ``blended_heat_map``, ``masked_image``, ``alpha_scaling``
            or ``original_image``.
        sign: One of :data:`SIGNS`.
        outlier_perc: See :func:`normalize_attr`.
        cmap: See :func:`heatmap`.
        alpha_overlay: Heat-map opacity for ``blended_heat_map``.
        show_colorbar: Add a horizontal colorbar below the axis.
        title: Axis title.
        fig_size: Figure size in inches.
        plt_fig_axis: An existing ``(figure, axis)``.
        channel_axis: See :func:`heatmap`.

    Returns:
        ``(figure, axis)``.

    Raises:
        ImportError: matplotlib is not installed (``pip install jaxattr[viz]``).

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import visualize_image_attr
        >>> fig, ax = visualize_image_attr(np.random.rand(8, 8, 3))
        >>> type(fig).__name__
        'Figure'
    """
    methods = ("heat_map", "blended_heat_map", "masked_image", "alpha_scaling", "original_image")
    if method not in methods:
        raise ValueError(f"method must be one of {list(methods)}, got {method!r}")
    _check_sign(sign)
    if image is None and method != "heat_map":
        raise ValueError(f"image is required for method={method!r}; only heat_map works without")
    fig, ax = _fig_axis(plt_fig_axis, fig_size)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(visible=False)
    lut = _lut(_DEFAULT_CMAP[sign] if cmap is None else cmap)
    vmin = -1.0 if sign == "all" else 0.0
    mappable = None
    if method in ("heat_map", "blended_heat_map"):
        norm = normalize_attr(_attr_2d(attr, channel_axis), sign, outlier_perc)
        if method == "blended_heat_map":
            img = _image_hwc(image)
            _check_hw(img, norm)
            ax.imshow(img[..., :3].mean(axis=2), cmap="gray")
        alpha = alpha_overlay if method == "blended_heat_map" else None
        mappable = ax.imshow(norm, cmap=_listed(lut), vmin=vmin, vmax=1.0, alpha=alpha)
    elif method == "masked_image":
        ax.imshow(
            masked_image(
                attr, image, sign=sign, outlier_perc=outlier_perc, channel_axis=channel_axis
            )
        )
    elif method == "alpha_scaling":
        ax.imshow(
            alpha_scaling(
                attr, image, sign=sign, outlier_perc=outlier_perc, channel_axis=channel_axis
            )
        )
    else:
        img = _image_hwc(image)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img.astype(np.uint8))
    if show_colorbar:
        if mappable is not None:
            fig.colorbar(mappable, ax=ax, orientation="horizontal", fraction=0.05, pad=0.05)
    if title:
        ax.set_title(title)
    return fig, ax


def visualize_image_attr_multiple(
    attr: Any,
    original_image: Any,
    methods: Sequence[str],
    signs: Sequence[str],
    titles: Sequence[str] | None = None,
    fig_size: tuple[float, float] = (8, 6),
    use_pyplot: bool = False,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Captum's ``visualize_image_attr_multiple``: several views side by side.

    One axis per ``(method, sign)`` pair in a 1 x k row, each drawn by
    :func:`visualize_image_attr` with ``title`` from ``titles`` and the other ``kwargs``
    (``outlier_perc``, ``cmap``, ``alpha_overlay``, ``show_colorbar``, ``channel_axis``).
    Unlike Captum, ``use_pyplot`` defaults to False: the figure is made without pyplot and
    not shown (``use_pyplot=True`` creates it with pyplot and calls ``plt.show()``, as
    Captum's default does).

    Args:
        attr: (H, W), (H, W, C) or (C, H, W) attribution of one example.
        original_image: The image, or None when every method is ``heat_map``.
        methods: The methods of :func:`visualize_image_attr`, one per axis.
        signs: One of :data:`SIGNS` per axis.
        titles: A title per axis.
        fig_size: Figure size in inches.
        use_pyplot: Create the figure with pyplot and show it.
        **kwargs: Passed to every :func:`visualize_image_attr` call.

    Returns:
        ``(figure, axes)``: one axis for one method, else a list of them (as Captum).

    Raises:
        ImportError: matplotlib is not installed (``pip install jaxattr[viz]``).

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import visualize_image_attr_multiple
        >>> fig, axes = visualize_image_attr_multiple(
        ...     np.random.rand(8, 8, 3), np.random.rand(8, 8, 3),
        ...     ["original_image", "heat_map"], ["all", "positive"], titles=["x", "attr"])
        >>> [ax.get_title() for ax in axes]
        ['x', 'attr']
    """
    methods, signs = list(methods), list(signs)
    if len(methods) != len(signs):
        raise ValueError(
            f"methods and signs must have one entry per view, got {len(methods)} methods and "
            f"{len(signs)} signs"
        )
    if not methods:
        raise ValueError("methods must name at least one view")
    if titles is not None and len(titles) != len(methods):
        raise ValueError(f"titles must give one title per view ({len(methods)}), got {len(titles)}")
    for name in ("plt_fig_axis", "title", "method", "sign", "fig_size"):
        if name in kwargs:
            raise TypeError(f"visualize_image_attr_multiple sets {name} itself; got {name}=")
    if use_pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=fig_size)
    else:
        fig = _matplotlib()(figsize=fig_size)
    axes = fig.subplots(1, len(methods), squeeze=True)
    axis_list = [axes] if len(methods) == 1 else list(np.asarray(axes, dtype=object))
    for i, (method, sign) in enumerate(zip(methods, signs, strict=True)):
        visualize_image_attr(
            attr,
            original_image,
            method=method,
            sign=sign,
            plt_fig_axis=(fig, axis_list[i]),
            title=titles[i] if titles else None,
            **kwargs,
        )
    fig.tight_layout()
    if use_pyplot:
        plt.show()
    return fig, (axis_list[0] if len(methods) == 1 else axis_list)


def visualize_timeseries_attr(
    attr: Any,
    data: Any,
    *,
    x_values: Any = None,
    method: str = "overlay_individual",
    sign: str = "absolute_value",
    channel_labels: Sequence[str] | None = None,
    channels_last: bool = True,
    outlier_perc: float = 2,
    cmap: Any = None,
    alpha_overlay: float = 0.7,
    show_colorbar: bool = False,
    title: str | None = None,
    fig_size: tuple[float, float] = (6, 6),
    plt_fig_axis: tuple[Any, Any] | None = None,
    **plot_kwargs: Any,
) -> tuple[Any, Any]:
    """Captum's ``visualize_timeseries_attr``: a multichannel signal colored by attribution.

    Methods: ``overlay_individual`` (one axis per channel, the attribution as colored
    vertical bands behind each signal), ``overlay_combined`` (one axis, all channels, the
    channel-summed attribution as bands) and ``colored_graph`` (one axis per channel, the
    line itself colored by attribution).

    Args:
        attr: Attribution of one example, (T, C) (or (C, T) with ``channels_last=False``).
        data: The signal, same shape as ``attr``.
        x_values: Time values, shape (T,); default ``arange(T)``.
        method: ``overlay_individual``, ``overlay_combined`` or ``colored_graph``.
        sign: One of :data:`SIGNS`.
        channel_labels: One label per channel.
        channels_last: Whether channels are the last axis.
        outlier_perc: See :func:`normalize_attr`.
        cmap: See :func:`heatmap`.
        alpha_overlay: Opacity of the bands.
        show_colorbar: Add a horizontal colorbar below the last axis.
        title: Title of the first axis.
        fig_size: Figure size in inches.
        plt_fig_axis: An existing ``(figure, axis or axes)``.
        **plot_kwargs: Passed to ``Axes.plot`` (or ``LineCollection``).

    Returns:
        ``(figure, axes)``: one axis or an array of them, as Captum.

    Raises:
        ImportError: matplotlib is not installed (``pip install jaxattr[viz]``).

    Example:
        >>> import numpy as np
        >>> from jaxattr.viz import visualize_timeseries_attr
        >>> fig, axes = visualize_timeseries_attr(np.random.rand(20, 2), np.random.rand(20, 2))
        >>> len(axes)
        2
    """
    methods = ("overlay_individual", "overlay_combined", "colored_graph")
    if method not in methods:
        raise ValueError(f"method must be one of {list(methods)}, got {method!r}")
    _check_sign(sign)
    a, d = np.asarray(attr), np.asarray(data)
    if a.ndim != 2 or d.shape != a.shape:
        raise ValueError(
            f"attr and data must have the same 2-D shape (T, C), got attr {a.shape} and "
            f"data {d.shape}"
        )
    if channels_last:
        a, d = a.T, d.T
    n_channels, length = a.shape
    if method == "overlay_combined":
        a = a.sum(axis=0)
    xs = np.arange(length) if x_values is None else np.asarray(x_values)
    if xs.shape != (length,):
        raise ValueError(f"x_values must have shape ({length},), got {xs.shape}")
    if channel_labels is not None and len(channel_labels) != n_channels:
        raise ValueError(
            f"channel_labels must give one label per channel ({n_channels}), got "
            f"{len(channel_labels)}"
        )
    n_axes = 1 if method == "overlay_combined" else n_channels
    fig, axes = _fig_axis(plt_fig_axis, fig_size, nrows=n_axes, sharex=True)
    axis_list = np.atleast_1d(np.asarray(axes, dtype=object))
    norm = normalize_attr(a, sign, outlier_perc)
    lut = _lut(_DEFAULT_CMAP[sign] if cmap is None else cmap)
    cm = _listed(lut)
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    cm_norm = Normalize(-1.0 if sign == "all" else 0.0, 1.0)
    half = (xs[1] - xs[0]) / 2.0 if length > 1 else 0.5

    def bands(ax, values):
        for center, v in zip(xs, values, strict=False):
            ax.axvspan(
                center - half,
                center + half,
                facecolor=cm(cm_norm(v)),
                edgecolor=None,
                alpha=alpha_overlay,
            )

    if method == "overlay_individual":
        for c in range(n_channels):
            axis_list[c].plot(xs, d[c], **plot_kwargs)
            if channel_labels is not None:
                axis_list[c].set_ylabel(channel_labels[c])
            bands(axis_list[c], norm[c])
        fig.subplots_adjust(hspace=0)
    elif method == "overlay_combined":
        for c in range(n_channels):
            label = channel_labels[c] if channel_labels is not None else None
            axis_list[0].plot(xs, d[c], label=label, **plot_kwargs)
        bands(axis_list[0], norm)
        if channel_labels is not None:
            axis_list[0].legend(loc="best")
    else:
        for c in range(n_channels):
            points = np.stack([xs, d[c]], axis=1).reshape(-1, 1, 2)
            segments = np.concatenate([points[:-1], points[1:]], axis=1)
            lines = LineCollection(segments, cmap=cm, norm=cm_norm, **plot_kwargs)
            lines.set_array(norm[c])
            axis_list[c].add_collection(lines)
            lo, hi = float(d[c].min()), float(d[c].max())
            axis_list[c].set_ylim(1.2 * lo if lo < hi else lo - 1, 1.2 * hi if lo < hi else hi + 1)
            if channel_labels is not None:
                axis_list[c].set_ylabel(channel_labels[c])
        fig.subplots_adjust(hspace=0)
    axis_list[-1].set_xlim(xs[0], xs[-1])
    if show_colorbar:
        fig.colorbar(ScalarMappable(cm_norm, cm), ax=axis_list[-1], orientation="horizontal")
    if title:
        axis_list[0].set_title(title)
    return fig, axes


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def _token_color(value: float) -> str:
    """Captum's text colors: green for positive, red for negative, white at 0."""
    v = max(-1.0, min(1.0, float(value)))
    if v > 0:
        return f"hsl(120, 75%, {100 - int(50 * v)}%)"
    return f"hsl(0, 75%, {100 - int(-40 * v)}%)"


class VisualizationDataRecord:
    """Captum's ``VisualizationDataRecord``: one row of :func:`visualize_text`.

    Same fields, in Captum's order: ``word_attributions`` (one value per token, in
    [-1, 1] for full colors), ``pred_prob``, ``pred_class``, ``true_class``,
    ``attr_class``, ``attr_score``, ``raw_input_ids`` (the tokens) and
    ``convergence_score``. ``word_attributions`` may be a numpy, jax or torch array or a
    list.

    Example:
        >>> from jaxattr.viz import VisualizationDataRecord
        >>> r = VisualizationDataRecord([0.5, -0.2], 0.9, "pos", "pos", "pos", 0.3,
        ...                             ["good", "film"], 0.0)
        >>> r.raw_input_ids, r.pred_prob
        (['good', 'film'], 0.9)
    """

    __slots__ = (
        "word_attributions",
        "pred_prob",
        "pred_class",
        "true_class",
        "attr_class",
        "attr_score",
        "raw_input_ids",
        "convergence_score",
    )

    def __init__(
        self,
        word_attributions: Any,
        pred_prob: float,
        pred_class: Any,
        true_class: Any,
        attr_class: Any,
        attr_score: float,
        raw_input_ids: Sequence[str],
        convergence_score: float,
    ) -> None:
        self.word_attributions = word_attributions
        self.pred_prob = pred_prob
        self.pred_class = pred_class
        self.true_class = true_class
        self.attr_class = attr_class
        self.attr_score = attr_score
        self.raw_input_ids = raw_input_ids
        self.convergence_score = convergence_score

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"VisualizationDataRecord({fields})"


def _legend() -> str:
    swatches = "".join(
        f'<span style="display: inline-block; width: 10px; height: 10px; border: 1px '
        f'solid; background-color: {_token_color(v)}"></span> {name} '
        for v, name in ((-1, "Negative"), (0, "Neutral"), (1, "Positive"))
    )
    return (
        '<div style="border-top: 1px solid; margin-top: 5px; padding-top: 5px; display: '
        f'inline-block"><b>Legend: </b>{swatches}</div>'
    )


def _special(token: str) -> str:
    """Captum's ``format_special_tokens``: ``<s>`` is shown as ``#s``."""
    if token.startswith("<") and token.endswith(">"):
        return "#" + token.strip("<>")
    return token


def _cell(text: str) -> str:
    return f'<td><text style="padding-right:2em"><b>{html.escape(str(text))}</b></text></td>'


def _records_html(records: list, legend: bool) -> str:
    rows = [
        "<tr><th>True Label</th><th>Predicted Label</th><th>Attribution Label</th>"
        "<th>Attribution Score</th><th>Word Importance</th></tr>"
    ]
    for r, rec in enumerate(records):
        if not isinstance(rec, VisualizationDataRecord):
            raise TypeError(
                f"datarecords must all be VisualizationDataRecord, item {r} is {type(rec).__name__}"
            )
        words = [str(w) for w in rec.raw_input_ids]
        values = rec.word_attributions
        if hasattr(values, "detach"):  # a torch tensor
            values = values.detach().cpu().numpy()
        values = np.asarray(values, dtype=np.float64) if values is not None else None
        if values is None or values.size == 0:
            importance = "<td></td>"
        else:
            if values.ndim != 1 or values.shape[0] < len(words):
                raise ValueError(
                    f"record {r}: word_attributions must have shape (T,) with T >= "
                    f"{len(words)} (one per token), got {values.shape}"
                )
            marks = "".join(
                f'<mark style="background-color: {_token_color(v)}; opacity:1.0; '
                f'line-height:1.75"><font color="black"> {html.escape(_special(w))} '
                f"</font></mark>"
                for w, v in zip(words, values, strict=False)
            )
            importance = f"<td>{marks}</td>"
        rows.append(
            "<tr>"
            + _cell(rec.true_class)
            + _cell(f"{rec.pred_class} ({rec.pred_prob:.2f})")
            + _cell(rec.attr_class)
            + _cell(f"{rec.attr_score:.2f}")
            + importance
            + "</tr>"
        )
    return "<table width: 100%>" + (_legend() if legend else "") + "".join(rows) + "</table>"


def visualize_text(
    tokens: Any,
    attributions: Any = None,
    *,
    labels: Sequence[str] | None = None,
    normalize: bool = False,
    legend: bool = True,
) -> str:
    """Per-token attributions as HTML in Captum's ``visualize_text`` colors.

    Two forms:

    - Captum's: ``visualize_text(datarecords, legend=True)`` with a list of
      :class:`VisualizationDataRecord` gives Captum's table (True Label, Predicted Label,
      Attribution Label, Attribution Score, Word Importance), the same markup except that
      tokens and labels are HTML-escaped and rows are closed with ``</tr>``. Captum
      displays it through IPython and returns an ``IPython.display.HTML``; jaxattr returns
      the string (``IPython.display.HTML(s)`` shows it).
    - Tokens and values: ``visualize_text(tokens, attributions, labels=..., normalize=...)``,
      one row per token list, each value shown as the token's tooltip.

    Each token is highlighted green (positive) or red (negative), more saturated the
    larger ``|a|``; values are clipped to [-1, 1] as in Captum, so pass attributions scaled
    to that range or set ``normalize=True`` (token form: divide each row by its largest
    ``|a|``). Needs no matplotlib or IPython.

    Args:
        tokens: A list of :class:`VisualizationDataRecord` (or one record); or the tokens
            of one sequence, or a list of token lists (one row each).
        attributions: Token form: one value per token, (T,), or one such array per row.
        labels: Token form: a label shown in front of each row.
        normalize: Token form: scale each row by its maximum absolute value.
        legend: Add a negative/neutral/positive legend.

    Returns:
        The HTML, as a string.

    Example:
        >>> from jaxattr.viz import VisualizationDataRecord, visualize_text
        >>> "hsl(120, 75%, 50%)" in visualize_text(["good", "film"], [1.0, 0.0])
        True
        >>> rec = VisualizationDataRecord([1.0, 0.0], 0.9, "pos", "pos", "pos", 1.0,
        ...                               ["good", "film"], 0.0)
        >>> "<th>Attribution Score</th>" in visualize_text([rec])
        True
    """
    if isinstance(tokens, VisualizationDataRecord):
        tokens = [tokens]
    if (
        isinstance(tokens, (list, tuple))
        and tokens
        and all(isinstance(t, VisualizationDataRecord) for t in tokens)
    ):
        if attributions is not None or labels is not None or normalize:
            raise ValueError(
                "with VisualizationDataRecords, attributions, labels and normalize are taken "
                "from the records; pass only legend="
            )
        return _records_html(list(tokens), legend)
    if attributions is None:
        raise TypeError(
            "visualize_text takes a list of VisualizationDataRecord, or tokens and "
            "attributions; attributions is missing"
        )
    return _tokens_html(tokens, attributions, labels=labels, normalize=normalize, legend=legend)


def _tokens_html(
    tokens: Sequence[str] | Sequence[Sequence[str]],
    attributions: Any,
    *,
    labels: Sequence[str] | None,
    normalize: bool,
    legend: bool,
) -> str:
    if isinstance(tokens, str):
        raise TypeError("tokens must be a list of strings (or of lists of strings), got a str")
    rows_tokens = [tokens] if tokens and isinstance(tokens[0], str) else list(tokens)
    rows_attr = (
        [np.asarray(attributions)]
        if len(rows_tokens) == 1 and (np.ndim(attributions) == 1)
        else [np.asarray(a) for a in attributions]
    )
    if len(rows_attr) != len(rows_tokens):
        raise ValueError(
            f"attributions must give one row per token row: expected {len(rows_tokens)} rows, "
            f"got {len(rows_attr)}"
        )
    if labels is not None and len(labels) != len(rows_tokens):
        raise ValueError(
            f"labels must give one label per row ({len(rows_tokens)}), got {len(labels)}"
        )
    parts = ['<table style="border-collapse: collapse">']
    for r, (toks, vals) in enumerate(zip(rows_tokens, rows_attr, strict=False)):
        if vals.ndim != 1 or vals.shape[0] != len(toks):
            raise ValueError(
                f"attributions of row {r} must have shape ({len(toks)},) (one per token), got "
                f"{vals.shape}"
            )
        vals = vals.astype(np.float64)
        if normalize and np.abs(vals).max() > 0:
            vals = vals / np.abs(vals).max()
        cells = []
        for tok, v in zip(toks, vals, strict=False):
            cells.append(
                f'<mark style="background-color: {_token_color(v)}; line-height: 1.75" '
                f'title="{v:.4g}"><font color="black"> {html.escape(str(tok))} </font></mark>'
            )
        label = "" if labels is None else f"<td><b>{html.escape(str(labels[r]))}</b></td>"
        parts.append(f"<tr>{label}<td>{''.join(cells)}</td></tr>")
    parts.append("</table>")
    if legend:
        swatches = "".join(
            f'<span style="display: inline-block; width: 10px; height: 10px; border: 1px '
            f'solid; background-color: {_token_color(v)}"></span> {name} '
            for v, name in ((-1, "Negative"), (0, "Neutral"), (1, "Positive"))
        )
        parts.append(f'<div style="margin-top: 5px"><b>Legend: </b>{swatches}</div>')
    return "".join(parts)
