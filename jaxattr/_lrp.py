"""Rule-based backpropagation: LRP, guided backprop, deconvnet, excitation backprop, DeepLift.

Every method here rewrites a *copy* of a structured model (a bridged torch model, a Flax
model through :mod:`jaxattr.flax`, or any object with ``params``, ``layers`` and
``apply``; see :mod:`jaxattr.structure`): selected layers run under a ``jax.custom_vjp``
rule, and the attribution is the gradient of the rewritten function. Nothing is hooked
or mutated.

Relevance conventions. Zennit starts the backward pass from the output cotangent (the
``target``: an int is a one-hot row of ones), so an int target's relevance sums to about
1. Captum's ``LRP.attribute`` computes that "normalized relevance" and then multiplies it
by the explained output, so the relevance sums to about ``f(x)[target]``; pass
``captum_normalize=True`` to get Captum's convention.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr import _caching, _core, _rules, _torchray
from jaxattr._canonizers import canonize
from jaxattr._composites import (
    LINEAR,
    Composite,
    deconvnet,
    guided_backprop_composite,
    is_relu,
)
from jaxattr._core import PyTree
from jaxattr._rules import ParamMod, Rule
from jaxattr.structure import Layer, default_intercept

__all__ = [
    "attach",
    "contrastive_excitation_backprop",
    "deconvolution",
    "deep_lift",
    "deep_lift_shap",
    "excitation_backprop",
    "guided_backprop",
    "lrp",
]


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def _check_structured(model: Any, method: str) -> None:
    missing = [a for a in ("params", "layers", "apply") if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"{method} needs a structured model (params, layers, apply(params, *inputs, "
            f"intercept=...)), such as jaxattr.bridge.from_torch(...) or "
            f"jaxattr.flax.from_nnx(...); got {type(model).__name__} without "
            f"{', '.join(missing)}"
        )


def _canon_key(canonizers):
    if canonizers is None:
        return None
    if callable(canonizers):
        return (canonizers,)
    return tuple(canonizers)


@_caching.model_pytree(["model"])
class _PlainFn:
    """A structured model as a plain function of its inputs (its weights stay leaves)."""

    def __init__(self, model: Any):
        self.model = model

    def __call__(self, *inputs: Any) -> Any:
        return self.model.apply(self.model.params, *inputs, intercept=default_intercept)


def _plain_fn(model: Any) -> _PlainFn:
    return _PlainFn(model)


@_caching.lru(8)
def _canonized_cached(model: Any, canonizers: tuple) -> Any:
    return canonize(model, canonizers)


def _canonized(model: Any, canonizers: tuple | None) -> Any:
    """Canonizers build their rewrite once per model (it is a static part of programs)."""
    if not canonizers:
        return model
    try:
        return _canonized_cached(model, canonizers)
    except TypeError:  # an unhashable canonizer: no caching
        return canonize(model, canonizers)


@_caching.model_pytree(["model"], static=["composite"])
class Attached:
    """A structured model with a composite's rules attached: a pure function of the input.

    ``attached(*inputs)`` runs the rewritten model with its own parameters;
    ``attached.apply(params, *inputs)`` with given ones. Its gradient is the rules'
    relevance, so it can be passed to any gradient method (``smoothgrad``,
    ``integrated_gradients``, ``noise_tunnel``) for Zennit's hybrid attributions.

    Attributes:
        model: The (canonized) structured model.
        composite: The composite.
    """

    def __init__(self, model: Any, composite: Composite):
        self.model = model
        self.composite = composite
        self._intercept = None

    def apply(self, params: Any, *inputs: Any) -> Any:
        """Run the rewritten model with ``params``."""
        if self._intercept is None:
            discover = getattr(self.model, "discover", None)
            if discover is not None:  # models that find their layers on the first call
                discover(*inputs)
            self._intercept = self.composite.intercept(self.model.layers)
        return self.model.apply(params, *inputs, intercept=self._intercept)

    def __call__(self, *inputs: Any) -> Any:
        return self.apply(self.model.params, *inputs)

    def __repr__(self) -> str:
        return f"Attached({self.composite!r})"


def attach(model: Any, composite: Composite, *, canonizers: Any = None) -> Attached:
    """The rewritten pure function: ``model`` with ``composite``'s rules (after canonizers).

    Use it for hybrids, e.g. SmoothGrad over LRP as Zennit's ``SmoothGrad`` attributor with
    a composite: ``jaxattr.smoothgrad(attach(model, epsilon_plus()), x, key=...)``. The
    result is a pytree whose leaves are the model's weights: equal arguments share
    compiled programs, and new weights are seen without recompiling.

    Args:
        model: A structured model.
        composite: The composite assigning rules to layers.
        canonizers: A canonizer or a sequence of them (e.g. ``[merge_batch_norm]``), applied
            after the composite's own ``canonizers``.

    Returns:
        An :class:`Attached` callable, ``fn(*inputs) -> output``, batch-first like the model.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr.structure import Layer, default_intercept
        >>> class Dense:
        ...     params = {"w": jnp.array([[1.0], [3.0]])}
        ...     layers = {"fc": Layer("fc", "linear", param_names={"weight": "w"})}
        ...     def apply(self, p, x, intercept=None):
        ...         return intercept(self.layers["fc"], lambda q, v: v @ q["weight"],
        ...                          {"weight": p["w"]}, x)
        >>> fn = jaxattr.attach(Dense(), jaxattr.epsilon_plus(epsilon=0.0))
        >>> jaxattr.gradient(fn, jnp.array([[1.0, 1.0]]), target=0)
        Array([[0.25, 0.75]], dtype=float32)
    """
    _check_structured(model, "attach")
    if not isinstance(composite, Composite):
        raise TypeError(f"composite must be a jaxattr.Composite, got {type(composite).__name__}")
    cans = _canon_key(canonizers) or ()
    # the composite's own canonizers first (Zennit's composite(canonizers=...)), then these
    cans = (*composite.canonizers, *(c for c in cans if c not in composite.canonizers))
    return Attached(_canonized(model, cans or None), composite)


# --------------------------------------------------------------------------------------
# LRP and friends
# --------------------------------------------------------------------------------------


def _sum_rows(tree) -> jax.Array:
    return sum(
        jnp.sum(a.reshape(a.shape[0], -1).astype(jnp.float32), axis=1)
        for a in jax.tree_util.tree_leaves(tree)
    )


@_core.cached_jit(("attached", "inputs", "captum_normalize", "return_delta"))
def _lrp_core(*, attached, inputs, params, x, args, target, captum_normalize, return_delta):
    fn = lambda *a: attached.apply(params, *a)  # noqa: E731

    def score(x_):
        y = inputs.call(fn, x_, args)
        s = _core.target_score(y, target)
        return jnp.sum(s), (y, s)

    grad, (y, s) = jax.grad(score, has_aux=True)(x)
    if captum_normalize:
        grad = jax.tree_util.tree_map(
            lambda g: g * s.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), grad
        )
    grad = _core.cast_like(grad, x)
    if not return_delta:
        return grad
    # the output relevance: the cotangent the target puts on y (times the score for Captum)
    cot = jax.grad(lambda y_: jnp.sum(_core.target_score(y_, target)))(jax.lax.stop_gradient(y))
    total = jnp.sum(cot.reshape(cot.shape[0], -1).astype(jnp.float32), axis=1)
    if captum_normalize:
        total = total * s.astype(jnp.float32)
    return grad, total - _sum_rows(grad)


def _run_rules(
    model, x, composite, canonizers, target, args, captum_normalize, return_delta, method
):
    _check_structured(model, method)
    attached = attach(model, composite, canonizers=canonizers)
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _core.as_inputs(x)
    t = _core.prepare_target(target, _plain_fn(model), inputs, x, args)
    return _lrp_core(
        attached=attached,
        inputs=inputs,
        params=attached.model.params,
        x=x,
        args=args,
        target=t,
        captum_normalize=captum_normalize,
        return_delta=return_delta,
    )


@_core.contract
def lrp(
    model: Any,
    x: PyTree,
    *,
    composite: Composite,
    canonizers: Any = None,
    target: Any = None,
    return_delta: bool = False,
    captum_normalize: bool = False,
    args: tuple = (),
) -> PyTree | tuple[PyTree, jax.Array]:
    """Layer-wise relevance propagation (Bach et al., 2015) with a composite of rules.

    Zennit's ``Gradient`` attributor under a composite: the gradient of the rewritten model
    (see :func:`attach`). With the Zennit convention (default) the output relevance is the
    target's cotangent: an int target puts relevance 1 on that output. With
    ``captum_normalize=True`` the result is multiplied by the explained output, as Captum's
    ``LRP.attribute`` does (Captum's rules: ``epsilon(1e-9)`` on conv, linear, pools and
    batch norm, pass on ReLU/dropout/tanh).

    Args:
        model: A structured model (bridged torch, Flax adapter, ...).
        x: Input array (N, ...) or a tuple of them (passed as ``apply(params, *x)``).
        composite: Which rule runs on which layer (e.g. :func:`jaxattr.epsilon_plus_flat`).
        canonizers: A canonizer or a sequence of them (e.g. ``[merge_batch_norm]``), applied
            after the composite's own ``canonizers``.
        target: What to explain (see :func:`jaxattr.select_target`).
        return_delta: Also return the conservation gap ``R_out - sum(relevance)`` per
            example, shape (N,) (``R_out`` is the total output relevance).
        captum_normalize: Multiply by the explained output (Captum's convention).
        args: Extra positional model inputs after ``x``; not attributed.

    Returns:
        The relevance with x's structure, shapes and dtypes, or ``(relevance, delta)``.

    Raises:
        TypeError: ``model`` is not a structured model.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr.structure import Layer, default_intercept
        >>> class Dense:
        ...     params = {"w": jnp.array([[1.0], [3.0]])}
        ...     layers = {"fc": Layer("fc", "linear", param_names={"weight": "w"})}
        ...     def apply(self, p, x, intercept=None):
        ...         return intercept(self.layers["fc"], lambda q, v: v @ q["weight"],
        ...                          {"weight": p["w"]}, x)
        >>> comp = jaxattr.Composite(layer_map=(("linear", jaxattr.epsilon(0.0)),))
        >>> jaxattr.lrp(Dense(), jnp.array([[1.0, 1.0]]), composite=comp, target=0,
        ...             captum_normalize=True)
        Array([[1., 3.]], dtype=float32)
    """
    return _run_rules(
        model, x, composite, canonizers, target, args, captum_normalize, return_delta, "lrp"
    )


# ---- plain functions: their activations, found in the jaxpr, as layers ----


def _activation_of(eqn) -> str | None:
    """``relu`` (a ``jax.nn.relu`` call), ``tanh`` or ``sigmoid`` (primitives), else None."""
    name = eqn.primitive.name
    if name == "tanh":
        return "tanh"
    if name == "logistic":
        return "sigmoid"
    if name not in ("custom_jvp_call", "custom_jvp_call_jaxpr"):
        return None
    sub = eqn.params.get("call_jaxpr")
    info = getattr(getattr(sub, "jaxpr", sub), "debug_info", None)
    src = str(getattr(info, "func_src_info", "") or "")
    return "relu" if src.split(" at ")[0] == "relu" and "nn" in src else None


_ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}


def _eval_rewrite(jaxpr, consts, args, replace):
    """Evaluate ``jaxpr``; ``replace(eqn, invals)`` may return the outputs of an equation."""
    from jax.extend import core as jcore

    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        outvals = replace(eqn, invals)
        if outvals is None:
            sub = _sub_jaxpr(eqn)
            if sub is not None:  # inline jit-ed calls so that their activations are seen
                outvals = _eval_rewrite(
                    getattr(sub, "jaxpr", sub), getattr(sub, "consts", ()), invals, replace
                )
            else:
                bind_params = eqn.primitive.get_bind_params(eqn.params)
                if isinstance(bind_params, tuple):  # older jax: (subfuns, params)
                    subfuns, bind_params = bind_params
                else:
                    subfuns = bind_params.pop("subfuns", ())
                with eqn.ctx.manager:
                    outvals = eqn.primitive.bind(*subfuns, *invals, **bind_params)
                if not eqn.primitive.multiple_results:
                    outvals = [outvals]
        for v, val in zip(eqn.outvars, outvals, strict=True):
            env[v] = val
    return [read(v) for v in jaxpr.outvars]


def _sub_jaxpr(eqn):
    if eqn.primitive.name in ("pjit", "jit", "closed_call", "core_call"):
        return eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
    return None


@_caching.model_pytree(["fn"])
class _FunctionModel:
    """A plain JAX function as a structured model whose layers are its activations.

    ``jax.nn.relu`` calls and ``tanh``/``logistic`` (sigmoid) primitives in the function's
    jaxpr become layers of kind ``"activation"`` named ``relu``, ``relu:1``, ``tanh``, ...
    in execution order (jit-ed inner functions are inlined; activations inside ``scan``,
    ``cond`` or ``while`` are not seen).
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.params: dict = {}
        self._layers: dict[str, Layer] | None = None

    @property
    def layers(self) -> dict[str, Layer]:
        return self._layers or {}

    def discover(self, *inputs: Any) -> dict[str, Layer]:
        if self._layers is None:
            found: dict[str, Layer] = {}

            def record(layer, layer_fn, p, *xs):
                found.setdefault(layer.name, layer)
                return layer_fn(p, *xs)

            jax.eval_shape(lambda *a: self.apply({}, *a, intercept=record), *inputs)
            self._layers = found
        return self._layers

    def apply(self, params: Any, *inputs: Any, intercept: Callable[..., Any] | None = None):
        intercept = intercept or default_intercept
        closed = jax.make_jaxpr(self.fn)(*inputs)
        out_tree = jax.tree_util.tree_structure(jax.eval_shape(self.fn, *inputs))
        counts: dict[str, int] = {}

        def replace(eqn, invals):
            kind = _activation_of(eqn)
            if kind is None or len(invals) != 1:
                return None
            k = counts.get(kind, 0)
            counts[kind] = k + 1
            layer = Layer(kind if k == 0 else f"{kind}:{k}", "activation", kind)
            f = _ACTIVATIONS[kind]
            return [intercept(layer, lambda p, v: f(v), {}, invals[0])]

        outs = _eval_rewrite(
            closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(inputs), replace
        )
        return jax.tree_util.tree_unflatten(out_tree, outs)


@_caching.lru(8)
def _function_model_cached(fn):
    return _FunctionModel(fn)


def _function_model(fn: Callable[..., Any]) -> _FunctionModel:
    try:
        return _function_model_cached(fn)
    except TypeError:
        return _FunctionModel(fn)


def _is_structured(model: Any) -> bool:
    return all(hasattr(model, a) for a in ("params", "layers", "apply"))


def _discover(model, x, args):
    discover = getattr(model, "discover", None)
    if discover is not None:
        leaves = (*x, *args) if isinstance(x, tuple) else (x, *args)
        discover(*_core.to_arrays(leaves))


def _with_layers(model: Any, x, args, wanted: Callable[[Layer], bool], method: str) -> Any:
    """``model`` if it has a ``wanted`` layer, else its function seen through its jaxpr."""
    if _is_structured(model):
        _discover(model, x, args)
        if any(wanted(layer) for layer in model.layers.values()):
            return model
        model = _plain_fn(model)  # activations are function calls: find them in the jaxpr
    if not callable(model):
        raise TypeError(
            f"{method}: model must be a structured model or a function, got {type(model).__name__}"
        )
    return _function_model(model)


def _relu_method(model, x, target, args, composite, method, torchray_options):
    saliency_layer, g2s, resize, resize_mode, smooth, channel_axis = torchray_options
    resize, resize_mode, smooth = _torchray.check_options(resize, resize_mode, smooth)
    reduce = _torchray.reducer(g2s, channel_axis)
    model = _with_layers(model, x, args, is_relu, method)
    if saliency_layer:
        g = _torchray.layer_gradient(model, x, target, args, saliency_layer, composite)
    else:
        g = _run_rules(model, x, composite, None, target, args, False, False, method)
    return _torchray.finish_tree(
        g,
        _core.to_arrays(x),
        reduce=reduce,
        channel_axis=channel_axis,
        resize=resize,
        resize_mode=resize_mode,
        smooth=smooth,
    )


@_core.contract
def guided_backprop(
    model: Any,
    x: PyTree,
    *,
    target: Any = None,
    args: tuple = (),
    saliency_layer: str | None = None,
    gradient_to_saliency: bool | Callable[[jax.Array], jax.Array] = False,
    resize: bool | str | Sequence[int] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
    channel_axis: int = 1,
) -> PyTree:
    """Guided backpropagation (Springenberg et al., 2015).

    The gradient with every ReLU's backward replaced by ``grad * (R_out > 0)``: Captum's
    ``GuidedBackprop`` and Zennit's ``GuidedBackprop`` composite. ``model`` is a structured
    model (its ReLU layers are rewritten) or a plain JAX function (its ``jax.nn.relu``
    calls are rewritten in the jaxpr).

    TorchRay's ``guided_backprop``: pass ``gradient_to_saliency=True`` (and its
    ``saliency_layer``, ``resize``, ``smooth``). TorchRay's guided ReLU keeps the gradient
    where the ReLU's input is exactly 0 (it zeroes ``x < 0``); Captum, Zennit and jaxattr
    zero it there (``x <= 0``), which only differs at exact zeros.

    Args:
        model: A structured model or a batch-first function ``fn(x) -> y``.
        x: Input array (N, ...) or a tuple of them.
        target: What to explain (see :func:`jaxattr.select_target`).
        args: Extra positional inputs after ``x``; not attributed.
        saliency_layer: Read the pseudo-gradient at this layer's output (TorchRay's
            ``saliency_layer``; ``None`` or ``""``: the input; needs a structured model).
        gradient_to_saliency: ``False`` (the raw pseudo-gradient), ``True`` (TorchRay's
            map: max of ``|g|`` over ``channel_axis``, kept with size 1) or a function of
            the pseudo-gradient array.
        resize: ``False``; ``True`` (or ``"input"``) resizes the map to x's spatial size;
            a tuple gives the size in TorchRay's (width, height) order.
        resize_mode: ``"bilinear"`` (TorchRay's default), ``"linear"``, ``"trilinear"``
            or ``"nearest"``.
        smooth: If > 0, blur with TorchRay's ``imsmooth`` of standard deviation
            ``smooth * max(spatial size)`` (replicate padding), after resizing.
        channel_axis: The channel axis of the map (1 for NCHW, -1 for NHWC).

    Returns:
        The attribution with x's structure, shapes and dtypes (see :func:`jaxattr.gradient`
        for how the TorchRay options change the shape).

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> w1 = jnp.array([[1.0, -1.0], [1.0, 1.0]]); w2 = jnp.array([[1.0], [-1.0]])
        >>> fn = lambda x: jax.nn.relu(x @ w1) @ w2
        >>> jaxattr.guided_backprop(fn, jnp.array([[1.0, 2.0]]), target=0)
        Array([[1., 1.]], dtype=float32)
    """
    return _relu_method(
        model,
        x,
        target,
        args,
        guided_backprop_composite(),
        "guided_backprop",
        (saliency_layer, gradient_to_saliency, resize, resize_mode, smooth, channel_axis),
    )


@_core.contract
def deconvolution(
    model: Any,
    x: PyTree,
    *,
    target: Any = None,
    args: tuple = (),
    saliency_layer: str | None = None,
    gradient_to_saliency: bool | Callable[[jax.Array], jax.Array] = False,
    resize: bool | str | Sequence[int] = False,
    resize_mode: str = "bilinear",
    smooth: float = 0.0,
    channel_axis: int = 1,
) -> PyTree:
    """Deconvolution (Zeiler & Fergus, 2014): ReLUs pass ``max(R_out, 0)`` back.

    Captum's ``Deconvolution`` and Zennit's ``DeconvNet`` composite. ``model`` is a
    structured model or a plain JAX function (its ``jax.nn.relu`` calls are rewritten).
    TorchRay's ``deconvnet``: pass ``gradient_to_saliency=True`` (and its
    ``saliency_layer``, ``resize``, ``smooth``).

    Args:
        model: A structured model or a batch-first function ``fn(x) -> y``.
        x: Input array (N, ...) or a tuple of them.
        target: What to explain (see :func:`jaxattr.select_target`).
        args: Extra positional inputs after ``x``; not attributed.
        saliency_layer: Read the pseudo-gradient at this layer's output (TorchRay's
            ``saliency_layer``; ``None`` or ``""``: the input; needs a structured model).
        gradient_to_saliency: ``False`` (the raw pseudo-gradient), ``True`` (TorchRay's
            map: max of ``|g|`` over ``channel_axis``, kept with size 1) or a function of
            the pseudo-gradient array.
        resize: ``False``; ``True`` (or ``"input"``) resizes the map to x's spatial size;
            a tuple gives the size in TorchRay's (width, height) order.
        resize_mode: ``"bilinear"`` (TorchRay's default), ``"linear"``, ``"trilinear"``
            or ``"nearest"``.
        smooth: If > 0, blur with TorchRay's ``imsmooth`` of standard deviation
            ``smooth * max(spatial size)`` (replicate padding), after resizing.
        channel_axis: The channel axis of the map (1 for NCHW, -1 for NHWC).

    Returns:
        The attribution with x's structure, shapes and dtypes (see :func:`jaxattr.gradient`
        for how the TorchRay options change the shape).

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> w1 = jnp.array([[1.0, -1.0], [1.0, 1.0]]); w2 = jnp.array([[1.0], [-1.0]])
        >>> fn = lambda x: jax.nn.relu(x @ w1) @ w2
        >>> jaxattr.deconvolution(fn, jnp.array([[1.0, 2.0]]), target=0)
        Array([[1., 1.]], dtype=float32)
    """
    return _relu_method(
        model,
        x,
        target,
        args,
        deconvnet(),
        "deconvolution",
        (saliency_layer, gradient_to_saliency, resize, resize_mode, smooth, channel_axis),
    )


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


def _layer_outputs(model, params, inputs, names):
    """Abstract shapes of the named layers' outputs."""
    shapes: dict[str, Any] = {}

    def record(layer, layer_fn, p, *xs):
        out = layer_fn(p, *xs)
        if layer.name in names and layer.name not in shapes:
            shapes[layer.name] = jax.ShapeDtypeStruct(out.shape, out.dtype)
        return out

    jax.eval_shape(lambda p, *a: model.apply(p, *a, intercept=record), params, *inputs)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ValueError(
            f"layer {missing[0]!r} is not a layer of the model; known layers: "
            f"{list(model.layers)[:20]}..."
        )
    return shapes


def _tapped_apply(model, composite, params, inputs, taps, subtract=None):
    """Run with composite rules, adding ``taps[name]`` to named layer outputs.

    ``subtract[name]``: a cotangent removed from the gradient flowing into that layer's
    output (TorchRay's contrast).
    """
    rules_intercept = composite.intercept(model.layers)

    def intercept(layer, layer_fn, p, *xs):
        out = rules_intercept(layer, layer_fn, p, *xs)
        if subtract is not None and layer.name in subtract:
            out = _subtract_grad(out, subtract[layer.name])
        if layer.name in taps:
            out = out + taps[layer.name]
        return out

    return model.apply(params, *inputs, intercept=intercept)


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
    target,
    layer,
    contrast_layer,
    classifier_layer,
    sum_channels,
    channel_axis,
):
    all_in = (*x, *args) if inputs.is_tuple else (x, *args)
    names = [n for n in (layer, contrast_layer) if n is not None]
    shapes = _layer_outputs(model, params, all_in, names) if names else {}

    def grad_at(comp, point_name, subtract=None):
        """Pseudo-gradient at the input (point_name None) or at a layer output."""

        def f(x_, tap):
            a = (*x_, *args) if inputs.is_tuple else (x_, *args)
            taps = {point_name: tap} if point_name is not None else {}
            y = _tapped_apply(model, comp, params, a, taps, subtract)
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


