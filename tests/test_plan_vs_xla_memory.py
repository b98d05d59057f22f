"""The memory estimate of a chunk against XLA's own memory analysis of the compiled chunk, and
the refusals it drives (a `max_memory` limit, the host for kept trajectories, `--dry-run`)."""

import contextlib
import io

import jax
import numpy as np
import pytest

import noisydln
from noisydln import cli, plan
from noisydln import grid as grid_lib

# The estimate must be an upper bound of XLA's figure, and not a wild one.
LOWER, UPPER = 1.0, 3.0


@pytest.mark.parametrize(
    "n,d,depth,algorithm,sigmas,seeds,keep,devices,extra",
    [
        (200, 100, 2, "stochastic_sam", 8, 256, False, 1, ()),  # W1's shape, fewer seeds
        (40, 8, 3, "sam", 2, 256, True, 1, ()),
        (50, 20, 2, "minibatch_sgd", 4, 512, False, 1, ()),
        # the Lanczos vectors (LANCZOS_STATE_COPIES is checked by default below)
        pytest.param(
            *(50, 20, 2, "stochastic_sam", 4, 512, False, 1, ("top_eigenvalue",)),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_estimate_vs_xla_memory_analysis(
    key, xla_chunk_bytes, n, d, depth, algorithm, sigmas, seeds, keep, devices, extra
):
    if len(jax.devices()) < devices:
        pytest.skip(f"needs {devices} devices")
    problem = noisydln.make_problem(key, n, d, k=2)
    options = {"batch_size": 10} if algorithm == "minibatch_sgd" else {}
    config = noisydln.SimConfig(
        algorithm=algorithm, depth=depth, num_steps=40, record_every=4,
        quantities=noisydln.QUANTITIES + extra, **options,
    )  # fmt: skip
    chunk_plan, xla = xla_chunk_bytes(
        problem, config, num_seeds=seeds, sigmas=np.linspace(0.1, 0.3, sigmas), keep=keep,
        devices=jax.devices()[:devices],
    )  # fmt: skip
    assert chunk_plan.size.record_temporaries == plan.record_temporaries(extra, depth * d)
    ratio = chunk_plan.estimate.device_total / xla
    assert LOWER <= ratio <= UPPER, (chunk_plan.estimate, xla)


def test_estimate_grows_with_the_chunk_as_stated():
    size = plan.RunSize(
        num_seeds=4096, cells=8, num_records=201, state_elements=200, record_elements=204,
        problem_elements=200 * 100 + 100 * 100 + 400, itemsize=4,
    )  # fmt: skip
    small, large = plan.estimate_memory(size, 1024, 1), plan.estimate_memory(size, 2048, 1)
    # states: 6 copies x seeds x cells x 200 numbers x 4 bytes
    assert large.states - small.states == 6 * 1024 * 8 * 200 * 4
    assert small.moments == large.moments == 2 * 201 * (2 * 8 * 204 + 8) * 4
    assert small.kept == 0 and small.host_kept == 0
    halved = plan.estimate_memory(size, 2048, 2)
    assert halved.states == small.states  # each of 2 devices holds half of the chunk's states
    # top_eigenvalue: LANCZOS_STATE_COPIES vectors of the state's size per trajectory
    lanczos = size._replace(record_temporaries=plan.record_temporaries(("top_eigenvalue",), 200))
    extra = plan.estimate_memory(lanczos, 1024, 1).records - small.records
    assert extra == plan.LANCZOS_STATE_COPIES * 1024 * 8 * 200 * 4
    assert plan.record_temporaries(noisydln.QUANTITIES, 200) == 0


def test_max_memory_refused_with_a_chunk_size_that_fits(key):
    problem = noisydln.make_problem(key, 40, 8, k=2)
    config = noisydln.SimConfig(num_steps=20, record_every=10)
    arguments = dict(num_seeds=4096, sigmas=[0.1, 0.2], devices=jax.devices()[:1])
    needed = noisydln.grid.grid_plan(problem, config, **arguments).estimate.device_total
    limit = needed // 3
    with pytest.raises(
        ValueError, match=r"more than the .* of max_memory; chunk_size=(\d+) fits"
    ) as e:
        noisydln.run_grid(key, problem, config, max_memory=limit, **arguments)
    fitting = int(e.value.args[0].rsplit("chunk_size=", 1)[1].split()[0])
    fitted = noisydln.grid.grid_plan(problem, config, chunk_size=fitting, **arguments)
    assert (
        fitted.estimate.device_total
        <= limit
        < plan.estimate_memory(fitted.size, fitted.chunk_size + 16, 1).device_total
    )
    with pytest.raises(ValueError, match="no chunk size fits"):
        noisydln.run_grid(key, problem, config, max_memory=1000, **arguments)


def test_kept_trajectories_beyond_the_host_refused_before_running(key, monkeypatch):
    """10^6 seeds kept at W1's record count: refused at once (it was killed at 24 GB after 209 s)."""
    monkeypatch.setattr(plan, "available_host_bytes", lambda: 24 * 2**30)
    problem = noisydln.make_problem(key, 200, 100, k=5)
    config = noisydln.SimConfig(num_steps=2000, record_every=10)
    with pytest.raises(ValueError, match=r"keep_trajectories: 1000000 seeds .* on the host"):
        noisydln.run_grid(
            key, problem, config, num_seeds=10**6, keep_trajectories=True,
            sigmas=np.linspace(0, 0.3, 8),
        )  # fmt: skip


@pytest.mark.parametrize(
    "text,count",
    [("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)), ("800 MB", 8 * 10**8), ("4096", 4096)],
)
def test_parse_bytes(text, count):
    assert plan.parse_bytes(text) == count


@pytest.mark.parametrize("text", ["", "two GB", "-1GB", "5XB", "nan", "inf"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match="max_memory"):
        plan.parse_bytes(text)


SPEC = """\
name = "planned"
[problem]
n = 40
d = 8
k = 2
[simulation]
num_steps = 100
record_every = 10
[grid]
num_seeds = 1000
sigmas = [0.1, 0.2, 0.3]
chunk_size = 256
"""


def _main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(argv))
    return status, out.getvalue(), err.getvalue()


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, monkeypatch):
    spec = tmp_path / "planned.toml"
    spec.write_text(SPEC)
    out = tmp_path / "planned.nc"

    def must_not_run(*args, **kwargs):
        raise AssertionError("--dry-run ran a chunk")

    monkeypatch.setattr(grid_lib, "_run_chunk", must_not_run)
    status, stdout, stderr = _main("run", str(spec), "-o", str(out), "--dry-run")
    assert status == 0, stderr
    assert not out.exists()
    lines = stdout.strip().splitlines()
    assert lines[0] == "planned: 2 grid runs, 2 compiled programs (float32)"
    devices = min(len(jax.devices()), 1000 // 16)
    chunk = -(-256 // (16 * devices)) * 16 * devices
    chunks = -(-1000 // chunk)
    assert f"1000 seeds x 3 cells x 11 records; {chunks} chunk(s) of {chunk} seeds" in lines[1]
    assert "GD on L_R (reference)" in lines[2] and lines[-1].startswith("largest chunk: about")


def test_dry_run_with_too_small_max_memory_one_line(tmp_path):
    spec = tmp_path / "planned.toml"
    spec.write_text(SPEC)
    status, _, stderr = _main("run", str(spec), "--dry-run", "--max-memory", "10kB")
    assert status == 2 and "Traceback" not in stderr
    assert stderr.count("\n") == 1 and "max_memory; no chunk size fits" in stderr
    status, _, stderr = _main("run", str(spec), "--dry-run", "--max-memory", "lots")
    assert status == 2 and "--max-memory: expected a size" in stderr


@pytest.mark.parametrize(  # depth 3 (a second prefix product) compiles for 19 s: -m slow
    "d,widths", [(30, (20,)), pytest.param(40, (30, 20), marks=pytest.mark.slow)]
)
def test_dense_estimate_vs_xla_memory_analysis(key, xla_chunk_bytes, d, widths):
    """Dense records form `[m, k, n]` products (`Dense.record_temporaries`): with the default
    quantities they outweigh the states, and the estimate must still bound XLA's bytes."""
    problem = noisydln.make_problem(key, 60, d, k=2)
    config = noisydln.SimConfig(
        network="dense", widths=widths, init=0.5, init_seed=0, num_steps=20, record_every=10
    )
    chunk_plan, xla = xla_chunk_bytes(
        problem, config, num_seeds=256, sigmas=np.linspace(0.0, 0.05, 4), keep=False,
        devices=jax.devices()[:1],
    )  # fmt: skip
    assert chunk_plan.size.record_temporaries > 0
    ratio = chunk_plan.estimate.device_total / xla
    assert LOWER <= ratio <= UPPER, (chunk_plan.estimate, xla)
