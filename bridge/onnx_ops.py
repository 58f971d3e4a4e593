"""The ONNX lowering table: one JAX function per ONNX operator (default domain, opset 13+).

Every lowering is called as ``fn(*inputs, **attributes)``: the node's inputs in ONNX order
(``None`` for an omitted optional input) and its attributes as Python values (tensors as
NumPy arrays). Shapes are static under ``jax.jit``, so shape arithmetic stays in NumPy: an
operator whose inputs are all NumPy arrays (constants, ``Shape`` outputs) computes with
NumPy, which keeps ``Reshape``/``Slice``/``Expand`` targets concrete while the batch
dimension stays dynamic. Anything that touches a traced array computes with ``jax.numpy``.

Convolution, pooling, interpolation helpers and the recurrent ``lax.scan`` are shared with
the torch front end (:mod:`jaxattr.bridge.lowerings`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax import lax

from . import lowerings as L
from .errors import BridgeError, UnsupportedOpsError

__all__ = [
    "ONNX_LOWERINGS",
    "STATIC_INPUTS",
    "ConcreteInputError",
    "register_onnx_lowering",
    "onnx_dtype",
]


class ConcreteInputError(BridgeError, TypeError):
    """A shape, axes, pads, scales, ``k`` ... input of an ONNX node is not a concrete value.

    JAX compiles for fixed shapes, so such inputs must be known when the graph is traced:
    constants, values computed from constants or from ``Shape``, or graph inputs given as
    concrete arrays at call time (the compiled program specializes on their values). Raised
    when one is a traced value (the model called inside ``jax.jit``/``vmap``/``grad`` with that
    input traced) or is computed from data; the message names the node and the input.
    """


#: ONNX op type -> lowering ``fn(*inputs, **attributes)``.
ONNX_LOWERINGS: dict[str, Callable[..., Any]] = {}

#: op type -> input positions that must be known when the graph is traced (shapes, axes,
#: pads, scales). An initializer used only there is a constant, not a parameter.
STATIC_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Slice": (1, 2, 3, 4),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Split": (1,),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Pad": (1, 3),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "TopK": (1,),
    "CumSum": (1,),
    "CumProd": (1,),
    "OneHot": (1,),
    "Trilu": (1,),
    "Dropout": (1, 2),
    "ReduceSum": (1,),
    "ReduceMean": (1,),
    "ReduceMax": (1,),
    "LSTM": (4,),
    "GRU": (4,),
    "RNN": (4,),
    "HannWindow": (0,),
    "HammingWindow": (0,),
    "BlackmanWindow": (0,),
    "ReduceMin": (1,),
    "ReduceProd": (1,),
    "ReduceL1": (1,),
    "ReduceL2": (1,),
    "ReduceSumSquare": (1,),
    "ReduceLogSumExp": (1,),
    "ReduceLogSum": (1,),
}


def register_onnx_lowering(*op_types: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(*inputs, **attributes)`` as the JAX lowering of ONNX operators.

    Args:
        *op_types: ONNX operator names in the default domain, e.g. ``"Celu"``; for another
            domain write ``"domain::Op"`` (``"com.microsoft::FusedGemm"``).

    Returns:
        A decorator that stores the function and returns it unchanged.

    Example:
        >>> from jaxattr import bridge
        >>> @bridge.register_onnx_lowering("com.example::Shrink")
        ... def shrink(x, *, bias=0.0, lambd=0.5):
        ...     return jnp.where(x < -lambd, x + bias, jnp.where(x > lambd, x - bias, 0.0))
    """
    if not op_types:
        raise ValueError("register_onnx_lowering: op_types must name at least one op, got none")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in op_types:
            ONNX_LOWERINGS[n] = fn
        return fn

    return deco


reg = register_onnx_lowering

# --------------------------------------------------------------------------- helpers
#: TensorProto element type -> NumPy dtype
_NP_DTYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
}


def onnx_dtype(elem_type: int, *, traced: bool = True) -> Any:
    """The dtype for an ONNX element type (JAX's for traced values, NumPy's for static).

    Args:
        elem_type: ``onnx.TensorProto`` data type number (1 float, 7 int64, 16 bfloat16).
        traced: JAX dtype (int64 -> int32 and float64 -> float32 unless x64 is on).

    Returns:
        A dtype.

    Example:
        >>> onnx_dtype(7, traced=False)
        <class 'numpy.int64'>
    """
    if elem_type == 16:
        return jnp.bfloat16
    if elem_type not in _NP_DTYPES:
        raise NotImplementedError(f"ONNX element type {elem_type} has no JAX equivalent here")
    dt = _NP_DTYPES[elem_type]
    if traced and not jax.config.jax_enable_x64:
        dt = {np.int64: np.int32, np.float64: np.float32, np.uint64: np.uint32}.get(dt, dt)
    return dt


def _traced(*xs: Any) -> bool:
    return any(isinstance(x, jax.Array) for x in xs if x is not None)


def _xp(*xs: Any) -> Any:
    return jnp if _traced(*xs) else np


def _concrete(v: Any) -> np.ndarray:
    """A shape-like value as a NumPy array; a traced one raises :class:`ConcreteInputError`."""
    if isinstance(v, jax.core.Tracer):
        raise ConcreteInputError(
            "a shape, axes, pads, scales or count input is a traced value; it must be "
            "concrete when the graph is traced"
        )
    return np.asarray(v)


def _ints(v: Any) -> list[int]:
    """A static int vector (NumPy array, list or scalar) as a list of Python ints."""
    if v is None:
        return []
    return [int(a) for a in _concrete(v).reshape(-1)]


def _axis(a: int, nd: int) -> int:
    return a + nd if a < 0 else a


def _np_result(x: Any) -> Any:
    return np.asarray(x) if not isinstance(x, jax.Array) else x


def _ranked(*xs: Any) -> list[Any]:
    """``xs`` with leading size-1 axes up to their largest number of axes: ONNX's
    multidirectional (NumPy) broadcasting aligns shapes at their last axis, and jnp is
    not left to do so implicitly (it runs under ``jax_numpy_rank_promotion="raise"`` too)."""
    nd = max((np.ndim(x) for x in xs if x is not None), default=0)
    return [L._lift(x, nd) for x in xs]


def _bcast(op: Callable[..., Any]) -> Callable[..., Any]:
    """``op`` on operands of aligned ranks (:func:`_ranked`)."""
    return lambda *xs: op(*_ranked(*xs))


_add, _mul = _bcast(jnp.add), _bcast(jnp.multiply)


# --------------------------------------------------------------------------- elementwise
def _binary(np_fn: Callable[..., Any], jnp_fn: Callable[..., Any]) -> Callable[..., Any]:
    def fn(a, b):
        return _np_result(np_fn(a, b)) if not _traced(a, b) else jnp_fn(*_ranked(a, b))

    return fn


def _int_div(a, b):
    if np.issubdtype(np.asarray(a).dtype, np.integer):
        q = np.abs(a) // np.abs(b)
        return (q * np.sign(a) * np.sign(b)).astype(np.asarray(a).dtype)
    return np.divide(a, b)


def _jdiv(a, b):
    if jnp.issubdtype(jnp.result_type(a), jnp.integer) and jnp.issubdtype(
        jnp.result_type(b), jnp.integer
    ):
        return lax.div(*jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b)))
    return jnp.divide(a, b)


for _name, _np_fn, _j_fn in (
    ("Add", np.add, jnp.add),
    ("Sub", np.subtract, jnp.subtract),
    ("Mul", np.multiply, jnp.multiply),
    ("Div", _int_div, _jdiv),
    ("Equal", np.equal, jnp.equal),
    ("Less", np.less, jnp.less),
    ("LessOrEqual", np.less_equal, jnp.less_equal),
    ("Greater", np.greater, jnp.greater),
    ("GreaterOrEqual", np.greater_equal, jnp.greater_equal),
    ("And", np.logical_and, jnp.logical_and),
    ("Or", np.logical_or, jnp.logical_or),
    ("Xor", np.logical_xor, jnp.logical_xor),
    ("BitwiseAnd", np.bitwise_and, jnp.bitwise_and),
    ("BitwiseOr", np.bitwise_or, jnp.bitwise_or),
    ("BitwiseXor", np.bitwise_xor, jnp.bitwise_xor),
):
    ONNX_LOWERINGS[_name] = _binary(_np_fn, _j_fn)


@reg("Pow")
def pow_(a, b):
    # the output has the base's type (an int base with a float exponent stays int)
    if _traced(a, b):
        # the power in the type jnp promotes the two to (made explicit), cast to the base's
        with jax.numpy_dtype_promotion("standard"):
            both = jnp.result_type(a, b)
        base, exponent = _ranked(jnp.asarray(a).astype(both), jnp.asarray(b).astype(both))
        return jnp.power(base, exponent).astype(jnp.result_type(a))
    return np.asarray(np.power(a, b)).astype(np.asarray(a).dtype)


