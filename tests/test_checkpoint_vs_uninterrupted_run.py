"""Checkpoint and resume against a run that never stopped: the same numbers, bit for bit.

A real `noisydln run` process (one device) is killed with SIGKILL after its first checkpoint and
resumed on two devices;
from Python, runs are interrupted between chunks (in the middle of the first of two static
combinations, and of the second) and continued, also on another number of devices. A
checkpoint of another spec or noisydln version is refused.
"""

import contextlib
import dataclasses
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr

import noisydln
from noisydln import checkpoint, cli, results
from noisydln.experiment import Experiment
from noisydln.grid import GridState

SPEC = """\
name = "resumable"

[problem]
n = 24
d = 4
design = "orthogonal"
beta_star = [1.0, -0.5, 0.05, 0.0]

[simulation]
num_steps = 200
record_every = 100
init = 0.5
eta = 0.05

[grid]
num_seeds = 160
sigmas = [0.1, 0.3]
algorithms = ["stochastic_sam", "random_sam"]
chunk_size = 32

[run]
dtype = "float64"
"""


@pytest.fixture(scope="module")
def spec() -> Experiment:
    return Experiment.from_toml_text(SPEC)


@pytest.fixture(scope="module")
def uninterrupted(spec) -> xr.Dataset:
    return results.run_experiment(spec)


def assert_same_statistics(a: xr.Dataset, b: xr.Dataset) -> None:
    """Every variable and coordinate equal bit for bit (NaN where NaN)."""
    assert set(a.data_vars) == set(b.data_vars)
    for name in list(a.data_vars) + list(a.coords):
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


class Interrupt(Exception):
    pass


def _interrupted_after(spec, path, chunks: int, **options) -> None:
    """`run_experiment` with a checkpoint, stopped by an exception after `chunks` chunks."""

    def progress(done, _total):
        if done == chunks:
            raise Interrupt

    with pytest.raises(Interrupt):
        results.run_experiment(spec, checkpoint=path, progress=progress, **options)


@pytest.mark.parametrize("chunks", [2, 7])  # inside the first combination (5 chunks), the second
def test_resumed_run_vs_uninterrupted_run(spec, uninterrupted, tmp_path, chunks):
    path = tmp_path / "run.checkpoint"
    _interrupted_after(spec, path, chunks)
    states = checkpoint.load(path, spec)
    assert [s.next_seed for s in states] == ([64] if chunks == 2 else [160, 64])
    seen, earlier = [], checkpoint.elapsed(path)
    assert earlier > 0
    resumed = results.run_experiment(spec, checkpoint=path, progress=lambda i, n: seen.append(i))
    assert resumed.attrs["wall_seconds"] > earlier  # the first part's time is counted
    assert seen[0] == chunks + 1 and seen[-1] == 11  # 5 + 5 chunks, then the reference
    assert_same_statistics(resumed.drop_attrs(), uninterrupted.drop_attrs())


def test_resume_on_other_devices_and_chunks_vs_uninterrupted(spec, uninterrupted, tmp_path):
    """The checkpoint does not depend on the chunking: continue on 1 device with chunks of 16."""
    path = tmp_path / "run.checkpoint"
    _interrupted_after(spec, path, 3)
    other = dataclasses.replace(
        spec,
        grid=dataclasses.replace(spec.grid, chunk_size=16),
        run=dataclasses.replace(spec.run, devices=1),
    )
    resumed = results.run_experiment(other, checkpoint=path)
    assert_same_statistics(resumed.drop_attrs(), uninterrupted.drop_attrs())


def test_complete_checkpoint_returns_without_running(spec, uninterrupted, tmp_path):
    path = tmp_path / "run.checkpoint"
    first = results.run_experiment(spec, checkpoint=path)
    assert_same_statistics(first.drop_attrs(), uninterrupted.drop_attrs())
    calls = []
    killed_save = tmp_path / ".run.checkpoint.x1y2.part"  # what a save killed midway leaves
    killed_save.write_bytes(b"half a checkpoint")
    again = results.run_experiment(spec, checkpoint=path, progress=lambda i, n: calls.append(i))
    assert calls == [] and not killed_save.exists()
    assert_same_statistics(again.drop_attrs(), uninterrupted.drop_attrs())


def test_checkpoint_of_another_spec_is_refused(spec, tmp_path):
    path = tmp_path / "run.checkpoint"
    _interrupted_after(spec, path, 1)
    other = dataclasses.replace(spec, grid=dataclasses.replace(spec.grid, sigmas=(0.1, 0.31)))
    with pytest.raises(checkpoint.CheckpointError, match="made by another spec"):
        results.run_experiment(other, checkpoint=path)


