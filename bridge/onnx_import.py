"""ONNX model -> pure JAX: parse, check, group nodes into layers, interpret.

The second front door of the bridge. :func:`from_onnx` reads a model with the ``onnx``
package (never onnxruntime), lists every operator it cannot lower before anything runs, and
builds the same neutral graph as the ``torch.export`` front end, so the result is a
:class:`~jaxattr.bridge.Converted` with params, ``fn``, ``apply``, layers and taps.

Layer names come from what the exporter wrote:

* ``torch.onnx.export(..., dynamo=False)`` (TorchScript) names nodes by module scope,
  ``/layer4/layer4.1/conv2/Conv``; a module called twice gets ``relu`` and ``relu_1``
  scopes, read back as ``layer1.0.relu`` and ``layer1.0.relu:1`` as the torch bridge names
  them.
* ``torch.onnx.export(..., dynamo=True)`` stores module paths and classes in each node's
  ``pkg.torch.onnx.name_scopes`` / ``class_hierarchy`` metadata.
* Anything else (``onnx.helper``, other frameworks): each operator that makes a layer is one,
  named by its node name.

A convolution or dense layer whose weight initializer is called ``<path>.weight`` is named
``<path>``: exporters that fold a BatchNorm into the convolution before it (the dynamo
exporter's optimizer, the TorchScript exporter with ``do_constant_folding=True`` in eval
mode) may file the fused node under the BatchNorm's scope, and the weight's name is the one
that still says which module it was.
"""

from __future__ import annotations

import ast
import collections
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching

from .errors import BridgeError, UnsupportedOpsError
from .graph import MODULE_KINDS, Converted, _Graph, _Input, _Instr, _module_kind, _Ref
from .onnx_ops import _NP_DTYPES, ONNX_LOWERINGS, STATIC_INPUTS, ConcreteInputError

__all__ = ["from_onnx", "supported_onnx_ops", "OnnxFormatError", "ConcreteInputError", "MIN_OPSET"]

#: The oldest default-domain opset read as is; older models are upgraded with
#: ``onnx.version_converter`` first.
MIN_OPSET = 13


class OnnxFormatError(BridgeError, ValueError):
    """The data is not an ONNX model, is truncated, or fails ``onnx.checker``."""


# --------------------------------------------------------------------------- op kinds
_ACTIVATIONS = set(
    "Relu LeakyRelu Elu Selu Celu Gelu Sigmoid Tanh Softplus Softsign HardSigmoid HardSwish "
    "Mish PRelu ThresholdedRelu Clip".split()
)
_ELEMENTWISE = _ACTIVATIONS | set(
    "Add Sub Mul Div Pow Sqrt Exp Log Neg Abs Reciprocal Erf Where Max Min Cast CastLike "
    "Identity Floor Ceil Round Sign Sin Cos Equal Less Greater Not And Or".split()
)
#: op type -> layer kind, for operators that are layers on their own
_OP_KINDS: dict[str, str] = {
    "Conv": "conv",
    "ConvTranspose": "conv_transpose",
    "Gemm": "linear",
    "LSTM": "recurrent",
    "GRU": "recurrent",
    "RNN": "recurrent",
    "BatchNormalization": "batch_norm",
    "LayerNormalization": "norm",
    "GroupNormalization": "norm",
    "InstanceNormalization": "norm",
    "LpNormalization": "norm",
    "LRN": "norm",
    "Softmax": "softmax",
    "LogSoftmax": "softmax",
    "MaxPool": "max_pool",
    "GlobalMaxPool": "max_pool",
    "AveragePool": "avg_pool",
    "GlobalAveragePool": "avg_pool",
    "LpPool": "avg_pool",
    "Resize": "upsample",
    "Upsample": "upsample",
    "DepthToSpace": "upsample",
    "Dropout": "dropout",
    "Add": "add",
    "Sum": "add",
    "Mul": "mul",
    "Attention": "attention",
}
_OP_KINDS.update({a: "activation" for a in _ACTIVATIONS})
_WEIGHTED = ("conv", "conv_transpose", "linear", "recurrent", "embedding")
_PRIORITY = _WEIGHTED + (
    "attention",
    "batch_norm",
    "norm",
    "softmax",
    "max_pool",
    "avg_pool",
    "upsample",
    "dropout",
)
_RESHAPES = set("Flatten Reshape Transpose Squeeze Unsqueeze SpaceToDepth".split())

#: op type -> {input position: local parameter name}
_ROLES: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "kernel"},
    "Gather": {0: "weight"},
    "PRelu": {1: "weight"},
    "BatchNormalization": {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"},
    "LayerNormalization": {1: "weight", 2: "bias"},
    "GroupNormalization": {1: "weight", 2: "bias"},
    "InstanceNormalization": {1: "weight", 2: "bias"},
    "LSTM": {1: "W", 2: "R", 3: "B"},
    "GRU": {1: "W", 2: "R", 3: "B"},
    "RNN": {1: "W", 2: "R", 3: "B"},
    "Add": {0: "bias", 1: "bias"},
}
_ATTR_ALIASES = {"epsilon": "eps"}


