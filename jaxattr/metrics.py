"""All of jaxattr's metrics of attribution quality, in one namespace.

Loaded on first use (``jaxattr.metrics``). It gathers:

- Captum's and RISE's metrics, also exported at the top level: :func:`infidelity`,
  :func:`sensitivity_max` (with :func:`uniform_perturb`), :func:`deletion_curve` and
  :func:`insertion_curve` (:class:`Curve`), :func:`pointing_game` and
  :func:`completeness`.
- Quantus 0.6.0's metrics, with Quantus's option names and defaults (see
  ``docs/metrics.md`` for every difference and the measured agreement):

  - faithfulness: :func:`faithfulness_correlation`, :func:`faithfulness_estimate`,
    :func:`monotonicity` (Arya), :func:`monotonicity_correlation` (Nguyen),
    :func:`pixel_flipping`, :func:`region_perturbation`, :func:`selectivity`,
    :func:`road` (with :func:`noisy_linear_imputation`), :func:`irof`,
    :func:`sufficiency`;
  - robustness: :func:`local_lipschitz_estimate`, :func:`max_sensitivity`,
    :func:`avg_sensitivity`, :func:`continuity`;
  - localisation: :func:`pointing_game`, :func:`attribution_localisation`,
    :func:`top_k_intersection`, :func:`relevance_mass_accuracy`,
    :func:`relevance_rank_accuracy`, :func:`auc`;
  - complexity: :func:`sparseness`, :func:`complexity`, :func:`effective_complexity`;
  - randomisation: :func:`model_parameter_randomisation` (cascading and independent, for
    ``apply_fn(params, x)`` models; :func:`randomise_uniform`), :func:`random_logit`;
  - axiomatic: :func:`completeness`, :func:`non_sensitivity`, :func:`input_invariance`.

- Their building blocks: :func:`normalise_by_max`, :func:`normalise_by_negative`, the
  similarity functions :func:`correlation_pearson`, :func:`correlation_spearman`,
  :func:`correlation_kendall_tau`, :func:`ssim`, :func:`lipschitz_constant`, the distances
  :func:`distance_euclidean`, :func:`distance_manhattan` and the norms :func:`fro_norm`,
  :func:`l2_norm`, :func:`linf_norm`.

Every metric takes arrays of a whole batch (N, ...) and returns one value (or curve) per
example; the perturbed inputs are ``vmap``-ped batches and randomness comes from an
explicit ``key``.

Example:
    >>> import jax.numpy as jnp
    >>> from jaxattr import metrics
    >>> [round(float(v), 3) for v in metrics.sparseness(jnp.array([[0.0, 0.0, 0.0, 1.0]]))]
    [0.75]
"""

from __future__ import annotations

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
from jaxattr._quantus_common import (
    BASELINES,
    correlation_kendall_tau,
    correlation_pearson,
    correlation_spearman,
    distance_euclidean,
    distance_manhattan,
    fro_norm,
    l2_norm,
    linf_norm,
    normalise_by_max,
    normalise_by_negative,
    ssim,
)
from jaxattr._quantus_faithfulness import (
    faithfulness_correlation,
    faithfulness_estimate,
    irof,
    monotonicity,
    monotonicity_correlation,
    noisy_linear_imputation,
    pixel_flipping,
    region_perturbation,
    road,
    selectivity,
    sufficiency,
)
from jaxattr._quantus_localisation import (
    attribution_localisation,
    auc,
    complexity,
    effective_complexity,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    sparseness,
    top_k_intersection,
)
from jaxattr._quantus_randomisation import (
    input_invariance,
    model_parameter_randomisation,
    non_sensitivity,
    random_logit,
    randomise_uniform,
)
from jaxattr._quantus_robustness import (
    avg_sensitivity,
    continuity,
    lipschitz_constant,
    local_lipschitz_estimate,
    max_sensitivity,
)

__all__ = [
    "BASELINES",
    "Curve",
    "attribution_localisation",
    "auc",
    "avg_sensitivity",
    "completeness",
    "complexity",
    "continuity",
    "correlation_kendall_tau",
    "correlation_pearson",
    "correlation_spearman",
    "deletion_curve",
    "distance_euclidean",
    "distance_manhattan",
    "effective_complexity",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "fro_norm",
    "infidelity",
    "input_invariance",
    "insertion_curve",
    "irof",
    "l2_norm",
    "linf_norm",
    "lipschitz_constant",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "model_parameter_randomisation",
    "monotonicity",
    "monotonicity_correlation",
    "noisy_linear_imputation",
    "non_sensitivity",
    "normalise_by_max",
    "normalise_by_negative",
    "pixel_flipping",
    "pointing_game",
    "random_logit",
    "randomise_uniform",
    "region_perturbation",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "road",
    "selectivity",
    "sensitivity_max",
    "sparseness",
    "ssim",
    "sufficiency",
    "top_k_intersection",
    "uniform_perturb",
]


def __dir__() -> list[str]:
    """``dir(jaxattr.metrics)`` lists the public names only."""
    return sorted(__all__)
