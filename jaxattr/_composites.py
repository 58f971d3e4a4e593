"""Composites: which rule goes to which layer (Zennit's composites, as data).

A :class:`Composite` maps the layers of a structured model to rules. Matching runs in this
order, and the first match wins: the name map (exact layer names, or module-path
prefixes ending in ``"."``), the special first layer (the first layer in execution order
that matches ``first_map``), then the layer map (by kind, op name or predicate). Layers
that match nothing keep their ordinary gradient. A :class:`MixedComposite` (Zennit's
``MixedComposite``) asks several composites in turn, each keeping its own first layer.
A composite may carry canonizers, applied before its rules (Zennit's ``canonizers=``).

Matchers are a layer kind (``"conv"``), an op name (``"ReLU"``, ``"aten.relu.default"``), a
predicate ``layer -> bool``, or a tuple of those (any of them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxattr import _caching, _rules
from jaxattr._rules import Rule
from jaxattr.structure import Layer

__all__ = [
    "CONV",
    "LINEAR",
    "Composite",
    "MixedComposite",
    "beta_smooth",
    "captum_lrp_composite",
    "deconvnet",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "epsilon_gamma_box",
    "epsilon_plus",
    "epsilon_plus_flat",
    "excitation_backprop_composite",
    "guided_backprop_composite",
    "is_relu",
    "layer_map_base",
    "mixed_composite",
]

Matcher = Any  # str | Callable[[Layer], bool] | tuple of those

#: Convolutions (Zennit's ``Convolution``: standard and transposed).
CONV = ("conv", "conv_transpose")
#: Every linear-type layer (Zennit's ``Linear``: dense and convolutions).
LINEAR = ("linear", "conv", "conv_transpose")

_RELU_OPS = {"relu", "relu_"}


def is_relu(layer: Layer) -> bool:
    """True for a ReLU layer (torch ``ReLU`` module, ``aten.relu``, ``jax.nn.relu``).

    Args:
        layer: A layer record.

    Returns:
        Whether the layer is a plain ReLU (not leaky, not ReLU6).

    Example:
        >>> from jaxattr import is_relu
        >>> from jaxattr.structure import Layer
        >>> is_relu(Layer("features.1", "activation", "ReLU"))
        True
    """
    if layer.kind != "activation":
        return False
    op = layer.op.lower()
    if op.startswith("aten."):
        op = op.split(".")[1]
    return op.rsplit(".", 1)[-1] in _RELU_OPS


def _matches(matcher: Matcher, layer: Layer) -> bool:
    if isinstance(matcher, (tuple, list, frozenset, set)):
        return any(_matches(m, layer) for m in matcher)
    if isinstance(matcher, str):
        return matcher == layer.kind or matcher == layer.op
    if callable(matcher):
        return bool(matcher(layer))
    if isinstance(matcher, type):
        return False
    raise TypeError(
        f"a composite matcher must be a kind/op string, a predicate layer -> bool or a tuple "
        f"of those, got {matcher!r}"
    )


def _base_name(name: str) -> str:
    """A layer name without its call suffix: ``"relu:1"`` (a module's second call) -> ``"relu"``."""
    return name.split(":", 1)[0]


def _name_matches(names: Any, name: str) -> bool:
    if isinstance(names, str):
        names = (names,)
    base = _base_name(name)
    for n in names:
        if n == name or n == base or (n.endswith(".") and name.startswith(n)):
            return True
    return False


def _entries(value: Any, field: str) -> tuple:
    """A map given as pairs (a list or tuple of them), as a tuple of tuples."""
    if value is None:
        return ()
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Rule):
        raise TypeError(
            f"{field} must be a sequence of (matcher, Rule) pairs, got one pair {value!r}: "
            f"wrap it in a list"
        )
    return tuple(tuple(e) if isinstance(e, list) else e for e in value)


def _canonizer_tuple(canonizers: Any) -> tuple:
    if canonizers is None:
        return ()
    if callable(canonizers):
        return (canonizers,)
    out = tuple(canonizers)
    for c in out:
        if not callable(c):
            raise TypeError(f"canonizers must be callables model -> model, got {c!r}")
    return out


