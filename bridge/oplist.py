"""Print (or write into docs/bridge.md) the list of ops the bridge can lower.

Usage:
    python -m jaxattr.bridge.oplist              # markdown to stdout
    python -m jaxattr.bridge.oplist --write docs/bridge.md
    python -m jaxattr.bridge.oplist --onnx --write docs/onnx.md

With ``--write`` the text between the markers ``<!-- oplist:start -->`` and
``<!-- oplist:end -->`` in the given file is replaced.
"""

from __future__ import annotations

import argparse
import collections
import re

from .lowerings import supported_ops
from .onnx_import import MIN_OPSET, supported_onnx_ops

START, END = "<!-- oplist:start -->", "<!-- oplist:end -->"


def render() -> str:
    """The supported-op list as markdown, generated from the lowering table.

    Returns:
        A markdown string: ATen ops grouped by op name (overloads joined), then the Python
        and symbolic-size ops.

    Example:
        >>> "convolution" in render()
        True
    """
    aten: dict[str, list[str]] = collections.OrderedDict()
    other: list[str] = []
    for name in supported_ops():
        m = re.fullmatch(r"aten\.(\w+)\.(\w+)", name)
        if m:
            aten.setdefault(m.group(1), []).append(m.group(2))
        else:
            other.append(name)
    lines = [f"{len(supported_ops())} lowerings ({len(aten)} ATen ops, overloads in brackets).", ""]
    items = [f"`{op}` [{', '.join(ovs)}]" for op, ovs in aten.items()]
    lines.append(", ".join(items))
    lines += ["", "Python / symbolic-size ops: " + ", ".join(f"`{o}`" for o in other)]
    return "\n".join(lines)


def render_onnx() -> str:
    """The supported ONNX operators as markdown, generated from the ONNX lowering table.

    Returns:
        A markdown string.

    Example:
        >>> "`LSTM`" in render_onnx()
        True
    """
    ops = supported_onnx_ops()
    return f"{len(ops)} operators (default domain, opset {MIN_OPSET} and newer): " + ", ".join(
        f"`{o}`" for o in ops
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring).

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     status = main([])
        >>> status, "`convolution`" in out.getvalue()
        (0, True)
    """
    ap = argparse.ArgumentParser(description="List the ops jaxattr.bridge can lower.")
    ap.add_argument("--write", metavar="FILE", help="replace the oplist section of FILE")
    ap.add_argument("--onnx", action="store_true", help="list the ONNX operators instead")
    args = ap.parse_args(argv)
    text = render_onnx() if args.onnx else render()
    if not args.write:
        print(text)
        return 0
    with open(args.write) as f:
        doc = f.read()
    if START not in doc or END not in doc:
        raise SystemExit(f"--write: {args.write} has no {START} ... {END} markers")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(args.write, "w") as f:
        f.write(f"{head}{START}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
