"""jaxattr: attribution methods as pure, composable JAX functions.

Every method takes a batch-first pure function ``fn`` and an input ``x`` and returns an
attribution with x's structure::

    attr = jaxattr.integrated_gradients(fn, x, n_steps=50, target=3)

See the README for the tour and the table of methods.
"""

from jaxattr import structure
from jaxattr._core import one_hot_max, select_target
from jaxattr._gradient import (
    gradient,
    input_baseline_x_gradient,
    input_x_gradient,
    saliency,
    sensitivity,
)
from jaxattr._integrated import QUADRATURES, integrated_gradients, quadrature
from jaxattr._noise import (
    NT_TYPES,
    draw_noise,
    gradient_shap,
    gradient_shap_draws,
    noise_tunnel,
    smoothgrad,
    smoothgrad_draws,
)

__version__ = "0.1.0"

__all__ = [
    "NT_TYPES",
    "QUADRATURES",
    "draw_noise",
    "gradient",
    "gradient_shap",
    "gradient_shap_draws",
    "input_baseline_x_gradient",
    "input_x_gradient",
    "integrated_gradients",
    "noise_tunnel",
    "one_hot_max",
    "quadrature",
    "saliency",
    "select_target",
    "sensitivity",
    "smoothgrad",
    "smoothgrad_draws",
    "structure",
]
