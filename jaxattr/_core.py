"""The method contract, implemented once: inputs, targets, baselines, chunking, caching.

Every attribution method in jaxattr goes through these helpers, so that all of them read
their inputs, targets and baselines the same way and fail with the same clear errors.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching
from jaxattr.structure import default_intercept

Array = jax.Array
PyTree = Any

__all__ = [
    "Inputs",
    "Target",
    "as_inputs",
    "batched_chunks",
    "broadcast_baselines",
    "cached_jit",
    "is_concrete",
    "prepare_target",
    "target_score",
]


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inputs:
    """How ``x`` is laid out and passed to ``fn``.

    ``x`` is a single array, a tuple of arrays (unpacked as ``fn(*x, *args)``, as in
    Captum) or any other pytree (passed whole, ``fn(x, *args)``). Every leaf leads with
    the batch size ``n``.
    """

    is_tuple: bool
    n: int

    def call(self, fn: Callable[..., Any], x: PyTree, args: tuple) -> Any:
        """Evaluate ``fn`` on ``x`` (and the non-attributed ``args``)."""
        if self.is_tuple:
            return fn(*x, *args)
        return fn(x, *args)


def _leaf_paths(x: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(x)
    return [("x" + jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def as_inputs(x: PyTree, *, need_float: bool = True, name: str = "x") -> Inputs:
    """Validate ``x`` and describe its layout.

    Args:
        x: An array, a tuple of arrays or a pytree of arrays, each leading with N.
        need_float: Whether the method differentiates with respect to ``x`` (then every
            leaf must be floating point).
        name: The argument's name, for error messages.

    Returns:
        The :class:`Inputs` description.

    Raises:
        TypeError: A leaf is not an array, or not floating point where gradients are needed.
        ValueError: ``x`` is empty, a leaf is a scalar, or leaves disagree on N.
    """
    leaves = _leaf_paths(x)
    if not leaves:
        raise ValueError(f"{name} must hold at least one array, got {x!r}")
    n = None
    for path, leaf in leaves:
        path = path.replace("x", name, 1)
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"{path} must be an array, got {type(leaf).__name__}")
        if leaf.ndim == 0:
            raise ValueError(
                f"{path} must lead with the batch dimension N, got a scalar (shape ()); "
                f"use x[None] for a single example"
            )
        if need_float and not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"{path} must be floating point to take gradients with respect to it, got "
                f"dtype {leaf.dtype}; for token ids, attribute the embedding layer instead "
                f"(layer methods)"
            )
        if n is None:
            n = leaf.shape[0]
        elif leaf.shape[0] != n:
            raise ValueError(
                f"every leaf of {name} must lead with the same batch size N; {path} has "
                f"shape {tuple(leaf.shape)}, expected leading dimension {n}"
            )
    check_finite(x, name)
    return Inputs(is_tuple=isinstance(x, tuple), n=int(n))


class NonFiniteInputError(ValueError):
    """An input or baseline holds NaN or Inf values (see ``check_finite``)."""


_CHECK_FINITE = contextvars.ContextVar("jaxattr_check_finite", default=True)


@_caching.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves]))


def check_finite(tree: PyTree, name: str = "x") -> None:
    """Raise :class:`NonFiniteInputError` naming the first leaf of ``tree`` with NaN/Inf.

    Skipped for traced values (inside ``jit``/``vmap`` there is nothing to look at) and
    while a method runs with ``check_finite=False``; the culprit is located on the host
    only when there is one.
    """
    if not _CHECK_FINITE.get():
        return
    leaves = [
        (path, leaf)
        for path, leaf in _leaf_paths(tree)
        if not isinstance(leaf, jax.core.Tracer)
        and hasattr(leaf, "dtype")
        and jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    if not leaves:
        return
    host = [leaf for _, leaf in leaves if isinstance(leaf, (np.ndarray, np.generic))]
    device = [leaf for _, leaf in leaves if not isinstance(leaf, (np.ndarray, np.generic))]
    # NumPy leaves are checked on the host; device leaves in one compiled reduction (one
    # dispatch and one transfer of a bool, whatever the number of leaves)
    ok = all(bool(np.isfinite(leaf).all()) for leaf in host)
    if ok and device:
        flag = _all_finite(device)
        if isinstance(flag, jax.core.Tracer):  # called inside a trace: nothing to look at
            return
        ok = bool(flag)
    if ok:
        return
    for path, leaf in leaves:
        ok = np.isfinite(np.asarray(leaf))
        if ok.all():
            continue
        first = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise NonFiniteInputError(
            f"{path.replace('x', name, 1)} holds {int((~ok).sum())} NaN/Inf value(s), the "
            f"first at index {first}; an attribution of a non-finite input is meaningless. "
            f"Clean the input, or pass check_finite=False to attribute it anyway"
        )


#: The parameters a public method takes positionally: what is explained (``fn``/``model``
#: and its ``params``, ``x``, a ``layer``, a neuron), and a metric's data. Every parameter
#: after the first one not named here is keyword-only: ``integrated_gradients(fn, x, 0)``
#: must not read 0 as the baselines when the caller meant the target.
POSITIONAL = frozenset(
    {
        "method",
        "fn",
        "apply_fn",
        "model",
        "params",
        "x",
        "layer",
        "neuron_selector",
        "neuron_selectors",
        "perturb_func",
        "attributions",
        "targets",
    }
)


def _positional_count(sig: inspect.Signature) -> int:
    k = 0
    for p in sig.parameters.values():
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.name not in POSITIONAL:
            break
        k += 1
    return k


def _too_many_positional(name: str, sig: inspect.Signature, k: int, args: tuple) -> TypeError:
    names = [n for n, p in sig.parameters.items() if p.kind is not p.VAR_KEYWORD]
    keywords = names[k:]
    meant = (["target"] if "target" in keywords else []) + [n for n in keywords if n != "target"]
    shown = ", ".join(
        f"<array {tuple(a.shape)}>" if hasattr(a, "shape") else repr(a) for a in args[k:]
    )
    return TypeError(
        f"{name}() takes {k} positional argument(s) ({', '.join(names[:k])}) but {len(args)} "
        f"were given; the options after them are keyword-only: pass {shown} by name, e.g. "
        f"{', '.join(f'{n}=...' for n in meant[:3])}"
    )


def contract(method: Callable[..., Any]) -> Callable[..., Any]:
    """Give a public method the contract's keyword options (today: ``check_finite``).

    ``check_finite=True`` (the default) rejects NaN/Inf in ``x`` and ``baselines`` with a
    :class:`NonFiniteInputError` before anything runs; ``False`` attributes them anyway.
    Parameters after the explained model, input, layer and neuron (see
    :data:`POSITIONAL`) become keyword-only; a surplus positional argument is a
    ``TypeError`` that says to pass ``target=...`` (or the option meant) by name.
    """
    sig = inspect.signature(method)
    if "check_finite" in sig.parameters:
        return method
    k = _positional_count(sig)

    @functools.wraps(method)
    def wrapper(*args: Any, check_finite: bool = True, **kwargs: Any) -> Any:
        if len(args) > k:
            raise _too_many_positional(method.__name__, sig, k, args)
        tokens = [_SCOPE.set(_CallScope())]
        if not check_finite:
            tokens.append(_CHECK_FINITE.set(False))
        try:
            return method(*args, **kwargs)
        finally:
            for var, token in zip((_SCOPE, _CHECK_FINITE), tokens, strict=False):
                var.reset(token)

    params = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        if i >= k and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        else p
        for i, p in enumerate(sig.parameters.values())
    ]
    at = len(params) - (params and params[-1].kind is inspect.Parameter.VAR_KEYWORD)
    params.insert(
        at,
        inspect.Parameter(
            "check_finite", inspect.Parameter.KEYWORD_ONLY, default=True, annotation="bool"
        ),
    )
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    doc = method.__doc__ or ""
    line = (
        "        check_finite: Reject NaN/Inf in ``x`` and ``baselines`` with a named error\n"
        "            before anything runs (default); ``False`` attributes them anyway.\n"
    )
    if "\n\n    Returns:" in doc:
        doc = doc.replace("\n\n    Returns:", "\n" + line + "\n    Returns:", 1)
    wrapper.__doc__ = doc
    return wrapper


def to_arrays(x: PyTree) -> PyTree:
    """Convert numpy arrays (and other array-likes) in ``x`` to jax arrays."""
    return jax.tree_util.tree_map(lambda a: a if isinstance(a, jax.Array) else jnp.asarray(a), x)


def is_concrete(*values: Any) -> bool:
    """True when none of ``values`` is a tracer (so their contents can be checked)."""
    leaves = jax.tree_util.tree_leaves(values)
    return not any(isinstance(v, jax.core.Tracer) for v in leaves)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Validate an integer option such as ``n_steps``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Validate a string option such as ``method``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_key(key: Any, method: str) -> Array:
    """Validate the explicit PRNG ``key`` of a random method."""
    if key is None:
        raise ValueError(
            f"{method} is random: pass key=jax.random.key(seed) (the result is fixed for a "
            f"fixed key)"
        )
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax.random key, got {type(key).__name__}")
    return key


# --------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """A normalised ``target``: a static ``kind`` plus an optional array.

    kinds: ``none`` (one output per example), ``int`` / ``tuple`` (the same output index
    for every example), ``index`` (one index per example, ``array`` of shape (N,) or
    (N, k)), ``cotangent`` (``array`` broadcast against the output) and ``callable``
    (``fn(y)`` returns the cotangent, Zennit's ``attr_output``).
    """

    kind: str
    static: Any = None
    array: Array | None = None

    def tree_flatten(self):
        return (self.array,), (self.kind, self.static)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], children[0])


jax.tree_util.register_pytree_node(Target, Target.tree_flatten, Target.tree_unflatten)


def _call_fn(inputs: Inputs, fn: Callable[..., Any], args: tuple, x: PyTree) -> Any:
    return inputs.call(fn, x, args)


def _output_shape(fn: Callable[..., Any], inputs: Inputs, x: PyTree, args: tuple) -> tuple:
    out, value_bytes = _caching.probe(_call_fn, (inputs, fn, _caching.abstract_numpy(args)), x)
    scope = _SCOPE.get()
    if scope is not None and scope.value_bytes is None:  # the first probe sizes chunks
        scope.value_bytes = value_bytes
    if not hasattr(out, "shape"):
        raise TypeError(
            f"fn must return one array (batch-first), got {type(out).__name__}; select the "
            f"output to explain inside fn"
        )
    if out.ndim == 0 or out.shape[0] != inputs.n:
        raise ValueError(
            f"fn must return an array leading with the batch size N={inputs.n}, got output "
            f"shape {tuple(out.shape)}"
        )
    return tuple(out.shape)


class Prepared(NamedTuple):
    """A validated call of an input method: see :func:`prepare`."""

    x: PyTree
    args: tuple
    inputs: Inputs
    target: Target | None


def prepare(fn: Callable[..., Any], x: PyTree, target: Any, args: Sequence[Any]) -> Prepared:
    """The input methods' prologue: arrays, the inputs' layout, and the checked target.

    Args:
        fn: The model function ``fn(x, *args)`` (``fn(*x, *args)`` for a tuple ``x``).
        x: The input(s), batch first.
        target: The method's ``target``.
        args: Extra positional inputs.

    Returns:
        ``Prepared(x, args, inputs, target)``: ``x`` as JAX arrays, ``args`` as a tuple,
        the :class:`Inputs` layout and the normalized :class:`Target`.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr._core import prepare
        >>> p = prepare(lambda x: x @ jnp.ones((3, 2)), jnp.ones((4, 3)), 1, ())
        >>> p.inputs.n, p.target is not None
        (4, True)
    """
    x = to_arrays(x)
    args = tuple(args)
    inputs = as_inputs(x)
    return Prepared(x, args, inputs, prepare_target(target, fn, inputs, x, args))


@_caching.model_pytree(["model"], static=["kw_names"])
class ModelFunction:
    """A structured model with its own parameters as ``fn(*inputs, *kw_values)``.

    The weights stay pytree leaves (arguments of compiled programs). The model runs with
    :func:`~jaxattr.structure.default_intercept` passed explicitly, so user models need not
    accept ``intercept=None``.
    """

    def __init__(self, model: Any, kw_names: tuple = ()):
        self.model = model
        self.kw_names = tuple(kw_names)

    def __call__(self, *a: Any) -> Any:
        n = len(a) - len(self.kw_names)
        kwargs = dict(zip(self.kw_names, a[n:], strict=True))
        return self.model.apply(self.model.params, *a[:n], intercept=default_intercept, **kwargs)


def check_structured(model: Any, method: str, name: str = "model") -> Any:
    """``model`` if it has the structured-model protocol (params, layers, apply), else a
    named ``TypeError``."""
    missing = [a for a in ("params", "layers", "apply") if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"{method}: {name} must be a structured model (params, layers, apply(params, "
            f"*inputs, intercept=...)), such as jaxattr.bridge.from_torch(...) or "
            f"jaxattr.flax.from_nnx(...); got {type(model).__name__} without "
            f"{', '.join(missing)}. Plain functions work with the input methods "
            f"(gradient, integrated_gradients, ...)"
        )
    return model


class Structured(NamedTuple):
    """A validated call of a structured method: see :func:`prepare_structured`."""

    model: Any
    x: PyTree
    args: tuple
    kwargs: dict
    inputs: Inputs
    kw_names: tuple
    kw_values: tuple
    params: Any
    fn: Callable[..., Any]
    target: Target | None

    def core_args(self) -> dict[str, Any]:
        """What a compiled core takes: ``inputs``, ``params``, ``x``, ``args``, ``kwargs``
        and ``target`` (the model and static options are passed beside them)."""
        return dict(
            inputs=self.inputs,
            params=self.params,
            x=self.x,
            args=self.args,
            kwargs=self.kwargs,
            target=self.target,
        )


def prepare_structured(
    model: Any,
    x: PyTree,
    *,
    target: Any,
    args: Sequence[Any],
    kwargs: Any,
    params: Any,
    method: str,
    name: str = "model",
    need_float: bool = True,
    need_target: bool = True,
) -> Structured:
    """The structured methods' prologue (rule, layer, neuron and CAM methods alike).

    Args:
        model: A structured model (see :mod:`jaxattr.structure`).
        x: The input(s), batch first.
        target: The method's ``target`` (ignored with ``need_target=False``).
        args: Extra positional model inputs.
        kwargs: Keyword model inputs (``None``: none), batch first as ``x``.
        params: Weights to run with instead of the model's own (``None``: the model's);
            checked against the model's by :func:`model_params`.
        method: The method's name, for errors.
        name: The model argument's name, for errors.
        need_float: ``x`` must be floating (methods that differentiate with respect to it).
        need_target: Normalize ``target`` (False: ``target`` is None in the result).

    Returns:
        ``Structured(model, x, args, kwargs, inputs, kw_names, kw_values, params, fn,
        target)``: the model function ``fn(*inputs, *kw_values)`` takes the keyword inputs
        positionally, in the sorted order of ``kw_names``.

    Raises:
        TypeError: ``model`` lacks the protocol, or is a plain function (wrapped for the rule
            methods) given ``kwargs`` or ``params``.
        ValueError: ``params`` of another structure or shape, a bad ``x`` or ``target``.

    Example:
        >>> from jaxattr._core import prepare_structured
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> s = prepare_structured(demo_model(), make_shapes(2)[0], target=1, args=(),
        ...                        kwargs=None, params=None, method="example")
        >>> s.inputs.n, s.kw_names, s.target is not None
        (2, (), True)
    """
    model = check_structured(model, method, name)
    kwargs = {k: to_arrays(v) for k, v in (kwargs or {}).items()}
    if getattr(model, "wraps_function", False):
        if kwargs:
            raise TypeError(
                f"{method}: kwargs need a structured model; a plain function takes its "
                f"keyword inputs by closure (functools.partial), got kwargs {sorted(kwargs)}"
            )
        if params is not None:
            raise TypeError(f"{method}: params need a structured model, got a plain function")
    x = to_arrays(x)
    args = tuple(args)
    inputs = as_inputs(x, need_float=need_float)
    kw_names = tuple(sorted(kwargs))
    kw_values = tuple(kwargs[k] for k in kw_names)
    fn = ModelFunction(model, kw_names)
    t = prepare_target(target, fn, inputs, x, args + kw_values) if need_target else None
    return Structured(
        model,
        x,
        args,
        kwargs,
        inputs,
        kw_names,
        kw_values,
        model_params(params, model.params),
        fn,
        t,
    )


def _check_index(idx: Sequence[int], y_shape: tuple, what: str) -> None:
    for axis, i in enumerate(idx, start=1):
        size = y_shape[axis]
        if not 0 <= int(i) < size:
            raise ValueError(
                f"target {what} is out of range for the output of shape {y_shape}: index "
                f"{int(i)} on axis {axis} must be in [0, {size})"
            )


def prepare_target(
    target: Any, fn: Callable[..., Any], inputs: Inputs, x: PyTree, args: tuple = ()
) -> Target:
    """Normalise a user ``target`` against ``fn``'s output shape and validate it.

    Args:
        target: ``None``; an int; a tuple of ints (outputs with more than two dims); a
            list/array of N ints or N tuples (one per example); a float array used as the
            output cotangent (broadcast against the output, e.g. one-hot rows); or a
            callable ``y -> cotangent``.
        fn: The model.
        inputs: The layout of ``x``.
        x: The input (used only for its shapes).
        args: Extra positional arguments of ``fn``.

    Returns:
        The normalised :class:`Target`.

    Raises:
        ValueError: The target does not fit the output shape or is out of range.
        TypeError: The target has an unsupported type.
    """
    return normalize_target(target, _output_shape(fn, inputs, x, args))


def normalize_target(target: Any, y_shape: tuple) -> Target:
    """Normalise ``target`` against an output shape ``(N, ...)``; see :func:`prepare_target`."""
    y_shape = tuple(y_shape)
    n = y_shape[0]
    if target is None:
        if math.prod(y_shape[1:]) != 1:
            raise ValueError(
                f"target=None needs one output per example, but fn returns shape {y_shape}; "
                f"pass target=<class index>, a tuple index, or a cotangent"
            )
        return Target("none")
    if callable(target) and not hasattr(target, "shape"):
        return Target("callable", target)
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"target must be an int, tuple, array or callable, got {target!r}")
    if getattr(target, "ndim", None) == 0 and jnp.issubdtype(target.dtype, jnp.integer):
        if is_concrete(target):  # a 0-d integer array (an element of an int label array)
            target = int(target)
    if isinstance(target, (float, np.floating)) or (
        getattr(target, "ndim", None) == 0 and jnp.issubdtype(target.dtype, jnp.floating)
    ):
        shown = target if not is_concrete(target) else repr(np.asarray(target).item())
        raise TypeError(
            f"target: a float scalar is ambiguous, got {type(target).__name__} {shown}: a "
            f"class index is an int (pass int(target), e.g. labels.astype(int)), and a "
            f"cotangent is a float array broadcasting to the output shape {y_shape}"
        )
    if isinstance(target, (int, np.integer)):
        if len(y_shape) != 2:
            raise ValueError(
                f"an int target needs a 2-D output (N, C), but fn returns shape {y_shape}; "
                f"use a tuple of {len(y_shape) - 1} indices"
            )
        _check_index((target,), y_shape, repr(int(target)))
        # the index is traced, not static: explaining another class does not recompile
        return Target("int", None, np.asarray([int(target)], np.int32))
    if isinstance(target, tuple):
        if not all(isinstance(t, (int, np.integer)) for t in target):
            raise TypeError(f"a tuple target must hold ints, got {target!r}")
        if len(target) != len(y_shape) - 1:
            raise ValueError(
                f"a tuple target indexes every non-batch output axis: expected "
                f"{len(y_shape) - 1} indices for output shape {y_shape}, got {target!r}"
            )
        _check_index(target, y_shape, repr(target))
        return Target("tuple", None, np.asarray([int(t) for t in target], np.int32))
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(
                f"a list target gives one index per example: expected length N={n}, got "
                f"length {len(target)}"
            )
        if all(isinstance(t, tuple) for t in target):
            arr = np.asarray(target, dtype=np.int32)
        elif all(isinstance(t, (int, np.integer)) for t in target):
            arr = np.asarray(target, dtype=np.int32)
        else:
            raise TypeError(f"a list target must hold ints or tuples of ints, got {target!r}")
        target = arr
    if hasattr(target, "shape") and hasattr(target, "dtype"):
        arr = target
        if jnp.issubdtype(arr.dtype, jnp.integer):
            k = len(y_shape) - 1
            expected = [(n,), (n, k)] if k == 1 else [(n, k)]
            if tuple(arr.shape) not in expected:
                raise ValueError(
                    f"an integer array target gives one index per example: expected shape "
                    f"{' or '.join(map(str, expected))} for output shape {y_shape}, got "
                    f"{tuple(arr.shape)}"
                )
            if isinstance(arr, np.ndarray):
                arr2 = arr.astype(np.int32).reshape(n, k)
            else:
                arr2 = jnp.reshape(jnp.asarray(arr, jnp.int32), (n, k))
            if is_concrete(arr):
                host = np.asarray(arr).reshape(n, k)
                for row in host:
                    _check_index(tuple(row), y_shape, str(tuple(int(v) for v in row)))
            return Target("index", None, arr2)
        if jnp.issubdtype(arr.dtype, jnp.floating):
            try:
                np.broadcast_shapes(tuple(arr.shape), y_shape)
                ok = len(arr.shape) <= len(y_shape)
            except ValueError:
                ok = False
            if not ok or np.broadcast_shapes(tuple(arr.shape), y_shape) != y_shape:
                raise ValueError(
                    f"a float array target is the output cotangent and must broadcast to the "
                    f"output shape {y_shape}, got shape {tuple(arr.shape)}"
                )
            return Target("cotangent", None, jnp.asarray(arr))
        raise TypeError(f"an array target must be integer or floating, got dtype {arr.dtype}")
    raise TypeError(
        f"target must be None, an int, a tuple, a list, an array or a callable, got "
        f"{type(target).__name__}"
    )


def target_score(y: Array, target: Target) -> Array:
    """The per-example scalar being explained, shape (N,).

    For index targets this is the selected output; for cotangent and callable targets it
    is ``sum(y * cotangent)`` over the non-batch axes (the cotangent held constant), whose
    gradient is the vector-Jacobian product Zennit computes with ``grad_output``.
    """
    n = y.shape[0]
    kind = target.kind
    if kind == "none":
        return jnp.reshape(y, (n,))
    if kind in ("int", "tuple"):
        return y[(slice(None), *[target.array[i] for i in range(target.array.shape[0])])]
    if kind == "index":
        idx = target.array
        if idx.shape[0] != n:  # expanded batch (e.g. an inner method on a bigger batch)
            idx = jnp.repeat(idx, n // idx.shape[0], axis=0)
        return y[(jnp.arange(n), *[idx[:, i] for i in range(idx.shape[1])])]
    if kind == "cotangent":
        cot = jnp.broadcast_to(target.array, y.shape)
    else:  # callable
        cot = jnp.broadcast_to(target.static(jax.lax.stop_gradient(y)), y.shape)
    cot = jax.lax.stop_gradient(cot).astype(y.dtype)
    return jnp.sum(jnp.reshape(y * cot, (n, -1)), axis=1)


def select_target(y: Array, target: Any) -> Array:
    """The per-example scalar that ``target`` selects from a model output.

    This is the one implementation of the target conventions used by every jaxattr method
    (Captum's ``target`` and Zennit's output relevance):

    - ``None``: the output has one value per example, shape (N,) or (N, 1).
    - ``int``: column ``target`` of a 2-D output (N, C).
    - ``tuple`` of ints: the index into the non-batch axes of an output with more than
      two dimensions, e.g. ``(2, 5)`` for an (N, 4, 8) output.
    - ``list`` (or integer array) of N ints, or of N tuples: one index per example.
    - float array broadcastable to the output (e.g. one-hot rows ``jnp.eye(10)[[3]]``):
      the output cotangent; the score is ``sum(y * target)`` over the non-batch axes.
    - callable ``y -> cotangent`` (Zennit's ``attr_output``), e.g. :func:`one_hot_max`.

    Args:
        y: A model output of shape (N, ...).
        target: The target, in any of the forms above.

    Returns:
        The explained score of each example, shape (N,).

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> y = jnp.array([[1.0, 2.0], [3.0, 4.0]])
        >>> jaxattr.select_target(y, [1, 0])
        Array([2., 3.], dtype=float32)
    """
    y = jnp.asarray(y)
    if y.ndim == 0:
        raise ValueError("y must lead with the batch dimension N, got a scalar")
    return target_score(y, normalize_target(target, y.shape))


def one_hot_max(y: Array) -> Array:
    """Zennit's ``one_hot_max``: the max output kept in place, zeros elsewhere.

    Use as a callable ``target`` to explain each example's top class with its output value
    as relevance.

    Args:
        y: Output of shape (N, C).

    Returns:
        An (N, C) array, ``y[n, c]`` at each row's argmax and 0 elsewhere.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> jaxattr.one_hot_max(jnp.array([[1.0, 3.0, 2.0]]))
        Array([[0., 3., 0.]], dtype=float32)
    """
    idx = jnp.argmax(y, axis=1)
    return jax.nn.one_hot(idx, y.shape[1], dtype=y.dtype) * jnp.max(y, axis=1, keepdims=True)


def scores(fn: Callable[..., Any], inputs: Inputs, x: PyTree, args: tuple, target: Target):
    """``target_score`` of ``fn`` at ``x``: shape (N,)."""
    return target_score(inputs.call(fn, x, args), target)


def input_gradient(
    fn: Callable[..., Any], inputs: Inputs, x: PyTree, args: tuple, target: Target
) -> PyTree:
    """Gradient of each example's target score with respect to ``x`` (same structure)."""
    return jax.grad(lambda x_: jnp.sum(scores(fn, inputs, x_, args, target)))(x)


# --------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------


def broadcast_baselines(baselines: Any, x: PyTree, inputs: Inputs, name: str = "baselines"):
    """Validate ``baselines`` against x: one entry per input, each broadcastable to it.

    Args:
        baselines: ``None`` (zeros), a scalar, an array broadcastable to each input's shape
            (``(C, H, W)``, ``(1, C, H, W)`` or ``(N, C, H, W)``), or (for tuple/pytree
            inputs) one such entry per input with the same structure as ``x``.
        x: The inputs.
        inputs: Their layout.
        name: The argument's name, for error messages.

    Returns:
        A pytree of x's structure whose leaves broadcast to the inputs' shapes (scalars
        stay numpy scalars); :func:`expand_baselines` broadcasts them inside a jitted core.
    """
    x_leaves, treedef = jax.tree_util.tree_flatten(x)
    if baselines is None:
        baselines = 0.0
    if _is_scalar_or_array(baselines):
        b_leaves = [baselines] * len(x_leaves)
    else:
        try:
            b_leaves = treedef.flatten_up_to(baselines)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{name} must be a scalar, an array, or match the structure of x "
                f"({treedef}), got {jax.tree_util.tree_structure(baselines)}"
            ) from err
    out = []
    paths = [p for p, _ in _leaf_paths(x)]
    for path, xl, bl in zip(paths, x_leaves, b_leaves, strict=False):
        bl = 0.0 if bl is None else bl
        if isinstance(bl, (int, float, np.number)):  # cheap: no device array per call
            out.append(np.asarray(bl, dtype=np.dtype(xl.dtype)))
            continue
        b = jnp.asarray(bl, dtype=xl.dtype)
        try:
            shape = np.broadcast_shapes(tuple(b.shape), tuple(xl.shape))
        except ValueError:
            shape = None
        if shape != tuple(xl.shape):
            where = name + path[1:] if len(paths) > 1 else name
            raise ValueError(
                f"{where} has shape {tuple(b.shape)}, which does not broadcast to the shape "
                f"{tuple(xl.shape)} of {path}"
            )
        out.append(b)
    out = jax.tree_util.tree_unflatten(treedef, out)
    check_finite(out, name)
    return out


