"""Zennit's attributors and composites, run by jaxattr: change the import, keep the calls.

::

    # from zennit.attribution import Gradient
    # from zennit.composites import EpsilonPlusFlat
    from jaxattr.compat.zennit import Gradient, EpsilonPlusFlat

    with Gradient(model, EpsilonPlusFlat()) as attributor:
        output, relevance = attributor(x, torch.eye(10)[[3]])

The attributors (``Gradient``, ``SmoothGrad``, ``IntegratedGradients``) take a torch
module, convert it once with :func:`jaxattr.bridge.from_torch` (shared with
:mod:`jaxattr.compat.captum`'s cache: by module and input signature, refreshed when the
weights change) and return ``(output, relevance)`` as torch tensors. The composites have
Zennit's names and parameters and stand for jaxattr's composites
(:func:`jaxattr.epsilon_plus_flat`, ...); the canonizers ``SequentialMergeBatchNorm``,
``ResNetCanonizer`` and ``VGGCanonizer`` for :func:`jaxattr.merge_batch_norm` and
:func:`jaxattr.residual_sums`. A ``jaxattr.Composite`` may be passed directly, and
Zennit's own composite instances are accepted when built with their default parameters.

No hooks are registered: the ``with`` block is kept for the same code, and the
hook-based parts of Zennit (``composite.context(model)``, ``composite.register(model)``,
rules given as ``layer_map``/``first_map`` of torch types, ``create_graph``) raise
:class:`UnsupportedOptionError`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import torch

import jaxattr
from jaxattr.compat import (
    TorchModel,
    UnsupportedOptionError,
    is_tensor,
    to_numpy,
    to_torch,
    torch_key,
    unsupported,
)

__all__ = [
    "BetaSmooth",
    "Composite",
    "DeconvNet",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "ExcitationBackprop",
    "Gradient",
    "GuidedBackprop",
    "IntegratedGradients",
    "MergeBatchNorm",
    "ResNetCanonizer",
    "SequentialMergeBatchNorm",
    "SmoothGrad",
    "UnsupportedOptionError",
    "VGGCanonizer",
]

_HOOKS = (
    "Zennit registers hooks on the torch module; jaxattr rewrites the converted "
    "model instead: use Gradient(model, composite)"
)


# --------------------------------------------------------------------------------------
# Canonizers
# --------------------------------------------------------------------------------------


class Canonizer:
    """Base of the canonizer stand-ins."""

    _jaxattr: tuple = ()

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        raise unsupported(f"{type(self).__name__}.apply", {"apply": _HOOKS})


class SequentialMergeBatchNorm(Canonizer):
    """Zennit's ``SequentialMergeBatchNorm``: :func:`jaxattr.merge_batch_norm`."""

    _jaxattr = (jaxattr.merge_batch_norm,)


class MergeBatchNorm(SequentialMergeBatchNorm):
    """Batch norms merged into the linear layer before them (:func:`jaxattr.merge_batch_norm`)."""


class VGGCanonizer(SequentialMergeBatchNorm):
    """Zennit's ``VGGCanonizer``: :func:`jaxattr.merge_batch_norm`."""


class ResNetCanonizer(Canonizer):
    """Zennit's ``ResNetCanonizer``: merged batch norms and explicit residual sums."""

    _jaxattr = (jaxattr.merge_batch_norm, jaxattr.residual_sums)


_ZENNIT_CANONIZERS = {
    "SequentialMergeBatchNorm": SequentialMergeBatchNorm._jaxattr,
    "VGGCanonizer": VGGCanonizer._jaxattr,
    "ResNetCanonizer": ResNetCanonizer._jaxattr,
}


def _canonizers(cans: Any, where: str) -> tuple:
    out: list = []
    for c in cans or ():
        if isinstance(c, Canonizer):
            fns = c._jaxattr
        elif callable(c) and getattr(c, "__module__", "").startswith("jaxattr"):
            fns = (c,)  # jaxattr.merge_batch_norm etc. given directly
        elif type(c).__name__ in _ZENNIT_CANONIZERS and type(c).__module__.startswith("zennit"):
            fns = _ZENNIT_CANONIZERS[type(c).__name__]
        else:
            raise unsupported(
                where,
                {
                    f"canonizer {type(c).__name__}": "supported: SequentialMergeBatchNorm, "
                    "VGGCanonizer, ResNetCanonizer (or jaxattr's canonizers)"
                },
            )
        out += [f for f in fns if f not in out]
    return tuple(out)


# --------------------------------------------------------------------------------------
# Composites
# --------------------------------------------------------------------------------------