@dataclasses.dataclass(frozen=True)
class Composite:
    """A mapping of layers to rules: name map, special first layer, layer map.

    Composites built from the same rules (rule factories are cached) compare and hash
    equal, so rebuilding one per call does not recompile.

    Attributes:
        layer_map: ``(matcher, rule)`` pairs, first match wins (Zennit's
            ``LayerMapComposite``).
        name_map: ``(names, rule)`` pairs; ``names`` is a layer name, a module prefix
            ending in ``"."`` (``"features."``), or a tuple of those (Zennit's
            ``NameMapComposite``). A module's name matches every call of it
            (``"relu"`` also names ``"relu:1"``). Checked first.
        first_map: ``(matcher, rule)`` pairs for the first layer (in execution order) that
            matches any of them (Zennit's ``SpecialFirstLayerMapComposite``); that layer
            is the first match of ``first_map`` even where ``name_map`` overrides it.
        name: Shown in ``repr``.
        canonizers: Canonizers (model -> model) that :func:`jaxattr.lrp` and
            :func:`jaxattr.attach` apply before the rules (Zennit's ``canonizers=``).

    Example:
        >>> from jaxattr import Composite, epsilon, z_plus, flat, pass_rule
        >>> comp = Composite(layer_map=(("activation", pass_rule()), ("conv", z_plus()),
        ...                             ("linear", epsilon())),
        ...                  first_map=(("conv", flat()),))
        >>> from jaxattr.structure import Layer
        >>> layers = [Layer("c1", "conv"), Layer("r", "activation"), Layer("c2", "conv")]
        >>> {k: r.name for k, r in comp.rules_for(layers).items()}
        {'c1': 'flat', 'r': 'pass', 'c2': 'z_plus'}
    """

    layer_map: Sequence[tuple[Matcher, Rule]] = ()
    name_map: Sequence[tuple[Any, Rule]] = ()
    first_map: Sequence[tuple[Matcher, Rule]] = ()
    name: str = "composite"
    canonizers: Sequence[Any] = ()

    def __post_init__(self) -> None:
        for field in ("layer_map", "name_map", "first_map"):
            entries = _entries(getattr(self, field), f"Composite.{field}")
            object.__setattr__(self, field, entries)  # equal composites hash equal
            for entry in entries:
                if not (
                    isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Rule)
                ):
                    raise TypeError(
                        f"Composite.{field} must hold (matcher, Rule) pairs, got {entry!r}"
                    )
        object.__setattr__(self, "canonizers", _canonizer_tuple(self.canonizers))

    def __repr__(self) -> str:
        return f"Composite({self.name!r})"

    def rules_for(self, layers: Mapping[str, Layer] | Sequence[Layer]) -> dict[str, Rule]:
        """Assign rules to layers (in execution order); unmatched layers are left out.

        Args:
            layers: A structured model's ``layers`` mapping, or a list of layers.

        Returns:
            ``{layer name: rule}``.
        """
        seq = list(layers.values()) if isinstance(layers, Mapping) else list(layers)
        out: dict[str, Rule] = {}
        first_done = False
        for layer in seq:
            first = None
            if not first_done and self.first_map:
                first = next((r for m, r in self.first_map if _matches(m, layer)), None)
                first_done = first is not None
            rule = next((r for n, r in self.name_map if _name_matches(n, layer.name)), None)
            if rule is None:
                rule = first
            if rule is None:
                rule = next((r for m, r in self.layer_map if _matches(m, layer)), None)
            if rule is not None:
                out[layer.name] = rule
        return out

    def intercept(self, layers: Mapping[str, Layer]) -> Callable[..., Any]:
        """An interceptor running every mapped layer under its rule.

        Args:
            layers: The model's layers (to resolve the first layer).

        Returns:
            ``intercept(layer, layer_fn, params, *inputs)`` for ``model.apply``.
        """
        rules = self.rules_for(layers)

        def intercept(layer, layer_fn, params, *inputs):
            rule = rules.get(layer.name)
            if rule is None:
                return layer_fn(params, *inputs)
            return _rules.apply_rule(rule, layer, layer_fn, params, *inputs)

        return intercept


