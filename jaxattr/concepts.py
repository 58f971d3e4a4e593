"""Concept-based interpretability: TCAV (Kim et al., 2018), Captum's ``concept`` package.

A *concept* is a set of examples (striped images, say). A linear classifier separating the
layer activations of two or more concepts gives one *concept activation vector* (CAV) per
concept, the classifier's weight row. The TCAV scores of a concept for some inputs and a
target are then

- ``sign_count``: the fraction of inputs whose target's layer gradient points along the
  CAV (positive directional derivative), and
- ``magnitude``: the mean directional derivative ``grad . cav``,

computed here for many concepts, layers and targets at once: a layer gradient for every
layer in one pass (:func:`jaxattr.layer_gradient_x_activation`), every target in one
``vmap`` (:func:`jaxattr.for_each_target`), and every CAV of a layer in one matrix product.
:func:`significance` runs the statistical test against random concepts (Captum's
experimental sets ``[[concept, random_i], ...]``, Student's t-test, p-values).

The CAV classifier is a linear model fitted in JAX with optax (:class:`DefaultClassifier`,
hinge or logistic loss with an L2 penalty, Captum's ``alpha=0.01``, on a deterministic
train/test split); any object with Captum's ``Classifier`` methods ``train_and_eval``,
``weights`` and ``classes`` can replace it. CAVs are saved and loaded as ``.npz`` files.

The model is a structured model (``jaxattr.bridge.from_torch``, ``jaxattr.flax``) whose
layers are addressed by name, as in every jaxattr layer method.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxattr import _core

Array = jax.Array

__all__ = [
    "CAV",
    "Classifier",
    "Concept",
    "DefaultClassifier",
    "TCAV",
    "compute_cavs",
    "concept_activations",
    "concepts_to_str",
    "significance",
    "tcav",
    "train_cav",
]


# --------------------------------------------------------------------------------------
# Concepts and CAVs
# --------------------------------------------------------------------------------------


class Concept:
    """A named set of examples, Captum's ``Concept``.

    Args:
        id: A unique integer id (the class label of the concept in CAV training).
        name: A readable name.
        data_iter: The concept's examples: an array (N, ...) of model inputs, or a
            re-iterable of such batches (a list, a ``torch`` ``DataLoader``); ``None`` for
            a concept known only through saved CAVs.

    Example:
        >>> import numpy as np
        >>> from jaxattr.concepts import Concept
        >>> Concept(0, "stripes", np.zeros((4, 3))).identifier
        'stripes-0'
    """

    def __init__(self, id: int, name: str, data_iter: Any) -> None:
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            raise TypeError(f"id must be an int, got {type(id).__name__} {id!r}")
        self.id = int(id)
        self.name = str(name)
        self.data_iter = data_iter

    @property
    def identifier(self) -> str:
        """``"<name>-<id>"``, as Captum names files."""
        return f"{self.name}-{self.id}"

    def batches(self) -> Iterable[Any]:
        """The concept's examples as batches of model inputs."""
        if self.data_iter is None:
            raise ValueError(f"concept {self.identifier} has no data_iter to compute activations")
        if hasattr(self.data_iter, "shape") or isinstance(self.data_iter, tuple):
            return [self.data_iter]
        return self.data_iter

    def __repr__(self) -> str:
        return f"Concept({self.id!r}, {self.name!r})"


def concepts_to_str(concepts: Sequence[Concept]) -> str:
    """The key of an experimental set: its concept ids joined by ``-`` (Captum's).

    Args:
        concepts: The concepts of one experimental set.

    Returns:
        E.g. ``"0-1"``.

    Example:
        >>> from jaxattr.concepts import Concept, concepts_to_str
        >>> concepts_to_str([Concept(0, "a", None), Concept(3, "b", None)])
        '0-3'
    """
    return "-".join(str(c.id) for c in concepts)


