"""Training-data influence: TracIn, similarity and influence functions (Captum ``influence``).

Which training examples made the model predict what it predicts? Every method here scores
pairs (test example, training example) from per-example gradients, which JAX computes as
one ``vmap(grad(loss))`` per batch instead of Captum's loop or hook tricks.

- :class:`TracInCP` (Pruthi et al., 2020): ``sum_c lr_c * <g_c(test), g_c(train)>`` over
  saved checkpoints ``c``, ``g`` the gradient of the loss with respect to the parameters.
- :class:`TracInCPFast`: the same, with the gradient of the last fully-connected layer's
  weight only, which factorises into ``<dL/dy, dL/dy'> * <h, h'>`` (no per-example
  parameter gradients at all).
- :class:`TracInCPFastRandProj`: :class:`TracInCPFast` with random projections of both
  factors, so that a training set is a matrix of small vectors.
- :class:`SimilarityInfluence`: cosine similarity or Euclidean distance of layer
  activations, top-k.
- :class:`NaiveInfluenceFunction` and :class:`ArnoldiInfluenceFunction` (Koh and Liang,
  2017): ``-g(test)^T H^-1 g(train)`` with the Hessian of the training loss, exactly
  (small models) or from its top eigenvectors found by Arnoldi iteration with
  Hessian-vector products.

Conventions (Captum's). A dataset is a tuple of arrays ``(x_1, ..., x_m, labels)`` whose
leaves lead with the number of examples N, split into batches of ``batch_size``; or any
re-iterable of such batch tuples (a list of batches, a ``torch.utils.data.DataLoader``:
torch tensors are converted). The model is called as ``model(params, x_1, ..., x_m)`` and
the last element of a batch is the labels, passed to ``loss_fn(outputs, labels)``.
``model`` is a pure function of a params pytree, or a structured model
(``jaxattr.bridge.from_torch``, the Flax adapters) whose ``params`` have the checkpoints'
structure; buffers (BatchNorm statistics) are never differentiated. ``loss_fn`` returns
per-example losses of shape (N,) or their sum; a loss that averages over the batch says
so with an attribute ``reduction = "mean"`` (as ``torch.nn`` losses do). Checkpoints are
a sequence of params pytrees (each may hold a ``"learning_rate"`` entry, Captum's
default loader) or anything ``checkpoints_load_func(checkpoint) -> (params,
learning_rate)`` understands.

Sharding. Every class takes ``mesh=`` (a ``jax.sharding.Mesh``): each batch of
per-example work is then padded to a multiple of the mesh size (its last example
repeated), split over the mesh's devices along the batch axis, run by the same jitted
programs, and cut back to its real examples before anything is summed, merged or
concatenated. ``mesh=None`` (the default) runs on the default device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxattr import _caching, _core
from jaxattr._progress import progress

PyTree = Any
Array = jax.Array

__all__ = [
    "ArnoldiInfluenceFunction",
    "KMostInfluentialResults",
    "NaiveInfluenceFunction",
    "SimilarityInfluence",
    "TracInCP",
    "TracInCPFast",
    "TracInCPFastRandProj",
    "cosine_similarity",
    "euclidean_distance",
]


class KMostInfluentialResults(NamedTuple):
    """The ``k`` most influential training examples of each test example.

    Attributes:
        indices: (N_test, k) int32, positions in the training dataset, most influential
            first (highest scores for proponents, lowest for opponents).
        influence_scores: (N_test, k), the matching influence scores.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.influence import KMostInfluentialResults
        >>> r = KMostInfluentialResults(jnp.array([[2, 0]]), jnp.array([[0.9, 0.4]]))
        >>> r.indices.tolist(), r.influence_scores.shape
        ([[2, 0]], (1, 2))
    """

    indices: Array
    influence_scores: Array


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


def _to_array(a: Any) -> Any:
    """A jax or NumPy array (torch tensors and lists become NumPy; slicing NumPy on the
    host compiles nothing)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
        a = a.detach().cpu().numpy()
    if isinstance(a, (jax.Array, np.ndarray)):
        return a
    return np.asarray(a)


def _is_arrays(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) > 0 and all(hasattr(a, "shape") for a in data)


class _Data:
    """A dataset seen as batches: a tuple of arrays split by ``batch_size``, or batches."""

    def __init__(self, data: Any, batch_size: int | None, name: str, *, labelled: bool):
        self.name = name
        self.labelled = labelled
        if hasattr(data, "shape") and not labelled:
            data = (data,)
        if _is_arrays(data):
            arrays = tuple(_to_array(a) for a in data)
            self._check_batch(arrays, "")
            self.arrays = arrays
            self.n = int(arrays[0].shape[0])
            self.batch_size = self.n if batch_size is None else batch_size
            self.batches = None
        elif isinstance(data, Iterator):
            raise TypeError(
                f"{name} must be re-iterable (a tuple of arrays, a list of batches, a "
                f"DataLoader), got the one-shot iterator {type(data).__name__}; pass "
                f"list({name}) instead"
            )
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
            self.arrays = None
            self.batches = data
            self.n = None
        else:
            what = "(x_1, ..., x_m, labels)" if labelled else "x or (x_1, ..., x_m)"
            raise TypeError(
                f"{name} must be a tuple of arrays {what} leading with N, or an iterable of "
                f"such batches, got {type(data).__name__}"
            )

    def _check_batch(self, batch: tuple, where: str) -> None:
        if self.labelled and len(batch) < 2:
            raise ValueError(
                f"{self.name}{where} must hold the model inputs and the labels last, "
                f"(x_1, ..., x_m, labels): expected at least 2 elements, got {len(batch)}"
            )
        sizes = {int(a.shape[0]) if getattr(a, "ndim", 0) else -1 for a in batch}
        if len(sizes) != 1 or -1 in sizes:
            shapes = [tuple(a.shape) for a in batch]
            raise ValueError(
                f"every array of {self.name}{where} must lead with the same number of "
                f"examples N, got shapes {shapes}"
            )

    def __len__(self) -> int:
        if self.arrays is not None:
            return max(1, math.ceil(self.n / self.batch_size))
        return len(self.batches)  # type: ignore[arg-type]

    def length(self) -> int | None:
        try:
            return len(self)
        except TypeError:
            return None

    def __iter__(self) -> Iterator[tuple]:
        if self.arrays is not None:
            for s in range(0, self.n, self.batch_size):
                yield tuple(a[s : s + self.batch_size] for a in self.arrays)
            return
        for i, batch in enumerate(self.batches):
            if hasattr(batch, "shape"):
                batch = (batch,)
            if isinstance(batch, list):
                batch = tuple(batch)
            if not isinstance(batch, tuple):
                raise TypeError(
                    f"{self.name} yielded a {type(batch).__name__} as batch {i}; expected a "
                    f"tuple of arrays"
                )
            batch = tuple(_to_array(a) for a in batch)
            self._check_batch(batch, f" (batch {i})")
            yield batch


def _zeros(shape: tuple) -> Array:
    """An accumulator on the device (placed, not computed: no program compiled; the
    same kind of argument as a compiled program's output, so one program serves both)."""
    return jax.device_put(np.zeros(shape, np.float32))


def _split(batch: tuple) -> tuple[tuple, Array]:
    return batch[:-1], batch[-1]


def _pad_rows(a: Any, n: int, size: int) -> Any:
    """Repeat the last row of ``a`` (leading dim ``n``) up to ``size`` rows (NumPy on the
    host, a jax array where it is)."""
    if size == n or n == 0:
        return a
    xp = jnp if isinstance(a, jax.Array) else np
    return xp.concatenate([a, xp.repeat(a[-1:], size - n, axis=0)], axis=0)


def _trim(a: Any, n: int, axis: int = 0) -> Any:
    """The first ``n`` rows (``axis=0``) or columns (``axis=1``) of ``a``: the padding of
    :meth:`_Placement.put` dropped (``a`` itself when there is none)."""
    if a.shape[axis] == n:
        return a
    return jax.lax.slice_in_dim(a, 0, n, axis=axis)


class _Placement:
    """Where a batch of per-example work runs (the ``mesh`` option).

    ``mesh=None``: the batch as given, on the default device (nothing added). A mesh: the
    batch is padded to a multiple of the mesh size by repeating its last example and
    placed with its batch axis split over all the mesh's devices
    (``NamedSharding(mesh, PartitionSpec(mesh.axis_names))``, as
    :func:`jaxattr.attribute_dataset`); the jitted programs are partitioned by jit, and
    the callers drop the padded rows (:func:`_trim`) before any reduction, top-k merge
    or concatenation.
    """

    def __init__(self, mesh: Any):
        if mesh is not None and not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}")
        self.mesh = mesh
        if mesh is not None:
            axes = tuple(mesh.axis_names)
            self.rows = NamedSharding(mesh, PartitionSpec(axes))
            self.cols = NamedSharding(mesh, PartitionSpec(None, axes))
            self.multiple = int(mesh.devices.size)

    def put(self, batch: tuple) -> tuple[tuple, int]:
        """``(placed batch, n)``: ``n`` the examples before padding."""
        n = int(batch[0].shape[0])
        if self.mesh is None:
            return batch, n
        size = -(-n // self.multiple) * self.multiple
        return tuple(jax.device_put(_pad_rows(a, n, size), self.rows) for a in batch), n

    def zeros(self, shape: tuple, axis: int = 0) -> Array:
        """An accumulator whose ``axis`` is the (padded) batch axis of :meth:`put`."""
        if self.mesh is None:
            return _zeros(shape)
        return jax.device_put(np.zeros(shape, np.float32), self.rows if axis == 0 else self.cols)


# --------------------------------------------------------------------------------------
# Models, parameters and checkpoints
# --------------------------------------------------------------------------------------


def _is_structured(model: Any) -> bool:
    return hasattr(model, "apply") and hasattr(model, "layers") and hasattr(model, "params")


class _Apply:
    """``fn(params, *inputs)`` of a structured model: its graph without its weights (the
    pytree's placeholder), equal for models of one structure, so that compiled programs
    are shared and no cache keeps a model's weights."""

    def __init__(self, model: Any):
        part, _ = _caching.partition(model)
        self.part = part if _caching.is_hashable(part) else None
        self.model = part.placeholder() if self.part is not None else model

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Apply):
            return False
        if self.part is None or other.part is None:
            return self.model is other.model
        return self.part == other.part

    def __hash__(self) -> int:
        return hash(self.part) if self.part is not None else id(self.model)

    def __call__(self, params: Any, *inputs: Any) -> Any:
        return self.model.apply(params, *inputs)