def _snake(op_type: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", op_type).lower()


# --------------------------------------------------------------------------- loading
def _parse(data: bytes, where: str) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not data:
        raise OnnxFormatError(f"model: {where} is empty (0 bytes), not an ONNX model")
    try:
        proto = onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise OnnxFormatError(
            f"model: {where} is not an ONNX model or is truncated ({len(data)} bytes; "
            f"protobuf said: {e})"
        ) from e
    if not proto.ir_version or not proto.HasField("graph") or not proto.graph.output:
        raise OnnxFormatError(
            f"model: {where} ({len(data)} bytes) parsed as protobuf but is not an ONNX model "
            "(no IR version, graph or graph output); the file is truncated or of another "
            "format"
        )
    return proto


def _load(model: Any) -> tuple[Any, str]:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model, "the ModelProto"
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _parse(bytes(model), "the given bytes"), "the given bytes"
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"model: no ONNX file at {str(path)!r}")
        proto = _parse(path.read_bytes(), repr(str(path)))
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(proto, str(path.parent))
        return proto, repr(str(path))
    raise TypeError(
        "model: expected a path to an .onnx file, its bytes or an onnx.ModelProto, got "
        f"{type(model).__name__}"
    )


def _check(proto: Any, where: str) -> Any:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as e:
        first = "\n".join(str(e).strip().splitlines()[:4])
        raise OnnxFormatError(
            f"model: {where} is not a valid ONNX model (onnx.checker: {first})"
        ) from e
    version = _default_opset(proto)
    # a model importing only other domains (ai.onnx.ml, com.microsoft) has no default-domain
    # opset to upgrade: its operators are checked (and listed if unsupported) later
    if version is not None and version < MIN_OPSET:
        try:
            from onnx import version_converter

            proto = version_converter.convert_version(proto, MIN_OPSET)
        except Exception as e:  # noqa: BLE001 - re-raised with advice
            raise OnnxFormatError(
                f"model: {where} uses opset {version}; jaxattr reads opset {MIN_OPSET} and "
                f"newer and onnx.version_converter could not upgrade it ({e}); re-export "
                f"with opset_version>={MIN_OPSET}"
            ) from e
        warnings.warn(
            f"model: opset {version} upgraded to {MIN_OPSET} with onnx.version_converter",
            stacklevel=3,
        )
    return proto


def _default_opset(proto: Any) -> int | None:
    """The default-domain opset of the model; None when it imports only other domains."""
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import AttributeProto, helper, numpy_helper

    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.type == AttributeProto.TENSOR:
            out[a.name] = numpy_helper.to_array(a.t)
        elif a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            out[a.name] = "<graph>"
        else:
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, list):
                v = [x.decode() if isinstance(x, bytes) else x for x in v]
            out[a.name] = v
    return out


def _array(t: Any) -> np.ndarray:
    from onnx import numpy_helper

    arr = numpy_helper.to_array(t)
    if arr.dtype == np.float64 and not jax.config.jax_enable_x64:
        arr = arr.astype(np.float32)
    return arr


# --------------------------------------------------------------------------- scopes
class _Scope:
    """Where a node sits in the exporting framework's module tree."""

    __slots__ = ("paths", "calls", "classes", "scoped")

    def __init__(self, paths: list[str], calls: list[Any], classes: dict[str, str], scoped: bool):
        self.paths = paths  # outermost -> innermost module path (root excluded)
        self.calls = calls  # per path: what tells two calls of that module apart
        self.classes = classes
        self.scoped = scoped