@dataclasses.dataclass(frozen=True, repr=False)
class MixedComposite(Composite):
    """Several composites asked in turn, Zennit's ``MixedComposite``: first match wins.

    Each composite assigns rules as if it were alone (its own special first layer); a
    layer gets the rule of the first composite that maps it. The canonizers are this
    composite's own followed by every member's, in order.

    Attributes:
        composites: The member composites, in matching order.

    Example:
        >>> from jaxattr import Composite, MixedComposite, epsilon, flat
        >>> from jaxattr.structure import Layer
        >>> names = Composite(name_map=(("fc2", epsilon(0.5)),))
        >>> kinds = Composite(layer_map=(("linear", epsilon()),), first_map=(("linear", flat()),))
        >>> mixed = MixedComposite(composites=(names, kinds))
        >>> layers = [Layer("fc1", "linear"), Layer("fc2", "linear")]
        >>> {k: r.name for k, r in mixed.rules_for(layers).items()}
        {'fc1': 'flat', 'fc2': 'epsilon'}
    """

    composites: Sequence[Composite] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        comps = tuple(self.composites)
        for c in comps:
            if not isinstance(c, Composite):
                raise TypeError(
                    f"MixedComposite.composites must hold jaxattr.Composite objects, got "
                    f"{type(c).__name__}"
                )
        object.__setattr__(self, "composites", comps)
        cans = list(self.canonizers)
        for c in comps:
            cans += [f for f in c.canonizers if f not in cans]
        object.__setattr__(self, "canonizers", tuple(cans))

    def __repr__(self) -> str:
        return f"MixedComposite({[c.name for c in self.composites]})"

    def rules_for(self, layers: Mapping[str, Layer] | Sequence[Layer]) -> dict[str, Rule]:
        """Assign rules: each layer gets the rule of the first member that maps it.

        Args:
            layers: A structured model's ``layers`` mapping, or a list of layers.

        Returns:
            ``{layer name: rule}``.
        """
        seq = list(layers.values()) if isinstance(layers, Mapping) else list(layers)
        own = Composite.rules_for(self, seq)
        each = [own, *(c.rules_for(seq) for c in self.composites)]
        out: dict[str, Rule] = {}
        for layer in seq:
            rule = next((m[layer.name] for m in each if layer.name in m), None)
            if rule is not None:
                out[layer.name] = rule
        return out


def mixed_composite(composites: Sequence[Composite], canonizers: Any = None) -> MixedComposite:
    """Zennit's ``MixedComposite``: ask ``composites`` in turn, the first match wins.

    ``mixed_composite([Composite(name_map=...), epsilon_plus_flat()])`` is Zennit's
    ``NameLayerMapComposite``: rules by layer name first, then the built-in composite.

    Args:
        composites: The member composites, in matching order.
        canonizers: Canonizers applied before every member's own ones.

    Returns:
        The :class:`MixedComposite`.

    Example:
        >>> from jaxattr import Composite, mixed_composite, epsilon, epsilon_plus_flat
        >>> mixed_composite([Composite(name_map=(("fc", epsilon(0.1)),)), epsilon_plus_flat()])
        MixedComposite(['composite', 'epsilon_plus_flat'])
    """
    return MixedComposite(composites=tuple(composites), canonizers=canonizers, name="mixed")


_cached = _caching.lru(128)  # one composite object per factory call: compiled programs reuse


def layer_map_base(stabilizer: float = 1e-6) -> tuple[tuple[Matcher, Rule], ...]:
    """Zennit's shared base map: activations pass, sums and average pools norm, BN pass.

    Args:
        stabilizer: The stabilizer of the norm rules.

    Returns:
        ``(matcher, rule)`` pairs to put before a composite's own entries.

    Example:
        >>> from jaxattr import layer_map_base
        >>> [r.name for _, r in layer_map_base()]
        ['pass', 'norm', 'norm', 'pass']
    """
    return (
        ("activation", _rules.pass_rule()),
        ("add", _rules.norm(stabilizer)),
        ("avg_pool", _rules.norm(stabilizer)),
        ("batch_norm", _rules.pass_rule()),
    )


def _zp(zero_params):
    if zero_params is None or isinstance(zero_params, str):
        return zero_params
    return tuple(zero_params)


def _build(name, base, *, layer_map=(), first_map=None, first_base=(), canonizers=None):
    """A built-in composite: the user's ``layer_map``/``first_map`` pairs come first, as
    Zennit prepends them to the composite's own."""
    return Composite(
        layer_map=(*_entries(layer_map, "layer_map"), *base),
        first_map=(*_entries(first_map, "first_map"), *first_base),
        name=name,
        canonizers=canonizers,
    )


_MAP_ARGS = "\n".join(
    [
        "        layer_map: ``(matcher, rule)`` pairs checked before the composite's own",
        "            (Zennit prepends its ``layer_map`` argument the same way).",
        "        canonizers: Canonizers the composite carries (applied by :func:`jaxattr.lrp`",
        "            before the rules), e.g. ``[jaxattr.merge_batch_norm]``.",
    ]
)

_FIRST_ARG = "\n".join(
    [
        "        first_map: ``(matcher, rule)`` pairs for the first layer, checked before the",
        "            composite's own first-layer entry.",
    ]
)


