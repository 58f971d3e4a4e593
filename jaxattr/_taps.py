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
import numpy as np

from jaxattr import _caching, _core
from jaxattr.structure import StructuredModel, chain, trace_layers

__all__ = [
    "Tap",
    "input_taps",
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
    #: For an input: which of the layer's inputs (``layer_inputs[index]`` as the model's
    #: ``apply`` hands them to the interceptor); a layer or container receiving several
    #: tensors gives one tap per tensor.
    index: int = 0

    @property
    def key(self) -> str:
        if not self.to_input:
            return self.layer
        return self.layer + ":input" + (str(self.index) if self.index else "")


def resolve_layers(model: StructuredModel, layer: str, to_input: bool = False) -> tuple[Tap, ...]:
    """Like :func:`resolve_layer`, but one tap per tensor of a layer's tuple.

    Captum attributes each tensor of a layer that returns a tuple and, with
    ``attribute_to_layer_input``, each tensor a layer receives (its forward's positional
    arguments). A model that can tell lists them: ``output_layers`` (the bridge) for the
    outputs, in execution order; for the inputs, the bridge's graph (:func:`input_taps`),
    in the order the layer's code first reads them.
    """
    if isinstance(layer, str) and to_input:
        taps = input_taps(model, layer)
        if taps is not None:
            return taps
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


def _graph(model: Any) -> Any:
    """The bridge's graph (layers with their input values), or None for other models."""
    names = ("_groups", "_node_paths", "_node_order", "_node_inputs", "_user_ph")
    if not all(hasattr(model, n) for n in names):
        return None
    return model


def input_taps(model: StructuredModel, layer: str) -> tuple[Tap, ...] | None:
    """One tap per tensor that ``layer`` (a layer or a container path) receives.

    A bridged model knows, for every layer, the values it reads (``apply`` hands them to
    the interceptor in that order); a container's inputs are the tensors made outside it
    and read inside it. Each is tapped where the first layer inside reads it, and replaced
    in every layer of the container reading it. Tensors are listed in the order the
    layer's code first reads them: the argument order of its ``forward`` unless it reads
    a later argument before an earlier one (the exported graph does not record which
    argument a tensor was bound to); a tensor passed twice (``block(x, x)``) is one input.

    Returns:
        The taps, or None when the model cannot list a layer's inputs (a Flax model:
        :func:`run_tapped` then refuses a layer receiving several tensors by name).

    Raises:
        ValueError: An input of the container is read only by operations outside any
            layer (a reshape), where no interceptor can replace it.
    """
    g = _graph(model)
    if g is None:
        return None
    groups = {grp.layer.name: grp for grp in g._groups}
    if layer in model.layers:
        grp = groups.get(layer)
        if grp is None or len(grp.inputs) < 2:
            return None  # one tensor (or none): resolve_layer's tap
        return tuple(Tap(layer, True, layer, (), i) for i in range(len(grp.inputs)))
    if not hasattr(model, "module_layers"):
        return None
    try:
        inside = tuple(model.module_layers(layer))
    except (KeyError, ValueError):
        return None  # resolve_layer names the error
    members = {n for n, ps in g._node_paths.items() if layer in ps}
    tensors = set(g._user_ph)  # values known to be tensors (not symbolic sizes)
    for grp in g._groups:
        tensors.update(grp.inputs)
        tensors.update(grp.outputs)
    received: list[str] = []
    for node in g._node_order:
        if node in members:
            for v in g._node_inputs.get(node, ()):
                if v not in members and v in tensors and v not in received:
                    received.append(v)
    if not received:
        return None
    in_layers = {n for name in inside for n in model.layer_nodes.get(name, ())}
    loose = [n for n in g._node_order if n in members and n not in in_layers]
    taps = []
    for i, v in enumerate(received):
        reads = [(name, groups[name].inputs.index(v)) for name in inside
                 if name in groups and v in groups[name].inputs]  # fmt: skip
        # an operation outside any layer (a reshape) passing it on: no interceptor sees it
        by_op = [n for n in loose if v in g._node_inputs.get(n, ())]
        if not reads or any(n in tensors for n in by_op):
            raise ValueError(
                f"layer {layer!r}: its input {i} (graph value {v!r}) is read by an "
                f"operation outside any layer (a reshape or view: {by_op[0]!r}), where "
                f"it cannot be replaced; tap the input of a layer inside it instead: "
                f"{list(inside)[:6]}"
            )
        first, index = reads[0]
        taps.append(Tap(first, True, layer, inside, index))
    return tuple(taps)


def one_tensor(layer: str, taps: tuple[Tap, ...]) -> Tap:
    """The single tap of ``layer``, or the named error for a tuple of tensors."""
    if len(taps) > 1:
        methods = (
            "layer_activation, layer_gradient_x_activation, layer_lrp, "
            "layer_integrated_gradients, layer_conductance, internal_influence, "
            "layer_gradient_shap, layer_deep_lift, layer_feature_ablation, grad_cam, "
            "grad_cam_plus_plus"
        )
        if taps[0].to_input:
            raise ValueError(
                f"layer {layer!r} receives {len(taps)} tensors (inputs "
                f"{[(t.layer, t.index) for t in taps]} as (layer, input index)); this "
                f"method attributes one tensor: tap a layer receiving one of them, or use "
                f"a method that returns a tuple for it ({methods})"
            )
        raise ValueError(
            f"layer {layer!r} returns a tuple of {len(taps)} tensors (made by layers "
            f"{[t.layer for t in taps]}); this method attributes one tensor: name one of "
            f"them, or use a method that returns a tuple for it ({methods})"
        )
    return taps[0]


def resolve_single(model: StructuredModel, layer: str, to_input: bool = False) -> Tap:
    """:func:`resolve_layer`, refusing a container that returns a tuple of tensors."""
    return one_tensor(layer, resolve_layers(model, layer, to_input))


def resolve_layer(model: StructuredModel, layer: str, to_input: bool = False) -> Tap:
    """Resolve a user's layer name to a tap.

    A key of ``model.layers`` is used as is. A container path (``"layer4"`` of a ResNet)
    resolves, when the model can tell, to the layer producing the container's output or,
    with ``to_input``, to the first layer run inside it (:func:`resolve_layers` finds the
    layer reading each input on a bridged model).

    Raises:
        KeyError: No such layer, or one the forward pass never reaches; the message names
            it and lists the layers that run.
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
    raise KeyError(
        f"layer {layer!r} is not a layer of the model: no layer or module of that name is "
        f"reached by its forward pass (a module the forward never runs has no activation to "
        f"attribute); layers are: {shown}"
    )


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

    A replacement reaches only the tapped layer (or the layers of a tapped container), as
    a hook on it would. A perturbation of a layer's *input* that is not replaced is added
    where that tensor is made, so that every use of it sees it: the gradient is taken with
    respect to the tensor, as Captum's ``autograd.grad`` on the inputs its hook saw (a
    layer reading ``h`` and ``tanh(h)`` gets, for ``h``, the path through ``tanh`` too).

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
        for name in t.group:
            if name != t.layer:
                shared.setdefault(name, []).append(t)
    originals: dict[str, tuple[Any, Any]] = {}  # tap key -> (original input, routed input)
    acts: dict[str, Any] = {}
    perturb = perturb or {}
    replace = replace or {}
    at_source = {t.key: t for t in taps if t.to_input and t.key in perturb and t.key not in replace}
    made = _sources(model, params, inputs, x, args, kwargs, tuple(at_source.values()), intercept)
    out_adds: dict[int, list[tuple[int, str]]] = {}  # layer call -> (output leaf, tap key)
    site_adds: dict[int, list[tuple[int, str]]] = {}  # layer call -> (input index, tap key)
    arg_adds: dict[int, str] = {}  # model input -> tap key
    for key, (where, *pos) in made.items():
        if where == "out":
            out_adds.setdefault(pos[0], []).append((pos[1], key))
        elif where == "arg":
            arg_adds[pos[0]] = key
        else:
            for call, i in pos[0]:
                site_adds.setdefault(call, []).append((i, key))
    calls = [0]

    def route(value, key):
        if key in replace:
            value = replace[key]
        acts[key] = value
        if key in perturb and key not in made:
            value = value + perturb[key]
        return value

    def tapping(layer, layer_fn, layer_params, *xs):
        call = calls[0]
        calls[0] += 1
        here = by_layer.get(layer.name)
        xs = list(xs)
        for i, key in site_adds.get(call, ()):
            xs[i] = xs[i] + perturb[key]
        if layer.name in shared:
            for t in shared[layer.name]:
                if t.key in originals:
                    orig, routed = originals[t.key]
                    xs = [routed if v is orig else v for v in xs]
        if here:
            _check_inputs(layer.name, here, xs)
            for t in here:
                if t.to_input:
                    orig = xs[t.index]
                    xs[t.index] = route(orig, t.key)
                    originals[t.key] = (orig, xs[t.index])
        out = layer_fn(layer_params, *xs)
        for t in here or ():
            if not t.to_input:
                out = route(out, t.key)
        if call in out_adds:
            leaves, tree = jax.tree_util.tree_flatten(out)
            for j, key in out_adds[call]:
                leaves[j] = leaves[j] + perturb[key]
            out = jax.tree_util.tree_unflatten(tree, leaves)
        return out

    def model_call(*a):
        a = list(a)
        for i, key in arg_adds.items():
            a[i] = a[i] + perturb[key]
        return model.apply(params, *a, intercept=chain(tapping, intercept), **dict(kwargs))

    y = inputs.call(model_call, x, args)
    missing = [t.request or t.layer for t in taps if t.key not in acts]
    if missing:
        raise ValueError(f"layer(s) {missing} did not run for this input")
    return y, acts


def _sources(model, params, inputs, x, args, kwargs, taps, intercept) -> dict[str, tuple]:
    """Where the tensors read by input ``taps`` are made, found on an abstract run.

    ``{tap.key: place}`` with place ``("out", call, leaf)`` (output leaf of the call-th
    layer run), ``("arg", i)`` (the model's i-th positional input), or ``("sites",
    ((call, index), ...))`` for a tensor made outside any layer: every layer input that
    reads it (uses outside layers are not seen).
    """
    if not taps:
        return {}

    def apply(p, *a, intercept):
        return model.apply(p, *a, intercept=intercept, **dict(kwargs))

    trace = trace_layers(apply, params, x, args, intercept=intercept, call=inputs.call)
    made = trace.producers(first=True)
    found: dict[str, tuple] = {}
    for t in taps:
        v = next(
            (c.inputs[t.index] for c in trace.calls
             if c.layer.name == t.layer and t.index < len(c.inputs)),
            None,
        )  # fmt: skip
        if v is None or t.key in found:
            continue
        if v in made:
            found[t.key] = ("out", *made[v])
        elif v in trace.args:
            found[t.key] = ("arg", trace.args.index(v))
        else:
            sites = tuple((k, i) for k, c in enumerate(trace.calls) for i, u in enumerate(c.inputs)
                          if u == v)  # fmt: skip
            found[t.key] = ("sites", sites)
    return found


def _check_inputs(name: str, here: Sequence[Tap], xs: Sequence[Any]) -> None:
    """Refuse to tap one input of a layer receiving several that were not all resolved.

    A model that cannot list a layer's inputs before it runs (a Flax model) gets one tap
    on the first; reading it alone would silently drop the others.
    """
    own = {t.index for t in here if t.to_input and not t.group}
    if not own:
        return
    arrays = [i for i, v in enumerate(xs) if isinstance(v, (jax.Array, np.ndarray))]
    if len(arrays) > 1 and not set(arrays) <= own:
        raise ValueError(
            f"layer {name!r} receives {len(arrays)} tensors, but this model cannot list a "
            f"layer's inputs before running it, so only the first would be attributed; "
            f"tap a layer that receives one tensor (or its output) instead"
        )


def _tapped_acts(model, params, inputs, args, kwargs, taps, x):
    return run_tapped(model, params, inputs, x, args, kwargs, taps)[1]


def tap_shapes(model, params, inputs, x, args, kwargs, taps) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of the tapped activations (no computation).

    Memoized by the model's structure and the shapes of everything (:func:`_caching.probe`):
    an abstract run of the whole model costs tens of milliseconds of Python, paid once
    per shape instead of on every call.
    """
    fixed = (model, params, inputs, *_caching.abstract_numpy((args, dict(kwargs))), taps)
    return _caching.probe(_tapped_acts, fixed, x)[0]


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
