"""Standard normal draws outside `jit` that compile one sampler per size class, not per shape.

`jax.random.normal(key, shape, dtype)` called eagerly compiles a program for every new shape
(about 0.3 s each on a CPU, most of it the threefry hash): a problem of a new size, a new
label-noise length or a new dense layer shape each paid it. With JAX's partitionable threefry
(`jax_threefry_partitionable`, the default) entry `i` of a flat draw depends on the key and `i`
alone, so the first `N` entries of a longer draw are the `N`-entry draw, bit for bit, and a
shape is its row-major reshape. `standard_normal` draws the flat length rounded up (to a power
of two up to `2**20` entries, to a multiple of `2**20` above: at most 8 MiB extra in float64)
and cuts it on the host. Inside a trace, or with another PRNG, it is `jax.random.normal`.
"""

import functools
import math

import jax
import numpy as np

from noisydln import _checks

_SMALLEST = 16
_LARGE = 2**20


def padded_size(size: int) -> int:
    """The flat length drawn for `size` entries: the next power of two >= 16 up to 2**20,
    else the next multiple of 2**20."""
    if size <= _LARGE:
        return max(_SMALLEST, 1 << max(size - 1, 0).bit_length())
    return -(-size // _LARGE) * _LARGE


@functools.partial(jax.jit, static_argnums=(1, 2))
def _flat_normal(key: jax.Array, size: int, dtype) -> jax.Array:
    return jax.random.normal(key, (size,), dtype)


def _prefix_stable(key) -> bool:
    """Whether a draw's first entries do not depend on its length: a concrete threefry key
    under `jax_threefry_partitionable`."""
    if _checks.is_traced(key) or not jax.config.jax_threefry_partitionable:
        return False
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(key)
    else:  # a raw uint32 key: the default implementation's
        impl = jax.config.jax_default_prng_impl
    return "threefry" in str(impl)


def standard_normal(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """`jax.random.normal(key, shape, dtype)`, the same numbers, compiled once per size class.

    Args:
      key: a single PRNG key (concrete or traced).
      shape: the draw's shape; dtype: its float dtype.

    Returns:
      `shape` standard normal entries.
    """
    size = math.prod(shape)
    if not _prefix_stable(key) or size == 0:
        return jax.random.normal(key, shape, dtype)
    flat = np.asarray(_flat_normal(key, padded_size(size), np.dtype(dtype)))
    return jax.device_put(flat[:size].reshape(shape))
