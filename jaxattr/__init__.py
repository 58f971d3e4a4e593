"""jaxattr: attribution methods as pure, composable JAX functions.

Every method takes a batch-first pure function ``fn`` and an input ``x`` and returns an
attribution with x's structure::

    attr = jaxattr.integrated_gradients(fn, x, n_steps=50, target=3)

See the README for the tour and the table of methods.
"""

from jaxattr import canonizers, composites, draws, rules, structure, viz
from jaxattr._ablation import feature_ablation, feature_permutation, permute_feature
from jaxattr._adversarial import (
    fgsm,
    pgd,
    pgd_random_start,
)
from jaxattr._caching import clear_caches, compiler_options
from jaxattr._cam import (
    grad_cam,
    grad_cam_plus_plus,
    gradient_to_saliency,
    guided_grad_cam,
    interpolate,
    linear_approx,
    score_cam,
)
from jaxattr._canonizers import (
    Canonized,
    NamedMergeBatchNorm,
    canonize,
    layer_graph,
    merge_batch_norm,
    named_merge_batch_norm,
    residual_sums,
)
from jaxattr._composites import (
    CONV,
    LINEAR,
    Composite,
    MixedComposite,
    beta_smooth,
    captum_lrp_composite,
    epsilon_alpha2_beta1,
    epsilon_alpha2_beta1_flat,
    epsilon_gamma_box,
    epsilon_plus,
    epsilon_plus_flat,
    excitation_backprop_composite,
    guided_backprop_composite,
    is_relu,
    layer_map_base,
    mixed_composite,
)
from jaxattr._core import (
    NonFiniteInputError,
    memory_budget,
    one_hot_max,
    select_target,
    set_memory_budget,
)
from jaxattr._dataset import AttributionStore, ResumeMismatchError, attribute_dataset
from jaxattr._deeplift import deep_lift, deep_lift_shap
from jaxattr._excitation import contrastive_excitation_backprop, excitation_backprop
from jaxattr._extremal import (
    extremal_perturbation,
    smooth_mask,
)
from jaxattr._for_each import for_each_neuron, for_each_target
from jaxattr._fusion import (
    fusion_grad,
    fusion_grad_draws,
    model_buffers,
)
from jaxattr._gradient import (
    gradient,
    input_baseline_x_gradient,
    input_x_gradient,
    saliency,
    sensitivity,
)
from jaxattr._incremental import IncrementalPlan, incremental_plan
from jaxattr._integrated import QUADRATURES, integrated_gradients, quadrature
from jaxattr._layer import (
    internal_influence,
    layer_activation,
    layer_conductance,
    layer_gradient_shap,
    layer_gradient_x_activation,
    layer_integrated_gradients,
    probe,
)
from jaxattr._layer_perturbation import layer_feature_ablation, layer_feature_permutation
from jaxattr._layer_rules import layer_deep_lift, layer_deep_lift_shap, layer_lrp
from jaxattr._lime import (
    INTERPRETABLE_MODELS,
    fit_lasso,
    fit_linear,
    fit_ridge,
    fit_sgd,
    get_exp_kernel_similarity_function,
    kernel_shap,
    kernel_shap_samples,
    lime,
    lime_base,
    lime_samples,
)
from jaxattr._lrp import Attached, attach, deconvolution, guided_backprop, lrp
from jaxattr._metrics import (
    Curve,
    completeness,
    deletion_curve,
    infidelity,
    insertion_curve,
    pointing_game,
    sensitivity_max,
    uniform_perturb,
)
from jaxattr._neuron import (
    NeuronModel,
    neuron_conductance,
    neuron_deconvolution,
    neuron_deep_lift,
    neuron_deep_lift_shap,
    neuron_feature_ablation,
    neuron_gradient,
    neuron_gradient_shap,
    neuron_guided_backprop,
    neuron_integrated_gradients,
    neuron_model,
)
from jaxattr._noise import (
    NT_TYPES,
    draw_noise,
    gradient_shap,
    gradient_shap_draws,
    noise_tunnel,
    smoothgrad,
    smoothgrad_draws,
)
from jaxattr._occlusion import occlude_independent, occlusion, tiled_occlusion
from jaxattr._pair import (
    XRAIOutput,
    XRAIParameters,
    blur_ig,
    felzenszwalb,
    guided_ig,
    xrai,
    xrai_segments,
)
from jaxattr._rise import rise, rise_masks
from jaxattr._rules import (
    ParamMod,
    Rule,
    Stabilizer,
    alpha_beta,
    apply_rule,
    captum_alpha1_beta0,
    captum_gamma,
    epsilon,
    gamma,
    pass_rule,
    relu_beta_smooth,
    relu_guided_backprop,
    stabilize,
    w_square,
    z_box,
    z_plus,
)
from jaxattr._sensitivity import (
    HSIC_KERNELS,
    PERTURBATIONS,
    SOBOL_ESTIMATORS,
    hsic_attribution,
    hsic_indices,
    sobol_attribution,
    sobol_design,
    sobol_sequence,
    sobol_total_indices,
)
from jaxattr._shapley import (
    MAX_EXACT_SHAPLEY_FEATURES,
    shapley_permutations,
    shapley_value_sampling,
    shapley_values,
)

__version__ = "0.1.0"

