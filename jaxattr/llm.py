"""Attribution of generated text: which parts of a prompt made a causal LM say its output.

Captum's ``LLMAttribution`` / ``LLMGradientAttribution`` as functions, with its names:

- inputs: :class:`TextTokenInput` (every token a feature, ``skip_tokens``),
  :class:`TextTemplateInput` (named segments of a template, ``baselines``, ``mask``),
  :class:`ProductBaselines` (baselines drawn from a product of choices);
- :func:`llm_attribution` (feature ablation, Shapley value sampling, exact Shapley values,
  LIME, KernelSHAP) and :func:`llm_gradient_attribution` (layer integrated gradients,
  layer gradient x activation on the embedding layer);
- the attributed quantity is the target's log-probability, total (``seq_attr``) and per
  target token (``token_attr``, target tokens x input features), in an
  :class:`LLMAttributionResult` with Captum's plots and an HTML view.

**The model contract.** A causal LM is a pytree callable ``model(input_ids, **extra) ->
logits``: ``input_ids`` int32 (N, S), logits (N, S, vocab) (or a dict holding
``"logits"``), ``extra`` a subset of ``attention_mask`` and ``position_ids`` (int32 (N, S))
named by ``extra_inputs`` (a bridged model: the keyword inputs it was exported with). It
may be a structured model (``jaxattr.bridge.from_torch(hf_model, ids, output="logits")``,
``jaxattr.flax.from_nnx(module)``), a ``jax.tree_util.Partial(apply, params)``, or any
function. Its weights are arguments of every compiled program, never constants.

**How it is fast.** Captum evaluates one perturbed prompt at a time and, by default,
decodes the target token by token. Here every perturbed prompt is packed with the target
into one fixed-length row (teacher forcing: one forward pass scores every target token),
and all rows are one ``vmap``-ped program (``batch_size`` chunks it); on a structured
model the vocabulary projection runs only at the target positions. Layer integrated
gradients shares one forward pass per integration step among all target tokens. For a
causal LM this gives Captum's numbers (its ``use_cached_outputs=False``, which matches a
full forward pass; its default cached decoding drifts by up to ~0.17 in log-probability
with transformers 5.x).

**Padding.** ``padding="right"`` (default) puts the prompt first, then the target, then
pad tokens: exact for any causal model, no attention mask needed. ``padding="left"``
right-aligns the rows and passes ``attention_mask`` and ``position_ids`` (positions
counted from the first real token), which the model must take (``extra_inputs``). A model
exported with a fixed sequence length (the bridge fixes it at conversion) is padded to
that length; otherwise to ``max_length`` or the needed length rounded up to 16.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxattr import llm
    >>> tok = llm.WordTokenizer("the cat sat on a mat".split(), bos_token="<s>")
    >>> table = jax.random.normal(jax.random.key(0), (tok.vocab_size, tok.vocab_size))
    >>> bigram = jax.tree_util.Partial(lambda t, ids: t[ids], table)  # (N, S) -> (N, S, V)
    >>> inp = llm.TextTemplateInput("{} cat sat on {}", values=["the", "a"])
    >>> res = llm.llm_attribution(bigram, tok, inp, target="mat")
    >>> res.input_tokens, res.output_tokens, res.token_attr.shape
    (['the', 'a'], ['mat'], (1, 2))
"""

from __future__ import annotations

import dataclasses
import html
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxattr import _caching
from jaxattr import _llm_model as _m

__all__ = [
    "GRADIENT_METHODS",
    "LLMAttributionResult",
    "METHODS",
    "ProductBaselines",
    "TextTemplateInput",
    "TextTokenInput",
    "WordTokenizer",
    "generate",
    "llm_attribution",
    "llm_gradient_attribution",
    "target_log_probs",
]

#: Perturbation methods of :func:`llm_attribution` (Captum's supported classes).
METHODS = ("feature_ablation", "shapley_value_sampling", "shapley_values", "lime", "kernel_shap")

#: Methods with per-target-token attributions (Captum's ``SUPPORTED_PER_TOKEN_ATTR_METHODS``).
PER_TOKEN_METHODS = ("feature_ablation", "shapley_value_sampling", "shapley_values")

#: Gradient methods of :func:`llm_gradient_attribution`.
GRADIENT_METHODS = ("layer_integrated_gradients", "layer_gradient_x_activation")

#: Keyword options each perturbation method accepts (passed through to jaxattr's method).
_OPTIONS = {
    "feature_ablation": (),
    "shapley_value_sampling": (),
    "shapley_values": (),
    "lime": (
        "interpretable_model",
        "alpha",
        "similarity_func",
        "perturb_func",
        "from_interp_rep_transform",
        "distance_mode",
        "kernel_width",
    ),
    "kernel_shap": (),
}

#: LIME options that change which coalitions are evaluated: token inputs only.
_SAMPLER_OPTIONS = ("perturb_func", "from_interp_rep_transform")


