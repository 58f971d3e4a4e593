"""The bridge's neutral graph, its interpreter, and :class:`Converted`; no torch here.

Both front ends read a model into a :class:`_Graph`: :mod:`jaxattr.bridge.convert` a
``torch.export`` program, :mod:`jaxattr.bridge.onnx_import` an ONNX model. A graph is a
list of instructions, each one lowering called on a template of :class:`_Ref` (an earlier
value, by name) and static arguments, with the parameters, constants, inputs and outputs,
and the groups of instructions that make the layers. :class:`Converted` assembles the
:class:`jaxattr.structure.Layer` records from it and interprets the instructions
(:func:`_run`): all at once (``fn``), or layer by layer through an interceptor (``apply``).

Nothing in this module imports torch, not even lazily, so an ONNX model loads and runs in
a process that never imports it; torch tensors passed as inputs are recognised by the
module of their type and read with their own methods.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import heapq
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching
from jaxattr.structure import Layer

__all__ = ["Converted"]

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


# --------------------------------------------------------------------------- values
class _Ref:
    """A reference to a graph value by node name (resolved from the environment)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"%{self.name}"


class _DType:
    """A dtype by name (a torch dtype's), turned into a JAX dtype when the graph runs (x64
    may change)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def _jdtype(torch_dtype: Any):
    """A torch dtype or its name (``"float32"``, ``"torch.int64"``) -> the JAX dtype."""
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

    Made by :func:`~jaxattr.bridge.from_torch` (a ``torch.nn.Module``),
    :func:`~jaxattr.bridge.from_exported`, :func:`~jaxattr.bridge.load` and
    :func:`~jaxattr.bridge.from_onnx` (an ONNX model); all four give the same structure: each
    front end reads its model into a :class:`_Graph` and hands it to this class.
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
        >>> conv = bridge.from_torch(torch_model.eval(), torch.randn(2, 3, 32, 32))
        >>> y = conv(np.random.rand(4, 3, 32, 32).astype("float32"))
        >>> g = jax.jit(jax.grad(lambda p, x: conv.fn(p, x).sum()))(conv.params, x)
    """

    def __init__(
        self,
        graph: _Graph,
        *,
        dynamic_batch: bool = True,
        conversion_time: float = 0.0,
        output: Any = None,
    ):
        if not isinstance(graph, _Graph):
            raise TypeError(
                f"graph: expected the bridge's neutral graph (a _Graph, which a front end "
                f"builds), got {type(graph).__name__}; convert a model with "
                "jaxattr.bridge.from_torch, from_exported, load or from_onnx"
            )
        self.exported = graph.source  # the front end's model (ExportedProgram, ModelProto)
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


#: ops whose arguments say nothing about the layer (its attrs come from the others)
_TRIVIAL_FOR_ATTRS = {"operator.getitem", "aten.view.default", "aten.clone.default"}


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


def _rebuild_from(rebuild: Callable[..., Any], node: Any, flat: list[Any]) -> Any:
    return rebuild(node, iter(flat))


def _children(spec: Any) -> list[Any]:
    """The child specs of a pytree ``TreeSpec`` (torch's, read by its attributes)."""
    ch = getattr(spec, "children", None)
    return list(ch()) if callable(ch) else list(spec.children_specs)


def _unflatten(spec: Any, it: Any) -> Any:
    """Values from ``it`` rebuilt into the structure of a pytree ``TreeSpec`` (torch's):
    tuples, lists, and dicts for string-keyed containers (``ModelOutput``)."""
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
