"""The Lanczos iteration on a symmetric operator known by its products, and its tridiagonal matrix.

`lanczos(hvp, like, num_iterations=m)` runs `m` steps from a fixed start (with full
reorthogonalisation, or the plain three-term recurrence) and returns the `[m, m]` tridiagonal
matrix `T = V^T H V` of the Krylov basis; `ritz_values(T)` are its eigenvalues (by `eigvalsh`),
`largest_ritz_value(T)` the largest one alone (by bisection, cheap when batched). The iteration
count is static and no control flow depends on values, so everything runs under `jit` and
`vmap` (it acts on ONE operator; batch with `jax.vmap`), and every sum is taken in a fixed order
(`fixed_order_sum`), so a trajectory's numbers do not depend on how many are batched with it.
`noisydln.eigen` builds the Hessians' top eigenvalue on it.
"""

import functools
import operator
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from noisydln import _checks, _draws

# The start vector: entries of the fixed key below (normalised). A Gaussian vector has, with
# probability one, a component along every eigenvector; a structured start such as
# `ones / sqrt(P)` does not (a balanced diagonal network's eigenvectors `(e_i, -e_i)` are
# orthogonal to it, and those carry the eigenvalue `r_i` that is the largest near the origin).
START_KEY = 20250314


class Tridiagonal(NamedTuple):
    """The Lanczos matrix `T = V^T H V`: `diagonal: [m]`, `off_diagonal: [m - 1]` (>= 0)."""

    diagonal: jax.Array
    off_diagonal: jax.Array

    def matrix(self) -> jax.Array:
        """`T` as a dense `[m, m]` matrix."""
        off = jnp.diag(self.off_diagonal, 1)
        return jnp.diag(self.diagonal) + off + off.T


def fixed_order_sum(x: jax.Array, axis: int = -1) -> jax.Array:
    """Sum over `axis` by a fixed tree of elementwise additions (`[..., m, ...] -> [...]`).

    Halves the axis again and again (`x[:h] + x[h:2h]`), the odd element of each level added
    to a running remainder. Like `model.pairwise_sum` it does not depend on the batch (XLA's
    own reductions choose their order by the whole shape), and it pads nothing, so XLA fuses it
    with the products it sums. Over the leading axis of `[m, batch]` every addition is one
    vector operation over the batch.
    """
    axis = axis % x.ndim
    rest = None
    while x.shape[axis] > 1:
        half = x.shape[axis] // 2
        if x.shape[axis] % 2:
            odd = jax.lax.index_in_dim(x, 2 * half, axis, keepdims=False)
            rest = odd if rest is None else rest + odd
        x = jax.lax.slice_in_dim(x, 0, half, axis=axis) + jax.lax.slice_in_dim(
            x, half, 2 * half, axis=axis
        )
    x = jax.lax.index_in_dim(x, 0, axis, keepdims=False)
    return x if rest is None else x + rest


def tree_dot(x, y) -> jax.Array:
    """`<x, y>` of two pytrees of arrays with the same structure, in a fixed order: each leaf's
    leading axes summed row by row, then `fixed_order_sum` along its last axis, leaf by leaf."""
    total = None
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
        product = a * b
        rows = jnp.reshape(product, (-1, jnp.shape(product)[-1] if jnp.ndim(product) else 1))
        part = fixed_order_sum(functools.reduce(operator.add, list(rows)))
        total = part if total is None else total + part
    return total


def _flat(like) -> tuple[int, Callable, jnp.dtype]:
    """`(P, unravel, dtype)` of an int (vectors `[P]`) or a pytree of arrays (vectors like it)."""
    if isinstance(like, int) and not isinstance(like, bool):
        if like < 1:
            raise ValueError(f"dim_or_like must be a positive integer or a pytree, got {like}")
        return like, lambda v: v, jnp.result_type(float)
    flat, unravel = ravel_pytree(like)
    if flat.size == 0 or not jnp.issubdtype(flat.dtype, jnp.floating):
        raise ValueError(
            f"dim_or_like must be a positive integer or a non-empty pytree of float arrays, "
            f"got {_checks.describe(like)}"
        )
    return flat.size, unravel, flat.dtype


