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

import jax

__all__ = [
    "LAYER_KINDS",
    "Intercept",
    "Layer",
    "LayerCall",
    "LayerTrace",
    "StructuredModel",
    "chain",
    "default_intercept",
    "trace_layers",
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


def chain(*intercepts: Intercept | None) -> Intercept:
    """Compose interceptors, outermost first (``None`` entries are skipped).

    ``chain(a, b)`` hands each layer to ``a``, whose ``layer_fn`` runs the layer through
    ``b``: ``a`` sees (and may change) the layer's inputs before ``b`` and its outputs
    after ``b``. A tap that records a layer's output around a rule composite is
    ``chain(tap, rules)``.

    Args:
        *intercepts: Interceptors ``(layer, layer_fn, layer_params, *inputs) -> outputs``.

    Returns:
        One interceptor; :func:`default_intercept` when none is given.

    Example:
        >>> from jaxattr.structure import Layer, chain
        >>> seen = []
        >>> def spy(layer, f, p, *xs):
        ...     seen.append(layer.name)
        ...     return f(p, *xs)
        >>> double = lambda layer, f, p, *xs: 2 * f(p, *xs)
        >>> chain(spy, double)(Layer("a", "other"), lambda p, v: v + 1, {}, 1)
        4
        >>> seen
        ['a']
    """
    live = [i for i in intercepts if i is not None]
    if not live:
        return default_intercept
    outer, *rest = live
    if not rest:
        return outer
    inner = chain(*rest)

    def chained(layer: Layer, layer_fn: Callable[..., Any], layer_params, *inputs):
        return outer(layer, lambda p, *xs: inner(layer, layer_fn, p, *xs), layer_params, *inputs)

    return chained


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One layer call of an abstract run (see :func:`trace_layers`).

    Values are numbered in the order the trace first sees them: the same number is the same
    array object (a tensor read by two layers has one number).

    Attributes:
        layer: The layer that ran.
        inputs: The value number of each input (``None`` for a non-array input).
        outputs: The value numbers of the output's leaves, in ``jax.tree_util`` order
            (``None`` for a non-array leaf).
        output: The output's shapes and dtypes, a pytree of ``jax.ShapeDtypeStruct``.
    """

    layer: Layer
    inputs: tuple[int | None, ...]
    outputs: tuple[int | None, ...]
    output: Any


@dataclasses.dataclass(frozen=True)
class LayerTrace:
    """Every layer call of one abstract run, in order (see :func:`trace_layers`).

    Attributes:
        calls: The layer calls, in execution order.
        args: The value number of each positional model input (``None``: not an array).
    """

    calls: tuple[LayerCall, ...]
    args: tuple[int | None, ...]

    def layers(self) -> dict[str, Layer]:
        """Each layer that ran, by name, in order of its first call."""
        found: dict[str, Layer] = {}
        for c in self.calls:
            found.setdefault(c.layer.name, c.layer)
        return found

    def first_call(self, name: str) -> int | None:
        """The index of the first call of layer ``name``; ``None`` if it did not run."""
        return next((i for i, c in enumerate(self.calls) if c.layer.name == name), None)

    def producers(self, *, first: bool = True) -> dict[int, tuple[int, int]]:
        """``{value: (call, leaf)}``: the layer call whose output leaf is that value.

        A layer that returns its input object unchanged produces that value again:
        ``first=True`` keeps the earliest producer, ``first=False`` the latest.
        """
        made: dict[int, tuple[int, int]] = {}
        for k, c in enumerate(self.calls):
            for j, v in enumerate(c.outputs):
                if not first or v not in made:
                    made[v] = (k, j)
        return made


def trace_layers(
    apply: Callable[..., Any],
    params: Any,
    *inputs: Any,
    intercept: Intercept | None = None,
    call: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> LayerTrace:
    """Run a structured model abstractly (:func:`jax.eval_shape`) and record its layer calls.

    The one way jaxattr learns which layers run, what each reads and makes, and their
    shapes (layer discovery, canonizer graphs, tap sources): nothing is computed.

    Args:
        apply: The model's ``apply(params, *inputs, intercept=..., **kwargs)``.
        params: Its parameters (arrays or ``jax.ShapeDtypeStruct``).
        *inputs: Operands (arrays or ``jax.ShapeDtypeStruct``), handed to ``call``.
        intercept: An inner interceptor each layer runs through (e.g. rule composites).
        call: ``call(model_fn, *inputs)`` maps the operands to the model's positional
            inputs; by default ``model_fn(*inputs)``.
        **kwargs: Keyword inputs of ``apply``.

    Returns:
        The :class:`LayerTrace`.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.structure import Layer, trace_layers
        >>> a, b = Layer("a", "activation"), Layer("b", "add")
        >>> def apply(params, x, intercept):
        ...     h = intercept(a, lambda p, v: jnp.tanh(v), {}, x)
        ...     return intercept(b, lambda p, u, v: u + v, {}, h, x)
        >>> t = trace_layers(apply, {}, jnp.ones((2, 3)))
        >>> [(c.layer.name, c.inputs, c.outputs, c.output.shape) for c in t.calls]
        [('a', (0,), (1,), (2, 3)), ('b', (1, 0), (2,), (2, 3))]
        >>> t.args
        (0,)
    """
    ids: dict[int, int] = {}
    keep: list[Any] = []  # the objects whose ids are keys above stay alive
    calls: list[LayerCall] = []
    args: list[int | None] = []
    run = intercept or default_intercept

    def number(v: Any) -> int | None:
        if not hasattr(v, "shape") or not hasattr(v, "dtype"):
            return None
        if id(v) not in ids:
            ids[id(v)] = len(ids)
            keep.append(v)
        return ids[id(v)]

    def record(layer: Layer, layer_fn: Callable[..., Any], layer_params, *xs):
        ins = tuple(number(v) for v in xs)
        out = run(layer, layer_fn, layer_params, *xs)
        leaves = jax.tree_util.tree_leaves(out)
        shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out)
        calls.append(LayerCall(layer, ins, tuple(number(v) for v in leaves), shapes))
        return out

    def traced(p: Any, *ops: Any) -> Any:
        def model_fn(*a: Any) -> Any:
            args.extend(number(v) for v in a)
            return apply(p, *a, intercept=record, **kwargs)

        return call(model_fn, *ops) if call is not None else model_fn(*ops)

    jax.eval_shape(traced, params, *inputs)
    return LayerTrace(tuple(calls), tuple(args))


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
