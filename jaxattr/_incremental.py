"""Incremental evaluation of a bridged CNN on inputs changed in a small box (exact).

Occlusion and feature ablation change a small region of the input per perturbation.
Through convolutions, pools and elementwise layers only that region's receptive field
changes, so most of the network's work is the same for every perturbation (Krypton,
Nakandala et al., SIGMOD 2019). :func:`incremental_plan` reads a bridged model's graph
(:class:`jaxattr.bridge.Converted`) once and, for the changed input region of every
perturbation, works out the changed region of every node (receptive-field propagation,
clipped to the map). Evaluation then runs the model once on the unperturbed input and,
per perturbation (the perturbations of a chunk folded into the batch):

- a *local* node recomputes only a box of fixed size (the largest changed region over
  the perturbations, shifted inside the map at the borders): a convolution or pool reads
  its input's box plus the halo its kernel needs, taken from the unperturbed activation
  (``dynamic_slice``) with the input's recomputed box written in;
- a *full* node is computed on the whole map, the unperturbed activation with the box
  written in (``dynamic_update_slice``). A node is full when it is not spatially local
  (global pool, flatten, linear, attention, a softmax), when one of its inputs is full, or
  when its box would cover more than ``fallback`` of its map.

Every value is the one the full computation gives, to float32 rounding: positions of a
box outside the changed region are recomputed from the same inputs, positions outside the
box are the unperturbed values, which the perturbation cannot reach.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxattr import _caching, _core
from jaxattr._perturbation import explained_scores

__all__ = ["IncrementalPlan", "incremental_plan"]

#: A node is computed in full once its box would cover more than this fraction of its map.
FALLBACK = 0.9
#: ``incremental=None`` (auto) uses the plan when it needs at most this fraction of the
#: full model's multiply-adds.
AUTO_FLOPS = 0.75

_SHAPE_ONLY = frozenset(
    {
        "aten.sym_size.int",
        "aten.sym_numel.default",
        "aten.sym_stride.int",
        "aten.sym_storage_offset.default",
    }
)
#: elementwise ops of one tensor (other arguments are scalars or broadcast constants)
_UNARY = frozenset(
    f"aten.{n}"
    for n in (
        "relu.default gelu.default silu.default sigmoid.default tanh.default hardtanh.default "
        "relu6.default leaky_relu.default elu.default selu.default celu.default "
        "hardswish.default hardsigmoid.default mish.default softplus.default erf.default "
        "exp.default log.default abs.default neg.default sqrt.default rsqrt.default "
        "square.default reciprocal.default clamp.default clamp_min.default clamp_max.default "
        "pow.Tensor_Scalar threshold.default clone.default alias.default "
        "contiguous.default dropout.default feature_dropout.default alpha_dropout.default "
        "_to_copy.default to.dtype to.dtype_layout lift_fresh_copy.default nan_to_num.default"
    ).split()
)
#: elementwise ops of several tensors, with broadcasting
_BINARY = frozenset(
    f"aten.{n}"
    for n in (
        "add.Tensor add.Scalar sub.Tensor sub.Scalar rsub.Tensor rsub.Scalar mul.Tensor "
        "mul.Scalar div.Tensor div.Scalar maximum.default minimum.default where.self "
        "where.ScalarOther where.ScalarSelf pow.Tensor_Tensor clamp.Tensor"
    ).split()
)
#: per-channel ops: their constant operands (statistics, slopes) are per channel
_CHANNELWISE = frozenset(
    {
        "aten._native_batch_norm_legit_no_training.default",
        "aten.prelu.default",
        "aten._prelu_kernel.default",
    }
)
#: tuple-valued ops: which of their outputs are maps computed box by box
_TUPLE_PARTS = {
    "aten._native_batch_norm_legit_no_training.default": (0,),
    **{f"aten.max_pool{d}d_with_indices.default": (0,) for d in (1, 2, 3)},
}
_CONV = "aten.convolution.default"
_MAX_POOL = frozenset(
    [f"aten.max_pool{d}d.default" for d in (1, 2, 3)]
    + [f"aten.max_pool{d}d_with_indices.default" for d in (1, 2, 3)]
)
_AVG_POOL = frozenset(f"aten.avg_pool{d}d.default" for d in (1, 2, 3))
_ADAPTIVE_AVG = frozenset(
    [f"aten.adaptive_avg_pool{d}d.default" for d in (1, 2, 3)]
    + [f"aten._adaptive_avg_pool{d}d.default" for d in (1, 2, 3)]
)
_CAT = frozenset({"aten.cat.default", "aten.concat.default"})
_GETITEM = "operator.getitem"
_LINEAR = frozenset({"aten.linear.default", "aten.addmm.default", "aten.mm.default"})


# --------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Operand:
    """A local value read by a step, and how it is brought to the step's region."""

    name: str
    start: str  # key of the value's box start (P, nsp)
    #: "same" (already the region), "slice" (the region lies inside the box), "update"
    #: (the box lies inside the region: cached region, box written in), "select" (they
    #: overlap: cached region, box placed by a mask)
    mode: str
    cache: str | None  # key of the (padded) unperturbed map
    pad_lo: tuple[int, ...]  # where the map starts in the cached array


@dataclasses.dataclass(frozen=True)
class _Step:
    """One local node: its lowering runs on boxes instead of whole maps."""

    name: str
    start: str  # key of this node's box start
    size: tuple[int, ...]  # its static box size
    region: str  # key of the start of the region its operands are brought to
    region_size: tuple[int, ...]
    operands: tuple[_Operand, ...]
    overrides: tuple[tuple[str, Any], ...]  # lowering arguments replaced (padding, ...)


@dataclasses.dataclass(frozen=True)
class _Program:
    """The static, hashable part of a plan (it keys the compiled programs)."""

    input: str
    input_start: str
    input_size: tuple[int, ...]
    nsp: int
    const: tuple[str, ...]
    steps: tuple[_Step, ...]
    dirty: tuple[str, ...]
    materialize: tuple[tuple[str, str, str], ...]  # (value, start key, cache key)
    cached: tuple[tuple[str, str, tuple[int, ...], tuple[int, ...], float], ...]
    #: run the full nodes on the perturbations folded into the batch (P*N) rather than
    #: ``vmap``-ped: the lowerings then see the real batch (the convolution picks its form
    #: by shape). Only when every full node treats examples independently.
    fold: bool = False
    batch_consts: tuple[str, ...] = ()  # ``sym_size(x, 0)``-like constants, re-read folded


