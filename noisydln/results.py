"""Labelled results: `run_experiment(spec) -> xarray.Dataset`, saved to and opened from netCDF.

The Dataset has named dimensions `algorithm, depth, noise, sigma, eta, init_scale, step`
(always kept, length 1 included) and `layer, coord` where a quantity has them. For every
recorded quantity `q` it holds `q_mean`, `q_sem` (standard error of the mean) and `q_count`
(finite trajectories), plus `diverged`; beside them the closed-form predictions that exist
for the problem (`beta_limit`, `threshold`, `imbalance_flow`, the balanced minima at the
limit) and `q_gd_LR`, gradient descent on the expected loss `L_R` from the same start with the
same step: the deterministic reference of the Monte Carlo mean (docs/theory.md s3). The problem
itself (`X`, `y`, `beta_star`) is stored too, so that checks and figures need only the file.
"""

import dataclasses
import datetime
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from noisydln import theory
from noisydln.experiment import Experiment, build_problem
from noisydln.grid import GridResult, chunk_plan, run_grid
from noisydln.problem import Problem, problem_from_data
from noisydln.quantities import DESCRIPTIONS
from noisydln.simulate import SimConfig
from noisydln.stats.limits import is_diagonal, predicted_limit

STATIC_DIMS = ("algorithm", "depth", "noise")
GRID_DIMS = ("sigma", "eta", "init_scale")
CELL_DIMS = STATIC_DIMS + GRID_DIMS
REFERENCE_RULES = ("stochastic_sam", "expected_gd")  # rules whose mean follows GD on L_R
ENGINE = "h5netcdf"


def _quantity_dims(name: str, ndim: int) -> tuple[str, ...]:
    """The named dimensions of one record of a quantity (`imbalance: [layer, coord]`)."""
    return {0: (), 1: ("coord",), 2: ("layer", "coord")}[ndim]


def _noise_label(config: SimConfig) -> str:
    return config.noise or "gaussian"


def _device_description(devices) -> tuple[str, int]:
    devices = devices or jax.local_devices()
    return f"{devices[0].device_kind} ({devices[0].platform})", len(devices)


def _select_devices(count: int | None):
    local = jax.local_devices()
    if count is None:
        return None
    if count > len(local):
        raise ValueError(f"run.devices: {count} devices asked for, {len(local)} available")
    return local[:count]


def _reference_config(config: SimConfig) -> SimConfig:
    """GD on L_R with the same static choices (the deterministic reference trajectory)."""
    keep = tuple(q for q in config.quantities if q != "imbalance_step_residual")
    return dataclasses.replace(
        config, algorithm="expected_gd", noise=None, batch_size=None, quantities=keep or ("beta",)
    )


