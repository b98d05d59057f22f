"""The diagonal network's Hessian in Lanczos form: its products, the recorder's start, and the
Lanczos recurrence of many states at once (the kernel of the recorded `top_eigenvalue`).

`diagonal_hvp` gives `v -> hess L(params) v` in closed form; `lanczos_columns` runs the plain
three-term recurrence on `B` states stored as columns (`params: [depth, d, B]`), and can keep
its basis (`ritz="basis"`, `[m, depth, d, B]`) or combine its vectors with given coefficients
(`ritz=coefficients [m, B]`: a second pass that rebuilds the same vectors), which gives the top
Ritz vector (`noisydln.eigen` carries it from record to record). Every sum over coordinates is
a fixed sequence of vector additions over the batch, and the products with Sigma are one
`[d, d] @ [d, B]`: a state's numbers do not depend on the others in its batch.
"""

import functools
import operator

import jax
import jax.numpy as jnp

from noisydln import _checks
from noisydln.lanczos import Tridiagonal, default_start, fixed_order_sum
from noisydln.model import end_to_end, residual
from noisydln.problem import Problem

# Squarings of `gram_top_eigenvector`: Sigma^1024 (unbatched: once per record, not per trajectory).
SQUARINGS = 10


def layer_sum(x: jax.Array) -> jax.Array:
    """`sum_l x[l]` over the leading (layer) axis, row after row: a fixed order."""
    return sum(x[1:], x[0])


def _products(params: jax.Array) -> tuple[jax.Array, list]:
    """`(p, q)`: `p[l] = prod_{k != l} w_k` (`[depth, ...]`) and `q[l][m] = prod_{k not in
    {l, m}} w_k` (`m != l`), products of the rows of `params: [depth, ...]` in layer order."""
    depth = params.shape[0]
    ones = jnp.ones_like(params[0])

    def product(skip):
        rows = [params[k] for k in range(depth) if k not in skip]
        return functools.reduce(operator.mul, rows) if rows else ones

    p = jnp.stack([product((l,)) for l in range(depth)])
    return p, [{m: product((l, m)) for m in range(depth) if m != l} for l in range(depth)]


def _couplings(q: list, r: jax.Array) -> list[list[tuple[int, jax.Array]]]:
    """`c[l] = [(m, -r q_lm) for m != l]`: the Hessian's curvature term, which couples the
    layers of each coordinate (`r = 2 (b - Sigma beta)`)."""
    return [[(m, -r * q_lm) for m, q_lm in row.items()] for row in q]


def _curvature(couplings, v: jax.Array) -> jax.Array:
    """`(C v)_l = sum_{m != l} c_lm v_m`, like `v`, written layer by layer (as one sum over an
    axis of length depth, XLA makes it a batched matrix product per coordinate, 7x slower)."""
    return jnp.stack([sum(c * v[m] for m, c in row) for row in couplings])


def diagonal_hvp(params: jax.Array, problem: Problem):
    """`v -> hess L(params) v` of the diagonal network, `v: [depth, d]`, in closed form.

    With `p_l = prod_{k != l} w_k` and `r = 2 (b - Sigma beta)` (per coordinate;
    `model.hessian`), `(H v)_l = 2 p_l (Sigma u) - r sum_{m != l} q_lm v_m`, `u = sum_m p_m v_m`:
    one product with `Sigma` per call, the rest computed once here.
    """
    _checks.check_params(params, problem.d)
    p, q = _products(params)
    couplings = _couplings(q, residual(end_to_end(params), problem))
    gram = 2 * problem.gram

    def hvp(v: jax.Array) -> jax.Array:
        return p * (layer_sum(p * v) @ gram)[None, :] + _curvature(couplings, v)

    return hvp


