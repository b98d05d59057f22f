"""`run_experiment`'s labelled Dataset vs the `run_grid` calls it stands for, vs closed forms
computed independently in NumPy, and vs itself after a trip through a netCDF file."""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import noisydln
from noisydln import results
from noisydln.experiment import Experiment, build_problem

TINY = """
name = "tiny"
[problem]
n = 20
d = 4
design = "orthogonal"
beta_star = [1.0, -0.5, 0.05, 0.0]
seed = 5
[simulation]
num_steps = 200
record_every = 50
init = [[0.9, 0.9, 0.9, 0.9], [0.2, -0.2, 0.2, 0.2]]
noise = "gaussian"
quantities = ["beta", "imbalance", "loss"]
[grid]
num_seeds = 32
sigmas = [0.1, 0.3]
etas = [0.01, 0.02]
init_scales = [1.0, 0.5]
seed = 3
[run]
dtype = "float64"
"""
QUANTITIES = ("beta", "imbalance", "loss")
DIMS = ("algorithm", "depth", "noise", "sigma", "eta", "init_scale", "step")


def _with(spec: Experiment, **sections) -> Experiment:
    """`spec` with some keys of some sections replaced: `_with(spec, grid={"depths": (2, 3)})`."""
    parts = {k: dataclasses.replace(getattr(spec, k), **v) for k, v in sections.items()}
    return dataclasses.replace(spec, **parts)


def _run_grid(spec: Experiment, problem, config=None, key=None) -> noisydln.GridResult:
    """The `run_grid` call that one static combination of `spec` stands for."""
    grid = spec.grid
    return noisydln.run_grid(
        jax.random.key(grid.seed) if key is None else key,
        problem,
        spec.simulation if config is None else config,
        num_seeds=grid.num_seeds,
        sigmas=grid.sigmas,
        etas=grid.etas,
        init_scales=grid.init_scales,
        chunk_size=grid.chunk_size,
    )


def _assert_cell_is(ds: xr.Dataset, labels: dict, result: noisydln.GridResult, depth: int):
    """The Dataset's numbers at one static combination are exactly those of `result`."""
    cell = ds.sel(labels)
    for name in QUANTITIES:
        mean = cell[f"{name}_mean"]
        sem = cell[f"{name}_sem"]
        if "layer" in mean.dims:  # the deeper networks' extra layers are NaN here
            assert np.all(np.isnan(mean.isel(layer=slice(depth - 1, None)).values))
            mean, sem = mean.isel(layer=slice(0, depth - 1)), sem.isel(layer=slice(0, depth - 1))
        count = np.asarray(result.count[name])
        assert np.array_equal(mean.values, np.asarray(result.mean[name])), name
        assert np.array_equal(sem.values, np.sqrt(np.asarray(result.var[name]) / count)), name
        stored = cell[f"{name}_count"].values  # [S, E, I, R]: one count per record
        stored = np.broadcast_to(
            stored.reshape(stored.shape + (1,) * (count.ndim - 4)), count.shape
        )
        assert np.array_equal(stored, count), name
    assert np.array_equal(cell["diverged"].values, result.diverged)


@pytest.fixture(scope="module")
def spec():
    return Experiment.from_toml_text(TINY)


@pytest.fixture(scope="module")
def problem(spec):
    return build_problem(spec, jnp.float64)


@pytest.fixture(scope="module")
def ds(spec):
    return results.run_experiment(spec)


@pytest.fixture(scope="module")
def grid(spec, problem):
    return _run_grid(spec, problem)


@pytest.fixture(scope="module")
def spec32(spec):
    """The tiny spec in float32 with an algorithm axis (gd takes no noise law); no reference
    run, so that it compiles two programs only."""
    return _with(
        spec,
        simulation={"noise": None},
        grid={"algorithms": ("stochastic_sam", "gd")},
        run={"dtype": "float32", "reference": False},
    )


@pytest.fixture(scope="module")
def ds32(spec32):
    return results.run_experiment(spec32)


# ---------------------------------------------------------------- the Monte Carlo statistics