class Composite:
    """Base of the composite stand-ins: Zennit's parameters, jaxattr's rules."""

    def __init__(self, canonizers: Any = None):
        self.canonizers = list(canonizers or [])

    def _build(self) -> jaxattr.Composite:
        raise NotImplementedError

    def jaxattr_composite(self) -> jaxattr.Composite:
        """The equivalent :class:`jaxattr.Composite`."""
        return self._build()

    def register(self, module: Any) -> None:
        raise unsupported(f"{type(self).__name__}.register", {"register": _HOOKS})

    def context(self, module: Any) -> Any:
        raise unsupported(f"{type(self).__name__}.context", {"context": _HOOKS})

    def remove(self) -> None:
        """Nothing to remove: no hooks are registered."""


def _no_maps(name: str, **maps: Any) -> None:
    bad = {
        k: "Zennit rule objects keyed by torch module types; pass a jaxattr.Composite "
        "(layer_map of layer kinds and jaxattr rules) to the attributor instead"
        for k, v in maps.items()
        if v
    }
    if bad:
        raise unsupported(name, bad)


def _zp(zero_params: Any) -> Any:
    if zero_params is None or isinstance(zero_params, str):
        return zero_params
    return tuple(zero_params)


class EpsilonPlus(Composite):
    """Zennit's ``EpsilonPlus`` (:func:`jaxattr.epsilon_plus`)."""

    _factory = staticmethod(jaxattr.epsilon_plus)

    def __init__(
        self, epsilon=1e-6, stabilizer=1e-6, layer_map=None, zero_params=None, canonizers=None
    ):
        _no_maps(type(self).__name__, layer_map=layer_map)
        super().__init__(canonizers)
        self.epsilon, self.stabilizer, self.zero_params = epsilon, stabilizer, zero_params

    def _build(self):
        return type(self)._factory(self.epsilon, self.stabilizer, _zp(self.zero_params))


class EpsilonAlpha2Beta1(EpsilonPlus):
    """Zennit's ``EpsilonAlpha2Beta1`` (:func:`jaxattr.epsilon_alpha2_beta1`)."""

    _factory = staticmethod(jaxattr.epsilon_alpha2_beta1)


class EpsilonPlusFlat(EpsilonPlus):
    """Zennit's ``EpsilonPlusFlat`` (:func:`jaxattr.epsilon_plus_flat`)."""

    _factory = staticmethod(jaxattr.epsilon_plus_flat)

    def __init__(
        self,
        epsilon=1e-6,
        stabilizer=1e-6,
        layer_map=None,
        first_map=None,
        zero_params=None,
        canonizers=None,
    ):
        _no_maps(type(self).__name__, first_map=first_map)
        super().__init__(epsilon, stabilizer, layer_map, zero_params, canonizers)


class EpsilonAlpha2Beta1Flat(EpsilonPlusFlat):
    """Zennit's ``EpsilonAlpha2Beta1Flat`` (:func:`jaxattr.epsilon_alpha2_beta1_flat`)."""

    _factory = staticmethod(jaxattr.epsilon_alpha2_beta1_flat)


class EpsilonGammaBox(Composite):
    """Zennit's ``EpsilonGammaBox`` (:func:`jaxattr.epsilon_gamma_box`); ``low``/``high``
    are numbers or tensors broadcastable to the input."""

    def __init__(
        self,
        low,
        high,
        epsilon=1e-6,
        gamma=0.25,
        stabilizer=1e-6,
        layer_map=None,
        first_map=None,
        zero_params=None,
        canonizers=None,
    ):
        _no_maps("EpsilonGammaBox", layer_map=layer_map, first_map=first_map)
        super().__init__(canonizers)
        self.low, self.high = low, high
        self.epsilon, self.gamma, self.stabilizer = epsilon, gamma, stabilizer
        self.zero_params = zero_params

    def _build(self):
        def bound(b):
            b = to_numpy(b)
            if isinstance(b, np.ndarray) and b.ndim and b.shape[0] == 1:
                b = b[0]  # (1, C, H, W) -> (C, H, W): one bound for every example
            return float(b) if np.ndim(b) == 0 else b

        return jaxattr.epsilon_gamma_box(
            bound(self.low),
            bound(self.high),
            self.epsilon,
            self.gamma,
            self.stabilizer,
            _zp(self.zero_params),
        )


class ExcitationBackprop(Composite):
    """Zennit's ``ExcitationBackprop`` (:func:`jaxattr.excitation_backprop_composite`)."""

    def __init__(self, stabilizer=1e-6, layer_map=None, zero_params=None, canonizers=None):
        _no_maps("ExcitationBackprop", layer_map=layer_map)
        super().__init__(canonizers)
        self.stabilizer, self.zero_params = stabilizer, zero_params

    def _build(self):
        return jaxattr.excitation_backprop_composite(self.stabilizer, _zp(self.zero_params))


