"""On an accelerator (`-m gpu`; skipped without one): the statistics against the CPU's, the
memory estimate against XLA's analysis on the device, and the benchmark unchanged."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import noisydln
from noisydln.bench.throughput import worker_command

pytestmark = pytest.mark.gpu


def _accelerators():
    try:
        return [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm", "tpu")]
    except RuntimeError:
        return []


@pytest.fixture(scope="module")
def accelerator():
    devices = _accelerators()
    if not devices:
        pytest.skip("no accelerator")
    return devices


def _w1_like(key, num_seeds):
    problem = noisydln.make_problem(key, 200, 100, k=5, values=1.0)
    init = np.stack([np.full(100, 0.5), np.full(100, 0.25)])
    config = noisydln.SimConfig(num_steps=400, record_every=20, eta=0.01, init=init)
    return problem, config, dict(num_seeds=num_seeds, sigmas=np.linspace(0.0, 0.3, 4))


def test_statistics_on_the_accelerator_vs_the_cpu(key, accelerator):
    """float64: the same seeds give the same means to rounding (different kernels sum in
    another order, so not bit for bit; 1e-9 relative is far below any standard error)."""
    problem, config, grid = _w1_like(key, 256)
    on_device = noisydln.run_grid(key, problem, config, devices=accelerator, **grid)
    with jax.default_device(jax.devices("cpu")[0]):
        problem_cpu = jax.device_put(problem, jax.devices("cpu")[0])
        on_cpu = noisydln.run_grid(key, problem_cpu, config, devices=jax.devices("cpu"), **grid)
    for name in on_cpu.mean:
        a, b = np.asarray(on_device.mean[name]), np.asarray(on_cpu.mean[name])
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)
        sem = np.sqrt(np.asarray(on_cpu.var[name]) / 256)
        assert np.all(np.abs(a - b) <= 1e-3 * sem + 1e-12), name


def test_memory_estimate_vs_xla_on_the_accelerator(key, accelerator, xla_chunk_bytes):
    problem, config, grid = _w1_like(key, 4096)
    chunk_plan, xla = xla_chunk_bytes(
        problem, config, num_seeds=4096, sigmas=grid["sigmas"], keep=False, devices=accelerator
    )
    assert 1.0 <= chunk_plan.estimate.device_total / xla <= 4.0, (chunk_plan.estimate, xla)


def test_benchmark_runs_unchanged(accelerator):
    command, env = worker_command("noisydln.bench.throughput", ["--quick"])
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "jax run_grid" in out.stdout
    report = json.loads(
        subprocess.run(
            [sys.executable, "-m", "noisydln.bench.throughput", "--worker", "jax", "--seeds",
             "64", "--steps", "100", "--repeats", "1"],
            env=env, capture_output=True, text=True, timeout=900,
        ).stdout.strip().splitlines()[-1]
    )  # fmt: skip
    assert report["memory_kind"].endswith("peak bytes in use")
