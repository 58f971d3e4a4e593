"""Peak memory of expanding methods: the default memory budget against ``batch_size=16``.

Each case runs in a fresh process (peak RSS, ``ru_maxrss``, is per process) on a bridged
ResNet-18 (10 classes, random weights), so the table shows what the memory budget buys
(``jaxattr.set_memory_budget``; no ``batch_size`` given) next to a hand-picked chunk size.

Usage::

    python benchmarks/bench_memory.py            # writes benchmarks/results/memory.md
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "IG n_steps=256, 2 images 64x64": "ig",
    "occlusion 16x16 window stride 8, 1 image 128x128": "occlusion",
    "feature ablation 256 features, 1 image 64x64": "ablation",
}


def _child(case: str, batch: str) -> None:
    import resource

    import jax
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from jaxattr.bridge import from_torch
    from torch_models import resnet18

    import jaxattr

    torch.manual_seed(0)
    size = 128 if case == "occlusion" else 64
    n = 2 if case == "ig" else 1
    x = np.random.default_rng(0).random((n, 3, size, size), np.float32)
    model = from_torch(resnet18(num_classes=10).eval(), torch.from_numpy(x))
    kw = {} if batch == "default" else {"batch_size": int(batch)}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    if case == "ig":
        out = jaxattr.integrated_gradients(model, x, target=1, n_steps=256, **kw)
    elif case == "occlusion":
        out = jaxattr.occlusion(
            model, x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), target=1, **kw
        )
    else:
        mask = (np.arange(64)[:, None] // 4 * 16 + np.arange(64)[None] // 4).astype(np.int32)
        out = jaxattr.feature_ablation(model, x, feature_mask=mask[None, None], target=1, **kw)
    jax.block_until_ready(out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"peak_gib": peak, "before_gib": base, "seconds": time.perf_counter() - t0}))


def main() -> int:
    if len(sys.argv) == 3:
        _child(sys.argv[1], sys.argv[2])
        return 0
    rows = []
    for label, case in CASES.items():
        row = [label]
        for batch in ("default", "16"):
            out = subprocess.run(
                [sys.executable, __file__, case, batch], capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            row.append(f"{r['peak_gib']:.2f} GiB / {r['seconds']:.1f} s")
            print(label, batch, r, flush=True)
        rows.append(row)
    table = [
        "| case (bridged ResNet-18, CPU) | default budget: peak RSS / time | batch_size=16 |",
        "| --- | --- | --- |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    out = ROOT / "benchmarks" / "results" / "memory.md"
    out.write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