def _model_fn(model: Any, name: str = "model") -> Callable[..., Any]:
    if _is_structured(model):
        return _Apply(model)
    if not callable(model):
        raise TypeError(
            f"{name} must be a function model(params, *inputs) or a structured model "
            f"(jaxattr.bridge.from_torch, jaxattr.flax), got {type(model).__name__}"
        )
    return model


def _leaf_names(params: PyTree) -> list[str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    names = []
    for path, _ in flat:
        parts = []
        for k in path:
            if isinstance(k, jax.tree_util.DictKey):
                parts.append(str(k.key))
            elif isinstance(k, jax.tree_util.GetAttrKey):
                parts.append(k.name)
            elif isinstance(k, jax.tree_util.SequenceKey):
                parts.append(str(k.idx))
            else:
                parts.append(str(getattr(k, "key", k)))
        names.append(".".join(parts))
    return names


def _param_mask(model: Any, params: PyTree, layers: Sequence[str] | None) -> tuple[bool, ...]:
    """Which leaves of ``params`` are differentiated: trained float parameters, of
    ``layers`` when given (a layer's parameters, or every leaf under a name prefix)."""
    names = _leaf_names(params)
    leaves = jax.tree_util.tree_leaves(params)
    buffers = set(getattr(model, "buffer_names", ()) or ())
    ok = [
        n not in buffers and hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)
        for n, a in zip(names, leaves, strict=True)
    ]
    if layers is None:
        mask = ok
    else:
        if isinstance(layers, str) or not all(isinstance(s, str) for s in layers):
            raise TypeError(f"layers must be a list of layer names, got {layers!r}")
        if not layers:
            raise ValueError("layers must name at least one layer, got an empty list")
        mask = [False] * len(names)
        for layer in layers:
            keys: set[str] = set()
            table = getattr(model, "layers", None)
            if isinstance(table, Mapping) and layer in table:
                keys = set(getattr(table[layer], "param_names", {}).values())
            hit = [
                i
                for i, n in enumerate(names)
                if ok[i]
                and (
                    n in keys
                    or any(n.endswith("." + k) for k in keys)  # Flax: "params.fc.kernel"
                    or n == layer
                    or n.startswith(layer + ".")
                )
            ]
            if not hit:
                shown = ", ".join(repr(n) for n in names[:12]) + (
                    ", ..." if len(names) > 12 else ""
                )
                raise ValueError(
                    f"layers: {layer!r} owns no trainable parameters; parameters are {shown}"
                )
            for i in hit:
                mask[i] = True
    if not any(mask):
        raise ValueError("the model has no trainable floating-point parameters to differentiate")
    return tuple(mask)


def _check_structure(params: PyTree, mask: tuple[bool, ...]) -> None:
    n = len(jax.tree_util.tree_leaves(params))
    if n != len(mask):
        raise ValueError(
            f"checkpoint params have {n} leaves, expected {len(mask)} (the structure of "
            f"the first checkpoint)"
        )


def _default_load(checkpoint: Any) -> tuple[PyTree, float]:
    """Captum's ``_load_flexible_state_dict``: a ``"learning_rate"`` entry, default 1."""
    if isinstance(checkpoint, Mapping) and "learning_rate" in checkpoint:
        params = {k: v for k, v in checkpoint.items() if k != "learning_rate"}
        return params, float(checkpoint["learning_rate"])
    return checkpoint, 1.0


class _Checkpoints:
    """Checkpoints loaded on use (a custom loader) or once (params pytrees)."""

    def __init__(self, checkpoints: Any, load: Callable[[Any], Any] | None):
        if isinstance(checkpoints, (str, bytes)) or not isinstance(checkpoints, Iterable):
            raise TypeError(
                f"checkpoints must be a sequence of params pytrees (or of items for "
                f"checkpoints_load_func), got {type(checkpoints).__name__}"
            )
        items = list(checkpoints)
        if not items:
            raise ValueError("checkpoints must hold at least one checkpoint, got none")
        if load is not None and not callable(load):
            raise TypeError(f"checkpoints_load_func must be callable, got {type(load).__name__}")
        self.items = items
        self.load_func = load
        self._cache: list | None = None
        if load is None:
            self._cache = [self._load(c) for c in items]

    def _load(self, item: Any) -> tuple[PyTree, float]:
        out = (self.load_func or _default_load)(item)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                f"checkpoints_load_func must return (params, learning_rate), got "
                f"{type(out).__name__}"
            )
        params, lr = out
        # on the device once (placed, not computed), not copied again at every call
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(_to_array(a)), params)
        return params, float(lr)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[PyTree, float]]:
        if self._cache is not None:
            yield from self._cache
        else:
            for item in self.items:
                yield self._load(item)

    def first(self) -> tuple[PyTree, float]:
        return self._cache[0] if self._cache is not None else self._load(self.items[0])

    def lists(self) -> tuple[list, list]:
        """All checkpoints' params and their learning rates (NumPy float32 scalars: traced
        arguments, so that other rates do not recompile)."""
        loaded = list(self)
        return [p for p, _ in loaded], [np.float32(lr) for _, lr in loaded]


def _reduction(loss_fn: Any, name: str) -> str:
    """``"mean"`` when the loss says it averages over the batch, else ``"sum"``."""
    reduction = getattr(loss_fn, "reduction", None)
    if reduction is None or reduction in ("none", "sum"):
        return "sum"
    if reduction == "mean":
        return "mean"
    raise ValueError(f"{name}.reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def _check_k(k: Any) -> int:
    return _core.check_positive_int(k, "k")


def _top_k_merge(best: tuple | None, scores: Any, offset: int, k: int, proponents: bool):
    """Keep the ``k`` highest (proponents) or lowest scores seen so far, per row (on the
    host: a handful of values per test example, and no program compiled per shape)."""
    s = np.asarray(scores)
    s = s if proponents else -s
    idx = np.broadcast_to(np.arange(offset, offset + s.shape[1], dtype=np.int32), s.shape)
    if best is not None:
        s = np.concatenate([best[0], s], axis=1)
        idx = np.concatenate([best[1], idx], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _finish_top_k(best: tuple, proponents: bool) -> KMostInfluentialResults:
    vals, idx = best
    return KMostInfluentialResults(jnp.asarray(idx), jnp.asarray(vals if proponents else -vals))


# --------------------------------------------------------------------------------------
# TracInCP
# --------------------------------------------------------------------------------------


def _shared(fn: Any) -> bool:
    """Programs are shared (cached) only for a structured model's weight-free
    :class:`_Apply`, keyed by structure; a plain function's belong to the instance, since
    a cache keyed by the user's function would keep it, and any weights it closes over,
    alive."""
    return isinstance(fn, _Apply) and fn.part is not None


@_caching.lru(16)
def _per_example_shared(fn: _Apply, loss_fn: Any, mask: tuple) -> _PerExample:
    return _PerExample(fn, loss_fn, mask)


def _per_example(fn: Any, loss_fn: Any, mask: tuple) -> _PerExample:
    return (_per_example_shared if _shared(fn) else _PerExample)(fn, loss_fn, mask)


class _PerExample:
    """Compiled programs over per-example gradients of ``loss_fn(model(params, *x), y)``.

    Shared by instances with the same model, loss and differentiated leaves. A program
    takes one checkpoint's params and learning rate as arguments (new checkpoints never
    recompile; one program serves any number of checkpoints) and adds its contribution
    to an accumulator, so a batch needs no other operation.
    """

    def __init__(self, fn: Callable[..., Any], loss_fn: Any, mask: tuple[bool, ...]):
        def grads(params, xs, y):
            leaves, treedef = jax.tree_util.tree_flatten(params)
            sel = [a for a, m in zip(leaves, mask, strict=True) if m]

            def example_loss(sel_, x1, y1):
                it = iter(sel_)
                p = jax.tree_util.tree_unflatten(
                    treedef,
                    [
                        next(it) if m else jax.lax.stop_gradient(a)
                        for a, m in zip(leaves, mask, strict=True)
                    ],
                )
                out = fn(p, *[a[None] for a in x1])
                loss = out if loss_fn is None else loss_fn(out, y1[None])
                return jnp.sum(loss)

            return jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(sel, xs, y)

        def flat(params, xs, y):
            return jnp.concatenate([g.reshape(g.shape[0], -1) for g in grads(params, xs, y)], 1)

        def self_influence(acc, params, lr, xs, y):
            g = grads(params, xs, y)
            return acc + lr * sum(jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), 1) for a in g)

        def scores(acc, test, params, lr, xs, y):
            return acc + lr * (test @ flat(params, xs, y).T)

        def project(params, r, xs, y):
            return flat(params, xs, y) @ r

        self.flat = _caching.jit(flat)
        self.self_influence = _caching.jit(self_influence)
        self.scores = _caching.jit(scores)
        self.project = _caching.jit(project)


