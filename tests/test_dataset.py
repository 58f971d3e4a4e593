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
from jaxattr.structure import Layer, default_intercept

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

    # a random method resumed on a mesh whose size divides the recorded padding multiple
    # pads as the uninterrupted run did, so its draws are the same; another mesh size raises
    sg = dict(key=jax.random.key(5), n_iter=3, show_progress=False)
    xb = [(x[0:8], t[0:8]), (x[8:16], t[8:16]), (x[16:19], t[16:19])]  # 8, 8, 3 rows
    full = jaxattr.attribute_dataset(jaxattr.smoothgrad, fn, xb, out=sys.argv[1] + "_a", **sg)
    jaxattr.attribute_dataset(jaxattr.smoothgrad, fn, xb[:2], out=sys.argv[1] + "_b", **sg)
    four = Mesh(np.asarray(jax.devices()[:4]), ("batch",))
    resumed = jaxattr.attribute_dataset(jaxattr.smoothgrad, fn, xb, out=sys.argv[1] + "_b",
                                        mesh=four, **sg)
    np.testing.assert_allclose(resumed.load(), full.load(), rtol=1e-5, atol=1e-6)
    three = Mesh(np.asarray(jax.devices()[:3]), ("batch",))
    try:
        jaxattr.attribute_dataset(jaxattr.smoothgrad, fn, xb, out=sys.argv[1] + "_b",
                                  mesh=three, **sg)
        raise AssertionError("a 3-device resume of 8-row padded draws did not raise")
    except jaxattr.ResumeMismatchError as e:
        assert e.fields == {"padding": (8, 24)}, e.fields
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


# --------------------------------------------------------------------------------------
# Resumable runs that cannot mix
# --------------------------------------------------------------------------------------


class Dense:
    """A one-layer structured model (``params`` and ``layers``)."""

    def __init__(self, w):
        self.params = {"w": w}
        self.layers = {"fc": Layer("fc", "linear", param_names={"weight": "w"})}

    def apply(self, params, x, intercept=None):
        intercept = intercept or default_intercept
        return intercept(
            self.layers["fc"], lambda q, v: jnp.tanh(v) @ q["weight"], {"weight": params["w"]}, x
        )

    def __call__(self, x):
        return self.apply(self.params, x)


def _counting(method):
    calls = []

    def counting(fn, x, **kw):
        calls.append(x.shape[0])
        return method(fn, x, **kw)

    return counting, calls


FIELDS = {"method", "target", "model.structure", "model.weights", "inputs", "key"}


def test_index_stores_the_fingerprint_and_shard_shapes(tmp_path):
    x, batches = _batches()
    out = tmp_path / "fp"
    store = jaxattr.attribute_dataset(
        jaxattr.integrated_gradients,
        fn,
        batches,
        out=out,
        target=2,
        n_steps=4,
        multiply_by_inputs=False,
        show_progress=False,
    )
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "jaxattr-dataset/2"
    fp = index["fingerprint"]
    assert set(fp) == FIELDS | {"options.n_steps", "options.multiply_by_inputs"}
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in fp.values())
    assert store.fingerprint == fp
    assert index["fingerprint_summary"]["options.n_steps"] == '["int", "4"]'
    assert index["padding"] == {"size": 4, "multiple": 1}
    assert index["batches"]["2"] == {
        "n": 2,
        "files": ["b0000002_0.npy"],
        "leaves": [{"shape": [2, 4], "dtype": "float32"}],
    }
    assert not [n for n in os.listdir(out) if ".tmp" in n]  # temporary files renamed


def _make_fn(w):
    return lambda x: jnp.tanh(x) @ w


