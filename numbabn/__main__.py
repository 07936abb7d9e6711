"""Command line: ``python -m numbabn demo | hf | bench``."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m numbabn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="check and time every operation on a CNN-shaped batch")
    demo.add_argument("--shape", type=int, nargs="+", default=[32, 64, 56, 56])
    demo.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    demo.add_argument("--repeats", type=int, default=5)
    train = sub.add_parser("hf", help="Hessian-free training of a BatchNorm MLP on digits")
    train.add_argument("--steps", type=int, default=20)
    train.add_argument("--plot", default="docs/hf_digits.png", help="where to save the PNG")
    train.add_argument("--min-accuracy", type=float, default=0.95)
    bench = sub.add_parser("bench", help="numbabn vs the bandwidth floor and autodiff peers")
    bench.add_argument("--plot", default="", help="where to save the scaling plot (PNG)")
    bench.add_argument("--markdown", default="", help="also write the tables to this file")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--quick", action="store_true", help="two shapes, no V=16 rows")
    bench.add_argument(
        "--extras", nargs="*", default=[], choices=["torch", "backpack"],
        help="also numbabn.torch in a network HVP, BackPACK's HMP through BatchNorm",
    )  # fmt: skip
    bench.add_argument(
        "--backend", choices=["cpu", "cuda"], default="cpu",
        help="cuda: CuPy arrays on the GPU against its own floor, torch and JAX there",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status is 0 on success."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .bench.demo import run

        return 0 if run(tuple(args.shape), args.dtype, args.repeats) else 1
    if args.command == "hf":
        from .hf.demo import run as train

        accuracy = train(args.steps, args.plot)
        return 0 if accuracy >= args.min_accuracy else 1
    if args.backend == "cuda":
        from .bench.cuda import compare as compare_on_gpu
        from .bench.cuda import unavailable

        reason = unavailable()
        if reason:
            print(f"bench --backend cuda: {reason}", file=sys.stderr)
            return 1
        compare_on_gpu(max(args.repeats, 20), args.markdown or None)
        return 0
    from .bench.cpu import compare

    compare(args.plot or None, args.repeats, args.quick, args.markdown or None, tuple(args.extras))
    return 0


if __name__ == "__main__":
    sys.exit(main())
