"""Dataset-scale attribution: stream batches, shard them over devices, write as you go.

:func:`attribute_dataset` runs any jaxattr method over an iterable of batches. Each batch
is placed on a ``jax.sharding.Mesh`` with its batch axis split over the devices (all
local devices by default), so the method's compiled program runs data-parallel; results
are written to a directory of ``.npy`` shards with a JSON index as soon as each batch is
done, so an interrupted run resumes where it stopped. :class:`AttributionStore` reads
such a directory lazily.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxattr._core import PyTree
from jaxattr._progress import progress

__all__ = ["AttributionStore", "attribute_dataset"]

_FORMAT = "jaxattr-dataset/1"


# --------------------------------------------------------------------------------------
# Result structure, stored as JSON
# --------------------------------------------------------------------------------------


def _describe(tree: PyTree) -> Any:
    """A JSON description of a result's structure: arrays, tuples, lists, dicts."""
    if isinstance(tree, tuple):
        return {"tuple": [_describe(t) for t in tree]}
    if isinstance(tree, list):
        return {"list": [_describe(t) for t in tree]}
    if isinstance(tree, dict):
        return {"dict": {str(k): _describe(tree[k]) for k in sorted(tree)}}
    if hasattr(tree, "shape"):
        return "array"
    raise TypeError(
        f"attribute_dataset can store arrays, tuples, lists and dicts of arrays; the method "
        f"returned a {type(tree).__name__}"
    )


def _rebuild(desc: Any, leaves: Iterator[Any]) -> PyTree:
    if desc == "array":
        return next(leaves)
    if "tuple" in desc:
        return tuple(_rebuild(d, leaves) for d in desc["tuple"])
    if "list" in desc:
        return [_rebuild(d, leaves) for d in desc["list"]]
    return {k: _rebuild(d, leaves) for k, d in desc["dict"].items()}


def _leaves(tree: PyTree, desc: Any) -> list:
    if desc == "array":
        return [tree]
    if "tuple" in desc or "list" in desc:
        items = desc.get("tuple", desc.get("list"))
        return [leaf for t, d in zip(tree, items, strict=False) for leaf in _leaves(t, d)]
    return [leaf for k, d in desc["dict"].items() for leaf in _leaves(tree[k], d)]


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


def _index_name(process_index: int, process_count: int) -> str:
    return "index.json" if process_count == 1 else f"index-p{process_index:05d}.json"


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class AttributionStore:
    """A lazy reader of a directory written by :func:`attribute_dataset`.

    Batches are read on demand, memory-mapped (``np.load(mmap_mode="r")``); the index
    files of every process of a multi-host run are merged.

    Args:
        path: The ``out`` directory of :func:`attribute_dataset`.

    Raises:
        FileNotFoundError: ``path`` holds no index.

    Example:
        >>> import jax.numpy as jnp, jaxattr, tempfile
        >>> out = tempfile.mkdtemp()
        >>> fn = lambda x: (x ** 2).sum(1)
        >>> _ = jaxattr.attribute_dataset(jaxattr.gradient, fn, [jnp.ones((2, 3))],
        ...                               out=out, show_progress=False)
        >>> store = jaxattr.AttributionStore(out)
        >>> len(store), store.load().shape
        (2, (2, 3))
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        names = (
            sorted(
                n for n in os.listdir(self.path) if n.startswith("index") and n.endswith(".json")
            )
            if os.path.isdir(self.path)
            else []
        )
        if not names:
            raise FileNotFoundError(
                f"path must be an attribute_dataset output directory with an index.json, got "
                f"{self.path!r}"
            )
        self.batches: dict[int, dict] = {}
        self.structure: Any = None
        self.method: str | None = None
        for name in names:
            with open(os.path.join(self.path, name)) as f:
                index = json.load(f)
            self.structure = self.structure or index.get("structure")
            self.method = self.method or index.get("method")
            self.batches.update({int(k): v for k, v in index["batches"].items()})

    @property
    def batch_indices(self) -> list[int]:
        """The stored batches' positions in the input stream, ascending."""
        return sorted(self.batches)

    def __len__(self) -> int:
        """The number of stored examples."""
        return sum(b["n"] for b in self.batches.values())

    def batch(self, i: int) -> PyTree:
        """The result of batch ``i`` (its position in the input stream), memory-mapped."""
        if i not in self.batches:
            raise KeyError(f"batch {i} is not stored; stored: {self.batch_indices}")
        files = self.batches[i]["files"]
        leaves = iter(np.load(os.path.join(self.path, f), mmap_mode="r") for f in files)
        return _rebuild(self.structure, leaves)

    def __iter__(self) -> Iterator[PyTree]:
        """The stored batches' results, in stream order."""
        return (self.batch(i) for i in self.batch_indices)

    def load(self) -> PyTree:
        """All stored results, concatenated along the batch axis (in memory)."""
        parts = [_leaves(b, self.structure) for b in self]
        if not parts:
            raise ValueError(f"no batches are stored in {self.path!r}")
        leaves = [np.concatenate(ls, axis=0) for ls in zip(*parts, strict=False)]
        return _rebuild(self.structure, iter(leaves))

    def __repr__(self) -> str:
        return (
            f"AttributionStore({self.path!r}, method={self.method!r}, "
            f"batches={len(self.batches)}, examples={len(self)})"
        )


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------


