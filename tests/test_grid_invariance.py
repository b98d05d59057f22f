"""`run_grid` statistics are the same bit for bit for any chunk size and device count (float64)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import noisydln
from noisydln import grid

SCRIPT = Path(__file__).parent / "scripts" / "grid_digest.py"


def run(key, problem, chunk_size, **kwargs):
    config = noisydln.SimConfig(num_steps=40, record_every=10, eta=0.05, init=0.5)
    return noisydln.run_grid(
        key, problem, config, num_seeds=37, sigmas=[0.0, 0.2, 0.4], chunk_size=chunk_size, **kwargs
    )


def assert_identical(a, b):
    for name in a.mean:
        np.testing.assert_array_equal(a.mean[name], b.mean[name], err_msg=name)
        np.testing.assert_array_equal(a.var[name], b.var[name], err_msg=name)
        np.testing.assert_array_equal(a.count[name], b.count[name], err_msg=name)


def test_chunk_size_does_not_change_a_bit(key):
    problem = noisydln.make_problem(key, 30, 6, k=2, noise_std=0.1)
    reference = run(key, problem, None)
    for chunk_size in (1, 16, 20, 48):
        assert_identical(run(key, problem, chunk_size), reference)
    # and the statistics are not trivially equal: another key gives other numbers
    other = run(jax.random.fold_in(key, 1), problem, None)
    assert not np.array_equal(other.mean["loss"], reference.mean["loss"])


def digest_with_devices(count: int, chunk: str) -> tuple[int, str]:
    env = dict(
        os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, str(SCRIPT), chunk], env=env, capture_output=True, text=True, check=True
    )
    devices, digest = out.stdout.split()
    return int(devices), digest


@pytest.mark.slow  # bits across device counts are also compared by the resumed-run and two-process tests
def test_two_devices_do_not_change_a_bit():
    reference = digest_with_devices(1, "none")
    assert reference[0] == 1
    devices, digest = digest_with_devices(2, "none")
    assert devices == 2
    assert digest == reference[1]


@pytest.mark.slow
def test_device_count_does_not_change_a_bit():
    reference = digest_with_devices(1, "none")
    assert reference[0] == 1
    for count, chunk in ((2, "none"), (4, "16"), (3, "none")):
        devices, digest = digest_with_devices(count, chunk)
        assert devices == count
        assert digest == reference[1], f"{count} devices, chunk {chunk}"


def test_sharded_run_uses_every_device():
    """Four XLA host devices: the chunk's seeds are split over all of them."""
    code = (
        "import jax, noisydln, numpy as np\n"
        "from noisydln import grid\n"
        "p = noisydln.make_problem(jax.random.key(0), 20, 4, k=1)\n"
        "c = noisydln.SimConfig(num_steps=4, record_every=2)\n"
        "keys = jax.random.split(jax.random.key(0), 64)\n"
        "print(len(jax.devices()), grid._seed_mesh(jax.local_devices()).devices.size)\n"
    )
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["4", "4"]


def test_sweeping_grid_values_never_recompiles(key):
    problem = noisydln.make_problem(key, 30, 6, k=2)
    # the grid of test_memory_does_not_grow_with_seeds_unless_asked[False]: one program for both
    config = noisydln.SimConfig(num_steps=20, record_every=10, eta=0.05, init=0.5)
    noisydln.run_grid(key, problem, config, num_seeds=40, sigmas=[0.1, 0.2], etas=[0.05])
    compiled = grid._run_chunk._cache_size()
    for sigmas, etas, scales in (([0.3, 0.4], [0.01], None), ([0.0, 0.6], [0.08], [0.7])):
        noisydln.run_grid(
            key, problem, config, num_seeds=40, sigmas=sigmas, etas=etas, init_scales=scales
        )
    other_defaults = noisydln.SimConfig(
        num_steps=20, record_every=10, eta=0.02, sigma=0.5, init=0.9
    )
    noisydln.run_grid(key, problem, other_defaults, num_seeds=40, sigmas=[0.5, 0.6])
    assert grid._run_chunk._cache_size() == compiled
    noisydln.run_grid(
        key, problem, config, num_seeds=40, sigmas=[0.1, 0.2, 0.3]
    )  # a new shape does
    assert grid._run_chunk._cache_size() == compiled + 1


@pytest.mark.parametrize("keep", [False, True])
def test_memory_does_not_grow_with_seeds_unless_asked(key, keep):
    problem = noisydln.make_problem(key, 30, 6, k=2)
    config = noisydln.SimConfig(num_steps=20, record_every=10, eta=0.05, init=0.5)
    result = noisydln.run_grid(
        key, problem, config, num_seeds=40, sigmas=[0.1, 0.2], keep_trajectories=keep
    )
    assert result.mean["beta"].shape == (2, 1, 1, 3, 6)
    assert result.mean["imbalance"].shape == (2, 1, 1, 3, 1, 6)
    if keep:
        assert result.trajectories["beta"].shape == (2, 1, 1, 40, 3, 6)
    else:
        assert result.trajectories is None
