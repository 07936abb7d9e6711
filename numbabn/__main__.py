"""Command line: ``python -m numbabn demo | hf | bench``."""

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
    train = sub.add_parser("hf", help="Hessian-free training of a BatchNorm MLP on digits")
    train.add_argument("--steps", type=int, default=20)
    train.add_argument("--plot", default="hf_digits.png", help="where to save the PNG")
    train.add_argument("--min-accuracy", type=float, default=0.95)
    bench = sub.add_parser("bench", help="numbabn vs the bandwidth floor and autodiff peers")
    bench.add_argument("--plot", default="bench.png", help="where to save the PNG ('' for none)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--quick", action="store_true", help="fewer shapes, no V=16 rows")
    bench.add_argument(
        "--backend", choices=["cpu", "cuda"], default="cpu",
        help="cuda: CuPy arrays on the GPU against its own floor, torch and JAX there",
    )  # fmt: skip
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run

        return 0 if run(tuple(args.shape), args.dtype, args.repeats) else 1
    if args.command == "bench" and args.backend == "cuda":
        from .bench_cuda import compare as compare_on_gpu
        from .bench_cuda import unavailable

        reason = unavailable()
        if reason:
            print(f"bench --backend cuda: {reason}", file=sys.stderr)
            return 1
        compare_on_gpu(max(args.repeats, 20))
        return 0
    if args.command == "bench":
        from .bench import compare

        compare(args.plot or None, args.repeats, args.quick)
        return 0
    if args.command == "hf":
        from .hf.demo import run as train

        accuracy = train(args.steps, args.plot)
        return 0 if accuracy >= args.min_accuracy else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
