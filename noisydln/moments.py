"""Streaming count / mean / sum of squared deviations, folded in a fixed order.

Samples (seeds) are taken in blocks of `BLOCK` consecutive indices: a block's moments come from
a pairwise tree of Chan merges, and blocks are merged into the running moments one after the
other, all by one compiled loop body. Whatever batch the samples arrive in (any chunk size,
any device count), the same operations run in the same order on the same numbers, so the
result is the same bit for bit. (Merging in whatever order the batches happen to come would
not be: XLA fuses `x * y + z` into one FMA or not depending on the surrounding code.)
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Moments(NamedTuple):
    """Moments of a set of samples, per element.

    Attributes:
      count: number of samples, `[*batch]` (floating; exact up to 2^24 in float32).
      mean: dict name -> `[*batch, *shape]`, the sample mean (0 while count is 0).
      m2: dict name -> `[*batch, *shape]`, the sum of squared deviations from the mean.
    """

    count: jax.Array
    mean: dict[str, jax.Array]
    m2: dict[str, jax.Array]


def _expand(count: jax.Array, like: jax.Array) -> jax.Array:
    return count.reshape(count.shape + (1,) * (like.ndim - count.ndim))


def empty(like: dict, batch_shape: tuple[int, ...]) -> Moments:
    """Moments of no sample, for values shaped like `like[name]: [*batch, *shape]` (arrays or
    `jax.ShapeDtypeStruct`s). Zeros made on the host and put on the device: nothing compiles
    (`jnp.zeros`, or `jnp.asarray` of a NumPy array, would compile a program per shape
    outside `jit`)."""

    def zeros(shape, dtype):
        return jax.device_put(np.zeros(shape, dtype))

    dtype = next(iter(like.values())).dtype
    return Moments(
        count=zeros(batch_shape, dtype),
        mean={k: zeros(v.shape, v.dtype) for k, v in like.items()},
        m2={k: zeros(v.shape, v.dtype) for k, v in like.items()},
    )


BLOCK = 16  # samples per block of the fold; batches are padded to a multiple of it


def single(values: dict[str, jax.Array], keep: jax.Array) -> Moments:
    """Moments of one sample per batch element; where `keep: [*batch]` is False, empty."""
    count = keep.astype(next(iter(values.values())).dtype)
    mean = {k: jnp.where(_expand(keep, v), v, 0) for k, v in values.items()}
    return Moments(count=count, mean=mean, m2={k: jnp.zeros_like(v) for k, v in mean.items()})


def merge(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two disjoint sample sets (Chan et al.), elementwise.

    An empty side returns the other one exactly.
    """
    total = a.count + b.count
    safe_total = jnp.where(total > 0, total, 1)
    share_b = b.count / safe_total
    cross = a.count * b.count / safe_total
    a_empty, b_empty = a.count == 0, b.count == 0
    mean, m2 = {}, {}
    for k in a.mean:
        delta = b.mean[k] - a.mean[k]
        merged_mean = a.mean[k] + delta * _expand(share_b, delta)
        merged_m2 = a.m2[k] + b.m2[k] + delta * delta * _expand(cross, delta)
        pick_b, pick_a = _expand(a_empty, delta), _expand(b_empty, delta)
        mean[k] = jnp.where(pick_b, b.mean[k], jnp.where(pick_a, a.mean[k], merged_mean))
        m2[k] = jnp.where(pick_b, b.m2[k], jnp.where(pick_a, a.m2[k], merged_m2))
    return Moments(count=total, mean=mean, m2=m2)


def reduce_leading_axis(moments: Moments) -> Moments:
    """Merges axis 0 (a power-of-two size `2^k`) pairwise, level by level: `[2^k, ...] -> [...]`.

    Level `l` merges entry `i` with entry `i + 2^l` for every `i` a multiple of `2^(l + 1)`:
    `((0 + 1) + (2 + 3)) + ...`. One loop body does every level on the whole axis (the other
    entries merge neighbours too, and are not used), so XLA compiles one merge, not `k`.
    """
    levels = moments.count.shape[0].bit_length() - 1

    def level(index, moments):
        shift = jnp.left_shift(1, index)
        return merge(moments, jax.tree.map(lambda x: jnp.roll(x, -shift, axis=0), moments))

    moments = jax.lax.fori_loop(0, levels, level, moments)
    return jax.tree.map(lambda x: x[0], moments)