# ======================================================================== tokenizers
class WordTokenizer:
    """A whitespace tokenizer with the Hugging Face tokenizer interface jaxattr.llm uses.

    Any tokenizer with ``encode(text, add_special_tokens=...)``, ``convert_ids_to_tokens``,
    ``convert_tokens_to_ids`` and ``decode`` works with :mod:`jaxattr.llm` (Hugging Face
    ``PreTrainedTokenizerFast`` and friends), and so does a ``tokenizers.Tokenizer``. This
    one needs no package: a word per token, ids in the order given (special tokens
    first), unknown words mapped to ``unk_token``. For examples and tests.

    Args:
        words: The vocabulary (distinct words without whitespace).
        bos_token: A token prepended by ``encode`` (with ``add_special_tokens=True``).
        eos_token: The end-of-text token (``eos_token_id``; generation stops after it).
        unk_token: The token of unknown words.

    Example:
        >>> from jaxattr.llm import WordTokenizer
        >>> tok = WordTokenizer(["hello", "world"], bos_token="<s>", eos_token="</s>")
        >>> tok.encode("hello there world")
        [0, 3, 2, 4]
        >>> tok.convert_ids_to_tokens([0, 3, 2]), tok.decode([3, 4]), tok.vocab_size
        (['<s>', 'hello', '<unk>'], 'hello world', 5)
    """

    def __init__(
        self,
        words: Sequence[str],
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str = "<unk>",
    ):
        if isinstance(words, str):
            raise TypeError("words must be a list of words, got a str; use text.split()")
        specials = [t for t in (bos_token, eos_token, unk_token) if t is not None]
        vocab = list(dict.fromkeys([*specials, *words]))
        bad = [w for w in vocab if not isinstance(w, str) or not w or w.split() != [w]]
        if bad:
            raise ValueError(f"words must be non-empty strings without whitespace, got {bad[:3]}")
        self.vocab = {w: i for i, w in enumerate(vocab)}
        self.ids_to_tokens = vocab
        self.bos_token, self.eos_token, self.unk_token = bos_token, eos_token, unk_token
        self.bos_token_id = None if bos_token is None else self.vocab[bos_token]
        self.eos_token_id = None if eos_token is None else self.vocab[eos_token]
        self.unk_token_id = self.vocab[unk_token]

    @property
    def vocab_size(self) -> int:
        """Number of tokens."""
        return len(self.ids_to_tokens)

    def _spans(self, text: str) -> list[tuple[int, int]]:
        spans, i = [], 0
        for word in text.split():
            i = text.index(word, i)
            spans.append((i, i + len(word)))
            i += len(word)
        return spans

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (the BOS token first when ``add_special_tokens``)."""
        ids = [self.vocab.get(w, self.unk_token_id) for w in text.split()]
        if add_special_tokens and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def __call__(
        self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False
    ) -> dict[str, list]:
        """``{"input_ids": ..., "offset_mapping": ...}`` as a Hugging Face tokenizer."""
        out: dict[str, list] = {"input_ids": self.encode(text, add_special_tokens)}
        if return_offsets_mapping:
            spans = self._spans(text)
            if add_special_tokens and self.bos_token_id is not None:
                spans = [(0, 0), *spans]
            out["offset_mapping"] = spans
        return out

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """The token strings of ``ids``."""
        return [self.ids_to_tokens[int(i)] for i in ids]

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        """The ids of ``tokens`` (``unk_token``'s for unknown ones)."""
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    def decode(self, ids: Sequence[int]) -> str:
        """The tokens of ``ids`` joined by spaces."""
        return " ".join(self.convert_ids_to_tokens(np.asarray(ids).reshape(-1).tolist()))


class _Tok:
    """One interface over Hugging Face tokenizers and ``tokenizers.Tokenizer``."""

    def __init__(self, tok: Any, name: str = "tokenizer"):
        self.tok = tok
        self.hf = hasattr(tok, "convert_ids_to_tokens") and hasattr(tok, "encode")
        self.raw = not self.hf and hasattr(tok, "id_to_token") and hasattr(tok, "encode")
        if not (self.hf or self.raw):
            raise TypeError(
                f"{name} must be a Hugging Face tokenizer (encode, convert_ids_to_tokens, "
                f"convert_tokens_to_ids, decode), a tokenizers.Tokenizer or a "
                f"jaxattr.llm.WordTokenizer, got {type(tok).__name__}"
            )

    def encode(self, text: str, special: bool = True) -> list[int]:
        if self.hf:
            return [int(i) for i in self.tok.encode(text, add_special_tokens=special)]
        return list(self.tok.encode(text, add_special_tokens=special).ids)

    def tokens(self, ids: Sequence[int]) -> list[str]:
        ids = [int(i) for i in ids]
        if self.hf:
            return list(self.tok.convert_ids_to_tokens(ids))
        return [self.tok.id_to_token(i) for i in ids]

    def token_id(self, token: str) -> int | None:
        if self.hf:
            got = self.tok.convert_tokens_to_ids([token])[0]
            if got is None or self.tokens([got])[0] != token:
                return None
            return int(got)
        got = self.tok.token_to_id(token)
        return None if got is None else int(got)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.hf:
            return self.tok.decode(ids)
        return self.tok.decode(ids, skip_special_tokens=False)

    def offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]] | None:
        try:
            if self.hf:
                enc = self.tok(text, return_offsets_mapping=True, add_special_tokens=False)
                return [int(i) for i in enc["input_ids"]], [tuple(o) for o in enc["offset_mapping"]]
            enc = self.tok.encode(text, add_special_tokens=False)
            return list(enc.ids), [tuple(o) for o in enc.offsets]
        except (NotImplementedError, TypeError, KeyError, ValueError):
            return None

    @property
    def eos_token_id(self) -> Any:
        return getattr(self.tok, "eos_token_id", None) if self.hf else None

    def pretty(self, ids: Sequence[int]) -> list[str]:
        """Readable tokens (no byte-level markers such as ``Ġ``), as Captum's output tokens:
        spans of the decoded text, or each id decoded alone when they do not re-encode."""
        ids = [int(i) for i in ids]
        text = self.decode(ids)
        got = self.offsets(text)
        if got is not None and got[0] == ids:
            offs = got[1]
            out, prev_end = [], -1
            for i, (s, e) in enumerate(offs):
                if s == e:  # no span: up to the next token
                    e = offs[i + 1][0] if i + 1 < len(offs) else len(text)
                out.append(_clean(text[s:e]) + (" [OVERLAP]" if prev_end > s else ""))
                prev_end = e
            return out
        return [_clean(self.decode([i])) for i in ids]


def _clean(token: str) -> str:
    return token.replace("\n", "\\n").strip()


# ======================================================================== inputs
class ProductBaselines:
    """Baselines drawn from the Cartesian product of choices per segment (Captum's).

    A :class:`TextTemplateInput` with ``baselines=ProductBaselines(...)`` draws one
    combination per trial from the ``key`` of :func:`llm_attribution` (``num_trials``
    averages over draws). Captum draws a new combination at every model evaluation; one
    draw per trial keeps each trial a proper attribution against one baseline (Shapley
    values then sum to ``f(x) - f(baseline)``), and averaging trials averages over
    baselines.

    Args:
        baseline_values: A list with one list of choices per segment, or a dict keyed by
            segment name; a tuple of names as key groups segments whose baselines go
            together (its choices are tuples).

    Example:
        >>> import jax
        >>> from jaxattr.llm import ProductBaselines
        >>> pb = ProductBaselines({"name": ["He", "She"], ("adj", "noun"): [("big", "dog")]})
        >>> sorted(pb.sample(jax.random.key(0)))
        ['adj', 'name', 'noun']
    """

    def __init__(self, baseline_values: Sequence[Sequence[Any]] | Mapping[Any, Sequence[Any]]):
        if isinstance(baseline_values, Mapping):
            self.dict_keys = list(baseline_values)
            self.baseline_values = [list(baseline_values[k]) for k in self.dict_keys]
            for k, v in zip(self.dict_keys, self.baseline_values, strict=True):
                if isinstance(k, tuple) and any(
                    not isinstance(c, (tuple, list)) or len(c) != len(k) for c in v
                ):
                    raise ValueError(
                        f"baseline_values[{k!r}]: a tuple key groups {len(k)} segments, so "
                        f"each choice must be a tuple of {len(k)} values, got {v!r}"
                    )
        elif isinstance(baseline_values, (list, tuple)):
            self.dict_keys = []
            self.baseline_values = [list(v) for v in baseline_values]
        else:
            raise TypeError(
                f"baseline_values must be a list of lists or a dict, got "
                f"{type(baseline_values).__name__}"
            )
        empty = [i for i, v in enumerate(self.baseline_values) if not v]
        if empty:
            raise ValueError(f"baseline_values: every segment needs a choice; {empty} are empty")

    def sample(self, key: jax.Array) -> list[Any] | dict[str, Any]:
        """One combination, drawn from ``key``: a list, or a dict for dict choices."""
        if not isinstance(key, jax.Array):
            raise TypeError(f"key must be a jax.random key, got {type(key).__name__}")
        sizes = jnp.asarray([len(v) for v in self.baseline_values])
        idx = np.asarray(jax.random.randint(key, (len(sizes),), 0, sizes))
        picks = [v[int(i)] for v, i in zip(self.baseline_values, idx, strict=True)]
        if not self.dict_keys:
            return picks
        out: dict[str, Any] = {}
        for k, v in zip(self.dict_keys, picks, strict=True):
            if isinstance(k, tuple):
                out.update(dict(zip(k, v, strict=True)))
            else:
                out[k] = v
        return out

    def __call__(self, key: jax.Array | None = None) -> list[Any] | dict[str, Any]:
        """:meth:`sample`; the key is required (randomness only from an explicit key)."""
        if key is None:
            raise TypeError("ProductBaselines draws from an explicit key: call sample(key)")
        return self.sample(key)


