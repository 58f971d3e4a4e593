"""Excitation backprop and contrastive excitation backprop (TorchRay), as rule composites."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr import _caching, _core, _rules, _torchray
from jaxattr._composites import (
    LINEAR,
    Composite,
)
from jaxattr._core import PyTree
from jaxattr._rules import ParamMod, Rule
from jaxattr.structure import chain, trace_layers

__all__ = [
    "contrastive_excitation_backprop",
    "excitation_backprop",
]

Model = Any


# ---- excitation backprop (TorchRay) ----


def _ebp_linear_rule(flip: bool = False) -> Rule:
    def mod(p, name):
        return jnp.clip(-p if flip else p, 0, None)

    return Rule(
        "ebp_linear_flipped" if flip else "ebp_linear",
        param_modifiers=[ParamMod(mod, zero_params=("bias",))],
        gradient_mapper=lambda g, zs: [g / (zs[0] + 1e-20)],
        reducer=lambda xs, gs: xs[0] * gs[0],
    )


def _ebp_sum_backward(layer_fn, params, inputs, outputs, out_grad):
    return tuple(x / outputs * out_grad for x in inputs)


_EBP_POOL = Rule(
    "ebp_pool",
    param_modifiers=[ParamMod(param_keys=())],
    gradient_mapper=lambda g, zs: [g / (zs[0] + 1e-20)],
    reducer=lambda xs, gs: xs[0] * gs[0],
)
_EBP_SUM = Rule("ebp_sum", backward=_ebp_sum_backward)
_EBP_LINEAR = _ebp_linear_rule()
_EBP_FLIPPED = _ebp_linear_rule(True)


@_caching.lru(8)
def _ebp_composite(flip_layer: str | None = None) -> Composite:
    name_map = ((flip_layer, _EBP_FLIPPED),) if flip_layer else ()
    return Composite(
        name_map=name_map,
        layer_map=(
            (LINEAR, _EBP_LINEAR),
            ("avg_pool", _EBP_POOL),
            ("add", _EBP_SUM),
            ("batch_norm", _rules.pass_rule()),
        ),
        name="torchray_excitation_backprop",
    )


def _layer_outputs(model, params, inputs, names, kwargs):
    """Abstract shapes of the named layers' outputs."""
    calls = trace_layers(model.apply, params, *inputs, **kwargs).calls
    shapes: dict[str, Any] = {}
    for c in calls:
        if c.layer.name in names:
            shapes.setdefault(c.layer.name, c.output)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ValueError(
            f"layer {missing[0]!r} is not a layer of the model; known layers: "
            f"{list(model.layers)[:20]}..."
        )
    return shapes


def _tapped_apply(model, composite, params, inputs, kwargs, taps, subtract=None):
    """Run with composite rules, adding ``taps[name]`` to named layer outputs.

    ``subtract[name]``: a cotangent removed from the gradient flowing into that layer's
    output (TorchRay's contrast).
    """

    def tap(layer, layer_fn, p, *xs):
        out = layer_fn(p, *xs)
        if subtract is not None and layer.name in subtract:
            out = _subtract_grad(out, subtract[layer.name])
        if layer.name in taps:
            out = out + taps[layer.name]
        return out

    intercept = chain(tap, composite.intercept(model.layers))
    return model.apply(params, *inputs, intercept=intercept, **kwargs)


@jax.custom_vjp
def _subtract_grad(x, c):
    return x


def _subtract_fwd(x, c):
    return x, c


def _subtract_bwd(c, g):
    return g - c, jnp.zeros_like(c)


_subtract_grad.defvjp(_subtract_fwd, _subtract_bwd)


def _reduce_channels(a, sum_channels, channel_axis, clamp):
    if not sum_channels:
        return jnp.maximum(a, 0) if clamp else a
    axis = channel_axis % a.ndim
    if not 1 <= axis < a.ndim:
        raise ValueError(
            f"channel_axis must name a non-batch axis, got {channel_axis} for an "
            f"array of rank {a.ndim}"
        )
    s = jnp.sum(a, axis=axis, keepdims=True)
    return jnp.maximum(s, 0) if clamp else s


