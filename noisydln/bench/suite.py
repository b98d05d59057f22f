"""`noisydln bench`: the benchmark suites, each measurement in its own process."""

import argparse
import importlib
from pathlib import Path

from noisydln.bench.throughput import save_numbers

SUITES = ("throughput", "experiment", "eigen")
MODULES = {"eigen": "eigen_cost"}  # a suite's module in noisydln.bench, when not its name


def main(argv: list[str] | None = None) -> int:
    """Runs the chosen suites and prints their tables; `argv` are the arguments after `bench`.

    Args:
      argv: command-line arguments (default `sys.argv[1:]`): `--suite {throughput, experiment,
        eigen, all}`, `--quick`, `--json FILE`, `--devices N`.

    Returns:
      The exit status, 0.
    """
    parser = argparse.ArgumentParser(
        prog="noisydln bench",
        description="Speed of noisydln on workload W1, as ratios against baselines of the same run.",
    )
    parser.add_argument(
        "--suite",
        choices=(*SUITES, "all"),
        default="all",
        help="throughput: run_grid against NumPy; experiment: run_experiment against its "
        "run_grid calls, and save/load; eigen: W1 with and without recording top_eigenvalue "
        "(default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small smoke sizes")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the numbers to this file"
    )
    parser.add_argument(
        "--devices", type=int, metavar="N", help="XLA host devices on a CPU (default: one per core)"
    )
    args = parser.parse_args(argv)
    shared = ["--quick"] if args.quick else []
    if args.devices is not None:
        shared += ["--devices", str(args.devices)]
    numbers = {}
    for i, name in enumerate(SUITES if args.suite == "all" else (args.suite,)):
        module = importlib.import_module(f"noisydln.bench.{MODULES.get(name, name)}")
        print(("\n" if i else "") + f"== {name} ==", flush=True)
        numbers[name] = module.benchmark(module.parse_args(shared))
    save_numbers(args.json, numbers)
    return 0
