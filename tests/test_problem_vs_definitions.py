"""Generated problems against their definitions: designs, teachers, labels, sufficient statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln


def test_sufficient_statistics_vs_data(key):
    problem = noisydln.make_problem(key, 50, 8, k=3, noise_std=0.5)
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    np.testing.assert_allclose(problem.gram, X.T @ X / 50, rtol=1e-13)
    np.testing.assert_allclose(problem.xty, X.T @ y / 50, rtol=1e-13)
    np.testing.assert_allclose(problem.yty, y @ y / 50, rtol=1e-13)
    assert (problem.n, problem.d) == (50, 8)


def test_orthogonal_and_diagonal_designs_are_exact(key):
    orthogonal = noisydln.make_problem(key, 40, 10, design="orthogonal")
    np.testing.assert_allclose(orthogonal.gram, np.eye(10), atol=1e-13)
    diag = jnp.linspace(0.0, 3.0, 10)
    diagonal = noisydln.make_problem(key, 40, 10, design="diagonal", diag=diag)
    np.testing.assert_allclose(diagonal.gram, np.diag(diag), atol=1e-13)


def test_gaussian_design_moments(key):
    problem = noisydln.make_problem(key, 20_000, 4)
    # entries i.i.d. N(0, 1): Gram diagonal ~ 1 +- sqrt(2/n), off-diagonal ~ 0 +- sqrt(1/n)
    z_diag = (jnp.diagonal(problem.gram) - 1) / np.sqrt(2 / 20_000)
    z_off = (problem.gram - jnp.diag(jnp.diagonal(problem.gram))) / np.sqrt(1 / 20_000)
    assert np.max(np.abs(z_diag)) < 5 and np.max(np.abs(z_off)) < 5


def test_teachers(key):
    fixed = noisydln.make_problem(key, 30, 6, k=2, values=jnp.array([2.0, -1.0]))
    np.testing.assert_array_equal(fixed.beta_star, [2.0, -1.0, 0, 0, 0, 0])
    random = noisydln.make_problem(key, 30, 6, k=4, values="gaussian")
    assert np.count_nonzero(random.beta_star) == 4 and np.all(random.beta_star[4:] == 0)
    given = noisydln.make_problem(key, 30, 3, beta_star=jnp.array([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(given.beta_star, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(given.y, given.X @ given.beta_star, rtol=1e-13)


def test_label_noise_has_the_requested_standard_deviation(key):
    problem = noisydln.make_problem(key, 20_000, 3, k=1, noise_std=0.7)
    noise = problem.y - problem.X @ problem.beta_star
    # sample variance of n normals: sem of the variance is sigma^2 sqrt(2 / (n - 1))
    z = (jnp.var(noise, ddof=1) - 0.49) / (0.49 * np.sqrt(2 / 19_999))
    assert abs(z) < 5
    assert abs((jnp.var(noise, ddof=1) - 0.64) / (0.64 * np.sqrt(2 / 19_999))) > 5


def test_problem_from_data_vs_make_problem(key):
    problem = noisydln.make_problem(key, 25, 4, k=2, noise_std=0.1)
    again = noisydln.problem_from_data(problem.X, problem.y, problem.beta_star)
    for a, b in zip(problem, again, strict=True):
        np.testing.assert_array_equal(a, b)
    unknown = noisydln.problem_from_data(np.ones((3, 2)), np.zeros(3))
    assert unknown.X.dtype == jnp.float64 and np.all(np.isnan(unknown.beta_star))


def test_float32_problem(key):
    problem = noisydln.make_problem(key, 30, 5, design="orthogonal", dtype=jnp.float32)
    assert all(leaf.dtype == jnp.float32 for leaf in problem)
    np.testing.assert_allclose(problem.gram, np.eye(5), atol=1e-5)


def test_problem_is_a_pytree_for_vmap(key):
    keys = jax.random.split(key, 3)
    problems = jax.vmap(lambda k: noisydln.make_problem(k, 20, 4, k=2))(keys)
    assert problems.gram.shape == (3, 4, 4)
    losses = jax.vmap(noisydln.loss, in_axes=(None, 0))(jnp.ones((2, 4)), problems)
    for i in range(3):
        single = noisydln.make_problem(keys[i], 20, 4, k=2)
        np.testing.assert_allclose(losses[i], noisydln.loss(jnp.ones((2, 4)), single), rtol=1e-12)


@pytest.mark.parametrize("design", ["orthogonal", "diagonal"])
def test_designs_are_reproducible_from_the_key(key, design):
    a = noisydln.make_problem(key, 20, 5, design=design, diag=2.0 if design == "diagonal" else None)
    b = noisydln.make_problem(key, 20, 5, design=design, diag=2.0 if design == "diagonal" else None)
    np.testing.assert_array_equal(a.X, b.X)