@dataclasses.dataclass(frozen=True, eq=False)
class IncrementalPlan:
    """How a bridged model is evaluated incrementally for a set of changed input boxes.

    Made by :func:`incremental_plan`; used by :func:`jaxattr.occlusion` and
    :func:`jaxattr.feature_ablation` (``incremental=``).

    Attributes:
        x_shape: The input shape (N, C, *spatial) it was planned for.
        n_perturbations: P, the number of changed boxes.
        local: Names of the nodes computed box by box, in graph order.
        full: Names of the nodes computed on whole maps per perturbation.
        boxes: ``node -> (box size, map size)`` for every local node (spatial axes).
        flop_fraction: Multiply-adds per perturbation over the full model's (an
            estimate from the graph: convolutions, linear layers and one per element
            elsewhere).
        bytes_per_perturbation: The largest value one perturbation holds (box, halo or
            full map), in bytes; sizes the chunks.
    """

    program: _Program
    starts: Mapping[str, np.ndarray]
    x_shape: tuple[int, ...]
    n_perturbations: int
    local: tuple[str, ...]
    full: tuple[str, ...]
    order: tuple[str, ...]
    boxes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]
    flop_fraction: float
    bytes_per_perturbation: int

    def describe(self) -> str:
        """A table of the nodes: local (box / map) or full.

        Returns:
            One line per tensor node of the graph, in order.

        Example:
            >>> import torch, jaxattr
            >>> from jaxattr import bridge
            >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
            ...                           torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            ...                           torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 2))
            >>> conv = bridge.from_torch(net.eval(), torch.zeros(2, 3, 16, 16))
            >>> plan = jaxattr.incremental_plan(conv, (1, 3, 16, 16), [[[4, 8], [4, 8]]])
            >>> print(plan.describe())
            convolution                              local  box (6, 6) of (16, 16)
            relu                                     local  box (6, 6) of (16, 16)
            max_pool2d                               local  box (4, 4) of (8, 8)
            view                                     full
            linear                                   full
            multiply-adds per perturbation: 16.4% of the model's
        """
        lines = []
        for name in self.order:
            if name in self.boxes:
                box, size = self.boxes[name]
                lines.append(f"{name:<40} local  box {box} of {size}")
            else:
                lines.append(f"{name:<40} full")
        lines.append(f"multiply-adds per perturbation: {self.flop_fraction:.1%} of the model's")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Graph analysis
# --------------------------------------------------------------------------------------


def _refs(template: Any) -> list[str]:
    from jaxattr.bridge.graph import _Ref

    out: list[str] = []

    def walk(t):
        if isinstance(t, _Ref):
            out.append(t.name)
        elif isinstance(t, (list, tuple)):
            for a in t:
                walk(a)
        elif isinstance(t, dict):
            for a in t.values():
                walk(a)

    walk(template)
    return out


def _expand(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(a) for a in v)
    if len(v) == 0:
        return ()
    return v * n if len(v) == 1 else v


_SHAPES = _caching.WeakTable()  # per model graph: value shapes by input shape


def _graph_shapes(model: Any, x_shape: tuple, dtype: Any) -> dict[str, Any]:
    """``value name -> shape`` (a tuple, or a tuple of them for tuple values), traced once."""
    per_model = _SHAPES.setdefault(model._shared, {})
    key = (tuple(x_shape), jnp.dtype(dtype).name)
    if key in per_model:
        return per_model[key]
    from jaxattr.bridge.graph import _run

    shapes: dict[str, Any] = {}

    def shape_of(v):
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            return tuple(int(s) for s in v.shape)
        if isinstance(v, (tuple, list)):
            return tuple(shape_of(a) for a in v)
        return None

    def run(params, x):
        env = model._env(params, (x,), {})
        _run(model._instrs, env)
        for name, v in env.items():
            shapes[name] = shape_of(v)
        return 0

    jax.eval_shape(run, model.params, jax.ShapeDtypeStruct(tuple(x_shape), dtype))
    per_model[key] = shapes
    return shapes


@dataclasses.dataclass
class _Local:
    lo: np.ndarray  # (P, nsp) tight changed region [lo, hi) (lo == hi: unchanged)
    hi: np.ndarray
    start: np.ndarray  # (P, nsp) box start, inside the map
    size: tuple[int, ...]
    key: str  # key of the start array
    spatial: tuple[int, ...]  # map size


def _box(lo: np.ndarray, hi: np.ndarray, spatial: Sequence[int]) -> tuple[np.ndarray, tuple]:
    """Static box size (largest region, at least 1) and per-perturbation starts."""
    spatial_a = np.asarray(spatial)
    size = np.maximum(1, np.max(hi - lo, axis=0)) if len(lo) else np.ones(len(spatial), int)
    size = np.minimum(size, spatial_a)
    start = np.clip(lo, 0, spatial_a - size)
    return start.astype(np.int32), tuple(int(s) for s in size)


def _mode(
    b_start: np.ndarray, b_size: Sequence[int], r_start: np.ndarray, r_size: Sequence[int]
) -> str:
    """How a box (starts, size) is brought to a region (starts, size), all perturbations."""
    bs, rs = np.asarray(b_size), np.asarray(r_size)
    if np.array_equal(b_start, r_start) and np.array_equal(bs, rs):
        return "same"
    if np.all(r_start >= b_start) and np.all(r_start + rs <= b_start + bs):
        return "slice"
    if np.all(b_start >= r_start) and np.all(b_start + bs <= r_start + rs):
        return "update"
    return "select"