class TracInCP:
    """TracIn with checkpoints (Pruthi et al., 2020), Captum's ``TracInCP``.

    The influence of training example ``z`` on test example ``z'`` is
    ``sum_c lr_c * <grad_p L(z; p_c), grad_p L(z'; p_c)>`` over the checkpoints ``p_c``
    (with their learning rates ``lr_c``), the gradients taken with respect to every
    trained parameter, or those of ``layers``. Per-example gradients are one
    ``vmap(grad)`` per batch; each checkpoint's parameters are arguments of the compiled
    program, so the checkpoints share one compilation.

    Args:
        model: ``model(params, *inputs) -> outputs`` (batch-first), or a structured model
            (``jaxattr.bridge.from_torch``); its buffers are not differentiated.
        train_dataset: ``(x_1, ..., x_m, labels)`` arrays leading with N_train, or a
            re-iterable of such batches (see the module docs).
        checkpoints: Sequence of params pytrees (a ``"learning_rate"`` entry is read and
            removed), or items ``checkpoints_load_func`` loads.
        checkpoints_load_func: ``load(checkpoint) -> (params, learning_rate)``; called
            each time a checkpoint is used (Captum loads lazily too). Default: the
            checkpoint is the params, learning rate 1 (or its ``"learning_rate"``).
        layers: Names of the layers whose parameters count (a structured model's layer
            names, or name prefixes of the params pytree such as ``"fc"`` for
            ``params["fc"]["w"]``); default: all trained parameters.
        loss_fn: ``loss_fn(outputs, labels)`` -> per-example losses (N,) or their sum
            (a ``reduction = "mean"`` attribute marks a batch mean). ``None``: the model
            output itself, summed per example, is the loss (Captum's default).
        batch_size: Examples per batch when a dataset is given as arrays (Captum's
            default is 1; results do not depend on it).
        test_loss_fn: Loss for the test examples (default ``loss_fn``), e.g. one logit.
        sample_wise_grads_per_batch: Accepted for Captum compatibility; per-example
            gradients are always computed by ``vmap``.
        mesh: A ``jax.sharding.Mesh`` to split every batch of per-example work over
            (training and test batches): each batch is padded to a multiple of the mesh
            size by repeating its last example, placed with its batch axis split over
            all the mesh's devices, and the padded examples are dropped before any sum,
            top-k merge or concatenation, so results equal ``mesh=None`` (the default:
            the default device, no padding). See docs/influence.md, "Sharding over
            devices".

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.influence import TracInCP
        >>> model = lambda p, x: x @ p["w"]
        >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]); y = jnp.array([1.0, 0.0, 1.0])
        >>> loss = lambda out, y: 0.5 * (out[:, 0] - y) ** 2
        >>> ckpts = [{"w": jnp.zeros((2, 1))}, {"w": jnp.ones((2, 1))}]
        >>> tracin = TracInCP(model, (x, y), ckpts, loss_fn=loss, batch_size=2)
        >>> tracin.self_influence()          # (N_train,)
        Array([ 1., 16.,  4.], dtype=float32)
        >>> tracin.influence((x[:1], y[:1])).shape     # (N_test, N_train)
        (1, 3)
    """

    def __init__(
        self,
        model: Any,
        train_dataset: Any,
        checkpoints: Sequence[Any],
        checkpoints_load_func: Callable[[Any], tuple[PyTree, float]] | None = None,
        layers: Sequence[str] | None = None,
        loss_fn: Callable[..., Array] | None = None,
        batch_size: int = 64,
        test_loss_fn: Callable[..., Array] | None = None,
        sample_wise_grads_per_batch: bool = False,
        *,
        mesh: Mesh | None = None,
    ) -> None:
        self._placement = _Placement(mesh)
        self.mesh = mesh
        self.model = model
        self.fn = _model_fn(model)
        self.batch_size = _core.check_positive_int(batch_size, "batch_size")
        self.train_dataset = _Data(train_dataset, self.batch_size, "train_dataset", labelled=True)
        self.checkpoints = _Checkpoints(checkpoints, checkpoints_load_func)
        for name, f in (("loss_fn", loss_fn), ("test_loss_fn", test_loss_fn)):
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable or None, got {type(f).__name__}")
        self.loss_fn = loss_fn
        self.test_loss_fn = loss_fn if test_loss_fn is None else test_loss_fn
        self.layers = None if layers is None else list(layers)
        self.sample_wise_grads_per_batch = sample_wise_grads_per_batch
        params0, _ = self.checkpoints.first()
        self.mask = _param_mask(model, params0, self.layers)
        self._train = _per_example(self.fn, self.loss_fn, self.mask)
        self._test = (
            self._train
            if self.test_loss_fn is self.loss_fn
            else _per_example(self.fn, self.test_loss_fn, self.mask)
        )

    @classmethod
    def get_name(cls) -> str:
        """The class name (used in progress bars)."""
        return cls.__name__

    def _inputs(self, inputs: Any, name: str = "inputs") -> _Data:
        if inputs is None:
            raise ValueError(
                f"{name} is required: a batch (x_1, ..., x_m, labels) or batches of test "
                f"examples; self_influence() computes self influence"
            )
        return _Data(inputs, self.batch_size, name, labelled=True)

    def _ckpts(self) -> tuple[list, list]:
        params, lrs = self.checkpoints.lists()
        for p in params:
            _check_structure(p, self.mask)
        return params, lrs

    def _test_vectors(self, data: _Data, params: list, aggregate: bool) -> list[Array]:
        """Per checkpoint, the (N_test, P) test gradients or their (1, P) sum."""
        out = []
        put = self._placement.put
        for p in params:
            parts = []
            for b in data:
                b, n = put(b)
                parts.append(_trim(self._test.flat(p, *_split(b)), n))
            g = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
            out.append(jnp.sum(g, axis=0, keepdims=True) if aggregate else g)
        return out

    def self_influence(
        self,
        inputs: Any = None,
        show_progress: bool = False,
        outer_loop_by_checkpoints: bool = False,
    ) -> Array:
        """Self influence ``sum_c lr_c * ||grad L(z; p_c)||^2`` of each example.

        Args:
            inputs: Examples ``(x_1, ..., x_m, labels)`` or batches of them; default the
                training dataset.
            show_progress: Show a progress bar over the batches.
            outer_loop_by_checkpoints: Loop over checkpoints outside the batches (loads
                each checkpoint once, with a custom loader); same result.

        Returns:
            (N,) self-influence scores.
        """
        data = self.train_dataset if inputs is None else self._inputs(inputs)
        desc = f"{self.get_name()} self influence"
        params, lrs = self._ckpts()

        def batch_scores(b, ps, ls):
            b, n = self._placement.put(b)
            xs, y = _split(b)
            acc = self._placement.zeros((y.shape[0],))
            for p, lr in zip(ps, ls, strict=True):
                acc = self._train.self_influence(acc, p, lr, xs, y)
            return _trim(acc, n)

        # the outer loop over checkpoints loads each checkpoint once (a custom loader)
        groups = (
            [([p], [lr]) for p, lr in zip(params, lrs, strict=True)]
            if outer_loop_by_checkpoints
            else [(params, lrs)]
        )
        total = None
        for ps, ls in groups:
            out = []
            for b in progress(data, total=data.length(), desc=desc, enabled=show_progress):
                out.append(batch_scores(b, ps, ls))
                if show_progress:
                    jax.block_until_ready(out[-1])
            part = out[0] if len(out) == 1 else jnp.concatenate(out)
            total = part if total is None else total + part
        return total

    def influence(
        self,
        inputs: Any,
        k: int | None = None,
        proponents: bool = True,
        show_progress: bool = False,
        aggregate: bool = False,
    ) -> Array | KMostInfluentialResults:
        """Influence of every training example on each test example, or the top ``k``.

        Args:
            inputs: Test examples ``(x_1, ..., x_m, labels)`` or batches of them.
            k: ``None`` for all scores; an int for the ``k`` proponents (or opponents).
            proponents: Highest scores (``True``) or lowest (opponents).
            show_progress: Show a progress bar over the training batches.
            aggregate: Sum the test examples' gradients first: one row, the influence
                on the total test loss.

        Returns:
            (N_test, N_train) scores ((1, N_train) with ``aggregate``), or a
            :class:`KMostInfluentialResults` of (N_test, k) arrays.
        """
        data = self._inputs(inputs)
        if k is not None:
            k = _check_k(k)
        params, lrs = self._ckpts()
        tests = self._test_vectors(data, params, aggregate)
        desc = f"{self.get_name()} influence"
        rows, best, offset = [], None, 0
        batches = progress(
            self.train_dataset, total=self.train_dataset.length(), desc=desc, enabled=show_progress
        )
        for b in batches:
            b, n = self._placement.put(b)
            xs, y = _split(b)
            s = self._placement.zeros((tests[0].shape[0], y.shape[0]), axis=1)
            for t, p, lr in zip(tests, params, lrs, strict=True):
                s = self._train.scores(s, t, p, lr, xs, y)
            s = _trim(s, n, axis=1)
            if k is None:
                rows.append(s)
                if show_progress:
                    jax.block_until_ready(s)
            else:
                best = _top_k_merge(best, s, offset, k, proponents)
            offset += n
        if k is None:
            return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=1)
        return _finish_top_k(best, proponents)

    def compute_intermediate_quantities(self, inputs: Any, aggregate: bool = False) -> Array:
        """The vectors whose dot products are influence scores (up to ``lr``, as Captum).

        Row ``i`` concatenates ``lr_c * grad L(z_i; p_c)`` over the checkpoints (the
        parameters in pytree leaf order, which may differ from torch's
        ``model.parameters()`` order; dot products do not). Note that Captum scales by
        ``lr_c``, not ``sqrt(lr_c)``: the dot products equal the influence scores only
        when every learning rate is 1.

        Args:
            inputs: Examples ``(x_1, ..., x_m, labels)`` or batches of them.
            aggregate: Sum over the examples (one row).

        Returns:
            (N, C * P) (or (1, C * P)) for C checkpoints and P differentiated parameters.
        """
        data = self._inputs(inputs)
        params, lrs = self._ckpts()
        parts = []
        put = self._placement.put
        for p, lr in zip(params, lrs, strict=True):
            g = []
            for b in data:
                b, n = put(b)
                g.append(_trim(self._train.flat(p, *_split(b)), n))
            g = g[0] if len(g) == 1 else jnp.concatenate(g)
            parts.append(lr * (jnp.sum(g, axis=0, keepdims=True) if aggregate else g))
        return jnp.concatenate(parts, axis=1)


