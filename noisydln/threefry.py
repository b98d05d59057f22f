"""JAX's threefry hash, behind every `jax.random` draw, lowered unrolled on CPUs too.

JAX lowers Threefry-2x32 (20 rounds) as straight-line code everywhere but on CPUs, where it
emits a loop of 5 iterations of 4 rounds. XLA:CPU compiles and runs that loop slower than the
straight-line form: a chunk of stochastic SAM on 512 seeds of W1's size (float32) ran 25 to
35 % faster and a small chunk compiled 10 to 20 % faster with the straight-line form, and a loop
of 100 vmapped draws compiled in 0.38 s instead of 1.0 to 1.2 s (measured on 2 cores).

`import noisydln` therefore registers the straight-line form for the CPU platform
(`use_unrolled_on_cpu`). The hash is the same uint32 arithmetic in the same order, so every
draw keeps its bits: `tests/test_threefry_vs_known_answers.py` checks Random123's known answers
and `jax.random` draws against JAX's own lowering in a fresh process. Programs compiled before
the import keep their loop. `NOISYDLN_UNROLLED_THREEFRY=0` keeps JAX's lowering.
"""

import os

import numpy as np
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

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
    `NOISYDLN_UNROLLED_THREEFRY=0`; returns whether it did."""
    if os.environ.get(VARIABLE, "1").strip() == "0":
        return False
    rule = mlir.lower_fun(threefry2x32_rounds, multiple_results=True)
    mlir.register_lowering(threefry2x32_p, rule, platform="cpu")
    return True