def _prep_structured(model, x, target, args, method):
    _check_structured(model, method)
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _core.as_inputs(x)
    t = _core.prepare_target(target, _plain_fn(model), inputs, x, args)
    return x, args, inputs, t


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
    layer = _torchray.saliency_layer_alias(layer, saliency_layer)
    resize, resize_mode, smooth = _torchray.check_options(resize, resize_mode, smooth)
    x, args, inputs, t = _prep_structured(model, x, target, args, "excitation_backprop")
    sal = _ebp_core(
        model=model,
        inputs=inputs,
        params=model.params,
        x=x,
        args=args,
        target=t,
        layer=layer,
        contrast_layer=None,
        classifier_layer=None,
        sum_channels=sum_channels,
        channel_axis=channel_axis,
    )
    return _torchray.finish_tree(
        sal,
        x,
        reduce=None,
        channel_axis=channel_axis,
        resize=resize,
        resize_mode=resize_mode,
        smooth=smooth,
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
    layer = _torchray.saliency_layer_alias(layer, saliency_layer)
    resize, resize_mode, smooth = _torchray.check_options(resize, resize_mode, smooth)
    x, args, inputs, t = _prep_structured(model, x, target, args, "contrastive_excitation_backprop")
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
        inputs=inputs,
        params=model.params,
        x=x,
        args=args,
        target=t,
        layer=layer,
        contrast_layer=contrast_layer,
        classifier_layer=classifier_layer,
        sum_channels=sum_channels,
        channel_axis=channel_axis,
    )
    return _torchray.finish_tree(
        sal,
        x,
        reduce=None,
        channel_axis=channel_axis,
        resize=resize,
        resize_mode=resize_mode,
        smooth=smooth,
    )


