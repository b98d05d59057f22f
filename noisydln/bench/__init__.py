"""Benchmarks of noisydln (`noisydln bench`): speed as ratios against baselines of the same run."""

from noisydln.bench.suite import main as main
