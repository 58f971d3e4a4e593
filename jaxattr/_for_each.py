"""Many targets or many neurons in one compiled program.

:func:`for_each_target` and :func:`for_each_neuron` vmap any method over targets or neurons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxattr import _core, _taps
from jaxattr._core import PyTree
from jaxattr._layer import Setup
from jaxattr._neuron import _selector_spec

__all__ = [
    "for_each_neuron",
    "for_each_target",
]

Model = Any


# --------------------------------------------------------------------------------------
# Many targets or neurons at once: one vmapped computation
# --------------------------------------------------------------------------------------


@_core.contract
def for_each_target(
    method: Callable[..., Any], fn: Any, x: PyTree, targets: Sequence[Any], **kwargs: Any
) -> Any:
    """Run ``method`` for several targets as one ``vmap``-ped computation.

    A frequent Captum request (issues 171, 612, 925): explaining every class, or many, at
    once. The targets are traced, so the method compiles once for all of them.

    With jaxlib 0.10 on CPU, XLA's YNNPACK reduce fusion got this nesting wrong (targets
    outside, integration steps inside: layer IG on a bridged GPT-2 was 17-150% off for all
    targets but the first); jaxattr's programs compile without that fusion (see
    :func:`jaxattr.compiler_options`).

    Args:
        method: A jaxattr method taking ``target=`` (input, layer or neuron method).
        fn: Its model argument (a function or a structured model).
        x: Its input.
        targets: A sequence of T targets, each an int or a tuple index (the same for every
            example).
        **kwargs: Other options of ``method`` (e.g. ``n_steps``, ``layer``, ``key``).

    Returns:
        The method's result with a leading axis of size T.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x @ jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        >>> jaxattr.for_each_target(jaxattr.saliency, fn, jnp.ones((1, 2)), [0, 2])[:, 0]
        Array([[1., 4.],
               [3., 6.]], dtype=float32)
    """
    targets = list(targets)
    if not targets:
        raise ValueError("targets must hold at least one target, got an empty sequence")
    x = _core.to_arrays(x)
    layer_args = {k: kwargs[k] for k in ("args",) if k in kwargs}
    fn_check = fn
    if hasattr(fn, "apply") and hasattr(fn, "layers"):
        fn_check = _core.ModelFunction(fn)
    inputs = _core.as_inputs(x, need_float=False)
    for t in targets:  # validate each eagerly (range checks need concrete values)
        _core.prepare_target(t, fn_check, inputs, x, tuple(layer_args.get("args", ())))
    arr = np.asarray([t if isinstance(t, tuple) else (t,) for t in targets], np.int32)
    per_example = np.repeat(arr[:, None, :], inputs.n, axis=1)  # (T, N, k)
    if per_example.shape[-1] == 1:
        per_example = per_example[..., 0]
    return jax.vmap(lambda t: method(fn, x, target=t, **kwargs))(per_example)


@_core.contract
def for_each_neuron(
    method: Callable[..., Any],
    model: Model,
    x: PyTree,
    layer: str,
    neuron_selectors: Sequence[Any],
    **kwargs: Any,
) -> Any:
    """Run a neuron method for several neurons as one ``vmap``-ped computation.

    Args:
        method: A neuron method (e.g. :func:`neuron_gradient`,
            :func:`neuron_integrated_gradients`, :func:`neuron_conductance`).
        model: A structured model.
        x: The input.
        layer: The layer name.
        neuron_selectors: A sequence of K ints or index tuples (no slices or callables).
        **kwargs: Other options of ``method``.

    Returns:
        The method's result with a leading axis of size K.

    Example:
        >>> import jaxattr
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model()
        >>> jaxattr.for_each_neuron(jaxattr.neuron_gradient, model, make_shapes(1)[0],
        ...                         "fc", [0, 1, 2, 3]).shape
        (4, 1, 32, 32, 3)
    """
    sels = list(neuron_selectors)
    if not sels:
        raise ValueError("neuron_selectors must hold at least one selector, got none")
    s = Setup(
        "for_each_neuron",
        model,
        x,
        layer,
        target=None,
        args=kwargs.get("args", ()),
        kwargs=kwargs.get("kwargs"),
        params=kwargs.get("params"),
        to_input=kwargs.get("attribute_to_neuron_input", False),
        need_target=False,
    )
    (tap,) = s.taps
    shapes = _taps.tap_shapes(s.model, s.params, s.inputs, s.x, s.args, s.kwargs, s.taps)
    act_shape = tuple(shapes[tap.key].shape)
    rows = []
    for sel in sels:
        mode, _, index = _selector_spec(sel, act_shape)
        if mode != "index":
            raise ValueError(f"for_each_neuron takes int or tuple selectors, got {sel!r}")
        rows.append(np.asarray(index))
    arr = np.stack(rows)
    return jax.vmap(lambda i: method(model, s.x, layer, i, **kwargs))(arr)
