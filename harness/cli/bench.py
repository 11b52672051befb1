"""``rho bench``: run the speed and memory benchmarks and update their results file."""

from __future__ import annotations

import argparse

from harness.resources import bench_results

DEFAULT_BENCH_OUTPUT = bench_results()


def _bench(args: argparse.Namespace) -> int:
    from harness.speed import discover, run_benchmarks

    if args.list:
        for name, bench in discover().items():
            params = f" (--param {', '.join(bench.params)})" if bench.params else ""
            print(f"{name:14} {bench.title}{params}")
        return 0
    results = run_benchmarks(
        args.names, quick=args.quick, workdir=args.workdir, output=args.output, params=args.param or []
    )
    print(f"results in {args.output}")
    return 1 if any(r.skipped and r.skipped.startswith("failed") for r in results) else 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho bench``."""
    bench = commands.add_parser(
        "bench",
        help="speed and memory benchmarks against reference implementations (benchmarks/RESULTS.md)",
        description="Run benchmarks/speed/NAME.py (all by default): each measures the reference and ours in "
        "the same run, prints a table with the ratio and whether the goal is met, and updates "
        "benchmarks/RESULTS.md (machine, versions, load, date, the command).",
    )
    bench.add_argument(
        "names", nargs="*", metavar="NAME", help="benchmarks to run (default: all; see --list)"
    )
    bench.add_argument("--list", action="store_true", help="list the benchmarks and their parameters")
    bench.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks that everything runs, in seconds"
    )
    bench.add_argument(
        "--param", action="append", metavar="[NAME.]KEY=VALUE", help="a benchmark parameter (repeatable)"
    )
    bench.add_argument(
        "--output", default=str(DEFAULT_BENCH_OUTPUT), help="results file (default benchmarks/RESULTS.md)"
    )
    bench.add_argument(
        "--workdir",
        default="mlruns/bench",
        help="cached test videos and scratch files (default mlruns/bench)",
    )
    bench.set_defaults(func=_bench)
