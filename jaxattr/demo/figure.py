"""Figures of the demo and of ``jaxattr explain``: labelled with matplotlib, plain without it.

Both figures use one sign convention: **red is positive relevance** (evidence for the
explained class), **blue is negative** (evidence against it), white or transparent is zero;
each heat map is scaled symmetrically to its own largest ``|value|``.

With matplotlib (the ``viz`` extra, ``pip install jaxattr[viz]``) the figures carry method
names, class labels, the true-shape outline with its legend and colour bars. Without it the
same panels are written with :func:`jaxattr.viz.save_png` (numpy and zlib only), without
text (:func:`plain_overlay`, and ``jaxattr.demo.run.write_grid`` for the demo): a
blue-white-red strip under each heat map stands for the colour bar.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SIGN_CONVENTION",
    "build_demo_figure",
    "build_overlay_figure",
    "demo_figure",
    "have_matplotlib",
    "overlay_figure",
    "plain_overlay",
    "signed_map",
    "upscale_factor",
]

#: The sentence every figure's colour bar carries.
SIGN_CONVENTION = "red = positive (evidence for the class), blue = negative (against)"

#: Smallest side, in pixels, an input is shown at in the figures without matplotlib.
MIN_SIDE = 192


def have_matplotlib() -> bool:
    """Whether matplotlib (the ``viz`` extra) can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def signed_map(attr: Any, channel_axis: int | None) -> np.ndarray:
    """One signed 2-D map per example: ``(N, H, W)`` from ``(N, C, H, W)``/``(N, H, W, C)``.

    Channels are summed (keeping the sign); an ``(N, H, W)`` array is returned as is and an
    ``(N, 1, H, W)`` map (Grad-CAM) loses its channel axis.

    Example:
        >>> signed_map(np.ones((2, 3, 4, 5)), channel_axis=1).shape
        (2, 4, 5)
    """
    a = np.asarray(attr, np.float32)
    if a.ndim == 4 and channel_axis is not None:
        return a.sum(axis=channel_axis)
    if a.ndim == 3:
        return a
    raise ValueError(f"a heat map needs (N, H, W) or an image batch, got shape {a.shape}")


def upscale_factor(height: int, width: int, min_side: int = MIN_SIDE) -> int:
    """The integer factor that shows an image with its shorter side at least ``min_side``.

    Example:
        >>> upscale_factor(32, 32), upscale_factor(300, 400)
        (6, 1)
    """
    return max(1, -(-min_side // max(1, min(height, width))))


def _scaled(m: np.ndarray) -> tuple[np.ndarray, float]:
    """``m / max|m|`` in [-1, 1] and ``max|m|`` (1 for an all-zero map)."""
    vmax = float(np.abs(m).max()) if m.size else 0.0
    vmax = vmax if vmax > 0 and np.isfinite(vmax) else 1.0
    return np.clip(m / vmax, -1.0, 1.0), vmax


def _to_display(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) or (H, W) image as float RGB in [0, 1]."""
    img = np.asarray(image, np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    return np.clip(img, 0.0, 1.0)


def _gray(image: np.ndarray) -> np.ndarray:
    img = _to_display(image)
    return img @ np.array([0.299, 0.587, 0.114], np.float32)


def _bwr(scaled: np.ndarray) -> np.ndarray:
    """Float RGB of the blue-white-red map for values in [-1, 1]."""
    from jaxattr import viz

    lut = viz.palette("bwr").astype(np.float32) / 255.0
    idx = np.clip(((scaled + 1.0) * 127.5).round(), 0, 255).astype(int)
    return lut[idx]


def _blend(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The heat map over the grayscale input: opacity grows with ``|relevance|``."""
    scaled, _ = _scaled(m)
    gray = _gray(image)[..., None]
    gray = 0.35 + 0.5 * gray  # a faded background, so that colours stay readable
    alpha = (np.abs(scaled) ** 0.7 * 0.9)[..., None]
    return gray * (1.0 - alpha) + _bwr(scaled) * alpha


def _u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)


def _pad(tile: np.ndarray, width: int = 4) -> np.ndarray:
    return np.pad(tile, ((width, width), (width, width), (0, 0)), constant_values=255)


def _strip(width: int, height: int = 10) -> np.ndarray:
    """A horizontal blue-white-red bar: the colour bar of the figures without matplotlib."""
    ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32)
    return np.repeat(_bwr(ramp)[None], height, 0)


# --------------------------------------------------------------------------- demo figure
def demo_figure(
    path: Path,
    images: np.ndarray,
    masks: np.ndarray,
    maps: Mapping[str, np.ndarray],
    row_labels: Sequence[str],
    column_notes: Mapping[str, str] | None = None,
    title: str = "",
    dpi: int = 100,
) -> Path:
    """The demo's grid: one row per image (its class on the left), the input then one
    column per method (its name on top), the true shape outlined on every panel.

    Args:
        path: The PNG to write.
        images: (N, H, W, 3) images (values outside [0, 1] are clipped for display).
        masks: (N, H, W) booleans, the true shapes.
        maps: ``method name -> (N, H, W)`` signed maps.
        row_labels: One label per image (its class).
        column_notes: ``method name -> short line`` printed under the method's name (the
            demo's scores).
        title: A line over the figure.
        dpi: Resolution of the PNG.

    Returns:
        ``path``.

    Raises:
        ImportError: No matplotlib (``jaxattr.demo.run.write_grid`` is the plain grid).
    """
    fig = build_demo_figure(images, masks, maps, row_labels, column_notes, title, dpi)
    fig.savefig(path, dpi=dpi)
    return Path(path)


