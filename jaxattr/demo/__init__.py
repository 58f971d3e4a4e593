"""The embedded demo: procedurally drawn shapes, a small CNN trained on them, shipped weights.

The data is generated deterministically, so every shape's true location (its pixel mask)
is known and attributions can be scored for localisation. ``python -m jaxattr.demo.train``
retrains the shipped weights from scratch; :func:`jaxattr.demo.torch_model.demo_cnn` is the
same network as a ``torch.nn.Module`` (for ``jaxattr explain``).

The names below are imported on first use, so that ``jaxattr.demo.figure`` (used by
``jaxattr explain``) does not import Flax.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CLASSES", "DemoCNN", "demo_model", "load_model", "make_shapes"]

_WHERE = {
    "CLASSES": "jaxattr.demo.data",
    "make_shapes": "jaxattr.demo.data",
    "DemoCNN": "jaxattr.demo.model",
    "demo_model": "jaxattr.demo.model",
    "load_model": "jaxattr.demo.model",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxattr.demo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