# --------------------------------------------------------------------------------------
# DeepLift (rescale rule), as Captum
# --------------------------------------------------------------------------------------

_DL_ELEMENTWISE = {"relu", "elu", "leakyrelu", "leaky_relu", "sigmoid", "tanh", "softplus"}


def _op_base(layer: Layer) -> str:
    op = layer.op.lower()
    if op.startswith("aten."):
        op = op.split(".")[1]
    return op.rsplit(".", 1)[-1].rstrip("_")


def _deeplift_kind(layer: Layer) -> str | None:
    base = _op_base(layer)
    if layer.kind == "activation" and base in _DL_ELEMENTWISE:
        return "elementwise"
    if layer.kind == "max_pool" and "adaptive" not in base:
        return "max_pool"
    if layer.kind == "softmax" and "log" not in base and "min" not in base:
        return "softmax"
    return None


def _has_deeplift_rule(layer: Layer) -> bool:
    return _deeplift_kind(layer) is not None


def _halves(a):
    n = a.shape[0] // 2
    return a[:n], a[n:]


def _safe_div(a, b, small):
    return a / jnp.where(small, jnp.ones_like(b), b)


def _deeplift_bwd_factory(kind, eps):
    def backward(layer_fn, params, inputs, outputs, g):
        (z,) = inputs[:1]
        _, vjp = jax.vjp(lambda a: layer_fn(params, a, *inputs[1:]), z)
        (local,) = vjp(g)
        x1, x0 = _halves(z)
        dx = jnp.concatenate([x1 - x0] * 2)
        small = jnp.abs(dx) < eps
        if kind == "max_pool":
            y1, y0 = _halves(outputs)
            m = jnp.maximum(y1, y0)
            dout = jnp.concatenate([m - y0, y1 - m])
            (unpooled,) = vjp(g * dout)
            u1, u0 = _halves(unpooled)
            num = jnp.concatenate([u1 + u0] * 2)
            new = jnp.where(small, local, _safe_div(num, dx, small))
        else:
            y1, y0 = _halves(outputs)
            dy = jnp.concatenate([y1 - y0] * 2)
            new = jnp.where(small, local, _safe_div(g * dy, dx, small))
            if kind == "softmax":
                # Captum subtracts the mean over the whole tensor; here over each
                # (input, baseline) pair of rows, which is Captum's for N = 1
                n = new.shape[0] // 2
                pair = new[:n] + new[n:]
                mean = jnp.sum(pair.reshape(n, -1), axis=1) / (2 * pair[0].size)
                mean = jnp.concatenate([mean] * 2).reshape((-1,) + (1,) * (new.ndim - 1))
                new = new - mean
        return (new, *[jnp.zeros_like(a) for a in inputs[1:]])

    return backward