def expand_baselines(baselines: PyTree, x: PyTree) -> PyTree:
    """Broadcast validated baselines (see :func:`broadcast_baselines`) to x's shapes."""
    return jax.tree_util.tree_map(
        lambda b, xl: jnp.broadcast_to(jnp.asarray(b, xl.dtype), xl.shape), baselines, x
    )


def _is_scalar_or_array(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) or hasattr(v, "shape")


def baseline_distribution(baselines: Any, x: PyTree, name: str = "baselines") -> PyTree:
    """Validate a baseline *distribution*: per input, an array of shape (M, *x.shape[1:])."""
    if baselines is None:
        raise ValueError(f"{name} is required: a distribution of shape (M, ...) per input")
    x_leaves, treedef = jax.tree_util.tree_flatten(x)
    if _is_scalar_or_array(baselines):
        b_leaves = [baselines] * len(x_leaves)
    else:
        try:
            b_leaves = treedef.flatten_up_to(baselines)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{name} must match the structure of x ({treedef}), got "
                f"{jax.tree_util.tree_structure(baselines)}"
            ) from err
    out = []
    m = None
    for path, xl, bl in zip([p for p, _ in _leaf_paths(x)], x_leaves, b_leaves, strict=False):
        b = jnp.asarray(bl, dtype=xl.dtype)
        if b.ndim == 0:
            b = jnp.broadcast_to(b, (1, *xl.shape[1:]))
        try:
            fits = b.ndim == xl.ndim and (
                np.broadcast_shapes(b.shape[1:], xl.shape[1:]) == xl.shape[1:]
            )
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name} is a distribution of baselines for {path}: expected shape "
                f"(M, {', '.join(map(str, xl.shape[1:]))}), got {tuple(b.shape)}"
            )
        b = jnp.broadcast_to(b, (b.shape[0], *xl.shape[1:]))
        if m is None:
            m = b.shape[0]
        elif b.shape[0] != m:
            raise ValueError(
                f"every input's baseline distribution must have the same number of samples "
                f"M; {path} has {b.shape[0]}, expected {m}"
            )
        out.append(b)
    out = jax.tree_util.tree_unflatten(treedef, out)
    check_finite(out, name)
    return out


