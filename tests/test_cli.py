"""The jaxattr command end to end: demo (small settings), explain, list-methods, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import jaxattr
from jaxattr import cli
from tests import torch_models as tm


def test_demo_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "| rules | lrp (epsilon_plus_flat) |" in out and "model accuracy 100%" in out
    img = np.asarray(Image.open(tmp_path / "demo.png"))
    # 2 rows of (input + 9 methods) tiles of 32 * 3 pixels plus a 2-pixel border each
    assert img.shape == (2 * 100, 10 * 100, 3)
    assert img.std() > 20  # not blank
    for col in range(10):  # every tile has content
        tile = img[:100, col * 100 : (col + 1) * 100]
        assert tile.std() > 5, col
    report = (tmp_path / "demo.json").read_text()
    assert '"pointing_game"' in report


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain")
    model = tm.seed_cnn()
    ep = torch.export.export(
        model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(ep, d / "cnn.pt2")
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.save(d / "x.npy", x)
    Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)).save(
        d / "img.png"
    )
    return d, model, x


def test_explain_pt2_npy(saved):
    d, model, x = saved
    out = d / "sal.npy"
    assert (
        cli.main(
            [
                "explain",
                str(d / "cnn.pt2"),
                str(d / "x.npy"),
                "--method",
                "saliency",
                "--target",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from jaxattr import bridge

    ref = jaxattr.saliency(bridge.from_torch(model, torch.zeros(2, 3, 32, 32)), x, target=3)
    np.testing.assert_allclose(np.load(out), ref, rtol=1e-5, atol=1e-7)


def test_explain_factory_image_png(saved):
    d, _, _ = saved
    out = d / "ig.png"
    assert (
        cli.main(
            [
                "explain",
                "tests.torch_models:seed_cnn",
                str(d / "img.png"),
                "--method",
                "integrated_gradients",
                "--steps",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    img = np.asarray(Image.open(out))
    assert img.shape == (32, 32, 3) and img.std() > 1


def test_explain_layer_method(saved):
    d, _, _ = saved
    out = d / "cam.npy"
    assert (
        cli.main(
            [
                "explain",
                "tests.torch_models:resnet18",
                str(d / "img.png"),
                "--method",
                "grad_cam",
                "--layer",
                "layer4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert np.load(out).shape == (1, 1, 32, 32)


def test_list_methods(capsys):
    assert cli.main(["--list-methods"]) == 0
    out = capsys.readouterr().out
    assert "integrated_gradients" in out and "grad_cam" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "nope"], "--method must be one of"),
        (["--target", "12"], "out of range"),
        (["--target", "x"], "--target must be"),
        (["--method", "grad_cam"], "needs --layer"),
        (["--out", "a.txt"], "--out must end in .npy or .png"),
    ],
)
def test_explain_errors(saved, capsys, argv, message):
    d, _, _ = saved
    out = d / "e.npy"
    args = ["explain", str(d / "cnn.pt2"), str(d / "x.npy"), "--out", str(out), *argv]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_explain_unreadable_files(saved, capsys, tmp_path):
    d, _, _ = saved
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    assert cli.main(["explain", str(d / "cnn.pt2"), str(bad)]) == 2
    assert "not a readable .npy" in capsys.readouterr().err
    assert cli.main(["explain", str(tmp_path / "none.pt2"), str(d / "x.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"junk")
    assert cli.main(["explain", str(broken), str(d / "x.npy")]) == 2
    assert "not a loadable torch.export program" in capsys.readouterr().err