@dataclasses.dataclass
class CAV:
    """The concept activation vectors of one experimental set at one layer.

    Attributes:
        concepts: The experimental set's concepts.
        layer: The layer name.
        stats: ``{"weights": (K, F) array, one row per class, "classes": (K,) concept
            ids in row order, "accs": test accuracy, ...}`` (a binary classifier's single
            weight ``w`` is stored as the rows ``[-w, w]``, as Captum does).
        save_path: Directory of saved CAVs.
        model_id: Sub-directory naming the model.

    Example:
        >>> import numpy as np
        >>> from jaxattr.concepts import CAV, Concept
        >>> cav = CAV([Concept(0, "a", None), Concept(1, "b", None)], "fc",
        ...           {"weights": np.array([[-1.0, 0.0], [1.0, 0.0]]), "classes": [0, 1]})
        >>> cav.vector(1)
        array([1., 0.])
    """

    concepts: list[Concept]
    layer: str
    stats: dict[str, Any] | None = None
    save_path: str = "./cav/"
    model_id: str = "default_model_id"

    def vector(self, concept_id: int) -> np.ndarray:
        """The CAV of one concept of the set, shape (F,).

        Args:
            concept_id: The concept's id.

        Returns:
            Its weight row.
        """
        classes = [int(c) for c in np.asarray(self.stats["classes"]).reshape(-1)]
        if concept_id not in classes:
            raise KeyError(f"concept_id {concept_id} is not one of this CAV's classes {classes}")
        return np.asarray(self.stats["weights"])[classes.index(concept_id)]

    @staticmethod
    def assemble_save_path(
        path: str, model_id: str, concepts: Sequence[Concept], layer: str
    ) -> str:
        """``<path>/<model_id>/<concept ids>-<layer>.npz``.

        Args:
            path: The CAV directory.
            model_id: The model's sub-directory.
            concepts: The experimental set.
            layer: The layer name.

        Returns:
            The file path.
        """
        return os.path.join(path, model_id, f"{concepts_to_str(concepts)}-{layer}.npz")

    def save(self) -> str:
        """Save to :meth:`assemble_save_path` as ``.npz`` (no pickles); returns the path.

        Scalar and array statistics are saved; other entries are dropped.
        """
        path = CAV.assemble_save_path(self.save_path, self.model_id, self.concepts, self.layer)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        arrays = {
            "concept_ids": np.asarray([c.id for c in self.concepts], np.int64),
            "concept_names": np.asarray([c.name for c in self.concepts], dtype=np.str_),
            "layer": np.asarray(self.layer, dtype=np.str_),
        }
        for k, v in (self.stats or {}).items():
            try:
                a = np.asarray(v)
            except Exception:  # noqa: BLE001 - not an array: not saved
                continue
            if a.dtype != object:
                arrays["stats." + k] = a
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path

    @staticmethod
    def load(cavs_path: str, model_id: str, concepts: Sequence[Concept], layer: str) -> CAV | None:
        """Load a saved CAV, or ``None`` when there is none.

        Args:
            cavs_path: The CAV directory.
            model_id: The model's sub-directory.
            concepts: The experimental set.
            layer: The layer name.

        Returns:
            The :class:`CAV` (its concepts without data), or ``None``.
        """
        path = CAV.assemble_save_path(cavs_path, model_id, concepts, layer)
        if not os.path.exists(path):
            return None
        with np.load(path, allow_pickle=False) as data:
            ids = [int(i) for i in data["concept_ids"]]
            names = [str(n) for n in data["concept_names"]]
            stats = {k[len("stats.") :]: data[k] for k in data.files if k.startswith("stats.")}
            saved_layer = str(data["layer"])
        for k, v in list(stats.items()):
            if v.ndim == 0:
                stats[k] = v.item()
        cs = [Concept(i, n, None) for i, n in zip(ids, names, strict=True)]
        return CAV(cs, saved_layer, stats, cavs_path, model_id)


# --------------------------------------------------------------------------------------
# Classifiers
# --------------------------------------------------------------------------------------


