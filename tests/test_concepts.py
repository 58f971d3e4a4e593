"""jaxattr.concepts against captum.concept.TCAV on the same tiny CNN and identical CAVs.

Both libraries get the same CAV vectors: Captum through a ``Classifier`` returning fixed
weights per (experimental set, layer), jaxattr through the same classifier (user
classifiers are accepted) and through injected ``cavs``. The scores must then agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.concept import TCAV as CTCAV
from captum.concept import Concept as CConcept
from captum.concept._utils.classifier import Classifier as CClassifier

from jaxattr import concepts

RTOL = 1e-4
LAYERS = ["0", "2"]


def close(ours, ref, rtol=RTOL):
    ours = np.asarray(ours)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = max(np.abs(ref).max(), 1e-12)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale)
    err = float(np.max(np.abs(ours - ref)) / scale)
    print(f"parity: max |ours - captum| / max |captum| = {err:.1e}")


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    ).eval()


FEATURES = {"0": 4 * 6 * 6, "2": 4 * 6 * 6}


class FixedClassifier(CClassifier):
    """Fixed CAV weights per (concept ids, feature count): Captum's and jaxattr's API."""

    def __init__(self, table):
        self.table = table
        self.key = None

    def train_and_eval(self, x, y=None, **kwargs):
        if y is None:  # Captum: a DataLoader of (activations, labels)
            xs, ys = zip(*list(x), strict=True)
            x, y = torch.cat(xs), torch.cat(ys)
        ids = tuple(sorted({int(v) for v in np.asarray(y)}))
        self.key = (ids, int(np.asarray(x).reshape(len(x), -1).shape[1]))
        return {"accs": 1.0}

    def weights(self):
        return torch.from_numpy(self.table[self.key])

    def classes(self):
        return list(self.key[0])


@pytest.fixture(scope="module")
def setup():
    from jaxattr import bridge

    net = _cnn()
    conv = bridge.from_torch(net, torch.randn(2, 3, 6, 6))
    rng = np.random.default_rng(0)
    data = {i: rng.normal(size=(6, 3, 6, 6)).astype(np.float32) + 0.3 * i for i in range(7)}
    names = ["stripes", "dots", "zigzag", "blobs", "random_0", "random_1", "random_2"]
    ours = {i: concepts.Concept(i, names[i], data[i]) for i in range(7)}
    theirs = {
        i: CConcept(i, names[i], torch.utils.data.DataLoader(torch.from_numpy(data[i]), 3))
        for i in range(7)
    }
    sets_ids = [[0, 1], [0, 4], [0, 5], [0, 6], [1, 2, 3]]
    table = {}
    for ids in sets_ids:
        for f in set(FEATURES.values()):
            k = len(ids)
            table[(tuple(sorted(ids)), f)] = rng.normal(size=(k, f)).astype(np.float32)
    x = rng.normal(size=(5, 3, 6, 6)).astype(np.float32)
    return net, conv, ours, theirs, sets_ids, table, x


def test_tcav_scores(setup, tmp_path):
    net, conv, ours, theirs, sets_ids, table, x = setup
    ref_tcav = CTCAV(net, LAYERS, classifier=FixedClassifier(table), save_path=str(tmp_path))
    c_sets = [[theirs[i] for i in ids] for ids in sets_ids]
    o_sets = [[ours[i] for i in ids] for ids in sets_ids]
    clf = FixedClassifier(table)
    for target in (1, 2):
        ref = ref_tcav.interpret(torch.from_numpy(x), c_sets, target=target)
        out = concepts.TCAV(conv, LAYERS, classifier=clf).interpret(x, o_sets, target=target)
        for ids in sets_ids:
            key = "-".join(map(str, ids))
            for layer in LAYERS:
                for kind in ("sign_count", "magnitude"):
                    close(out[key][layer][kind], ref[key][layer][kind])
    # several targets at once, with CAVs injected instead of trained
    cavs = concepts.compute_cavs(conv, o_sets, LAYERS, classifier=clf)
    many = concepts.tcav(conv, x, o_sets, LAYERS, targets=[1, 2], cavs=cavs)
    ref2 = ref_tcav.interpret(torch.from_numpy(x), c_sets, target=2)
    close(many["0-1"]["2"]["magnitude"][1], ref2["0-1"]["2"]["magnitude"])
    assert many["1-2-3"]["0"]["sign_count"].shape == (2, 3)


def test_default_classifier_and_save_load(setup, tmp_path):
    """The optax-fitted CAV classifier separates separable concepts; CAVs round-trip."""
    _, conv, ours, _, _, _, _ = setup
    rng = np.random.default_rng(1)
    bright = rng.normal(size=(12, 3, 6, 6)).astype(np.float32) + 2.0
    dark = rng.normal(size=(12, 3, 6, 6)).astype(np.float32)
    sets = [[concepts.Concept(0, "bright", bright), concepts.Concept(6, "dark", dark)]]
    cavs = concepts.compute_cavs(conv, sets, LAYERS, save_path=str(tmp_path), model_id="cnn")
    for layer in LAYERS:
        acc = cavs["0-6"][layer].stats["accs"]
        print(f"CAV classifier held-out accuracy at layer {layer}: {acc:.2f}")
        assert acc >= 0.9
    loaded = concepts.CAV.load(str(tmp_path), "cnn", sets[0], "2")
    np.testing.assert_array_equal(loaded.stats["weights"], cavs["0-6"]["2"].stats["weights"])
    assert [c.id for c in loaded.concepts] == [0, 6] and loaded.layer == "2"
    assert loaded.stats["accs"] == cavs["0-6"]["2"].stats["accs"]
    # the saved CAVs are found again instead of retrained
    again = concepts.compute_cavs(conv, sets, LAYERS, save_path=str(tmp_path), model_id="cnn")
    np.testing.assert_array_equal(again["0-6"]["0"].vector(6), cavs["0-6"]["0"].vector(6))


def test_significance_matches_scipy(setup):
    from scipy.stats import ttest_ind

    _, conv, ours, _, _, table, x = setup
    clf = FixedClassifier(table)
    sets = [[ours[0], ours[i]] for i in (4, 5, 6)]
    scores = concepts.tcav(conv, x, sets, "2", target=0, classifier=clf)
    for score_type in ("sign_count", "magnitude"):
        for equal_var in (True, False):
            out = concepts.significance(scores, sets, "2", score_type, equal_var=equal_var)
            ref = ttest_ind(out["concept_scores"], out["random_scores"], equal_var=equal_var)
            if np.isnan(ref.pvalue):
                assert np.isnan(out["p_value"])
            else:
                np.testing.assert_allclose(out["p_value"], ref.pvalue, rtol=1e-9)


def test_errors(setup):
    _, conv, ours, _, _, _, x = setup
    with pytest.raises(ValueError, match="at least 2 concepts"):
        concepts.tcav(conv, x, [[ours[0]]], "2", target=0)
    with pytest.raises(ValueError, match="share id 0"):
        concepts.tcav(conv, x, [[ours[0], concepts.Concept(0, "other", x)]], "2", target=0)
    with pytest.raises(TypeError, match="id must be an int"):
        concepts.Concept("a", "b", None)
    with pytest.raises(ValueError, match="either target or targets"):
        concepts.tcav(conv, x, [[ours[0], ours[1]]], "2", target=0, targets=[1])
    with pytest.raises(ValueError, match="constructor argument"):
        concepts.TCAV(conv, "2").interpret(x, [[ours[0], ours[1]]], attribute_to_layer_input=True)
