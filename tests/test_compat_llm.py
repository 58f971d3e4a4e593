"""Captum's LLM attribution classes through the front door: the same calls on
``captum.attr`` and on ``jaxattr.compat.captum`` (only the import changes), on the same
tiny Hugging Face GPT-2 and Llama (random weights, the byte-level BPE tokenizer trained
in tests/test_llm.py).

Captum runs with ``use_cached_outputs=False`` (full forward passes, which is what jaxattr
computes; the front door accepts the argument and ignores it). Random draws are injected
as in tests/test_llm.py: Captum's ``torch.randperm``, LIME/KernelSHAP samplers and
``ProductBaselines`` draws replay the ones jaxattr makes from the ``key=`` given to the
front door. ``max|ours - ref| / max|ref|`` is at most 1e-4 (printed with ``-s``).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ca = pytest.importorskip("captum.attr")
pytest.importorskip("tokenizers")

import jaxattr  # noqa: E402
import jaxattr.compat as compat  # noqa: E402
from jaxattr.compat import UnsupportedOptionError  # noqa: E402
from jaxattr.compat import captum as jc  # noqa: E402
from tests.helpers import Replay  # noqa: E402
from tests.test_llm import (  # noqa: E402
    PROMPT,
    TARGET,
    TEMPLATE,
    _gpt2,
    _llama,
    _recorder,
    bpe_tokenizer,
)
from tests.torch_models import _no_torchvision_stub  # noqa: E402

RTOL = 1e-4
PARITY: dict[str, float] = {}
#: Captum's scoring without its cache in one forward pass per prompt (its
#: ``forward_in_tokens=True`` default decodes token by token: the same numbers, 4-9x the
#: time; test_feature_ablation_token_input runs that default). The front door gets the
#: same arguments and ignores them.
FULL_PASS = dict(use_cached_outputs=False, forward_in_tokens=False)


def assert_parity(name: str, ours, ref, rtol: float = RTOL) -> None:
    """``max|ours - ref| / max|ref| <= rtol`` for seq_attr and token_attr (torch tensors),
    and the same input and output tokens."""
    assert type(ours) is jc.LLMAttributionResult
    assert list(ours.input_tokens) == list(ref.input_tokens)
    assert list(ours.output_tokens) == list(ref.output_tokens)
    for field in ("seq_attr", "token_attr"):
        a, b = getattr(ours, field), getattr(ref, field)
        if b is None:
            assert a is None, f"{name}.{field}: expected None"
            continue
        assert isinstance(a, torch.Tensor) and a.shape == b.shape, (type(a), b.shape)
        a, b = a.double().numpy(), b.detach().double().numpy()
        scale = float(np.abs(b).max())
        assert scale > 0, f"{name}.{field}: the reference is all zeros, a vacuous comparison"
        err = float(np.abs(a - b).max()) / scale
        key = f"{name}.{field}"
        PARITY[key] = max(err, PARITY.get(key, 0.0))
        print(f"parity {key}: {err:.2e}")
        assert err <= rtol, f"{key}: max|ours - ref| / max|ref| = {err:.3e} > {rtol}"


@pytest.fixture(scope="module")
def tok():
    with _no_torchvision_stub():
        return bpe_tokenizer()


@pytest.fixture(scope="module")
def gpt2(tok):
    return _gpt2(len(tok), use_cache=True)


@pytest.fixture(scope="module")
def llama(tok):
    return _llama(len(tok))


# ------------------------------------------------------------------ perturbation methods
def test_feature_ablation_token_input(gpt2, tok):
    """The same call on both; Captum's own TextTokenInput is accepted too."""
    results = {}
    for lib in (ca, jc):
        llm_attr = lib.LLMAttribution(lib.FeatureAblation(gpt2), tok)
        inp = lib.TextTokenInput(PROMPT, tok, skip_tokens=[0])
        results[lib] = llm_attr.attribute(inp, target=TARGET, use_cached_outputs=False)
    assert_parity("FeatureAblation/TextTokenInput", results[jc], results[ca])
    assert results[jc].token_attr.shape == (4, 12)
    n = compat.conversion_count()
    again = jc.LLMAttribution(jc.FeatureAblation(gpt2), tok).attribute(
        ca.TextTokenInput(PROMPT, tok, skip_tokens=[0]), target=TARGET
    )
    assert compat.conversion_count() == n  # the conversion is reused
    assert torch.equal(again.token_attr, results[jc].token_attr)


