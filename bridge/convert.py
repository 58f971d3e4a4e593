"""torch.nn.Module -> pure JAX: export, decompose, group into layers, interpret.

The pipeline is ``torch.export.export`` (dynamic batch dimension) -> ``run_decompositions``
to core ATen, keeping undecomposed every op the lowering table handles directly (linear,
convolution, layer norm, gelu, scaled-dot-product attention, LSTM/GRU, ...) -> a list of
instructions, each one lowering from :mod:`jaxattr.bridge.lowerings` with its arguments.
The nodes are grouped into :class:`jaxattr.structure.Layer` records from their
``nn_module_stack`` metadata.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import heapq
import inspect
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching
from jaxattr.structure import Layer

from .errors import ExportError, TrainModeError, UnsupportedOpsError
from .lowerings import LOWERINGS, refusal

__all__ = ["Converted", "from_torch", "load", "from_exported"]


# --------------------------------------------------------------------------- layer kinds
#: torch module class name -> layer kind. A module of one of these classes is one layer even
#: when it has children (MultiheadAttention owns out_proj).
MODULE_KINDS: dict[str, str] = {}
for _k, _names in {
    "conv": "Conv1d Conv2d Conv3d LazyConv1d LazyConv2d LazyConv3d",
    "conv_transpose": "ConvTranspose1d ConvTranspose2d ConvTranspose3d",
    "linear": "Linear LazyLinear Bilinear NonDynamicallyQuantizableLinear Conv1D",
    "batch_norm": "BatchNorm1d BatchNorm2d BatchNorm3d SyncBatchNorm",
    "norm": "LayerNorm GroupNorm InstanceNorm1d InstanceNorm2d InstanceNorm3d RMSNorm "
    "LocalResponseNorm",
    "activation": "ReLU ReLU6 LeakyReLU ELU SELU CELU GELU SiLU Sigmoid Tanh Softplus Hardswish "
    "Hardsigmoid Hardtanh Mish PReLU LogSigmoid Softsign Tanhshrink Threshold Hardshrink "
    "Softshrink GLU",
    "softmax": "Softmax LogSoftmax Softmin Softmax2d",
    "max_pool": "MaxPool1d MaxPool2d MaxPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d "
    "AdaptiveMaxPool3d",
    "avg_pool": "AvgPool1d AvgPool2d AvgPool3d AdaptiveAvgPool1d AdaptiveAvgPool2d "
    "AdaptiveAvgPool3d LPPool1d LPPool2d",
    "embedding": "Embedding EmbeddingBag",
    "recurrent": "LSTM GRU RNN",
    "dropout": "Dropout Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout",
    "reshape": "Flatten Unflatten PixelShuffle PixelUnshuffle ChannelShuffle",
    "upsample": "Upsample UpsamplingNearest2d UpsamplingBilinear2d",
    "attention": "MultiheadAttention",
    "other": "Identity ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d ConstantPad2d ConstantPad3d "
    "ReflectionPad1d ReflectionPad2d ReflectionPad3d ReplicationPad1d ReplicationPad2d "
    "ReplicationPad3d CircularPad1d CircularPad2d CircularPad3d",
}.items():
    for _n in _names.split():
        MODULE_KINDS[_n] = _k


def _module_kind(class_name: str) -> str:
    if class_name in MODULE_KINDS:
        return MODULE_KINDS[class_name]
    low = class_name.lower()
    if "gelu" in low or "activation" in low or "swish" in low:
        return "activation"
    if low.endswith("layernorm") or low.endswith("rmsnorm") or low.endswith("groupnorm"):
        return "norm"
    if "batchnorm" in low:
        return "batch_norm"
    return "other"


#: op name (``OpOverloadPacket`` name) -> kind, for ops outside any leaf module.
OP_KINDS: dict[str, str] = {
    "add": "add",
    "mul": "mul",
    "bmm": "mul",
    "matmul": "mul",
    "mm": "mul",
    "linear": "linear",
    "addmm": "linear",
    "convolution": "conv",
    "scaled_dot_product_attention": "attention",
    "_softmax": "softmax",
    "softmax": "softmax",
    "_log_softmax": "softmax",
    "log_softmax": "softmax",
    "embedding": "embedding",
    "native_layer_norm": "norm",
    "layer_norm": "norm",
    "native_group_norm": "norm",
    "rms_norm": "norm",
    "_native_batch_norm_legit_no_training": "batch_norm",
    "lstm": "recurrent",
    "gru": "recurrent",
    "rnn_tanh": "recurrent",
    "rnn_relu": "recurrent",
    "max_pool2d_with_indices": "max_pool",
    "max_pool1d_with_indices": "max_pool",
    "max_pool3d_with_indices": "max_pool",
    "max_pool2d": "max_pool",
    "avg_pool2d": "avg_pool",
    "avg_pool1d": "avg_pool",
    "avg_pool3d": "avg_pool",
    "_adaptive_avg_pool2d": "avg_pool",
    "adaptive_avg_pool2d": "avg_pool",
    "upsample_nearest2d": "upsample",
    "upsample_bilinear2d": "upsample",
}
for _n in (
    "relu gelu silu sigmoid tanh leaky_relu elu selu celu hardtanh hardswish hardsigmoid "
    "softplus mish prelu relu6 log_sigmoid"
).split():
    OP_KINDS[_n] = "activation"

_OP_SHORT = {
    "_softmax": "softmax",
    "_log_softmax": "log_softmax",
    "_native_batch_norm_legit_no_training": "batch_norm",
    "native_layer_norm": "layer_norm",
    "native_group_norm": "group_norm",
    "_adaptive_avg_pool2d": "adaptive_avg_pool2d",
    "max_pool2d_with_indices": "max_pool2d",
    "scaled_dot_product_attention": "scaled_dot_product_attention",
}

_TRIVIAL_FOR_ATTRS = {"operator.getitem", "aten.view.default", "aten.clone.default"}


# --------------------------------------------------------------------------- small helpers
class _Ref:
    """A reference to a graph value by node name (resolved from the environment)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"%{self.name}"