def _doc(f):
    f.__doc__ = f.__doc__.replace("        {map_args}", _MAP_ARGS).replace(
        "        {first_arg}", _FIRST_ARG
    )
    return f


@_cached
@_doc
def epsilon_plus(
    epsilon: float | Callable = 1e-6,
    stabilizer: float | Callable = 1e-6,
    zero_params: Sequence[str] | None = None,
    *,
    layer_map: Sequence[tuple[Matcher, Rule]] = (),
    canonizers: Any = None,
) -> Composite:
    """Zennit's ``EpsilonPlus``: z+ on convolutions, epsilon on dense layers.

    Args:
        epsilon: Epsilon of the dense layers (a float or a :class:`jaxattr.Stabilizer`).
        stabilizer: Stabilizer of the other rules.
        zero_params: Parameter names set to zero in every rule.
        {map_args}

    Returns:
        The composite.

    Example:
        >>> from jaxattr import epsilon_plus
        >>> epsilon_plus()
        Composite('epsilon_plus')
    """
    zp = _zp(zero_params)
    base = (
        *layer_map_base(stabilizer),
        (CONV, _rules.z_plus(stabilizer, zp)),
        ("linear", _rules.epsilon(epsilon, zp)),
    )
    return _build("epsilon_plus", base, layer_map=layer_map, canonizers=canonizers)


@_cached
@_doc
def epsilon_plus_flat(
    epsilon: float | Callable = 1e-6,
    stabilizer: float | Callable = 1e-6,
    zero_params: Sequence[str] | None = None,
    *,
    layer_map: Sequence[tuple[Matcher, Rule]] = (),
    first_map: Sequence[tuple[Matcher, Rule]] = (),
    canonizers: Any = None,
) -> Composite:
    """Zennit's ``EpsilonPlusFlat``: epsilon_plus with the flat rule on the first linear layer.

    Args:
        epsilon: Epsilon of the dense layers.
        stabilizer: Stabilizer of the other rules.
        zero_params: Parameter names set to zero in every rule.
        {map_args}
        {first_arg}

    Returns:
        The composite.

    Example:
        >>> from jaxattr import epsilon_plus_flat
        >>> epsilon_plus_flat()
        Composite('epsilon_plus_flat')
    """
    zp = _zp(zero_params)
    return _build(
        "epsilon_plus_flat",
        epsilon_plus(epsilon, stabilizer, zp).layer_map,
        layer_map=layer_map,
        first_map=first_map,
        first_base=((LINEAR, _rules.flat(stabilizer, zp)),),
        canonizers=canonizers,
    )


@_cached
@_doc
def epsilon_alpha2_beta1(
    epsilon: float | Callable = 1e-6,
    stabilizer: float | Callable = 1e-6,
    zero_params: Sequence[str] | None = None,
    *,
    layer_map: Sequence[tuple[Matcher, Rule]] = (),
    canonizers: Any = None,
) -> Composite:
    """Zennit's ``EpsilonAlpha2Beta1``: alpha=2, beta=1 on convolutions, epsilon on dense.

    Args:
        epsilon: Epsilon of the dense layers.
        stabilizer: Stabilizer of the other rules.
        zero_params: Parameter names set to zero in every rule.
        {map_args}

    Returns:
        The composite.

    Example:
        >>> from jaxattr import epsilon_alpha2_beta1
        >>> epsilon_alpha2_beta1()
        Composite('epsilon_alpha2_beta1')
    """
    zp = _zp(zero_params)
    base = (
        *layer_map_base(stabilizer),
        (CONV, _rules.alpha_beta(2.0, 1.0, stabilizer, zp)),
        ("linear", _rules.epsilon(epsilon, zp)),
    )
    return _build("epsilon_alpha2_beta1", base, layer_map=layer_map, canonizers=canonizers)


