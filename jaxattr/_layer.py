"""Layer methods: what a named layer holds and how the output depends on it.

Every structured method starts from :class:`Setup` (model, inputs, target, taps, params,
keyword inputs) and runs the model with :mod:`jaxattr._taps`: activations, gradient x
activation, layer integrated gradients, internal influence, conductance and GradientSHAP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr import _core, _taps
from jaxattr._core import PyTree
from jaxattr._gradient import completeness_delta
from jaxattr._integrated import QUADRATURES, _quadrature, checked_quadrature
from jaxattr._noise import gradient_shap_draws, gradient_shap_sample, resolve_baselines

__all__ = [
    "internal_influence",
    "layer_activation",
    "layer_conductance",
    "layer_gradient_shap",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "probe",
]

Model = Any


# --------------------------------------------------------------------------------------
# Set-up shared by every layer method
# --------------------------------------------------------------------------------------


class Setup:
    """A layer method's validated call: :func:`jaxattr._core.prepare_structured`'s fields
    (model, x, args, kwargs, inputs, kw_names, kw_values, params, fn, target) and the
    resolved taps of the requested layers."""

    def __init__(
        self,
        method,
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
        need_float=False,
        tuple_ok=False,
    ):
        call = _core.prepare_structured(
            model,
            x,
            target=target,
            args=args,
            kwargs=kwargs,
            params=params,
            method=method,
            need_float=need_float,
            need_target=need_target,
        )
        self.model, self.x, self.args, self.kwargs, self.inputs = call[:5]
        self.kw_names, self.kw_values, self.params, self.fn, self.target = call[5:]
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
    s = Setup(
        "layer_activation",
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
    s = Setup(
        "layer_gradient_x_activation",
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
    s = Setup(
        "probe",
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
    """Captum's layer delta: every tensor's attributions summed, less f(x) - f(baselines)."""
    fn = lambda *a: model.apply(params, *a, **dict(kwargs))  # noqa: E731
    return completeness_delta(fn, inputs, x, baselines, args, target, attrs)


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
    s = Setup(
        "layer_integrated_gradients",
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

    return tuple(jnp.tensordot(weights.astype(g.dtype), g, axes=1) for g in jax.vmap(step)(alphas))


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
    s = Setup(
        "internal_influence",
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
        need_float=True,
    )
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
    s = Setup(
        "layer_conductance",
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
        need_float=True,
    )
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
        xs, bs, point = gradient_shap_sample(x, dist, noise_s, idx_s, alpha_s)
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
    s = Setup(
        "layer_gradient_shap",
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
        need_float=True,
    )
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
