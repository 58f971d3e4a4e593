"""Train the demo CNN on generated shapes and save ``weights.npz`` (deterministic).

Usage: ``python -m jaxattr.demo.train [--steps 1500]``. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxattr import _caching
from jaxattr.demo.data import make_shapes
from jaxattr.demo.model import WEIGHTS, DemoCNN, save_params


def train(steps: int = 1500, batch: int = 64, seed: int = 0, lr: float = 3e-3):
    """Train from scratch; returns ``(params, test_accuracy)``."""
    module = DemoCNN()
    params = module.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))["params"]
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps))
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        logits = module.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @_caching.jit
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    images, labels, _ = make_shapes(steps * batch // 4, seed=seed + 1)  # reused 4 times
    n = len(images)
    t0 = time.perf_counter()
    for i in range(steps):
        lo = (i * batch) % n
        params, opt_state, loss = step(
            params, opt_state, images[lo : lo + batch], labels[lo : lo + batch]
        )
        if i % 250 == 0 or i == steps - 1:
            print(f"step {i:5d}  loss {float(loss):.4f}  {time.perf_counter() - t0:.1f}s")
    x_test, y_test, _ = make_shapes(1000, seed=seed + 1000)
    pred = np.asarray(module.apply({"params": params}, x_test)).argmax(1)
    return params, float((pred == y_test).mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params, acc = train(args.steps, seed=args.seed)
    print(f"test accuracy {acc:.3f} on 1000 fresh images")
    save_params(params)
    print(f"saved {WEIGHTS}")


if __name__ == "__main__":
    main()