class TextTemplateInput:
    """Text whose features are the segments filling a template (Captum's).

    The model input is ``template.format(*values)`` (or ``template(*values)``, or with
    keywords for dict values), tokenized by the tokenizer; a segment that is "absent" takes
    its baseline (default the empty string). Segments with the same ``mask`` id form one
    feature and get the same attribution.

    Args:
        template: A format string with one field per segment (``"{} feels {}"`` or
            ``"{name} feels {mood}"``), or a function of the segments returning a string.
        values: The segments: a list, or a dict keyed by field name.
        baselines: Replacement per segment, same form as ``values``; a
            :class:`ProductBaselines` or a function returning such a list/dict (called once
            per trial); ``None``: empty strings.
        mask: One feature id (int) per segment, same form as ``values``; ``None``: every
            segment is a feature.

    Attributes:
        values: The segments (a list); ``n_features`` of them.
        n_itp_features: Number of features (distinct mask ids).
        formatted_mask: Per segment, its feature index 0..n_itp_features-1 (sorted ids).

    Example:
        >>> from jaxattr.llm import TextTemplateInput
        >>> inp = TextTemplateInput("{} feels {} now", ["He", "sad"], baselines=["It", "ok"])
        >>> inp.to_model_input([[0, 1]])
        'It feels sad now'
        >>> TextTemplateInput("{a} and {b} or {c}", {"a": "x", "b": "y", "c": "z"},
        ...                   mask={"a": 0, "b": 1, "c": 0}).n_itp_features
        2
    """

    def __init__(
        self,
        template: str | Callable[..., str],
        values: Sequence[str] | Mapping[str, str],
        baselines: Any = None,
        mask: Sequence[int] | Mapping[str, int] | None = None,
    ):
        if isinstance(values, Mapping):
            self.dict_keys = list(values)
            self.values = [values[k] for k in self.dict_keys]
        elif isinstance(values, (list, tuple)):
            self.dict_keys = []
            self.values = list(values)
        else:
            raise TypeError(f"values must be a list or a dict, got {type(values).__name__}")
        if not self.values:
            raise ValueError("values must hold at least one segment, got none")
        self.n_features = len(self.values)
        self.baselines = (
            self._as_list(baselines, "baselines")
            if (baselines is not None and not callable(baselines))
            else baselines
        )
        if baselines is None:
            self.baselines = [""] * self.n_features
        self.mask = mask
        if mask is None:
            self.formatted_mask = list(range(self.n_features))
        else:
            m = self._as_list(mask, "mask")
            bad = [v for v in m if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
            if bad:
                raise TypeError(f"mask must hold int feature ids, got {bad[:3]}")
            ids = sorted(set(int(v) for v in m))
            self.formatted_mask = [ids.index(int(v)) for v in m]
        self.n_itp_features = max(self.formatted_mask) + 1
        self.template = template
        if isinstance(template, str):
            self.format_fn = template.format
            self._check_fields(template)
        elif callable(template):
            self.format_fn = template
        else:
            raise TypeError(
                f"template must be a format string or a callable, got {type(template).__name__}"
            )
        self.to_model_input()  # fails here, naming the template, if it does not format
        if not callable(self.baselines):
            self.to_model_input(np.zeros((1, self.n_itp_features)))

    def _as_list(self, value: Any, name: str) -> list:
        if self.dict_keys:
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"{name} must be a dict keyed like values ({self.dict_keys}) since values "
                    f"is a dict, got {type(value).__name__}"
                )
            missing = [k for k in self.dict_keys if k not in value]
            if missing:
                raise ValueError(f"{name} lacks the segments {missing} of values")
            return [value[k] for k in self.dict_keys]
        if not isinstance(value, (list, tuple)):
            raise TypeError(
                f"{name} must be a list like values since values is a list, got "
                f"{type(value).__name__}"
            )
        if len(value) != self.n_features:
            raise ValueError(
                f"{name} must give one entry per segment ({self.n_features}), got {len(value)}"
            )
        return list(value)

    def _check_fields(self, template: str) -> None:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        if self.dict_keys:
            return  # named fields: formatting checks them
        if len(fields) != self.n_features:
            raise ValueError(
                f"template {template!r} has {len(fields)} fields, but values gives "
                f"{self.n_features} segments"
            )

    def to_tensor(self) -> np.ndarray:
        """The interpretable representation: all features present, (1, n_itp_features)."""
        return np.ones((1, self.n_itp_features), np.float32)

    def resolve_baselines(self, key: jax.Array | None = None) -> list[Any]:
        """The baselines as a list: drawn from ``key`` for :class:`ProductBaselines`, the
        result of a baselines function, or the given list."""
        b = self.baselines
        if not callable(b):
            return list(b)  # normalised to a list at construction
        if isinstance(b, ProductBaselines):
            if key is None:
                raise ValueError(
                    "baselines is a ProductBaselines: pass key=jax.random.key(seed) to draw them"
                )
            b = b.sample(key)
        else:
            b = b()
        return self._as_list(b, "baselines")

    def to_model_input(
        self, perturbed_tensor: Any = None, baselines: Sequence[Any] | None = None
    ) -> str:
        """The text with the absent features (``perturbed_tensor`` 0, shape (1, F)) at
        their baselines (``baselines`` as a list, default :meth:`resolve_baselines`)."""
        values = list(self.values)
        if perturbed_tensor is not None:
            row = np.asarray(perturbed_tensor).reshape(-1)
            if row.shape[0] != self.n_itp_features:
                raise ValueError(
                    f"perturbed_tensor must hold {self.n_itp_features} features, got shape "
                    f"{np.asarray(perturbed_tensor).shape}"
                )
            base = self.resolve_baselines() if baselines is None else list(baselines)
            for i in range(self.n_features):
                if not row[self.formatted_mask[i]]:
                    values[i] = base[i]
        try:
            if self.dict_keys:
                return self.format_fn(**dict(zip(self.dict_keys, values, strict=True)))
            return self.format_fn(*values)
        except (IndexError, KeyError, TypeError) as err:
            raise ValueError(
                f"template {self.template!r} does not format with the segments "
                f"{self.dict_keys or len(values)}: {type(err).__name__}: {err}"
            ) from err

    def format_attr(self, itp_attr: Any) -> np.ndarray:
        """Attributions of the features (..., n_itp_features) -> of the segments
        (..., n_features)."""
        a = np.asarray(itp_attr)
        return a[..., np.asarray(self.formatted_mask)]


