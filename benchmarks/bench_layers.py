"""Layer, neuron and CAM methods: jaxattr against Captum on the same weights, one process.

Usage::

    python benchmarks/bench_layers.py            # results/layers.json
    python benchmarks/bench_layers.py --quick    # fewer repeats

Rows: LayerGradCam on ResNet-18 (``layer4``, 224x224, batch 1 and 8), LayerIntegratedGradients
on a BERT-style encoder's embeddings (2 layers, hidden 128, 64 tokens, 50 steps, batch 1
and 8) and NeuronConductance on ResNet-18 (``layer3.0.conv1``, 64x64, 20 steps). Both sides
run the same weights: jaxattr through the bridge.
"""

from __future__ import annotations

import argparse
import sys
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


def main(argv=None) -> list[harness.Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, 3 repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/layers.json")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else 5
    batches = [1] if args.quick else [1, 8]
    rows = []

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
    harness.report(rows, "Layer, neuron and CAM methods (bridged models)", args.out)
    return rows


if __name__ == "__main__":
    main()
