"""Layer and neuron methods and class activation maps, all composed over one tap mechanism.

Layer methods read or perturb a named layer of a structured model (a bridged torch model
or a Flax model) with :mod:`jaxattr._taps`; neuron methods turn "one neuron of a layer"
into a plain function and hand it to the input methods (gradient, integrated gradients,
GradientSHAP, ...), so no method is written twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core, _taps, _torchray
from jaxattr._core import PyTree
from jaxattr._gradient import gradient
from jaxattr._integrated import QUADRATURES, _quadrature, checked_quadrature, integrated_gradients
from jaxattr._noise import gradient_shap, gradient_shap_draws, resolve_baselines

__all__ = [
    "NeuronModel",
    "layer_deep_lift_shap",
    "layer_feature_permutation",
    "neuron_deconvolution",
    "neuron_deep_lift_shap",
    "neuron_guided_backprop",
    "neuron_feature_ablation",
    "neuron_deep_lift",
    "layer_lrp",
    "layer_deep_lift",
    "guided_grad_cam",
    "for_each_neuron",
    "for_each_target",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient_to_saliency",
    "internal_influence",
    "interpolate",
    "layer_activation",
    "layer_conductance",
    "layer_feature_ablation",
    "layer_gradient_shap",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "linear_approx",
    "neuron_conductance",
    "neuron_gradient",
    "neuron_gradient_shap",
    "neuron_integrated_gradients",
    "neuron_model",
    "probe",
    "score_cam",
]

Model = Any


# --------------------------------------------------------------------------------------
# Set-up shared by every layer method
# --------------------------------------------------------------------------------------


class _Setup:
    """Validated call: the model, inputs, target, taps, params and keyword inputs."""

    def __init__(
        self,
        model,
        x,
        layers,
        *,
        target,
        args,
        kwargs,
        params,
        to_input,
        need_target=True,
        tuple_ok=False,
    ):
        self.model = _taps.as_structured(model)
        self.x = _core.to_arrays(x)
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.inputs = _core.as_inputs(self.x, need_float=False)
        self.kw_names = tuple(sorted(self.kwargs))
        self.kw_values = tuple(self.kwargs[k] for k in self.kw_names)
        self.params = self.model.params if params is None else params
        single = isinstance(layers, str)
        names = [layers] if single else list(layers)
        if not names:
            raise ValueError("layer must name at least one layer, got an empty list")
        self.single = single
        resolved = [_taps.resolve_layers(self.model, n, to_input) for n in names]
        self.sizes = [len(r) for r in resolved]  # >1: a layer returning a tuple of tensors
        if not tuple_ok:  # a layer returning a tuple: the named error
            for n, taps in zip(names, resolved, strict=True):
                _taps.one_tensor(n, taps)
        self.taps = tuple(t for r in resolved for t in r)
        self.fn = _taps.model_function(self.model, self.kw_names)
        self.target = (
            _core.prepare_target(target, self.fn, self.inputs, self.x, self.args + self.kw_values)
            if need_target
            else None
        )

    def common(self) -> dict[str, Any]:
        return dict(
            model=self.model,
            inputs=self.inputs,
            taps=self.taps,
            params=self.params,
            x=self.x,
            args=self.args,
            kwargs=self.kwargs,
        )

    def out(self, values: Sequence[Any]) -> Any:
        """One value per requested layer (a tuple for a layer returning a tuple)."""
        it = iter(values)
        grouped = [next(it) if k == 1 else tuple(next(it) for _ in range(k)) for k in self.sizes]
        return grouped[0] if self.single else grouped


def _check_float_x(x, name="x"):
    _core.as_inputs(x, need_float=True, name=name)


# --------------------------------------------------------------------------------------
# Activations and gradient x activation
# --------------------------------------------------------------------------------------


@_core.cached_jit(("model", "inputs", "taps"))
def _activation_core(*, model, inputs, taps, params, x, args, kwargs):
    _, acts = _taps.run_tapped(model, params, inputs, x, args, kwargs, taps)
    return [acts[t.key] for t in taps]


@_core.contract
def layer_activation(
    model: Model,
    x: PyTree,
    layer: str | Sequence[str],
    *,
    attribute_to_layer_input: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> Any:
    """The activation of one or several layers (Captum's ``LayerActivation``).

    Args:
        model: A structured model (``jaxattr.bridge.from_torch(...)``, a Flax adapter).
        x: Model input of shape (N, ...), or a tuple of inputs.
        layer: A layer name (``"layer4.1.conv2"``; container paths such as ``"layer4"``
            resolve to the layer producing the container's output), or a list of names.
        attribute_to_layer_input: Return the layer's input instead of its output.
        args: Extra positional model inputs (not attributed).
        kwargs: Keyword model inputs (e.g. ``{"attention_mask": mask}``).
        params: Parameters to run with (default: the model's own).

    Returns:
        The activation (shape of the layer output, leading with N); a tuple, one per tensor,
        for a layer returning a tuple or, with ``attribute_to_layer_input``, receiving
        several tensors (its ``forward``'s tensor arguments); a list for a list of layers.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.layer_activation(model, make_shapes(2)[0], "conv3").shape
        (2, 8, 8, 32)
    """
    s = _Setup(
        model,
        x,
        layer,
        target=None,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        need_target=False,
        tuple_ok=True,
    )
    return s.out(_activation_core(**s.common()))


@_core.cached_jit(("model", "inputs", "taps", "multiply_by_inputs"))
def _grad_x_act_core(*, model, inputs, taps, params, x, args, kwargs, target, multiply_by_inputs):
    grads, acts, _ = _taps.layer_gradients(model, params, inputs, x, args, kwargs, taps, target)
    if multiply_by_inputs:
        return [grads[t.key] * acts[t.key] for t in taps]
    return [grads[t.key] for t in taps]


@_core.contract
def layer_gradient_x_activation(
    model: Model,
    x: PyTree,
    layer: str | Sequence[str],
    *,
    target: Any = None,
    multiply_by_inputs: bool = True,
    attribute_to_layer_input: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> Any:
    """Layer gradient times layer activation, for one or several layers in one pass.

    Captum's ``LayerGradientXActivation`` (and, with ``multiply_by_inputs=False``, the
    plain layer gradient). A list of layers is served by a single forward and backward
    pass.

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple of inputs.
        layer: A layer name or a list of names.
        target: What to explain (see :func:`jaxattr.select_target`).
        multiply_by_inputs: Multiply the layer gradient by the activation.
        attribute_to_layer_input: Attribute to the layer's input instead of its output.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        An array shaped like the layer's activation; a tuple, one per tensor, for a layer
        returning a tuple or, with ``attribute_to_layer_input``, receiving several tensors;
        a list for a list of layers.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> a, b = jaxattr.layer_gradient_x_activation(
        ...     model, make_shapes(2)[0], ["conv2", "conv3"], target=0)
        >>> a.shape, b.shape
        ((2, 16, 16, 32), (2, 8, 8, 32))
    """
    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
    )
    return s.out(
        _grad_x_act_core(**s.common(), target=s.target, multiply_by_inputs=multiply_by_inputs)
    )


@_core.contract
def probe(
    model: Model,
    x: PyTree,
    layer: str | Sequence[str],
    *,
    target: Any = None,
    attribute_to_layer_input: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> dict[str, dict[str, jax.Array]]:
    """Activations and gradients of layers in one call (TorchRay's ``Probe``).

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple of inputs.
        layer: A layer name or a list of names.
        target: What the gradient is of (see :func:`jaxattr.select_target`).
        attribute_to_layer_input: Probe the layer's input instead of its output.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        ``{layer name: {"activation": a, "gradient": g}}``, both shaped like the layer's
        activation.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> p = jaxattr.probe(model, make_shapes(1)[0], "conv3", target=1)
        >>> p["conv3"]["gradient"].shape
        (1, 8, 8, 32)
    """
    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
    )
    acts = _activation_core(**s.common())
    grads = _grad_x_act_core(**s.common(), target=s.target, multiply_by_inputs=False)
    names = [layer] if isinstance(layer, str) else list(layer)
    return {
        n: {"activation": a, "gradient": g} for n, a, g in zip(names, acts, grads, strict=False)
    }


# --------------------------------------------------------------------------------------
# Path methods in layer space
# --------------------------------------------------------------------------------------


def _points(x, baselines, alpha):
    return jax.tree_util.tree_map(
        lambda xl, bl: (
            bl + jnp.asarray(alpha, xl.dtype) * (xl - bl)
            if jnp.issubdtype(xl.dtype, jnp.floating)
            else xl
        ),
        x,
        baselines,
    )


def _completeness(model, inputs, params, x, baselines, args, kwargs, target, attrs):
    fn = lambda *a: model.apply(params, *a, **dict(kwargs))  # noqa: E731
    total = sum(jnp.sum(a.reshape(a.shape[0], -1).astype(jnp.float32), axis=1) for a in attrs)
    diff = _core.target_score(inputs.call(fn, x, args), target) - _core.target_score(
        inputs.call(fn, baselines, args), target
    )
    return total - diff.astype(total.dtype)


@_core.cached_jit(("model", "inputs", "taps"))
def _lig_chunk(*, model, inputs, taps, params, x, baselines, args, kwargs, target, alphas, weights):
    baselines = _core.expand_baselines(baselines, x)
    _, ax = _taps.run_tapped(model, params, inputs, x, args, kwargs, taps)
    _, ab = _taps.run_tapped(model, params, inputs, baselines, args, kwargs, taps)
    keys = [t.key for t in taps]  # several for a layer returning a tuple: interpolated jointly

    def step(alpha):
        values = {k: ab[k] + alpha.astype(ax[k].dtype) * (ax[k] - ab[k]) for k in keys}
        grads, _, _ = _taps.layer_gradients(
            model, params, inputs, x, args, kwargs, taps, target, replace=values
        )
        return tuple(grads[k] for k in keys)

    steps = jax.vmap(step)(alphas)
    total = tuple(jnp.tensordot(weights.astype(g.dtype), g, axes=1) for g in steps)
    return total, tuple(ax[k] - ab[k] for k in keys)


@_core.cached_jit(("model", "inputs"))
def _layer_delta(*, model, inputs, params, x, baselines, args, kwargs, target, attr):
    """``sum(attr) - (f(x) - f(baselines))`` for a layer attribution (a tuple), shape (N,)."""
    baselines = _core.expand_baselines(baselines, x)
    return _completeness(model, inputs, params, x, baselines, args, kwargs, target, attr)


@_core.cached_jit(("model", "inputs", "multiply_by_inputs", "return_delta"))
def _layer_finish(
    *,
    model,
    inputs,
    params,
    x,
    baselines,
    args,
    kwargs,
    target,
    total,
    diff,
    multiply_by_inputs,
    return_delta,
):
    attr = tuple(t * d for t, d in zip(total, diff, strict=True)) if multiply_by_inputs else total
    if not return_delta:
        return attr
    baselines = _core.expand_baselines(baselines, x)
    return attr, _completeness(model, inputs, params, x, baselines, args, kwargs, target, attr)


@_core.contract
def layer_integrated_gradients(
    model: Model,
    x: PyTree,
    layer: str,
    baselines: Any = None,
    *,
    target: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    multiply_by_inputs: bool = True,
    attribute_to_layer_input: bool = False,
    batch_size: int | None = None,
    return_delta: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> Any:
    """Integrated gradients in a layer's activation space (Captum's ``LayerIntegratedGradients``).

    The layer's activation is interpolated from its value at the baseline input to its
    value at ``x``; the gradients along that path are integrated and multiplied by the
    activation difference. On an embedding layer this explains token models per token
    (``x`` and ``baselines`` are then integer token ids).

    Args:
        model: A structured model.
        x: Model input of shape (N, ...) (integer token ids allowed), or a tuple.
        layer: The layer name (e.g. ``"bert.embeddings"`` or ``"layer4"``).
        baselines: Baseline *inputs* (e.g. pad-token ids), broadcastable to x; default 0.
        target: What to explain (see :func:`jaxattr.select_target`).
        n_steps: Integration points.
        method: One of :data:`jaxattr.QUADRATURES`.
        multiply_by_inputs: Multiply by the activation difference (global attribution).
        attribute_to_layer_input: Interpolate the layer's input instead of its output.
        batch_size: At most this many steps per compiled call.
        return_delta: Also return ``sum(attr) - (f(x) - f(baselines))``, shape (N,).
        args: Extra positional model inputs.
        kwargs: Keyword model inputs (e.g. an attention mask).
        params: Parameters to run with (default: the model's own).

    Returns:
        Attribution shaped like the layer's activation (a tuple, one per tensor, for a layer
        returning a tuple or, with ``attribute_to_layer_input``, receiving several tensors),
        or ``(attribution, delta)``.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> attr, delta = jaxattr.layer_integrated_gradients(
        ...     model, make_shapes(2)[0], "conv3", target=0, n_steps=64, return_delta=True)
        >>> attr.shape, bool(abs(delta).max() < 0.05)
        ((2, 8, 8, 32), True)
    """
    alphas, weights = checked_quadrature(method, n_steps)
    if not isinstance(layer, str):
        raise TypeError(f"layer must be one layer name (str), got {type(layer).__name__}")
    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
    )
    b = _core.broadcast_baselines(baselines, s.x, s.inputs)
    total = diff = None
    for start, stop in _core.batched_chunks(len(alphas), _batch(batch_size)):
        part, diff = _lig_chunk(
            **s.common(),
            baselines=b,
            target=s.target,
            alphas=alphas[start:stop],
            weights=weights[start:stop],
        )
        total = _core.tree_add(total, part)
    out = _layer_finish(
        model=s.model,
        inputs=s.inputs,
        params=s.params,
        x=s.x,
        baselines=b,
        args=s.args,
        kwargs=s.kwargs,
        target=s.target,
        total=total,
        diff=diff,
        multiply_by_inputs=multiply_by_inputs,
        return_delta=return_delta,
    )
    return (s.out(out[0]), out[1]) if return_delta else s.out(out)


def _batch(batch_size):
    return None if batch_size is None else _core.check_positive_int(batch_size, "batch_size")


@_core.cached_jit(("model", "inputs", "taps"))
def _influence_chunk(
    *, model, inputs, taps, params, x, baselines, args, kwargs, target, alphas, weights
):
    baselines = _core.expand_baselines(baselines, x)

    def step(alpha):
        grads, _, _ = _taps.layer_gradients(
            model, params, inputs, _points(x, baselines, alpha), args, kwargs, taps, target
        )
        return tuple(grads[t.key] for t in taps)

    return tuple(
        jnp.tensordot(weights.astype(g.dtype), g, axes=1) for g in jax.vmap(step)(alphas)
    )


@_core.contract
def internal_influence(
    model: Model,
    x: PyTree,
    layer: str,
    baselines: Any = None,
    *,
    target: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    attribute_to_layer_input: bool = False,
    batch_size: int | None = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> jax.Array:
    """Internal influence (Leino et al., 2018), Captum's ``InternalInfluence``.

    The layer gradients integrated along the straight path from the baseline *input* to
    ``x`` (not multiplied by anything).

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        baselines: Baseline inputs broadcastable to x (default zeros).
        target: What to explain (see :func:`jaxattr.select_target`).
        n_steps: Integration points.
        method: One of :data:`jaxattr.QUADRATURES`.
        attribute_to_layer_input: Use the layer's input instead of its output.
        batch_size: At most this many steps per compiled call.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        Shaped like the layer's activation; a tuple, one per tensor, for a layer returning a
        tuple or, with ``attribute_to_layer_input``, receiving several tensors.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.internal_influence(model, make_shapes(1)[0], "conv2", target=2).shape
        (1, 16, 16, 32)
    """
    alphas, weights = checked_quadrature(method, n_steps)
    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
    )
    _check_float_x(s.x)
    b = _core.broadcast_baselines(baselines, s.x, s.inputs)
    total = None
    for start, stop in _core.batched_chunks(len(alphas), _batch(batch_size)):
        part = _influence_chunk(
            **s.common(),
            baselines=b,
            target=s.target,
            alphas=alphas[start:stop],
            weights=weights[start:stop],
        )
        total = _core.tree_add(total, part)
    return s.out(total)


@_core.cached_jit(("model", "inputs", "taps"))
def _conductance_chunk(*, model, inputs, taps, params, x, baselines, args, kwargs, target, alphas):
    """sum_s grad(alpha_s) * (act(alpha_{s+1}) - act(alpha_s)) over the chunk's points."""
    baselines = _core.expand_baselines(baselines, x)

    def point(alpha):
        grads, acts, _ = _taps.layer_gradients(
            model, params, inputs, _points(x, baselines, alpha), args, kwargs, taps, target
        )
        return tuple((grads[t.key], acts[t.key]) for t in taps)

    return tuple(jnp.sum(g[:-1] * (a[1:] - a[:-1]), axis=0) for g, a in jax.vmap(point)(alphas))


@_core.contract
def layer_conductance(
    model: Model,
    x: PyTree,
    layer: str,
    baselines: Any = None,
    *,
    target: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    attribute_to_layer_input: bool = False,
    batch_size: int | None = None,
    return_delta: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> Any:
    """Conductance of a layer's units (Dhamdhere et al., 2018), Captum's ``LayerConductance``.

    Along the input path from the baseline to ``x`` (``n_steps + 1`` points placed by
    ``method``, exactly as Captum does), each unit's conductance is the sum of the layer
    gradient times the change of the unit's activation between consecutive points. The
    conductances of a layer add up to ``f(x) - f(baseline)`` (completeness).

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        baselines: Baseline inputs broadcastable to x (default zeros).
        target: What to explain (see :func:`jaxattr.select_target`).
        n_steps: Number of path segments.
        method: One of :data:`jaxattr.QUADRATURES` (it places the points).
        attribute_to_layer_input: Use the layer's input instead of its output.
        batch_size: At most this many path points per compiled call.
        return_delta: Also return ``sum(attr) - (f(x) - f(baselines))``, shape (N,).
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        Shaped like the layer's activation (a tuple, one per tensor, for a layer returning a
        tuple or, with ``attribute_to_layer_input``, receiving several tensors), or
        ``(conductance, delta)``.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> c = jaxattr.layer_conductance(model, make_shapes(1)[0], "conv3", target=0)
        >>> c.shape
        (1, 8, 8, 32)
    """
    _core.check_choice(method, "method", QUADRATURES)
    n = _core.check_positive_int(n_steps, "n_steps")
    alphas, _ = _quadrature(method, n + 1)
    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
    )
    _check_float_x(s.x)
    b = _core.broadcast_baselines(baselines, s.x, s.inputs)
    size = _batch(batch_size)
    total = None
    # chunks of segments; each chunk evaluates its segments' points (one shared endpoint)
    for start, stop in _core.batched_chunks(n, size):
        part = _conductance_chunk(
            **s.common(), baselines=b, target=s.target, alphas=alphas[start : stop + 1]
        )
        total = _core.tree_add(total, part)
    if not return_delta:
        return s.out(total)
    return s.out(total), _layer_delta(
        model=s.model,
        inputs=s.inputs,
        params=s.params,
        x=s.x,
        baselines=b,
        args=s.args,
        kwargs=s.kwargs,
        target=s.target,
        attr=total,
    )


@_core.cached_jit(("model", "inputs", "taps", "multiply_by_inputs", "return_delta"))
def _layer_gshap_core(
    *,
    model,
    inputs,
    taps,
    params,
    x,
    dist,
    noise,
    idx,
    alphas,
    args,
    kwargs,
    target,
    multiply_by_inputs,
    return_delta,
):
    keys = [t.key for t in taps]  # several for a layer returning a tuple

    def one(noise_s, idx_s, alpha_s):
        xs = jax.tree_util.tree_map(jnp.add, x, noise_s)
        bs = jax.tree_util.tree_map(lambda d: d[idx_s], dist)

        def scale(xl, bl):
            return bl + alpha_s.reshape((-1,) + (1,) * (xl.ndim - 1)).astype(xl.dtype) * (xl - bl)

        point = jax.tree_util.tree_map(scale, xs, bs)
        grads, _, _ = _taps.layer_gradients(
            model, params, inputs, point, args, kwargs, taps, target
        )
        gs = tuple(grads[k] for k in keys)
        if multiply_by_inputs:
            _, ax = _taps.run_tapped(model, params, inputs, xs, args, kwargs, taps)
            _, ab = _taps.run_tapped(model, params, inputs, bs, args, kwargs, taps)
            gs = tuple(g * (ax[k] - ab[k]) for g, k in zip(gs, keys, strict=True))
        if not return_delta:
            return gs, None
        # Captum's delta sums the attributions of every tensor of the layer
        return gs, _completeness(model, inputs, params, xs, bs, args, kwargs, target, gs)

    attr, delta = jax.vmap(one)(noise, idx, alphas)
    mean = tuple(a.mean(0) for a in attr)
    return (mean, delta.T) if return_delta else mean


@_core.contract
def layer_gradient_shap(
    model: Model,
    x: PyTree,
    layer: str,
    baselines: Any,
    *,
    key: jax.Array | None = None,
    n_samples: int = 5,
    stdevs: float | tuple[float, ...] = 0.0,
    target: Any = None,
    multiply_by_inputs: bool = True,
    attribute_to_layer_input: bool = False,
    return_delta: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> Any:
    """GradientSHAP for a layer's units, Captum's ``LayerGradientShap``.

    As :func:`jaxattr.gradient_shap` (same draws from ``key``), but the gradient is taken
    with respect to the layer at ``baseline + alpha (noisy x - baseline)`` and multiplied
    by the difference of the layer's activations at the noisy input and the baseline.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        baselines: Baseline distribution, per input shape (M, ...), or Captum's callable
            form (``baselines()`` or ``baselines(x)`` returns it).
        key: PRNG key (noise, baseline choice, alpha).
        n_samples: Samples per example.
        stdevs: Input noise standard deviation(s).
        target: What to explain (see :func:`jaxattr.select_target`).
        multiply_by_inputs: Multiply by the activation difference.
        attribute_to_layer_input: Use the layer's input instead of its output.
        return_delta: Also return the delta per example and sample, shape (N, n_samples)
            (for a layer returning a tuple, the attributions of all its tensors are summed).
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        Shaped like the layer's activation (a tuple, one per tensor, for a layer returning a
        tuple or, with ``attribute_to_layer_input``, receiving several tensors), or
        ``(attribution, delta)``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> x = make_shapes(1)[0]
        >>> jaxattr.layer_gradient_shap(model, x, "conv3", baselines=jnp.zeros((2, 32, 32, 3)),
        ...                             key=jax.random.key(0), target=0).shape
        (1, 8, 8, 32)
    """
    n_samples = _core.check_positive_int(n_samples, "n_samples")
    key = _core.check_key(key, "layer_gradient_shap")
    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
    )
    _check_float_x(s.x)
    dist = _core.baseline_distribution(resolve_baselines(baselines, s.x), s.x)
    m = jax.tree_util.tree_leaves(dist)[0].shape[0]
    noise, idx, alphas = gradient_shap_draws(key, s.x, m, n_samples, stdevs)
    out = _layer_gshap_core(
        **s.common(),
        dist=dist,
        noise=noise,
        idx=idx,
        alphas=alphas,
        target=s.target,
        multiply_by_inputs=multiply_by_inputs,
        return_delta=return_delta,
    )
    return (s.out(out[0]), out[1]) if return_delta else s.out(out)


# --------------------------------------------------------------------------------------
# Layer feature ablation
# --------------------------------------------------------------------------------------


@_core.cached_jit(("model", "inputs", "taps"))
def _ablation_chunk(
    *, model, inputs, taps, params, x, args, kwargs, target, masks, baselines, groups
):
    """Per tap (per tensor of a tuple layer), the drops of the groups of ``groups``.

    A group id is ablated in every tensor whose mask holds it, in one run (Captum's
    cross-tensor masks); the other tensors keep their values.
    """
    y, acts = _taps.run_tapped(model, params, inputs, x, args, kwargs, taps)
    keys = [t.key for t in taps]
    base_score = _core.target_score(y, target)
    masks_b = [jnp.broadcast_to(m, acts[k].shape) for m, k in zip(masks, keys, strict=True)]
    bases_b = [
        jnp.broadcast_to(jnp.asarray(b, acts[k].dtype), acts[k].shape)
        for b, k in zip(baselines, keys, strict=True)
    ]

    def one(g):
        values = {
            k: jnp.where(m == g, b, acts[k]) for k, m, b in zip(keys, masks_b, bases_b, strict=True)
        }
        y_g, _ = _taps.run_tapped(model, params, inputs, x, args, kwargs, taps, replace=values)
        drop = base_score - _core.target_score(y_g, target)
        return tuple(drop.reshape((-1,) + (1,) * (m.ndim - 1)) * (m == g) for m in masks_b)

    per_group = jax.vmap(one)(groups)
    return tuple(
        jnp.sum(a, axis=0).astype(acts[k].dtype) for a, k in zip(per_group, keys, strict=True)
    )


def _layer_mask(mask, act_shape):
    """A user's ``layer_mask`` for one tensor, checked, as a NumPy integer array."""
    try:
        ok = np.broadcast_shapes(tuple(np.shape(mask)), act_shape) == act_shape
    except ValueError:
        ok = False
    if not ok or np.ndim(mask) != len(act_shape) or np.shape(mask)[0] not in (1, act_shape[0]):
        raise ValueError(
            f"layer_mask must broadcast to the layer's activation shape {act_shape} with a "
            f"leading dimension of 1 or N, got shape {tuple(np.shape(mask))}"
        )
    if not _core.is_concrete(mask):
        raise ValueError("layer_mask must be concrete (its group count sets the work)")
    mask_np = np.asarray(mask)
    if not np.issubdtype(mask_np.dtype, np.integer):
        raise TypeError(f"layer_mask must hold integer group ids, got dtype {mask_np.dtype}")
    return mask_np


def _per_tensor(value, n, name, what):
    """``value`` as one entry per tensor of a layer returning ``n`` tensors."""
    if n == 1:
        return [value]
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(
                f"{name} gives one {what} per tensor of the layer: expected {n}, got {len(value)}"
            )
        return list(value)
    return None


@_core.contract
def layer_feature_ablation(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    layer_mask: Any = None,
    layer_baselines: Any = 0.0,
    attribute_to_layer_input: bool = False,
    batch_size: int | None = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> jax.Array | tuple[jax.Array, ...]:
    """Ablate groups of a layer's units and record the drop of the target output.

    Captum's ``LayerFeatureAblation``: every group of units given by ``layer_mask`` (by
    default each unit alone) is replaced by ``layer_baselines``; every unit of the group
    gets ``f(x) - f(x with the group ablated)``. All groups are one ``vmap``-ped batch
    (the layers before the tapped one run once), chunked by ``batch_size`` groups.

    For a layer returning a tuple of tensors (or, with ``attribute_to_layer_input``,
    receiving several), ``layer_mask`` and ``layer_baselines`` give one entry per tensor
    (a scalar baseline serves them all); as in Captum, a group id found in several
    tensors' masks ablates its units in all of them at once, and the default mask
    numbers the units of all the tensors consecutively (each unit alone).

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name.
        target: What to explain (see :func:`jaxattr.select_target`).
        layer_mask: Integer group ids ``0 .. G-1`` broadcastable to the activation, with a
            leading dimension of 1 or N (Captum's convention); default: each unit alone.
            A tuple of such, one per tensor, for a layer returning a tuple.
        layer_baselines: Scalar or array broadcastable to the activation (a tuple, one
            per tensor, or a scalar for a layer returning a tuple).
        attribute_to_layer_input: Ablate the layer's input instead of its output.
        batch_size: At most this many groups per compiled call.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        Shaped like the layer's activation; a tuple, one per tensor, for a layer returning a
        tuple or, with ``attribute_to_layer_input``, receiving several tensors
        (``layer_mask`` and ``layer_baselines`` then give one entry per tensor).

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> mask = jnp.arange(32).reshape(1, 1, 1, 32)   # one group per channel
        >>> jaxattr.layer_feature_ablation(model, make_shapes(1)[0], "conv3", target=0,
        ...                                layer_mask=mask).shape
        (1, 8, 8, 32)
    """
    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
    )
    shapes = _taps.tap_shapes(s.model, s.params, s.inputs, s.x, s.args, s.kwargs, s.taps)
    act_shapes = [tuple(shapes[t.key].shape) for t in s.taps]
    n = len(act_shapes)
    many = "receives" if attribute_to_layer_input else "returns a tuple of"
    if layer_mask is None:  # each unit alone, numbered across the tensors
        masks, offset = [], 0
        for shape in act_shapes:
            size = int(np.prod(shape[1:]))
            masks.append(offset + np.arange(size).reshape((1, *shape[1:])))
            offset += size
    else:
        given = _per_tensor(layer_mask, n, "layer_mask", "mask")
        if given is None:  # Captum would ablate the first tensor only: refuse
            raise ValueError(
                f"layer {layer!r} {many} {n} tensors of shapes {act_shapes}: "
                f"layer_mask must be a tuple of {n} masks, one per tensor"
            )
        masks = [_layer_mask(m, sh) for m, sh in zip(given, act_shapes, strict=True)]
    bases = _per_tensor(layer_baselines, n, "layer_baselines", "baseline")
    if bases is None:
        if np.ndim(layer_baselines) != 0:
            raise ValueError(
                f"layer {layer!r} {many} {n} tensors of shapes {act_shapes}: "
                f"layer_baselines must be a scalar or a tuple of {n}, one per tensor"
            )
        bases = [layer_baselines] * n
    groups = np.unique(np.concatenate([m.ravel() for m in masks])).astype(np.int32)
    total = None
    for start, stop in _core.batched_chunks(len(groups), _batch(batch_size)):
        part = _ablation_chunk(
            **s.common(),
            target=s.target,
            masks=tuple(m.astype(np.int32) for m in masks),
            baselines=tuple(jnp.asarray(b) for b in bases),
            groups=groups[start:stop],
        )
        total = _core.tree_add(total, part)
    return s.out(total)


# --------------------------------------------------------------------------------------
# Class activation maps
# --------------------------------------------------------------------------------------


def interpolate(
    attr: jax.Array, size: Sequence[int], *, mode: str = "nearest", channel_axis: int = 1
) -> jax.Array:
    """Resize a layer attribution's spatial axes (Captum's ``LayerAttribution.interpolate``).

    ``nearest`` uses torch's index rule ``floor(i * in / out)``; ``bilinear`` / ``linear``
    / ``trilinear`` use half-pixel centres (torch's ``align_corners=False``).

    Args:
        attr: Array (N, C, *spatial) for ``channel_axis=1`` or (N, *spatial, C) for -1.
        size: Target spatial size, one entry per spatial axis.
        mode: ``nearest``, ``linear``, ``bilinear`` or ``trilinear``.
        channel_axis: 1 (NCHW, torch) or -1 (NHWC, Flax).

    Returns:
        The resized array, channels kept.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> jaxattr.interpolate(jnp.arange(4.0).reshape(1, 1, 2, 2), (4, 4))[0, 0, 0]
        Array([0., 0., 1., 1.], dtype=float32)
    """
    _core.check_choice(mode, "mode", ("nearest", "linear", "bilinear", "trilinear"))
    attr = jnp.asarray(attr)
    axis = channel_axis % attr.ndim
    spatial = [a for a in range(1, attr.ndim) if a != axis]
    size = tuple(int(s) for s in size)
    if len(size) != len(spatial):
        raise ValueError(
            f"size must give one entry per spatial axis ({len(spatial)} for an attribution of "
            f"shape {tuple(attr.shape)}), got {size}"
        )
    if mode == "nearest":
        for a, out in zip(spatial, size, strict=False):
            n_in = attr.shape[a]
            idx = np.minimum(np.floor(np.arange(out) * (n_in / out)).astype(np.int32), n_in - 1)
            attr = jnp.take(attr, idx, axis=a)
        return attr
    shape = list(attr.shape)
    for a, out in zip(spatial, size, strict=False):
        shape[a] = out
    return jax.image.resize(attr, tuple(shape), method="linear", antialias=False)


@_core.cached_jit(("model", "inputs", "taps", "channel_axis", "mode"))
def _cam_core(*, model, inputs, taps, params, x, args, kwargs, target, channel_axis, mode):
    """One weighted activation per tap (per tensor of a layer returning a tuple)."""
    grads, acts, _ = _taps.layer_gradients(model, params, inputs, x, args, kwargs, taps, target)
    return tuple(_cam_weighted(grads[t.key], acts[t.key], channel_axis, mode) for t in taps)


def _cam_weighted(g, a, channel_axis, mode):
    axis = channel_axis % a.ndim
    spatial = tuple(i for i in range(1, a.ndim) if i != axis)
    if mode == "gradcam":
        weights = g.mean(spatial, keepdims=True) if spatial else g
    else:  # grad-cam++ (Chattopadhyay et al., 2018), exponential-score closed form
        g2, g3 = g**2, g**3
        denom = 2 * g2 + jnp.sum(a, axis=spatial, keepdims=True) * g3
        alpha = g2 / jnp.where(denom != 0, denom, 1.0)
        weights = jnp.sum(alpha * jax.nn.relu(g), axis=spatial, keepdims=True)
    return weights * a


@_core.contract
def grad_cam(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    relu_attributions: bool = False,
    attr_dim_summation: bool = True,
    attribute_to_layer_input: bool = False,
    channel_axis: int = 1,
    interpolate_to: Sequence[int] | str | None = None,
    interpolate_mode: str = "nearest",
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
    resize: bool | str | Sequence[int] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
) -> jax.Array | tuple[jax.Array, ...]:
    """Grad-CAM (Selvaraju et al., 2017), Captum's ``LayerGradCam``.

    Each channel of the layer is weighted by its spatially averaged gradient; the weighted
    activations are summed over channels (``attr_dim_summation``) and optionally passed
    through a ReLU (``relu_attributions``).

    TorchRay's ``grad_cam(model, x, target, saliency_layer=layer)`` is
    ``relu_attributions=True``; its ``resize`` (bilinear by default) and ``smooth``
    (Gaussian of standard deviation ``smooth * max(spatial size)``, replicate padding)
    are the options of the same names, applied in that order after the ReLU.

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name (``"layer4"`` of a ResNet, ``"conv3"`` of the demo model).
        target: What to explain (see :func:`jaxattr.select_target`).
        relu_attributions: Keep only positive evidence.
        attr_dim_summation: Sum over the channel axis (keeping it with size 1).
        attribute_to_layer_input: Use the layer's input instead of its output.
        channel_axis: 1 for NCHW layers (torch), -1 for NHWC (Flax).
        interpolate_to: Upsample the map to this spatial size, or ``"input"`` for the
            spatial size of ``x`` (same layout); ``None`` keeps the layer's size.
        interpolate_mode: See :func:`interpolate`.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).
        resize: TorchRay's ``resize``: ``False``; ``True`` (or ``"input"``) for x's
            spatial size; a tuple in TorchRay's (width, height) order. Not together with
            ``interpolate_to``.
        resize_mode: TorchRay's ``resize_mode``: ``"bilinear"`` (``align_corners=False``),
            ``"linear"``, ``"trilinear"`` or ``"nearest"``.
        smooth: If > 0, TorchRay's smoothing after resizing (see above).

    Returns:
        (N, 1, *spatial) for ``channel_axis=1`` (channels last for -1), or the full
        activation shape without ``attr_dim_summation``; a tuple for a layer returning a
        tuple or, with ``attribute_to_layer_input``, receiving several tensors (one map per
        tensor, each weighted by its own gradient, as Captum).

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> cam = jaxattr.grad_cam(model, make_shapes(2)[0], "conv3", target=[0, 1],
        ...                        channel_axis=-1, interpolate_to="input")
        >>> cam.shape
        (2, 32, 32, 1)
        >>> tr = jaxattr.grad_cam(model, make_shapes(2)[0], "conv3", target=[0, 1],
        ...                       channel_axis=-1, relu_attributions=True, resize=True,
        ...                       smooth=0.02)   # TorchRay's grad_cam(resize=True, smooth=.02)
        >>> tr.shape
        (2, 32, 32, 1)
    """
    resize, resize_mode, smooth = _torchray.check_options(resize, resize_mode, smooth)
    if resize is not False and interpolate_to is not None:
        raise ValueError(
            f"pass interpolate_to (Captum-style) or resize (TorchRay's), not both; got "
            f"interpolate_to={interpolate_to!r} and resize={resize!r}"
        )
    cam = _cam(
        model,
        x,
        layer,
        "gradcam",
        target,
        relu_attributions,
        attr_dim_summation,
        attribute_to_layer_input,
        channel_axis,
        interpolate_to,
        interpolate_mode,
        args,
        kwargs,
        params,
    )
    return _torchray.finish_tree(
        cam,
        _core.to_arrays(x),
        reduce=None,
        channel_axis=channel_axis,
        resize=resize,
        resize_mode=resize_mode,
        smooth=smooth,
    )


@_core.contract
def grad_cam_plus_plus(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    attribute_to_layer_input: bool = False,
    channel_axis: int = 1,
    interpolate_to: Sequence[int] | str | None = None,
    interpolate_mode: str = "nearest",
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> jax.Array | tuple[jax.Array, ...]:
    """Grad-CAM++ (Chattopadhyay et al., 2018).

    Channel weights ``w_k = sum_ij alpha_kij relu(g_kij)`` with
    ``alpha = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (the paper's closed form under an
    exponential score, with ``g`` the gradient of the target score); the map is
    ``relu(sum_k w_k A_k)``.

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name.
        target: What to explain (see :func:`jaxattr.select_target`).
        attribute_to_layer_input: Use the layer's input instead of its output.
        channel_axis: 1 for NCHW layers, -1 for NHWC.
        interpolate_to: As in :func:`grad_cam`.
        interpolate_mode: See :func:`interpolate`.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        (N, 1, *spatial) for ``channel_axis=1`` (channels last for -1); a tuple for a layer
        returning a tuple or, with ``attribute_to_layer_input``, receiving several tensors
        (one map per tensor, as :func:`grad_cam`).

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.grad_cam_plus_plus(model, make_shapes(1)[0], "conv3", target=0,
        ...                            channel_axis=-1).shape
        (1, 8, 8, 1)
    """
    return _cam(
        model,
        x,
        layer,
        "gradcam++",
        target,
        True,
        True,
        attribute_to_layer_input,
        channel_axis,
        interpolate_to,
        interpolate_mode,
        args,
        kwargs,
        params,
    )


def _cam(
    model,
    x,
    layer,
    mode,
    target,
    relu,
    summation,
    to_input,
    channel_axis,
    interp,
    interp_mode,
    args,
    kwargs,
    params,
):
    if not isinstance(layer, str):
        raise TypeError(f"layer must be one layer name (str), got {type(layer).__name__}")
    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=to_input,
        tuple_ok=True,
    )
    cams = []
    # a layer returning a tuple: one map per tensor, each from its own gradient (Captum)
    for cam in _cam_core(**s.common(), target=s.target, channel_axis=channel_axis, mode=mode):
        if summation:
            cam = cam.sum(axis=channel_axis % cam.ndim, keepdims=True)
        if relu:
            cam = jax.nn.relu(cam)
        cams.append(_maybe_interpolate(cam, interp, interp_mode, channel_axis, s.x))
    return s.out(cams)


def _maybe_interpolate(cam, interp, mode, channel_axis, x):
    if interp is None:
        return cam
    if isinstance(interp, str):
        if interp != "input":
            raise ValueError(f"interpolate_to must be a size or 'input', got {interp!r}")
        leaf = jax.tree_util.tree_leaves(x)[0]
        axis = channel_axis % leaf.ndim
        interp = [leaf.shape[i] for i in range(1, leaf.ndim) if i != axis]
    return interpolate(cam, interp, mode=mode, channel_axis=channel_axis)


@_core.cached_jit(("model", "inputs", "taps", "channel_axis", "softmax_over_channels"))
def _score_cam_chunk(
    *,
    model,
    inputs,
    taps,
    params,
    x,
    args,
    kwargs,
    target,
    channels,
    channel_axis,
    softmax_over_channels,
):
    del softmax_over_channels
    (tap,) = taps
    _, acts = _taps.run_tapped(model, params, inputs, x, args, kwargs, taps)
    a = acts[tap.key]
    axis = channel_axis % a.ndim
    xin = x[0] if inputs.is_tuple else x
    x_axis = channel_axis % xin.ndim
    size = [xin.shape[i] for i in range(1, xin.ndim) if i != x_axis]
    fn = lambda *z: model.apply(params, *z, **dict(kwargs))  # noqa: E731

    def one(k):
        amap = (
            jnp.take(a, k, axis=axis)[..., None]
            if axis == a.ndim - 1
            else jnp.expand_dims(jnp.take(a, k, axis=axis), axis)
        )
        up = interpolate(amap, size, mode="bilinear", channel_axis=channel_axis)
        red = tuple(range(1, up.ndim))
        lo, hi = up.min(red, keepdims=True), up.max(red, keepdims=True)
        m = jnp.where(hi > lo, (up - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0)
        masked = xin * m.astype(xin.dtype)
        z = (masked, *x[1:]) if inputs.is_tuple else masked
        return _core.target_score(inputs.call(fn, z, args), target)

    return jax.vmap(one)(channels), a


@_core.contract
def score_cam(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    channel_axis: int = 1,
    softmax_over_channels: bool = True,
    batch_size: int | None = None,
    interpolate_to: Sequence[int] | str | None = None,
    interpolate_mode: str = "nearest",
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> jax.Array:
    """Score-CAM (Wang et al., 2020): channel weights from masked forward passes.

    Each channel ``A_k`` of the layer is upsampled to the input size (bilinear),
    min-max normalised to [0, 1] and multiplied into the input; the target score of that
    masked input is the channel's score. The weights are the softmax of the scores over
    channels (the paper's Algorithm 1; ``softmax_over_channels=False`` uses the raw
    scores) and the map is ``relu(sum_k w_k A_k)``. Gradient-free. The masked inputs are
    one ``vmap``-ped batch, chunked by ``batch_size`` channels.

    Args:
        model: A structured model.
        x: Model input of shape (N, ...) (the first input is masked for tuples).
        layer: The layer name.
        target: What to explain (see :func:`jaxattr.select_target`); its score on each
            masked input is the channel score (use a softmax output for probabilities).
        channel_axis: 1 for NCHW layers and inputs, -1 for NHWC.
        softmax_over_channels: Normalise the scores with a softmax over channels.
        batch_size: At most this many channels per compiled call.
        interpolate_to: As in :func:`grad_cam`.
        interpolate_mode: See :func:`interpolate`.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        (N, 1, *spatial) at the layer's resolution for ``channel_axis=1`` (channels last
        for -1), unless ``interpolate_to`` is given.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.score_cam(model, make_shapes(1)[0], "conv3", target=0,
        ...                   channel_axis=-1).shape
        (1, 8, 8, 1)
    """
    s = _Setup(
        model, x, layer, target=target, args=args, kwargs=kwargs, params=params, to_input=False
    )
    _check_float_x(s.x)
    (tap,) = s.taps
    shape = _taps.tap_shapes(s.model, s.params, s.inputs, s.x, s.args, s.kwargs, s.taps)
    act_shape = tuple(shape[tap.key].shape)
    n_channels = act_shape[channel_axis % len(act_shape)]
    channels = np.arange(n_channels, dtype=np.int32)
    scores, a = [], None
    for start, stop in _core.batched_chunks(n_channels, _batch(batch_size)):
        sc, a = _score_cam_chunk(
            **s.common(),
            target=s.target,
            channels=channels[start:stop],
            channel_axis=channel_axis,
            softmax_over_channels=softmax_over_channels,
        )
        scores.append(sc)
    scores = jnp.concatenate(scores, axis=0).T  # (N, K)
    weights = jax.nn.softmax(scores, axis=1) if softmax_over_channels else scores
    axis = channel_axis % a.ndim
    wshape = [1] * a.ndim
    wshape[0], wshape[axis] = a.shape[0], a.shape[axis]
    cam = jax.nn.relu(jnp.sum(weights.reshape(wshape) * a, axis=axis, keepdims=True))
    return _maybe_interpolate(cam, interpolate_to, interpolate_mode, channel_axis, s.x)


def gradient_to_saliency(grad: jax.Array, *, channel_axis: int = 1) -> jax.Array:
    """TorchRay's ``gradient_to_saliency``: the max of ``|grad|`` over channels.

    Args:
        grad: A gradient of shape (N, C, ...) (or channels last with ``channel_axis=-1``).
        channel_axis: The channel axis.

    Returns:
        Shape of ``grad`` with the channel axis reduced to size 1.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> jaxattr.gradient_to_saliency(jnp.array([[[1.0], [-3.0]]]))
        Array([[[3.]]], dtype=float32)
    """
    return jnp.max(jnp.abs(jnp.asarray(grad)), axis=channel_axis, keepdims=True)


@_core.contract
def linear_approx(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    channel_axis: int = 1,
    resize: bool | str | Sequence[int] | None = False,
    resize_mode: str = "bilinear",
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
    smooth: float = 0.0,
) -> jax.Array:
    """TorchRay's linear approximation: ``sum_c(activation * gradient)`` at a layer.

    ``linear_approx(model, x, layer, target=t, resize=..., smooth=...)`` is TorchRay's
    ``linear_approx(model, x, t, saliency_layer=layer, resize=..., smooth=...)``: the map
    is resized, then smoothed with a Gaussian of standard deviation
    ``smooth * max(spatial size)`` (replicate padding).

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name (TorchRay's ``saliency_layer``).
        target: What to explain (see :func:`jaxattr.select_target`).
        channel_axis: 1 for NCHW layers, -1 for NHWC.
        resize: TorchRay's ``resize``: ``False``/``None``; ``True`` (or ``"input"``) for
            x's spatial size; a tuple in TorchRay's (width, height) order, i.e. the
            spatial sizes reversed.
        resize_mode: ``"bilinear"`` (TorchRay's default, ``align_corners=False``),
            ``"linear"``, ``"trilinear"`` or ``"nearest"``.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).
        smooth: If > 0, TorchRay's smoothing after resizing.

    Returns:
        (N, 1, *spatial) for ``channel_axis=1`` (channels last for -1).

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.linear_approx(model, make_shapes(1)[0], "conv3", target=0,
        ...                       channel_axis=-1, resize="input").shape
        (1, 32, 32, 1)
    """
    resize, resize_mode, smooth = _torchray.check_options(resize, resize_mode, smooth)
    gx = layer_gradient_x_activation(
        model, x, layer, target=target, args=args, kwargs=kwargs, params=params
    )
    sal = gx.sum(axis=channel_axis, keepdims=True)
    return _torchray.finish_tree(
        sal,
        _core.to_arrays(x),
        reduce=None,
        channel_axis=channel_axis,
        resize=resize,
        resize_mode=resize_mode,
        smooth=smooth,
    )


# --------------------------------------------------------------------------------------
# Neurons: a neuron of a layer as a plain function, handed to the input methods
# --------------------------------------------------------------------------------------


def _selector_spec(selector: Any, act_shape: tuple) -> tuple[str, Any, Any]:
    """``(mode, static part, dynamic index array)`` of a ``neuron_selector``."""
    if callable(selector) and not hasattr(selector, "shape"):
        return "callable", selector, None
    sel = (selector,) if isinstance(selector, (int, np.integer)) else selector
    if hasattr(sel, "shape"):  # an index array (used by for_each_neuron)
        return "index", None, jnp.asarray(sel, jnp.int32)
    if not isinstance(sel, tuple):
        raise TypeError(
            f"neuron_selector must be an int, a tuple of ints/slices or a callable, got "
            f"{type(selector).__name__}"
        )
    if len(sel) > len(act_shape) - 1:
        raise ValueError(
            f"neuron_selector {selector!r} has {len(sel)} indices, but the layer's activation "
            f"of shape {act_shape} has only {len(act_shape) - 1} non-batch axes"
        )
    if any(isinstance(s, slice) for s in sel):
        key = tuple(
            ("slice", s.start, s.stop, s.step) if isinstance(s, slice) else int(s) for s in sel
        )
        return "slices", key, None
    if len(sel) != len(act_shape) - 1:
        raise ValueError(
            f"neuron_selector {selector!r} must index every non-batch axis of the layer's "
            f"activation {act_shape} (or use slices, which are summed)"
        )
    for axis, i in enumerate(sel, start=1):
        if not 0 <= int(i) < act_shape[axis]:
            raise ValueError(
                f"neuron_selector {selector!r} is out of range for the activation of shape "
                f"{act_shape}: index {int(i)} on axis {axis}"
            )
    return "index", None, np.asarray([int(i) for i in sel], np.int32)


def _select(act, mode, static, index):
    n = act.shape[0]
    if mode == "callable":
        out = static(act)
        if out.shape != (n,):
            raise ValueError(
                f"a callable neuron_selector must return one value per example, shape ({n},), "
                f"got {tuple(out.shape)}"
            )
        return out
    if mode == "slices":
        idx = tuple(slice(*s[1:]) if isinstance(s, tuple) else s for s in static)
        return act[(slice(None), *idx)].reshape(n, -1).sum(1)
    return act[(slice(None), *[index[i] for i in range(index.shape[0])])]


def _neuron_fn(model, tap, kw_names, n_args, mode, static):
    """See :func:`_neuron_fn_for`; keyed by the model's structure, holding none of its weights."""
    part = _caching.partition(model)[0]
    return _neuron_fn_for(part, tap, kw_names, n_args, mode, static)


@_caching.lru(16)
def _neuron_fn_for(part, tap, kw_names, n_args, mode, static):
    """``fn(*x, *args, *kw_values, index, params) -> (N,)``: one neuron's value."""
    model = part.placeholder()  # the weights come in as ``params``

    def fn(*a):
        *rest, index, params = a
        xs, extra = (
            rest[: len(rest) - n_args - len(kw_names)],
            rest[len(rest) - n_args - len(kw_names) :],
        )
        args, kw_vals = tuple(extra[:n_args]), extra[n_args:]
        layout = _core.Inputs(is_tuple=True, n=0)
        _, acts = _taps.run_tapped(
            model,
            params,
            layout,
            tuple(xs),
            args,
            dict(zip(kw_names, kw_vals, strict=False)),
            (tap,),
        )
        return _select(acts[tap.key], mode, static, index)

    return fn


class _Neuron:
    """A neuron of a structured model prepared as a plain function for the input methods."""

    def __init__(self, model, x, layer, selector, *, to_input, args, kwargs, params):
        self.s = _Setup(
            model,
            x,
            layer,
            target=None,
            args=args,
            kwargs=kwargs,
            params=params,
            to_input=to_input,
            need_target=False,
        )
        if not isinstance(layer, str):
            raise TypeError(f"layer must be one layer name (str), got {type(layer).__name__}")
        s = self.s
        (tap,) = s.taps
        shapes = _taps.tap_shapes(s.model, s.params, s.inputs, s.x, s.args, s.kwargs, s.taps)
        mode, static, index = _selector_spec(selector, tuple(shapes[tap.key].shape))
        self.fn = _neuron_fn(s.model, tap, s.kw_names, len(s.args), mode, static)
        index = np.zeros(0, np.int32) if index is None else index
        self.extra = (*s.args, *s.kw_values, index, s.params)
        self.x = s.x


def neuron_model(
    model: Model,
    layer: str,
    neuron_selector: Any,
    *,
    attribute_to_neuron_input: bool = False,
    params: Any = None,
) -> Callable[..., jax.Array]:
    """One neuron of a layer as a plain function ``f(x) -> (N,)``.

    Any input method explains it with ``target=None``; the neuron methods are built the
    same way (Captum's ``neuron_selector`` conventions). Build it once and reuse it: each
    new function is a new static argument, so methods compile again for it.

    Args:
        model: A structured model.
        layer: The layer name.
        neuron_selector: An int (2-D activations), a tuple with one index per non-batch
            axis, a tuple with slices (the selected units are summed), or a callable
            ``activation -> (N,)``.
        attribute_to_neuron_input: Select from the layer's input instead of its output.
        params: Parameters to run with (default: the model's own).

    Returns:
        ``f(x, *args)`` returning the neuron's value per example.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> f = jaxattr.neuron_model(model, "conv3", (4, 4, 7))
        >>> jaxattr.gradient(f, make_shapes(2)[0]).shape
        (2, 32, 32, 3)
    """
    model = _taps.as_structured(model)
    tap = _taps.resolve_single(model, layer, attribute_to_neuron_input)
    p = model.params if params is None else params

    def fn(*a):
        _, acts = _taps.run_tapped(model, p, _core.Inputs(True, 0), tuple(a), (), {}, (tap,))
        act = acts[tap.key]
        mode, static, index = _selector_spec(neuron_selector, tuple(act.shape))
        return _select(act, mode, static, index)

    return fn


@_core.contract
def neuron_gradient(
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selector: Any,
    *,
    attribute_to_neuron_input: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> PyTree:
    """Gradient of one neuron with respect to the input, Captum's ``NeuronGradient``.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        neuron_selector: See :func:`neuron_model`.
        attribute_to_neuron_input: Select the neuron from the layer's input.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        The gradient, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.neuron_gradient(model, make_shapes(1)[0], "conv3", (1, 2, 3)).shape
        (1, 32, 32, 3)
    """
    nm = _Neuron(
        model,
        x,
        layer,
        neuron_selector,
        to_input=attribute_to_neuron_input,
        args=args,
        kwargs=kwargs,
        params=params,
    )
    return gradient(nm.fn, nm.x, args=nm.extra)


@_core.contract
def neuron_integrated_gradients(
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selector: Any,
    baselines: Any = None,
    *,
    n_steps: int = 50,
    method: str = "gausslegendre",
    multiply_by_inputs: bool = True,
    attribute_to_neuron_input: bool = False,
    batch_size: int | None = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> PyTree:
    """Integrated gradients of one neuron, Captum's ``NeuronIntegratedGradients``.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        neuron_selector: See :func:`neuron_model`.
        baselines: Baseline inputs broadcastable to x (default zeros).
        n_steps: Integration points.
        method: One of :data:`jaxattr.QUADRATURES`.
        multiply_by_inputs: Multiply by ``x - baselines``.
        attribute_to_neuron_input: Select the neuron from the layer's input.
        batch_size: At most this many steps per compiled call.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.neuron_integrated_gradients(model, make_shapes(1)[0], "fc", 2).shape
        (1, 32, 32, 3)
    """
    nm = _Neuron(
        model,
        x,
        layer,
        neuron_selector,
        to_input=attribute_to_neuron_input,
        args=args,
        kwargs=kwargs,
        params=params,
    )
    return integrated_gradients(
        nm.fn,
        nm.x,
        baselines=baselines,
        n_steps=n_steps,
        method=method,
        multiply_by_inputs=multiply_by_inputs,
        batch_size=batch_size,
        args=nm.extra,
    )


@_core.contract
def neuron_gradient_shap(
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selector: Any,
    baselines: Any,
    *,
    key: jax.Array | None = None,
    n_samples: int = 5,
    stdevs: float | tuple[float, ...] = 0.0,
    multiply_by_inputs: bool = True,
    attribute_to_neuron_input: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> PyTree:
    """GradientSHAP of one neuron, Captum's ``NeuronGradientShap``.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        neuron_selector: See :func:`neuron_model`.
        baselines: Baseline distribution, per input shape (M, ...), or Captum's callable
            form (``baselines()`` or ``baselines(x)`` returns it).
        key: PRNG key.
        n_samples: Samples per example.
        stdevs: Input noise standard deviation(s).
        multiply_by_inputs: Multiply by ``noisy x - baseline``.
        attribute_to_neuron_input: Select the neuron from the layer's input.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.neuron_gradient_shap(model, make_shapes(1)[0], "fc", 0,
        ...     baselines=jnp.zeros((3, 32, 32, 3)), key=jax.random.key(0)).shape
        (1, 32, 32, 3)
    """
    nm = _Neuron(
        model,
        x,
        layer,
        neuron_selector,
        to_input=attribute_to_neuron_input,
        args=args,
        kwargs=kwargs,
        params=params,
    )
    return gradient_shap(
        nm.fn,
        nm.x,
        baselines=baselines,
        key=key,
        n_samples=n_samples,
        stdevs=stdevs,
        multiply_by_inputs=multiply_by_inputs,
        args=nm.extra,
    )


@_core.cached_jit(("model", "inputs", "taps", "mode", "static"))
def _neuron_conductance_chunk(
    *,
    model,
    inputs,
    taps,
    params,
    x,
    baselines,
    args,
    kwargs,
    target,
    mode,
    static,
    index,
    alphas,
    weights,
):
    baselines = _core.expand_baselines(baselines, x)
    (tap,) = taps

    def step(alpha):
        point = _points(x, baselines, alpha)
        grads, _, _ = _taps.layer_gradients(
            model, params, inputs, point, args, kwargs, taps, target
        )
        mid = _select(grads[tap.key], mode, static, index)  # dF / d neuron, (N,)

        def neuron(z):
            _, acts = _taps.run_tapped(model, params, inputs, z, args, kwargs, taps)
            return jnp.sum(_select(acts[tap.key], mode, static, index))

        g_in = jax.grad(neuron)(point)
        return jax.tree_util.tree_map(
            lambda g: g * mid.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), g_in
        )

    per_step = jax.vmap(step)(alphas)
    return jax.tree_util.tree_map(
        lambda g: jnp.tensordot(weights.astype(g.dtype), g, axes=1), per_step
    )


@_core.contract
def neuron_conductance(
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selector: Any,
    baselines: Any = None,
    *,
    target: Any = None,
    n_steps: int = 50,
    method: str = "riemann_trapezoid",
    multiply_by_inputs: bool = True,
    attribute_to_neuron_input: bool = False,
    batch_size: int | None = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
) -> PyTree:
    """Conductance of one neuron to the input features, Captum's ``NeuronConductance``.

    ``(x - b) * integral (dF/d neuron) (d neuron/d x) da`` along the input path, with F
    the target output: how much of the target flows through the neuron from each feature.
    Captum's default ``method="riemann_trapezoid"``. With a callable selector, the callable
    is applied to the layer *gradient* to pick ``dF/d neuron``, as in Captum.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        neuron_selector: See :func:`neuron_model`.
        baselines: Baseline inputs broadcastable to x (default zeros).
        target: The model output the conductance is of (see :func:`jaxattr.select_target`).
        n_steps: Integration points.
        method: One of :data:`jaxattr.QUADRATURES`.
        multiply_by_inputs: Multiply by ``x - baselines``.
        attribute_to_neuron_input: Select the neuron from the layer's input.
        batch_size: At most this many steps per compiled call.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.
        params: Parameters to run with (default: the model's own).

    Returns:
        The conductance, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.neuron_conductance(model, make_shapes(1)[0], "conv3", (2, 2, 5),
        ...                            target=0, n_steps=8).shape
        (1, 32, 32, 3)
    """
    alphas, weights = checked_quadrature(method, n_steps)
    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_neuron_input,
    )
    _check_float_x(s.x)
    (tap,) = s.taps
    shapes = _taps.tap_shapes(s.model, s.params, s.inputs, s.x, s.args, s.kwargs, s.taps)
    mode, static, index = _selector_spec(neuron_selector, tuple(shapes[tap.key].shape))
    index = np.zeros(0, np.int32) if index is None else index
    b = _core.broadcast_baselines(baselines, s.x, s.inputs)
    total = None
    for start, stop in _core.batched_chunks(len(alphas), _batch(batch_size)):
        part = _neuron_conductance_chunk(
            **s.common(),
            baselines=b,
            target=s.target,
            mode=mode,
            static=static,
            index=index,
            alphas=alphas[start:stop],
            weights=weights[start:stop],
        )
        total = _core.tree_add(total, part)
    if multiply_by_inputs:
        bx = _core.expand_baselines(b, s.x)
        total = jax.tree_util.tree_map(lambda g, xl, bl: g * (xl - bl), total, s.x, bx)
    return _core.cast_like(total, s.x)


# --------------------------------------------------------------------------------------
# Many targets or neurons at once: one vmapped computation
# --------------------------------------------------------------------------------------


@_core.contract
def for_each_target(
    method: Callable[..., Any], fn: Any, x: PyTree, targets: Sequence[Any], **kwargs: Any
) -> Any:
    """Run ``method`` for several targets as one ``vmap``-ped computation.

    A frequent Captum request (issues 171, 612, 925): explaining every class, or many, at
    once. The targets are traced, so the method compiles once for all of them.

    With jaxlib 0.10 on CPU, XLA's YNNPACK reduce fusion got this nesting wrong (targets
    outside, integration steps inside: layer IG on a bridged GPT-2 was 17-150% off for all
    targets but the first); jaxattr's programs compile without that fusion (see
    :func:`jaxattr.compiler_options`).

    Args:
        method: A jaxattr method taking ``target=`` (input, layer or neuron method).
        fn: Its model argument (a function or a structured model).
        x: Its input.
        targets: A sequence of T targets, each an int or a tuple index (the same for every
            example).
        **kwargs: Other options of ``method`` (e.g. ``n_steps``, ``layer``, ``key``).

    Returns:
        The method's result with a leading axis of size T.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x @ jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        >>> jaxattr.for_each_target(jaxattr.saliency, fn, jnp.ones((1, 2)), [0, 2])[:, 0]
        Array([[1., 4.],
               [3., 6.]], dtype=float32)
    """
    targets = list(targets)
    if not targets:
        raise ValueError("targets must hold at least one target, got an empty sequence")
    x = _core.to_arrays(x)
    layer_args = {k: kwargs[k] for k in ("args",) if k in kwargs}
    fn_check = fn
    if hasattr(fn, "apply") and hasattr(fn, "layers"):
        fn_check = _taps.model_function(fn, ())
    inputs = _core.as_inputs(x, need_float=False)
    for t in targets:  # validate each eagerly (range checks need concrete values)
        _core.prepare_target(t, fn_check, inputs, x, tuple(layer_args.get("args", ())))
    arr = np.asarray([t if isinstance(t, tuple) else (t,) for t in targets], np.int32)
    per_example = np.repeat(arr[:, None, :], inputs.n, axis=1)  # (T, N, k)
    if per_example.shape[-1] == 1:
        per_example = per_example[..., 0]
    return jax.vmap(lambda t: method(fn, x, target=t, **kwargs))(per_example)


@_core.contract
def for_each_neuron(
    method: Callable[..., Any],
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selectors: Sequence[Any],
    **kwargs: Any,
) -> Any:
    """Run a neuron method for several neurons as one ``vmap``-ped computation.

    Args:
        method: A neuron method (e.g. :func:`neuron_gradient`,
            :func:`neuron_integrated_gradients`, :func:`neuron_conductance`).
        model: A structured model.
        x: The input.
        layer: The layer name.
        neuron_selectors: A sequence of K ints or index tuples (no slices or callables).
        **kwargs: Other options of ``method``.

    Returns:
        The method's result with a leading axis of size K.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.for_each_neuron(jaxattr.neuron_gradient, model, make_shapes(1)[0],
        ...                         "fc", [0, 1, 2, 3]).shape
        (4, 1, 32, 32, 3)
    """
    sels = list(neuron_selectors)
    if not sels:
        raise ValueError("neuron_selectors must hold at least one selector, got none")
    s = _Setup(
        model,
        x,
        layer,
        target=None,
        args=kwargs.get("args", ()),
        kwargs=kwargs.get("kwargs"),
        params=kwargs.get("params"),
        to_input=kwargs.get("attribute_to_neuron_input", False),
        need_target=False,
    )
    (tap,) = s.taps
    shapes = _taps.tap_shapes(s.model, s.params, s.inputs, s.x, s.args, s.kwargs, s.taps)
    act_shape = tuple(shapes[tap.key].shape)
    rows = []
    for sel in sels:
        mode, _, index = _selector_spec(sel, act_shape)
        if mode != "index":
            raise ValueError(f"for_each_neuron takes int or tuple selectors, got {sel!r}")
        rows.append(np.asarray(index))
    arr = np.stack(rows)
    return jax.vmap(lambda i: method(model, s.x, layer, i, **kwargs))(arr)


# --------------------------------------------------------------------------------------
# Compositions with the rule family (LRP, DeepLift, guided backprop) and perturbations
# --------------------------------------------------------------------------------------


@_core.cached_jit(("model", "inputs", "taps", "intercept", "captum_normalize", "return_delta"))
def _layer_lrp_core(
    *,
    model,
    inputs,
    taps,
    params,
    x,
    args,
    kwargs,
    target,
    intercept,
    captum_normalize,
    return_delta=False,
):
    grads, _, y = _taps.layer_gradients(
        model, params, inputs, x, args, kwargs, taps, target, intercept=intercept
    )
    out = [grads[t.key] for t in taps]
    s = _core.target_score(y, target)
    if captum_normalize:
        out = [g * s.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype) for g in out]
    if not return_delta:
        return out
    # the output relevance: the cotangent the target puts on y (times the score for Captum)
    cot = jax.grad(lambda y_: jnp.sum(_core.target_score(y_, target)))(jax.lax.stop_gradient(y))
    total = jnp.sum(cot.reshape(cot.shape[0], -1).astype(jnp.float32), axis=1)
    if captum_normalize:
        total = total * s.astype(jnp.float32)
    sums = [jnp.sum(g.reshape(g.shape[0], -1).astype(jnp.float32), axis=1) for g in out]
    return out, total, sums


@_core.contract
def layer_lrp(
    model: Model,
    x: PyTree,
    layer: str | Sequence[str],
    *,
    composite: Any,
    canonizers: Any = None,
    target: Any = None,
    attribute_to_layer_input: bool = False,
    captum_normalize: bool = False,
    return_delta: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """The LRP relevance at one or several layers, Captum's ``LayerLRP``.

    Under a composite's rules the gradient arriving at a layer *is* the relevance flowing
    through it (each rule's reducer multiplies by its input), so this is a tap on the
    rewritten model: no second implementation of LRP.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: A layer name or a list of names.
        composite: The rules (e.g. :func:`jaxattr.epsilon_plus`).
        canonizers: Canonizers applied first (e.g. ``[jaxattr.merge_batch_norm]``).
        target: What to explain (see :func:`jaxattr.select_target`).
        attribute_to_layer_input: The relevance at the layer's input instead of its output.
        captum_normalize: Multiply by the explained output (Captum's convention, as in
            :func:`jaxattr.lrp`).
        return_delta: Also return the conservation gap at the layer, ``R_out -
            sum(relevance at the layer)`` per example, shape (N,) (Captum's convergence
            delta; all tensors of a tuple-valued layer summed; a list, one per layer, for a
            list of layers).
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.

    Returns:
        Relevance shaped like the layer's activation (a tuple, one per tensor, for a layer
        returning a tuple or, with ``attribute_to_layer_input``, receiving several tensors;
        a list for a list of layers), or ``(relevance, delta)``.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> r = jaxattr.layer_lrp(demo_model(), make_shapes(1)[0], "conv3",
        ...                       composite=jaxattr.epsilon_plus(), target=0)
        >>> r.shape
        (1, 8, 8, 32)
    """
    from jaxattr._lrp import attach

    canon = (
        None
        if canonizers is None
        else (tuple(canonizers) if isinstance(canonizers, (list, tuple)) else (canonizers,))
    )
    attached = attach(_taps.as_structured(model), composite, canonizers=canon)
    x_arr = _core.to_arrays(x)
    discover = getattr(attached.model, "discover", None)
    if discover is not None:
        discover(*(x_arr if isinstance(x_arr, tuple) else (x_arr,)), *args)
    s = _Setup(
        attached.model,
        x_arr,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=None,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
    )
    _check_float_x(s.x)
    intercept = _cached_intercept(attached.model, attached.composite)
    out = _layer_lrp_core(
        **s.common(),
        target=s.target,
        intercept=intercept,
        captum_normalize=captum_normalize,
        return_delta=return_delta,
    )
    if not return_delta:
        return s.out(out)
    rel, total, sums = out
    it = iter(sums)
    deltas = [total - sum(next(it) for _ in range(k)) for k in s.sizes]
    return s.out(rel), (deltas[0] if s.single else deltas)


def _cached_intercept(model, composite):
    """One interceptor per (model structure, composite): a static part of the program."""
    return _intercept_for(_caching.partition(model)[0], composite)


@_caching.lru(8)
def _intercept_for(structure, composite):
    return composite.intercept(structure.placeholder().layers)


@_core.cached_jit(
    ("model", "inputs", "taps", "eps", "multiply_by_inputs", "custom", "return_delta")
)
def _layer_deep_lift_core(
    *,
    model,
    inputs,
    taps,
    params,
    x,
    baselines,
    args,
    kwargs,
    target,
    eps,
    multiply_by_inputs,
    return_delta,
    custom=None,
):
    from jaxattr._lrp import _call_custom, _deeplift_intercept, _halves

    baselines = _core.expand_baselines(baselines, x)
    n2 = 2 * inputs.n
    both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), x, baselines)
    args2 = tuple(jnp.concatenate([a, a]) if hasattr(a, "ndim") and a.ndim else a for a in args)
    kw2 = {k: jnp.concatenate([v, v]) for k, v in kwargs.items()}
    layout = _core.Inputs(inputs.is_tuple, n2)
    intercept = _deeplift_intercept(eps, n2)
    shapes = _taps.tap_shapes(model, params, layout, both, args2, kw2, taps)
    zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}

    def score(delta):
        y, acts = _taps.run_tapped(
            model, params, layout, both, args2, kw2, taps, perturb=delta, intercept=intercept
        )
        y1, y0 = _halves(y)
        total = jnp.sum(_core.target_score(y1, target)) + jnp.sum(_core.target_score(y0, target))
        return total, acts

    grads, acts = jax.grad(score, has_aux=True)(zeros)
    attr, mults, ins, bases = [], [], [], []
    for t in taps:  # several for a layer returning a tuple: one attribution per tensor
        g, _ = _halves(grads[t.key])
        a1, a0 = _halves(acts[t.key])
        mults.append(g)
        ins.append(a1)
        bases.append(a0)
        attr.append(g * (a1 - a0) if multiply_by_inputs else g)
    attr = tuple(attr)
    if custom is not None:  # Captum's form: the layer's tensors (a tuple for several)
        one = len(taps) == 1
        pack = (lambda v: v[0]) if one else tuple
        out = _call_custom(custom, pack(mults), pack(ins), pack(bases))
        attr = (out,) if one else tuple(out)
        attr = tuple(jnp.asarray(a, m.dtype) for a, m in zip(attr, mults, strict=True))
    if not return_delta:
        return attr
    # Captum's delta: the attributions of every tensor summed, less f(x) - f(baselines)
    return attr, _completeness(model, inputs, params, x, baselines, args, kwargs, target, attr)


@_core.contract
def layer_deep_lift(
    model: Model,
    x: PyTree,
    layer: str,
    baselines: Any = None,
    *,
    target: Any = None,
    eps: float = 1e-10,
    multiply_by_inputs: bool = True,
    custom_attribution_func: Callable[..., Any] | None = None,
    attribute_to_layer_input: bool = False,
    return_delta: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """DeepLIFT multipliers at a layer times its activation difference, Captum's ``LayerDeepLift``.

    The input and the baseline run side by side under :func:`jaxattr.deep_lift`'s rescale
    rules; the tap at ``layer`` reads the multipliers arriving there and the activations of
    both halves.

    Args:
        model: A structured model whose nonlinearities are layers (e.g. a bridged model).
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        baselines: Baseline inputs broadcastable to x (default zeros).
        target: What to explain (see :func:`jaxattr.select_target`).
        eps: Below this ``|x - b|`` a nonlinearity keeps its gradient.
        multiply_by_inputs: Multiply by the layer's activation difference.
        custom_attribution_func: ``f(multipliers[, layer_inputs[, layer_baselines]])``
            returning the attribution, as Captum's: each argument is the layer's activation
            (its multipliers, its value at x, its value at the baselines), a tuple of them
            for a layer with several tensors. Replaces the multiplication.
        attribute_to_layer_input: Use the layer's input instead of its output.
        return_delta: Also return ``sum(attr) - (f(x) - f(baselines))``, shape (N,)
            (Captum's convergence delta; all tensors of a tuple-valued layer summed).
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.

    Returns:
        Shaped like the layer's activation (a tuple, one per tensor, for a layer returning a
        tuple or, with ``attribute_to_layer_input``, receiving several tensors), or
        ``(attribution, delta)``.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> attr, delta = jaxattr.layer_deep_lift(demo_model(), make_shapes(1)[0], "conv3",
        ...                                       target=0, return_delta=True)
        >>> attr.shape, delta.shape
        ((1, 8, 8, 32), (1,))
    """
    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=None,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
    )
    _check_float_x(s.x)
    _check_custom(custom_attribution_func)
    b = _core.broadcast_baselines(baselines, s.x, s.inputs)
    out = _layer_deep_lift_core(
        **s.common(),
        baselines=b,
        target=s.target,
        eps=float(eps),
        multiply_by_inputs=multiply_by_inputs,
        custom=custom_attribution_func,
        return_delta=return_delta,
    )
    return (s.out(out[0]), out[1]) if return_delta else s.out(out)


def _check_custom(func: Any) -> None:
    if func is not None and not callable(func):
        raise TypeError(
            f"custom_attribution_func must be callable (multipliers[, inputs[, baselines]]) "
            f"-> attribution, got {type(func).__name__}"
        )


@_core.contract
def guided_grad_cam(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    target: Any = None,
    interpolate_mode: str = "nearest",
    attribute_to_layer_input: bool = False,
    channel_axis: int = 1,
    args: tuple = (),
) -> PyTree:
    """Guided Grad-CAM (Selvaraju et al., 2017), Captum's ``GuidedGradCam``.

    Guided backpropagation times the ReLU'd Grad-CAM map upsampled to the input
    (``interpolate_mode``), element by element.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, C, ...) (channels last with
            ``channel_axis=-1``), or a tuple (each input is multiplied by the map).
        layer: The Grad-CAM layer.
        target: What to explain (see :func:`jaxattr.select_target`).
        interpolate_mode: See :func:`interpolate`.
        attribute_to_layer_input: Grad-CAM on the layer's input.
        channel_axis: 1 (NCHW) or -1 (NHWC), for the layer and the input.
        args: Extra positional model inputs.

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> jaxattr.guided_grad_cam(demo_model(), make_shapes(1)[0], "conv3", target=0,
        ...                         channel_axis=-1).shape
        (1, 32, 32, 3)
    """
    from jaxattr._lrp import guided_backprop

    # one map to upsample: a layer returning a tuple is the named error (Captum refuses it)
    _taps.resolve_single(_taps.as_structured(model), layer, attribute_to_layer_input)
    cam = grad_cam(
        model,
        x,
        layer,
        target=target,
        relu_attributions=True,
        attribute_to_layer_input=attribute_to_layer_input,
        channel_axis=channel_axis,
        args=args,
    )
    gb = guided_backprop(model, x, target=target, args=args)

    def times_cam(g):
        axis = channel_axis % g.ndim
        size = [g.shape[i] for i in range(1, g.ndim) if i != axis]
        return g * interpolate(cam, size, mode=interpolate_mode, channel_axis=channel_axis)

    return jax.tree_util.tree_map(times_cam, gb)


@_caching.model_pytree(["model"], static=["tap", "selector"])
class NeuronModel:
    """One neuron of a structured model as a structured model with a (N,) output.

    Rule-based methods (guided backprop, DeepLift) run on it unchanged: its layers are the
    model's, and ``apply`` routes them through the given interceptor before selecting the
    neuron.
    """

    def __init__(self, model: Model, layer: str, neuron_selector: Any, to_input: bool = False):
        self.model = _taps.as_structured(model)
        self.tap = _taps.resolve_single(self.model, layer, to_input)
        self.selector = neuron_selector

    @property
    def params(self) -> Any:
        """The wrapped model's parameters (read at each call: new weights are seen)."""
        return self.model.params

    @property
    def layers(self) -> Mapping[str, Any]:
        """The wrapped model's layers."""
        return self.model.layers

    def apply(
        self, params: Any, *inputs: Any, intercept: Callable[..., Any] | None = None, **kwargs: Any
    ) -> jax.Array:
        _, acts = _taps.run_tapped(
            self.model,
            params,
            _core.Inputs(True, 0),
            inputs,
            (),
            kwargs,
            (self.tap,),
            intercept=intercept,
        )
        act = acts[self.tap.key]
        mode, static, index = _selector_spec(self.selector, tuple(act.shape))
        return _select(act, mode, static, index)

    def __call__(self, *inputs: Any) -> jax.Array:
        return self.apply(self.params, *inputs)


def _neuron_as_model(model, layer, selector, to_input):
    """A pytree: equal (structure, layer, selector) share compiled programs."""
    return NeuronModel(model, layer, selector, to_input)


@_core.contract
def neuron_guided_backprop(
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selector: Any,
    *,
    attribute_to_neuron_input: bool = False,
    args: tuple = (),
) -> PyTree:
    """Guided backpropagation of one neuron, Captum's ``NeuronGuidedBackprop``.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        neuron_selector: See :func:`neuron_model`.
        attribute_to_neuron_input: Select the neuron from the layer's input.
        args: Extra positional model inputs.

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> jaxattr.neuron_guided_backprop(demo_model(), make_shapes(1)[0], "fc", 1).shape
        (1, 32, 32, 3)
    """
    from jaxattr._lrp import guided_backprop

    nm = _neuron_as_model(model, layer, neuron_selector, attribute_to_neuron_input)
    return guided_backprop(nm, x, target=None, args=args)


@_core.contract
def neuron_deep_lift(
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selector: Any,
    baselines: Any = None,
    *,
    eps: float = 1e-10,
    multiply_by_inputs: bool = True,
    custom_attribution_func: Callable[..., Any] | None = None,
    attribute_to_neuron_input: bool = False,
    args: tuple = (),
) -> PyTree:
    """DeepLIFT of one neuron, Captum's ``NeuronDeepLift``.

    Args:
        model: A structured model whose nonlinearities are layers.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        neuron_selector: See :func:`neuron_model`.
        baselines: Baseline inputs broadcastable to x (default zeros).
        eps: See :func:`jaxattr.deep_lift`.
        multiply_by_inputs: Multiply by ``x - baselines``.
        custom_attribution_func: See :func:`jaxattr.deep_lift`.
        attribute_to_neuron_input: Select the neuron from the layer's input.
        args: Extra positional model inputs.

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> jaxattr.neuron_deep_lift(demo_model(), make_shapes(1)[0], "conv3", (3, 3, 0)).shape
        (1, 32, 32, 3)
    """
    from jaxattr._lrp import deep_lift

    nm = _neuron_as_model(model, layer, neuron_selector, attribute_to_neuron_input)
    return deep_lift(
        nm,
        x,
        baselines=baselines,
        target=None,
        eps=eps,
        multiply_by_inputs=multiply_by_inputs,
        custom_attribution_func=custom_attribution_func,
        args=args,
    )


@_core.contract
def neuron_feature_ablation(
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selector: Any,
    *,
    baselines: Any = None,
    feature_mask: Any = None,
    batch_size: int | None = None,
    attribute_to_neuron_input: bool = False,
    show_progress: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
) -> PyTree:
    """Feature ablation of one neuron, Captum's ``NeuronFeatureAblation``.

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name.
        neuron_selector: See :func:`neuron_model`.
        baselines: Replacement values (see :func:`jaxattr.feature_ablation`).
        feature_mask: Feature ids (see :func:`jaxattr.feature_ablation`).
        batch_size: At most this many ablations per compiled call.
        attribute_to_neuron_input: Select the neuron from the layer's input.
        show_progress: Show a progress bar.
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> mask = jnp.arange(64).reshape(8, 8).repeat(4, 0).repeat(4, 1)[None, :, :, None]
        >>> jaxattr.neuron_feature_ablation(demo_model(), make_shapes(1)[0], "fc", 0,
        ...                                 feature_mask=mask).shape
        (1, 32, 32, 3)
    """
    from jaxattr._perturbation import feature_ablation

    nm = _Neuron(
        model,
        x,
        layer,
        neuron_selector,
        to_input=attribute_to_neuron_input,
        args=args,
        kwargs=kwargs,
        params=None,
    )
    return feature_ablation(
        nm.fn,
        nm.x,
        baselines=baselines,
        feature_mask=feature_mask,
        batch_size=batch_size,
        show_progress=show_progress,
        args=nm.extra,
    )


# --------------------------------------------------------------------------------------
# DeepLIFT SHAP at a layer or a neuron, deconvolution of a neuron, layer permutation
# --------------------------------------------------------------------------------------


def _distribution(baselines: Any, x: PyTree, method: str) -> tuple[PyTree, int]:
    """A baseline distribution of M > 1 examples (Captum's callable form resolved)."""
    dist = _core.baseline_distribution(resolve_baselines(baselines, x), x)
    m = jax.tree_util.tree_leaves(dist)[0].shape[0]
    if m < 2:
        raise ValueError(
            f"baselines must hold more than one baseline (M > 1) for {method}, got M={m}; "
            f"use {method.replace('_shap', '')} for a single baseline"
        )
    return dist, m


@_core.contract
def layer_deep_lift_shap(
    model: Model,
    x: PyTree,
    layer: str,
    baselines: Any,
    *,
    target: Any = None,
    eps: float = 1e-10,
    multiply_by_inputs: bool = True,
    custom_attribution_func: Callable[..., Any] | None = None,
    attribute_to_layer_input: bool = False,
    return_delta: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """DeepLIFT SHAP at a layer, Captum's ``LayerDeepLiftShap``.

    Every example is paired with every baseline of the distribution (M of them), the
    pairs run through :func:`layer_deep_lift` as one batch of N * M, and the layer
    attributions are averaged over the baselines.

    Args:
        model: A structured model whose nonlinearities are layers (e.g. a bridged model).
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        baselines: The distribution, per input an array (M, ...) with M > 1, or Captum's
            callable form (``baselines()`` or ``baselines(x)`` returns it).
        target: What to explain (see :func:`jaxattr.select_target`).
        eps: See :func:`jaxattr.deep_lift`.
        multiply_by_inputs: Multiply by the layer's activation difference.
        custom_attribution_func: See :func:`layer_deep_lift`.
        attribute_to_layer_input: Use the layer's input instead of its output.
        return_delta: Also return the delta of every (example, baseline) pair, shape
            (N, M) (``delta.reshape(-1)`` is Captum's order).
        args: Extra positional model inputs (repeated with the examples).
        kwargs: Keyword model inputs (repeated with the examples).

    Returns:
        Shaped like the layer's activation (a tuple, one per tensor, for a layer returning a
        tuple or, with ``attribute_to_layer_input``, receiving several tensors), or
        ``(attribution, delta)``.

    Raises:
        ValueError: Fewer than two baselines.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> x = make_shapes(1)[0]
        >>> attr, delta = jaxattr.layer_deep_lift_shap(
        ...     demo_model(), x, "conv3", baselines=jnp.stack([x[0] * 0, x[0] * 0.5]),
        ...     target=0, return_delta=True)
        >>> attr.shape, delta.shape
        ((1, 8, 8, 32), (1, 2))
    """
    from jaxattr._lrp import _repeat_target

    s = _Setup(
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=None,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
    )
    _check_float_x(s.x)
    _check_custom(custom_attribution_func)
    dist, m = _distribution(baselines, s.x, "layer_deep_lift_shap")
    n = s.inputs.n

    def rep(a):
        return jnp.repeat(a, m, axis=0) if hasattr(a, "ndim") and a.ndim else a

    out = _layer_deep_lift_core(
        model=s.model,
        inputs=_core.Inputs(is_tuple=s.inputs.is_tuple, n=n * m),
        taps=s.taps,
        params=s.params,
        x=jax.tree_util.tree_map(rep, s.x),
        baselines=jax.tree_util.tree_map(lambda b: jnp.tile(b, (n,) + (1,) * (b.ndim - 1)), dist),
        args=tuple(rep(a) for a in s.args),
        kwargs={k: rep(v) for k, v in s.kwargs.items()},
        target=_repeat_target(s.target, m),
        eps=float(eps),
        multiply_by_inputs=multiply_by_inputs,
        custom=custom_attribution_func,
        return_delta=return_delta,
    )
    attr, delta = out if return_delta else (out, None)
    attr = tuple(jnp.mean(a.reshape(n, m, *a.shape[1:]), axis=1).astype(a.dtype) for a in attr)
    return (s.out(attr), delta.reshape(n, m)) if return_delta else s.out(attr)


@_core.contract
def neuron_deep_lift_shap(
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selector: Any,
    baselines: Any,
    *,
    eps: float = 1e-10,
    multiply_by_inputs: bool = True,
    custom_attribution_func: Callable[..., Any] | None = None,
    attribute_to_neuron_input: bool = False,
    args: tuple = (),
) -> PyTree:
    """DeepLIFT SHAP of one neuron, Captum's ``NeuronDeepLiftShap``.

    :func:`jaxattr.deep_lift_shap` of the neuron's value (its layer's activation selected
    by ``neuron_selector``), every example paired with every baseline and averaged.

    Args:
        model: A structured model whose nonlinearities are layers.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        neuron_selector: See :func:`neuron_model`.
        baselines: The distribution, per input an array (M, ...) with M > 1, or Captum's
            callable form (``baselines()`` or ``baselines(x)`` returns it).
        eps: See :func:`jaxattr.deep_lift`.
        multiply_by_inputs: Multiply by ``x - baselines``.
        custom_attribution_func: See :func:`jaxattr.deep_lift`.
        attribute_to_neuron_input: Select the neuron from the layer's input.
        args: Extra positional model inputs.

    Returns:
        The attribution, with x's structure.

    Raises:
        ValueError: Fewer than two baselines.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> x = make_shapes(1)[0]
        >>> jaxattr.neuron_deep_lift_shap(demo_model(), x, "conv3", (3, 3, 0),
        ...                               baselines=jnp.stack([x[0] * 0, x[0] * 0.5])).shape
        (1, 32, 32, 3)
    """
    from jaxattr._lrp import deep_lift_shap

    nm = _neuron_as_model(model, layer, neuron_selector, attribute_to_neuron_input)
    return deep_lift_shap(
        nm,
        x,
        baselines=baselines,
        target=None,
        eps=eps,
        multiply_by_inputs=multiply_by_inputs,
        custom_attribution_func=custom_attribution_func,
        args=args,
    )


@_core.contract
def neuron_deconvolution(
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selector: Any,
    *,
    attribute_to_neuron_input: bool = False,
    args: tuple = (),
) -> PyTree:
    """Deconvolution (DeconvNet) of one neuron, Captum's ``NeuronDeconvolution``.

    :func:`jaxattr.deconvolution` of the neuron's value: every ReLU passes
    ``max(R_out, 0)`` back, whatever its input.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        neuron_selector: See :func:`neuron_model`.
        attribute_to_neuron_input: Select the neuron from the layer's input.
        args: Extra positional model inputs.

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> jaxattr.neuron_deconvolution(demo_model(), make_shapes(1)[0], "fc", 1).shape
        (1, 32, 32, 3)
    """
    from jaxattr._lrp import deconvolution

    nm = _neuron_as_model(model, layer, neuron_selector, attribute_to_neuron_input)
    return deconvolution(nm, x, target=None, args=args)


@_caching.model_pytree(["model"], static=["taps", "inputs", "treedef", "n_args", "kw_names"])
class _LayerReplaced:
    """``fn(*activations, *x_leaves, *args, *kw_values)``: the model with the tapped
    layer's activations replaced by the given ones (the layers after it run on them)."""

    def __init__(self, model, taps, inputs, treedef, n_args, kw_names):
        self.model = model
        self.taps = taps
        self.inputs = inputs
        self.treedef = treedef
        self.n_args = n_args
        self.kw_names = kw_names

    def __call__(self, *a: Any) -> Any:
        k = len(self.taps)
        acts, rest = a[:k], a[k:]
        n_leaves = self.treedef.num_leaves
        x = jax.tree_util.tree_unflatten(self.treedef, rest[:n_leaves])
        rest = rest[n_leaves:]
        args, kw_values = rest[: self.n_args], rest[self.n_args :]
        y, _ = _taps.run_tapped(
            self.model,
            self.model.params,
            self.inputs,
            x,
            tuple(args),
            dict(zip(self.kw_names, kw_values, strict=True)),
            self.taps,
            replace={t.key: v for t, v in zip(self.taps, acts, strict=True)},
        )
        return y


@_core.contract
def layer_feature_permutation(
    model: Model,
    x: PyTree,
    layer: str,
    *,
    key: jax.Array | None = None,
    target: Any = None,
    layer_mask: Any = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
) -> jax.Array | tuple[jax.Array, ...]:
    """Permutation importance of a layer's units, Captum's ``LayerFeaturePermutation``.

    :func:`jaxattr.feature_permutation` applied to the layer's activation: each group of
    units (``layer_mask``; default each unit alone) is shuffled across the batch while
    the model input stays, and every unit of the group gets ``f(x) - f(x with the group
    permuted)``. The layers before the tapped one run once.

    Args:
        model: A structured model.
        x: Model input of shape (N, ...), or a tuple.
        layer: The layer name.
        key: PRNG key of the permutations (as :func:`jaxattr.feature_permutation`'s).
        target: What to explain (see :func:`jaxattr.select_target`).
        layer_mask: Integer group ids broadcastable to the activation, with a leading
            dimension of 1 or N (Captum's ``layer_mask``); a tuple, one per tensor, for a
            layer returning a tuple.
        batch_size: At most this many permutations per compiled call (Captum's
            ``perturbations_per_eval``).
        show_progress: Show a progress bar over the chunks (eager calls).
        args: Extra positional model inputs.
        kwargs: Keyword model inputs.

    Returns:
        Shaped like the layer's activation (a tuple, one per tensor, for a layer returning
        a tuple).

    Example:
        >>> import jax, jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> jaxattr.layer_feature_permutation(demo_model(), make_shapes(3)[0], "fc",
        ...                                   key=jax.random.key(0), target=0).shape
        (3, 4)
    """
    from jaxattr._perturbation import feature_permutation

    s = _Setup(
        model,
        x,
        layer,
        target=None,
        args=args,
        kwargs=kwargs,
        params=None,
        to_input=False,
        need_target=False,
        tuple_ok=True,
    )
    if not s.single:
        raise TypeError(f"layer must be one layer name (str), got {type(layer).__name__}")
    values = _activation_core(**s.common())
    leaves, treedef = jax.tree_util.tree_flatten(s.x)
    fn = _LayerReplaced(s.model, s.taps, s.inputs, treedef, len(s.args), s.kw_names)
    attr = feature_permutation(
        fn,
        values[0] if len(values) == 1 else tuple(values),
        key=key,
        target=target,
        feature_mask=layer_mask,
        batch_size=batch_size,
        show_progress=show_progress,
        args=(*leaves, *s.args, *s.kw_values),
    )
    return attr
