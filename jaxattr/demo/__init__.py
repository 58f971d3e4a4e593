"""The embedded demo: procedurally drawn shapes, a small CNN trained on them, shipped weights.

The data is generated deterministically, so every shape's true location (its pixel mask)
is known and attributions can be scored for localisation. ``python -m jaxattr.demo.train``
retrains the shipped weights from scratch.
"""

from jaxattr.demo.data import CLASSES, make_shapes
from jaxattr.demo.model import DemoCNN, demo_model, load_model

__all__ = ["CLASSES", "DemoCNN", "demo_model", "load_model", "make_shapes"]
