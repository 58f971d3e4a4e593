"""attribute_dataset: sharded over 8 forced CPU devices equals one device; resume skips.

The sharded check runs in a subprocess: the device count is fixed when jax starts, and
this pytest process already started jax with one CPU device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHARDED_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    import jaxattr
    from jax.sharding import Mesh

    assert jax.device_count() == 8, jax.devices()
    w1 = jax.random.normal(jax.random.key(0), (5, 16))
    w2 = jax.random.normal(jax.random.key(1), (16, 3))
    fn = lambda x: jnp.tanh(x @ w1) @ w2
    x = np.asarray(jax.random.normal(jax.random.key(2), (21, 5)))
    t = np.arange(21) % 3
    batches = [(x[0:8], t[0:8]), (x[8:19], t[8:19]), (x[19:], t[19:])]  # 8, 11, 2 rows

    seen = []
    def spy(fn, x, **kw):
        seen.append((x.shape, len(x.sharding.device_set)))
        return jaxattr.integrated_gradients(fn, x, **kw)

    sharded = jaxattr.attribute_dataset(spy, fn, batches, n_steps=8, show_progress=False)
    # padded to multiples of 8 and to the first batch's size; split over 8 devices
    assert seen == [((8, 5), 8), ((16, 5), 8), ((8, 5), 8)], seen
    one = Mesh(np.asarray(jax.devices()[:1]), ("batch",))
    single = jaxattr.attribute_dataset(jaxattr.integrated_gradients, fn, batches, n_steps=8,
                                       mesh=one, show_progress=False)
    eager = jaxattr.integrated_gradients(fn, x, target=t, n_steps=8)
    assert sharded.shape == (21, 5)
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sharded, eager, rtol=1e-5, atol=1e-6)

    # tuple inputs with a delta, written to disk, still sharded
    v = jax.random.normal(jax.random.key(3), (2, 16))
    fn2 = lambda a, b: jnp.tanh(a @ w1 + b @ v) @ w2
    x2 = (x, np.asarray(jax.random.normal(jax.random.key(4), (21, 2))))
    batches2 = [((x2[0][s], x2[1][s]), t[s]) for s in (slice(0, 12), slice(12, 21))]
    store = jaxattr.attribute_dataset(jaxattr.integrated_gradients, fn2, batches2, n_steps=6,
                                      return_delta=True, out=sys.argv[1], show_progress=False)
    (a1, a2), delta = store.load()
    (r1, r2), rdelta = jaxattr.integrated_gradients(fn2, x2, target=t, n_steps=6,
                                                    return_delta=True)
    np.testing.assert_allclose(a1, r1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a2, r2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(delta, rdelta, rtol=1e-4, atol=1e-5)
    print("OK")
    """
)