def run_experiment(
    spec: Experiment, *, progress: Callable[[int, int], None] | None = None
) -> xr.Dataset:
    """Runs every static combination of `spec` and returns the labelled statistics.

    Args:
      spec: the experiment.
      progress: called as `progress(chunks_done, total_chunks)` after every chunk of seeds,
        over all static combinations (the command line draws its progress bar with it).

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
    dtype = {"float32": jnp.float32, "float64": jnp.float64}[spec.run.dtype]
    with jax.enable_x64(spec.run.dtype == "float64"):
        problem = build_problem(spec, dtype)
        devices = _select_devices(spec.run.devices)
        configs = spec.static_configs()
        for config in configs:
            config.validate_for(problem)
        references = {
            c.depth: _reference_config(c)
            for c in configs
            if spec.run.reference and c.algorithm in REFERENCE_RULES
        }
        plans = [_num_chunks(spec, problem, c, devices) for c in configs]
        plans += [1] * len(references)
        total, done = sum(plans), 0

        def report(offset):
            return None if progress is None else (lambda i, _n: progress(offset + i, total))

        key = jax.random.key(spec.grid.seed)
        start = time.perf_counter()
        results = []
        for config, chunks in zip(configs, plans, strict=False):
            results.append(
                _run(key, problem, config, spec, spec.grid.num_seeds, devices, report(done))
            )
            done += chunks
        reference_results = {}
        for depth, config in references.items():
            reference_results[depth] = _run(key, problem, config, spec, 1, devices, report(done))
            done += 1
        wall = time.perf_counter() - start
        return _to_dataset(spec, problem, configs, results, reference_results, wall, devices)


def _num_chunks(spec, problem, config, devices) -> int:
    cells = math.prod(
        len(axis or (0,)) for axis in (spec.grid.sigmas, spec.grid.etas, spec.grid.init_scales)
    )
    num_devices = len(devices or jax.local_devices())
    return chunk_plan(
        spec.grid.num_seeds, cells, config.depth * problem.d, spec.grid.chunk_size, num_devices
    )[1]


def _run(key, problem, config, spec, num_seeds, devices, progress) -> GridResult:
    grid = spec.grid
    return run_grid(
        key, problem, config, num_seeds=num_seeds, sigmas=grid.sigmas, etas=grid.etas,
        init_scales=grid.init_scales, chunk_size=grid.chunk_size if num_seeds > 1 else None,
        devices=devices, progress=progress,
    )  # fmt: skip


# ---------------------------------------------------------------- assembling the Dataset


def _stack(per_combo: list[np.ndarray], shape: tuple[int, ...], fill=np.nan) -> np.ndarray:
    """Stacks `[S, E, I, R, *shape_c]` arrays of the static combinations into
    `[A, L, N, S, E, I, R, *shape]`, NaN-padding a smaller `layer` axis."""
    out = np.full((len(per_combo),) + shape, fill, dtype=per_combo[0].dtype)
    for i, array in enumerate(per_combo):
        out[(i,) + tuple(slice(0, n) for n in array.shape)] = array
    return out


def _to_dataset(spec, problem, configs, results, references, wall, devices) -> xr.Dataset:
    algorithms = list(dict.fromkeys(c.algorithm for c in configs))
    depths = list(dict.fromkeys(c.depth for c in configs))
    noises = list(dict.fromkeys(_noise_label(c) for c in configs))
    static_shape = (len(algorithms), len(depths), len(noises))
    first = results[0]
    steps = first.steps
    max_layers = max(depths) - 1
    coords = {
        "algorithm": algorithms,
        "depth": depths,
        "noise": noises,
        "sigma": first.sigmas,
        "eta": first.etas,
        "init_scale": first.init_scales,
        "step": steps,
        "layer": np.arange(2, max_layers + 2),
        "coord": np.arange(problem.d),
        "time": (("eta", "step"), first.etas[:, None] * steps[None, :]),
    }
    order = [
        (algorithms.index(c.algorithm), depths.index(c.depth), noises.index(_noise_label(c)))
        for c in configs
    ]
    data = {}
    for name in first.mean:
        per = [_grid_arrays(r, name) for r in results]
        inner = max(p[0].shape[4:] for p in per)  # the deepest network's shape
        dims = CELL_DIMS + ("step",) + _quantity_dims(name, len(inner))
        full = (len(first.sigmas), len(first.etas), len(first.init_scales), len(steps)) + inner
        for which, suffix in enumerate(("mean", "sem")):
            stacked = _stack([p[which] for p in per], full)
            data[f"{name}_{suffix}"] = (dims, _place(stacked, order, static_shape))
        counts = _stack([p[2] for p in per], full[:4], fill=0).astype(np.int64)
        data[f"{name}_count"] = (CELL_DIMS + ("step",), _place(counts, order, static_shape))
        shape, meaning = DESCRIPTIONS[name]
        for suffix in ("mean", "sem"):
            data[f"{name}_{suffix}"] += (
                {"long_name": f"{suffix} over seeds of {meaning}", "shape": shape},
            )
    diverged = np.stack([np.asarray(r.diverged) for r in results])
    data["diverged"] = (CELL_DIMS, _place(diverged, order, static_shape))
    data.update(_reference_variables(references, depths, first, max_layers))
    theory_vars = _theory_variables(problem, configs, depths, first, steps, max_layers)
    run_dtype = np.asarray(problem.gram).dtype  # in the run's precision, like every other variable
    data.update({k: (dims, v.astype(run_dtype), a) for k, (dims, v, a) in theory_vars.items()})
    data.update(_problem_variables(problem))
    ds = xr.Dataset(data, coords=coords)
    device_kind, device_count = _device_description(devices)
    from noisydln import __version__  # noqa: PLC0415 (the package imports this module)

    ds.attrs = {
        "title": spec.name,
        "spec": spec.to_toml(),
        "noisydln_version": __version__,
        "jax_version": jax.__version__,
        "device_kind": device_kind,
        "device_count": device_count,
        "wall_seconds": wall,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "num_seeds": spec.grid.num_seeds,
        "dtype": spec.run.dtype,
        "diagonal_design": int(is_diagonal(problem)),
        "conventions": "loss (1/n)||y - X beta||^2; time = eta * step; imbalance = w_l^2 - w_1^2; "
        "sem = sqrt(var / count); theory in docs/theory.md",
    }
    return ds


def _grid_arrays(result: GridResult, name: str):
    mean = np.asarray(result.mean[name])
    count = np.asarray(result.count[name])
    with np.errstate(invalid="ignore", divide="ignore"):
        sem = np.sqrt(np.asarray(result.var[name]) / count)
    per_record = count.reshape(count.shape[:4] + (-1,))[..., 0]
    return mean, sem, per_record


def _place(stacked: np.ndarray, order, static_shape) -> np.ndarray:
    """`[combos, ...]` -> `[A, L, N, ...]` (NaN / 0 where a combination was not run)."""
    fill = 0 if np.issubdtype(stacked.dtype, np.integer) else np.nan
    out = np.full(static_shape + stacked.shape[1:], fill, dtype=stacked.dtype)
    for i, index in enumerate(order):
        out[index] = stacked[i]
    return out


def _reference_variables(references, depths, first, max_layers) -> dict:
    """`q_gd_LR[depth, sigma, eta, init_scale, step, ...]`: GD on L_R from the same start."""
    if not references:
        return {}
    names = next(iter(references.values())).mean
    out = {}
    for name in names:
        per = {d: np.asarray(r.mean[name]) for d, r in references.items()}
        inner = max(a.shape[4:] for a in per.values())
        shape = (len(depths),) + next(iter(per.values())).shape[:4] + inner
        array = np.full(shape, np.nan, dtype=next(iter(per.values())).dtype)
        for depth, values in per.items():
            array[(depths.index(depth),) + tuple(slice(0, n) for n in values.shape)] = values
        dims = ("depth",) + GRID_DIMS + ("step",) + _quantity_dims(name, len(inner))
        meaning = DESCRIPTIONS[name][1]
        out[f"{name}_gd_LR"] = (
            dims,
            array,
            {"long_name": f"GD on L_R from the same start: {meaning}"},
        )
    return out


def _theory_variables(problem, configs, depths, first, steps, max_layers) -> dict:
    """Closed forms where they exist (docs/theory.md s2-s4); NaN where none is known."""
    sigmas, etas, scales = first.sigmas, first.etas, first.init_scales
    d = problem.d
    limit = np.full((len(depths), len(sigmas), len(scales), d), np.nan)
    trace_min = np.full(limit.shape[:3], np.nan)
    sharpness_min = np.full(limit.shape[:3], np.nan)
    flow = np.full(
        (len(depths), len(sigmas), len(etas), len(scales), len(steps), max_layers, d), np.nan
    )
    thresholds = np.zeros((len(depths), len(sigmas)))
    diag = np.asarray(problem.gram_diag, dtype=float)
    for a, depth in enumerate(depths):
        config = next(c for c in configs if c.depth == depth)
        base, _ = config.base_init(d, problem.gram.dtype)
        base = np.asarray(base, dtype=float)
        for i, sigma in enumerate(sigmas):
            thresholds[a, i] = float(theory.threshold(sigma, depth))
            for k, scale in enumerate(scales):
                init = base * scale
                try:
                    beta = predicted_limit(problem, float(sigma), depth, init)
                except ValueError:  # depth >= 3 on a general design: no closed form
                    continue
                limit[a, i, k] = beta
                beta_j = jnp.asarray(beta, problem.gram.dtype)
                trace_min[a, i, k] = float(theory.min_hessian_trace(beta_j, problem, depth))
                sharpness_min[a, i, k] = float(
                    theory.min_average_sharpness(beta_j, problem, sigma, depth)
                )
                if depth == 2:  # Delta(t) = Delta(0) exp(-4 sigma^2 D_i t), t = eta * step
                    start = init[1] ** 2 - init[0] ** 2
                    times = etas[:, None] * steps[None, :]
                    flow[a, i, :, k, :, 0] = start * np.exp(-4 * sigma**2 * diag * times[..., None])
    return {
        "beta_limit": (("depth", "sigma", "init_scale", "coord"), limit,
                       {"long_name": "closed-form limit of beta (shrinkage-thresholding, basin rule, or weighted lasso)"}),
        "threshold": (("depth", "sigma"), thresholds, {"long_name": "threshold of |z| below which the limit is 0"}),
        "imbalance_flow": (("depth", "sigma", "eta", "init_scale", "step", "layer", "coord"), flow,
                           {"long_name": "gradient-flow prediction Delta_0 exp(-4 sigma^2 D_i t) of the mean imbalance (depth 2)"}),
        "hessian_trace_min_at_limit": (("depth", "sigma", "init_scale"), trace_min,
                                       {"long_name": "least Hessian trace over factorisations of the limit"}),
        "sharpness_min_at_limit": (("depth", "sigma", "init_scale"), sharpness_min,
                                   {"long_name": "least average sharpness over factorisations of the limit"}),
    }  # fmt: skip


def _problem_variables(problem: Problem) -> dict:
    return {
        "X": (("sample", "coord"), np.asarray(problem.X), {"long_name": "design"}),
        "y": (("sample",), np.asarray(problem.y), {"long_name": "labels"}),
        "beta_star": (("coord",), np.asarray(problem.beta_star), {"long_name": "teacher (NaN if unknown)"}),
        "z": (("coord",), np.asarray(theory.diagonal_target(problem)),
              {"long_name": "per-coordinate target b_i / Sigma_ii"}),
    }  # fmt: skip


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
            "noise": _noise_label(config),
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
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        ds.to_netcdf(temporary, mode="w", engine=ENGINE)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


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
