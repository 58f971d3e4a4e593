"""Taps: read, perturb or replace any named layer's input or output.

One mechanism serves every layer and neuron method (DESIGN.md, "taps"): a structured
model (:class:`jaxattr.structure.StructuredModel`) is run with an interceptor that, at the
tapped layers, records the activation and adds a perturbation to it (an additive zero
whose gradient is the layer gradient) or replaces it outright (to interpolate in the
layer's space, or to ablate its units). Nothing is hooked or mutated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr import _caching, _core
from jaxattr.structure import StructuredModel

__all__ = [
    "Tap",
    "as_structured",
    "resolve_layer",
    "resolve_layers",
    "run_tapped",
    "tap_shapes",
]


@dataclasses.dataclass(frozen=True)
class Tap:
    """Where a tap sits: a layer invocation and whether it reads its input or output."""

    layer: str  # a key of model.layers
    to_input: bool = False
    request: str = ""  # the name the user gave (a container path resolves to a layer)
    #: For the input of a container: every layer run inside it. The container's input is
    #: replaced wherever one of them consumes it (a ResNet block's input also feeds its
    #: downsample branch), as a hook on the container would.
    group: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.layer + (":input" if self.to_input else "")


def as_structured(model: Any, name: str = "model") -> StructuredModel:
    """Check that ``model`` exposes its layers (the bridge, the Flax adapters)."""
    if not (hasattr(model, "apply") and hasattr(model, "layers") and hasattr(model, "params")):
        raise TypeError(
            f"{name} must be a structured model with named layers (jaxattr.bridge.from_torch, "
            f"jaxattr.flax.from_linen / from_nnx), got {type(model).__name__}; plain functions "
            f"work with the input methods (gradient, integrated_gradients, ...)"
        )
    return model


def resolve_layers(model: StructuredModel, layer: str, to_input: bool = False) -> tuple[Tap, ...]:
    """Like :func:`resolve_layer`, but a container returning a tuple gives one tap per tensor.

    Captum attributes each tensor of a layer that returns a tuple; a model that can tell
    (``output_layers``, the bridge) lists them, in execution order.
    """
    if (
        isinstance(layer, str)
        and not to_input
        and layer not in model.layers
        and hasattr(model, "output_layers")
    ):
        try:
            names = model.output_layers(layer)
        except (KeyError, ValueError):
            names = []
        if len(names) > 1:
            return tuple(Tap(name, False, layer) for name in names)
    return (resolve_layer(model, layer, to_input),)


def one_tensor(layer: str, taps: tuple[Tap, ...]) -> Tap:
    """The single tap of ``layer``, or the named error for a layer returning a tuple."""
    if len(taps) > 1:
        raise ValueError(
            f"layer {layer!r} returns a tuple of {len(taps)} tensors (made by layers "
            f"{[t.layer for t in taps]}); this method attributes one tensor: name one of "
            f"them, or use a method that returns a tuple for it (layer_activation, "
            f"layer_gradient_x_activation, layer_lrp, layer_integrated_gradients, "
            f"layer_conductance, internal_influence, layer_gradient_shap, layer_deep_lift, "
            f"layer_feature_ablation, grad_cam, grad_cam_plus_plus)"
        )
    return taps[0]


def resolve_single(model: StructuredModel, layer: str, to_input: bool = False) -> Tap:
    """:func:`resolve_layer`, refusing a container that returns a tuple of tensors."""
    return one_tensor(layer, resolve_layers(model, layer, to_input))


def resolve_layer(model: StructuredModel, layer: str, to_input: bool = False) -> Tap:
    """Resolve a user's layer name to a tap.

    A key of ``model.layers`` is used as is. A container path (``"layer4"`` of a ResNet)
    resolves, when the model can tell, to the layer producing the container's output or,
    with ``to_input``, to the first layer run inside it.

    Raises:
        KeyError: No such layer; the message lists what exists.
    """
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name (str), got {type(layer).__name__}")
    if layer in model.layers:
        return Tap(layer, to_input, layer)
    try:
        if to_input and hasattr(model, "module_layers"):
            inside = tuple(model.module_layers(layer))
            return Tap(inside[0], True, layer, inside)
        if not to_input and hasattr(model, "output_layer"):
            return Tap(model.output_layer(layer), False, layer)
    except (KeyError, ValueError):
        pass
    names = list(model.layers)
    shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
    raise KeyError(f"layer {layer!r} is not a layer of the model; layers are: {shown}")


def run_tapped(
    model: StructuredModel,
    params: Any,
    inputs: _core.Inputs,
    x: Any,
    args: tuple,
    kwargs: Mapping[str, Any],
    taps: Sequence[Tap],
    *,
    perturb: Mapping[str, Any] | None = None,
    replace: Mapping[str, Any] | None = None,
    intercept: Callable[..., Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Run the model with taps; returns ``(output, {tap.key: activation})``.

    Args:
        model: The structured model.
        params: Its parameters.
        inputs: Layout of ``x``.
        x: The model input(s).
        args: Extra positional inputs.
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``).
        taps: Where to read.
        perturb: ``{tap.key: delta}`` added to the activation (after it is recorded).
        replace: ``{tap.key: value}`` used instead of the activation (recorded as is).
        intercept: An inner interceptor (e.g. a rule composite) applied to every layer.
    """
    by_layer: dict[str, list[Tap]] = {}
    shared: dict[str, list[Tap]] = {}  # other layers of a container whose input is tapped
    for t in taps:
        by_layer.setdefault(t.layer, []).append(t)
        for name in t.group[1:]:
            shared.setdefault(name, []).append(t)
    originals: dict[str, tuple[Any, Any]] = {}  # tap key -> (original input, routed input)
    acts: dict[str, Any] = {}
    perturb = perturb or {}
    replace = replace or {}

    def route(value, key):
        if key in replace:
            value = replace[key]
        acts[key] = value
        if key in perturb:
            value = value + perturb[key]
        return value

    def tapping(layer, layer_fn, layer_params, *xs):
        run = intercept or (lambda lay, f, p, *a: f(p, *a))
        here = by_layer.get(layer.name)
        if layer.name in shared:
            xs = list(xs)
            for t in shared[layer.name]:
                if t.key in originals:
                    orig, routed = originals[t.key]
                    xs = [routed if v is orig else v for v in xs]
        if not here:
            return run(layer, layer_fn, layer_params, *xs)
        xs = list(xs)
        for t in here:
            if t.to_input:
                orig = xs[0]
                xs[0] = route(xs[0], t.key)
                originals[t.key] = (orig, xs[0])
        out = run(layer, layer_fn, layer_params, *xs)
        for t in here:
            if not t.to_input:
                out = route(out, t.key)
        return out

    call = lambda *a: model.apply(params, *a, intercept=tapping, **dict(kwargs))  # noqa: E731
    y = inputs.call(call, x, args)
    missing = [t.request or t.layer for t in taps if t.key not in acts]
    if missing:
        raise ValueError(f"layer(s) {missing} did not run for this input")
    return y, acts