class Classifier(Protocol):
    """What TCAV needs from a CAV classifier (Captum's ``Classifier``, on arrays).

    ``train_and_eval(x, y, **kwargs)`` fits activations ``x`` (N, F) with concept ids
    ``y`` (N,) and returns a dict of statistics (e.g. ``{"accs": 0.97}``) or ``None``;
    ``weights()`` returns one row per class (K, F), or a single row for two classes;
    ``classes()`` the concept ids in row order.
    """

    def train_and_eval(self, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> dict | None: ...

    def weights(self) -> Any: ...

    def classes(self) -> Sequence[int]: ...


LOSSES = ("hinge", "logistic")


class DefaultClassifier:
    """A linear classifier fitted in JAX with optax: the default CAV classifier.

    Captum's default is scikit-learn's ``SGDClassifier(alpha=0.01, max_iter=1000,
    tol=1e-3)`` (hinge loss, L2 penalty ``alpha/2 ||w||^2``, one-vs-rest for several
    classes) on a random split. This one minimises the same objective (mean hinge or
    logistic loss plus ``alpha/2 ||w||^2``, a free intercept), one-vs-rest, on a split
    drawn from ``key``: deterministic and jit-compiled. It runs ``max_iter`` steps of
    Nesterov-accelerated full-batch gradient descent (``optax.sgd``) with step ``1/L`` (``L`` the
    objective's smoothness bound, from the Gram matrix's top eigenvalue). Starting from
    zero weights, every iterate lies in the span of the training activations, so a step
    costs an (N, N) product with the Gram matrix, not a pass over the (N, F) activations:
    a thousand steps take milliseconds. With ``tol`` it stops, like scikit-learn, once the
    objective has not improved by ``tol`` for ``n_iter_no_change`` steps (the slow final
    improvements still move the separating direction, so the default runs all steps).
    :func:`compute_cavs` fits the CAVs of every experimental set of one shape in one
    ``vmap``-ped program.

    Args:
        alpha: L2 penalty.
        max_iter: Gradient steps.
        tol: Smallest improvement of the objective that counts; ``None`` (default):
            always run ``max_iter`` steps.
        n_iter_no_change: Steps without improvement before stopping (with ``tol``).
        loss: ``"hinge"`` or ``"logistic"``.
        key: PRNG key of the train/test split (default ``jax.random.key(0)``).

    Example:
        >>> import numpy as np
        >>> from jaxattr.concepts import DefaultClassifier
        >>> x = np.array([[1.0, 0.0], [2.0, 0.1], [-1.0, 0.0], [-2.0, 0.2]] * 3)
        >>> clf = DefaultClassifier()
        >>> clf.train_and_eval(x, np.array([1, 1, 0, 0] * 3))["accs"]
        1.0
        >>> clf.classes(), clf.weights().shape
        ([0, 1], (1, 2))
    """

    def __init__(
        self,
        alpha: float = 0.01,
        max_iter: int = 1000,
        tol: float | None = None,
        n_iter_no_change: int = 5,
        loss: str = "hinge",
        key: Array | None = None,
    ) -> None:
        self.alpha = float(alpha)
        self.max_iter = _core.check_positive_int(max_iter, "max_iter")
        self.tol = None if tol is None else float(tol)
        self.n_iter_no_change = _core.check_positive_int(n_iter_no_change, "n_iter_no_change")
        self.loss = _core.check_choice(loss, "loss", LOSSES)
        self.key = jax.random.key(0) if key is None else key
        self._w: np.ndarray | None = None
        self._b: np.ndarray | None = None
        self._classes: list[int] | None = None

    def _prepare(self, x: Any, y: Any, test_split_ratio: float):
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        y = np.asarray(y).reshape(-1)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}"
            )
        classes = sorted({int(c) for c in y})
        if len(classes) < 2:
            raise ValueError(f"a CAV needs at least two concepts' examples, got classes {classes}")
        perm = np.asarray(jax.random.permutation(self.key, x.shape[0]))
        n_test = int(test_split_ratio * x.shape[0])
        test, train = perm[:n_test], perm[n_test:]
        targets = np.stack([np.where(y == c, 1.0, -1.0) for c in classes], 1).astype(np.float32)
        if len(classes) == 2:
            targets = targets[:, 1:]
        return x, y, classes, train, (test if n_test else train), targets

    def train_and_eval_many(
        self, xs: Sequence[Any], ys: Sequence[Any], test_split_ratio: float = 0.33
    ) -> list[tuple[np.ndarray, list[int], dict[str, Any]]]:
        """Fit several classification problems of one shape in one compiled program.

        Args:
            xs: Activations, each (N, F) (the same N and F for all).
            ys: Concept ids, each (N,) (the same number of classes for all).
            test_split_ratio: Held-out fraction.

        Returns:
            Per problem: ``(weights, classes, {"accs": held-out accuracy})``.
        """
        prepared = [self._prepare(x, y, test_split_ratio) for x, y in zip(xs, ys, strict=True)]
        shapes = {(p[0][p[3]].shape, p[5].shape[1]) for p in prepared}
        if len(shapes) != 1:
            raise ValueError(f"train_and_eval_many needs problems of one shape, got {shapes}")
        w, b = _fit_linear(
            jnp.asarray(np.stack([p[0][p[3]] for p in prepared])),
            jnp.asarray(np.stack([p[5][p[3]] for p in prepared])),
            alpha=self.alpha,
            steps=self.max_iter,
            loss=self.loss,
            tol=self.tol,
            patience=self.n_iter_no_change,
        )
        w, b = np.asarray(w), np.asarray(b)
        out = []
        for i, (x, y, classes, _, held, _) in enumerate(prepared):
            pred = _predict(w[i].T, b[i], classes, x[held])
            out.append((w[i].T, classes, {"accs": float(np.mean(pred == y[held]))}))
        self._w, self._b, self._classes = w[-1].T, b[-1], prepared[-1][2]
        return out

    def train_and_eval(
        self, x: Any, y: Any, test_split_ratio: float = 0.33, **kwargs: Any
    ) -> dict[str, Any]:
        """Fit on a random ``1 - test_split_ratio`` of the examples, score the rest.

        Args:
            x: Activations (N, F).
            y: Concept ids (N,).
            test_split_ratio: Held-out fraction (Captum's default 0.33).
            **kwargs: Ignored (Captum compatibility).

        Returns:
            ``{"accs": held-out accuracy}`` (on the training examples when none is held
            out).
        """
        return self.train_and_eval_many([x], [y], test_split_ratio)[0][2]

    def predict(self, x: Any) -> np.ndarray:
        """Predicted concept ids of activations (N, F)."""
        if self._w is None:
            raise ValueError("the classifier is not trained: call train_and_eval first")
        return _predict(self._w, self._b, self._classes, x)

    def weights(self) -> np.ndarray:
        """(1, F) for two classes, (K, F) otherwise (intercept excluded)."""
        if self._w is None:
            raise ValueError("the classifier is not trained: call train_and_eval first")
        return self._w

    def classes(self) -> list[int]:
        """The concept ids, sorted (the order of :meth:`weights`' rows)."""
        if self._classes is None:
            raise ValueError("the classifier is not trained: call train_and_eval first")
        return list(self._classes)


def _predict(w: np.ndarray, b: np.ndarray, classes: Sequence[int], x: Any) -> np.ndarray:
    scores = np.asarray(x, np.float32).reshape(len(x), -1) @ w.T + b
    idx = (scores[:, 0] > 0).astype(int) if scores.shape[1] == 1 else np.argmax(scores, 1)
    return np.asarray(classes)[idx]


def _fit_linear(x, t, *, alpha, steps, loss, tol, patience):
    """Minimise, for each of S problems, the mean one-vs-rest loss + ``alpha/2 ||W||^2``.

    ``x`` (S, N, F), ``t`` (S, N, K) of +-1: returns (W (S, F, K), b (S, K)).
    """
    return _fit_core(
        x=x,
        t=t,
        alpha=np.float32(alpha),
        tol=np.float32(-1.0 if tol is None else tol),
        steps=steps,
        loss=loss,
        patience=patience,
    )