@_cached
@_doc
def epsilon_alpha2_beta1_flat(
    epsilon: float | Callable = 1e-6,
    stabilizer: float | Callable = 1e-6,
    zero_params: Sequence[str] | None = None,
    *,
    layer_map: Sequence[tuple[Matcher, Rule]] = (),
    first_map: Sequence[tuple[Matcher, Rule]] = (),
    canonizers: Any = None,
) -> Composite:
    """Zennit's ``EpsilonAlpha2Beta1Flat``: epsilon_alpha2_beta1, flat on the first layer.

    Args:
        epsilon: Epsilon of the dense layers.
        stabilizer: Stabilizer of the other rules.
        zero_params: Parameter names set to zero in every rule.
        {map_args}
        {first_arg}

    Returns:
        The composite.

    Example:
        >>> from jaxattr import epsilon_alpha2_beta1_flat
        >>> epsilon_alpha2_beta1_flat()
        Composite('epsilon_alpha2_beta1_flat')
    """
    zp = _zp(zero_params)
    return _build(
        "epsilon_alpha2_beta1_flat",
        epsilon_alpha2_beta1(epsilon, stabilizer, zp).layer_map,
        layer_map=layer_map,
        first_map=first_map,
        first_base=((LINEAR, _rules.flat(stabilizer, zp)),),
        canonizers=canonizers,
    )


@_cached
@_doc
def epsilon_gamma_box(
    low: Any = -3.0,
    high: Any = 3.0,
    epsilon: float | Callable = 1e-6,
    gamma: float = 0.25,
    stabilizer: float | Callable = 1e-6,
    zero_params: Sequence[str] | None = None,
    *,
    layer_map: Sequence[tuple[Matcher, Rule]] = (),
    first_map: Sequence[tuple[Matcher, Rule]] = (),
    canonizers: Any = None,
) -> Composite:
    """Zennit's ``EpsilonGammaBox``: z^B on the first conv, gamma on convs, epsilon on dense.

    Zennit requires ``low`` and ``high``; here they default to ``-3`` and ``3`` (a
    standardised image) but should be set to the real input bounds.

    Args:
        low: Lowest input value (scalar or per-channel array, e.g. shape (C, 1, 1)).
        high: Highest input value.
        epsilon: Epsilon of the dense layers.
        gamma: Gamma of the convolutions.
        stabilizer: Stabilizer of the other rules.
        zero_params: Parameter names set to zero in every rule.
        {map_args}
        {first_arg}

    Returns:
        The composite.

    Example:
        >>> from jaxattr import epsilon_gamma_box
        >>> epsilon_gamma_box(low=0.0, high=1.0)
        Composite('epsilon_gamma_box')
    """
    zp = _zp(zero_params)
    base = (
        *layer_map_base(stabilizer),
        (CONV, _rules.gamma(gamma, stabilizer, zp)),
        ("linear", _rules.epsilon(epsilon, zp)),
    )
    return _build(
        "epsilon_gamma_box",
        base,
        layer_map=layer_map,
        first_map=first_map,
        first_base=((CONV, _rules.z_box(low, high, stabilizer, zp)),),
        canonizers=canonizers,
    )


@_cached
@_doc
def guided_backprop_composite(
    *, layer_map: Sequence[tuple[Matcher, Rule]] = (), canonizers: Any = None
) -> Composite:
    """Zennit's ``GuidedBackprop`` composite: the guided rule on every ReLU.

    Args:
        {map_args}

    Returns:
        The composite.

    Example:
        >>> from jaxattr import guided_backprop_composite
        >>> guided_backprop_composite()
        Composite('guided_backprop')
    """
    base = ((is_relu, _rules.relu_guided_backprop()),)
    return _build("guided_backprop", base, layer_map=layer_map, canonizers=canonizers)


@_cached
@_doc
def deconvnet(
    *, layer_map: Sequence[tuple[Matcher, Rule]] = (), canonizers: Any = None
) -> Composite:
    """Zennit's ``DeconvNet`` composite: the deconvnet rule on every ReLU.

    Args:
        {map_args}

    Returns:
        The composite.

    Example:
        >>> from jaxattr import deconvnet
        >>> deconvnet()
        Composite('deconvnet')
    """
    base = ((is_relu, _rules.relu_deconvnet()),)
    return _build("deconvnet", base, layer_map=layer_map, canonizers=canonizers)


@_cached
@_doc
def excitation_backprop_composite(
    stabilizer: float | Callable = 1e-6,
    zero_params: Sequence[str] | None = None,
    *,
    layer_map: Sequence[tuple[Matcher, Rule]] = (),
    canonizers: Any = None,
) -> Composite:
    """Zennit's ``ExcitationBackprop``: z+ on linear layers, norm on sums and average pools.

    Args:
        stabilizer: Stabilizer of the rules.
        zero_params: Parameter names set to zero.
        {map_args}

    Returns:
        The composite.

    Example:
        >>> from jaxattr import excitation_backprop_composite
        >>> excitation_backprop_composite()
        Composite('excitation_backprop')
    """
    base = (
        ("add", _rules.norm(stabilizer)),
        ("avg_pool", _rules.norm(stabilizer)),
        (LINEAR, _rules.z_plus(stabilizer, _zp(zero_params))),
    )
    return _build("excitation_backprop", base, layer_map=layer_map, canonizers=canonizers)


