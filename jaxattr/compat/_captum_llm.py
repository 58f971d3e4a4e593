"""Captum's LLM attribution classes, run by :mod:`jaxattr.llm` (re-exported by
:mod:`jaxattr.compat.captum`).

::

    # from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput
    from jaxattr.compat.captum import FeatureAblation, LLMAttribution, TextTokenInput

    llm_attr = LLMAttribution(FeatureAblation(hf_model), tokenizer)
    res = llm_attr.attribute(TextTokenInput(prompt, tokenizer, skip_tokens=[bos]), target=text)
    res.seq_attr, res.token_attr          # torch tensors (F,) and (T, F)

``LLMAttribution`` takes this package's ``FeatureAblation``, ``ShapleyValueSampling``,
``ShapleyValues``, ``Lime`` or ``KernelShap`` built on a Hugging Face-style causal LM (a
torch module whose output is the logits or has ``.logits``); ``LLMGradientAttribution``
takes ``LayerIntegratedGradients`` or ``LayerGradientXActivation`` on its token
embedding module. The module is converted with :func:`jaxattr.bridge.from_torch` at a
fixed sequence length (a bucket of the prompt + target length: at most 25% padding),
once per bucket, and refreshed when the weights change, as the other front-door classes.

Scores are full forward passes (the target teacher-forced after the prompt), which is
what Captum computes with ``use_cached_outputs=False``; ``use_cached_outputs`` and
``forward_in_tokens`` are accepted and change nothing here (Captum's cached decoding
drifts from the full pass by up to ~0.17 in log-probability with transformers 5.x).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from jaxattr import llm
from jaxattr.compat import to_numpy, torch_key, unsupported
from jaxattr.compat.captum import (
    Attribution,
    FeatureAblation,
    KernelShap,
    LayerGradientShap,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    Lime,
    ShapleyValues,
    ShapleyValueSampling,
    _per_eval,
)

__all__ = [
    "LLMAttribution",
    "LLMAttributionResult",
    "LLMGradientAttribution",
    "ProductBaselines",
    "TextTemplateInput",
    "TextTokenInput",
]

#: Captum's default generation arguments (``target=None`` and no ``gen_args``).
DEFAULT_GEN_ARGS: dict[str, Any] = {
    "max_new_tokens": 25,
    "do_sample": False,
    "temperature": None,
    "top_p": None,
}

# generation arguments that greedy decoding serves: read, or without effect on the result
_GEN_READ = ("max_new_tokens", "max_length", "do_sample", "num_beams", "eos_token_id")
_GEN_IGNORED = ("temperature", "top_p", "top_k", "pad_token_id", "use_cache", "bos_token_id")


def _is_captum(obj: Any, name: str) -> bool:
    """Whether ``obj`` is Captum's own class ``name`` (not this module's)."""
    return type(obj).__name__ == name and type(obj).__module__.startswith("captum.")


# ======================================================================== inputs
class ProductBaselines(llm.ProductBaselines):
    """Captum's ``ProductBaselines``: baselines drawn from the Cartesian product of
    choices per segment, for :class:`TextTemplateInput`.

    In :class:`LLMAttribution` one combination is drawn per trial (``num_trials``
    averages over draws) from the JAX key of ``attribute`` (``key=``, or one drawn from
    torch's global generator); Captum draws one at every model evaluation.

    Args:
        baseline_values: One list of choices per segment, or a dict keyed by segment name;
            a tuple of names as key groups segments whose baselines go together (its
            choices are tuples).

    Example:
        >>> import torch
        >>> from jaxattr.compat.captum import ProductBaselines
        >>> pb = ProductBaselines({"name": ["He", "She"], ("adj", "noun"): [("big", "dog")]})
        >>> _ = torch.manual_seed(0)
        >>> sorted(pb())                              # Captum's call: one draw
        ['adj', 'name', 'noun']
    """

    def __init__(
        self, baseline_values: Sequence[Sequence[Any]] | Mapping[Any, Sequence[Any]]
    ) -> None:
        super().__init__(baseline_values)

    def sample(self, key: Any = None) -> list[Any] | dict[str, Any]:
        """One combination: a list, or a dict for dict choices; drawn from ``key`` (a JAX
        key), or from a key drawn from torch's global generator."""
        return super().sample(torch_key(key))

    def __call__(self, key: Any = None) -> list[Any] | dict[str, Any]:
        """:meth:`sample` (Captum calls it without arguments)."""
        return self.sample(key)


def _product_baselines(b: Any) -> Any:
    """Captum's own ``ProductBaselines`` as this module's (drawn from JAX keys)."""
    if _is_captum(b, "ProductBaselines"):
        keys = list(b.dict_keys)
        return ProductBaselines(
            dict(zip(keys, b.baseline_values, strict=True)) if keys else b.baseline_values
        )
    return b


class TextTemplateInput(llm.TextTemplateInput):
    """Captum's ``TextTemplateInput``: the segments filling a template are the features.

    The model input is ``template.format(*values)`` (keywords for dict values); an absent
    segment takes its baseline (default the empty string); segments with the same
    ``mask`` id are one feature. A baselines function (or :class:`ProductBaselines`, or
    Captum's own) is called once per trial, where Captum calls it at every evaluation.

    Args:
        template: A format string with one field per segment, or a function of the
            segments returning the text.
        values: The segments: a list, or a dict keyed by field name (F segments).
        baselines: One replacement per segment (same form as ``values``), a
            :class:`ProductBaselines`, a function returning such a list/dict, or None
            (empty strings).
        mask: One feature id per segment (same form as ``values``); None: every segment
            is a feature.

    Attributes:
        n_features: F, the number of segments.
        n_itp_features: The number of features (distinct mask ids).

    Example:
        >>> import torch
        >>> from jaxattr.compat.captum import TextTemplateInput
        >>> inp = TextTemplateInput("{} feels {} right now", ["He", "sad"],
        ...                         baselines=["It", "neutral"])
        >>> inp.to_tensor()                              # (1, n_itp_features)
        tensor([[1., 1.]])
        >>> inp.to_model_input(torch.tensor([[0, 1]]))
        'It feels sad right now'
    """

    def __init__(
        self,
        template: str | Callable[..., str],
        values: Sequence[str] | Mapping[str, str],
        baselines: Any = None,
        mask: Sequence[int] | Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(template, values, baselines=_product_baselines(baselines), mask=mask)

    def to_tensor(self) -> torch.Tensor:
        """All features present: float ones, (1, n_itp_features)."""
        return torch.ones((1, self.n_itp_features), dtype=torch.float32)

    def to_model_input(self, perturbed_tensor: Any = None, baselines: Any = None) -> str:
        """The text with the features whose ``perturbed_tensor`` (1, n_itp_features) entry
        is 0 at their baselines (``baselines`` as a list; default: :meth:`resolve_baselines`)."""
        if isinstance(perturbed_tensor, torch.Tensor):
            perturbed_tensor = to_numpy(perturbed_tensor)
        return super().to_model_input(perturbed_tensor, baselines)

    def format_attr(self, itp_attr: Any) -> Any:
        """Attributions of the features (..., n_itp_features) as those of the segments
        (..., n_features); a torch tensor stays a torch tensor."""
        if isinstance(itp_attr, torch.Tensor):
            out = super().format_attr(itp_attr.detach().cpu().numpy())
            return torch.from_numpy(np.ascontiguousarray(out)).to(itp_attr.device)
        return super().format_attr(itp_attr)


class TextTokenInput(llm.TextTokenInput):
    """Captum's ``TextTokenInput``: the prompt's tokens are the features.

    Args:
        text: The prompt, tokenized with the tokenizer's special tokens.
        tokenizer: The model's tokenizer (Hugging Face).
        baselines: The token replacing an absent one: an id, or a token string.
        skip_tokens: Tokens that are not features (ids or token strings), e.g. the BOS
            token. An unknown token string is a ``ValueError`` (Captum maps it to the
            unknown token's id).

    Attributes:
        inp_tensor: The token ids, (1, L) int64.
        itp_tensor: The features' token ids, (1, F) int64.
        itp_mask: Which tokens are features, (1, L) bool; None without ``skip_tokens``.
        values: The features' token strings, F.
        n_itp_features: F.
        baselines: The baseline token id.

    Example:
        >>> import torch
        >>> from jaxattr.llm import WordTokenizer
        >>> from jaxattr.compat.captum import TextTokenInput
        >>> tok = WordTokenizer("a b c".split(), bos_token="<s>")
        >>> inp = TextTokenInput("a b c", tok, skip_tokens=["<s>"])
        >>> inp.values, inp.to_tensor()
        (['a', 'b', 'c'], tensor([[1, 1, 1]]))
        >>> inp.to_model_input(torch.tensor([[1, 0, 1]]))   # 0: the baseline token, id 0
        tensor([[0, 2, 0, 4]])
    """

    def __init__(
        self,
        text: str,
        tokenizer: Any,
        baselines: int | str = 0,
        skip_tokens: Sequence[int] | Sequence[str] | None = None,
    ) -> None:
        super().__init__(text, tokenizer, baselines=baselines, skip_tokens=skip_tokens)
        self._captum_attributes(tokenizer, bool(skip_tokens))

    def _captum_attributes(self, tokenizer: Any, masked: bool) -> None:
        self.tokenizer = tokenizer
        self.inp_tensor = torch.as_tensor(np.asarray(self.ids), dtype=torch.long)[None]
        self.itp_tensor = self.inp_tensor[:, torch.as_tensor(self.itp_positions)]
        mask = None
        if masked:
            mask = torch.zeros_like(self.inp_tensor, dtype=torch.bool)
            mask[0, torch.as_tensor(self.itp_positions)] = True
        self._itp_mask = mask

    @classmethod
    def _from_captum(cls, inp: Any) -> TextTokenInput:
        """Captum's own ``TextTokenInput`` as this class (same ids, features, baseline)."""
        self = cls.__new__(cls)
        ids = inp.inp_tensor.detach().cpu().reshape(-1)
        self.text = None
        self.ids = ids.numpy().astype(np.int32)
        mask = inp.itp_mask
        positions = np.arange(len(ids)) if mask is None else np.flatnonzero(mask.cpu().numpy())
        self.itp_positions = positions.astype(np.int64)
        self.skip_tokens = inp.skip_tokens
        self.values = list(inp.values)
        self.n_itp_features = len(self.values)
        self.baselines = int(inp.baselines)
        self._captum_attributes(inp.tokenizer, mask is not None)
        return self

    @property
    def itp_mask(self) -> torch.Tensor | None:  # type: ignore[override]
        """Which tokens are features, (1, L) bool; None without ``skip_tokens`` (Captum's)."""
        return self._itp_mask

    def to_tensor(self) -> torch.Tensor:
        """All features present: int64 ones, (1, F) (Captum's)."""
        return torch.ones_like(self.itp_tensor)

    def to_model_input(self, perturbed_tensor: Any = None) -> Any:
        """Token ids (N, L) int64 with the features whose ``perturbed_tensor`` (N, F) entry
        is not 1 replaced by the baseline token; ``inp_tensor`` without it."""
        if perturbed_tensor is None:
            return self.inp_tensor
        if isinstance(perturbed_tensor, torch.Tensor):
            out = super().to_model_input(to_numpy(perturbed_tensor))
            return torch.as_tensor(out, dtype=torch.long, device=perturbed_tensor.device)
        return super().to_model_input(perturbed_tensor)

    def format_attr(self, itp_attr: Any) -> Any:
        """Identity (the features are the model's tokens)."""
        return itp_attr


def _as_input(inp: Any, where: str, tokens_only: bool = False) -> Any:
    """This module's input for ``inp`` (Captum's own inputs are converted)."""
    if isinstance(inp, (llm.TextTokenInput, llm.TextTemplateInput)):
        pass
    elif _is_captum(inp, "TextTokenInput"):
        inp = TextTokenInput._from_captum(inp)
    elif _is_captum(inp, "TextTemplateInput"):
        keys = list(inp.dict_keys)

        def keyed(v):
            return dict(zip(keys, v, strict=True)) if keys and isinstance(v, list) else v

        inp = TextTemplateInput(
            inp.template, keyed(list(inp.values)), keyed(inp.baselines), keyed(inp.mask)
        )
    elif type(inp).__name__ == "ImageMaskInput":
        raise unsupported(where, {"ImageMaskInput": "vision-language models are not served"})
    else:
        want = "TextTokenInput" if tokens_only else "TextTokenInput or TextTemplateInput"
        raise TypeError(f"{where}: inp must be a {want}, got {type(inp).__name__}")
    if tokens_only and not isinstance(inp, llm.TextTokenInput):
        raise TypeError(
            f"{where}: inp must be a TextTokenInput (gradients need token ids), got "
            f"{type(inp).__name__}"
        )
    return inp


# ======================================================================== result
class LLMAttributionResult:
    """Captum's ``LLMAttributionResult``: what ``LLMAttribution.attribute`` returns.

    Args:
        input_tokens: The features' names (tokens, or the template's segments), F.
        output_tokens: The target tokens, readable, T.
        seq_attr: Attribution of the target's total log-probability, (F,).
        token_attr: One row per target token, (T, F); None for LIME and KernelSHAP.
        output_probs: Optional probabilities of the target tokens, (T,).
        inp: The input that was explained.

    Attributes:
        seq_attr: torch tensor (F,).
        token_attr: torch tensor (T, F) or None.

    Example:
        >>> from jaxattr.compat.captum import LLMAttributionResult
        >>> r = LLMAttributionResult(input_tokens=["a", "b"], output_tokens=["c"],
        ...                          seq_attr=[0.5, -1.0], token_attr=[[0.5, -1.0]])
        >>> r.seq_attr, r.token_attr.shape
        (tensor([ 0.5000, -1.0000]), torch.Size([1, 2]))
        >>> r.seq_attr_dict
        {'a': 0.5, 'b': -1.0}
    """

    def __init__(
        self,
        *,
        input_tokens: list[str],
        output_tokens: list[str],
        seq_attr: Any,
        token_attr: Any = None,
        output_probs: Any = None,
        inp: Any = None,
    ) -> None:
        self.input_tokens = list(input_tokens)
        self.output_tokens = list(output_tokens)
        self.seq_attr = seq_attr
        self.token_attr = token_attr
        self.output_probs = output_probs
        self.inp = inp

    @staticmethod
    def _tensor(value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.array(value))
        return torch.tensor(value)  # as Captum: lists of floats are float32

    @property
    def seq_attr(self) -> torch.Tensor:
        """Attribution of the whole target to each input feature, (F,)."""
        return self._seq_attr

    @seq_attr.setter
    def seq_attr(self, value: Any) -> None:
        t = self._tensor(value)
        if t.ndim != 1 or t.shape[0] != len(self.input_tokens):
            raise ValueError(
                f"seq_attr must have shape ({len(self.input_tokens)},) (one per input token), "
                f"got {tuple(t.shape)}"
            )
        self._seq_attr = t

    @property
    def token_attr(self) -> torch.Tensor | None:
        """Attribution of each target token to each input feature, (T, F), or None."""
        return self._token_attr

    @token_attr.setter
    def token_attr(self, value: Any) -> None:
        if value is None:
            self._token_attr = None
            return
        t = self._tensor(value)
        want = (len(self.output_tokens), len(self.input_tokens))
        if tuple(t.shape) != want:
            raise ValueError(
                f"token_attr must have shape {want} (output x input tokens), got {tuple(t.shape)}"
            )
        self._token_attr = t

    @property
    def output_probs(self) -> torch.Tensor | None:
        """Probabilities of the target tokens, (T,), when given (Captum 0.9 gives none)."""
        return self._output_probs

    @output_probs.setter
    def output_probs(self, value: Any) -> None:
        if value is None:
            self._output_probs = None
            return
        t = self._tensor(value)
        if t.ndim != 1 or t.shape[0] != len(self.output_tokens):
            raise ValueError(
                f"output_probs must have shape ({len(self.output_tokens)},) (one per output "
                f"token), got {tuple(t.shape)}"
            )
        self._output_probs = t

    @property
    def seq_attr_dict(self) -> dict[str, float]:
        """``{input token: seq_attr}`` (a repeated token keeps its last value, as Captum)."""
        return {k: v for v, k in zip(self.seq_attr.cpu().tolist(), self.input_tokens, strict=True)}

    def _native(self) -> llm.LLMAttributionResult:
        tok = None if self.token_attr is None else self.token_attr.detach().cpu().numpy()
        return llm.LLMAttributionResult(
            seq_attr=self.seq_attr.detach().cpu().numpy(),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            token_attr=tok,
        )

    def plot_token_attr(self, show: bool = False) -> Any:
        """Heat map of ``token_attr`` (Captum's): output tokens x input tokens, green
        positive, red negative.

        Args:
            show: Show the figure and return None; else return ``(fig, ax)``.

        Returns:
            ``(fig, ax)``, or None with ``show=True``.

        Raises:
            ValueError: ``token_attr`` is None (LIME, KernelSHAP).
        """
        if self.token_attr is None:
            raise ValueError(
                "token_attr is None (no token-level attribution was performed), please use "
                "plot_seq_attr instead for the sequence-level attribution plot"
            )
        return self._native().plot_token_attr(show=show)

    def plot_seq_attr(self, show: bool = False) -> Any:
        """Bar chart of ``seq_attr`` over the input tokens (Captum's).

        Args:
            show: Show the figure and return None; else return ``(fig, ax)``.

        Returns:
            ``(fig, ax)``, or None with ``show=True``.
        """
        return self._native().plot_seq_attr(show=show)

    def to_html(self) -> str:
        """An HTML table of the attributions (jaxattr's addition,
        :meth:`jaxattr.llm.LLMAttributionResult.to_html`)."""
        return self._native().to_html()

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        shape = None if self.token_attr is None else tuple(self.token_attr.shape)
        return (
            f"LLMAttributionResult(input_tokens={self.input_tokens!r}, output_tokens="
            f"{self.output_tokens!r}, seq_attr={self.seq_attr!r}, token_attr shape {shape})"
        )


# ======================================================================== the model
_LENGTH_ERROR = re.compile(r"needs (\d+) tokens, more than the model's exported length")


def _bucket(needed: int, cap: int | None) -> int:
    """A sequence length >= ``needed``: rounded up to a quarter of its power of two (at
    most 25% padding), at least 32, and at most ``cap`` when ``needed`` fits in it."""
    n = max(32, int(needed))
    step = 2 ** max(3, int(math.log2(n)) - 2)
    length = -(-n // step) * step
    if cap is not None and needed <= cap:
        length = min(length, cap)
    return length


class _LLMBase(Attribution):
    """What both LLM classes share: the model, its conversions, targets, generation."""

    SUPPORTED_METHODS: tuple[type, ...] = ()

    def __init__(self, attr_method: Any, tokenizer: Any) -> None:
        name = type(self).__name__
        if not isinstance(attr_method, self.SUPPORTED_METHODS):
            if type(attr_method).__module__.startswith("captum."):
                hint = " (Captum's own class: build it from jaxattr.compat.captum instead)"
            else:
                hint = ""
            raise TypeError(
                f"{name}: attr_method must be one of "
                f"{[c.__name__ for c in self.SUPPORTED_METHODS]} from jaxattr.compat.captum, "
                f"got {type(attr_method).__name__}{hint}"
            )
        if not isinstance(attr_method.forward_func, torch.nn.Module):
            raise TypeError(
                f"{name}: the attribution method must be built on the language model (a "
                f"torch.nn.Module taking input_ids), got a "
                f"{type(attr_method.forward_func).__name__}"
            )
        Attribution.__init__(self, attr_method.forward_func)
        self._model = attr_method._model  # the method's conversions, shared
        self.attr_method = attr_method
        self.model: torch.nn.Module = attr_method.forward_func
        self.tokenizer = tokenizer
        self._tok = llm._Tok(tokenizer)
        try:
            self.device = (
                getattr(self.model, "device", None) or next(self.model.parameters()).device
            )
        except StopIteration:
            self.device = torch.device("cpu")
        self._output: tuple | None = None

    # -- conversion
    def _cap(self) -> int | None:
        config = getattr(self.model, "config", None)
        for name in ("n_positions", "max_position_embeddings"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _output_option(self) -> tuple:
        """``(("output", "logits"),)`` for a Hugging Face-style output, () for logits."""
        if self._output is None:
            ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
            with torch.no_grad():
                out = self.model(ids)
            if isinstance(out, torch.Tensor):
                self._output = ()
            elif isinstance(out, Mapping) and "logits" in out or hasattr(out, "logits"):
                self._output = (("output", "logits"),)
            else:
                raise TypeError(
                    f"{type(self).__name__}: the model must return logits (N, S, vocab) or an "
                    f"output with .logits (a Hugging Face causal LM), got "
                    f"{type(out).__name__}"
                )
        return self._output

    def _converted(self, length: int) -> Any:
        """The model's conversion at sequence ``length`` (cached, weights refreshed)."""
        ids = torch.zeros((1, length), dtype=torch.long, device=self.device)
        return self._model.converted([ids], (), self._output_option())

    def _at_length(self, needed: int, run: Callable[[Any], Any]) -> Any:
        """``run(conversion entry)`` at a bucket of ``needed`` tokens; a perturbed prompt
        that turns out longer (templates re-tokenize) converts at its bucket and reruns."""
        cap = self._cap()
        length = _bucket(needed, cap)
        for _ in range(4):
            try:
                return run(self._converted(length))
            except ValueError as err:
                got = _LENGTH_ERROR.search(str(err))
                if got is None or int(got.group(1)) <= length:
                    raise
                length = _bucket(int(got.group(1)), cap)
        raise RuntimeError(f"{type(self).__name__}: the sequence length did not settle")

    # -- lengths and targets
    def _prompt_length(self, inp: Any) -> int:
        """The prompt's token count; for a template, the longest of the full text and
        the text with each segment at its longest choice (a guess: see _at_length)."""
        if isinstance(inp, llm.TextTokenInput):
            return len(inp.ids)
        n = len(self._tok.encode(inp.to_model_input()))
        try:
            choices = [[v] for v in inp.values]
            b = inp.baselines
            if isinstance(b, llm.ProductBaselines):
                if b.dict_keys:
                    for k, vs in zip(b.dict_keys, b.baseline_values, strict=True):
                        names = k if isinstance(k, tuple) else (k,)
                        for j, name in enumerate(names):
                            seg = inp.dict_keys.index(name)
                            choices[seg] += [v[j] if isinstance(k, tuple) else v for v in vs]
                else:
                    for seg, vs in enumerate(b.baseline_values):
                        choices[seg] += list(vs)
            elif not callable(b):
                for seg, v in enumerate(b):
                    choices[seg].append(v)
            longest = [
                max(c, key=lambda s: len(self._tok.encode(str(s), special=False))) for c in choices
            ]
            if inp.dict_keys:
                text = inp.format_fn(**dict(zip(inp.dict_keys, longest, strict=True)))
            else:
                text = inp.format_fn(*longest)
            n = max(n, len(self._tok.encode(text)))
        except Exception:  # noqa: BLE001 - a guess only: _at_length corrects it
            pass
        return n

    def _gen_settings(self, gen_args: Mapping[str, Any] | None, prompt_len: int) -> tuple:
        """(max_new_tokens, eos_token_id) of greedy decoding for Captum's ``gen_args``."""
        where = f"{type(self).__name__}.attribute"
        args = dict(DEFAULT_GEN_ARGS if not gen_args else gen_args)
        unknown = sorted(set(args) - set(_GEN_READ) - set(_GEN_IGNORED))
        if unknown:
            raise unsupported(
                where,
                {
                    f"gen_args {unknown}": "the target is generated greedily without "
                    f"transformers' generate; served: {list(_GEN_READ + _GEN_IGNORED)}"
                },
            )
        cfg = getattr(self.model, "generation_config", None)
        do_sample = args.get("do_sample", getattr(cfg, "do_sample", False))
        beams = args.get("num_beams", getattr(cfg, "num_beams", 1))
        if do_sample or (beams or 1) != 1:
            raise unsupported(
                where,
                {
                    f"gen_args do_sample={do_sample!r}, num_beams={beams!r} (with the model's "
                    f"generation_config)": "only greedy decoding is served; pass "
                    "do_sample=False, or the target"
                },
            )
        new = args.get("max_new_tokens", getattr(cfg, "max_new_tokens", None))
        if new is None:
            total = args.get("max_length", getattr(cfg, "max_length", None) or 20)
            new = int(total) - prompt_len
        if isinstance(new, bool) or not isinstance(new, (int, np.integer)) or new < 1:
            raise ValueError(
                f"{where}: gen_args must leave max_new_tokens a positive int, got {new!r} "
                f"(the prompt has {prompt_len} tokens)"
            )
        eos = args.get("eos_token_id", getattr(cfg, "eos_token_id", None))
        if eos is None:
            eos = self._tok.eos_token_id
        return int(new), eos

    def _target_ids(self, inp: Any, target: Any, gen_args: Any) -> np.ndarray:
        """Captum's ``_get_target_tokens``: the target's ids, or the greedy continuation."""
        where = f"{type(self).__name__}.attribute"
        if target is not None:
            if gen_args is not None:
                raise ValueError(f"{where}: gen_args must be None when target is given")
            if isinstance(target, str):
                ids = self._tok.encode(target, special=False)
                if not ids:
                    raise ValueError(f"{where}: target {target!r} encodes to no tokens")
                return np.asarray(ids, np.int32)
            if isinstance(target, torch.Tensor):
                t = target.detach().cpu()
                if t.ndim != 1 or t.numel() == 0 or t.is_floating_point():
                    raise ValueError(
                        f"{where}: a tensor target must hold token ids, shape (T,) with "
                        f"T >= 1, got shape {tuple(t.shape)} dtype {t.dtype}"
                    )
                return t.numpy().astype(np.int32)
            raise TypeError(
                f"{where}: target must be a str, a tensor of token ids or None, got "
                f"{type(target).__name__}"
            )
        if not (hasattr(self.model, "generate") and callable(self.model.generate)):
            raise TypeError(
                f"{where}: target is None, so it is generated, but the model has no "
                f"generate (not a Hugging Face GenerationMixin); pass the target"
            )
        prompt = (
            inp.ids
            if isinstance(inp, llm.TextTokenInput)
            else np.asarray(self._tok.encode(inp.to_model_input()), np.int32)
        )
        new, eos = self._gen_settings(gen_args, len(prompt))
        return self._at_length(
            len(prompt) + new,
            lambda e: llm.generate(e.conv, prompt, max_new_tokens=new, eos_token_id=eos),
        )

    def _result(self, out: llm.LLMAttributionResult, inp: Any) -> LLMAttributionResult:
        like = next(self.model.parameters(), torch.zeros(()))

        def t(a):
            return None if a is None else torch.from_numpy(np.array(a)).to(like.device)

        return LLMAttributionResult(
            input_tokens=list(out.input_tokens),
            output_tokens=list(out.output_tokens),
            seq_attr=t(out.seq_attr),
            token_attr=t(out.token_attr),
            inp=inp,
        )

    def attribute_future(self) -> Callable[[], LLMAttributionResult]:
        """Not served (Captum does not implement it for its LLM classes either)."""
        raise unsupported(
            f"{type(self).__name__}.attribute_future",
            {"attribute_future": "not implemented for the LLM classes (as in Captum)"},
        )


# ======================================================================== perturbation
_METHODS: tuple[tuple[type, str], ...] = (
    (KernelShap, "kernel_shap"),
    (Lime, "lime"),
    (ShapleyValueSampling, "shapley_value_sampling"),
    (ShapleyValues, "shapley_values"),
    (FeatureAblation, "feature_ablation"),
)
#: Captum's default ``n_samples`` of each sampling method's ``attribute``.
_N_SAMPLES = {"shapley_value_sampling": 25, "lime": 50, "kernel_shap": 25}
_KWARGS = {
    "feature_ablation": ("perturbations_per_eval", "show_progress"),
    "shapley_values": ("perturbations_per_eval", "show_progress"),
    "shapley_value_sampling": ("n_samples", "perturbations_per_eval", "show_progress"),
    "lime": ("n_samples", "perturbations_per_eval", "show_progress", "return_input_shape"),
    "kernel_shap": ("n_samples", "perturbations_per_eval", "show_progress", "return_input_shape"),
}


def _check_attr_kwargs(where: str, method: str, kwargs: dict, served: Sequence[str]) -> None:
    """Captum's ``**kwargs`` of the wrapped method: served ones, or a named error."""
    bad: dict[str, str] = {}
    baselines = kwargs.pop("baselines", None)
    if baselines is not None and not (
        isinstance(baselines, (int, float)) and not isinstance(baselines, bool) and baselines == 0
    ):
        bad["baselines"] = (
            "the interpretable baseline is 0 (feature absent); give the input's baselines "
            "(TextTokenInput baselines / TextTemplateInput baselines) instead"
        )
    for name, why in (
        ("feature_mask", "features are the input's; group template segments with mask="),
        ("target", "the LLM classes attribute the target text's log-probability"),
        ("additional_forward_args", "the LLM classes pass the input and target themselves"),
    ):
        if kwargs.pop(name, None) is not None:
            bad[name] = why
    if "skip_tokens" in kwargs:
        kwargs.pop("skip_tokens")
        bad["skip_tokens"] = "in Captum 0.9 an argument of TextTokenInput(..., skip_tokens=...)"
    if bad:
        raise unsupported(where, bad)
    unknown = sorted(set(kwargs) - set(served))
    if unknown:
        raise TypeError(
            f"{where}: got unexpected keyword arguments {unknown} for {method}; it accepts "
            f"{list(served)}"
        )


class LLMAttribution(_LLMBase):
    """Captum's ``LLMAttribution`` (:func:`jaxattr.llm.llm_attribution`).

    Wraps a perturbation method built on a causal LM and attributes the log-probability
    (or probability) of a target text to the input's features: in total (``seq_attr``)
    and per target token (``token_attr``; not for ``Lime``/``KernelShap``, as in Captum).

    Args:
        attr_method: ``FeatureAblation``, ``ShapleyValueSampling``, ``ShapleyValues``,
            ``Lime`` or ``KernelShap`` of :mod:`jaxattr.compat.captum`, built on the LM (a
            torch module returning logits, or a Hugging Face causal LM).
        tokenizer: Its tokenizer (Hugging Face).
        attr_target: ``"log_prob"`` (default) or ``"prob"``.

    Example:
        >>> import torch, torch.nn as nn
        >>> from jaxattr.llm import WordTokenizer
        >>> from jaxattr.compat.captum import FeatureAblation, LLMAttribution, TextTokenInput
        >>> tok = WordTokenizer("the cat sat on a mat".split(), bos_token="<s>")
        >>> _ = torch.manual_seed(0)
        >>> lm = nn.Sequential(nn.Embedding(tok.vocab_size, 8),   # a bigram LM:
        ...                    nn.Linear(8, tok.vocab_size)).eval()  # (N, S) -> (N, S, V)
        >>> llm_attr = LLMAttribution(FeatureAblation(lm), tok)
        >>> res = llm_attr.attribute(TextTokenInput("the cat sat", tok, skip_tokens=["<s>"]),
        ...                          target="on a")
        >>> res.input_tokens, res.output_tokens, res.token_attr.shape
        (['the', 'cat', 'sat'], ['on', 'a'], torch.Size([2, 3]))
        >>> bool(res.token_attr[0, :2].abs().max() == 0)   # a bigram sees only "sat"
        True
    """

    SUPPORTED_METHODS = (FeatureAblation, ShapleyValueSampling, ShapleyValues, Lime, KernelShap)
    SUPPORTED_PER_TOKEN_ATTR_METHODS = (FeatureAblation, ShapleyValueSampling, ShapleyValues)
    SUPPORTED_INPUTS = (TextTemplateInput, TextTokenInput)

    def __init__(self, attr_method: Any, tokenizer: Any, attr_target: str = "log_prob") -> None:
        super().__init__(attr_method, tokenizer)
        if attr_target not in ("log_prob", "prob"):
            raise ValueError(
                f"LLMAttribution: attr_target must be 'log_prob' or 'prob', got {attr_target!r}"
            )
        self.attr_target = attr_target
        self.include_per_token_attr = isinstance(attr_method, self.SUPPORTED_PER_TOKEN_ATTR_METHODS)
        self._method = next(m for cls, m in _METHODS if isinstance(attr_method, cls))

    def attribute(
        self,
        inp: Any,
        target: str | torch.Tensor | None = None,
        num_trials: int = 1,
        gen_args: dict[str, Any] | None = None,
        use_cached_outputs: bool = True,
        _inspect_forward: Callable[..., None] | None = None,
        forward_in_tokens: bool = True,
        *,
        key: Any = None,
        **kwargs: Any,
    ) -> LLMAttributionResult:
        """Attribute the target's log-probability to the input's features (Captum's call).

        Args:
            inp: A :class:`TextTokenInput` or :class:`TextTemplateInput` (this module's,
                or Captum's own, converted).
            target: The text to explain (tokenized without special tokens), its token ids
                (T,), or None: the model's greedy continuation (``gen_args``).
            num_trials: Average over this many trials (fresh draws of the random methods
                and of :class:`ProductBaselines`).
            gen_args: Generation of a missing target (Captum's default
                ``{"max_new_tokens": 25, "do_sample": False, ...}``); greedy only:
                ``max_new_tokens``, ``max_length``, ``eos_token_id`` are read,
                ``temperature``/``top_p``/``top_k``/``pad_token_id``/``use_cache`` ignored.
            use_cached_outputs: Accepted; no effect on the numbers: every score is a full
                forward pass (Captum's ``use_cached_outputs=False``).
            _inspect_forward: Captum's per-evaluation callback: not served (must be None).
            forward_in_tokens: Accepted; no effect (token-by-token and one-pass scoring
                give the same full-forward numbers).
            key: A JAX key for the random methods and :class:`ProductBaselines` (default:
                drawn from torch's global generator); jaxattr's extension.
            **kwargs: The wrapped method's options: ``n_samples`` (sampling methods;
                Captum's defaults 25, Lime 50), ``perturbations_per_eval`` (at most this
                many prompts per compiled call; 1: as many as memory allows),
                ``show_progress``, ``return_input_shape`` (Lime/KernelShap, no effect).

        Returns:
            An :class:`LLMAttributionResult`: ``seq_attr`` (F,), ``token_attr`` (T, F)
            (None for Lime/KernelShap), ``input_tokens`` (F), ``output_tokens`` (T).

        Raises:
            UnsupportedOptionError: ``_inspect_forward``, ``feature_mask``, ``target`` or
                non-zero ``baselines`` in ``kwargs``, sampling ``gen_args``.
            TypeError: A wrong input or target type, an unknown keyword.
        """
        where = "LLMAttribution.attribute"
        if _inspect_forward is not None:
            raise unsupported(
                where,
                {
                    "_inspect_forward": "a Python callback at every model evaluation; the "
                    "evaluations are one compiled program"
                },
            )
        inp = _as_input(inp, where)
        if (
            isinstance(num_trials, bool)
            or not isinstance(num_trials, (int, np.integer))
            or num_trials < 1
        ):
            raise ValueError(f"{where}: num_trials must be a positive int, got {num_trials!r}")
        method = self._method
        _check_attr_kwargs(where, method, kwargs, _KWARGS[method])
        options: dict[str, Any] = {}
        if method in _N_SAMPLES:
            options["n_samples"] = kwargs.get("n_samples", _N_SAMPLES[method])
        if method == "lime":
            kind, alpha = self.attr_method._surrogate
            options.update(interpretable_model=kind, alpha=alpha)
        random = method in _N_SAMPLES or (
            isinstance(inp, llm.TextTemplateInput)
            and isinstance(inp.baselines, llm.ProductBaselines)
        )
        if random:
            key = torch_key(key)
        tgt = self._target_ids(inp, target, gen_args)

        def run(entry):
            return llm.llm_attribution(
                entry.conv,
                self.tokenizer,
                inp,
                target=tgt,
                method=method,
                key=key,
                num_trials=int(num_trials),
                attr_target=self.attr_target,
                batch_size=_per_eval(kwargs.get("perturbations_per_eval", 1)),
                show_progress=bool(kwargs.get("show_progress", False)),
                **options,
            )

        out = self._at_length(self._prompt_length(inp) + len(tgt), run)
        return self._result(out, inp)


# ======================================================================== gradients
_GRADIENT_METHODS: tuple[tuple[type, str], ...] = (
    (LayerIntegratedGradients, "layer_integrated_gradients"),
    (LayerGradientXActivation, "layer_gradient_x_activation"),
)


class LLMGradientAttribution(_LLMBase):
    """Captum's ``LLMGradientAttribution`` (:func:`jaxattr.llm.llm_gradient_attribution`).

    Wraps ``LayerIntegratedGradients`` or ``LayerGradientXActivation`` on the LM's token
    embedding module: the log-probability of every target token is attributed to the
    prompt's token embeddings (summed over the embedding dimension); ``seq_attr`` is the
    sum over target tokens. The baseline of integrated gradients is the input's
    ``baselines`` token at every feature.

    Args:
        attr_method: ``LayerIntegratedGradients(model, embedding)`` or
            ``LayerGradientXActivation(model, embedding)`` of :mod:`jaxattr.compat.captum`
            (``model.transformer.wte`` for GPT-2, ``model.model.embed_tokens`` for Llama).
        tokenizer: The model's tokenizer.

    Example:
        >>> import torch, torch.nn as nn
        >>> from jaxattr.llm import WordTokenizer
        >>> from jaxattr.compat.captum import (LLMGradientAttribution, LayerIntegratedGradients,
        ...                                    TextTokenInput)
        >>> tok = WordTokenizer("the cat sat on a mat".split(), bos_token="<s>")
        >>> _ = torch.manual_seed(0)
        >>> lm = nn.Sequential(nn.Embedding(tok.vocab_size, 8), nn.Linear(8, tok.vocab_size))
        >>> lig = LLMGradientAttribution(LayerIntegratedGradients(lm.eval(), lm[0]), tok)
        >>> res = lig.attribute(TextTokenInput("the cat", tok), target="sat on", n_steps=8)
        >>> res.input_tokens, res.token_attr.shape
        (['<s>', 'the', 'cat'], torch.Size([2, 3]))
    """

    SUPPORTED_METHODS = (LayerIntegratedGradients, LayerGradientXActivation)
    SUPPORTED_INPUTS = (TextTokenInput,)

    def __init__(self, attr_method: Any, tokenizer: Any) -> None:
        if isinstance(attr_method, LayerGradientShap):
            raise unsupported(
                "LLMGradientAttribution",
                {"LayerGradientShap": "jaxattr.llm has no gradient SHAP over the embedding"},
            )
        super().__init__(attr_method, tokenizer)
        if isinstance(attr_method.layer, (list, tuple)):
            raise unsupported(
                "LLMGradientAttribution",
                {"a list of layers": "attribute to the one token-embedding layer"},
            )
        self._method = next(m for cls, m in _GRADIENT_METHODS if isinstance(attr_method, cls))

    def attribute(
        self,
        inp: Any,
        target: str | torch.Tensor | None = None,
        gen_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> LLMAttributionResult:
        """Attribute each target token's log-probability to the prompt's tokens (Captum's
        call).

        Args:
            inp: A :class:`TextTokenInput` (this module's or Captum's own).
            target: The text to explain, its token ids (T,), or None: the model's greedy
                continuation (``gen_args``, as :meth:`LLMAttribution.attribute`).
            gen_args: Generation of a missing target (see :meth:`LLMAttribution.attribute`).
            **kwargs: The wrapped method's options: ``n_steps`` (default 50), ``method``
                (quadrature, default ``"gausslegendre"``), ``internal_batch_size``
                (integration steps per compiled call) for integrated gradients.

        Returns:
            An :class:`LLMAttributionResult`: ``token_attr`` (T, F), ``seq_attr`` (F,).

        Raises:
            UnsupportedOptionError: ``baselines``, ``attribute_to_layer_input=True``,
                ``return_convergence_delta=True`` or ``grad_kwargs`` in ``kwargs``.
            TypeError: A template input, an unknown keyword.
        """
        where = "LLMGradientAttribution.attribute"
        inp = _as_input(inp, where, tokens_only=True)
        bad = {}
        if kwargs.pop("baselines", None) is not None:
            bad["baselines"] = "the baseline is the input's baselines token (TextTokenInput)"
        if kwargs.pop("attribute_to_layer_input", False):
            bad["attribute_to_layer_input"] = "the embedding's input is token ids"
        if kwargs.pop("return_convergence_delta", False):
            bad["return_convergence_delta"] = "one attribution per target token, no delta"
        if kwargs.pop("grad_kwargs", None) is not None:
            bad["grad_kwargs"] = "torch.autograd.grad options; the gradients are JAX's"
        if "skip_tokens" in kwargs:
            kwargs.pop("skip_tokens")
            bad["skip_tokens"] = "in Captum 0.9 an argument of TextTokenInput(..., skip_tokens=)"
        if bad:
            raise unsupported(where, bad)
        ig = self._method == "layer_integrated_gradients"
        served = ("n_steps", "method", "internal_batch_size") if ig else ()
        unknown = sorted(set(kwargs) - set(served))
        if unknown:
            raise TypeError(
                f"{where}: got unexpected keyword arguments {unknown} for "
                f"{type(self.attr_method).__name__}; it accepts {list(served)}"
            )
        extra: dict[str, Any] = {}
        if ig:
            extra = dict(n_steps=kwargs.get("n_steps", 50))
            extra["quadrature"] = kwargs.get("method", "gausslegendre")
            ibs = kwargs.get("internal_batch_size")
            if ibs is not None:
                if isinstance(ibs, bool) or not isinstance(ibs, (int, np.integer)) or ibs < 1:
                    raise ValueError(
                        f"{where}: internal_batch_size must be a positive int, got {ibs!r}"
                    )
                extra["batch_size"] = int(ibs)
        tgt = self._target_ids(inp, target, gen_args)

        def run(entry):
            layer = self._model.layer_path(entry, self.attr_method.layer)
            return llm.llm_gradient_attribution(
                entry.conv,
                self.tokenizer,
                inp,
                target=tgt,
                method=self._method,
                layer=layer,
                multiply_by_inputs=self.attr_method.multiplies_by_inputs,
                **extra,
            )

        out = self._at_length(len(inp.ids) + len(tgt), run)
        return self._result(out, inp)