@_core.cached_jit(("steps", "loss", "patience"))
def _fit_core(*, x, t, alpha, tol, steps, loss, patience):
    """Nesterov gradient descent (``optax.sgd``) on the primal objective, run in the span
    of the training activations: with zero initial weights every iterate is ``W = X^T A``, so
    each step costs an (N, N) product with the Gram matrix ``X X^T`` instead of two
    passes over the (N, F) activations (the iterates are those of primal descent)."""

    def one(x, t):
        n = x.shape[0]
        gram = x @ x.T
        top = jnp.linalg.eigvalsh(gram)[-1]
        scale = 0.25 if loss == "logistic" else 1.0
        step = 1.0 / (scale * (top + 1.0) / n + alpha)  # (+1: the intercept's direction)

        def value_and_grads(a, b):
            z = t * (gram @ a + b[None])
            if loss == "hinge":
                per = jnp.maximum(0.0, 1.0 - z)
                dz = jnp.where(z < 1.0, -1.0, 0.0)
            else:
                per = jax.nn.softplus(-z)
                dz = -jax.nn.sigmoid(-z)
            g = dz * t / n  # d mean loss / d scores
            value = jnp.mean(jnp.sum(per, 1)) + 0.5 * alpha * jnp.sum(a * (gram @ a))
            return value, g + alpha * a, jnp.sum(g, 0)

        opt = optax.sgd(step, momentum=0.9, nesterov=True)

        def cond(carry):
            i, stale = carry[2], carry[4]
            return (i < steps) & ((tol < 0) | (stale < patience))

        def body(carry):
            params, state, i, best, stale = carry
            # the primal gradient X^T (g + alpha A) is represented by its coefficients
            value, ga, gb = value_and_grads(*params)
            updates, state = opt.update((ga, gb), state, params)
            better = value < best - tol
            stale = jnp.where(better, 0, stale + 1)
            return (
                optax.apply_updates(params, updates),
                state,
                i + 1,
                jnp.minimum(best, value),
                stale,
            )

        params = (jnp.zeros((n, t.shape[1]), x.dtype), jnp.zeros((t.shape[1],), x.dtype))
        init = (params, opt.init(params), 0, jnp.asarray(jnp.inf, x.dtype), 0)
        (a, b), *_ = jax.lax.while_loop(cond, body, init)
        return x.T @ a, b

    return jax.vmap(one)(x, t)


# --------------------------------------------------------------------------------------
# Activations, CAV training
# --------------------------------------------------------------------------------------


def _check_layers(layers: str | Sequence[str]) -> list[str]:
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"layers must be a layer name or a non-empty list of names, got {layers!r}"
        )
    return names


def _to_input(batch: Any) -> Any:
    if hasattr(batch, "detach") and hasattr(batch, "cpu"):
        return batch.detach().cpu().numpy()
    if isinstance(batch, (tuple, list)):
        return tuple(_to_input(b) for b in batch)
    return batch


def concept_activations(
    model: Any,
    concept: Concept,
    layers: str | Sequence[str],
    *,
    attribute_to_layer_input: bool = False,
) -> dict[str, np.ndarray]:
    """The flattened activations of a concept's examples at each layer.

    Args:
        model: A structured model.
        concept: The concept (its ``data_iter`` batches are model inputs).
        layers: A layer name or names.
        attribute_to_layer_input: Use the layers' inputs instead of their outputs.

    Returns:
        ``{layer: (N, F)}``, ``N`` the concept's examples.

    Example:
        >>> import numpy as np
        >>> from jaxattr.concepts import Concept, concept_activations
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> c = Concept(0, "shapes", np.asarray(make_shapes(3)[0]))
        >>> concept_activations(demo_model(), c, ["conv3", "fc"])["fc"].shape
        (3, 4)
    """
    from jaxattr._layer import layer_activation

    names = _check_layers(layers)
    parts: dict[str, list] = {n: [] for n in names}
    for batch in concept.batches():
        acts = layer_activation(
            model, _to_input(batch), names, attribute_to_layer_input=attribute_to_layer_input
        )
        for n, a in zip(names, acts, strict=True):
            if isinstance(a, tuple):
                a = jnp.concatenate([t.reshape(t.shape[0], -1) for t in a], 1)
            parts[n].append(np.asarray(a).reshape(a.shape[0], -1))
    if not parts[names[0]]:
        raise ValueError(f"concept {concept.identifier}'s data_iter yielded no batch")
    return {n: np.concatenate(p) for n, p in parts.items()}


