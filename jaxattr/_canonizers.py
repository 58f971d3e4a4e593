"""Canonizers: pure model -> model rewrites that make LRP rules apply cleanly (Zennit's).

A canonizer returns a new structured model computing the same function (up to rounding)
whose layers suit the rules better. Nothing is mutated: the new model's ``apply`` wraps the
old one's and changes what its interceptor sees.

- :func:`merge_batch_norm` folds every batch norm into the conv/linear layer that feeds
  it (Zennit's ``SequentialMergeBatchNorm``): the layer gets the merged weight and bias,
  the batch norm becomes an identity, so the conv's rule sees the whole affine map.
- Residual sums: Zennit's ResNet canonizers replace ``out += identity`` by an explicit
  ``Sum`` module so that the norm rule can split relevance between the branches. Bridged
  torch models already expose every residual addition as a layer of kind ``"add"`` (e.g.
  ``layer1.0.add``), which the composites map to :func:`jaxattr.rules.norm`;
  :func:`residual_sums` checks this and reports models where no such layer exists.
- :func:`layer_graph` gives each layer's producers, traced abstractly (no FLOPs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr import _caching
from jaxattr.structure import Layer, trace_layers

__all__ = [
    "Canonized",
    "canonize",
    "layer_graph",
    "merge_batch_norm",
    "NamedMergeBatchNorm",
    "named_merge_batch_norm",
    "residual_sums",
]

Canonizer = Callable[[Any], Any]


def layer_graph(model: Any, *inputs: Any) -> dict[str, tuple[str | None, ...]]:
    """Which layer produced each layer's inputs (``None``: a model input or a loose op).

    The model is traced abstractly with :func:`jax.eval_shape`; nothing is computed.

    Args:
        model: A structured model (``params``, ``layers``, ``apply``).
        *inputs: Example inputs (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
        ``{layer name: (producer of input 0, producer of input 1, ...)}`` in execution
        order; a layer called several times keeps its first call.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.structure import Layer
        >>> class Two:
        ...     params = {}
        ...     layers = {"a": Layer("a", "activation"), "b": Layer("b", "activation")}
        ...     def apply(self, params, x, intercept=None):
        ...         h = intercept(self.layers["a"], lambda p, v: v * 2, {}, x)
        ...         return intercept(self.layers["b"], lambda p, v: v + 1, {}, h)
        >>> from jaxattr import layer_graph
        >>> layer_graph(Two(), jnp.ones((1, 2)))
        {'a': (None,), 'b': ('a',)}
    """
    return dict(_graph_and_users(model, *inputs)[0])


def _graph_and_users(model, *inputs):
    trace = trace_layers(model.apply, model.params, *inputs)
    made_by: dict[int, str] = {}  # value -> the latest layer that output it
    graph: dict[str, tuple[str | None, ...]] = {}
    users: dict[str, int] = {}
    for c in trace.calls:
        preds = tuple(None if v is None else made_by.get(v) for v in c.inputs)
        for p in preds:
            if p is not None:
                users[p] = users.get(p, 0) + 1
        graph.setdefault(c.layer.name, preds)
        for v in c.outputs:
            if v is not None:
                made_by[v] = c.layer.name
    return graph, users


def _spec(inputs) -> tuple:
    return tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree_util.tree_leaves(inputs))


@_caching.model_pytree(["base"], static=["rewrite", "name", "with_params"])
@dataclasses.dataclass(eq=False)
class Canonized:
    """A structured model rewritten by canonizers; see :func:`canonize`.

    Attributes:
        base: The original structured model.
        params: The original parameters (canonizers derive what they change from them).
        layers: The original layer records.
        name: The canonizers applied, for ``repr``.
    """

    base: Any
    rewrite: Callable[..., Callable[..., Any]]
    name: str = "canonized"
    #: ``rewrite(inputs, user, params)`` instead of ``rewrite(inputs, user)``.
    with_params: bool = False

    @property
    def params(self) -> Any:
        return self.base.params

    @property
    def layers(self) -> Mapping[str, Layer]:
        return self.base.layers

    def apply(
        self,
        params: Any,
        *inputs: Any,
        intercept: Callable[..., Any] | None = None,
        **kwargs: Any,
    ):
        """Run the canonized model, routing every layer through ``intercept``."""
        from jaxattr.structure import default_intercept

        user = intercept or default_intercept
        if self.with_params:
            inner = self.rewrite(inputs, user, params)
        else:
            inner = self.rewrite(inputs, user)
        return self.base.apply(params, *inputs, intercept=inner, **kwargs)

    def __call__(self, *inputs: Any) -> Any:
        return self.apply(self.params, *inputs)

    def discover(self, *inputs: Any) -> Any:
        """Let a base model that finds its layers on the first call find them now."""
        discover = getattr(self.base, "discover", None)
        return discover(*inputs) if discover is not None else self.layers

    def __repr__(self) -> str:
        return f"Canonized({self.name}, {len(self.layers)} layers)"


def _bn_parts(params: Mapping[str, Any], layer: Layer):
    get = lambda *ks: next((params[k] for k in ks if params.get(k) is not None), None)  # noqa: E731
    mean = get("running_mean", "mean")
    var = get("running_var", "var")
    if mean is None or var is None:
        raise ValueError(
            f"merge_batch_norm: batch norm layer {layer.name!r} must carry its running "
            f"statistics as parameters ('running_mean'/'running_var' or 'mean'/'var'), got "
            f"{sorted(params)}"
        )
    weight = get("weight", "scale")
    bias = get("bias")
    eps = layer.attrs.get("eps", layer.attrs.get("epsilon", 1e-5))
    if weight is None:
        weight = jnp.ones_like(mean)
    if bias is None:
        bias = jnp.zeros_like(mean)
    return weight, bias, mean, var, float(eps)


def _flax_style(params: Mapping[str, Any]) -> bool:
    return "kernel" in params or "scale" in params or "mean" in params


def merge_batch_norm(model: Any) -> Canonized:
    """Fold each batch norm into the conv/linear layer feeding it (Zennit's canonizer).

    For ``y = bn(conv(x))`` with ``s = gamma / sqrt(var + eps)`` the conv gets weight
    ``w * s`` (per output channel) and bias ``(b - mean) * s + beta``; the batch norm is
    then run with identity statistics (mean 0, var 1, weight 1, bias 0) exactly as Zennit
    leaves it, so it computes ``x / sqrt(1 + eps)`` (a relative change of ``eps / 2``).
    A batch norm whose input is not the sole (layer) use of a conv/linear layer's output
    is left alone; the unmerged layer still runs for any other consumer of its output
    (which then does not go through the interceptor). Torch layouts (weight
    ``(O, I, ...)``, channels on axis 1) and Flax layouts (kernel ``(..., I, O)``, channels
    last) are both handled.

    Args:
        model: A structured model.

    Returns:
        A :class:`Canonized` model with the same ``params`` and ``layers``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.structure import Layer
        >>> from jaxattr import merge_batch_norm
        >>> class M:
        ...     params = {"w": jnp.array([[2.0]]), "m": jnp.array([1.0]),
        ...               "v": jnp.array([4.0]), "g": jnp.array([1.0]), "b": jnp.array([0.0])}
        ...     layers = {"fc": Layer("fc", "linear", param_names={"weight": "w"}),
        ...               "bn": Layer("bn", "batch_norm", attrs={"eps": 0.0}, param_names={
        ...                   "running_mean": "m", "running_var": "v", "weight": "g",
        ...                   "bias": "b"})}
        ...     def apply(self, p, x, intercept=None):
        ...         h = intercept(self.layers["fc"], lambda q, v: v @ q["weight"].T,
        ...                       {"weight": p["w"]}, x)
        ...         bn = lambda q, v: (v - q["running_mean"][None]) / jnp.sqrt(
        ...             q["running_var"][None]) * q["weight"][None] + q["bias"][None]
        ...         return intercept(self.layers["bn"], bn, {"running_mean": p["m"],
        ...             "running_var": p["v"], "weight": p["g"], "bias": p["b"]}, h)
        >>> merge_batch_norm(M())(jnp.array([[3.0]]))
        Array([[2.5]], dtype=float32)
    """
    cache: dict[tuple, dict[str, str]] = {}

    def merges_for(inputs) -> dict[str, str]:
        key = _spec(inputs)
        if key not in cache:
            structs = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), inputs
            )
            graph, users = _graph_and_users(model, *structs)
            linear_of: dict[str, str] = {}
            for name, preds in graph.items():
                layer = model.layers.get(name)
                if layer is None or layer.kind != "batch_norm" or len(preds) < 1:
                    continue
                src = preds[0]
                if src is None or users.get(src, 0) != 1:
                    continue
                if model.layers[src].kind in ("linear", "conv", "conv_transpose"):
                    linear_of[src] = name
            cache[key] = linear_of
        return cache[key]

    def rewrite(inputs, user):
        linear_of = merges_for(inputs)
        bn_of = {v: k for k, v in linear_of.items()}
        state: dict[str, Any] = {}

        def intercept(layer, layer_fn, params, *xs):
            if layer.name in linear_of:
                # run unchanged for any other consumer; the batch norm re-runs it merged
                out = layer_fn(params, *xs)
                state[layer.name] = (layer_fn, params, xs, out)
                return out
            lin_name = bn_of.get(layer.name)
            if lin_name in state and xs and xs[0] is state[lin_name][3]:
                lin_fn, lin_params, lin_xs, _ = state.pop(lin_name)
                return _merged_call(
                    model.layers[lin_name],
                    lin_fn,
                    lin_params,
                    lin_xs,
                    layer,
                    params,
                    layer_fn,
                    user,
                )
            return user(layer, layer_fn, params, *xs)

        return intercept

    return Canonized(model, rewrite, name="merge_batch_norm")


def _merge_linear(lin_layer, lin_fn, lin_params, bn_layer, bn_params):
    """The linear layer with a batch norm's affine map folded in (Zennit's merge).

    Returns ``(merged_layer, merged_fn, merged_params)``: weight ``w * s`` per output
    channel and bias ``(b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``.
    """
    weight_key = "kernel" if "kernel" in lin_params else "weight"
    flax = _flax_style(lin_params) or _flax_style(bn_params)
    gamma, beta, mean, var, eps = _bn_parts(bn_params, bn_layer)
    scale = gamma / jnp.sqrt(var + eps)
    w = lin_params[weight_key]
    if flax:
        w_axis = w.ndim - 1
        ch_axis = -1
    elif lin_layer.kind == "conv_transpose":
        w_axis, ch_axis = 1, 1
    else:
        w_axis, ch_axis = 0, 1
    shape = [1] * w.ndim
    shape[w_axis] = -1
    old_b = lin_params.get("bias")
    if old_b is None:
        old_b = jnp.zeros_like(mean)
    merged = dict(lin_params)
    merged[weight_key] = w * scale.reshape(shape).astype(w.dtype)
    merged["bias"] = ((old_b - mean) * scale + beta).astype(w.dtype)
    had_bias = lin_params.get("bias") is not None

    def merged_fn(p, *xs):
        q = dict(p)
        b = q.pop("bias")
        if had_bias:
            q["bias"] = jnp.zeros_like(b)
        out = lin_fn(q, *xs)
        axis = ch_axis % out.ndim
        bshape = [1] * out.ndim
        bshape[axis] = -1
        return out + b.reshape(bshape)

    merged_layer = dataclasses.replace(
        lin_layer,
        param_names={**lin_layer.param_names, "bias": lin_layer.name + ".bias"}
        if "bias" not in lin_layer.param_names
        else lin_layer.param_names,
    )
    return merged_layer, merged_fn, merged


def _identity_bn(bn_params):
    """A batch norm's parameters made an identity (mean 0, var 1, weight 1, bias 0)."""
    ident = dict(bn_params)
    for k in ("running_mean", "mean"):
        if k in ident and ident[k] is not None:
            ident[k] = jnp.zeros_like(ident[k])
    for k in ("running_var", "var"):
        if k in ident and ident[k] is not None:
            ident[k] = jnp.ones_like(ident[k])
    for k in ("weight", "scale"):
        if k in ident and ident[k] is not None:
            ident[k] = jnp.ones_like(ident[k])
    if ident.get("bias") is not None:
        ident["bias"] = jnp.zeros_like(ident["bias"])
    return ident


def _merged_call(lin_layer, lin_fn, lin_params, lin_xs, bn_layer, bn_params, bn_fn, user):
    merged_layer, merged_fn, merged = _merge_linear(
        lin_layer, lin_fn, lin_params, bn_layer, bn_params
    )
    h = user(merged_layer, merged_fn, merged, *lin_xs)
    return user(bn_layer, bn_fn, _identity_bn(bn_params), h)


_LINEAR_KINDS = ("linear", "conv", "conv_transpose")


@dataclasses.dataclass(frozen=True)
class NamedMergeBatchNorm:
    """Zennit's ``NamedMergeBatchNorm``: fold named batch norms into named linear layers.

    A canonizer (``model -> model``); build it with :func:`named_merge_batch_norm`.

    Attributes:
        name_map: ``((linear layer names, batch norm name), ...)``.
    """

    name_map: tuple[tuple[tuple[str, ...], str], ...]

    def __call__(self, model: Any) -> Canonized:
        """Return ``model`` with the batch norms merged (see :func:`named_merge_batch_norm`)."""
        layers = model.layers
        by_base: dict[str, list[str]] = {}
        for name in layers:
            by_base.setdefault(name.split(":", 1)[0], []).append(name)

        def find(name: str, kinds: tuple, what: str) -> list[str]:
            found = by_base.get(name)
            if not found:
                shown = ", ".join(repr(n) for n in list(layers)[:12])
                raise ValueError(
                    f"named_merge_batch_norm: name_map names {what} {name!r}, which is not a "
                    f"layer of the model (layers: {shown}{', ...' if len(layers) > 12 else ''})"
                )
            kind = layers[found[0]].kind
            if kind not in kinds:
                raise ValueError(
                    f"named_merge_batch_norm: {what} {name!r} must be a layer of kind "
                    f"{' or '.join(kinds)}, got kind {kind!r}"
                )
            return found

        bn_of: dict[str, str] = {}  # linear layer -> batch norm module name
        bns: dict[str, str] = {}  # batch norm layer -> its module name
        for linears, bn in self.name_map:
            for b in find(bn, ("batch_norm",), "batch norm"):
                bns[b] = bn
            for lin in linears:
                for name in find(lin, _LINEAR_KINDS, "linear layer"):
                    bn_of[name] = bn
        bn_first = {bn: next(n for n in layers if n.split(":", 1)[0] == bn) for bn in bns.values()}

        def rewrite(inputs, user, params):
            bn_params = _layer_params(model, params, inputs, set(bn_first.values()))

            def intercept(layer, layer_fn, lp, *xs):
                if layer.name in bn_of:
                    bn_name = bn_first[bn_of[layer.name]]
                    merged_layer, merged_fn, merged = _merge_linear(
                        layer, layer_fn, lp, layers[bn_name], bn_params[bn_name]
                    )
                    return user(merged_layer, merged_fn, merged, *xs)
                if layer.name in bns:
                    return user(layer, layer_fn, _identity_bn(lp), *xs)
                return user(layer, layer_fn, lp, *xs)

            return intercept

        return Canonized(model, rewrite, name="named_merge_batch_norm", with_params=True)


def _layer_params(model, params, inputs, names: set) -> dict[str, Any]:
    """The local parameters of the layers ``names`` as the model hands them to its layers.

    Read from a flat ``params`` dict by the layers' ``param_names`` when possible (a bridged
    model); otherwise recorded from a run of the model whose outputs are unused (a
    compiled program drops that run).
    """
    layers = model.layers
    if isinstance(params, Mapping):
        try:
            return {n: {k: params[g] for k, g in layers[n].param_names.items()} for n in names}
        except (KeyError, TypeError):
            pass
    got: dict[str, Any] = {}

    def grab(layer, layer_fn, lp, *xs):
        if layer.name in names and layer.name not in got:
            got[layer.name] = lp
        return layer_fn(lp, *xs)

    model.apply(params, *inputs, intercept=grab)
    missing = sorted(names - set(got))
    if missing:
        raise ValueError(f"named_merge_batch_norm: batch norm layer(s) {missing} did not run")
    return got


def named_merge_batch_norm(name_map: Sequence[tuple[Sequence[str], str]]) -> NamedMergeBatchNorm:
    """Zennit's ``NamedMergeBatchNorm``: fold batch norms into the linear layers named.

    ``name_map`` pairs linear layers (conv, dense or transposed conv) with the batch norm
    whose affine map is folded into them, as Zennit's canonizer of the same name: every
    listed layer gets weight ``w * s`` (per output channel) and bias
    ``(b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``; the batch norm then runs
    with identity statistics (it computes ``x / sqrt(1 + eps)``). Unlike
    :func:`merge_batch_norm` the pairing is by name, not found from the graph, so a batch
    norm after a sum of two convolutions can be folded into both. A name matches every
    call of a layer (``"relu"`` names ``"relu:1"`` too).

    Args:
        name_map: ``[((linear names...), batch norm name), ...]``.

    Returns:
        A canonizer (``model -> model``), hashable: equal name maps share compiled
        programs.

    Raises:
        ValueError: When applied, a name that is not a layer of the model or a layer of the
            wrong kind.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.structure import Layer
        >>> from jaxattr import named_merge_batch_norm
        >>> class M:
        ...     params = {"w": jnp.array([[2.0]]), "m": jnp.array([1.0]),
        ...               "v": jnp.array([4.0]), "g": jnp.array([1.0]), "b": jnp.array([0.0])}
        ...     layers = {"fc": Layer("fc", "linear", param_names={"weight": "w"}),
        ...               "bn": Layer("bn", "batch_norm", attrs={"eps": 0.0}, param_names={
        ...                   "running_mean": "m", "running_var": "v", "weight": "g",
        ...                   "bias": "b"})}
        ...     def apply(self, p, x, intercept=None):
        ...         h = intercept(self.layers["fc"], lambda q, v: v @ q["weight"].T,
        ...                       {"weight": p["w"]}, x)
        ...         bn = lambda q, v: (v - q["running_mean"][None]) / jnp.sqrt(
        ...             q["running_var"][None]) * q["weight"][None] + q["bias"][None]
        ...         return intercept(self.layers["bn"], bn, {"running_mean": p["m"],
        ...             "running_var": p["v"], "weight": p["g"], "bias": p["b"]}, h)
        >>> named_merge_batch_norm([(("fc",), "bn")])(M())(jnp.array([[3.0]]))
        Array([[2.5]], dtype=float32)
    """
    pairs = []
    for entry in name_map:
        try:
            linears, bn = entry
        except (TypeError, ValueError):
            raise TypeError(
                f"name_map entries must be ((linear names...), batch norm name), got {entry!r}"
            ) from None
        linears = (linears,) if isinstance(linears, str) else tuple(linears)
        if not isinstance(bn, str) or not all(isinstance(n, str) for n in linears):
            raise TypeError(
                f"name_map entries must be ((linear names...), batch norm name), got {entry!r}"
            )
        pairs.append((linears, bn))
    return NamedMergeBatchNorm(tuple(pairs))


def residual_sums(model: Any) -> Any:
    """Zennit's ResNet canonizer: make every residual addition an explicit sum layer.

    Bridged torch models already record each tensor addition between activations as a
    layer of kind ``"add"`` (``layer1.0.add``), and the composites give those layers the
    norm rule, which splits relevance between the branches as Zennit's ``Sum`` does; the
    model is then returned unchanged. A model without any ``"add"`` layer is returned
    unchanged too (its residual additions, if any, are invisible to the rules: write them
    as a layer, e.g. a Flax module, to have them treated).

    Args:
        model: A structured model.

    Returns:
        The model (unchanged: the sums are already layers).

    Example:
        >>> from jaxattr import residual_sums
        >>> residual_sums(None) is None
        True
    """
    return model


def canonize(model: Any, canonizers: Sequence[Canonizer] | Canonizer | None) -> Any:
    """Apply canonizers in order: ``canonizers[-1](...canonizers[0](model))``.

    Args:
        model: A structured model.
        canonizers: A canonizer, a sequence of them, or ``None``.

    Returns:
        The canonized model (``model`` itself for ``None`` or ``()``).

    Example:
        >>> from jaxattr import canonize, residual_sums
        >>> canonize("model", [residual_sums])
        'model'
    """
    if canonizers is None:
        return model
    if callable(canonizers):
        canonizers = (canonizers,)
    for c in canonizers:
        if not callable(c):
            raise TypeError(f"canonizers must be callables model -> model, got {c!r}")
        model = c(model)
    return model
