"""Prints a digest of a fixed float64 `run_grid` run; run with N XLA host devices to compare."""

import hashlib
import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import noisydln  # noqa: E402


def digest(chunk_size: int | None) -> str:
    problem = noisydln.make_problem(jax.random.key(7), 30, 6, k=2, noise_std=0.1)
    config = noisydln.SimConfig(num_steps=40, record_every=10, eta=0.05, init=0.5)
    result = noisydln.run_grid(
        jax.random.key(3),
        problem,
        config,
        num_seeds=37,
        sigmas=[0.0, 0.2, 0.4],
        chunk_size=chunk_size,
    )
    h = hashlib.sha256()
    for name in sorted(result.mean):
        for array in (result.mean[name], result.var[name], result.count[name]):
            h.update(np.asarray(array).tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    chunk = None if sys.argv[1] == "none" else int(sys.argv[1])
    print(jax.device_count(), digest(chunk))