class TextTokenInput:
    """Text whose features are its tokens (Captum's).

    Args:
        text: The prompt; tokenized with the tokenizer's special tokens (a BOS token, say).
        tokenizer: The model's tokenizer.
        baselines: The token replacing an absent one: an id, or a token string.
        skip_tokens: Tokens that are not features (ids or token strings), e.g. the BOS
            token: they are never replaced.

    Attributes:
        ids: The token ids, (L,) int32.
        itp_positions: Indices into ``ids`` of the features, (F,).
        values: The features' token strings (``convert_ids_to_tokens``).
        n_itp_features: F.
        baselines: The baseline token id.

    Example:
        >>> from jaxattr.llm import TextTokenInput, WordTokenizer
        >>> tok = WordTokenizer("a b c".split(), bos_token="<s>")
        >>> inp = TextTokenInput("a b c", tok, skip_tokens=["<s>"])
        >>> inp.values, inp.to_model_input([[1, 0, 1]]).tolist()
        (['a', 'b', 'c'], [[0, 2, 0, 4]])
    """

    def __init__(
        self,
        text: str,
        tokenizer: Any,
        baselines: int | str = 0,
        skip_tokens: Sequence[int] | Sequence[str] | None = None,
    ):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        tok = _Tok(tokenizer)
        self.text = text
        self.ids = np.asarray(tok.encode(text), np.int32)
        skip: set[int] = set()
        if skip_tokens:
            for s in skip_tokens:
                if isinstance(s, str):
                    got = tok.token_id(s)
                    if got is None:
                        raise ValueError(f"skip_tokens: {s!r} is not a token of the tokenizer")
                    skip.add(got)
                elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
                    skip.add(int(s))
                else:
                    raise TypeError(f"skip_tokens must hold ids or token strings, got {s!r}")
        self.skip_tokens = skip_tokens
        self.itp_positions = np.asarray(
            [i for i, t in enumerate(self.ids.tolist()) if t not in skip], np.int64
        )
        if self.itp_positions.size == 0:
            raise ValueError(
                f"text {text!r}: every token is in skip_tokens, nothing is left to attribute"
            )
        self.values = tok.tokens(self.ids[self.itp_positions])
        self.n_itp_features = len(self.values)
        if isinstance(baselines, str):
            got = tok.token_id(baselines)
            if got is None:
                raise ValueError(f"baselines: {baselines!r} is not a token of the tokenizer")
            baselines = got
        elif isinstance(baselines, bool) or not isinstance(baselines, (int, np.integer)):
            raise TypeError(f"baselines must be a token id or token string, got {baselines!r}")
        self.baselines = int(baselines)

    @property
    def itp_mask(self) -> np.ndarray:
        """(1, L) bool: which tokens are features."""
        m = np.zeros((1, len(self.ids)), bool)
        m[0, self.itp_positions] = True
        return m

    def to_tensor(self) -> np.ndarray:
        """The interpretable representation: all features present, (1, F)."""
        return np.ones((1, self.n_itp_features), np.float32)

    def to_model_input(self, perturbed_tensor: Any = None) -> np.ndarray:
        """Token ids (N, L) with the features whose ``perturbed_tensor`` entry is not 1
        replaced by the baseline token (the original ids (1, L) without it)."""
        ids = self.ids[None]
        if perturbed_tensor is None:
            return ids.copy()
        p = np.asarray(perturbed_tensor)
        if p.ndim != 2 or p.shape[1] != self.n_itp_features:
            raise ValueError(
                f"perturbed_tensor must have shape (N, {self.n_itp_features}), got {p.shape}"
            )
        out = np.repeat(ids, p.shape[0], axis=0)
        cur = out[:, self.itp_positions]
        out[:, self.itp_positions] = np.where(p != 1, self.baselines, cur)
        return out

    def format_attr(self, itp_attr: Any) -> np.ndarray:
        """Identity (token features are the model's tokens)."""
        return np.asarray(itp_attr)


# ======================================================================== result
@dataclasses.dataclass
class LLMAttributionResult:
    """What :func:`llm_attribution` / :func:`llm_gradient_attribution` return (Captum's).

    Attributes:
        seq_attr: Attribution of the whole target's log-probability to each input feature,
            (F,).
        token_attr: One row per target token, (T, F); ``None`` for LIME and KernelSHAP
            (they explain the total only, as in Captum).
        input_tokens: The features' names (the tokens, or the template's segments), F.
        output_tokens: The target tokens, readable, T.
        target_ids: The target token ids, (T,).

    Example:
        >>> import numpy as np
        >>> from jaxattr.llm import LLMAttributionResult
        >>> r = LLMAttributionResult(seq_attr=np.array([0.5, -1.0]), input_tokens=["a", "b"],
        ...                          output_tokens=["c"], token_attr=np.array([[0.5, -1.0]]))
        >>> r.seq_attr_dict
        {'a': 0.5, 'b': -1.0}
        >>> "<table" in r.to_html()
        True
    """

    seq_attr: np.ndarray
    input_tokens: list[str]
    output_tokens: list[str]
    token_attr: np.ndarray | None = None
    target_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.seq_attr = np.asarray(self.seq_attr, np.float32)
        if self.seq_attr.ndim != 1 or self.seq_attr.shape[0] != len(self.input_tokens):
            raise ValueError(
                f"seq_attr must have shape ({len(self.input_tokens)},) (one per input token), "
                f"got {self.seq_attr.shape}"
            )
        if self.token_attr is not None:
            self.token_attr = np.asarray(self.token_attr, np.float32)
            want = (len(self.output_tokens), len(self.input_tokens))
            if self.token_attr.shape != want:
                raise ValueError(
                    f"token_attr must have shape {want} (output x input tokens), got "
                    f"{self.token_attr.shape}"
                )

    @property
    def seq_attr_dict(self) -> dict[str, float]:
        """``{input token: seq_attr}`` (a repeated token keeps its last value, as Captum)."""
        return {k: float(v) for k, v in zip(self.input_tokens, self.seq_attr, strict=True)}

    # ---------------------------------------------------------------- pictures
    @staticmethod
    def _cmap():
        from matplotlib.colors import LinearSegmentedColormap

        return LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])

    @staticmethod
    def _figure(show: bool, size: tuple[float, float]):
        try:
            if show:
                import matplotlib.pyplot as plt

                fig = plt.figure(figsize=size)
            else:
                from matplotlib.figure import Figure

                fig = Figure(figsize=size)
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("plots need matplotlib: pip install jaxattr[viz]") from err
        return fig, fig.subplots()

    @staticmethod
    def _labels(tokens: Sequence[str]) -> list[str]:
        out = []
        for t in tokens:
            s = repr(t)[1:-1]
            out.append(s if len(s) <= 50 else s[:47] + "...")
        return out

    def plot_token_attr(self, show: bool = False) -> Any:
        """Heat map of ``token_attr``: target tokens (rows) x input tokens (columns), green
        positive, red negative, with each value written in its cell.

        Args:
            show: Show the figure (pyplot) and return None; else return ``(fig, ax)``.

        Returns:
            ``(fig, ax)``, or None with ``show=True``.

        Raises:
            ValueError: No per-token attribution (LIME, KernelSHAP).
        """
        if self.token_attr is None:
            raise ValueError(
                "token_attr is None (LIME and KernelSHAP explain the total only); use plot_seq_attr"
            )
        data = self.token_attr
        vmax = float(np.abs(data).max()) or 1.0
        fig, ax = self._figure(show, (max(data.shape[1] * 1.3, 6.4), max(data.shape[0] / 2.5, 4.8)))
        ax.grid(False)
        im = ax.imshow(data, vmax=vmax, vmin=-vmax, cmap=self._cmap(), aspect="auto")
        fig.set_facecolor("white")
        cbar = fig.colorbar(im, ax=ax)
        cbar.ax.set_ylabel("Token Attribution", rotation=-90, va="bottom")
        ax.set_xticks(np.arange(data.shape[1]), labels=self._labels(self.input_tokens))
        ax.set_yticks(np.arange(data.shape[0]), labels=self._labels(self.output_tokens))
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
        for lab in ax.get_xticklabels():
            lab.set_rotation(-30)
            lab.set_ha("right")
            lab.set_rotation_mode("anchor")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                v = data[i, j]
                color = "black" if 0.2 < im.norm(v) < 0.8 else "white"
                ax.text(j, i, f"{v:.4f}", ha="center", va="center", color=color)
        if show:
            import matplotlib.pyplot as plt

            plt.show()
            return None
        return fig, ax

    def plot_seq_attr(self, show: bool = False) -> Any:
        """Bar chart of ``seq_attr`` over the input tokens (blue positive, red negative).

        Args:
            show: Show the figure (pyplot) and return None; else return ``(fig, ax)``.

        Returns:
            ``(fig, ax)``, or None with ``show=True``.
        """
        data = self.seq_attr
        fig, ax = self._figure(show, (max(len(data) / 2, 6.4), max(len(data) / 4, 4.8)))
        ax.set_xticks(range(len(data)), labels=self._labels(self.input_tokens))
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
        for lab in ax.get_xticklabels():
            lab.set_rotation(-30)
            lab.set_ha("right")
            lab.set_rotation_mode("anchor")
        fig.set_facecolor("white")
        ax.bar(range(len(data)), np.maximum(data, 0), align="center", color="#4772b3")
        ax.bar(range(len(data)), np.minimum(data, 0), align="center", color="#d0365b")
        ax.set_ylabel("Sequence Attribution", rotation=90, va="bottom")
        if show:
            import matplotlib.pyplot as plt

            plt.show()
            return None
        return fig, ax

    def to_html(self) -> str:
        """The attributions as an HTML table: a row for the whole target, then one per
        target token, each input token coloured (green positive, red negative) on one
        scale, its value as tooltip (:func:`jaxattr.viz.visualize_text`)."""
        from jaxattr.viz import visualize_text

        rows = [self.seq_attr]
        labels = ["(all)"]
        if self.token_attr is not None:
            rows += list(self.token_attr)
            labels += [html.escape(t) for t in self.output_tokens]
        scale = max(float(np.abs(np.stack(rows)).max()), 1e-30)
        return visualize_text(
            [list(self.input_tokens)] * len(rows), [r / scale for r in rows], labels=labels
        )

    def _repr_html_(self) -> str:
        return self.to_html()


