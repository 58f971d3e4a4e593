"""The perturbation methods' shared prologue: inputs, targets, scores and batch options.

The methods live in one file per family (:mod:`jaxattr._occlusion`,
:mod:`jaxattr._ablation`, :mod:`jaxattr._shapley`, :mod:`jaxattr._lime`,
:mod:`jaxattr._rise`); every one is black-box: it evaluates ``fn`` on a set of
perturbed copies of the input and combines the scores. The whole perturbation set is
one ``vmap``-ped batch; ``batch_size`` evaluates it in chunks of at most that many
perturbations per compiled call (a short Python loop over one jitted chunk function),
and the result is the same chunked or not.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching, _core
from jaxattr._core import PyTree

Model = Any


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None:
        return None
    return _core.check_positive_int(batch_size, "batch_size")


def _attr_dtype(leaf: Any) -> Any:
    """An attribution's dtype: the input's when floating, else float32 (int/bool inputs)."""
    return leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else jnp.float32


def _inputs(x: PyTree, *, mixed_batch: bool = False) -> _core.Inputs:
    """Validate x for a black-box method: any dtype (no gradients are taken).

    With ``mixed_batch`` the leaves may lead with different batch sizes (Captum allows it
    when ``fn`` returns one value for the whole batch); ``Inputs.n`` is then the first
    leaf's.
    """
    leaves = jax.tree_util.tree_leaves(x)
    if not mixed_batch or len({getattr(a, "shape", (None,))[:1] for a in leaves}) <= 1:
        return _core.as_inputs(x, need_float=False)
    for path, leaf in _core._leaf_paths(x):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"{path} must be an array, got {type(leaf).__name__}")
        if leaf.ndim == 0:
            raise ValueError(
                f"{path} must lead with the batch dimension N, got a scalar (shape ()); "
                f"use x[None] for a single example"
            )
    _core.check_finite(x, "x")
    return _core.Inputs(is_tuple=isinstance(x, tuple), n=int(leaves[0].shape[0]))


def _output_shape(fn, inputs, x, args) -> tuple:
    """The shape of ``fn``'s output on x, any shape allowed (aggregate outputs too)."""

    out, value_bytes = _caching.probe(_core._call_fn, (inputs, fn, args), x)
    scope = _core._SCOPE.get()
    if scope is not None and scope.value_bytes is None:  # the first probe sizes chunks
        scope.value_bytes = value_bytes
    if not hasattr(out, "shape"):
        raise TypeError(
            f"fn must return one array, got {type(out).__name__}; select the output to "
            f"explain inside fn"
        )
    return tuple(out.shape)


def _resolve_target(target: Any, out_shape: tuple, n: int) -> _core.Target | None:
    """``None`` (every output element, Captum's ``target=None``) or a normalised target.

    An int (or a list / 1-D array of ints) on an output (N, C, 1, ...) whose trailing
    axes have size 1 selects ``[:, target]`` as Captum does.
    """
    if target is None:
        return None
    if len(out_shape) == 0 or out_shape[0] != n:
        raise ValueError(
            f"target={target!r} selects one output per example, but fn returns shape "
            f"{out_shape} with no per-example dimension (N={n}); an aggregate output (one "
            f"value for the whole batch) takes target=None"
        )
    trailing = len(out_shape) > 2 and all(s == 1 for s in out_shape[2:])
    if trailing:
        pad = (0,) * (len(out_shape) - 2)
        if isinstance(target, (int, np.integer)) and not isinstance(target, (bool, np.bool_)):
            target = (int(target), *pad)
        elif isinstance(target, list) and all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in target
        ):
            target = [(int(t), *pad) for t in target]
        elif (
            hasattr(target, "ndim")
            and target.ndim == 1
            and jnp.issubdtype(target.dtype, jnp.integer)
        ):
            target = jnp.concatenate(
                [
                    jnp.reshape(target, (-1, 1)),
                    jnp.zeros((target.shape[0], len(pad)), target.dtype),
                ],
                axis=1,
            )
    return _core.normalize_target(target, out_shape)


