"""DeepLift (Captum's rescale rule) and DeepLiftShap over a rule-rewritten model."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr import _caching, _core, _rules
from jaxattr._core import PyTree
from jaxattr._lrp import _with_layers
from jaxattr._rules import Rule
from jaxattr.structure import Layer, default_intercept

__all__ = [
    "deep_lift",
    "deep_lift_shap",
]

Model = Any


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


def _doubled(x, baselines, args, kwargs=None):
    """DeepLift's 2N batch: the inputs over the baselines; args and keyword inputs twice."""
    both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), x, baselines)
    twice = lambda a: jnp.concatenate([a, a]) if hasattr(a, "ndim") and a.ndim else a  # noqa: E731
    return both, tuple(twice(a) for a in args), {k: twice(v) for k, v in (kwargs or {}).items()}


def _pair_score(y, target):
    """The score DeepLift differentiates: the target's output on both halves of the batch."""
    y1, y0 = _halves(y)
    return jnp.sum(_core.target_score(y1, target)) + jnp.sum(_core.target_score(y0, target))


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
    kwargs,
    target,
    eps,
    multiply_by_inputs,
    custom,
    return_delta,
):
    baselines = _core.expand_baselines(baselines, x)
    intercept = _deeplift_intercept(eps, 2 * inputs.n)

    def score(x_):
        both, args2, kw2 = _doubled(x_, baselines, args, kwargs)
        call_in = (*both, *args2) if inputs.is_tuple else (both, *args2)
        return _pair_score(model.apply(params, *call_in, intercept=intercept, **kw2), target)

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

    fn = lambda *a: model.apply(params, *a, intercept=default_intercept, **kwargs)  # noqa: E731
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
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
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
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).

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
    s = _core.prepare_structured(
        model, x, target=target, args=args, kwargs=kwargs, params=params, method="deep_lift"
    )
    b = _core.broadcast_baselines(baselines, s.x, s.inputs)
    if custom_attribution_func is not None and not callable(custom_attribution_func):
        raise TypeError(
            "custom_attribution_func must be callable, got "
            f"{type(custom_attribution_func).__name__}"
        )
    return _deep_lift_core(
        model=model,
        baselines=b,
        **s.core_args(),
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
    kwargs: Mapping[str, Any] | None = None,
    params: Any = None,
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
        kwargs: Keyword inputs of the model (e.g. ``attention_mask``), batch first.
        params: Parameters to run with instead of the model's own (same structure).

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
    s = _core.prepare_structured(
        model, x, target=target, args=args, kwargs=kwargs, params=params, method="deep_lift_shap"
    )
    x, args, kwargs, inputs, params, t = s.x, s.args, s.kwargs, s.inputs, s.params, s.target
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
    rep = lambda a: jnp.repeat(a, m, axis=0) if hasattr(a, "ndim") and a.ndim else a  # noqa: E731
    args_rep = tuple(rep(a) for a in args)
    kwargs_rep = {k: rep(v) for k, v in kwargs.items()}
    t_rep = _repeat_target(t, m)
    inputs_rep = _core.Inputs(is_tuple=inputs.is_tuple, n=n * m)
    out = _deep_lift_core(
        model=model,
        inputs=inputs_rep,
        params=params,
        x=x_rep,
        baselines=b_rep,
        args=args_rep,
        kwargs=kwargs_rep,
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