SG = jaxattr.noise_tunnel(jaxattr.saliency, nt_samples=2, stdevs=0.1)
CHANGES = {
    # name: (first run's (method, fn, kwargs), the resume's, the fields that differ)
    "target": (
        (jaxattr.integrated_gradients, fn, {"target": 2, "n_steps": 4}),
        (jaxattr.integrated_gradients, fn, {"target": 1, "n_steps": 4}),
        {"target"},
    ),
    "option": (
        (jaxattr.integrated_gradients, fn, {"target": 2, "n_steps": 4}),
        (
            jaxattr.integrated_gradients,
            fn,
            {"target": 2, "n_steps": 4, "multiply_by_inputs": False},
        ),
        {"options.multiply_by_inputs"},
    ),
    "option value": (
        (jaxattr.integrated_gradients, fn, {"target": 2, "n_steps": 4}),
        (jaxattr.integrated_gradients, fn, {"target": 2, "n_steps": 8}),
        {"options.n_steps"},
    ),
    "array option": (
        (jaxattr.integrated_gradients, fn, {"target": 2, "baselines": np.zeros((1, 4))}),
        (jaxattr.integrated_gradients, fn, {"target": 2, "baselines": np.ones((1, 4))}),
        {"options.baselines"},
    ),
    "model weights": (
        (jaxattr.saliency, Dense(W), {"target": 0}),
        (jaxattr.saliency, Dense(W * 2), {"target": 0}),
        {"model.weights"},
    ),
    "closure weights": (
        (jaxattr.saliency, _make_fn(W), {"target": 0}),
        (jaxattr.saliency, _make_fn(W + 1e-3), {"target": 0}),
        {"model.weights"},
    ),
    "model structure": (
        (jaxattr.saliency, Dense(W), {"target": 0}),
        (jaxattr.saliency, fn, {"target": 0}),
        {"model.structure"},
    ),
    "method": (
        (jaxattr.saliency, fn, {"target": 0}),
        (jaxattr.gradient, fn, {"target": 0}),
        {"method"},
    ),
    "wrapper option": (
        (SG, fn, {"target": 0, "key": jax.random.key(0)}),
        (
            jaxattr.noise_tunnel(jaxattr.saliency, nt_samples=3, stdevs=0.1),
            fn,
            {"target": 0, "key": jax.random.key(0)},
        ),
        {"method"},
    ),
    "key": (
        (SG, fn, {"target": 0, "key": jax.random.key(0)}),
        (SG, fn, {"target": 0, "key": jax.random.key(1)}),
        {"key"},
    ),
}


def _written(out):
    """Every file of ``out`` with its inode and mtime: a rewrite changes both."""
    return {n: (os.stat(out / n).st_ino, os.stat(out / n).st_mtime_ns) for n in os.listdir(out)}


@pytest.mark.parametrize("change", list(CHANGES))
def test_resume_with_a_difference_raises_naming_the_fields(tmp_path, change):
    (m1, f1, kw1), (m2, f2, kw2), fields = CHANGES[change]
    x, batches = _batches()
    out = tmp_path / "attr"
    jaxattr.attribute_dataset(m1, f1, batches, out=out, show_progress=False, **kw1)
    stored = json.loads((out / "index.json").read_text())["fingerprint"]
    before = _written(out)
    with pytest.raises(jaxattr.ResumeMismatchError) as info:
        jaxattr.attribute_dataset(m2, f2, batches, out=out, show_progress=False, **kw2)
    e = info.value
    assert isinstance(e, ValueError)
    assert set(e.fields) == fields, e.fields
    msg = str(e)
    assert msg.endswith("pass resume=False to overwrite, or another out")
    for field in fields:
        old, new = e.fields[field]
        assert old == stored.get(field) and new is not None and new != old
        assert f"  {field}: {old[:16] if old else 'absent'}" in msg and new[:16] in msg
    if change == "method":
        assert "holds results of method 'saliency', not 'gradient'" in msg
    assert _written(out) == before  # nothing computed, written or appended
    # resume=False starts over with the new settings
    store = jaxattr.attribute_dataset(
        m2, f2, batches, out=out, resume=False, show_progress=False, **kw2
    )
    assert len(store) == 10 and store.fingerprint != stored


def test_resume_with_the_same_settings_skips(tmp_path):
    x, batches = _batches()
    out = tmp_path / "attr"
    jaxattr.attribute_dataset(
        SG, Dense(W), batches, out=out, target=0, key=jax.random.key(3), show_progress=False
    )
    stored = json.loads((out / "index.json").read_text())["fingerprint"]
    before = _written(out)
    # equal but new objects: another wrapper, a model with equal (numpy) weights, a new key
    store = jaxattr.attribute_dataset(
        jaxattr.noise_tunnel(jaxattr.saliency, nt_samples=2, stdevs=0.1),
        Dense(np.asarray(W)),
        [np.asarray(b) for b in batches],
        out=out,
        target=0,
        key=jax.random.key(3),
        show_progress=False,
    )
    assert _written(out) == before  # every batch skipped, nothing rewritten
    assert store.fingerprint == stored and len(store) == 10