# ======================================================================== shared set-up
def _check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _target_ids(target: Any, tok: _Tok, name: str = "target") -> np.ndarray:
    if isinstance(target, str):
        ids = tok.encode(target, special=False)
        if not ids:
            raise ValueError(f"{name} {target!r} encodes to no tokens")
        return np.asarray(ids, np.int32)
    if type(target).__module__.startswith("torch"):
        target = target.detach().cpu().numpy()
    try:
        arr = np.asarray(target)
    except Exception as err:  # noqa: BLE001 - named below
        raise TypeError(f"{name} must be a str or token ids, got {type(target).__name__}") from err
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{name} must be a str or integer token ids, got {type(target).__name__} of dtype "
            f"{arr.dtype}"
        )
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} token ids must have shape (T,) with T >= 1, got {arr.shape}")
    if (arr < 0).any():
        raise ValueError(f"{name} token ids must be >= 0, got {arr.tolist()}")
    return arr.astype(np.int32)


def _check_vocab(tgt: np.ndarray, vocab: int) -> None:
    if int(tgt.max()) >= vocab:
        raise ValueError(
            f"target token ids must be < the model's vocabulary size {vocab}, got {int(tgt.max())}"
        )


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _prompt_ids(inp: Any, tok: _Tok) -> np.ndarray:
    if isinstance(inp, TextTokenInput):
        return inp.ids
    return np.asarray(tok.encode(inp.to_model_input(None)), np.int32)


def _check_padding(padding: str, call: _m.Call) -> None:
    if padding == "left" and not {"attention_mask", "position_ids"} <= set(call.kw_names):
        raise ValueError(
            f"padding='left' needs a model taking attention_mask and position_ids "
            f"(extra_inputs), but it takes {list(call.kw_names)}; convert it with both "
            f"keyword inputs, or use padding='right' (exact for causal models)"
        )


def _resolve_target(
    model,
    tok,
    inp,
    target,
    *,
    max_new_tokens,
    eos_token_id,
    max_length,
    extra_inputs,
    logits_layer,
    show_progress,
) -> np.ndarray:
    """The target ids: given, or the model's greedy continuation of the prompt."""
    if target is not None:
        return _target_ids(target, tok)
    max_new_tokens = _check_positive(max_new_tokens, "max_new_tokens")
    prompt = _prompt_ids(inp, tok)
    return generate(
        model,
        prompt,
        max_new_tokens=max_new_tokens,
        eos_token_id=tok.eos_token_id if eos_token_id is None else eos_token_id,
        max_length=max_length,
        extra_inputs=extra_inputs,
        logits_layer=logits_layer,
        show_progress=show_progress,
    )


def generate(
    model: Any,
    input_ids: Sequence[int] | np.ndarray,
    *,
    max_new_tokens: int = 25,
    eos_token_id: int | Sequence[int] | None = None,
    max_length: int | None = None,
    extra_inputs: Sequence[str] | None = None,
    logits_layer: str | None = "auto",
    show_progress: bool = False,
) -> np.ndarray:
    """Greedy decoding (Captum's default target: ``do_sample=False``), without a KV cache.

    The prompt and the tokens made so far sit in a right-padded buffer of fixed length,
    so one compiled program serves every step; each step is a full forward pass (the
    model is a pure function: no cache to carry).

    Args:
        model: A causal LM (see the module's contract).
        input_ids: The prompt's token ids, (L,).
        max_new_tokens: At most this many tokens.
        eos_token_id: Stop after generating this token (or any of these); ``None``: never.
        max_length: Buffer length (default: the model's exported length, else L +
            max_new_tokens rounded up to 16).
        extra_inputs: Keyword inputs the model takes (see :func:`llm_attribution`).
        logits_layer: See :func:`llm_attribution`.
        show_progress: A progress bar over the steps.

    Returns:
        The new token ids, (T,) int32, T <= max_new_tokens (the end token included).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxattr.llm import generate
        >>> table = jnp.eye(5)[jnp.array([1, 2, 3, 4, 0])]   # token i -> i + 1
        >>> generate(jax.tree_util.Partial(lambda t, ids: t[ids], table), [0, 1],
        ...          max_new_tokens=6, eos_token_id=4).tolist()
        [2, 3, 4]
    """
    prompt = np.asarray(input_ids)
    if prompt.ndim != 1 or prompt.size == 0 or not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(
            f"input_ids must be a non-empty 1-D sequence of token ids, got shape {prompt.shape} "
            f"dtype {prompt.dtype}"
        )
    max_new_tokens = _check_positive(max_new_tokens, "max_new_tokens")
    length = _m.padded_length(
        len(prompt) + max_new_tokens,
        model,
        max_length,
        what=f"the prompt ({len(prompt)} tokens) + max_new_tokens",
    )
    call = _m.resolve(model, extra_inputs=extra_inputs, logits_layer=logits_layer, length=length)
    return _m.generate(
        model, call, prompt.astype(np.int32), length, max_new_tokens, eos_token_id, show_progress
    )


@_caching.cached_jit(("model", "call"))
def _score(*, model, call, ids, mask, pos, at, tgt):
    return _m.token_log_probs(model, call, ids, mask, pos, at, tgt)