@_caching.lru(16)
def _deeplift_rules(eps: float):
    return {
        k: Rule(f"deeplift_{k}", backward=_deeplift_bwd_factory(k, eps))
        for k in ("elementwise", "max_pool", "softmax")
    }


def _deeplift_intercept(eps, n2):
    rules = _deeplift_rules(eps)

    def intercept(layer, layer_fn, params, *xs):
        kind = _deeplift_kind(layer)
        if kind is None or not xs or getattr(xs[0], "ndim", 0) < 1 or xs[0].shape[0] != n2:
            return layer_fn(params, *xs)  # not an activation of the (input, baseline) batch
        return _rules.apply_rule(rules[kind], layer, layer_fn, params, *xs)

    return intercept


def _call_custom(func, multipliers, x, baselines):
    n = len(inspect.signature(func).parameters)
    if n == 1:
        return func(multipliers)
    if n == 2:
        return func(multipliers, x)
    if n == 3:
        return func(multipliers, x, baselines)
    raise ValueError(
        f"custom_attribution_func must take 1 to 3 arguments (multipliers, inputs, "
        f"baselines), got {n}"
    )


@_core.cached_jit(("model", "inputs", "eps", "multiply_by_inputs", "custom", "return_delta"))
def _deep_lift_core(
    *,
    model,
    inputs,
    params,
    x,
    baselines,
    args,
    target,
    eps,
    multiply_by_inputs,
    custom,
    return_delta,
):
    baselines = _core.expand_baselines(baselines, x)
    intercept = _deeplift_intercept(eps, 2 * inputs.n)
    args2 = tuple(jnp.concatenate([a, a]) if hasattr(a, "shape") and a.ndim else a for a in args)

    def score(x_):
        both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), x_, baselines)
        call_in = (*both, *args2) if inputs.is_tuple else (both, *args2)
        y = model.apply(params, *call_in, intercept=intercept)
        y1, y0 = _halves(y)
        return jnp.sum(_core.target_score(y1, target)) + jnp.sum(_core.target_score(y0, target))

    grads = jax.grad(score)(x)
    if custom is not None:
        attr = _call_custom(custom, grads, x, baselines)
    elif multiply_by_inputs:
        attr = jax.tree_util.tree_map(lambda g, a, b: g * (a - b), grads, x, baselines)
    else:
        attr = grads
    attr = _core.cast_like(attr, x)
    if not return_delta:
        return attr
    from jaxattr._gradient import completeness_delta

    fn = lambda *a: model.apply(params, *a, intercept=default_intercept)  # noqa: E731
    return attr, completeness_delta(fn, inputs, x, baselines, args, target, attr)


