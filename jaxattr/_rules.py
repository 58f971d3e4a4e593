"""LRP rules: a layer's modified backward pass, decomposed as in Zennit.

A :class:`Rule` says how relevance flows back through one layer. It runs the layer under a
``jax.custom_vjp``: the forward pass is the layer unchanged; the backward pass replaces the
vector-Jacobian product by Zennit's ``BasicHook`` recipe. For each modifier triple
``(input_modifier, param_modifier, output_modifier)`` the layer is re-run on the modified
input with modified parameters, ``z_k = output_modifier(layer(param_modifier(p),
input_modifier(x)))``; the ``gradient_mapper`` turns the incoming relevance and all ``z_k``
into one cotangent per ``z_k``; the gradients ``g_k`` of ``z_k`` with respect to the
modified inputs are reduced to the outgoing relevance by the ``reducer``. The epsilon rule
is thus (one triple of identities)::

    R_in = x * J^T (R_out / stabilize(z))

Rules that are no ``BasicHook`` (pass, the ReLU rules) give a whole ``backward`` instead.
A rule is data; :func:`apply_rule` is what an interceptor calls. Write a new rule in a
few lines by giving the pieces that differ from the default (see ``docs/rules.md``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxattr.structure import Layer

__all__ = [
    "ParamMod",
    "Rule",
    "Stabilizer",
    "alpha_beta",
    "apply_rule",
    "captum_alpha1_beta0",
    "captum_gamma",
    "epsilon",
    "flat",
    "gamma",
    "norm",
    "pass_rule",
    "relu_beta_smooth",
    "relu_deconvnet",
    "relu_guided_backprop",
    "stabilize",
    "w_square",
    "z_box",
    "z_plus",
]

Array = jax.Array


def stabilize(
    z: Array,
    epsilon: float = 1e-6,
    *,
    clip: bool = False,
    norm_scale: bool = False,
    dim: int | Sequence[int] | None = None,
) -> Array:
    """Zennit's stabilizer: shift ``z`` away from zero by ``epsilon`` with ``z``'s sign.

    Zeros count as positive. With ``clip=True`` the magnitude is clipped to at least
    ``epsilon`` instead of shifted. With ``norm_scale=True`` (Zennit's ``norm_scale``)
    ``epsilon`` is first scaled by the root mean square of ``z`` over the axes ``dim``
    (default: every axis but the batch axis 0), per example.

    Args:
        z: Any array (a layer output about to divide the relevance), shape (N, ...).
        epsilon: The shift (or the clip floor).
        clip: Clip instead of shift.
        norm_scale: Scale ``epsilon`` by ``sqrt(mean(z**2, dim))``.
        dim: The axes of that mean (an int or a tuple; ``None``: all but axis 0).

    Returns:
        An array of ``z``'s shape and dtype with no zeros.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import stabilize
        >>> stabilize(jnp.array([-1.0, 0.0, 2.0]), 0.5)
        Array([-1.5,  0.5,  2.5], dtype=float32)
        >>> stabilize(jnp.array([[3.0, -4.0]]), 0.1, norm_scale=True)   # rms = 3.5355
        Array([[ 3.3535533, -4.3535533]], dtype=float32)
    """
    sign = jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)
    eps = jnp.asarray(epsilon, z.dtype)
    if norm_scale:
        axes = tuple(range(1, z.ndim)) if dim is None else dim
        eps = eps * jnp.sqrt(jnp.mean(z * z, axis=axes, keepdims=True))
    if clip:
        return sign * jnp.maximum(jnp.abs(z), eps)
    return z + sign * eps


@dataclasses.dataclass(frozen=True)
class Stabilizer:
    """Zennit's ``Stabilizer``: a hashable ``z -> stabilized z`` for a rule's ``stabilizer``.

    Pass it where a rule takes ``epsilon``/``stabilizer`` to use Zennit's ``clip``,
    ``norm_scale`` and ``dim`` options (a float there is ``Stabilizer(float)``). Equal
    stabilizers compare and hash equal, so rules built from them are cached and compiled
    programs are reused.

    Attributes:
        epsilon: The shift (or the clip floor).
        clip: Clip the magnitude to at least ``epsilon`` instead of shifting.
        norm_scale: Scale ``epsilon`` by the root mean square of ``z`` over ``dim``.
        dim: Axes of that mean (an int or a tuple; ``None``: every axis but 0).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import Stabilizer, epsilon
        >>> stab = Stabilizer(0.25, norm_scale=True)
        >>> stab(jnp.array([[1.0, -1.0]]))
        Array([[ 1.25, -1.25]], dtype=float32)
        >>> epsilon(stab) is epsilon(Stabilizer(0.25, norm_scale=True))
        True
    """

    epsilon: float = 1e-6
    clip: bool = False
    norm_scale: bool = False
    dim: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)):
            raise TypeError(f"Stabilizer epsilon must be a float, got {self.epsilon!r}")
        object.__setattr__(self, "epsilon", float(self.epsilon))
        if isinstance(self.dim, list):
            object.__setattr__(self, "dim", tuple(self.dim))
        if self.dim is not None and not isinstance(self.dim, (int, tuple)):
            raise TypeError(
                f"Stabilizer dim must be an int, a tuple of ints or None, got {self.dim!r}"
            )

    def __call__(self, z: Array) -> Array:
        """Stabilize ``z`` (see :func:`stabilize`)."""
        return stabilize(z, self.epsilon, clip=self.clip, norm_scale=self.norm_scale, dim=self.dim)


def _stabilizer(value: Any, name: str = "stabilizer") -> Callable[[Array], Array]:
    if callable(value):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        eps = float(value)
        return lambda z: stabilize(z, eps)
    raise TypeError(
        f"{name} must be a float, a jaxattr.Stabilizer or a callable z -> stabilized z, "
        f"got {value!r}"
    )


@dataclasses.dataclass(frozen=True, eq=False)
class ParamMod:
    """Zennit's ``ParamMod``: how a rule modifies a layer's parameters.

    Attributes:
        modifier: ``(param, name) -> param``, applied to each selected parameter.
        param_keys: Local names to modify (``None``: all of the layer's parameters; ``()``:
            none, the modifier is ignored).
        zero_params: Local names set to zero after modification (e.g. ``("bias",)``).
    """

    modifier: Callable[[Array, str], Array] = lambda p, name: p
    param_keys: Sequence[str] | None = None
    zero_params: Sequence[str] = ()

    def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Return the modified parameter dict (the input is not changed)."""
        keys = list(params) if self.param_keys is None else list(self.param_keys)
        zero = set(self.zero_params)
        out = dict(params)
        for k in keys:
            if k not in params or params[k] is None:
                continue
            p = params[k]
            if not jnp.issubdtype(jnp.asarray(p).dtype, jnp.floating):
                continue
            out[k] = jnp.zeros_like(p) if k in zero else self.modifier(p, k)
        return out


def _zero_list(zero_params: Sequence[str] | str | None) -> tuple[str, ...]:
    if zero_params is None:
        return ()
    if isinstance(zero_params, str):
        return (zero_params,)
    return tuple(zero_params)


def _with_bias(zero_params: Sequence[str]) -> tuple[str, ...]:
    return tuple(zero_params) if "bias" in zero_params else (*zero_params, "bias")


def _identity(v: Any) -> Any:
    return v


def _default_mapper(out_grad, outputs):
    return [out_grad / stabilize(o) for o in outputs]


def _default_reducer(inputs, gradients):
    return sum(i * g for i, g in zip(inputs, gradients, strict=True))


@dataclasses.dataclass(frozen=True, eq=False)
class Rule:
    """A layer's modified backward pass (Zennit's ``BasicHook`` decomposition).

    Give either the modifier lists (all of the same length ``K``; missing ones default to
    ``K`` identities) plus ``gradient_mapper`` and ``reducer``, or a whole ``backward``.

    Attributes:
        name: A short name, shown in ``repr`` and error messages.
        input_modifiers: ``K`` functions ``x -> x'`` (applied to every layer input).
        param_modifiers: ``K`` :class:`ParamMod` (or ``(param, name) -> param`` callables).
        output_modifiers: ``K`` functions ``z -> z'``.
        gradient_mapper: ``(out_grad, outputs) -> K cotangents``; default
            ``out_grad / stabilize(z_k)`` for each ``k``.
        reducer: ``(inputs, gradients) -> relevance`` for one layer input, given the ``K``
            modified inputs and the ``K`` gradients with respect to them; default
            ``sum_k inputs[k] * gradients[k]``.
        backward: ``(layer_fn, params, inputs, outputs, out_grad) -> tuple of input
            cotangents``; replaces the decomposition (used by pass and the ReLU rules).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import Rule, stabilize
        >>> lrp0 = Rule("lrp0", gradient_mapper=lambda g, zs: [g / stabilize(zs[0], 1e-9)],
        ...             reducer=lambda xs, gs: xs[0] * gs[0])
        >>> lrp0.name
        'lrp0'
    """

    name: str = "rule"
    input_modifiers: Sequence[Callable[[Array], Array]] | None = None
    param_modifiers: Sequence[ParamMod | Callable[[Array, str], Array]] | None = None
    output_modifiers: Sequence[Callable[[Array], Array]] | None = None
    gradient_mapper: Callable[[Any, list], Sequence[Any]] | None = None
    reducer: Callable[[list, list], Array] | None = None
    backward: Callable[..., tuple] | None = None

    def __post_init__(self) -> None:
        lists = {
            "input_modifiers": self.input_modifiers,
            "param_modifiers": self.param_modifiers,
            "output_modifiers": self.output_modifiers,
        }
        lengths = {k: len(v) for k, v in lists.items() if v is not None}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"Rule {self.name!r}: input_modifiers, param_modifiers and output_modifiers "
                f"must have the same length, got {lengths}"
            )

    def __repr__(self) -> str:
        return f"Rule({self.name!r})"

    def _triples(self):
        n = 1
        for v in (self.input_modifiers, self.param_modifiers, self.output_modifiers):
            if v is not None:
                n = len(v)
        ins = self.input_modifiers or (_identity,) * n
        pms = self.param_modifiers or (ParamMod(),) * n
        outs = self.output_modifiers or (_identity,) * n
        pms = [p if isinstance(p, ParamMod) else ParamMod(p) for p in pms]
        return list(zip(ins, pms, outs, strict=True))

    def relevance(
        self,
        layer_fn: Callable[..., Any],
        params: Mapping[str, Any],
        inputs: tuple,
        outputs: Any,
        out_grad: Any,
    ) -> tuple:
        """The outgoing relevance (input cotangents) for one layer call.

        Args:
            layer_fn: ``layer_fn(params, *inputs) -> outputs``, the unmodified layer.
            params: The layer's parameters, keyed by local name.
            inputs: The layer's inputs.
            outputs: The layer's (unmodified) outputs.
            out_grad: The incoming relevance, shaped like ``outputs``.

        Returns:
            A tuple with one relevance array per input, each shaped like that input.
        """
        if self.backward is not None:
            return tuple(self.backward(layer_fn, params, inputs, outputs, out_grad))
        mapper = self.gradient_mapper or _default_mapper
        reducer = self.reducer or _default_reducer
        mod_inputs, zs, vjps = [], [], []
        for in_mod, p_mod, out_mod in self._triples():
            xs = tuple(in_mod(x) for x in inputs)
            p = p_mod(params)
            z, vjp = jax.vjp(lambda *a, p=p, out_mod=out_mod: out_mod(layer_fn(p, *a)), *xs)
            mod_inputs.append(xs)
            zs.append(z)
            vjps.append(vjp)
        cots = list(mapper(out_grad, zs))
        if len(cots) != len(zs):
            raise ValueError(
                f"Rule {self.name!r}: gradient_mapper must return one cotangent per modifier "
                f"({len(zs)}), got {len(cots)}"
            )
        grads = [vjp(jnp.asarray(c, z.dtype)) for vjp, c, z in zip(vjps, cots, zs, strict=True)]
        return tuple(
            reducer([xs[i] for xs in mod_inputs], [g[i] for g in grads]) for i in range(len(inputs))
        )