__all__ = [
    "alpha_beta",
    "apply_rule",
    "attach",
    "Attached",
    "attribute_dataset",
    "AttributionStore",
    "beta_smooth",
    "captum_alpha1_beta0",
    "captum_gamma",
    "captum_lrp_composite",
    "blur_ig",
    "canonize",
    "canonizers",
    "composites",
    "Canonized",
    "clear_caches",
    "compiler_options",
    "completeness",
    "Composite",
    "concepts",
    "contrastive_excitation_backprop",
    "CONV",
    "Curve",
    "deconvolution",
    "deep_lift",
    "deep_lift_shap",
    "deletion_curve",
    "draw_noise",
    "draws",
    "epsilon",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "epsilon_gamma_box",
    "epsilon_plus",
    "epsilon_plus_flat",
    "excitation_backprop",
    "excitation_backprop_composite",
    "extremal_perturbation",
    "feature_ablation",
    "feature_permutation",
    "felzenszwalb",
    "fgsm",
    "fit_lasso",
    "fit_linear",
    "fit_ridge",
    "fit_sgd",
    "for_each_neuron",
    "for_each_target",
    "fusion_grad",
    "fusion_grad_draws",
    "gamma",
    "get_exp_kernel_similarity_function",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient",
    "gradient_shap",
    "gradient_shap_draws",
    "gradient_to_saliency",
    "guided_backprop",
    "guided_backprop_composite",
    "guided_grad_cam",
    "guided_ig",
    "hsic_attribution",
    "hsic_indices",
    "HSIC_KERNELS",
    "IncrementalPlan",
    "incremental_plan",
    "infidelity",
    "influence",
    "input_baseline_x_gradient",
    "input_x_gradient",
    "insertion_curve",
    "integrated_gradients",
    "internal_influence",
    "interpolate",
    "INTERPRETABLE_MODELS",
    "is_relu",
    "kernel_shap",
    "kernel_shap_samples",
    "layer_activation",
    "layer_conductance",
    "layer_deep_lift",
    "layer_deep_lift_shap",
    "layer_feature_ablation",
    "layer_feature_permutation",
    "layer_gradient_shap",
    "layer_gradient_x_activation",
    "layer_graph",
    "layer_integrated_gradients",
    "layer_lrp",
    "layer_map_base",
    "mixed_composite",
    "MixedComposite",
    "lime",
    "lime_base",
    "lime_samples",
    "LINEAR",
    "linear_approx",
    "llm",
    "lrp",
    "MAX_EXACT_SHAPLEY_FEATURES",
    "memory_budget",
    "merge_batch_norm",
    "metrics",
    "named_merge_batch_norm",
    "NamedMergeBatchNorm",
    "model_buffers",
    "neuron_conductance",
    "neuron_deconvolution",
    "neuron_deep_lift",
    "neuron_deep_lift_shap",
    "neuron_feature_ablation",
    "neuron_gradient",
    "neuron_gradient_shap",
    "neuron_guided_backprop",
    "neuron_integrated_gradients",
    "neuron_model",
    "NeuronModel",
    "noise_tunnel",
    "NonFiniteInputError",
    "NT_TYPES",
    "occlude_independent",
    "occlusion",
    "one_hot_max",
    "ParamMod",
    "pass_rule",
    "permute_feature",
    "PERTURBATIONS",
    "pgd",
    "pgd_random_start",
    "pointing_game",
    "probe",
    "quadrature",
    "QUADRATURES",
    "relu_beta_smooth",
    "relu_guided_backprop",
    "residual_sums",
    "rules",
    "ResumeMismatchError",
    "rise",
    "rise_masks",
    "robust",
    "Rule",
    "saliency",
    "score_cam",
    "select_target",
    "sensitivity",
    "sensitivity_max",
    "set_memory_budget",
    "shapley_permutations",
    "shapley_value_sampling",
    "shapley_values",
    "smooth_mask",
    "smoothgrad",
    "smoothgrad_draws",
    "sobol_attribution",
    "sobol_design",
    "SOBOL_ESTIMATORS",
    "sobol_sequence",
    "sobol_total_indices",
    "stabilize",
    "Stabilizer",
    "structure",
    "tiled_occlusion",
    "uniform_perturb",
    "viz",
    "w_square",
    "xrai",
    "xrai_segments",
    "XRAIOutput",
    "XRAIParameters",
    "z_box",
    "z_plus",
]


_LAZY = ("flax", "compat", "concepts", "influence", "robust", "metrics", "llm")


# names that read as methods but are rules or a composite: in their namespaces now
_MOVED = {
    "norm": "rules",
    "flat": "rules",
    "relu_deconvnet": "rules",
    "deconvnet": "composites",
}


def __getattr__(name: str):
    # namespaces imported on first use, not with jaxattr: the Flax adapters, the Captum /
    # Zennit front doors (they need torch), concepts, training-data influence, robustness
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"jaxattr.{name}")
    if name in _MOVED:
        import warnings

        where = _MOVED[name]
        warnings.warn(
            f"jaxattr.{name} is jaxattr.{where}.{name} (a {where[:-1]}, not a method); "
            "the top-level name will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(globals()[where], name)
    raise AttributeError(f"module 'jaxattr' has no attribute {name!r}")
