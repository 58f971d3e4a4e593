"""Composites: which rule goes to which layer (Zennit's composites, as data).

A :class:`Composite` maps the layers of a structured model to rules. Matching runs in this
order, and the first match wins: the name map (exact layer names, or module-path
prefixes ending in ``"."``), the special first layer (the first layer in execution order
that matches ``first_map``), then the layer map (by kind, op name or predicate). Layers
that match nothing keep their ordinary gradient.

Matchers are a layer kind (``"conv"``), an op name (``"ReLU"``, ``"aten.relu.default"``), a
predicate ``layer -> bool``, or a tuple of those (any of them).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxattr import _rules
from jaxattr._rules import Rule
from jaxattr.structure import Layer

__all__ = [
    "CONV",
    "LINEAR",
    "Composite",
    "beta_smooth",
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


def _name_matches(names: Any, name: str) -> bool:
    if isinstance(names, str):
        names = (names,)
    for n in names:
        if n == name or (n.endswith(".") and name.startswith(n)):
            return True
    return False


@dataclasses.dataclass(frozen=True)
class Composite:
    """A mapping of layers to rules: name map, special first layer, layer map.

    Composites built from the same rules (rule factories are cached) compare and hash
    equal, so rebuilding one per call does not recompile.

    Attributes:
        layer_map: ``(matcher, rule)`` pairs, first match wins.
        name_map: ``(names, rule)`` pairs; ``names`` is a layer name, a module prefix
            ending in ``"."`` (``"features."``), or a tuple of those. Checked first.
        first_map: ``(matcher, rule)`` pairs for the first layer (in execution order) that
            matches any of them (Zennit's ``SpecialFirstLayerMapComposite``).
        name: Shown in ``repr``.

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

    def __post_init__(self) -> None:
        for field in ("layer_map", "name_map", "first_map"):
            entries = tuple(tuple(e) if isinstance(e, list) else e for e in getattr(self, field))
            object.__setattr__(self, field, entries)  # equal composites hash equal
            for entry in entries:
                if not (
                    isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Rule)
                ):
                    raise TypeError(
                        f"Composite.{field} must hold (matcher, Rule) pairs, got {entry!r}"
                    )

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
            rule = next((r for n, r in self.name_map if _name_matches(n, layer.name)), None)
            if rule is None and not first_done and self.first_map:
                rule = next((r for m, r in self.first_map if _matches(m, layer)), None)
                if rule is not None:
                    first_done = True
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


def _cached(factory):
    cached = functools.lru_cache(maxsize=128)(factory)

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        try:
            return cached(*args, **kwargs)
        except TypeError:
            return factory(*args, **kwargs)

    return wrapper


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


@_cached
def epsilon_plus(
    epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_params: Sequence[str] | None = None
) -> Composite:
    """Zennit's ``EpsilonPlus``: z+ on convolutions, epsilon on dense layers.

    Args:
        epsilon: Epsilon of the dense layers.
        stabilizer: Stabilizer of the other rules.
        zero_params: Parameter names set to zero in every rule.

    Returns:
        The composite.

    Example:
        >>> from jaxattr import epsilon_plus
        >>> epsilon_plus()
        Composite('epsilon_plus')
    """
    zp = _zp(zero_params)
    return Composite(
        layer_map=(
            *layer_map_base(stabilizer),
            (CONV, _rules.z_plus(stabilizer, zp)),
            ("linear", _rules.epsilon(epsilon, zp)),
        ),
        name="epsilon_plus",
    )


@_cached
def epsilon_plus_flat(
    epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_params: Sequence[str] | None = None
) -> Composite:
    """Zennit's ``EpsilonPlusFlat``: epsilon_plus with the flat rule on the first linear layer.

    Args:
        epsilon: Epsilon of the dense layers.
        stabilizer: Stabilizer of the other rules.
        zero_params: Parameter names set to zero in every rule.

    Returns:
        The composite.

    Example:
        >>> from jaxattr import epsilon_plus_flat
        >>> epsilon_plus_flat()
        Composite('epsilon_plus_flat')
    """
    zp = _zp(zero_params)
    return Composite(
        layer_map=epsilon_plus(epsilon, stabilizer, zp).layer_map,
        first_map=((LINEAR, _rules.flat(stabilizer, zp)),),
        name="epsilon_plus_flat",
    )


