"""The demo CNN (Flax Linen, NHWC) and its shipped weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching

WEIGHTS = Path(__file__).with_name("weights.npz")


class DemoCNN(nn.Module):
    """Three 3x3 convolutions with ReLU and max-pooling, global average pool, dense head.

    Input (N, 32, 32, 3) NHWC, output (N, 4) logits. Layer names: ``conv1``, ``conv2``,
    ``conv3`` (the 8x8 feature map used for Grad-CAM) and ``fc``.
    """

    num_classes: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(32, (3, 3), name="conv2")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(32, (3, 3), name="conv3")(x))
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


def save_params(params: Any, path: Path = WEIGHTS) -> None:
    """Save a Linen params tree as a flat ``.npz`` (keys like ``conv1/kernel``)."""
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in kp): np.asarray(v)
        for kp, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    np.savez_compressed(path, **flat)


def load_params(path: Path = WEIGHTS) -> dict:
    """Load the params tree saved by :func:`save_params`."""
    if not Path(path).exists():
        raise FileNotFoundError(
            f"demo weights not found at {path}; run `python -m jaxattr.demo.train` to make them"
        )
    params: dict = {}
    with np.load(path) as data:
        for key in data.files:
            node = params
            *parents, leaf = key.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = jnp.asarray(data[key])
    return params


def load_model(path: Path = WEIGHTS) -> tuple[Callable[[jax.Array], jax.Array], DemoCNN, dict]:
    """The trained demo model.

    Returns:
        ``(fn, module, params)``: ``fn(x)`` maps (N, 32, 32, 3) images to (N, 4) logits;
        ``module.apply({"params": params}, x)`` is the same computation.

    Example:
        >>> from jaxattr.demo import load_model, make_shapes
        >>> fn, module, params = load_model()
        >>> fn(make_shapes(3)[0]).shape
        (3, 4)
    """
    module = DemoCNN()
    params = load_params(path)
    apply = _caching.jit(module.apply)
    fn = lambda x: apply({"params": params}, x)  # noqa: E731
    return fn, module, params


def demo_model(path: Path = WEIGHTS):
    """The trained demo CNN as a structured model (named layers, for rules and taps).

    Returns:
        A :class:`jaxattr.flax.FlaxModel` with layers ``conv1``, ``conv2``, ``conv3`` and
        ``fc``; calling it maps (N, 32, 32, 3) images to (N, 4) logits.

    Example:
        >>> from jaxattr.demo import demo_model
        >>> list(demo_model().layers)
        ['conv1', 'conv2', 'conv3', 'fc']
    """
    from jaxattr.flax import from_linen

    params = load_params(path)
    return from_linen(DemoCNN(), {"params": params}, jnp.zeros((1, 32, 32, 3)))
