"""Procedurally drawn shapes whose true location is known."""

from __future__ import annotations

import numpy as np

#: Class names, in label order.
CLASSES = ("square", "disk", "triangle", "cross")


def _shape_mask(kind: int, size: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    dy, dx = yy - cy, xx - cx
    if kind == 0:  # square
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == 1:  # disk
        return dy**2 + dx**2 <= r**2
    if kind == 2:  # triangle, apex up
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    w = max(1, r // 3)  # cross
    return ((np.abs(dy) <= r) & (np.abs(dx) <= w)) | ((np.abs(dx) <= r) & (np.abs(dy) <= w))


def make_shapes(
    n: int, seed: int = 0, size: int = 32, noise: float = 0.15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` images, each with one coloured shape on a noisy background.

    The class is the shape (see :data:`CLASSES`), never its colour or position, so a model
    must look at the shape to classify it; its pixel mask is the ground-truth location.

    Args:
        n: Number of images.
        seed: Seed of the generator (the same seed gives the same images).
        size: Image height and width.
        noise: Standard deviation of the background noise.

    Returns:
        ``(images, labels, masks)``: float32 images of shape (n, size, size, 3) (NHWC,
        values roughly in [-0.5, 1.5]), int32 labels (n,) and boolean masks (n, size, size).

    Example:
        >>> from jaxattr.demo import make_shapes
        >>> images, labels, masks = make_shapes(2, seed=1)
        >>> images.shape, labels.shape, masks.shape
        ((2, 32, 32, 3), (2,), (2, 32, 32))
    """
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, noise, size=(n, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, len(CLASSES), size=n).astype(np.int32)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        r = int(rng.integers(4, 8))
        cy, cx = rng.integers(r + 1, size - r - 1, size=2)
        mask = _shape_mask(int(labels[i]), size, int(cy), int(cx), r)
        color = rng.uniform(0.4, 1.0, size=3).astype(np.float32)
        images[i][mask] += color
        masks[i] = mask
    return images, labels, masks
