"""Command line: ``python -m numbabn demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m numbabn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="check and time every operation on a CNN-shaped batch")
    demo.add_argument("--shape", type=int, nargs="+", default=[32, 64, 56, 56])
    demo.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    demo.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run

        return 0 if run(tuple(args.shape), args.dtype, args.repeats) else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
