"""Labelled results: `run_experiment(spec) -> xarray.Dataset`, saved to and opened from netCDF.

`run_experiment` plans every grid run of a spec (chunks, devices, memory: refused before
compiling if a chunk cannot fit), runs them, optionally saving a checkpoint after every chunk
to continue from (`noisydln.checkpoint`), and assembles the Dataset (`noisydln.dataset`). The
Dataset has named dimensions `algorithm, depth, noise, sigma, eta, init_scale, step`
(always kept, length 1 included) and `layer, coord` where a quantity has them. For every
recorded quantity `q` it holds `q_mean`, `q_sem` (standard error of the mean) and `q_count`
(finite trajectories), plus `diverged`; beside them the closed-form predictions that exist
for the problem (`beta_limit`, `threshold`, `imbalance_flow`, the balanced minima at the
limit) and `q_gd_LR`, gradient descent on the expected loss `L_R` from the same start with the
same step: the deterministic reference of the Monte Carlo mean (docs/theory.md s3). The problem
itself (`X`, `y`, `beta_star`) is stored too, so that checks and figures need only the file.
"""

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from noisydln import checkpoint as checkpoint_lib
from noisydln._files import atomic_write, remove_leftovers
from noisydln.dataset import CELL_DIMS, build_dataset, noise_label
from noisydln.experiment import Experiment, build_problem
from noisydln.grid import GridResult, GridState, grid_plan, run_grid
from noisydln.plan import ChunkPlan, check_fits
from noisydln.problem import Problem, problem_from_data
from noisydln.simulate import SimConfig

REFERENCE_RULES = ("stochastic_sam", "expected_gd")  # rules whose mean follows GD on L_R
ENGINE = "h5netcdf"


def _select_devices(count: int | None):
    if count is None:
        return None
    if jax.process_count() > 1:
        raise ValueError(
            "run.devices: leave it unset in a run over several processes (every device of "
            "every process takes part)"
        )
    local = jax.local_devices()
    if count > len(local):
        raise ValueError(f"run.devices: {count} devices asked for, {len(local)} available")
    return local[:count]


def _reference_config(config: SimConfig) -> SimConfig:
    """GD on L_R with the same static choices (the deterministic reference trajectory)."""
    step_quantities = config.family().step_quantities  # need the rule's next step: not GD's
    keep = tuple(q for q in config.quantities if q not in step_quantities)
    return dataclasses.replace(
        config, algorithm="expected_gd", noise=None, batch_size=None, quantities=keep or ("beta",)
    )


def run_experiment(
    spec: Experiment,
    *,
    progress: Callable[[int, int], None] | None = None,
    checkpoint: str | Path | None = None,
    max_memory: int | None = None,
) -> xr.Dataset:
    """Runs every static combination of `spec` and returns the labelled statistics.

    Args:
      spec: the experiment.
      progress: called as `progress(chunks_done, total_chunks)` after every chunk of seeds,
        over all static combinations (the command line draws its progress bar with it).
      checkpoint: a file to save where the run stands after every chunk (atomically, see
        `noisydln.checkpoint`). If it exists, the run continues from it, with the same
        statistics bit for bit as a run that never stopped; a checkpoint of another spec or
        noisydln version is refused. It is left complete when the run ends (a second call
        returns at once); delete it when the results are safe.
      max_memory: bytes a chunk may use per device (see `run_grid`); checked before compiling.

    Returns:
      The Dataset described in this module's docstring; `attrs["spec"]` is the spec as TOML.

    Examples:
      >>> spec = Experiment.from_toml_text('''
      ... [problem]
      ... n = 20
      ... d = 4
      ... design = "orthogonal"
      ... [simulation]
      ... num_steps = 100
      ... record_every = 50
      ... [grid]
      ... num_seeds = 32
      ... sigmas = [0.1, 0.3]
      ... ''')
      >>> ds = run_experiment(spec)
      >>> ds["beta_mean"].dims
      ('algorithm', 'depth', 'noise', 'sigma', 'eta', 'init_scale', 'step', 'coord')
    """
    with jax.enable_x64(spec.run.dtype == "float64"):
        problem, devices, runs = _prepare(spec)
        plans = [_plan(spec, problem, run, devices, max_memory) for run in runs]
        states = _checkpoint_states(checkpoint, spec)
        total = sum(plan.num_chunks for plan in plans)
        key = jax.random.key(spec.grid.seed)
        earlier = checkpoint_lib.elapsed(checkpoint) if states else 0.0
        start = time.perf_counter() - earlier  # a resumed run's wall time counts the first part
        results, done = [], 0
        for index, (run, plan) in enumerate(zip(runs, plans, strict=True)):
            resume = {"start": states[index] if index < len(states) else None}
            if checkpoint is not None:
                resume["on_chunk"] = _saver(checkpoint, spec, states, index, start)
            progress_of_run = _offset(progress, done, total)
            results.append(
                _run(key, problem, run, spec, devices, max_memory, progress_of_run, resume)
            )
            done += plan.num_chunks
        wall = time.perf_counter() - start
        pairs = list(zip(runs, results, strict=True))
        configs = [run.config for run, _ in pairs if not run.reference]
        simulated = [result for run, result in pairs if not run.reference]
        references = {run.config.depth: result for run, result in pairs if run.reference}
        return build_dataset(spec, problem, configs, simulated, references, wall, devices)