def gram_top_eigenvector(problem: Problem, num_squarings: int = SQUARINGS) -> jax.Array:
    """An approximate top eigenvector of `Sigma`, `[d]`: `Sigma^(2^k) g` normalised, for
    `g = default_start(d)` and `k = num_squarings`, by repeated squaring (a component
    `(lambda_2 / lambda_1)^(2^k)` along the second eigenvector remains: 4e-10 on W1).

    Ten `[d, d]` products, each scaled by its trace: a power iteration would take 1000 steps
    one after the other, and `jnp.linalg.eigh` of a `[100, 100]` matrix costs on a CPU about
    as much as the Lanczos steps of a thousand trajectories.
    """

    def square(_, power):
        power = power @ power
        return power / jnp.trace(power)

    power = jax.lax.fori_loop(0, num_squarings, square, problem.gram / jnp.trace(problem.gram))
    u = power @ default_start(problem.d, problem.gram.dtype)
    return u / jnp.sqrt(fixed_order_sum(u * u))


def column_norms(x: jax.Array) -> jax.Array:
    """`|x[..., b]|` of columns `x: [depth, d, B]`, `[B]`, in a fixed order."""
    return jnp.sqrt(fixed_order_sum(layer_sum(x * x), axis=0))


def start_columns(p: jax.Array, problem: Problem) -> jax.Array:
    """`diagonal_start` of the states whose products `p_l` are `p: [depth, d, B]`, like `p`."""
    depth, d = p.shape[:2]
    aligned = p * gram_top_eigenvector(problem).astype(p.dtype)[None, :, None]
    norm = column_norms(aligned)[None, None]
    aligned = jnp.where(norm > 0, aligned / jnp.where(norm > 0, norm, 1), 0)
    return aligned + 0.1 * default_start(depth * d, p.dtype).reshape(depth, d)[..., None]


def diagonal_start(params: jax.Array, problem: Problem) -> jax.Array:
    """The recorder's cold start vector, `[depth, d]`: `J^T u_1` normalised (`J^T u = (p_l *
    u)_l`, `p_l = prod_{k != l} w_k`, `u_1 = gram_top_eigenvector(problem)`), plus `0.1
    default_start`.

    `hess L = 2 J^T Sigma J + (the curvature of the layers)`: where the data term dominates, the
    top eigenvectors lie near `J^T u_1`. The random part keeps a component along every
    eigenvector (also where `J^T u_1 = 0`). On W1 it saves 10 Lanczos steps out of 50.
    """
    _checks.check_params(params, problem.d)
    return start_columns(_products(params[..., None])[0], problem)[..., 0]


