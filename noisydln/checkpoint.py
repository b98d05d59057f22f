"""Checkpoints of an experiment: where each of its grid runs stands, saved atomically.

A checkpoint holds, for every grid run of an experiment begun so far (in the order
`run_experiment` runs them), its `GridState`: the streamed moments of the seeds done and the
next seed. `run_experiment(spec, checkpoint=PATH)` writes one after every chunk of seeds and
continues from it when PATH exists; the statistics are then the same, bit for bit, as those of
a run that never stopped (the moments are folded in seed order whatever the chunking).

The file is a NumPy `.npz` archive written to a temporary file in the same folder, flushed to
disk and renamed over PATH (`os.replace`, atomic on POSIX and Windows): a process killed at any
moment leaves the previous checkpoint or the new one, never half of one. The arrays are stored
bit for bit, NumPy alone reads them, and a checkpoint of a W1-sized run is a few MB, so neither
a checkpointing library (orbax, which brings tensorstore, built for sharded model weights) nor a
Zarr store is worth its dependency here.

A checkpoint records the hash of the spec (without `grid.chunk_size` and `run.devices`, which do
not change the numbers) and the noisydln version; continuing with another spec or version is
refused with a `CheckpointError`. Another JAX version is allowed with a warning: the statistics
stay valid but need not be bit for bit those of an uninterrupted run.
"""

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import jax
import numpy as np

from noisydln._files import atomic_write
from noisydln.experiment import Experiment
from noisydln.grid import GridState
from noisydln.moments import Moments

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be continued with the run asked for (another spec, version)."""


def spec_hash(spec: Experiment) -> str:
    """SHA-256 of the spec's TOML without the keys that do not change the numbers."""
    grid = dataclasses.replace(spec.grid, chunk_size=None)
    run = dataclasses.replace(spec.run, devices=None)
    text = dataclasses.replace(spec, grid=grid, run=run).to_toml()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _version() -> str:
    from noisydln import __version__  # noqa: PLC0415 (the package imports this module)

    return __version__


def _arrays(states: list[GridState]) -> dict[str, np.ndarray]:
    arrays = {}
    for i, state in enumerate(states):
        arrays[f"run{i}/next_seed"] = np.asarray(state.next_seed, np.int64)
        arrays[f"run{i}/count"] = np.asarray(state.moments.count)
        for part in ("mean", "m2"):
            for name, value in getattr(state.moments, part).items():
                arrays[f"run{i}/{part}/{name}"] = np.asarray(value)
    return arrays


def save(path: str | Path, spec: Experiment, states: list[GridState], seconds: float = 0.0) -> Path:
    """Writes the checkpoint of `spec` with `states` (one per grid run begun) atomically;
    `seconds`: the run's wall time so far (a resumed run's `wall_seconds` counts it)."""
    path = Path(path)
    meta = {
        "format": FORMAT,
        "spec_hash": spec_hash(spec),
        "noisydln_version": _version(),
        "jax_version": jax.__version__,
        "num_runs": len(states),
        "seconds": float(seconds),
    }

    def write(temporary: str) -> None:
        with open(temporary, "wb") as file:
            np.savez(file, meta=np.asarray(json.dumps(meta)), **_arrays(states))

    return atomic_write(path, write)


def _state(archive, i: int) -> GridState:
    prefix = f"run{i}/"
    parts = {"mean": {}, "m2": {}}
    for key in archive.files:
        if key.startswith(prefix) and key.count("/") == 2:
            _, part, name = key.split("/")
            parts[part][name] = archive[key]
    moments = Moments(count=archive[prefix + "count"], mean=parts["mean"], m2=parts["m2"])
    return GridState(moments, int(archive[prefix + "next_seed"]))


def elapsed(path: str | Path) -> float:
    """The wall time, in seconds, of the run that wrote the checkpoint at `path`, so far."""
    with np.load(path, allow_pickle=False) as archive:
        return float(json.loads(str(archive["meta"])).get("seconds", 0.0))


def load(path: str | Path, spec: Experiment) -> list[GridState]:
    """The `GridState`s of the checkpoint at `path`, after checking it was made by `spec` with
    this noisydln version (`CheckpointError` otherwise)."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        meta = json.loads(str(archive["meta"]))
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {error}") from error
    with archive:
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {str(path)!r} has an unknown format {meta!r}")
        if meta["spec_hash"] != spec_hash(spec):
            raise CheckpointError(
                f"checkpoint {str(path)!r} was made by another spec (hash "
                f"{meta['spec_hash'][:12]}, this spec's is {spec_hash(spec)[:12]}); delete it "
                "or run the spec that made it"
            )
        if meta["noisydln_version"] != _version():
            raise CheckpointError(
                f"checkpoint {str(path)!r} was made by noisydln {meta['noisydln_version']}, "
                f"this is {_version()}; delete it or continue with that version"
            )
        if meta["jax_version"] != jax.__version__:
            warnings.warn(
                f"checkpoint {str(path)!r} was made with JAX {meta['jax_version']}, this is "
                f"{jax.__version__}: the statistics stay valid but need not be bit for bit "
                "those of an uninterrupted run",
                RuntimeWarning,
                stacklevel=2,
            )
        return [_state(archive, i) for i in range(meta["num_runs"])]
