"""The lowering table: one JAX function per ATen op (and per Python/sym op) of a graph.

Every lowering takes the op's arguments in ATen schema order, with tensors already turned
into JAX arrays, symbolic sizes into Python ints and torch dtypes into JAX dtypes. Argument
names follow the ATen schema (``stride``, ``eps``, ``negative_slope`` ...) because the bridge
reads a layer's static hyper-parameters (:attr:`jaxattr.structure.Layer.attrs`) from them.

The table is keyed by the op's printed name, e.g. ``"aten.convolution.default"``.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import conv as _convforms
from .errors import TrainModeError, UnsupportedArgumentsError

__all__ = ["LOWERINGS", "CONFIG", "refusal", "register_lowering", "supported_ops"]

#: Lowering choices that change speed, never results (read when a function is traced, so
#: set them before the first ``jax.jit`` call). ``conv_layout``: ``"NCHW"`` keeps torch's
#: layout in XLA's convolution; ``"NHWC"`` transposes around each 2-d convolution (XLA
#: cancels back-to-back transposes between layers). ``conv_impl`` (2-d, NHWC layout):
#: ``"auto"`` picks per shape between slice patches + one ``dot_general`` and XLA's
#: convolution (:func:`jaxattr.bridge.conv.conv2d`), ``"slices"`` always uses slice
#: patches where it can (ungrouped), ``"xla"`` always XLA's convolution.
CONFIG: dict[str, Any] = {"conv_layout": "NHWC", "conv_impl": "auto"}

LOWERINGS: dict[str, Callable[..., Any]] = {}


def register_lowering(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the JAX lowering of one or more ops.

    Args:
        *names: Printed op names, e.g. ``"aten.special_bessel_j0.default"``.

    Returns:
        A decorator that stores the function and returns it unchanged.

    Example:
        >>> @register_lowering("aten.special_bessel_j0.default")
        ... def bessel_j0(self):
        ...     return jax.scipy.special.bessel_jn(self, v=0)[0]
    """

    if not names:
        raise ValueError("register_lowering: names must name at least one op, got none")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            LOWERINGS[n] = fn
        return fn

    return deco


def supported_ops() -> list[str]:
    """Names of every op the bridge can lower, sorted.

    Returns:
        The keys of the lowering table.

    Example:
        >>> "aten.convolution.default" in supported_ops()
        True
    """
    return sorted(LOWERINGS)


def _example_leaves(tree: Any):
    if isinstance(tree, (list, tuple)):
        for t in tree:
            yield from _example_leaves(t)
    elif isinstance(tree, dict):
        for t in tree.values():
            yield from _example_leaves(t)
    else:
        yield tree


def _leaf_dtype(x: Any) -> Any:
    if hasattr(x, "dtype") and hasattr(x, "shape"):  # a tensor or its example value
        return x.dtype
    if type(x).__name__ == "dtype":  # a torch.dtype argument
        return x
    return None


def refusal(key: str, args: Any, kwargs: Any, out: Any = None) -> str | None:
    """Why op ``key``, which has a lowering, cannot be lowered with these arguments.

    Meant for conversion time, before anything runs: ``args``, ``kwargs`` and ``out`` are
    the graph node's arguments and result with every tensor given by its example value (a
    torch ``FakeTensor``: only ``dtype`` and ``shape`` are read). The reasons: a complex
    dtype anywhere (the bridge has no complex numbers), reading ``x[bool_mask]`` (a
    data-dependent shape), and argument values a lowering does not implement.

    Args:
        key: The printed op name, e.g. ``"aten.index.Tensor"``.
        args: Positional arguments of the node.
        kwargs: Keyword arguments of the node.
        out: The node's example result, if known.

    Returns:
        A sentence for :class:`~jaxattr.bridge.errors.UnsupportedOpsError`'s detail, or
        None when the lowering handles the call.

    Example:
        >>> refusal("aten.scatter_reduce.two", (None, 0, None, None, "xor"), {}) is None
        False
        >>> refusal("aten.add.Tensor", (1.0, 2.0), {}) is None
        True
    """
    for leaf in _example_leaves((args, kwargs, out)):
        dt = _leaf_dtype(leaf)
        if dt is not None and getattr(dt, "is_complex", False) is True:
            return (
                f"complex dtype {dt}: the bridge has no complex numbers; keep the "
                "computation real (e.g. torch.view_as_real, or real and imaginary parts "
                "as separate tensors)"
            )
    args = tuple(args)
    if key == "aten.index.Tensor" and len(args) > 1:
        if any(i is not None and str(_leaf_dtype(i)) in ("torch.bool", "bool") for i in args[1]):
            return _BOOL_READ
    if key == "aten.index_put.default" and len(args) > 1:
        given = [i for i in args[1] if i is not None]
        if len(given) > 1 and any(str(_leaf_dtype(i)) in ("torch.bool", "bool") for i in given):
            return _BOOL_MIXED
    if key in ("aten.scatter_reduce.two", "aten.index_reduce.default") and len(args) > 4:
        if args[4] not in ("sum", "prod", "mean", "amax", "amin"):
            return f"reduce={args[4]!r}"
    if key == "aten.grid_sampler_3d.default" and len(args) > 2 and args[2] == 2:
        return _BICUBIC_3D
    return None


_BOOL_READ = (
    "reading x[bool_mask] gives a shape that depends on the data, which one traced "
    "JAX program cannot have; write the model with torch.where (or multiply by the "
    "mask), or assign through the mask (x[mask] = v works, x[mask] += v does not)"
)
_BOOL_MIXED = (
    "a boolean mask combined with other index tensors in one assignment; assign "
    "with the mask alone, or use torch.where"
)
_BICUBIC_3D = "bicubic interpolation exists only for 4-d inputs"


reg = register_lowering


def _axis(d: int, nd: int) -> int:
    return d + nd if d < 0 else d


def _dims(dim: Any, nd: int) -> tuple[int, ...] | None:
    if dim is None:
        return None
    if isinstance(dim, int):
        return (_axis(dim, nd),)
    dim = tuple(_axis(d, nd) for d in dim)
    return dim if dim else None


def _int_dtype():
    return jnp.int64 if jax.config.jax_enable_x64 else jnp.int32


def _float_dtype():
    return jnp.float32


def _default_dtype(value: Any):
    if isinstance(value, bool):
        return jnp.bool_
    if isinstance(value, int):
        return _int_dtype()
    return _float_dtype()


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


# --------------------------------------------------------------------------- promotion
# torch broadcasts and promotes the operands of its elementwise ops implicitly. The
# lowerings do both explicitly, by torch's rules rather than jnp's, so that they need
# neither implicit dtype nor rank promotion (they run under
# jax_numpy_dtype_promotion="strict" and jax_numpy_rank_promotion="raise", the test
# suite's settings); where jnp's implicit promotion agreed with torch, results are unchanged.


def _is_number(v: Any) -> bool:
    """A Python scalar (torch's "wrapped number"), as opposed to a tensor."""
    return isinstance(v, (bool, int, float)) and not hasattr(v, "dtype")


def _category(dtype: Any) -> int:
    if dtype == jnp.bool_:
        return 0
    if jnp.issubdtype(dtype, jnp.integer):
        return 1
    return 2 if jnp.issubdtype(dtype, jnp.floating) else 3


def _promote_dtypes(a: Any, b: Any) -> Any:
    """torch's ``promote_types`` of two (non-complex) dtypes: JAX's lattice agrees on them."""
    if a is None or b is None:
        return b if a is None else a
    with jax.numpy_dtype_promotion("standard"):
        return jnp.promote_types(a, b)


def _combine_categories(higher: Any, lower: Any) -> Any:
    """torch's ``combine_categories``: ``higher`` (the more prominent operands' dtype) wins
    unless ``lower`` (zero-dim tensors, then Python numbers) is of a higher category."""
    if higher is None:
        return lower
    if lower is None or _category(higher) >= 2:
        return higher
    if higher == jnp.bool_ or _category(lower) >= 2:
        return _promote_dtypes(higher, lower)
    return higher


def torch_result_type(*operands: Any) -> Any:
    """``torch.result_type`` of tensors (JAX arrays) and Python numbers (None skipped).

    Tensors with dimensions decide, then zero-dim tensors, then Python numbers (a float
    is the default float dtype, an int the default int dtype), each group entering only
    where it is of a higher category (bool < integer < floating) than the groups before.
    """
    groups: list[Any] = [None, None, None]  # dimensioned tensors, zero-dim, Python numbers
    for v in operands:
        if v is None:
            continue
        if _is_number(v):
            group, dt = 2, _default_dtype(v)
        else:
            group, dt = (0 if np.ndim(v) else 1), jnp.result_type(v)
        groups[group] = _promote_dtypes(groups[group], dt)
    return _combine_categories(groups[0], _combine_categories(groups[1], groups[2]))


def _lift(v: Any, ndim: int) -> Any:
    """``v`` with leading size-1 axes up to ``ndim`` axes (torch's broadcasting aligns
    shapes at their last axis); Python numbers and zero-dim tensors as they are."""
    if _is_number(v) or v is None or not 0 < np.ndim(v) < ndim:
        return v
    return jnp.reshape(v, (1,) * (ndim - np.ndim(v)) + tuple(np.shape(v)))


def _operands(*operands: Any) -> list[Any]:
    """Tensors cast to their ``torch_result_type`` and lifted to a common number of axes,
    ready for an elementwise jnp op (Python numbers stay: JAX gives them the same dtype)."""
    dtype = torch_result_type(*operands)
    ndim = max((np.ndim(v) for v in operands if v is not None and not _is_number(v)), default=0)
    out = []
    for v in operands:
        if v is not None and not _is_number(v) and jnp.result_type(v) != dtype:
            v = jnp.asarray(v).astype(dtype)
        out.append(_lift(v, ndim))
    return out