def fold(moments: Moments, values: dict[str, jax.Array], keep: jax.Array) -> Moments:
    """Folds samples `values[name]: [N, *batch, *shape]` (`keep: [N, *batch]`) in blocks.

    `N` must be a multiple of `BLOCK`, and the samples must start at a block boundary of the
    global sample index, for the result not to depend on how the samples were batched.

    The quantities are folded side by side as one `[..., *batch, K]` array per dtype (`K` their
    numbers of elements, summed): the same arithmetic, element by element, as folding each on
    its own, in one compiled block merge instead of one per quantity (it is most of the compile
    time of a grid's chunk).
    """
    num = keep.shape[0]
    if num % BLOCK:
        raise ValueError(
            f"the number of samples folded at once must be a multiple of {BLOCK}, got {num}"
        )
    batch_ndim = keep.ndim - 1
    groups = _by_dtype(values)
    flat_values = {g: _join(values, names, 1 + batch_ndim) for g, names in groups.items()}
    flat = Moments(
        count=moments.count,
        mean={g: _join(moments.mean, names, batch_ndim) for g, names in groups.items()},
        m2={g: _join(moments.m2, names, batch_ndim) for g, names in groups.items()},
    )
    blocks = jax.tree.map(
        lambda x: x.reshape((num // BLOCK, BLOCK) + x.shape[1:]), (flat_values, keep)
    )

    def body(running, block):
        return merge(running, reduce_leading_axis(single(*block))), None

    folded = jax.lax.scan(body, flat, blocks)[0]
    return Moments(
        count=folded.count,
        mean=_split(folded.mean, groups, moments.mean),
        m2=_split(folded.m2, groups, moments.m2),
    )


def _by_dtype(values: dict[str, jax.Array]) -> dict[str, list[str]]:
    """The names of `values`, grouped by dtype (`str(dtype) -> names`, in their order)."""
    groups: dict[str, list[str]] = {}
    for name, value in values.items():
        groups.setdefault(str(value.dtype), []).append(name)
    return groups


def _join(tree: dict[str, jax.Array], names: list[str], lead: int) -> jax.Array:
    """`tree[name]: [*lead_dims, *shape]` for `names`, flattened and joined: `[*lead_dims, K]`."""
    return jnp.concatenate([tree[n].reshape(tree[n].shape[:lead] + (-1,)) for n in names], axis=-1)


def _split(flat: dict[str, jax.Array], groups: dict[str, list[str]], like: dict) -> dict:
    """The inverse of `_join`: `name -> [*batch, *shape]` shaped like `like[name]`."""
    out = {}
    for group, names in groups.items():
        start = 0
        for name in names:
            size = math.prod(like[name].shape[flat[group].ndim - 1 :])
            part = flat[group][..., start : start + size]
            out[name] = part.reshape(like[name].shape)
            start += size
    return {name: out[name] for name in like}


# The two finishing steps below read the moments of a finished run on the host, with NumPy:
# eager `jnp` would compile a small program per operation and shape (IEEE arithmetic, so the
# numbers are the same).


def variance(moments: Moments) -> dict[str, np.ndarray]:
    """Unbiased sample variance `m2 / (count - 1)`; NaN where fewer than two samples."""
    count = np.asarray(moments.count)
    out = {}
    for k, m2 in moments.m2.items():
        m2 = np.asarray(m2)
        c = _expand(count, m2)
        out[k] = np.where(c > 1, m2 / np.where(c > 1, c - 1, 1), np.nan).astype(m2.dtype)
    return out


def mean_or_nan(moments: Moments) -> dict[str, np.ndarray]:
    """The sample mean; NaN (undefined, not zero) where no sample was kept."""
    count = np.asarray(moments.count)
    out = {}
    for k, mean in moments.mean.items():
        mean = np.asarray(mean)
        out[k] = np.where(_expand(count, mean) > 0, mean, np.nan).astype(mean.dtype)
    return out