def _window_geometry(
    ins: Any,
    bound: inspect.BoundArguments,
    nsp: int,
    w_shape: Any,
    in_spatial: tuple,
    out_spatial: tuple,
):
    """``(input argument, [(k, s, p, d)] per axis, pad value, overrides)`` or None."""
    a = bound.arguments
    key = ins.key
    if key == _CONV:
        if a.get("transposed"):
            return None
        k = tuple(w_shape[2:])
        s = _expand(a["stride"], nsp)
        p = _expand(a["padding"], nsp)
        d = _expand(a["dilation"], nsp)
        return "input", list(zip(k, s, p, d, strict=True)), 0.0, (("padding", (0,) * nsp),)
    if key in _MAX_POOL:
        k = _expand(a["kernel_size"], nsp)
        s = _expand(a.get("stride", ()), nsp) or k
        p = _expand(a.get("padding", 0), nsp)
        d = _expand(a.get("dilation", 1), nsp)
        return (
            "self",
            list(zip(k, s, p, d, strict=True)),
            -math.inf,
            (("padding", (0,) * nsp), ("ceil_mode", False)),
        )
    if key in _AVG_POOL:
        k = _expand(a["kernel_size"], nsp)
        s = _expand(a.get("stride", ()), nsp) or k
        p = _expand(a.get("padding", 0), nsp)
        floor_out = tuple(
            (n + 2 * pi - ki) // si + 1 for n, ki, si, pi in zip(in_spatial, k, s, p, strict=True)
        )
        include = a.get("count_include_pad", True) or a.get("divisor_override")
        if floor_out != tuple(out_spatial) or (any(p) and not include):
            return None  # ceil-mode overhang or excluded padding: divisors vary at borders
        return (
            "self",
            [(ki, si, pi, 1) for ki, si, pi in zip(k, s, p, strict=True)],
            0.0,
            (("padding", (0,) * nsp), ("ceil_mode", False)),
        )
    if key in _ADAPTIVE_AVG:
        if any(n % o for n, o in zip(in_spatial, out_spatial, strict=True)):
            return None
        geo = [(n // o, n // o, 0, 1) for n, o in zip(in_spatial, out_spatial, strict=True)]
        return "self", geo, 0.0, (("output_size", None),)  # output size: the box's
    return None


def _cost(ins: Any, shapes: Mapping[str, Any], out_spatial_size: int | None, nsp: int) -> float:
    """Multiply-adds of one node per example (``out_spatial_size``: a box's, else the map's)."""
    out = shapes.get(ins.name)
    if isinstance(out, tuple) and out and isinstance(out[0], tuple):
        out = out[0]
    if not isinstance(out, tuple) or not out:
        return 0.0
    per = float(np.prod(out[1:]))
    if out_spatial_size is not None and len(out) == 2 + nsp:
        per = float(np.prod(out[1:2])) * out_spatial_size
    if ins.key == _CONV:
        w = shapes.get(_refs(ins.args[1])[0]) if _refs(ins.args[1]) else None
        if w:
            return per * float(np.prod(w[1:]))
    if ins.key in _LINEAR:
        refs = _refs(ins.args)
        w = shapes.get(refs[-1]) if refs else None
        if ins.key == "aten.linear.default" and len(refs) >= 2:
            w = shapes.get(refs[1])
        if w:
            return per * float(w[-1] if ins.key == "aten.linear.default" else w[0])
    return per


def _channel_ok(c_shape: tuple, out_shape: tuple, nsp: int) -> bool:
    """A constant operand of an elementwise op: no batch or spatial extent (it broadcasts
    over the boxes unchanged)."""
    if len(c_shape) > len(out_shape):
        return False
    aligned = (None,) * (len(out_shape) - len(c_shape)) + tuple(c_shape)
    for axis, c in enumerate(aligned):
        if c is None:
            continue
        if (axis == 0 or axis >= len(out_shape) - nsp) and c != 1:
            return False
    return True


_PLANS = _caching.WeakTable()  # per model graph: plans by input shape and boxes


def incremental_plan(
    model: Any,
    x_shape: Sequence[int],
    changed: Any,
    *,
    fallback: float = FALLBACK,
    dtype: Any = jnp.float32,
) -> IncrementalPlan:
    """Plan the incremental evaluation of a bridged model for changed input boxes.

    Args:
        model: A bridged model (:func:`jaxattr.bridge.from_torch`, ``from_onnx``) with one
            positional input.
        x_shape: The input shape ``(N, C, *spatial)``, e.g. ``(8, 3, 224, 224)``.
        changed: Integer array (P, nsp, 2): per perturbation, the changed region
            ``[lo, hi)`` of each spatial axis of the input (the last ``nsp = len(x_shape)
            - 2`` axes); a perturbation may change any channels inside it.
        fallback: A node whose box would cover more than this fraction of its map is
            computed in full per perturbation, and so is everything after it.
        dtype: The input's dtype.

    Returns:
        An :class:`IncrementalPlan` (see :meth:`IncrementalPlan.describe`).

    Raises:
        TypeError: ``model`` is not a bridged model.
        ValueError: ``x_shape``, ``changed`` or ``fallback`` do not fit (the message names
            the expected and the actual value).

    Example:
        >>> import numpy as np, torch, jaxattr
        >>> from jaxattr import bridge
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 2))
        >>> conv = bridge.from_torch(net.eval(), torch.zeros(2, 3, 16, 16))
        >>> plan = jaxattr.incremental_plan(conv, (1, 3, 16, 16), [[[0, 4], [0, 4]]])
        >>> plan.boxes["convolution"]        # a 4x4 change reaches 5x5 conv outputs
        ((5, 5), (16, 16))
        >>> plan.full
        ('view', 'linear')
    """
    from jaxattr.bridge.graph import Converted

    if not isinstance(model, Converted):
        raise TypeError(
            f"model: expected a bridged model (jaxattr.bridge.Converted), got "
            f"{type(model).__name__}"
        )
    if model._n_args != 1 or model.kwarg_names:
        raise ValueError(
            f"model: incremental evaluation needs a model of one positional input, got "
            f"inputs {model.input_names} and keyword inputs {model.kwarg_names}"
        )
    x_shape = tuple(int(s) for s in x_shape)
    if len(x_shape) < 3:
        raise ValueError(
            f"x_shape: expected (N, C, *spatial) with at least one spatial axis, got {x_shape}"
        )
    nsp = len(x_shape) - 2
    changed = np.asarray(changed)
    if (
        changed.ndim != 3
        or changed.shape[1:] != (nsp, 2)
        or not np.issubdtype(changed.dtype, np.integer)
    ):
        raise ValueError(
            f"changed: expected integers of shape (P, {nsp}, 2) (per perturbation [lo, hi) "
            f"per spatial axis), got {changed.dtype} {changed.shape}"
        )
    if not 0.0 < float(fallback) <= 1.0:
        raise ValueError(f"fallback: expected a fraction in (0, 1], got {fallback!r}")
    spatial = x_shape[2:]
    lo = np.clip(changed[..., 0], 0, spatial).astype(np.int64)
    hi = np.clip(changed[..., 1], 0, spatial).astype(np.int64)
    hi = np.maximum(hi, lo)
    key = (x_shape, jnp.dtype(dtype).name, lo.tobytes(), hi.tobytes(), float(fallback))
    per_model = _PLANS.setdefault(model._shared, collections.OrderedDict())
    if key in per_model:
        per_model.move_to_end(key)
        return per_model[key]
    plan = _analyse(model, x_shape, dtype, lo, hi, float(fallback))
    per_model[key] = plan
    while len(per_model) > 8:
        per_model.popitem(last=False)
    return plan


def _analyse(model, x_shape, dtype, lo, hi, fallback) -> IncrementalPlan:
    shapes = _graph_shapes(model, x_shape, dtype)
    nsp = len(x_shape) - 2
    n = x_shape[0]
    itemsize = jnp.dtype(dtype).itemsize
    x_name = model._user_ph[0]

    def is_map(shape) -> bool:
        return (
            isinstance(shape, tuple)
            and len(shape) == 2 + nsp
            and all(isinstance(s, int) for s in shape)
            and shape[0] == n
        )

    status: dict[str, str] = {}
    for ph, _ in model._param_ph:
        status[ph] = "const"
    for ph, _ in model._const_ph:
        status[ph] = "const"
    for ph in model._user_ph:
        status[ph] = "const"
    status[x_name] = "local"
    start0, size0 = _box(lo, hi, x_shape[2:])
    local: dict[str, _Local] = {x_name: _Local(lo, hi, start0, size0, x_name, tuple(x_shape[2:]))}
    starts: dict[str, np.ndarray] = {x_name: start0}

    key_of = {ins.name: ins.key for ins in model._instrs}
    users: dict[str, list] = collections.defaultdict(list)
    for ins in model._instrs:
        for r in _refs((ins.args, ins.kwargs)):
            users[r].append(ins)

    const: list[str] = []
    steps: list[_Step] = []
    dirty: list[str] = []
    cached: dict[str, tuple] = {}
    full_cost = inc_cost = 0.0
    biggest = int(np.prod(size0)) * int(np.prod(x_shape[1:2])) * n * itemsize

    def cache_key(name: str, pad_lo: tuple, pad_hi: tuple, value: float) -> str:
        key = f"{name}|{pad_lo}|{pad_hi}|{value}"
        cached[key] = (key, name, tuple(pad_lo), tuple(pad_hi), float(value))
        return key

    def operand(
        name: str, r_start: np.ndarray, r_size: tuple, pad_lo: tuple, pad_hi: tuple, value: float
    ) -> _Operand:
        loc = local[name]
        b_start = loc.start + np.asarray(pad_lo, np.int64)
        mode = _mode(b_start, loc.size, r_start, r_size)
        ck = cache_key(name, pad_lo, pad_hi, value) if mode in ("update", "select") else None
        return _Operand(name, loc.key, mode, ck, tuple(pad_lo))

    for ins in model._instrs:
        refs = _refs((ins.args, ins.kwargs))
        kinds = {status.get(r, "const") for r in refs}
        out_shape = shapes.get(ins.name)
        full = _cost(ins, shapes, None, nsp)
        full_cost += full
        if ins.key in _SHAPE_ONLY:
            ok = all(status.get(r, "const") == "const" or r == x_name for r in refs)
            status[ins.name] = "const" if ok else "dirty"
        elif "local" not in kinds and "dirty" not in kinds:
            status[ins.name] = "const"
        elif "dirty" in kinds:
            status[ins.name] = "dirty"
        else:
            step = _local_step(
                ins,
                refs,
                status,
                local,
                shapes,
                nsp,
                is_map,
                users,
                fallback,
                operand,
                starts,
                key_of,
            )
            status[ins.name] = "dirty" if step is None else "local"
            if step is not None:
                steps.append(step)
                loc = local[ins.name]
                inc_cost += _cost(ins, shapes, int(np.prod(loc.size)), nsp)
                c = int(np.prod(out_shape[1:2])) if is_map(out_shape) else 1
                region = int(np.prod(step.region_size))
                biggest = max(biggest, n * c * max(region, int(np.prod(loc.size))) * itemsize)
        if status[ins.name] == "const":
            const.append(ins.name)
            full_cost -= full  # computed once, not per perturbation
        elif status[ins.name] == "dirty":
            dirty.append(ins.name)
            inc_cost += full
            shape = (
                out_shape[0]
                if isinstance(out_shape, tuple) and out_shape and isinstance(out_shape[0], tuple)
                else out_shape
            )
            if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
                biggest = max(biggest, int(np.prod(shape)) * itemsize)

    # values the full nodes (and the outputs) read from local nodes: written into the
    # unperturbed maps
    need: list[str] = []
    for name in dirty:
        ins = next(i for i in model._instrs if i.name == name)
        for r in _refs((ins.args, ins.kwargs)):
            if status.get(r) == "local" and r not in need:
                need.append(r)
    for r in _refs(model._outputs):
        if status.get(r) == "local" and r not in need:
            need.append(r)
    materialize = []
    for name in need:
        loc = local[name]
        zeros = (0,) * nsp
        materialize.append((name, loc.key, cache_key(name, zeros, zeros, 0.0)))
        shape = shapes[name]
        if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple):
            raise AssertionError("tuple-valued local nodes are read through getitem only")
        biggest = max(biggest, int(np.prod(shape)) * itemsize)

    fold = _foldable(model, x_name, status, shapes, n, nsp, dirty)
    program = _Program(
        input=x_name,
        input_start=x_name,
        input_size=size0,
        nsp=nsp,
        const=tuple(const),
        steps=tuple(steps),
        dirty=tuple(dirty),
        materialize=tuple(materialize),
        fold=fold is not None,
        batch_consts=fold or (),
        cached=tuple(cached.values()),
    )
    used = {s.start for s in steps} | {s.region for s in steps} | {x_name}
    used |= {o.start for s in steps for o in s.operands} | {m[1] for m in materialize}
    boxes = {s.name: (local[s.name].size, local[s.name].spatial) for s in steps}
    return IncrementalPlan(
        program=program,
        starts={k: v.astype(np.int32) for k, v in starts.items() if k in used},
        x_shape=tuple(x_shape),
        n_perturbations=int(lo.shape[0]),
        local=tuple(s.name for s in steps),
        full=tuple(dirty),
        order=tuple(i.name for i in model._instrs if i.name in boxes or i.name in dirty),
        boxes=boxes,
        flop_fraction=float(inc_cost / full_cost) if full_cost else 1.0,
        bytes_per_perturbation=int(biggest),
    )


_KEEP_BATCH = (
    _UNARY
    | _BINARY
    | _CHANNELWISE
    | _MAX_POOL
    | _AVG_POOL
    | _ADAPTIVE_AVG
    | {
        _CONV,
        _GETITEM,
        "aten.adaptive_max_pool1d.default",
        "aten.adaptive_max_pool2d.default",
        "aten.adaptive_max_pool3d.default",
        "aten.upsample_nearest2d.default",
        "aten.upsample_bilinear2d.default",
        "aten.upsample_nearest2d.vec",
        "aten.upsample_bilinear2d.vec",
    }
)
_DIM_OPS = {  # op -> the argument naming the axes it works along (axis 0 must not be one)
    "aten.mean.dim": "dim",
    "aten.sum.dim_IntList": "dim",
    "aten.amax.default": "dim",
    "aten.amin.default": "dim",
    "aten._softmax.default": "dim",
    "aten._log_softmax.default": "dim",
    "aten.softmax.int": "dim",
    "aten.log_softmax.int": "dim",
    "aten.squeeze.dims": "dim",
    "aten.unsqueeze.default": "dim",
    "aten.cat.default": "dim",
    "aten.concat.default": "dim",
    "aten.flatten.using_ints": "start_dim",
}
_RESHAPE = frozenset({"aten.view.default", "aten._unsafe_view.default", "aten.reshape.default"})


def _foldable(model, x_name, status, shapes, n, nsp, dirty) -> tuple[str, ...] | None:
    """Whether the full nodes may run on the perturbations folded into the batch.

    True when each full node treats the examples of its batch independently: every value
    it reads or makes leads with the batch (N); constants it reads have no batch extent;
    it works along non-batch axes only (an elementwise op, a convolution or pool, a linear
    layer on the last axis, a reduction, softmax or concatenation along other axes, a
    reshape keeping the batch first). Returns the constants that hold the batch size
    (``sym_size(x, 0)``, re-read with the folded batch), or None.
    """
    by_name = {ins.name: ins for ins in model._instrs}
    batch_consts: list[str] = []
    derived: set[str] = set()
    for ins in model._instrs:
        if status.get(ins.name) != "const":
            continue
        refs = _refs((ins.args, ins.kwargs))
        if x_name in refs or any(r in derived for r in refs):
            derived.add(ins.name)
            if ins.key == "aten.sym_size.int" and refs == [x_name] and ins.args[1] == 0:
                batch_consts.append(ins.name)
            elif ins.key in _SHAPE_ONLY and refs == [x_name]:
                pass  # the size of a non-batch axis: unchanged by folding
            else:
                return None  # a constant computed from the batch size
    sym_free = derived - set(batch_consts)

    def lead_n(shape) -> bool:
        if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple):
            return lead_n(shape[0])  # a tuple op's parts are read through getitem
        return isinstance(shape, tuple) and len(shape) >= 1 and shape[0] == n

    for name in dirty:
        ins = by_name[name]
        key = ins.key
        refs = _refs((ins.args, ins.kwargs))
        if not lead_n(shapes.get(name)):
            return None
        batched = [r for r in refs if status.get(r) in ("local", "dirty")]
        consts = [r for r in refs if status.get(r) not in ("local", "dirty")]
        if any(r in sym_free for r in refs):
            return None
        if not all(lead_n(shapes.get(r)) for r in batched):
            return None
        if key in _RESHAPE:
            shape_arg = ins.args[1] if len(ins.args) > 1 else ins.kwargs.get("size")
            if not isinstance(shape_arg, (list, tuple)) or not shape_arg:
                return None
            first, rest = shape_arg[0], shape_arg[1:]
            first_ok = first == -1 or (_refs(first) and _refs(first)[0] in batch_consts)
            if not first_ok or _refs(list(rest)) or batched != [_refs(ins.args[0])[0]]:
                return None
            continue
        if any(r in batch_consts for r in refs):
            return None
        try:
            bound = inspect.signature(ins.fn).bind(*ins.args, **ins.kwargs)
        except TypeError:
            return None
        first_arg = next(iter(bound.arguments.values()), None)
        if key in _KEEP_BATCH and key not in _UNARY | _BINARY:
            if _refs(first_arg) != batched[:1] or len(batched) != 1 and key != _GETITEM:
                return None
            if key != _GETITEM and key not in _CHANNELWISE:
                for r in consts:  # weights, biases
                    s = shapes.get(r)
                    if isinstance(s, tuple) and len(s) == len(shapes.get(name)) and s[0] == n:
                        return None
            continue
        if key in _UNARY or key in _BINARY:
            out = shapes.get(name)
            for r in consts:
                s = shapes.get(r)
                if isinstance(s, tuple) and len(s) >= len(out) and s[0] != 1:
                    return None
            continue
        if key in ("aten.linear.default", "aten.mm.default", "aten.addmm.default"):
            lhs = bound.arguments.get(
                "mat1"
                if key == "aten.addmm.default"
                else ("input" if key == "aten.linear.default" else "self")
            )
            if _refs(lhs) != batched or len(batched) != 1:
                return None
            continue
        if key in _DIM_OPS:
            dims = bound.arguments.get(_DIM_OPS[key], 0 if key in _CAT else None)
            if dims is None:
                return None
            dims = [dims] if isinstance(dims, int) else list(dims)
            rank = len(shapes[batched[0]]) if batched else 0
            if key == "aten.unsqueeze.default":
                rank += 1
            if any(int(d) % max(rank, 1) == 0 for d in dims) or consts and key in _CAT:
                return None
            continue
        if key == "aten.permute.default":
            dims = list(bound.arguments.get("dims", ()))
            if not dims or int(dims[0]) % len(dims) != 0:
                return None
            continue
        if key == "aten.transpose.int":
            rank = len(shapes[batched[0]])
            if int(bound.arguments["dim0"]) % rank == 0 or int(bound.arguments["dim1"]) % rank == 0:
                return None
            continue
        return None
    for r in _refs(model._outputs):
        if status.get(r) in ("local", "dirty") and not lead_n(shapes.get(r)):
            return None
    return tuple(batch_consts)


