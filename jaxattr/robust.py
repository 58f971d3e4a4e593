"""Robustness evaluation: Captum's ``AttackComparator`` and ``MinParamPerturbation``.

Both drive attacks and transformations written as functions ``attack(x, **kwargs) ->
perturbed x`` (batch-first, like the model): :func:`jaxattr.fgsm` and :func:`jaxattr.pgd`
bound to a model (``functools.partial(jaxattr.fgsm, fn)``), or any input transformation.
The model ``forward_func(x, *additional_forward_args)`` is a batch-first function; several
perturbed batches are concatenated into one model call with ``perturbations_per_eval``.

- :class:`AttackComparator` evaluates a metric of the model output on the original input
  and on each attack (mean, min and max over repeated attempts of random attacks), and
  keeps a running summary over the batches evaluated.
- :class:`MinParamPerturbation` finds the smallest value of one attack argument (an
  ``epsilon``, a noise level, a rotation) that makes the model's prediction wrong, by a
  linear or a binary search over ``[arg_min, arg_max)`` in steps of ``arg_step``.

Results match Captum's on deterministic attacks (the search order, its step arithmetic and
the statistics included).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _core

Array = jax.Array

__all__ = [
    "ORIGINAL_KEY",
    "AttackComparator",
    "AttackInfo",
    "MinParamPerturbation",
    "default_correct_fn",
    "drange",
]

#: The key of the unperturbed input's metric in :meth:`AttackComparator.evaluate`.
ORIGINAL_KEY = "Original"


class AttackInfo(NamedTuple):
    """One attack registered with :meth:`AttackComparator.add_attack`.

    Example:
        >>> from jaxattr.robust import AttackComparator
        >>> comp = AttackComparator(lambda x: x, lambda out: out.mean())
        >>> comp.add_attack(lambda x: -x, "Negate", num_attempts=2)
        >>> comp.attacks["Negate"].num_attempts
        2
    """

    attack_fn: Callable[..., Any]
    name: str
    num_attempts: int
    apply_before_preproc: bool
    attack_kwargs: dict[str, Any]
    additional_args: list[str]


def _batch_size(x: Any) -> int:
    leaf = jax.tree_util.tree_leaves(x)[0]
    return int(leaf.shape[0])


def _concat(inputs: Sequence[Any]) -> Any:
    """Concatenate batches along the batch axis (tuples of inputs leaf by leaf)."""
    if len(inputs) == 1:
        return inputs[0]
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis=0), *inputs)


def _expand_args(args: tuple, n: int) -> tuple:
    """Repeat the batch-first arrays of ``args`` ``n`` times (Captum's expansion)."""
    if n == 1:
        return args
    return tuple(
        jnp.concatenate([a] * n, axis=0) if hasattr(a, "shape") and a.ndim > 0 else a for a in args
    )


def _as_args(additional_forward_args: Any) -> tuple:
    if additional_forward_args is None:
        return ()
    return (
        additional_forward_args
        if isinstance(additional_forward_args, tuple)
        else (additional_forward_args,)
    )


def _slice(out: Any, start: int, stop: int) -> Any:
    return jax.tree_util.tree_map(lambda a: a[start:stop], out)


def _host(value: Any) -> Any:
    """Metric values as NumPy (float64 for integers/bools, as Captum's mean casts)."""
    if isinstance(value, tuple):
        return tuple(_host(v) for v in value)
    a = np.asarray(value)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return a


class _Stats:
    """Elementwise mean, min and max of a stream of metric values (scalars, arrays or
    tuples of them)."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        self.values: list[Any] = []

    def update(self, value: Any) -> None:
        self.values.append(_host(value))

    def _one(self, values: list) -> dict[str, Any]:
        stack = np.stack(values)
        out = {}
        for n in self.names:
            v = {"mean": stack.mean(0), "min": stack.min(0), "max": stack.max(0)}[n]
            out[n] = v.item() if v.ndim == 0 else v
        return out

    def summary(self, out_format: Any = None) -> dict[str, Any]:
        if not self.values:
            return {}
        if isinstance(self.values[0], tuple):
            parts = [self._one([v[i] for v in self.values]) for i in range(len(self.values[0]))]
            res = {}
            for n in self.names:
                vals = tuple(p[n] for p in parts)
                res[n] = out_format(*vals) if out_format else vals
            return res
        return self._one(self.values)


def _aggregate(value: Any) -> Any:
    """Captum's ``agg_metric``: the mean over the batch axis of array metrics."""
    if isinstance(value, tuple):
        return tuple(_aggregate(v) for v in value)
    a = np.asarray(value)
    return a.mean(0) if a.ndim > 0 else a


class AttackComparator:
    """Compare a metric of the model output across attacks, Captum's ``AttackComparator``.

    Args:
        forward_func: ``forward_func(x, *additional_forward_args) -> outputs``.
        metric: ``metric(outputs, **kwargs) -> value``: a float, an array (e.g. one value
            per example) or a tuple (a namedtuple keeps its field names in summaries).
        preproc_fn: Applied to inputs before the model (e.g. normalisation).

    Example:
        >>> import functools, jax, jax.numpy as jnp, jaxattr
        >>> from jaxattr.robust import AttackComparator
        >>> w = jnp.array([[1.0, -1.0], [0.5, 2.0]])
        >>> fn = lambda x: jax.nn.softmax(x @ w)
        >>> def accuracy(out, target):      # receives evaluate's keyword arguments
        ...     return (out.argmax(1) == target).astype(jnp.float32)
        >>> comp = AttackComparator(fn, accuracy)
        >>> comp.add_attack(functools.partial(jaxattr.fgsm, fn), "FGSM",
        ...                 attack_kwargs={"epsilon": 1.0}, additional_attack_arg_names=["target"])
        >>> comp.add_attack(lambda x: x * 0.5, "Shrink")
        >>> labels = jnp.array([0, 1])
        >>> res = comp.evaluate(jnp.array([[1.0, 0.0], [0.0, 1.0]]), target=labels)
        >>> res["Original"].tolist(), res["FGSM"]["mean"].tolist(), res["Shrink"]["mean"].tolist()
        ([1.0, 1.0], [0.0, 0.0], [1.0, 1.0])
        >>> comp.summary()["FGSM"]
        {'mean': 0.0}
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        metric: Callable[..., Any],
        preproc_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        for name, f in (("forward_func", forward_func), ("metric", metric)):
            if not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if preproc_fn is not None and not callable(preproc_fn):
            raise TypeError(f"preproc_fn must be callable or None, got {type(preproc_fn).__name__}")
        self.forward_func = forward_func
        self.metric = metric
        self.preproc_fn = preproc_fn
        self.attacks: dict[str, AttackInfo] = {}
        self.summary_results: dict[str, _Stats] = {}
        self.out_format: Any = None

    def add_attack(
        self,
        attack: Callable[..., Any],
        name: str | None = None,
        num_attempts: int = 1,
        apply_before_preproc: bool = True,
        attack_kwargs: dict[str, Any] | None = None,
        additional_attack_arg_names: list[str] | None = None,
    ) -> None:
        """Register an attack or transformation ``attack(x, **kwargs) -> x'``.

        Args:
            attack: The attack function.
            name: Its key in results (default: the function's name).
            num_attempts: Repetitions (for random attacks): results then give the mean,
                min and max over attempts.
            apply_before_preproc: Attack the raw input (``True``) or the preprocessed one.
            attack_kwargs: Fixed keyword arguments of the attack.
            additional_attack_arg_names: Names of :meth:`evaluate` keyword arguments to
                pass on to the attack (e.g. ``["target"]``).

        Raises:
            RuntimeError: An attack of that name exists (Captum's error).
        """
        if not callable(attack):
            raise TypeError(f"attack must be callable, got {type(attack).__name__}")
        if name is None:
            name = getattr(attack, "__name__", None) or type(attack).__name__
            if name == "partial":
                name = getattr(attack.func, "__name__", "partial")
        num_attempts = _core.check_positive_int(num_attempts, "num_attempts")
        if name in self.attacks:
            raise RuntimeError(f"Cannot add attack with same name as existing attack {name}")
        self.attacks[name] = AttackInfo(
            attack_fn=attack,
            name=name,
            num_attempts=num_attempts,
            apply_before_preproc=apply_before_preproc,
            attack_kwargs=dict(attack_kwargs or {}),
            additional_args=list(additional_attack_arg_names or []),
        )

    def _update_out_format(self, value: Any) -> None:
        if self.out_format is None and isinstance(value, tuple) and hasattr(value, "_fields"):
            self.out_format = type(value)

    def _evaluate_batch(self, input_list, args, key_list, stats, metric_kwargs) -> None:
        if len(input_list) == 1:
            out = self.forward_func(input_list[0], *args)
            value = self.metric(out, **metric_kwargs)
            self._update_out_format(value)
            stats[key_list[0]].update(value)
            return
        out = self.forward_func(_concat(input_list), *args)
        start = 0
        for inp, key in zip(input_list, key_list, strict=True):
            n = _batch_size(inp)
            value = self.metric(_slice(out, start, start + n), **metric_kwargs)
            self._update_out_format(value)
            stats[key].update(value)
            start += n

    def evaluate(
        self,
        inputs: Any,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The metric on ``inputs`` and on every attack's perturbation of them.

        Args:
            inputs: Model input (N, ...) or a tuple of inputs.
            additional_forward_args: Extra positional model arguments.
            perturbations_per_eval: How many perturbed batches go through the model in
                one call (concatenated along the batch axis).
            **kwargs: Passed to ``metric``, and to attacks that named them in
                ``additional_attack_arg_names``.

        Returns:
            ``{"Original": value, name: {"mean": value}}``, with ``"min"`` and ``"max"``
            too for attacks of several attempts; values have the metric's type (arrays
            stay per example). :meth:`summary` aggregates over calls.
        """
        ppe = _core.check_positive_int(perturbations_per_eval, "perturbations_per_eval")
        args = _as_args(additional_forward_args)
        expanded = _expand_args(args, ppe)
        preproc = self.preproc_fn(inputs) if self.preproc_fn is not None else inputs
        stats: dict[str, _Stats] = {ORIGINAL_KEY: _Stats(["mean"])}
        input_list, key_list = [preproc], [ORIGINAL_KEY]

        def flush_if_full():
            nonlocal input_list, key_list
            if len(input_list) == ppe:
                self._evaluate_batch(input_list, expanded, key_list, stats, kwargs)
                input_list, key_list = [], []

        flush_if_full()
        for attack in self.attacks.values():
            stats[attack.name] = _Stats(
                ["mean", "min", "max"] if attack.num_attempts > 1 else ["mean"]
            )
            extra = {}
            for key in attack.additional_args:
                if key not in kwargs:
                    import warnings

                    warnings.warn(
                        f"Additional sample arg {key} not provided for {attack.name}",
                        stacklevel=2,
                    )
                else:
                    extra[key] = kwargs[key]
            for _ in range(attack.num_attempts):
                if attack.apply_before_preproc:
                    attacked = attack.attack_fn(inputs, **extra, **attack.attack_kwargs)
                    if self.preproc_fn is not None:
                        attacked = self.preproc_fn(attacked)
                else:
                    attacked = attack.attack_fn(preproc, **extra, **attack.attack_kwargs)
                input_list.append(attacked)
                key_list.append(attack.name)
                flush_if_full()
        if input_list:
            self._evaluate_batch(
                input_list, _expand_args(args, len(input_list)), key_list, stats, kwargs
            )
        return self._parse_and_update(stats)

    def _parse_and_update(self, stats: dict[str, _Stats]) -> dict[str, Any]:
        results: dict[str, Any] = {
            ORIGINAL_KEY: stats[ORIGINAL_KEY].summary(self.out_format)["mean"]
        }
        self.summary_results.setdefault(ORIGINAL_KEY, _Stats(["mean"])).update(
            _aggregate(results[ORIGINAL_KEY])
        )
        for attack in self.attacks.values():
            res = stats[attack.name].summary(self.out_format)
            results[attack.name] = res
            if len(res) == 1:
                key = attack.name
                self.summary_results.setdefault(key, _Stats(["mean"])).update(
                    _aggregate(next(iter(res.values())))
                )
            else:
                for stat, value in res.items():
                    key = f"{attack.name} {stat.title()} Attempt"
                    self.summary_results.setdefault(key, _Stats(["mean"])).update(_aggregate(value))
        return results

    def summary(self) -> dict[str, dict[str, Any]]:
        """Mean over the :meth:`evaluate` calls so far of each batch's mean metric.

        Returns:
            ``{"Original": {"mean": v}, name: {"mean": v}, "<name> Min Attempt": ...}``.
        """
        return {k: s.summary(self.out_format) for k, s in self.summary_results.items()}

    def reset(self) -> None:
        """Forget the running summary."""
        self.summary_results = {}


def drange(min_val: float, max_val: float, step_val: float):
    """``min_val, min_val + step_val, ...`` while below ``max_val`` (Captum's, with its
    accumulated float steps).

    Example:
        >>> from jaxattr.robust import drange
        >>> list(drange(0, 1, 0.25))
        [0, 0.25, 0.5, 0.75]
    """
    cur = min_val
    while cur < max_val:
        yield cur
        cur += step_val


def default_correct_fn(model_out: Any, target: Any) -> bool:
    """Captum's default: every example's argmax equals its target.

    Args:
        model_out: (N, C) outputs.
        target: An int or (N,) ints.

    Returns:
        Whether the whole batch is classified correctly.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.robust import default_correct_fn
        >>> default_correct_fn(jnp.array([[0.1, 0.9], [0.8, 0.2]]), [1, 0])
        True
    """
    out = np.asarray(model_out)
    if out.ndim != 2:
        raise ValueError(
            f"the default correct_fn needs a 2-D model output (N, C), got shape "
            f"{tuple(out.shape)}; pass correct_fn"
        )
    return bool(np.all(out.argmax(1) == np.asarray(target)))


MODES = ("linear", "binary")


class MinParamPerturbation:
    """The smallest attack parameter that breaks the prediction, Captum's
    ``MinParamPerturbation``.

    Args:
        forward_func: ``forward_func(x, *additional_forward_args) -> outputs``.
        attack: ``attack(x, **attack_kwargs, **{arg_name: value}) -> x'``.
        arg_name: The searched keyword argument of ``attack``.
        arg_min: Smallest value tried.
        arg_max: Values tried stay below it.
        arg_step: Step of the search grid.
        mode: ``"linear"`` (every grid value in turn) or ``"binary"`` (bisection over the
            grid: assumes a larger value always succeeds when a smaller one does).
        num_attempts: Attempts per value (for random attacks); one success suffices.
        preproc_fn: Applied to inputs before the model.
        apply_before_preproc: Attack the raw input (then preprocess) instead of the
            preprocessed one.
        correct_fn: ``correct_fn(outputs, **correct_fn_kwargs) -> bool`` (``target`` is
            passed when given); default :func:`default_correct_fn`.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.robust import MinParamPerturbation
        >>> fn = lambda x: jnp.concatenate([x, 1.0 - x], axis=1)   # class 0 while x > 0.5
        >>> shift = lambda x, amount: x - amount
        >>> search = MinParamPerturbation(fn, shift, "amount", 0.0, 1.0, 0.1)
        >>> x_adv, amount = search.evaluate(jnp.array([[0.8]]), target=0)
        >>> round(amount, 1), round(float(x_adv[0, 0]), 2)
        (0.4, 0.4)
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        attack: Callable[..., Any],
        arg_name: str,
        arg_min: float,
        arg_max: float,
        arg_step: float,
        mode: str = "linear",
        num_attempts: int = 1,
        preproc_fn: Callable[[Any], Any] | None = None,
        apply_before_preproc: bool = False,
        correct_fn: Callable[..., bool] | None = None,
    ) -> None:
        for name, f in (("forward_func", forward_func), ("attack", attack)):
            if not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if not isinstance(arg_name, str):
            raise TypeError(f"arg_name must be a str, got {type(arg_name).__name__}")
        if not arg_max > arg_min + arg_step:
            raise ValueError(
                f"arg_max must exceed arg_min + arg_step (Captum: 'Step size cannot be "
                f"smaller than range between min and max'), got arg_min={arg_min}, "
                f"arg_max={arg_max}, arg_step={arg_step}"
            )
        if not arg_step > 0:
            raise ValueError(f"arg_step must be > 0, got {arg_step}")
        if not isinstance(mode, str) or mode.lower() not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        self.forward_func = forward_func
        self.attack = attack
        self.arg_name = arg_name
        self.arg_min = arg_min
        self.arg_max = arg_max
        self.arg_step = arg_step
        self.mode = mode.lower()
        self.num_attempts = _core.check_positive_int(num_attempts, "num_attempts")
        self.preproc_fn = preproc_fn
        self.apply_before_preproc = apply_before_preproc
        self.correct_fn = default_correct_fn if correct_fn is None else correct_fn

    def _evaluate_batch(self, input_list, args, correct_fn_kwargs, target) -> int | None:
        """Index of the first perturbation that is classified incorrectly, or None."""
        kwargs = {} if target is None else {"target": target}
        kwargs.update(correct_fn_kwargs or {})
        if len(input_list) == 1:
            out = self.forward_func(input_list[0], *args)
            return None if self.correct_fn(out, **kwargs) else 0
        out = self.forward_func(_concat(input_list), *args)
        start = 0
        for i, inp in enumerate(input_list):
            n = _batch_size(inp)
            if not self.correct_fn(_slice(out, start, start + n), **kwargs):
                return i
            start += n
        return None

    def _apply_attack(self, inputs, preproc, attack_kwargs, param):
        kw = dict(attack_kwargs or {})
        kw[self.arg_name] = param
        if self.apply_before_preproc:
            attacked = self.attack(inputs, **kw)
            pre = self.preproc_fn(attacked) if self.preproc_fn else attacked
            return pre, attacked
        attacked = self.attack(preproc, **kw)
        return attacked, attacked

    def _linear_search(self, inputs, preproc, attack_kwargs, args, ppe, ckw, target):
        expanded = _expand_args(args, ppe)
        input_list, attacked_list, params = [], [], []
        for param in drange(self.arg_min, self.arg_max, self.arg_step):
            for _ in range(self.num_attempts):
                pre, attacked = self._apply_attack(inputs, preproc, attack_kwargs, param)
                input_list.append(pre)
                attacked_list.append(attacked)
                params.append(param)
                if len(input_list) == ppe:
                    hit = self._evaluate_batch(input_list, expanded, ckw, target)
                    if hit is not None:
                        return attacked_list[hit], params[hit]
                    input_list, attacked_list, params = [], [], []
        if input_list:
            hit = self._evaluate_batch(input_list, _expand_args(args, len(input_list)), ckw, target)
            if hit is not None:
                return attacked_list[hit], params[hit]
        return None, None

    def _binary_search(self, inputs, preproc, attack_kwargs, args, ppe, ckw, target):
        lo, hi = self.arg_min, self.arg_max
        best, best_input = None, None
        expanded = _expand_args(args, ppe)
        while hi > lo:
            mid_step = (hi - lo) // self.arg_step // 2
            if mid_step == 0 and lo + self.arg_step < hi:
                mid_step = 1
            mid = lo + mid_step * self.arg_step
            input_list, attacked_list = [], []
            success = False
            for i in range(self.num_attempts):
                pre, attacked = self._apply_attack(inputs, preproc, attack_kwargs, mid)
                input_list.append(pre)
                attacked_list.append(attacked)
                if len(input_list) == ppe or i == self.num_attempts - 1:
                    a = expanded if len(input_list) == ppe else _expand_args(args, len(input_list))
                    hit = self._evaluate_batch(input_list, a, ckw, target)
                    if hit is not None:
                        success = True
                        hi = mid
                        if best is None or best > mid:
                            best, best_input = mid, attacked_list[hit]
                        break
                    input_list, attacked_list = [], []
            if math.isclose(lo, mid):
                break
            if not success:
                lo = mid
        return best_input, best

    def evaluate(
        self,
        inputs: Any,
        additional_forward_args: Any = None,
        target: Any = None,
        perturbations_per_eval: int = 1,
        attack_kwargs: dict[str, Any] | None = None,
        correct_fn_kwargs: dict[str, Any] | None = None,
    ) -> tuple[Any, float | None]:
        """Search the smallest ``arg_name`` value whose perturbation is misclassified.

        Args:
            inputs: Model input (N, ...) or a tuple of inputs.
            additional_forward_args: Extra positional model arguments.
            target: Passed to ``correct_fn`` (the true labels for the default).
            perturbations_per_eval: Perturbed batches per model call.
            attack_kwargs: Other keyword arguments of the attack.
            correct_fn_kwargs: Other keyword arguments of ``correct_fn``.

        Returns:
            ``(perturbed input, value)`` for the smallest value found, or
            ``(None, None)`` when every value leaves the prediction correct.
        """
        ppe = _core.check_positive_int(perturbations_per_eval, "perturbations_per_eval")
        args = _as_args(additional_forward_args)
        preproc = self.preproc_fn(inputs) if self.preproc_fn else inputs
        search = self._linear_search if self.mode == "linear" else self._binary_search
        return search(inputs, preproc, attack_kwargs, args, ppe, correct_fn_kwargs, target)
