"""The ``jaxattr`` command.

``jaxattr demo`` explains generated shapes with the embedded model (the README's main
job); ``jaxattr list-methods`` lists the methods.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _list_methods() -> str:
    import jaxattr

    names = sorted(n for n in jaxattr.__all__ if callable(getattr(jaxattr, n)) and n.islower())
    return "\n".join(names)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxattr`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="jaxattr", description="Attribution methods as pure JAX functions."
    )
    parser.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="explain generated shapes with the embedded model")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("jaxattr-demo"),
        help="output directory (default: ./jaxattr-demo)",
    )
    demo.add_argument("-n", type=int, default=4, help="number of images (default 4)")
    demo.add_argument("--seed", type=int, default=2026, help="seed of the generated images")
    sub.add_parser("list-methods", help="list the methods")
    args = parser.parse_args(argv)

    if args.list_methods or args.command == "list-methods":
        print(_list_methods())
        return 0
    if args.command == "demo":
        if args.n < 1:
            parser.error(f"-n must be >= 1, got {args.n}")
        from jaxattr.demo.run import run_demo

        run_demo(args.out, n=args.n, seed=args.seed)
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
