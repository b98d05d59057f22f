"""`threshold`, `limit` and `lasso_limit` (docs/theory.md s4) against long gradient descent on `L_R`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import theory


def descend(params, problem, sigma, eta, steps):
    """Plain gradient descent on the expected loss, `steps` steps of size `eta`."""

    def step(w, _):
        return w - eta * theory.expected_grad(w, problem, sigma), None

    return jax.jit(lambda w: jax.lax.scan(step, w, None, length=steps)[0])(params)


def diagonal_problem(key):
    beta_star = jnp.array([1.2, -0.7, 0.45, 0.3, -0.15, 0.06, 0.0, 2.0])
    diag = jnp.array([1.0, 2.0, 0.5, 1.0, 1.5, 3.0, 1.0, 0.7])
    return noisydln.make_problem(
        key, 40, 8, design="diagonal", diag=diag, beta_star=beta_star, noise_std=0.1
    )


def test_threshold_values():
    np.testing.assert_allclose(theory.threshold(0.3, 2), 0.09, rtol=1e-15)
    np.testing.assert_allclose(theory.threshold(0.5, 3), 3.0792014356780038 * 0.5**3, rtol=1e-14)
    np.testing.assert_allclose(theory.threshold(0.5, 4), 6.75 * 0.5**4, rtol=1e-14)


@pytest.mark.parametrize("depth", [3, 4])
def test_threshold_is_where_the_stationary_roots_merge(depth):
    sigma = 0.6
    tau = theory.threshold(sigma, depth)
    a_minus, a_plus = theory.stationary_roots(
        jnp.array([tau * (1 + 1e-9), tau * 1.5]), sigma, depth
    )
    turning = np.sqrt((depth - 2) / depth) * sigma
    np.testing.assert_allclose([a_minus[0], a_plus[0]], [turning, turning], rtol=1e-4)
    for a in (a_minus[1], a_plus[1]):  # both roots solve (a^2 + s^2)^(L-1) = |z| a^(L-2)
        np.testing.assert_allclose(
            (a**2 + sigma**2) ** (depth - 1), 1.5 * tau * a ** (depth - 2), rtol=1e-12
        )
    below = theory.stationary_roots(jnp.array([0.99 * tau]), sigma, depth)
    assert float(below[0][0]) == 0.0 and float(below[1][0]) == 0.0


@pytest.mark.parametrize("depth,sigma", [(2, 0.3), (2, 0.5), (3, 0.6), (4, 0.7)])
def test_limit_vs_long_gd_on_expected_loss_diagonal_design(key, depth, sigma):
    problem = diagonal_problem(key)
    z = theory.diagonal_target(problem)
    init = 0.9 * jnp.ones((depth, 8)).at[0].multiply(jnp.sign(z))  # balanced, signs of z
    final = descend(init, problem, sigma, eta=0.02, steps=60_000)
    predicted = theory.limit(z, sigma, depth, init)
    np.testing.assert_allclose(noisydln.end_to_end(final), predicted, atol=1e-8)
    assert np.any(predicted == 0) and np.any(predicted != 0)  # both sides of the threshold are seen
    # every critical point of L_R with sigma > 0 is balanced (docs/theory.md s2)
    np.testing.assert_allclose(final, theory.balanced(final), atol=1e-6)
    wrong = theory.limit(z, 1.1 * sigma, depth, init)
    assert np.max(np.abs(noisydln.end_to_end(final) - wrong)) > 1e-3


def test_limit_orthogonal_design_is_soft_thresholding_of_beta_star(key):
    problem = noisydln.make_problem(
        key, 30, 6, design="orthogonal", beta_star=jnp.array([1.0, -0.5, 0.2, 0.05, 0.0, -2.0])
    )
    init = jnp.stack([0.5 * jnp.ones(6), jnp.full((6,), 0.25)])  # unbalanced: any sign is reachable
    final = descend(init, problem, 0.4, eta=0.02, steps=40_000)
    expected = np.sign(problem.beta_star) * np.maximum(np.abs(problem.beta_star) - 0.16, 0.0)
    np.testing.assert_allclose(noisydln.end_to_end(final), expected, atol=1e-8)


@pytest.mark.parametrize("depth", [3, 4])
def test_basin_rule_starts_inside_and_outside(depth):
    """Same target above tau_L: starts above the saddle reach a_+^L, below it (or of the wrong sign) 0."""
    sigma = 0.6
    z_value = 1.6 * float(theory.threshold(sigma, depth))
    problem = noisydln.make_problem(
        jax.random.key(0), 10, 4, design="orthogonal", beta_star=jnp.full((4,), z_value)
    )
    z = theory.diagonal_target(problem)
    a_minus, a_plus = theory.stationary_roots(z, sigma, depth)
    starts = jnp.array([1.05 * a_minus[0], 0.95 * a_minus[0], 2.0 * a_plus[0], 1.05 * a_minus[0]])
    init = jnp.ones((depth, 1)) * starts[None, :]
    init = init.at[0, 3].multiply(-1.0)  # opposite sign to z
    final = descend(init, problem, sigma, eta=0.02, steps=60_000)
    predicted = theory.limit(z, sigma, depth, init)
    np.testing.assert_allclose(noisydln.end_to_end(final), predicted, atol=1e-7)
    np.testing.assert_allclose(
        predicted, [a_plus[0] ** depth, 0.0, a_plus[0] ** depth, 0.0], rtol=1e-12
    )
    no_basin = theory.limit(z, sigma, depth)  # without init every coordinate is sent to a_+^L
    assert np.max(np.abs(noisydln.end_to_end(final) - no_basin)) > 0.1


def test_limit_without_noise_is_the_least_squares_target():
    z = jnp.array([0.3, -1.0, 0.0])
    for depth in (2, 3, 4):
        np.testing.assert_allclose(theory.limit(z, 0.0, depth), z, rtol=1e-12)


def lasso_kkt_violation(beta, problem, sigma):
    """Largest violation of the weighted-lasso optimality conditions, unconstrained."""
    gradient = 2 * (problem.gram @ beta - problem.xty)
    weights = 2 * sigma**2 * problem.gram_diag
    active = beta != 0
    on_support = jnp.where(active, jnp.abs(gradient + weights * jnp.sign(beta)), 0.0)
    off_support = jnp.where(active, 0.0, jnp.maximum(jnp.abs(gradient) - weights, 0.0))
    return float(jnp.max(on_support + off_support))


@pytest.mark.parametrize("n", [60, 20])
def test_lasso_limit_vs_long_gd_and_kkt(key, n):
    key_problem, key_init = jax.random.split(key)
    problem = noisydln.make_problem(key_problem, n, 12, k=4, values="gaussian", noise_std=0.5)
    sigma = 0.5
    beta = theory.lasso_limit(problem, sigma)
    assert lasso_kkt_violation(beta, problem, sigma) < 1e-10
    # a balanced start with the signs of the solution keeps them: GD on the network reaches it
    init = 0.3 * jnp.ones((2, 12)).at[0].multiply(jnp.where(beta < 0, -1.0, 1.0))
    final = descend(init, problem, sigma, eta=0.01, steps=200_000)
    np.testing.assert_allclose(noisydln.end_to_end(final), beta, atol=1e-8)
    assert (
        np.max(np.abs(noisydln.end_to_end(final) - theory.lasso_limit(problem, 1.1 * sigma))) > 1e-3
    )


def test_lasso_limit_reduces_to_soft_thresholding_for_diagonal_design(key):
    problem = diagonal_problem(key)
    np.testing.assert_allclose(
        theory.lasso_limit(problem, 0.3),
        theory.limit(theory.diagonal_target(problem), 0.3, 2),
        atol=1e-10,
    )


def test_lasso_limit_orthant_vs_gd_from_a_fixed_sign_pattern(key):
    """A balanced start keeps each sign of beta: GD reaches the lasso restricted to that orthant."""
    problem = noisydln.make_problem(
        key, 60, 6, beta_star=jnp.array([1.0, -1.0, 0.5, 0.0, 0.8, -0.3]), noise_std=0.2
    )
    signs = jnp.array([1.0, 1.0, -1.0, 1.0, 1.0, 1.0])  # coordinates 1 and 2 start against the data
    init = 0.3 * jnp.ones((2, 6)).at[0].multiply(signs)
    final = descend(init, problem, 0.3, eta=0.01, steps=100_000)
    restricted = theory.lasso_limit(problem, 0.3, signs)
    np.testing.assert_allclose(noisydln.end_to_end(final), restricted, atol=1e-8)
    assert np.all(signs * restricted >= 0)
    assert np.max(np.abs(restricted - theory.lasso_limit(problem, 0.3))) > 1e-2


def test_limits_vmap_over_sigma():
    z = jnp.array([1.0, -0.3, 0.05])
    sigmas = jnp.array([0.0, 0.3, 0.6])
    for depth in (2, 3):
        batched = jax.jit(jax.vmap(theory.limit, in_axes=(None, 0, None)), static_argnums=2)(
            z, sigmas, depth
        )
        for i, sigma in enumerate(sigmas):
            np.testing.assert_allclose(batched[i], theory.limit(z, float(sigma), depth), rtol=1e-12)


@pytest.mark.parametrize("depth,sigma", [(3, 0.5), (4, 0.6)])
def test_limit_solves_the_shrinkage_equation(depth, sigma):
    """docs/theory.md s4: z = beta (1 + sigma^2 |beta|^(-2/L))^(L-1), shrinkage (a^2 / (a^2 + s^2))^(L-1)."""
    z = jnp.array([3.0, -2.0, 1.5, 1.1]) * theory.threshold(sigma, depth)
    beta = theory.limit(z, sigma, depth)
    np.testing.assert_allclose(
        beta * (1 + sigma**2 * jnp.abs(beta) ** (-2 / depth)) ** (depth - 1), z, rtol=1e-12
    )
    a_plus = jnp.abs(beta) ** (1 / depth)
    np.testing.assert_allclose(
        beta / z, (a_plus**2 / (a_plus**2 + sigma**2)) ** (depth - 1), rtol=1e-12
    )
    assert np.all(np.abs(beta) < np.abs(z))