def _elementwise(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` applied to its operands promoted and broadcast as torch does (:func:`_operands`)."""

    @functools.wraps(fn)
    def wrapped(*operands: Any) -> Any:
        return fn(*_operands(*operands))

    return wrapped


# --------------------------------------------------------------------------- no-ops / python
for _n in (
    "aten._assert_tensor_metadata.default",
    "aten._assert_scalar.default",
    "aten._assert_async.msg",
    "aten.sym_constrain_range.default",
    "aten.sym_constrain_range_for_size.default",
    "aten._functional_assert_async.msg",
    "aten.check_tensor.default",
):
    LOWERINGS[_n] = _nothing

reg("aten.sym_size.int")(lambda self, dim: self.shape[dim])
reg("aten.sym_numel.default")(lambda self: int(np.prod(self.shape)))
reg("aten.sym_stride.int")(lambda self, dim: int(np.prod(self.shape[dim + 1 :])))
reg("operator.getitem")(lambda obj, index: obj[index])
for _name in (
    "add",
    "sub",
    "mul",
    "floordiv",
    "truediv",
    "mod",
    "pow",
    "neg",
    "pos",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and_",
    "or_",
    "not_",
    "abs",
):
    LOWERINGS[f"operator.{_name}"] = getattr(operator, _name)
reg("math.ceil")(math.ceil)
reg("math.floor")(math.floor)
reg("math.sqrt")(math.sqrt)
reg("math.trunc")(math.trunc)
reg("torch.sym_max")(max)
reg("torch.sym_min")(min)
reg("torch.sym_float")(float)
reg("torch.sym_int")(int)
reg("torch.sym_not")(operator.not_)
reg("torch.sym_sum")(sum)


@reg("torch.sym_ite")
def _sym_ite(b, t, f):
    return t if b else f


# --------------------------------------------------------------------------- identity & dtype
@reg("aten.detach.default")
def detach(self):
    """``x.detach()``: the value, with no gradient through it."""
    return jax.lax.stop_gradient(self)


@reg(
    "aten.clone.default",
    "aten.alias.default",
    "aten.lift_fresh_copy.default",
    "aten.contiguous.default",
    "aten.lift_fresh.default",
    "aten.dropout.default",
    "aten.feature_dropout.default",
    "aten.alpha_dropout.default",
)
def identity(self, *args, **kwargs):
    """Ops that return their input in eval mode (clone, alias, dropout with train=False).

    torch.export's decompositions turn ``x.detach()`` into ``aten.alias``, so a detach
    inside a model's forward does not reach the bridge (see docs/bridge.md, limits).
    """
    return self


@reg("aten.native_dropout.default")
def native_dropout(input, p, train):
    return input, jnp.ones(input.shape, jnp.bool_)


@reg("aten._to_copy.default", "aten.to.dtype_layout")
def to_copy(self, *, dtype=None, **kwargs):
    return self if dtype is None else self.astype(dtype)


@reg("aten.to.dtype")
def to_dtype(self, dtype, non_blocking=False, copy=False, memory_format=None):
    return self.astype(dtype)


@reg("aten.to.device")
def to_device(self, device, dtype, non_blocking=False, copy=False, memory_format=None):
    return self.astype(dtype)


@reg("aten.type_as.default")
def type_as(self, other):
    return self.astype(other.dtype)


# --------------------------------------------------------------------------- creation
@reg("aten.full.default")
def full(size, fill_value, *, dtype=None, **kwargs):
    return jnp.full(tuple(size), fill_value, dtype or _default_dtype(fill_value))


@reg("aten.full_like.default")
def full_like(self, fill_value, *, dtype=None, **kwargs):
    return jnp.full(self.shape, fill_value, dtype or self.dtype)


@reg("aten.zeros.default", "aten.empty.memory_format")
def zeros(size, *, dtype=None, **kwargs):
    return jnp.zeros(tuple(size), dtype or _float_dtype())


@reg("aten.ones.default")
def ones(size, *, dtype=None, **kwargs):
    return jnp.ones(tuple(size), dtype or _float_dtype())


@reg("aten.zeros_like.default", "aten.empty_like.default")
def zeros_like(self, *, dtype=None, **kwargs):
    return jnp.zeros(self.shape, dtype or self.dtype)


@reg("aten.ones_like.default")
def ones_like(self, *, dtype=None, **kwargs):
    return jnp.ones(self.shape, dtype or self.dtype)


@reg("aten.new_zeros.default", "aten.new_empty.default")
def new_zeros(self, size, *, dtype=None, **kwargs):
    return jnp.zeros(tuple(size), dtype or self.dtype)


@reg("aten.new_ones.default")
def new_ones(self, size, *, dtype=None, **kwargs):
    return jnp.ones(tuple(size), dtype or self.dtype)


@reg("aten.new_full.default")
def new_full(self, size, fill_value, *, dtype=None, **kwargs):
    return jnp.full(tuple(size), fill_value, dtype or self.dtype)


@reg("aten.fill.Scalar")
def fill(self, value):
    return jnp.full(self.shape, value, self.dtype)


@reg("aten.scalar_tensor.default")
def scalar_tensor(s, *, dtype=None, **kwargs):
    return jnp.asarray(s, dtype or _float_dtype())


@reg("aten.arange.start_step", "aten.arange.start", "aten.arange.default")
def arange(start, end=None, step=1, *, dtype=None, **kwargs):
    if end is None:
        start, end = 0, start
    if dtype is None:
        dtype = _default_dtype(
            start + end + step if all(isinstance(v, int) for v in (start, end, step)) else 0.5
        )
    return jnp.arange(start, end, step, dtype=dtype)


@reg("aten.tril.default")
def tril(self, diagonal=0):
    return jnp.tril(self, diagonal)


@reg("aten.triu.default")
def triu(self, diagonal=0):
    return jnp.triu(self, diagonal)


# --------------------------------------------------------------------------- elementwise
def _unary(name: str, fn: Callable[[Any], Any]) -> None:
    LOWERINGS[f"aten.{name}.default"] = lambda self: fn(self)


for _name, _fn in {
    "neg": jnp.negative,
    "abs": jnp.abs,
    "exp": jnp.exp,
    "exp2": jnp.exp2,
    "log": jnp.log,
    "log2": jnp.log2,
    "log10": jnp.log10,
    "log1p": jnp.log1p,
    "expm1": jnp.expm1,
    "sqrt": jnp.sqrt,
    "rsqrt": lax.rsqrt,
    "reciprocal": jnp.reciprocal,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "tan": jnp.tan,
    "asin": jnp.arcsin,
    "acos": jnp.arccos,
    "atan": jnp.arctan,
    "sinh": jnp.sinh,
    "cosh": jnp.cosh,
    "asinh": jnp.arcsinh,
    "acosh": jnp.arccosh,
    "atanh": jnp.arctanh,
    "erf": lax.erf,
    "erfc": lax.erfc,
    "erfinv": lax.erf_inv,
    "floor": jnp.floor,
    "ceil": jnp.ceil,
    "round": jnp.round,
    "trunc": jnp.trunc,
    "sign": jnp.sign,
    "sgn": jnp.sign,
    "isnan": jnp.isnan,
    "isinf": jnp.isinf,
    "isfinite": jnp.isfinite,
    "logical_not": jnp.logical_not,
    "bitwise_not": jnp.invert,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "log_sigmoid": jax.nn.log_sigmoid,
    "frac": lambda x: x - jnp.trunc(x),
    "square": jnp.square,
    "lgamma": lax.lgamma,
    "positive": lambda x: x,
    "signbit": jnp.signbit,
}.items():
    _unary(_name, _fn)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _logit(x, eps):
    z = x if eps is None else jnp.where(x < eps, eps, jnp.where(x > 1 - eps, 1 - eps, x))
    return jnp.log(z / (1 - z))


@_logit.defjvp
def _logit_jvp(eps, primals, tangents):
    # torch: 1 / (x (1 - x)); NaN outside [0, 1] without eps, 0 outside [eps, 1 - eps] with it
    (x,), (t,) = primals, tangents
    d = 1.0 / (x * (1.0 - x))
    if eps is None:
        d = jnp.where((x < 0) | (x > 1), jnp.nan, d)
    else:
        d = jnp.where((x < eps) | (x > 1 - eps), 0.0, d)
    return _logit(x, eps), (d * t).astype(x.dtype)


@reg("aten.logit.default")
def logit(self, eps=None):
    """``log(x / (1 - x))``, ``x`` clamped to ``[eps, 1 - eps]`` first when ``eps`` is given."""
    return _logit(self, eps)


@reg("aten.round.decimals")
def round_decimals(self, *, decimals=0):
    """torch's rule: ``round(x * 10^d) / 10^d``, or ``round(x / 10^-d) * 10^-d`` for d < 0."""
    if decimals == 0:
        return jnp.round(self)
    ten = jnp.asarray(10.0 ** abs(decimals), self.dtype)
    return jnp.round(self * ten) / ten if decimals > 0 else jnp.round(self / ten) * ten


def _trigamma(x):
    # JAX's polygamma(1, x) is wrong for x < -5 or so; torch reflects x < 0.5 as here:
    # trigamma(x) = pi^2 / sin^2(pi x) - trigamma(1 - x), sin taken of x's distance to the
    # nearest integer (exact) rather than of pi * x
    poly = jax.scipy.special.polygamma
    low = x < 0.5
    r = x - jnp.round(x)
    reflected = (math.pi**2) / jnp.square(jnp.sin(math.pi * r)) - poly(
        1, 1.0 - jnp.where(low, x, 0.0)
    )
    return jnp.where(low, reflected, poly(1, jnp.where(low, 1.0, x)))


@jax.custom_jvp
def digamma(x):
    return lax.digamma(x)


@digamma.defjvp
def _digamma_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return lax.digamma(x), _trigamma(x) * t


LOWERINGS["aten.digamma.default"] = digamma


@reg("aten.add.Tensor", "aten.add.Scalar")
def add(self, other, alpha=1):
    self, other = _operands(self, other)
    return self + other if alpha == 1 else self + alpha * other


@reg("aten.sub.Tensor", "aten.sub.Scalar")
def sub(self, other, alpha=1):
    self, other = _operands(self, other)
    return self - other if alpha == 1 else self - alpha * other


@reg("aten.rsub.Scalar", "aten.rsub.Tensor")
def rsub(self, other, alpha=1):
    self, other = _operands(self, other)
    return other - (self if alpha == 1 else alpha * self)


@reg("aten.mul.Tensor", "aten.mul.Scalar")
def mul(self, other):
    self, other = _operands(self, other)
    return self * other


@reg("aten.div.Tensor", "aten.div.Scalar")
def div(self, other):
    return jnp.true_divide(*_operands(self, other))


@reg("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def div_mode(self, other, *, rounding_mode=None):
    self, other = _operands(self, other)
    if rounding_mode is None:
        return jnp.true_divide(self, other)
    if rounding_mode == "floor":
        return jnp.floor_divide(self, other)
    q = jnp.true_divide(self, other)
    if jnp.issubdtype(jnp.result_type(self, other), jnp.integer):
        return lax.div(*jnp.broadcast_arrays(jnp.asarray(self), jnp.asarray(other)))
    return jnp.trunc(q)


@reg("aten.floor_divide.default")
def floor_divide(self, other):
    return jnp.floor_divide(*_operands(self, other))


@reg("aten.remainder.Tensor", "aten.remainder.Scalar")
def remainder(self, other):
    return jnp.remainder(*_operands(self, other))


@reg("aten.fmod.Tensor", "aten.fmod.Scalar")
def fmod(self, other):
    return jnp.fmod(*_operands(self, other))


@reg("aten.pow.Tensor_Scalar")
def pow_tensor_scalar(self, exponent):
    if isinstance(exponent, int) and not isinstance(exponent, bool):
        return lax.integer_pow(self, exponent) if exponent >= 0 else jnp.power(self, exponent)
    if exponent == 0.5:
        return jnp.sqrt(self)
    return jnp.power(self, exponent)


@reg("aten.pow.Tensor_Tensor")
def pow_tensor_tensor(self, exponent):
    return jnp.power(*_operands(self, exponent))


@reg("aten.pow.Scalar")
def pow_scalar(self, exponent):
    return jnp.power(*_operands(self, exponent))


for _name, _fn in {
    "eq": jnp.equal,
    "ne": jnp.not_equal,
    "lt": jnp.less,
    "le": jnp.less_equal,
    "gt": jnp.greater,
    "ge": jnp.greater_equal,
    "maximum": jnp.maximum,
    "minimum": jnp.minimum,
    "fmax": jnp.fmax,
    "fmin": jnp.fmin,
    "atan2": jnp.arctan2,
    "logical_and": jnp.logical_and,
    "logical_or": jnp.logical_or,
    "logical_xor": jnp.logical_xor,
    "bitwise_and": jnp.bitwise_and,
    "bitwise_or": jnp.bitwise_or,
    "bitwise_xor": jnp.bitwise_xor,
    "hypot": jnp.hypot,
    "copysign": jnp.copysign,
    "xlogy": jax.scipy.special.xlogy,
}.items():
    for _ov in ("Tensor", "Scalar", "default"):
        LOWERINGS[f"aten.{_name}.{_ov}"] = (lambda f: lambda self, other: f(self, other))(
            _elementwise(_fn)
        )


@reg("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf", "aten.where.Scalar")
def where(condition, self, other):
    return jnp.where(condition, *_operands(self, other))


@reg("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def masked_fill(self, mask, value):
    return jnp.where(mask, jnp.asarray(value, self.dtype), self)


@reg("aten.clamp.default", "aten.clamp.Tensor")
def clamp(self, min=None, max=None):
    # torch passes the gradient where min <= x <= max (both ends included); min > max gives
    # max everywhere (torch computes min(max(x, min), max))
    out = self
    if isinstance(min, jax.Array) and max is not None:  # torch: min's gradient needs min < max
        min = jnp.where(_elementwise(jnp.less)(min, max), min, lax.stop_gradient(min))
    lt, gt = _elementwise(jnp.less), _elementwise(jnp.greater)
    if min is not None:
        out = jnp.where(lt(self, min), jnp.asarray(min, self.dtype), out)
    if max is not None:
        over = gt(self, max)
        if min is not None:
            over = _elementwise(jnp.logical_or)(over, gt(min, max))
        out = jnp.where(over, jnp.asarray(max, self.dtype), out)
    return out


@reg("aten.clamp_min.default", "aten.clamp_min.Tensor")
def clamp_min(self, min):
    return clamp(self, min=min)


@reg("aten.clamp_max.default", "aten.clamp_max.Tensor")
def clamp_max(self, max):
    return clamp(self, max=max)


@reg("aten.nan_to_num.default")
def nan_to_num(self, nan=None, posinf=None, neginf=None):
    return jnp.nan_to_num(self, nan=0.0 if nan is None else nan, posinf=posinf, neginf=neginf)


@reg("aten.lerp.Scalar", "aten.lerp.Tensor")
def lerp(self, end, weight):
    self, end, weight = _operands(self, end, weight)
    return self + weight * (end - self)


# --------------------------------------------------------------------------- activations
@reg("aten.leaky_relu.default")
def leaky_relu(self, negative_slope=0.01):
    return jnp.where(self > 0, self, self * negative_slope)


@reg("aten.elu.default")
def elu(self, alpha=1.0, scale=1.0, input_scale=1.0):
    neg = (alpha * scale) * jnp.expm1(jnp.minimum(self, 0.0) * input_scale)
    return jnp.where(self > 0, self * scale, neg)


@reg("aten.selu.default")
def selu(self):
    return elu(self, 1.6732632423543772, 1.0507009873554805)


@reg("aten.celu.default")
def celu(self, alpha=1.0):
    return elu(self, alpha, 1.0, 1.0 / alpha)


@reg("aten.gelu.default")
def gelu(self, *, approximate="none"):
    if approximate == "tanh":
        return jax.nn.gelu(self, approximate=True)
    # torch's CPU formula, x/2 (1 + erf(x/sqrt 2)); jax.nn.gelu's erfc form is the same
    # function but XLA's erfc (exp and two rational branches) costs ~3x its erf on CPU
    return self * 0.5 * (1 + lax.erf(self * jnp.asarray(0.7071067811865476, self.dtype)))


@reg("aten.softplus.default")
def softplus(self, beta=1.0, threshold=20.0):
    bx = self * beta
    soft = jax.nn.softplus(jnp.minimum(bx, threshold)) / beta
    return jnp.where(bx > threshold, self, soft)


@reg("aten.hardtanh.default")
def hardtanh(self, min_val=-1.0, max_val=1.0):
    # torch's gradient is zero at both ends (x <= min or x >= max)
    lo = jnp.asarray(min_val, self.dtype)
    hi = jnp.asarray(max_val, self.dtype)
    return jnp.where(self <= min_val, lo, jnp.where(self >= max_val, hi, self))


@reg("aten.relu6.default")
def relu6(self):
    return hardtanh(self, 0.0, 6.0)


@reg("aten.hardsigmoid.default")
def hardsigmoid(self):
    return jnp.where(self <= -3.0, 0.0, jnp.where(self >= 3.0, 1.0, self / 6.0 + 0.5)).astype(
        self.dtype
    )


@reg("aten.hardswish.default")
def hardswish(self):
    return jnp.where(
        self <= -3.0, 0.0, jnp.where(self >= 3.0, self, self * (self + 3.0) / 6.0)
    ).astype(self.dtype)


@reg("aten.threshold.default")
def threshold(self, threshold, value):
    return jnp.where(self > threshold, self, jnp.asarray(value, self.dtype))


@reg("aten.prelu.default", "aten._prelu_kernel.default")
def prelu(self, weight):
    w = (
        weight.reshape((1, -1) + (1,) * (self.ndim - 2))
        if self.ndim >= 2 and weight.size > 1
        else weight
    )
    return jnp.where(self > 0, self, mul(w, self))


@reg("aten._softmax.default")
def softmax(self, dim, half_to_float=False):
    return jax.nn.softmax(self, axis=dim)


@reg("aten.softmax.int")
def softmax_int(self, dim, dtype=None):
    return jax.nn.softmax(self if dtype is None else self.astype(dtype), axis=dim)


def _safe_softmax(x, axis):
    """Softmax whose rows of all ``-inf`` (fully masked) are 0 with a zero gradient."""
    dead = jnp.all(x == -jnp.inf, axis=axis, keepdims=True)
    return jnp.where(dead, 0.0, jax.nn.softmax(jnp.where(dead, 0.0, x), axis=axis)).astype(x.dtype)


@reg("aten._safe_softmax.default")
def safe_softmax(self, dim, dtype=None):
    return _safe_softmax(self if dtype is None else self.astype(dtype), dim)


@reg("aten._log_softmax.default")
def log_softmax(self, dim, half_to_float=False):
    return jax.nn.log_softmax(self, axis=dim)


@reg("aten.log_softmax.int")
def log_softmax_int(self, dim, dtype=None):
    return jax.nn.log_softmax(self if dtype is None else self.astype(dtype), axis=dim)


# --------------------------------------------------------------------------- reductions
@reg("aten.sum.dim_IntList", "aten.sum.default")
def sum_(self, dim=None, keepdim=False, *, dtype=None):
    return jnp.sum(self, axis=_dims(dim, self.ndim), keepdims=keepdim, dtype=dtype)


@reg("aten.mean.dim", "aten.mean.default")
def mean(self, dim=None, keepdim=False, *, dtype=None):
    return jnp.mean(self, axis=_dims(dim, self.ndim), keepdims=keepdim, dtype=dtype)


@reg("aten.prod.dim_int", "aten.prod.default")
def prod(self, dim=None, keepdim=False, *, dtype=None):
    return jnp.prod(self, axis=_dims(dim, self.ndim), keepdims=keepdim, dtype=dtype)


@reg("aten.amax.default")
def amax(self, dim=(), keepdim=False):
    return jnp.max(self, axis=_dims(dim, self.ndim), keepdims=keepdim)


@reg("aten.amin.default")
def amin(self, dim=(), keepdim=False):
    return jnp.min(self, axis=_dims(dim, self.ndim), keepdims=keepdim)


@reg("aten.max.default")
def max_(self):
    return jnp.max(self)


@reg("aten.min.default")
def min_(self):
    return jnp.min(self)


@reg("aten.max.dim")
def max_dim(self, dim, keepdim=False):
    return (
        jnp.max(self, axis=dim, keepdims=keepdim),
        jnp.argmax(self, axis=dim, keepdims=keepdim).astype(_int_dtype()),
    )


@reg("aten.min.dim")
def min_dim(self, dim, keepdim=False):
    return (
        jnp.min(self, axis=dim, keepdims=keepdim),
        jnp.argmin(self, axis=dim, keepdims=keepdim).astype(_int_dtype()),
    )


@reg("aten.argmax.default")
def argmax(self, dim=None, keepdim=False):
    if dim is None:
        return jnp.argmax(self).astype(_int_dtype())
    return jnp.argmax(self, axis=dim, keepdims=keepdim).astype(_int_dtype())


@reg("aten.argmin.default")
def argmin(self, dim=None, keepdim=False):
    if dim is None:
        return jnp.argmin(self).astype(_int_dtype())
    return jnp.argmin(self, axis=dim, keepdims=keepdim).astype(_int_dtype())


@reg("aten.var.correction", "aten.var.dim")
def var(self, dim=None, unbiased=True, keepdim=False, *, correction=None):
    """``var.dim`` passes ``unbiased, keepdim`` positionally, ``var.correction`` by keyword."""
    ddof = (1 if unbiased else 0) if correction is None else correction
    return jnp.var(self, axis=_dims(dim, self.ndim), ddof=ddof, keepdims=keepdim)


@reg("aten.std.correction", "aten.std.dim")
def std(self, dim=None, unbiased=True, keepdim=False, *, correction=None):
    return jnp.sqrt(var(self, dim, unbiased, keepdim, correction=correction))


@reg("aten.var_mean.correction")
def var_mean(self, dim=None, *, correction=None, keepdim=False):
    return var(self, dim, correction=correction, keepdim=keepdim), mean(self, dim, keepdim)


@reg("aten.any.dim", "aten.any.dims", "aten.any.default")
def any_(self, dim=None, keepdim=False):
    return jnp.any(self, axis=_dims(dim, self.ndim), keepdims=keepdim)


@reg("aten.all.dim", "aten.all.dims", "aten.all.default")
def all_(self, dim=None, keepdim=False):
    return jnp.all(self, axis=_dims(dim, self.ndim), keepdims=keepdim)


@reg("aten.logsumexp.default")
def logsumexp(self, dim, keepdim=False):
    return jax.nn.logsumexp(self, axis=_dims(dim, self.ndim), keepdims=keepdim)


@reg("aten.cumsum.default")
def cumsum(self, dim, *, dtype=None):
    return jnp.cumsum(self, axis=dim, dtype=dtype)


@reg("aten.cumprod.default")
def cumprod(self, dim, *, dtype=None):
    return jnp.cumprod(self, axis=dim, dtype=dtype)


@reg("aten.linalg_vector_norm.default")
def linalg_vector_norm(self, ord=2, dim=None, keepdim=False, *, dtype=None):
    x = self if dtype is None else self.astype(dtype)
    axis = _dims(dim, x.ndim)
    if ord == 0:  # the number of nonzero entries
        return jnp.sum(x != 0, axis=axis, keepdims=keepdim).astype(x.dtype)
    if ord == 2:
        s = jnp.sum(x * x, axis=axis, keepdims=keepdim)
    else:
        a = x * jnp.sign(x)  # |x| with torch's slope sgn(x), 0 at 0 (jnp.abs has 1)
        if ord == 1:
            return jnp.sum(a, axis=axis, keepdims=keepdim)
        if ord == math.inf:
            return jnp.max(a, axis=axis, keepdims=keepdim)
        if ord == -math.inf:
            return jnp.min(a, axis=axis, keepdims=keepdim)
        # |x|^p for p < 1 has an infinite slope at 0, where torch's gradient is 0
        pos = a > 0
        s = jnp.sum(
            jnp.where(pos, jnp.where(pos, a, 1.0) ** ord, 0.0 if ord > 0 else jnp.inf),
            axis=axis,
            keepdims=keepdim,
        )
    # so has the root at 0: keep it off zero norms, whose gradient torch sets to 0
    nonzero = s > 0
    safe = jnp.where(nonzero, s, 1.0)
    return jnp.where(nonzero, jnp.sqrt(safe) if ord == 2 else safe ** (1.0 / ord), 0.0)


@reg("aten.topk.default")
def topk(self, k, dim=-1, largest=True, sorted=True):
    x = jnp.moveaxis(self, dim, -1)
    v, i = lax.top_k(x if largest else -x, k)
    v = v if largest else -v
    return jnp.moveaxis(v, -1, dim), jnp.moveaxis(i, -1, dim).astype(_int_dtype())


@reg("aten.sort.default", "aten.sort.stable")
def sort(self, dim=-1, descending=False, *, stable=None):
    i = jnp.argsort(-self if descending else self, axis=dim, stable=True)
    return jnp.take_along_axis(self, i, axis=dim), i.astype(_int_dtype())


@reg("aten.argsort.default", "aten.argsort.stable")
def argsort(self, dim=-1, descending=False, *, stable=None):
    return jnp.argsort(-self if descending else self, axis=dim, stable=True).astype(_int_dtype())


# --------------------------------------------------------------------------- shape & view
@reg("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def view(self, size):
    return jnp.reshape(self, tuple(size))


@reg("aten.permute.default")
def permute(self, dims):
    return jnp.transpose(self, tuple(dims))


@reg("aten.transpose.int")
def transpose(self, dim0, dim1):
    return jnp.swapaxes(self, dim0, dim1)


@reg("aten.t.default", "aten.numpy_T.default")
def t(self):
    return self.T


@reg("aten.expand.default")
def expand(self, size, *, implicit=False):
    size = tuple(size)
    shape = (1,) * (len(size) - self.ndim) + tuple(self.shape)
    target = tuple(s if t == -1 else t for s, t in zip(shape, size, strict=False))
    return jnp.broadcast_to(jnp.reshape(self, shape), target)


@reg("aten.expand_as.default")
def expand_as(self, other):
    return jnp.broadcast_to(self, other.shape)


@reg("aten.unsqueeze.default")
def unsqueeze(self, dim):
    return jnp.expand_dims(self, _axis(dim, self.ndim + 1))


@reg("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def squeeze(self, dim=None):
    dims = range(self.ndim) if dim is None else _dims(dim, self.ndim) or ()
    dims = tuple(d for d in dims if self.shape[d] == 1)
    return jnp.squeeze(self, dims) if dims else self


@reg("aten.flatten.using_ints")
def flatten(self, start_dim=0, end_dim=-1):
    s, e = _axis(start_dim, self.ndim), _axis(end_dim, self.ndim)
    return jnp.reshape(self, self.shape[:s] + (-1,) + self.shape[e + 1 :])


@reg("aten.unflatten.int")
def unflatten(self, dim, sizes):
    d = _axis(dim, self.ndim)
    return jnp.reshape(self, self.shape[:d] + tuple(sizes) + self.shape[d + 1 :])


@reg("aten.slice.Tensor")
def slice_(self, dim=0, start=None, end=None, step=1):
    idx = [slice(None)] * self.ndim
    idx[dim] = slice(start, end, step)
    return self[tuple(idx)]


@reg("aten.select.int")
def select(self, dim, index):
    return lax.index_in_dim(
        self, index if index >= 0 else index + self.shape[dim], dim, keepdims=False
    )


@reg("aten.narrow.default")
def narrow(self, dim, start, length):
    return lax.slice_in_dim(self, start, start + length, axis=_axis(dim, self.ndim))


@reg("aten.cat.default", "aten.concat.default")
def cat(tensors, dim=0):
    tensors = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)] or tensors
    return jnp.concatenate(tensors, axis=dim)


@reg("aten.stack.default")
def stack(tensors, dim=0):
    return jnp.stack(tensors, axis=dim)


@reg("aten.split.Tensor")
def split(self, split_size, dim=0):
    n = self.shape[dim]
    sizes = [min(split_size, n - i) for i in range(0, n, split_size)]
    return split_with_sizes(self, sizes, dim)


@reg("aten.split_with_sizes.default")
def split_with_sizes(self, split_sizes, dim=0):
    out, start = [], 0
    for s in split_sizes:
        out.append(lax.slice_in_dim(self, start, start + s, axis=_axis(dim, self.ndim)))
        start += s
    return out


@reg("aten.unbind.int")
def unbind(self, dim=0):
    return [lax.index_in_dim(self, i, dim, keepdims=False) for i in range(self.shape[dim])]


@reg("aten.chunk.default")
def chunk(self, chunks, dim=0):
    n = self.shape[dim]
    return split(self, -(-n // chunks), dim)


@reg("aten.flip.default")
def flip(self, dims):
    return jnp.flip(self, tuple(dims))


@reg("aten.roll.default")
def roll(self, shifts, dims=()):
    return jnp.roll(self, tuple(shifts), tuple(dims) if dims else None)


@reg("aten.repeat.default")
def repeat(self, repeats):
    repeats = tuple(repeats)
    x = jnp.reshape(self, (1,) * (len(repeats) - self.ndim) + tuple(self.shape))
    return jnp.tile(x, repeats)


@reg("aten.repeat_interleave.self_int")
def repeat_interleave(self, repeats, dim=None, *, output_size=None):
    return jnp.repeat(self, repeats, axis=dim)


@reg("aten.index.Tensor")
def index(self, indices):
    idx = []
    for i in indices:
        if i is None:
            idx.append(slice(None))
        else:
            idx.append(i)
    try:
        return self[tuple(idx)]
    except jax.errors.NonConcreteBooleanIndexError as e:
        raise UnsupportedArgumentsError("aten.index.Tensor", _BOOL_READ) from e


@reg("aten.index_select.default")
def index_select(self, dim, index):
    return jnp.take(self, index, axis=dim)


@reg("aten.gather.default")
def gather(self, dim, index, *, sparse_grad=False):
    d = _axis(dim, self.ndim)
    sl = tuple(slice(None) if i == d else slice(0, index.shape[i]) for i in range(self.ndim))
    return jnp.take_along_axis(self[sl], index, axis=d)


@reg("aten.scatter.src", "aten.scatter.value")
def scatter(self, dim, index, src):
    d = _axis(dim, self.ndim)
    if not isinstance(src, jax.Array):
        src = jnp.full(index.shape, src, self.dtype)
    grids = jnp.meshgrid(*[jnp.arange(s) for s in index.shape], indexing="ij")
    grids[d] = index
    return self.at[tuple(grids)].set(src[tuple(slice(0, s) for s in index.shape)])


@reg("aten.scatter_add.default")
def scatter_add(self, dim, index, src):
    d = _axis(dim, self.ndim)
    grids = jnp.meshgrid(*[jnp.arange(s) for s in index.shape], indexing="ij")
    grids[d] = index
    return self.at[tuple(grids)].add(src[tuple(slice(0, s) for s in index.shape)])


def _index_of(arrays, layout):
    it = iter(arrays)
    return tuple(next(it) if is_array else slice(None) for is_array in layout)


def _sum_to(g, shape):
    """Sum a broadcast gradient back to ``shape``."""
    g = jnp.sum(g, axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return jnp.sum(g, axis=axes, keepdims=True) if axes else g


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _index_set(x, values, arrays, layout):
    return x.at[_index_of(arrays, layout)].set(values)


def _index_set_fwd(x, values, arrays, layout):
    return _index_set(x, values, arrays, layout), (values, arrays)


def _index_set_bwd(layout, res, g):
    # torch: every written position, duplicates included, reads the output gradient there
    # (JAX's own rule gives it only to the update that won the write)
    values, arrays = res
    idx = _index_of(arrays, layout)
    return g.at[idx].set(0), _sum_to(g[idx], values.shape).astype(values.dtype), None


_index_set.defvjp(_index_set_fwd, _index_set_bwd)


@reg("aten.index_put.default")
def index_put(self, indices, values, accumulate=False):
    if any(i is not None and i.dtype == jnp.bool_ for i in indices):
        return _bool_index_put(self, indices, jnp.asarray(values, self.dtype), accumulate)
    idx = tuple(slice(None) if i is None else i for i in indices)
    if accumulate:
        return self.at[idx].add(values)
    return _index_set(
        self,
        jnp.asarray(values),
        tuple(i for i in indices if i is not None),
        tuple(i is not None for i in indices),
    )


def _bool_index_put(self, indices, values, accumulate):
    """``x[mask] = v`` (or ``+=``) as a ``where``: no data-dependent shape is formed.

    ``v`` either broadcasts over the selected entries, or has one row per selected entry
    (in row-major order of the mask), picked by a cumulative count of the mask.
    """
    pos = [k for k, i in enumerate(indices) if i is not None]
    if len(pos) != 1:
        raise UnsupportedArgumentsError("aten.index_put.default", _BOOL_MIXED)
    k = pos[0]
    mask = indices[k]
    lead, rest = self.shape[:k], self.shape[k + mask.ndim :]
    # values broadcast against self[mask]'s shape: lead + (count,) + rest
    v = values.reshape((1,) * (len(lead) + 1 + len(rest) - values.ndim) + values.shape)
    if v.shape[k] == 1:
        v = v.reshape(v.shape[:k] + (1,) * mask.ndim + v.shape[k + 1 :])
    else:
        row = jnp.clip(jnp.cumsum(mask.reshape(-1)) - 1, 0, v.shape[k] - 1).reshape(mask.shape)
        v = jnp.take(v, row, axis=k)
    m = mask.reshape((1,) * k + mask.shape + (1,) * len(rest))
    if accumulate:
        return self + jnp.where(m, v, jnp.zeros((), self.dtype))
    return jnp.where(m, v, self)


@reg("aten.slice_scatter.default")
def slice_scatter(self, src, dim=0, start=None, end=None, step=1):
    idx = [slice(None)] * self.ndim
    idx[dim] = slice(start, end, step)
    return self.at[tuple(idx)].set(src)


@reg("aten.select_scatter.default")
def select_scatter(self, src, dim, index):
    idx = [slice(None)] * self.ndim
    idx[dim] = index
    return self.at[tuple(idx)].set(src)


@reg("aten.copy.default")
def copy(self, src, non_blocking=False):
    return jnp.broadcast_to(src.astype(self.dtype), self.shape)


@reg("aten.diagonal.default")
def diagonal(self, offset=0, dim1=0, dim2=1):
    return jnp.diagonal(self, offset, dim1, dim2)


@reg("aten.constant_pad_nd.default")
def constant_pad_nd(self, pad, value=0):
    cfg = [(0, 0, 0)] * self.ndim
    for i in range(len(pad) // 2):
        cfg[self.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1], 0)
    return lax.pad(self, jnp.asarray(value, self.dtype), cfg)


def _pad_source(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Input position of each of the ``n + lo + hi`` outputs of a reflect/edge/wrap pad
    (negative ``lo``/``hi`` crop, as in torch)."""
    j = np.arange(n + lo + hi) - lo
    if mode == "edge":
        return np.clip(j, 0, n - 1)
    if mode == "wrap":
        return np.mod(j, n)
    j = np.abs(j)  # reflect (torch requires pads < n)
    return np.where(j > n - 1, 2 * (n - 1) - j, j)


def _mode_pad(mode: str) -> Callable[..., Any]:
    def lowering(self, padding):
        x = self
        for i in range(len(padding) // 2):
            ax = self.ndim - 1 - i
            lo, hi = padding[2 * i], padding[2 * i + 1]
            if lo or hi:
                src = _pad_source(x.shape[ax], lo, hi, mode)
                x = jnp.take(x, jnp.asarray(src, jnp.int32), axis=ax)
        return x

    return lowering


for _d in (1, 2, 3):
    LOWERINGS[f"aten.reflection_pad{_d}d.default"] = _mode_pad("reflect")
    LOWERINGS[f"aten.replication_pad{_d}d.default"] = _mode_pad("edge")
    LOWERINGS[f"aten.circular_pad{_d}d.default"] = _mode_pad("wrap")


# --------------------------------------------------------------------------- matmul & linear
@reg("aten.linear.default")
def linear(input, weight, bias=None):
    """``x @ weight.T + bias`` contracting weight's second axis (no transposed copy)."""
    out = lax.dot_general(input, weight, (((input.ndim - 1,), (1,)), ((), ())))
    return out if bias is None else add(out, bias)


@reg(
    "aten.mm.default",
    "aten.bmm.default",
    "aten.matmul.default",
    "aten.mv.default",
    "aten.dot.default",
)
def matmul(self, other):
    return jnp.matmul(self, other)


def _scaled_add(self, prod_, beta, alpha):
    """``beta * self + alpha * prod_``; with ``beta == 0`` ``self`` is ignored (its NaN and
    inf too) and gets a zero gradient, as in torch (a real zero: ``0 * nan`` upstream stays
    NaN, as torch's)."""
    prod_ = prod_ if alpha == 1 else alpha * prod_
    if beta == 0:
        return add(prod_, jnp.where(jnp.zeros((), jnp.bool_), self, jnp.zeros((), self.dtype)))
    return add(prod_, self if beta == 1 else beta * self)


@reg("aten.addmm.default")
def addmm(self, mat1, mat2, *, beta=1, alpha=1):
    return _scaled_add(self, jnp.matmul(mat1, mat2), beta, alpha)


@reg("aten.baddbmm.default")
def baddbmm(self, batch1, batch2, *, beta=1, alpha=1):
    return addmm(self, batch1, batch2, beta=beta, alpha=alpha)


@reg("aten.addmv.default")
def addmv(self, mat, vec, *, beta=1, alpha=1):
    """``beta * self + alpha * (mat @ vec)``."""
    return _scaled_add(self, jnp.matmul(mat, vec), beta, alpha)


@reg("aten.addbmm.default")
def addbmm(self, batch1, batch2, *, beta=1, alpha=1):
    """``beta * self + alpha * sum_b batch1[b] @ batch2[b]``."""
    return _scaled_add(self, jnp.einsum("bij,bjk->ik", batch1, batch2), beta, alpha)


@reg("aten._trilinear.default")
def trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim=1):
    """``(i1 * i2 * i3).sum(sumdim)`` after unsqueezing each at its ``expand`` dims (what
    ``nn.Bilinear`` and ``F.bilinear`` export to), as one einsum."""
    xs = []
    for x, exp in ((i1, expand1), (i2, expand2), (i3, expand3)):
        for d in sorted(exp):
            x = jnp.expand_dims(x, d)
        xs.append(x)
    total = xs[0].ndim
    size = [
        0 if any(x.shape[k] == 0 for x in xs) else max(x.shape[k] for x in xs) for k in range(total)
    ]
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    subs, ops = [], []
    for x in xs:  # a size-1 axis that another operand fills is broadcast: leave it out
        keep = [k for k in range(total) if x.shape[k] == size[k]]
        subs.append("".join(letters[k] for k in keep))
        ops.append(x.reshape(tuple(x.shape[k] for k in keep)))
    summed = {_axis(d, total) for d in sumdim}
    out = "".join(letters[k] for k in range(total) if k not in summed)
    return jnp.einsum(f"{','.join(subs)}->{out}", *ops)


@reg("aten.einsum.default")
def einsum(equation, tensors, *, path=None):
    return jnp.einsum(equation, *tensors)


@reg("aten.embedding.default")
def embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    out = jnp.take(weight, indices, axis=0)
    if padding_idx is not None and padding_idx >= 0:
        # torch gives the padding row no gradient
        out = jnp.where((indices == padding_idx)[..., None], lax.stop_gradient(out), out)
    return out


# --------------------------------------------------------------------------- convolution
_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _conv(x, w, stride, padding, dilation, groups, lhs_dilation=None):
    nsp = w.ndim - 2
    pads = [tuple(p) if isinstance(p, tuple) else (p, p) for p in padding]
    impl = CONFIG.get("conv_impl", "auto")
    if nsp == 2 and CONFIG["conv_layout"] == "NHWC":
        if impl == "auto":
            return _convforms.conv2d(x, w, stride, pads, dilation, groups, lhs_dilation)
        if (
            impl == "slices"
            and groups == 1
            and lhs_dilation is None
            and min(min(p) for p in pads) >= 0
        ):
            return _convforms.conv2d_slices(x, w, stride, pads, dilation)
    return _conv_xla(x, w, stride, pads, dilation, groups, lhs_dilation, nsp)


def _conv_xla(x, w, stride, pads, dilation, groups, lhs_dilation, nsp):
    sp = _SPATIAL[nsp]
    if CONFIG["conv_layout"] == "NHWC" and nsp == 2:
        xt = jnp.transpose(x, (0, 2, 3, 1))
        wt = jnp.transpose(w, (2, 3, 1, 0))
        out = lax.conv_general_dilated(
            xt,
            wt,
            tuple(stride),
            pads,
            lhs_dilation=lhs_dilation,
            rhs_dilation=tuple(dilation),
            feature_group_count=groups,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return jnp.transpose(out, (0, 3, 1, 2))
    return lax.conv_general_dilated(
        x,
        w,
        tuple(stride),
        pads,
        lhs_dilation=lhs_dilation,
        rhs_dilation=tuple(dilation),
        feature_group_count=groups,
        dimension_numbers=("NC" + sp, "OI" + sp, "NC" + sp),
    )


@reg("aten.convolution.default")
def convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """N-d (transposed) convolution in torch's layout; grouped and depthwise included."""
    nsp = weight.ndim - 2
    pads = [(p, p) for p in _expand(padding, nsp)]
    return conv_nd(
        input,
        weight,
        bias,
        _expand(stride, nsp),
        pads,
        _expand(dilation, nsp),
        groups,
        transposed,
        _expand(output_padding, nsp) if transposed else None,
    )


def conv_nd(
    input, weight, bias, stride, pads, dilation, groups, transposed=False, output_padding=None
):
    """N-d (transposed) convolution with per-side padding ``pads = [(lo, hi), ...]``.

    Weights in torch/ONNX layout: ``(O, I/groups, *k)``, transposed ``(I, O/groups, *k)``.
    Shared by the torch and the ONNX front ends.
    """
    nsp = weight.ndim - 2
    unbatched = input.ndim == nsp + 1
    x = input[None] if unbatched else input
    k = weight.shape[2:]
    if not transposed:
        out = _conv(x, weight, stride, pads, dilation, groups)
    else:
        cin, cout_g = weight.shape[0], weight.shape[1]
        w = weight.reshape((groups, cin // groups, cout_g) + k)
        w = jnp.swapaxes(w, 1, 2).reshape((groups * cout_g, cin // groups) + k)
        w = jnp.flip(w, tuple(range(2, 2 + nsp)))
        extra = output_padding or (0,) * nsp
        tpads = [
            (
                dilation[i] * (k[i] - 1) - pads[i][0],
                dilation[i] * (k[i] - 1) - pads[i][1] + extra[i],
            )
            for i in range(nsp)
        ]
        out = _conv(x, w, (1,) * nsp, tpads, dilation, groups, lhs_dilation=tuple(stride))
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * nsp)
    return out[0] if unbatched else out


# --------------------------------------------------------------------------- pooling
def _pool_pads(size, kernel, stride, padding, dilation, ceil_mode):
    """Per-side pads of a pool; ``padding`` entries are ints or ``(lo, hi)`` pairs."""
    pads = []
    for n, k, s, p, d in zip(size, kernel, stride, padding, dilation, strict=False):
        lo, hi = p if isinstance(p, tuple) else (p, p)
        eff = d * (k - 1) + 1
        if ceil_mode:
            out = -(-(n + lo + hi - eff) // s) + 1
            if (out - 1) * s >= n + lo:
                out -= 1
        else:
            out = (n + lo + hi - eff) // s + 1
        extra = max(0, (out - 1) * s + eff - (n + lo + hi))
        pads.append((lo, hi + extra))
    return pads


def _expand(v, n):
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    return v * n if len(v) == 1 else v


def _max_windows(self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """Per spatial axis of a max pool, ``(pos, ok)``: the ``(out, k)`` input positions of
    each window and whether each lies inside the input."""
    n = len(kernel_size) if not isinstance(kernel_size, int) else 1
    k = _expand(kernel_size, n)
    s = _expand(stride, n) if stride else k
    d = _expand(dilation, n)
    sizes = self.shape[self.ndim - n :]
    windows = []
    for size, ki, si, di, (lo, hi) in zip(
        sizes, k, s, d, _pool_pads(sizes, k, s, _expand(padding, n), d, ceil_mode), strict=True
    ):
        out = (size + lo + hi - di * (ki - 1) - 1) // si + 1
        pos = np.arange(out)[:, None] * si - lo + np.arange(ki)[None, :] * di
        windows.append((pos, (pos >= 0) & (pos < size)))
    return windows


def _window_max(self, windows):
    """Max pool over explicit windows, as torch picks: each window's first maximum (or its
    last NaN; padding never). Returns the values, whose gradient goes to that entry only,
    and its flat index within each (N, C) plane.

    ``windows``: per spatial axis ``(pos, ok)`` as :func:`_max_windows` gives them.
    """
    n = len(windows)
    lead = self.ndim - n
    sizes = self.shape[lead:]
    outs = tuple(pos.shape[0] for pos, _ in windows)
    ks = tuple(pos.shape[1] for pos, _ in windows)
    x = self
    flat = np.zeros(outs + ks, np.int64)
    ok = np.ones(outs + ks, bool)
    for i, (pos, valid) in enumerate(windows):
        # after this take, axis lead + 2i is this axis' outputs and lead + 2i + 1 its offsets
        x = jnp.take(x, jnp.asarray(np.clip(pos, 0, sizes[i] - 1), jnp.int32), axis=lead + 2 * i)
        shape = [1] * (2 * n)
        shape[i], shape[n + i] = pos.shape
        flat = flat + pos.reshape(shape) * int(np.prod(sizes[i + 1 :]))
        ok = ok & valid.reshape(shape)
    x = jnp.transpose(
        x,
        tuple(range(lead))
        + tuple(lead + 2 * i for i in range(n))
        + tuple(lead + 2 * i + 1 for i in range(n)),
    )
    k = int(np.prod(ks))
    vals = x.reshape(x.shape[:lead] + outs + (k,))
    v = lax.stop_gradient(vals)
    ok = _lift(jnp.asarray(ok.reshape(outs + (k,))), v.ndim)
    best = jnp.max(jnp.where(ok, v, -jnp.inf), axis=-1, keepdims=True)
    hit = ok & ((v == best) | jnp.isnan(v))
    first = jnp.argmax(hit, axis=-1)
    last = k - 1 - jnp.argmax(hit[..., ::-1], axis=-1)
    j = jnp.where(jnp.isnan(best[..., 0]), last, first)[..., None]
    table = jnp.broadcast_to(jnp.asarray(flat.reshape(outs + (k,)), _int_dtype()), vals.shape)
    return (
        jnp.take_along_axis(vals, j, axis=-1)[..., 0],
        jnp.take_along_axis(table, j, axis=-1)[..., 0],
    )


def _max_pool(self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    n = len(kernel_size) if not isinstance(kernel_size, int) else 1
    k = _expand(kernel_size, n)
    s = _expand(stride, n) if stride else k
    p, d = _expand(padding, n), _expand(dilation, n)
    if any(di != 1 for di in d):  # JAX has no gradient of a dilated reduce_window max
        return _window_max(self, _max_windows(self, k, s, p, d, ceil_mode))[0]
    lead = self.ndim - n
    pads = _pool_pads(self.shape[lead:], k, s, p, d, ceil_mode)
    # a Python scalar init lets JAX pick its differentiable max-window primitive
    init = -math.inf if jnp.issubdtype(self.dtype, jnp.floating) else int(jnp.iinfo(self.dtype).min)
    if n == 2 and self.ndim == 4 and CONFIG["conv_layout"] == "NHWC":
        # between two convolutions (a ResNet's stem): in their layout, so that XLA cancels
        # the transposes around it instead of copying the map to NCHW and back
        out = lax.reduce_window(
            jnp.transpose(self, (0, 2, 3, 1)),
            init,
            lax.max,
            (1, *k, 1),
            (1, *s, 1),
            [(0, 0), *pads, (0, 0)],
        )
        return jnp.transpose(out, (0, 3, 1, 2))
    return lax.reduce_window(
        self,
        init,
        lax.max,
        (1,) * lead + k,
        (1,) * lead + s,
        [(0, 0)] * lead + pads,
        window_dilation=(1,) * lead + d,
    )


def _max_pool_with_indices(self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    return (
        _max_pool(self, kernel_size, stride, padding, dilation, ceil_mode),
        _window_max(self, _max_windows(self, kernel_size, stride, padding, dilation, ceil_mode))[1],
    )


for _d in (1, 2, 3):
    LOWERINGS[f"aten.max_pool{_d}d_with_indices.default"] = _max_pool_with_indices
    LOWERINGS[f"aten.max_pool{_d}d.default"] = _max_pool


def _avg_pool(
    self,
    kernel_size,
    stride=(),
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    n = len(kernel_size)
    k = _expand(kernel_size, n)
    s = _expand(stride, n) if stride else k
    p = [pi if isinstance(pi, tuple) else (pi, pi) for pi in _expand(padding, n)]
    lead = self.ndim - n
    pads = _pool_pads(self.shape[lead:], k, s, p, (1,) * n, ceil_mode)
    total = lax.reduce_window(
        self, 0.0, lax.add, (1,) * lead + k, (1,) * lead + s, [(0, 0)] * lead + pads
    )
    if divisor_override:
        return total / divisor_override
    if not any(lo or hi for lo, hi in p) and not ceil_mode:
        return total / float(np.prod(k))
    # window sizes: padding counts when count_include_pad, the ceil-mode overhang never does
    ones = np.ones(self.shape[lead:], np.float32)
    if count_include_pad:
        ones = np.pad(ones, p, constant_values=1.0)
        extra = [(0, hi - ph) for (_, hi), (_, ph) in zip(pads, p, strict=True)]
    else:
        extra = pads
    ones = np.pad(ones, extra)
    cnt = np.lib.stride_tricks.sliding_window_view(ones, k)[
        tuple(slice(None, None, si) for si in s)
    ]
    cnt = cnt.sum(axis=tuple(range(n, 2 * n)))
    if count_include_pad:  # torch clips the divisor window at the padded border
        cnt = np.maximum(cnt, 1.0)
    return total / _lift(jnp.asarray(cnt, self.dtype), total.ndim)


for _d in (1, 2, 3):
    LOWERINGS[f"aten.avg_pool{_d}d.default"] = _avg_pool


def _adaptive_bounds(n_in, n_out):
    return [((i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)) for i in range(n_out)]


def _adaptive_avg(self, output_size):
    n = len(output_size)
    x = self
    for i, o in enumerate(output_size):
        ax = x.ndim - n + i
        size = x.shape[ax]
        if o is None or o == size:
            continue
        if o == 1:
            x = jnp.mean(x, axis=ax, keepdims=True)
        elif size % o == 0:
            x = jnp.mean(x.reshape(x.shape[:ax] + (o, size // o) + x.shape[ax + 1 :]), ax + 1)
        else:
            m = np.zeros((size, o), np.float32)
            for j, (a, b) in enumerate(_adaptive_bounds(size, o)):
                m[a:b, j] = 1.0 / (b - a)
            x = jnp.moveaxis(jnp.tensordot(x, jnp.asarray(m, x.dtype), axes=([ax], [0])), -1, ax)
    return x


def _adaptive_max(self, output_size):
    # explicit windows: torch's indices, and the gradient to the chosen entry of tied maxima
    windows = []
    for size, o in zip(self.shape[self.ndim - len(output_size) :], output_size, strict=True):
        bounds = _adaptive_bounds(size, size if o is None else o)
        pos = np.array([[a + j for j in range(max(b - a for a, b in bounds))] for a, _ in bounds])
        windows.append((pos, pos < np.array([b for _, b in bounds])[:, None]))
    return _window_max(self, windows)


for _d in (1, 2, 3):
    LOWERINGS[f"aten._adaptive_avg_pool{_d}d.default"] = _adaptive_avg
    LOWERINGS[f"aten.adaptive_avg_pool{_d}d.default"] = _adaptive_avg
    LOWERINGS[f"aten.adaptive_max_pool{_d}d.default"] = _adaptive_max


# --------------------------------------------------------------------------- upsampling
def _scales(in_sizes, output_size, scale_factors):
    if output_size is not None:
        out = tuple(output_size)
        return out, [i / o for i, o in zip(in_sizes, out, strict=False)]
    out = tuple(int(math.floor(i * s)) for i, s in zip(in_sizes, scale_factors, strict=False))
    return out, [1.0 / s for s in scale_factors]


def _nearest(self, output_size, scale_factors, exact=False):
    n = len(output_size) if output_size is not None else len(scale_factors)
    lead = self.ndim - n
    out, sc = _scales(self.shape[lead:], output_size, scale_factors)
    x = self
    for i in range(n):
        size = self.shape[lead + i]
        dst = np.arange(out[i], dtype=np.float64)
        src = np.floor((dst + 0.5) * sc[i]) if exact else np.floor(dst * sc[i])
        src = np.minimum(src.astype(np.int64), size - 1)
        x = jnp.take(x, jnp.asarray(src, jnp.int32), axis=lead + i)
    return x


def _linear_weights(n_in, n_out, scale, align_corners):
    m = np.zeros((n_in, n_out), np.float64)
    for j in range(n_out):
        if align_corners:
            src = j * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((j + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[i0, j] += 1.0 - lam
        m[i1, j] += lam
    return m


def _interp(self, output_size, align_corners, scale_factors):
    n = len(output_size) if output_size is not None else len(scale_factors)
    lead = self.ndim - n
    out, sc = _scales(self.shape[lead:], output_size, scale_factors)
    x = self
    for i in range(n):
        ax = lead + i
        if align_corners:
            scale = 0.0
        else:
            scale = sc[i]
        m = _linear_weights(self.shape[ax], out[i], scale, align_corners)
        x = jnp.moveaxis(jnp.tensordot(x, jnp.asarray(m, x.dtype), axes=([ax], [0])), -1, ax)
    return x


for _d, _nm in ((1, "linear1d"), (2, "bilinear2d"), (3, "trilinear3d")):
    LOWERINGS[f"aten.upsample_nearest{_d}d.vec"] = lambda self, output_size, scale_factors: (
        _nearest(self, output_size, scale_factors)
    )
    LOWERINGS[f"aten._upsample_nearest_exact{_d}d.vec"] = lambda self, output_size, scale_factors: (
        _nearest(self, output_size, scale_factors, exact=True)
    )
    LOWERINGS[f"aten.upsample_{_nm}.vec"] = _interp


@reg("aten.upsample_nearest2d.default")
def upsample_nearest2d(self, output_size, scales_h=None, scales_w=None):
    return _nearest(self, output_size, None)


@reg("aten.upsample_bilinear2d.default")
def upsample_bilinear2d(self, output_size, align_corners, scales_h=None, scales_w=None):
    return _interp(self, output_size, align_corners, None)


@reg("aten.pixel_shuffle.default")
def pixel_shuffle(self, upscale_factor):
    r = upscale_factor
    *lead, c, h, w = self.shape
    x = self.reshape(tuple(lead) + (c // (r * r), r, r, h, w))
    nl = len(lead)
    x = jnp.transpose(x, tuple(range(nl)) + (nl, nl + 3, nl + 1, nl + 4, nl + 2))
    return x.reshape(tuple(lead) + (c // (r * r), h * r, w * r))


# --------------------------------------------------------------------------- normalisation
def _bshape(x, v):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2)) if x.ndim > 1 else v


@reg("aten._native_batch_norm_legit_no_training.default")
def batch_norm_eval(input, weight, bias, running_mean, running_var, momentum, eps):
    """Eval-mode batch norm: ``x * scale + shift`` with per-channel scale and shift."""
    scale = lax.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    out = input * _bshape(input, scale) + _bshape(input, shift)
    empty = jnp.zeros((0,), input.dtype)
    return out, empty, empty


def _batch_stats_norm(input, weight, bias, eps):
    axes = (0,) + tuple(range(2, input.ndim))
    m = jnp.mean(input, axis=axes, keepdims=True)
    v = jnp.mean(jnp.square(input - m), axis=axes, keepdims=True)
    rstd = lax.rsqrt(v + eps)
    out = (input - m) * rstd
    if weight is not None:
        out = out * _bshape(input, weight)
    if bias is not None:
        out = out + _bshape(input, bias)
    return out, m.reshape(-1), rstd.reshape(-1)


@reg("aten._native_batch_norm_legit.no_stats")
def batch_norm_no_stats(input, weight, bias, training, momentum, eps):
    return _batch_stats_norm(input, weight, bias, eps)


@reg("aten._native_batch_norm_legit.default", "aten.native_batch_norm.default")
def batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps):
    if training or running_mean is None:
        return _batch_stats_norm(input, weight, bias, eps)
    return batch_norm_eval(input, weight, bias, running_mean, running_var, momentum, eps)


@reg("aten._native_batch_norm_legit_functional.default")
def batch_norm_functional(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """What ``torch.export`` makes of a batch norm that may update its running statistics:
    ``(out, mean, rstd, new_running_mean, new_running_var)``. Training mode (batch
    statistics, updated running statistics) is computed as torch does; the bridge refuses it
    at conversion for modules, so it only runs for a functional ``F.batch_norm``."""
    if not training:
        out = batch_norm_eval(input, weight, bias, running_mean, running_var, momentum, eps)
        return (*out, running_mean, running_var)
    out, m, rstd = _batch_stats_norm(input, weight, bias, eps)
    n = input.size // input.shape[1]
    axes = (0,) + tuple(range(2, input.ndim))
    var_unbiased = jnp.var(input, axis=axes, ddof=1) if n > 1 else jnp.full_like(m, jnp.nan)
    new_mean = (1 - momentum) * running_mean + momentum * m
    new_var = (1 - momentum) * running_var + momentum * var_unbiased
    return out, m, rstd, new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)


@reg("aten.native_layer_norm.default")
def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    axes = tuple(range(input.ndim - len(normalized_shape), input.ndim))
    m = jnp.mean(input, axis=axes, keepdims=True)
    xc = input - m
    v = jnp.mean(jnp.square(xc), axis=axes, keepdims=True)
    rstd = lax.rsqrt(v + eps)
    out = xc * rstd
    if weight is not None:
        out = mul(out, weight)
    if bias is not None:
        out = add(out, bias)
    return out, m, rstd


@reg("aten.layer_norm.default")
def layer_norm_single(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    return layer_norm(input, normalized_shape, weight, bias, eps)[0]


@reg("aten.native_group_norm.default")
def group_norm(input, weight, bias, N, C, HxW, group, eps):
    n = input.shape[0]
    x = input.reshape((n, group, -1))
    m = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - m
    v = jnp.mean(jnp.square(xc), axis=-1, keepdims=True)
    rstd = lax.rsqrt(v + eps)
    out = (xc * rstd).reshape(input.shape)
    if weight is not None:
        out = out * _bshape(input, weight)
    if bias is not None:
        out = out + _bshape(input, bias)
    return out, m.reshape(n, group), rstd.reshape(n, group)


@reg("aten.rms_norm.default", "aten._fused_rms_norm.default")
def rms_norm(input, normalized_shape, weight=None, eps=None):
    axes = tuple(range(input.ndim - len(normalized_shape), input.ndim))
    eps = jnp.finfo(input.dtype).eps if eps is None else eps
    rstd = lax.rsqrt(jnp.mean(jnp.square(input), axis=axes, keepdims=True) + eps)
    out = input * rstd
    if weight is not None:
        out = mul(out, weight)
    return out


# --------------------------------------------------------------------------- attention
@reg("aten.scaled_dot_product_attention.default")
def scaled_dot_product_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    *,
    scale=None,
    enable_gqa=False,
):
    """softmax(q k^T * scale + mask) v; a boolean mask keeps entries where it is True.

    A query row with every key masked gives 0 (torch's safe softmax), not NaN.
    """
    if dropout_p > 0:
        raise TrainModeError(
            f"aten.scaled_dot_product_attention: dropout_p={dropout_p} drops attention "
            "weights at random, as in training mode; pass dropout_p=0.0 outside training "
            "(e.g. dropout_p=self.p if self.training else 0.0) and export again"
        )
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key = jnp.repeat(key, rep, axis=-3)
        value = jnp.repeat(value, rep, axis=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    s = jnp.matmul(query, jnp.swapaxes(key, -1, -2)) * scale
    neg = jnp.asarray(-jnp.inf, s.dtype)
    if is_causal:
        L, S = query.shape[-2], key.shape[-2]
        s = jnp.where(jnp.tril(jnp.ones((L, S), jnp.bool_)), s, neg)
    if attn_mask is not None:
        if attn_mask.dtype == jnp.bool_:
            s = jnp.where(attn_mask, s, neg)
        else:
            s = add(s, attn_mask)
    return jnp.matmul(_safe_softmax(s, -1), value)


# --------------------------------------------------------------------------- recurrent
def _dense(x, w):
    return lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))


def _rnn(kind, input, hx, params, has_biases, num_layers, bidirectional, batch_first):
    per = 4 if has_biases else 2
    dirs = 2 if bidirectional else 1
    if len(params) != num_layers * dirs * per:
        raise NotImplementedError(
            f"aten.{kind}: expected {num_layers * dirs * per} weight tensors "
            f"(num_layers={num_layers}, bidirectional={bidirectional}, "
            f"has_biases={has_biases}), got {len(params)}; LSTM proj_size is not supported"
        )
    unbatched = input.ndim == 2
    x = input[:, None] if unbatched else (jnp.swapaxes(input, 0, 1) if batch_first else input)
    hx = [h[:, None] if unbatched else h for h in hx]
    finals: list[list[Any]] = [[] for _ in hx]
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w = params[k * per : (k + 1) * per]
            w_ih, w_hh = w[0], w[1]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
            xs = x if d == 0 else jnp.flip(x, 0)
            xw = _dense(xs, w_ih)  # all time steps in one matmul
            if b_ih is not None:
                # GRU adds b_hh inside the reset gate; LSTM and plain RNNs add both here
                xw = add(xw, b_ih if kind == "gru" else b_ih + b_hh)
            init = tuple(h[k] for h in hx)
            if kind == "lstm":

                def step(carry, xt, w_hh=w_hh):
                    h, c = carry
                    g = xt + _dense(h, w_hh)
                    i, f, gg, o = jnp.split(g, 4, axis=-1)
                    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
                    h = jax.nn.sigmoid(o) * jnp.tanh(c)
                    return (h, c), h
            elif kind == "gru":

                def step(carry, xt, w_hh=w_hh, b_hh=b_hh):
                    (h,) = carry
                    hw = _dense(h, w_hh)
                    if b_hh is not None:
                        hw = add(hw, b_hh)
                    xr, xz, xn = jnp.split(xt, 3, axis=-1)
                    hr, hz, hn = jnp.split(hw, 3, axis=-1)
                    r = jax.nn.sigmoid(xr + hr)
                    z = jax.nn.sigmoid(xz + hz)
                    n = jnp.tanh(xn + r * hn)
                    h = (1.0 - z) * n + z * h
                    return (h,), h
            else:
                act = jnp.tanh if kind == "rnn_tanh" else jax.nn.relu

                def step(carry, xt, w_hh=w_hh, act=act):
                    (h,) = carry
                    h = act(xt + _dense(h, w_hh))
                    return (h,), h

            carry, ys = lax.scan(step, init, xw)
            if d == 1:
                ys = jnp.flip(ys, 0)
            outs.append(ys)
            for j, c in enumerate(carry):
                finals[j].append(c)
        x = outs[0] if dirs == 1 else jnp.concatenate(outs, axis=-1)
    out = x[:, 0] if unbatched else (jnp.swapaxes(x, 0, 1) if batch_first else x)
    states = [jnp.stack(f) for f in finals]
    if unbatched:
        states = [s[:, 0] for s in states]
    return (out, *states)


@reg("aten.lstm.input")
def lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """Multi-layer (bi)LSTM as one ``lax.scan`` per layer and direction (gates i, f, g, o)."""
    return _rnn("lstm", input, hx, params, has_biases, num_layers, bidirectional, batch_first)


@reg("aten.gru.input")
def gru(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """Multi-layer (bi)GRU as one ``lax.scan`` per layer and direction (gates r, z, n)."""
    return _rnn("gru", input, [hx], params, has_biases, num_layers, bidirectional, batch_first)


@reg("aten.rnn_tanh.input")
def rnn_tanh(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    return _rnn("rnn_tanh", input, [hx], params, has_biases, num_layers, bidirectional, batch_first)


@reg("aten.rnn_relu.input")
def rnn_relu(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    return _rnn("rnn_relu", input, [hx], params, has_biases, num_layers, bidirectional, batch_first)


# --------------------------------------------------------------------------- sampling
def _grid_unnormalize(coord, size, align_corners):
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _grid_clip(coord, size):
    # torch passes no gradient at either end (x <= 0 or x >= size - 1)
    hi = jnp.asarray(size - 1, coord.dtype)
    return jnp.where(coord <= 0, jnp.zeros((), coord.dtype), jnp.where(coord >= hi, hi, coord))


def _grid_reflect(coord, twice_low, twice_high):
    if twice_low == twice_high:
        return jnp.zeros_like(coord)
    lo = twice_low / 2
    span = (twice_high - twice_low) / 2
    c = coord - lo
    c = jnp.where(c < 0, -c, c)  # torch's slope is -1 below, +1 at and above
    extra = jnp.fmod(c, span)
    flips = jnp.floor(lax.stop_gradient(c) / span)
    return jnp.where(jnp.fmod(flips, 2) == 0, extra + lo, span - extra + lo)


def _grid_pad_coord(coord, size, padding_mode, align_corners):
    if padding_mode == 1:  # border
        return _grid_clip(coord, size)
    if padding_mode == 2:  # reflection
        if align_corners:
            coord = _grid_reflect(coord, 0, 2 * (size - 1))
        else:
            coord = _grid_reflect(coord, -1, 2 * size - 1)
        return _grid_clip(coord, size)
    return coord


def _cubic_coefficients(t, a=-0.75):
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _grid_sampler(input, grid, interpolation_mode, padding_mode, align_corners):
    """``F.grid_sample`` for 2-d and 3-d inputs: bilinear (0), nearest (1), bicubic (2, 2-d
    only) with zeros (0), border (1) or reflection (2) padding; gradients to the input and
    the grid as torch's (none through clipped coordinates, none to the grid for nearest)."""
    nd = grid.shape[-1]
    n, c = input.shape[:2]
    sizes = input.shape[2:]
    out_sp = grid.shape[1:-1]
    flat = input.reshape(n, c, -1)
    strides = [int(np.prod(sizes[a + 1 :])) for a in range(nd)]
    # grid's last axis is (x, y[, z]): x indexes the last spatial axis
    coords = [_grid_unnormalize(grid[..., nd - 1 - a], sizes[a], align_corners) for a in range(nd)]

    def fetch(idx):
        """Values at integer positions ``idx`` (per axis, ``(N, *out)``), 0 outside."""
        ok = functools.reduce(
            operator.and_, [(i >= 0) & (i < s) for i, s in zip(idx, sizes, strict=True)]
        )
        lin = sum(jnp.clip(i, 0, s - 1) * st for i, s, st in zip(idx, sizes, strides, strict=True))
        lin = jnp.broadcast_to(lin.reshape(n, 1, -1), (n, c, lin[0].size))
        vals = jnp.take_along_axis(flat, lin, axis=2).reshape((n, c) + out_sp)
        return jnp.where(ok[:, None], vals, jnp.zeros((), input.dtype))

    if interpolation_mode == 2:
        if nd != 2:
            raise UnsupportedArgumentsError("aten.grid_sampler_3d.default", _BICUBIC_3D)
        base = [jnp.floor(x) for x in coords]
        wts = [_cubic_coefficients(x - b) for x, b in zip(coords, base, strict=True)]
        base = [lax.stop_gradient(b) for b in base]
        out = jnp.zeros((n, c) + out_sp, input.dtype)
        for i in range(4):  # rows (y)
            for j in range(4):  # columns (x)
                taps = [
                    _grid_pad_coord(base[0] - 1 + i, sizes[0], padding_mode, align_corners),
                    _grid_pad_coord(base[1] - 1 + j, sizes[1], padding_mode, align_corners),
                ]
                idx = [jnp.trunc(t).astype(jnp.int32) for t in taps]
                out = out + (wts[0][i] * wts[1][j])[:, None] * fetch(idx)
        return out
    coords = [
        _grid_pad_coord(x, s, padding_mode, align_corners)
        for x, s in zip(coords, sizes, strict=True)
    ]
    if interpolation_mode == 1:
        return fetch([jnp.round(lax.stop_gradient(x)).astype(jnp.int32) for x in coords])
    lo = [jnp.floor(lax.stop_gradient(x)) for x in coords]
    out = jnp.zeros((n, c) + out_sp, input.dtype)
    for corner in np.ndindex(*(2,) * nd):
        w = functools.reduce(
            operator.mul,
            [(x - f) if bit else (f + 1 - x) for x, f, bit in zip(coords, lo, corner, strict=True)],
        )
        idx = [(f + bit).astype(jnp.int32) for f, bit in zip(lo, corner, strict=True)]
        out = out + w[:, None] * fetch(idx)
    return out


reg("aten.grid_sampler_2d.default", "aten.grid_sampler_3d.default", "aten.grid_sampler.default")(
    _grid_sampler
)


# --------------------------------------------------------------------------- scatter-reduce
def _scatter_grids(index, d):
    grids = jnp.meshgrid(*[jnp.arange(s) for s in index.shape], indexing="ij")
    grids[d] = index
    return tuple(grids)


def _scatter_prod(self, d, index, src, include_self):
    """Products by a dense one-hot over the scattered axis (JAX's scatter-multiply has no
    gradient for repeated indices; ``jnp.prod``'s handles zeros as torch does)."""
    region = tuple(slice(None) if i == d else slice(0, s) for i, s in enumerate(index.shape))
    sub = self[region]
    idx = jnp.moveaxis(index, d, -1)
    hit = idx[..., :, None] == _lift(jnp.arange(self.shape[d]), idx.ndim + 1)  # (..., m, n)
    vals = jnp.moveaxis(src[tuple(slice(0, s) for s in index.shape)], d, -1)
    prod_ = jnp.prod(jnp.where(hit, vals[..., None], jnp.ones((), self.dtype)), axis=-2)
    prod_ = jnp.moveaxis(prod_, -1, d)
    if not include_self:
        touched = jnp.moveaxis(jnp.any(hit, axis=-2), -1, d)
        sub = jnp.where(touched, jnp.ones((), self.dtype), sub)
    return self.at[region].set(sub * prod_)


@reg("aten.scatter_reduce.two")
def scatter_reduce(self, dim, index, src, reduce, *, include_self=True):
    """``self.scatter_reduce(dim, index, src, reduce, include_self=...)`` for ``sum``,
    ``prod``, ``mean``, ``amax`` and ``amin``; ties of ``amax``/``amin`` share the gradient
    evenly, as in torch."""
    d = _axis(dim, self.ndim)
    if index.size == 0:
        return self
    if reduce == "prod":
        return _scatter_prod(self, d, index, src, include_self)
    idx = _scatter_grids(index, d)
    src = src[tuple(slice(0, s) for s in index.shape)]
    if reduce in ("sum", "mean"):
        base = self if include_self else self.at[idx].set(0)
        out = base.at[idx].add(src)
        if reduce == "sum":
            return out
        cnt = jnp.zeros(self.shape, self.dtype).at[idx].add(1) + (1 if include_self else 0)
        cnt = jnp.where(cnt == 0, jnp.ones((), self.dtype), cnt)
        if jnp.issubdtype(self.dtype, jnp.integer):
            return jnp.floor_divide(out, cnt)
        return out / cnt
    if reduce in ("amax", "amin"):
        big = jnp.inf if jnp.issubdtype(self.dtype, jnp.floating) else jnp.iinfo(self.dtype).max
        base = self if include_self else self.at[idx].set(-big if reduce == "amax" else big)
        return base.at[idx].max(src) if reduce == "amax" else base.at[idx].min(src)
    raise UnsupportedArgumentsError("aten.scatter_reduce.two", f"reduce={reduce!r}")


@reg("aten.index_reduce.default")
def index_reduce(self, dim, index, source, reduce, *, include_self=True):
    """``self.index_reduce(dim, index, source, reduce)``: slice ``i`` of ``source`` along
    ``dim`` reduced into slice ``index[i]`` of ``self`` (``prod``, ``mean``, ``amax``,
    ``amin``)."""
    d = _axis(dim, self.ndim)
    shape = [1] * source.ndim
    if source.ndim:
        shape[d] = -1
    full = jnp.broadcast_to(index.reshape(shape), source.shape)
    return scatter_reduce(self, d, full, source, reduce, include_self=include_self)


# --------------------------------------------------------------------------- embedding bag
@reg("aten._embedding_bag.default", "aten._embedding_bag_forward_only.default")
def embedding_bag(
    weight,
    indices,
    offsets,
    scale_grad_by_freq=False,
    mode=0,
    sparse=False,
    per_sample_weights=None,
    include_last_offset=False,
    padding_idx=-1,
):
    """``nn.EmbeddingBag``: sum (0), mean (1) or max (2) of the rows of each bag; entries
    equal to ``padding_idx`` are left out (and do not count in the mean); an empty bag is 0.

    Returns ``(output, offset2bag, bag_size, max_indices)`` as torch's op (only ``output``
    is differentiable)."""
    n = indices.shape[0]
    nb = offsets.shape[0] - (1 if include_last_offset else 0)
    bag = jnp.searchsorted(offsets, jnp.arange(n, dtype=offsets.dtype), side="right") - 1
    bag = bag.astype(jnp.int32)
    keep = (
        indices != padding_idx
        if padding_idx is not None and padding_idx >= 0
        else jnp.ones((n,), jnp.bool_)
    )
    rows = jnp.take(weight, indices, axis=0)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights[:, None].astype(rows.dtype)
    zero = jnp.zeros((), rows.dtype)
    size = jax.ops.segment_sum(keep.astype(jnp.int32), bag, nb)
    max_idx = jnp.zeros((nb,), _int_dtype())
    if mode == 2:
        big = jnp.where(keep[:, None], rows, -jnp.inf)
        out = jax.ops.segment_max(big, bag, nb)
        out = jnp.where((size > 0)[:, None], out, zero)
        at_max = (rows == jnp.take(out, jnp.clip(bag, 0, nb - 1), axis=0)) & keep[:, None]
        max_idx = jax.ops.segment_max(jnp.where(at_max, indices[:, None], -1), bag, nb)
        max_idx = jnp.where((size > 0)[:, None], max_idx, 0).astype(_int_dtype())
    else:
        out = jax.ops.segment_sum(jnp.where(keep[:, None], rows, zero), bag, nb)
        if mode == 1:
            out = out / jnp.maximum(size, 1).astype(out.dtype)[:, None]
    return out, bag.astype(_int_dtype()), size.astype(_int_dtype()), max_idx


# --------------------------------------------------------------------------- antialiasing
def _area_scale(n_in, n_out, align_corners, scale):
    if align_corners:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return 1.0 / scale if scale is not None and scale > 0 else n_in / n_out


def _aa_linear(x):
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _aa_cubic(x, a=-0.5):
    x = abs(x)
    if x < 1.0:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _aa_weights(n_in, n_out, align_corners, scale, interp_size, filt):
    """torch's antialiased resampling weights along one axis, ``(n_in, n_out)``."""
    s = _area_scale(n_in, n_out, align_corners, scale)
    support = interp_size * 0.5 * s if s >= 1.0 else interp_size * 0.5
    inv = 1.0 / s if s >= 1.0 else 1.0
    m = np.zeros((n_in, n_out), np.float64)
    for i in range(n_out):
        center = s * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = np.array([filt((j + lo - center + 0.5) * inv) for j in range(hi - lo)])
        if w.sum() != 0:
            w = w / w.sum()
        m[lo:hi, i] = w
    return m


def _upsample_aa(interp_size, filt):
    def lowering(self, output_size, align_corners, scales_h=None, scales_w=None):
        x = self
        for ax, o, sc in (
            (self.ndim - 2, output_size[0], scales_h),
            (self.ndim - 1, output_size[1], scales_w),
        ):
            m = _aa_weights(self.shape[ax], o, align_corners, sc, interp_size, filt)
            x = jnp.moveaxis(jnp.tensordot(x, jnp.asarray(m, x.dtype), axes=([ax], [0])), -1, ax)
        return x

    def vec(input, output_size, align_corners, scale_factors):
        if output_size is None:
            output_size = [
                int(math.floor(n * s)) for n, s in zip(input.shape[-2:], scale_factors, strict=True)
            ]
        sh, sw = scale_factors if scale_factors is not None else (None, None)
        return lowering(input, output_size, align_corners, sh, sw)

    return lowering, vec


LOWERINGS["aten._upsample_bilinear2d_aa.default"], LOWERINGS["aten._upsample_bilinear2d_aa.vec"] = (
    _upsample_aa(2, _aa_linear)
)
LOWERINGS["aten._upsample_bicubic2d_aa.default"], LOWERINGS["aten._upsample_bicubic2d_aa.vec"] = (
    _upsample_aa(4, _aa_cubic)
)


# --------------------------------------------------------------------------- distances
@reg("aten._cdist_forward.default")
def cdist(x1, x2, p, compute_mode=None):
    """``torch.cdist``: p-norm distances between the rows of ``x1`` and of ``x2`` (a zero
    distance has gradient 0, as in torch)."""
    return linalg_vector_norm(x1[..., :, None, :] - x2[..., None, :, :], p, -1)


@reg("aten._pdist_forward.default")
def pdist(self, p=2.0):
    """``F.pdist``: distances between rows ``i < j``, in row-major order."""
    i, j = np.triu_indices(self.shape[0], 1)
    return linalg_vector_norm(jnp.take(self, i, axis=0) - jnp.take(self, j, axis=0), p, -1)


@reg("aten.unfold.default")
def unfold(self, dimension, size, step):
    """``x.unfold(dim, size, step)``: windows along ``dim``, the window axis last."""
    if self.ndim == 0:
        return jnp.reshape(self, (1,))[:size]
    d = _axis(dimension, self.ndim)
    count = (self.shape[d] - size) // step + 1
    pos = np.arange(count)[:, None] * step + np.arange(size)[None, :]
    return jnp.moveaxis(jnp.take(self, jnp.asarray(pos, jnp.int32), axis=d), d + 1, -1)


# --------------------------------------------------------------------------- order statistics
def _along(d, nd):
    shape = [1] * nd
    shape[d] = -1
    return shape


def _cum_extreme(self, dim, greater):
    if self.ndim == 0:
        return self, jnp.zeros((), _int_dtype())
    d = _axis(dim, self.ndim)
    x = lax.stop_gradient(self)
    pos = jnp.broadcast_to(jnp.arange(x.shape[d]).reshape(_along(d, x.ndim)), x.shape)

    def pick(a, b):  # b is the later run: it wins ties (torch's >=) and NaN wins (last NaN)
        (av, ai), (bv, bi) = a, b
        better = (bv >= av) if greater else (bv <= av)
        take = jnp.isnan(bv) | (~jnp.isnan(av) & better)
        return jnp.where(take, bv, av), jnp.where(take, bi, ai)

    _, i = lax.associative_scan(pick, (x, pos), axis=d)
    return jnp.take_along_axis(self, i, axis=d), i.astype(_int_dtype())


@reg("aten.cummax.default")
def cummax(self, dim):
    """Running maximum and its index (the latest of ties; NaN propagates); the gradient goes
    to the indexed entries, as in torch."""
    return _cum_extreme(self, dim, True)


@reg("aten.cummin.default")
def cummin(self, dim):
    return _cum_extreme(self, dim, False)


def _order(x, d):
    """Stable ascending order along ``d`` with every NaN after +inf (torch's sort)."""
    x = lax.stop_gradient(x)
    nan = jnp.isnan(x)
    return jnp.lexsort((nan, jnp.where(nan, jnp.inf, x)), axis=d)


def _pick(self, idx, d, keepdim):
    vals = jnp.take_along_axis(self, idx, axis=d)
    idx = idx.astype(_int_dtype())
    if not keepdim:
        vals, idx = jnp.squeeze(vals, d), jnp.squeeze(idx, d)
    return vals, idx


def _median_dim(self, dim, keepdim, ignore_nan):
    if self.ndim == 0:
        return self, jnp.zeros((), _int_dtype())
    d = _axis(dim, self.ndim)
    n = self.shape[d]
    order = _order(self, d)
    nan = jnp.sum(jnp.isnan(lax.stop_gradient(self)), axis=d, keepdims=True)
    if ignore_nan:  # the lower median of the non-NaN entries (the first NaN if all are)
        k = jnp.maximum((n - nan - 1) // 2, 0)
    else:  # the lower median, or the first NaN
        k = jnp.where(nan > 0, n - nan, (n - 1) // 2)
    return _pick(self, jnp.take_along_axis(order, k, axis=d), d, keepdim)


def _evenly(self, value):
    """``value`` (an entry of ``self``) whose gradient is shared evenly by every entry equal
    to it (torch's rule for ``median()`` without a dim)."""
    v = lax.stop_gradient(value)
    hit = jnp.where(jnp.isnan(v), jnp.isnan(self), self == v)
    s = div(jnp.sum(jnp.where(hit, self, jnp.zeros((), self.dtype))), jnp.sum(hit))
    return v + (s - lax.stop_gradient(s)).astype(self.dtype)


@reg("aten.median.dim")
def median_dim(self, dim, keepdim=False):
    """Lower median along ``dim`` and its index (NaN if the slice has one)."""
    return _median_dim(self, dim, keepdim, False)


@reg("aten.nanmedian.dim")
def nanmedian_dim(self, dim, keepdim=False):
    return _median_dim(self, dim, keepdim, True)


@reg("aten.median.default")
def median(self):
    return _evenly(self, _median_dim(self.reshape(-1), 0, False, False)[0])


@reg("aten.nanmedian.default")
def nanmedian(self):
    return _evenly(self, _median_dim(self.reshape(-1), 0, False, True)[0])


@reg("aten.kthvalue.default")
def kthvalue(self, k, dim=-1, keepdim=False):
    """The ``k``-th smallest entry along ``dim`` (1-based) and its index (the first of
    ties)."""
    if self.ndim == 0:
        return self, jnp.zeros((), _int_dtype())
    d = _axis(dim, self.ndim)
    return _pick(self, lax.slice_in_dim(_order(self, d), k - 1, k, axis=d), d, keepdim)


@reg("aten.mode.default")
def mode(self, dim=-1, keepdim=False):
    """The most frequent entry along ``dim`` (the smallest of equally frequent ones) and the
    index of its last occurrence, as torch (pairwise comparison: memory ``n^2`` per slice)."""
    if self.ndim == 0:
        return self, jnp.zeros((), _int_dtype())
    d = _axis(dim, self.ndim)
    x = jnp.moveaxis(lax.stop_gradient(self), d, -1)
    count = jnp.sum(x[..., :, None] == x[..., None, :], axis=-1)
    best = count == jnp.max(count, axis=-1, keepdims=True)
    value = jnp.min(jnp.where(best, x, jnp.inf), axis=-1, keepdims=True)
    pos = jnp.max(jnp.where(x == value, jnp.arange(x.shape[-1]), -1), axis=-1, keepdims=True)
    pos = jnp.maximum(pos, 0)
    return _pick(self, jnp.moveaxis(pos, -1, d), d, keepdim)


# --------------------------------------------------------------------------- binning
def _search(seq, x, side):
    if seq.ndim <= 1:
        return jnp.searchsorted(seq, x, side=side)
    lead = seq.shape[:-1]
    flat = jax.vmap(lambda s, v: jnp.searchsorted(s, v, side=side))(
        seq.reshape((-1, seq.shape[-1])), x.reshape((int(np.prod(lead)), -1))
    )
    return flat.reshape(x.shape)


@reg("aten.bucketize.Tensor", "aten.bucketize.Scalar")
def bucketize(self, boundaries, *, out_int32=False, right=False):
    """Index of each entry's bucket: ``boundaries[i-1] < x <= boundaries[i]`` (``right``:
    ``<= x <``)."""
    out = jnp.searchsorted(boundaries, jnp.asarray(self), side="right" if right else "left")
    return out.astype(jnp.int32 if out_int32 else _int_dtype())


@reg("aten.searchsorted.Tensor", "aten.searchsorted.Scalar")
def searchsorted(sorted_sequence, self, *, out_int32=False, right=False, side=None, sorter=None):
    """Insertion points into the last axis of ``sorted_sequence`` (leading axes batched)."""
    side = side or ("right" if right else "left")
    seq = sorted_sequence
    if sorter is not None:
        seq = jnp.take_along_axis(seq, sorter, axis=-1)
    out = _search(seq, jnp.asarray(self, seq.dtype), side)
    return out.astype(jnp.int32 if out_int32 else _int_dtype())


# --------------------------------------------------------------------------- 0-d tensors
def _scalar_as_vector(fn: Callable[..., Any]) -> Callable[..., Any]:
    """torch accepts ``dim=0`` or ``-1`` on a 0-d tensor (a one-element axis); JAX has no
    axis there. Run the op on a 1-element vector and give 0-d results back."""

    @functools.wraps(fn)
    def lowering(self, *args, **kwargs):
        if not (isinstance(self, jax.Array) and self.ndim == 0):
            return fn(self, *args, **kwargs)
        args = [a.reshape(1) if isinstance(a, jax.Array) and a.ndim == 0 else a for a in args]
        out = fn(self.reshape(1), *args, **kwargs)
        return jax.tree.map(lambda o: o.reshape(()) if o.size == 1 else o, out)

    return lowering


for _name in (
    "sum.dim_IntList",
    "mean.dim",
    "prod.dim_int",
    "amax.default",
    "amin.default",
    "max.dim",
    "min.dim",
    "argmax.default",
    "argmin.default",
    "var.correction",
    "var.dim",
    "std.correction",
    "std.dim",
    "var_mean.correction",
    "any.dim",
    "any.dims",
    "all.dim",
    "all.dims",
    "logsumexp.default",
    "cumsum.default",
    "cumprod.default",
    "linalg_vector_norm.default",
    "topk.default",
    "sort.default",
    "sort.stable",
    "argsort.default",
    "argsort.stable",
    "_softmax.default",
    "softmax.int",
    "_safe_softmax.default",
    "_log_softmax.default",
    "log_softmax.int",
    "index_select.default",
    "gather.default",
    "scatter.src",
    "scatter.value",
    "scatter_add.default",
    "scatter_reduce.two",
    "index_reduce.default",
    "flip.default",
    "roll.default",
    "transpose.int",
):
    LOWERINGS[f"aten.{_name}"] = _scalar_as_vector(LOWERINGS[f"aten.{_name}"])


# --------------------------------------------------------------------------- linear algebra
# torch.export writes these ops' error checks as ``with_effects(token,
# aten._linalg_check_errors, info, ...)``; the check has nothing to do in a traced program
# (JAX returns NaN where torch would raise), so it is a no-op and ``info`` is 0.
LOWERINGS["aten._linalg_check_errors.default"] = _nothing


@reg("torch.ops.higher_order.with_effects")
def with_effects(token, op, *args, **kwargs):
    """``with_effects(token, op, *args)``: ``(token, *op(*args))`` with ``op`` lowered."""
    out = LOWERINGS[str(op)](*args, **kwargs)
    if out is None:
        return (token,)
    return (token, *out) if isinstance(out, (tuple, list)) else (token, out)


def _info(a):
    return jnp.zeros(a.shape[:-2], jnp.int32)


@reg("aten.linalg_inv_ex.default")
def linalg_inv_ex(A, *, check_errors=False):
    return jnp.linalg.inv(A), _info(A)


@reg("aten.linalg_cholesky_ex.default")
def linalg_cholesky_ex(self, *, upper=False, check_errors=False):
    """Lower Cholesky factor (upper: its transpose). The value reads the lower triangle
    (as torch); the gradient is symmetric, as torch's (that of ``(A + A^T) / 2``)."""
    lower = jnp.tril(self) + jnp.swapaxes(jnp.tril(self, -1), -1, -2)
    half = (self + jnp.swapaxes(self, -1, -2)) / 2
    sym = half + lax.stop_gradient(lower - half)
    factor = lax.linalg.cholesky(sym, symmetrize_input=False)
    return (jnp.swapaxes(factor, -1, -2) if upper else factor), _info(self)


def _lu(A):
    lu, piv, _ = lax.linalg.lu(A)
    return lu, (piv + 1).astype(jnp.int32)  # torch's pivots count from 1


@reg("aten.linalg_lu_factor_ex.default")
def linalg_lu_factor_ex(A, *, pivot=True, check_errors=False):
    if not pivot:
        raise UnsupportedArgumentsError("aten.linalg_lu_factor_ex.default", "pivot=False")
    lu, piv = _lu(A)
    return lu, piv, _info(A)


@reg("aten._linalg_solve_ex.default")
def linalg_solve_ex_lu(A, B, *, left=True, check_errors=False):
    """``A X = B`` (``left=False``: ``X A = B``); ``B`` of ``A``'s batch shape is a vector
    right-hand side, as in torch. Returns ``(X, LU, pivots, info)``."""
    vector = B.ndim == 1 or (B.ndim == A.ndim - 1 and B.shape == A.shape[:-1])
    b = B[..., None] if vector else B
    if left:
        x = (
            jnp.linalg.solve(A, b)
            if not vector or b.ndim == A.ndim
            else jnp.linalg.solve(A, jnp.broadcast_to(b, A.shape[:-2] + b.shape[-2:]))
        )
    else:
        x = jnp.swapaxes(jnp.linalg.solve(jnp.swapaxes(A, -1, -2), jnp.swapaxes(b, -1, -2)), -1, -2)
    x = x[..., 0] if vector else x
    lu, piv = _lu(A)
    return x, lu, piv, _info(A)


@reg("aten.linalg_solve_ex.default")
def linalg_solve_ex(A, B, *, left=True, check_errors=False):
    """``torch.linalg.solve_ex``: ``(X, info)``."""
    x, _, _, info = linalg_solve_ex_lu(A, B, left=left)
    return x, info


# --------------------------------------------------------------------------- small extras
# the *_copy forms of view ops compute the same values as the views
for _view in (
    "view.default",
    "permute.default",
    "unbind.int",
    "narrow.default",
    "expand.default",
    "transpose.int",
    "select.int",
    "slice.Tensor",
    "squeeze.default",
    "squeeze.dim",
    "squeeze.dims",
    "unsqueeze.default",
    "diagonal.default",
    "alias.default",
    "t.default",
):
    _base, _ov = _view.split(".")
    LOWERINGS[f"aten.{_base}_copy.{_ov}"] = LOWERINGS[f"aten.{_view}"]


@reg("aten.logcumsumexp.default")
def logcumsumexp(self, dim):
    if self.ndim == 0:
        return self
    return lax.cumlogsumexp(self, axis=_axis(dim, self.ndim))


@reg("aten.diagonal_scatter.default")
def diagonal_scatter(self, src, offset=0, dim1=0, dim2=1):
    """``self`` with its ``offset`` diagonal over ``(dim1, dim2)`` replaced by ``src``."""
    d1, d2 = _axis(dim1, self.ndim), _axis(dim2, self.ndim)
    x = jnp.moveaxis(self, (d1, d2), (-2, -1))
    n = src.shape[-1]
    i = np.arange(n)
    x = x.at[..., i + max(-offset, 0), i + max(offset, 0)].set(src.astype(self.dtype))
    return jnp.moveaxis(x, (-2, -1), (d1, d2))


@reg("aten.dist.default")
def dist(self, other, p=2):
    """``torch.dist``: the p-norm of ``self - other`` over all entries."""
    return linalg_vector_norm(sub(self, other), p)


@reg("aten.scatter.reduce", "aten.scatter.value_reduce")
def scatter_reduce_legacy(self, dim, index, src, *, reduce):
    """``scatter(..., reduce="add" | "multiply")`` (the older API)."""
    if not isinstance(src, jax.Array):
        src = jnp.full(index.shape, src, self.dtype)
    kind = {"add": "sum", "multiply": "prod"}.get(reduce)
    if kind is None:
        raise UnsupportedArgumentsError("aten.scatter.reduce", f"reduce={reduce!r}")
    return scatter_reduce(self, dim, index, src, kind)


for _name, _fn in {
    "special_ndtri": jax.scipy.special.ndtri,
    "i0": jax.scipy.special.i0,
    "special_i0e": jax.scipy.special.i0e,
    "special_i1": jax.scipy.special.i1,
    "special_i1e": jax.scipy.special.i1e,
}.items():
    _unary(_name, _fn)