def _node_scopes(nodes: Sequence[Any], init_names: set[str]) -> list[_Scope]:
    raw: list[tuple[list[str], dict[str, str], bool]] = []
    seen_paths: set[str] = set()
    for n in nodes:
        md = {p.key: p.value for p in n.metadata_props}
        scopes = md.get("pkg.torch.onnx.name_scopes")
        if scopes is not None:  # dynamo exporter: full module paths, last entry the op
            try:
                names = [str(s) for s in ast.literal_eval(scopes)]
                classes = [
                    str(s) for s in ast.literal_eval(md.get("pkg.torch.onnx.class_hierarchy", "[]"))
                ]
            except Exception:  # noqa: BLE001 - malformed metadata: no scope
                names, classes = [], []
            paths = [s for s in names[1:-1] if s and not s.startswith("_empty")]
            cls = {}
            for s, c in zip(names[1:-1], classes[1:-1], strict=False):
                cls[s] = c.rsplit(".", 1)[-1]
            raw.append((paths, cls, True))
        elif n.name.startswith("/"):  # TorchScript exporter: /layer1/layer1.0/conv1/Conv
            segs = [s for s in n.name.split("/")[1:-1] if s]
            paths, parts = [], []
            for s in segs:
                parts = _join_scope(parts, s.split("."))
                paths.append(".".join(parts))
            raw.append((paths, {}, True))
        else:
            raw.append(([], {}, False))
        seen_paths.update(raw[-1][0])
    out = []
    for paths, cls, scoped in raw:
        canon, calls = [], []
        for p in paths:
            parent, _, last = p.rpartition(".")
            m = re.fullmatch(r"(.+)_(\d+)", last)
            c = p
            if m:  # "relu_1" beside "relu": the second call of the same module
                base = f"{parent}.{m.group(1)}" if parent else m.group(1)
                if base in seen_paths and not any(i.startswith(p + ".") for i in init_names):
                    c = base
            prefix = canon[-1] + "." if canon else ""
            if canon and not c.startswith(prefix):
                c = prefix + c.rpartition(".")[2]
            canon.append(c)
            calls.append(p)
        cls2 = {canon[i]: cls[p] for i, p in enumerate(paths) if p in cls}
        out.append(_Scope(canon, calls, cls2, scoped))
    return out


def _join_scope(parts: list[str], seg: list[str]) -> list[str]:
    """Append a TorchScript scope segment to a module path.

    A segment repeats the tail of its parent's path when the parent is a container:
    ``layer1`` + ``layer1.0`` -> ``layer1.0``; ``layer2.0.downsample`` + ``downsample.1``
    -> ``layer2.0.downsample.1``; ``layer1.0`` + ``conv1`` -> ``layer1.0.conv1``.
    """
    for k in range(min(len(parts), len(seg) - 1), 0, -1):
        if parts[-k:] == seg[:k]:
            return parts + seg[k:]
    return parts + seg


# --------------------------------------------------------------------------- building
def _narrow_cast(node: Any) -> str | None:
    """The unsupported-use label of a Cast to a type ONNX rounds or wraps unlike ml_dtypes."""
    from .onnx_ops import _FLOAT8, _NARROW

    attrs = {a.name: a.i for a in node.attribute}
    to, saturate = attrs.get("to"), attrs.get("saturate", 1)
    if to in _NARROW:
        return f"Cast (to={_NARROW[to][0]})"
    if to in _FLOAT8 and not saturate:
        return f"Cast (to={_FLOAT8[to][0]}, saturate=0)"
    return None


_STRING = 8  # TensorProto.STRING


