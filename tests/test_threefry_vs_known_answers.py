"""`noisydln.threefry` (the straight-line CPU lowering of JAX's threefry hash) against the
known answers of Random123, the reference implementation of Threefry-2x32 with 20 rounds, and
`jax.random` draws against those of JAX's own lowering in a fresh process."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from noisydln import threefry

# (key, counter) -> hash, from Random123's kat_vectors (threefry2x32_20); JAX's tests use them too
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


def _words(pairs):
    return [np.array([p[i] for p in pairs], np.uint32) for i in (0, 1)]


def test_rounds_in_numpy_vs_known_answers_and_a_wrong_rotation_is_caught(monkeypatch):
    keys, counters, expected = (_words([case[i] for case in KNOWN_ANSWERS]) for i in range(3))
    hashed = threefry.threefry2x32_rounds(*keys, *counters)
    np.testing.assert_array_equal(hashed, expected)
    monkeypatch.setattr(threefry, "_ROTATIONS", ((13, 15, 26, 6), (17, 29, 16, 25)))
    wrong = threefry.threefry2x32_rounds(*keys, *counters)
    assert not np.any(np.asarray(wrong) == np.asarray(expected))


def test_cpu_lowering_is_straight_line_and_gives_the_known_answers():
    """`threefry_2x32` compiled on the CPU (eagerly and in a jitted batch) goes through the
    registered lowering: no loop in the compiled program, Random123's answers."""
    if jax.default_backend() != "cpu":
        pytest.skip("the lowering is registered for CPUs")
    compiled = jax.jit(lambda k: jax.random.normal(k, (4,))).lower(jax.random.key(0)).compile()
    assert " while(" not in compiled.as_text()
    for key, counter, expected in KNOWN_ANSWERS:
        assert [int(x) for x in threefry_2x32(np.uint32(key), np.uint32(counter))] == list(expected)
    keys, counters, expected = (_words([case[i] for case in KNOWN_ANSWERS]) for i in range(3))
    batched = jax.jit(jax.vmap(lambda k, c: threefry_2x32(k, c)))(
        np.stack(keys, axis=1), np.stack(counters, axis=1)
    )
    np.testing.assert_array_equal(batched, np.stack(expected, axis=1))


DRAWS = """
import hashlib
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import noisydln
key = jax.random.key(20250314)
draws = [
    jax.random.normal(key, (5, 7)),
    jax.random.normal(jax.random.fold_in(key, 3), (33,), jnp.float32),
    jax.random.key_data(jax.random.split(key, 5)),
    jax.jit(jax.vmap(lambda k: jax.random.normal(k, (2, 3))))(jax.random.split(key, 4)),
]
compiled = jax.jit(lambda k: jax.random.normal(k, (4,))).lower(key).compile().as_text()
digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in draws)).hexdigest()
loop = " while(" in compiled
"""


def test_draws_vs_jax_own_lowering_in_a_fresh_process():
    """The same draws, bit for bit, here (this module's straight-line lowering) and in a fresh
    process with `NOISYDLN_UNROLLED_THREEFRY=0` (JAX's loop, which its compiled program shows)."""
    if jax.default_backend() != "cpu":
        pytest.skip("the lowering is registered for CPUs")
    here = {}
    exec(DRAWS, here)
    env = dict(os.environ, NOISYDLN_UNROLLED_THREEFRY="0", NOISYDLN_CPU_DEVICES="1")
    code = DRAWS + "print(digest, loop)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    digest, loop = done.stdout.split()
    assert loop == "True" and not here["loop"]
    assert here["digest"] == digest


def test_opting_out_registers_nothing(monkeypatch):
    monkeypatch.setenv(threefry.VARIABLE, "0")
    assert threefry.use_unrolled_on_cpu() is False
