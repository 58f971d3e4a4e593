"""Influence and concepts: jaxattr against Captum on a small CNN, same weights, one process.

Usage::

    python benchmarks/bench_influence.py                   # both rows, prints a markdown table
    python benchmarks/bench_influence.py --quick           # smaller sizes, 1 repeat (smoke test)
    python benchmarks/bench_influence.py --out benchmarks/results/influence.json

Rows (issue #19 asks for jaxattr >= 5x faster on both):

- TracInCP self influence of 1,000 training examples (3x32x32) with 3 checkpoints on a
  small CNN (two 3x3 convolutions with max-pooling, a linear head; 11.6k parameters),
  gradients of every parameter. Captum runs its fastest setting: the batched per-example
  gradient trick (``sample_wise_grads_per_batch=True``, a summing loss) in batches of 100;
  jaxattr uses one ``vmap(grad)`` program per batch of 100 (the same batches).
- TCAV with 2 concepts x 5 random concepts (10 experimental sets of 2, 50 examples per
  concept) at two convolution layers, 64 inputs, from scratch: concept activations, CAV
  training (Captum: scikit-learn's SGDClassifier; jaxattr: the optax classifier, 1,000
  full-batch steps) and the scores. Captum writes its activations and CAVs to a fresh
  directory each run (it would otherwise reload them); jaxattr keeps them in memory.

jaxattr runs on the model converted with ``jaxattr.bridge.from_torch`` (``--model twin``:
a hand-written JAX twin with the same weights). The first jaxattr call (compilation
included) is reported as *compile*, then the median of the repeats.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

from benchmarks import harness  # noqa: E402
from jaxattr import concepts, influence  # noqa: E402


def small_cnn(seed: int = 0) -> torch.nn.Sequential:
    """3x32x32 -> 10 classes: conv 8, pool, conv 16, pool, linear (11.6k parameters)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 8 * 8, 10),
    ).eval()


def _conv(x, w, b):
    y = jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return y + b[None, :, None, None]


def _pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def small_cnn_twin(p, x):
    """The JAX twin of :func:`small_cnn`, params keyed by torch's state-dict names."""
    h = _pool(jax.nn.relu(_conv(x, p["0.weight"], p["0.bias"])))
    h = _pool(jax.nn.relu(_conv(h, p["3.weight"], p["3.bias"])))
    return h.reshape(h.shape[0], -1) @ p["7.weight"].T + p["7.bias"]


def ce(out, y):
    return optax.softmax_cross_entropy_with_integer_labels(out, y)


def tracin_row(net, jmodel, n, repeat):
    from captum.influence import TracInCP as CTracInCP
    from torch.utils.data import TensorDataset

    states = []
    for seed in range(3):
        states.append({k: v.clone() for k, v in small_cnn(seed + 1).state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=n)
    ckpts = [{k: v.numpy() for k, v in s.items()} for s in states]

    def load(model, i):
        model.load_state_dict(states[i])
        return 1.0

    ref = CTracInCP(
        net,
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        checkpoints=[0, 1, 2],
        checkpoints_load_func=load,
        loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"),
        batch_size=100,
        sample_wise_grads_per_batch=True,
    )
    ours = influence.TracInCP(jmodel, (x, y), ckpts, loss_fn=ce, batch_size=100)
    first, t_ours = harness.time_call(ours.self_influence, repeat=repeat)
    _, t_ref = harness.time_call(ref.self_influence, repeat=repeat)
    a, b = np.asarray(ours.self_influence()), ref.self_influence().numpy()
    err = float(np.max(np.abs(a - b)) / np.abs(b).max())
    row = harness.Row(
        name=f"TracInCP self influence, {n} examples, 3 checkpoints",
        batch=n,
        jaxattr_s=t_ours,
        reference="Captum (sample-wise trick)",
        reference_s=t_ref,
        compile_s=first - t_ours,
        peak_mb=harness.peak_rss_mb(),
    )
    return row, err


def tcav_row(net, conv, n_inputs, n_concept, repeat):
    from captum.concept import TCAV as CTCAV
    from captum.concept import Concept as CConcept

    rng = np.random.default_rng(1)
    stripes = np.zeros((n_concept, 3, 32, 32), np.float32)
    stripes[:, :, ::4] = 1.0
    dots = np.zeros((n_concept, 3, 32, 32), np.float32)
    dots[:, :, ::6, ::6] = 1.0
    data = {0: stripes + 0.1 * rng.normal(size=stripes.shape).astype(np.float32)}
    data[1] = dots + 0.1 * rng.normal(size=dots.shape).astype(np.float32)
    for i in range(5):
        data[2 + i] = rng.uniform(size=(n_concept, 3, 32, 32)).astype(np.float32)
    names = ["stripes", "dots"] + [f"random_{i}" for i in range(5)]
    ours = {i: concepts.Concept(i, names[i], data[i]) for i in data}
    theirs = {
        i: CConcept(i, names[i], torch.utils.data.DataLoader(torch.from_numpy(data[i]), n_concept))
        for i in data
    }
    sets = [[c, r] for c in (0, 1) for r in range(2, 7)]
    o_sets = [[ours[i] for i in s] for s in sets]
    c_sets = [[theirs[i] for i in s] for s in sets]
    x = rng.uniform(size=(n_inputs, 3, 32, 32)).astype(np.float32)
    layers = ["0", "3"]

    def run_captum():
        path = tempfile.mkdtemp()
        try:
            tcav = CTCAV(net, layers, save_path=path)
            return tcav.interpret(torch.from_numpy(x), c_sets, target=3)
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def run_ours():
        return concepts.TCAV(conv, layers).interpret(x, o_sets, target=3)

    first, t_ours = harness.time_call(run_ours, repeat=repeat)
    _, t_ref = harness.time_call(run_captum, repeat=repeat)
    row = harness.Row(
        name=f"TCAV 2 concepts x 5 random, 2 layers, {n_inputs} inputs, CAVs trained",
        batch=n_inputs,
        jaxattr_s=t_ours,
        reference="Captum",
        reference_s=t_ref,
        compile_s=first - t_ours,
        peak_mb=harness.peak_rss_mb(),
    )
    return row


def main(argv=None) -> list[harness.Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--out", type=Path, default=None, help="write JSON and .md here")
    parser.add_argument("--model", choices=["bridge", "twin"], default="bridge")
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    repeat = 1 if args.quick else 3
    n_train = 100 if args.quick else 1000
    n_inputs, n_concept = (8, 10) if args.quick else (64, 50)

    net = small_cnn(0)
    if args.model == "bridge":
        from jaxattr import bridge

        conv = bridge.from_torch(net, torch.randn(2, 3, 32, 32))
        jmodel = conv
    else:
        conv = None
        jmodel = small_cnn_twin
    row, err = tracin_row(net, jmodel, n_train, repeat)
    rows = [row]
    print(f"TracInCP self influence: max |jaxattr - Captum| / max |Captum| = {err:.1e}")
    net.load_state_dict(small_cnn(0).state_dict())  # the TracIn row loaded checkpoints
    if conv is None:  # TCAV addresses layers by name: a structured model
        from jaxattr import bridge

        conv = bridge.from_torch(net, torch.randn(2, 3, 32, 32))
    rows.append(tcav_row(net, conv, n_inputs, n_concept, repeat))
    harness.report(rows, f"Influence and concepts on a small CNN ({args.model})", args.out)
    return rows


if __name__ == "__main__":
    main()
