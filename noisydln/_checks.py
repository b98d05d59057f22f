"""Input validation shared by the public functions: clear `ValueError`s naming the argument."""

from collections.abc import Sequence

import jax
import numpy as np


def is_traced(x) -> bool:
    """Whether `x` is an abstract value inside `jit`/`vmap` (its numbers are unknown)."""
    return isinstance(x, jax.core.Tracer)


def check_depth(depth) -> int:
    """Returns `depth` as an int, or raises unless it is an integer >= 2."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)):
        raise ValueError(f"depth must be an integer >= 2, got {depth!r}")
    if depth < 2:
        raise ValueError(f"depth must be an integer >= 2, got {depth}")
    return int(depth)


def check_nonnegative(name: str, value) -> None:
    """Raises unless every entry of `value` is finite and >= 0 (skipped for traced values)."""
    if is_traced(value):
        return
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_finite(name: str, value) -> None:
    """Raises if `value` holds a NaN or an infinity (skipped for traced values)."""
    if is_traced(value):
        return
    if not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} must be finite (it holds NaN or inf)")


def check_shape(name: str, value, shape: Sequence[int], meaning: str) -> None:
    """Raises unless `value.shape == shape`; `meaning` spells the expected shape, e.g. "[depth, d]"."""
    actual = tuple(np.shape(value))
    if actual != tuple(shape):
        raise ValueError(f"{name} must have shape {meaning} = {tuple(shape)}, got {actual}")


def check_params(params, d: int | None = None) -> None:
    """Raises unless `params` is `[depth, d]` with depth >= 2 (and d matching the problem's)."""
    shape = tuple(np.shape(params))
    if len(shape) != 2:
        raise ValueError(f"params must have shape [depth, d], got {shape}")
    if shape[0] < 2:
        raise ValueError(f"params must have depth >= 2 rows ([depth, d]), got shape {shape}")
    if d is not None and shape[1] != d:
        raise ValueError(
            f"params must have shape [depth, d] with d = {d} (the problem's), got {shape}"
        )