def apply_rule(rule: Rule, layer: Layer | None, layer_fn: Callable[..., Any], params, *inputs):
    """Run ``layer_fn(params, *inputs)`` with ``rule`` as its backward pass.

    The forward value is the layer's own. Parameters get a zero cotangent (rules define
    the relevance of inputs only). This is what composites call from an interceptor.

    Args:
        rule: The rule.
        layer: The layer record (for error messages; may be None).
        layer_fn: ``layer_fn(params, *inputs) -> outputs``.
        params: The layer's parameters (a dict keyed by local name).
        *inputs: The layer's inputs.

    Returns:
        The layer's outputs.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxattr import apply_rule, epsilon
        >>> dense = lambda p, x: x @ p["weight"]
        >>> p = {"weight": jnp.array([[1.0], [3.0]])}
        >>> jax.grad(lambda x: apply_rule(epsilon(0.0), None, dense, p, x).sum())(
        ...     jnp.array([[1.0, 1.0]]))
        Array([[0.25, 0.75]], dtype=float32)
    """

    @jax.custom_vjp
    def run(params, *xs):
        return layer_fn(params, *xs)

    def fwd(params, *xs):
        out = layer_fn(params, *xs)
        return out, (params, xs, out)

    def bwd(res, g):
        params_, xs, out = res
        rel = rule.relevance(layer_fn, params_, xs, out, g)
        if len(rel) != len(xs):
            where = f" on layer {layer.name!r}" if layer is not None else ""
            raise ValueError(
                f"Rule {rule.name!r}{where} returned {len(rel)} relevances for {len(xs)} inputs"
            )
        rel = tuple(jnp.asarray(r, x.dtype) for r, x in zip(rel, xs, strict=True))
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params_)
        return (zeros, *rel)

    run.defvjp(fwd, bwd)
    return run(params, *inputs)


