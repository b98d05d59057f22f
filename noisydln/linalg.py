"""Matrix products and traces summed in a fixed pairwise order, for one example (batch with `vmap`).

XLA's dots and reductions choose their summation order (and which products they fuse into
sums) by the shapes of the whole batch, so a trajectory's numbers could change with the number
of trajectories computed beside it. These are broadcasts, static slices and additions in a fixed
pairwise tree: the same operations for every batch, which keeps `run_grid`'s chunk and device
invariance for the dense family (`noisydln.dense`). A sum of at most `TERMS` terms is written
term by term (`tree_sum`); a longer one is cut into consecutive blocks of `TERMS` terms, each
summed by `tree_sum` (XLA fuses a block into one loop), and the block sums are added by
`tree_sum`: no `[i, j, k]` array of products is formed.

XLA:CPU always lets LLVM fuse a multiply into the add that consumes it (fused multiply-add), and
whether it does can differ between the programs of one and of several devices where the same
fusion holds arithmetic on a compile-time zero (`0.0 * x * I` for a constant `sigma = 0`): seen
in `dense.hessian_trace` written with `input_moments(..., 0.0)`, 1 ulp apart between one and two
devices. Callers keep constant zeros out of their arithmetic.
"""

import jax

TERMS = 16


def tree_sum(terms: list[jax.Array]) -> jax.Array:
    """`((t_0 + t_1) + (t_2 + t_3)) + ...`: the sum of equally shaped arrays in a fixed order."""
    while len(terms) > 1:
        pairs = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = pairs + terms[len(pairs) * 2 :]
    return terms[0]


def _blocks(length: int) -> list[range]:
    """`[0, length)` cut into consecutive ranges of `TERMS` indices (the last one shorter)."""
    return [range(start, min(start + TERMS, length)) for start in range(0, length, TERMS)]


def matvec(a: jax.Array, v: jax.Array) -> jax.Array:
    """`a @ v`, `[i, k] @ [k] -> [i]`, summed over `k` in a fixed order (as `matmul`)."""
    blocks = [tree_sum([a[:, m] * v[m] for m in block]) for block in _blocks(a.shape[1])]
    return tree_sum(blocks)


def vecmat(v: jax.Array, a: jax.Array) -> jax.Array:
    """`v @ a`, `[k] @ [k, j] -> [j]`, summed over `k` in a fixed order (as `matmul`)."""
    blocks = [tree_sum([v[m] * a[m, :] for m in block]) for block in _blocks(a.shape[0])]
    return tree_sum(blocks)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b`, `[i, k] @ [k, j] -> [i, j]`, summed over `k` in a fixed order.

    `k` is cut into consecutive blocks of `TERMS`; each block's rank-1 terms
    `a[:, m] b[m, :]` are added by `tree_sum` (XLA fuses a block into one loop over `[i, j]`),
    then the block sums by `tree_sum`: no `[i, j, k]` array, at most `ceil(k / TERMS)` arrays
    `[i, j]` live.
    """
    blocks = [
        tree_sum([a[:, m, None] * b[None, m, :] for m in block]) for block in _blocks(a.shape[1])
    ]
    return tree_sum(blocks)


def trace(a: jax.Array) -> jax.Array:
    """`tr a` of a square matrix, its diagonal summed in a fixed order (by static slices:
    `jnp.diagonal` is a gather, which XLA fuses differently for different batch sizes)."""
    return tree_sum([a[m, m] for m in range(a.shape[0])])