def build_demo_figure(
    images: np.ndarray,
    masks: np.ndarray,
    maps: Mapping[str, np.ndarray],
    row_labels: Sequence[str],
    column_notes: Mapping[str, str] | None = None,
    title: str = "",
    dpi: int = 100,
) -> Any:
    """The ``matplotlib.figure.Figure`` of :func:`demo_figure` (not saved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n, cols = images.shape[0], 1 + len(maps)
    notes = dict(column_notes or {})
    fig = Figure(figsize=(1.05 * cols + 0.6, 1.1 * n + 2.0), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(n, cols, squeeze=False))
    for i in range(n):
        panels = [("input", None)] + [(name, m[i]) for name, m in maps.items()]
        for j, (name, m) in enumerate(panels):
            ax = axes[i, j]
            if m is None:
                ax.imshow(_to_display(images[i]), interpolation="nearest")
            else:
                ax.imshow(_scaled(m)[0], cmap="bwr", vmin=-1, vmax=1, interpolation="nearest")
            ax.contour(masks[i].astype(float), levels=[0.5], colors="limegreen", linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                head = "\n".join(textwrap.wrap(name, 20, break_long_words=False)[:2])
                if name in notes:
                    head += "\n" + notes[name]
                ax.set_title(head, fontsize=7)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
    bar = fig.colorbar(
        ScalarMappable(norm=Normalize(-1, 1), cmap="bwr"),
        ax=list(axes[:, 1:].ravel()) if cols > 1 else list(axes.ravel()),
        location="bottom",
        shrink=0.6,
        aspect=45,
        ticks=[-1, 0, 1],
    )
    bar.ax.set_xticklabels(["-max|R|", "0", "+max|R|"], fontsize=7)
    bar.set_label(f"relevance R: {SIGN_CONVENTION}; each map scaled to its own max|R|", fontsize=7)
    fig.legend(
        handles=[Line2D([], [], color="limegreen", lw=1.5, label="true shape (outline)")],
        loc="outside lower left",
        fontsize=7,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


# --------------------------------------------------------------------------- explain figure
def overlay_figure(
    path: Path,
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    title: str = "",
    dpi: int = 100,
) -> Path:
    """One input and each method's heat map laid over it, each with a colour bar.

    Args:
        path: The PNG to write.
        image: (H, W, 3) or (H, W) in [0, 1].
        maps: ``panel title -> (H, W)`` signed map (same size as the image).
        title: A line over the figure (the file and the explained class).
        dpi: Resolution of the PNG.

    Small inputs are upscaled: every panel is about 2.6 inches wide whatever the input
    size (a 32x32 input is shown 8x), the heat map smoothed bilinearly, the input pixels
    kept sharp. Without matplotlib, the same panels upscaled to at least 192 pixels and a
    colour strip under each heat map, without text.
    """
    if not have_matplotlib():
        return plain_overlay(path, image, maps)
    build_overlay_figure(image, maps, title, dpi).savefig(path, dpi=dpi)
    return Path(path)


def build_overlay_figure(
    image: np.ndarray, maps: Mapping[str, np.ndarray], title: str = "", dpi: int = 100
) -> Any:
    """The ``matplotlib.figure.Figure`` of :func:`overlay_figure` (not saved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    cols = 1 + len(maps)
    fig = Figure(figsize=(2.9 * cols, 3.3), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(1, cols, squeeze=False))[0]
    axes[0].imshow(_to_display(image), interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    for ax, (name, m) in zip(axes[1:], maps.items(), strict=True):
        scaled, vmax = _scaled(m)
        ax.imshow(0.35 + 0.5 * _gray(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        rgba = np.concatenate([_bwr(scaled), (np.abs(scaled) ** 0.7 * 0.9)[..., None]], -1)
        ax.imshow(rgba, interpolation="bilinear")
        ax.set_title("\n".join(textwrap.wrap(name, 32, break_long_words=False)[:2]), fontsize=9)
        bar = fig.colorbar(
            ScalarMappable(norm=Normalize(-vmax, vmax), cmap="bwr"),
            ax=ax,
            fraction=0.046,
            pad=0.03,
        )
        bar.ax.tick_params(labelsize=7)
        bar.ax.yaxis.get_offset_text().set_fontsize(7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle((title + "\n" if title else "") + SIGN_CONVENTION, fontsize=9)
    return fig


def plain_overlay(path: Path, image: np.ndarray, maps: Mapping[str, np.ndarray]) -> Path:
    """:func:`overlay_figure` without matplotlib: panels in a row, a colour strip under each
    heat map (blue left = negative, red right = positive), no text."""
    from jaxattr import viz

    h, w = np.asarray(image).shape[:2]
    k = upscale_factor(h, w)
    big = lambda a: a.repeat(k, 0).repeat(k, 1)  # noqa: E731
    blank = np.ones((10, w * k, 3), np.float32)
    tiles = [np.concatenate([big(_to_display(image)), blank], 0)]
    for m in maps.values():
        tiles.append(np.concatenate([big(_blend(image, m)), _strip(w * k)], 0))
    viz.save_png(path, np.concatenate([_pad(_u8(t)) for t in tiles], 1))
    return Path(path)