def test_feature_ablation_template_with_baselines(llama, tok):
    results = {}
    for lib in (ca, jc):
        llm_attr = lib.LLMAttribution(lib.FeatureAblation(llama), tok)
        results[lib] = llm_attr.attribute(
            lib.TextTemplateInput(**TEMPLATE), target=TARGET, **FULL_PASS
        )
    assert_parity("FeatureAblation/TextTemplateInput (Llama)", results[jc], results[ca])


def test_shapley_value_sampling(gpt2, tok, monkeypatch):
    key = jax.random.key(3)
    perms = np.asarray(jaxattr.shapley_permutations(key, 4, 5)).astype(np.int64)
    monkeypatch.setattr(torch, "randperm", Replay([torch.from_numpy(p) for p in perms]))
    ref = ca.LLMAttribution(ca.ShapleyValueSampling(gpt2), tok).attribute(
        ca.TextTemplateInput(**TEMPLATE), target=TARGET, **FULL_PASS, n_samples=5
    )
    monkeypatch.undo()
    ours = jc.LLMAttribution(jc.ShapleyValueSampling(gpt2), tok).attribute(
        jc.TextTemplateInput(**TEMPLATE), target=TARGET, **FULL_PASS, n_samples=5, key=key
    )
    assert_parity("ShapleyValueSampling/TextTemplateInput", ours, ref)


def test_shapley_values_with_mask(gpt2, tok):
    mask = [0, 1, 1, 2]  # city and state are one feature
    results = {}
    for lib in (ca, jc):
        results[lib] = lib.LLMAttribution(lib.ShapleyValues(gpt2), tok).attribute(
            lib.TextTemplateInput(**TEMPLATE, mask=mask), target=TARGET, **FULL_PASS
        )
    assert_parity("ShapleyValues/TextTemplateInput(mask)", results[jc], results[ca])
    assert results[jc].seq_attr[1] == results[jc].seq_attr[2]


def test_lime_and_kernel_shap(gpt2, tok, monkeypatch):
    """Captum fits its surrogate with a weighted least squares recorder (its
    SkLearnLinearRegression), the front door with SkLearnLinearRegression fitted in JAX;
    both see the samples jaxattr draws from the key."""
    from captum._utils.models.linear_model import SkLearnLinearRegression

    key, n = jax.random.key(4), 12
    z = np.asarray(jaxattr.lime_samples(key, 1, 4, n)).astype(np.int64).reshape(-1, 4)
    lime = ca.Lime(
        gpt2,
        interpretable_model=_recorder(),
        perturb_func=Replay([torch.from_numpy(r[None]) for r in z]),
    )
    ref = ca.LLMAttribution(lime, tok).attribute(
        ca.TextTemplateInput(**TEMPLATE), target=TARGET, **FULL_PASS, n_samples=n
    )
    ours = jc.LLMAttribution(
        jc.Lime(gpt2, interpretable_model=SkLearnLinearRegression()), tok
    ).attribute(jc.TextTemplateInput(**TEMPLATE), target=TARGET, **FULL_PASS, n_samples=n, key=key)
    assert_parity("Lime/TextTemplateInput", ours, ref)

    z = list(np.asarray(jaxattr.kernel_shap_samples(key, 1, 4, n)).astype(np.int64))

    def replay(self, original_inp, **kwargs):
        for row in z.pop(0):
            yield torch.from_numpy(row[None])

    monkeypatch.setattr(ca.KernelShap, "kernel_shap_perturb_generator", replay)
    ks = ca.KernelShap(gpt2)
    ks.interpretable_model = _recorder()
    ref = ca.LLMAttribution(ks, tok).attribute(
        ca.TextTemplateInput(**TEMPLATE), target=TARGET, **FULL_PASS, n_samples=n
    )
    monkeypatch.undo()
    ours = jc.LLMAttribution(jc.KernelShap(gpt2), tok).attribute(
        jc.TextTemplateInput(**TEMPLATE), target=TARGET, **FULL_PASS, n_samples=n, key=key
    )
    assert_parity("KernelShap/TextTemplateInput", ours, ref)