# --------------------------------------------------------------------------------------
# Built-in rules (factories are cached: the same arguments give the same Rule object, so
# rewritten models hash equal and compiled programs are reused)
# --------------------------------------------------------------------------------------


def _cached(factory):
    cached = functools.lru_cache(maxsize=256)(factory)

    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        try:
            return cached(*args, **kwargs)
        except TypeError:  # unhashable argument (an array bound, a callable)
            return factory(*args, **kwargs)

    return wrapper


def _zp(zero_params):
    return _zero_list(zero_params)


@_cached
def epsilon(epsilon: float | Callable = 1e-6, zero_params: Sequence[str] | None = None) -> Rule:
    """LRP-epsilon (Bach et al., 2015): ``R_in = x * J^T (R_out / (z + eps sign z))``.

    ``epsilon=0`` is LRP-0. Zennit's ``Epsilon`` (default ``1e-6``); Captum's
    ``EpsilonRule`` is ``epsilon(1e-9)``.

    Args:
        epsilon: The stabilizer (a float or a callable ``z -> z'``).
        zero_params: Parameter names set to zero in the backward pass (e.g. ``"bias"``).

    Returns:
        The rule.

    Example:
        >>> from jaxattr import epsilon
        >>> epsilon(0.25)
        Rule('epsilon')
    """
    stab = _stabilizer(epsilon, "epsilon")
    return Rule(
        "epsilon",
        param_modifiers=[ParamMod(zero_params=_zp(zero_params))],
        gradient_mapper=lambda g, zs: [g / stab(zs[0])],
        reducer=lambda xs, gs: xs[0] * gs[0],
    )


