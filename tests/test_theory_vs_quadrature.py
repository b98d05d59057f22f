"""Closed forms of docs/theory.md s2-3 against exact Gauss-Hermite expectations and autodiff.

The loss is a polynomial of degree <= 2L in every perturbation, so a 4-node (per variable)
Gauss-Hermite rule over all `depth * d` perturbations gives E_xi exactly, up to rounding.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import theory

SIGMA, ETA = 0.4, 0.3


def gaussian_expectation(fn, shape, sigma):
    """`E fn(sigma * xi)`, `xi ~ N(0, I)` of `shape`, by a tensor Gauss-Hermite rule (degree 7)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(4)
    weights = weights / weights.sum()
    size = int(np.prod(shape))
    grid = np.array(list(itertools.product(nodes, repeat=size))).reshape((-1,) + tuple(shape))
    mass = np.prod(np.array(list(itertools.product(weights, repeat=size))), axis=1)
    values = jax.vmap(fn)(sigma * jnp.asarray(grid))
    return jnp.tensordot(jnp.asarray(mass), values, axes=1)


def make_case(key, depth, d=3):
    key_problem, key_params = jax.random.split(key)
    problem = noisydln.make_problem(key_problem, 30, d, k=2, values="gaussian", noise_std=0.3)
    return problem, jax.random.normal(key_params, (depth, d))


@pytest.mark.parametrize("depth,d", [(2, 3), (3, 3), pytest.param(4, 2, marks=pytest.mark.slow)])
def test_expected_loss_and_grad_vs_quadrature(key, depth, d):
    problem, params = make_case(key, depth, d)
    exact_loss = gaussian_expectation(
        lambda xi: noisydln.loss(params + xi, problem), params.shape, SIGMA
    )
    exact_grad = gaussian_expectation(
        lambda xi: noisydln.grad(params + xi, problem), params.shape, SIGMA
    )
    np.testing.assert_allclose(theory.expected_loss(params, problem, SIGMA), exact_loss, rtol=1e-12)
    np.testing.assert_allclose(
        theory.expected_grad(params, problem, SIGMA), exact_grad, rtol=1e-11, atol=1e-12
    )
    sharpness = exact_loss - noisydln.loss(params, problem)
    np.testing.assert_allclose(
        theory.average_sharpness(params, problem, SIGMA), sharpness, rtol=1e-11
    )


@pytest.mark.parametrize("depth", [2, 3, pytest.param(4, marks=pytest.mark.slow)])
def test_expected_grad_vs_autodiff_of_expected_loss(key, depth):
    problem, params = make_case(key, depth, d=6)
    np.testing.assert_allclose(
        theory.expected_grad(params, problem, SIGMA),
        jax.grad(theory.expected_loss)(params, problem, SIGMA),
        rtol=1e-12,
        atol=1e-13,
    )


def test_depth2_sharpness_is_half_sigma2_hessian_trace_plus_sigma4_trace(key):
    problem, params = make_case(key, 2, d=6)
    expected = SIGMA**2 / 2 * noisydln.hessian_trace(params, problem) + SIGMA**4 * jnp.trace(
        problem.gram
    )
    np.testing.assert_allclose(
        theory.average_sharpness(params, problem, SIGMA), expected, rtol=1e-13
    )


def test_imbalance_factor_vs_quadrature_of_one_stochastic_step(key):
    problem, params = make_case(key, 2)

    def imbalance_after_step(xi):
        new = params - ETA * noisydln.grad(params + xi, problem)
        return new[0] ** 2 - new[1] ** 2

    exact = gaussian_expectation(imbalance_after_step, params.shape, SIGMA)
    before = params[0] ** 2 - params[1] ** 2
    rho = theory.imbalance_factor(params, problem, SIGMA, ETA)
    np.testing.assert_allclose(rho * before, exact, rtol=1e-11)
    first_order = 1 - 4 * ETA * SIGMA**2 * problem.gram_diag  # the eta^2 terms matter here
    assert np.max(np.abs(first_order * before - exact)) > 1e-2


@pytest.mark.parametrize("depth", [2, 3, pytest.param(4, marks=pytest.mark.slow)])
def test_imbalance_after_gd_vs_one_gd_step(key, depth):
    problem, params = make_case(key, depth, d=5)
    stepped = params - ETA * jax.grad(theory.expected_loss)(params, problem, SIGMA)
    np.testing.assert_allclose(
        theory.imbalance_after_gd(params, problem, SIGMA, ETA),
        noisydln.imbalances(stepped),
        rtol=1e-12,
        atol=1e-13,
    )


def test_depth2_gd_recursion_is_the_factor_of_theory(key):
    problem, params = make_case(key, 2, d=5)
    r = 2 * (problem.xty - problem.gram @ noisydln.end_to_end(params))
    factor = (1 - 2 * ETA * SIGMA**2 * problem.gram_diag) ** 2 - ETA**2 * r**2
    after = theory.imbalance_after_gd(params, problem, SIGMA, ETA)[0, 1]
    np.testing.assert_allclose(after, factor * (params[0] ** 2 - params[1] ** 2), rtol=1e-12)


@pytest.mark.parametrize("depth", [2, 3])
def test_flow_imbalance_derivative_vs_balancing_law(key, depth):
    """d/dt Delta along -grad L_R, by jvp, against -4 s^2 D prod_{k not in {l,m}}(w_k^2 + s^2) Delta."""
    problem, params = make_case(key, depth, d=5)
    velocity = -theory.expected_grad(params, problem, SIGMA)
    _, derivative = jax.jvp(noisydln.imbalances, (params,), (velocity,))
    if depth == 2:
        law = -theory.balancing_rate(problem, SIGMA) * (params[0] ** 2 - params[1] ** 2)
        np.testing.assert_allclose(derivative[0, 1], law, rtol=1e-12)
    else:
        other = params[2] ** 2 + SIGMA**2  # the one layer outside the pair (0, 1)
        law = -4 * SIGMA**2 * problem.gram_diag * other * (params[0] ** 2 - params[1] ** 2)
        np.testing.assert_allclose(derivative[0, 1], law, rtol=1e-12)


def test_balancing_rate_vs_small_step_gd(key):
    """exp(-4 s^2 D t) against GD on L_R with a small step, within an O(eta) allowance."""
    problem, params = make_case(key, 2, d=4)
    eta, steps = 1e-3, 2000

    def step(w, _):
        return w - eta * theory.expected_grad(w, problem, SIGMA), None

    final, _ = jax.lax.scan(step, params, None, length=steps)
    observed_rate = -jnp.log(
        (final[0] ** 2 - final[1] ** 2) / (params[0] ** 2 - params[1] ** 2)
    ) / (eta * steps)
    predicted = theory.balancing_rate(problem, SIGMA)
    np.testing.assert_allclose(observed_rate, predicted, rtol=0.05)  # O(eta * r^2 / rate) allowance
    assert np.all(
        np.abs(observed_rate - theory.balancing_rate(problem, 1.1 * SIGMA)) > 0.05 * predicted
    )
