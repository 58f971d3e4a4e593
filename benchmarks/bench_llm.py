"""Language-model attribution: jaxattr.llm against Captum's LLMAttribution, same weights.

Usage::

    python benchmarks/bench_llm.py                       # GPT-2-small config, markdown table
    python benchmarks/bench_llm.py --quick               # a tiny GPT-2 (smoke test)
    python benchmarks/bench_llm.py --out benchmarks/results/llm.json

Rows (issue #18 asks for jaxattr >= 3x faster at batch 1), on a GPT-2-small-sized model
(768 wide, 12 layers, 12 heads, vocabulary 50257; random weights, nothing downloaded),
a prompt of 24 tokens in 8 template segments of 3 words, and an 8-token target:

- feature ablation of the 8 segments (9 prompts scored): Captum ``LLMAttribution(
  FeatureAblation)`` with ``use_cached_outputs=False`` (the full forward pass jaxattr
  matches; Captum decodes the target token by token, one prompt at a time) and, as a
  second reference, with Captum's default ``use_cached_outputs=True`` (KV-cache decoding,
  whose log-probabilities drift from a full pass with transformers 5.x);
- layer integrated gradients on ``transformer.wte`` (50 Gauss-Legendre steps, every
  prompt token a feature): Captum ``LLMGradientAttribution(LayerIntegratedGradients)``.

jaxattr runs on the model converted with ``jaxattr.bridge.from_torch`` (sequence length
32 = prompt + target). Each row checks that both give the same attributions (rtol 1e-3)
before timing. The first jaxattr call (compilation included) is reported as *compile*,
then the median of the repeats; Captum runs under ``torch.no_grad`` where it allows.
The machine's load average is recorded before and after (a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
    "rho sigma tau upsilon phi chi psi omega red green blue cyan magenta yellow black white"
).split()


def _tokenizer(transformers):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny GPT-2 (smoke test)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="timed jaxattr runs per row")
    ap.add_argument("--ref-repeat", type=int, default=1, help="timed Captum runs per row")
    args = ap.parse_args()

    import torch

    from tests.torch_models import _no_torchvision_stub

    with _no_torchvision_stub():
        import transformers
    import captum.attr as ca

    from jaxattr import bridge, llm

    load_before = os.getloadavg()
    tok = _tokenizer(transformers)
    torch.manual_seed(0)
    cfg = (
        transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, use_cache=False)
        if args.quick
        else transformers.GPT2Config(use_cache=False)
    )
    module = transformers.GPT2LMHeadModel(cfg).eval()
    segments = [" ".join(WORDS[3 * i : 3 * i + 3]) for i in range(8)]
    template = " ".join(["{}"] * 8)
    target = " ".join(WORDS[24:32])
    prompt = " ".join(segments)
    assert len(tok.encode(prompt)) == 24 and len(tok.encode(target)) == 8
    t0 = time.perf_counter()
    model = bridge.from_torch(module, torch.zeros(2, 32, dtype=torch.long), output="logits")
    convert_s = time.perf_counter() - t0
    harness.ref(module)  # converted: Captum runs on JAXATTR_BENCH_TORCH_DEVICE from here
    print(f"converted in {convert_s:.1f} s; load average {load_before}", flush=True)

    def check(ours, ref, what):
        ref_tok = ref.token_attr.cpu().numpy()
        err = np.abs(ours.token_attr - ref_tok).max() / np.abs(ref_tok).max()
        print(f"{what}: max relative difference to Captum {err:.2e}", flush=True)
        assert err < 1e-3, (what, err)

    rows = []
    # ---- feature ablation of 8 segments
    inp = llm.TextTemplateInput(template, segments)
    cinp = ca.TextTemplateInput(template, segments)
    fa = ca.LLMAttribution(ca.FeatureAblation(module), tok)

    def ours_fa():
        return llm.llm_attribution(model, tok, inp, target=target)

    first, ours_s = harness.time_call(ours_fa, repeat=args.repeat)
    with torch.no_grad():
        check(ours_fa(), fa.attribute(cinp, target=target, use_cached_outputs=False), "FA")
        _, ref_s = harness.time_call(
            lambda: fa.attribute(cinp, target=target, use_cached_outputs=False),
            repeat=args.ref_repeat,
        )
        _, ref_cached_s = harness.time_call(
            lambda: fa.attribute(cinp, target=target), repeat=args.ref_repeat
        )
    name = "feature_ablation (8 segments, 24+8 tokens)"
    rows.append(
        harness.Row(
            name, 1, ours_s, "Captum (use_cached_outputs=False)", ref_s, max(first - ours_s, 0.0)
        )
    )
    rows.append(
        harness.Row(
            name,
            1,
            ours_s,
            "Captum default (cached decoding)",
            ref_cached_s,
            max(first - ours_s, 0.0),
        )
    )
    print(rows[-2].as_dict(), rows[-1].as_dict(), flush=True)

    # ---- layer integrated gradients on the token embeddings
    tinp = llm.TextTokenInput(prompt, tok)
    ctinp = ca.TextTokenInput(prompt, tok)
    lig = ca.LLMGradientAttribution(
        ca.LayerIntegratedGradients(module, module.transformer.wte), tok
    )

    def ours_lig():
        return llm.llm_gradient_attribution(
            model, tok, tinp, target=target, layer="transformer.wte"
        )

    first, ours_s = harness.time_call(ours_lig, repeat=args.repeat)
    t0 = time.perf_counter()
    ref = lig.attribute(ctinp, target=target)
    ref_first = time.perf_counter() - t0
    check(ours_lig(), ref, "LIG")
    ref_s = ref_first
    if args.ref_repeat > 1:
        _, ref_s = harness.time_call(
            lambda: lig.attribute(ctinp, target=target), repeat=args.ref_repeat - 1
        )
    rows.append(
        harness.Row(
            "layer_integrated_gradients (wte, 50 steps, 24+8 tokens)",
            1,
            ours_s,
            "Captum",
            ref_s,
            max(first - ours_s, 0.0),
        )
    )
    print(rows[-1].as_dict(), flush=True)

    load_after = os.getloadavg()
    title = (
        "Language models: jaxattr.llm vs Captum LLMAttribution (GPT-2-small config, batch 1)"
        if not args.quick
        else "Language models (quick: tiny GPT-2)"
    )
    harness.report(
        rows,
        title,
        args.out,
        extra={
            "load_average_before": load_before,
            "load_average_after": load_after,
            "convert_s": convert_s,
            "model": "tiny GPT-2" if args.quick else "GPT-2 small config",
        },
    )
    print(f"load average before {load_before}, after {load_after}")


if __name__ == "__main__":
    main()
