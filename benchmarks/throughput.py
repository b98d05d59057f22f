"""Throughput of `run_grid` on workload W1 against NumPy baselines: `noisydln.bench.throughput`.

Usage: `python benchmarks/throughput.py` (`--quick` for a small smoke run, `--json FILE` to save
the numbers, `--help` for the rest); the same as `noisydln bench --suite throughput`.
"""

import sys

from noisydln.bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