def target_log_probs(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int] | np.ndarray,
    target: str | Sequence[int] | np.ndarray,
    *,
    padding: str = "right",
    max_length: int | None = None,
    extra_inputs: Sequence[str] | None = None,
    logits_layer: str | None = "auto",
) -> np.ndarray:
    """``log p(target[t] | prompt, target[:t])`` for every target token: what the methods
    of this module attribute (one teacher-forced forward pass).

    Args:
        model: A causal LM (see the module's contract).
        tokenizer: Its tokenizer.
        prompt: Text (tokenized with the tokenizer's special tokens) or token ids (L,).
        target: Text (tokenized without special tokens) or token ids (T,).
        padding: ``"right"`` or ``"left"`` (see :func:`llm_attribution`).
        max_length: Pad to this length.
        extra_inputs: Keyword inputs the model takes (see :func:`llm_attribution`).
        logits_layer: See :func:`llm_attribution`.

    Returns:
        The log-probabilities, (T,) float32; their sum is the target's log-probability.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxattr import llm
        >>> tok = llm.WordTokenizer(["a", "b"])
        >>> uniform = lambda ids: jnp.zeros((*ids.shape, tok.vocab_size))
        >>> llm.target_log_probs(uniform, tok, "a", "b a").round(4)   # log(1/3) each
        array([-1.0986, -1.0986], dtype=float32)
    """
    _check_choice(padding, "padding", _m.PADDINGS)
    tok = _Tok(tokenizer)
    if isinstance(prompt, str):
        ids = np.asarray(tok.encode(prompt), np.int32)
    else:
        ids = _target_ids(prompt, tok, "prompt")
    if len(ids) == 0:
        raise ValueError(f"prompt {prompt!r} tokenizes to nothing")
    tgt = _target_ids(target, tok)
    length = _m.padded_length(len(ids) + len(tgt), model, max_length)
    call = _m.resolve(model, extra_inputs=extra_inputs, logits_layer=logits_layer, length=length)
    _check_padding(padding, call)
    _check_vocab(tgt, call.vocab)
    lay = _m.layout([ids], tgt, length, padding)
    out = _score(
        model=model,
        call=call,
        ids=jnp.asarray(lay["ids"]),
        mask=jnp.asarray(lay["mask"]),
        pos=jnp.asarray(lay["pos"]),
        at=jnp.asarray(lay["at"]),
        tgt=jnp.asarray(tgt),
    )
    return np.asarray(out[0], np.float32)


# ======================================================================== perturbation
def _coalitions(method: str, f: int, key: Any, n_samples: int) -> np.ndarray:
    """Every coalition (K, F) bool (True: from the input) ``method`` evaluates, as the
    jaxattr method draws them from ``key`` (checked afterwards: a miss is an error)."""
    import jaxattr

    if method == "feature_ablation":
        rows = np.ones((f + 1, f), bool)
        rows[np.arange(1, f + 1), np.arange(f)] = False
    elif method == "shapley_value_sampling":
        perms = np.asarray(jaxattr.shapley_permutations(key, f, n_samples))
        rank = np.argsort(perms, axis=1)
        rows = (rank[:, None, :] <= np.arange(f)[None, :, None]).reshape(-1, f)
        rows = np.concatenate([np.zeros((1, f), bool), rows])
    elif method == "shapley_values":
        rows = ((np.arange(2**f)[:, None] >> np.arange(f)[None, :]) & 1).astype(bool)
    elif method == "lime":
        rows = np.asarray(jaxattr.lime_samples(key, 1, f, n_samples)).reshape(-1, f)
    else:
        rows = np.asarray(jaxattr.kernel_shap_samples(key, 1, f, n_samples)).reshape(-1, f)
    return np.unique(rows.astype(bool), axis=0)


def _run_method(method, fn, f, key, n_samples, batch_size, show_progress, options):
    import jaxattr

    x = jnp.ones((1, f), jnp.float32)
    common = dict(baselines=0.0, batch_size=batch_size, show_progress=show_progress)
    if method == "feature_ablation":
        out = jaxattr.feature_ablation(fn, x, **common)
    elif method == "shapley_value_sampling":
        out = jaxattr.shapley_value_sampling(fn, x, key=key, n_samples=n_samples, **common)
    elif method == "shapley_values":
        out = jaxattr.shapley_values(fn, x, **common)
    elif method == "lime":
        out = jaxattr.lime(fn, x, key=key, n_samples=n_samples, **common, **options)
    else:
        out = jaxattr.kernel_shap(fn, x, key=key, n_samples=n_samples, **common)
    return np.asarray(out, np.float32).reshape(-1, f)