def test_dataset_vs_its_run_grid_call(ds, grid, spec, problem):
    labels = {"algorithm": "stochastic_sam", "depth": 2, "noise": "gaussian"}
    _assert_cell_is(ds, labels, grid, depth=2)
    assert np.all(ds["beta_count"].values == spec.grid.num_seeds)
    expected = {f"{q}_{s}" for q in QUANTITIES for s in ("mean", "sem", "count")}
    expected |= {f"{q}_gd_LR" for q in QUANTITIES} | {"diverged", "X", "y", "beta_star", "z"}
    expected |= {"beta_limit", "threshold", "imbalance_flow"}
    expected |= {"hessian_trace_min_at_limit", "sharpness_min_at_limit"}
    assert set(ds.data_vars) == expected
    # the comparison can fail: another key or another sigma gives other numbers
    other_key = _run_grid(spec, problem, key=jax.random.key(spec.grid.seed + 1))
    assert not np.array_equal(ds["beta_mean"].values[0, 0, 0], np.asarray(other_key.mean["beta"]))
    other_sigmas = _with(spec, grid={"sigmas": (0.1, 0.31)})
    other_sigma = _run_grid(other_sigmas, problem)
    assert not np.array_equal(ds["beta_mean"].values[0, 0, 0], np.asarray(other_sigma.mean["beta"]))


def test_dataset_labels_vs_spec(ds, spec, problem):
    assert ds["beta_mean"].dims == DIMS + ("coord",)
    assert ds["beta_sem"].dims == DIMS + ("coord",)
    assert ds["imbalance_mean"].dims == DIMS + ("layer", "coord")
    assert ds["loss_mean"].dims == DIMS
    assert ds["beta_count"].dims == DIMS
    assert ds["diverged"].dims == DIMS[:-1]
    assert ds["beta_gd_LR"].dims == ("depth", "sigma", "eta", "init_scale", "step", "coord")
    assert ds["beta_limit"].dims == ("depth", "sigma", "init_scale", "coord")
    assert ds["algorithm"].values.tolist() == ["stochastic_sam"]
    assert ds["depth"].values.tolist() == [2]
    assert ds["noise"].values.tolist() == ["gaussian"]
    assert ds["sigma"].values.tolist() == [0.1, 0.3]
    assert ds["eta"].values.tolist() == [0.01, 0.02]
    assert ds["init_scale"].values.tolist() == [1.0, 0.5]
    assert ds["step"].values.tolist() == [0, 50, 100, 150, 200]
    assert ds["layer"].values.tolist() == [2]
    assert ds["coord"].values.tolist() == [0, 1, 2, 3]
    assert np.array_equal(ds["time"].values, np.outer([0.01, 0.02], [0, 50, 100, 150, 200]))
    assert ds.attrs["spec"] == spec.to_toml()
    assert results.spec_of(ds) == spec
    assert ds.attrs["num_seeds"] == 32 and ds.attrs["dtype"] == "float64"
    rebuilt = results.problem_of(ds)
    for field in ("X", "y", "gram", "xty", "yty", "beta_star"):
        assert np.array_equal(
            np.asarray(getattr(rebuilt, field)), np.asarray(getattr(problem, field))
        )


# ---------------------------------------------------------------- static axes


def test_depths_axis_vs_one_run_grid_per_depth(spec, problem):
    deep = _with(spec, simulation={"init": 0.5}, grid={"depths": (2, 3)})
    ds = results.run_experiment(deep)
    assert ds["depth"].values.tolist() == [2, 3]
    assert ds["layer"].values.tolist() == [2, 3] and ds.sizes["layer"] == 2
    assert np.all(np.isnan(ds["imbalance_mean"].sel(depth=2, layer=3).values))
    assert np.all(np.isnan(ds["imbalance_gd_LR"].sel(depth=2, layer=3).values))
    assert np.all(np.isfinite(ds["imbalance_mean"].sel(depth=3).values))
    for depth in (2, 3):
        config = dataclasses.replace(deep.simulation, depth=depth)
        labels = {"algorithm": "stochastic_sam", "depth": depth, "noise": "gaussian"}
        _assert_cell_is(ds, labels, _run_grid(deep, problem, config), depth)
    # back to the engine's types: one GridResult per depth, with its own layers
    back = results.grid_results(ds)
    assert [(labels["depth"], config.depth) for labels, _, config in back] == [(2, 2), (3, 3)]
    for _, result, config in back:
        assert result.mean["imbalance"].shape[-2:] == (config.depth - 1, 4)
    d2, d3 = ds["beta_mean"].sel(depth=2).values, ds["beta_mean"].sel(depth=3).values
    assert not np.array_equal(d2, d3)