def tap_shapes(model, params, inputs, x, args, kwargs, taps) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of the tapped activations (no computation)."""
    return jax.eval_shape(
        lambda p, x_, a_: run_tapped(model, p, inputs, x_, a_, kwargs, taps)[1], params, x, args
    )


def layer_gradients(
    model, params, inputs, x, args, kwargs, taps, target, *, replace=None, intercept=None
) -> tuple[dict, dict, Any]:
    """Gradients of the target score w.r.t. the tapped activations.

    Returns:
        ``(gradients, activations, output)``, the first two keyed by ``tap.key``.
    """
    shapes = tap_shapes(model, params, inputs, x, args, kwargs, taps)
    zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}

    def score(delta):
        y, acts = run_tapped(
            model,
            params,
            inputs,
            x,
            args,
            kwargs,
            taps,
            perturb=delta,
            replace=replace,
            intercept=intercept,
        )
        return jnp.sum(_core.target_score(y, target)), (acts, y)

    grads, (acts, y) = jax.grad(score, has_aux=True)(zeros)
    return grads, acts, y


@_caching.model_pytree(["model"], static=["kw_names"])
class _ModelFunction:
    """``fn(*inputs, *kw_values)``: a structured model with its own params, as a function."""

    def __init__(self, model: Any, kw_names: tuple):
        self.model = model
        self.kw_names = kw_names

    def __call__(self, *a: Any) -> Any:
        n = len(a) - len(self.kw_names)
        kwargs = dict(zip(self.kw_names, a[n:], strict=False))
        return self.model.apply(self.model.params, *a[:n], **kwargs)


def model_function(model: Any, kw_names: tuple = ()) -> Callable[..., Any]:
    """A ``fn(*inputs, *kw_values)`` of the model with its own params (a pytree)."""
    return _ModelFunction(model, tuple(kw_names))