@_core.cached_jit(
    (
        "model",
        "inputs",
        "layer",
        "contrast_layer",
        "classifier_layer",
        "sum_channels",
        "channel_axis",
    )
)
def _ebp_core(
    *,
    model,
    inputs,
    params,
    x,
    args,
    kwargs,
    target,
    layer,
    contrast_layer,
    classifier_layer,
    sum_channels,
    channel_axis,
):
    all_in = (*x, *args) if inputs.is_tuple else (x, *args)
    names = [n for n in (layer, contrast_layer) if n is not None]
    shapes = _layer_outputs(model, params, all_in, names, kwargs) if names else {}

    def grad_at(comp, point_name, subtract=None):
        """Pseudo-gradient at the input (point_name None) or at a layer output."""

        def f(x_, tap):
            a = (*x_, *args) if inputs.is_tuple else (x_, *args)
            taps = {point_name: tap} if point_name is not None else {}
            y = _tapped_apply(model, comp, params, a, kwargs, taps, subtract)
            return jnp.sum(_core.target_score(y, target))

        zero = (
            jnp.zeros(shapes[point_name].shape, shapes[point_name].dtype)
            if point_name is not None
            else jnp.zeros(())
        )
        gx, gt = jax.grad(f, argnums=(0, 1))(x, zero)
        return gx if point_name is None else gt

    if contrast_layer is None:
        g = grad_at(_ebp_composite(None), layer)
        clamp = False
    else:
        contrast = grad_at(_ebp_composite(classifier_layer), contrast_layer)
        contrast = jax.lax.stop_gradient(contrast)
        g = grad_at(_ebp_composite(None), layer, {contrast_layer: contrast})
        clamp = True
    return jax.tree_util.tree_map(
        lambda a: _reduce_channels(a, sum_channels, channel_axis, clamp), g
    )


def _excitation(
    model,
    x,
    target,
    layer,
    contrast_layer,
    classifier_layer,
    sum_channels,
    channel_axis,
    args,
    kwargs,
    params,
    torchray_options,
    method,
):
    """Both excitation backprops: the prologue, the compiled core and TorchRay's finish."""
    resize, resize_mode, smooth = _torchray.check_options(*torchray_options)
    s = _core.prepare_structured(
        model, x, target=target, args=args, kwargs=kwargs, params=params, method=method
    )
    if method == "contrastive_excitation_backprop":
        for nm, val in (
            ("contrast_layer", contrast_layer),
            ("classifier_layer", classifier_layer),
            ("saliency_layer", layer),
        ):
            if val is not None and val not in model.layers:
                raise ValueError(f"{nm}: {val!r} is not a layer of the model")
        if classifier_layer is None:
            classifier_layer = _last_linear(model)
    sal = _ebp_core(
        model=model,
        **s.core_args(),
        layer=layer,
        contrast_layer=contrast_layer,
        classifier_layer=classifier_layer,
        sum_channels=sum_channels,
        channel_axis=channel_axis,
    )
    return _torchray.finish_tree(
        sal,
        s.x,
        reduce=None,
        channel_axis=channel_axis,
        resize=resize,
        resize_mode=resize_mode,
        smooth=smooth,
    )


@_core.contract
def excitation_backprop(
    model: Any,
    x: PyTree,
    *,
    target: Any = None,
    layer: str | None = None,
    sum_channels: bool = True,
    channel_axis: int = 1,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
    saliency_layer: str | None = None,
    resize: bool | str | Sequence[int] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
) -> PyTree:
    """Excitation backprop (Zhang et al., 2016) with TorchRay's rules.

    Linear and conv layers pass ``x * J(w+)^T (p / (z(x, w+) + 1e-20))`` back (positive
    weights, no bias), average pools ``x * J^T (p / (z + 1e-20))``, residual sums
    ``x_i / z * p``, batch norms pass ``p`` unchanged; ReLUs and max pools keep their
    gradient. The map is the pseudo-gradient at the input (or at ``saliency_layer``'s
    output), summed over channels as TorchRay's ``excitation_backprop`` does, then
    resized (``resize``) and smoothed (``smooth``) as TorchRay's ``saliency``: with the
    defaults this is TorchRay's ``excitation_backprop(model, x, target, saliency_layer)``.
    Zennit's ``ExcitationBackprop`` composite is :func:`excitation_backprop_composite`
    (with :func:`lrp`). TorchRay applies the residual-sum rule only to a ResNet passed
    through its ``update_resnet``; jaxattr applies it to every ``add`` layer.

    Args:
        model: A structured model.
        x: Input array (N, C, ...) or a tuple of them.
        target: What to explain (see :func:`jaxattr.select_target`).
        layer: The same as ``saliency_layer`` (its older name here).
        sum_channels: Sum over ``channel_axis`` (keeping it, size 1), as TorchRay.
        channel_axis: The channel axis.
        args: Extra positional model inputs after ``x``; not attributed.
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).
        saliency_layer: Take the map at this layer's output instead of the input
            (TorchRay's ``saliency_layer``; ``None`` or ``""``: the input).
        resize: ``False``; ``True`` (or ``"input"``) resizes the map to x's spatial size;
            a tuple gives the size in TorchRay's (width, height) order.
        resize_mode: ``"bilinear"`` (TorchRay's default), ``"linear"``, ``"trilinear"``
            or ``"nearest"``.
        smooth: If > 0, blur with TorchRay's ``imsmooth`` of standard deviation
            ``smooth * max(spatial size)`` (replicate padding), after resizing.

    Returns:
        With no layer: x's structure, each leaf (N, 1, ...) when summed, x's shape
        otherwise; with a layer: the map at that layer's output; ``resize`` changes the
        spatial sizes.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr.structure import Layer, default_intercept
        >>> class Dense:
        ...     params = {"w": jnp.array([[1.0], [-3.0]])}
        ...     layers = {"fc": Layer("fc", "linear", param_names={"weight": "w"})}
        ...     def apply(self, p, x, intercept=None):
        ...         return intercept(self.layers["fc"], lambda q, v: v @ q["weight"],
        ...                          {"weight": p["w"]}, x)
        >>> jaxattr.excitation_backprop(Dense(), jnp.array([[2.0, 1.0]]), target=0,
        ...                             sum_channels=False)
        Array([[1., 0.]], dtype=float32)
    """
    return _excitation(
        model,
        x,
        target,
        _torchray.saliency_layer_alias(layer, saliency_layer),
        None,
        None,
        sum_channels,
        channel_axis,
        args,
        kwargs,
        params,
        (resize, resize_mode, smooth),
        "excitation_backprop",
    )