# --------------------------------------------------------------------------------------
# Compilation and chunking
# --------------------------------------------------------------------------------------


#: Compile a keyword-only core with models and options static (see :mod:`jaxattr._caching`).
cached_jit = _caching.cached_jit


# --------------------------------------------------------------------------------------
# Memory budget
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _CallScope:
    """What one public method call learned while validating its target.

    ``value_bytes`` is ``(total, largest)``: the bytes of every value one forward pass of
    the model computes on the whole batch, and of the largest one.
    """

    value_bytes: tuple[int, int] | None = None


_SCOPE: contextvars.ContextVar[_CallScope | None] = contextvars.ContextVar(
    "jaxattr_call_scope", default=None
)
_BUDGET: list[int | None] = [None]  # None: the default for the backend

#: Default budget on CPU; on an accelerator, a quarter of its memory.
DEFAULT_CPU_BUDGET = 512 * 2**20


def memory_budget() -> int:
    """Bytes one compiled step of a method may use when no ``batch_size`` is given.

    The default is 512 MiB on CPU and a quarter of the device memory on an accelerator;
    :func:`set_memory_budget` changes it.

    Example:
        >>> import jaxattr
        >>> jaxattr.memory_budget() > 0
        True
    """
    if _BUDGET[0] is not None:
        return _BUDGET[0]
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"]) // 4
    return DEFAULT_CPU_BUDGET