def test_product_baselines_dict_mask_trials(gpt2, tok):
    """One ProductBaselines draw per trial (from the key); Captum replays the same
    draws at each of its evaluations."""
    from captum.attr._utils.baselines import ProductBaselines as CaptumProductBaselines

    choices = {
        "name": ["Sarah", "John"],
        "city": ["Seattle", "Boston"],
        ("state",): [("WA",), ("MA",)],
        "job": ["doctor", "nurse"],
    }
    spec = dict(
        template="{name} lives in {city}, {state} and is a {job}.",
        values={"name": "Dave", "city": "Palm Coast", "state": "FL", "job": "lawyer"},
        mask={"name": 0, "city": 1, "state": 1, "job": 2},
    )
    inp = jc.TextTemplateInput(**spec, baselines=jc.ProductBaselines(choices))
    key = jax.random.key(7)
    draws = [inp.resolve_baselines(jax.random.fold_in(k, 1)) for k in jax.random.split(key, 2)]
    cpb = CaptumProductBaselines(choices)
    names = ["name", "city", "state", "job"]
    cpb.sample = Replay([dict(zip(names, d, strict=True)) for d in draws for _ in range(4)])
    ref = ca.LLMAttribution(ca.FeatureAblation(gpt2), tok).attribute(
        ca.TextTemplateInput(**spec, baselines=cpb),
        target=TARGET,
        **FULL_PASS,
        num_trials=2,
    )
    ours = jc.LLMAttribution(jc.FeatureAblation(gpt2), tok).attribute(
        inp, target=TARGET, **FULL_PASS, num_trials=2, key=key
    )
    assert_parity("FeatureAblation/ProductBaselines x2 trials", ours, ref)


def test_generated_target_and_prob(gpt2, tok):
    """target=None: the greedy continuation (gen_args), and attr_target="prob"."""
    prompt = "a cat sat on the mat and"  # its continuation decodes to whole tokens
    results = {}
    for lib in (ca, jc):
        llm_attr = lib.LLMAttribution(lib.FeatureAblation(gpt2), tok, attr_target="prob")
        results[lib] = llm_attr.attribute(
            lib.TextTokenInput(prompt, tok, skip_tokens=[0]),
            gen_args={"max_new_tokens": 5, "do_sample": False},
            **FULL_PASS,
        )
    assert len(results[jc].output_tokens) == 5
    assert_parity("FeatureAblation/generated target, prob", results[jc], results[ca])


# ------------------------------------------------------------------ gradient methods
def test_layer_integrated_gradients_and_gradient_x_activation(gpt2, tok):
    for name in ("LayerIntegratedGradients", "LayerGradientXActivation"):
        results = {}
        for lib in (ca, jc):
            method = getattr(lib, name)(gpt2, gpt2.transformer.wte)
            inp = lib.TextTokenInput(PROMPT, tok, skip_tokens=[0], baselines=2)
            kwargs = {"n_steps": 20} if name == "LayerIntegratedGradients" else {}
            results[lib] = lib.LLMGradientAttribution(method, tok).attribute(
                inp, target=TARGET, **kwargs
            )
        assert_parity(f"{name}/TextTokenInput", results[jc], results[ca])


# ------------------------------------------------------------------ contract
def test_new_weights_are_read_without_converting_again(gpt2, tok):
    w = gpt2.transformer.h[0].mlp.c_fc.weight
    saved = w.detach().clone()
    n = compat.conversion_count()
    try:
        with torch.no_grad():
            w.mul_(1.5)
        results = {}
        for lib in (ca, jc):
            results[lib] = lib.LLMAttribution(lib.FeatureAblation(gpt2), tok).attribute(
                lib.TextTokenInput(PROMPT, tok, skip_tokens=[0]),
                target=TARGET,
                **FULL_PASS,
            )
        assert_parity("FeatureAblation/new weights", results[jc], results[ca])
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert compat.conversion_count() == n