def _clamp(lo=None, hi=None):
    return lambda x: jnp.clip(x, lo, hi)


@_cached
def gamma(
    gamma: float = 0.25,
    stabilizer: float | Callable = 1e-6,
    zero_params: Sequence[str] | None = None,
) -> Rule:
    """Generalised LRP-gamma (Montavon et al., 2019), as Zennit's ``Gamma``.

    Positive and negative outputs are explained separately with ``w + gamma w+`` (and
    ``w + gamma w-``) paired with the positive and negative input parts.

    Args:
        gamma: Weight of the added positive (negative) parameter part.
        stabilizer: The stabilizer of the denominator.
        zero_params: Parameter names set to zero.

    Returns:
        The rule.

    Example:
        >>> from jaxattr import gamma
        >>> gamma(0.5)
        Rule('gamma')
    """
    zp = _zp(zero_params)
    stab = _stabilizer(stabilizer)

    def gmod(lo, hi):
        return lambda p, _: p + gamma * jnp.clip(p, lo, hi)

    def mapper(g, zs):
        pos = (zs[4] > 0).astype(g.dtype)
        neg = (zs[4] < 0).astype(g.dtype)
        a = pos * g / stab(zs[0] + zs[1])
        b = neg * g / stab(zs[2] + zs[3])
        return [a, a, b, b, jnp.zeros_like(g)]

    return Rule(
        "gamma",
        input_modifiers=[
            _clamp(0, None),
            _clamp(None, 0),
            _clamp(0, None),
            _clamp(None, 0),
            _identity,
        ],
        param_modifiers=[
            ParamMod(gmod(0.0, None), zero_params=zp),
            ParamMod(gmod(None, 0.0), zero_params=_with_bias(zp)),
            ParamMod(gmod(None, 0.0), zero_params=zp),
            ParamMod(gmod(0.0, None), zero_params=_with_bias(zp)),
            ParamMod(),
        ],
        gradient_mapper=mapper,
        reducer=lambda xs, gs: sum(x * g for x, g in zip(xs[:4], gs[:4], strict=True)),
    )