def _prepare(fn, x, target, args, *, mixed_batch: bool = False):
    """Validate x and target: ``(x, args, inputs, target, out_shape)``.

    The target is ``None`` for ``target=None``: every element of the output is explained
    (one per example for a per-example scalar output, one in all for an aggregate
    output), as in Captum's perturbation methods.
    """
    x = _core.to_arrays(x)
    args = tuple(args)
    inputs = _inputs(x, mixed_batch=mixed_batch)
    out_shape = _output_shape(fn, inputs, x, args)
    t = _resolve_target(target, out_shape, inputs.n)
    return x, args, inputs, t, out_shape


def _n_outputs(t: Any, out_shape: tuple, n: int) -> int:
    """How many scores every evaluation gives: N for a target, else every output element."""
    return n if t is not None else int(math.prod(out_shape))


def score_dtype(y: Any) -> np.dtype:
    """The dtype perturbation methods compute scores and their sums in: the output's,
    at least float32 (bfloat16 and integer outputs are summed in float32, float64 stays
    float64)."""
    return _core.at_least_float32(jnp.result_type(y))


def explained_scores(y: Any, target: Any) -> jax.Array:
    """The scores a perturbation method explains, in :func:`score_dtype`: ``(N,)`` for a
    target, the flat output for None."""
    if target is None:
        return jnp.reshape(jnp.asarray(y), (-1,)).astype(score_dtype(y))
    return _core.target_score(y, target).astype(score_dtype(y))


def _scores(fn, inputs, x, args, target):
    """:func:`explained_scores` of ``fn`` on ``x``."""
    return explained_scores(inputs.call(fn, x, args), target)


def _per_example_scalar(t: Any, out_shape: tuple, n: int) -> bool:
    """Whether every example has exactly one explained score (x-shaped attributions)."""
    if t is not None:
        return True
    return len(out_shape) >= 1 and out_shape[0] == n and math.prod(out_shape[1:]) == 1


def _check_mask_outputs(fmasks: list, n_out: int, out_shape: tuple, name: str = "feature_mask"):
    """A per-example mask (leading dimension N > 1) needs one score per example."""
    for i, fm in enumerate(fmasks):
        if fm.shape[0] > 1 and fm.shape[0] != n_out:
            where = f"{name}[{i}]" if len(fmasks) > 1 else name
            raise ValueError(
                f"{where} gives one mask per example (leading dimension {fm.shape[0]}), "
                f"which needs one explained output per example, but fn returns shape "
                f"{out_shape} ({n_out} output(s) explained); give the mask a leading "
                f"dimension of 1, or pass a target"
            )


def _eager(x: PyTree, show_progress: bool) -> bool:
    return bool(show_progress) and _core.is_concrete(x)


@_core.cached_jit(("fn", "inputs"))
def _base_scores(*, fn, inputs, x, args, target):
    return _scores(fn, inputs, x, args, target)


@_core.cached_jit(("fn", "inputs"))
def _baseline_scores(*, fn, inputs, x, baselines, args, target):
    b = _core.expand_baselines(baselines, x)
    return _scores(fn, inputs, b, args, target)


def _per_leaf_option(value: Any, x: PyTree, name: str) -> list:
    """A geometry option given once (applies to every input) or once per input.

    As in Captum, for an ``x`` with several inputs a tuple or list with one entry per
    input is read per input; anything else applies to every input.
    """
    n_leaves = len(jax.tree_util.tree_leaves(x))
    if (
        n_leaves == 1
        and isinstance(value, (tuple, list))
        and len(value) == 1
        and isinstance(value[0], (tuple, list))
    ):
        return [value[0]]  # Captum's one-entry-per-input form for a single input

    def single(v: Any) -> bool:  # a tuple of n entries is per input; a list must be
        per_input = isinstance(v, list) or isinstance(v, tuple) and len(v) == n_leaves
        return n_leaves == 1 or not per_input

    return _core.per_leaf(value, n_leaves, name, single=single)


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),)
    if isinstance(value, (tuple, list)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        return tuple(int(v) for v in value)
    raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}")