def test_noises_axis_vs_one_run_grid_per_noise(spec, problem, ds):
    assert spec.simulation.noise == "gaussian"  # so the gaussian program is compiled once
    laws = _with(spec, grid={"noises": ("gaussian", "rademacher")})
    both = results.run_experiment(laws)
    assert both["noise"].values.tolist() == ["gaussian", "rademacher"]
    for law in ("gaussian", "rademacher"):
        config = dataclasses.replace(laws.simulation, noise=law)
        labels = {"algorithm": "stochastic_sam", "depth": 2, "noise": law}
        _assert_cell_is(both, labels, _run_grid(laws, problem, config), 2)
    # the same numbers as the run without a noises axis
    assert np.array_equal(
        both["beta_mean"].sel(noise="gaussian").values, ds["beta_mean"].sel(noise="gaussian").values
    )
    assert not np.array_equal(
        both["beta_mean"].sel(noise="gaussian").values,
        both["beta_mean"].sel(noise="rademacher").values,
    )


def test_algorithms_axis_vs_one_run_grid_per_algorithm(spec32, ds32):
    assert ds32["algorithm"].values.tolist() == ["stochastic_sam", "gd"]
    with jax.enable_x64(False):  # as run_experiment runs a float32 spec
        problem32 = build_problem(spec32, jnp.float32)
        for rule in ("stochastic_sam", "gd"):
            config = dataclasses.replace(spec32.simulation, algorithm=rule)
            labels = {"algorithm": rule, "depth": 2, "noise": "gaussian"}
            _assert_cell_is(ds32, labels, _run_grid(spec32, problem32, config), 2)
    gd = ds32.sel(algorithm="gd")  # deterministic and blind to sigma: every seed the same
    assert np.array_equal(
        gd["beta_mean"].sel(sigma=0.1).values, gd["beta_mean"].sel(sigma=0.3).values
    )
    assert np.all(gd["beta_sem"].values == 0)
    sam = ds32.sel(algorithm="stochastic_sam")
    assert np.all(sam["beta_sem"].isel(step=-1).values > 0)
    assert not np.array_equal(sam["beta_mean"].values, gd["beta_mean"].values)


# ---------------------------------------------------------------- predictions vs NumPy


def _numpy_problem(ds: xr.Dataset):
    """`(Sigma, b, D)` from the stored design and labels, in NumPy."""
    X, y = ds["X"].values.astype(np.float64), ds["y"].values.astype(np.float64)
    n = X.shape[0]
    gram = X.T @ X / n
    return gram, X.T @ y / n, np.diag(gram)


def test_beta_limit_vs_numpy_soft_thresholding(ds):
    _, b, D = _numpy_problem(ds)
    z = b / D
    sigmas = ds["sigma"].values
    expected = np.sign(z) * np.maximum(np.abs(z)[None] - sigmas[:, None] ** 2, 0)  # [S, d]
    for scale in ds["init_scale"].values:
        got = ds["beta_limit"].sel(depth=2, init_scale=scale).values
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ds["threshold"].sel(depth=2).values, sigmas**2, rtol=1e-15)
    # the case is not trivial: each sigma thresholds some coordinates and keeps others
    zero = np.isclose(expected, 0, atol=1e-12)
    assert zero.any(axis=1).all() and (~zero).any(axis=1).all() and (zero[0] != zero[1]).any()
    wrong = np.sign(z) * np.maximum(np.abs(z)[None] - (1.1 * sigmas[:, None]) ** 2, 0)
    assert not np.allclose(ds["beta_limit"].sel(depth=2).values[:, 0], wrong, rtol=1e-6)