@_cached
def z_plus(stabilizer: float | Callable = 1e-6, zero_params: Sequence[str] | None = None) -> Rule:
    """LRP-z+ (Montavon et al., 2017), Zennit's ``ZPlus``: alpha=1, beta=0 for any input sign.

    ``R_in = x+ J+^T s + x- J-^T s`` with ``s = R_out / (z(x+, w+) + z(x-, w-))``; the
    second term has no bias.

    Args:
        stabilizer: The stabilizer of the denominator.
        zero_params: Parameter names set to zero.

    Returns:
        The rule.

    Example:
        >>> from jaxattr import z_plus
        >>> z_plus()
        Rule('z_plus')
    """
    zp = _zp(zero_params)
    stab = _stabilizer(stabilizer)
    return Rule(
        "z_plus",
        input_modifiers=[_clamp(0, None), _clamp(None, 0)],
        param_modifiers=[
            ParamMod(lambda p, _: jnp.clip(p, 0, None), zero_params=zp),
            ParamMod(lambda p, _: jnp.clip(p, None, 0), zero_params=_with_bias(zp)),
        ],
        gradient_mapper=lambda g, zs: [g / stab(zs[0] + zs[1])] * 2,
        reducer=lambda xs, gs: xs[0] * gs[0] + xs[1] * gs[1],
    )


