"""The torch front end of the bridge: ``torch.nn.Module`` -> :class:`Converted`.

The pipeline is ``torch.export.export`` (dynamic batch dimension) -> ``run_decompositions``
to core ATen, keeping undecomposed every op the lowering table handles directly (linear,
convolution, layer norm, gelu, scaled-dot-product attention, LSTM/GRU, ...) -> a
:class:`~jaxattr.bridge.graph._Graph` (:func:`_torch_graph`): a list of instructions, each
one lowering from :mod:`jaxattr.bridge.lowerings` with its arguments, and the nodes grouped
into layers from their ``nn_module_stack`` metadata. :class:`Converted`, the graph's
interpreter, lives in the torch-free :mod:`jaxattr.bridge.graph` and is re-exported here.
torch itself is imported lazily, inside the functions that read its objects.
"""

from __future__ import annotations

import collections
import inspect
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ExportError, TrainModeError, UnsupportedOpsError
from .graph import (
    MODULE_KINDS,
    Converted,
    _check_int32,
    _children,
    _DType,
    _Graph,
    _Input,
    _Instr,
    _jdtype,
    _module_kind,
    _Ref,
    _unflatten,
)
from .graph import _resolve as _resolve  # re-exported: imported from here before the split
from .graph import _run as _run
from .lowerings import LOWERINGS, refusal

__all__ = ["Converted", "from_torch", "load", "from_exported"]


# --------------------------------------------------------------------------- op kinds
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


# --------------------------------------------------------------------------- torch objects
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


# --------------------------------------------------------------------------- exported graph
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
    # a linear or convolution's weight and bias by position, whatever the module calls
    # them (F.linear(x, self.w, self.b), or a product rewritten as linear), so that rules
    # and canonizers find them
    weighted = {
        n.name: n
        for n in call_nodes
        if _op_key(n.target) in ("aten.linear.default", "aten.convolution.default")
    }
    roles = {}
    for names, _info in groups:
        own = [weighted[nm] for nm in names if nm in weighted]
        if len(own) != 1:  # a module of several products keeps its own parameter names
            continue
        n = own[0]
        for role, a in zip(("weight", "bias"), n.args[1:3], strict=False):
            if getattr(a, "name", None) in param_ph_key:
                roles[(n.name, a.name)] = role
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
        param_roles=roles,
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


def _innermost_path(n: Any) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    path = ""
    for _, (p, _t) in stack.items():
        if isinstance(p, str) and not p.startswith("_empty"):
            path = p
    return path


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


def _is_matrix_transpose(n: Any) -> bool:
    """``n`` swaps the two axes of a 2-D tensor (``t``, ``permute([1, 0])``,
    ``transpose(0, 1)``, ``numpy_T``)."""
    if getattr(n, "op", None) != "call_function" or not n.args:
        return False
    val = getattr(n.args[0], "meta", {}).get("val")
    if not _is_tensor_val(val) or val.dim() != 2:
        return False
    key = str(n.target)
    if key in ("aten.t.default", "aten.numpy_T.default"):
        return True
    if key == "aten.permute.default":
        return [int(d) % 2 for d in n.args[1]] == [1, 0]
    if key == "aten.transpose.int":
        return {int(n.args[1]) % 2, int(n.args[2]) % 2} == {0, 1}
    return False


def _fold_transposed_operands(gm: Any, user_inputs: set[str]) -> None:
    """Rewrite ``mm(x, t(W))``, ``matmul(x, t(W))`` and ``addmm(b, x, t(W))`` (``W`` 2-D,
    ``b`` 1-D) as ``linear(x, W[, b])``, in place.

    XLA's CPU backend copies a transposed ``dot`` operand in full on every call (a (1024,
    16384) weight: 35.9 ms for ``x @ w.T`` at batch 1 against 1.8 ms for a ``dot_general``
    contracting ``w``'s axis 1, which is how ``linear`` is lowered). Graphs reach the bridge
    in that form when saved after core-ATen decomposition (``nn.Linear`` becomes ``permute``
    + ``addmm``) or written ``x @ self.weight.t()``. ``linear`` computes the same products
    and sums (``x W^T + b``); the transpose stays where something else reads it. Only a
    weight (a parameter, buffer or constant, not a user input or an activation) is folded:
    a product of two activations stays a product (its layer kind is ``mul``, not
    ``linear``).
    """
    import torch

    graph, changed = gm.graph, False
    for n in list(graph.nodes):
        key = str(n.target)
        if key in ("aten.mm.default", "aten.matmul.default") and len(n.args) == 2:
            x, rhs, bias = n.args[0], n.args[1], None
        elif key == "aten.addmm.default" and len(n.args) == 3 and not n.kwargs:
            bias, x, rhs = n.args
            val = getattr(bias, "meta", {}).get("val")
            if not _is_tensor_val(val) or val.dim() != 1:  # linear's bias: one per output
                continue
        else:
            continue
        if not _is_matrix_transpose(rhs):
            continue
        w = rhs.args[0]
        if w.op not in ("placeholder", "get_attr") or w.name in user_inputs:
            continue
        args = (x, rhs.args[0]) if bias is None else (x, rhs.args[0], bias)
        with graph.inserting_before(n):
            new = graph.call_function(torch.ops.aten.linear.default, args)
        new.meta = dict(n.meta)
        n.replace_all_uses_with(new)
        graph.erase_node(n)
        if not rhs.users:
            graph.erase_node(rhs)
        changed = True
    if changed:
        graph.lint()
        gm.recompile()


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
    _fold_transposed_operands(ep.graph_module, set(ep.graph_signature.user_inputs))
    conv = Converted(_torch_graph(ep), dynamic_batch=dynamic_batch, output=output)
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