def llm_attribution(
    model: Any,
    tokenizer: Any,
    inp: TextTokenInput | TextTemplateInput,
    *,
    target: str | Sequence[int] | np.ndarray | None = None,
    method: str = "feature_ablation",
    key: jax.Array | None = None,
    n_samples: int | None = None,
    num_trials: int = 1,
    attr_target: str = "log_prob",
    max_new_tokens: int = 25,
    eos_token_id: int | Sequence[int] | None = None,
    padding: str = "right",
    max_length: int | None = None,
    extra_inputs: Sequence[str] | None = None,
    logits_layer: str | None = "auto",
    batch_size: int | None = None,
    show_progress: bool = False,
    **options: Any,
) -> LLMAttributionResult:
    """Perturbation attribution of a causal LM's output to its prompt (Captum's
    ``LLMAttribution(method).attribute(inp, target)``).

    The explained quantity is ``log p(target | prompt)`` (``attr_target="prob"``: ``p``),
    in total and per target token, with features absent in the prompt replaced by their
    baselines. Every prompt a method evaluates is scored with the target in one batched,
    compiled program (see the module docstring); for a template, the perturbed texts are
    tokenized first, on the host (each evaluated coalition once).

    Args:
        model: A causal LM (``model(input_ids, **extra) -> logits``; see the module).
        tokenizer: Its tokenizer (Hugging Face, ``tokenizers.Tokenizer``,
            :class:`WordTokenizer`).
        inp: A :class:`TextTokenInput` or :class:`TextTemplateInput`.
        target: The output to explain: text (tokenized without special tokens), or token
            ids (T,); ``None``: the model's greedy continuation (``max_new_tokens``).
        method: One of :data:`METHODS`.
        key: PRNG key: required by the sampling methods (Shapley value sampling, LIME,
            KernelSHAP) and by :class:`ProductBaselines`.
        n_samples: Samples of the sampling methods (default 25, Captum's).
        num_trials: Repeat with fresh draws (``jax.random.split(key, num_trials)``) and
            average, as Captum.
        attr_target: ``"log_prob"`` (default) or ``"prob"``.
        max_new_tokens: Length of a generated target.
        eos_token_id: Generation stops after it; ``None``: the tokenizer's end token.
        padding: ``"right"`` (default) or ``"left"`` (needs ``attention_mask`` and
            ``position_ids``).
        max_length: Pad to this length (a model with a fixed length: that length).
        extra_inputs: Keyword inputs the model takes, from ``("attention_mask",
            "position_ids")``; ``None``: a bridged model's exported keyword inputs, else
            none.
        logits_layer: The layer making the logits, fed only the target positions;
            ``"auto"``: the model's last layer when it is a linear layer making the
            output (else full logits); ``None``: always full logits.
        batch_size: At most this many prompts per compiled call.
        show_progress: Progress bars (generation, evaluation chunks).
        **options: LIME's options (``interpretable_model``, ``alpha``,
            ``similarity_func``, ``distance_mode``, ``kernel_width``; ``perturb_func`` and
            ``from_interp_rep_transform`` for token inputs), passed to :func:`jaxattr.lime`.

    Returns:
        An :class:`LLMAttributionResult`: ``seq_attr`` (F,), ``token_attr`` (T, F) (None
        for LIME and KernelSHAP), with F the input's features (a template: its segments).

    Raises:
        ValueError: Bad option values (named), a prompt + target longer than the model's
            fixed length, an empty perturbed prompt.
        TypeError: Bad input or target types.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxattr import llm
        >>> tok = llm.WordTokenizer("the cat sat on a mat".split(), bos_token="<s>")
        >>> table = jax.random.normal(jax.random.key(0), (tok.vocab_size, tok.vocab_size))
        >>> bigram = jax.tree_util.Partial(lambda t, ids: t[ids], table)
        >>> inp = llm.TextTokenInput("the cat sat", tok, skip_tokens=["<s>"])
        >>> res = llm.llm_attribution(bigram, tok, inp, target="on a mat",
        ...                           method="shapley_value_sampling", key=jax.random.key(1))
        >>> res.token_attr.shape, res.output_tokens
        ((3, 3), ['on', 'a', 'mat'])
        >>> bool(abs(res.token_attr[0, :2]).max() == 0)   # a bigram sees only "sat"
        True
    """
    _check_choice(method, "method", METHODS)
    _check_choice(attr_target, "attr_target", ("log_prob", "prob"))
    _check_choice(padding, "padding", _m.PADDINGS)
    num_trials = _check_positive(num_trials, "num_trials")
    if not isinstance(inp, (TextTokenInput, TextTemplateInput)):
        raise TypeError(
            f"inp must be a TextTokenInput or TextTemplateInput, got {type(inp).__name__}"
        )
    unknown = sorted(set(options) - set(_OPTIONS[method]))
    if unknown:
        raise TypeError(
            f"llm_attribution(method={method!r}) got unknown options {unknown}; it accepts "
            f"{list(_OPTIONS[method]) or 'none besides the named arguments'}"
        )
    sampling = method in ("shapley_value_sampling", "lime", "kernel_shap")
    if n_samples is None:
        n_samples = 25
    elif not sampling:
        raise ValueError(f"n_samples is for the sampling methods; method={method!r} takes none")
    n_samples = _check_positive(n_samples, "n_samples")
    template = isinstance(inp, TextTemplateInput)
    random_baselines = template and callable(inp.baselines)
    if (sampling or isinstance(getattr(inp, "baselines", None), ProductBaselines)) and key is None:
        what = f"method={method!r}" if sampling else "ProductBaselines"
        raise ValueError(f"{what} is random: pass key=jax.random.key(seed)")
    if key is not None and not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax.random key, got {type(key).__name__}")
    if template:
        bad = [o for o in _SAMPLER_OPTIONS if o in options]
        if bad:
            raise ValueError(
                f"{bad} change which prompts are evaluated, so they work with a TextTokenInput "
                f"only (a template's perturbed texts are tokenized before the model runs)"
            )
        if method == "shapley_values":
            import jaxattr

            if inp.n_itp_features > jaxattr.MAX_EXACT_SHAPLEY_FEATURES:
                raise ValueError(
                    f"shapley_values evaluates all 2**F coalitions; the template has F="
                    f"{inp.n_itp_features} features, over the limit of "
                    f"{jaxattr.MAX_EXACT_SHAPLEY_FEATURES}: group segments with mask, or use "
                    f"shapley_value_sampling"
                )
    tok = _Tok(tokenizer)
    tgt = _resolve_target(
        model,
        tok,
        inp,
        target,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        max_length=max_length,
        extra_inputs=extra_inputs,
        logits_layer=logits_layer,
        show_progress=show_progress,
    )
    if len(tgt) == 0:
        raise ValueError("the target is empty (generation made no token)")
    per_token = method in PER_TOKEN_METHODS
    prob = attr_target == "prob"
    f = inp.n_itp_features
    keys = [key] if (key is None or num_trials == 1) else list(jax.random.split(key, num_trials))
    total = None
    for trial in range(num_trials):
        k = keys[0] if key is None else keys[trial]
        if not template:
            fn, length = _token_fn(
                model, inp, tgt, padding, max_length, extra_inputs, logits_layer, per_token, prob
            )
        else:
            base_key = None if k is None else jax.random.fold_in(k, 1)
            baselines = inp.resolve_baselines(base_key if random_baselines else None)
            rows = _coalitions(method, f, k, n_samples)
            fn, length = _table_fn(
                model,
                tok,
                inp,
                rows,
                baselines,
                tgt,
                padding,
                max_length,
                extra_inputs,
                logits_layer,
                per_token,
                prob,
            )
        _check_vocab(tgt, fn.call.vocab)
        attr = _run_method(method, fn, f, k, n_samples, batch_size, show_progress, options)
        if not np.isfinite(attr).all():
            _explain_nonfinite(fn, template)
        total = attr if total is None else total + attr
    attr = inp.format_attr(total / num_trials)
    return LLMAttributionResult(
        seq_attr=attr[0],
        token_attr=attr[1:] if per_token else None,
        input_tokens=list(inp.values),
        output_tokens=tok.pretty(tgt),
        target_ids=tgt,
    )


def _token_fn(model, inp, tgt, padding, max_length, extra_inputs, logits_layer, per_token, prob):
    length = _m.padded_length(len(inp.ids) + len(tgt), model, max_length)
    call = _m.resolve(model, extra_inputs=extra_inputs, logits_layer=logits_layer, length=length)
    _check_padding(padding, call)
    lay = _m.layout([inp.ids], tgt, length, padding)
    sel = jnp.asarray(lay["start"][0] + inp.itp_positions, jnp.int32)
    fn = _m.TokenCoalitions(
        model,
        call,
        jnp.asarray(lay["ids"]),
        jnp.asarray(lay["mask"]),
        jnp.asarray(lay["pos"]),
        jnp.asarray(lay["at"]),
        jnp.asarray(tgt),
        sel,
        jnp.asarray(inp.baselines, jnp.int32),
        per_token,
        prob,
    )
    return fn, length


def _table_fn(
    model,
    tok,
    inp,
    rows,
    baselines,
    tgt,
    padding,
    max_length,
    extra_inputs,
    logits_layer,
    per_token,
    prob,
):
    texts = [inp.to_model_input(r[None].astype(np.float32), baselines) for r in rows]
    cache: dict[str, np.ndarray] = {}
    prompts = []
    for text in texts:
        if text not in cache:
            cache[text] = np.asarray(tok.encode(text), np.int32)
        prompts.append(cache[text])
    empty = [t for t, p in zip(texts, prompts, strict=True) if len(p) == 0]
    if empty:
        raise ValueError(
            f"a perturbed prompt tokenizes to nothing ({empty[0]!r}): the model has no token "
            f"to predict the first target token from; give the tokenizer a BOS token, or "
            f"use non-empty baselines / template text"
        )
    longest = max(len(p) for p in prompts)
    length = _m.padded_length(
        longest + len(tgt),
        model,
        max_length,
        what=f"the longest perturbed prompt ({longest} tokens) + target",
    )
    call = _m.resolve(model, extra_inputs=extra_inputs, logits_layer=logits_layer, length=length)
    _check_padding(padding, call)
    lay = _m.layout(prompts, tgt, length, padding)
    fn = _m.TableCoalitions(
        model,
        call,
        jnp.asarray(rows),
        jnp.asarray(lay["ids"]),
        jnp.asarray(lay["mask"]),
        jnp.asarray(lay["pos"]),
        jnp.asarray(lay["at"]),
        jnp.asarray(tgt),
        per_token,
        prob,
    )
    return fn, length