def _onnx_graph(proto: Any, where: str) -> tuple[dict[int, str], _Graph]:
    g = proto.graph
    opsets = {o.domain or "ai.onnx": int(o.version) for o in proto.opset_import}
    opsets.setdefault("ai.onnx", opsets.get("", 0))
    nodes = list(g.node)

    # unsupported operators first, all at once, before anything runs
    missing: dict[str, list[str]] = collections.defaultdict(list)
    detail: dict[str, str] = {}
    used = collections.Counter(i for n in nodes for i in n.input if i)
    used.update(o.name for o in g.output)
    for i, n in enumerate(nodes):
        domain = n.domain or "ai.onnx"
        key = n.op_type if domain in ("ai.onnx", "") else f"{domain}::{n.op_type}"
        label = n.name or f"#{i} ({n.op_type})"
        why = None
        if key not in ONNX_LOWERINGS:
            why = key
        elif n.op_type == "MaxPool" and len(n.output) > 1 and used[n.output[1]]:
            why = "MaxPool (Indices output)"
        elif n.op_type == "BatchNormalization" and any(
            a.name == "training_mode" and a.i for a in n.attribute
        ):
            why = "BatchNormalization (training_mode=1)"
        elif n.op_type == "Cast" and _narrow_cast(n):
            why = _narrow_cast(n)
        if why is not None:
            missing[why].append(label)
            detail[why] = f"{domain} opset {opsets.get(domain, '?')}"
    strings = [
        vi.name for vi in list(g.input) + list(g.output) if vi.type.tensor_type.elem_type == _STRING
    ]
    strings += [t.name for t in g.initializer if t.data_type == _STRING]
    if strings:
        missing["string tensors"] = strings
        detail["string tensors"] = "JAX has no string arrays"
    if missing:
        raise UnsupportedOpsError(
            missing,
            where=f"the ONNX graph of {where}",
            detail=detail,
            hint="See jaxattr.bridge.supported_onnx_ops() for what is supported; add a "
            "lowering with jaxattr.bridge.register_onnx_lowering().",
        )

    # Which values must be concrete when the graph is traced (shapes, axes, pads, scales and
    # whatever computes them) and which are read as data (by a node computing data, or as a
    # graph output). One backward pass: ONNX nodes are topologically sorted.
    all_attrs = [_attrs(n) for n in nodes]
    folded, known = _fold_constants(nodes, all_attrs, g.initializer)
    why_static: dict[str, str] = {}
    static_need, data_need = _value_needs(nodes, folded, [o.name for o in g.output], why_static)

    # initializers: float ones are parameters unless only shapes/axes/pads need them
    params: dict[str, Any] = {}
    constants: dict[str, Any] = {}
    for t in g.initializer:
        arr = _array(t)
        only_static = t.name in static_need and t.name not in data_need
        if jnp.issubdtype(arr.dtype, jnp.floating) and not only_static:
            params[t.name] = jnp.asarray(arr)
        else:
            constants[t.name] = arr
    init_names = set(params) | set(constants)
    # Constant nodes and everything folded from them at conversion: a float array read as
    # data is a weight (a ConstantOfShape-built convolution kernel): a parameter, so that it
    # is an argument of the compiled program rather than a constant baked into it
    for name, arr in known.items():
        if name in init_names or arr is None:
            continue
        if (
            jnp.issubdtype(arr.dtype, jnp.floating)
            and arr.size > 1
            and name in data_need
            and name not in static_need
        ):
            params[name] = jnp.asarray(arr)
        else:
            constants[name] = arr

    inputs = []
    for vi in g.input:
        if vi.name in init_names:
            continue  # IR < 4 lists initializers as inputs too
        tt = vi.type.tensor_type
        dt = _NP_DTYPES.get(tt.elem_type)
        dtype = "bfloat16" if tt.elem_type == 16 else (np.dtype(dt).name if dt else None)
        shape = None
        if tt.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tt.shape.dim
            )
        inputs.append(_Input(vi.name, dtype, shape))

    # graph inputs read as shapes, axes, pads, scales, k ...: concrete values at call time
    # (an integer one also read as data too, a window size; a float one also read as data
    # is not: a shape computed from float data fails, named, in a trace)
    concrete = {
        k: why_static[inp.value]
        for k, inp in enumerate(inputs)
        if inp.value in static_need
        and (
            inp.value not in data_need
            or (inp.dtype is not None and not inp.dtype.startswith(("float", "bfloat")))
        )
    }

    # folded nodes (Constant included) are gone; every other node becomes an instruction
    static: set[str] = set(constants) | {inputs[k].value for k in concrete}
    instrs: list[_Instr] = []
    node_inputs: dict[str, list[str]] = {}
    node_of_instr: dict[str, int] = {}
    main_instr: list[str | None] = []
    for i, n in enumerate(nodes):
        attrs = all_attrs[i]
        if i in folded:
            main_instr.append(None)
            continue
        key = n.op_type if (n.domain or "ai.onnx") == "ai.onnx" else f"{n.domain}::{n.op_type}"
        if (
            n.op_type == "Split"
            and (len(n.input) < 2 or not n.input[1])
            and "num_outputs" not in attrs
            and "split" not in attrs
        ):
            attrs["_n_outputs"] = len(n.output)
        outs = list(n.output)
        args = tuple(_Ref(a) if a else None for a in n.input)
        reads = [a for a in n.input if a]
        is_static = all(a in static for a in reads) or n.op_type in ("Shape", "Size")
        fn = _select_outputs(ONNX_LOWERINGS[key], len(outs), n.name or f"#{i}", n)
        if len(outs) == 1:
            name = outs[0]
            instrs.append(_Instr(name, f"onnx::{key}", fn, args, attrs, len(instrs)))
            node_inputs[name] = reads
            node_of_instr[name] = i
            if is_static:
                static.add(name)
        else:
            name = f"{n.name or n.op_type}#{i}"
            instrs.append(_Instr(name, f"onnx::{key}", fn, args, attrs, len(instrs)))
            node_inputs[name] = reads
            node_of_instr[name] = i
            for j, o in enumerate(outs):
                if o and used[o]:
                    instrs.append(
                        _Instr(o, "operator.getitem", _getitem, (_Ref(name), j), {}, len(instrs))
                    )
                    node_inputs[o] = [name]
                    node_of_instr[o] = i
                    if is_static:
                        static.add(o)
            if is_static:
                static.add(name)
        main_instr.append(name)
    node_inputs["__output__"] = [o.name for o in g.output]

    scopes = _node_scopes(nodes, init_names)
    groups, roles = _group(nodes, scopes, main_instr, instrs, node_of_instr, static, params)
    node_paths = {ins.name: set(scopes[node_of_instr[ins.name]].paths) for ins in instrs}
    out_names = [o.name for o in g.output]

    def unflatten(flat: list[Any]) -> Any:
        return flat[0] if len(flat) == 1 else tuple(flat)

    return concrete, _Graph(
        source=proto,
        params=params,
        constants=constants,
        param_ph=[(k, k) for k in params],
        const_ph=[(k, k) for k in constants],
        ph_target={k: k for k in params},
        aliases={},
        inputs=inputs,
        n_args=len(inputs),
        kwarg_names=(),
        instrs=instrs,
        node_inputs=node_inputs,
        non_tensor=static,
        outputs=[_Ref(o) for o in out_names],
        unflatten=unflatten,
        groups=groups,
        node_paths=node_paths,
        param_roles=roles,
        layer_attrs=_layer_attrs,
    )