class PlannedRun(NamedTuple):
    """One grid run of an experiment: a static combination, or GD on L_R (`reference`)."""

    config: SimConfig
    num_seeds: int
    reference: bool


def planned_runs(spec: Experiment, problem: Problem) -> list[PlannedRun]:
    """The grid runs of `spec`, in the order `run_experiment` runs them: every static
    combination, then GD on L_R per depth (one seed) where the spec asks for the reference."""
    configs = spec.static_configs()
    for config in configs:
        config.validate_for(problem)
    references = {
        c.depth: _reference_config(c)
        for c in configs
        if spec.run.reference and c.algorithm in REFERENCE_RULES
    }
    return [PlannedRun(c, spec.grid.num_seeds, False) for c in configs] + [
        PlannedRun(c, 1, True) for c in references.values()
    ]


def _prepare(spec: Experiment):
    """`(problem, devices, planned runs)` of `spec` (call under the spec's x64 setting)."""
    dtype = {"float32": jnp.float32, "float64": jnp.float64}[spec.run.dtype]
    problem = build_problem(spec, dtype)
    return problem, _select_devices(spec.run.devices), planned_runs(spec, problem)


def experiment_plans(spec: Experiment, *, max_memory: int | None = None):
    """`[(PlannedRun, ChunkPlan)]` of `spec`: chunks, devices and memory estimate of every grid
    run, without compiling anything (`noisydln run --dry-run` prints them); raises like
    `run_experiment` if a chunk cannot fit."""
    with jax.enable_x64(spec.run.dtype == "float64"):
        problem, devices, runs = _prepare(spec)
        return [(run, _plan(spec, problem, run, devices, max_memory)) for run in runs]


def _grid_arguments(spec: Experiment, run: PlannedRun, devices) -> dict:
    grid = spec.grid
    return dict(
        num_seeds=run.num_seeds, sigmas=grid.sigmas, etas=grid.etas, init_scales=grid.init_scales,
        chunk_size=grid.chunk_size if run.num_seeds > 1 else None, devices=devices,
    )  # fmt: skip


def _plan(spec, problem, run: PlannedRun, devices, max_memory) -> ChunkPlan:
    """The run's `ChunkPlan`, refused now (before anything compiles) if a chunk cannot fit."""
    plan = grid_plan(problem, run.config, **_grid_arguments(spec, run, devices))
    check_fits(plan, (devices or jax.devices())[0], max_memory)
    return plan


def _run(key, problem, run: PlannedRun, spec, devices, max_memory, progress, resume: dict):
    return run_grid(
        key, problem, run.config, max_memory=max_memory, progress=progress,
        **_grid_arguments(spec, run, devices), **resume,
    )  # fmt: skip


def _offset(progress, done: int, total: int):
    """`progress` for one grid run: its chunks counted after the `done` chunks of earlier runs."""
    return None if progress is None else (lambda i, _n: progress(done + i, total))


def _checkpoint_states(path, spec: Experiment) -> list[GridState]:
    """The states saved at `path` (none if there is no checkpoint), after deleting what a killed
    save left beside it (process 0, the one that writes checkpoints)."""
    if path is not None and jax.process_index() == 0:
        remove_leftovers(path)
    if path is None or not Path(path).exists():
        return []
    return checkpoint_lib.load(path, spec)


def _saver(path, spec: Experiment, states: list[GridState], index: int, start: float):
    """`on_chunk` of grid run `index`: records its state and saves every run's (process 0)."""

    def on_chunk(state: GridState) -> None:
        del states[index:]
        states.append(state)
        if jax.process_index() == 0:
            checkpoint_lib.save(path, spec, states, seconds=time.perf_counter() - start)

    return on_chunk


# ---------------------------------------------------------------- back to the engine's types


def problem_of(ds: xr.Dataset) -> Problem:
    """The `Problem` a Dataset was run on (rebuilt from its stored `X`, `y`, `beta_star`)."""
    X = np.asarray(ds["X"].values)
    return problem_from_data(X, np.asarray(ds["y"].values), np.asarray(ds["beta_star"].values))