@_cached
def epsilon_alpha2_beta1(
    epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_params: Sequence[str] | None = None
) -> Composite:
    """Zennit's ``EpsilonAlpha2Beta1``: alpha=2, beta=1 on convolutions, epsilon on dense.

    Args:
        epsilon: Epsilon of the dense layers.
        stabilizer: Stabilizer of the other rules.
        zero_params: Parameter names set to zero in every rule.

    Returns:
        The composite.

    Example:
        >>> from jaxattr import epsilon_alpha2_beta1
        >>> epsilon_alpha2_beta1()
        Composite('epsilon_alpha2_beta1')
    """
    zp = _zp(zero_params)
    return Composite(
        layer_map=(
            *layer_map_base(stabilizer),
            (CONV, _rules.alpha_beta(2.0, 1.0, stabilizer, zp)),
            ("linear", _rules.epsilon(epsilon, zp)),
        ),
        name="epsilon_alpha2_beta1",
    )


@_cached
def epsilon_alpha2_beta1_flat(
    epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_params: Sequence[str] | None = None
) -> Composite:
    """Zennit's ``EpsilonAlpha2Beta1Flat``: epsilon_alpha2_beta1, flat on the first layer.

    Args:
        epsilon: Epsilon of the dense layers.
        stabilizer: Stabilizer of the other rules.
        zero_params: Parameter names set to zero in every rule.

    Returns:
        The composite.

    Example:
        >>> from jaxattr import epsilon_alpha2_beta1_flat
        >>> epsilon_alpha2_beta1_flat()
        Composite('epsilon_alpha2_beta1_flat')
    """
    zp = _zp(zero_params)
    return Composite(
        layer_map=epsilon_alpha2_beta1(epsilon, stabilizer, zp).layer_map,
        first_map=((LINEAR, _rules.flat(stabilizer, zp)),),
        name="epsilon_alpha2_beta1_flat",
    )


@_cached
def epsilon_gamma_box(
    low: Any = -3.0,
    high: Any = 3.0,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    stabilizer: float = 1e-6,
    zero_params: Sequence[str] | None = None,
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

    Returns:
        The composite.

    Example:
        >>> from jaxattr import epsilon_gamma_box
        >>> epsilon_gamma_box(low=0.0, high=1.0)
        Composite('epsilon_gamma_box')
    """
    zp = _zp(zero_params)
    return Composite(
        layer_map=(
            *layer_map_base(stabilizer),
            (CONV, _rules.gamma(gamma, stabilizer, zp)),
            ("linear", _rules.epsilon(epsilon, zp)),
        ),
        first_map=((CONV, _rules.z_box(low, high, stabilizer, zp)),),
        name="epsilon_gamma_box",
    )


@_cached
def guided_backprop_composite() -> Composite:
    """Zennit's ``GuidedBackprop`` composite: the guided rule on every ReLU.

    Returns:
        The composite.

    Example:
        >>> from jaxattr import guided_backprop_composite
        >>> guided_backprop_composite()
        Composite('guided_backprop')
    """
    return Composite(layer_map=((is_relu, _rules.relu_guided_backprop()),), name="guided_backprop")


@_cached
def deconvnet() -> Composite:
    """Zennit's ``DeconvNet`` composite: the deconvnet rule on every ReLU.

    Returns:
        The composite.

    Example:
        >>> from jaxattr import deconvnet
        >>> deconvnet()
        Composite('deconvnet')
    """
    return Composite(layer_map=((is_relu, _rules.relu_deconvnet()),), name="deconvnet")


@_cached
def excitation_backprop_composite(
    stabilizer: float = 1e-6, zero_params: Sequence[str] | None = None
) -> Composite:
    """Zennit's ``ExcitationBackprop``: z+ on linear layers, norm on sums and average pools.

    Args:
        stabilizer: Stabilizer of the rules.
        zero_params: Parameter names set to zero.

    Returns:
        The composite.

    Example:
        >>> from jaxattr import excitation_backprop_composite
        >>> excitation_backprop_composite()
        Composite('excitation_backprop')
    """
    return Composite(
        layer_map=(
            ("add", _rules.norm(stabilizer)),
            ("avg_pool", _rules.norm(stabilizer)),
            (LINEAR, _rules.z_plus(stabilizer, _zp(zero_params))),
        ),
        name="excitation_backprop",
    )


@_cached
def beta_smooth(beta_smooth: float = 10.0) -> Composite:
    """Zennit's ``BetaSmooth``: every ReLU's gradient replaced by ``sigmoid(beta x)``.

    Args:
        beta_smooth: The softplus sharpness.

    Returns:
        The composite.

    Example:
        >>> from jaxattr import beta_smooth
        >>> beta_smooth()
        Composite('beta_smooth')
    """
    return Composite(
        layer_map=((is_relu, _rules.relu_beta_smooth(beta_smooth)),), name="beta_smooth"
    )