class _DType:
    """A torch dtype, turned into a JAX dtype when the graph runs (x64 may change)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def _jdtype(torch_dtype: Any):
    name = str(torch_dtype).replace("torch.", "")
    x64 = jax.config.jax_enable_x64
    table = {
        "float32": jnp.float32,
        "float": jnp.float32,
        "float64": jnp.float64 if x64 else jnp.float32,
        "double": jnp.float64 if x64 else jnp.float32,
        "float16": jnp.float16,
        "half": jnp.float16,
        "bfloat16": jnp.bfloat16,
        "int64": jnp.int64 if x64 else jnp.int32,
        "long": jnp.int64 if x64 else jnp.int32,
        "int32": jnp.int32,
        "int": jnp.int32,
        "int16": jnp.int16,
        "int8": jnp.int8,
        "uint8": jnp.uint8,
        "bool": jnp.bool_,
    }
    if name not in table:
        raise NotImplementedError(f"dtype: torch dtype {torch_dtype} has no JAX equivalent here")
    return table[name]


def _op_key(target: Any) -> str:
    if hasattr(target, "_schema") or type(target).__name__ == "OpOverload":
        return str(target)
    mod = getattr(target, "__module__", None) or ""
    if mod in ("_operator", "operator"):
        mod = "operator"
    return f"{mod}.{getattr(target, '__name__', str(target))}"


def _op_packet(target: Any) -> str:
    name = getattr(target, "_opname", None)
    if name is None:
        name = getattr(target, "__name__", str(target))
    return name


def _is_tensor_val(val: Any) -> bool:
    import torch

    if isinstance(val, torch.Tensor):
        return True
    if isinstance(val, (list, tuple)) and val:
        return all(isinstance(v, torch.Tensor) or v is None for v in val) and any(
            isinstance(v, torch.Tensor) for v in val
        )
    return False


def _template(arg: Any) -> Any:
    """Graph argument -> template of _Ref/_DType/static values."""
    import torch
    import torch.fx

    if isinstance(arg, torch.fx.Node):
        return _Ref(arg.name)
    if isinstance(arg, list):
        return [_template(a) for a in arg]
    if isinstance(arg, tuple):
        return tuple(_template(a) for a in arg)
    if isinstance(arg, dict):
        return {k: _template(v) for k, v in arg.items()}
    if isinstance(arg, torch.dtype):
        return _DType(str(arg))
    if isinstance(arg, (torch.device, torch.layout, torch.memory_format)):
        return None
    if isinstance(arg, torch.Tensor):
        return _to_jax(arg)
    return arg


def _has_ref(t: Any) -> bool:
    if isinstance(t, _Ref):
        return True
    if isinstance(t, (list, tuple)):
        return any(_has_ref(a) for a in t)
    if isinstance(t, dict):
        return any(_has_ref(a) for a in t.values())
    return False


def _resolve(t: Any, env: Mapping[str, Any]) -> Any:
    tt = type(t)
    if tt is _Ref:
        return env[t.name]
    if tt is list or tt is tuple:
        return tt(_resolve(a, env) for a in t)
    if tt is _DType:
        return _jdtype(t.name)
    if tt is dict:
        return {k: _resolve(v, env) for k, v in t.items()}
    return t


def _to_jax(t: Any) -> jax.Array:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return jnp.asarray(t.float().numpy()).astype(jnp.bfloat16)
    arr = t.numpy()
    if arr.dtype == np.int64 and not jax.config.jax_enable_x64:
        arr = _check_int32(arr, "constant")
    if arr.dtype == np.float64 and not jax.config.jax_enable_x64:
        arr = arr.astype(np.float32)
    return jnp.asarray(arr)


def _check_int32(arr: np.ndarray, what: str) -> np.ndarray:
    info = np.iinfo(np.int32)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise OverflowError(
            f"{what}: int64 values must fit in int32 (range [{info.min}, {info.max}]) while "
            f"JAX 64-bit mode is off, got values in [{arr.min()}, {arr.max()}]; call "
            "jax.config.update('jax_enable_x64', True) before converting, or remap the ids"
        )
    return arr.astype(np.int32)


@dataclasses.dataclass
class _Instr:
    name: str
    key: str
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    index: int


@dataclasses.dataclass
class _Group:
    layer: Layer
    instrs: list[_Instr]
    inputs: list[str]
    param_nodes: dict[str, str]  # placeholder name -> local param name
    outputs: list[str]
    index: int
    #: static (shape) values computed inside the layer and read after it; the layer function
    #: hands them to the outer environment, they are never layer outputs
    static_outputs: list[str] = dataclasses.field(default_factory=list)


def _run(instrs: Sequence[_Instr], env: dict[str, Any]) -> None:
    for ins in instrs:
        env[ins.name] = ins.fn(*_resolve(ins.args, env), **_resolve(ins.kwargs, env))


# --------------------------------------------------------------------------- neutral graph
@dataclasses.dataclass
class _Input:
    """One user input of a graph: its value name and what the graph expects of it."""

    value: str
    dtype: str | None  # "float32", "int64", "bool", ... (None: anything)
    shape: tuple[int | None, ...] | None  # None entries are dynamic (the batch)
    #: the symbol of each dynamic dimension (torch's ``s0``, ``batch``); inputs whose
    #: dimensions share a symbol must agree on its size at call time
    symbols: tuple[str | None, ...] | None = None


@dataclasses.dataclass
class _Graph:
    """What a front end (``torch.export``, ONNX) hands to :class:`Converted`.

    Values are named; every instruction computes one value (multi-output ops are followed
    by ``getitem``-style instructions). ``groups`` are the layers: lists of instruction
    names with ``{"name", "path", "kind", "op"}``.
    """

    source: Any
    params: dict[str, Any]
    constants: dict[str, Any]
    param_ph: list[tuple[str, str]]  # value -> params key
    const_ph: list[tuple[str, str]]  # value -> constants key
    ph_target: dict[str, str]  # value -> the parameter's own name (tied weights differ)
    aliases: dict[str, str]
    inputs: list[_Input]
    n_args: int
    kwarg_names: tuple[str, ...]
    instrs: list[_Instr]
    node_inputs: dict[str, list[str]]  # value names read by each instruction (and outputs)
    non_tensor: set[str]  # values that are not tensors (symbolic sizes): never layer inputs
    outputs: list[Any]  # templates of the user outputs
    unflatten: Callable[[list[Any]], Any]
    groups: list[tuple[list[str], dict[str, Any]]]
    node_paths: dict[str, set[str]]  # instruction -> module paths it runs inside
    param_roles: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    layer_attrs: Callable[[list[_Instr]], dict[str, Any]] | None = None
    buffer_names: frozenset[str] = frozenset()  # params keys that are buffers, not weights


def _torch_graph(ep: Any) -> _Graph:
    """Read a decomposed ``ExportedProgram`` into a :class:`_Graph`."""
    import torch.fx
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    state = dict(ep.state_dict)
    consts_src = dict(ep.constants)
    params: dict[str, jax.Array] = {}
    constants: dict[str, jax.Array] = {}
    param_ph: list[tuple[str, str]] = []
    const_ph: list[tuple[str, str]] = []
    user_ph: list[str] = []
    inputs: list[_Input] = []
    aliases: dict[str, str] = {}
    ph_target: dict[str, str] = {}
    seen: dict[Any, str] = {}
    buffers: set[str] = set()
    nodes = {n.name: n for n in ep.graph.nodes}
    for spec in sig.input_specs:
        ph = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            user_ph.append(ph)
            inputs.append(_torch_input(ph, nodes[ph].meta.get("val")))
            continue
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            key = spec.target
            t = state[key] if key in state else consts_src[key]
            if spec.kind != InputKind.CONSTANT_TENSOR and t.is_floating_point():
                ident = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
                if ident in seen and t.numel():  # tied weights: one entry, summed grads
                    aliases[key] = seen[ident]
                    param_ph.append((ph, seen[ident]))
                    ph_target[ph] = key
                    continue
                seen[ident] = key
                params[key] = _to_jax(t)
                if spec.kind == InputKind.BUFFER:
                    buffers.add(key)
                param_ph.append((ph, key))
                ph_target[ph] = key
            else:
                constants[key] = _to_jax(t)
                const_ph.append((ph, key))
            continue
        if spec.kind == InputKind.TOKEN:  # effect token (linalg error checks)
            constants[ph] = jnp.zeros((0,), jnp.float32)
            const_ph.append((ph, ph))
            continue
        raise NotImplementedError(
            f"exported program: input {ph!r} has kind {spec.kind}; only parameters, "
            "buffers, tensor constants and tensor user inputs are supported"
        )
    n_args, kwarg_names = _input_layout(ep)
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    out_args = out_node.args[0]
    user_out = [i for i, s in enumerate(sig.output_specs) if s.kind == OutputKind.USER_OUTPUT]
    out_spec = ep.call_spec.out_spec

    # unsupported ops first, all of them at once
    missing: dict[str, list[str]] = collections.defaultdict(list)
    call_nodes = [n for n in ep.graph.nodes if n.op == "call_function"]
    for n in ep.graph.nodes:
        if n.op == "get_attr":
            missing[f"get_attr ({n.target})"].append(_innermost_path(n))
    for n in call_nodes:
        key = _op_key(n.target)
        if key not in LOWERINGS:
            path = _innermost_path(n)
            if path not in missing[key]:
                missing[key].append(path)
    detail: dict[str, str] = {}
    for n in call_nodes:  # lowered ops called with arguments their lowering cannot take
        key = _op_key(n.target)
        if key in LOWERINGS:
            args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: a.meta.get("val"))
            why = refusal(key, args, kwargs, n.meta.get("val"))
            if why:
                path = _innermost_path(n)
                if path not in missing[key]:
                    missing[key].append(path)
                detail[key] = why
    if missing:
        raise UnsupportedOpsError(missing, detail=detail or None)

    instrs: list[_Instr] = []
    for i, n in enumerate(call_nodes):
        key = _op_key(n.target)
        instrs.append(
            _Instr(
                n.name, key, LOWERINGS[key], _template(tuple(n.args)), _template(dict(n.kwargs)), i
            )
        )
    param_ph_key = dict(param_ph)
    groups = _torch_groups(call_nodes, param_ph_key)
    return _Graph(
        source=ep,
        params=params,
        constants=constants,
        param_ph=param_ph,
        const_ph=const_ph,
        ph_target=ph_target,
        aliases=aliases,
        inputs=inputs,
        n_args=n_args,
        kwarg_names=kwarg_names,
        instrs=instrs,
        node_inputs={n.name: [a.name for a in n.all_input_nodes] for n in ep.graph.nodes},
        non_tensor={
            n.name
            for n in ep.graph.nodes
            if n.op != "placeholder" and not _is_tensor_val(n.meta.get("val"))
        },
        outputs=[_template(out_args[i]) for i in user_out],
        unflatten=lambda flat: _unflatten(out_spec, iter(flat)),
        groups=groups,
        node_paths={
            n.name: {p for _, (p, _t) in (n.meta.get("nn_module_stack") or {}).items()}
            for n in call_nodes
        },
        buffer_names=frozenset(buffers),
    )


def _torch_input(name: str, meta: Any) -> _Input:
    if meta is None or not hasattr(meta, "dtype"):
        return _Input(name, None, None)
    import torch

    shape = tuple(None if isinstance(s, torch.SymInt) else int(s) for s in meta.shape)
    symbols = tuple(str(s) if isinstance(s, torch.SymInt) else None for s in meta.shape)
    return _Input(
        name, str(meta.dtype).replace("torch.", ""), shape, symbols if any(symbols) else None
    )


def _input_layout(ep: Any) -> tuple[int, tuple[str, ...]]:
    spec = ep.call_spec.in_spec
    try:
        args_spec, kw_spec = _children(spec)
        n_args = args_spec.num_leaves
        kw = tuple(kw_spec.context) if kw_spec.context else ()
    except (AttributeError, ValueError):
        n_args, kw = spec.num_leaves, ()
    return n_args, kw


def _torch_groups(
    call_nodes: Sequence[Any], param_ph_key: Mapping[str, str]
) -> list[tuple[list[str], dict[str, Any]]]:
    """Group call nodes into layers from their ``nn_module_stack`` metadata."""
    # which module paths are leaves of the traced module tree
    paths: set[str] = set()
    for n in call_nodes:
        for _, (p, _t) in (n.meta.get("nn_module_stack") or {}).items():
            paths.add(p)
    parents = set()
    for p in paths:
        parts = p.split(".")
        parents.update(".".join(parts[:i]) for i in range(1, len(parts)))
    graph_leaves = {p for p in paths if p and p not in parents}

    def owner(n) -> tuple[str, str, str] | None:
        for key, (p, t) in (n.meta.get("nn_module_stack") or {}).items():
            cls = t if isinstance(t, str) else getattr(t, "__name__", str(t))
            cls = cls.rsplit(".", 1)[-1]
            if p and (cls in MODULE_KINDS or p in graph_leaves):
                return key, p, cls
        return None

    group_of: dict[str, int] = {}
    groups: list[tuple[list[str], dict[str, Any]]] = []
    counts: collections.Counter[str] = collections.Counter()
    last_key = None

    def new_group(info):
        groups.append(([], info))
        return len(groups) - 1

    current = -1
    for n in call_nodes:
        val = n.meta.get("val")
        if not _is_tensor_val(val):
            continue  # symbolic sizes and asserts stay outside layers
        key = _op_key(n.target)
        if key == "operator.getitem" and n.args[0].name in group_of:
            g = group_of[n.args[0].name]
            groups[g][0].append(n.name)
            group_of[n.name] = g
            continue
        own = owner(n)
        if own is not None:
            skey, path, cls = own
            if skey == last_key and current >= 0:
                g = current
            else:
                name = path if counts[path] == 0 else f"{path}:{counts[path]}"
                counts[path] += 1
                g = current = new_group(
                    {"name": name, "path": path, "kind": _module_kind(cls), "op": cls}
                )
                last_key = skey
            groups[g][0].append(n.name)
            group_of[n.name] = g
            continue
        last_key = None
        packet = _op_packet(n.target)
        kind = OP_KINDS.get(packet)
        if kind is None:
            continue
        tensor_args = [a for a in n.args if hasattr(a, "op")]
        if kind in ("add", "mul"):
            acts = [a for a in tensor_args if a.name not in param_ph_key]
            if len(tensor_args) < 2 or not all(
                _is_tensor_val(a.meta.get("val")) for a in tensor_args
            ):
                continue
            if kind == "mul" and packet in ("bmm", "matmul", "mm") and len(acts) < 2:
                kind = "linear"
        if packet == "convolution" and len(n.args) > 6 and n.args[6]:
            kind = "conv_transpose"
        parent = _innermost_path(n)
        short = _OP_SHORT.get(packet, packet.lstrip("_"))
        base = f"{parent}.{short}" if parent else short
        name = base if counts[base] == 0 else f"{base}:{counts[base]}"
        counts[base] += 1
        g = new_group({"name": name, "path": parent, "kind": kind, "op": key})
        groups[g][0].append(n.name)
        group_of[n.name] = g
    return groups


# --------------------------------------------------------------------------- Converted
def _call_model(model: Converted, *args: Any, **kwargs: Any) -> Any:
    """``model(*args)``, the model a pytree argument (its weights traced)."""
    return model.fn(model.params, *args, **kwargs)


class _Shared:
    """The static part of a :class:`Converted`; compared by identity (one per conversion)."""

    __slots__ = ("__weakref__", "attrs")

    def __init__(self, attrs: dict[str, Any]):
        self.attrs = attrs

    def __repr__(self) -> str:
        return f"<static graph of {self.attrs.get('input_names')}>"


@jax.tree_util.register_pytree_with_keys_class
class Converted:
    """A model converted to a pure JAX function, with its layers.

    Made by :func:`from_torch` (a ``torch.nn.Module``), :func:`from_exported`, :func:`load`
    and :func:`jaxattr.bridge.from_onnx` (an ONNX model); all four give the same structure.
    Implements :class:`jaxattr.structure.StructuredModel`.

    Attributes:
        params: Flat dict ``name -> jnp array`` of the float parameters and float buffers
            (BatchNorm running statistics included): everything ``jax.grad`` may see. Keys
            are torch's ``state_dict`` names, or the ONNX initializer names.
        buffer_names: The keys of :attr:`params` that are buffers (BatchNorm running
            statistics), not trained parameters; empty for ONNX models, which do not
            tell the two apart.
        constants: Integer/bool buffers and lifted tensor constants; never differentiated.
        layers: ``name -> Layer`` for every layer invocation, in execution order.
        layer_nodes: ``name -> tuple of graph node names`` grouped into that layer.
        exported: The decomposed ``torch.export.ExportedProgram`` that was interpreted, or
            the ``onnx.ModelProto`` for an ONNX model.
        input_names: Names of the positional inputs; ``kwarg_names`` of the keyword inputs.
        conversion_time: Seconds spent exporting and building.

    Example:
        >>> conv = from_torch(torch_model.eval(), torch.randn(2, 3, 32, 32))
        >>> y = conv(np.random.rand(4, 3, 32, 32).astype("float32"))
        >>> g = jax.jit(jax.grad(lambda p, x: conv.fn(p, x).sum()))(conv.params, x)
    """

    def __init__(
        self,
        ep: Any,
        *,
        dynamic_batch: bool = True,
        conversion_time: float = 0.0,
        output: Any = None,
    ):
        graph = ep if isinstance(ep, _Graph) else _torch_graph(ep)
        self.exported = graph.source
        self.conversion_time = conversion_time
        self._assemble(graph)
        self.output = output
        if output is not None:
            self._select_output(output)
        # the exported program holds torch's copy of the weights: not part of the graph
        # one compiled runner per conversion: its programs go when the model goes
        self._jit_run = _caching.jit(_call_model)
        static = {k: v for k, v in self.__dict__.items() if k not in ("params", "exported")}
        self._shared = _Shared(static)

    # ----------------------------------------------------------------- pytree
    # A Converted is a pytree whose leaves are its params: methods trace the weights as
    # arguments of their compiled programs, so new weights are always seen and never
    # recompile. Everything else (the graph) is one static object shared by all copies.
    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("params"), self.params),), self._shared

    def tree_flatten(self):
        return (self.params,), self._shared

    @classmethod
    def tree_unflatten(cls, shared: _Shared, children: Sequence[Any]) -> Converted:
        obj = object.__new__(cls)
        obj.__dict__.update(shared.attrs)
        obj._shared = shared
        obj.params = children[0]
        return obj

    # ----------------------------------------------------------------- building
    def _assemble(self, g: _Graph) -> None:
        self.params = g.params
        self.buffer_names = g.buffer_names
        self.constants = g.constants
        self.aliases = g.aliases
        self._param_ph = g.param_ph
        self._const_ph = g.const_ph
        self._inputs = g.inputs
        self._user_ph = [i.value for i in g.inputs]
        self._n_args, self.kwarg_names = g.n_args, g.kwarg_names
        self.input_names = tuple(self._user_ph[: self._n_args])
        self._outputs = g.outputs
        self._unflatten_out = g.unflatten
        self._instrs = g.instrs
        by_name = {ins.name: ins for ins in g.instrs}
        param_ph_key = dict(g.param_ph)
        const_names = {ph for ph, _ in g.const_ph}
        attrs_of = g.layer_attrs or _group_static_attrs

        users: dict[str, set[str]] = collections.defaultdict(set)
        for name, ins in g.node_inputs.items():
            for a in ins:
                users[a].add(name)
        self._users = users
        self._node_inputs = g.node_inputs
        self._node_order = [ins.name for ins in g.instrs]
        self._node_paths = g.node_paths
        self._layer_paths: dict[str, set[str]] = {}
        self._groups: list[_Group] = []
        self.layers: dict[str, Layer] = {}
        self.layer_nodes: dict[str, tuple[str, ...]] = {}
        group_of: dict[str, int] = {}
        for names, info in g.groups:
            members = set(names)
            inputs: list[str] = []
            pnodes: dict[str, str] = {}
            for nm in names:
                group_of[nm] = len(self._groups)
                for a in g.node_inputs[nm]:
                    if a in members:
                        continue
                    if a in param_ph_key:
                        if a in pnodes:
                            continue
                        gkey = param_ph_key[a]
                        local = g.param_roles.get((nm, a))
                        if local is None:
                            prefix = info["path"] + "." if info["path"] else ""
                            local = gkey
                            for cand in (g.ph_target.get(a, gkey), gkey):
                                if prefix and cand.startswith(prefix):
                                    local = cand[len(prefix) :]
                                    break
                        if local in pnodes.values():
                            local = gkey
                        pnodes[a] = local
                    elif a in const_names or a in g.non_tensor:
                        continue
                    elif a not in inputs:
                        inputs.append(a)
            leaving = [nm for nm in names if users[nm] - members]
            outputs = [nm for nm in leaving if nm not in g.non_tensor]
            instrs = [by_name[nm] for nm in names]
            layer = Layer(
                name=info["name"],
                kind=info["kind"],
                op=info["op"],
                param_names={v: param_ph_key[k] for k, v in pnodes.items()},
                attrs=attrs_of(instrs),
            )
            grp = _Group(
                layer,
                instrs,
                inputs,
                pnodes,
                outputs,
                min(ins.index for ins in instrs),
                [nm for nm in leaving if nm in g.non_tensor],
            )
            self._groups.append(grp)
            self.layers[layer.name] = layer
            self.layer_nodes[layer.name] = tuple(names)
            self._layer_paths[layer.name] = set.union(
                *(g.node_paths.get(nm, set()) for nm in names)
            )
        self._schedule = self._make_schedule(group_of)

    def _select_output(self, output: Any) -> None:
        """Keep one part of a structured output (a ``ModelOutput``'s ``"logits"``)."""
        structure = self._unflatten_out(list(range(len(self._outputs))))
        path = output if isinstance(output, tuple) else (output,)
        node, walked = structure, []
        for key in path:
            here = "the output" if not walked else f"output{''.join(f'[{k!r}]' for k in walked)}"
            if isinstance(node, dict):
                if not isinstance(key, str) or key not in node:
                    raise KeyError(f"output: {here} is a dict with keys {list(node)}, got {key!r}")
            elif isinstance(node, (tuple, list)):
                if (
                    isinstance(key, bool)
                    or not isinstance(key, int)
                    or not (-len(node) <= key < len(node))
                ):
                    raise KeyError(
                        f"output: {here} is a tuple of {len(node)}, expected an "
                        f"index in [{-len(node)}, {len(node)}), got {key!r}"
                    )
            else:
                raise KeyError(f"output: {here} is one tensor; nothing to select with {key!r}")
            node, walked = node[key], [*walked, key]
        used: list[int] = []

        def collect(t: Any) -> None:
            if isinstance(t, dict):
                for v in t.values():
                    collect(v)
            elif isinstance(t, (tuple, list)):
                for v in t:
                    collect(v)
            else:
                used.append(t)

        def rebuild(t: Any, it: Any) -> Any:
            if isinstance(t, dict):
                return {k: rebuild(v, it) for k, v in t.items()}
            if isinstance(t, (tuple, list)):
                return type(t)(rebuild(v, it) for v in t)
            return next(it)

        collect(node)
        self._outputs = [self._outputs[i] for i in used]
        self._unflatten_out = functools.partial(_rebuild_from, rebuild, node)

    def _make_schedule(self, group_of: Mapping[str, int]) -> list[Any]:
        """Topological order of units (groups and loose instructions), stable by position."""
        units: list[Any] = list(self._groups)
        unit_of: dict[str, int] = {}
        for u, grp in enumerate(self._groups):
            for ins in grp.instrs:
                unit_of[ins.name] = u
        for ins in self._instrs:
            if ins.name not in group_of:
                unit_of[ins.name] = len(units)
                units.append(ins)
        deps: list[set[int]] = [set() for _ in units]
        rdeps: list[set[int]] = [set() for _ in units]
        for ins in self._instrs:
            u = unit_of[ins.name]
            for a in self._node_inputs[ins.name]:
                v = unit_of.get(a)
                if v is not None and v != u:
                    deps[u].add(v)
                    rdeps[v].add(u)

        def pos(u):
            x = units[u]
            return x.index

        ready = [(pos(u), u) for u in range(len(units)) if not deps[u]]
        heapq.heapify(ready)
        order = []
        remaining = [len(d) for d in deps]
        while ready:
            _, u = heapq.heappop(ready)
            order.append(units[u])
            for v in rdeps[u]:
                remaining[v] -= 1
                if remaining[v] == 0:
                    heapq.heappush(ready, (pos(v), v))
        if len(order) != len(units):
            raise RuntimeError(
                "bridge: could not order the layers of the graph (a symbolic size computed "
                "inside a layer is used by the same layer); please report this model"
            )
        return order

    # ----------------------------------------------------------------- running
    def _env(
        self, params: Mapping[str, Any], inputs: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        env: dict[str, Any] = {}
        for ph, key in self._param_ph:
            env[ph] = params[key]
        for ph, key in self._const_ph:
            env[ph] = self.constants[key]
        flat = self._flatten_inputs(inputs, kwargs)
        for ph, x in zip(self._user_ph, flat, strict=False):
            env[ph] = x
        return env

    def _flatten_inputs(self, inputs: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
        if len(inputs) != self._n_args:
            raise TypeError(
                f"converted model: expected {self._n_args} positional input(s) "
                f"{self.input_names}, got {len(inputs)}"
            )
        unknown = set(kwargs) - set(self.kwarg_names)
        missing = set(self.kwarg_names) - set(kwargs)
        if unknown or missing:
            raise TypeError(
                f"converted model: keyword inputs must be exactly {sorted(self.kwarg_names)} "
                f"(as exported), got {sorted(kwargs)}"
            )
        flat = list(inputs) + [kwargs[k] for k in self.kwarg_names]
        flat = [self._prep(x, i) for i, x in enumerate(flat)]
        self._check_symbols(flat)
        return flat

    def _check_symbols(self, flat: Sequence[Any]) -> None:
        """Dimensions exported as one symbol (the batch) must have one size."""
        seen: dict[str, tuple[str, int, int]] = {}
        for spec, x in zip(self._inputs, flat, strict=False):
            for axis, sym in enumerate(spec.symbols or ()):
                if sym is None or axis >= getattr(x, "ndim", 0):
                    continue
                size = int(x.shape[axis])
                if sym in seen and seen[sym][2] != size:
                    other, other_axis, other_size = seen[sym]
                    raise ValueError(
                        f"input {spec.value!r}: dimension {axis} has size {size}, but it was "
                        f"exported as the same dynamic dimension ({sym}) as dimension "
                        f"{other_axis} of input {other!r}, which has size {other_size}; "
                        "give every batched input the same batch size"
                    )
                seen.setdefault(sym, (spec.value, axis, size))

    def _prep(self, x: Any, i: int) -> Any:
        spec = self._inputs[i]
        name = spec.value
        if type(x).__module__.startswith("torch"):
            x = x.detach().cpu().numpy()
        if isinstance(x, (np.ndarray, np.generic, list, int, float)):
            x = np.asarray(x)
            if x.dtype == np.int64 and not jax.config.jax_enable_x64:
                x = _check_int32(x, f"input {name!r}")
            if x.dtype == np.float64 and not jax.config.jax_enable_x64:
                x = x.astype(np.float32)
            x = jnp.asarray(x)
        if spec.dtype is not None:
            want_float = spec.dtype.startswith(("float", "bfloat"))
            got_float = jnp.issubdtype(x.dtype, jnp.floating)
            if want_float != got_float and not (spec.dtype == "bool" and x.dtype == jnp.bool_):
                if want_float:
                    x = x.astype(_jdtype(spec.dtype))
                else:
                    raise TypeError(
                        f"input {name!r}: expected an array of dtype {spec.dtype} (as "
                        f"exported), got {x.dtype}"
                    )
        if spec.shape is not None:
            shown = tuple("batch" if s is None else s for s in spec.shape)
            if len(spec.shape) != x.ndim:
                raise ValueError(
                    f"input {name!r}: expected {len(spec.shape)} dimensions (exported shape "
                    f"{shown}), got shape {tuple(x.shape)}"
                )
            wrong = [a for a, s in enumerate(spec.shape) if s is not None and s != x.shape[a]]
            if wrong:
                dynamic = [a for a, s in enumerate(spec.shape) if s is None]
                hint = ""
                if 0 in wrong and x.ndim and 0 not in dynamic:
                    hint = (
                        f"; the model was exported for batch size {spec.shape[0]} only: "
                        "convert with dynamic_batch=True, or export with dynamic_shapes "
                        "giving the batch a torch.export.Dim"
                    )
                raise ValueError(
                    f"input {name!r}: expected shape {shown} (as exported; dynamic "
                    f"dimensions: {dynamic or 'none'}), got {tuple(x.shape)}: dimension "
                    f"{wrong[0]} must be {spec.shape[wrong[0]]}{hint}"
                )
        return x

    def _finish(self, env: Mapping[str, Any]) -> Any:
        flat = [_resolve(o, env) for o in self._outputs]
        return self._unflatten_out(flat)

    def fn(self, params: Mapping[str, Any], *inputs: Any, **kwargs: Any) -> Any:
        """The model as a pure function of its parameters and inputs.

        Args:
            params: Dict shaped like :attr:`params` (any values with the same shapes).
            *inputs: Positional inputs, batch first (jax/numpy arrays or torch tensors).
            **kwargs: Keyword inputs given at conversion (e.g. ``attention_mask``).

        Returns:
            The model's output(s): an array, or a tuple/dict of arrays mirroring torch.

        Example:
            >>> y = jax.jit(conv.fn)(conv.params, x)
            >>> gx = jax.jit(jax.grad(lambda x: conv.fn(conv.params, x)[:, 3].sum()))(x)
        """
        env = self._env(params, inputs, kwargs)
        _run(self._instrs, env)
        return self._finish(env)

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        """Run with the converted parameters (jit-compiled and cached).

        Example:
            >>> logits = conv(x)
        """
        flat = self._flatten_inputs(inputs, kwargs)
        args = flat[: self._n_args]
        kw = dict(zip(self.kwarg_names, flat[self._n_args :], strict=False))
        return self._jit_run(self, *args, **kw)

    def apply(
        self,
        params: Mapping[str, Any],
        *inputs: Any,
        intercept: Callable[..., Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the model, routing every layer through ``intercept``.

        Each layer's nodes run as ``layer_fn(layer_params, *layer_inputs)`` where
        ``layer_params`` is keyed by local names (``"weight"``, ``"bias"``,
        ``"running_mean"``) and ``layer_inputs`` are the tensors flowing into the layer.
        The call goes through ``intercept(layer, layer_fn, layer_params, *layer_inputs)``;
        with ``intercept=None`` this is exactly :meth:`fn`.

        Args:
            params: Dict shaped like :attr:`params`.
            *inputs: Positional inputs.
            intercept: ``(layer, layer_fn, layer_params, *layer_inputs) -> outputs`` or None.
            **kwargs: Keyword inputs.

        Returns:
            The model's output(s).

        Example:
            >>> def tap(layer, f, p, *xs):
            ...     out = f(p, *xs)
            ...     return out + eps if layer.name == "layer4" else out
            >>> y = conv.apply(conv.params, x, intercept=tap)
        """
        if intercept is None:
            return self.fn(params, *inputs, **kwargs)
        env = self._env(params, inputs, kwargs)
        for unit in self._schedule:
            if type(unit) is _Instr:
                env[unit.name] = unit.fn(*_resolve(unit.args, env), **_resolve(unit.kwargs, env))
                continue
            grp = unit
            layer_params = {loc: env[ph] for ph, loc in grp.param_nodes.items()}
            xs = [env[nm] for nm in grp.inputs]
            out = intercept(grp.layer, self._layer_fn(grp, env), layer_params, *xs)
            for nm in grp.static_outputs:
                if nm not in env:
                    raise RuntimeError(
                        f"apply: the interceptor never ran layer {grp.layer.name!r}'s "
                        f"layer_fn, but later layers read the shape value {nm!r} computed "
                        "inside it; call layer_fn (at least once) in the interceptor"
                    )
            if len(grp.outputs) == 1:
                env[grp.outputs[0]] = out
            else:
                for nm, o in zip(grp.outputs, out, strict=False):
                    env[nm] = o
        return self._finish(env)

    @staticmethod
    def _layer_fn(grp: _Group, outer: Mapping[str, Any]) -> Callable[..., Any]:
        def layer_fn(layer_params: Mapping[str, Any], *xs: Any) -> Any:
            local: dict[str, Any] = {}
            for ph, loc in grp.param_nodes.items():
                local[ph] = layer_params[loc]
            for nm, x in zip(grp.inputs, xs, strict=False):
                local[nm] = x
            env = collections.ChainMap(local, outer)
            _run(grp.instrs, env)  # type: ignore[arg-type]
            for nm in grp.static_outputs:  # NumPy shape values: safe to hand out
                outer[nm] = local[nm]  # type: ignore[index]
            outs = [local[nm] for nm in grp.outputs]
            return outs[0] if len(outs) == 1 else tuple(outs)

        return layer_fn

    def module_layers(self, path: str) -> list[str]:
        """Names of the layers run inside the torch module at ``path``, in order.

        Args:
            path: A module path such as ``"layer4"`` (containers included).

        Returns:
            Layer names, e.g. ``["layer4.0.conv1", ..., "layer4.1.relu:1"]``.

        Example:
            >>> conv.module_layers("layer1.0")[:2]
            ['layer1.0.conv1', 'layer1.0.bn1']
        """
        out = [name for name, info in self._layer_paths.items() if any(p == path for p in info)]
        if not out:
            top = {p.split(".")[0] for ps in self._layer_paths.values() for p in ps if p}
            raise KeyError(
                f"path: no layer runs inside a module named {path!r}; known top-level "
                f"modules: {sorted(top)}"
            )
        return out

    def output_layer(self, path: str) -> str:
        """The layer whose output is the output of the torch module at ``path``.

        Use it to tap a container such as ResNet's ``layer4``: perturbing or reading that
        layer's output is perturbing or reading ``layer4``'s output.

        Args:
            path: A module path such as ``"layer4"``.

        Returns:
            A key of :attr:`layers` (for ``"layer4"`` of a ResNet: ``"layer4.1.relu:1"``).

        Raises:
            ValueError: The module's output is made by an op outside any layer (a reshape).

        Example:
            >>> conv.output_layer("layer4")
            'layer4.1.relu:1'
        """
        names = self.module_layers(path)
        inside = set()
        for nm in names:
            inside.update(self.layer_nodes[nm])
        # the module's output: the last node within it that is used outside it
        members = {n for n, ps in self._node_paths.items() if path in ps}
        outs = [n for n in self._node_order if n in members and self._users[n] - members]
        if not outs:
            raise ValueError(f"path: module {path!r} has no output in the graph")
        last = outs[-1]
        for nm in reversed(names):
            if last in self.layer_nodes[nm]:
                return nm
        raise ValueError(
            f"path: the output of module {path!r} is made by node {last!r}, which belongs to "
            "no layer (a reshape or view); tap the layer before it instead: "
            f"{names[-1]!r}"
        )

    def output_layers(self, path: str) -> list[str]:
        """Every layer whose output leaves the torch module at ``path``, in execution order.

        One name for a module returning one tensor (:meth:`output_layer`); several for a
        module returning a tuple, e.g. Captum's ``MultiRelu`` returning
        ``(relu1(a), relu2(b))`` gives ``["multi_relu.relu1", "multi_relu.relu2"]``.

        Args:
            path: A module path.

        Returns:
            Keys of :attr:`layers`.

        Example:
            >>> conv.output_layers("layer4")
            ['layer4.1.relu:1']
        """
        names = self.module_layers(path)
        members = {n for n, ps in self._node_paths.items() if path in ps}
        outs = [n for n in self._node_order if n in members and self._users[n] - members]
        found: list[str] = []
        for node in outs:
            owner = next((nm for nm in reversed(names) if node in self.layer_nodes[nm]), None)
            if owner is None:
                return [self.output_layer(path)]  # raises, naming the node
            if owner not in found:
                found.append(owner)
        return found

    def __repr__(self) -> str:
        return (
            f"Converted({len(self.params)} params, {len(self.layers)} layers, "
            f"inputs={self.input_names}, kwargs={self.kwarg_names})"
        )


def _group_static_attrs(instrs: Sequence[_Instr]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for ins in instrs:
        if ins.key not in _TRIVIAL_FOR_ATTRS:
            for k, v in _static_attrs(ins).items():
                attrs.setdefault(k, v)
    return attrs


def _static_attrs(ins: _Instr) -> dict[str, Any]:
    try:
        sig = inspect.signature(ins.fn)
        bound = sig.bind(*ins.args, **ins.kwargs)
        bound.apply_defaults()
    except (TypeError, ValueError):
        return {}
    out = {}
    for k, v in bound.arguments.items():
        if isinstance(v, (_Ref, dict)) or _has_ref(v) or isinstance(v, _DType):
            continue
        if k in ("self", "input", "args", "kwargs") or isinstance(v, jax.Array):
            continue
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def _innermost_path(n: Any) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    path = ""
    for _, (p, _t) in stack.items():
        if isinstance(p, str) and not p.startswith("_empty"):
            path = p
    return path


def _rebuild_from(rebuild: Callable[..., Any], node: Any, flat: list[Any]) -> Any:
    return rebuild(node, iter(flat))


def _children(spec: Any) -> list[Any]:
    ch = getattr(spec, "children", None)
    return list(ch()) if callable(ch) else list(spec.children_specs)


def _unflatten(spec: Any, it: Any) -> Any:
    if spec is None or spec.is_leaf():
        return next(it)
    kids = [_unflatten(c, it) for c in _children(spec)]
    if spec.type is tuple:
        return tuple(kids)
    if spec.type is list:
        return list(kids)
    ctx = spec.context
    if (
        isinstance(ctx, (list, tuple))
        and len(ctx) == len(kids)
        and all(isinstance(k, str) for k in ctx)
    ):
        return dict(zip(ctx, kids, strict=False))
    return tuple(kids)


# --------------------------------------------------------------------------- export
def _check_eval(module: Any) -> None:
    import torch.nn as nn

    bad = []
    for path, m in module.named_modules():
        cls = type(m).__name__
        is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in cls
        is_do = isinstance(m, nn.modules.dropout._DropoutNd) or "Dropout" in cls
        if m.training and (is_bn or is_do):
            bad.append(f"{path or '<root>'} ({cls})")
    if bad:
        raise TrainModeError(
            f"module: BatchNorm/Dropout layers must be in eval mode for conversion, got "
            f"training mode in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; call "
            "module.eval() first"
        )


def _decompose(ep: Any) -> Any:
    import torch

    table = torch.export.default_decompositions()
    for op in list(table.keys()):
        if str(op) in LOWERINGS:
            del table[op]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree deprecations
            return ep.run_decompositions(table)
    except Exception as e:  # noqa: BLE001 - torch's own failure, re-raised with a name
        first = "\n".join(str(e).strip().splitlines()[:6])
        raise ExportError(
            "exported program: torch failed while decomposing it into core ATen ops "
            f"(ExportedProgram.run_decompositions raised {type(e).__name__}), before the "
            "bridge read any op; the model uses an op whose torch decomposition fails for "
            f"these inputs. torch said:\n{first}"
        ) from e


def _export(module: Any, args: tuple, kwargs: dict, dynamic_batch: bool) -> Any:
    import torch
    from torch.export import Dim

    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    batch = tensors[0].shape[0] if tensors and tensors[0].ndim else None
    if dynamic_batch and batch == 1 and any(t.ndim and t.shape[0] != 1 for t in tensors):
        batch = None  # inputs of several leading sizes, one of them 1: no batch to find
    if dynamic_batch and batch == 1:
        # batch 1 would be baked into the graph: export with two copies instead
        def two(a):
            return (
                torch.cat([a, a])
                if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == 1
                else a
            )

        args = tuple(two(a) for a in args)
        kwargs = {k: two(v) for k, v in kwargs.items()}
        batch = 2
    dyn_named = dyn_auto = None
    if dynamic_batch and batch is not None:
        dyn_named = _dynamic_spec(module, args, kwargs, batch, Dim("batch"))
        dyn_auto = _dynamic_spec(module, args, kwargs, batch, Dim.AUTO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ep = torch.export.export(module, args, kwargs, dynamic_shapes=dyn_named)
            except Exception:  # noqa: BLE001 - retry letting torch specialise what it must
                if dyn_named is None:
                    raise
                ep = torch.export.export(module, args, kwargs, dynamic_shapes=dyn_auto)
    except Exception as e:  # noqa: BLE001 - re-raised with advice
        msg = str(e)
        first = "\n".join(msg.strip().splitlines()[:6])
        data_dep = any(
            s in msg
            for s in (
                "data-dependent",
                "data dependent",
                "GuardOnDataDependent",
                "Could not guard",
                "Could not extract specialized integer",
                "dynamic control flow",
            )
        )
        if data_dep or "DataDependent" in type(e).__name__:
            raise ExportError(
                f"module: torch.export could not trace {type(module).__name__} because its "
                "forward branches on tensor values (data-dependent control flow), which one "
                "traced graph cannot express. Make the branch depend on shapes or Python "
                "flags, write it with torch.where or torch.cond, or convert the sub-modules "
                f"around it. torch said:\n{first}"
            ) from e
        raise ExportError(
            f"module: torch.export.export failed on {type(module).__name__} "
            f"({type(e).__name__}); the bridge needs an exportable module. torch said:\n"
            f"{first}"
        ) from e
    return ep


def _dynamic_spec(module: Any, args: tuple, kwargs: dict, batch: int, dim: Any) -> Any:
    import torch

    def spec(a):
        if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == batch:
            return {0: dim}
        return None

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    if star is not None and len(positional) < len(args):  # forward(self, x, *xs)
        dyn = {p.name: spec(a) for p, a in zip(positional, args, strict=False)}
        dyn[star.name] = tuple(spec(a) for a in args[len(positional) :])
        dyn.update({k: spec(v) for k, v in kwargs.items()})
        return dyn
    if len(positional) >= len(args):
        dyn = {p.name: spec(a) for p, a in zip(positional, args, strict=False)}
        dyn.update({k: spec(v) for k, v in kwargs.items()})
        return dyn
    return tuple(spec(a) for a in args) if not kwargs else None


def from_torch(
    module: Any,
    example_input: Any,
    *,
    kwargs: Mapping[str, Any] | None = None,
    dynamic_batch: bool = True,
    output: Any = None,
) -> Converted:
    """Convert a ``torch.nn.Module`` into a pure JAX function with named layers.

    Args:
        module: The torch module, in eval mode if it has BatchNorm or Dropout.
        example_input: A tensor or a tuple of tensors (several positional inputs), batch
            first. A batch of 1 is duplicated for export so that the batch stays dynamic.
        kwargs: Keyword inputs (e.g. ``{"attention_mask": mask}``), batch first.
        dynamic_batch: Export with a dynamic batch dimension (default). With False the
            example's shapes are fixed.
        output: The part of a structured output to explain: a key of a dict output (a
            Hugging Face ``ModelOutput``: ``"logits"``, ``"last_hidden_state"``), an index
            of a tuple output, or a tuple of those for a nested one (``("hidden_states",
            -1)``). The converted model then returns that part only, so every method
            (LRP, Grad-CAM, layer IG) can use it; the layer names stay the module's own.
            Default: the whole output.

    A Hugging Face model whose ``config.use_cache`` is True is exported with it set to
    False (restored afterwards): its KV cache (``DynamicCache``) is no array output.

    Returns:
        A :class:`Converted` with ``params``, ``fn``, ``apply`` and ``layers``.

    Raises:
        TrainModeError: A BatchNorm/Dropout is in training mode.
        ExportError: ``torch.export`` failed (e.g. data-dependent control flow).
        UnsupportedOpsError: Some ops have no lowering (all are listed).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
        >>> conv = from_torch(model, torch.randn(2, 4))
        >>> conv(np.ones((5, 4), np.float32)).shape
        (5, 3)
        >>> list(conv.layers)
        ['0', '1']
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    _check_eval(module)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise TypeError(
                f"example_input[{i}]: expected a torch.Tensor, got {type(a).__name__}; "
                "close over non-tensor arguments with a wrapper module"
            )
    kwargs = dict(kwargs or {})
    t0 = time.perf_counter()
    # A Hugging Face model with config.use_cache returns a KV cache (DynamicCache), which
    # torch.export cannot output and a pure function has no use for: export without it.
    config = getattr(module, "config", None)
    no_cache = getattr(config, "use_cache", None) is True and "use_cache" not in kwargs
    if no_cache:
        config.use_cache = False
    try:
        ep = _export(module, args, kwargs, dynamic_batch)
        conv = from_exported(ep, _t0=t0, dynamic_batch=dynamic_batch, output=output)
        if dynamic_batch and not _runs_on(conv, args, kwargs):
            # the leading dimensions were not a batch (e.g. block_diag's operands): the
            # graph torch traced for the duplicated example does not fit the example itself
            warnings.warn(
                "module: the inputs' leading dimensions do not behave as one batch "
                f"dimension (the converted graph does not accept the example's shapes "
                f"{[tuple(t.shape) for t in args if isinstance(t, torch.Tensor)]}); "
                "converted with the example's fixed shapes instead",
                stacklevel=2,
            )
            ep = _export(module, args, kwargs, False)
            conv = from_exported(ep, _t0=t0, dynamic_batch=False, output=output)
    finally:
        if no_cache:
            config.use_cache = True
    return conv


def _runs_on(conv: Converted, args: tuple, kwargs: dict) -> bool:
    """Whether ``conv`` traces at the example's own shapes (an abstract run, no compute)."""
    import torch

    if not any(
        isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == 1
        for a in (*args, *kwargs.values())
    ):
        return True  # exported at the example's own sizes: it fits them

    def spec(a):
        return (
            jax.ShapeDtypeStruct(tuple(a.shape), _jdtype(a.dtype))
            if isinstance(a, torch.Tensor)
            else a
        )

    try:
        jax.eval_shape(
            lambda p, a, k: conv.fn(p, *a, **k),
            conv.params,
            [spec(a) for a in args],
            {k: spec(v) for k, v in kwargs.items()},
        )
    except (TypeError, ValueError):
        return False
    return True


def from_exported(
    ep: Any, *, dynamic_batch: bool = True, output: Any = None, _t0: float | None = None
) -> Converted:
    """Convert a ``torch.export.ExportedProgram`` (already exported by the caller).

    Args:
        ep: The exported program (any IR level: it is decomposed to core ATen here).
        dynamic_batch: Only checked, for a warning when the batch size is baked in.
        output: The part of a structured output to keep (see :func:`from_torch`).

    Returns:
        A :class:`Converted`.

    Example:
        >>> ep = torch.export.export(model, (torch.from_numpy(x),))
        >>> conv = from_exported(ep)
    """
    t0 = time.perf_counter() if _t0 is None else _t0
    for n in ep.graph.nodes:
        if n.op != "call_function":
            continue
        key = _op_key(n.target)
        train_bn = key == "aten._native_batch_norm_legit_functional.default" or (
            key in ("aten._native_batch_norm_legit.default", "aten.batch_norm.default")
            and len(n.args) > 5
            and n.args[5] is True
        )
        train_do = (
            key
            in (
                "aten.dropout.default",
                "aten.native_dropout.default",
                "aten.feature_dropout.default",
                "aten.alpha_dropout.default",
            )
            and len(n.args) > 2
            and n.args[2] is True
        )
        if key == "aten.scaled_dot_product_attention.default":
            p = n.args[4] if len(n.args) > 4 else n.kwargs.get("dropout_p", 0.0)
            if p:
                raise TrainModeError(
                    f"exported program: node {n.name!r} (scaled_dot_product_attention in "
                    f"module {_innermost_path(n) or '<root>'!r}) has dropout_p={p}: attention "
                    "dropout is random; export the module after calling module.eval(), or "
                    "pass dropout_p=0.0 when not training"
                )
        if train_bn or train_do:
            raise TrainModeError(
                f"exported program: node {n.name!r} ({key}) runs in training mode (in module "
                f"{_innermost_path(n) or '<root>'!r}); export the module after calling "
                "module.eval()"
            )
    ep = _decompose(ep)
    conv = Converted(ep, dynamic_batch=dynamic_batch, output=output)
    conv.conversion_time = time.perf_counter() - t0
    if dynamic_batch:
        shapes = [s.shape for s in conv._inputs if s.shape]
        if shapes and not any(s[0] is None for s in shapes):
            sizes = sorted({s[0] for s in shapes if s})
            warnings.warn(
                f"the batch dimension was specialised during export: the converted function "
                f"only accepts batch size {', '.join(map(str, sizes))} (the exported "
                f"example's); to accept any batch, export with dynamic_shapes giving dimension "
                f"0 a torch.export.Dim (e.g. dynamic_shapes=({{0: torch.export.Dim('batch')}},)"
                f"), or convert the module with from_torch, which does so",
                stacklevel=3,
            )
    return conv


def load(path: Any, *, allow_pickle: bool = False, output: Any = None) -> Converted:
    """Load a saved ``torch.export`` program (``.pt2``) and convert it.

    ``torch.export.load`` alone unpickles parts of an archive with a full unpickler, so a
    crafted file runs code when loaded. This function first reads the archive's table of
    contents and refuses, with :class:`~jaxattr.bridge.UnsafeArchiveError`, every entry that
    would need one (see :func:`jaxattr.bridge.pt2.check_archive`): a plain
    ``torch.export.save`` of an ordinary module contains none and loads as is.

    Args:
        path: File written by ``torch.export.save``.
        allow_pickle: Load pickled entries too (tensor subclasses, custom objects). Only
            for files you trust: it warns, since it runs whatever the pickles contain.
        output: The part of a structured output to keep (see :func:`from_torch`).

    Returns:
        A :class:`Converted`; no Python class of the model is needed.

    Raises:
        UnsafeArchiveError: The file holds pickled objects or libraries (and
            ``allow_pickle`` is False).

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
        >>> batch = {0: torch.export.Dim("batch")}
        >>> ep = torch.export.export(m, (torch.randn(2, 4),), dynamic_shapes=(batch,))
        >>> torch.export.save(ep, "m.pt2")
        >>> load("m.pt2")(np.ones((5, 4), np.float32)).shape
        (5, 3)
    """
    from .pt2 import load_exported

    t0 = time.perf_counter()
    ep = load_exported(path, allow_pickle=allow_pickle)
    return from_exported(ep, _t0=t0, output=output)
