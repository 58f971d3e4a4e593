"""Loading .pt2 files runs no code from the file unless the caller opts in."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from jaxattr.bridge.pt2 import check_archive

from jaxattr import bridge


class _Payload:
    """Unpickling this creates a directory: proof that code from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _plain(tmp_path) -> str:
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).eval()
    path = str(tmp_path / "plain.pt2")
    torch.export.save(torch.export.export(m, (torch.randn(2, 4),)), path)
    return path


def _rewrite(src: str, dst: str, edit) -> None:
    """Copy a zip archive, passing each (name, bytes) through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, edit(name, zin.read(name)))


def _pickled_weight(tmp_path, marker: str) -> str:
    """A crafted archive: one weight marked use_pickle, its bytes a malicious pickle."""
    src, dst = _plain(tmp_path), str(tmp_path / "crafted.pt2")

    def edit(name, data):
        if name.endswith("weights_config.json"):
            cfg = json.loads(data)
            cfg["config"]["0.weight"]["use_pickle"] = True
            return json.dumps(cfg).encode()
        if name.endswith("data/weights/weight_0"):
            return pickle.dumps(_Payload(marker))
        return data

    _rewrite(src, dst, edit)
    return dst


def test_a_plain_archive_loads_and_matches_torch(tmp_path):
    path = _plain(tmp_path)
    check_archive(path)
    with pytest.warns(UserWarning, match=r"only accepts batch size 2 .*torch\.export\.Dim"):
        conv = bridge.load(path)  # exported without dynamic shapes: batch 2 only
    with pytest.raises(ValueError, match="exported for batch size 2 only"):
        conv(np.zeros((3, 4), np.float32))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    want = torch.export.load(path).module()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(conv(x)), want, rtol=1e-5, atol=1e-6)
    assert conv.buffer_names == {"1.running_mean", "1.running_var"}


def test_torch_export_load_runs_a_crafted_pickle(tmp_path):
    """The threat, shown on torch itself: this is why bridge.load checks first."""
    marker = str(tmp_path / "ran")
    path = _pickled_weight(tmp_path, marker)
    try:
        torch.export.load(path)
    except Exception:  # noqa: BLE001 - the payload is not a tensor; it ran before that
        pass
    assert os.path.isdir(marker)


def test_bridge_load_refuses_a_pickled_weight_without_running_it(tmp_path):
    marker = str(tmp_path / "ran")
    path = _pickled_weight(tmp_path, marker)
    with pytest.raises(bridge.UnsafeArchiveError, match="0.weight.*pickled tensor") as err:
        bridge.load(path)
    assert not os.path.exists(marker)
    assert any("weight_0" in e for e in err.value.entries)
    assert "allow_pickle=True" in str(err.value)


def test_allow_pickle_opts_in_with_a_warning(tmp_path):
    marker = str(tmp_path / "ran")
    path = _pickled_weight(tmp_path, marker)
    with pytest.warns(UserWarning, match="allow_pickle=True runs any pickled object"):
        with pytest.raises(Exception):  # noqa: B017 - the payload is not a tensor
            bridge.load(path, allow_pickle=True)
    assert os.path.isdir(marker)  # the caller asked for it


def test_sample_inputs_needing_a_full_unpickler_are_refused(tmp_path):
    """torch falls back to weights_only=False for sample inputs: refuse those files."""
    marker = str(tmp_path / "ran")
    src, dst = _plain(tmp_path), str(tmp_path / "crafted.pt2")

    def edit(name, data):
        if "data/sample_inputs/" in name:
            return pickle.dumps(_Payload(marker))
        return data

    _rewrite(src, dst, edit)
    with pytest.raises(bridge.UnsafeArchiveError, match="sample inputs"):
        bridge.load(dst)
    assert not os.path.exists(marker)


def test_pickled_constants_and_foreign_entries_are_refused(tmp_path):
    src, dst = _plain(tmp_path), str(tmp_path / "crafted.pt2")

    def edit(name, data):
        if name.endswith("constants_config.json"):
            cfg = {
                "config": {
                    "obj": {
                        "path_name": "opaque_obj_0",
                        "is_param": False,
                        "use_pickle": True,
                        "tensor_meta": None,
                    }
                }
            }
            return json.dumps(cfg).encode()
        return data

    _rewrite(src, dst, edit)
    with zipfile.ZipFile(dst, "a") as z:
        root = z.namelist()[0].split("/")[0]
        z.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(bridge.UnsafeArchiveError) as err:
        bridge.load(dst)
    text = "\n".join(err.value.entries)
    assert "'obj' (opaque_obj_0)" in text and "model.so" in text


def test_not_a_zip_is_a_named_error(tmp_path):
    path = tmp_path / "junk.pt2"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.pt2.*expected a .pt2 archive"):
        bridge.load(path)


def test_cli_refuses_a_crafted_file(tmp_path):
    from jaxattr import cli

    marker = str(tmp_path / "ran")
    path = _pickled_weight(tmp_path, marker)
    with pytest.raises(cli.CliError, match="--allow-pickle"):
        cli._load_model(path, np.zeros((1, 4), np.float32))
    assert not os.path.exists(marker)
