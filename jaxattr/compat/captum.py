"""Captum's attribution classes, run by jaxattr: change the import, keep the calls.

::

    # from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel
    from jaxattr.compat.captum import IntegratedGradients, LayerGradCam, NoiseTunnel

    ig = IntegratedGradients(model)
    attr, delta = ig.attribute(x, baselines=x * 0, target=3, return_convergence_delta=True)

Every class has Captum's constructor and ``attribute`` signature. The model (a torch
module, or a function of torch tensors for the classes where Captum takes a
``forward_func``) is converted once with :func:`jaxattr.bridge.from_torch`, cached by
module and input signature (shapes after the batch, dtypes); new weights (an optimizer
step, ``load_state_dict``) are picked up on the next call without recompiling, and a
replaced sub-module or a change of train/eval mode converts again. Inputs and outputs
are torch tensors, in Captum's structure: a tuple in gives a tuple out, deltas are
tensors with one value per example (and sample).

Layer arguments are the model's modules, as in Captum (``LayerGradCam(model,
model.layer4)``); a container module means its output, as Captum's hooks see it.

Random methods (``NoiseTunnel``, ``GradientShap``, ``ShapleyValueSampling``,
``KernelShap``, ``Lime``, ``FeaturePermutation``, ...) draw their JAX key from torch's
global generator, so ``torch.manual_seed`` makes them repeatable; ``attribute(...,
key=jax.random.key(0))`` (a jaxattr extension) gives the key directly. The draws are
jaxattr's, not Captum's: the same seed gives other samples than Captum.

What Captum does with hooks or torch callables inside the computation is not served and
raises :class:`UnsupportedOptionError` naming the option: ``custom_attribution_func``,
LIME's ``similarity_func``/``perturb_func``, a non-default ``perm_func``,
``grad_kwargs``, LRP rules other than ``EpsilonRule``/``GammaRule``/``Alpha1_Beta0_Rule``/
``IdentityRule``, and forward functions returning futures. See ``docs/compat.md`` for the
full table.

Captum's LLM classes (``LLMAttribution``, ``LLMGradientAttribution``, ``TextTokenInput``,
``TextTemplateInput``, ``ProductBaselines``, ``LLMAttributionResult``) are importable from
here too; they live in :mod:`jaxattr.compat._captum_llm` (loaded on first use) and run
:mod:`jaxattr.llm`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import torch

import jaxattr
from jaxattr.compat import (
    TorchModel,
    UnsupportedOptionError,
    call_with_inputs,
    is_tensor,
    split_args,
    to_numpy,
    to_torch,
    torch_key,
    torch_tree_to_numpy,
    unsupported,
)

__all__ = [
    "Attribution",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "FeatureAblation",
    "FeaturePermutation",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCam",
    "InputXGradient",
    "IntegratedGradients",
    "InternalInfluence",
    "KernelShap",
    "LLMAttribution",
    "LLMAttributionResult",
    "LLMGradientAttribution",
    "LRP",
    "LayerActivation",
    "LayerAttribution",
    "LayerConductance",
    "LayerDeepLift",
    "LayerDeepLiftShap",
    "LayerFeatureAblation",
    "LayerFeaturePermutation",
    "LayerGradCam",
    "LayerGradientShap",
    "LayerGradientXActivation",
    "LayerIntegratedGradients",
    "LayerLRP",
    "Lime",
    "NeuronConductance",
    "NeuronDeconvolution",
    "NeuronDeepLift",
    "NeuronDeepLiftShap",
    "NeuronFeatureAblation",
    "NeuronGradient",
    "NeuronGradientShap",
    "NeuronGuidedBackprop",
    "NeuronIntegratedGradients",
    "NoiseTunnel",
    "Occlusion",
    "ProductBaselines",
    "Saliency",
    "ShapleyValueSampling",
    "ShapleyValues",
    "TextTemplateInput",
    "TextTokenInput",
    "UnsupportedOptionError",
]


# --------------------------------------------------------------------------------------
# Conversions of Captum's arguments
# --------------------------------------------------------------------------------------


def _target(target: Any) -> Any:
    """Captum's target (int, tuple, tensor, list of ints/tuples) in jaxattr's forms."""
    if target is None or isinstance(target, (int, np.integer)):
        return None if target is None else int(target)
    if is_tensor(target):
        if target.numel() == 1:
            return int(target.item())
        if target.ndim != 1:
            raise ValueError(
                f"target: a tensor target must hold one int or one per example (1-D), got "
                f"shape {tuple(target.shape)}"
            )
        return [int(v) for v in target.tolist()]
    if isinstance(target, tuple):
        return tuple(int(v) for v in target)
    if isinstance(target, list):
        return [
            tuple(int(u) for u in v) if isinstance(v, (tuple, list)) else int(v) for v in target
        ]
    return target


def _baselines(baselines: Any, inputs: tuple) -> Any:
    """Captum's baselines (None, number, tensor, tuple of those, callable) as arrays."""
    if callable(baselines) and not is_tensor(baselines):
        baselines = call_with_inputs(baselines, inputs)
    if isinstance(baselines, tuple) and len(inputs) == 1 and len(baselines) == 1:
        baselines = baselines[0]
    return torch_tree_to_numpy(baselines)


def _mask(mask: Any, inputs: tuple) -> Any:
    if isinstance(mask, tuple) and len(inputs) == 1 and len(mask) == 1:
        mask = mask[0]
    return torch_tree_to_numpy(mask)


def _selector(sel: Any) -> Any:
    if is_tensor(sel):
        return int(sel.item()) if sel.numel() == 1 else tuple(int(v) for v in sel.tolist())
    return sel


def _delta(delta: Any, like: torch.Tensor) -> Any:
    if isinstance(delta, list):
        return [_delta(d, like) for d in delta]
    return to_torch(np.asarray(delta).reshape(-1), like)


def _per_eval(perturbations_per_eval: int) -> int | None:
    if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
        raise ValueError(
            f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}"
        )
    # Captum's default (1) evaluates one perturbation at a time; jaxattr batches them all
    # (within its memory budget) unless told otherwise
    return None if perturbations_per_eval == 1 else perturbations_per_eval