def set_memory_budget(nbytes: int | None) -> None:
    """Set the per-step memory budget in bytes (``None`` restores the default).

    Methods that expand their input (integration steps, noise samples, occlusion
    windows, ablated features, masks) and are called without ``batch_size`` split the
    expansion into chunks whose estimated activations fit the budget. An explicit
    ``batch_size`` always wins. The estimate comes from the model's jaxpr, traced once
    per shape: a gradient method counts every value of one forward pass twice (kept for,
    and flowing back through, the backward pass); a forward-only method (occlusion,
    ablation, Shapley, LIME, RISE) four times the largest value.

    Args:
        nbytes: The budget in bytes, or ``None`` for the default.

    Example:
        >>> import jaxattr
        >>> jaxattr.set_memory_budget(2**30)
        >>> jaxattr.memory_budget()
        1073741824
        >>> jaxattr.set_memory_budget(None)
    """
    if nbytes is not None:
        nbytes = check_positive_int(nbytes, "nbytes")
    _BUDGET[0] = nbytes


def _even_chunk(total: int, cap: int) -> int:
    """A chunk size <= ``cap`` that divides ``total`` when one is at least ``cap / 2``, so
    that every chunk has one shape and compiles once."""
    if cap >= total:
        return cap
    for size in range(cap, (cap + 1) // 2 - 1, -1):
        if total % size == 0:
            return size
    return cap


def batched_chunks(
    total: int, batch_size: int | None, *, backward: bool = True, unit_bytes: int | None = None
) -> list[tuple[int, int]]:
    """Split ``range(total)`` into ``(start, stop)`` chunks of at most ``batch_size``.

    With ``batch_size=None`` the chunk size comes from the memory budget (see
    :func:`set_memory_budget`): each item of the expansion runs the model once on the
    whole batch, whose values the method's target validation measured. An item with a
    ``backward`` pass keeps every value (twice: forward and cotangent); a forward-only
    item needs a few of the largest at a time. ``unit_bytes``, when given, is what one item
    holds instead of that measurement (a method that sized its own expansion).
    """
    scope = _SCOPE.get()
    if batch_size is None and unit_bytes is not None:
        batch_size = _even_chunk(total, max(1, memory_budget() // max(1, unit_bytes)))
    elif batch_size is None and scope is not None and scope.value_bytes:
        every, largest = scope.value_bytes
        unit = 2 * every if backward else 4 * largest
        if unit:
            batch_size = _even_chunk(total, max(1, memory_budget() // unit))
    if batch_size is None or batch_size >= total:
        return [(0, total)]
    return [(s, min(s + batch_size, total)) for s in range(0, total, batch_size)]


def per_leaf(
    value: Any, n: int, name: str, *, single: Callable[[Any], bool], per: str = "input"
) -> list:
    """An option given once (applies to every input) or once per input, as a list of ``n``.

    ``single(value)`` says whether ``value`` is one entry; otherwise it must be a tuple or
    list of exactly ``n`` entries (the named error says so).
    """
    if single(value):
        return [value] * n
    if not isinstance(value, (tuple, list)) or len(value) != n:
        got = f"{len(value)}" if isinstance(value, (tuple, list)) else type(value).__name__
        raise ValueError(f"{name} gives one entry per {per}: expected {n}, got {got}")
    return list(value)


# --------------------------------------------------------------------------------------
# Explicit promotion: the library runs under jax_numpy_dtype_promotion="strict" and
# jax_numpy_rank_promotion="raise" (the test suite's settings) and computes under them
# what it computes under JAX's defaults, bit for bit.
# --------------------------------------------------------------------------------------


def promote_types(*dtypes: Any) -> np.dtype:
    """The dtype JAX's standard promotion gives ``dtypes``, whatever the promotion setting.

    ``jnp.promote_types`` refuses mixed kinds (``bfloat16`` with ``float32``, an integer
    with a float) under ``jax_numpy_dtype_promotion="strict"``; library code that mixes
    dtypes casts its operands to this dtype explicitly instead.
    """
    with jax.numpy_dtype_promotion("standard"):
        return np.dtype(jnp.result_type(*dtypes))


def promote(*arrays: Any) -> list[Array]:
    """``arrays`` cast to the dtype JAX's standard promotion gives them together (weak
    types weighed as JAX weighs them): what a mixed-dtype ``jnp`` operation did implicitly.
    An array already of that dtype is returned as it is."""
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.result_type(*arrays)
    return [a if jnp.result_type(a) == dtype else jnp.asarray(a).astype(dtype) for a in arrays]


def at_least_float32(dtype: Any) -> np.dtype:
    """``promote_types(dtype, float32)``: the accumulation dtype of low-precision values."""
    return promote_types(dtype, jnp.float32)


def expand_rank(a: Array, ndim: int) -> Array:
    """``a`` with leading size-1 axes up to ``ndim`` axes: NumPy's implicit rank
    promotion, made explicit (``jax_numpy_rank_promotion="raise"`` refuses the implicit one)."""
    return jnp.reshape(a, (1,) * (ndim - jnp.ndim(a)) + tuple(jnp.shape(a)))


def model_params(params: Any, own: Any) -> Any:
    """The parameters a structured method runs with: ``own`` (the model's) when ``params`` is
    None, else ``params``, which must match ``own`` leaf for leaf in structure and shape.

    Raises:
        ValueError: ``params`` has another structure or another shape for some leaf.
    """
    if params is None:
        return own
    got, want = jax.tree_util.tree_structure(params), jax.tree_util.tree_structure(own)
    if got != want:
        raise ValueError(
            f"params must have the structure of the model's params, expected {want}, got {got}"
        )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(own), strict=True
    ):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"params{jax.tree_util.keystr(path)} must have shape {jnp.shape(b)} (the "
                f"model's), got {jnp.shape(a)}"
            )
    return params


def example_sums(tree: PyTree) -> Array:
    """Each example's sum over every leaf of ``tree`` (batch first), shape (N,).

    Accumulated in float32 at least (float64 stays float64), whatever the leaves' dtype:
    the one per-example sum behind every completeness delta.
    """
    return sum(
        jnp.sum(a.reshape(a.shape[0], -1), axis=1, dtype=at_least_float32(a.dtype))
        for a in jax.tree_util.tree_leaves(tree)
    )


def tree_add(a: PyTree, b: PyTree) -> PyTree:
    """Leafwise sum (``a`` may be None)."""
    if a is None:
        return b
    return jax.tree_util.tree_map(jnp.add, a, b)


def cast_like(attr: PyTree, x: PyTree) -> PyTree:
    """Cast every leaf of ``attr`` to the dtype of the matching leaf of ``x``."""
    return jax.tree_util.tree_map(lambda a, xl: a.astype(xl.dtype), attr, x)
