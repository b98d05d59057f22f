"""Monte Carlo means of the perturbed loss and of `perturbed_grad` against `L_R` and `grad L_R`.

Tolerance fixed in advance: every z-score `(mean - theory) / sem` within 5. The same draws must
reject the closed form evaluated at a wrong sigma (1.2 sigma): some |z| above 5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import theory

NUM_DRAWS = 200_000
Z_BOUND = 5.0
SIGMA = 0.5


def z_scores(samples, prediction):
    mean = jnp.mean(samples, axis=0)
    sem = jnp.std(samples, axis=0, ddof=1) / np.sqrt(samples.shape[0])
    return (mean - prediction) / sem


@pytest.mark.parametrize("depth", [2, 3])
def test_perturbed_grad_mean_vs_expected_grad(key, depth):
    key_problem, key_params, key_noise = jax.random.split(key, 3)
    problem = noisydln.make_problem(key_problem, 40, 4, k=2, noise_std=0.2)
    params = 0.8 * jax.random.normal(key_params, (depth, 4))
    keys = jax.random.split(key_noise, NUM_DRAWS)
    draws = jax.jit(jax.vmap(noisydln.perturbed_grad, in_axes=(0, None, None, None)))(
        keys, params, problem, SIGMA
    )
    z = z_scores(draws, theory.expected_grad(params, problem, SIGMA))
    assert np.max(np.abs(z)) < Z_BOUND, z
    z_wrong = z_scores(draws, theory.expected_grad(params, problem, 1.2 * SIGMA))
    assert np.max(np.abs(z_wrong)) > Z_BOUND, z_wrong


@pytest.mark.parametrize("depth", [2, 4])
def test_perturbed_loss_mean_vs_expected_loss(key, depth):
    key_problem, key_params, key_noise = jax.random.split(key, 3)
    problem = noisydln.make_problem(key_problem, 40, 4, k=2, noise_std=0.2)
    params = 0.8 * jax.random.normal(key_params, (depth, 4))
    xi = jax.random.normal(key_noise, (NUM_DRAWS, depth, 4))
    draws = jax.jit(jax.vmap(lambda x: noisydln.loss(params + SIGMA * x, problem)))(xi)
    assert abs(z_scores(draws, theory.expected_loss(params, problem, SIGMA))) < Z_BOUND
    assert abs(z_scores(draws, theory.expected_loss(params, problem, 1.2 * SIGMA))) > Z_BOUND


def test_perturbation_is_standard_gaussian_scaled_by_sigma(key):
    """The noise inside perturbed_grad: recover xi from a depth-2 draw and check its moments."""
    problem = noisydln.make_problem(key, 20, 3, design="orthogonal", k=1)
    params = jnp.ones((2, 3))
    keys = jax.random.split(key, NUM_DRAWS)
    xi = jax.vmap(lambda k: jax.random.normal(k, (2, 3)))(keys)
    draws = jax.vmap(noisydln.perturbed_grad, in_axes=(0, None, None, None))(
        keys, params, problem, SIGMA
    )
    np.testing.assert_allclose(
        draws,
        jax.vmap(lambda x: noisydln.grad(params + SIGMA * x, problem))(xi),
        rtol=1e-12,
        atol=1e-13,  # entries of order 1: one program and op by op may round a few ulps apart
    )
    flat = xi.reshape(-1)
    n = flat.shape[0]
    for moment, value, variance in ((1, 0.0, 1.0), (2, 1.0, 2.0), (4, 3.0, 96.0)):
        z = (jnp.mean(flat**moment) - value) / np.sqrt(variance / n)
        assert abs(z) < Z_BOUND, (moment, z)