def train_cav(
    concepts: Sequence[Concept],
    layer: str,
    activations: Mapping[int, np.ndarray],
    *,
    classifier: Any = None,
    save_path: str | None = None,
    model_id: str = "default_model_id",
    **classifier_kwargs: Any,
) -> CAV:
    """Fit the CAV classifier of one experimental set at one layer.

    Args:
        concepts: The experimental set (two or more concepts).
        layer: The layer name (recorded in the CAV).
        activations: ``{concept id: (N_c, F) activations at layer}``.
        classifier: A :class:`Classifier` (default :class:`DefaultClassifier`).
        save_path: If given, the CAV is saved there (``.npz``).
        model_id: The model's sub-directory of ``save_path``.
        **classifier_kwargs: Passed to ``classifier.train_and_eval``.

    Returns:
        The :class:`CAV`, with the classifier's statistics (``"accs"``).

    Example:
        >>> import numpy as np
        >>> from jaxattr.concepts import Concept, train_cav
        >>> a, b = Concept(0, "a", None), Concept(1, "b", None)
        >>> acts = {0: np.array([[1.0, 0.0]] * 6), 1: np.array([[0.0, 1.0]] * 6)}
        >>> cav = train_cav([a, b], "fc", acts)
        >>> cav.stats["accs"], bool(cav.vector(1)[1] > 0)
        (1.0, True)
    """
    if len(concepts) < 2:
        raise ValueError(f"an experimental set needs at least 2 concepts, got {len(concepts)}")
    classifier = DefaultClassifier() if classifier is None else classifier
    for meth in ("train_and_eval", "weights", "classes"):
        if not callable(getattr(classifier, meth, None)):
            raise TypeError(
                f"classifier must have train_and_eval, weights and classes methods; "
                f"{type(classifier).__name__} has no {meth}"
            )
    xs, ys = [], []
    for c in concepts:
        if c.id not in activations:
            raise KeyError(f"activations has no entry for concept {c.identifier} (id {c.id})")
        a = np.asarray(activations[c.id])
        xs.append(a.reshape(a.shape[0], -1))
        ys.append(np.full(a.shape[0], c.id))
    stats = classifier.train_and_eval(np.concatenate(xs), np.concatenate(ys), **classifier_kwargs)
    return _make_cav(
        concepts, layer, classifier.weights(), classifier.classes(), stats, save_path, model_id
    )


def _make_cav(concepts, layer, weights, classes, stats, save_path, model_id) -> CAV:
    stats = dict(stats or {})
    weights = np.asarray(weights)
    classes = [int(c) for c in np.asarray(classes).reshape(-1)]
    if weights.ndim != 2 or weights.shape[0] == 0:
        raise ValueError(f"classifier.weights() must be (K, F), got shape {weights.shape}")
    if weights.shape[0] == 1:  # binary: one weight vector, Captum stacks [-w, w]
        weights = np.stack([-weights[0], weights[0]])
    if len(classes) != weights.shape[0]:
        raise ValueError(
            f"classifier.classes() must name one class per weight row: {weights.shape[0]} rows, "
            f"got classes {classes}"
        )
    cav = CAV(
        list(concepts),
        layer,
        {"weights": weights, "classes": classes, **stats},
        save_path or "./cav/",
        model_id,
    )
    if save_path is not None:
        cav.save()
    return cav


def _check_sets(experimental_sets: Sequence[Sequence[Concept]]) -> None:
    if not experimental_sets:
        raise ValueError("experimental_sets must hold at least one set of concepts, got none")
    seen: dict[int, Concept] = {}
    for s in experimental_sets:
        if len(s) < 2:
            raise ValueError(f"each experimental set needs at least 2 concepts, got {list(s)!r}")
        for c in s:
            if not isinstance(c, Concept):
                raise TypeError(f"experimental sets hold Concepts, got {type(c).__name__}")
            if seen.setdefault(c.id, c) is not c:
                raise ValueError(
                    f"two different concepts share id {c.id} ({seen[c.id]!r} and {c!r}); "
                    f"reuse one Concept instance per id"
                )


def compute_cavs(
    model: Any,
    experimental_sets: Sequence[Sequence[Concept]],
    layers: str | Sequence[str],
    *,
    classifier: Any = None,
    attribute_to_layer_input: bool = False,
    save_path: str | None = None,
    model_id: str = "default_model_id",
    force_train: bool = False,
    **classifier_kwargs: Any,
) -> dict[str, dict[str, CAV]]:
    """CAVs of every experimental set at every layer.

    Each concept's activations are computed once for all layers (one pass per batch).
    With ``save_path``, CAVs found there are loaded (unless ``force_train``) and new ones
    saved, as Captum does.

    Args:
        model: A structured model.
        experimental_sets: Lists of concepts, e.g. ``[[stripes, random_0], ...]``.
        layers: A layer name or names.
        classifier: A :class:`Classifier` (default a fresh :class:`DefaultClassifier`).
        attribute_to_layer_input: Use the layers' inputs.
        save_path: CAV directory (``None``: nothing read or written).
        model_id: The model's sub-directory.
        force_train: Retrain even if saved CAVs exist.
        **classifier_kwargs: Passed to ``train_and_eval``.

    Returns:
        ``{concepts_to_str(set): {layer: CAV}}``.

    Example:
        >>> import numpy as np
        >>> from jaxattr.concepts import Concept, compute_cavs
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> x = np.asarray(make_shapes(12)[0])
        >>> a, b, c = (Concept(i, n, x[4 * i : 4 * i + 4] * (i + 1)) for i, n in
        ...            enumerate(["a", "b", "c"]))
        >>> cavs = compute_cavs(demo_model(), [[a, b], [a, c], [a, b, c]], "fc")
        >>> cavs["0-1"]["fc"].stats["weights"].shape, cavs["0-1-2"]["fc"].stats["weights"].shape
        ((2, 4), (3, 4))
    """
    _check_sets(experimental_sets)
    names = _check_layers(layers)
    out: dict[str, dict[str, CAV]] = {}
    missing: dict[str, list] = {}
    for s in experimental_sets:
        key = concepts_to_str(s)
        out.setdefault(key, {})
        for layer in names:
            cav = None
            if save_path is not None and not force_train:
                cav = CAV.load(save_path, model_id, s, layer)
            if cav is None:
                missing.setdefault(key, []).append(layer)
            else:
                out[key][layer] = cav
    needed: dict[int, tuple[Concept, set]] = {}
    for s in experimental_sets:
        for layer in missing.get(concepts_to_str(s), []):
            for c in s:
                needed.setdefault(c.id, (c, set()))[1].add(layer)
    acts: dict[int, dict[str, np.ndarray]] = {}
    for cid, (c, ls) in needed.items():
        acts[cid] = concept_activations(
            model,
            c,
            [n for n in names if n in ls],
            attribute_to_layer_input=attribute_to_layer_input,
        )
    jobs = [(s, layer) for s in experimental_sets for layer in missing.get(concepts_to_str(s), [])]
    if classifier is None:  # the default classifier: one vmapped fit per layer and shape
        groups: dict[tuple, list] = {}
        for s, layer in jobs:
            sizes = tuple(acts[c.id][layer].shape[0] for c in s)
            feats = acts[s[0].id][layer].shape[1]
            groups.setdefault((layer, sum(sizes), feats, len(s)), []).append(s)
        for (layer, *_), sets in groups.items():
            xs = [np.concatenate([acts[c.id][layer] for c in st]) for st in sets]
            ys = [
                np.concatenate([np.full(acts[c.id][layer].shape[0], c.id) for c in st])
                for st in sets
            ]
            fits = DefaultClassifier().train_and_eval_many(xs, ys, **classifier_kwargs)
            for st, (w, classes, stats) in zip(sets, fits, strict=True):
                out[concepts_to_str(st)][layer] = _make_cav(
                    st, layer, w, classes, stats, save_path, model_id
                )
        return out
    for s, layer in jobs:
        out[concepts_to_str(s)][layer] = train_cav(
            s,
            layer,
            {c.id: acts[c.id][layer] for c in s},
            classifier=classifier,
            save_path=save_path,
            model_id=model_id,
            **classifier_kwargs,
        )
    return out