# --------------------------------------------------------------------------------------
# TracInCPFast and TracInCPFastRandProj
# --------------------------------------------------------------------------------------


@_caching.lru(16)
def _last_layer_shared(fn: _Apply, final_fc_layer: Any, loss_fn: Any) -> _LastLayer:
    return _LastLayer(fn, final_fc_layer, loss_fn)


def _last_layer(fn: Any, final_fc_layer: Any, loss_fn: Any) -> _LastLayer:
    shared = _shared(fn) and isinstance(final_fc_layer, str)  # not a user feature function
    return (_last_layer_shared if shared else _LastLayer)(fn, final_fc_layer, loss_fn)


class _LastLayer:
    """Compiled ``(dL/dy, h)``: the loss gradient w.r.t. the output and the input of the
    final fully-connected layer (whose output must be the model's output)."""

    def __init__(self, fn: Callable[..., Any], final_fc_layer: Any, loss_fn: Any):
        reduction = _reduction(loss_fn, "loss_fn")
        if isinstance(final_fc_layer, str):
            from jaxattr import _taps

            if not isinstance(fn, _Apply):
                raise TypeError(
                    f"final_fc_layer={final_fc_layer!r} names a layer, which needs a "
                    f"structured model (jaxattr.bridge.from_torch, jaxattr.flax); for a "
                    f"function model pass final_fc_layer=features(params, *inputs) -> (N, D)"
                )
            model = fn.model
            tap = _taps.resolve_single(model, final_fc_layer, to_input=True)

            def forward(params, xs):
                inputs = _core.Inputs(is_tuple=True, n=xs[0].shape[0])
                y, acts = _taps.run_tapped(model, params, inputs, tuple(xs), (), {}, [tap])
                return y, acts[tap.key]

        elif callable(final_fc_layer):

            def forward(params, xs):
                return fn(params, *xs), final_fc_layer(params, *xs)

        else:
            raise TypeError(
                f"final_fc_layer must be a layer name or a function features(params, "
                f"*inputs) -> (N, D), got {type(final_fc_layer).__name__}"
            )

        def run(params, xs, y):
            out, h = forward(params, xs)
            if out.ndim != 2:
                raise ValueError(
                    f"TracInCPFast needs a 2-D model output (N, C) from the final "
                    f"fully-connected layer, got shape {tuple(out.shape)}"
                )
            jac = jax.grad(lambda o: jnp.sum(loss_fn(o, y)))(out)
            if reduction == "mean":
                jac = jac * out.shape[0]
            return jac, h.reshape(h.shape[0], -1)

        def self_influence(acc, params, lr, xs, y):
            jac, h = run(params, xs, y)
            return acc + lr * jnp.sum(jac * jac, 1) * jnp.sum(h * h, 1)

        def scores(acc, jt, ht, params, lr, xs, y):
            jac, h = run(params, xs, y)
            return acc + lr * (jt @ jac.T) * (ht @ h.T)

        def vectors(params, lr, proj, xs, y):
            jac, h = run(params, xs, y)
            if proj is not None:
                jac, h = jac @ proj[0], h @ proj[1]
            return (jac[:, :, None] * h[:, None, :]).reshape(jac.shape[0], -1) * jnp.sqrt(lr)

        self.run = _caching.jit(run)
        self.self_influence = _caching.jit(self_influence)
        self.scores = _caching.jit(scores)
        self.vectors = _caching.jit(vectors)


class TracInCPFast:
    """TracIn on the last fully-connected layer only, Captum's ``TracInCPFast``.

    For a final layer ``y = W h + b`` the gradient of the loss with respect to ``W`` is
    the outer product ``dL/dy h^T``, so the TracIn score factorises:
    ``sum_c lr_c * <dL/dy, dL/dy'> * <h, h'>``. No per-example parameter gradient is
    formed (and, as in Captum, the bias gradient is left out).

    Args:
        model: ``model(params, *inputs) -> (N, C)`` or a structured model. Its output must
            be the output of ``final_fc_layer``.
        final_fc_layer: The final layer's name (structured model), or a function
            ``features(params, *inputs) -> (N, D)`` returning that layer's input.
        train_dataset: ``(x_1, ..., x_m, labels)`` arrays or batches (module docs).
        checkpoints: Params pytrees, or items for ``checkpoints_load_func``.
        checkpoints_load_func: ``load(checkpoint) -> (params, learning_rate)``.
        loss_fn: ``loss_fn(outputs, labels)``: per-example losses or their sum (required).
        batch_size: Examples per batch for array datasets.
        test_loss_fn: Loss for test examples (default ``loss_fn``).
        vectorize: Accepted for Captum compatibility (no effect).
        mesh: Split every batch (training and test) over this ``jax.sharding.Mesh``,
            as :class:`TracInCP`'s ``mesh``; ``None``: the default device.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.influence import TracInCPFast
        >>> feats = lambda p, x: jnp.tanh(x @ p["v"])
        >>> model = lambda p, x: feats(p, x) @ p["w"]
        >>> p = {"v": jnp.eye(2), "w": jnp.ones((2, 2))}
        >>> loss = lambda out, y: -jnp.take_along_axis(out, y[:, None], 1)[:, 0]
        >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([0, 1])
        >>> scores = TracInCPFast(model, feats, (x, y), [p], loss_fn=loss).self_influence()
        >>> [round(float(s), 3) for s in scores]        # (N_train,)
        [0.58, 0.58]
    """

    def __init__(
        self,
        model: Any,
        final_fc_layer: str | Callable[..., Array],
        train_dataset: Any,
        checkpoints: Sequence[Any],
        checkpoints_load_func: Callable[[Any], tuple[PyTree, float]] | None = None,
        loss_fn: Callable[..., Array] | None = None,
        batch_size: int = 64,
        test_loss_fn: Callable[..., Array] | None = None,
        vectorize: bool = False,
        *,
        mesh: Mesh | None = None,
    ) -> None:
        self._placement = _Placement(mesh)
        self.mesh = mesh
        if loss_fn is None or not callable(loss_fn):
            raise TypeError(
                f"loss_fn is required: loss_fn(outputs, labels) -> per-example losses, got "
                f"{loss_fn!r}"
            )
        if test_loss_fn is not None and not callable(test_loss_fn):
            raise TypeError(f"test_loss_fn must be callable, got {type(test_loss_fn).__name__}")
        self.model = model
        self.fn = _model_fn(model)
        self.final_fc_layer = final_fc_layer
        self.batch_size = _core.check_positive_int(batch_size, "batch_size")
        self.train_dataset = _Data(train_dataset, self.batch_size, "train_dataset", labelled=True)
        self.checkpoints = _Checkpoints(checkpoints, checkpoints_load_func)
        self.loss_fn = loss_fn
        self.test_loss_fn = loss_fn if test_loss_fn is None else test_loss_fn
        self.vectorize = vectorize
        self._train = _last_layer(self.fn, final_fc_layer, loss_fn)
        self._test = (
            self._train
            if self.test_loss_fn is loss_fn
            else _last_layer(self.fn, final_fc_layer, self.test_loss_fn)
        )

    get_name = TracInCP.get_name
    _inputs = TracInCP._inputs

    def _factors(self, data: _Data, params: list) -> list[tuple[Array, Array]]:
        """Per checkpoint: (N, outputs) test loss gradients and (N, D) layer inputs."""
        out = []
        put = self._placement.put
        for p in params:
            parts = []
            for b in data:
                b, n = put(b)
                parts.append(tuple(_trim(a, n) for a in self._test.run(p, *_split(b))))
            if len(parts) == 1:
                out.append(parts[0])
            else:
                out.append(tuple(jnp.concatenate(z) for z in zip(*parts, strict=True)))
        return out

    def self_influence(
        self,
        inputs: Any = None,
        show_progress: bool = False,
        outer_loop_by_checkpoints: bool = False,
    ) -> Array:
        """Self influence ``sum_c lr_c * ||dL/dy||^2 * ||h||^2`` of each example.

        Args:
            inputs: Examples ``(x_1, ..., x_m, labels)`` or batches; default the training
                dataset.
            show_progress: Show a progress bar over the batches.
            outer_loop_by_checkpoints: Accepted for Captum compatibility (same result).

        Returns:
            (N,) self-influence scores.
        """
        data = self.train_dataset if inputs is None else self._inputs(inputs)
        params, lrs = self.checkpoints.lists()
        out = []
        desc = f"{self.get_name()} self influence"
        for b in progress(data, total=data.length(), desc=desc, enabled=show_progress):
            b, n = self._placement.put(b)
            xs, y = _split(b)
            acc = self._placement.zeros((y.shape[0],))
            for p, lr in zip(params, lrs, strict=True):
                acc = self._train.self_influence(acc, p, lr, xs, y)
            acc = _trim(acc, n)
            out.append(acc)
            if show_progress:
                jax.block_until_ready(acc)
        return out[0] if len(out) == 1 else jnp.concatenate(out)

    def influence(
        self,
        inputs: Any,
        k: int | None = None,
        proponents: bool = True,
        show_progress: bool = False,
    ) -> Array | KMostInfluentialResults:
        """Influence scores (N_test, N_train), or the top ``k`` proponents/opponents.

        Args:
            inputs: Test examples ``(x_1, ..., x_m, labels)`` or batches.
            k: ``None`` for all scores, else the number of proponents/opponents.
            proponents: Highest (``True``) or lowest scores.
            show_progress: Show a progress bar over the training batches.

        Returns:
            (N_test, N_train) scores or a :class:`KMostInfluentialResults`.
        """
        data = self._inputs(inputs)
        if k is not None:
            k = _check_k(k)
        params, lrs = self.checkpoints.lists()
        tests = self._factors(data, params)
        rows, best, offset = [], None, 0
        desc = f"{self.get_name()} influence"
        batches = progress(
            self.train_dataset, total=self.train_dataset.length(), desc=desc, enabled=show_progress
        )
        for b in batches:
            b, n = self._placement.put(b)
            xs, y = _split(b)
            s = self._placement.zeros((tests[0][0].shape[0], y.shape[0]), axis=1)
            for (jt, ht), p, lr in zip(tests, params, lrs, strict=True):
                s = self._train.scores(s, jt, ht, p, lr, xs, y)
            s = _trim(s, n, axis=1)
            if k is None:
                rows.append(s)
                if show_progress:
                    jax.block_until_ready(s)
            else:
                best = _top_k_merge(best, s, offset, k, proponents)
            offset += n
        if k is None:
            return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=1)
        return _finish_top_k(best, proponents)