def _steps_per_call(internal_batch_size: int | None, n: int) -> int | None:
    if internal_batch_size is None:
        return None
    return max(1, int(internal_batch_size) // max(n, 1))


@dataclasses.dataclass
class _Plan:
    """One jaxattr call: ``method(model, x, **kwargs)``, and how to return its result."""

    method: Callable[..., Any]
    model: Any
    x: Any
    kwargs: dict
    like: torch.Tensor
    n: int
    return_delta: bool = False
    key: Any = None  # for methods taking a key
    finish: Callable[[Any], Any] | None = None

    def run(self) -> Any:
        kw = dict(self.kwargs)
        if self.return_delta:
            kw["return_delta"] = True
        if self.key is not None:
            kw["key"] = self.key
        return self.convert(self.method(self.model, self.x, **kw))

    def convert(self, out: Any) -> Any:
        if self.finish is not None:
            return self.finish(out)
        if self.return_delta:
            attr, delta = out
            return to_torch(attr, self.like), _delta(delta, self.like)
        return to_torch(out, self.like)


# --------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------


class Attribution:
    """Base of the front-door classes (Captum's ``Attribution``)."""

    _has_delta = False

    def __init__(self, forward_func: Any):
        self.forward_func = forward_func
        self._model = TorchModel(forward_func, type(self).__name__)
        self._multiply_by_inputs = False

    @property
    def multiplies_by_inputs(self) -> bool:
        """Whether the attributions are global (multiplied by input - baseline)."""
        return self._multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        """Whether ``attribute`` can return a convergence delta."""
        return self._has_delta

    def attribute(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """Captum's ``attribute``: see the class's Captum counterpart."""
        return self._plan(inputs, *args, **kwargs).run()

    def compute_convergence_delta(self, *args: Any, **kwargs: Any) -> Any:
        raise unsupported(
            f"{type(self).__name__}.compute_convergence_delta",
            {"compute_convergence_delta": "use attribute(..., return_convergence_delta=True)"},
        )

    # -- helpers
    def _where(self) -> str:
        return f"{type(self).__name__}.attribute"

    def _reject(self, **options: tuple[bool, str]) -> None:
        bad = {k: why for k, (given, why) in options.items() if given}
        if bad:
            raise unsupported(self._where(), bad)

    def _prepare(self, inputs: Any, additional_forward_args: Any):
        is_tuple = isinstance(inputs, tuple)
        xs = inputs if is_tuple else (inputs,)
        if not xs:
            raise ValueError(f"{self._where()}: inputs is an empty tuple")
        for i, t in enumerate(xs):
            if not is_tensor(t):
                raise TypeError(
                    f"{self._where()}: inputs{f'[{i}]' if is_tuple else ''} must be a torch "
                    f"tensor, got {type(t).__name__}"
                )
        add, consts = split_args(additional_forward_args, len(xs))
        entry = self._model.converted(list(xs) + add, consts)
        x = tuple(to_numpy(t) for t in xs) if is_tuple else to_numpy(xs[0])
        args = tuple(to_numpy(a) for a in add)
        return entry, x, args, xs

    def _base_plan(self, method, inputs, additional_forward_args, /, **kwargs) -> _Plan:
        entry, x, args, xs = self._prepare(inputs, additional_forward_args)
        if args:
            kwargs["args"] = args
        return _Plan(method, entry.conv, x, kwargs, xs[0], int(xs[0].shape[0]))


class _LayerMixin:
    """Resolves Captum's layer modules to the bridge's names."""

    def _layer_init(self, layer: Any, lists: bool) -> None:
        if isinstance(layer, (list, tuple)) and not lists:
            raise unsupported(
                f"{type(self).__name__}",
                {"a list of layers": "this method takes one layer; call it once per layer"},
            )
        self.layer = layer

    def _layer_names(self, entry) -> Any:
        if isinstance(self.layer, (list, tuple)):
            return [self._model.layer_path(entry, m) for m in self.layer]
        return self._model.layer_path(entry, self.layer)

    def _layer_plan(self, method, inputs, additional_forward_args, /, **kwargs) -> _Plan:
        entry, x, args, xs = self._prepare(inputs, additional_forward_args)
        kwargs["layer"] = self._layer_names(entry)
        if args:
            kwargs["args"] = args
        return _Plan(method, entry.conv, x, kwargs, xs[0], int(xs[0].shape[0]))


class GradientAttribution(Attribution):
    pass


class PerturbationAttribution(Attribution):
    pass


class LayerAttribution(_LayerMixin, Attribution):
    """Base of the layer classes; ``LayerAttribution.interpolate`` as in Captum."""

    def __init__(self, forward_func: Any, layer: Any, device_ids: Any = None):
        Attribution.__init__(self, forward_func)
        self._layer_init(layer, lists=False)
        self.device_ids = device_ids  # DataParallel device ids: no effect here

    @staticmethod
    def interpolate(
        layer_attribution: torch.Tensor, interpolate_dims: Any, interpolate_mode: str = "nearest"
    ) -> torch.Tensor:
        """Upsample a layer attribution (N, C, ...) to ``interpolate_dims``, as Captum's
        ``LayerAttribution.interpolate`` (torch's ``F.interpolate``), with
        :func:`jaxattr.interpolate`."""
        if isinstance(interpolate_dims, int):
            interpolate_dims = (interpolate_dims,)
        out = jaxattr.interpolate(
            to_numpy(layer_attribution), tuple(interpolate_dims), mode=interpolate_mode
        )
        return to_torch(out, layer_attribution)


class NeuronAttribution(_LayerMixin, Attribution):
    def __init__(self, forward_func: Any, layer: Any, device_ids: Any = None):
        Attribution.__init__(self, forward_func)
        self._layer_init(layer, lists=False)
        self.device_ids = device_ids


# --------------------------------------------------------------------------------------
# Gradient and path methods
# --------------------------------------------------------------------------------------


class Saliency(GradientAttribution):
    """Captum's ``Saliency`` (:func:`jaxattr.saliency`)."""

    def _plan(self, inputs, target=None, abs=True, additional_forward_args=None):  # noqa: A002
        return self._base_plan(
            jaxattr.saliency, inputs, additional_forward_args, target=_target(target), abs=bool(abs)
        )


class InputXGradient(GradientAttribution):
    """Captum's ``InputXGradient`` (:func:`jaxattr.input_x_gradient`)."""

    def __init__(self, forward_func: Any):
        super().__init__(forward_func)
        self._multiply_by_inputs = True

    def _plan(self, inputs, target=None, additional_forward_args=None):
        return self._base_plan(
            jaxattr.input_x_gradient, inputs, additional_forward_args, target=_target(target)
        )


class IntegratedGradients(GradientAttribution):
    """Captum's ``IntegratedGradients`` (:func:`jaxattr.integrated_gradients`)."""

    _has_delta = True

    def __init__(self, forward_func: Any, multiply_by_inputs: bool = True):
        super().__init__(forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps=50,
        method="gausslegendre",
        internal_batch_size=None,
        return_convergence_delta=False,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._base_plan(
            jaxattr.integrated_gradients,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            n_steps=n_steps,
            method=method,
            multiply_by_inputs=self._multiply_by_inputs,
            batch_size=_steps_per_call(internal_batch_size, int(xs[0].shape[0])),
        )
        p.return_delta = bool(return_convergence_delta)
        return p


class GradientShap(GradientAttribution):
    """Captum's ``GradientShap`` (:func:`jaxattr.gradient_shap`); random (see module doc)."""

    _has_delta = True

    def __init__(self, forward_func: Any, multiply_by_inputs: bool = True):
        super().__init__(forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    def _plan(
        self,
        inputs,
        baselines,
        n_samples=5,
        stdevs=0.0,
        target=None,
        additional_forward_args=None,
        return_convergence_delta=False,
        *,
        key=None,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._base_plan(
            jaxattr.gradient_shap,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            n_samples=n_samples,
            stdevs=stdevs,
            target=_target(target),
            multiply_by_inputs=self._multiply_by_inputs,
        )
        p.return_delta = bool(return_convergence_delta)
        p.key = torch_key(key)
        return p


class NoiseTunnel(Attribution):
    """Captum's ``NoiseTunnel`` around any front-door class (:func:`jaxattr.noise_tunnel`).

    The noise is drawn from a JAX key (torch's global generator seeds it; ``key=``
    gives it directly).
    """

    def __init__(self, attribution_method: Attribution):
        if not isinstance(attribution_method, Attribution):
            raise TypeError(
                "NoiseTunnel: attribution_method must be a jaxattr.compat.captum class "
                f"instance (e.g. Saliency(model)), got {type(attribution_method).__name__}; "
                "import it from jaxattr.compat.captum as well"
            )
        self.attribution_method = attribution_method
        self.forward_func = attribution_method.forward_func
        self._model = attribution_method._model

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.attribution_method.has_convergence_delta()

    def _plan(
        self,
        inputs,
        nt_type="smoothgrad",
        nt_samples=5,
        nt_samples_batch_size=None,
        stdevs=1.0,
        draw_baseline_from_distrib=False,
        *,
        key=None,
        **kwargs,
    ):
        inner = self.attribution_method._plan(inputs, **kwargs)
        if inner.finish is not None:
            raise unsupported(
                "NoiseTunnel.attribute",
                {type(self.attribution_method).__name__: "not available inside NoiseTunnel"},
            )
        tunnel = jaxattr.noise_tunnel(
            inner.method,
            nt_type=nt_type,
            nt_samples=nt_samples,
            nt_samples_batch_size=nt_samples_batch_size,
            stdevs=stdevs,
            draw_baseline_from_distrib=draw_baseline_from_distrib,
        )
        # the tunnel hands the inner method keys of its own
        return dataclasses.replace(inner, method=tunnel, key=torch_key(key))


# --------------------------------------------------------------------------------------
# Rule-based methods (need a torch module: its layers are rewritten)
# --------------------------------------------------------------------------------------


_CUSTOM_FUNC = "a torch function inside the backward pass; jaxattr.deep_lift takes a JAX one"


class DeepLift(GradientAttribution):
    """Captum's ``DeepLift`` (:func:`jaxattr.deep_lift`): rescale rule on nonlinearities."""

    _has_delta = True

    def __init__(self, model: torch.nn.Module, multiply_by_inputs: bool = True, eps: float = 1e-10):
        super().__init__(model)
        self._multiply_by_inputs = multiply_by_inputs
        self.eps = eps

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        return_convergence_delta=False,
        custom_attribution_func=None,
    ):
        self._reject(custom_attribution_func=(custom_attribution_func is not None, _CUSTOM_FUNC))
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._base_plan(
            jaxattr.deep_lift,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            eps=self.eps,
            multiply_by_inputs=self._multiply_by_inputs,
        )
        p.return_delta = bool(return_convergence_delta)
        return p


class DeepLiftShap(DeepLift):
    """Captum's ``DeepLiftShap`` (:func:`jaxattr.deep_lift_shap`)."""

    def __init__(self, model: torch.nn.Module, multiply_by_inputs: bool = True):
        super().__init__(model, multiply_by_inputs)

    def _plan(
        self,
        inputs,
        baselines,
        target=None,
        additional_forward_args=None,
        return_convergence_delta=False,
        custom_attribution_func=None,
    ):
        self._reject(custom_attribution_func=(custom_attribution_func is not None, _CUSTOM_FUNC))
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._base_plan(
            jaxattr.deep_lift_shap,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            multiply_by_inputs=self._multiply_by_inputs,
        )
        p.return_delta = bool(return_convergence_delta)
        return p


class GuidedBackprop(GradientAttribution):
    """Captum's ``GuidedBackprop`` (:func:`jaxattr.guided_backprop`)."""

    _fn = staticmethod(jaxattr.guided_backprop)

    def _plan(self, inputs, target=None, additional_forward_args=None):
        return self._base_plan(
            type(self)._fn, inputs, additional_forward_args, target=_target(target)
        )


class Deconvolution(GuidedBackprop):
    """Captum's ``Deconvolution`` (:func:`jaxattr.deconvolution`)."""

    _fn = staticmethod(jaxattr.deconvolution)


class GuidedGradCam(_LayerMixin, GradientAttribution):
    """Captum's ``GuidedGradCam`` (:func:`jaxattr.guided_grad_cam`)."""

    def __init__(self, model: torch.nn.Module, layer: torch.nn.Module, device_ids: Any = None):
        GradientAttribution.__init__(self, model)
        self._layer_init(layer, lists=False)
        self.device_ids = device_ids

    def _plan(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        interpolate_mode="nearest",
        attribute_to_layer_input=False,
    ):
        return self._layer_plan(
            jaxattr.guided_grad_cam,
            inputs,
            additional_forward_args,
            target=_target(target),
            interpolate_mode=interpolate_mode,
            attribute_to_layer_input=attribute_to_layer_input,
        )


# Captum's LRP: leaf modules of these types get EpsilonRule() by default, these pass
_LRP_RULE_TYPES = (
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "Conv2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "Linear",
    "BatchNorm2d",
    "Addition_Module",
)
_LRP_PASS_TYPES = ("ReLU", "Dropout", "Tanh")


def _captum_lrp_composite(tm: TorchModel, entry, where: str) -> jaxattr.Composite:
    """Captum's LRP rules for this model: ``module.rule`` where set (EpsilonRule, GammaRule,
    Alpha1_Beta0_Rule, IdentityRule), else Captum's defaults
    (:func:`jaxattr.captum_lrp_composite`: epsilon 1e-9 on conv/linear/pool/batch norm,
    relevance passed through ReLU/Dropout/Tanh)."""
    name_map = []
    for path, m in entry.root.named_modules():
        if any(True for _ in m.children()):
            continue
        cls = type(m).__name__
        if hasattr(m, "rule"):
            rule = m.rule
            rcls = type(rule).__name__
            if rule is None:
                r = jaxattr.pass_rule()
            elif rcls == "IdentityRule":
                r = jaxattr.pass_rule()
            elif rcls == "EpsilonRule":
                r = jaxattr.epsilon(float(rule.STABILITY_FACTOR))
            elif rcls == "GammaRule":
                r = jaxattr.captum_gamma(
                    float(rule.gamma), bool(rule.set_bias_to_zero), float(rule.STABILITY_FACTOR)
                )
            elif rcls == "Alpha1_Beta0_Rule":
                r = jaxattr.captum_alpha1_beta0(
                    bool(rule.set_bias_to_zero), float(rule.STABILITY_FACTOR)
                )
            else:
                raise unsupported(
                    where,
                    {
                        f"{path}.rule = {rcls}": "rules other than Captum's EpsilonRule, "
                        "GammaRule, Alpha1_Beta0_Rule and IdentityRule; use jaxattr.lrp with a "
                        "jaxattr.Composite"
                    },
                )
            try:
                names = tuple(entry.conv.module_layers(path))
            except KeyError:
                continue  # a module that never runs
            name_map.append((names, r))
        elif cls not in _LRP_RULE_TYPES and cls not in _LRP_PASS_TYPES:
            raise TypeError(
                f"{where}: module {path!r} of type {cls} has no rule defined and no default "
                "rule exists for this module type (as in Captum); set module.rule = "
                "EpsilonRule() or IdentityRule() from captum.attr._utils.lrp_rules"
            )
    return jaxattr.captum_lrp_composite(
        name_map=tuple(name_map), layer_map=(("activation", jaxattr.pass_rule()),)
    )


class LRP(GradientAttribution):
    """Captum's ``LRP`` (:func:`jaxattr.lrp` with Captum's rules and normalisation)."""

    _has_delta = True

    def __init__(self, model: torch.nn.Module):
        super().__init__(model)
        self.model = model

    def _plan(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        return_convergence_delta=False,
        verbose=False,
    ):
        entry, x, args, xs = self._prepare(inputs, additional_forward_args)
        kwargs = dict(
            composite=_captum_lrp_composite(self._model, entry, self._where()),
            target=_target(target),
            captum_normalize=True,
        )
        if args:
            kwargs["args"] = args
        return _Plan(
            jaxattr.lrp,
            entry.conv,
            x,
            kwargs,
            xs[0],
            int(xs[0].shape[0]),
            return_delta=bool(return_convergence_delta),
        )


# --------------------------------------------------------------------------------------
# Perturbation methods
# --------------------------------------------------------------------------------------


def _reject_kwargs(self: Attribution, kwargs: dict) -> None:
    if kwargs:
        raise unsupported(
            self._where(), {k: "a Captum option jaxattr does not have" for k in kwargs}
        )


class Occlusion(PerturbationAttribution):
    """Captum's ``Occlusion`` (:func:`jaxattr.occlusion`)."""

    def _plan(
        self,
        inputs,
        sliding_window_shapes,
        strides=None,
        baselines=None,
        target=None,
        additional_forward_args=None,
        perturbations_per_eval=1,
        show_progress=False,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        return self._base_plan(
            jaxattr.occlusion,
            inputs,
            additional_forward_args,
            sliding_window_shapes=sliding_window_shapes,
            strides=1 if strides is None else strides,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            batch_size=_per_eval(perturbations_per_eval),
            show_progress=show_progress,
        )


class FeatureAblation(PerturbationAttribution):
    """Captum's ``FeatureAblation`` (:func:`jaxattr.feature_ablation`)."""

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        feature_mask=None,
        perturbations_per_eval=1,
        show_progress=False,
        **kwargs,
    ):
        _reject_kwargs(self, kwargs)
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        return self._base_plan(
            jaxattr.feature_ablation,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            feature_mask=_mask(feature_mask, xs),
            batch_size=_per_eval(perturbations_per_eval),
            show_progress=show_progress,
        )


class FeaturePermutation(PerturbationAttribution):
    """Captum's ``FeaturePermutation`` (:func:`jaxattr.feature_permutation`); random."""

    def __init__(self, forward_func: Any, perm_func: Any = None):
        super().__init__(forward_func)
        default = getattr(
            perm_func, "__name__", None
        ) == "_permute_feature" and "captum" in getattr(perm_func, "__module__", "")
        if perm_func is not None and not default:
            raise unsupported(
                "FeaturePermutation",
                {
                    "perm_func": "a torch function inside the compiled program; "
                    "jaxattr.feature_permutation takes a JAX one"
                },
            )

    def _plan(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        feature_mask=None,
        perturbations_per_eval=1,
        show_progress=False,
        *,
        key=None,
        **kwargs,
    ):
        _reject_kwargs(self, kwargs)
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._base_plan(
            jaxattr.feature_permutation,
            inputs,
            additional_forward_args,
            target=_target(target),
            feature_mask=_mask(feature_mask, xs),
            batch_size=_per_eval(perturbations_per_eval),
            show_progress=show_progress,
        )
        p.key = torch_key(key)
        return p


class ShapleyValueSampling(PerturbationAttribution):
    """Captum's ``ShapleyValueSampling`` (:func:`jaxattr.shapley_value_sampling`); random."""

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        feature_mask=None,
        n_samples=25,
        perturbations_per_eval=1,
        show_progress=False,
        *,
        key=None,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._base_plan(
            jaxattr.shapley_value_sampling,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            feature_mask=_mask(feature_mask, xs),
            n_samples=n_samples,
            batch_size=_per_eval(perturbations_per_eval),
            show_progress=show_progress,
        )
        p.key = torch_key(key)
        return p


class ShapleyValues(PerturbationAttribution):
    """Captum's ``ShapleyValues`` (:func:`jaxattr.shapley_values`): exact."""

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        feature_mask=None,
        perturbations_per_eval=1,
        show_progress=False,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        return self._base_plan(
            jaxattr.shapley_values,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            feature_mask=_mask(feature_mask, xs),
            batch_size=_per_eval(perturbations_per_eval),
            show_progress=show_progress,
        )


class KernelShap(PerturbationAttribution):
    """Captum's ``KernelShap`` (:func:`jaxattr.kernel_shap`); random."""

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        feature_mask=None,
        n_samples=25,
        perturbations_per_eval=1,
        return_input_shape=True,
        show_progress=False,
        *,
        key=None,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._base_plan(
            jaxattr.kernel_shap,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            feature_mask=_mask(feature_mask, xs),
            n_samples=n_samples,
            return_input_shape=return_input_shape,
            batch_size=_per_eval(perturbations_per_eval),
            show_progress=show_progress,
        )
        p.key = torch_key(key)
        return p


# Captum's interpretable models (captum._utils.models.linear_model) by class name
_SURROGATES = {
    "SkLearnLasso": ("lasso", 1.0),
    "SkLearnRidge": ("ridge", 1.0),
    "SkLearnLinearRegression": ("linear", None),
    "SGDLasso": ("sgd_lasso", None),
    "SGDRidge": ("sgd_ridge", None),
    "SGDLinearRegression": ("sgd_linear", None),
}


def _surrogate(model: Any) -> tuple[str, float | None]:
    if model is None:
        return "lasso", 0.01  # Captum's default: SkLearnLasso(alpha=0.01)
    name = type(model).__name__
    if name not in _SURROGATES:
        raise unsupported(
            "Lime",
            {
                f"interpretable_model={name}": "a Captum Model trained in torch; supported: "
                f"{', '.join(_SURROGATES)} (fitted in JAX)"
            },
        )
    kind, default_alpha = _SURROGATES[name]
    kwargs = dict(getattr(model, "construct_kwargs", None) or {})
    alpha = kwargs.pop("alpha", default_alpha)
    if kwargs:
        raise unsupported(
            "Lime", {f"{name}({', '.join(kwargs)}=...)": "only alpha is passed on to jaxattr's fit"}
        )
    return kind, alpha


class Lime(PerturbationAttribution):
    """Captum's ``Lime`` (:func:`jaxattr.lime`), with Captum's surrogates fitted in JAX."""

    def __init__(
        self,
        forward_func: Any,
        interpretable_model: Any = None,
        similarity_func: Any = None,
        perturb_func: Any = None,
    ):
        super().__init__(forward_func)
        bad = {}
        why = "a torch function called inside the compiled program; jaxattr.lime takes a JAX one"
        if similarity_func is not None:
            bad["similarity_func"] = why
        if perturb_func is not None:
            bad["perturb_func"] = why
        if bad:
            raise unsupported("Lime", bad)
        self._surrogate = _surrogate(interpretable_model)

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        feature_mask=None,
        n_samples=50,
        perturbations_per_eval=1,
        return_input_shape=True,
        show_progress=False,
        *,
        key=None,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        kind, alpha = self._surrogate
        p = self._base_plan(
            jaxattr.lime,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            feature_mask=_mask(feature_mask, xs),
            n_samples=n_samples,
            interpretable_model=kind,
            alpha=alpha,
            return_input_shape=return_input_shape,
            batch_size=_per_eval(perturbations_per_eval),
            show_progress=show_progress,
        )
        p.key = torch_key(key)
        return p


# --------------------------------------------------------------------------------------
# Layer methods
# --------------------------------------------------------------------------------------

_GRAD_KWARGS = "torch.autograd.grad options; the gradients are JAX's"


class LayerActivation(LayerAttribution):
    """Captum's ``LayerActivation`` (:func:`jaxattr.layer_activation`); a list of layers
    gives a list."""

    def __init__(self, forward_func: Any, layer: Any, device_ids: Any = None):
        Attribution.__init__(self, forward_func)
        self._layer_init(layer, lists=True)
        self.device_ids = device_ids

    def _plan(self, inputs, additional_forward_args=None, attribute_to_layer_input=False):
        return self._layer_plan(
            jaxattr.layer_activation,
            inputs,
            additional_forward_args,
            attribute_to_layer_input=attribute_to_layer_input,
        )


class LayerGradientXActivation(LayerAttribution):
    """Captum's ``LayerGradientXActivation`` (:func:`jaxattr.layer_gradient_x_activation`)."""

    def __init__(
        self,
        forward_func: Any,
        layer: Any,
        device_ids: Any = None,
        multiply_by_inputs: bool = True,
        memory_efficient: bool = False,
    ):
        Attribution.__init__(self, forward_func)
        self._layer_init(layer, lists=True)
        self.device_ids = device_ids
        self._multiply_by_inputs = multiply_by_inputs

    def _plan(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        attribute_to_layer_input=False,
        grad_kwargs=None,
    ):
        self._reject(grad_kwargs=(grad_kwargs is not None, _GRAD_KWARGS))
        return self._layer_plan(
            jaxattr.layer_gradient_x_activation,
            inputs,
            additional_forward_args,
            target=_target(target),
            multiply_by_inputs=self._multiply_by_inputs,
            attribute_to_layer_input=attribute_to_layer_input,
        )


class LayerIntegratedGradients(LayerAttribution):
    """Captum's ``LayerIntegratedGradients`` (:func:`jaxattr.layer_integrated_gradients`)."""

    _has_delta = True

    def __init__(
        self, forward_func: Any, layer: Any, device_ids: Any = None, multiply_by_inputs: bool = True
    ):
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps=50,
        method="gausslegendre",
        internal_batch_size=None,
        return_convergence_delta=False,
        attribute_to_layer_input=False,
        grad_kwargs=None,
    ):
        self._reject(grad_kwargs=(grad_kwargs is not None, _GRAD_KWARGS))
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._layer_plan(
            jaxattr.layer_integrated_gradients,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            n_steps=n_steps,
            method=method,
            multiply_by_inputs=self._multiply_by_inputs,
            attribute_to_layer_input=attribute_to_layer_input,
            batch_size=_steps_per_call(internal_batch_size, int(xs[0].shape[0])),
        )
        p.return_delta = bool(return_convergence_delta)
        return p


class LayerConductance(LayerAttribution):
    """Captum's ``LayerConductance`` (:func:`jaxattr.layer_conductance`)."""

    _has_delta = True

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps=50,
        method="gausslegendre",
        internal_batch_size=None,
        return_convergence_delta=False,
        attribute_to_layer_input=False,
        grad_kwargs=None,
    ):
        self._reject(grad_kwargs=(grad_kwargs is not None, _GRAD_KWARGS))
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._layer_plan(
            jaxattr.layer_conductance,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            n_steps=n_steps,
            method=method,
            attribute_to_layer_input=attribute_to_layer_input,
            batch_size=_steps_per_call(internal_batch_size, int(xs[0].shape[0])),
        )
        p.return_delta = bool(return_convergence_delta)
        return p


class InternalInfluence(LayerAttribution):
    """Captum's ``InternalInfluence`` (:func:`jaxattr.internal_influence`)."""

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps=50,
        method="gausslegendre",
        internal_batch_size=None,
        attribute_to_layer_input=False,
        grad_kwargs=None,
    ):
        self._reject(grad_kwargs=(grad_kwargs is not None, _GRAD_KWARGS))
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        return self._layer_plan(
            jaxattr.internal_influence,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            n_steps=n_steps,
            method=method,
            attribute_to_layer_input=attribute_to_layer_input,
            batch_size=_steps_per_call(internal_batch_size, int(xs[0].shape[0])),
        )


class LayerGradientShap(LayerAttribution):
    """Captum's ``LayerGradientShap`` (:func:`jaxattr.layer_gradient_shap`); random."""

    _has_delta = True

    def __init__(
        self, forward_func: Any, layer: Any, device_ids: Any = None, multiply_by_inputs: bool = True
    ):
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs

    def _plan(
        self,
        inputs,
        baselines,
        n_samples=5,
        stdevs=0.0,
        target=None,
        additional_forward_args=None,
        return_convergence_delta=False,
        attribute_to_layer_input=False,
        *,
        key=None,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._layer_plan(
            jaxattr.layer_gradient_shap,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            n_samples=n_samples,
            stdevs=stdevs,
            target=_target(target),
            multiply_by_inputs=self._multiply_by_inputs,
            attribute_to_layer_input=attribute_to_layer_input,
        )
        p.return_delta = bool(return_convergence_delta)
        p.key = torch_key(key)
        return p


class LayerFeatureAblation(LayerAttribution):
    """Captum's ``LayerFeatureAblation`` (:func:`jaxattr.layer_feature_ablation`)."""

    def _plan(
        self,
        inputs,
        layer_baselines=None,
        target=None,
        additional_forward_args=None,
        layer_mask=None,
        attribute_to_layer_input=False,
        perturbations_per_eval=1,
    ):
        return self._layer_plan(
            jaxattr.layer_feature_ablation,
            inputs,
            additional_forward_args,
            target=_target(target),
            layer_mask=torch_tree_to_numpy(layer_mask),
            layer_baselines=0.0
            if layer_baselines is None
            else torch_tree_to_numpy(layer_baselines),
            attribute_to_layer_input=attribute_to_layer_input,
            batch_size=_per_eval(perturbations_per_eval),
        )


class LayerGradCam(LayerAttribution):
    """Captum's ``LayerGradCam`` (:func:`jaxattr.grad_cam`)."""

    def _plan(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        attribute_to_layer_input=False,
        relu_attributions=False,
        attr_dim_summation=True,
        grad_kwargs=None,
    ):
        self._reject(grad_kwargs=(grad_kwargs is not None, _GRAD_KWARGS))
        return self._layer_plan(
            jaxattr.grad_cam,
            inputs,
            additional_forward_args,
            target=_target(target),
            attribute_to_layer_input=attribute_to_layer_input,
            relu_attributions=relu_attributions,
            attr_dim_summation=attr_dim_summation,
        )


class LayerDeepLift(LayerAttribution):
    """Captum's ``LayerDeepLift`` (:func:`jaxattr.layer_deep_lift`)."""

    _has_delta = True

    def __init__(
        self, model: torch.nn.Module, layer: torch.nn.Module, multiply_by_inputs: bool = True
    ):
        super().__init__(model, layer)
        self._multiply_by_inputs = multiply_by_inputs

    def _plan(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        return_convergence_delta=False,
        attribute_to_layer_input=False,
        custom_attribution_func=None,
        grad_kwargs=None,
    ):
        self._reject(
            custom_attribution_func=(custom_attribution_func is not None, _CUSTOM_FUNC),
            grad_kwargs=(grad_kwargs is not None, _GRAD_KWARGS),
        )
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._layer_plan(
            jaxattr.layer_deep_lift,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            multiply_by_inputs=self._multiply_by_inputs,
            attribute_to_layer_input=attribute_to_layer_input,
        )
        p.return_delta = bool(return_convergence_delta)
        return p


class LayerLRP(LayerAttribution):
    """Captum's ``LayerLRP`` (:func:`jaxattr.layer_lrp` with Captum's rules)."""

    _has_delta = True

    def __init__(self, model: torch.nn.Module, layer: Any):
        Attribution.__init__(self, model)
        self._layer_init(layer, lists=True)

    def _plan(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        return_convergence_delta=False,
        attribute_to_layer_input=False,
        verbose=False,
    ):
        entry, x, args, xs = self._prepare(inputs, additional_forward_args)
        t = _target(target)
        comp = _captum_lrp_composite(self._model, entry, self._where())
        kwargs = dict(
            layer=self._layer_names(entry),
            composite=comp,
            target=t,
            attribute_to_layer_input=attribute_to_layer_input,
            captum_normalize=True,
        )
        if args:
            kwargs["args"] = args
        conv, like = entry.conv, xs[0]

        def finish(rel):
            out = to_torch(rel, like)
            if not return_convergence_delta:
                return out
            y = conv(*x, *args) if isinstance(x, tuple) else conv(x, *args)
            score = np.asarray(jaxattr.select_target(y, t))

            def delta(r):
                leaves = jax.tree_util.tree_leaves(r)
                total = sum(np.asarray(a).reshape(a.shape[0], -1).sum(1) for a in leaves)
                return to_torch(score - total, like)

            return out, [delta(r) for r in rel] if isinstance(rel, list) else delta(rel)

        return _Plan(jaxattr.layer_lrp, conv, x, kwargs, like, int(like.shape[0]), finish=finish)


# --------------------------------------------------------------------------------------
# Neuron methods
# --------------------------------------------------------------------------------------


class NeuronGradient(NeuronAttribution):
    """Captum's ``NeuronGradient`` (:func:`jaxattr.neuron_gradient`).

    ``neuron_selector``: an int, a tuple of ints/slices, or a callable of the layer's
    activation, which receives a JAX array (``a[:, 3].sum((1, 2))`` works in both).
    """

    def _plan(
        self, inputs, neuron_selector, additional_forward_args=None, attribute_to_neuron_input=False
    ):
        return self._layer_plan(
            jaxattr.neuron_gradient,
            inputs,
            additional_forward_args,
            neuron_selector=_selector(neuron_selector),
            attribute_to_neuron_input=attribute_to_neuron_input,
        )


class NeuronIntegratedGradients(NeuronAttribution):
    """Captum's ``NeuronIntegratedGradients`` (:func:`jaxattr.neuron_integrated_gradients`)."""

    def __init__(
        self, forward_func: Any, layer: Any, device_ids: Any = None, multiply_by_inputs: bool = True
    ):
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs

    def _plan(
        self,
        inputs,
        neuron_selector,
        baselines=None,
        additional_forward_args=None,
        n_steps=50,
        method="gausslegendre",
        internal_batch_size=None,
        attribute_to_neuron_input=False,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        return self._layer_plan(
            jaxattr.neuron_integrated_gradients,
            inputs,
            additional_forward_args,
            neuron_selector=_selector(neuron_selector),
            baselines=_baselines(baselines, xs),
            n_steps=n_steps,
            method=method,
            multiply_by_inputs=self._multiply_by_inputs,
            attribute_to_neuron_input=attribute_to_neuron_input,
            batch_size=_steps_per_call(internal_batch_size, int(xs[0].shape[0])),
        )


class NeuronConductance(NeuronAttribution):
    """Captum's ``NeuronConductance`` (:func:`jaxattr.neuron_conductance`)."""

    def __init__(
        self, forward_func: Any, layer: Any, device_ids: Any = None, multiply_by_inputs: bool = True
    ):
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs

    def _plan(
        self,
        inputs,
        neuron_selector,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps=50,
        method="riemann_trapezoid",
        internal_batch_size=None,
        attribute_to_neuron_input=False,
        grad_kwargs=None,
    ):
        self._reject(grad_kwargs=(grad_kwargs is not None, _GRAD_KWARGS))
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        return self._layer_plan(
            jaxattr.neuron_conductance,
            inputs,
            additional_forward_args,
            neuron_selector=_selector(neuron_selector),
            baselines=_baselines(baselines, xs),
            target=_target(target),
            n_steps=n_steps,
            method=method,
            multiply_by_inputs=self._multiply_by_inputs,
            attribute_to_neuron_input=attribute_to_neuron_input,
            batch_size=_steps_per_call(internal_batch_size, int(xs[0].shape[0])),
        )


class NeuronGradientShap(NeuronAttribution):
    """Captum's ``NeuronGradientShap`` (:func:`jaxattr.neuron_gradient_shap`); random."""

    def __init__(
        self, forward_func: Any, layer: Any, device_ids: Any = None, multiply_by_inputs: bool = True
    ):
        super().__init__(forward_func, layer, device_ids)
        self._multiply_by_inputs = multiply_by_inputs

    def _plan(
        self,
        inputs,
        neuron_selector,
        baselines,
        n_samples=5,
        stdevs=0.0,
        additional_forward_args=None,
        attribute_to_neuron_input=False,
        *,
        key=None,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._layer_plan(
            jaxattr.neuron_gradient_shap,
            inputs,
            additional_forward_args,
            neuron_selector=_selector(neuron_selector),
            baselines=_baselines(baselines, xs),
            n_samples=n_samples,
            stdevs=stdevs,
            multiply_by_inputs=self._multiply_by_inputs,
            attribute_to_neuron_input=attribute_to_neuron_input,
        )
        p.key = torch_key(key)
        return p


class NeuronGuidedBackprop(NeuronAttribution):
    """Captum's ``NeuronGuidedBackprop`` (:func:`jaxattr.neuron_guided_backprop`)."""

    def _plan(
        self, inputs, neuron_selector, additional_forward_args=None, attribute_to_neuron_input=False
    ):
        return self._layer_plan(
            jaxattr.neuron_guided_backprop,
            inputs,
            additional_forward_args,
            neuron_selector=_selector(neuron_selector),
            attribute_to_neuron_input=attribute_to_neuron_input,
        )


class NeuronDeepLift(NeuronAttribution):
    """Captum's ``NeuronDeepLift`` (:func:`jaxattr.neuron_deep_lift`)."""

    def __init__(
        self, model: torch.nn.Module, layer: torch.nn.Module, multiply_by_inputs: bool = True
    ):
        super().__init__(model, layer)
        self._multiply_by_inputs = multiply_by_inputs

    def _plan(
        self,
        inputs,
        neuron_selector,
        baselines=None,
        additional_forward_args=None,
        attribute_to_neuron_input=False,
        custom_attribution_func=None,
    ):
        self._reject(custom_attribution_func=(custom_attribution_func is not None, _CUSTOM_FUNC))
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        return self._layer_plan(
            jaxattr.neuron_deep_lift,
            inputs,
            additional_forward_args,
            neuron_selector=_selector(neuron_selector),
            baselines=_baselines(baselines, xs),
            multiply_by_inputs=self._multiply_by_inputs,
            attribute_to_neuron_input=attribute_to_neuron_input,
        )


class NeuronFeatureAblation(NeuronAttribution):
    """Captum's ``NeuronFeatureAblation`` (:func:`jaxattr.neuron_feature_ablation`)."""

    def _plan(
        self,
        inputs,
        neuron_selector,
        baselines=None,
        additional_forward_args=None,
        feature_mask=None,
        attribute_to_neuron_input=False,
        perturbations_per_eval=1,
    ):
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        return self._layer_plan(
            jaxattr.neuron_feature_ablation,
            inputs,
            additional_forward_args,
            neuron_selector=_selector(neuron_selector),
            baselines=_baselines(baselines, xs),
            feature_mask=_mask(feature_mask, xs),
            batch_size=_per_eval(perturbations_per_eval),
            attribute_to_neuron_input=attribute_to_neuron_input,
        )


# --------------------------------------------------------------------------------------
# DeepLIFT SHAP at a layer or a neuron, deconvolution of a neuron, layer permutation
# --------------------------------------------------------------------------------------


class NeuronDeconvolution(NeuronAttribution):
    """Captum's ``NeuronDeconvolution`` (:func:`jaxattr.neuron_deconvolution`)."""

    def _plan(
        self, inputs, neuron_selector, additional_forward_args=None, attribute_to_neuron_input=False
    ):
        return self._layer_plan(
            jaxattr.neuron_deconvolution,
            inputs,
            additional_forward_args,
            neuron_selector=_selector(neuron_selector),
            attribute_to_neuron_input=attribute_to_neuron_input,
        )


class LayerDeepLiftShap(LayerDeepLift):
    """Captum's ``LayerDeepLiftShap`` (:func:`jaxattr.layer_deep_lift_shap`); the delta has
    one value per (example, baseline) pair, in Captum's order."""

    def _plan(
        self,
        inputs,
        baselines,
        target=None,
        additional_forward_args=None,
        return_convergence_delta=False,
        attribute_to_layer_input=False,
        custom_attribution_func=None,
    ):
        self._reject(custom_attribution_func=(custom_attribution_func is not None, _CUSTOM_FUNC))
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        p = self._layer_plan(
            jaxattr.layer_deep_lift_shap,
            inputs,
            additional_forward_args,
            baselines=_baselines(baselines, xs),
            target=_target(target),
            multiply_by_inputs=self._multiply_by_inputs,
            attribute_to_layer_input=attribute_to_layer_input,
        )
        p.return_delta = bool(return_convergence_delta)
        return p


class NeuronDeepLiftShap(NeuronDeepLift):
    """Captum's ``NeuronDeepLiftShap`` (:func:`jaxattr.neuron_deep_lift_shap`)."""

    def _plan(
        self,
        inputs,
        neuron_selector,
        baselines,
        additional_forward_args=None,
        attribute_to_neuron_input=False,
        custom_attribution_func=None,
    ):
        self._reject(custom_attribution_func=(custom_attribution_func is not None, _CUSTOM_FUNC))
        xs = inputs if isinstance(inputs, tuple) else (inputs,)
        return self._layer_plan(
            jaxattr.neuron_deep_lift_shap,
            inputs,
            additional_forward_args,
            neuron_selector=_selector(neuron_selector),
            baselines=_baselines(baselines, xs),
            multiply_by_inputs=self._multiply_by_inputs,
            attribute_to_neuron_input=attribute_to_neuron_input,
        )


class LayerFeaturePermutation(LayerAttribution):
    """Captum's ``LayerFeaturePermutation`` (:func:`jaxattr.layer_feature_permutation`);
    random (see the module doc). Unlike Captum 0.9, whose forward hook selects the target
    column twice, a ``target`` works here."""

    def _plan(
        self,
        inputs,
        target=None,
        additional_forward_args=None,
        layer_mask=None,
        perturbations_per_eval=1,
        *,
        key=None,
    ):
        p = self._layer_plan(
            jaxattr.layer_feature_permutation,
            inputs,
            additional_forward_args,
            target=_target(target),
            layer_mask=torch_tree_to_numpy(layer_mask),
            batch_size=_per_eval(perturbations_per_eval),
        )
        p.key = torch_key(key)
        return p


# --------------------------------------------------------------------------------------
# LLM attribution (Captum's llm_attr): jaxattr/compat/_captum_llm.py, loaded on first use
# (it subclasses the classes above)
# --------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from jaxattr.compat._captum_llm import (
        LLMAttribution,
        LLMAttributionResult,
        LLMGradientAttribution,
        ProductBaselines,
        TextTemplateInput,
        TextTokenInput,
    )

_LLM_NAMES = (
    "LLMAttribution",
    "LLMAttributionResult",
    "LLMGradientAttribution",
    "ProductBaselines",
    "TextTemplateInput",
    "TextTokenInput",
)


def __getattr__(name: str) -> Any:
    if name in _LLM_NAMES:
        from jaxattr.compat import _captum_llm

        return getattr(_captum_llm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LLM_NAMES))
