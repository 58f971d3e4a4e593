"""Composites: which LRP rule each layer of a model gets (Zennit's composites).

A :class:`Composite` maps layer types (``layer_map``), the first layer (``first_map``) and
layer names (``name_map``) to :mod:`jaxattr.rules`; the built-in ones reproduce Zennit's
(``epsilon_plus_flat`` is ``EpsilonPlusFlat``) and Captum's default LRP rules
(``captum_lrp_composite``). Pass one to :func:`jaxattr.lrp` or :func:`jaxattr.attach`.

Example:
    >>> from jaxattr import composites
    >>> comp = composites.epsilon_plus_flat()
    >>> type(comp).__name__
    'Composite'
"""

from __future__ import annotations

from jaxattr._composites import (  # noqa: F401
    CONV,
    LINEAR,
    Composite,
    MixedComposite,
    beta_smooth,
    captum_lrp_composite,
    deconvnet,
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

__all__ = [
    "beta_smooth",
    "captum_lrp_composite",
    "Composite",
    "CONV",
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
    "LINEAR",
    "mixed_composite",
    "MixedComposite",
]