def _explain_nonfinite(fn: Any, template: bool) -> None:
    if template:
        n = fn.rows.shape[0]
        x = jnp.asarray(fn.rows, jnp.float32)
        scores = np.asarray(jax.vmap(lambda r: fn(r[None]))(x))
        if np.isfinite(scores).all() and n:
            raise RuntimeError(
                "jaxattr.llm: the method evaluated a coalition that was not tokenized "
                "beforehand (an internal error, please report it)"
            )
    raise FloatingPointError(
        "the model's log-probabilities of the target are not finite (NaN/Inf logits) for "
        "some perturbed prompt; check the model on those inputs (e.g. a fully masked "
        "attention row)"
    )


# ======================================================================== gradients
def _embedding_layer(model: Any) -> str:
    for name, layer in model.layers.items():
        if getattr(layer, "kind", None) == "embedding":
            return name
    shown = ", ".join(repr(n) for n in list(model.layers)[:8])
    raise ValueError(
        f"layer='auto' found no embedding layer in the model (layers: {shown}, ...); pass "
        f"layer=<the token embedding's name>"
    )


def llm_gradient_attribution(
    model: Any,
    tokenizer: Any,
    inp: TextTokenInput,
    *,
    target: str | Sequence[int] | np.ndarray | None = None,
    method: str = "layer_integrated_gradients",
    layer: str = "auto",
    n_steps: int = 50,
    quadrature: str = "gausslegendre",
    multiply_by_inputs: bool = True,
    max_new_tokens: int = 25,
    eos_token_id: int | Sequence[int] | None = None,
    padding: str = "right",
    max_length: int | None = None,
    extra_inputs: Sequence[str] | None = None,
    logits_layer: str | None = "auto",
    batch_size: int | None = None,
    show_progress: bool = False,
) -> LLMAttributionResult:
    """Gradient attribution of a causal LM's output to its prompt tokens (Captum's
    ``LLMGradientAttribution(LayerIntegratedGradients(model, embedding))``).

    For every target token ``t``, the layer method explains ``log p(target[t] | prompt,
    target[:t])`` at the token-embedding layer (the features' embeddings interpolated
    from those of the baseline token); the attribution of an input token is the sum over
    the embedding dimension, and ``seq_attr`` is the sum over target tokens. All target
    tokens are one ``vmap``: each integration step runs the model forward once, shared by
    every target token (the sequence is the prompt followed by the whole target; a causal
    model's log-probability at a position ignores what follows).

    Args:
        model: A structured causal LM (a bridged torch model, a Flax adapter).
        tokenizer: Its tokenizer.
        inp: A :class:`TextTokenInput` (its ``baselines`` token is the IG baseline).
        target: Text, token ids (T,), or ``None``: the greedy continuation.
        method: One of :data:`GRADIENT_METHODS`.
        layer: The token-embedding layer (``"transformer.wte"`` for GPT-2,
            ``"model.embed_tokens"`` for Llama); ``"auto"``: the model's first layer of
            kind ``"embedding"``.
        n_steps: Integration steps (layer integrated gradients).
        quadrature: One of :data:`jaxattr.QUADRATURES` (Captum's ``method``).
        multiply_by_inputs: Multiply by the embedding difference (gradient x activation:
            by the embedding).
        max_new_tokens: Length of a generated target.
        eos_token_id: Generation stops after it; ``None``: the tokenizer's end token.
        padding: ``"right"`` or ``"left"`` (see :func:`llm_attribution`).
        max_length: Pad to this length.
        extra_inputs: Keyword inputs the model takes (see :func:`llm_attribution`).
        logits_layer: See :func:`llm_attribution`.
        batch_size: At most this many integration steps per compiled call (default: as
            many as the memory budget allows, :func:`jaxattr.memory_budget`).
        show_progress: Progress bars over generation steps and chunks of integration
            steps.

    Returns:
        An :class:`LLMAttributionResult` with ``token_attr`` (T, F) and ``seq_attr`` (F,).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxattr import llm
        >>> from jaxattr.flax import from_nnx
        >>> tok = llm.WordTokenizer("the cat sat on a mat".split(), bos_token="<s>")
        >>> net = nnx.Sequential(nnx.Embed(tok.vocab_size, 8, rngs=nnx.Rngs(0)),
        ...                      nnx.Linear(8, tok.vocab_size, rngs=nnx.Rngs(1)))
        >>> model = from_nnx(net)                     # a per-token (bigram) model
        >>> res = llm.llm_gradient_attribution(model, tok, llm.TextTokenInput("the cat", tok),
        ...                                    target="sat on", n_steps=8)
        >>> res.input_tokens, res.token_attr.shape
        (['<s>', 'the', 'cat'], (2, 3))
    """
    import jaxattr

    _check_choice(method, "method", GRADIENT_METHODS)
    _check_choice(padding, "padding", _m.PADDINGS)
    if not isinstance(inp, TextTokenInput):
        raise TypeError(
            f"inp must be a TextTokenInput (gradients need token ids), got {type(inp).__name__}"
        )
    if not _m.is_structured(model):
        raise TypeError(
            f"model must be a structured model with named layers (jaxattr.bridge.from_torch, "
            f"jaxattr.flax.from_nnx / from_linen) to tap its embedding layer, got "
            f"{type(model).__name__}"
        )
    if method == "layer_integrated_gradients":
        n_steps = _check_positive(n_steps, "n_steps")
        _check_choice(quadrature, "quadrature", jaxattr.QUADRATURES)
    tok = _Tok(tokenizer)
    tgt = _resolve_target(
        model,
        tok,
        inp,
        target,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        max_length=max_length,
        extra_inputs=extra_inputs,
        logits_layer=logits_layer,
        show_progress=show_progress,
    )
    length = _m.padded_length(len(inp.ids) + len(tgt), model, max_length)
    call = _m.resolve(model, extra_inputs=extra_inputs, logits_layer=logits_layer, length=length)
    _check_padding(padding, call)
    _check_vocab(tgt, call.vocab)
    if layer == "auto":
        layer = _embedding_layer(model)
    elif not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name (str) or 'auto', got {type(layer).__name__}")
    lay = _m.layout([inp.ids], tgt, length, padding)
    sel = lay["start"][0] + inp.itp_positions
    x = jnp.asarray(lay["ids"])
    b = np.array(lay["ids"])
    b[0, sel] = inp.baselines
    tm = _m.TargetModel(
        model,
        call,
        jnp.asarray(lay["mask"]),
        jnp.asarray(lay["pos"]),
        jnp.asarray(lay["at"]),
        jnp.asarray(tgt),
    )
    if method == "layer_integrated_gradients":
        alphas, weights = jaxattr.quadrature(quadrature, n_steps)
        baselines = jnp.asarray(b)
    else:
        alphas, weights, baselines = np.ones(1), np.ones(1), None
    try:
        attr = _m.layer_gradients_per_target(
            tm,
            layer,
            x,
            baselines,
            np.asarray(alphas),
            np.asarray(weights),
            batch_size,
            show_progress,
            multiply_by_inputs,
        )
    except ValueError as err:
        if "tuple" in str(err) or "tensors" in str(err):
            raise ValueError(
                f"layer {layer!r} returns several tensors; name the token-embedding layer itself"
            ) from err
        raise
    attr = np.asarray(attr, np.float32)  # (T, 1, S, ...)
    per_pos = attr.reshape(attr.shape[0], attr.shape[2], -1).sum(-1)  # (T, S)
    token_attr = per_pos[:, sel]
    return LLMAttributionResult(
        seq_attr=token_attr.sum(0),
        token_attr=token_attr,
        input_tokens=list(inp.values),
        output_tokens=tok.pretty(tgt),
        target_ids=tgt,
    )