def test_imbalance_flow_vs_numpy_exponential(ds, spec):
    _, _, D = _numpy_problem(ds)
    sigma, eta, scale, step = (ds[k].values for k in ("sigma", "eta", "init_scale", "step"))
    init = np.asarray(spec.simulation.init)[None] * scale[:, None, None]  # [I, depth, d]
    start = init[:, 1] ** 2 - init[:, 0] ** 2  # [I, d]: w_2^2 - w_1^2, as recorded
    rate = 4 * sigma[:, None, None, None, None] ** 2 * D  # [S, 1, 1, 1, d]
    t = (eta[:, None] * step[None, :])[None, :, None, :, None]  # [1, E, 1, R, 1]
    expected = start[None, None, :, None, :] * np.exp(-rate * t)  # [S, E, I, R, d]
    got = ds["imbalance_flow"].sel(depth=2, layer=2).values
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    assert np.all(np.abs(start) > 0.01)
    # at step 0 every seed starts at init: the recorded mean is the flow's Delta_0
    recorded = ds["imbalance_mean"].sel(algorithm="stochastic_sam", noise="gaussian", depth=2)
    np.testing.assert_allclose(
        recorded.sel(step=0, layer=2).values, expected[..., 0, :], rtol=1e-15
    )
    wrong = start[None, None, :, None, :] * np.exp(-1.21 * rate * t)
    assert not np.allclose(got, wrong, rtol=1e-6)


def _numpy_gd_on_expected_loss(ds, spec, sigma_factor=1.0):
    """Depth-2 GD on `L_R` (docs/theory.md s2: `grad L_R = grad L + 2 sigma^2 D * W`), every
    cell at once, recorded like the run: `(beta, imbalance)`, `[S, E, I, R, d]` each."""
    gram, b, D = _numpy_problem(ds)
    sigma = ds["sigma"].values[:, None, None, None] * sigma_factor  # [S, 1, 1, 1]
    eta = ds["eta"].values[None, :, None, None]
    scale = ds["init_scale"].values[None, None, :, None]
    init = np.asarray(spec.simulation.init)
    w1 = np.broadcast_to(init[0] * scale, (2, 2, 2, 4)).copy()
    w2 = np.broadcast_to(init[1] * scale, (2, 2, 2, 4)).copy()
    betas, imbalances = [], []
    for step in range(spec.simulation.num_steps + 1):
        if step % spec.simulation.record_every == 0:
            betas.append(w1 * w2)
            imbalances.append(w2**2 - w1**2)
        r = b - (w1 * w2) @ gram
        g1 = -2 * r * w2 + 2 * sigma**2 * D * w1
        g2 = -2 * r * w1 + 2 * sigma**2 * D * w2
        w1, w2 = w1 - eta * g1, w2 - eta * g2
    return np.stack(betas, axis=3), np.stack(imbalances, axis=3)


