"""Input validation shared by the public functions: clear `ValueError`s naming the argument."""

import functools
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from noisydln.plan import format_bytes

MAX_INT32 = 2**31 - 1  # step and seed indices are int32 inside the compiled loops


def is_traced(x) -> bool:
    """Whether `x` is an abstract value inside `jit`/`vmap` (its numbers are unknown)."""
    return isinstance(x, jax.core.Tracer)


def describe(value) -> str:
    """A short one-line description of `value` for an error message."""
    shape = getattr(value, "shape", None)
    if shape is not None and shape != ():
        dtype = getattr(value, "dtype", "unknown")
        return f"{type(value).__name__} of dtype {dtype} and shape {tuple(shape)}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def dtype_of(name: str, value) -> np.dtype:
    """The dtype `value` has, or would have as a NumPy array; raises if it cannot be one."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        try:
            return np.dtype(dtype)
        except TypeError:
            pass  # fall through: not a NumPy-like dtype
    try:
        return np.asarray(value).dtype
    except (ValueError, TypeError):  # ragged nesting, objects NumPy cannot hold
        raise ValueError(
            f"{name} must be a number or an array of numbers, got {describe(value)}"
        ) from None


def is_real(dtype) -> bool:
    """Integers or floats: not bool, complex, strings or objects."""
    return jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)


def check_real(name: str, value) -> np.dtype:
    """Returns the dtype of `value`, or raises unless it holds real numbers (ints or floats)."""
    dtype = dtype_of(name, value)
    if not is_real(dtype):
        raise ValueError(
            f"{name} must hold real numbers (integers or floats), got {describe(value)}"
        )
    return dtype


def check_scalar(name: str, value) -> None:
    """Raises unless `value` is a scalar (shape `[]`); works on traced values too."""
    shape = tuple(np.shape(value))
    if shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {shape}")


def as_float(name: str, value, *, minimum: float | None = None) -> float:
    """`value`, a real finite scalar (a Python or NumPy number or a 0-d array), as a Python
    float; raises for strings, bools, complex numbers, arrays, NaN, inf and values < minimum."""
    expected = "a finite number" + ("" if minimum is None else f" >= {minimum:g}")
    if is_traced(value):
        raise ValueError(f"{name} must be {expected} (not a traced value), got {describe(value)}")
    if not is_real(dtype_of(name, value)):
        raise ValueError(f"{name} must be {expected}, got {describe(value)}")
    check_scalar(name, value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {describe(value)}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {describe(value)}")
    return number


def as_int(name: str, value, *, minimum: int = 1, maximum: int | None = MAX_INT32) -> int:
    """`value` as a Python int, or raises unless it is an integer in `[minimum, maximum]`."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be {what}, got {describe(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer in [{minimum}, {maximum}], got {value}")
    return int(value)


def check_depth(depth) -> int:
    """Returns `depth` as an int, or raises unless it is an integer in `[2, 2**31 - 1]`."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)):
        raise ValueError(f"depth must be an integer >= 2, got {describe(depth)}")
    if depth < 2:
        raise ValueError(f"depth must be an integer >= 2, got {depth}")
    if depth > MAX_INT32:
        raise ValueError(f"depth must be an integer in [2, {MAX_INT32}], got {depth}")
    return int(depth)


def check_nonnegative(name: str, value) -> None:
    """Raises unless every entry of `value` is real, finite and >= 0 (numbers unchecked, but
    the dtype checked, for traced values)."""
    dtype = dtype_of(name, value)
    if not is_real(dtype):
        raise ValueError(f"{name} must be a finite number >= 0, got {describe(value)}")
    if is_traced(value):
        return
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {describe(value)}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got {describe(value)}")


def check_finite(name: str, value) -> None:
    """Raises unless `value` holds real numbers without NaN or inf (numbers unchecked, but the
    dtype checked, for traced values)."""
    check_real(name, value)
    if is_traced(value):
        return
    if not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")


def real_array(name: str, value, dtype=None) -> jax.Array:
    """`value` as a JAX array of the float `dtype` (JAX's default float when None), or raises
    unless it holds real numbers. Integers go through float64 on the host, so that int64 data
    are not wrapped to int32 on the way."""
    source = check_real(name, value)
    dtype = jnp.result_type(float) if dtype is None else jax.dtypes.canonicalize_dtype(dtype)
    if jnp.issubdtype(source, jnp.integer) and not isinstance(value, jax.Array):
        value = np.asarray(value, np.float64)
    if source != dtype and not is_traced(value):  # a narrower float: do the numbers fit?
        host = np.asarray(value, np.float64)
        largest = np.max(np.abs(host[np.isfinite(host)]), initial=0.0)
        if largest > jnp.finfo(dtype).max:
            raise ValueError(
                f"{name} does not fit {np.dtype(dtype)}: it holds {largest:g}, above "
                f"{float(jnp.finfo(dtype).max):g}"
            )
    return jnp.asarray(value, dtype)


def float_dtype(dtype) -> np.dtype:
    """`dtype` (JAX's default float when None) as a NumPy dtype, or raises unless it is a float."""
    if dtype is None:
        return np.dtype(jnp.result_type(float))
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be a float dtype, got {describe(dtype)}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a float dtype, got {dtype}")
    return dtype


def check_key(key) -> None:
    """Raises unless `key` is a PRNG key: `jax.random.key(seed)` or a raw `uint32 [2]` key."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if np.shape(key) == ():
            return
    elif dtype == np.uint32 and np.shape(key) == (2,):
        return
    raise ValueError(f"key must be a single PRNG key, jax.random.key(seed), got {describe(key)}")


@functools.cache
def memory_bytes() -> int | None:
    """Memory of the default device: its allocator's limit on an accelerator, the host's
    physical memory on a CPU; None if unknown."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        try:
            limit = (device.memory_stats() or {}).get("bytes_limit")
        except Exception:  # noqa: BLE001 (a backend without memory statistics)
            limit = None
        if limit:
            return int(limit)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(names: str, what: str, num_bytes: int) -> None:
    """Raises if `num_bytes` (the size of `what`) is more than the default device's memory.

    `names` starts the message: the arguments that make it so large, e.g. `"n and d are"`.
    """
    limit = memory_bytes()
    if limit is not None and num_bytes > limit:
        raise ValueError(
            f"{names} too large: {what} would take {format_bytes(num_bytes)}, more than the "
            f"{format_bytes(limit)} of memory of {jax.devices()[0].platform}:0"
        )


def check_shape(name: str, value, shape: Sequence[int], meaning: str) -> None:
    """Raises unless `value.shape == shape`; `meaning` spells the expected shape, e.g. "[depth, d]"."""
    actual = tuple(np.shape(value))
    if actual != tuple(shape):
        raise ValueError(f"{name} must have shape {meaning} = {tuple(shape)}, got {actual}")


def check_params(params, d: int | None = None) -> None:
    """Raises unless `params` is a real `[depth, d]` array with depth >= 2 (and d matching the
    problem's)."""
    check_real("params", params)
    shape = tuple(np.shape(params))
    if len(shape) != 2:
        raise ValueError(f"params must have shape [depth, d], got {shape}")
    if shape[0] < 2:
        raise ValueError(f"params must have depth >= 2 rows ([depth, d]), got shape {shape}")
    if d is not None and shape[1] != d:
        raise ValueError(
            f"params must have shape [depth, d] with d = {d} (the problem's), got {shape}"
        )
