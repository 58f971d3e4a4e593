"""The structured-model protocol: how jaxattr sees the layers of a model.

Gradient-only methods need nothing but a function. Rule-based methods (LRP, guided
backprop, DeepLift, ...) and layer/neuron methods need to see *layers*: a converted torch
model, an ONNX graph or a Flax module exposes them through the small protocol defined here.
jaxattr defines the protocol; the bridge and the Flax adapters implement it, so the
dependency runs ``bridge -> jaxattr`` and never back.

A structured model is a pure function ``apply(params, *inputs, intercept=None)`` plus a
table of :class:`Layer` records. While ``apply`` runs, every layer invocation is routed
through ``intercept(layer, layer_fn, layer_params, *layer_inputs)``, which by default just
returns ``layer_fn(layer_params, *layer_inputs)``. An interceptor may instead run the layer
under a ``jax.custom_vjp`` rule, add a perturbation to its output (a *tap*), or record its
input/output. Nothing is hooked or mutated: every variant is a new pure function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "LAYER_KINDS",
    "Intercept",
    "Layer",
    "StructuredModel",
    "default_intercept",
]

#: The layer kinds jaxattr's composites and layer methods understand. A bridge maps each
#: layer onto one of these; ``"other"`` is for layers no rule needs to recognise.
LAYER_KINDS = frozenset(
    {
        "linear",  # dense / fully connected (torch Linear, flax Dense, ONNX Gemm)
        "conv",  # convolution of any rank, grouped and depthwise included
        "conv_transpose",
        "activation",  # elementwise nonlinearity (relu, gelu, tanh, ...)
        "softmax",
        "batch_norm",
        "norm",  # layer/group/instance norm
        "avg_pool",  # average pools, adaptive included
        "max_pool",
        "add",  # elementwise sums of two or more tensors (residual connections)
        "mul",
        "attention",
        "embedding",
        "recurrent",  # LSTM / GRU
        "dropout",
        "reshape",  # flatten, view, permute and friends
        "upsample",
        "other",
    }
)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One named layer of a structured model.

    Attributes:
        name: Unique, stable path of the layer, e.g. ``"layer4.1.conv2"`` for a torch module
            or ``"layer4.1.add"`` for the residual sum inside a block. A module called
            several times (a shared ``ReLU``) gives one ``Layer`` per call site, the later
            ones suffixed ``":1"``, ``":2"``, ...
        kind: One of :data:`LAYER_KINDS`.
        op: The framework-specific type, e.g. ``"Conv2d"``, ``"aten.add.Tensor"``.
        param_names: Maps the layer's local parameter names (``"weight"``, ``"bias"``) to
            the keys of the model's ``params`` pytree (``"layer4.1.conv2.weight"``).
        attrs: Static hyper-parameters a rule may need (``stride``, ``padding``,
            ``negative_slope``, ...).
    """

    name: str
    kind: str
    op: str = ""
    param_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(
                f"Layer {self.name!r}: kind must be one of {sorted(LAYER_KINDS)}, got {self.kind!r}"
            )


#: ``intercept(layer, layer_fn, layer_params, *layer_inputs) -> layer_outputs``.
#: ``layer_fn(layer_params, *layer_inputs)`` computes the layer unchanged; ``layer_params``
#: is a dict keyed by the layer's local parameter names.
Intercept = Callable[..., Any]


def default_intercept(layer: Layer, layer_fn: Callable[..., Any], layer_params, *inputs):
    """The identity interceptor: run the layer unchanged."""
    del layer
    return layer_fn(layer_params, *inputs)


@runtime_checkable
class StructuredModel(Protocol):
    """What a model must offer for rule-based, layer and neuron methods.

    Attributes:
        params: The parameter pytree (a flat ``dict`` of arrays for bridged models).
        layers: Every layer invocation in execution order, keyed by :attr:`Layer.name`.
    """

    params: Any
    layers: Mapping[str, Layer]

    def apply(self, params: Any, *inputs: Any, intercept: Intercept | None = None) -> Any:
        """Run the model as a pure function, routing each layer through ``intercept``."""
        ...