def default_start(size: int, dtype) -> jax.Array:
    """The fixed start vector: `N(0, 1)` entries from `jax.random.key(START_KEY)`, unit norm, `[P]`.

    A constant of the program, computed once per `(size, dtype)` outside any trace (left in the
    program, XLA would fold it in some programs and compute it in others, which differ in the
    last bits: a trajectory's numbers would depend on how the states are batched).
    """
    return jnp.asarray(_unit_start(int(size), np.dtype(dtype)))


@functools.cache
def _unit_start(size: int, dtype: np.dtype) -> np.ndarray:
    """`default_start` on the host, `[P]` (read-only): the draw of `_draws.standard_normal`,
    divided by its norm with the additions of `fixed_order_sum` in the same order and each
    operation rounded once in `dtype`, the division by the norm as XLA does it (a product with
    the reciprocal, except for one entry, where no broadcast is left to rewrite): the bits of the
    same steps in JAX."""
    with jax.ensure_compile_time_eval():
        v = np.asarray(_draws.standard_normal(jax.random.key(START_KEY), (size,), dtype))
    norm = np.sqrt(_host_fixed_order_sum(v * v))
    unit = v / norm if size == 1 else v * (dtype.type(1) / norm)
    unit.setflags(write=False)
    return unit


def _host_fixed_order_sum(x: np.ndarray) -> np.ndarray:
    """`fixed_order_sum(x)` of a vector in NumPy, the same additions in the same order."""
    rest = None
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        if x.shape[0] % 2:
            rest = x[2 * half] if rest is None else rest + x[2 * half]
        x = x[:half] + x[half : 2 * half]
    return x[0] if rest is None else x[0] + rest


def _check_iterations(num_iterations) -> None:
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int):
        raise ValueError(f"num_iterations must be a positive integer, got {num_iterations!r}")
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be a positive integer, got {num_iterations}")


def _project_out(vectors: jax.Array, w: jax.Array) -> jax.Array:
    """`w - V^T (V w)` for the rows `V: [m, P]`, every sum in a fixed order, `[P]`."""
    coefficients = fixed_order_sum(vectors * w[None, :])  # [m]
    return w - fixed_order_sum((coefficients[:, None] * vectors).T)