def test_checkpoint_of_another_version_is_refused(spec, tmp_path, monkeypatch):
    path = tmp_path / "run.checkpoint"
    states = [GridState(_tiny_moments(), 16)]
    checkpoint.save(path, spec, states)
    monkeypatch.setattr(noisydln, "__version__", "9.9.9")
    with pytest.raises(checkpoint.CheckpointError, match="made by noisydln 0.1.0, this is 9.9.9"):
        checkpoint.load(path, spec)


def test_checkpoint_of_another_jax_version_warns(spec, tmp_path, monkeypatch):
    path = tmp_path / "run.checkpoint"
    checkpoint.save(path, spec, [GridState(_tiny_moments(), 16)])
    monkeypatch.setattr(jax, "__version__", "0.0.1")
    with pytest.warns(RuntimeWarning, match="need not be bit for bit"):
        checkpoint.load(path, spec)


def test_unreadable_checkpoint_is_refused(spec, tmp_path):
    path = tmp_path / "run.checkpoint"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
        checkpoint.load(path, spec)


def test_saved_state_vs_loaded_state_bits(spec, tmp_path):
    state = GridState(_tiny_moments(), 32)
    path = checkpoint.save(tmp_path / "c", spec, [state, state])
    loaded = checkpoint.load(path, spec)
    assert len(loaded) == 2 and loaded[1].next_seed == 32
    for a, b in zip(
        jax.tree.leaves(state.moments), jax.tree.leaves(loaded[0].moments), strict=True
    ):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not a private temp file


def test_spec_hash_ignores_only_what_does_not_change_the_numbers(spec):
    same = dataclasses.replace(
        spec,
        grid=dataclasses.replace(spec.grid, chunk_size=64),
        run=dataclasses.replace(spec.run, devices=1),
    )
    assert checkpoint.spec_hash(same) == checkpoint.spec_hash(spec)
    other = dataclasses.replace(spec, grid=dataclasses.replace(spec.grid, num_seeds=161))
    assert checkpoint.spec_hash(other) != checkpoint.spec_hash(spec)


def test_grid_state_of_wrong_shape_or_seed_is_refused(key):
    problem = noisydln.make_problem(key, 20, 4, k=2)
    config = noisydln.SimConfig(num_steps=4, record_every=2, quantities=("loss",))
    states = []
    noisydln.run_grid(key, problem, config, num_seeds=80, chunk_size=32, on_chunk=states.append)
    assert [s.next_seed for s in states] == [32, 64, 80]
    with pytest.raises(ValueError, match="next_seed must be a multiple of 16"):
        noisydln.run_grid(key, problem, config, num_seeds=48, start=states[0]._replace(next_seed=8))
    with pytest.raises(ValueError, match="start: its moments"):
        noisydln.run_grid(key, problem, config, num_seeds=48, sigmas=[0.1, 0.2], start=states[0])


def _tiny_moments():
    from noisydln.moments import Moments

    rng = np.random.default_rng(0)
    return Moments(
        count=np.full((3, 2), 16.0),
        mean={"loss": rng.normal(size=(3, 2))},
        m2={"loss": rng.random((3, 2))},
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- a real process, killed


def _noisydln(*argv, **kwargs) -> subprocess.Popen:
    code = "import sys; from noisydln.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_killed_cli_run_resumed_vs_uninterrupted(spec, uninterrupted, tmp_path):
    spec_path = tmp_path / "resumable.toml"
    spec_path.write_text(SPEC)
    out = tmp_path / "out.nc"
    saved = cli.checkpoint_path(out)
    process = _noisydln("run", str(spec_path), "-o", str(out), "-q")
    deadline = time.monotonic() + 240
    while not saved.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert saved.exists(), process.communicate()
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()  # a killed run leaves its checkpoint, never a half-written OUT
    assert checkpoint.load(saved, spec)[0].next_seed < spec.grid.num_seeds

    err = io.StringIO()  # refused without --resume (in this process: the same `main`)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        status = cli.main(["run", str(spec_path), "-o", str(out)])
    assert status == 2 and "pass --resume" in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1 and "Traceback" not in err.getvalue()

    two_devices = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    resumed = _noisydln("run", str(spec_path), "-o", str(out), "--resume", "-q", env=two_devices)
    stdout, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert not saved.exists()  # removed once OUT is safe
    assert_same_statistics(results.load(out).drop_attrs(), uninterrupted.drop_attrs())
    assert not [p for p in Path(tmp_path).iterdir() if p.name.endswith(".part")]
