"""``nanobard bench``: a thin entry to benchmarks/bench.py (the benchmarks live in the source
checkout, not in the installed package)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "bench",
        help="benchmarks: peak matmul, training, generation, fine-tuning, time to loss",
        description="Runs benchmarks/bench.py of the source checkout with the arguments given "
        "(`nanobard bench --help` lists them)",
        add_help=False,
    )
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for benchmarks/bench.py")
    b.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import subprocess

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "bench.py"
    if not script.exists():
        raise FileNotFoundError(
            f"the benchmarks live in nanobard's source checkout ({script} not found); "
            "run them from a clone: python benchmarks/bench.py --help"
        )
    return subprocess.run([sys.executable, str(script), *args.bench_args]).returncode
