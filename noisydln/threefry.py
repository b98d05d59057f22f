"""JAX's threefry hash, behind every `jax.random` draw, lowered unrolled on CPUs too.

JAX lowers Threefry-2x32 (20 rounds) as straight-line code everywhere but on CPUs, where it
emits a loop of 5 iterations of 4 rounds. XLA:CPU compiles that loop slower than the
straight-line form, and a stochastic program holds several (the seed's key, the step's key,
the draw): with the straight-line form the default diagonal chunk program of stochastic SAM
compiled in 0.8 to 1.1 s instead of 1.0 to 1.4 s recording `beta`, and 1.3 s instead of 1.5 to
1.9 s recording the default quantities (3 loops and 22 fusions fewer), and a loop of 100
vmapped draws in 0.38 s instead of 1.0 to 1.2 s (2 cores). Run time does not change measurably:
W1's `run_grid` (1024 seeds x 8 sigmas x 500 steps, float32, default devices) took 2.45 to
2.59 s against 2.21 to 2.62 s, interleaved in fresh processes, with the same numbers.

`import noisydln` therefore registers the straight-line form for the CPU platform
(`use_unrolled_on_cpu`). The hash is the same uint32 arithmetic in the same order, so every
draw keeps its bits: `tests/test_threefry_vs_known_answers.py` checks Random123's known answers
and `jax.random` draws against JAX's own lowering in a fresh process. Programs compiled before
the import keep their loop. `NOISYDLN_UNROLLED_THREEFRY=0` keeps JAX's lowering.
"""

import os

import numpy as np
from jax.interpreters import mlir

try:
    from jax.extend.random import threefry2x32_p
except ImportError:  # a JAX without it: its own lowering stays
    threefry2x32_p = None

VARIABLE = "NOISYDLN_UNROLLED_THREEFRY"
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # of the even and odd groups of 4 rounds
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x, bits: int):
    return (x << bits) | (x >> (32 - bits))


def threefry2x32_rounds(key1, key2, x1, x2):
    """Threefry-2x32 with 20 rounds, straight-line: `(x1, x2)` hashed under `(key1, key2)`.

    Args:
      key1, key2, x1, x2: uint32 arrays that broadcast together.

    Returns:
      The two hashed uint32 words, of the broadcast shape.
    """
    keys = (key1, key2, key1 ^ key2 ^ _PARITY)
    x1, x2 = x1 + keys[0], x2 + keys[1]
    for group in range(5):
        for bits in _ROTATIONS[group % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, bits) ^ x1
        x1 = x1 + keys[(group + 1) % 3]
        x2 = x2 + keys[(group + 2) % 3] + np.uint32(group + 1)
    return x1, x2


def use_unrolled_on_cpu() -> bool:
    """Registers `threefry2x32_rounds` as the CPU lowering of JAX's threefry primitive, unless
    `NOISYDLN_UNROLLED_THREEFRY=0` (or JAX has no public handle on it); returns whether it did."""
    if os.environ.get(VARIABLE, "1").strip() == "0" or threefry2x32_p is None:
        return False
    rule = mlir.lower_fun(threefry2x32_rounds, multiple_results=True)
    mlir.register_lowering(threefry2x32_p, rule, platform="cpu")
    return True