class _ExactNeighbors:
    """Exact maximum-inner-product search (the default ``nearest_neighbors``)."""

    def setup(self, data: Array) -> None:
        self.data = jnp.asarray(data)

    def get_nearest_neighbors(self, query: Array, k: int) -> tuple[Array, Array]:
        scores = jnp.asarray(query) @ self.data.T
        vals, idx = jax.lax.top_k(scores, min(k, scores.shape[1]))
        return idx.astype(jnp.int32), vals


class TracInCPFastRandProj(TracInCPFast):
    """:class:`TracInCPFast` with random projections, Captum's ``TracInCPFastRandProj``.

    Each example becomes one vector, the concatenation over checkpoints of
    ``sqrt(lr_c) * vec((dL/dy P_1)^T (h P_2))``, so influence scores are dot products of
    stored training vectors with test vectors, and proponents a nearest-neighbour query.
    When ``projection_dim`` is given and ``C * D > projection_dim`` (C outputs, D layer
    inputs), ``P_1`` (C x min(sqrt(projection_dim), C)) and ``P_2`` (D x
    min(sqrt(projection_dim), D)) are Gaussian with variance ``1 / columns``, drawn from
    ``jax.random.key(seed)``, or injected with ``projection_quantities``.

    Args:
        model: As :class:`TracInCPFast`.
        final_fc_layer: As :class:`TracInCPFast`.
        train_dataset: As :class:`TracInCPFast`; its vectors are computed here, once.
        checkpoints: As :class:`TracInCPFast`.
        checkpoints_load_func: As :class:`TracInCPFast`.
        loss_fn: As :class:`TracInCPFast`.
        batch_size: As :class:`TracInCPFast`.
        test_loss_fn: Loss for test examples. Unlike Captum (which uses ``test_loss_fn``
            for the training vectors too), the training vectors use ``loss_fn``.
        vectorize: Accepted for Captum compatibility.
        nearest_neighbors: An object with ``setup(train_vectors)`` and
            ``get_nearest_neighbors(query, k) -> (indices, scores)``; default exact
            inner-product search (Captum's default is the approximate Annoy index).
        projection_dim: Target size of the projected gradient; ``None``: no projection.
        seed: Seed of the projections.
        projection_quantities: ``(P_1, P_2)`` to use instead of drawing them (e.g.
            Captum's ``projection_quantities`` for a like-for-like comparison).
        mesh: Split every batch (the training vectors computed here, the test vectors
            of :meth:`influence`) over this ``jax.sharding.Mesh``, as :class:`TracInCP`'s
            ``mesh``; the stored training vectors are the unpadded rows. The
            neighbour search runs on the stored vectors as they are.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.influence import TracInCPFastRandProj
        >>> feats = lambda p, x: jnp.tanh(x @ p["v"])
        >>> model = lambda p, x: feats(p, x) @ p["w"]
        >>> p = {"v": jnp.ones((3, 4)), "w": jnp.ones((4, 2))}
        >>> loss = lambda out, y: -jnp.take_along_axis(out, y[:, None], 1)[:, 0]
        >>> x, y = jnp.eye(3), jnp.array([0, 1, 0])
        >>> tracin = TracInCPFastRandProj(model, feats, (x, y), [p], loss_fn=loss,
        ...                               projection_dim=4)
        >>> tracin.influence((x[:1], y[:1]), k=2).indices.shape
        (1, 2)
    """

    def __init__(
        self,
        model: Any,
        final_fc_layer: str | Callable[..., Array],
        train_dataset: Any,
        checkpoints: Sequence[Any],
        checkpoints_load_func: Callable[[Any], tuple[PyTree, float]] | None = None,
        loss_fn: Callable[..., Array] | None = None,
        batch_size: int = 64,
        test_loss_fn: Callable[..., Array] | None = None,
        vectorize: bool = False,
        nearest_neighbors: Any = None,
        projection_dim: int | None = None,
        seed: int = 0,
        projection_quantities: tuple[Array, Array] | None = None,
        *,
        mesh: Mesh | None = None,
    ) -> None:
        super().__init__(
            model,
            final_fc_layer,
            train_dataset,
            checkpoints,
            checkpoints_load_func,
            loss_fn,
            batch_size,
            test_loss_fn,
            vectorize,
            mesh=mesh,
        )
        if projection_dim is not None:
            projection_dim = _core.check_positive_int(projection_dim, "projection_dim")
        self.projection_dim = projection_dim
        self.seed = seed
        self.nearest_neighbors = (
            _ExactNeighbors() if nearest_neighbors is None else nearest_neighbors
        )
        for meth in ("setup", "get_nearest_neighbors"):
            if not callable(getattr(self.nearest_neighbors, meth, None)):
                raise TypeError(
                    f"nearest_neighbors must have setup(data) and get_nearest_neighbors("
                    f"query, k), got {type(self.nearest_neighbors).__name__} without {meth}"
                )
        self.projection_quantities = self._projections(projection_quantities)
        self.src_intermediate_quantities = self._vectors(self.train_dataset, self._train)
        self.nearest_neighbors.setup(self.src_intermediate_quantities)

    def _projections(self, given: Any) -> tuple[Array, Array] | None:
        params, _ = self.checkpoints.first()
        batch, _ = self._placement.put(next(iter(self.train_dataset)))
        jac, h = self._train.run(params, *_split(batch))  # (shapes and dtypes only)
        c, d = int(jac.shape[1]), int(h.shape[1])
        if given is not None:
            if not (isinstance(given, (tuple, list)) and len(given) == 2):
                raise TypeError(
                    f"projection_quantities must be a pair (P_1, P_2), got {type(given).__name__}"
                )
            p1, p2 = (_to_array(a) for a in given)
            if p1.ndim != 2 or p1.shape[0] != c or p2.ndim != 2 or p2.shape[0] != d:
                raise ValueError(
                    f"projection_quantities must have shapes ({c}, a) and ({d}, b) (outputs, "
                    f"layer inputs), got {tuple(p1.shape)} and {tuple(p2.shape)}"
                )
            return p1.astype(jac.dtype), p2.astype(h.dtype)
        dim = self.projection_dim
        if dim is None or c * d <= dim:
            return None
        c_out = min(int(dim**0.5), c)
        d_out = min(int(dim**0.5), d)
        k1, k2 = jax.random.split(jax.random.key(self.seed))
        p1 = jax.random.normal(k1, (c, c_out), jac.dtype) / math.sqrt(c_out)
        p2 = jax.random.normal(k2, (d, d_out), h.dtype) / math.sqrt(d_out)
        return p1, p2

    def _vectors(self, data: _Data, which: _LastLayer) -> Array:
        params, lrs = self.checkpoints.lists()
        proj = self.projection_quantities
        parts = []
        put = self._placement.put
        for p, lr in zip(params, lrs, strict=True):
            rows = []
            for b in data:
                b, n = put(b)
                rows.append(_trim(which.vectors(p, lr, proj, *_split(b)), n))
            parts.append(rows[0] if len(rows) == 1 else jnp.concatenate(rows))
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)

    def compute_intermediate_quantities(self, inputs: Any) -> Array:
        """The (projected) vectors of ``inputs``, computed with ``loss_fn``.

        Args:
            inputs: Examples ``(x_1, ..., x_m, labels)`` or batches.

        Returns:
            (N, C * d) for C checkpoints and ``d`` the projected size.
        """
        return self._vectors(self._inputs(inputs), self._train)

    def influence(  # type: ignore[override]
        self,
        inputs: Any,
        k: int | None = 5,
        proponents: bool = True,
    ) -> Array | KMostInfluentialResults:
        """Scores against the stored training vectors, or the top ``k`` (Captum's default 5).

        Args:
            inputs: Test examples ``(x_1, ..., x_m, labels)`` or batches.
            k: ``None`` for the (N_test, N_train) scores; an int for proponents/opponents.
            proponents: Highest (``True``) or lowest scores.

        Returns:
            (N_test, N_train) scores or a :class:`KMostInfluentialResults`.
        """
        query = self._vectors(self._inputs(inputs), self._test)
        if k is None:
            return query @ self.src_intermediate_quantities.T
        k = _check_k(k)
        sign = 1.0 if proponents else -1.0
        idx, vals = self.nearest_neighbors.get_nearest_neighbors(sign * query, k)
        return KMostInfluentialResults(jnp.asarray(idx), sign * jnp.asarray(vals))

    def self_influence(self, *args: Any, **kwargs: Any) -> Array:  # type: ignore[override]
        """Not offered, as in Captum: projections only approximate self influence.

        Raises:
            NotImplementedError: Always; use :class:`TracInCPFast`.
        """
        raise NotImplementedError(
            "TracInCPFastRandProj does not compute self influence (random projections "
            "would only approximate it and save nothing); use TracInCPFast.self_influence"
        )


