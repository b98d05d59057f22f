"""Perturbation samplers: exact Gaussian, Rademacher and uniform noise with unit variance.

All samplers draw from counter-based Threefry-2x32 bits of the given key (one hash per pair of
32-bit words, as `jax.random.bits` does without `jax_threefry_partitionable`), so a key gives
the same numbers whatever JAX's PRNG flags, batch layout or device count. The Gaussian uses the
inverse error function on a uniform in (-1, 1), the transform of `jax.random.normal`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

Sampler = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def random_words(key: jax.Array, count: int) -> jax.Array:
    """`count` uniformly random 32-bit words from a Threefry key, `uint32[count]`."""
    key_data = jax.random.key_data(key)
    if key_data.shape != (2,):
        raise ValueError(
            f"key must be a Threefry key (jax.random.key(seed)), got key data of shape {key_data.shape}"
        )
    padded = count + count % 2  # threefry_2x32 hashes the two halves of the counter pairwise
    return threefry_2x32(key_data, jnp.arange(padded, dtype=jnp.uint32))[:count]


def _open_symmetric_uniform(key: jax.Array, size: int, dtype) -> jax.Array:
    """Uniform on the open interval (-1, 1), `[size]`: the odd multiples of 2^-p, |u| < 1.

    Built in integers and converted exactly (p = 23 bits in float32, 52 in float64), so no
    floating-point rewrite by the compiler can round a draw onto +-1 (where the Gaussian
    transform is infinite).
    """
    if jnp.dtype(dtype) == jnp.float64:
        words = random_words(key, 2 * size).astype(jnp.uint64)
        return _odd_grid(((words[:size] << 32 | words[size:]) >> 12).astype(jnp.int64), 52, dtype)
    return _odd_grid((random_words(key, size) >> 9).astype(jnp.int32), 23, dtype)


def _odd_grid(mantissa: jax.Array, precision: int, dtype) -> jax.Array:
    """`(2 m + 1 - 2^p) / 2^p` for integers `0 <= m < 2^p`: exact, and never +-1."""
    odd = 2 * mantissa + 1 - 2**precision  # odd integers in (-2^p, 2^p)
    return odd.astype(dtype) * (2.0**-precision)


_SIN_OVER_X = tuple(
    (-1) ** k / float(np.prod(np.arange(1, 2 * k + 2))) for k in range(7)
)  # Taylor coefficients of sin(x)/x in x^2, to degree 12: error < 1e-9 on [-pi/2, pi/2]
_COS = tuple((-1) ** k / float(np.prod(np.arange(1, 2 * k + 1))) for k in range(8))


def _polynomial(coefficients, x):
    out = jnp.full_like(x, coefficients[-1])
    for c in coefficients[-2::-1]:
        out = out * x + c
    return out


def _box_muller(key: jax.Array, size: int) -> jax.Array:
    """`size` (even) float32 standard normals by Box-Muller from 23-bit uniforms.

    Radius `sqrt(-2 log u)` with `u` on the odd grid of (0, 1) (largest draw 5.77); angle from
    `sin`/`cos` of the half angle by Taylor polynomials (error < 1e-9 on [-pi/2, pi/2]) and the
    double-angle formulas, far cheaper on a CPU than `erf_inv` or XLA's `sin`/`cos`.
    """
    words = random_words(key, size) >> 9
    radial, angular = words[: size // 2].astype(jnp.int32), words[size // 2 :].astype(jnp.int32)
    u = (2 * radial + 1).astype(jnp.float32) * np.float32(2.0**-24)  # (0, 1)
    radius = jnp.sqrt(-2 * jnp.log(u))
    half_angle = _odd_grid(angular, 23, jnp.float32) * np.float32(np.pi / 2)  # (-pi/2, pi/2)
    square = half_angle * half_angle
    sin_half = half_angle * _polynomial(_SIN_OVER_X, square)
    cos_half = _polynomial(_COS, square)
    cos_angle = 1 - 2 * sin_half * sin_half
    sin_angle = 2 * sin_half * cos_half
    return jnp.concatenate([radius * cos_angle, radius * sin_angle])


def gaussian(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normal noise, `xi ~ N(0, I)` of `shape`.

    float32: Box-Muller (`_box_muller`); float64: `sqrt(2) erf_inv(u)` with `u` uniform on a
    52-bit grid of (-1, 1), the transform of `jax.random.normal`.

    Examples:
      >>> import jax
      >>> gaussian(jax.random.key(0), (2, 3)).shape
      (2, 3)
    """
    size = int(np.prod(shape))
    if jnp.dtype(dtype) == jnp.float64:
        u = _open_symmetric_uniform(key, size, dtype)
        return (np.sqrt(2.0) * jax.lax.erf_inv(u)).reshape(shape)
    padded = size + size % 2
    return _box_muller(key, padded)[:size].astype(dtype).reshape(shape)


def rademacher(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Random signs +-1 with probability 1/2 each (mean 0, variance 1), `shape`."""
    size = int(np.prod(shape))
    top_bit = random_words(key, size) >> 31
    return (2 * top_bit.astype(dtype) - 1).reshape(shape)


def uniform(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Uniform noise on (-sqrt 3, sqrt 3) (mean 0, variance 1), `shape`."""
    size = int(np.prod(shape))
    return (np.sqrt(3.0) * _open_symmetric_uniform(key, size, dtype)).astype(dtype).reshape(shape)


SAMPLERS: dict[str, Sampler] = {"gaussian": gaussian, "rademacher": rademacher, "uniform": uniform}


def get_sampler(name: str) -> Sampler:
    """The sampler registered under `name` (one of `SAMPLERS`)."""
    if name not in SAMPLERS:
        raise ValueError(f"noise must be one of {sorted(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]