@_core.contract
def deep_lift(
    model: Any,
    x: PyTree,
    baselines: Any = None,
    *,
    target: Any = None,
    eps: float = 1e-10,
    multiply_by_inputs: bool = True,
    custom_attribution_func: Callable[..., Any] | None = None,
    return_delta: bool = False,
    args: tuple = (),
) -> PyTree | tuple[PyTree, jax.Array]:
    """DeepLIFT with the rescale rule (Shrikumar et al., 2017), as Captum's ``DeepLift``.

    Input and baseline run side by side (one batch of 2N). On ReLU, ELU, LeakyReLU,
    sigmoid, tanh and softplus layers the local gradient is replaced by the multiplier
    ``(f(x) - f(b)) / (x - b)`` (the gradient where ``|x - b| < eps``); max pools and
    softmax get Captum's rules. Other layers keep their gradient. ``model`` is a
    structured model whose nonlinearities are layers (bridged torch models), or a plain
    JAX function (or a structured model without such layers, e.g. Flax): then its
    ``jax.nn.relu`` calls and ``tanh``/``sigmoid`` primitives are found in the jaxpr and
    rewritten (ELU, softplus, leaky ReLU, max pool and softmax written as functions keep
    their gradient).

    Softmax: Captum subtracts the mean multiplier over the whole 2N batch; here the mean is
    over each example's pair of rows (identical to Captum for N = 1, and it keeps examples
    independent).

    Args:
        model: A structured model or a batch-first function ``fn(x) -> y``.
        x: Input array (N, ...) or a tuple of them.
        baselines: Reference input(s) broadcastable to x (default zeros).
        target: What to explain (see :func:`jaxattr.select_target`).
        eps: Below this ``|x - b|`` the plain gradient is used.
        multiply_by_inputs: Multiply the multipliers by ``x - b`` (global attribution);
            ``False`` returns the multipliers.
        custom_attribution_func: ``f(multipliers[, inputs[, baselines]])`` returning the
            attribution (x's structure), replacing the multiplication.
        return_delta: Also return ``sum(attr) - (f(x) - f(b))`` per example, shape (N,).
        args: Extra positional model inputs after ``x`` (repeated for the baseline half);
            not attributed.

    Returns:
        The attribution with x's structure, shapes and dtypes, or ``(attribution, delta)``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr.structure import Layer, default_intercept
        >>> class Relu:
        ...     params = {}
        ...     layers = {"relu": Layer("relu", "activation", "ReLU")}
        ...     def apply(self, p, x, intercept=None):
        ...         y = intercept(self.layers["relu"], lambda q, v: jax.nn.relu(v), {}, x - 1)
        ...         return y.sum(1)
        >>> jaxattr.deep_lift(Relu(), jnp.array([[3.0, 0.5]]))
        Array([[2., 0.]], dtype=float32)
    """
    model = _with_layers(model, x, args, _has_deeplift_rule, "deep_lift")
    x, args, inputs, t = _prep_structured(model, x, target, args, "deep_lift")
    b = _core.broadcast_baselines(baselines, x, inputs)
    if custom_attribution_func is not None and not callable(custom_attribution_func):
        raise TypeError(
            "custom_attribution_func must be callable, got "
            f"{type(custom_attribution_func).__name__}"
        )
    return _deep_lift_core(
        model=model,
        inputs=inputs,
        params=model.params,
        x=x,
        baselines=b,
        args=args,
        target=t,
        eps=float(eps),
        multiply_by_inputs=multiply_by_inputs,
        custom=custom_attribution_func,
        return_delta=return_delta,
    )