def _is_target(t: Any) -> bool:
    if t is None or isinstance(t, (int, np.integer, list)):
        return not isinstance(t, bool)
    return hasattr(t, "dtype") and np.issubdtype(np.dtype(t.dtype), np.integer)


def _split_batch(batch: Any, with_targets: bool | None, i: int) -> tuple[PyTree, Any, bool]:
    """``(x, target, has_target)`` from one item of ``batches``."""
    if isinstance(batch, dict) and "x" in batch:
        return batch["x"], batch.get("target"), "target" in batch
    if with_targets is False:
        return batch, None, False
    pair = isinstance(batch, tuple) and len(batch) == 2
    if with_targets:
        if not pair:
            raise ValueError(
                f"with_targets=True needs every batch to be an (x, target) pair; batch {i} is "
                f"a {type(batch).__name__}"
            )
        return batch[0], batch[1], True
    if pair and _is_target(batch[1]):
        return batch[0], batch[1], True
    return batch, None, False


def _pad_rows(a: Any, n: int, size: int) -> Any:
    """Repeat the last row of ``a`` (leading dim n) up to ``size`` rows."""
    if size == n:
        return a
    a = np.asarray(a)
    return np.concatenate([a, np.repeat(a[-1:], size - n, axis=0)], axis=0)


def _pad_target(t: Any, n: int, size: int) -> Any:
    if isinstance(t, list):
        t = np.asarray(t)
    if hasattr(t, "shape") and len(t.shape) >= 1 and t.shape[0] == n:
        return _pad_rows(t, n, size)
    return t


def _default_mesh() -> Mesh:
    return Mesh(np.asarray(jax.local_devices()), ("batch",))