# --------------------------------------------------------------------------------------
# SimilarityInfluence
# --------------------------------------------------------------------------------------


def euclidean_distance(test: Array, train: Array) -> Array:
    """Pairwise Euclidean distances of flattened activations (``torch.cdist``).

    Args:
        test: (N, ...) activations.
        train: (M, ...) activations.

    Returns:
        (N, M) distances.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.influence import euclidean_distance
        >>> euclidean_distance(jnp.array([[0.0, 0.0]]), jnp.array([[3.0, 4.0], [0.0, 1.0]]))
        Array([[5., 1.]], dtype=float32)
    """
    a = test.reshape(test.shape[0], -1)
    b = train.reshape(train.shape[0], -1)
    return jnp.sqrt(jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1))


def cosine_similarity(test: Array, train: Array, replace_nan: float = 0) -> Array:
    """Pairwise cosine similarity of flattened activations (Captum's).

    A zero activation vector has no direction: its rows (or columns) are
    ``replace_nan`` after normalisation, as in Captum.

    Args:
        test: (N, ...) activations.
        train: (M, ...) activations.
        replace_nan: The value of a normalised zero vector's entries.

    Returns:
        (N, M) similarities.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.influence import cosine_similarity
        >>> cosine_similarity(jnp.array([[1.0, 0.0]]), jnp.array([[2.0, 0.0], [0.0, 3.0]]))
        Array([[1., 0.]], dtype=float32)
    """
    a = test.reshape(test.shape[0], -1)
    b = train.reshape(train.shape[0], -1)
    na = jnp.linalg.norm(a, axis=1, keepdims=True)
    nb = jnp.linalg.norm(b, axis=1, keepdims=True)
    a = jnp.where(na != 0.0, a / jnp.where(na != 0.0, na, 1.0), replace_nan)
    b = jnp.where(nb != 0.0, b / jnp.where(nb != 0.0, nb, 1.0), replace_nan)
    return a @ b.T