class GuidedBackprop(Composite):
    """Zennit's ``GuidedBackprop`` composite (:func:`jaxattr.guided_backprop_composite`)."""

    def __init__(self, layer_map=None, canonizers=None):
        _no_maps("GuidedBackprop", layer_map=layer_map)
        super().__init__(canonizers)

    def _build(self):
        return jaxattr.guided_backprop_composite()


class DeconvNet(GuidedBackprop):
    """Zennit's ``DeconvNet`` composite (:func:`jaxattr.deconvnet`)."""

    def _build(self):
        return jaxattr.deconvnet()


class BetaSmooth(Composite):
    """Zennit's ``BetaSmooth`` (:func:`jaxattr.beta_smooth`)."""

    def __init__(self, beta_smooth=10.0, layer_map=None, zero_params=None, canonizers=None):
        _no_maps("BetaSmooth", layer_map=layer_map)
        super().__init__(canonizers)
        self.beta_smooth = beta_smooth

    def _build(self):
        return jaxattr.beta_smooth(self.beta_smooth)


_BY_NAME = {
    "EpsilonPlus": EpsilonPlus,
    "EpsilonPlusFlat": EpsilonPlusFlat,
    "EpsilonAlpha2Beta1": EpsilonAlpha2Beta1,
    "EpsilonAlpha2Beta1Flat": EpsilonAlpha2Beta1Flat,
    "ExcitationBackprop": ExcitationBackprop,
    "GuidedBackprop": GuidedBackprop,
    "DeconvNet": DeconvNet,
    "BetaSmooth": BetaSmooth,
}


def _values(obj: Any, seen: frozenset = frozenset()) -> Any:
    """The numbers a Zennit rule holds (in attributes and its functions' closures)."""
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if is_tensor(obj):
        return tuple(obj.detach().cpu().reshape(-1).tolist())
    if isinstance(obj, type):
        return obj.__qualname__
    if id(obj) in seen or len(seen) > 12:
        return "..."
    seen = seen | {id(obj)}
    if isinstance(obj, (list, tuple)):
        return tuple(_values(o, seen) for o in obj)
    out: list = [type(obj).__qualname__]
    for cell in getattr(obj, "__closure__", None) or ():
        try:
            out.append(_values(cell.cell_contents, seen))
        except ValueError:  # an empty cell
            out.append(None)
    skip = {
        "stored_tensors",
        "tensor_handles",
        "active",
        "handles",
        "hook_refs",
        "module_map",
        "canonizers",
    }
    for k, v in sorted(getattr(obj, "__dict__", {}).items()):
        if k not in skip:
            out.append((k, _values(v, seen)))
    return tuple(out)


def _from_zennit(comp: Any, where: str) -> tuple[jaxattr.Composite, tuple]:
    """A Zennit composite instance built with default parameters, as jaxattr's."""
    name = type(comp).__name__
    cls = _BY_NAME.get(name)
    why = (
        "its parameters cannot be read back from Zennit's hooks; build it from "
        f"jaxattr.compat.zennit ({name}(...) with the same arguments)"
    )
    if cls is None:
        raise unsupported(where, {f"zennit composite {name}": why})
    try:
        default = type(comp)()
    except TypeError:
        raise unsupported(where, {f"zennit composite {name}": why}) from None
    if _values(comp) != _values(default):
        raise unsupported(where, {f"zennit composite {name} with non-default parameters": why})
    return cls()._build(), _canonizers(getattr(comp, "canonizers", None), where)


def _resolve(composite: Any, where: str) -> tuple[jaxattr.Composite | None, tuple]:
    if composite is None:
        return None, ()
    if isinstance(composite, jaxattr.Composite):
        return composite, ()
    if isinstance(composite, Composite):
        return composite._build(), _canonizers(composite.canonizers, where)
    if type(composite).__module__.startswith("zennit"):
        return _from_zennit(composite, where)
    raise TypeError(
        f"{where}: composite must be a jaxattr.compat.zennit composite, a "
        f"jaxattr.Composite or None, got {type(composite).__name__}"
    )


# --------------------------------------------------------------------------------------
# Attributors
# --------------------------------------------------------------------------------------


