"""Bad input is rejected with a `ValueError` that names the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import theory


@pytest.fixture
def problem(key):
    return noisydln.make_problem(key, 20, 4, k=2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n": 5, "d": 8, "design": "orthogonal"}, "n >= d"),
        ({"n": 5, "d": 8, "design": "diagonal", "diag": 1.0}, "n >= d"),
        ({"n": 20, "d": 4, "k": 5}, "k must be <= d"),
        ({"n": 20, "d": 4, "k": -1}, "k must be"),
        ({"n": 20, "d": 4, "design": "sparse"}, "design must be one of"),
        ({"n": 20, "d": 4, "design": "diagonal"}, "needs diag"),
        ({"n": 20, "d": 4, "design": "diagonal", "diag": -1.0}, "diag must be >= 0"),
        ({"n": 20, "d": 4, "design": "diagonal", "diag": jnp.ones(3)}, "diag must"),
        ({"n": 20, "d": 4, "diag": 1.0}, "diag is only used"),
        ({"n": 0, "d": 4}, "n must be a positive integer"),
        ({"n": 20, "d": 4, "noise_std": -0.1}, "noise_std must be >= 0"),
        ({"n": 20, "d": 4, "noise_std": float("nan")}, "noise_std must be finite"),
        ({"n": 20, "d": 4, "beta_star": jnp.ones(3)}, "beta_star must have shape"),
        (
            {"n": 20, "d": 4, "beta_star": jnp.array([1.0, np.inf, 0, 0])},
            "beta_star must be finite",
        ),
        ({"n": 20, "d": 4, "beta_star": jnp.ones(4), "k": 2}, "either beta_star or k"),
        ({"n": 20, "d": 4, "k": 2, "values": jnp.ones(3)}, "values must"),
        ({"n": 20, "d": 4, "k": 2, "values": "uniform"}, "values must"),
    ],
)
def test_make_problem_rejects(key, kwargs, match):
    with pytest.raises(ValueError, match=match):
        noisydln.make_problem(key, **kwargs)


def test_problem_from_data_rejects():
    with pytest.raises(ValueError, match="X must be"):
        noisydln.problem_from_data(np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="y must have shape"):
        noisydln.problem_from_data(np.ones((5, 2)), np.ones(4))
    with pytest.raises(ValueError, match="X must be finite"):
        noisydln.problem_from_data(np.array([[1.0, np.nan]]), np.ones(1))
    with pytest.raises(ValueError, match="y must be finite"):
        noisydln.problem_from_data(np.ones((2, 2)), np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="beta_star must have shape"):
        noisydln.problem_from_data(np.ones((2, 2)), np.ones(2), np.ones(3))


@pytest.mark.parametrize(
    "sigma,match",
    [
        (-0.1, "sigma must be >= 0"),
        (np.nan, "sigma must be finite"),
        (np.inf, "sigma must be finite"),
        ("0.1", "sigma must be a finite number >= 0, got '0.1'"),
        (0.1j, "sigma must be a finite number >= 0"),
        (True, "sigma must be a finite number >= 0"),
        (None, "sigma must be a finite number >= 0"),
    ],
)
def test_bad_sigma_everywhere(key, problem, sigma, match):
    params = jnp.ones((2, 4))
    calls = [
        lambda: noisydln.perturbed_grad(key, params, problem, sigma),
        lambda: theory.expected_loss(params, problem, sigma),
        lambda: theory.expected_grad(params, problem, sigma),
        lambda: theory.average_sharpness(params, problem, sigma),
        lambda: theory.min_average_sharpness(jnp.ones(4), problem, sigma, 2),
        lambda: theory.balancing_rate(problem, sigma),
        lambda: theory.imbalance_after_gd(params, problem, sigma, 0.1),
        lambda: theory.imbalance_factor(params, problem, sigma, 0.1),
        lambda: theory.threshold(sigma, 3),
        lambda: theory.limit(jnp.ones(4), sigma, 2),
        lambda: theory.lasso_limit(problem, sigma),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("depth", [1, 0, 2.5, "3"])
def test_bad_depth(problem, depth):
    for call in (
        lambda: theory.threshold(0.1, depth),
        lambda: theory.limit(jnp.ones(4), 0.1, depth),
        lambda: theory.min_hessian_trace(jnp.ones(4), problem, depth),
        lambda: theory.min_average_sharpness(jnp.ones(4), problem, 0.1, depth),
    ):
        with pytest.raises(ValueError, match="depth must be an integer >= 2"):
            call()


def test_mismatched_shapes(key, problem):
    with pytest.raises(ValueError, match=r"params must have shape \[depth, d\] with d = 4"):
        noisydln.loss(jnp.ones((2, 5)), problem)
    with pytest.raises(ValueError, match="depth >= 2"):
        noisydln.grad(jnp.ones((1, 4)), problem)
    with pytest.raises(ValueError, match=r"params must have shape \[depth, d\]"):
        noisydln.hessian(jnp.ones(4), problem)
    with pytest.raises(ValueError, match="beta must have shape"):
        theory.min_hessian_trace(jnp.ones(3), problem, 2)
    with pytest.raises(ValueError, match="init must have shape"):
        theory.limit(jnp.ones(4), 0.1, 3, init=jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="signs must have shape"):
        theory.lasso_limit(problem, 0.1, signs=jnp.ones(3))
    with pytest.raises(ValueError, match="depth-2 formula"):
        theory.imbalance_factor(jnp.ones((3, 4)), problem, 0.1, 0.1)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        theory.imbalance_factor(jnp.ones((2, 4)), problem, 0.1, -0.1)
    with pytest.raises(ValueError, match="z must be finite"):
        theory.limit(jnp.array([np.nan]), 0.1, 2)


def test_validation_does_not_break_tracing(key, problem):
    """Under jit the checks of values are skipped, not turned into tracer errors."""
    out = jax.jit(noisydln.perturbed_grad)(key, jnp.ones((2, 4)), problem, 0.1)
    assert out.shape == (2, 4)
