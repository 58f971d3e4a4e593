"""Flax adapters: Linen and NNX modules as structured models (see :mod:`jaxattr.structure`).

``from_linen(module, variables)`` and ``from_nnx(model)`` return objects with ``params``,
``layers`` and ``apply(params, *inputs, intercept=None)``, so every rule-based and layer
method works on Flax models. Layers are the *modules* of known types, named by their
module path (``"Conv_0"``, ``"block1.conv"``, ``"layers.0"``), in the order they run. The
model itself is never modified: Linen calls are routed through
``flax.linen.intercept_methods``; NNX models are split (``nnx.split``) once and merged
into a fresh copy on every call, in which the layers are wrapped.

Limits, stated up front:

- Only modules are layers. Activations and pools written as function calls
  (``nn.relu``, ``nn.avg_pool``) keep their ordinary gradient under LRP composites (for
  ReLU this changes nothing for input-multiplying rules, since dead units carry no
  relevance); :func:`jaxattr.guided_backprop` and :func:`jaxattr.deconvolution` rewrite
  ``jax.nn.relu`` calls in the jaxpr instead, and :func:`jaxattr.deep_lift` does the
  same for ``jax.nn.relu``, ``tanh`` and ``sigmoid``.
- Residual additions written as ``x + y`` are not layers either (no norm rule on them);
  a module with a class attribute ``jaxattr_kind = "add"`` whose ``__call__`` sums its
  inputs is (the Flax counterpart of Zennit's ``Sum``), and so is any module declaring
  another kind (e.g. ``jaxattr_kind = "activation"`` around ``nn.relu``).
- Layers are discovered on the first call (an abstract trace, no FLOPs); ``layers`` is
  empty until then unless example inputs are given.
- Batch norm must run on its running statistics (Linen: ``use_running_average=True`` as
  an apply keyword; NNX: ``model.eval()``), as everywhere in jaxattr.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import jax

from jaxattr.structure import Layer, default_intercept, trace_layers

__all__ = ["FlaxModel", "from_linen", "from_nnx", "module_kind"]

#: Flax module class name -> layer kind (Linen and NNX share most names).
MODULE_KINDS: dict[str, str] = {
    "Dense": "linear",
    "DenseGeneral": "linear",
    "Linear": "linear",
    "LinearGeneral": "linear",
    "Einsum": "linear",
    "Conv": "conv",
    "ConvLocal": "conv",
    "ConvTranspose": "conv_transpose",
    "BatchNorm": "batch_norm",
    "LayerNorm": "norm",
    "GroupNorm": "norm",
    "RMSNorm": "norm",
    "InstanceNorm": "norm",
    "Dropout": "dropout",
    "Embed": "embedding",
    "MultiHeadDotProductAttention": "attention",
    "MultiHeadAttention": "attention",
    "SelfAttention": "attention",
    "LSTMCell": "recurrent",
    "GRUCell": "recurrent",
    "RNN": "recurrent",
}


def module_kind(module: Any) -> str | None:
    """The layer kind of a Flax module (``None``: not a layer, e.g. a container).

    Subclasses of the known types inherit their kind; a module may also declare
    ``jaxattr_kind = "activation"`` (or any kind) to be treated as a layer.

    Args:
        module: A Linen or NNX module instance.

    Returns:
        One of :data:`jaxattr.structure.LAYER_KINDS`, or ``None``.

    Example:
        >>> import flax.linen as nn
        >>> from jaxattr.flax import module_kind
        >>> module_kind(nn.Dense(3)), module_kind(nn.Sequential([nn.Dense(3)]))
        ('linear', None)
    """
    declared = getattr(module, "jaxattr_kind", None)
    if isinstance(declared, str):
        return declared
    for cls in type(module).__mro__:
        if cls.__name__ in MODULE_KINDS and cls.__module__.startswith("flax"):
            return MODULE_KINDS[cls.__name__]
    return None


def _attrs(module: Any) -> dict[str, Any]:
    out = {}
    for k in (
        "epsilon",
        "strides",
        "padding",
        "kernel_size",
        "features",
        "out_features",
        "use_bias",
        "rate",
        "axis",
    ):
        v = getattr(module, k, None)
        if isinstance(v, (int, float, str, bool, tuple)):
            out[k] = v
    if "epsilon" in out:
        out["eps"] = out["epsilon"]
    return out


class _FlaxStatic:
    """What a :class:`FlaxModel` shares with its pytree copies: runner, kind, layers."""

    def __init__(self, runner: Callable[..., Any], kind: str):
        self.runner = runner
        self.kind = kind
        self.layers: dict[str, Layer] | None = None


@jax.tree_util.register_pytree_with_keys_class
class FlaxModel:
    """A Flax model behind the structured-model protocol (from :func:`from_linen`/:func:`from_nnx`).

    A pytree whose leaves are its variables, so methods trace the weights as arguments of
    their compiled programs: assigning new ``params`` is always seen and never recompiles.

    Attributes:
        params: The variables (Linen: the ``variables`` dict; NNX: the ``nnx.State``).
        layers: Every layer call in execution order, keyed by module path.
    """

    def __init__(self, runner: Callable[..., Any], params: Any, kind: str):
        self._static = _FlaxStatic(runner, kind)
        self.params = params

    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("params"), self.params),), self._static

    def tree_flatten(self):
        return (self.params,), self._static

    @classmethod
    def tree_unflatten(cls, static: _FlaxStatic, children: Any) -> FlaxModel:
        obj = object.__new__(cls)
        obj._static = static
        obj.params = children[0]
        return obj

    @property
    def layers(self) -> Mapping[str, Layer]:
        """The layers (discovered on the first call; empty before it)."""
        return self._static.layers or {}

    def discover(self, *inputs: Any) -> Mapping[str, Layer]:
        """Trace the model abstractly on ``inputs`` to find its layers; returns them."""
        static = self._static
        if static.layers is None:
            run = lambda p, *a, intercept: static.runner(p, a, intercept, None)  # noqa: E731
            static.layers = trace_layers(run, self.params, *inputs).layers()
        return static.layers

    def apply(self, params: Any, *inputs: Any, intercept: Callable[..., Any] | None = None):
        """Run the model as a pure function, routing each layer through ``intercept``.

        Args:
            params: Variables shaped like :attr:`params`.
            *inputs: The model inputs.
            intercept: ``(layer, layer_fn, layer_params, *layer_inputs) -> outputs``.

        Returns:
            The model output.
        """
        if self._static.layers is None:
            self.discover(*inputs)
        return self._static.runner(
            params, inputs, intercept or default_intercept, self._static.layers
        )

    def __call__(self, *inputs: Any) -> Any:
        return self.apply(self.params, *inputs)

    def __repr__(self) -> str:
        n = "?" if self._static.layers is None else len(self._static.layers)
        return f"FlaxModel({self._static.kind}, {n} layers)"


def _layer_record(known, name, path, kind, op, local, mod):
    if known is not None and name in known:
        return known[name]
    return Layer(
        name=name,
        kind=kind,
        op=op,
        param_names={k: f"{path}.{k}" if path else k for k in local},
        attrs=_attrs(mod),
    )


def from_linen(
    module: Any,
    variables: Mapping[str, Any],
    *example_inputs: Any,
    method: str | None = None,
    **apply_kwargs: Any,
) -> FlaxModel:
    """A Linen module and its variables as a structured model.

    Every call of a submodule of a known type (``Dense``, ``Conv``, ``BatchNorm``, ...; see
    :func:`module_kind`) is a layer; its ``layer_fn(p, *a)`` re-runs a parentless clone of
    the module with variables ``p`` (keyed by local names: ``kernel``, ``bias``, ``scale``,
    ``mean``, ``var``).

    Args:
        module: The Linen module.
        variables: Its variables (``{"params": ..., "batch_stats": ...}``).
        *example_inputs: Optional inputs to discover the layers now (else on first call).
        method: The method to run (default ``__call__``).
        **apply_kwargs: Keywords for ``module.apply`` (e.g. ``train=False``).

    Returns:
        A :class:`FlaxModel`.

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxattr
        >>> from jaxattr.flax import from_linen
        >>> net = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
        >>> variables = net.init(jax.random.key(0), jnp.ones((1, 3)))
        >>> model = from_linen(net, variables, jnp.ones((1, 3)))
        >>> list(model.layers)
        ['layers_0', 'layers_2']
        >>> jaxattr.lrp(model, jnp.ones((2, 3)), composite=jaxattr.epsilon_plus(),
        ...             target=0).shape
        (2, 3)
    """
    import flax.linen as nn

    depth = [0]

    def runner(params, inputs, intercept, known):
        counts: collections.Counter[str] = collections.Counter()

        def interceptor(next_fun, args, kwargs, context):
            mod = context.module
            if depth[0] or context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            kind = module_kind(mod)
            if kind is None:
                return next_fun(*args, **kwargs)
            path = ".".join(str(p) for p in mod.scope.path)
            name = path if counts[path] == 0 else f"{path}:{counts[path]}"
            counts[path] += 1
            cols: dict[str, str] = {}
            local: dict[str, Any] = {}
            for col, tree in mod.variables.items():
                for k, v in tree.items():
                    cols[k] = col
                    local[k] = v
            layer = _layer_record(known, name, path, kind, type(mod).__name__, local, mod)
            clone = mod.clone(parent=None)

            def layer_fn(p, *a):
                vs: dict[str, dict[str, Any]] = {}
                for k, v in p.items():
                    vs.setdefault(cols.get(k, "params"), {})[k] = v
                depth[0] += 1
                try:
                    return clone.apply(vs, *a, **kwargs)
                finally:
                    depth[0] -= 1

            return intercept(layer, layer_fn, local, *args)

        kw = dict(apply_kwargs)
        if method is not None:
            kw["method"] = method
        with nn.intercept_methods(interceptor):
            return module.apply(params, *inputs, **kw)

    model = FlaxModel(runner, variables, "linen")
    if example_inputs:
        model.discover(*example_inputs)
    return model


def _get_path(root, path):
    obj = root
    for p in path:
        obj = obj[p] if isinstance(p, int) else getattr(obj, p)
    return obj


def _set_path(root, path, value):
    parent = _get_path(root, path[:-1])
    last = path[-1]
    if isinstance(last, int):
        parent[last] = value
    else:
        setattr(parent, last, value)


class _NnxLayer:
    """Stands in for an NNX module inside the merged copy and routes its calls."""

    def __init__(self, module, path, kind, hooks):
        self.module = module
        self.path = path
        self.kind = kind
        self.hooks = hooks

    def __call__(self, *args, **kwargs):
        from flax import nnx

        intercept, counts, known = self.hooks
        name = self.path if counts[self.path] == 0 else f"{self.path}:{counts[self.path]}"
        counts[self.path] += 1
        graphdef, state = nnx.split(self.module)
        local = nnx.to_pure_dict(state)
        layer = _layer_record(
            known, name, self.path, self.kind, type(self.module).__name__, local, self.module
        )

        def layer_fn(p, *a):
            st = jax.tree_util.tree_map(lambda v: v, state)
            nnx.replace_by_pure_dict(st, dict(p))
            return nnx.merge(graphdef, st)(*a, **kwargs)

        return intercept(layer, layer_fn, local, *args)


def from_nnx(model: Any, *example_inputs: Any) -> FlaxModel:
    """An NNX module as a structured model (the module is split, never modified).

    ``params`` is ``nnx.split(model)[1]`` (the whole state, batch statistics included).
    Each call of a submodule of a known type (``Linear``, ``Conv``, ``BatchNorm``, ...) is
    a layer whose ``layer_fn(p, *a)`` merges a copy of that submodule with the pure dict
    ``p`` (``kernel``, ``bias``, ``scale``, ``mean``, ``var``).

    Args:
        model: The NNX module (put it in eval mode first: ``model.eval()``).
        *example_inputs: Optional inputs to discover the layers now (else on first call).

    Returns:
        A :class:`FlaxModel`.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> from flax import nnx
        >>> from jaxattr.flax import from_nnx
        >>> net = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.relu,
        ...                      nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
        >>> model = from_nnx(net, jnp.ones((1, 3)))
        >>> list(model.layers)
        ['layers.0', 'layers.2']
        >>> jaxattr.lrp(model, jnp.ones((2, 3)), composite=jaxattr.epsilon_plus(),
        ...             target=1).shape
        (2, 3)
    """
    from flax import nnx

    graphdef, state = nnx.split(model)
    paths = []
    for path, mod in nnx.iter_graph(model):
        if not path or not isinstance(mod, nnx.Module):
            continue
        kind = module_kind(mod)
        if kind is None:
            continue
        # skip modules nested inside a layer (e.g. a norm inside an attention layer)
        if any(path[: len(q)] == q for q, _ in paths):
            continue
        paths.append((tuple(path), kind))

    def runner(params, inputs, intercept, known):
        copy = nnx.merge(graphdef, params)
        counts: collections.Counter[str] = collections.Counter()
        hooks = (intercept, counts, known)
        # wrap the deepest layers first so that parents are still reachable by path
        for path, kind in sorted(paths, key=lambda pk: -len(pk[0])):
            sub = _get_path(copy, path)
            with contextlib.suppress(AttributeError):
                _set_path(copy, path, _NnxLayer(sub, ".".join(map(str, path)), kind, hooks))
        return copy(*inputs)

    flax_model = FlaxModel(runner, state, "nnx")
    if example_inputs:
        flax_model.discover(*example_inputs)
    return flax_model