@pytest.mark.parametrize(
    "method, kw",
    [
        (jaxattr.smoothgrad, {"n_iter": 4, "noise_level": 0.5}),
        (jaxattr.noise_tunnel(jaxattr.saliency, nt_samples=3, stdevs=0.5), {}),
    ],
    ids=["smoothgrad", "noise_tunnel"],
)
def test_resumed_random_method_is_bit_identical(tmp_path, method, kw):
    x, batches = _batches()  # 4, 4, 2 rows
    seen = []

    def spy(fn, x, key, **k):  # records the padded batch size
        seen.append(x.shape[0])
        return method(fn, x, key=key, **k)

    kw = dict(kw, target=1, key=jax.random.key(7), show_progress=False)
    whole = jaxattr.attribute_dataset(spy, fn, batches, **kw)
    assert seen == [4, 4, 4]

    def interrupted():
        yield from batches
        raise RuntimeError("interrupted")  # batches 0 and 1 are written, batch 2 is not

    with pytest.raises(RuntimeError, match="interrupted"):
        jaxattr.attribute_dataset(spy, fn, interrupted(), out=tmp_path / "cut", **kw)
    assert jaxattr.AttributionStore(tmp_path / "cut").batch_indices == [0, 1]
    index = json.loads((tmp_path / "cut" / "index.json").read_text())
    assert index["padding"] == {"size": 4, "multiple": 1}
    seen.clear()
    resumed = jaxattr.attribute_dataset(spy, fn, batches, out=tmp_path / "cut", **kw)
    assert seen == [4]  # only batch 2, padded to the first batch's 4 rows as before
    assert resumed.batch_indices == [0, 1, 2]
    np.testing.assert_array_equal(resumed.load(), whole)  # bit-identical
    # resumed from batch 1 too (batch 1's entry dropped, as if never written)
    del index["batches"]["1"]
    (tmp_path / "cut" / "index.json").write_text(json.dumps(index))
    again = jaxattr.attribute_dataset(spy, fn, batches, out=tmp_path / "cut", **kw)
    np.testing.assert_array_equal(again.load(), whole)


def test_missing_or_truncated_shard_is_recomputed(tmp_path):
    x, batches = _batches()
    ref = jaxattr.integrated_gradients(fn, x, target=2, n_steps=4)
    out = tmp_path / "attr"
    counting, calls = _counting(jaxattr.integrated_gradients)
    jaxattr.attribute_dataset(
        counting, fn, batches, out=out, target=2, n_steps=4, show_progress=False
    )
    calls.clear()
    os.remove(out / "b0000000_0.npy")  # deleted
    path = out / "b0000001_0.npy"
    path.write_bytes(path.read_bytes()[:-8])  # truncated
    np.save(out / "b0000002_0.npy", np.zeros((2, 5), np.float32))  # another shape
    with pytest.warns(UserWarning, match="computing batch"):
        store = jaxattr.attribute_dataset(
            counting, fn, batches, out=out, target=2, n_steps=4, show_progress=False
        )
    assert calls == [4, 4, 4]
    np.testing.assert_allclose(store.load(), ref, rtol=1e-6)
    calls.clear()
    jaxattr.attribute_dataset(
        counting, fn, batches, out=out, target=2, n_steps=4, show_progress=False
    )
    assert calls == []  # now intact


def test_index_without_fingerprint_is_not_resumed(tmp_path):
    x, batches = _batches()
    out = tmp_path / "old"
    jaxattr.attribute_dataset(jaxattr.saliency, fn, batches, out=out, target=0, show_progress=False)
    index_path = out / "index.json"
    index = json.loads(index_path.read_text())
    for k in ("fingerprint", "fingerprint_summary", "padding"):
        del index[k]
    index["format"] = "jaxattr-dataset/1"
    index_path.write_text(json.dumps(index))
    with pytest.raises(jaxattr.ResumeMismatchError, match="without a fingerprint") as info:
        jaxattr.attribute_dataset(
            jaxattr.saliency, fn, batches, out=out, target=0, show_progress=False
        )
    assert "pass resume=False to overwrite, or another out" in str(info.value)
    store = jaxattr.attribute_dataset(
        jaxattr.saliency, fn, batches, out=out, target=0, resume=False, show_progress=False
    )
    assert set(store.fingerprint) == FIELDS