def _last_linear(model) -> str:
    for name, layer in reversed(list(model.layers.items())):
        if layer.kind in ("linear", "conv") and layer.param_names:
            return name
    raise ValueError("classifier_layer: the model has no linear or conv layer with weights")


@_core.contract
def contrastive_excitation_backprop(
    model: Any,
    x: PyTree,
    *,
    target: Any = None,
    contrast_layer: str,
    classifier_layer: str | None = None,
    layer: str | None = None,
    sum_channels: bool = True,
    channel_axis: int = 1,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
    saliency_layer: str | None = None,
    resize: bool | str | Sequence[int] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
) -> PyTree:
    """Contrastive excitation backprop (Zhang et al., 2016), TorchRay's definition.

    First the excitation of the target is propagated with the classifier layer's weights
    negated, down to ``contrast_layer``'s output (the contrast). Then it is propagated with
    the real weights, and at ``contrast_layer`` the contrast is subtracted before going on
    to the input (or ``saliency_layer``). The map is ``max(sum over channels, 0)``,
    optionally resized: TorchRay's ``contrastive_excitation_backprop(model, x, target,
    saliency_layer, contrast_layer, classifier_layer, resize)``. ``smooth`` is an
    addition (TorchRay's contrastive variant has none).

    Args:
        model: A structured model.
        x: Input array (N, C, ...).
        target: What to explain (see :func:`jaxattr.select_target`).
        contrast_layer: Name of the layer whose output receives the contrast.
        classifier_layer: The last linear layer (default: the last linear/conv layer).
        layer: The same as ``saliency_layer`` (its older name here).
        sum_channels: Sum over ``channel_axis`` (keeping it), then clamp at 0.
        channel_axis: The channel axis.
        args: Extra positional model inputs after ``x``; not attributed.
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).
        saliency_layer: Take the map at this layer's output instead of the input
            (TorchRay's ``saliency_layer``; ``None`` or ``""``: the input. TorchRay's
            contrastive variant has no input option: its ``""`` probes the model's
            output).
        resize: ``False``; ``True`` (or ``"input"``) resizes the map to x's spatial size;
            a tuple gives the size in TorchRay's (width, height) order.
        resize_mode: ``"bilinear"`` (TorchRay's default), ``"linear"``, ``"trilinear"``
            or ``"nearest"``.
        smooth: If > 0, blur with TorchRay's ``imsmooth`` of standard deviation
            ``smooth * max(spatial size)`` (replicate padding), after resizing.

    Returns:
        The map (see :func:`excitation_backprop`).

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr.structure import Layer, default_intercept
        >>> class Mlp:
        ...     params = {"a": jnp.array([[1.0, 2.0], [0.5, 1.0]]),
        ...               "b": jnp.array([[1.0, -1.0], [-1.0, 2.0]])}
        ...     layers = {"fc1": Layer("fc1", "linear", param_names={"weight": "a"}),
        ...               "fc2": Layer("fc2", "linear", param_names={"weight": "b"})}
        ...     def apply(self, p, x, intercept=None):
        ...         mm = lambda q, v: v @ q["weight"]
        ...         h = jax.nn.relu(intercept(self.layers["fc1"], mm, {"weight": p["a"]}, x))
        ...         return intercept(self.layers["fc2"], mm, {"weight": p["b"]}, h)
        >>> jaxattr.contrastive_excitation_backprop(
        ...     Mlp(), jnp.array([[1.0, 1.0]]), target=1, contrast_layer="fc1").shape
        (1, 1)
    """
    return _excitation(
        model,
        x,
        target,
        _torchray.saliency_layer_alias(layer, saliency_layer),
        contrast_layer,
        classifier_layer,
        sum_channels,
        channel_axis,
        args,
        kwargs,
        params,
        (resize, resize_mode, smooth),
        "contrastive_excitation_backprop",
    )