def lanczos(
    hvp: Callable,
    dim_or_like,
    *,
    num_iterations: int,
    start=None,
    reorthogonalize: bool = True,
    unroll: int = 1,
) -> Tridiagonal:
    """`m` Lanczos steps, with full reorthogonalisation (two Gram-Schmidt passes) by default.

    Args:
      hvp: `v -> H v` for a symmetric `H`, `v` a `[P]` vector or a pytree like `dim_or_like`.
      dim_or_like: `P` (vectors `[P]` of the default float dtype) or a pytree of float arrays
        (vectors shaped like it, in its dtype; only its structure, shapes and dtype are read).
      num_iterations: `m >= 1`, static; more than `P` steps are cut to `P` (the whole space).
      start: the start vector (`[P]` or like `dim_or_like`, any non-zero norm); default
        `default_start`.
      reorthogonalize: keep the whole basis `[m, P]` and orthogonalise every new vector against
        it (True), or keep only the last two vectors (False: the plain three-term recurrence).
        Without it the basis loses orthogonality as Ritz values converge and converged ones
        reappear as copies ("ghosts"), but the extreme Ritz values stay within rounding of the
        spectrum's ends and converge as fast (Paige 1976); it costs `O(P)` per step instead of
        `O(m P)` and memory for two vectors instead of `m`.
      unroll: `jax.lax.fori_loop`'s unrolling of the steps.

    Returns:
      The `Tridiagonal` `T = V^T H V` of the Krylov basis `V: [P, m]`. When the Krylov space is
      invariant after `k < m` steps (the start has no component along some eigenvectors: those
      cannot be found), the remaining diagonal entries repeat `T[0, 0]` (a Rayleigh quotient,
      inside the spectrum) with zero coupling, which moves neither end of the Ritz values. With
      reorthogonalisation an invariant space is recognised when the second Gram-Schmidt pass
      removes half of what the first left (Daniel, Gragg, Kaufman and Stewart 1976): the rest is
      rounding, and going on from it would lose orthogonality (spurious Ritz values above the
      spectrum, in float32).
    """
    _check_iterations(num_iterations)
    size, unravel, dtype = _flat(dim_or_like)
    m = min(num_iterations, size)
    if start is None:
        v0 = default_start(size, dtype)
    else:
        v0 = ravel_pytree(start)[0]
        _checks.check_shape("start", v0, (size,), "[P]")
        v0 = v0.astype(dtype)
        v0 = v0 / jnp.sqrt(fixed_order_sum(v0 * v0))

    def ravel(tree):
        return ravel_pytree(tree)[0].astype(dtype)

    eps = jnp.finfo(dtype).eps

    def step(j, carry):
        vectors, diagonal, off_diagonal, broken = carry
        previous_beta = off_diagonal[jnp.maximum(j - 1, 0)]  # 0 at the first step
        v = unravel(vectors[j]) if reorthogonalize else vectors[1]
        hv = jax.tree.map(lambda x: x.astype(dtype), hvp(v))
        alpha = tree_dot(v, hv)
        alpha_used = jnp.where(broken, diagonal[0], alpha)
        if reorthogonalize:  # rows past j are zero; twice is enough (Kahan, Parlett)
            w = ravel(hv) - alpha * vectors[j]
            once = _project_out(vectors, w)
            w = _project_out(vectors, once)
            beta = jnp.sqrt(fixed_order_sum(w * w))
            # the second pass removing half of what the first left means that what the first
            # left was rounding inside the span: the Krylov space is invariant
            broken = broken | (beta <= 0.5 * jnp.sqrt(fixed_order_sum(once * once)))
            w = unravel(w)
        else:  # the three-term recurrence, on vectors shaped like the parameters
            w = jax.tree.map(lambda h, x, y: h - alpha * x - previous_beta * y, hv, v, vectors[0])
            beta = jnp.sqrt(tree_dot(w, w))
            # |H v| = |(previous_beta, alpha, beta)| in exact arithmetic; an invariant subspace
            # leaves beta at the rounding level of it
            broken = broken | (beta <= eps * (jnp.abs(alpha) + previous_beta))
        beta = jnp.where(broken, 0.0, beta)
        diagonal = diagonal.at[j].set(alpha_used)
        off_diagonal = off_diagonal.at[j].set(beta)
        scale = jnp.where(broken, 0.0, 1 / jnp.where(broken, 1.0, beta))
        following = jax.tree.map(lambda x: x * scale, w)
        if reorthogonalize:
            vectors = vectors.at[j + 1].set(ravel(following), mode="drop")  # the last: unused
        else:
            vectors = (v, following)
        return vectors, diagonal, off_diagonal, broken

    if reorthogonalize:
        vectors = jnp.zeros((m, size), dtype).at[0].set(v0)
    else:  # (previous, current); the previous one's coefficient is 0 at the first step
        vectors = (jax.tree.map(jnp.zeros_like, unravel(v0)), unravel(v0))
    carry = (vectors, jnp.zeros((m,), dtype), jnp.zeros((m,), dtype), jnp.zeros((), bool))
    _, diagonal, off_diagonal, _ = jax.lax.fori_loop(0, m, step, carry, unroll=unroll)
    return Tridiagonal(diagonal, off_diagonal[: m - 1])


def ritz_values(tridiagonal: Tridiagonal) -> jax.Array:
    """The eigenvalues of the Lanczos matrix, ascending, `[m]` (by `jnp.linalg.eigvalsh`)."""
    return jnp.linalg.eigvalsh(tridiagonal.matrix())


