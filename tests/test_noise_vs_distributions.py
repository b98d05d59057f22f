"""The perturbation samplers against the moments of their laws (z-scores fixed in advance)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noisydln import noise

Z_BOUND = 5.0
N = 1_000_000


def z_score(samples, moment, value, variance):
    return (float(jnp.mean(samples**moment)) - value) / np.sqrt(variance / samples.size)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_gaussian_moments(key, dtype):
    x = noise.gaussian(key, (N,), dtype).astype(jnp.float64)
    assert noise.gaussian(key, (3, 2), dtype).dtype == dtype
    # E x = 0, E x^2 = 1, E x^4 = 3, E x^6 = 15 (variances 1, 2, 96, 10170)
    for moment, value, variance in ((1, 0, 1), (2, 1, 2), (3, 0, 15), (4, 3, 96), (6, 15, 10170)):
        assert abs(z_score(x, moment, value, variance)) < Z_BOUND, moment
    # and a wrong law with the same mean and variance is told apart: Rademacher's E x^4 = 1
    assert abs(z_score(noise.rademacher(key, (N,), jnp.float64), 4, 3, 96)) > Z_BOUND
    # tails: P(|x| > 3) = 0.0026998
    tail = float(jnp.mean(jnp.abs(x) > 3))
    assert abs(tail - 0.0026998) < Z_BOUND * np.sqrt(0.0027 / N)


def test_uniform_and_rademacher_moments(key):
    u = noise.uniform(key, (N,), jnp.float64)
    assert float(jnp.max(jnp.abs(u))) < np.sqrt(3)
    for moment, value, variance in ((1, 0, 1), (2, 1, 0.8), (4, 1.8, 27 / 7 - 1.8**2)):
        assert abs(z_score(u, moment, value, variance)) < Z_BOUND, moment
    r = noise.rademacher(key, (N,), jnp.float64)
    assert set(np.unique(r)) == {-1.0, 1.0}
    assert abs(z_score(r, 1, 0, 1)) < Z_BOUND


@pytest.mark.parametrize("dtype,precision", [(jnp.float32, 23), (jnp.float64, 52)])
def test_extreme_bits_give_finite_noise(dtype, precision):
    """All-zero and all-one random words map strictly inside (-1, 1), even once compiled."""
    mantissa = jnp.asarray([0, 2**precision - 1], jnp.int64 if precision == 52 else jnp.int32)
    u = jax.jit(noise._odd_grid, static_argnums=(1, 2))(mantissa, precision, dtype)
    np.testing.assert_array_equal(u, [-(1 - 2.0**-precision), 1 - 2.0**-precision])
    assert bool(jnp.all(jnp.isfinite(jax.lax.erf_inv(u))))


def test_keys_give_independent_reproducible_streams(key):
    a = noise.gaussian(key, (1000,))
    np.testing.assert_array_equal(a, noise.gaussian(key, (1000,)))
    b = noise.gaussian(jax.random.fold_in(key, 1), (1000,))
    assert abs(float(jnp.corrcoef(a, b)[0, 1])) < Z_BOUND / np.sqrt(1000)
    with jax.threefry_partitionable(not jax.config.jax_threefry_partitionable):
        np.testing.assert_array_equal(a, noise.gaussian(key, (1000,)))  # independent of the flag


def test_non_threefry_key_is_rejected():
    with pytest.raises(ValueError, match="key must be a Threefry key"):
        noise.gaussian(jax.random.key(0, impl="rbg"), (3,))