#: operators that read only the shape of their input: it may be traced
_SHAPE_READERS = ("Shape", "Size", "EyeLike")


def _fold_constants(
    nodes: Sequence[Any], all_attrs: Sequence[dict[str, Any]], initializers: Sequence[Any]
) -> tuple[set[int], dict[str, Any]]:
    """Evaluate, at conversion, every node computed from constants alone.

    Sources are ``Constant`` nodes and integer/bool initializers (float initializers are
    parameters: a node reading one is never folded, so perturbing the initializer still
    changes the output). Returns the indices of the folded nodes (``Constant`` nodes
    included) and their output values as NumPy arrays. A node whose lowering fails on
    constants is left to run when the graph is traced, as it would without folding.
    """
    known: dict[str, Any] = {}
    for t in initializers:
        arr = _array(t)
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            known[t.name] = arr
    init = set(known)
    folded: set[int] = set()
    for i, n in enumerate(nodes):
        if (n.domain or "ai.onnx") != "ai.onnx":
            continue
        attrs = all_attrs[i]
        if n.op_type == "Constant":
            label = n.name or f"#{i} (Constant)"
            try:
                value = _as_numpy(ONNX_LOWERINGS["Constant"](**attrs))
            except NotImplementedError as e:
                raise UnsupportedOpsError(
                    {f"Constant ({e})": [label]}, where="the ONNX graph"
                ) from e
            if value.dtype.kind in "OSU":
                raise UnsupportedOpsError(
                    {"string tensors": [label]},
                    where="the ONNX graph",
                    detail={"string tensors": "JAX has no string arrays"},
                )
            known[n.output[0]] = value
            folded.add(i)
            continue
        reads = [a for a in n.input if a]
        if not reads or not all(a in known for a in reads) or "<graph>" in attrs.values():
            continue
        a2 = dict(attrs)
        if (
            n.op_type == "Split"
            and (len(n.input) < 2 or not n.input[1])
            and "num_outputs" not in a2
            and "split" not in a2
        ):
            a2["_n_outputs"] = len(n.output)
        try:
            out = ONNX_LOWERINGS[n.op_type](*(known[a] if a else None for a in n.input), **a2)
        except BridgeError:
            raise
        except Exception:  # noqa: BLE001 - left to the traced run, which reports it
            continue
        outs = out if isinstance(out, tuple) else (out,)
        if len(n.output) == 1:
            outs = outs[:1]
        for o, v in zip(n.output, outs, strict=False):
            if o:
                known[o] = None if v is None else _as_numpy(v)
        folded.add(i)
    for name in init:
        del known[name]
    return folded, known


def _input_name(node: Any, j: int) -> str:
    """The schema's name of input ``j`` of ``node`` (``"shape"`` for Reshape's second)."""
    import onnx

    try:
        formal = onnx.defs.get_schema(node.op_type, domain=node.domain or "").inputs
        return formal[min(j, len(formal) - 1)].name
    except Exception:  # noqa: BLE001 - unknown schema: the position
        return f"#{j}"


def _as_numpy(v: Any) -> np.ndarray:
    arr = np.asarray(v)
    if arr.dtype == np.float64 and not jax.config.jax_enable_x64:
        arr = arr.astype(np.float32)
    return arr


def _value_needs(
    nodes: Sequence[Any],
    folded: set[int],
    outputs: Sequence[str],
    why: dict[str, str] | None = None,
) -> tuple[set[str], set[str]]:
    """Values that must be concrete while tracing, and values read as data.

    A value is *static* when a node reads it as a shape, axes, pads, scales, ... input
    (``STATIC_INPUTS``), or computes from it a value that is static; it is *data* when a
    node computing data reads it, or it is a graph output. Operators that read only their
    input's shape (``Shape``) need neither. Folded nodes are gone and read nothing.
    ``why`` (filled when given) says, per static value, which node needs it.
    """
    static_need: set[str] = set()
    data_need: set[str] = set(outputs)
    for i in range(len(nodes) - 1, -1, -1):
        n = nodes[i]
        if i in folded or n.op_type in _SHAPE_READERS:
            continue
        pos = STATIC_INPUTS.get(n.op_type, ()) if (n.domain or "ai.onnx") == "ai.onnx" else ()
        outs = [o for o in n.output if o]
        out_static = any(o in static_need for o in outs)
        out_data = any(o in data_need for o in outs) or not out_static
        for j, a in enumerate(n.input):
            if not a:
                continue
            if j in pos or out_static:
                static_need.add(a)
                if why is not None and a not in why:
                    label = f"node {n.name or '#' + str(i)!r} ({n.op_type})"
                    why[a] = (
                        f"the {_input_name(n, j)!r} input of {label}"
                        if j in pos
                        else f"read by {label}, whose output is needed as a shape-like value"
                    )
            if j not in pos and out_data:
                data_need.add(a)
    return static_need, data_need


