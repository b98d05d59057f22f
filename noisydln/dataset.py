"""The labelled Dataset of an experiment: Monte Carlo statistics beside the closed forms.

`build_dataset` turns the `GridResult`s of an experiment's grid runs into an `xarray.Dataset`
with named dimensions `algorithm, depth, noise, sigma, eta, init_scale, step` (always kept,
length 1 included) and `layer, coord` where a quantity has them: `q_mean`, `q_sem`, `q_count`
per recorded quantity, `diverged`, the closed-form predictions (`beta_limit`, `threshold`,
`imbalance_flow`, the balanced minima at the limit; diagonal network only), `q_gd_LR` (GD on
L_R from the same start) and the problem itself (`X`, `y`, `beta_star`, `z`). Each quantity's
dimensions and description come from its network family (`noisydln.networks`): `layer` is the
imbalance's layer `2..L` of the diagonal network, the hidden layer `1..L-1` of `D_l` of a
dense one, whose `imbalance_drift_residual` has its own `imbalance_entry` dimension.
"""

import datetime

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from noisydln import theory
from noisydln.grid import GridResult
from noisydln.problem import Problem
from noisydln.simulate import SimConfig
from noisydln.stats.limits import is_diagonal, predicted_limit

STATIC_DIMS = ("algorithm", "depth", "noise")
GRID_DIMS = ("sigma", "eta", "init_scale")
CELL_DIMS = STATIC_DIMS + GRID_DIMS
CONVENTIONS = {
    "diagonal": "loss (1/n)||y - X beta||^2; time = eta * step; imbalance = w_l^2 - w_1^2; "
    "sem = sqrt(var / count); theory in docs/theory.md",
    "dense": "loss (1/n)||y - X beta||^2; time = eta * step; imbalance D_l = W_(l+1)^T W_(l+1) "
    "- W_l W_l^T of hidden layer l; sem = sqrt(var / count); theory in docs/dense.md",
}


def noise_label(config: SimConfig) -> str:
    return config.noise or "gaussian"


def _device_description(devices) -> tuple[str, int]:
    devices = devices or jax.devices()
    return f"{devices[0].device_kind} ({devices[0].platform})", len(devices)


def _stack(per_combo: list[np.ndarray], shape: tuple[int, ...], fill=np.nan) -> np.ndarray:
    """Stacks `[S, E, I, R, *shape_c]` arrays of the static combinations into
    `[A, L, N, S, E, I, R, *shape]`, NaN-padding a smaller `layer` axis."""
    out = np.full((len(per_combo),) + shape, fill, dtype=per_combo[0].dtype)
    for i, array in enumerate(per_combo):
        out[(i,) + tuple(slice(0, n) for n in array.shape)] = array
    return out


def build_dataset(spec, problem, configs, results, references, wall, devices) -> xr.Dataset:
    """The Dataset of an experiment (see the module docstring).

    Args:
      spec: the `Experiment`; problem: its `Problem`.
      configs, results: the `SimConfig` and `GridResult` of every static combination.
      references: depth -> `GridResult` of GD on L_R (may be empty).
      wall: seconds the runs took; devices: the devices they ran on (None: the default).
    """
    algorithms = list(dict.fromkeys(c.algorithm for c in configs))
    depths = list(dict.fromkeys(c.depth for c in configs))
    noises = list(dict.fromkeys(noise_label(c) for c in configs))
    static_shape = (len(algorithms), len(depths), len(noises))
    first = results[0]
    steps = first.steps
    max_layers = max(depths) - 1
    family = configs[0].family()  # one family per experiment (`network`, `widths`)
    coords = {
        "algorithm": algorithms,
        "depth": depths,
        "noise": noises,
        "sigma": first.sigmas,
        "eta": first.etas,
        "init_scale": first.init_scales,
        "step": steps,
        "layer": family.layer_coordinate(max(depths)),
        "coord": np.arange(problem.d),
        "time": (("eta", "step"), first.etas[:, None] * steps[None, :]),
    }
    order = [
        (algorithms.index(c.algorithm), depths.index(c.depth), noises.index(noise_label(c)))
        for c in configs
    ]
    data = {}
    for name in first.mean:
        per = [_grid_arrays(r, name) for r in results]
        inner = max(p[0].shape[4:] for p in per)  # the deepest network's shape
        dims = CELL_DIMS + ("step",) + family.dims(name, len(inner))
        full = (len(first.sigmas), len(first.etas), len(first.init_scales), len(steps)) + inner
        for which, suffix in enumerate(("mean", "sem")):
            stacked = _stack([p[which] for p in per], full)
            data[f"{name}_{suffix}"] = (dims, _place(stacked, order, static_shape))
        counts = _stack([p[2] for p in per], full[:4], fill=0).astype(np.int64)
        data[f"{name}_count"] = (CELL_DIMS + ("step",), _place(counts, order, static_shape))
        shape, meaning = family.describe(name)
        for suffix in ("mean", "sem"):
            data[f"{name}_{suffix}"] += (
                {"long_name": f"{suffix} over seeds of {meaning}", "shape": shape},
            )
    diverged = np.stack([np.asarray(r.diverged) for r in results])
    data["diverged"] = (CELL_DIMS, _place(diverged, order, static_shape))
    data.update(_reference_variables(references, depths, first, family))
    if family.name == "diagonal":  # the closed forms of docs/theory.md s2-s4
        theory_vars = _theory_variables(problem, configs, depths, first, steps, max_layers)
        run_dtype = np.asarray(problem.gram).dtype  # the run's precision, like every variable
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
        "process_count": jax.process_count(),
        "wall_seconds": wall,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "num_seeds": spec.grid.num_seeds,
        "dtype": spec.run.dtype,
        "diagonal_design": int(is_diagonal(problem)),
        "network": family.name,
        "conventions": CONVENTIONS.get(family.name, CONVENTIONS["diagonal"].split("; imb")[0]),
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


def _reference_variables(references, depths, first, family) -> dict:
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
        dims = ("depth",) + GRID_DIMS + ("step",) + family.dims(name, len(inner))
        meaning = family.describe(name)[1]
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
