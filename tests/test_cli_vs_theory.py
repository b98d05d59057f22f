"""The `noisydln` command line against the theory functions it reports."""

import jax
import pytest

import noisydln
from noisydln import cli, theory


def test_default_job_prints_the_closed_forms(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    problem = noisydln.make_problem(jax.random.key(0), 100, 20, k=3)
    row = next(line for line in out.splitlines() if line.strip().startswith("0.300"))
    cells = row.split()
    assert float(cells[1]) == pytest.approx(0.09, abs=1e-5)
    rate = float(theory.balancing_rate(problem, 0.3).mean())
    assert float(cells[2]) == pytest.approx(rate, abs=1e-5)
    beta = theory.lasso_limit(problem, 0.3)
    assert float(cells[5]) == pytest.approx(float(beta[0]), abs=1e-4)
    assert float(cells[7]) == pytest.approx(
        float(theory.min_average_sharpness(beta, problem, 0.3, 2)), abs=1e-4
    )


def test_depth3_orthogonal_limit_column(capsys):
    assert cli.main(["predict", "--design", "orthogonal", "--depth", "3", "--sigmas", "0.5"]) == 0
    row = next(
        line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("0.500")
    )
    expected = theory.limit(jax.numpy.array([1.0]), 0.5, 3)
    assert float(row.split()[5]) == pytest.approx(float(expected[0]), abs=1e-4)


def test_bad_argument_is_reported(capsys):
    assert cli.main(["predict", "--depth", "1"]) == 2
    assert "depth must be an integer >= 2" in capsys.readouterr().err