@_core.contract
def deep_lift_shap(
    model: Any,
    x: PyTree,
    baselines: Any,
    *,
    target: Any = None,
    eps: float = 1e-10,
    multiply_by_inputs: bool = True,
    custom_attribution_func: Callable[..., Any] | None = None,
    return_delta: bool = False,
    args: tuple = (),
) -> PyTree | tuple[PyTree, jax.Array]:
    """DeepLIFT SHAP: DeepLIFT averaged over a baseline distribution, as Captum's.

    Every example is paired with every baseline (M of them); the attributions are averaged
    over the baselines.

    Args:
        model: A structured model or a batch-first function (see :func:`deep_lift`).
        x: Input array (N, ...) or a tuple of them.
        baselines: The distribution: per input an array (M, ...) with M > 1, or Captum's
            callable form (``baselines()`` or ``baselines(x)`` returns it).
        target: What to explain (see :func:`jaxattr.select_target`).
        eps: See :func:`deep_lift`.
        multiply_by_inputs: See :func:`deep_lift`.
        custom_attribution_func: See :func:`deep_lift`.
        return_delta: Also return the delta of every (example, baseline) pair, shape
            (N, M) (``delta.reshape(-1)`` is Captum's order).
        args: Extra positional model inputs after ``x``; not attributed.

    Returns:
        The attribution with x's structure, or ``(attribution, delta)``.

    Raises:
        ValueError: Fewer than two baselines.

    Example:
        >>> import jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr.structure import Layer, default_intercept
        >>> class Relu:
        ...     params = {}
        ...     layers = {"relu": Layer("relu", "activation", "ReLU")}
        ...     def apply(self, p, x, intercept=None):
        ...         return intercept(self.layers["relu"], lambda q, v: jax.nn.relu(v), {},
        ...                          x).sum(1)
        >>> jaxattr.deep_lift_shap(Relu(), jnp.array([[2.0]]), baselines=jnp.array([[0.0], [1.0]]))
        Array([[1.5]], dtype=float32)
    """
    from jaxattr._noise import resolve_baselines

    model = _with_layers(model, x, args, _has_deeplift_rule, "deep_lift_shap")
    x, args, inputs, t = _prep_structured(model, x, target, args, "deep_lift_shap")
    dist = _core.baseline_distribution(resolve_baselines(baselines, x), x)
    m = jax.tree_util.tree_leaves(dist)[0].shape[0]
    if m < 2:
        raise ValueError(
            f"baselines must hold more than one baseline (M > 1) for deep_lift_shap, got "
            f"M={m}; use deep_lift for a single baseline"
        )
    n = inputs.n
    x_rep = jax.tree_util.tree_map(lambda a: jnp.repeat(a, m, axis=0), x)
    b_rep = jax.tree_util.tree_map(lambda b: jnp.tile(b, (n,) + (1,) * (b.ndim - 1)), dist)
    args_rep = tuple(
        jnp.repeat(a, m, axis=0) if hasattr(a, "shape") and a.ndim else a for a in args
    )
    t_rep = _repeat_target(t, m)
    inputs_rep = _core.Inputs(is_tuple=inputs.is_tuple, n=n * m)
    out = _deep_lift_core(
        model=model,
        inputs=inputs_rep,
        params=model.params,
        x=x_rep,
        baselines=b_rep,
        args=args_rep,
        target=t_rep,
        eps=float(eps),
        multiply_by_inputs=multiply_by_inputs,
        custom=custom_attribution_func,
        return_delta=return_delta,
    )
    attr, delta = out if return_delta else (out, None)
    attr = jax.tree_util.tree_map(
        lambda a: jnp.mean(a.reshape(n, m, *a.shape[1:]), axis=1).astype(a.dtype), attr
    )
    if not return_delta:
        return attr
    return attr, delta.reshape(n, m)


def _repeat_target(t: _core.Target, m: int) -> _core.Target:
    if t.kind == "index":
        return _core.Target("index", None, jnp.repeat(t.array, m, axis=0))
    if t.kind == "cotangent" and t.array.ndim >= 1 and t.array.shape[0] > 1:
        return _core.Target("cotangent", None, jnp.repeat(t.array, m, axis=0))
    return t