# --------------------------------------------------------------------------------------
# TCAV scores
# --------------------------------------------------------------------------------------


def _layer_gradients(model, inputs, names, target, targets, args, attribute_to_layer_input):
    """Per layer: (N, F) layer gradients, or (T, N, F) for several targets."""
    from jaxattr._for_each import for_each_target
    from jaxattr._layer import layer_gradient_x_activation

    kw = dict(
        multiply_by_inputs=False, attribute_to_layer_input=attribute_to_layer_input, args=args
    )
    if targets is None:
        grads = layer_gradient_x_activation(model, inputs, names, target=target, **kw)
    else:
        grads = for_each_target(
            layer_gradient_x_activation, model, inputs, targets, layer=names, **kw
        )
    lead = 1 if targets is None else 2
    out = []
    for g in grads:
        if isinstance(g, tuple):  # a layer returning a tuple: Captum concatenates
            g = jnp.concatenate([t.reshape(*t.shape[:lead], -1) for t in g], -1)
        out.append(g.reshape(*g.shape[:lead], -1))
    return out


def tcav(
    model: Any,
    inputs: Any,
    experimental_sets: Sequence[Sequence[Concept]],
    layers: str | Sequence[str],
    *,
    target: Any = None,
    targets: Sequence[Any] | None = None,
    cavs: Mapping[str, Mapping[str, CAV]] | None = None,
    classifier: Any = None,
    attribute_to_layer_input: bool = False,
    additional_forward_args: Any = None,
    save_path: str | None = None,
    model_id: str = "default_model_id",
    **classifier_kwargs: Any,
) -> dict[str, dict[str, dict[str, Array]]]:
    """TCAV scores of every experimental set's concepts at every layer, Captum's
    ``TCAV.interpret``.

    Args:
        model: A structured model.
        inputs: The inputs to explain (N, ...), or a tuple of inputs.
        experimental_sets: Lists of concepts (sets of different sizes are fine).
        layers: A layer name or names.
        target: The explained output (any target form of :func:`jaxattr.select_target`).
        targets: Several targets (ints or tuple indices) at once instead of ``target``:
            every score gains a leading axis of size T, computed in one ``vmap``.
        cavs: Precomputed CAVs ``{set key: {layer: CAV}}`` (e.g. from
            :func:`compute_cavs`, or injected vectors); missing ones are trained.
        classifier: The CAV classifier (default :class:`DefaultClassifier`).
        attribute_to_layer_input: Use the layers' inputs (activations and gradients).
        additional_forward_args: Extra positional model arguments (not attributed).
        save_path: Load/save CAVs there (see :func:`compute_cavs`).
        model_id: The model's sub-directory of ``save_path``.
        **classifier_kwargs: Passed to ``train_and_eval``.

    Returns:
        ``{set key: {layer: {"sign_count": (K,), "magnitude": (K,)}}}`` in the order
        of the set's concepts (``(T, K)`` with ``targets``). ``sign_count`` is the
        fraction of inputs with a positive directional derivative ``grad . cav``;
        ``magnitude`` its mean.

    Example:
        >>> import jax, numpy as np
        >>> from jaxattr.concepts import Concept, tcav
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> model = demo_model(); x = np.asarray(make_shapes(12)[0])
        >>> stripes, rand = Concept(0, "bright", x[:6] + 1.0), Concept(1, "random", x[6:])
        >>> scores = tcav(model, x[:4], [[stripes, rand]], "conv3", target=0)
        >>> scores["0-1"]["conv3"]["sign_count"].shape
        (2,)
    """
    _check_sets(experimental_sets)
    names = _check_layers(layers)
    if targets is not None and target is not None:
        raise ValueError("pass either target or targets, not both")
    if targets is not None and (isinstance(targets, (str, int)) or not len(targets)):
        raise ValueError(f"targets must be a non-empty sequence of targets, got {targets!r}")
    have = {k: dict(v) for k, v in (cavs or {}).items()}
    todo = [
        s
        for s in experimental_sets
        if any(layer not in have.get(concepts_to_str(s), {}) for layer in names)
    ]
    if todo:
        fresh = compute_cavs(
            model,
            todo,
            [n for n in names],
            classifier=classifier,
            attribute_to_layer_input=attribute_to_layer_input,
            save_path=save_path,
            model_id=model_id,
            **classifier_kwargs,
        )
        for k, v in fresh.items():
            for layer, cav in v.items():
                have.setdefault(k, {}).setdefault(layer, cav)
    args = () if additional_forward_args is None else additional_forward_args
    args = args if isinstance(args, tuple) else (args,)
    grads = _layer_gradients(
        model, _to_input(inputs), names, target, targets, args, attribute_to_layer_input
    )
    scores: dict[str, dict[str, dict[str, Array]]] = {}
    for layer, g in zip(names, grads, strict=True):
        for s in experimental_sets:
            key = concepts_to_str(s)
            cav = have[key][layer]
            vectors = np.stack([cav.vector(c.id) for c in s]).astype(np.float32)
            if vectors.shape[1] != g.shape[-1]:
                raise ValueError(
                    f"the CAVs of set {key} at layer {layer!r} have {vectors.shape[1]} "
                    f"features, the layer has {g.shape[-1]}"
                )
            d = g.astype(jnp.float32) @ jnp.asarray(vectors).T  # (..., N, K)
            scores.setdefault(key, {})[layer] = {
                "sign_count": jnp.mean((d > 0).astype(jnp.float32), axis=-2),
                "magnitude": jnp.mean(d, axis=-2),
            }
    return scores


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), float64 on the host."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbt + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_test(a: np.ndarray, b: np.ndarray, equal_var: bool) -> tuple[float, float]:
    """Two-sided two-sample t-test (``scipy.stats.ttest_ind``): (t statistic, p-value)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = a.size, b.size
    va, vb = a.var(ddof=1), b.var(ddof=1)
    if equal_var:
        df = na + nb - 2.0
        denom = math.sqrt(((na - 1) * va + (nb - 1) * vb) / df * (1.0 / na + 1.0 / nb))
    else:
        qa, qb = va / na, vb / nb
        denom = math.sqrt(qa + qb)
        df = (qa + qb) ** 2 / (qa**2 / (na - 1) + qb**2 / (nb - 1)) if qa + qb > 0 else 1.0
    diff = float(a.mean() - b.mean())
    if denom == 0:
        return (float("nan"), float("nan")) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    t = diff / denom
    return float(t), float(_betainc(float(df) / 2.0, 0.5, float(df / (df + t * t))))


def significance(
    scores: Mapping[str, Mapping[str, Mapping[str, Any]]],
    experimental_sets: Sequence[Sequence[Concept]],
    layer: str,
    score_type: str = "sign_count",
    *,
    alpha: float = 0.05,
    equal_var: bool = True,
    target_index: int | None = None,
) -> dict[str, Any]:
    """The statistical test of TCAV against random concepts (Captum's tutorial).

    ``experimental_sets`` pair one concept with several random ones,
    ``[[concept, random_0], [concept, random_1], ...]``; the scores of the concept (first
    of each set) and of the random concepts (second) are compared with a two-sample
    t-test (``scipy.stats.ttest_ind``: Student's, or Welch's with ``equal_var=False``).
    A concept is significant when the p-value is below ``alpha``.

    Args:
        scores: The result of :func:`tcav` on those sets.
        experimental_sets: The sets, each ``[concept, random_i]``.
        layer: The layer to test.
        score_type: ``"sign_count"`` or ``"magnitude"``.
        alpha: Significance level.
        equal_var: Student's t-test (``True``, scipy's default) or Welch's.
        target_index: With scores for several ``targets``, which one.

    Returns:
        ``{"p_value", "t_statistic", "significant", "concept_scores" (R,),
        "random_scores" (R,), "concept_mean", "random_mean"}``.

    Example:
        >>> import numpy as np
        >>> from jaxattr.concepts import Concept, significance
        >>> c, r = Concept(0, "c", None), [Concept(i, f"r{i}", None) for i in (1, 2, 3)]
        >>> sets = [[c, ri] for ri in r]
        >>> scores = {f"0-{i}": {"fc": {"sign_count": np.array([0.9 + i / 100, 0.2 - i / 50])}}
        ...           for i in (1, 2, 3)}
        >>> out = significance(scores, sets, "fc")
        >>> bool(out["significant"]), f"{out['p_value']:.1e}"
        (True, '5.0e-07')
    """
    _core.check_choice(score_type, "score_type", ("sign_count", "magnitude"))
    if len(experimental_sets) < 2:
        raise ValueError(
            f"the test needs at least 2 experimental sets [concept, random_i], got "
            f"{len(experimental_sets)}"
        )
    p1, p2 = [], []
    for s in experimental_sets:
        key = concepts_to_str(s)
        if key not in scores or layer not in scores[key]:
            raise KeyError(f"scores has no entry for set {key!r} at layer {layer!r}")
        v = np.asarray(scores[key][layer][score_type])
        if v.ndim == 2:
            if target_index is None:
                raise ValueError("scores hold several targets (shape (T, K)): pass target_index")
            v = v[target_index]
        p1.append(float(v[0]))
        p2.append(float(v[1]))
    t, p = _t_test(np.asarray(p1), np.asarray(p2), equal_var)
    return {
        "p_value": p,
        "t_statistic": t,
        "significant": bool(p < alpha),
        "concept_scores": np.asarray(p1),
        "random_scores": np.asarray(p2),
        "concept_mean": float(np.mean(p1)),
        "random_mean": float(np.mean(p2)),
    }


class TCAV:
    """Captum's ``TCAV`` interface over :func:`compute_cavs` and :func:`tcav`.

    Args:
        model: A structured model.
        layers: A layer name or names.
        model_id: Sub-directory of ``save_path`` for this model's CAVs.
        classifier: The CAV classifier (default :class:`DefaultClassifier`).
        layer_attr_method: Accepted for Captum compatibility only when ``None`` (the
            layer gradient, Captum's default, is used).
        attribute_to_layer_input: Use the layers' inputs.
        save_path: CAV directory; ``None`` keeps CAVs in memory only (Captum's default
            is ``"./cav/"``).
        **classifier_kwargs: Passed to ``train_and_eval``.

    Example:
        >>> import numpy as np
        >>> from jaxattr.concepts import Concept, TCAV
        >>> from jaxattr.demo import demo_model, make_shapes
        >>> x = np.asarray(make_shapes(12)[0])
        >>> a, b = Concept(0, "a", x[:6] * 2.0), Concept(1, "b", x[6:])
        >>> out = TCAV(demo_model(), ["conv2", "conv3"]).interpret(x[:3], [[a, b]], target=1)
        >>> sorted(out["0-1"])
        ['conv2', 'conv3']
    """

    def __init__(
        self,
        model: Any,
        layers: str | Sequence[str],
        model_id: str = "default_model_id",
        classifier: Any = None,
        layer_attr_method: Any = None,
        attribute_to_layer_input: bool = False,
        save_path: str | None = None,
        **classifier_kwargs: Any,
    ) -> None:
        if layer_attr_method is not None:
            raise ValueError(
                "layer_attr_method: only the layer gradient (None, Captum's default) is "
                f"supported, got {layer_attr_method!r}"
            )
        if not model_id:
            raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
        self.model = model
        self.layers = _check_layers(layers)
        self.model_id = model_id
        self.classifier = classifier
        self.classifier_kwargs = classifier_kwargs
        self.attribute_to_layer_input = attribute_to_layer_input
        self.save_path = save_path
        self.cavs: dict[str, dict[str, CAV]] = {}

    def compute_cavs(
        self,
        experimental_sets: Sequence[Sequence[Concept]],
        force_train: bool = False,
        processes: int | None = None,
    ) -> dict[str, dict[str, CAV]]:
        """Train (or load) the CAVs of ``experimental_sets`` at every layer.

        Args:
            experimental_sets: Lists of concepts.
            force_train: Retrain even if CAVs are known or saved.
            processes: Accepted for Captum compatibility (sets are trained in turn).

        Returns:
            All CAVs known so far, ``{set key: {layer: CAV}}``.
        """
        todo = [
            s
            for s in experimental_sets
            if force_train
            or any(layer not in self.cavs.get(concepts_to_str(s), {}) for layer in self.layers)
        ]
        if todo:
            fresh = compute_cavs(
                self.model,
                todo,
                self.layers,
                classifier=self.classifier,
                attribute_to_layer_input=self.attribute_to_layer_input,
                save_path=self.save_path,
                model_id=self.model_id,
                force_train=force_train,
                **self.classifier_kwargs,
            )
            for k, v in fresh.items():
                self.cavs.setdefault(k, {}).update(v)
        return self.cavs

    def interpret(
        self,
        inputs: Any,
        experimental_sets: Sequence[Sequence[Concept]],
        target: Any = None,
        additional_forward_args: Any = None,
        processes: int | None = None,
        **kwargs: Any,
    ) -> dict[str, dict[str, dict[str, Array]]]:
        """TCAV scores (see :func:`tcav`); ``targets=`` may be passed in ``kwargs``.

        Args:
            inputs: Inputs (N, ...) or a tuple of inputs.
            experimental_sets: Lists of concepts.
            target: The explained output.
            additional_forward_args: Extra positional model arguments.
            processes: Accepted for Captum compatibility.
            **kwargs: ``targets`` (several targets at once).

        Returns:
            ``{set key: {layer: {"sign_count": (K,), "magnitude": (K,)}}}``.
        """
        if "attribute_to_layer_input" in kwargs:
            raise ValueError(
                "attribute_to_layer_input is a TCAV constructor argument (it applies to "
                "activations and gradients alike), not an interpret argument"
            )
        unknown = set(kwargs) - {"targets"}
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}")
        self.compute_cavs(experimental_sets)
        return tcav(
            self.model,
            inputs,
            experimental_sets,
            self.layers,
            target=target,
            targets=kwargs.get("targets"),
            cavs=self.cavs,
            attribute_to_layer_input=self.attribute_to_layer_input,
            additional_forward_args=additional_forward_args,
        )
