"""Layer methods over rule-rewritten models: layer LRP, layer DeepLift and DeepLiftShap."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr import _caching, _core, _taps
from jaxattr._cam import _check_custom
from jaxattr._core import PyTree
from jaxattr._layer import Setup, _completeness
from jaxattr._noise import resolve_baselines

__all__ = [
    "layer_deep_lift",
    "layer_deep_lift_shap",
    "layer_lrp",
]

Model = Any


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
    params: Any = None,
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
        params: Parameters to run with instead of the model's own (same structure).

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
    attached = attach(_core.check_structured(model, "layer_lrp"), composite, canonizers=canon)
    x_arr = _core.to_arrays(x)
    discover = getattr(attached.model, "discover", None)
    if discover is not None:
        discover(*(x_arr if isinstance(x_arr, tuple) else (x_arr,)), *args)
    s = Setup(
        "layer_lrp",
        attached.model,
        x_arr,
        layer,
        target=target,
        args=args,
        kwargs=kwargs,
        params=params,
        to_input=attribute_to_layer_input,
        tuple_ok=True,
        need_float=True,
    )
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
    from jaxattr._deeplift import _call_custom, _deeplift_intercept, _doubled, _halves, _pair_score

    baselines = _core.expand_baselines(baselines, x)
    n2 = 2 * inputs.n
    both, args2, kw2 = _doubled(x, baselines, args, kwargs)
    layout = _core.Inputs(inputs.is_tuple, n2)
    intercept = _deeplift_intercept(eps, n2)
    shapes = _taps.tap_shapes(model, params, layout, both, args2, kw2, taps)
    zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}

    def score(delta):
        y, acts = _taps.run_tapped(
            model, params, layout, both, args2, kw2, taps, perturb=delta, intercept=intercept
        )
        return _pair_score(y, target), acts

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
    params: Any = None,
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
        params: Parameters to run with instead of the model's own (same structure).

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
    s = Setup(
        "layer_deep_lift",
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
    params: Any = None,
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
        params: Parameters to run with instead of the model's own (same structure).

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
    from jaxattr._deeplift import _repeat_target

    s = Setup(
        "layer_deep_lift_shap",
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
