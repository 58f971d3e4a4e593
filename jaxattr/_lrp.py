"""Rule-based backpropagation: attach a composite, LRP, guided backprop and deconvnet.

Every method here rewrites a *copy* of a structured model (a bridged torch model, a Flax
model through :mod:`jaxattr.flax`, or any object with ``params``, ``layers`` and
``apply``; see :mod:`jaxattr.structure`): selected layers run under a ``jax.custom_vjp``
rule, and the attribution is the gradient of the rewritten function. Nothing is hooked
or mutated. Excitation backprop (:mod:`jaxattr._excitation`) and DeepLift
(:mod:`jaxattr._deeplift`) are built on the same rewriting.

Relevance conventions. Zennit starts the backward pass from the output cotangent (the
``target``: an int is a one-hot row of ones), so an int target's relevance sums to about
1. Captum's ``LRP.attribute`` computes that "normalized relevance" and then multiplies it
by the explained output, so the relevance sums to about ``f(x)[target]``; pass
``captum_normalize=True`` to get Captum's convention.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr import _caching, _core, _torchray
from jaxattr._canonizers import canonize
from jaxattr._composites import (
    Composite,
    deconvnet,
    guided_backprop_composite,
    is_relu,
)
from jaxattr._core import PyTree
from jaxattr.structure import Layer, default_intercept, trace_layers

__all__ = [
    "attach",
    "deconvolution",
    "guided_backprop",
    "lrp",
]

Model = Any


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def _canon_key(canonizers):
    if canonizers is None:
        return None
    if callable(canonizers):
        return (canonizers,)
    return tuple(canonizers)


@_caching.lru(8)
def _canonized_for(part: _caching.Partition, shapes: tuple, canonizers: tuple) -> Any:
    """The canonizers applied to the model's structure (weights as shapes only), so that
    neither this cache nor the canonizers' closures (static parts of compiled programs)
    hold a model's weights, and models of one structure share the programs."""
    abstract = part.combine([jax.ShapeDtypeStruct(s, d) for s, d in shapes])
    return canonize(abstract, canonizers)


def _canonized(model: Any, canonizers: tuple | None) -> Any:
    """The canonized model: the structure's canonized template with the model's weights."""
    if not canonizers:
        return model
    part, arrays = _caching.partition(model)
    shapes = tuple((tuple(a.shape), jnp.dtype(a.dtype)) for a in arrays)
    try:
        template = _canonized_for(part, shapes, canonizers)
    except TypeError:  # an unhashable canonizer: no caching
        return canonize(model, canonizers)
    leaves, treedef = jax.tree_util.tree_flatten(template)
    it = iter(arrays)
    leaves = [next(it) if isinstance(v, jax.ShapeDtypeStruct) else v for v in leaves]
    return jax.tree_util.tree_unflatten(treedef, leaves)


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

    def apply(self, params: Any, *inputs: Any, **kwargs: Any) -> Any:
        """Run the rewritten model with ``params`` (``kwargs``: the model's keyword inputs)."""
        if self._intercept is None:
            discover = getattr(self.model, "discover", None)
            if discover is not None:  # models that find their layers on the first call
                discover(*inputs)
            self._intercept = self.composite.intercept(self.model.layers)
        return self.model.apply(params, *inputs, intercept=self._intercept, **kwargs)

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
        >>> from jaxattr.structure import Layer, default_intercept, trace_layers
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
    _core.check_structured(model, "attach")
    if not isinstance(composite, Composite):
        raise TypeError(f"composite must be a jaxattr.Composite, got {type(composite).__name__}")
    cans = _canon_key(canonizers) or ()
    # the composite's own canonizers first (Zennit's composite(canonizers=...)), then these
    cans = (*composite.canonizers, *(c for c in cans if c not in composite.canonizers))
    return Attached(_canonized(model, cans or None), composite)


# --------------------------------------------------------------------------------------
# LRP and friends
# --------------------------------------------------------------------------------------


@_core.cached_jit(("attached", "inputs", "captum_normalize", "return_delta"))
def _lrp_core(*, attached, inputs, params, x, args, kwargs, target, captum_normalize, return_delta):
    fn = lambda *a: attached.apply(params, *a, **kwargs)  # noqa: E731

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
    return grad, total - _core.example_sums(grad)


def _run_rules(
    model,
    x,
    composite,
    canonizers,
    target,
    args,
    captum_normalize,
    return_delta,
    method,
    kwargs=None,
    params=None,
):
    s = _core.prepare_structured(
        model, x, target=target, args=args, kwargs=kwargs, params=params, method=method
    )
    attached = attach(model, composite, canonizers=canonizers)
    return _lrp_core(
        attached=attached,
        **s.core_args(),
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
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
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
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).

    Returns:
        The relevance with x's structure, shapes and dtypes, or ``(relevance, delta)``.

    Raises:
        TypeError: ``model`` is not a structured model.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from jaxattr.structure import Layer, default_intercept, trace_layers
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
        model,
        x,
        composite,
        canonizers,
        target,
        args,
        captum_normalize,
        return_delta,
        "lrp",
        kwargs,
        params,
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

    wraps_function = True  # no kwargs=, params= (see _core.prepare_structured)

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.params: dict = {}
        self._layers: dict[str, Layer] | None = None

    @property
    def layers(self) -> dict[str, Layer]:
        return self._layers or {}

    def discover(self, *inputs: Any) -> dict[str, Layer]:
        if self._layers is None:
            self._layers = trace_layers(self.apply, {}, *inputs).layers()
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
        model = _core.ModelFunction(model)  # activations are function calls: find them in the jaxpr
    if not callable(model):
        raise TypeError(
            f"{method}: model must be a structured model or a function, got {type(model).__name__}"
        )
    return _function_model(model)


def _relu_method(model, x, target, args, composite, method, torchray_options, kwargs, params):
    saliency_layer, g2s, resize, resize_mode, smooth, channel_axis = torchray_options
    resize, resize_mode, smooth = _torchray.check_options(resize, resize_mode, smooth)
    reduce = _torchray.reducer(g2s, channel_axis)
    model = _with_layers(model, x, args, is_relu, method)
    if saliency_layer:
        g = _torchray.layer_gradient(
            model,
            x,
            target,
            args,
            saliency_layer,
            composite,
            method=method,
            kwargs=kwargs,
            params=params,
        )
    else:
        g = _run_rules(
            model, x, composite, None, target, args, False, False, method, kwargs, params
        )
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
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
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
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).
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
        kwargs,
        params,
    )


@_core.contract
def deconvolution(
    model: Any,
    x: PyTree,
    *,
    target: Any = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
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
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).
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
        kwargs,
        params,
    )