class SimilarityInfluence:
    """Most similar training examples by layer activations, Captum's ``SimilarityInfluence``.

    Activations of the source dataset are computed once (on the first
    :meth:`influence` call) and kept in memory; Captum's ``activation_dir`` disk cache is
    not needed.

    Args:
        module: A structured model (``jaxattr.bridge.from_torch``, ``jaxattr.flax``).
        layers: A layer name or a list of names.
        influence_src_dataset: The source examples: an array or a tuple of arrays (the
            model's inputs, no labels) leading with N, or a re-iterable of batches.
        activation_dir: Accepted for Captum compatibility (activations stay in memory).
        model_id: Accepted for Captum compatibility.
        similarity_metric: ``cosine_similarity`` (default), ``euclidean_distance`` or any
            ``metric(test_acts, src_acts) -> (N_test, N_src)``.
        similarity_direction: ``"max"`` (most similar: cosine) or ``"min"`` (closest:
            distances).
        batch_size: Source examples per batch.
        mesh: A ``jax.sharding.Mesh`` to split the activation forward passes over: each
            source batch, and the inputs of :meth:`influence` when no
            ``additional_forward_args`` are given (they may or may not be per-example,
            so inputs with them run on the default device), is padded to a multiple of
            the mesh size by repeating its last example, placed with its batch axis
            split over the mesh, and its activations are cut back to the real examples
            before any similarity or top-k. ``None`` (default): the default device.
        **kwargs: ``replace_nan`` for the cosine similarity (default -2 for ``"max"``,
            2 for ``"min"``, as Captum).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.influence import SimilarityInfluence
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model(); x = make_shapes(6)[0]
        >>> sim = SimilarityInfluence(model, "conv3", x, batch_size=4)
        >>> idx, scores = sim.influence(x[:2], top_k=3)["conv3"]
        >>> idx[:, 0].tolist()           # each example is most similar to itself
        [0, 1]
    """

    def __init__(
        self,
        module: Any,
        layers: str | Sequence[str],
        influence_src_dataset: Any,
        activation_dir: str | None = None,
        model_id: str = "",
        similarity_metric: Callable[[Array, Array], Array] = cosine_similarity,
        similarity_direction: str = "max",
        batch_size: int = 1,
        *,
        mesh: Mesh | None = None,
        **kwargs: Any,
    ) -> None:
        from jaxattr import _taps

        self._placement = _Placement(mesh)
        self.mesh = mesh
        self.module = _core.check_structured(module, type(self).__name__, "module")
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers:
            raise ValueError("layers must name at least one layer, got an empty list")
        for layer in self.layers:
            _taps.resolve_layer(self.module, layer)
        self.batch_size = _core.check_positive_int(batch_size, "batch_size")
        self.influence_src_dataset = _Data(
            influence_src_dataset, self.batch_size, "influence_src_dataset", labelled=False
        )
        self.activation_dir = activation_dir
        self.model_id = model_id
        self.similarity_direction = _core.check_choice(
            similarity_direction, "similarity_direction", ("max", "min")
        )
        unknown = set(kwargs) - {"replace_nan"}
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; known: replace_nan")
        if not callable(similarity_metric):
            raise TypeError(
                f"similarity_metric must be callable, got {type(similarity_metric).__name__}"
            )
        self.replace_nan = None
        if similarity_metric is cosine_similarity:
            default = -2 if self.similarity_direction == "max" else 2
            self.replace_nan = kwargs.get("replace_nan", default)
            rn = self.replace_nan
            similarity_metric = lambda a, b: cosine_similarity(a, b, replace_nan=rn)  # noqa: E731
        self.similarity_metric = similarity_metric
        self._src: list[list[Array]] | None = None

    def _activations(self, x: tuple, args: tuple = ()) -> list[Array]:
        from jaxattr._layer import layer_activation

        acts = layer_activation(self.module, x if len(x) > 1 else x[0], self.layers, args=args)
        return [a.reshape(a.shape[0], -1) for a in acts]

    def _placed_activations(self, x: tuple) -> list[Array]:
        x, n = self._placement.put(x)
        return [_trim(a, n) for a in self._activations(x)]

    def _source(self) -> list[list[Array]]:
        if self._src is None:
            self._src = [self._placed_activations(b) for b in self.influence_src_dataset]
        return self._src

    def influence(
        self,
        inputs: Array | tuple[Array, ...],
        top_k: int = 1,
        additional_forward_args: Any = None,
        load_src_from_disk: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``top_k`` most similar source examples of each input, per layer.

        Args:
            inputs: Model input (N, ...) or a tuple of inputs.
            top_k: How many source examples per input.
            additional_forward_args: Extra positional model arguments for ``inputs``
                (not attributed).
            load_src_from_disk: ``False`` recomputes the source activations.
            **kwargs: Unused (Captum compatibility).

        Returns:
            ``{layer: (indices (N, top_k) int32, scores (N, top_k))}``, best first; for the
            cosine similarity, ``"zero_acts-<layer>"`` lists ``[input, source]`` index
            pairs (global source indices) involving a zero activation vector, when any.
        """
        top_k = _core.check_positive_int(top_k, "top_k")
        if not load_src_from_disk:
            self._src = None
        x = inputs if isinstance(inputs, tuple) else (inputs,)
        x = tuple(_to_array(a) for a in x)
        args = () if additional_forward_args is None else additional_forward_args
        args = args if isinstance(args, tuple) else (args,)
        tests = self._activations(x, args) if args else self._placed_activations(x)
        n = int(tests[0].shape[0])
        largest = self.similarity_direction == "max"
        out: dict[str, Any] = {}
        src = self._source()
        for i, layer in enumerate(self.layers):
            best, offset, zeros = None, 0, []
            for acts in src:
                sim = self.similarity_metric(tests[i], acts[i])
                m = int(acts[i].shape[0])
                if tuple(sim.shape) != (n, m):
                    raise ValueError(
                        f"similarity_metric must return shape (N_test, N_src_batch) = "
                        f"({n}, {m}), got {tuple(sim.shape)}"
                    )
                if self.replace_nan is not None:
                    hit = np.argwhere(np.asarray(sim == self.replace_nan))
                    if hit.size:
                        zeros.append(hit + np.array([0, offset]))
                best = _top_k_merge(best, sim, offset, top_k, largest)
                offset += m
            idx, vals = _finish_top_k(best, largest)
            out[layer] = (idx, vals)
            if zeros:
                out["zero_acts-" + layer] = jnp.asarray(np.concatenate(zeros))
        return out


# --------------------------------------------------------------------------------------
# Influence functions
# --------------------------------------------------------------------------------------


def _top_eigen(
    h: np.ndarray, k: int | None, hessian_reg: float, tol: float, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Captum's ``_top_eigen``: eigenpairs of ``h + reg I`` above ``tol``, the ``k``
    largest, ascending, each eigenvector's sign chosen so that its entries sum >= 0."""
    h = np.asarray(h, np.float64)
    h = h + np.eye(len(h)) * hessian_reg
    if symmetric:
        ls, vs = np.linalg.eigh((h + h.T) / 2)
    else:
        ls, vs = np.linalg.eig(h)
        ls, vs = ls.real, vs.real
        order = np.argsort(ls)
        ls, vs = ls[order], vs[:, order]
    keep = ls > tol
    ls, vs = ls[keep], vs[:, keep]
    if k is not None:
        ls, vs = ls[-k:], vs[:, -k:]
    sign = np.where(vs.sum(0) > 0, 1.0, -1.0)
    return ls, vs * sign[None, :]


class _InfluenceFunctionBase:
    """The set-up shared by the influence functions: one checkpoint, the trained
    parameters as one flat vector, the Hessian dataset and the per-example gradients."""

    def __init__(
        self,
        model: Any,
        train_dataset: Any,
        checkpoint: Any,
        checkpoints_load_func: Callable[[Any], tuple[PyTree, float]] | None,
        layers: Sequence[str] | None,
        loss_fn: Callable[..., Array] | None,
        batch_size: int,
        hessian_dataset: Any,
        test_loss_fn: Callable[..., Array] | None,
        sample_wise_grads_per_batch: bool,
        mesh: Mesh | None = None,
    ) -> None:
        from jax.flatten_util import ravel_pytree

        self._placement = _Placement(mesh)
        self.mesh = mesh
        self.model = model
        self.fn = _model_fn(model)
        self.batch_size = _core.check_positive_int(batch_size, "batch_size")
        self.train_dataset = _Data(train_dataset, self.batch_size, "train_dataset", labelled=True)
        self.hessian_dataset = (
            self.train_dataset
            if hessian_dataset is None
            else _Data(hessian_dataset, self.batch_size, "hessian_dataset", labelled=True)
        )
        for name, f in (("loss_fn", loss_fn), ("test_loss_fn", test_loss_fn)):
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable or None, got {type(f).__name__}")
        self.loss_fn = loss_fn
        self.test_loss_fn = loss_fn if test_loss_fn is None else test_loss_fn
        self.sample_wise_grads_per_batch = sample_wise_grads_per_batch
        self.checkpoint = checkpoint
        self.params, _ = _Checkpoints([checkpoint], checkpoints_load_func).first()
        self.layers = None if layers is None else list(layers)
        self.mask = _param_mask(model, self.params, self.layers)
        self._train = _per_example(self.fn, self.loss_fn, self.mask)
        self._test = (
            self._train
            if self.test_loss_fn is self.loss_fn
            else _per_example(self.fn, self.test_loss_fn, self.mask)
        )
        leaves, treedef = jax.tree_util.tree_flatten(self.params)
        sel = [a for a, m in zip(leaves, self.mask, strict=True) if m]
        self._theta, unravel = ravel_pytree(sel)
        mask, fn, loss = self.mask, self.fn, loss_fn
        reduction = _reduction(loss_fn, "loss_fn") if loss_fn is not None else "sum"

        def batch_loss(theta, xs, y):
            it = iter(unravel(theta))
            p = jax.tree_util.tree_unflatten(
                treedef, [next(it) if m else a for a, m in zip(leaves, mask, strict=True)]
            )
            out = fn(p, *xs)
            total = jnp.sum(out if loss is None else loss(out, y))
            return total * y.shape[0] if reduction == "mean" else total

        self._batch_loss = batch_loss

    @classmethod
    def get_name(cls) -> str:
        """The class name (used in progress bars)."""
        return cls.__name__

    _inputs = TracInCP._inputs

    def _projection(self) -> Array:  # (P, k)
        raise NotImplementedError

    def compute_intermediate_quantities(
        self,
        inputs_dataset: Any,
        aggregate: bool = False,
        show_progress: bool = False,
        return_on_cpu: bool = True,
        test: bool = False,
    ) -> Array:
        """Embeddings ``g^T V L^(-1/2)`` whose dot products are influence scores.

        Args:
            inputs_dataset: Examples ``(x_1, ..., x_m, labels)`` or batches.
            aggregate: Sum over the examples (one row).
            show_progress: Show a progress bar over the batches.
            return_on_cpu: Accepted for Captum compatibility.
            test: Use ``test_loss_fn``.

        Returns:
            (N, k) embeddings ((1, k) with ``aggregate``), ``k`` the kept eigenvectors.
        """
        data = self._inputs(inputs_dataset, "inputs_dataset")
        which = self._test if test else self._train
        desc = f"{self.get_name()} intermediate quantities"
        rows = []
        for b in progress(data, total=data.length(), desc=desc, enabled=show_progress):
            b, n = self._placement.put(b)
            rows.append(_trim(which.project(self.params, self.R, *_split(b)), n))
        q = rows[0] if len(rows) == 1 else jnp.concatenate(rows)
        return jnp.sum(q, axis=0, keepdims=True) if aggregate else q

    def influence(
        self,
        inputs: Any,
        k: int | None = None,
        proponents: bool = True,
        show_progress: bool = False,
    ) -> Array | KMostInfluentialResults:
        """Influence ``g_test^T H^-1 g_train`` (Captum's sign), or the top ``k``.

        Args:
            inputs: Test examples ``(x_1, ..., x_m, labels)`` or batches.
            k: ``None`` for all (N_test, N_train) scores; an int for proponents/opponents.
            proponents: Highest (``True``) or lowest scores.
            show_progress: Show a progress bar over the training batches.

        Returns:
            (N_test, N_train) scores or a :class:`KMostInfluentialResults`.
        """
        if k is not None:
            k = _check_k(k)
        query = self.compute_intermediate_quantities(inputs, test=True)
        rows, best, offset = [], None, 0
        desc = f"{self.get_name()} influence"
        data = self.train_dataset
        for b in progress(data, total=data.length(), desc=desc, enabled=show_progress):
            b, n = self._placement.put(b)
            s = query @ _trim(self._train.project(self.params, self.R, *_split(b)), n).T
            if k is None:
                rows.append(s)
            else:
                best = _top_k_merge(best, s, offset, k, proponents)
            offset += n
        if k is None:
            return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=1)
        return _finish_top_k(best, proponents)

    def self_influence(self, inputs_dataset: Any = None, show_progress: bool = False) -> Array:
        """Self influence ``g^T H^-1 g`` of each example (default: the training set).

        Args:
            inputs_dataset: Examples ``(x_1, ..., x_m, labels)`` or batches.
            show_progress: Show a progress bar over the batches.

        Returns:
            (N,) scores.
        """
        data = self.train_dataset if inputs_dataset is None else inputs_dataset
        if isinstance(data, _Data):
            data = data.arrays if data.arrays is not None else data.batches
        q = self.compute_intermediate_quantities(data, show_progress=show_progress)
        return jnp.sum(q * q, axis=1)


class NaiveInfluenceFunction(_InfluenceFunctionBase):
    """Influence functions with the exact Hessian, Captum's ``NaiveInfluenceFunction``.

    The Hessian ``H`` of the total training loss (summed over ``hessian_dataset``,
    default the training set) with respect to the trained parameters is formed
    explicitly (``jax.hessian`` per batch, P x P: small models only). Its top
    ``projection_dim`` eigenpairs ``(l, v)`` of ``H + hessian_reg I`` above
    ``hessian_inverse_tol`` give the embedding ``g^T v / sqrt(l)``, so influence scores
    ``g_test^T H^-1 g_train`` are dot products (Koh and Liang, 2017; Captum's sign).

    Args:
        model: ``model(params, *inputs)`` or a structured model.
        train_dataset: ``(x_1, ..., x_m, labels)`` arrays or batches (module docs).
        checkpoint: The params pytree to explain (or an item for
            ``checkpoints_load_func``).
        checkpoints_load_func: ``load(checkpoint) -> (params, learning_rate)``.
        layers: Restrict to these layers' parameters.
        loss_fn: ``loss_fn(outputs, labels)``: per-example losses or their sum.
        batch_size: Examples per batch for array datasets.
        hessian_dataset: Data for the Hessian (default ``train_dataset``).
        test_loss_fn: Loss for test examples.
        sample_wise_grads_per_batch: Accepted for Captum compatibility.
        projection_dim: Eigenvectors kept.
        seed: Accepted for Captum compatibility (nothing is random).
        hessian_reg: Added to the Hessian's diagonal.
        hessian_inverse_tol: Eigenvalues at or below it are dropped.
        projection_on_cpu: Accepted for Captum compatibility.
        show_progress: Show progress while forming the Hessian.
        mesh: A ``jax.sharding.Mesh`` to split the per-example gradient work over
            (the training and test embeddings of :meth:`influence`,
            :meth:`self_influence` and :meth:`compute_intermediate_quantities`), as
            :class:`TracInCP`'s ``mesh``. The Hessian stays on the default device: it
            is a sum over each batch of ``loss_fn``, which may itself return the batch
            sum, so padded examples could not be taken out of it.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.influence import NaiveInfluenceFunction
        >>> model = lambda p, x: x @ p["w"]
        >>> loss = lambda out, y: 0.5 * (out[:, 0] - y) ** 2
        >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, 0.0])
        >>> inf = NaiveInfluenceFunction(model, (x, y), {"w": jnp.ones((2, 1))}, loss_fn=loss)
        >>> [round(float(v), 3) for v in inf.self_influence()]   # g^T H^-1 g, H = x^T x
        [0.0, 4.0]
    """

    def __init__(
        self,
        model: Any,
        train_dataset: Any,
        checkpoint: Any,
        checkpoints_load_func: Callable[[Any], tuple[PyTree, float]] | None = None,
        layers: Sequence[str] | None = None,
        loss_fn: Callable[..., Array] | None = None,
        batch_size: int = 64,
        hessian_dataset: Any = None,
        test_loss_fn: Callable[..., Array] | None = None,
        sample_wise_grads_per_batch: bool = False,
        projection_dim: int = 50,
        seed: int = 42,
        hessian_reg: float = 1e-6,
        hessian_inverse_tol: float = 1e-5,
        projection_on_cpu: bool = True,
        show_progress: bool = False,
        *,
        mesh: Mesh | None = None,
    ) -> None:
        super().__init__(
            model,
            train_dataset,
            checkpoint,
            checkpoints_load_func,
            layers,
            loss_fn,
            batch_size,
            hessian_dataset,
            test_loss_fn,
            sample_wise_grads_per_batch,
            mesh,
        )
        self.projection_dim = _core.check_positive_int(projection_dim, "projection_dim")
        self.seed = seed
        self.hessian_reg = float(hessian_reg)
        self.hessian_inverse_tol = float(hessian_inverse_tol)
        hessian = _caching.jit(jax.hessian(self._batch_loss))
        data = self.hessian_dataset
        h = None
        desc = f"{self.get_name()} Hessian"
        for b in progress(data, total=data.length(), desc=desc, enabled=show_progress):
            hb = hessian(self._theta, *_split(b))
            h = hb if h is None else h + hb
        ls, vs = _top_eigen(
            np.asarray(h), self.projection_dim, self.hessian_reg, self.hessian_inverse_tol, True
        )
        if len(ls) == 0:
            raise ValueError(
                "the Hessian has no eigenvalue above hessian_inverse_tol="
                f"{self.hessian_inverse_tol} (after adding hessian_reg={self.hessian_reg}): "
                "no positive curvature to invert"
            )
        self.R = jnp.asarray(vs / np.sqrt(ls)[None, :], self._theta.dtype)


