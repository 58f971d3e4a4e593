"""jaxattr.bridge: PyTorch modules as pure JAX functions with named layers.

``from_onnx(path_or_model_proto)`` reads an ONNX model into the same structure (see
:mod:`jaxattr.bridge.onnx_import`). Both front ends build the neutral graph of
:mod:`jaxattr.bridge.graph`, which :class:`Converted` runs and which never imports torch.

``from_torch(module, example_input)`` exports the module with ``torch.export`` (dynamic
batch dimension), decomposes it to core ATen (keeping fast ops such as ``linear`` whole),
and interprets the graph with a table of ``jax.numpy``/``jax.lax`` lowerings. The result is
a :class:`Converted`: ``params`` keyed by torch's ``state_dict`` names, a pure ``fn(params,
*inputs)``, and ``apply``/``layers`` implementing :class:`jaxattr.structure.StructuredModel`.

Example:
    >>> import torch, jax, numpy as np
    >>> from jaxattr import bridge
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    >>> conv = bridge.from_torch(model, torch.randn(2, 4))
    >>> x = np.ones((5, 4), np.float32)
    >>> y = conv(x)
    >>> gx = jax.grad(lambda x: conv.fn(conv.params, x).sum())(x)
"""

from __future__ import annotations

if __name__ != "jaxattr.bridge":  # the repository's bridge/ folder imported directly
    raise ImportError(
        f"the bridge is the installed package jaxattr.bridge (`from jaxattr import bridge`); "
        f"importing the folder as {__name__!r} would load a second copy of it, with classes "
        f"(Converted, the errors) that the first copy does not recognise"
    )

from .convert import from_exported, from_torch, load
from .errors import (
    BridgeError,
    ExportError,
    TrainModeError,
    UnsupportedArgumentsError,
    UnsupportedOpsError,
)
from .graph import Converted
from .lowerings import CONFIG, register_lowering, supported_ops
from .onnx_import import ConcreteInputError, OnnxFormatError, from_onnx, supported_onnx_ops
from .onnx_ops import register_onnx_lowering
from .pt2 import UnsafeArchiveError

__all__ = [
    "CONFIG",
    "BridgeError",
    "ConcreteInputError",
    "Converted",
    "ExportError",
    "OnnxFormatError",
    "TrainModeError",
    "UnsafeArchiveError",
    "UnsupportedArgumentsError",
    "UnsupportedOpsError",
    "from_exported",
    "from_onnx",
    "from_torch",
    "load",
    "register_lowering",
    "register_onnx_lowering",
    "supported_onnx_ops",
    "supported_ops",
]
