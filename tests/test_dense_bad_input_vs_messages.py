"""Bad input for dense networks against the error it must give: a ValueError naming the argument
(`SimConfig`, the rules, `run_grid`), a spec error naming the key, the command line's one line.

Nothing here compiles a grid (every error comes before), so the file is cheap.
"""

import contextlib
import io

import jax
import numpy as np
import pytest

import noisydln
from noisydln import algorithms, cli, networks
from noisydln.experiment import Experiment, SpecError

GOOD = dict(network="dense", widths=(3, 2), num_steps=10, record_every=5)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"widths": (3, 0)}, "widths"),
        ({"widths": (3, -2)}, "widths"),
        ({"widths": (3, 1.5)}, "widths"),
        ({"widths": (True, 2)}, "widths"),
        ({"widths": "32"}, "widths"),
        ({"widths": ()}, "widths"),
        ({"widths": None}, "widths must be given"),
        ({"depth": 2}, r"depth \(2\) does not match widths \(3, 2\)"),
        ({"depth": 4}, r"depth \(4\) does not match"),
        ({"network": "sparse"}, "network must be one of"),
        ({"network": "diagonal"}, "widths: only a dense network"),
        ({"init": np.ones((3, 4))}, "init must be a scale or a tuple of matrices"),
        ({"init": (np.ones((3, 4)), np.ones((2, 3)))}, "one matrix per layer"),
        (
            {"init": (np.ones((3, 4)), np.ones((2, 2)), np.ones((1, 2)))},
            r"init must be matrices of shapes",
        ),
        (
            {"init": (np.ones((3, 4)), np.ones((2, 3)), np.ones((2, 2)))},
            r"init must be matrices of shapes",
        ),
        (
            {"init": (np.ones(3), np.ones((2, 3)), np.ones((1, 2)))},
            r"init must be matrices of shapes",
        ),
        ({"init": (np.full((3, 4), np.nan), np.ones((2, 3)), np.ones((1, 2)))}, r"init\[0\]"),
        ({"init": "0.5"}, "init"),
        ({"init_seed": -1}, "init_seed"),
        ({"init_seed": 0.5}, "init_seed"),
        (
            {"init": (np.ones((3, 4)), np.ones((2, 3)), np.ones((1, 2))), "init_seed": 1},
            "init_seed",
        ),
        ({"quantities": ("beta", "imbalance")}, "imbalance is not a quantity of the dense network"),
        ({"quantities": ("basin",)}, "basin is not a quantity of the dense network"),
        ({"quantities": ("imbalance_step_residual",)}, "imbalance_step_residual is not a quantity"),
        ({"quantities": ("beta", "bogus")}, "quantities must be a non-empty subset"),
    ],
)
def test_bad_dense_configs_name_the_argument(changes, match):
    with pytest.raises(ValueError, match=match):
        noisydln.SimConfig(**{**GOOD, **changes})


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"widths": (3,)}, "widths: only a dense network"),
        ({"init_seed": 0}, "init_seed: the diagonal network"),
        (
            {"quantities": ("beta", "imbalance_norm")},
            "imbalance_norm is not a quantity of the diagonal",
        ),
        (
            {"quantities": ("imbalance_drift_residual",)},
            "imbalance_drift_residual is not a quantity",
        ),
    ],
)
def test_bad_diagonal_configs_name_the_argument(changes, match):
    with pytest.raises(ValueError, match=match):
        noisydln.SimConfig(num_steps=10, record_every=5, **changes)


def test_depth_and_quantities_default_to_the_network(key):
    config = noisydln.SimConfig(**GOOD)
    assert config.depth == 3 and config.quantities == networks.Dense.quantities
    assert noisydln.SimConfig(**GOOD, depth=3) == config
    assert (
        noisydln.SimConfig().depth == 2 and noisydln.SimConfig().quantities == noisydln.QUANTITIES
    )
    # a start given as matrices is checked against the problem's d before anything runs
    init = (np.ones((3, 5)), np.ones((2, 3)), np.ones((1, 2)))
    problem = noisydln.make_problem(key, 20, 4, k=1)
    with pytest.raises(
        ValueError, match=r"init must start with W_1 of shape \[h_1, d\] = \(3, 4\)"
    ):
        noisydln.run_grid(key, problem, noisydln.SimConfig(**GOOD, init=init), num_seeds=16)


