"""Prints a digest of a fixed dense-network `run_grid` run; run with N XLA host devices to compare
(tests/test_dense_grid_invariance.py). Usage: `dense_grid_digest.py CHUNK [float64|float32]`."""

import hashlib
import sys

import jax
import numpy as np

import noisydln

QUANTITIES = noisydln.networks.Dense.quantities + ("imbalance_drift_residual",)


def digest(chunk_size: int | None, dtype: str = "float64") -> str:
    with jax.enable_x64(dtype == "float64"):
        problem = noisydln.make_problem(jax.random.key(7), 30, 5, k=2, noise_std=0.1)
        config = noisydln.SimConfig(
            network="dense", widths=(3, 2), num_steps=20, record_every=10, eta=0.02, init=0.5,
            quantities=QUANTITIES,
        )  # fmt: skip
        result = noisydln.run_grid(
            jax.random.key(3), problem, config, num_seeds=37, sigmas=[0.0, 0.2, 0.4],
            chunk_size=chunk_size,
        )  # fmt: skip
        h = hashlib.sha256()
        for name in sorted(result.mean):
            for array in (result.mean[name], result.var[name], result.count[name]):
                h.update(np.asarray(array).tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    chunk = None if sys.argv[1] == "none" else int(sys.argv[1])
    dtype = sys.argv[2] if len(sys.argv) > 2 else "float64"
    print(jax.device_count(), digest(chunk, dtype))
