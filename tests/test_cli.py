"""The jaxattr command end to end: demo (small settings), explain, list-methods, errors.

``explain`` runs on a tiny CNN saved with ``torch.export`` (16x16 RGB, 5 classes), with
every cache in ``tmp_path`` (``$JAXATTR_CACHE_DIR`` is set per test).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import jaxattr
from jaxattr import cli
from jaxattr.demo import figure

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXATTR_CACHE_DIR", str(tmp_path / "cache"))


def tiny_cnn() -> torch.nn.Module:
    """conv - relu - conv - relu - mean - linear: 3x16x16 to 5 logits (``module:factory``)."""
    torch.manual_seed(0)

    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 3, padding=1),
        torch.nn.ReLU(),
        Mean(),
        torch.nn.Linear(6, 5),
    ).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain")
    model = tiny_cnn()
    ep = torch.export.export(
        model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(ep, d / "cnn.pt2")
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.save(d / "nhwc.npy", x.transpose(0, 2, 3, 1).copy())
    images = d / "images"
    images.mkdir()
    for i in range(2):
        pixels = (np.random.default_rng(i + 1).random((16, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"img{i}.png")
    (images / "notes.txt").write_text("not an image: skipped")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(d / "big.png")
    return d, model, x


def _explain(d, *argv, out=None):
    args = ["explain", str(d / "cnn.pt2"), *argv]
    if out is not None:
        args += ["--out", str(out)]
    return cli.main(args)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxattr: error: ") and "\n" not in err, err
    return err


# --------------------------------------------------------------------------- demo
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo-out"
    assert cli.main(["demo", "--out", str(out), "-n", "2"]) == 0
    text = capsys.readouterr().out
    assert "| rules | lrp (epsilon_plus_flat) |" in text and "model accuracy 100%" in text
    img = np.asarray(Image.open(out / "demo.png"))
    assert img.shape[0] > 300 and img.shape[1] > 900 and img.std() > 20
    assert '"pointing_game"' in (out / "demo.json").read_text()
    # git ignores the directory the demo made; the inputs are there for `jaxattr explain`
    assert (out / ".gitignore").read_text().splitlines()[-1] == "*"
    assert sorted(p.name for p in (out / "inputs").iterdir())[0].startswith("00_")
    assert (out / "labels.txt").read_text().split() == ["square", "disk", "triangle", "cross"]


def _demo_arrays(n=2, size=12):
    rng = np.random.default_rng(0)
    images = rng.random((n, size, size, 3)).astype(np.float32)
    masks = np.zeros((n, size, size), bool)
    masks[:, 3:8, 3:8] = True
    maps = {"saliency": rng.normal(size=(n, size, size)), "lrp": rng.normal(size=(n, size, size))}
    return images, masks, maps


def test_demo_figure_names_methods_classes_shape_and_signs():
    images, masks, maps = _demo_arrays()
    fig = figure.build_demo_figure(
        images, masks, maps, ["square", "disk"], {"lrp": "PG 100%  RM 50%"}, "title"
    )
    axes = fig.axes
    titles = [ax.get_title() for ax in axes]
    assert titles[:3] == ["input", "saliency", "lrp\nPG 100%  RM 50%"]  # method over columns
    assert [axes[0].get_ylabel(), axes[3].get_ylabel()] == ["square", "disk"]  # class over rows
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["true shape (outline)"]
    bar = next(ax for ax in axes if ax.get_xlabel())
    assert "red = positive" in bar.get_xlabel() and "blue = negative" in bar.get_xlabel()
    # the true shape is outlined on every panel (a contour per panel)
    assert all(ax.collections for ax in axes if ax is not bar)


def test_demo_figure_without_matplotlib_is_the_plain_grid(tmp_path, monkeypatch):
    from jaxattr.demo import run

    images, masks, maps = _demo_arrays()
    monkeypatch.setattr(figure, "have_matplotlib", lambda: False)
    path = run.write_figure(
        tmp_path / "d.png", images, masks, maps, np.array([0, 1]), np.array([0, 1]), []
    )
    img = np.asarray(Image.open(path))
    # 2 rows of (input + 2 maps), tiles of 12 * 3 pixels plus a 2-pixel border each
    assert img.shape == (2 * 40, 3 * 40, 3) and img.std() > 20


def test_demo_torch_model_matches_the_flax_model():
    from jaxattr.demo import load_model, make_shapes
    from jaxattr.demo.torch_model import demo_cnn

    fn, _, _ = load_model()
    images, labels, _ = make_shapes(6, seed=5)
    pixels = np.clip((images + 0.5) / 2, 0, 1)
    ours = demo_cnn()(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())).detach().numpy()
    flax = np.asarray(fn(pixels * 2 - 0.5))
    np.testing.assert_allclose(ours, flax, rtol=1e-4, atol=1e-4)
    assert (ours.argmax(1) == labels).all()


# --------------------------------------------------------------------------- explain
def test_explain_pt2_npy(saved):
    d, model, x = saved
    out = d / "sal.npy"
    assert _explain(d, str(d / "x.npy"), "--method", "saliency", "--target", "3", out=out) == 0
    from jaxattr import bridge

    ref = jaxattr.saliency(bridge.from_torch(model, torch.zeros(2, 3, 16, 16)), x, target=3)
    np.testing.assert_allclose(np.load(out), ref, rtol=1e-5, atol=1e-7)


def test_explain_several_methods_share_one_conversion(saved, tmp_path, monkeypatch, capsys):
    d, model, _ = saved
    calls = []
    load = cli._load_model
    monkeypatch.setattr(cli, "_load_model", lambda *a: calls.append(a) or load(*a))
    image = d / "images" / "img0.png"
    out = tmp_path / "out"
    argv = [str(image), "--method", "ig,lrp,gradcam", "--steps", "8", "--no-cache"]
    assert _explain(d, *argv, out=out) == 0
    assert len(calls) == 1
    text = capsys.readouterr().out
    assert "integrated_gradients, lrp, grad_cam (layer 2)" in text  # the last convolution
    assert sorted(p.name for p in out.iterdir()) == [".gitignore", "img0.npz", "img0.png"]
    attrs = np.load(out / "img0.npz")
    assert sorted(attrs.files) == ["grad_cam", "integrated_gradients", "lrp"]
    x = np.asarray(Image.open(image).convert("RGB"), np.float32)[None].transpose(0, 3, 1, 2)
    x = x / 255.0
    from jaxattr import bridge

    conv = bridge.from_torch(model, torch.zeros(2, 3, 16, 16))
    target = int(np.asarray(conv(x)).argmax())
    ref = jaxattr.integrated_gradients(conv, x, target=target, n_steps=8)
    np.testing.assert_allclose(attrs["integrated_gradients"], ref, rtol=1e-4, atol=1e-6)
    assert attrs["grad_cam"].shape == (1, 1, 16, 16)
    figure_png = np.asarray(Image.open(out / "img0.png"))
    assert figure_png.shape[1] > 4 * 200  # input + 3 overlays, each upscaled from 16 pixels


def test_explain_second_run_neither_converts_nor_compiles(saved, tmp_path, monkeypatch):
    d, _, _ = saved
    before = jax.config.jax_compilation_cache_dir
    cache = tmp_path / "cache"
    argv = [str(d / "x.npy"), "--method", "ig,gradcam", "--steps", "4", "--cache-dir", str(cache)]
    assert _explain(d, *argv, out=tmp_path / "a.npz") == 0
    assert any((cache / "jax").iterdir())  # JAX's compilation cache
    (programs,) = (cache / "programs").iterdir()
    assert len(list(programs.glob("*.jaxexport"))) == 3  # forward, ig, grad_cam
    assert len(list((programs / "params").iterdir())) == 6  # the weights, np.save each

    def refuse(*a):
        raise AssertionError("converted again")

    monkeypatch.setattr(cli, "_load_model", refuse)
    assert _explain(d, *argv, out=tmp_path / "b.npz") == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
    # the process's JAX settings are back as they were
    assert jax.config.jax_compilation_cache_dir == before


def test_explain_second_run_does_not_import_torch(saved, tmp_path):
    d, _, _ = saved
    cache = str(tmp_path / "cache")
    argv = [
        "explain",
        str(d / "cnn.pt2"),
        str(d / "x.npy"),
        "--target",
        "1",
        "--out",
        str(tmp_path / "a.npy"),
        "--cache-dir",
        cache,
    ]
    assert cli.main(argv) == 0
    code = (
        "import sys\nfrom jaxattr import cli\n"
        f"assert cli.main({argv!r}) == 0\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'matplotlib'}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=_ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout
    assert "from the cache (not converted)" in run.stdout


def test_explain_directory_one_figure_per_image(saved, tmp_path, capsys):
    d, _, _ = saved
    out = tmp_path / "figs"
    argv = [str(d / "images"), "--method", "saliency,gbp", "--no-cache", "--labels"]
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\ne\n")
    assert _explain(d, *argv, str(labels), out=out) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [".gitignore", "img0.npz", "img0.png", "img1.npz", "img1.png"]
    text = capsys.readouterr().out
    assert "2 input(s) x 2 method(s)" in text and "'" in text  # the class names are shown
    # --no-overlay: the signed heat maps alone, at the input's size
    out2 = tmp_path / "plain"
    assert _explain(d, *argv, str(labels), "--no-overlay", out=out2) == 0
    img = np.asarray(Image.open(out2 / "img1.png"))
    assert img.shape == (16, 2 * 16, 3)


def test_overlay_figure_has_titles_and_colour_bars():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3)).astype(np.float32)
    maps = {"integrated_gradients": rng.normal(size=(16, 16)), "lrp": rng.normal(size=(16, 16))}
    fig = figure.build_overlay_figure(image, maps, "x.png: class 3")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["input", "integrated_gradients", "lrp"]
    assert len(fig.axes) == 3 + 2  # a colour bar per heat map
    assert "red = positive" in fig.get_suptitle() and "x.png: class 3" in fig.get_suptitle()


def test_overlay_without_matplotlib_is_upscaled(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3)).astype(np.float32)
    path = figure.plain_overlay(tmp_path / "o.png", image, {"a": rng.normal(size=(16, 16))})
    img = np.asarray(Image.open(path))
    k = figure.upscale_factor(16, 16)
    assert k * 16 >= 192 and img.shape == (16 * k + 10 + 8, 2 * (16 * k + 8), 3)


def test_explain_factory_demo_model(tmp_path, capsys):
    """The embedded demo model as a torch factory, on the demo's own input PNGs."""
    from jaxattr.demo import make_shapes
    from jaxattr.demo.run import write_inputs

    images, labels, _ = make_shapes(1, seed=7)
    (path,) = write_inputs(tmp_path / "in", images, labels)
    out = tmp_path / "cam.npz"
    argv = ["explain", "jaxattr.demo.torch_model:demo_cnn", str(path), "--method", "gradcam"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert np.load(out)["grad_cam"].shape == (1, 1, 32, 32)
    assert f"class {int(labels[0])}" in capsys.readouterr().out  # explained as predicted


def test_list_methods(capsys):
    assert cli.main(["--list-methods"]) == 0
    out = capsys.readouterr().out
    assert "integrated_gradients" in out and "grad_cam" in out and "(ig)" in out


def test_parse_methods_aliases():
    assert cli.parse_methods("ig, LRP,gradcam,ig") == ["integrated_gradients", "lrp", "grad_cam"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "nope"], "--method must be one of"),
        (["--method", ","], "--method is empty"),
        (["--target", "12"], "out of range"),
        (["--target", "1,2"], "needs 1 (one per non-batch axis)"),
        (["--target", "x"], "--target must be"),
        (["--method", "gradcam", "--layer", "nope"], "--layer 'nope' is not a layer"),
        (["--out", "a.txt"], "--out must be a directory, or end in .npy, .npz or .png"),
        (["--method", "ig,lrp", "--out", "a.npy"], "a .npy file holds one attribution"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--labels", "/nonexistent/labels.txt"], "--labels"),
    ],
)
def test_explain_errors(saved, capsys, argv, message):
    d, _, _ = saved
    args = ["explain", str(d / "cnn.pt2"), str(d / "x.npy"), "--no-cache"]
    if "--out" not in argv:
        args += ["--out", str(d / "e.npy")]
    assert cli.main([*args, *argv]) == 2
    assert message in _one_error_line(capsys)


