"""Loading ``.pt2`` archives (``torch.export.save``) without running code from the file.

``torch.export.load`` unpickles with ``weights_only=False`` every weight or constant the
archive marks ``use_pickle`` (tensor subclasses), every custom or opaque object, and the
sample inputs when a safe load of them fails; it also loads AOTInductor shared libraries.
Each of these runs code chosen by whoever wrote the file. :func:`check_archive` reads the
archive's table of contents and configuration (JSON) first and refuses all of them, so a
file from a stranger is loaded only if it holds nothing but plain tensors and the graph.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

from .errors import BridgeError

__all__ = ["UnsafeArchiveError", "check_archive"]

# What a plain archive written by torch.export.save holds (paths below its root folder).
_PLAIN = (
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/",
    "models/",
    "data/weights/",
    "data/constants/",
    "data/sample_inputs/",
    "extra/",
)


class UnsafeArchiveError(BridgeError, ValueError):
    """A ``.pt2`` file holds entries that would run code when loaded (pickles, libraries).

    Attributes:
        entries: The archive entries refused, each with the reason.

    Example:
        >>> from jaxattr import bridge
        >>> try:
        ...     bridge.load("untrusted.pt2")  # doctest: +SKIP
        ... except bridge.UnsafeArchiveError as e:
        ...     print(e.entries)  # doctest: +SKIP
    """

    def __init__(self, path: str, entries: list[str]):
        self.entries = entries
        shown = "\n".join(f"  {e}" for e in entries[:20])
        more = f"\n  ... and {len(entries) - 20} more" if len(entries) > 20 else ""
        super().__init__(
            f"path {path!r}: the archive holds {len(entries)} entr"
            f"{'y' if len(entries) == 1 else 'ies'} that would run code when loaded "
            f"(pickled objects or compiled libraries):\n{shown}{more}\n"
            "Load it only if you trust whoever wrote the file: "
            "jaxattr.bridge.load(path, allow_pickle=True)."
        )


def _root(names: list[str]) -> str:
    """The archive's root folder (``torch.export.save`` writes ``<name>/...``)."""
    for n in names:
        if n.endswith("/archive_format") or n == "archive_format":
            return n[: -len("archive_format")]
    return ""


def check_archive(path: str | os.PathLike[str]) -> None:
    """Refuse a ``.pt2`` archive whose loading would run code from the file.

    Allowed: the serialized graph (JSON), weights and tensor constants stored as raw
    bytes, sample inputs that load with ``torch.load(weights_only=True)`` and extra text
    files. Refused: anything pickled (``use_pickle`` weights or constants, custom and opaque
    objects), sample inputs that need a full unpickler, AOTInductor libraries, and archives
    in the pre-2.8 format (whose weights are pickles).

    Args:
        path: A file written by ``torch.export.save``.

    Raises:
        UnsafeArchiveError: Listing every refused entry.
        ValueError: ``path`` is not a zip archive.

    Example:
        >>> import torch
        >>> from jaxattr.bridge.pt2 import check_archive
        >>> m = torch.nn.Linear(4, 2).eval()
        >>> torch.export.save(torch.export.export(m, (torch.randn(2, 4),)), "lin.pt2")
        >>> check_archive("lin.pt2")  # a plain archive: no error
    """
    shown = os.fspath(path)
    if not zipfile.is_zipfile(shown):
        raise ValueError(
            f"path {shown!r}: expected a .pt2 archive (a zip file), got something else"
        )
    bad: list[str] = []
    with zipfile.ZipFile(shown) as z:
        names = z.namelist()
        root = _root(names)
        if not any(n == root + "archive_format" for n in names):
            raise UnsafeArchiveError(
                shown,
                [
                    "<whole file>: the pre-2.8 .pt2 format stores weights as pickles; re-save "
                    "it with torch.export.save from torch >= 2.8"
                ],
            )
        for n in names:
            rel = n[len(root) :] if n.startswith(root) else n
            if not rel or rel.endswith("/"):
                continue
            if not rel.startswith(_PLAIN):
                bad.append(
                    f"{n}: not part of a plain exported program (e.g. an AOTInductor library)"
                )
        for n in names:
            rel = n[len(root) :]
            if not (
                rel.startswith(("data/weights/", "data/constants/"))
                and rel.endswith("_config.json")
            ):
                continue
            try:
                config = json.loads(z.read(n)).get("config", {})
            except (ValueError, AttributeError) as err:
                bad.append(f"{n}: unreadable configuration ({err})")
                continue
            for fqn, meta in config.items():
                file = str(meta.get("path_name", ""))
                if meta.get("use_pickle"):
                    bad.append(f"{n}: {fqn!r} ({file}) is a pickled tensor")
                elif rel.startswith("data/constants/") and not file.startswith("tensor_"):
                    bad.append(f"{n}: {fqn!r} ({file}) is a pickled object")
        for n in names:
            if n[len(root) :].startswith("data/sample_inputs/"):
                data = z.read(n)
                if data and not _loads_safely(data):
                    bad.append(f"{n}: sample inputs that only a full unpickler can read")
    if bad:
        raise UnsafeArchiveError(shown, bad)


def _loads_safely(data: bytes) -> bool:
    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # noqa: BLE001 - any failure means the safe unpickler refused it
        return False
    return True


def load_exported(path: Any, *, allow_pickle: bool = False) -> Any:
    """``torch.export.load(path)``, after :func:`check_archive` unless ``allow_pickle``."""
    import warnings

    import torch

    if allow_pickle:
        warnings.warn(
            f"path {os.fspath(path)!r}: loading with allow_pickle=True runs any pickled "
            "object in the file; do this only for files you trust",
            stacklevel=3,
        )
    else:
        check_archive(path)
    return torch.export.load(path)
