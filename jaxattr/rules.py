"""LRP rules: how one layer passes relevance back (Zennit's rule kit).

A rule is a :class:`Rule` (a parameter modifier, an input modifier, an output modifier and a
stabilizer), applied to a layer by :func:`apply_rule` under one ``custom_vjp``. Composites
(:mod:`jaxattr.composites`) assign rules to layers::

    import jaxattr
    from jaxattr import composites, rules

    comp = composites.epsilon_plus_flat()                      # Zennit's EpsilonPlusFlat
    mine = jaxattr.Composite(layer_map=((composites.CONV, rules.gamma(0.25)),))
    attr = jaxattr.lrp(model, x, composite=mine, target=3)

The rules keep Zennit's names (``epsilon``, ``gamma``, ``alpha_beta``, ``z_plus``,
``z_box``, ``w_square``, ``flat``, ``norm``, ``pass_rule``) and its ReLU rules
(``relu_guided_backprop``, ``relu_deconvnet``, ``relu_beta_smooth``); ``captum_gamma`` and
``captum_alpha1_beta0`` are Captum's forms.

Example:
    >>> from jaxattr import rules
    >>> rules.epsilon(1e-6).name, rules.flat().name
    ('epsilon', 'flat')
"""

from __future__ import annotations

from jaxattr._rules import (  # noqa: F401
    ParamMod,
    Rule,
    Stabilizer,
    alpha_beta,
    apply_rule,
    captum_alpha1_beta0,
    captum_gamma,
    epsilon,
    flat,
    gamma,
    norm,
    pass_rule,
    relu_beta_smooth,
    relu_deconvnet,
    relu_guided_backprop,
    stabilize,
    w_square,
    z_box,
    z_plus,
)

__all__ = [
    "alpha_beta",
    "apply_rule",
    "captum_alpha1_beta0",
    "captum_gamma",
    "epsilon",
    "flat",
    "gamma",
    "norm",
    "ParamMod",
    "pass_rule",
    "relu_beta_smooth",
    "relu_deconvnet",
    "relu_guided_backprop",
    "Rule",
    "stabilize",
    "Stabilizer",
    "w_square",
    "z_box",
    "z_plus",
]