def _select_outputs(fn: Any, n_out: int, label: str = "", node: Any = None) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            out = fn(*args, **kwargs)
        except ConcreteInputError as e:
            if node is None or getattr(e, "node", None) is not None:
                raise
            pos = STATIC_INPUTS.get(node.op_type, ())
            traced = [
                f"{_input_name(node, j)!r} ({node.input[j]!r})"
                for j in pos
                if j < len(args) and isinstance(args[j], jax.core.Tracer)
            ]
            err = ConcreteInputError(
                f"node {label!r} ({node.op_type}): input {' and '.join(traced) or '?'} must be "
                "concrete when the graph is traced (JAX compiles for fixed shapes), but it is "
                "computed from traced data (a parameter, or a graph input inside "
                "jax.jit/vmap/grad). Compute it from constants or Shape, or feed the graph "
                "inputs it comes from as concrete arrays"
            )
            err.node = label  # type: ignore[attr-defined]
            raise err from e
        except BridgeError:
            raise
        except NotImplementedError as e:  # a lowering refusing an attribute or input value
            op = node.op_type if node is not None else "node"
            raise UnsupportedOpsError(
                {f"{op} ({e})": [label or "?"]},
                where="the ONNX graph (found while tracing)",
                hint="This use of the operator has no lowering; see "
                "jaxattr.bridge.supported_onnx_ops() and docs/onnx.md.",
            ) from e
        if isinstance(out, tuple) and n_out == 1:
            return out[0]
        return out

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def _getitem(t: Any, i: int) -> Any:
    return t[i]