@reg("Mod")
def mod(a, b, *, fmod=0):
    xp = _xp(a, b)
    if xp is jnp:
        a, b = _ranked(a, b)
    return _np_result((xp.fmod if fmod else xp.mod)(a, b))


def _unary(np_fn: Callable[..., Any] | None, jnp_fn: Callable[..., Any]) -> Callable[..., Any]:
    def fn(x):
        if np_fn is not None and not _traced(x):
            return _np_result(np_fn(x))
        return jnp_fn(x)

    return fn


for _name, _np_fn, _j_fn in (
    ("Neg", np.negative, jnp.negative),
    ("Abs", np.abs, jnp.abs),
    ("Sqrt", np.sqrt, jnp.sqrt),
    ("Exp", np.exp, jnp.exp),
    ("Log", np.log, jnp.log),
    ("Reciprocal", np.reciprocal, jnp.reciprocal),
    ("Floor", np.floor, jnp.floor),
    ("Ceil", np.ceil, jnp.ceil),
    ("Round", np.round, jnp.round),
    ("Sign", np.sign, jnp.sign),
    ("Sin", np.sin, jnp.sin),
    ("Cos", np.cos, jnp.cos),
    ("Tan", np.tan, jnp.tan),
    ("Asin", np.arcsin, jnp.arcsin),
    ("Acos", np.arccos, jnp.arccos),
    ("Atan", np.arctan, jnp.arctan),
    ("Sinh", np.sinh, jnp.sinh),
    ("Cosh", np.cosh, jnp.cosh),
    ("Not", np.logical_not, jnp.logical_not),
    ("IsNaN", np.isnan, jnp.isnan),
    ("Tanh", np.tanh, jnp.tanh),
    ("Asinh", np.arcsinh, jnp.arcsinh),
    ("Acosh", np.arccosh, jnp.arccosh),
    ("Atanh", np.arctanh, jnp.arctanh),
    ("BitwiseNot", np.bitwise_not, jnp.bitwise_not),
    ("Erf", None, jax.scipy.special.erf),
    ("Sigmoid", None, jax.nn.sigmoid),
    ("Relu", None, jax.nn.relu),
    ("Softsign", None, jax.nn.soft_sign),
    ("Mish", None, lambda x: x * jnp.tanh(jax.nn.softplus(x))),
    ("HardSwish", None, L.hardswish),
):
    ONNX_LOWERINGS[_name] = _unary(_np_fn, _j_fn)


@reg("Identity")
def identity(x):
    return x


@reg("IsInf")
def isinf(x, *, detect_negative=1, detect_positive=1):
    xp = _xp(x)
    pos = xp.isposinf(x) if detect_positive else xp.zeros(xp.shape(x), bool)
    neg = xp.isneginf(x) if detect_negative else xp.zeros(xp.shape(x), bool)
    return xp.logical_or(pos, neg)


@reg("LeakyRelu")
def leaky_relu(x, *, alpha=0.01):
    return jax.nn.leaky_relu(x, alpha)


@reg("Elu")
def elu(x, *, alpha=1.0):
    return jax.nn.elu(x, alpha)


@reg("Celu")
def celu(x, *, alpha=1.0):
    return jax.nn.celu(x, alpha)


@reg("Selu")
def selu(x, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    return gamma * jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0.0)))


@reg("ThresholdedRelu")
def thresholded_relu(x, *, alpha=1.0):
    return jnp.where(x > alpha, x, 0.0)


@reg("Gelu")
def gelu(x, *, approximate="none"):
    return jax.nn.gelu(x, approximate=approximate == "tanh")


@reg("Softplus")
def softplus(x):
    return jax.nn.softplus(x)


@reg("HardSigmoid")
def hard_sigmoid(x, *, alpha=0.2, beta=0.5):
    return jnp.clip(alpha * x + beta, 0.0, 1.0)


@reg("PRelu")
def prelu(x, slope):
    return jnp.where(x >= 0, x, _mul(slope, x))


@reg("Clip")
def clip(x, min=None, max=None):  # noqa: A002 - ONNX input names
    xp = _xp(x, min, max)
    if xp is jnp:
        x, min, max = _ranked(x, min, max)  # noqa: A001
    return _np_result(xp.clip(x, min, max)) if (min is not None or max is not None) else x


@reg("Where")
def where(cond, a, b):
    xp = _xp(cond, a, b)
    return _np_result(xp.where(cond, a, b))


def _variadic(np_fn, jnp_fn):
    def fn(*xs):
        xp_fn = _bcast(jnp_fn) if _traced(*xs) else np_fn
        out = xs[0]
        for x in xs[1:]:
            out = xp_fn(out, x)
        return _np_result(out)

    return fn


ONNX_LOWERINGS["Max"] = _variadic(np.maximum, jnp.maximum)
ONNX_LOWERINGS["Min"] = _variadic(np.minimum, jnp.minimum)
ONNX_LOWERINGS["Sum"] = _variadic(np.add, jnp.add)


@reg("Mean")
def mean_(*xs):
    return ONNX_LOWERINGS["Sum"](*xs) / len(xs)


#: float8 element types: a saturating cast (clip to the finite range, then round to nearest
#: even with ml_dtypes) is exactly what onnxruntime computes
_FLOAT8 = {
    17: ("FLOAT8E4M3FN", ml_dtypes.float8_e4m3fn),
    18: ("FLOAT8E4M3FNUZ", ml_dtypes.float8_e4m3fnuz),
    19: ("FLOAT8E5M2", ml_dtypes.float8_e5m2),
    20: ("FLOAT8E5M2FNUZ", ml_dtypes.float8_e5m2fnuz),
}
#: element types whose ONNX rounding/overflow ml_dtypes does not follow: refused (the
#: ml_dtypes type is None where this ml_dtypes version lacks it)
_NARROW = {
    code: (name, getattr(ml_dtypes, attr, None))
    for code, name, attr in (
        (21, "UINT4", "uint4"),
        (22, "INT4", "int4"),
        (23, "FLOAT4E2M1", "float4_e2m1fn"),
        (24, "FLOAT8E8M0", "float8_e8m0fnu"),
        (25, "UINT2", "uint2"),
        (26, "INT2", "int2"),
    )
}


def _elem_type(dtype: Any) -> int | None:
    """The float8/narrow ONNX element type of ``dtype``, else None."""
    return next(
        (
            code
            for code, (_, t) in {**_FLOAT8, **_NARROW}.items()
            if t is not None and np.dtype(t) == dtype
        ),
        None,
    )


def _narrow_cast(op: str, x: Any, elem_type: int, saturate: int) -> Any:
    """A saturating cast to float8; refuses 4- and 2-bit types and non-saturating float8."""
    if elem_type in _NARROW or not saturate:
        name = {**_FLOAT8, **_NARROW}[elem_type][0]
        what = f"{op} (to={name}" + (")" if elem_type in _NARROW else ", saturate=0)")
        raise UnsupportedOpsError(
            {what: ["a node found when the graph was traced"]},
            where="the ONNX graph",
            hint="Casts to 4-bit and 2-bit integers, FLOAT4E2M1, FLOAT8E8M0 and non-saturating "
            "float8 are not supported: their rounding and overflow differ from JAX's "
            "(ml_dtypes) casts. Saturating float8 casts (saturate=1) are supported.",
        )
    dtype = np.dtype(_FLOAT8[elem_type][1])
    big = float(ml_dtypes.finfo(dtype).max)
    xp = _xp(x)
    return _np_result(xp.clip(x, -big, big).astype(dtype))


@reg("Cast")
def cast(x, *, to, saturate=1):
    if to in _FLOAT8 or to in _NARROW:
        return _narrow_cast("Cast", x, to, saturate)
    if _traced(x):
        return x.astype(onnx_dtype(to))
    return np.asarray(x).astype(onnx_dtype(to, traced=False))


@reg("CastLike")
def cast_like(x, like, *, saturate=1):
    traced = _traced(x, like)
    dtype = jnp.asarray(like).dtype if traced else np.asarray(like).dtype
    special = _elem_type(dtype)
    if special is not None:
        return _narrow_cast("CastLike", x, special, saturate)
    return jnp.asarray(x).astype(dtype) if traced else np.asarray(x).astype(dtype)


@reg("Dropout")
def dropout(x, ratio=None, training_mode=None, *, seed=None):
    training = training_mode is not None and bool(_concrete(training_mode))
    if training and (ratio is None or float(_concrete(ratio)) != 0.0):
        raise NotImplementedError(
            "training_mode=1 with a nonzero ratio drops at random; export in eval mode"
        )
    return x, jnp.ones(jnp.shape(x), bool)


