"""A per-state function computed batch by batch: every level of `jax.vmap` flattened into one
batch, and on a CPU the batch cut into blocks that stay in the cache.

`flattening_vmap(batch_fn, block)` turns `batch_fn(states, context) -> [N, ...]`, which acts on
a batch of states (a tuple of arrays with a leading axis `[N]`) and one unbatched `context` (a
pytree, e.g. the `Problem`), into a function of ONE state whose batching rule (a
`jax.custom_batching.custom_vmap`) hands `batch_fn` all the states of all the levels of `vmap`
at once (the grid's seeds x cells), on a CPU in full blocks of `block` states one after the
other (`jax.lax.map`; all at once elsewhere). An iterative kernel whose vectors would stream
through memory at every step for the whole batch then keeps a block's vectors in the cache,
and every state is computed in a batch of the same size, so that its numbers do not depend on
how many states are batched with it. A batch of contexts is vmapped as it is.

`batch_fn` must compute every state on its own (no sums across the batch).
"""

import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

DEFAULT_L1_BYTES = 32 * 1024  # when the operating system does not say


@functools.cache
def l1_data_cache_bytes() -> int:
    """The first CPU's level-1 data cache in bytes (Linux sysfs), or `DEFAULT_L1_BYTES`."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        if level == "1" and kind in ("Data", "Unified") and size.endswith("K"):
            return int(size[:-1]) * 1024
    return DEFAULT_L1_BYTES


def cache_block(
    row_bytes: int, fraction: float = 5 / 6, multiple: int = 32, high: int = 1024
) -> int:
    """States per block such that `block * row_bytes` fills `fraction` of the L1 data cache,
    a multiple of `multiple` in `[multiple, high]` (`row_bytes`: the bytes one state puts in
    one of the kernel's `[rows, block]` arrays; `multiple`: 32, a multiple of the matrix
    product kernels' panel widths, as found by `tests/test_eigen_vs_eigvalsh.py`)."""
    block = int(fraction * l1_data_cache_bytes()) // max(int(row_bytes), 1) // multiple * multiple
    return min(max(block, multiple), high)


def in_blocks(batch_fn: Callable, states: tuple, context, block: int):
    """`batch_fn(states, context)` of states with a leading axis `[N]`, on a CPU in full blocks
    of `block` states (the last one padded with copies of the first state, also when
    `N < block`), one after the other; in one piece on other platforms.

    Every state is then computed in a batch of exactly `block` states: matrix products, whose
    rounding can depend on a column's place among the last, incomplete panel of a batch,
    give the same bits whatever `N` (with `block` a multiple of the kernels' panel width).

    Where the default platform is the CPU (a machine without an accelerator, or JAX told to
    use the CPU) the blocks are taken directly; elsewhere `jax.lax.platform_dependent` picks
    them when the program is lowered for a CPU, at the cost of tracing and lowering `batch_fn`
    twice (once per branch: about 2 s per recorded Lanczos program). Either way the numbers
    are right on any device; only the blocking of a program sent to an accelerator from a
    CPU-default process is not needed there.
    """
    n = states[0].shape[0]
    blocks = -(-n // block)

    def split(x):  # [N, ...] -> [blocks, block, ...]
        pad = jnp.broadcast_to(x[:1], (blocks * block - n,) + x.shape[1:])
        return jnp.concatenate([x, pad]).reshape((blocks, block) + x.shape[1:])

    def blocked(states, context):
        parts = tuple(map(split, states))
        if blocks == 1:
            out = jax.tree.map(lambda x: x[None], batch_fn(tuple(x[0] for x in parts), context))
        else:
            out = jax.lax.map(lambda part: batch_fn(part, context), parts)
        return jax.tree.map(lambda x: x.reshape((blocks * block,) + x.shape[2:])[:n], out)

    if jax.default_backend() == "cpu":
        return blocked(states, context)
    return jax.lax.platform_dependent(states, context, cpu=blocked, default=batch_fn)


def flattening_vmap(batch_fn: Callable, block: int | Callable) -> Callable:
    """`(states, context) -> batch_fn` of the one state `states` (a tuple of arrays without the
    batch axis), whose `vmap` at any depth calls `in_blocks(batch_fn, ...)` once on all the
    states (a single state is a batch of one). `block` is an int or `block(states, context)
    -> int` (static shapes only). Build it once per kernel (at import, or cached): each call
    of this function makes a new `custom_vmap`."""

    def in_blocks_of(states, context):  # a leading axis [N]
        size = block(states, context) if callable(block) else block
        return in_blocks(batch_fn, states, context, size)

    def one(states, context):
        batch = in_blocks_of(tuple(x[None] for x in states), context)
        return jax.tree.map(lambda x: x[0], batch)

    @custom_vmap
    def single(states, context):
        return one(states, context)

    @single.def_vmap
    def _(axis_size, in_batched, states, context):
        return every_batched(flattened(axis_size, in_batched, states, context, leading=1))

    @custom_vmap
    def batch(states, context):
        return in_blocks_of(states, context)

    @batch.def_vmap
    def _(axis_size, in_batched, states, context):  # [B, N, ...]: one batch [B N, ...]
        return every_batched(flattened(axis_size, in_batched, states, context, leading=2))

    def flattened(axis_size, in_batched, states, context, leading):
        """The values over `leading` batch axes (the new one first), shaped by them."""
        states_batched, context_batched = in_batched
        if any(jax.tree.leaves(context_batched)):  # a batch of contexts: vmapped as it is
            kernel = one if leading == 1 else jax.vmap(one, in_axes=(0, None))
            axes = tuple(0 if b else None for b in states_batched)
            context_axes = jax.tree.map(lambda b: 0 if b else None, context_batched)
            return jax.vmap(kernel, in_axes=(axes, context_axes), axis_size=axis_size)(
                states, context
            )
        states = tuple(
            x if b else jnp.broadcast_to(x, (axis_size,) + x.shape)
            for x, b in zip(states, states_batched, strict=True)
        )
        lead = states[0].shape[:leading]
        out = batch(tuple(x.reshape((-1,) + x.shape[leading:]) for x in states), context)
        return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), out)

    return single


def every_batched(out) -> tuple:
    """`(out, True for each of its leaves)`: a `custom_vmap` rule's answer (any pytree)."""
    return out, jax.tree.map(lambda _: True, out)
