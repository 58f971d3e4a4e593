"""Benchmark harness: jaxattr against its Captum/Zennit counterpart, same weights, one process.

Each row times one method both ways: warm-up first (jaxattr's first call, compile
included, is reported separately as compile time), then the median of several runs with
``block_until_ready``. The FLOP floor of a row is the FLOPs of the model passes the method
needs (forward + input gradient, counted by XLA's cost analysis on one example, times the
examples and steps) divided by the machine's measured float32 matmul throughput: no
implementation of the method can beat it on this machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Row:
    """One benchmark row; times in seconds."""

    name: str
    batch: int
    jaxattr_s: float
    reference: str
    reference_s: float
    compile_s: float
    floor_s: float | None = None
    peak_mb: float | None = None

    @property
    def speedup(self) -> float:
        """How many times faster jaxattr is than the reference (>1: faster)."""
        return self.reference_s / self.jaxattr_s

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["speedup"] = self.speedup
        d["jaxattr_over_floor"] = self.jaxattr_s / self.floor_s if self.floor_s else None
        d["reference_over_floor"] = self.reference_s / self.floor_s if self.floor_s else None
        return d


#: Where the torch reference runs: ``JAXATTR_BENCH_TORCH_DEVICE=cuda`` on a GPU machine
#: (jaxattr runs on JAX's default device either way). Models are converted first, then
#: moved; inputs are moved before the timed calls.
TORCH_DEVICE = os.environ.get("JAXATTR_BENCH_TORCH_DEVICE", "cpu")


def ref(obj: Any) -> Any:
    """A torch module (moved in place) or tensor (a copy) on the reference's device."""
    return obj if TORCH_DEVICE == "cpu" else obj.to(TORCH_DEVICE)


def ref_tensor(a: Any) -> Any:
    """A NumPy array as a torch tensor on the reference's device."""
    import torch

    return ref(torch.from_numpy(np.asarray(a)))


def _block(out: Any) -> Any:
    for leaf in jax.tree_util.tree_leaves(out):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
        elif getattr(leaf, "is_cuda", False):
            import torch

            torch.cuda.synchronize()
    return out


def time_call(
    f: Callable[[], Any], *, repeat: int = 7, min_time: float = 0.0
) -> tuple[float, float]:
    """``(first_call_s, median_s)`` of ``f()``; the first call is not in the median."""
    t0 = time.perf_counter()
    _block(f())
    first = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and len(times) < 50):
        t0 = time.perf_counter()
        _block(f())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def matmul_flops_per_s(size: int = 2048, repeat: int = 5) -> float:
    """Measured float32 matmul throughput of this machine through XLA, in FLOP/s."""
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    _, t = time_call(lambda: f(a, a), repeat=repeat)
    return 2 * size**3 / t


def xla_flops(f: Callable[..., Any], *args: Any) -> float:
    """FLOPs of ``f(*args)`` as counted by XLA's cost analysis of the compiled program."""
    cost = jax.jit(f).lower(*args).compile().cost_analysis()
    if isinstance(cost, list):  # older jax returns one dict per device
        cost = cost[0]
    return float(cost["flops"])


def forward_and_input_gradient_flops(fn: Callable[..., Any], example: Any, target: int) -> float:
    """FLOPs of one forward and one input-gradient pass of ``fn`` on a batch of one."""
    grad = jax.grad(lambda x: fn(x)[:, target].sum())
    return xla_flops(grad, example)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> dict[str, Any]:
    import torch

    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_device": TORCH_DEVICE,
        "jax_device": str(jax.devices()[0]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def write_results(result: dict, out: Path, markdown: str) -> None:
    """Write ``result`` to ``out`` (JSON) and ``markdown`` beside it (``.md``), and print
    the markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


def report(rows: list[Row], title: str, out: Path | None, extra: dict | None = None) -> str:
    """Print a markdown table of ``rows`` and write them (plus the environment) as JSON."""
    lines = [
        f"### {title}",
        "",
        "| row | batch | jaxattr | reference | ref time | speedup | compile | floor | "
        "jaxattr/floor | ref/floor |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d = r.as_dict()
        floor = f"{r.floor_s * 1e3:.2f} ms" if r.floor_s else "-"
        jf = f"{d['jaxattr_over_floor']:.2f}x" if r.floor_s else "-"
        rf = f"{d['reference_over_floor']:.2f}x" if r.floor_s else "-"
        lines.append(
            f"| {r.name} | {r.batch} | {r.jaxattr_s * 1e3:.2f} ms | {r.reference} | "
            f"{r.reference_s * 1e3:.2f} ms | **{r.speedup:.2f}x** | {r.compile_s:.2f} s | "
            f"{floor} | {jf} | {rf} |"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "title": title,
            "environment": environment(),
            "rows": [r.as_dict() for r in rows],
            **(extra or {}),
        }
        out.write_text(json.dumps(payload, indent=2))
        out.with_suffix(".md").write_text(text + "\n")
    return text


def np32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)
