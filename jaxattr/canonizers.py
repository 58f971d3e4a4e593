"""Canonizers: rewrite a model into an equivalent one whose layers LRP rules suit.

``merge_batch_norm`` folds each batch norm into the linear layer before it (Zennit's
``MergeBatchNorm`` / ``SequentialMergeBatchNorm``), ``named_merge_batch_norm`` does it for
named pairs (``NamedMergeBatchNorm``), ``residual_sums`` makes residual additions layers of
their own (what Zennit's ResNet canonizer does); pass them to :func:`jaxattr.lrp` or
:func:`jaxattr.attach` as ``canonizers=[...]``.

Example:
    >>> from jaxattr import canonizers
    >>> callable(canonizers.merge_batch_norm)
    True
"""

from __future__ import annotations

from jaxattr._canonizers import (  # noqa: F401
    Canonized,
    NamedMergeBatchNorm,
    canonize,
    layer_graph,
    merge_batch_norm,
    named_merge_batch_norm,
    residual_sums,
)

__all__ = [
    "canonize",
    "Canonized",
    "layer_graph",
    "merge_batch_norm",
    "named_merge_batch_norm",
    "NamedMergeBatchNorm",
    "residual_sums",
]