@pytest.mark.parametrize(
    "source, extra, message",
    [
        # the classic: an NHWC array for an NCHW model; no XLA traceback
        ("nhwc.npy", [], "expected shape ('batch', 3, 16, 16)"),
        ("images/img0.png", ["--layout", "nhwc"], "--layout nchw|nhwc"),
        ("big.png", [], "dimension 2 must be 16"),  # an image of another size
    ],
)
def test_explain_wrong_layout_or_size_is_one_error_line(
    saved, tmp_path, capsys, source, extra, message
):
    d, _, _ = saved
    for cache in (["--no-cache"], ["--cache-dir", str(tmp_path / "c")]):
        assert _explain(d, str(d / source), *extra, *cache, out=tmp_path / "e.npy") == 2
        err = _one_error_line(capsys)
        assert message in err and "the model does not accept this input" in err


def test_explain_input_errors(saved, tmp_path, capsys, monkeypatch):
    d, _, _ = saved
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    assert _explain(d, str(bad)) == 2
    assert "not a readable .npy" in _one_error_line(capsys)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["explain", str(tmp_path / "none.pt2"), str(d / "x.npy")]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert not (tmp_path / "jaxattr-explain").exists()  # nothing written, no directory made
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"junk")
    assert cli.main(["explain", str(broken), str(d / "x.npy"), "--out", str(tmp_path)]) == 2
    assert "not a loadable torch.export program" in _one_error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _explain(d, str(empty)) == 2
    assert "a directory without images" in _one_error_line(capsys)
    assert _explain(d, str(d / "images"), out=tmp_path / "one.png") == 2
    assert "pass a directory as --out" in _one_error_line(capsys)


