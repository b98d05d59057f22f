"""A dense-network spec end to end: `run_experiment`'s Dataset against the `run_grid` calls it
stands for (bit for bit), against itself after a netCDF file, and `noisydln run SPEC -o OUT`
against `run_experiment` (float32, the default dtype)."""

import contextlib
import dataclasses
import io

import jax
import numpy as np
import pytest

import noisydln
from noisydln import cli, plot, results
from noisydln.experiment import Experiment, build_problem

SPEC = """
name = "dense-tiny"
[problem]
n = 20
d = 4
k = 2
seed = 5
[simulation]
network = "dense"
widths = [3]
num_steps = 20
record_every = 10
eta = 0.02
init = 0.5
quantities = ["beta", "imbalance_norm", "weighted_gap_trace", "loss", "imbalance_drift_residual"]
[grid]
num_seeds = 32
sigmas = [0.0, 0.3]
init_scales = [0.5, 0.8]
seed = 3
"""
DIMS = ("algorithm", "depth", "noise", "sigma", "eta", "init_scale", "step")


@pytest.fixture(scope="module")
def run():
    """`(spec, dataset)` of `run_experiment` on SPEC (float32)."""
    spec = Experiment.from_toml_text(SPEC)
    return spec, results.run_experiment(spec)


def test_dataset_vs_run_grid_bit_for_bit(run):
    spec, ds = run
    with jax.enable_x64(False):
        problem = build_problem(spec, np.float32)
        key = jax.random.key(spec.grid.seed)
        grid = dict(num_seeds=32, sigmas=spec.grid.sigmas, init_scales=spec.grid.init_scales)
        direct = noisydln.run_grid(key, problem, spec.simulation, **grid)
        reference_config = dataclasses.replace(
            spec.simulation, algorithm="expected_gd", quantities=spec.simulation.quantities[:-1]
        )
        reference = noisydln.run_grid(key, problem, reference_config, **{**grid, "num_seeds": 1})
    cell = ds.sel(algorithm="stochastic_sam", depth=2, noise="gaussian")
    for name in spec.simulation.quantities:
        mean, sem = cell[f"{name}_mean"], cell[f"{name}_sem"]
        count = np.asarray(direct.count[name])
        assert np.array_equal(mean.values, np.asarray(direct.mean[name]), equal_nan=True), name
        assert np.array_equal(sem.values, np.sqrt(np.asarray(direct.var[name]) / count)), name
    for name in reference_config.quantities:  # GD on L_R from the same start, beside the means
        stored = ds[f"{name}_gd_LR"].sel(depth=2).values
        assert np.array_equal(stored, np.asarray(reference.mean[name])), name
    # the quantities' own dimensions; no closed form of the diagonal family beside them
    assert ds["beta_mean"].dims == DIMS + ("coord",)
    assert ds["imbalance_norm_mean"].dims == DIMS + ("layer",)
    assert ds["imbalance_drift_residual_mean"].dims == DIMS + ("imbalance_entry",)
    assert ds["imbalance_drift_residual_mean"].sizes["imbalance_entry"] == 9  # D_1: [3, 3]
    assert ds["layer"].values.tolist() == [1] and ds.attrs["network"] == "dense"
    assert "beta_limit" not in ds and "imbalance_flow" not in ds
    assert plot.supported_figures(ds) == []  # every figure draws the diagonal closed forms
    assert ds["beta_mean"].dtype == np.float32
    # and back to the engine's types
    ((labels, result, config),) = results.grid_results(ds)
    assert config == spec.simulation and labels["depth"] == 2
    for name in spec.simulation.quantities:
        assert np.array_equal(np.asarray(result.mean[name]), np.asarray(direct.mean[name])), name


def test_file_and_command_line_vs_run_experiment(run, tmp_path):
    spec, ds = run
    path = results.save(ds, tmp_path / "saved.nc")
    again = results.load(path)
    for name in ds.data_vars:
        assert np.array_equal(again[name].values, ds[name].values, equal_nan=True), name
    spec_path = tmp_path / "dense.toml"
    spec_path.write_text(SPEC)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["run", str(spec_path), "-o", str(tmp_path / "cli.nc"), "--quiet"])
    assert status == 0, err.getvalue()
    assert out.getvalue().rstrip().endswith(f"saved to {tmp_path / 'cli.nc'}")
    from_cli = results.load(tmp_path / "cli.nc")
    for name in ds.data_vars:
        assert np.array_equal(from_cli[name].values, ds[name].values, equal_nan=True), name
