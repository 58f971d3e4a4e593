"""jaxattr.llm against Captum, every method on every model family (slow: ``-m peer``).

GPT-2, Llama, Mistral and Qwen2 (rotary embeddings, grouped-query attention, RMSNorm;
Qwen2 with attention biases), tiny random-weight configurations converted with the bridge;
every perturbation method on a template input and on token inputs, layer integrated
gradients and gradient x activation, right and left padding, ``attr_target="prob"`` and
several trials. Same set-up and tolerance as ``tests/test_llm.py`` (``rtol=1e-4``).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ca = pytest.importorskip("captum.attr")
pytest.importorskip("tokenizers")

import jaxattr  # noqa: E402
from jaxattr import llm  # noqa: E402
from tests.helpers import Replay  # noqa: E402
from tests.test_llm import (  # noqa: E402
    INIT,
    PROMPT,
    TARGET,
    TEMPLATE,
    _gpt2,
    _llama,
    _no_torchvision_stub,
    _recorder,
    assert_result,
    bpe_tokenizer,
    convert,
    run_cli,
)

with _no_torchvision_stub():
    import transformers  # noqa: E402


def _config_kwargs(vocab):
    return dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        use_cache=False,
        initializer_range=INIT,
    )


def _mistral(vocab):
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(**_config_kwargs(vocab))
    return transformers.MistralForCausalLM(cfg).eval()


def _qwen2(vocab):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(**_config_kwargs(vocab))
    return transformers.Qwen2ForCausalLM(cfg).eval()


BUILDERS = {"gpt2": _gpt2, "llama": _llama, "mistral": _mistral, "qwen2": _qwen2}


@pytest.fixture(scope="module")
def tok():
    with _no_torchvision_stub():
        return bpe_tokenizer()


@pytest.fixture(scope="module", params=list(BUILDERS))
def lm(request, tok):
    with _no_torchvision_stub():
        module = BUILDERS[request.param](len(tok))
    return request.param, module, convert(module)


def _embedding(module):
    return module.transformer.wte if hasattr(module, "transformer") else module.model.embed_tokens


def _captum(method, module, monkeypatch, key, n, f):
    """Captum's attribution object with jaxattr's draws injected for ``key``."""
    if method == "feature_ablation":
        return ca.FeatureAblation(module), {}
    if method == "shapley_values":
        return ca.ShapleyValues(module), {}
    if method == "shapley_value_sampling":
        perms = np.asarray(jaxattr.shapley_permutations(key, f, n)).astype(np.int64)
        monkeypatch.setattr(torch, "randperm", Replay([torch.from_numpy(p) for p in perms]))
        return ca.ShapleyValueSampling(module), {"n_samples": n}
    if method == "lime":
        z = np.asarray(jaxattr.lime_samples(key, 1, f, n)).astype(np.int64).reshape(-1, f)
        return ca.Lime(
            module,
            interpretable_model=_recorder(),
            perturb_func=Replay([torch.from_numpy(r[None]) for r in z]),
        ), {"n_samples": n}
    z = list(np.asarray(jaxattr.kernel_shap_samples(key, 1, f, n)).astype(np.int64))

    def replay(self, original_inp, **kwargs):
        for row in z.pop(0):
            yield torch.from_numpy(row[None])

    monkeypatch.setattr(ca.KernelShap, "kernel_shap_perturb_generator", replay)
    ks = ca.KernelShap(module)
    ks.interpretable_model = _recorder()
    return ks, {"n_samples": n}


def _ours(method, key, n):
    if method in ("feature_ablation", "shapley_values"):
        return {}
    extra = {"interpretable_model": "linear"} if method == "lime" else {}
    return {"key": key, "n_samples": n, **extra}


@pytest.mark.parametrize("method", llm.METHODS)
@pytest.mark.parametrize("padding", ["right", "left"])
def test_template_every_method(lm, tok, method, padding, monkeypatch):
    _, module, model = lm
    key, n = jax.random.key(11), 10
    attr, kw = _captum(method, module, monkeypatch, key, n, 4)
    ref = ca.LLMAttribution(attr, tok).attribute(
        ca.TextTemplateInput(**TEMPLATE), target=TARGET, use_cached_outputs=False, **kw
    )
    monkeypatch.undo()
    res = llm.llm_attribution(
        model,
        tok,
        llm.TextTemplateInput(**TEMPLATE),
        target=TARGET,
        method=method,
        padding=padding,
        **_ours(method, key, n),
    )
    assert_result(res, ref, per_token=method in llm.PER_TOKEN_METHODS)


@pytest.mark.parametrize("method", ["feature_ablation", "shapley_value_sampling", "lime"])
def test_tokens_methods(lm, tok, method, monkeypatch):
    _, module, model = lm
    prompt = "the cat sat on the mat"
    inp = llm.TextTokenInput(prompt, tok, skip_tokens=[0], baselines="<pad>")
    key, n = jax.random.key(5), 6
    attr, kw = _captum(method, module, monkeypatch, key, n, inp.n_itp_features)
    ref = ca.LLMAttribution(attr, tok).attribute(
        ca.TextTokenInput(prompt, tok, skip_tokens=[0], baselines=2),
        target=" and the dog",
        use_cached_outputs=False,
        **kw,
    )
    monkeypatch.undo()
    res = llm.llm_attribution(
        model, tok, inp, target=" and the dog", method=method, batch_size=3, **_ours(method, key, n)
    )
    assert_result(res, ref, per_token=method in llm.PER_TOKEN_METHODS)


def test_prob_and_trials(lm, tok, monkeypatch):
    _, module, model = lm
    key = jax.random.key(2)
    keys = jax.random.split(key, 3)
    perms = [p for k in keys for p in np.asarray(jaxattr.shapley_permutations(k, 4, 3))]
    monkeypatch.setattr(
        torch, "randperm", Replay([torch.from_numpy(p.astype(np.int64)) for p in perms])
    )
    ref = ca.LLMAttribution(ca.ShapleyValueSampling(module), tok, attr_target="prob").attribute(
        ca.TextTemplateInput(**TEMPLATE),
        target=TARGET,
        use_cached_outputs=False,
        n_samples=3,
        num_trials=3,
    )
    monkeypatch.undo()
    res = llm.llm_attribution(
        model,
        tok,
        llm.TextTemplateInput(**TEMPLATE),
        target=TARGET,
        method="shapley_value_sampling",
        key=key,
        n_samples=3,
        num_trials=3,
        attr_target="prob",
    )
    assert_result(res, ref)


@pytest.mark.parametrize("method", llm.GRADIENT_METHODS)
@pytest.mark.parametrize("padding", ["right", "left"])
def test_gradient_methods(lm, tok, method, padding):
    _, module, model = lm
    cls = (
        ca.LayerIntegratedGradients
        if method == "layer_integrated_gradients"
        else ca.LayerGradientXActivation
    )
    kw = {"n_steps": 16} if method == "layer_integrated_gradients" else {}
    ref = ca.LLMGradientAttribution(cls(module, _embedding(module)), tok).attribute(
        ca.TextTokenInput(PROMPT, tok, skip_tokens=[0]), target=TARGET, **kw
    )
    res = llm.llm_gradient_attribution(
        model,
        tok,
        llm.TextTokenInput(PROMPT, tok, skip_tokens=[0]),
        target=TARGET,
        method=method,
        padding=padding,
        **kw,
    )
    assert_result(res, ref)


def test_generation_matches_transformers(lm, tok):
    _, module, model = lm
    ids = tok.encode(PROMPT)
    hf = module.generate(
        torch.tensor([ids]), max_new_tokens=8, do_sample=False, use_cache=False, eos_token_id=None
    )[0, len(ids) :].tolist()
    assert llm.generate(model, ids, max_new_tokens=8).tolist() == hf


def test_cli_gradient_method(tok, tmp_path):
    """``jaxattr explain ... --method lig`` equals llm_gradient_attribution."""
    _, out = run_cli(tok, tmp_path, "lig,gxa", "--steps", "4")
    got = np.load(out / "prompt.npz")
    with _no_torchvision_stub():
        model = convert(_gpt2(len(tok)))
    inp = llm.TextTokenInput(PROMPT, tok)
    for name, kw in (
        ("layer_integrated_gradients", {"n_steps": 4}),
        ("layer_gradient_x_activation", {}),
    ):
        ref = llm.llm_gradient_attribution(model, tok, inp, target=TARGET, method=name, **kw)
        np.testing.assert_allclose(
            got[f"{name}_token_attr"],
            ref.token_attr,
            rtol=1e-4,
            atol=1e-4 * np.abs(ref.token_attr).max(),
        )