@_cached
@_doc
def beta_smooth(
    beta_smooth: float = 10.0,
    *,
    layer_map: Sequence[tuple[Matcher, Rule]] = (),
    zero_params: Sequence[str] | None = None,
    canonizers: Any = None,
) -> Composite:
    """Zennit's ``BetaSmooth``: every ReLU's gradient replaced by ``sigmoid(beta x)``.

    ``x`` is the ReLU's input. Zennit reads it with a forward hook, which for an
    *in-place* ReLU (``nn.ReLU(inplace=True)``, as in torchvision's VGG and ResNet) sees
    the tensor after the ReLU has overwritten it, i.e. ``max(x, 0)``: there Zennit's
    gradient is ``sigmoid(beta max(x, 0))``, which is 0.5 (not about 0) for every
    negative input. jaxattr always uses the pre-activation input (the rule as published,
    and Zennit's own result for a ReLU that is not in-place); see ``docs/rules.md``.

    Args:
        beta_smooth: The softplus sharpness.
        {map_args}
        zero_params: Accepted for Zennit's signature; the ReLU rule has no parameters.

    Returns:
        The composite.

    Example:
        >>> from jaxattr import beta_smooth
        >>> beta_smooth()
        Composite('beta_smooth')
    """
    del zero_params  # Zennit accepts it and ignores it too
    base = ((is_relu, _rules.relu_beta_smooth(beta_smooth)),)
    return _build("beta_smooth", base, layer_map=layer_map, canonizers=canonizers)


@_cached
def captum_lrp_composite(
    epsilon: float = 1e-9,
    *,
    name_map: Sequence[tuple[Any, Rule]] = (),
    layer_map: Sequence[tuple[Matcher, Rule]] = (),
) -> Composite:
    """Captum's default LRP rules (``captum.attr.LRP`` without per-module ``rule``).

    Captum gives ``EpsilonRule`` (``epsilon=1e-9``) to convolutions, dense layers, max
    and average pools (adaptive included), batch norms and additions, and passes the
    relevance through ReLU, tanh and dropout unchanged. Its per-module ``module.rule =
    GammaRule()`` is ``name_map`` here (with :func:`jaxattr.captum_gamma`,
    :func:`jaxattr.captum_alpha1_beta0`, :func:`jaxattr.epsilon` or
    :func:`jaxattr.pass_rule` for ``IdentityRule``). Use it with
    ``lrp(..., captum_normalize=True)`` for Captum's numbers. Captum refuses layer types
    outside its table (other activations, 1-D/3-D convolutions, ...); here they keep
    their gradient.

    Args:
        epsilon: The stabilizer of the epsilon rule (Captum's ``STABILITY_FACTOR``).
        name_map: ``(layer names, rule)`` pairs checked first (Captum's per-module rules).
        layer_map: ``(matcher, rule)`` pairs checked before the default ones.

    Returns:
        The composite.

    Example:
        >>> from jaxattr import captum_lrp_composite, captum_gamma
        >>> from jaxattr.structure import Layer
        >>> comp = captum_lrp_composite(name_map=(("conv1", captum_gamma()),))
        >>> layers = [Layer("conv1", "conv"), Layer("relu", "activation", "ReLU"),
        ...           Layer("fc", "linear")]
        >>> {k: r.name for k, r in comp.rules_for(layers).items()}
        {'conv1': 'captum_gamma', 'relu': 'pass', 'fc': 'epsilon'}
    """
    eps = _rules.epsilon(epsilon)
    base = (
        (_captum_pass, _rules.pass_rule()),
        (("conv", "linear", "max_pool", "avg_pool", "batch_norm", "add"), eps),
    )
    return Composite(
        layer_map=(*_entries(layer_map, "layer_map"), *base),
        name_map=_entries(name_map, "name_map"),
        name="captum_lrp",
    )


def _captum_pass(layer: Layer) -> bool:
    """Captum's ``SUPPORTED_NON_LINEAR_LAYERS``: ReLU, dropout and tanh pass relevance."""
    if layer.kind == "dropout" or is_relu(layer):
        return True
    if layer.kind != "activation":
        return False
    op = layer.op.lower()
    if op.startswith("aten."):
        op = op.split(".")[1]
    return op.rsplit(".", 1)[-1].rstrip("_") == "tanh"