def lanczos_columns(
    params: jax.Array,
    start: jax.Array | None,
    problem: Problem,
    num_iterations: int,
    ritz: str | jax.Array | None = None,
) -> tuple[Tridiagonal, jax.Array, jax.Array | None]:
    """`m` steps of the plain Lanczos recurrence of `B` states at once, stored as columns.

    Args:
      params: `[depth, d, B]`.
      start: like params (any non-zero norms), or None for `diagonal_start`.
      problem: the regression problem (unbatched).
      num_iterations: `m`, static (cut to `depth * d`).
      ritz: None; "basis" to keep the orthonormal Lanczos vectors `q_j`; or coefficients
        `y: [m, B]` to return `sum_j y_j q_j` (the same vectors, rebuilt by the same steps).

    Returns:
      `(T, coupling, extra)`: the Tridiagonal `T` of `[m, B]` and `[m - 1, B]`; the coupling
      `b_{m-1}: [B]` to the next vector (the residual of a Ritz pair `(theta, V y)` of `T` is
      `b_{m-1} |y_{m-1}|`); `extra` None, the basis `[m, depth, d, B]` (zero past an invariant
      Krylov space) or the combination like params.

    The Hessian-vector product is never stored: `<x, H x> = <u, 2 Sigma u> + <x, C x>` comes
    from `u = J x` and the curvature, and the next vector from the same terms. The vectors are
    carried unnormalised, `x_j = b_{j-1} q_j` (`b_j` the couplings, `b_{-1} = 1`), so that the
    step writes one array (an invariant Krylov space sets the scalars that carry them to 0);
    two steps per loop iteration let XLA reuse the buffers instead of copying the carry.
    """
    dtype, depth = params.dtype, params.shape[0]
    m = min(num_iterations, params.shape[0] * params.shape[1])
    p, q = _products(params)
    beta = functools.reduce(operator.mul, list(params))  # [d, B]
    residual_ = 2 * (problem.xty.astype(dtype)[:, None] - problem.gram.astype(dtype) @ beta)
    couplings = _couplings(q, residual_)
    gram = (2 * problem.gram).astype(dtype)
    eps = jnp.finfo(dtype).eps
    start = start_columns(p, problem) if start is None else start.astype(dtype)
    start = start / column_norms(start)[None, None]

    def step(j, carry):
        # previous = b_{j-2} q_{j-1}, current = b_{j-1} q_j, inverse = 1 / b_{j-1},
        # ratio = b_{j-1} / b_{j-2}; inverse = ratio = 0 once the Krylov space is invariant
        previous, current, inverse, ratio, diagonal, off_diagonal, broken, extra = carry
        u = layer_sum(p * current)  # [d, B]
        s = gram @ u
        pairs = [
            c * current[l] * current[k] for l in range(depth) for k, c in couplings[l] if k > l
        ]
        cross = 2 * sum(pairs[1:], pairs[0])  # <x, C x>, per coordinate
        alpha = fixed_order_sum(u * s + cross, axis=0) * inverse**2
        following = p * s[None] + _curvature(couplings, current) - alpha[None, None] * current
        following = following * inverse[None, None] - ratio[None, None] * previous
        beta = jnp.sqrt(fixed_order_sum(layer_sum(following * following), axis=0))
        previous_beta = jnp.where(j > 0, off_diagonal[jnp.maximum(j - 1, 0)], 0)
        diagonal = diagonal.at[j].set(jnp.where(broken, diagonal[0], alpha))
        # an invariant Krylov space leaves beta at the rounding level of |H q_j|
        broken = broken | (beta <= eps * (jnp.abs(alpha) + previous_beta))
        off_diagonal = off_diagonal.at[j].set(jnp.where(broken, 0, beta))
        next_inverse = jnp.where(broken, 0, 1 / jnp.where(broken, 1, beta))
        next_ratio = jnp.where(broken, 0, beta * inverse)
        if isinstance(ritz, str):  # q_j = x_j / b_{j-1}
            extra = extra.at[j].set(current * inverse[None, None])
        elif ritz is not None:
            extra = extra + (ritz[j] * inverse)[None, None] * current
        carry = (current, following, next_inverse, next_ratio, diagonal, off_diagonal, broken)
        return (*carry, extra)

    batch = params.shape[2:]
    zeros, ones = jnp.zeros((m, *batch), dtype), jnp.ones(batch, dtype)
    extra = None
    if isinstance(ritz, str):
        if ritz != "basis":
            raise ValueError(f'ritz must be None, "basis" or coefficients, got {ritz!r}')
        extra = jnp.zeros((m, *start.shape), dtype)
    elif ritz is not None:
        ritz = ritz.astype(dtype)
        extra = jnp.zeros_like(start)
    carry = (jnp.zeros_like(start), start, ones, ones, zeros, zeros, jnp.zeros(batch, bool), extra)
    carry = jax.lax.fori_loop(0, m, step, carry, unroll=2)
    return Tridiagonal(carry[4], carry[5][: m - 1]), carry[5][m - 1], carry[7]


def combine(basis: jax.Array, coefficients: jax.Array) -> jax.Array:
    """`sum_j y_j q_j` of a basis `[m, depth, d, B]` and `y: [m, B]`, `[depth, d, B]`, summed
    in a fixed order."""
    return fixed_order_sum(coefficients[:, None, None, :] * basis, axis=0)


def diagonal_lanczos(
    params: jax.Array, problem: Problem, num_iterations: int, start: jax.Array
) -> Tridiagonal:
    """`lanczos(diagonal_hvp(params, problem), params, reorthogonalize=False, ...)`, written for
    speed (`lanczos_columns` of one state): the same Tridiagonal up to rounding, at a fraction
    of the cost batched. `params: [depth, d]`, `start` like it (any non-zero norm)."""
    _checks.check_params(params, problem.d)
    columns, _, _ = lanczos_columns(params[..., None], start[..., None], problem, num_iterations)
    return Tridiagonal(columns.diagonal[:, 0], columns.off_diagonal[:, 0])