class ArnoldiInfluenceFunction(_InfluenceFunctionBase):
    """Influence functions from Arnoldi iteration, Captum's ``ArnoldiInfluenceFunction``.

    The Hessian is never formed: ``arnoldi_dim`` steps of Arnoldi iteration with
    Hessian-vector products (``jax.jvp`` of ``jax.grad`` over ``hessian_dataset``) build
    an orthonormal Krylov basis ``Q`` and the small matrix ``Q^T H Q``, whose top
    ``projection_dim`` eigenpairs (above ``hessian_inverse_tol``, after adding
    ``hessian_reg``) approximate the Hessian's (Schioppa et al., 2022). Influence is
    ``g_test^T H^-1 g_train`` restricted to them, as in :class:`NaiveInfluenceFunction`.

    Args:
        model: ``model(params, *inputs)`` or a structured model.
        train_dataset: ``(x_1, ..., x_m, labels)`` arrays or batches (module docs).
        checkpoint: The params pytree to explain.
        checkpoints_load_func: ``load(checkpoint) -> (params, learning_rate)``.
        layers: Restrict to these layers' parameters.
        loss_fn: ``loss_fn(outputs, labels)``: per-example losses or their sum.
        batch_size: Examples per batch for array datasets.
        hessian_dataset: Data for the Hessian (default ``train_dataset``).
        test_loss_fn: Loss for test examples.
        sample_wise_grads_per_batch: Accepted for Captum compatibility.
        projection_dim: Eigenvectors kept.
        seed: Seed of the random start vector (``jax.random.key(seed)``).
        arnoldi_dim: Arnoldi steps (Krylov dimension).
        arnoldi_tol: Stop early when the new direction's norm falls below it.
        hessian_reg: Added to the restricted Hessian's diagonal.
        hessian_inverse_tol: Eigenvalues at or below it are dropped.
        projection_on_cpu: Accepted for Captum compatibility.
        show_progress: Show progress over the Arnoldi steps.
        arnoldi_start: The start vector (a pytree of the trained parameters'
            structure, or a flat (P,) vector) instead of a random one.
        mesh: A ``jax.sharding.Mesh`` to split the per-example gradient work over
            (the training and test embeddings of :meth:`influence`,
            :meth:`self_influence` and :meth:`compute_intermediate_quantities`), as
            :class:`TracInCP`'s ``mesh``. The Hessian-vector products of the Arnoldi
            iteration stay on the default device: they are sums over each batch of
            ``loss_fn``, which may itself return the batch sum, so padded examples
            could not be taken out of them.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr.influence import ArnoldiInfluenceFunction
        >>> model = lambda p, x: x @ p["w"]
        >>> loss = lambda out, y: 0.5 * (out[:, 0] - y) ** 2
        >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, 0.0])
        >>> inf = ArnoldiInfluenceFunction(model, (x, y), {"w": jnp.ones((2, 1))}, loss_fn=loss,
        ...                                arnoldi_dim=2, arnoldi_tol=1e-6)
        >>> inf.R.shape                            # (P, kept eigenvectors)
        (2, 1)
    """

    def __init__(
        self,
        model: Any,
        train_dataset: Any,
        checkpoint: Any,
        checkpoints_load_func: Callable[[Any], tuple[PyTree, float]] | None = None,
        layers: Sequence[str] | None = None,
        loss_fn: Callable[..., Array] | None = None,
        batch_size: int = 64,
        hessian_dataset: Any = None,
        test_loss_fn: Callable[..., Array] | None = None,
        sample_wise_grads_per_batch: bool = False,
        projection_dim: int = 50,
        seed: int = 0,
        arnoldi_dim: int = 200,
        arnoldi_tol: float = 1e-1,
        hessian_reg: float = 1e-3,
        hessian_inverse_tol: float = 1e-4,
        projection_on_cpu: bool = True,
        show_progress: bool = False,
        arnoldi_start: Any = None,
        *,
        mesh: Mesh | None = None,
    ) -> None:
        super().__init__(
            model,
            train_dataset,
            checkpoint,
            checkpoints_load_func,
            layers,
            loss_fn,
            batch_size,
            hessian_dataset,
            test_loss_fn,
            sample_wise_grads_per_batch,
            mesh,
        )
        self.projection_dim = _core.check_positive_int(projection_dim, "projection_dim")
        self.seed = seed
        self.arnoldi_dim = _core.check_positive_int(arnoldi_dim, "arnoldi_dim")
        self.arnoldi_tol = float(arnoldi_tol)
        self.hessian_reg = float(hessian_reg)
        self.hessian_inverse_tol = float(hessian_inverse_tol)
        b = self._start(arnoldi_start)
        qs, h = self._arnoldi(b, show_progress)
        qs, h = qs[:-1], h[:-1]
        if not qs:
            raise ValueError(
                f"the Arnoldi basis is empty: the start vector's Hessian image is below "
                f"arnoldi_tol={self.arnoldi_tol}; lower arnoldi_tol"
            )
        ls, vs = _top_eigen(
            h, self.projection_dim, self.hessian_reg, self.hessian_inverse_tol, False
        )
        if vs.shape[1] == 0:
            raise ValueError(
                "the Hessian restricted to the Krylov subspace has no eigenvalue above "
                f"hessian_inverse_tol={self.hessian_inverse_tol}: no positive curvature"
            )
        q = np.stack([np.asarray(v, np.float64) for v in qs], 1)  # (P, m)
        self.R = jnp.asarray(q @ vs / np.sqrt(ls)[None, :], self._theta.dtype)

    def _start(self, given: Any) -> Array:
        from jax.flatten_util import ravel_pytree

        p = self._theta.shape[0]
        if given is None:
            return jax.random.normal(jax.random.key(self.seed), (p,), self._theta.dtype)
        if hasattr(given, "shape") and tuple(given.shape) == (p,):
            return jnp.asarray(given, self._theta.dtype)
        leaves = jax.tree_util.tree_leaves(given)
        full = jax.tree_util.tree_leaves(self.params)
        if len(leaves) == len(full):  # the whole params structure: keep the trained leaves
            leaves = [a for a, m in zip(leaves, self.mask, strict=True) if m]
        flat, _ = ravel_pytree([jnp.asarray(a, self._theta.dtype) for a in leaves])
        if flat.shape != (p,):
            raise ValueError(
                f"arnoldi_start must have the trained parameters' structure or shape ({p},), "
                f"got {flat.shape[0]} values"
            )
        return flat

    def _arnoldi(self, b: Array, show_progress: bool) -> tuple[list, np.ndarray]:
        """Captum's ``_parameter_arnoldi``: the Krylov basis and the Hessenberg matrix."""
        grad = jax.grad(self._batch_loss)
        hvp_batch = _caching.jit(
            lambda theta, v, xs, y: jax.jvp(lambda t: grad(t, xs, y), (theta,), (v,))[1]
        )
        batches = list(self.hessian_dataset)

        def hvp(v):
            out = None
            for b_ in batches:
                r = hvp_batch(self._theta, v, *_split(b_))
                out = r if out is None else out + r
            return out

        n = self.arnoldi_dim
        h = np.zeros((n + 1, n))
        qs = [b / jnp.sqrt(jnp.dot(b, b))]
        k = 0
        steps = progress(
            range(1, n + 1), total=n, desc=f"{self.get_name()} Arnoldi", enabled=show_progress
        )
        for k in steps:
            v = hvp(qs[k - 1])
            for i in range(k):
                h[i, k - 1] = float(jnp.dot(qs[i], v))
                v = v - qs[i] * h[i, k - 1]
            h[k, k - 1] = float(jnp.sqrt(jnp.dot(v, v)))
            if h[k, k - 1] < self.arnoldi_tol:
                break
            qs.append(v / h[k, k - 1])
        return qs[:k], h[:k, : k - 1]
