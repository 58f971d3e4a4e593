"""Layer, neuron and CAM methods: jaxattr against Captum on the same weights, one process.

Usage::

    python benchmarks/bench_layers.py            # results/layers.json
    python benchmarks/bench_layers.py --quick    # fewer repeats

Rows: LayerGradCam on ResNet-18 (``layer4``, 224x224, batch 1 and 8), LayerIntegratedGradients
on a BERT-style encoder's embeddings (2 layers, hidden 128, 64 tokens, 50 steps, batch 1
and 8) and NeuronConductance on ResNet-18 (``layer3.0.conv1``, 64x64, 20 steps). Both sides
run the same weights: jaxattr through the bridge.

The table is wall-clock time (both sides on all cores). On a shared machine torch's
OpenMP threads lose far more wall time to other processes than XLA's, so the JSON also
records each row's CPU time per call (``time.process_time``, median): jaxattr with JAX's
defaults and Captum with torch on one thread (its work, without OpenMP spinning), and the
load average before and after the run (``cpu_time``, ``load_average``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import captum.attr as ca  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import jaxattr  # noqa: E402
import tests.conftest  # noqa: E402,F401  (torchvision stub for transformers/zennit)
from benchmarks import harness  # noqa: E402
from jaxattr import bridge  # noqa: E402
from tests import torch_models as tm  # noqa: E402


class BertClassifier(torch.nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        torch.manual_seed(0)
        self.bert = tm.hf_bert(num_layers=2, hidden=hidden)
        self.head = torch.nn.Linear(hidden, 3)

    def forward(self, ids, mask):
        return self.head(self.bert(ids, attention_mask=mask).pooler_output)


def cpu_ms(f, repeat: int, torch_threads: int | None = None) -> float:
    """Median CPU time (all threads of this process) of ``f()`` in ms, after a warm-up;
    torch limited to ``torch_threads`` meanwhile when given."""
    before = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        harness._block(f())
        times = []
        for _ in range(repeat):
            t0 = time.process_time()
            harness._block(f())
            times.append(time.process_time() - t0)
    finally:
        torch.set_num_threads(before)
    return statistics.median(times) * 1e3


def main(argv=None) -> list[harness.Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, 3 repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/layers.json")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else 5
    batches = [1] if args.quick else [1, 8]
    rows = []
    cpu = []  # per row: jaxattr CPU ms per call, Captum (torch on 1 thread) CPU ms per call
    load_before = os.getloadavg()

    def record(ours, ref):
        name, n = rows[-1].name, rows[-1].batch
        a, b = cpu_ms(ours, repeat), cpu_ms(ref, repeat, torch_threads=1)
        cpu.append(
            {
                "name": name,
                "batch": n,
                "jaxattr_cpu_ms": a,
                "captum_1thread_cpu_ms": b,
                "work_ratio": b / a,
            }
        )

    torch.manual_seed(0)
    resnet = tm.randomize_norm_stats(tm.resnet18(num_classes=1000)).eval()
    conv = bridge.from_torch(resnet, torch.zeros(2, 3, 224, 224))
    small = bridge.from_torch(resnet, torch.zeros(2, 3, 64, 64))
    harness.ref(resnet)  # converted: the reference runs on its own device from here
    for n in batches:
        x = np.random.default_rng(n).normal(size=(n, 3, 224, 224)).astype(np.float32)
        xt = harness.ref_tensor(x)
        gc = ca.LayerGradCam(resnet, resnet.layer4)
        first, t_ours = harness.time_call(
            lambda: jaxattr.grad_cam(conv, x, "layer4", target=3), repeat=repeat
        )
        _, t_ref = harness.time_call(lambda: gc.attribute(xt, target=3), repeat=repeat)
        rows.append(
            harness.Row(
                "grad_cam (ResNet-18 layer4, 224)",
                n,
                t_ours,
                "Captum",
                t_ref,
                first - t_ours,
                peak_mb=harness.peak_rss_mb(),
            )
        )
        record(
            lambda x=x: jaxattr.grad_cam(conv, x, "layer4", target=3),
            lambda gc=gc, xt=xt: gc.attribute(xt, target=3),
        )

    x64 = np.random.default_rng(3).normal(size=(1, 3, 64, 64)).astype(np.float32)
    nc = ca.NeuronConductance(resnet, resnet.layer3[0].conv1)
    first, t_ours = harness.time_call(
        lambda: jaxattr.neuron_conductance(
            small, x64, "layer3.0.conv1", (5, 1, 1), target=2, n_steps=20
        ),
        repeat=repeat,
    )
    _, t_ref = harness.time_call(
        lambda: nc.attribute(harness.ref_tensor(x64), (5, 1, 1), target=2, n_steps=20),
        repeat=repeat,
    )
    rows.append(
        harness.Row(
            "neuron_conductance (ResNet-18 layer3, 64, 20 steps)",
            1,
            t_ours,
            "Captum",
            t_ref,
            first - t_ours,
            peak_mb=harness.peak_rss_mb(),
        )
    )
    record(
        lambda: jaxattr.neuron_conductance(
            small, x64, "layer3.0.conv1", (5, 1, 1), target=2, n_steps=20
        ),
        lambda: nc.attribute(torch.from_numpy(x64), (5, 1, 1), target=2, n_steps=20),
    )

    bert = BertClassifier().eval()
    inputs, models = {}, {}
    for n in batches:
        g = torch.Generator().manual_seed(n)
        ids = torch.randint(1, 100, (n, 64), generator=g)
        inputs[n] = ids, torch.ones(n, 64, dtype=torch.long)
        models[n] = bridge.from_torch(bert, inputs[n])
    harness.ref(bert)  # converted: the reference runs on its own device from here
    for n in batches:
        model = models[n]
        ids_np, mask_np = (a.numpy() for a in inputs[n])
        ids, mask = (harness.ref(a) for a in inputs[n])
        lig = ca.LayerIntegratedGradients(bert, bert.bert.embeddings)
        first, t_ours = harness.time_call(
            lambda: jaxattr.layer_integrated_gradients(
                model, ids_np, "bert.embeddings", baselines=0, args=(mask_np,), target=1, n_steps=50
            ),
            repeat=repeat,
        )
        _, t_ref = harness.time_call(
            lambda: lig.attribute(
                ids,
                baselines=torch.zeros_like(ids),
                additional_forward_args=(mask,),
                target=1,
                n_steps=50,
            ),
            repeat=repeat,
        )
        rows.append(
            harness.Row(
                "layer_integrated_gradients (BERT embeddings, 64 tokens)",
                n,
                t_ours,
                "Captum",
                t_ref,
                first - t_ours,
                peak_mb=harness.peak_rss_mb(),
            )
        )
        record(
            lambda model=model, ids_np=ids_np, mask_np=mask_np: jaxattr.layer_integrated_gradients(
                model, ids_np, "bert.embeddings", baselines=0, args=(mask_np,), target=1, n_steps=50
            ),
            lambda lig=lig, ids=ids, mask=mask: lig.attribute(
                ids,
                baselines=torch.zeros_like(ids),
                additional_forward_args=(mask,),
                target=1,
                n_steps=50,
            ),
        )
    load = {"before": load_before, "after": os.getloadavg()}
    harness.report(
        rows,
        "Layer, neuron and CAM methods (bridged models)",
        args.out,
        extra={"cpu_time": cpu, "load_average": load},
    )
    print("\nCPU time per call (median; Captum with torch on 1 thread):")
    for c in cpu:
        print(
            f"  {c['name']} b={c['batch']}: jaxattr {c['jaxattr_cpu_ms']:.1f} ms, Captum "
            f"{c['captum_1thread_cpu_ms']:.1f} ms, work ratio {c['work_ratio']:.2f}x"
        )
    print(f"load average (1, 5, 15 min): before {load['before']}, after {load['after']}")
    return rows


if __name__ == "__main__":
    main()