def attribute_dataset(
    method: Callable[..., Any],
    fn: Callable[..., Any],
    batches: Iterable[Any],
    *,
    out: str | os.PathLike | None = None,
    mesh: Mesh | None = None,
    show_progress: bool = True,
    resume: bool = True,
    with_targets: bool | None = None,
    **method_kwargs: Any,
) -> PyTree | AttributionStore:
    """Run an attribution method over a stream of batches, data-parallel over devices.

    Every batch is padded (repeating its last example) to a multiple of the mesh size, and
    smaller batches up to the size of the first one so the method compiles once; it is
    placed on ``mesh`` with its batch axis split over all the mesh's devices
    (``NamedSharding(mesh, P(mesh.axis_names))``), the method runs on the sharded batch
    (its compiled core partitions along the batch), and the padding is trimmed off. The
    next batch is dispatched before the previous one is copied to the host, so writing
    overlaps computing.

    With ``out``, each batch's result is saved as ``.npy`` files (one per result leaf)
    plus a JSON index, atomically, as soon as it is done; with ``resume=True`` batches
    already in the index are skipped (still read from ``batches``, not computed). The
    index records the method's name; resuming with another method raises.

    Multi-host: call ``jax.distributed.initialize()`` first in every process and pass the
    same ``batches`` stream to each; process ``p`` of ``P`` handles the batches whose
    position ``i`` has ``i % P == p`` on its local devices (attribution needs no
    communication between examples), writing its own index file into a shared ``out``.
    :class:`AttributionStore` merges them. Without ``out`` each process returns only
    its own batches' results.

    Random methods: a ``key`` in ``method_kwargs`` is folded with each batch's position
    (``jax.random.fold_in(key, i)``), so results do not depend on resuming; the draws do
    depend on the padded batch size.

    Args:
        method: A jaxattr method ``method(fn, x, **kwargs)``.
        fn: Batch-first pure function, ``fn(x) -> y``.
        batches: An iterable of batches: ``x`` (an array (B, ...) or a tuple/pytree of
            them), ``(x, target)`` pairs, or dicts ``{"x": ..., "target": ...}``. A
            2-tuple whose second item is None, an int, a list or an integer array is read
            as ``(x, target)`` unless ``with_targets=False``.
        out: A directory for the results (created if needed); None keeps them in memory.
        mesh: The device mesh; default a 1-D mesh ``("batch",)`` over
            ``jax.local_devices()``.
        show_progress: Show a progress bar (tqdm) over batches.
        resume: Skip batches already written to ``out``; ``False`` starts a new index.
        with_targets: Force reading every batch as ``(x, target)`` (True) or as ``x``
            (False); None decides as above.
        **method_kwargs: Passed to ``method`` (``n_steps``, ``baselines``, ``key``, ...);
            arrays here are shared by every batch, not split per example.

    Returns:
        Without ``out``, the results of all batches concatenated along the batch axis, as
        numpy arrays with the method's output structure; with ``out``, an
        :class:`AttributionStore` over the directory.

    Raises:
        ValueError: A batch is malformed, ``target`` is given twice, or ``out`` holds a
            different method's results or a batch with another size.

    Example:
        >>> import jax.numpy as jnp, jaxattr
        >>> fn = lambda x: x @ jnp.array([[1.0], [2.0], [3.0]])
        >>> batches = [jnp.ones((4, 3)), jnp.ones((2, 3))]
        >>> jaxattr.attribute_dataset(jaxattr.saliency, fn, batches, show_progress=False).shape
        (6, 3)
    """
    if not callable(method):
        raise TypeError(f"method must be a jaxattr method, got {type(method).__name__}")
    mesh = _default_mesh() if mesh is None else mesh
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
    n_dev = int(mesh.devices.size)
    p_index, p_count = jax.process_index(), jax.process_count()
    method_name = getattr(method, "__name__", type(method).__name__)
    try:
        takes_key = "key" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes_key = True
    key = method_kwargs.pop("key", None) if takes_key else None

    index: dict | None = None
    index_path = None
    if out is not None:
        out = os.fspath(out)
        os.makedirs(out, exist_ok=True)
        index_path = os.path.join(out, _index_name(p_index, p_count))
        if resume and os.path.exists(index_path):
            with open(index_path) as f:
                index = json.load(f)
            if index.get("method") != method_name:
                raise ValueError(
                    f"out {out!r} holds results of method {index.get('method')!r}, not "
                    f"{method_name!r}: pass resume=False to overwrite, or another out"
                )
        else:
            index = {"format": _FORMAT, "method": method_name, "structure": None, "batches": {}}

    total = len(batches) if hasattr(batches, "__len__") else None
    results: list = []
    structure: Any = None if index is None else index["structure"]
    pending: tuple | None = None
    padded_size: int | None = None

    def finish(item: tuple) -> None:
        nonlocal structure
        i, n, res = item
        host = jax.tree_util.tree_map(lambda a: np.asarray(a[:n]), res)
        if structure is None:
            structure = _describe(host)
        if index is None:
            results.append(host)
            return
        files = []
        for j, leaf in enumerate(_leaves(host, structure)):
            name = f"b{i:07d}_{j}.npy"
            tmp = os.path.join(out, name + ".tmp.npy")
            np.save(tmp, leaf)
            os.replace(tmp, os.path.join(out, name))
            files.append(name)
        index["structure"] = structure
        index["batches"][str(i)] = {"n": n, "files": files}
        _write_json(index_path, index)

    stream = progress(
        enumerate(batches),
        total=total,
        desc=f"attribute_dataset({method_name})",
        enabled=show_progress,
    )
    for i, batch in stream:
        if i % p_count != p_index:
            continue
        x, target, has_target = _split_batch(batch, with_targets, i)
        leaves = jax.tree_util.tree_leaves(x)
        if not leaves or any(np.ndim(a) == 0 for a in leaves):
            raise ValueError(f"batch {i} must hold arrays leading with the batch size, got {x!r}")
        n = int(np.shape(leaves[0])[0])
        done = index is not None and index["batches"].get(str(i))
        if done and resume:
            if done["n"] != n:
                raise ValueError(
                    f"out {out!r} holds batch {i} with {done['n']} examples, but batch {i} has "
                    f"{n}: the stream changed; pass resume=False to overwrite"
                )
            if all(os.path.exists(os.path.join(out, f)) for f in done["files"]):
                continue
        size = -(-n // n_dev) * n_dev
        if padded_size is None:
            padded_size = size
        size = max(size, padded_size)
        xs = jax.tree_util.tree_map(
            lambda a, size=size, n=n: jax.device_put(_pad_rows(a, n, size), sharding), x
        )
        kwargs = dict(method_kwargs)
        if has_target:
            if "target" in kwargs:
                raise ValueError(
                    f"target is given twice: by batch {i} and as a keyword; give it once"
                )
            kwargs["target"] = _pad_target(target, n, size)
        elif "target" in kwargs:
            kwargs["target"] = _pad_target(kwargs["target"], n, size)
        if key is not None:
            kwargs["key"] = jax.random.fold_in(key, i)
        res = method(fn, xs, **kwargs)
        if pending is not None:
            finish(pending)
        pending = (i, n, res)
    if pending is not None:
        finish(pending)

    if out is not None:
        if index["structure"] is None:  # nothing written in this run or before
            _write_json(index_path, index)
        return AttributionStore(out)
    if not results:
        raise ValueError("batches is empty: there is nothing to attribute")
    parts = [_leaves(r, structure) for r in results]
    leaves = [np.concatenate(ls, axis=0) for ls in zip(*parts, strict=False)]
    return _rebuild(structure, iter(leaves))