def test_unsupported_and_wrong_arguments(gpt2, tok):
    fa = jc.LLMAttribution(jc.FeatureAblation(gpt2), tok)
    inp = jc.TextTokenInput(PROMPT, tok, skip_tokens=[0])
    for kwargs, match in (
        ({"feature_mask": torch.zeros(1, 12)}, "feature_mask"),
        ({"_inspect_forward": print}, "_inspect_forward"),
        ({"skip_tokens": [0]}, "skip_tokens .in Captum 0.9 an argument of TextTokenInput"),
        ({"baselines": 0.5}, "baselines"),
    ):
        with pytest.raises(UnsupportedOptionError, match=match):
            fa.attribute(inp, target=TARGET, **kwargs)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['n_samples'\]"):
        fa.attribute(inp, target=TARGET, n_samples=4)
    with pytest.raises(UnsupportedOptionError, match="only greedy decoding"):
        fa.attribute(inp, gen_args={"max_new_tokens": 3, "do_sample": True})
    with pytest.raises(UnsupportedOptionError, match=r"gen_args \['num_return_sequences'\]"):
        fa.attribute(inp, gen_args={"num_return_sequences": 2})
    with pytest.raises(ValueError, match="gen_args must be None when target is given"):
        fa.attribute(inp, target=TARGET, gen_args={"max_new_tokens": 3})
    with pytest.raises(TypeError, match="target must be a str, a tensor of token ids or None"):
        fa.attribute(inp, target=[1, 2])
    with pytest.raises(TypeError, match="inp must be a TextTokenInput or TextTemplateInput"):
        fa.attribute(PROMPT, target=TARGET)
    with pytest.raises(ValueError, match="attr_target must be 'log_prob' or 'prob', got 'p'"):
        jc.LLMAttribution(jc.FeatureAblation(gpt2), tok, attr_target="p")
    with pytest.raises(TypeError, match="Captum's own class: build it from jaxattr.compat"):
        jc.LLMAttribution(ca.FeatureAblation(gpt2), tok)
    with pytest.raises(TypeError, match="attr_method must be one of"):
        jc.LLMAttribution(jc.Occlusion(gpt2), tok)
    with pytest.raises(UnsupportedOptionError, match="LayerGradientShap"):
        jc.LLMGradientAttribution(jc.LayerGradientShap(gpt2, gpt2.transformer.wte), tok)
    lig = jc.LLMGradientAttribution(jc.LayerIntegratedGradients(gpt2, gpt2.transformer.wte), tok)
    with pytest.raises(TypeError, match="inp must be a TextTokenInput .gradients need token"):
        lig.attribute(jc.TextTemplateInput(**TEMPLATE), target=TARGET)
    with pytest.raises(UnsupportedOptionError, match="attribute_to_layer_input"):
        lig.attribute(inp, target=TARGET, attribute_to_layer_input=True)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['stdevs'\]"):
        lig.attribute(inp, target=TARGET, stdevs=0.1)
    with pytest.raises(UnsupportedOptionError, match="attribute_future"):
        lig.attribute_future()


def test_inputs_and_result_as_captum(tok):
    """Captum's input conventions (torch in, torch out) and the result's plots."""
    pytest.importorskip("matplotlib")
    inp = jc.TextTokenInput("the lazy dog", tok, skip_tokens=["<s>"], baselines="<pad>")
    ref = ca.TextTokenInput("the lazy dog", tok, skip_tokens=["<s>"], baselines="<pad>")
    assert inp.values == ref.values and inp.baselines == ref.baselines
    assert torch.equal(inp.itp_mask, ref.itp_mask) and torch.equal(inp.to_tensor(), ref.to_tensor())
    perturbed = torch.tensor([[1, 0, 1], [0, 1, 1]])
    assert torch.equal(inp.to_model_input(perturbed), ref.to_model_input(perturbed))
    assert jc.TextTokenInput("the dog", tok).itp_mask is None
    tmpl = dict(template="{} x {} y {}", values=["a", "b", "c"], baselines=["d", "e", "f"])
    ours, theirs = (
        jc.TextTemplateInput(**tmpl, mask=[0, 1, 0]),
        ca.TextTemplateInput(**tmpl, mask=[0, 1, 0]),
    )
    assert ours.to_model_input(torch.tensor([[0, 1]])) == theirs.to_model_input(
        torch.tensor([[0, 1]])
    )
    attr = torch.tensor([[0.5, -1.0]])
    assert torch.equal(ours.format_attr(attr), theirs.format_attr(attr))

    res = jc.LLMAttributionResult(
        input_tokens=["a", "b", "c"],
        output_tokens=["x", "y"],
        seq_attr=torch.tensor([0.5, -1.0, 0.1]),
        token_attr=torch.tensor([[0.5, -1.0, 0.0], [0.0, 0.0, 0.1]]),
    )
    fig, ax = res.plot_token_attr()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    fig, ax = res.plot_seq_attr()
    assert res.seq_attr_dict == pytest.approx({"a": 0.5, "b": -1.0, "c": 0.1})
    with pytest.raises(ValueError, match=r"token_attr must have shape \(2, 3\)"):
        res.token_attr = torch.zeros(3, 3)
    no_tokens = jc.LLMAttributionResult(input_tokens=["a"], output_tokens=["x"], seq_attr=[1.0])
    with pytest.raises(ValueError, match="token_attr is None"):
        no_tokens.plot_token_attr()
