"""`noisydln._draws.standard_normal` against `jax.random.normal` itself: the same bits for every
shape, dtype and kind of key, and one compiled sampler per size class instead of one per shape."""

import jax
import jax.numpy as jnp
import numpy as np

from noisydln import _draws

CASES = [
    ((1,), jnp.float32),
    ((17,), jnp.float64),
    ((7, 3, 5), jnp.float32),  # the row-major reshape of a cut
    ((1, 2**20 + 3), jnp.float64),  # past 2**20: cut from a multiple of 2**20
    ((2, 0), jnp.float32),
]


def test_same_bits_as_jax_random_normal():
    key = jax.random.key(11)
    for shape, dtype in CASES:
        ours, theirs = (
            _draws.standard_normal(key, shape, dtype),
            jax.random.normal(key, shape, dtype),
        )
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


def test_raw_keys_other_generators_and_traced_keys_fall_back_to_jax():
    raw = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(
        _draws.standard_normal(raw, (5, 3), jnp.float64), jax.random.normal(raw, (5, 3))
    )
    rbg = jax.random.key(3, impl="rbg")  # its first entries depend on the length: not cut
    assert not _draws._prefix_stable(rbg)
    np.testing.assert_array_equal(
        _draws.standard_normal(rbg, (5, 3), jnp.float64), jax.random.normal(rbg, (5, 3))
    )
    keys = jax.random.split(jax.random.key(4), 3)
    batched = jax.vmap(lambda k: _draws.standard_normal(k, (6,), jnp.float64))(keys)
    np.testing.assert_array_equal(batched, jax.vmap(lambda k: jax.random.normal(k, (6,)))(keys))


def test_without_partitionable_threefry_the_cut_would_be_wrong_and_is_not_taken():
    key = jax.random.key(6)
    with jax.threefry_partitionable(False):
        cut = jax.random.normal(key, (64,))[:40]
        assert not np.array_equal(cut, jax.random.normal(key, (40,)))
        assert not _draws._prefix_stable(key)
        np.testing.assert_array_equal(
            _draws.standard_normal(key, (5, 8), jnp.float64), jax.random.normal(key, (5, 8))
        )


def test_one_sampler_per_size_class():
    """Twenty shapes of 17 to 32 entries share the 32-entry sampler."""
    key = jax.random.key(5)
    _draws.standard_normal(key, (32,), jnp.float64)
    before = _draws._flat_normal._cache_size()
    for rows in range(17, 33):
        _draws.standard_normal(key, (rows,), jnp.float64)
    for shape in [(3, 6), (4, 5), (2, 2, 7), (30, 1)]:
        _draws.standard_normal(key, shape, jnp.float64)
    assert _draws._flat_normal._cache_size() == before


def test_padded_sizes():
    assert [_draws.padded_size(s) for s in (1, 16, 17, 1000, 2**20)] == [16, 16, 32, 1024, 2**20]
    assert _draws.padded_size(2**20 + 1) == 2 * 2**20
    assert _draws.padded_size(5 * 2**20 - 7) == 5 * 2**20


def test_lanczos_start_vs_the_same_steps_in_jax():
    """`lanczos.default_start`, made on the host, against the draw normalised by JAX op by op
    (`jax.random.normal`, `fixed_order_sum`, `sqrt`, division, as it was computed before): the
    same bits, unit norm. A plain NumPy division instead of XLA's product with the reciprocal
    differs in the last bit for most sizes, so the comparison can fail."""
    from noisydln import lanczos

    def in_jax(v):
        return v / jnp.sqrt(lanczos.fixed_order_sum(v * v))

    key = jax.random.key(lanczos.START_KEY)
    plain_division_differs = 0
    for size, dtype in [(1, jnp.float32), (37, jnp.float32), (40, jnp.float64)]:
        ours = lanczos.default_start(size, dtype)
        theirs = in_jax(jax.random.normal(key, (size,), dtype))
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(ours, np.float64)), 1.0, rtol=1e-6)
        v = np.asarray(jax.random.normal(key, (size,), dtype))
        plain = v / np.sqrt(lanczos._host_fixed_order_sum(v * v))
        plain_division_differs += not np.array_equal(plain, theirs)
    assert plain_division_differs == 2  # all but the one entry