def alpha_beta(
    alpha: float = 2.0,
    beta: float = 1.0,
    stabilizer: float | Callable = 1e-6,
    zero_params: Sequence[str] | None = None,
) -> Rule:
    """LRP-alpha-beta (Bach et al., 2015), Zennit's ``AlphaBeta``.

    ``alpha`` times the relevance of the positive contributions minus ``beta`` times the
    negative ones; ``alpha - beta`` must be 1 (so relevance is conserved).

    Args:
        alpha: Weight of the positive part (>= 0).
        beta: Weight of the negative part (>= 0).
        stabilizer: The stabilizer of the denominators.
        zero_params: Parameter names set to zero.

    Returns:
        The rule.

    Raises:
        ValueError: ``alpha`` or ``beta`` is negative, or ``alpha - beta != 1``.

    Example:
        >>> from jaxattr import alpha_beta
        >>> alpha_beta(1.0, 0.0)
        Rule('alpha_beta')
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    if alpha - beta != 1:
        raise ValueError(
            f"alpha - beta must equal 1 (relevance conservation), got alpha={alpha}, "
            f"beta={beta} (alpha - beta = {alpha - beta})"
        )
    return _alpha_beta(float(alpha), float(beta), stabilizer, _zp(zero_params))


@_cached
def _alpha_beta(alpha, beta, stabilizer, zp):
    stab = _stabilizer(stabilizer)
    pos = lambda p, _: jnp.clip(p, 0, None)  # noqa: E731
    neg = lambda p, _: jnp.clip(p, None, 0)  # noqa: E731

    def mapper(g, zs):
        a = g / stab(zs[0] + zs[1])
        b = g / stab(zs[2] + zs[3])
        return [a, a, b, b]

    return Rule(
        "alpha_beta",
        input_modifiers=[_clamp(0, None), _clamp(None, 0)] * 2,
        param_modifiers=[
            ParamMod(pos, zero_params=zp),
            ParamMod(neg, zero_params=_with_bias(zp)),
            ParamMod(neg, zero_params=zp),
            ParamMod(pos, zero_params=_with_bias(zp)),
        ],
        gradient_mapper=mapper,
        reducer=lambda xs, gs: (
            alpha * (xs[0] * gs[0] + xs[1] * gs[1]) - beta * (xs[2] * gs[2] + xs[3] * gs[3])
        ),
    )


@_cached
def z_box(
    low: Any,
    high: Any,
    stabilizer: float | Callable = 1e-6,
    zero_params: Sequence[str] | None = None,
) -> Rule:
    """LRP-z^B (Montavon et al., 2017) for inputs bounded in ``[low, high]``, Zennit's ``ZBox``.

    ``R_in = x J^T s - l J+^T s - h J-^T s`` with ``s = R_out / (z - z(l, w+) - z(h, w-))``.

    Args:
        low: Lowest input value: a scalar or an array broadcastable to one example (e.g.
            per channel, shape (C, 1, 1)) or to the batch.
        high: Highest input value, like ``low``.
        stabilizer: The stabilizer of the denominator.
        zero_params: Parameter names set to zero.

    Returns:
        The rule.

    Example:
        >>> from jaxattr import z_box
        >>> z_box(-1.0, 1.0)
        Rule('z_box')
    """
    zp = _zp(zero_params)
    stab = _stabilizer(stabilizer)

    def fill(v):
        def mod(x):
            a = jnp.asarray(v, x.dtype)
            if a.ndim == x.ndim and a.shape[0] != x.shape[0]:
                a = a[: x.shape[0]]
            return jnp.broadcast_to(a, x.shape)

        return mod

    return Rule(
        "z_box",
        input_modifiers=[_identity, fill(low), fill(high)],
        param_modifiers=[
            ParamMod(zero_params=zp),
            ParamMod(lambda p, _: jnp.clip(p, 0, None), zero_params=zp),
            ParamMod(lambda p, _: jnp.clip(p, None, 0), zero_params=zp),
        ],
        gradient_mapper=lambda g, zs: [g / stab(zs[0] - zs[1] - zs[2])] * 3,
        reducer=lambda xs, gs: xs[0] * gs[0] - xs[1] * gs[1] - xs[2] * gs[2],
    )


@_cached
def w_square(stabilizer: float | Callable = 1e-6, zero_params: Sequence[str] | None = None) -> Rule:
    """LRP-w^2 (Montavon et al., 2017), Zennit's ``WSquare``: ``R_in = (W^2)^T s``.

    The layer is re-run on an all-ones input with squared parameters, ``s = R_out / z``.

    Args:
        stabilizer: The stabilizer of the denominator.
        zero_params: Parameter names set to zero.

    Returns:
        The rule.

    Example:
        >>> from jaxattr import w_square
        >>> w_square()
        Rule('w_square')
    """
    stab = _stabilizer(stabilizer)
    return Rule(
        "w_square",
        input_modifiers=[jnp.ones_like],
        param_modifiers=[ParamMod(lambda p, _: p**2, zero_params=_zp(zero_params))],
        gradient_mapper=lambda g, zs: [g / stab(zs[0])],
        reducer=lambda xs, gs: gs[0],
    )


@_cached
def flat(stabilizer: float | Callable = 1e-6, zero_params: Sequence[str] | None = None) -> Rule:
    """The flat rule (Lapuschkin et al., 2019), Zennit's ``Flat``: w^2 with all weights 1.

    Relevance is spread uniformly over each output's receptive field; the bias is zero.

    Args:
        stabilizer: The stabilizer of the denominator.
        zero_params: Parameter names set to zero (``"bias"`` always is).

    Returns:
        The rule.

    Example:
        >>> from jaxattr import flat
        >>> flat()
        Rule('flat')
    """
    stab = _stabilizer(stabilizer)
    return Rule(
        "flat",
        input_modifiers=[jnp.ones_like],
        param_modifiers=[
            ParamMod(lambda p, _: jnp.ones_like(p), zero_params=_with_bias(_zp(zero_params)))
        ],
        gradient_mapper=lambda g, zs: [g / stab(zs[0])],
        reducer=lambda xs, gs: gs[0],
    )


@_cached
def norm(stabilizer: float | Callable = 1e-6) -> Rule:
    """Zennit's ``Norm``: epsilon with unmodified parameters, for sums and average pools.

    ``R_in_i = x_i * J_i^T (R_out / stabilize(z))`` for every input ``x_i`` (a residual
    sum splits its relevance in proportion to each summand).

    Args:
        stabilizer: The stabilizer of the denominator.

    Returns:
        The rule.

    Example:
        >>> from jaxattr import norm
        >>> norm()
        Rule('norm')
    """
    stab = _stabilizer(stabilizer)
    return Rule(
        "norm",
        param_modifiers=[ParamMod(param_keys=())],
        gradient_mapper=lambda g, zs: [g / stab(zs[0])],
        reducer=lambda xs, gs: xs[0] * gs[0],
    )


def _pass_backward(layer_fn, params, inputs, outputs, out_grad):
    rel = []
    for x in inputs:
        if x.shape != out_grad.shape:
            raise ValueError(
                f"pass_rule needs inputs shaped like the output {tuple(out_grad.shape)}, "
                f"got an input of shape {tuple(x.shape)}"
            )
        rel.append(out_grad)
    return tuple(rel)


_PASS = Rule("pass", backward=_pass_backward)


def pass_rule() -> Rule:
    """Zennit's ``Pass``: relevance goes through unchanged (activations, batch norm).

    Returns:
        The rule.

    Example:
        >>> from jaxattr import pass_rule
        >>> pass_rule()
        Rule('pass')
    """
    return _PASS


def _local_grad(layer_fn, params, inputs, out_grad):
    _, vjp = jax.vjp(lambda *a: layer_fn(params, *a), *inputs)
    return vjp(out_grad)


def _guided(layer_fn, params, inputs, outputs, out_grad):
    grads = _local_grad(layer_fn, params, inputs, out_grad)
    return tuple(g * (out_grad > 0).astype(g.dtype) for g in grads)


def _deconv(layer_fn, params, inputs, outputs, out_grad):
    return (jnp.maximum(out_grad, 0),) * len(inputs)


_GUIDED = Rule("relu_guided_backprop", backward=_guided)
_DECONV = Rule("relu_deconvnet", backward=_deconv)


def relu_guided_backprop() -> Rule:
    """Guided backprop's ReLU (Springenberg et al., 2015): ``grad * (R_out > 0)``.

    The ordinary ReLU gradient, further zeroed where the incoming gradient is negative.
    Zennit's ``ReLUGuidedBackprop``; Captum's ``GuidedBackprop``.

    Returns:
        The rule.

    Example:
        >>> from jaxattr import relu_guided_backprop
        >>> relu_guided_backprop()
        Rule('relu_guided_backprop')
    """
    return _GUIDED


def relu_deconvnet() -> Rule:
    """DeconvNet's ReLU (Zeiler & Fergus, 2014): ``max(R_out, 0)``, ignoring the input.

    Zennit's ``ReLUDeconvNet``; Captum's ``Deconvolution``.

    Returns:
        The rule.

    Example:
        >>> from jaxattr import relu_deconvnet
        >>> relu_deconvnet()
        Rule('relu_deconvnet')
    """
    return _DECONV


@_cached
def relu_beta_smooth(beta_smooth: float = 10.0) -> Rule:
    """Zennit's ``ReLUBetaSmooth``: the ReLU gradient replaced by ``sigmoid(beta x)``.

    The gradient of ``softplus(beta x) / beta``, a smooth surrogate (Dombrowski et al.,
    2019).

    Args:
        beta_smooth: The softplus sharpness.

    Returns:
        The rule.

    Example:
        >>> from jaxattr import relu_beta_smooth
        >>> relu_beta_smooth(5.0)
        Rule('relu_beta_smooth')
    """

    def backward(layer_fn, params, inputs, outputs, out_grad):
        return tuple(jax.nn.sigmoid(beta_smooth * x) * out_grad for x in inputs)

    return Rule("relu_beta_smooth", backward=backward)


def _captum_weight_rule(name: str, weight_mod, set_bias_to_zero: bool, epsilon: float) -> Rule:
    def modifier(p, key):
        return weight_mod(p) if key == "weight" else p

    stab = _stabilizer(epsilon, "epsilon")
    return Rule(
        name,
        param_modifiers=[
            ParamMod(
                modifier,
                param_keys=("weight", "bias"),
                zero_params=("bias",) if set_bias_to_zero else (),
            )
        ],
        gradient_mapper=lambda g, zs: [g / stab(zs[0])],
        reducer=lambda xs, gs: xs[0] * gs[0],
    )


@_cached
def captum_gamma(
    gamma: float = 0.25, set_bias_to_zero: bool = False, epsilon: float = 1e-9
) -> Rule:
    """Captum's ``GammaRule``: epsilon-LRP through the weights ``w + gamma * max(w, 0)``.

    ``R_in = x * W'^T (R_out / stabilize(W' x + b))`` with ``W' = w + gamma w+``, the
    whole input (both signs) and the layer's bias (zero with ``set_bias_to_zero``);
    Captum's stabilizer ``1e-9``. Only a parameter named ``weight`` is changed (a batch
    norm's scale included, as in Captum). This is not Zennit's generalised
    :func:`gamma`, which splits inputs and outputs by sign.

    Args:
        gamma: Weight of the added positive weight part.
        set_bias_to_zero: Run the layer without its bias in the backward pass.
        epsilon: The stabilizer (Captum's ``STABILITY_FACTOR``).

    Returns:
        The rule.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxattr import apply_rule, captum_gamma
        >>> dense = lambda p, x: x @ p["weight"].T + p["bias"][None]
        >>> p = {"weight": jnp.array([[1.0, -1.0]]), "bias": jnp.array([0.0])}
        >>> jax.grad(lambda x: apply_rule(captum_gamma(1.0), None, dense, p, x).sum())(
        ...     jnp.array([[1.0, 1.0]]))
        Array([[ 2., -1.]], dtype=float32)
    """
    g = float(gamma)
    return _captum_weight_rule(
        "captum_gamma", lambda w: w + g * jnp.clip(w, 0, None), set_bias_to_zero, epsilon
    )


@_cached
def captum_alpha1_beta0(set_bias_to_zero: bool = False, epsilon: float = 1e-9) -> Rule:
    """Captum's ``Alpha1_Beta0_Rule``: epsilon-LRP through the positive weights ``max(w, 0)``.

    ``R_in = x * W+^T (R_out / stabilize(W+ x + b))`` on the whole input with the layer's
    bias (zero with ``set_bias_to_zero``); Captum's stabilizer ``1e-9``. Unlike Zennit's
    :func:`z_plus` / :func:`alpha_beta` the input is not split by sign. Only a parameter
    named ``weight`` is changed.

    Args:
        set_bias_to_zero: Run the layer without its bias in the backward pass.
        epsilon: The stabilizer (Captum's ``STABILITY_FACTOR``).

    Returns:
        The rule.

    Example:
        >>> from jaxattr import captum_alpha1_beta0
        >>> captum_alpha1_beta0()
        Rule('captum_alpha1_beta0')
    """
    return _captum_weight_rule(
        "captum_alpha1_beta0", lambda w: jnp.clip(w, 0, None), set_bias_to_zero, epsilon
    )