def test_unexpected_failures_are_one_line_too(saved, monkeypatch, capsys):
    d, _, _ = saved

    def boom(args):
        raise RuntimeError("XLA exploded\nwith a long traceback")

    monkeypatch.setattr(cli, "explain", boom)
    assert _explain(d, str(d / "x.npy")) == 2
    err = _one_error_line(capsys)
    assert "unexpected RuntimeError: XLA exploded" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        _explain(d, str(d / "x.npy"), "--debug")


def test_allow_pickle_flag_is_kept():
    args = cli._parser().parse_args(["explain", "m.pt2", "x.npy", "--allow-pickle"])
    assert args.allow_pickle is True


def test_program_cache_replaces_entries_of_older_code(saved, tmp_path, monkeypatch):
    d, _, _ = saved
    cache = tmp_path / "cache"
    argv = [str(d / "x.npy"), "--target", "0", "--cache-dir", str(cache)]
    assert _explain(d, *argv, out=tmp_path / "a.npy") == 0
    (first,) = (cache / "programs").iterdir()
    monkeypatch.setattr(cli, "_code_fingerprint", lambda: "f" * 64)  # jaxattr was upgraded
    assert _explain(d, *argv, out=tmp_path / "b.npy") == 0
    (second,) = (cache / "programs").iterdir()
    assert second.name.split("-")[0] == first.name.split("-")[0] and second != first
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_overlay_on_a_npy_image_batch(saved, tmp_path):
    d, _, _ = saved
    out = tmp_path / "o"
    assert _explain(d, str(d / "x.npy"), "--overlay", "--no-cache", out=out) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["x_0.png", "x_1.png"]