class Attributor:
    """Base of the attributors: Zennit's ``Attributor`` (a context manager)."""

    def __init__(
        self,
        model: torch.nn.Module,
        composite: Any = None,
        attr_output: Any = None,
        create_graph: bool = False,
        retain_graph: Any = None,
    ):
        where = type(self).__name__
        if create_graph:
            raise unsupported(
                where,
                {
                    "create_graph=True": "the relevance is computed in "
                    "JAX and returned as a tensor without a torch graph"
                },
            )
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.composite = composite
        self.attr_output = attr_output
        self._rules = _resolve(composite, where)
        self._model = TorchModel(model, where)

    def __enter__(self) -> Attributor:
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False

    def __call__(self, input: torch.Tensor, attr_output: Any = None, **kwargs: Any):  # noqa: A002
        """``(output, relevance)`` for ``input``; ``attr_output`` as in Zennit: a tensor
        (the output relevance, e.g. ``torch.eye(10)[[3]]``), a function of the output,
        or None (the attributor's, else the output itself)."""
        if not is_tensor(input):
            raise TypeError(
                f"{type(self).__name__}: input must be a torch tensor, got {type(input).__name__}"
            )
        entry = self._model.converted([input], ())
        x = to_numpy(input)
        y = entry.conv(x)
        spec = self.attr_output if attr_output is None else attr_output
        rel = self._relevance(entry.conv, x, y, spec, input, **kwargs)
        return to_torch(y, input), to_torch(rel, input)

    # -- helpers
    def _fn(self, conv: Any) -> Any:
        comp, cans = self._rules
        return conv if comp is None else jaxattr.attach(conv, comp, canonizers=cans or None)

    def _constant_target(self, spec: Any, y: Any, input: torch.Tensor) -> Any:  # noqa: A002
        if spec is None:
            return None
        if is_tensor(spec) or isinstance(spec, np.ndarray):
            return np.asarray(to_numpy(spec), dtype=np.float32)
        raise unsupported(
            type(self).__name__,
            {
                "attr_output as a function": "Zennit calls it on the output of every noisy or "
                "path sample, inside what is here a compiled program; pass a tensor (e.g. "
                "torch.eye(10)[[3]]) or use jaxattr directly with a JAX function target"
            },
        )

    def _relevance(self, conv, x, y, spec, input, **kwargs):  # noqa: A002
        raise NotImplementedError


class Gradient(Attributor):
    """Zennit's ``Gradient`` attributor: the gradient, or with a composite the rules'
    relevance (:func:`jaxattr.lrp`), of ``sum(output * attr_output)``."""

    def _relevance(self, conv, x, y, spec, input):  # noqa: A002
        if spec is None:
            cot = np.asarray(y)
        elif callable(spec) and not is_tensor(spec):
            cot = to_numpy(spec(to_torch(y, input)))  # evaluated once, on the output
        else:
            cot = to_numpy(spec)
        cot = np.broadcast_to(np.asarray(cot, dtype=np.float32), y.shape)
        comp, cans = self._rules
        if comp is None:
            return jaxattr.gradient(conv, x, target=cot)
        return jaxattr.lrp(conv, x, composite=comp, canonizers=cans or None, target=cot)


class SmoothGrad(Attributor):
    """Zennit's ``SmoothGrad`` attributor (:func:`jaxattr.smoothgrad`; with a composite,
    over the rules' relevance). Its noise comes from a JAX key drawn from torch's global
    generator (``attributor(x, out, key=...)`` gives it)."""

    def __init__(
        self,
        model,
        composite=None,
        attr_output=None,
        create_graph=False,
        retain_graph=None,
        noise_level=0.1,
        n_iter=20,
    ):
        super().__init__(model, composite, attr_output, create_graph, retain_graph)
        self.noise_level, self.n_iter = noise_level, n_iter

    def _relevance(self, conv, x, y, spec, input, key=None):  # noqa: A002
        cot = self._constant_target(spec, y, input)
        return jaxattr.smoothgrad(
            self._fn(conv),
            x,
            key=torch_key(key),
            noise_level=self.noise_level,
            n_iter=self.n_iter,
            target=_identity if cot is None else cot,
        )


class IntegratedGradients(Attributor):
    """Zennit's ``IntegratedGradients`` attributor (:func:`jaxattr.integrated_gradients`
    with ``method="riemann_right"``, as Zennit's path)."""

    def __init__(
        self,
        model,
        composite=None,
        attr_output=None,
        create_graph=False,
        retain_graph=None,
        baseline_fn=None,
        n_iter=20,
    ):
        super().__init__(model, composite, attr_output, create_graph, retain_graph)
        self.baseline_fn, self.n_iter = baseline_fn, n_iter

    def _relevance(self, conv, x, y, spec, input):  # noqa: A002
        cot = self._constant_target(spec, y, input)
        base = None if self.baseline_fn is None else to_numpy(self.baseline_fn(input))
        return jaxattr.integrated_gradients(
            self._fn(conv),
            x,
            base,
            target=_identity if cot is None else cot,
            n_steps=self.n_iter,
            method="riemann_right",
        )


def _identity(y: jax.Array) -> jax.Array:
    """Zennit's default output relevance: the output itself."""
    return y