def test_sharded_over_8_devices_equals_single_device(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


W = jax.random.normal(jax.random.key(0), (4, 3))


def fn(x):
    return jnp.tanh(x) @ W


def _batches():
    x = np.asarray(jax.random.normal(jax.random.key(1), (10, 4)))
    return x, [x[0:4], x[4:8], x[8:10]]


def test_in_memory_equals_eager_and_targets():
    x, batches = _batches()
    out = jaxattr.attribute_dataset(jaxattr.saliency, fn, batches, target=1, show_progress=False)
    np.testing.assert_allclose(out, jaxattr.saliency(fn, x, target=1), rtol=1e-6)
    t = np.arange(10) % 3
    pairs = [
        (b, t[s]) for b, s in zip(batches, (slice(0, 4), slice(4, 8), slice(8, 10)), strict=False)
    ]
    out = jaxattr.attribute_dataset(jaxattr.gradient, fn, pairs, show_progress=False)
    np.testing.assert_allclose(out, jaxattr.gradient(fn, x, target=t), rtol=1e-6)
    dicts = [{"x": b, "target": tt} for b, tt in pairs]
    out2 = jaxattr.attribute_dataset(jaxattr.gradient, fn, iter(dicts), show_progress=True)
    np.testing.assert_allclose(out2, out)
    with pytest.raises(ValueError, match="target is given twice"):
        jaxattr.attribute_dataset(jaxattr.gradient, fn, pairs, target=0, show_progress=False)


def test_random_method_keys_fold_in_batch_position():
    x, batches = _batches()
    sg = jaxattr.noise_tunnel(jaxattr.saliency, nt_samples=2, stdevs=0.1)
    a = jaxattr.attribute_dataset(
        sg, fn, batches, key=jax.random.key(0), target=0, show_progress=False
    )
    b = jaxattr.attribute_dataset(
        sg, fn, batches, key=jax.random.key(0), target=0, show_progress=False
    )
    np.testing.assert_array_equal(a, b)
    first = sg(fn, jnp.asarray(batches[0]), key=jax.random.fold_in(jax.random.key(0), 0), target=0)
    np.testing.assert_allclose(a[:4], first, rtol=1e-6)


def test_out_and_resume_skip_finished_batches(tmp_path):
    x, batches = _batches()
    calls = []

    def counting(fn, x, **kw):
        calls.append(x.shape[0])
        return jaxattr.integrated_gradients(fn, x, **kw)

    out = tmp_path / "attr"
    store = jaxattr.attribute_dataset(
        counting, fn, batches, out=out, target=2, n_steps=4, show_progress=False
    )
    assert isinstance(store, jaxattr.AttributionStore)
    assert len(calls) == 3 and len(store) == 10 and store.batch_indices == [0, 1, 2]
    ref = jaxattr.integrated_gradients(fn, x, target=2, n_steps=4)
    np.testing.assert_allclose(store.load(), ref, rtol=1e-6)
    assert store.batch(2).shape == (2, 4)
    # a second run computes nothing
    calls.clear()
    jaxattr.attribute_dataset(
        counting, fn, batches, out=out, target=2, n_steps=4, show_progress=False
    )
    assert calls == []
    # an interrupted run (batch 1 missing from the index) recomputes only that batch
    index_path = out / "index.json"
    index = json.loads(index_path.read_text())
    del index["batches"]["1"]
    index_path.write_text(json.dumps(index))
    store = jaxattr.attribute_dataset(
        counting, fn, batches, out=out, target=2, n_steps=4, show_progress=False
    )
    assert calls == [4]
    np.testing.assert_allclose(store.load(), ref, rtol=1e-6)
    # resume=False recomputes everything
    calls.clear()
    jaxattr.attribute_dataset(
        counting, fn, batches, out=out, target=2, n_steps=4, resume=False, show_progress=False
    )
    assert len(calls) == 3
    with pytest.raises(ValueError, match="holds results of method 'counting', not 'saliency'"):
        jaxattr.attribute_dataset(jaxattr.saliency, fn, batches, out=out, show_progress=False)
    with pytest.raises(ValueError, match="holds batch 0 with 4 examples"):
        jaxattr.attribute_dataset(counting, fn, [x[:3]], out=out, show_progress=False)


def test_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        jaxattr.AttributionStore(tmp_path)
    with pytest.raises(ValueError, match="batches is empty"):
        jaxattr.attribute_dataset(jaxattr.saliency, fn, [], show_progress=False)
    with pytest.raises(ValueError, match="with_targets=True needs"):
        jaxattr.attribute_dataset(
            jaxattr.saliency, fn, [np.ones((2, 4))], with_targets=True, show_progress=False
        )


def test_processes_take_strided_batches_and_store_merges_indexes(tmp_path, monkeypatch):
    x, batches = _batches()
    out = tmp_path / "multi"
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for p in (1, 0):  # as two hosts of a jax.distributed run would, sharing `out`
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        calls = []

        def counting(fn, x, calls=calls, **kw):
            calls.append(x.shape[0])
            return jaxattr.saliency(fn, x, **kw)

        stream = [b if i % 2 == p else None for i, b in enumerate(batches)]  # others unread
        store = jaxattr.attribute_dataset(
            counting, fn, stream, out=out, target=0, show_progress=False
        )
        assert len(calls) == (1 if p == 1 else 2)
        assert (out / f"index-p0000{p}.json").exists()
    assert store.batch_indices == [0, 1, 2]
    np.testing.assert_allclose(store.load(), jaxattr.saliency(fn, x, target=0), rtol=1e-6)