def _local_step(
    ins, refs, status, local, shapes, nsp, is_map, users, fallback, operand, starts, key_of
):
    """A :class:`_Step` for a node whose tensor inputs are local or constant, or None
    when it must be computed in full."""
    out_shape = shapes.get(ins.name)
    local_refs = [r for r in dict.fromkeys(refs) if status.get(r) == "local"]
    const_refs = [r for r in dict.fromkeys(refs) if status.get(r) != "local"]
    key = ins.key

    # tuple-valued ops: only their listed parts may be read
    if key in _TUPLE_PARTS:
        parts = _TUPLE_PARTS[key]
        for u in users.get(ins.name, []):
            if u.key != _GETITEM or u.args[1] not in parts or len(_refs(u.args)) != 1:
                return None
        first = out_shape[0] if isinstance(out_shape, tuple) and out_shape else None
        if not is_map(first):
            return None
        map_shape = first
    elif key == _GETITEM:
        src = local_refs[0] if local_refs else None
        if src is None or ins.args[1] not in _TUPLE_PARTS.get(key_of.get(src, ""), ()):
            return None
        loc = local[src]
        local[ins.name] = dataclasses.replace(loc)
        return _Step(
            ins.name,
            loc.key,
            loc.size,
            loc.key,
            loc.size,
            (_Operand(src, loc.key, "same", None, (0,) * nsp),),
            (),
        )
    else:
        if not is_map(out_shape):
            return None
        map_shape = out_shape
    spatial = tuple(map_shape[2:])

    if key in _UNARY or key in _BINARY or key in _CHANNELWISE:
        if key in _CHANNELWISE:
            if local_refs != [refs[0]]:
                return None
            for r in const_refs:
                s = shapes.get(r)
                if isinstance(s, tuple) and len(s) > 1:
                    return None
        else:
            for r in const_refs:
                s = shapes.get(r)
                if s is not None and not (isinstance(s, tuple) and _channel_ok(s, map_shape, nsp)):
                    return None
        for r in local_refs:
            if shapes.get(r) != map_shape:
                return None
        return _merge_step(ins, local_refs, local, spatial, fallback, operand, starts, nsp)

    if key in _CAT:
        dim = ins.args[1] if len(ins.args) > 1 else ins.kwargs.get("dim", 0)
        if const_refs or dim % (2 + nsp) != 1:
            return None
        for r in local_refs:
            s = shapes.get(r)
            if not is_map(s) or tuple(s[2:]) != spatial:
                return None
        return _merge_step(ins, local_refs, local, spatial, fallback, operand, starts, nsp)

    if key == _CONV or key in _MAX_POOL or key in _AVG_POOL or key in _ADAPTIVE_AVG:
        try:
            bound = inspect.signature(ins.fn).bind(*ins.args, **ins.kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        arg = "input" if key == _CONV else "self"
        src_refs = _refs(bound.arguments.get(arg))
        if len(src_refs) != 1 or local_refs != src_refs:
            return None
        src = src_refs[0]
        in_shape = shapes.get(src)
        if not is_map(in_shape):
            return None
        w_shape = shapes.get(_refs(bound.arguments.get("weight"))[0]) if key == _CONV else None
        if key == _CONV and (w_shape is None or _refs(bound.arguments.get("weight")) == []):
            return None
        geo = _window_geometry(ins, bound, nsp, w_shape, tuple(in_shape[2:]), spatial)
        if geo is None:
            return None
        _, axes, pad_value, overrides = geo
        loc = local[src]
        out_lo = np.zeros_like(loc.lo)
        out_hi = np.zeros_like(loc.hi)
        halo_size, pad_lo, pad_hi = [], [], []
        for i, ((k, s, p, d), n_in, n_out) in enumerate(
            zip(axes, in_shape[2:], spatial, strict=True)
        ):
            a, b = loc.lo[:, i], loc.hi[:, i]
            o_lo = np.clip(-((-(a + p - d * (k - 1))) // s), 0, n_out)
            o_hi = np.clip((b - 1 + p) // s + 1, 0, n_out)
            empty = (b <= a) | (o_hi <= o_lo)
            out_lo[:, i] = np.where(empty, 0, o_lo)
            out_hi[:, i] = np.where(empty, 0, o_hi)
            pad_lo.append(p)
            pad_hi.append(max(0, (n_out - 1) * s - p + d * (k - 1) + 1 - n_in))
        start, size = _box(out_lo, out_hi, spatial)
        if np.prod(size) > fallback * np.prod(spatial):
            return None
        halo_start = np.zeros_like(start)
        for i, (k, s, _p, d) in enumerate(axes):
            halo_start[:, i] = start[:, i] * s
            halo_size.append((size[i] - 1) * s + d * (k - 1) + 1)
        region_key = f"{ins.name}@halo"
        starts[ins.name] = start
        starts[region_key] = halo_start.astype(np.int32)
        local[ins.name] = _Local(out_lo, out_hi, start, size, ins.name, spatial)
        ops = (operand(src, halo_start, tuple(halo_size), tuple(pad_lo), tuple(pad_hi), pad_value),)
        if key in _ADAPTIVE_AVG:
            overrides = (("output_size", tuple(size)),)
        return _Step(ins.name, ins.name, size, region_key, tuple(halo_size), ops, tuple(overrides))
    return None


def _merge_step(ins, local_refs, local, spatial, fallback, operand, starts, nsp):
    """Elementwise op of local operands: on their common box (the hull of their regions)."""
    locs = [local[r] for r in local_refs]
    if len({(lc.key, lc.size) for lc in locs}) == 1:  # one box: no merge needed
        lc = locs[0]
        local[ins.name] = _Local(lc.lo, lc.hi, lc.start, lc.size, lc.key, spatial)
        ops = tuple(_Operand(r, lc.key, "same", None, (0,) * nsp) for r in local_refs)
        return _Step(ins.name, lc.key, lc.size, lc.key, lc.size, ops, ())
    los = np.stack([np.where(lc.hi > lc.lo, lc.lo, np.iinfo(np.int64).max) for lc in locs])
    his = np.stack([np.where(lc.hi > lc.lo, lc.hi, np.iinfo(np.int64).min) for lc in locs])
    lo = los.min(0)
    hi = his.max(0)
    empty = hi <= lo
    lo = np.where(empty, 0, lo)
    hi = np.where(empty, 0, hi)
    start, size = _box(lo, hi, spatial)
    if np.prod(size) > fallback * np.prod(spatial):
        return None
    starts[ins.name] = start
    local[ins.name] = _Local(lo, hi, start, size, ins.name, spatial)
    zeros = (0,) * nsp
    ops = tuple(operand(r, start, size, zeros, zeros, 0.0) for r in local_refs)
    return _Step(ins.name, ins.name, size, ins.name, size, ops, ())


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def _bring(
    op: _Operand,
    value: Any,
    starts: Mapping[str, Any],
    cache: Mapping[str, Any],
    region: str,
    region_size: tuple[int, ...],
    p: int,
    n: int,
) -> Any:
    """A local value (folded (P*N, C, *box)) on a step's region: (P*N, C, *region_size)."""
    if op.mode == "same":
        return value
    nsp = len(region_size)
    b = value.reshape((p, n) + value.shape[1:])
    lead = tuple(b.shape[2 : b.ndim - nsp])
    zeros = (0,) * (1 + len(lead))
    size = (n, *lead, *region_size)
    sb = starts[op.start] + jnp.asarray(op.pad_lo, jnp.int32)[None]  # (P, nsp)
    r = starts[region]

    def window(a, o):
        return lax.dynamic_slice(a, (*zeros, *(o[i] for i in range(nsp))), size)

    if op.mode == "slice":  # the region lies inside the box
        out = jax.vmap(window)(b, r - sb)
    else:
        c = cache[op.cache]
        halo = jax.vmap(lambda rr: window(c, rr))(r)
        if op.mode == "update":  # the box lies inside the region
            out = jax.vmap(
                lambda h, bb, o: lax.dynamic_update_slice(
                    h, bb, (*zeros, *(o[i] for i in range(nsp)))
                )
            )(halo, b, sb - r)
        else:  # they overlap: place the box by a mask
            box = b.shape[b.ndim - nsp :]
            bp = jnp.pad(b, [(0, 0)] * (b.ndim - nsp) + [(s, s) for s in region_size])
            placed = jax.vmap(window)(bp, r - sb + jnp.asarray(region_size, jnp.int32)[None])
            mask = None
            for i in range(nsp):
                rel = r[:, i : i + 1] + jnp.arange(region_size[i])[None] - sb[:, i : i + 1]
                m = (rel >= 0) & (rel < box[i])
                shape = [p] + [1] * nsp
                shape[1 + i] = region_size[i]
                m = m.reshape(shape)
                mask = m if mask is None else mask & m
            mask = mask.reshape((p, 1) + (1,) * len(lead) + tuple(region_size))
            out = jnp.where(mask, placed, halo)
    return out.reshape((p * n,) + out.shape[2:])


def cache_run(program: _Program, model: Any, x: jax.Array) -> tuple[Any, dict[str, Any]]:
    """The model's output on ``x`` and the unperturbed maps the plan reads (padded)."""
    from jaxattr.bridge.graph import _run

    env = model._env(model.params, (x,), {})
    _run(model._instrs, env)
    cache = {}
    for key, name, pad_lo, pad_hi, value in program.cached:
        a = env[name]
        if any(pad_lo) or any(pad_hi):
            pads = [(0, 0)] * (a.ndim - program.nsp) + list(zip(pad_lo, pad_hi, strict=True))
            a = jnp.pad(a, pads, constant_values=jnp.asarray(value, a.dtype))
        cache[key] = a
    return model._finish(env), cache


def evaluate(
    program: _Program,
    model: Any,
    x: jax.Array,
    cache: Mapping[str, Any],
    starts: Mapping[str, Any],
    xbox: jax.Array,
) -> Any:
    """The model's outputs for P perturbations, each a changed box of the input.

    Args:
        program: The plan's program.
        model: The bridged model.
        x: The unperturbed input (N, C, *spatial).
        cache: What :func:`cache_run` returned for ``x``.
        starts: The plan's start arrays for these perturbations, each (P, nsp).
        xbox: The perturbed input boxes (P, N, C, *program.input_size), at
            ``starts[program.input_start]``.

    Returns:
        The model's output per perturbation, stacked: (P, *output shape).
    """
    from jaxattr.bridge.graph import _resolve

    p, n = xbox.shape[0], x.shape[0]
    nsp = program.nsp
    by_name = {ins.name: ins for ins in model._instrs}
    env = model._env(model.params, (x,), {})
    for name in program.const:
        ins = by_name[name]
        env[name] = ins.fn(*_resolve(ins.args, env), **_resolve(ins.kwargs, env))
    boxes: dict[str, Any] = {program.input: xbox.reshape((p * n,) + xbox.shape[2:])}
    for step in program.steps:
        ins = by_name[step.name]
        vals = {
            op.name: _bring(op, boxes[op.name], starts, cache, step.region, step.region_size, p, n)
            for op in step.operands
        }
        scope = collections.ChainMap(vals, env)
        args, kwargs = _resolve(ins.args, scope), _resolve(ins.kwargs, scope)
        if step.overrides:
            bound = inspect.signature(ins.fn).bind(*args, **kwargs)
            bound.apply_defaults()
            for k, v in step.overrides:
                bound.arguments[k] = list(v) if isinstance(v, tuple) else v
            args, kwargs = bound.args, bound.kwargs
        boxes[step.name] = ins.fn(*args, **kwargs)
    mats: dict[str, Any] = {}
    for name, start_key, cache_key in program.materialize:
        b = boxes[name]
        b = b.reshape((p, n) + b.shape[1:])
        c = cache[cache_key]
        zeros = (0,) * (b.ndim - 1 - nsp)
        mats[name] = jax.vmap(
            lambda bb, s, c=c, zeros=zeros: lax.dynamic_update_slice(
                c, bb, (*zeros, *(s[i] for i in range(nsp)))
            )
        )(b, starts[start_key])

    def tail(m, consts):
        scope = collections.ChainMap(dict(m), consts)
        for name in program.dirty:
            ins = by_name[name]
            scope[name] = ins.fn(*_resolve(ins.args, scope), **_resolve(ins.kwargs, scope))
        return model._finish(scope)

    if program.fold:  # the tail on the batch P*N (see _foldable)
        folded = collections.ChainMap({}, env)
        stub = collections.ChainMap({program.input: _Shaped((p * n,) + tuple(x.shape[1:]))}, env)
        for name in program.batch_consts:
            ins = by_name[name]
            folded[name] = ins.fn(*_resolve(ins.args, stub), **_resolve(ins.kwargs, stub))
        m = {k: v.reshape((p * n,) + v.shape[2:]) for k, v in mats.items()}
        out = tail(m, folded)
        return jax.tree_util.tree_map(lambda a: a.reshape((p, n) + a.shape[1:]), out)
    if not mats:
        mats = {"": jnp.zeros((p,), jnp.float32)}
    return jax.vmap(lambda m: tail(m, env))(mats)


class _Shaped:
    """Stands for the folded input where only its shape is read (``sym_size``)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.ndim = len(shape)


# --------------------------------------------------------------------------------------
# Perturbation methods on top of the plan
# --------------------------------------------------------------------------------------


def _is_bridged(fn: Any) -> bool:
    """Whether ``fn`` is a bridged model (the bridge is imported only if it may be one)."""
    if not type(fn).__module__.startswith("jaxattr.bridge"):
        return False
    from jaxattr.bridge.graph import Converted

    return isinstance(fn, Converted)


def choose(
    fn: Any, x: Any, args: tuple, incremental: bool | None, method: str, changed: Any
) -> IncrementalPlan | None:
    """The plan a perturbation method uses, or None for the full computation.

    ``incremental=None`` (auto) plans when ``fn`` is a bridged model of one input, ``x``
    one floating array (N, C, *spatial) and no ``args``, and uses the plan when it needs
    at most :data:`AUTO_FLOPS` of the model's multiply-adds; ``True`` insists (and raises
    where it cannot); ``False`` never plans. ``changed`` is a thunk giving the changed
    boxes (P, nsp, 2), called only when a plan is made.
    """
    if incremental is False:
        return None
    if incremental is not None and incremental is not True:
        raise TypeError(f"incremental: expected None, True or False, got {incremental!r}")
    why = None
    leaves = jax.tree_util.tree_leaves(x)
    if not _is_bridged(fn):
        why = (
            f"fn: incremental evaluation needs a bridged model (jaxattr.bridge.Converted), "
            f"got {type(fn).__name__}"
        )
    elif fn._n_args != 1 or fn.kwarg_names:
        why = (
            f"fn: incremental evaluation needs a model of one positional input, got "
            f"inputs {fn.input_names} and keyword inputs {fn.kwarg_names}"
        )
    elif len(leaves) != 1:
        why = f"x: incremental evaluation needs one input array, got {len(leaves)}"
    elif args:
        why = f"args: incremental evaluation takes no extra arguments, got {len(args)}"
    elif leaves[0].ndim < 3 or not jnp.issubdtype(leaves[0].dtype, jnp.floating):
        why = (
            f"x: incremental evaluation needs a floating array (N, C, *spatial), got "
            f"{leaves[0].dtype} of shape {tuple(leaves[0].shape)}"
        )
    if why is not None:
        if incremental:
            raise ValueError(f"{method}(incremental=True): {why}")
        return None
    boxes = changed()
    if boxes is None:
        if incremental:
            raise ValueError(
                f"{method}(incremental=True): the perturbations change no bounded region of "
                "the input's spatial axes"
            )
        return None
    plan = incremental_plan(fn, leaves[0].shape, boxes, fallback=FALLBACK, dtype=leaves[0].dtype)
    if incremental is None and (not plan.local or plan.flop_fraction > AUTO_FLOPS):
        return None
    return plan


def chunks(plan: IncrementalPlan, total: int, batch_size: int | None) -> list[tuple[int, int]]:
    """Chunks of at most ``batch_size`` perturbations, else sized by the memory budget from
    the plan's largest per-perturbation value (four of them at a time)."""
    return _core.batched_chunks(total, batch_size, unit_bytes=4 * plan.bytes_per_perturbation)


@_core.cached_jit(("model", "program"))
def _cache_scores(*, model, program, x, target):
    y, cache = cache_run(program, model, x)
    return explained_scores(y, target), cache


def _occluded_boxes(x, b, wstarts, bstarts, window, size):
    """The input boxes of occlusion windows: (P, N, C, *size), the window filled by b."""
    nsp = len(size)
    lead = x.ndim - 1 - nsp
    shape = tuple(x.shape[: 1 + lead]) + tuple(size)

    def one(ws, bs):
        idx = (0,) * (1 + lead) + tuple(bs[i] for i in range(nsp))
        xs = lax.dynamic_slice(x, idx, shape)
        bl = lax.dynamic_slice(b, idx, shape)
        mask = None
        for d in range(lead + nsp):
            if d < lead:
                pos = jnp.arange(x.shape[1 + d])
            else:
                pos = bs[d - lead] + jnp.arange(size[d - lead])
            inside = (pos >= ws[d]) & (pos < ws[d] + window[d])
            dims = [1] * (lead + nsp)
            dims[d] = pos.shape[0]
            inside = inside.reshape(dims)
            mask = inside if mask is None else mask & inside
        return jnp.where(mask[None], bl, xs)

    return jax.vmap(one)(wstarts, bstarts)


def occlusion_changed(
    grid: np.ndarray, window: Sequence[int], x_shape: Sequence[int]
) -> np.ndarray:
    """Changed spatial regions (P, nsp, 2) of Captum-style windows (starts ``grid`` (P, D)
    over the non-batch dimensions, the last ``nsp`` spatial)."""
    nsp = len(x_shape) - 2
    spatial = np.asarray(x_shape[2:])
    lo = grid[:, -nsp:].astype(np.int64)
    hi = np.minimum(lo + np.asarray(window[-nsp:]), spatial)
    return np.stack([lo, hi], -1)


@_core.cached_jit(("model", "program", "window"))
def _occlusion_chunk(
    *, model, program, x, baselines, target, base, cache, starts, wstarts, valid, window
):
    b = _core.expand_baselines(baselines, x)
    xbox = _occluded_boxes(x, b, wstarts, starts[program.input_start], window, program.input_size)
    y = evaluate(program, model, x, cache, starts, xbox)
    s = jax.vmap(lambda yy: explained_scores(yy, target))(y)
    w = jnp.where(valid[:, None], base[None] - s, 0.0)  # padding of a last, short chunk
    return _window_sum(w, wstarts, window, tuple(x.shape[1:]))


def _window_sum(
    w: jax.Array, wstarts: jax.Array, window: tuple[int, ...], dims: tuple[int, ...]
) -> jax.Array:
    """``sum_p w[p, o] * mask_p``: (O, *dims), for the boxes ``mask_p`` starting at
    ``wstarts[p]`` (P, D) of size ``window``; the masks are separable, so this is a chain of
    outer products and one small matrix product, not P dense masks."""
    factors = []
    for d, (size, k) in enumerate(zip(dims, window, strict=True)):
        i = jnp.arange(size)
        st = wstarts[:, d : d + 1]
        factors.append(((i[None] >= st) & (i[None] < st + k)).astype(w.dtype))  # (P, size)
    t = w
    for f in factors[:-1]:
        t = (t[:, :, None] * f[:, None, :]).reshape(t.shape[0], -1)
    out = jnp.einsum("pa,pb->ab", t, factors[-1])
    return out.reshape((w.shape[1], *dims))


def _feature_boxes(x, b, fm, fids, bstarts, size):
    """The input boxes of ablated features: (P, N, C, *size), feature ``fids[p]`` of the
    id map ``fm`` (1 or N, C, *spatial) replaced by b."""
    nsp = len(size)
    lead = x.ndim - 1 - nsp
    shape = tuple(x.shape[: 1 + lead]) + tuple(size)
    fshape = (fm.shape[0],) + tuple(x.shape[1 : 1 + lead]) + tuple(size)

    def one(f, bs):
        idx = (0,) * (1 + lead) + tuple(bs[i] for i in range(nsp))
        xs = lax.dynamic_slice(x, idx, shape)
        bl = lax.dynamic_slice(b, idx, shape)
        m = lax.dynamic_slice(fm, idx, fshape) == f
        return jnp.where(m, bl, xs)

    return jax.vmap(one)(fids, bstarts)


def feature_changed(fm: np.ndarray, n_features: int) -> np.ndarray | None:
    """Changed spatial regions (F, nsp, 2) of features: each id's bounding box over the
    spatial axes (the last ``fm.ndim - 2``) of the id map ``fm`` (1 or N, C, *spatial)."""
    nsp = fm.ndim - 2
    if nsp < 1:
        return None
    out = np.zeros((n_features, nsp, 2), np.int64)
    for i in range(nsp):
        axis = fm.ndim - nsp + i
        ids = np.moveaxis(fm, axis, -1).reshape(-1, fm.shape[axis])
        pos = np.broadcast_to(np.arange(fm.shape[axis]), ids.shape)
        lo = np.full(n_features, np.iinfo(np.int64).max)
        hi = np.full(n_features, -1)
        np.minimum.at(lo, ids.reshape(-1), pos.reshape(-1))
        np.maximum.at(hi, ids.reshape(-1), pos.reshape(-1))
        out[:, i, 0] = lo
        out[:, i, 1] = hi + 1
    return out


@_core.cached_jit(("model", "program"))
def _feature_chunk(*, model, program, x, baselines, target, cache, starts, fm, fids):
    b = _core.expand_baselines(baselines, x)
    xbox = _feature_boxes(x, b, fm, fids, starts[program.input_start], program.input_size)
    y = evaluate(program, model, x, cache, starts, xbox)
    return jax.vmap(lambda yy: explained_scores(yy, target))(y)


def _padded(parts: list[tuple[int, int]], total: int):
    """Every chunk as indices of one length (the last padded with the last perturbation,
    so that one compiled program serves all), with a mask of the real ones."""
    size = parts[0][1] - parts[0][0]
    for a, b in parts:
        idx = np.minimum(np.arange(a, a + size), total - 1)
        yield a, b, idx, np.arange(a, a + size) < b


def run_occlusion(
    plan: IncrementalPlan,
    fn: Any,
    x: jax.Array,
    baselines: Any,
    target: Any,
    grid: np.ndarray,
    window: tuple[int, ...],
    batch_size: int | None,
    show_progress: bool,
) -> jax.Array:
    """Occlusion's summed window scores ``sum_p (f(x) - f(x_p)) * mask_p``: (n_out, *x[1:]).

    Args:
        plan: The plan for the windows' changed boxes (:func:`occlusion_changed`).
        fn: The bridged model.
        x: The input (N, C, *spatial).
        baselines: Validated baselines broadcastable to x.
        target: A normalised target, or None (every output).
        grid: Window starts (P, D) over the non-batch dimensions.
        window: The window shape (D,).
        batch_size: Windows per compiled call (None: from the memory budget).
        show_progress: A progress bar over the chunks (eager calls).
    """
    from jaxattr._progress import progress, sync

    base, cache = _cache_scores(model=fn, program=plan.program, x=x, target=target)
    acc = None
    parts = chunks(plan, len(grid), batch_size)
    show = bool(show_progress) and not isinstance(x, jax.core.Tracer)
    for _a, _b, idx, valid in progress(
        _padded(parts, len(grid)), total=len(parts), desc="occlusion", enabled=show
    ):
        part = _occlusion_chunk(
            model=fn,
            program=plan.program,
            x=x,
            baselines=baselines,
            target=target,
            base=base,
            cache=cache,
            starts={k: v[idx] for k, v in plan.starts.items()},
            wstarts=grid[idx],
            valid=valid,
            window=tuple(window),
        )
        acc = part if acc is None else acc + part
        sync(acc, show)
    return acc


def run_features(
    plan: IncrementalPlan,
    fn: Any,
    x: jax.Array,
    baselines: Any,
    target: Any,
    fm: np.ndarray,
    batch_size: int | None,
    show_progress: bool,
) -> tuple[jax.Array, jax.Array]:
    """Feature ablation's scores: base (n_out,) and per feature (F, n_out).

    Args:
        plan: The plan for the features' bounding boxes (:func:`feature_changed`).
        fn: The bridged model.
        x: The input (N, C, *spatial).
        baselines: Validated baselines broadcastable to x.
        target: A normalised target, or None (every output).
        fm: Feature ids 0..F-1, (1 or N, C, *spatial).
        batch_size: Features per compiled call (None: from the memory budget).
        show_progress: A progress bar over the chunks (eager calls).
    """
    from jaxattr._progress import progress, sync

    base, cache = _cache_scores(model=fn, program=plan.program, x=x, target=target)
    total = plan.n_perturbations
    fids = np.arange(total, dtype=np.int32)
    outs = []
    parts = chunks(plan, total, batch_size)
    show = bool(show_progress) and not isinstance(x, jax.core.Tracer)
    for a, b, idx, _valid in progress(
        _padded(parts, total), total=len(parts), desc="feature_ablation", enabled=show
    ):
        part = _feature_chunk(
            model=fn,
            program=plan.program,
            x=x,
            baselines=baselines,
            target=target,
            cache=cache,
            starts={k: v[idx] for k, v in plan.starts.items()},
            fm=fm,
            fids=fids[idx],
        )
        outs.append(sync(part[: b - a], show))
    return base, outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