def test_gd_on_expected_loss_vs_numpy_loop(ds, spec):
    beta, imbalance = _numpy_gd_on_expected_loss(ds, spec)
    got = ds["beta_gd_LR"].sel(depth=2).values
    np.testing.assert_allclose(got, beta, rtol=1e-10, atol=1e-12)
    got_imbalance = ds["imbalance_gd_LR"].sel(depth=2, layer=2).values
    np.testing.assert_allclose(got_imbalance, imbalance, rtol=1e-10, atol=1e-12)
    assert np.abs(beta[..., -1, :] - beta[..., 0, :]).max() > 0.1  # it moved
    wrong, _ = _numpy_gd_on_expected_loss(ds, spec, sigma_factor=1.1)
    assert not np.allclose(got, wrong, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- files


def _assert_same_numbers(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        x, y = a[name].values, b[name].values
        if x.dtype.kind in "fiu":
            assert x.dtype == y.dtype, name
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
        else:
            assert x.tolist() == y.tolist(), name


@pytest.mark.parametrize("which", ["ds", "ds32"])
def test_load_vs_save(which, request, tmp_path):
    original = request.getfixturevalue(which)
    path = results.save(original, tmp_path / "run.nc")
    assert path == tmp_path / "run.nc" and os.listdir(tmp_path) == ["run.nc"]
    back = results.load(path)
    xr.testing.assert_identical(back, original)
    _assert_same_numbers(back, original)
    assert back.attrs["spec"] == original.attrs["spec"]


def test_float32_spec_vs_float32_variables(ds32, ds, spec):
    assert ds32.attrs["dtype"] == "float32"
    for name, variable in ds32.data_vars.items():
        if variable.dtype.kind == "f":
            assert variable.dtype == np.float32, name
        else:
            assert variable.dtype == ds[name].dtype, name
    float64_vars = {k for k, v in ds.data_vars.items() if v.dtype.kind == "f"}
    assert all(ds[k].dtype == np.float64 for k in float64_vars)
    without_reference = {k for k in float64_vars if not k.endswith("_gd_LR")}
    assert {k for k, v in ds32.data_vars.items() if v.dtype.kind == "f"} == without_reference
    # single precision computes the same things, to float32 accuracy (on its own float32 problem)
    _, b, D = _numpy_problem(ds32)
    z, sigmas = b / D, ds32["sigma"].values[:, None]
    limit = np.sign(z) * np.maximum(np.abs(z) - sigmas**2, 0)
    np.testing.assert_allclose(ds32["beta_limit"].sel(depth=2).values[:, 0], limit, atol=1e-6)
    init = np.asarray(spec.simulation.init, np.float32)
    start = ds32["beta_mean"].sel(step=0, init_scale=1.0).values
    assert np.array_equal(start, np.broadcast_to(init[0] * init[1], start.shape))


def test_save_vs_an_existing_file(ds, tmp_path):
    path = tmp_path / "run.nc"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        results.save(ds, path)
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["run.nc"]
    results.save(ds, path, overwrite=True)
    xr.testing.assert_identical(results.load(path), ds)
    assert os.listdir(tmp_path) == ["run.nc"]


def test_failing_write_vs_the_folder(ds, tmp_path, monkeypatch):
    written = []

    def half_write(self, target, *args, **kwargs):
        written.append(str(target))
        with open(target, "wb") as file:
            file.write(b"\x89HDF half a file")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", half_write)
    with pytest.raises(OSError, match="disk full"):
        results.save(ds, tmp_path / "new" / "run.nc")
    assert os.listdir(tmp_path / "new") == []
    existing = tmp_path / "old.nc"
    existing.write_bytes(b"the previous results")
    with pytest.raises(OSError, match="disk full"):
        results.save(ds, existing, overwrite=True)
    assert existing.read_bytes() == b"the previous results"
    assert sorted(os.listdir(tmp_path)) == ["new", "old.nc"]
    # the failure happened where it matters: while a temporary file beside the target was written
    assert len(written) == 2 and all(w.endswith(".part") for w in written)
    assert os.path.dirname(written[0]) == str(tmp_path / "new")


def test_grid_results_of_a_file_vs_run_grid(ds, grid, spec, tmp_path):
    back = results.load(results.save(ds, tmp_path / "run.nc"))
    [(labels, result, config)] = results.grid_results(back)
    assert labels == {"algorithm": "stochastic_sam", "depth": 2, "noise": "gaussian"}
    assert config == spec.simulation
    for name in QUANTITIES:
        assert np.array_equal(np.asarray(result.mean[name]), np.asarray(grid.mean[name])), name
        assert np.array_equal(np.asarray(result.count[name]), np.asarray(grid.count[name])), name
    se, se_grid = noisydln.stats.standard_error(result), noisydln.stats.standard_error(grid)
    for name in QUANTITIES:
        np.testing.assert_allclose(se[name], se_grid[name], rtol=1e-12, atol=0)
        assert np.all(se_grid[name][:, :, :, 1:] > 0)  # a relative comparison of real numbers
    for axis in ("steps", "sigmas", "etas", "init_scales", "diverged"):
        assert np.array_equal(getattr(result, axis), getattr(grid, axis)), axis
    assert result.num_seeds == grid.num_seeds


def _assert_same_rows(got, want):
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        assert (a.claim, a.quantity, a.passed, a.note) == (b.claim, b.quantity, b.passed, b.note)
        for x, y in zip(a[2:6], b[2:6], strict=True):
            assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-12), (a, b)


def test_check_limit_of_dataset_vs_of_grid_result(ds, grid, problem, spec, tmp_path):
    want = noisydln.stats.check_limit(grid, problem, spec.simulation).rows
    _assert_same_rows(noisydln.stats.check_limit(ds).rows, want)
    back = results.load(results.save(ds, tmp_path / "run.nc"))
    _assert_same_rows(noisydln.stats.check_limit(back).rows, want)