def _layer_attrs(instrs: Sequence[_Instr]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ins in instrs:
        if ins.key == "operator.getitem":
            continue
        for k, v in ins.kwargs.items():
            if k.startswith("_") or isinstance(v, np.ndarray) or v == "<graph>":
                continue
            v = tuple(v) if isinstance(v, list) else v
            out.setdefault(k, v)
            if k in _ATTR_ALIASES:
                out.setdefault(_ATTR_ALIASES[k], v)
            if k == "alpha" and ins.key == "onnx::LeakyRelu":
                out.setdefault("negative_slope", v)
    return out


def _op_kind(node: Any, params: Mapping[str, Any]) -> str | None:
    t = node.op_type
    has_param = [a in params for a in node.input]
    if t in ("MatMul", "Einsum"):
        return "linear" if any(has_param) else "mul"
    if t == "Gather":
        return "embedding" if has_param and has_param[0] else None
    if t in ("Add", "Sum", "Mul"):
        return _OP_KINDS[t]
    if t in _RESHAPES:
        return "reshape"
    return _OP_KINDS.get(t)


def _group(
    nodes: Sequence[Any],
    scopes: Sequence[_Scope],
    main_instr: Sequence[str | None],
    instrs: Sequence[_Instr],
    node_of_instr: Mapping[str, int],
    static: set[str],
    params: Mapping[str, Any],
) -> tuple[list[tuple[list[str], dict[str, Any]]], dict[tuple[str, str], str]]:
    live = [
        i for i, n in enumerate(nodes) if main_instr[i] is not None and main_instr[i] not in static
    ]
    paths = {p for i in live for p in scopes[i].paths}
    parents = set()
    for p in paths:
        parts = p.split(".")
        parents.update(".".join(parts[:k]) for k in range(1, len(parts)))
    leaves = {p for p in paths if p not in parents}

    def owner(i: int) -> tuple[str, Any] | None:
        sc = scopes[i]
        for p, c in zip(sc.paths, sc.calls, strict=True):
            if sc.classes.get(p) in MODULE_KINDS or p in leaves:
                return p, c
        return None

    # pass 1: which nodes form each layer. Shape arithmetic (static nodes) inside a module
    # call joins that layer, so that a shape read from a tensor inside the layer and used
    # inside it again does not cross the layer boundary twice (Converted.apply hands such
    # values to later layers that read them).
    members: list[list[int]] = []
    info: list[dict[str, Any]] = []
    last_key = None
    live_set = set(live)
    for i, n in enumerate(nodes):
        if main_instr[i] is None:
            continue
        sc = scopes[i]
        own = owner(i) if sc.scoped else None
        if i not in live_set:
            if own is not None and own == last_key:
                members[-1].append(i)
            continue
        if own is not None:
            if own == last_key:
                members[-1].append(i)
                continue
            last_key = own
            members.append([i])
            info.append({"path": own[0], "module": True, "cls": sc.classes.get(own[0])})
            continue
        last_key = None
        kind = _op_kind(n, params)
        if kind is None or kind == "reshape":
            continue
        if (
            kind in ("add", "mul")
            and len([a for a in n.input if a and a not in static and a not in params]) < 2
        ):
            continue  # a sum or product of activations (residual, gate) is a layer
        members.append([i])
        info.append({"path": sc.paths[-1] if sc.paths else "", "module": False, "cls": None})

    # pass 2: kinds, names (weights name fused convolutions), parameter roles
    counts: collections.Counter[str] = collections.Counter()
    groups: list[tuple[list[str], dict[str, Any]]] = []
    roles: dict[tuple[str, str], str] = {}
    instr_names_of: dict[int, list[str]] = collections.defaultdict(list)
    for ins in instrs:
        instr_names_of[node_of_instr[ins.name]].append(ins.name)
    for idx, inf in zip(members, info, strict=True):
        kinds = [_op_kind(nodes[i], params) if i in live_set else None for i in idx]
        kind = next((k for k in _PRIORITY if k in kinds), None)
        cls = inf["cls"]
        if (
            kind not in _WEIGHTED
            and cls is not None
            and (cls in MODULE_KINDS or _module_kind(cls) != "other")
        ):
            kind = _module_kind(cls)
        if kind is None:
            live_kinds = [k for i, k in zip(idx, kinds, strict=True) if i in live_set]
            if len(live_kinds) == 1:
                kind = live_kinds[0] if live_kinds[0] not in (None, "reshape") else "other"
            elif all(nodes[i].op_type in _ELEMENTWISE for i in idx if i in live_set):
                kind = "activation"
            else:
                kind = "other"
        main = next(
            (i for i, k in zip(idx, kinds, strict=True) if k == kind),
            next(i for i in idx if i in live_set),
        )
        node = nodes[main]
        op = cls or node.op_type
        weighted = [nodes[i] for i, k in zip(idx, kinds, strict=True) if k in _WEIGHTED]
        wname = None
        if len(weighted) == 1:
            w = [a for a in weighted[0].input if a in params]
            if w and w[0].endswith(".weight"):
                wname = w[0][: -len(".weight")]
        if inf["module"]:
            # a weight of a sibling module (a BatchNorm scope holding the convolution it was
            # folded into) names the layer; a weight inside the module does not
            sibling = wname and not wname.startswith(inf["path"] + ".")
            base = wname if kind in _WEIGHTED and sibling else inf["path"]
        elif scopes[main].scoped:
            parent = inf["path"]
            short = _snake(node.op_type)
            base = (
                wname if kind in _WEIGHTED and wname else (f"{parent}.{short}" if parent else short)
            )
        else:
            base = node.name or wname or _snake(node.op_type)
        name = base if counts[base] == 0 else f"{base}:{counts[base]}"
        counts[base] += 1
        names = [nm for i in idx for nm in instr_names_of[i]]
        groups.append((names, {"name": name, "path": inf["path"], "kind": kind, "op": op}))
        for i in idx:
            n = nodes[i]
            rmap = _ROLES.get(n.op_type, {})
            if n.op_type == "Gemm":
                trans_b = any(a.name == "transB" and a.i for a in n.attribute)
                rmap = {1: "weight" if trans_b else "kernel", 2: "bias"}
            for j, a in enumerate(n.input):
                if a in params and j in rmap:
                    roles[(main_instr[i], a)] = rmap[j]
    return groups, roles


def from_onnx(model: Any) -> Converted:
    """Convert an ONNX model into a pure JAX function with named layers.

    The model is read with the ``onnx`` package (opset 13 and newer; older opsets are
    upgraded with ``onnx.version_converter``). Float initializers become ``params`` (never
    constants baked into the trace), so parameter gradients and weight-noise methods work;
    integer initializers and those only used as shapes, axes or pads are ``constants``.
    ``Constant`` nodes and everything computed from constants alone are evaluated at
    conversion; a float array of more than one element read as data (a kernel built by
    ``ConstantOfShape``) is a ``params`` leaf too. A graph input read only as a shape, axes,
    pads, scales, ``k``, ... is a concrete value at call time (``conv(...)`` compiles one
    program per value; traced, it raises :class:`ConcreteInputError`).
    Shapes are read from the arrays at trace time, so a symbolic (or any) batch dimension
    stays dynamic unless the graph itself hard-codes it (a ``Reshape`` to a fixed batch).

    Args:
        model: Path to an ``.onnx`` file (external data next to it is loaded), its bytes,
            or an ``onnx.ModelProto``.

    Returns:
        A :class:`Converted`, exactly as :func:`from_torch` returns: ``params`` keyed by
        initializer name, ``fn(params, *inputs)`` with the graph inputs in order
        (``input_names``), ``apply``/``layers`` for rules and taps; one output is returned
        as an array, several as a tuple.

    Raises:
        FileNotFoundError: No file at the path.
        OnnxFormatError: Not ONNX, truncated, or rejected by ``onnx.checker``.
        UnsupportedOpsError: Some operators have no lowering (all are listed, with node
            names and opset, before anything runs). An attribute or input value that a
            lowering refuses is reported the same way when the model is first traced.

    Example:
        >>> import numpy as np, onnx
        >>> from onnx import TensorProto, helper, numpy_helper
        >>> from jaxattr import bridge
        >>> w = numpy_helper.from_array(np.ones((3, 4), np.float32), "fc.weight")
        >>> graph = helper.make_graph(
        ...     [helper.make_node("Gemm", ["x", "fc.weight"], ["h"], name="fc", transB=1),
        ...      helper.make_node("Relu", ["h"], ["y"], name="relu")], "tiny",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w])
        >>> conv = bridge.from_onnx(helper.make_model(graph))
        >>> conv(np.ones((2, 4), np.float32)).shape
        (2, 3)
        >>> [(name, layer.kind) for name, layer in conv.layers.items()]
        [('fc', 'linear'), ('relu', 'activation')]
        >>> sorted(conv.params)
        ['fc.weight']
    """
    t0 = time.perf_counter()
    proto, where = _load(model)
    proto = _check(proto, where)
    concrete, graph = _onnx_graph(proto, where)
    conv = _OnnxConverted(graph, concrete)
    conv.conversion_time = time.perf_counter() - t0
    return conv


class _Frozen:
    """A concrete input value as a hashable static argument of ``jax.jit``."""

    __slots__ = ("array", "_key")

    def __init__(self, array: np.ndarray):
        self.array = array
        self._key = (array.dtype.str, array.shape, array.tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frozen) and self._key == other._key


def _call_concrete(model: Converted, fixed: tuple[tuple[int, _Frozen], ...], *dynamic: Any) -> Any:
    values = dict((i, f.array) for i, f in fixed)
    rest = iter(dynamic)
    flat = [values[i] if i in values else next(rest) for i in range(len(fixed) + len(dynamic))]
    return model.fn(model.params, *flat)


@jax.tree_util.register_pytree_with_keys_class
class _OnnxConverted(Converted):
    """A :class:`Converted` whose shape-like graph inputs are concrete values.

    A graph input read as a shape, axes, pads, scales, ``k``, ... (``Reshape``'s ``shape``
    fed by the caller) is taken as a NumPy array when the model is called; ``conv(...)``
    compiles one program per distinct value of those inputs. Traced there (inside a
    transformation), it raises :class:`ConcreteInputError` naming the input.
    """

    def __init__(self, graph: _Graph, concrete: Mapping[int, str]):
        # set before Converted.__init__, which shares every attribute set so far with the
        # pytree copies of the model
        self._concrete = dict(concrete)
        self._jit_concrete = _caching.jit(_call_concrete, static_argnums=1)
        super().__init__(graph)

    def _prep(self, x: Any, i: int) -> Any:
        if i not in self._concrete:
            return super()._prep(x, i)
        name = self._inputs[i].value
        if isinstance(x, jax.core.Tracer):
            raise ConcreteInputError(
                f"input {name!r} is {self._concrete[i]}, so it must be a concrete array "
                "(NumPy, or a JAX array outside jax.jit/vmap/grad): the compiled program "
                "specializes on its value. It is traced here; pass it from outside the "
                "transformation (e.g. close over it) or make it a constant of the model"
            )
        if type(x).__module__.startswith("torch"):
            x = x.detach().cpu().numpy()
        return np.asarray(x)

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        if not self._concrete:
            return super().__call__(*inputs, **kwargs)
        flat = self._flatten_inputs(inputs, kwargs)
        fixed = tuple((i, _Frozen(flat[i])) for i in sorted(self._concrete))
        dynamic = [x for i, x in enumerate(flat) if i not in self._concrete]
        return self._jit_concrete(self, fixed, *dynamic)


def supported_onnx_ops() -> list[str]:
    """ONNX operators the bridge can lower, sorted (default domain unless ``domain::Op``).

    Returns:
        The keys of the ONNX lowering table.

    Example:
        >>> from jaxattr import bridge
        >>> {"Conv", "LSTM", "Resize"} <= set(bridge.supported_onnx_ops())
        True
    """
    return sorted(ONNX_LOWERINGS)