def spec_of(ds: xr.Dataset) -> Experiment:
    """The `Experiment` a Dataset was run from (its `spec` attribute)."""
    return Experiment.from_toml_text(ds.attrs["spec"])


def grid_results(ds: xr.Dataset) -> list[tuple[dict, GridResult, SimConfig]]:
    """`(labels, GridResult, SimConfig)` for every static combination that ran.

    `labels` holds the combination's `algorithm`, `depth` and `noise`; the `GridResult` holds
    the statistics of that combination (`var = sem^2 count`) as `run_grid` returns them.
    """
    spec = spec_of(ds)
    out = []
    for config in spec.static_configs():
        labels = {
            "algorithm": config.algorithm,
            "depth": config.depth,
            "noise": noise_label(config),
        }
        if any(value not in ds[dim].values for dim, value in labels.items()):
            continue  # selected away
        cell = ds.sel(labels)
        names = [v[: -len("_mean")] for v in ds.data_vars if v.endswith("_mean")]
        mean, var, count = {}, {}, {}
        for name in names:
            values = cell[f"{name}_mean"]
            if "layer" in values.dims:
                values = values.isel(layer=slice(0, config.depth - 1))
            sem = (
                cell[f"{name}_sem"].isel(layer=slice(0, config.depth - 1))
                if "layer" in values.dims
                else cell[f"{name}_sem"]
            )
            n = cell[f"{name}_count"].broadcast_like(values).transpose(*values.dims)
            mean[name] = jnp.asarray(values.values)
            count[name] = jnp.asarray(n.values.astype(values.dtype))
            var[name] = jnp.asarray((sem.values**2 * n.values).astype(values.dtype))
        result = GridResult(
            steps=np.asarray(ds["step"].values),
            mean=mean,
            var=var,
            count=count,
            sigmas=np.asarray(ds["sigma"].values, dtype=float),
            etas=np.asarray(ds["eta"].values, dtype=float),
            init_scales=np.asarray(ds["init_scale"].values, dtype=float),
            num_seeds=int(ds.attrs["num_seeds"]),
            diverged=np.asarray(cell["diverged"].values),
        )
        out.append((labels, result, config))
    return out


def reference_result(ds: xr.Dataset, depth: int) -> GridResult | None:
    """The `<q>_gd_LR` variables of one depth as a one-seed `GridResult`, or None if absent."""
    names = [v[: -len("_gd_LR")] for v in ds.data_vars if v.endswith("_gd_LR")]
    if not names or depth not in ds["depth"].values:
        return None
    mean = {}
    for name in names:
        values = ds[f"{name}_gd_LR"].sel(depth=depth)
        if "layer" in values.dims:
            values = values.isel(layer=slice(0, depth - 1))
        mean[name] = jnp.asarray(values.values)
    if any(np.all(np.isnan(np.asarray(v))) for v in mean.values()):
        return None
    ones = {k: jnp.ones_like(v) for k, v in mean.items()}
    return GridResult(
        steps=np.asarray(ds["step"].values), mean=mean, var={k: 0 * v for k, v in mean.items()},
        count=ones, sigmas=np.asarray(ds["sigma"].values, dtype=float),
        etas=np.asarray(ds["eta"].values, dtype=float),
        init_scales=np.asarray(ds["init_scale"].values, dtype=float), num_seeds=1,
        diverged=np.zeros(mean[names[0]].shape[:3], dtype=int),
    )  # fmt: skip


# ---------------------------------------------------------------- files


def save(ds: xr.Dataset, path: str | Path, *, overwrite: bool = False) -> Path:
    """Writes `ds` to a netCDF-4 file atomically (a temporary file, then a rename).

    A run that fails or is killed never leaves a half-written `path`; an existing `path` is
    replaced only with `overwrite=True`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} exists; pass overwrite=True (--overwrite) to replace it"
        )
    return atomic_write(path, lambda temporary: ds.to_netcdf(temporary, mode="w", engine=ENGINE))


def load(path: str | Path) -> xr.Dataset:
    """Opens a results file written by `save` (or `noisydln run`), fully loaded into memory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist")
    return xr.load_dataset(path, engine=ENGINE)


def summary(ds: xr.Dataset) -> str:
    """One line: the experiment's size, wall time and divergences."""
    cells = math.prod(ds.sizes[d] for d in CELL_DIMS)
    return (
        f"{ds.attrs['title']}: {cells} cells x {ds.attrs['num_seeds']} seeds x "
        f"{int(ds['step'].values[-1])} steps in {ds.attrs['wall_seconds']:.1f} s on "
        f"{ds.attrs['device_count']} x {ds.attrs['device_kind']}; "
        f"{int(ds['diverged'].sum())} trajectories diverged"
    )
