"""The random draws of the sampling methods, as functions of a key.

Each sampling method draws its noise, baselines, permutations, coalitions or masks from a
``jax.random`` key through one of these functions, and takes the draws back as an argument
(``draws=``/``masks=``/``permutations=``), so that a run can be replayed exactly, inspected,
or fed to a reference implementation (the parity tests replay them into Captum and PAIR).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxattr import draws
    >>> normal, sigma = draws.smoothgrad_draws(jax.random.key(0), jnp.ones((2, 3)), 0.1, 5)
    >>> normal.shape, sigma.shape
    ((4, 2, 3), (2, 1))
"""

from __future__ import annotations

from jaxattr._fusion import (  # noqa: F401
    fusion_grad_draws,
)
from jaxattr._lime import kernel_shap_samples, lime_samples  # noqa: F401
from jaxattr._noise import (  # noqa: F401
    draw_noise,
    gradient_shap_draws,
    smoothgrad_draws,
)
from jaxattr._rise import rise_masks  # noqa: F401
from jaxattr._sensitivity import (  # noqa: F401
    sobol_design,
)
from jaxattr._shapley import shapley_permutations  # noqa: F401

__all__ = [
    "draw_noise",
    "fusion_grad_draws",
    "gradient_shap_draws",
    "kernel_shap_samples",
    "lime_samples",
    "rise_masks",
    "shapley_permutations",
    "smoothgrad_draws",
    "sobol_design",
]
