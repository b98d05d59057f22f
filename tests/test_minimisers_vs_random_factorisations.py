"""The balanced factorisation against random factorisations of the same product (docs/theory.md s2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import theory

SIGMA = 0.4


def random_factorisations(key, beta, depth, count, spread):
    """`count` random parameter arrays `[count, depth, d]` whose product is `beta`.

    Layer magnitudes are `|beta|^(1/L) e^{spread * N(0, 1)}`, rescaled in the last layer.
    """
    balanced_magnitude = jnp.abs(beta)[None, None, :] ** (1.0 / depth)
    free = balanced_magnitude * jnp.exp(
        spread * jax.random.normal(key, (count, depth - 1, beta.shape[0]))
    )
    signs = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, free.shape), -1.0, 1.0)
    free = free * signs
    last = beta[None, :] / jnp.prod(free, axis=1)
    return jnp.concatenate([free, last[:, None, :]], axis=1)


@pytest.mark.parametrize("depth", [2, 3, pytest.param(4, marks=pytest.mark.slow)])
def test_balanced_minimises_sharpness_and_trace_over_random_factorisations(key, depth):
    key_problem, key_beta, key_factors = jax.random.split(key, 3)
    problem = noisydln.make_problem(key_problem, 30, 5, noise_std=0.1)
    beta = jax.random.normal(key_beta, (5,))
    far = random_factorisations(key_factors, beta, depth, 1000, spread=0.8)
    near = random_factorisations(jax.random.fold_in(key_factors, 2), beta, depth, 1000, spread=0.01)
    candidates = jnp.concatenate([far, near])
    np.testing.assert_allclose(
        jax.vmap(noisydln.end_to_end)(candidates), jnp.broadcast_to(beta, (2000, 5)), rtol=1e-12
    )

    best = theory.balanced(candidates[0])
    np.testing.assert_allclose(noisydln.end_to_end(best), beta, rtol=1e-12)
    min_sharpness = theory.min_average_sharpness(beta, problem, SIGMA, depth)
    min_trace = theory.min_hessian_trace(beta, problem, depth)
    np.testing.assert_allclose(
        theory.average_sharpness(best, problem, SIGMA), min_sharpness, rtol=1e-12
    )
    np.testing.assert_allclose(noisydln.hessian_trace(best, problem), min_trace, rtol=1e-12)

    sharpness = jax.vmap(theory.average_sharpness, in_axes=(0, None, None))(
        candidates, problem, SIGMA
    )
    traces = jax.vmap(noisydln.hessian_trace, in_axes=(0, None))(candidates, problem)
    assert float(jnp.min(sharpness - min_sharpness)) > 0
    assert float(jnp.min(traces - min_trace)) > 0
    # and it is attained: candidates near the balanced one come within 0.1% (pins the formula)
    assert float(jnp.min(traces)) < 1.001 * float(min_trace)
    assert float(jnp.min(sharpness)) < 1.001 * float(min_sharpness)


@pytest.mark.parametrize("depth", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_balanced_is_a_critical_point_of_sharpness_on_the_fibre(key, depth):
    """Moving along the fibre w_l -> w_l e^{t_l} (sum t_l = 0) does not change S to first order."""
    problem = noisydln.make_problem(key, 30, 5, noise_std=0.1)
    params = theory.balanced(jax.random.normal(key, (depth, 5)))
    direction = jnp.arange(depth, dtype=params.dtype) - (depth - 1) / 2  # sums to zero

    def sharpness_along_fibre(t):
        return theory.average_sharpness(params * jnp.exp(t * direction)[:, None], problem, SIGMA)

    assert abs(float(jax.grad(sharpness_along_fibre)(0.0))) < 1e-12
    assert float(jax.grad(jax.grad(sharpness_along_fibre))(0.0)) > 0


def test_balanced_keeps_layer_signs_and_product(key):
    params = jax.random.normal(key, (3, 6))
    out = theory.balanced(params)
    np.testing.assert_array_equal(jnp.sign(out), jnp.sign(params))
    np.testing.assert_allclose(jnp.abs(out), jnp.broadcast_to(jnp.abs(out[0]), (3, 6)), rtol=1e-15)
    np.testing.assert_allclose(noisydln.end_to_end(out), noisydln.end_to_end(params), rtol=1e-13)
