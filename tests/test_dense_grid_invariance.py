"""Dense-network `run_grid` statistics are the same bit for bit for any chunk size and device
count (float64 and float32; 3 and 4 devices with `-m slow`), and sweeping grid values or
defaults never recompiles."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import noisydln
from noisydln import grid

SCRIPT = Path(__file__).parent / "scripts" / "dense_grid_digest.py"
QUANTITIES = noisydln.networks.Dense.quantities + ("imbalance_drift_residual",)


def config(**changes):
    values = dict(
        network="dense", widths=(3, 2), num_steps=20, record_every=10, eta=0.02, init=0.5,
        quantities=QUANTITIES,
    )  # fmt: skip
    return noisydln.SimConfig(**{**values, **changes})


def run(key, problem, chunk_size, **kwargs):
    return noisydln.run_grid(
        key, problem, config(), num_seeds=37, sigmas=[0.0, 0.2, 0.4], chunk_size=chunk_size,
        **kwargs,
    )  # fmt: skip


def assert_identical(a, b):
    for name in a.mean:
        np.testing.assert_array_equal(a.mean[name], b.mean[name], err_msg=name)
        np.testing.assert_array_equal(a.var[name], b.var[name], err_msg=name)
        np.testing.assert_array_equal(a.count[name], b.count[name], err_msg=name)


# the default run checks chunk sizes in float32 on long contractions (below); the
# short-contraction cases and the device counts run with -m slow (the seeds are sharded by the
# same code for both families, and the default run compares devices bit for bit on the
# diagonal network: tests/test_checkpoint_vs_uninterrupted_run.py, test_distributed_vs_one_process.py)
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_chunk_size_does_not_change_a_bit(key, dtype):
    with jax.enable_x64(dtype == "float64"):
        drawn = noisydln.make_problem(key, 30, 5, k=2, noise_std=0.1)
        problem = noisydln.problem_from_data(np.asarray(drawn.X, dtype), np.asarray(drawn.y, dtype))
        reference = run(key, problem, None)  # one chunk of 48 seeds (37 and padding)
        assert_identical(run(key, problem, 32), reference)  # two chunks of 32
        # not trivially equal: another key gives other numbers
        other = run(jax.random.fold_in(key, 1), problem, None)
    assert not np.array_equal(other.mean["loss"], reference.mean["loss"])


def test_long_contractions_chunk_size_does_not_change_a_bit(key):
    """Contractions longer than `linalg.TERMS` (d = 20, width 18) are summed block by block:
    still the same bits in float32 for one chunk and for chunks of 8."""
    drawn = noisydln.make_problem(key, 40, 20, k=3, noise_std=0.1)
    problem = noisydln.problem_from_data(
        np.asarray(drawn.X, np.float32), np.asarray(drawn.y, np.float32)
    )
    long = config(widths=(18,), init=0.2, eta=0.002)
    results = [
        noisydln.run_grid(key, problem, long, num_seeds=12, sigmas=[0.0, 0.1], chunk_size=chunk)
        for chunk in (None, 8)
    ]
    assert_identical(*results)
    assert np.all(np.isfinite(results[0].mean["expected_loss"]))


def digest_with_devices(count: int, chunk: str, dtype: str) -> tuple[int, str]:
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, str(SCRIPT), chunk, dtype],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    devices, digest = out.stdout.split()
    return int(devices), digest


@pytest.mark.slow
def test_two_devices_do_not_change_a_bit():
    """Two XLA host devices in a subprocess against this process's one device (float64)."""
    spec = importlib.util.spec_from_file_location("dense_grid_digest", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert jax.device_count() == 1
    assert digest_with_devices(2, "none", "float64") == (2, script.digest(None))


@pytest.mark.slow
def test_two_devices_do_not_change_a_bit_in_float32():
    one, two = digest_with_devices(1, "none", "float32"), digest_with_devices(2, "none", "float32")
    assert (one[0], two[0]) == (1, 2)
    assert two[1] == one[1]


@pytest.mark.slow
def test_device_count_does_not_change_a_bit():
    for dtype in ("float64", "float32"):
        reference = digest_with_devices(1, "none", dtype)
        for count, chunk in ((3, "none"), (4, "16"), (2, "16")):
            devices, digest = digest_with_devices(count, chunk, dtype)
            assert devices == count
            assert digest == reference[1], f"{count} devices, chunk {chunk}, {dtype}"


def test_sweeping_grid_values_and_defaults_never_recompiles(key):
    problem = noisydln.make_problem(key, 30, 5, k=2, noise_std=0.1)
    run(key, problem, None)
    compiled = grid._run_chunk._cache_size()
    for sigmas, etas, scales in (
        ([0.3, 0.25, 0.1], [0.01], None),
        ([0.0, 0.3, 0.1], [0.015], [0.4]),
    ):
        noisydln.run_grid(
            key, problem, config(), num_seeds=37, sigmas=sigmas, etas=etas, init_scales=scales
        )
    other_defaults = config(eta=0.01, sigma=0.3, init=0.4, init_seed=5)
    noisydln.run_grid(key, problem, other_defaults, num_seeds=37, sigmas=[0.1, 0.3, 0.2])
    given = tuple(np.asarray(w) for w in other_defaults.base_init(5, np.float64)[0])
    noisydln.run_grid(key, problem, config(init=given), num_seeds=37, sigmas=[0.1, 0.3, 0.2])
    assert grid._run_chunk._cache_size() == compiled  # (a new grid shape does recompile: see
    # tests/test_grid_invariance.py, which shows that this count sees it)