def test_rule_options_a_rule_does_not_take_are_named():
    with pytest.raises(ValueError, match=r"got unknown \['noise'\]"):
        algorithms.get_rule("gd", noise="rademacher", network=networks.get("dense", (2,)))
    with pytest.raises(ValueError, match="network must be a noisydln.networks.Network"):
        algorithms.get_rule("stochastic_sam", network="dense")
    rule = algorithms.get_rule("stochastic_sam", network=networks.get("dense", (2,)))
    assert rule.keywords == {"network": networks.Dense((2,))}


SPEC = """\
[problem]
n = 20
d = 4
[simulation]
network = "dense"
widths = [3, 2]
num_steps = 10
record_every = 5
"""


def spec_with(extra: str) -> str:
    """`SPEC` with the line `extra` in `[simulation]` (replacing the key's line), or a section."""
    if extra.startswith("["):
        return SPEC + extra + "\n"
    key = extra.split(" = ")[0]
    lines = [line for line in SPEC.splitlines() if not line.startswith(key + " =")]
    at = lines.index("[simulation]") + 1
    return "\n".join(lines[:at] + [extra] + lines[at:]) + "\n"


@pytest.mark.parametrize(
    "extra,match",
    [
        ("widths = [3, 0]", r"simulation.widths\[1\]: must be an integer >= 1"),
        ('widths = "3"', "simulation.widths: must be a non-empty list"),
        ("depth = 2", r"simulation.depth \(2\) does not match widths"),
        ('network = "convolutional"', "simulation.network: must be one of"),
        (
            'quantities = ["imbalance"]',
            "simulation.quantities: imbalance is not a quantity of the dense",
        ),
        ("init = [[[1.0, 1.0, 1.0]], [[1.0]]]", "simulation.init must hold one matrix per layer"),
        ("init = [[[1.0, 1.0]], [[1.0]], [[1.0]]]", "simulation.init must be matrices of shapes"),
        (
            "init = [[[1.0, 1.0]], [[1.0, 2.0], [3.0]]]",
            r"simulation.init\[1\]: must be a rectangular",
        ),
        (
            "init = [[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [[1.0, 1.0]]]",
            "simulation.init: W_1 must have d = 4 columns, got 3",
        ),
        ("init_seed = -3", "simulation.init_seed: must be an integer >= 0"),
        ("[grid]\ndepths = [3, 4]", "grid.depths: simulation.widths fixes the depth"),
    ],
)
def test_bad_dense_specs_name_the_key_and_give_one_cli_line(tmp_path, extra, match):
    text = spec_with(extra)
    with pytest.raises(SpecError, match=match):
        Experiment.from_toml_text(text)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["run", str(path), "-o", str(tmp_path / "never.nc")])
    lines = err.getvalue().strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("noisydln: error: "), (
        err.getvalue()
    )
    assert "Traceback" not in err.getvalue() and not (tmp_path / "never.nc").exists()


def test_good_dense_spec_round_trips_through_toml():
    init = "[[[0.5, -0.5, 0.25, 1.0], [0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0]], [[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]], [[1.0, -1.0]]]"
    for extra in ("init = 0.3\ninit_seed = 7", f"init = {init}"):
        spec = Experiment.from_toml_text(spec_with(extra))
        again = Experiment.from_toml_text(spec.to_toml())
        assert again == spec and again.to_toml() == spec.to_toml()
        assert spec.simulation.depth == 3 and spec.simulation.widths == (3, 2)
    assert np.asarray(spec.simulation.init[1]).shape == (2, 3)
    with jax.enable_x64(False):  # checks a start of matrices against the problem before compiling
        assert len(noisydln.results.experiment_plans(spec)) == 2  # the run and GD on L_R


def test_diagonal_checks_refuse_a_dense_run(key):
    from noisydln.stats import estimators

    config = noisydln.SimConfig(**GOOD)
    problem = noisydln.make_problem(key, 20, 4, k=1)
    with pytest.raises(ValueError, match="network = 'dense'"):
        estimators.require_quantities(None, problem, config, ("beta",), "")