def largest_ritz_value(tridiagonal: Tridiagonal) -> jax.Array:
    """The largest eigenvalue of the Lanczos matrix, scalar, by bisection on Sturm counts.

    The count of eigenvalues below `x` is the number of negative pivots of `T - x I`
    (`q_0 = a_0 - x`, `q_i = a_i - x - b_{i-1}^2 / q_{i-1}`), which is exact for a matrix within
    a few rounding errors of `T` (Kahan 1966, LAPACK's `dstebz`). The bracket is
    `[max_i a_i, Gershgorin's upper bound]` (the largest eigenvalue is at least every diagonal
    entry), and `nmant + 3` halvings pin the top eigenvalue to an eighth of `eps` times the
    bracket's width. It agrees with `ritz_values(tridiagonal)[-1]` to that accuracy, and it
    batches well: on a CPU, `eigvalsh` of a `[batch, 40, 40]` stack costs some 50 times more,
    and `jax.scipy.linalg.eigh_tridiagonal` takes seconds to compile.
    """
    a, b = tridiagonal.diagonal, tridiagonal.off_diagonal
    m = a.shape[0]
    if m == 1:
        return a[0]
    finfo = jnp.finfo(a.dtype)
    b_squared = b**2
    radius = jnp.concatenate([jnp.abs(b[:1]), jnp.abs(b[:-1]) + jnp.abs(b[1:]), jnp.abs(b[-1:])])
    lower, upper = jnp.max(a), jnp.max(a + radius)
    pivot_floor = finfo.tiny / finfo.eps * jnp.maximum(1, jnp.max(b_squared))

    def all_below(x):  # True where x is above every eigenvalue: all m pivots negative
        def pivot(i, carry):
            q, below = carry
            q = jnp.where(jnp.abs(q) < pivot_floor, -pivot_floor, q)
            q = a[i] - x - b_squared[i - 1] / q
            return q, below & (q < 0)

        q = a[0] - x
        return jax.lax.fori_loop(1, m, pivot, (q, q < 0))[1]  # unrolled: slower on a CPU

    def halve(_, bracket):
        lo, hi = bracket
        middle = 0.5 * (lo + hi)
        above = all_below(middle)
        return jnp.where(above, lo, middle), jnp.where(above, middle, hi)

    lo, hi = jax.lax.fori_loop(0, finfo.nmant + 3, halve, (lower, upper))
    return 0.5 * (lo + hi)


# Inverse-iteration sweeps of `top_ritz_vector`, and its shift above the top Ritz value in
# units of `eps * |T|`: the solve is then with a positive definite matrix (no pivoting), and each
# sweep cuts the other Ritz vectors' components by `shift / (shift + gap)` (below 1e-2 per sweep
# for W1's closest pair, 0.2 % apart, in float32; 1e-9 in float64).
RITZ_SWEEPS = 2
RITZ_SHIFT = 64


def top_ritz_vector(tridiagonal: Tridiagonal, value: jax.Array) -> jax.Array:
    """The eigenvector of `T` for its largest eigenvalue `value` (`largest_ritz_value`), `[m]`,
    unit norm: the coefficients of the top Ritz vector in the Krylov basis.

    `RITZ_SWEEPS` sweeps of inverse iteration from `ones`, `y <- (s I - T)^-1 y` with `s =
    value + RITZ_SHIFT eps |T|` (`|T|` bounded by Gershgorin): `s I - T` is positive definite,
    so its `L D L^T` factorisation without pivoting is stable, `O(m)` per sweep (batch with
    `jax.vmap`). Exact to rounding for the Ritz vector's use as a start vector.
    """
    a, b = tridiagonal.diagonal, tridiagonal.off_diagonal
    m = a.shape[0]
    if m == 1:
        return jnp.ones_like(a)
    finfo = jnp.finfo(a.dtype)
    size = jnp.max(jnp.abs(a)) + 2 * jnp.max(jnp.abs(b))
    shifted = value + RITZ_SHIFT * finfo.eps * size - a  # the diagonal of s I - T, > 0
    floor = finfo.tiny / finfo.eps * jnp.maximum(1, size)

    def pivot(i, pivots):  # D of s I - T = L D L^T
        q = shifted[i] - b[i - 1] ** 2 / pivots[i - 1]
        return pivots.at[i].set(jnp.maximum(q, floor))

    first = jnp.zeros_like(a).at[0].set(jnp.maximum(shifted[0], floor))
    pivots = jax.lax.fori_loop(1, m, pivot, first)
    ratios = -b / pivots[:-1]  # L's subdiagonal: (s I - T)[i, i - 1] / d_{i - 1}

    def sweep(_, y):
        def forward(i, z):  # L z = y
            return z.at[i].set(y[i] - ratios[i - 1] * z[i - 1])

        def backward(k, x):  # D L^T x = z, from the end
            i = m - 2 - k
            return x.at[i].set(z[i] / pivots[i] - ratios[i] * x[i + 1])

        z = jax.lax.fori_loop(1, m, forward, y)
        x = jax.lax.fori_loop(0, m - 1, backward, z.at[m - 1].set(z[m - 1] / pivots[m - 1]))
        return x / jnp.max(jnp.abs(x))

    y = jax.lax.fori_loop(0, RITZ_SWEEPS, sweep, jnp.ones_like(a))
    return y / jnp.sqrt(fixed_order_sum(y * y))