# --------------------------------------------------------------------------- constants
@reg("Constant")
def constant(
    *,
    value=None,
    value_float=None,
    value_floats=None,
    value_int=None,
    value_ints=None,
    value_string=None,
    value_strings=None,
    sparse_value=None,
):
    if value is not None:
        return np.asarray(value)
    if value_float is not None:
        return np.asarray(value_float, np.float32)
    if value_floats is not None:
        return np.asarray(value_floats, np.float32)
    if value_int is not None:
        return np.asarray(value_int, np.int64)
    if value_ints is not None:
        return np.asarray(value_ints, np.int64)
    raise NotImplementedError("Constant: only tensor, float(s) and int(s) values are supported")


@reg("ConstantOfShape")
def constant_of_shape(shape, *, value=None):
    v = np.asarray(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    return np.full(_ints(shape), v[0], v.dtype)


@reg("Shape")
def shape_(x, *, start=0, end=None):
    s = np.asarray(np.shape(x), np.int64)
    return s[start:end]


@reg("Size")
def size(x):
    return np.asarray(int(np.prod(np.shape(x))), np.int64)


@reg("Range")
def range_(start, limit, delta):
    a, b, d = (_concrete(v).item() for v in (start, limit, delta))
    dtype = np.asarray(start).dtype
    return np.arange(a, b, d, dtype=dtype)


@reg("EyeLike")
def eye_like(x, *, dtype=None, k=0):
    dt = onnx_dtype(dtype, traced=False) if dtype is not None else np.dtype(x.dtype)
    return np.eye(np.shape(x)[0], np.shape(x)[1], k, dtype=dt)


# --------------------------------------------------------------------------- shape ops
@reg("Reshape")
def reshape(x, shape, *, allowzero=0):
    target = _ints(shape)
    if not allowzero:
        target = [np.shape(x)[i] if d == 0 else d for i, d in enumerate(target)]
    return _xp(x).reshape(x, target)


@reg("Flatten")
def flatten(x, *, axis=1):
    shp = np.shape(x)
    axis = _axis(axis, len(shp))
    return _xp(x).reshape(x, (int(np.prod(shp[:axis])), -1))


@reg("Transpose")
def transpose(x, *, perm=None):
    return _xp(x).transpose(x, perm)


@reg("Squeeze")
def squeeze(x, axes=None):
    ax = _ints(axes) if axes is not None else None
    nd = np.ndim(x)
    if ax is None:
        return _xp(x).squeeze(x)
    return _xp(x).squeeze(x, tuple(_axis(a, nd) for a in ax))


@reg("Unsqueeze")
def unsqueeze(x, axes):
    ax = _ints(axes)
    nd = np.ndim(x) + len(ax)
    out = x
    for a in sorted(_axis(a, nd) for a in ax):
        out = _xp(x).expand_dims(out, a)
    return out


@reg("Concat")
def concat(*xs, axis):
    xs = [x for x in xs if x is not None]
    return _np_result(_xp(*xs).concatenate(xs, axis=axis))


@reg("Expand")
def expand(x, shape):
    target = np.broadcast_shapes(tuple(np.shape(x)), tuple(_ints(shape)))
    return _xp(x).broadcast_to(x, target)


@reg("Tile")
def tile(x, repeats):
    return _xp(x).tile(x, _ints(repeats))


@reg("Slice")
def slice_(x, starts, ends, axes=None, steps=None):
    nd = np.ndim(x)
    st, en = _ints(starts), _ints(ends)
    ax = _ints(axes) if axes is not None else list(range(len(st)))
    sp = _ints(steps) if steps is not None else [1] * len(st)
    index = [slice(None)] * nd
    for s, e, a, k in zip(st, en, ax, sp, strict=True):
        a = _axis(a, nd)
        n = np.shape(x)[a]
        # clamp the INT64 sentinels ONNX uses for "to the end"
        s = max(-n - 1, min(s, n))
        e = max(-n - 1, min(e, n))
        if k < 0 and e < -n:
            e = None
        index[a] = slice(s, e, k)
    return x[tuple(index)]


@reg("Split")
def split(x, split=None, *, axis=0, num_outputs=None, _n_outputs=1):
    n = np.shape(x)[_axis(axis, np.ndim(x))]
    if split is not None:
        sizes = _ints(split)
    else:
        parts = num_outputs or _n_outputs
        chunk = -(-n // parts)
        sizes = [chunk] * (parts - 1) + [n - chunk * (parts - 1)]
    idx = np.cumsum(sizes)[:-1].tolist()
    return tuple(_xp(x).split(x, idx, axis=axis))


@reg("Gather")
def gather(data, indices, *, axis=0):
    nd = np.ndim(data)
    axis = _axis(axis, nd)
    n = np.shape(data)[axis]
    xp = _xp(data, indices)
    if xp is np:
        idx = np.asarray(indices)
        return np.take(data, np.where(idx < 0, idx + n, idx), axis=axis)
    idx = jnp.asarray(indices)
    idx = jnp.where(idx < 0, idx + n, idx)
    return jnp.take(data, idx, axis=axis, mode="clip")


@reg("GatherElements")
def gather_elements(data, indices, *, axis=0):
    axis = _axis(axis, np.ndim(data))
    n = np.shape(data)[axis]
    idx = jnp.where(jnp.asarray(indices) < 0, jnp.asarray(indices) + n, jnp.asarray(indices))
    return jnp.take_along_axis(jnp.asarray(data), idx, axis=axis)


@reg("GatherND")
def gather_nd(data, indices, *, batch_dims=0):
    def take(d, i):
        return d[tuple(jnp.moveaxis(i, -1, 0))]

    for _ in range(batch_dims):  # the leading batch_dims axes pair data with indices
        take = jax.vmap(take)
    return take(jnp.asarray(data), jnp.asarray(indices))


@reg("ScatterElements")
def scatter_elements(data, indices, updates, *, axis=0, reduction="none"):
    data = jnp.asarray(data)
    axis = _axis(axis, data.ndim)
    idx = jnp.asarray(indices)
    idx = jnp.where(idx < 0, idx + data.shape[axis], idx)
    grid = list(jnp.indices(idx.shape, sparse=True))
    grid[axis] = idx
    at = data.at[tuple(grid)]
    ops = {"none": at.set, "add": at.add, "mul": at.multiply, "max": at.max, "min": at.min}
    return ops[reduction](updates)


@reg("ScatterND")
def scatter_nd(data, indices, updates, *, reduction="none"):
    data = jnp.asarray(data)
    idx = jnp.asarray(indices)
    at = data.at[tuple(jnp.moveaxis(idx, -1, 0))]
    ops = {"none": at.set, "add": at.add, "mul": at.multiply, "max": at.max, "min": at.min}
    return ops[reduction](updates)


@reg("Trilu")
def trilu(x, k=None, *, upper=1):
    kk = _ints(k)[0] if k is not None else 0
    xp = _xp(x)
    return xp.triu(x, kk) if upper else xp.tril(x, kk)


@reg("DepthToSpace")
def depth_to_space(x, *, blocksize, mode="DCR"):
    n, c, h, w = x.shape
    b = blocksize
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@reg("SpaceToDepth")
def space_to_depth(x, *, blocksize, mode="DCR"):
    n, c, h, w = x.shape
    b = blocksize
    # DCR: output channel (bh, bw, c); CRD (opset 25): (c, bh, bw)
    perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(perm)
    return y.reshape(n, c * b * b, h // b, w // b)


@reg("OneHot")
def one_hot(indices, depth, values, *, axis=-1):
    d = _ints(depth)[0]
    idx = jnp.asarray(indices)
    idx = jnp.where(idx < 0, idx + d, idx)
    hot = jax.nn.one_hot(idx, d, axis=axis, dtype=bool)
    off, on = values[0], values[1]
    return jnp.where(hot, on, off)


@reg("CumProd")
def cumprod(x, axis, *, exclusive=0, reverse=0):
    a = _axis(_ints(axis)[0], np.ndim(x))
    xp = _xp(x)
    y = xp.flip(x, a) if reverse else x
    if exclusive:  # shift by one along the axis, a 1 first
        pad = [(0, 0)] * np.ndim(x)
        pad[a] = (1, 0)
        y = xp.take(xp.pad(y, pad, constant_values=1), np.arange(np.shape(x)[a]), axis=a)
    out = xp.cumprod(y, axis=a)
    return _np_result(xp.flip(out, a) if reverse else out)


@reg("BitShift")
def bit_shift(x, y, *, direction):
    xp = _xp(x, y)
    if xp is jnp:
        x, y = _ranked(x, y)
    return _np_result((xp.left_shift if direction == "LEFT" else xp.right_shift)(x, y))


@reg("Shrink")
def shrink(x, *, bias=0.0, lambd=0.5):
    return jnp.where(x < -lambd, x + bias, jnp.where(x > lambd, x - bias, 0)).astype(x.dtype)


@reg("Swish")
def swish(x, *, alpha=1.0):
    return x * jax.nn.sigmoid(alpha * x)


@reg("Det")
def det(x):
    return jnp.linalg.det(x)


@reg("CumSum")
def cumsum(x, axis, *, exclusive=0, reverse=0):
    a = _axis(_ints(axis)[0], np.ndim(x))
    xp = _xp(x)
    y = xp.flip(x, a) if reverse else x
    out = xp.cumsum(y, axis=a)
    if exclusive:
        out = out - y
    return xp.flip(out, a) if reverse else out


@reg("TopK")
def topk(x, k, *, axis=-1, largest=1, sorted=1):  # noqa: A002 - ONNX attribute name
    kk = _ints(k)[0]
    a = _axis(axis, np.ndim(x))
    xm = jnp.moveaxis(jnp.asarray(x), a, -1)
    vals, idx = lax.top_k(xm if largest else -xm, kk)
    if not largest:
        vals = -vals
    return jnp.moveaxis(vals, -1, a), jnp.moveaxis(idx, -1, a)


def _arg(fn_name):
    def fn(x, *, axis=0, keepdims=1, select_last_index=0):
        xp = _xp(x)
        a = _axis(axis, np.ndim(x))
        y = xp.flip(x, a) if select_last_index else x
        out = getattr(xp, fn_name)(y, axis=a)
        if select_last_index:
            out = np.shape(x)[a] - 1 - out
        return xp.expand_dims(out, a) if keepdims else out

    return fn


ONNX_LOWERINGS["ArgMax"] = _arg("argmax")
ONNX_LOWERINGS["ArgMin"] = _arg("argmin")


# --------------------------------------------------------------------------- reductions
def _reduction(kind: str) -> Callable[..., Any]:
    def fn(x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        ax = _ints(axes)
        if not ax:
            if noop_with_empty_axes:
                return x
            ax = list(range(np.ndim(x)))
        ax = tuple(_axis(a, np.ndim(x)) for a in ax)
        xp = _xp(x)
        kd = bool(keepdims)
        if kind in ("max", "min") and any(np.shape(x)[a] == 0 for a in ax):
            # over an empty set: the identity of the reduction (ONNX: -inf/+inf, or the
            # integer type's lowest/highest value)
            dt = np.asarray(x).dtype if xp is np else x.dtype
            if jnp.issubdtype(dt, jnp.floating):
                fill = -np.inf if kind == "max" else np.inf
            elif dt == np.bool_:
                fill = kind == "min"
            else:
                info = jnp.iinfo(dt)
                fill = info.min if kind == "max" else info.max
            shape = (
                [1 if a in ax else d for a, d in enumerate(np.shape(x))]
                if kd
                else [d for a, d in enumerate(np.shape(x)) if a not in ax]
            )
            return _np_result(xp.full(shape, fill, dt))
        if kind == "sum":
            out = xp.sum(x, axis=ax, keepdims=kd)
        elif kind == "mean":
            out = xp.mean(x, axis=ax, keepdims=kd)
        elif kind == "max":
            out = xp.max(x, axis=ax, keepdims=kd)
        elif kind == "min":
            out = xp.min(x, axis=ax, keepdims=kd)
        elif kind == "prod":
            out = xp.prod(x, axis=ax, keepdims=kd)
        elif kind == "l1":
            out = xp.sum(xp.abs(x), axis=ax, keepdims=kd)
        elif kind == "l2":
            out = xp.sqrt(xp.sum(x * x, axis=ax, keepdims=kd))
        elif kind == "sumsquare":
            out = xp.sum(x * x, axis=ax, keepdims=kd)
        elif kind == "logsum":
            out = xp.log(xp.sum(x, axis=ax, keepdims=kd))
        else:  # logsumexp
            out = jax.scipy.special.logsumexp(x, axis=ax, keepdims=kd)
        return _np_result(out)

    return fn


for _name, _kind in (
    ("ReduceSum", "sum"),
    ("ReduceMean", "mean"),
    ("ReduceMax", "max"),
    ("ReduceMin", "min"),
    ("ReduceProd", "prod"),
    ("ReduceL1", "l1"),
    ("ReduceL2", "l2"),
    ("ReduceSumSquare", "sumsquare"),
    ("ReduceLogSum", "logsum"),
    ("ReduceLogSumExp", "logsumexp"),
):
    ONNX_LOWERINGS[_name] = _reduction(_kind)


@reg("Softmax")
def softmax(x, *, axis=-1):
    return jax.nn.softmax(x, axis=axis)


@reg("LogSoftmax")
def log_softmax(x, *, axis=-1):
    return jax.nn.log_softmax(x, axis=axis)


def _nll(logp, target, weight, reduction, ignore_index, weight_ignored_only):
    """Negative log-likelihood of ``target`` classes (axis 1 of ``logp``), as ONNX's
    reference computes it (weights gathered per target; ``mean`` divides by their sum)."""
    t = jnp.asarray(target)
    c = logp.shape[1]
    safe = jnp.clip(t, 0, c - 1)
    loss = -jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    if ignore_index is not None:
        loss = jnp.where(t == ignore_index, 0.0, loss).astype(logp.dtype)
    w = None
    if weight is not None:
        w = jnp.take(jnp.asarray(weight), safe)
        if ignore_index is not None:
            w = jnp.where(t == ignore_index, 0.0, w).astype(logp.dtype)
    elif ignore_index is not None and not (weight_ignored_only and ignore_index == -1):
        w = jnp.where(t == ignore_index, 0.0, 1.0).astype(logp.dtype)
    if w is not None:
        loss = w * loss
        if reduction == "mean":
            return jnp.sum(loss) / jnp.sum(w)
    if reduction == "mean":
        return jnp.mean(loss)
    return jnp.sum(loss) if reduction == "sum" else loss


@reg("NegativeLogLikelihoodLoss")
def nll_loss(x, target, weight=None, *, ignore_index=None, reduction="mean"):
    # ONNX's reference weighs by ones unless ignore_index is exactly -1 (then a plain mean)
    return _nll(x, target, weight, reduction, ignore_index, True)


@reg("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(x, target, weight=None, *, ignore_index=None, reduction="mean"):
    logp = jax.nn.log_softmax(x, axis=1)
    return _nll(logp, target, weight, reduction, ignore_index, False), logp


@reg("MeanVarianceNormalization")
def mean_variance_normalization(x, *, axes=(0, 2, 3)):
    # ONNX's function body: (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)
    ax = tuple(_axis(a, x.ndim) for a in axes)
    mu = jnp.mean(x, axis=ax, keepdims=True)
    var = jnp.mean(jnp.square(x), axis=ax, keepdims=True) - jnp.square(mu)
    return (x - mu) / (jnp.sqrt(var) + 1e-9)


@reg("SwiGLU")
def swiglu(a, b, *, alpha=1.0):
    return a * jax.nn.sigmoid(alpha * a) * b


def _window(kind: str) -> Callable[..., Any]:
    def fn(size, *, output_datatype=1, periodic=1):
        n = int(_concrete(size).reshape(()))
        d = n if periodic else n - 1
        i = np.arange(n, dtype=np.float64)
        if kind == "hann":
            w = np.sin(i * np.pi / d) ** 2
        elif kind == "hamming":
            w = 25.0 / 46.0 - np.cos(i * np.pi * 2 / d) * (1 - 25.0 / 46.0)
        else:
            w = 0.42 - 0.5 * np.cos(i * np.pi * 2 / d) + 0.08 * np.cos(i * np.pi * 4 / d)
        return w.astype(onnx_dtype(output_datatype, traced=False))

    return fn


ONNX_LOWERINGS["HannWindow"] = _window("hann")
ONNX_LOWERINGS["HammingWindow"] = _window("hamming")
ONNX_LOWERINGS["BlackmanWindow"] = _window("blackman")


@reg("Hardmax")
def hardmax(x, *, axis=-1):
    a = _axis(axis, x.ndim)
    return jax.nn.one_hot(jnp.argmax(x, axis=a), x.shape[a], axis=a, dtype=x.dtype)


# --------------------------------------------------------------------------- matmul
@reg("MatMul")
def matmul(a, b):
    return jnp.matmul(a, b)


@reg("Gemm")
def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):  # noqa: N803
    a = a.T if transA else a
    if transB:
        out = lax.dot_general(a, b, (((1,), (1,)), ((), ())))
    else:
        out = a @ b
    if alpha != 1.0:
        out = alpha * out
    if c is not None:
        out = _add(out, c if beta == 1.0 else beta * c)
    return out


@reg("Einsum")
def einsum(*xs, equation):
    return jnp.einsum(equation, *xs)


# --------------------------------------------------------------------------- conv / pool
def _pads(
    x_spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str,
) -> list[tuple[int, int]]:
    nsp = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for n, k, s, d in zip(x_spatial, kernel, strides, dilations, strict=True):
            total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        return out
    if auto_pad == "VALID" or not pads:
        return [(0, 0)] * nsp
    return [(int(pads[i]), int(pads[i + nsp])) for i in range(nsp)]


@reg("Conv")
def conv(
    x,
    w,
    b=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    nsp = w.ndim - 2
    k = tuple(w.shape[2:])
    st = tuple(strides or (1,) * nsp)
    dl = tuple(dilations or (1,) * nsp)
    pp = _pads(x.shape[2:], k, st, dl, pads, auto_pad)
    return L.conv_nd(x, w, b, st, pp, dl, group)


@reg("ConvTranspose")
def conv_transpose(
    x,
    w,
    b=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    output_padding=None,
    output_shape=None,
    pads=None,
    strides=None,
):
    nsp = w.ndim - 2
    k = tuple(w.shape[2:])
    st = tuple(strides or (1,) * nsp)
    dl = tuple(dilations or (1,) * nsp)
    op = list(output_padding or (0,) * nsp)
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = (
            list(output_shape)[-nsp:]
            if output_shape is not None
            else [n * s for n, s in zip(x.shape[2:], st, strict=True)]
        )
        pp = []
        for i in range(nsp):
            total = st[i] * (x.shape[2 + i] - 1) + op[i] + ((k[i] - 1) * dl[i] + 1) - target[i]
            if total < 0:  # a larger output than the natural one: extra zeros at the end
                op[i] -= total
                total = 0
            small, big = total // 2, total - total // 2
            pp.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
    elif auto_pad == "VALID" or not pads:
        pp = [(0, 0)] * nsp
    else:
        pp = [(int(pads[i]), int(pads[i + nsp])) for i in range(nsp)]
    return L.conv_nd(x, w, b, st, pp, dl, group, transposed=True, output_padding=op)


@reg("MaxPool")
def max_pool(
    x,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape,
    pads=None,
    storage_order=0,
    strides=None,
):
    nsp = len(kernel_shape)
    st = tuple(strides or (1,) * nsp)
    dl = tuple(dilations or (1,) * nsp)
    pp = _pads(x.shape[2:], kernel_shape, st, dl, pads, auto_pad)
    small_int = jnp.issubdtype(x.dtype, jnp.integer) and jnp.dtype(x.dtype).itemsize < 4
    xx = x.astype(jnp.int32) if small_int else x  # (u)int8/16: pooled in int32, exact
    out = L._max_pool(xx, tuple(kernel_shape), st, pp, dl, bool(ceil_mode))
    return out.astype(x.dtype), None  # Indices: only as an unused output


@reg("AveragePool")
def average_pool(
    x,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    count_include_pad=0,
    dilations=None,
    kernel_shape,
    pads=None,
    strides=None,
):
    nsp = len(kernel_shape)
    k = tuple(kernel_shape)
    st = tuple(strides or (1,) * nsp)
    dl = tuple(dilations or (1,) * nsp)
    pp = _pads(x.shape[2:], k, st, dl, pads, auto_pad)
    if all(d == 1 for d in dl):
        return L._avg_pool(x, k, st, pp, bool(ceil_mode), bool(count_include_pad))
    # dilated windows: the sum over each window, divided by the number of its taps that
    # fall inside the input (and inside the explicit pads with count_include_pad); the
    # ceil-mode overhang never counts. The count is separable: one 1-D count per axis.
    full = L._pool_pads(x.shape[2:], k, st, pp, dl, bool(ceil_mode))
    total = lax.reduce_window(
        x,
        jnp.zeros((), x.dtype),
        lax.add,
        (1, 1) + k,
        (1, 1) + st,
        [(0, 0), (0, 0)] + full,
        window_dilation=(1, 1) + dl,
    )
    count = np.ones((), np.float64)
    for a in range(nsp):
        n, (lo, hi), (flo, fhi) = x.shape[2 + a], pp[a], full[a]
        valid = np.zeros(n + flo + fhi)
        valid[
            flo - lo if count_include_pad else flo : flo + n + (hi if count_include_pad else 0)
        ] = 1.0
        taps = np.arange(total.shape[2 + a])[:, None] * st[a] + np.arange(k[a]) * dl[a]
        count = np.multiply.outer(count, valid[taps].sum(axis=1))
    return total / L._lift(jnp.asarray(np.maximum(count, 1.0), x.dtype), total.ndim)


@reg("GlobalAveragePool")
def global_average_pool(x):
    return jnp.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)


@reg("GlobalMaxPool")
def global_max_pool(x):
    return jnp.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)


@reg("LpPool")
def lp_pool(
    x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape, p=2, pads=None, strides=None
):
    nsp = len(kernel_shape)
    st = tuple(strides or (1,) * nsp)
    dl = tuple(dilations or (1,) * nsp)
    pp = _pads(x.shape[2:], kernel_shape, st, dl, pads, auto_pad)
    k = tuple(kernel_shape)
    total = lax.reduce_window(
        jnp.abs(x) ** p,
        0.0,
        lax.add,
        (1, 1) + k,
        (1, 1) + st,
        [(0, 0), (0, 0)] + L._pool_pads(x.shape[2:], k, st, pp, dl, bool(ceil_mode)),
        window_dilation=(1, 1) + dl,
    )
    return _root(total, p)


def _root(total: Any, p: float) -> Any:
    """``total ** (1 / p)``, 0 with a zero gradient (not NaN) where ``total`` is 0."""
    pos = total > 0
    return jnp.where(pos, jnp.where(pos, total, 1.0) ** (1.0 / p), 0.0)


# --------------------------------------------------------------------------- normalization
def _chan(v: Any, nd: int) -> Any:
    return v.reshape((1, -1) + (1,) * (nd - 2))


@reg("BatchNormalization")
def batch_norm(x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0, spatial=1):
    if training_mode:
        raise NotImplementedError(
            "BatchNormalization: training_mode=1 is not supported (export the model in eval mode)"
        )
    nd = x.ndim
    inv = lax.rsqrt(_chan(var, nd) + epsilon)
    return (x - _chan(mean, nd)) * inv * _chan(scale, nd) + _chan(b, nd)


@reg("LayerNormalization")
def layer_norm(x, scale, b=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    a = _axis(axis, x.ndim)
    ax = tuple(range(a, x.ndim))
    mu = jnp.mean(x, axis=ax, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=ax, keepdims=True)
    inv = lax.rsqrt(var + epsilon)
    y = _mul((x - mu) * inv, scale)
    if b is not None:
        y = _add(y, b)
    return y, mu, inv


@reg("RMSNormalization")
def rms_normalization(x, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    """Opset 23: ``x / sqrt(mean(x**2 over axes axis..) + epsilon) * scale``, computed in
    float32 (``stash_type=1``) for narrower inputs."""
    a = _axis(axis, x.ndim)
    xf = x.astype(jnp.float32) if stash_type == 1 and jnp.dtype(x.dtype).itemsize < 4 else x
    ms = jnp.mean(jnp.square(xf), axis=tuple(range(a, x.ndim)), keepdims=True)
    return _mul((xf * lax.rsqrt(ms + epsilon)).astype(x.dtype), scale)


@reg("RotaryEmbedding")
def rotary_embedding(
    x,
    cos_cache,
    sin_cache,
    position_ids=None,
    *,
    interleaved=0,
    num_heads=0,
    rotary_embedding_dim=0,
):
    """Opset 23 rotary position embedding of ``x`` (batch, heads, seq, head) or (batch,
    seq, heads * head); caches indexed by ``position_ids`` when given."""
    shape = x.shape
    if x.ndim == 4:
        y = jnp.transpose(x, (0, 2, 1, 3))  # (batch, seq, heads, head)
    else:
        if not num_heads:
            raise NotImplementedError("RotaryEmbedding: 3-D input needs num_heads")
        y = x.reshape(shape[0], shape[1], num_heads, shape[2] // num_heads)
    rot = rotary_embedding_dim or y.shape[-1]
    cos, sin = jnp.asarray(cos_cache), jnp.asarray(sin_cache)
    if position_ids is not None:
        cos = jnp.take(cos, jnp.asarray(position_ids), axis=0)
        sin = jnp.take(sin, jnp.asarray(position_ids), axis=0)
    cos, sin = cos[..., None, :], sin[..., None, :]  # (batch, seq, 1, rot/2)
    head, rest = y[..., :rot], y[..., rot:]
    if interleaved:
        x1, x2 = head[..., 0::2], head[..., 1::2]
    else:
        x1, x2 = head[..., : rot // 2], head[..., rot // 2 :]
    cos, sin, x1, x2 = _ranked(cos, sin, x1, x2)
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        head = jnp.stack([real, imag], axis=-1).reshape(head.shape)
    else:
        head = jnp.concatenate([real, imag], axis=-1)
    y = jnp.concatenate([head, rest], axis=-1).astype(x.dtype)
    return jnp.transpose(y, (0, 2, 1, 3)) if x.ndim == 4 else y.reshape(shape)


def _safe_softmax(s):
    """Softmax over the last axis; a row that is all ``-inf`` gives zeros, not NaN."""
    m = jnp.max(s, axis=-1, keepdims=True)
    m = lax.stop_gradient(jnp.where(jnp.isneginf(m), 0.0, m).astype(s.dtype))
    e = jnp.exp(s - m)
    tot = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(tot == 0, 1.0, tot).astype(s.dtype)


@reg("Attention")
def attention(
    q,
    k,
    v,
    attn_mask=None,
    past_key=None,
    past_value=None,
    nonpad_kv_seqlen=None,
    *,
    is_causal=0,
    kv_num_heads=None,
    q_num_heads=None,
    qk_matmul_output_mode=0,
    scale=None,
    softcap=0.0,
    softmax_precision=None,
    left_window_size=-1,
    right_window_size=-1,
):
    """Opset 23+ scaled dot-product attention, as ONNX's reference computes it: 3-D inputs
    (batch, seq, heads * head) or 4-D (batch, heads, seq, head); grouped-query heads; past
    key/value caches; boolean or additive masks (a shorter mask is padded with -inf);
    bottom-right-aligned causal masks; sliding windows; softcap; fully masked rows give 0.
    Returns ``(Y, present_key, present_value, qk_matmul_output)``."""
    dt = q.dtype
    three_d = q.ndim == 3
    if three_d:

        def heads(t, n):
            return jnp.transpose(t.reshape(t.shape[0], t.shape[1], n, -1), (0, 2, 1, 3))

        q, k, v = heads(q, q_num_heads), heads(k, kv_num_heads), heads(v, kv_num_heads)
    sc = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[3])
    sc = jnp.asarray(math.sqrt(sc), dt)
    if past_key is not None:
        k = jnp.concatenate([past_key, k], axis=2)
    if past_value is not None:
        v = jnp.concatenate([past_value, v], axis=2)
    present_k, present_v = k, v
    nq, nkv = q.shape[2], k.shape[2]
    neg = jnp.asarray(-jnp.inf, dt)
    bias = jnp.zeros((nq, nkv), dt)
    mask = attn_mask
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape[-1] < nkv:
            fill = False if mask.dtype == jnp.bool_ else -jnp.inf
            mask = jnp.pad(
                mask, [(0, 0)] * (mask.ndim - 1) + [(0, nkv - mask.shape[-1])], constant_values=fill
            )
        if mask.dtype == jnp.bool_:
            mask = jnp.where(mask, jnp.asarray(0, dt), neg)
        bias = _add(bias, mask.astype(dt))
    if nonpad_kv_seqlen is not None and past_key is None:
        offset = jnp.asarray(nonpad_kv_seqlen).reshape(-1, 1, 1, 1) - nq  # per batch
    else:
        offset = past_key.shape[2] if past_key is not None else 0
    i_idx = jnp.arange(nq).reshape(nq, 1)
    j_idx = jnp.arange(nkv).reshape(1, nkv)
    if is_causal:
        causal = _bcast(jnp.less_equal)(j_idx, _add(i_idx, offset))
        bias = _add(bias, jnp.where(causal, jnp.asarray(0, dt), neg))
    if left_window_size >= 0 or right_window_size >= 0:
        diff = _bcast(jnp.subtract)(_add(i_idx, offset), j_idx)
        allowed = jnp.ones(jnp.shape(diff), bool)
        if left_window_size >= 0:
            allowed = allowed & (diff <= left_window_size)
        if right_window_size >= 0:
            allowed = allowed & (-diff <= right_window_size)
        bias = _add(bias, jnp.where(allowed, jnp.asarray(0, dt), neg))
    if nonpad_kv_seqlen is not None:
        pad = jnp.arange(nkv)[None] < jnp.asarray(nonpad_kv_seqlen).reshape(-1, 1)
        bias = _add(bias, jnp.where(pad, jnp.asarray(0, dt), neg).reshape(-1, 1, 1, nkv))
    nh_q, nh_k = q.shape[1], k.shape[1]
    if nh_q != nh_k and nh_q % nh_k == 0 and v.shape[1] == nh_k:
        k = jnp.repeat(k, nh_q // nh_k, axis=1)
        v = jnp.repeat(v, nh_q // nh_k, axis=1)
    qk = jnp.matmul(q * sc, jnp.swapaxes(k * sc, -1, -2))
    if softcap and softcap > 0:
        qk = softcap * jnp.tanh(qk / softcap)
    qk_out = qk
    with_bias = _add(qk, bias)
    if qk_matmul_output_mode == 2:
        qk_out = with_bias
    if softmax_precision is not None:
        with_bias = with_bias.astype(onnx_dtype(softmax_precision))
    probs = _safe_softmax(with_bias)
    masked_row = jnp.isneginf(jnp.max(bias, axis=-1, keepdims=True))
    probs = jnp.where(masked_row, jnp.zeros((), probs.dtype), probs)
    if qk_matmul_output_mode == 3:
        qk_out = probs
    y = jnp.matmul(probs.astype(dt), v)
    if three_d:
        y = jnp.transpose(y, (0, 2, 1, 3)).reshape(y.shape[0], y.shape[2], -1)
    return (
        y,
        present_k,
        present_v,
        jnp.broadcast_to(qk_out, jnp.broadcast_shapes(qk_out.shape, (1, 1, nq, nkv))).astype(dt),
    )


@reg("GroupNormalization")
def group_norm(x, scale, b, *, epsilon=1e-5, num_groups, stash_type=1):
    n, c = x.shape[:2]
    g = x.reshape((n, num_groups, -1))
    mu = jnp.mean(g, axis=-1, keepdims=True)
    var = jnp.var(g, axis=-1, keepdims=True)
    y = ((g - mu) * lax.rsqrt(var + epsilon)).reshape(x.shape)
    if scale.shape[0] != c:  # opset 18: one scale/bias per group
        scale = jnp.repeat(scale, c // num_groups)
        b = jnp.repeat(b, c // num_groups)
    return y * _chan(scale, x.ndim) + _chan(b, x.ndim)


@reg("InstanceNormalization")
def instance_norm(x, scale, b, *, epsilon=1e-5):
    ax = tuple(range(2, x.ndim))
    mu = jnp.mean(x, axis=ax, keepdims=True)
    var = jnp.var(x, axis=ax, keepdims=True)
    return (x - mu) * lax.rsqrt(var + epsilon) * _chan(scale, x.ndim) + _chan(b, x.ndim)


@reg("LpNormalization")
def lp_normalization(x, *, axis=-1, p=2):
    norm = _root(jnp.sum(jnp.abs(x) ** p, axis=axis, keepdims=True), p)
    # an all-zero slice stays 0 (onnxruntime), with a zero gradient
    pos = norm > 0
    return jnp.where(pos, x / jnp.where(pos, norm, 1.0), 0.0)


@reg("LRN")
def lrn(x, *, alpha=1e-4, beta=0.75, bias=1.0, size):
    sq = jnp.square(x)
    lo, hi = (size - 1) // 2, size // 2
    s = lax.reduce_window(
        sq,
        0.0,
        lax.add,
        (1, size) + (1,) * (x.ndim - 2),
        (1,) * x.ndim,
        [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2),
    )
    return x / (bias + alpha / size * s) ** beta


# --------------------------------------------------------------------------- pad / resize
@reg("Pad")
def pad(x, pads, constant_value=None, axes=None, *, mode="constant"):
    nd = np.ndim(x)
    pv = _ints(pads)
    ax = [_axis(a, nd) for a in _ints(axes)] if axes is not None else list(range(nd))
    k = len(ax)
    width = [(0, 0)] * nd
    for i, a in enumerate(ax):
        width[a] = (pv[i], pv[i + k])
    crop = [slice(None)] * nd
    for a, (lo, hi) in enumerate(width):  # negative pads crop
        if lo < 0 or hi < 0:
            crop[a] = slice(-lo if lo < 0 else None, hi if hi < 0 else None)
    width = [(max(lo, 0), max(hi, 0)) for lo, hi in width]
    xp = _xp(x)
    if mode == "constant":
        cv = (
            0
            if constant_value is None
            else np.asarray(constant_value).reshape(-1)[0]
            if not _traced(constant_value)
            else constant_value.reshape(())
        )
        out = xp.pad(x, width, constant_values=cv)
    else:
        out = xp.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])
    return out[tuple(crop)]


def _resize_coords(
    n_in: int, n_out: int, scale: float, coord: str, roi: tuple[float, float] | None
) -> np.ndarray:
    """The input coordinate of each output position along one axis (ONNX Resize).

    As ONNX's reference, ``align_corners``, ``pytorch_half_pixel`` and
    ``tf_crop_and_resize`` use the unrounded output length ``scale * n_in``: with scales
    that do not give a whole length (0.6 * 4 = 2.4), ``align_corners`` maps the last output
    to ``(n_out - 1) * (n_in - 1) / (2.4 - 1)``, not to the last input."""
    o = np.arange(n_out, dtype=np.float64)
    width = scale * n_in
    if coord == "half_pixel":
        xs = (o + 0.5) / scale - 0.5
    elif coord == "pytorch_half_pixel":
        xs = (o + 0.5) / scale - 0.5 if width != 1 else np.full_like(o, -0.5)
    elif coord == "align_corners":
        xs = o * (n_in - 1) / (width - 1) if width != 1 else np.zeros_like(o)
    elif coord == "asymmetric":
        xs = o / scale
    elif coord == "half_pixel_symmetric":
        adj = n_out / (scale * n_in)
        center = n_in / 2
        off = center * (1 - adj)
        xs = off + (o + 0.5) / scale - 0.5
    elif coord == "tf_crop_and_resize":
        lo, hi = roi if roi is not None else (0.0, 1.0)
        xs = (
            lo * (n_in - 1) + o * (hi - lo) * (n_in - 1) / (width - 1)
            if width != 1
            else 0.5 * (lo + hi) * (n_in - 1) + np.zeros_like(o)
        )
    else:
        raise NotImplementedError(f"Resize: coordinate_transformation_mode={coord!r}")
    return xs


def _resize_matrix(
    n_in: int,
    n_out: int,
    scale: float,
    mode: str,
    coord: str,
    nearest_mode: str,
    cubic_a: float,
    exclude_outside: int,
    roi: tuple[float, float] | None,
) -> np.ndarray:
    """``(n_out, n_in)`` interpolation matrix of one axis (ONNX Resize semantics)."""
    xs = _resize_coords(n_in, n_out, scale, coord, roi)
    m = np.zeros((n_out, n_in), np.float64)
    if mode == "nearest":
        if nearest_mode == "floor":
            idx = np.floor(xs)
        elif nearest_mode == "ceil":
            idx = np.ceil(xs)
        elif nearest_mode == "round_prefer_ceil":
            idx = np.floor(xs + 0.5)
        else:  # round_prefer_floor
            idx = np.ceil(xs - 0.5)
        idx = np.clip(idx, 0, n_in - 1).astype(int)
        m[np.arange(n_out), idx] = 1.0
    elif mode == "linear":
        xs = np.clip(xs, 0, n_in - 1) if coord != "tf_crop_and_resize" else xs
        lo = np.floor(xs).astype(int)
        frac = xs - lo
        for j in range(n_out):
            a, b = int(np.clip(lo[j], 0, n_in - 1)), int(np.clip(lo[j] + 1, 0, n_in - 1))
            m[j, a] += 1 - frac[j]
            m[j, b] += frac[j]
    elif mode == "cubic":
        lo = np.floor(xs).astype(int)
        frac = xs - lo
        for j in range(n_out):
            t = frac[j]
            ws = []
            for off in (-1, 0, 1, 2):
                d = abs(t - off)
                if d <= 1:
                    w = (cubic_a + 2) * d**3 - (cubic_a + 3) * d**2 + 1
                elif d < 2:
                    w = cubic_a * d**3 - 5 * cubic_a * d**2 + 8 * cubic_a * d - 4 * cubic_a
                else:
                    w = 0.0
                ws.append((lo[j] + off, w))
            if exclude_outside:
                tot = sum(w for i, w in ws if 0 <= i < n_in)
                ws = [(i, w / tot) for i, w in ws if 0 <= i < n_in]
            for i, w in ws:
                m[j, int(np.clip(i, 0, n_in - 1))] += w
    else:
        raise NotImplementedError(f"Resize: mode={mode!r}")
    return m


def _antialias_matrix(
    n_in: int,
    n_out: int,
    scale: float,
    mode: str,
    coord: str,
    cubic_a: float,
    exclude_outside: int,
    roi: tuple[float, float] | None,
) -> np.ndarray:
    """``(n_out, n_in)`` matrix of an antialiased linear/cubic Resize along one axis: when
    downsampling, the interpolation kernel is stretched by ``1 / scale`` (ONNX's
    reference: ``_linear_coeffs_antialias``, ``_cubic_coeffs_antialias``)."""
    s = min(scale, 1.0)
    xs = _resize_coords(n_in, n_out, scale, coord, roi)
    if coord == "pytorch_half_pixel" and n_out == 1:
        xs = np.full(1, -0.5)
    m = np.zeros((n_out, n_in), np.float64)
    for j, x in enumerate(xs):
        ratio = 1.0 if float(x).is_integer() else x - math.floor(x)
        if mode == "linear":
            start = int(math.floor(-1 / s) + 1)
            args = (np.arange(start, 2 - start) - ratio) * s
            c = np.clip(1 - np.abs(args), 0, 1)
        else:
            start = int(math.floor(-2 / s) + 1)
            d = np.abs(s * (np.arange(start, 2 - start) - ratio))
            c = np.where(
                d <= 1,
                (cubic_a + 2) * d**3 - (cubic_a + 3) * d**2 + 1,
                np.where(
                    d < 2, cubic_a * d**3 - 5 * cubic_a * d**2 + 8 * cubic_a * d - 4 * cubic_a, 0.0
                ),
            )
        c = c / c.sum()
        n = len(c)
        # the n taps nearest to x (ties to the smaller index), as the reference picks them
        pad = int(math.ceil(n / 2))
        xp_ = x + pad
        p = math.floor(xp_)
        frac = xp_ - p
        if n % 2 == 0:
            off = -(n // 2) if frac == 0 else -(n // 2) + 1
        else:
            off = -((n - 1) // 2) + (0 if frac <= 0.5 else 1)
        idx = p + off + np.arange(n) - pad
        if exclude_outside:
            c = np.where((idx < 0) | (idx >= n_in), 0.0, c)
            c = c / (c.sum() or 1.0)
        np.add.at(m[j], np.clip(idx, 0, n_in - 1), c)
    return m


@reg("Resize")
def resize(
    x,
    roi=None,
    scales=None,
    sizes=None,
    *,
    antialias=0,
    axes=None,
    coordinate_transformation_mode="half_pixel",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    keep_aspect_ratio_policy="stretch",
    mode="nearest",
    nearest_mode="round_prefer_floor",
):
    if antialias and mode == "nearest":
        raise NotImplementedError("Resize: antialias=1 with mode='nearest'")
    nd = x.ndim
    ax = [_axis(a, nd) for a in axes] if axes else list(range(nd))
    in_sizes = [x.shape[a] for a in ax]
    sz = _ints(sizes) if sizes is not None and np.size(sizes) else None
    if sz is not None:
        sc = [o / i for o, i in zip(sz, in_sizes, strict=True)]
        if keep_aspect_ratio_policy != "stretch":
            pick = min if keep_aspect_ratio_policy == "not_larger" else max
            s = pick(sc)
            sc = [s] * len(sc)
            sz = [int(round(i * s)) for i in in_sizes]
    else:
        sc = [float(v) for v in _concrete(scales).reshape(-1)]
        sz = [int(math.floor(i * s)) for i, s in zip(in_sizes, sc, strict=True)]
    roi_v = (
        _concrete(roi).astype(np.float64).reshape(-1) if roi is not None and np.size(roi) else None
    )
    crop = coordinate_transformation_mode == "tf_crop_and_resize"
    outside = np.zeros((1,) * nd, bool)  # outputs sampled outside the input (crop and resize)
    out = x
    for j, a in enumerate(ax):
        if sz[j] == in_sizes[j] and sc[j] == 1.0 and not crop:
            continue
        r = None if roi_v is None else (roi_v[j], roi_v[j + len(ax)])
        if crop:
            xs = _resize_coords(in_sizes[j], sz[j], sc[j], coordinate_transformation_mode, r)
            shape = [1] * nd
            shape[a] = sz[j]
            outside = outside | ((xs < 0) | (xs > in_sizes[j] - 1)).reshape(shape)
        if antialias:
            m = _antialias_matrix(
                in_sizes[j],
                sz[j],
                sc[j],
                mode,
                coordinate_transformation_mode,
                cubic_coeff_a,
                exclude_outside,
                r,
            )
        else:
            m = _resize_matrix(
                in_sizes[j],
                sz[j],
                sc[j],
                mode,
                coordinate_transformation_mode,
                nearest_mode,
                cubic_coeff_a,
                exclude_outside,
                r,
            )
        if mode == "nearest":
            idx = jnp.asarray(np.argmax(m, axis=1))
            out = jnp.take(out, idx, axis=a)
        else:
            out = jnp.moveaxis(
                jnp.tensordot(out, jnp.asarray(m, out.dtype), axes=([a], [1])), -1, a
            )
    if outside.any():
        out = jnp.where(jnp.asarray(outside), jnp.asarray(extrapolation_value, out.dtype), out)
    return out


# --------------------------------------------------------------------------- recurrent
def _onnx_rnn(
    kind: str,
    x,
    w,
    r,
    b,
    seq_lens,
    h0,
    c0,
    *,
    activations,
    clip,
    direction,
    hidden_size,
    layout,
    linear_before_reset=1,
    peepholes=None,
    input_forget=0,
):
    if seq_lens is not None:
        lens = _concrete(seq_lens)  # X is (seq, batch, ...), or (batch, seq, ...) if layout
        if np.any(lens != (x.shape[0] if not layout else x.shape[1])):
            raise NotImplementedError(
                f"{kind.upper()}: per-example sequence_lens shorter than "
                "the sequence are not supported"
            )
    if clip is not None:
        raise NotImplementedError(f"{kind.upper()}: the clip attribute is not supported")
    default_acts = {
        "lstm": ["Sigmoid", "Tanh", "Tanh"],
        "gru": ["Sigmoid", "Tanh"],
        "rnn": ["Tanh"],
    }[kind]
    ndir = 2 if direction == "bidirectional" else 1
    if (
        activations
        and [a.decode() if isinstance(a, bytes) else a for a in activations] != default_acts * ndir
        and not (kind == "rnn" and activations[0] in ("Relu", b"Relu"))
    ):
        raise NotImplementedError(
            f"{kind.upper()}: activations {activations} are not supported (only the defaults)"
        )
    if layout:
        x = jnp.swapaxes(x, 0, 1)
    hsz = hidden_size
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    batch = x.shape[1]
    zeros = jnp.zeros((ndir, batch, hsz), x.dtype)
    h0 = zeros if h0 is None else (jnp.swapaxes(h0, 0, 1) if layout else h0)
    if kind == "lstm":
        c0 = zeros if c0 is None else (jnp.swapaxes(c0, 0, 1) if layout else c0)
    own = (kind == "gru" and not linear_before_reset) or (
        kind == "lstm" and (peepholes is not None or input_forget)
    )
    if own:  # ONNX's own cell equations, one lax.scan per direction
        ys, finals = [], []
        for d in range(ndir):
            bd = b[d] if b is not None else jnp.zeros((2 * gates * hsz,), x.dtype)
            rev = direction == "reverse" or d == 1
            if kind == "gru":
                y_d, *f_d = _gru_reset_first(x, w[d], r[d], bd, h0[d], reverse=rev)
            else:
                pd = peepholes[d] if peepholes is not None else jnp.zeros((3 * hsz,), x.dtype)
                y_d, *f_d = _lstm_peephole(
                    x,
                    w[d],
                    r[d],
                    bd,
                    pd,
                    h0[d],
                    c0[d],
                    reverse=rev,
                    input_forget=bool(input_forget),
                )
            ys.append(y_d)
            finals.append(f_d)
        y = jnp.stack(ys, 1)  # (seq, dir, batch, hidden)
        states = [jnp.stack([f[i] for f in finals], 0) for i in range(len(finals[0]))]
        if layout:
            y = y.transpose(2, 0, 1, 3)
            states = [jnp.swapaxes(s, 0, 1) for s in states]
        return (y, *states)
    params: list[Any] = []
    for d in range(ndir):
        wd, rd = w[d], r[d]
        bd = b[d] if b is not None else jnp.zeros((2 * gates * hsz,), x.dtype)
        wb, rb = bd[: gates * hsz], bd[gates * hsz :]
        if kind == "lstm":  # ONNX gates i, o, f, c -> torch i, f, g(c), o
            perm = np.concatenate([np.arange(k * hsz, (k + 1) * hsz) for k in (0, 2, 3, 1)])
        elif kind == "gru":  # ONNX z, r, h -> torch r, z, n
            perm = np.concatenate([np.arange(k * hsz, (k + 1) * hsz) for k in (1, 0, 2)])
        else:
            perm = np.arange(hsz)
        params += [wd[perm], rd[perm], wb[perm], rb[perm]]
    rnn_kind = (
        kind
        if kind != "rnn"
        else ("rnn_relu" if activations and activations[0] in ("Relu", b"Relu") else "rnn_tanh")
    )
    hx = [h0, c0] if kind == "lstm" else [h0]
    if direction == "reverse":
        x = jnp.flip(x, 0)
    y, *states = L._rnn(rnn_kind, x, hx, params, True, 1, ndir == 2, False)
    if direction == "reverse":
        y = jnp.flip(y, 0)
    seq = y.shape[0]
    y = y.reshape(seq, batch, ndir, hsz).transpose(0, 2, 1, 3)  # (seq, dir, batch, hidden)
    if layout:
        y = y.transpose(2, 0, 1, 3)
        states = [jnp.swapaxes(s, 0, 1) for s in states]
    return (y, *states)


def _gru_reset_first(x, w, r, b, h0, *, reverse):
    """One direction of an ONNX GRU with ``linear_before_reset=0`` (ONNX's default): the
    reset gate scales the hidden state before its recurrent product,
    ``h~ = tanh(x W_h + (r * h) R_h + Rb_h + Wb_h)`` (torch, ``linear_before_reset=1``,
    scales the product instead). Gates in ONNX order z, r, h. Returns ``(Y, Y_h)``."""
    hsz = r.shape[-1]
    xw = jnp.einsum("sbi,gi->sbg", x, w) + b[None, None, : 3 * hsz]
    rz, rr, rh = r[:hsz], r[hsz : 2 * hsz], r[2 * hsz :]
    bz, br, bh = b[None, 3 * hsz : 4 * hsz], b[None, 4 * hsz : 5 * hsz], b[None, 5 * hsz :]

    def step(h, xt):
        z = jax.nn.sigmoid(xt[:, :hsz] + h @ rz.T + bz)
        rg = jax.nn.sigmoid(xt[:, hsz : 2 * hsz] + h @ rr.T + br)
        cand = jnp.tanh(xt[:, 2 * hsz :] + (rg * h) @ rh.T + bh)
        h = (1.0 - z) * cand + z * h
        return h, h

    h_last, ys = lax.scan(step, h0, xw, reverse=reverse)
    return ys, h_last


def _lstm_peephole(x, w, r, b, p, h0, c0, *, reverse, input_forget):
    """One direction of an ONNX LSTM with peepholes ``P = [Pi, Po, Pf]`` (and optionally
    ``input_forget``: ``f = 1 - i``). Gates in ONNX order i, o, f, c. Returns
    ``(Y, Y_h, Y_c)``."""
    hsz = r.shape[-1]
    xw = jnp.einsum("sbi,gi->sbg", x, w) + b[None, None, : 4 * hsz] + b[None, None, 4 * hsz :]
    pi, po, pf = p[None, :hsz], p[None, hsz : 2 * hsz], p[None, 2 * hsz :]

    def step(carry, xt):
        h, c = carry
        g = xt + h @ r.T
        i = jax.nn.sigmoid(g[:, :hsz] + pi * c)
        f = 1.0 - i if input_forget else jax.nn.sigmoid(g[:, 2 * hsz : 3 * hsz] + pf * c)
        c = f * c + i * jnp.tanh(g[:, 3 * hsz :])
        o = jax.nn.sigmoid(g[:, hsz : 2 * hsz] + po * c)
        h = o * jnp.tanh(c)
        return (h, c), h

    (h_last, c_last), ys = lax.scan(step, (h0, c0), xw, reverse=reverse)
    return ys, h_last, c_last


@reg("LSTM")
def lstm(
    x,
    w,
    r,
    b=None,
    seq_lens=None,
    h0=None,
    c0=None,
    p=None,
    *,
    activation_alpha=None,
    activation_beta=None,
    activations=None,
    clip=None,
    direction="forward",
    hidden_size,
    input_forget=0,
    layout=0,
):
    return _onnx_rnn(
        "lstm",
        x,
        w,
        r,
        b,
        seq_lens,
        h0,
        c0,
        activations=activations,
        clip=clip,
        direction=direction,
        hidden_size=hidden_size,
        layout=layout,
        peepholes=p,
        input_forget=input_forget,
    )


@reg("GRU")
def gru(
    x,
    w,
    r,
    b=None,
    seq_lens=None,
    h0=None,
    *,
    activation_alpha=None,
    activation_beta=None,
    activations=None,
    clip=None,
    direction="forward",
    hidden_size,
    layout=0,
    linear_before_reset=0,
):
    return _onnx_rnn(
        "gru",
        x,
        w,
        r,
        b,
        seq_lens,
        h0,
        None,
        activations=activations,
        clip=clip,
        direction=direction,
        hidden_size=hidden_size,
        layout=layout,
        linear_before_reset=linear_before_reset,
    )


@reg("RNN")
def rnn(
    x,
    w,
    r,
    b=None,
    seq_lens=None,
    h0=None,
    *,
    activation_alpha=None,
    activation_beta=None,
    activations=None,
    clip=None,
    direction="forward",
    hidden_size,
    layout=0,
):
    return _onnx_rnn(
        "rnn",
        x,
        w,
        r,
        b,
        seq_lens,
        h0,
        None,
        activations=activations,
        clip=clip,
        direction=direction,
        hidden_size=hidden_size,
        layout=layout,
    )
