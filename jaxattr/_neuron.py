"""Neuron methods: one neuron of a layer as a plain function, handed to the input methods.

"Neuron ``selector`` of layer ``layer``" becomes a model whose output is that neuron
(:func:`neuron_model`), so neuron gradient, integrated gradients, GradientSHAP, DeepLift,
guided backprop and feature ablation are the input methods applied to it; conductance is
the one neuron method with a body of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core, _taps
from jaxattr._core import PyTree
from jaxattr._gradient import gradient
from jaxattr._integrated import checked_quadrature, integrated_gradients
from jaxattr._layer import Setup, _batch, _points
from jaxattr._noise import gradient_shap

__all__ = [
    "NeuronModel",
    "neuron_conductance",
    "neuron_deconvolution",
    "neuron_deep_lift",
    "neuron_deep_lift_shap",
    "neuron_feature_ablation",
    "neuron_gradient",
    "neuron_gradient_shap",
    "neuron_guided_backprop",
    "neuron_integrated_gradients",
    "neuron_model",
]

Model = Any


# --------------------------------------------------------------------------------------
# Neurons: a neuron of a layer as a plain function, handed to the input methods
# --------------------------------------------------------------------------------------


class _Spec(NamedTuple):
    """A ``neuron_selector`` resolved against its activation's shape."""

    mode: str  # "callable", "slices" or "index"
    static: Any  # the callable, or the slices as a hashable key (compiled in)
    index: Any  # the index array (a traced argument), or None


def _selector_spec(selector: Any, act_shape: tuple) -> _Spec:
    """The :class:`_Spec` (mode, static part, dynamic index array) of a ``neuron_selector``."""
    if callable(selector) and not hasattr(selector, "shape"):
        return _Spec("callable", selector, None)
    sel = (selector,) if isinstance(selector, (int, np.integer)) else selector
    if hasattr(sel, "shape"):  # an index array (used by for_each_neuron)
        return _Spec("index", None, jnp.asarray(sel, jnp.int32))
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
        return _Spec("slices", key, None)
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
    return _Spec("index", None, np.asarray([int(i) for i in sel], np.int32))


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


def _neuron_value(model, params, tap, xs, args, kwargs, selector, intercept=None) -> jax.Array:
    """One neuron's value per example, (N,): the one body every neuron function runs.

    ``selector`` is a ``neuron_selector`` or its ``(mode, static, index)`` spec.
    """
    layout = _core.Inputs(is_tuple=True, n=0)
    _, acts = _taps.run_tapped(
        model, params, layout, tuple(xs), args, kwargs, (tap,), intercept=intercept
    )
    act = acts[tap.key]
    spec = selector if isinstance(selector, _Spec) else _selector_spec(selector, tuple(act.shape))
    return _select(act, *spec)


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
        split = len(rest) - n_args - len(kw_names)
        xs, extra = tuple(rest[:split]), rest[split:]
        kwargs = dict(zip(kw_names, extra[n_args:], strict=True))
        return _neuron_value(
            model, params, tap, xs, tuple(extra[:n_args]), kwargs, _Spec(mode, static, index)
        )

    return fn


class _Neuron:
    """A neuron of a structured model prepared as a plain function for the input methods."""

    def __init__(self, method, model, x, layer, selector, *, to_input, args, kwargs, params):
        self.s = Setup(
            method,
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
    nm = NeuronModel(model, layer, neuron_selector, attribute_to_neuron_input)
    p = nm.params if params is None else params
    return functools.partial(nm.apply, p)


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
        "neuron_gradient",
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
        "neuron_integrated_gradients",
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
        "neuron_gradient_shap",
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
    s = Setup(
        "neuron_conductance",
        model,
        x,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_neuron_input,
        need_float=True,
    )
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


@_caching.model_pytree(["model"], static=["tap", "selector"])
class NeuronModel:
    """One neuron of a structured model as a structured model with a (N,) output.

    Rule-based methods (guided backprop, DeepLift) run on it unchanged: its layers are the
    model's, and ``apply`` routes them through the given interceptor before selecting the
    neuron.
    """

    def __init__(self, model: Model, layer: str, neuron_selector: Any, to_input: bool = False):
        self.model = _core.check_structured(model, "NeuronModel")
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
        return _neuron_value(
            self.model, params, self.tap, inputs, (), kwargs, self.selector, intercept
        )

    def __call__(self, *inputs: Any) -> jax.Array:
        return self.apply(self.params, *inputs)


@_core.contract
def neuron_guided_backprop(
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
    """Guided backpropagation of one neuron, Captum's ``NeuronGuidedBackprop``.

    Args:
        model: A structured model.
        x: Floating model input of shape (N, ...), or a tuple.
        layer: The layer name.
        neuron_selector: See :func:`neuron_model`.
        attribute_to_neuron_input: Select the neuron from the layer's input.
        args: Extra positional model inputs.
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> jaxattr.neuron_guided_backprop(demo_model(), make_shapes(1)[0], "fc", 1).shape
        (1, 32, 32, 3)
    """
    from jaxattr._lrp import guided_backprop

    nm = NeuronModel(model, layer, neuron_selector, attribute_to_neuron_input)
    return guided_backprop(nm, x, target=None, args=args, kwargs=kwargs, params=params)


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
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
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
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> jaxattr.neuron_deep_lift(demo_model(), make_shapes(1)[0], "conv3", (3, 3, 0)).shape
        (1, 32, 32, 3)
    """
    from jaxattr._deeplift import deep_lift

    nm = NeuronModel(model, layer, neuron_selector, attribute_to_neuron_input)
    return deep_lift(
        nm,
        x,
        baselines=baselines,
        target=None,
        eps=eps,
        multiply_by_inputs=multiply_by_inputs,
        custom_attribution_func=custom_attribution_func,
        args=args,
        kwargs=kwargs,
        params=params,
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
    params: Any = None,
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
        params: Parameters to run with instead of the model's own (same structure).

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
    from jaxattr._ablation import feature_ablation

    nm = _Neuron(
        "neuron_feature_ablation",
        model,
        x,
        layer,
        neuron_selector,
        to_input=attribute_to_neuron_input,
        args=args,
        kwargs=kwargs,
        params=params,
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
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
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
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).

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
    from jaxattr._deeplift import deep_lift_shap

    nm = NeuronModel(model, layer, neuron_selector, attribute_to_neuron_input)
    return deep_lift_shap(
        nm,
        x,
        baselines=baselines,
        target=None,
        eps=eps,
        multiply_by_inputs=multiply_by_inputs,
        custom_attribution_func=custom_attribution_func,
        args=args,
        kwargs=kwargs,
        params=params,
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
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
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
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).

    Returns:
        The attribution, with x's structure.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> jaxattr.neuron_deconvolution(demo_model(), make_shapes(1)[0], "fc", 1).shape
        (1, 32, 32, 3)
    """
    from jaxattr._lrp import deconvolution

    nm = NeuronModel(model, layer, neuron_selector, attribute_to_neuron_input)
    return deconvolution(nm, x, target=None, args=args, kwargs=kwargs, params=params)
