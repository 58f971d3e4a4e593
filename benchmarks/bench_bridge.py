"""Benchmark: converted models (jaxattr.bridge) against torch, forward and input gradient.

Runs the seed CNN (3x32x32), ResNet-18 (3x224x224) and a BERT-style encoder (4 layers,
hidden 256, 4 heads, 128 tokens, attention mask; gradient with respect to the input
embeddings) at batch 1 and 16. JAX timings are
of jitted functions after a warm-up call (compile time reported separately), with
``block_until_ready``; each number is the median of several runs. Prints a markdown table
(ratio = torch time / jax time: above 1 means the converted model is faster) and writes
JSON to ``benchmarks/results/bridge.json``.

Usage:
    python benchmarks/bench_bridge.py            # full run
    python benchmarks/bench_bridge.py --quick    # fewer runs, ResNet-18 at 112x112
    python benchmarks/bench_bridge.py --conv-layout NHWC --onednn --models resnet18

It runs with JAX's default settings. Experimental XLA flags (``--onednn``,
``--xla-flags``) must be set before jax is imported, so they are applied at the top of
``main`` before the first jax import; they are for exploring, not for the reported table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _paired(f_a, f_b, runs: int) -> tuple[float, float]:
    ta, tb = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        f_a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        f_b()
        tb.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def _models(quick: bool):
    import torch
    import torch.nn as nn

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import torch_models as tm

    torch.manual_seed(0)
    res = 112 if quick else 224

    class BertEmbeds(nn.Module):
        """BERT-style encoder on input embeddings (so the input gradient is defined)."""

        def __init__(self):
            super().__init__()
            self.bert = tm.hf_bert(num_layers=4, hidden=256, max_positions=128)

        def forward(self, embeds, attention_mask):
            out = self.bert(inputs_embeds=embeds, attention_mask=attention_mask)
            return out.pooler_output

    def bert_inputs(b):
        mask = torch.ones(b, 128, dtype=torch.long)
        mask[:, 100:] = 0
        return (torch.randn(b, 128, 256),), {"attention_mask": mask}

    return {
        "seed_cnn": (lambda: tm.seed_cnn().eval(),
                     lambda b: ((torch.randn(b, 3, 32, 32),), {})),
        "resnet18": (lambda: tm.randomize_norm_stats(tm.resnet18(1000)).eval(),
                     lambda b: ((torch.randn(b, 3, res, res),), {})),
        "bert": (lambda: BertEmbeds().eval(), bert_inputs),
    }


def bench_one(name, make_model, make_inputs, batch, runs, conv_cache):
    import jax
    import jax.numpy as jnp
    import torch

    from jaxattr import bridge

    if name not in conv_cache:
        model = make_model()
        ex_args, ex_kw = make_inputs(2)
        t0 = time.perf_counter()
        conv = bridge.from_torch(model, ex_args, kwargs=ex_kw)
        conv_cache[name] = (model, conv, time.perf_counter() - t0)
    model, conv, t_convert = conv_cache[name]
    args, kw = make_inputs(batch)
    # the torch side runs on JAXATTR_BENCH_TORCH_DEVICE (cuda on a GPU machine)
    dev = os.environ.get("JAXATTR_BENCH_TORCH_DEVICE", "cpu")
    model.to(dev)
    targs = [a.to(dev) for a in args]
    tkw = {k: v.to(dev) for k, v in kw.items()}
    sync = torch.cuda.synchronize if dev != "cpu" else (lambda: None)

    def torch_fwd():
        with torch.no_grad():
            y = model(*targs, **tkw)
        sync()
        return y

    def torch_grad():  # input gradient only: parameters do not require grad (as in jax)
        x = targs[0].clone().requires_grad_(True)
        y = model(x, *targs[1:], **tkw)
        y[:, 0].sum().backward()
        sync()
        return x.grad

    for p in model.parameters():
        p.requires_grad_(False)

    jargs = [jnp.asarray(a.numpy()) for a in args]
    jkw = {k: jnp.asarray(v.numpy().astype("int32") if v.dtype == torch.int64 else v.numpy())
           for k, v in kw.items()}
    fwd = jax.jit(lambda p, *xs: conv.fn(p, *xs, **jkw))
    grad = jax.jit(jax.grad(lambda x, p, *rest: conv.fn(p, x, *rest, **jkw)[:, 0].sum()))
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(conv.params, *jargs))
    c_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(grad(jargs[0], conv.params, *jargs[1:]))
    c_grad = time.perf_counter() - t0

    def jax_fwd():
        return jax.block_until_ready(fwd(conv.params, *jargs))

    def jax_grad():
        return jax.block_until_ready(grad(jargs[0], conv.params, *jargs[1:]))

    for f in (torch_fwd, torch_fwd, torch_grad, torch_grad, jax_fwd, jax_grad):
        f()  # warm-up (oneDNN primitive creation, allocator, XLA buffers)
    # torch and jax runs alternate, so that load from other processes hits both alike
    t_fwd, j_fwd = _paired(torch_fwd, jax_fwd, runs)
    t_grad, j_grad = _paired(torch_grad, jax_grad, runs)
    return {
        "model": name, "batch": batch, "convert_s": t_convert,
        "torch_fwd_ms": 1e3 * t_fwd, "jax_fwd_ms": 1e3 * j_fwd, "fwd_ratio": t_fwd / j_fwd,
        "torch_grad_ms": 1e3 * t_grad, "jax_grad_ms": 1e3 * j_grad,
        "grad_ratio": t_grad / j_grad, "compile_fwd_s": c_fwd, "compile_grad_s": c_grad,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs, ResNet-18 at 112x112")
    ap.add_argument("--models", default="seed_cnn,resnet18,bert")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per number")
    ap.add_argument("--conv-layout", default=None, choices=["NCHW", "NHWC"],
                    help="default: the library default (bridge.CONFIG)")
    ap.add_argument("--conv-impl", default=None, choices=["auto", "slices", "xla"])
    ap.add_argument("--onednn", action="store_true", help="XLA_FLAGS=--xla_cpu_use_onednn=true")
    ap.add_argument("--xla-flags", default="", help="extra XLA_FLAGS")
    ap.add_argument("--threads", type=int, default=0,
                    help="1: torch.set_num_threads(1) and single-threaded XLA (a fairer "
                    "comparison on a loaded machine); 0: each library's default")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bridge.json"))
    args = ap.parse_args(argv)

    flags = args.xla_flags + (" --xla_cpu_use_onednn=true" if args.onednn else "")
    if args.threads == 1:
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    if flags.strip():
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    import jax  # noqa: F401 - after XLA_FLAGS
    import torch

    from jaxattr import bridge

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.conv_layout:
        bridge.CONFIG["conv_layout"] = args.conv_layout
    if args.conv_impl:
        bridge.CONFIG["conv_impl"] = args.conv_impl
    runs = args.runs or (3 if args.quick else 7)
    models = _models(args.quick)
    rows, cache = [], {}
    for name in args.models.split(","):
        make_model, make_inputs = models[name]
        for b in [int(v) for v in args.batches.split(",")]:
            r = bench_one(name, make_model, make_inputs, b, runs, cache)
            rows.append(r)
            print(f"{name} b={b}: torch fwd {r['torch_fwd_ms']:.1f} ms, jax {r['jax_fwd_ms']:.1f}"
                  f" ms; torch grad {r['torch_grad_ms']:.1f} ms, jax {r['jax_grad_ms']:.1f} ms",
                  file=sys.stderr)
    head = ("| model | batch | torch fwd ms | jax fwd ms | fwd torch/jax | torch grad ms | "
            "jax grad ms | grad torch/jax | compile fwd+grad s |")
    lines = ["### Bridge: converted model vs torch (forward, input gradient)", "", head,
             "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['torch_fwd_ms']:.1f} | {r['jax_fwd_ms']:.1f} | "
            f"{r['fwd_ratio']:.2f} | {r['torch_grad_ms']:.1f} | {r['jax_grad_ms']:.1f} | "
            f"{r['grad_ratio']:.2f} | {r['compile_fwd_s'] + r['compile_grad_s']:.1f} |")
    print("\n".join(lines))
    meta = {
        "conv_layout": bridge.CONFIG["conv_layout"], "conv_impl": bridge.CONFIG["conv_impl"],
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "runs": runs, "quick": args.quick,
        "torch": torch.__version__, "jax": jax.__version__, "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "torch_device": os.environ.get("JAXATTR_BENCH_TORCH_DEVICE", "cpu"),
        "jax_device": str(jax.devices()[0]),
        "load_average_at_end": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
