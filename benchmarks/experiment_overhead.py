"""Overhead of `run_experiment` over its `run_grid` calls, and save/load time, on workload W1.

Usage: `python benchmarks/experiment_overhead.py` (`--quick` for a small smoke run, `--json FILE`
to save the numbers); the same as `noisydln bench --suite experiment`. The code is in
`noisydln.bench.experiment`.
"""

import sys

from noisydln.bench.experiment import main

if __name__ == "__main__":
    sys.exit(main())
