"""The largest Hessian eigenvalue from exact Hessian-vector products, by Lanczos (`noisydln.lanczos`).

`top_eigenvalue(hvp, like, num_iterations=m)` is the largest (algebraic, not in absolute value:
that is `top_abs_eigenvalue`) Ritz value of `m` Lanczos steps on any symmetric operator known by
its products. For the two network families: `diagonal_hvp` and `dense_hvp` give the products
(closed form; forward over reverse), and `diagonal_top_eigenvalue` and `dense_top_eigenvalue`
the recorded quantity `top_eigenvalue` of one parameter state (batch with `jax.vmap`). Memory is
a few vectors of the parameters' size per state: the `[P, P]` Hessian is never formed.

Accuracy. The largest Ritz value approaches the largest eigenvalue from below, with an error
that falls geometrically in `m` at a rate set by the gap between the top eigenvalues relative to
the spread of the spectrum; after `m = P` steps (with reorthogonalisation) it is exact up to
rounding. `RECORD_ITERATIONS` is the count measured to give 1e-6 relative accuracy on workload
W1; no count is claimed for other problems (see its comment).
"""

import functools
import operator

import jax
import jax.numpy as jnp

from noisydln import _checks, batching, dense
from noisydln.lanczos import (
    Tridiagonal,
    default_start,
    fixed_order_sum,
    lanczos,
    largest_ritz_value,
    ritz_values,
)
from noisydln.model import end_to_end, residual
from noisydln.problem import Problem

# Lanczos steps of the recorded `top_eigenvalue`. Measured on W1 (n = 200, d = 100, depth 2,
# P = 200) against `eigvalsh` of the exact Hessian, on 960 states from real trajectories (the
# start and 10, 20, ..., 100, 200, 500, 1000, 2000 steps of stochastic SAM, 8 sigmas in
# [0, 0.3] x 8 seeds), from `diagonal_start`: largest relative error 6.6e-8 in float64
# (5.9e-6 with 35 steps, 1.1e-3 with 30), 2.3e-6 in float32 (rounding: it does not fall with
# more steps). The hardest states are those 10 to 30 steps from the start, whose top two
# eigenvalues are 0.2 % apart. See `python -m noisydln.bench.eigen_cost --parts accuracy`.
RECORD_ITERATIONS = 40

# The recorded `top_eigenvalue` of many states is computed on a CPU in blocks (`record_block`)
# whose `[d, block]` slabs of the Lanczos vectors fill 5/6 of the L1 data cache: on W1 (d = 100,
# 8192 states per record, 1 CPU device, 48 KiB L1) 156 ms per record in blocks of 96 float32
# states (a 38 KB slab), 165 ms in blocks of 80, 300 ms in blocks of 112 to 192 (45 to 77 KB),
# 250 to 285 ms in blocks of 256; in float64 170 ms for 4096 states in blocks of 32 or 48,
# 290 to 370 ms in blocks of 56 to 96 (`batching.cache_block`).
# Squarings of `gram_top_eigenvector`: Sigma^1024 (unbatched: once per record, not per trajectory).
SQUARINGS = 10


def top_eigenvalue(
    hvp, dim_or_like, *, num_iterations: int, start=None, reorthogonalize: bool = True
) -> jax.Array:
    """The largest (algebraic) eigenvalue of a symmetric operator known by its products, scalar.

    The largest Ritz value of `lanczos(hvp, dim_or_like, num_iterations=..., start=...)`: a lower
    bound of the largest eigenvalue (up to rounding), exact after `P` steps. Batch over
    operators with `jax.vmap`.

    Args:
      hvp: `v -> H v`, `v` a `[P]` vector or a pytree like `dim_or_like`.
      dim_or_like: `P`, or a pytree of float arrays giving the vectors' shapes and dtype.
      num_iterations: Lanczos steps, static (cost: that many products and `O(m^2 P)` more).
      start: start vector, default `lanczos.default_start`.
      reorthogonalize: see `lanczos.lanczos`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from noisydln import eigen
      >>> h = jnp.diag(jnp.array([3.0, -5.0, 1.0, 2.0]))
      >>> round(float(eigen.top_eigenvalue(lambda v: h @ v, 4, num_iterations=4)), 6)
      3.0
      >>> round(float(eigen.top_abs_eigenvalue(lambda v: h @ v, 4, num_iterations=4)), 6)
      5.0
    """
    options = {"num_iterations": num_iterations, "start": start, "reorthogonalize": reorthogonalize}
    return ritz_values(lanczos(hvp, dim_or_like, **options))[-1]


def top_abs_eigenvalue(
    hvp, dim_or_like, *, num_iterations: int, start=None, reorthogonalize: bool = True
) -> jax.Array:
    """The largest eigenvalue in absolute value, `max(|lambda_min|, |lambda_max|)`, scalar.

    From the same Lanczos run as `top_eigenvalue` (both ends of the spectrum converge); the
    iteration count needed at the lower end can differ from the upper end's.
    """
    options = {"num_iterations": num_iterations, "start": start, "reorthogonalize": reorthogonalize}
    values = ritz_values(lanczos(hvp, dim_or_like, **options))
    return jnp.maximum(jnp.abs(values[0]), jnp.abs(values[-1]))


# ----------------------------------------------------------------------------------------------
# The diagonal network


def _layer_sum(x: jax.Array) -> jax.Array:
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
        return p * (_layer_sum(p * v) @ gram)[None, :] + _curvature(couplings, v)

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


def _start_columns(p: jax.Array, problem: Problem) -> jax.Array:
    """`diagonal_start` of the states whose products `p_l` are `p: [depth, d, B]`, like `p`."""
    depth, d = p.shape[:2]
    aligned = p * gram_top_eigenvector(problem).astype(p.dtype)[None, :, None]
    norm = jnp.sqrt(fixed_order_sum(_layer_sum(aligned * aligned), axis=0))[None, None]
    aligned = jnp.where(norm > 0, aligned / jnp.where(norm > 0, norm, 1), 0)
    return aligned + 0.1 * default_start(depth * d, p.dtype).reshape(depth, d)[..., None]


def diagonal_start(params: jax.Array, problem: Problem) -> jax.Array:
    """The recorder's start vector, `[depth, d]`: `J^T u_1` normalised (`J^T u = (p_l * u)_l`,
    `p_l = prod_{k != l} w_k`, `u_1 = gram_top_eigenvector(problem)`), plus `0.1 default_start`.

    `hess L = 2 J^T Sigma J + (the curvature of the layers)`: where the data term dominates, the
    top eigenvectors lie near `J^T u_1`. The random part keeps a component along every
    eigenvector (also where `J^T u_1 = 0`). On W1 it saves 10 Lanczos steps out of 50.
    """
    _checks.check_params(params, problem.d)
    return _start_columns(_products(params[..., None])[0], problem)[..., 0]


def _lanczos_columns(
    params: jax.Array, start: jax.Array | None, problem: Problem, num_iterations: int
) -> Tridiagonal:
    """`diagonal_lanczos` of `B` states at once, stored as columns: `params, start: [depth, d,
    B]` (start None: `diagonal_start`), `Tridiagonal` of `[m, B]` and `[m - 1, B]`.

    The batch is the last axis, so that every sum over coordinates is a sequence of vector
    additions over the batch and the products with Sigma are one `[d, d] @ [d, B]`.
    """
    dtype, depth = params.dtype, params.shape[0]
    m = min(num_iterations, params.shape[0] * params.shape[1])
    p, q = _products(params)
    beta = functools.reduce(operator.mul, list(params))  # [d, B]
    residual_ = 2 * (problem.xty.astype(dtype)[:, None] - problem.gram.astype(dtype) @ beta)
    couplings = _couplings(q, residual_)
    gram = (2 * problem.gram).astype(dtype)
    eps = jnp.finfo(dtype).eps
    start = _start_columns(p, problem) if start is None else start.astype(dtype)
    start = start / jnp.sqrt(fixed_order_sum(_layer_sum(start * start), axis=0))[None, None]

    def step(j, carry):
        # previous = b_{j-2} q_{j-1}, current = b_{j-1} q_j, inverse = 1 / b_{j-1},
        # ratio = b_{j-1} / b_{j-2}; inverse = ratio = 0 once the Krylov space is invariant
        previous, current, inverse, ratio, diagonal, off_diagonal, broken = carry
        u = _layer_sum(p * current)  # [d, B]
        s = gram @ u
        pairs = [
            c * current[l] * current[k] for l in range(depth) for k, c in couplings[l] if k > l
        ]
        cross = 2 * sum(pairs[1:], pairs[0])  # <x, C x>, per coordinate
        alpha = fixed_order_sum(u * s + cross, axis=0) * inverse**2
        following = p * s[None] + _curvature(couplings, current) - alpha[None, None] * current
        following = following * inverse[None, None] - ratio[None, None] * previous
        beta = jnp.sqrt(fixed_order_sum(_layer_sum(following * following), axis=0))
        previous_beta = jnp.where(j > 0, off_diagonal[jnp.maximum(j - 1, 0)], 0)
        diagonal = diagonal.at[j].set(jnp.where(broken, diagonal[0], alpha))
        # an invariant Krylov space leaves beta at the rounding level of |H q_j|
        broken = broken | (beta <= eps * (jnp.abs(alpha) + previous_beta))
        off_diagonal = off_diagonal.at[j].set(jnp.where(broken, 0, beta))
        next_inverse = jnp.where(broken, 0, 1 / jnp.where(broken, 1, beta))
        next_ratio = jnp.where(broken, 0, beta * inverse)
        return current, following, next_inverse, next_ratio, diagonal, off_diagonal, broken

    batch = params.shape[2:]
    zeros, ones = jnp.zeros((m, *batch), dtype), jnp.ones(batch, dtype)
    carry = (jnp.zeros_like(start), start, ones, ones, zeros, zeros, jnp.zeros(batch, bool))
    carry = jax.lax.fori_loop(0, m, step, carry, unroll=2)
    return Tridiagonal(carry[4], carry[5][: m - 1])


def diagonal_lanczos(
    params: jax.Array, problem: Problem, num_iterations: int, start: jax.Array
) -> Tridiagonal:
    """`lanczos(diagonal_hvp(params, problem), params, reorthogonalize=False, ...)`, written for
    speed: the same Tridiagonal up to rounding, at a fraction of the cost batched.

    The Hessian-vector product is never stored: `<x, H x> = <u, 2 Sigma u> + <x, C x>` comes
    from `u = J x` and the curvature, and the next vector from the same terms. The vectors are
    carried unnormalised, `x_j = b_{j-1} q_j` (`q_j` the orthonormal Lanczos vectors, `b_j` the
    couplings, `b_{-1} = 1`), so that the step writes one array (an invariant Krylov space sets
    the scalars that carry them to 0); two steps per loop iteration let XLA reuse the buffers
    instead of copying the carry. `params: [depth, d]`, `start` like it (any non-zero norm).
    """
    _checks.check_params(params, problem.d)
    columns = _lanczos_columns(params[..., None], start[..., None], problem, num_iterations)
    return Tridiagonal(columns.diagonal[:, 0], columns.off_diagonal[:, 0])


def diagonal_top_eigenvalue(
    params: jax.Array,
    problem: Problem,
    num_iterations: int = RECORD_ITERATIONS,
    start: jax.Array | None = None,
) -> jax.Array:
    """The largest eigenvalue of `hess L(params)` of the diagonal network, scalar: the recorded
    `top_eigenvalue`.

    `num_iterations` Lanczos steps from `start` (default `diagonal_start`) with the plain
    three-term recurrence (`diagonal_lanczos`: for the largest eigenvalue as accurate as full
    reorthogonalisation, and several times cheaper batched over trajectories), the largest
    Ritz value by `lanczos.largest_ritz_value`. Under `jax.vmap` (any number of levels) the
    states are computed together as columns of one batch, on a CPU in blocks of
    `record_block(d, dtype)` (`batching.flattening_vmap`); a state's number does not depend on
    the batch or the blocks.

    Args:
      params: `[depth, d]`.
      problem: the regression problem.
      num_iterations: Lanczos steps, static (`RECORD_ITERATIONS`: 1e-6 relative on W1).
      start: `[depth, d]`, any non-zero norm.
    """
    _checks.check_params(params, problem.d)
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int):
        raise ValueError(f"num_iterations must be a positive integer, got {num_iterations!r}")
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be a positive integer, got {num_iterations}")
    if start is None:  # computed with the rest, in the same program whatever the batch
        return _recorded_top(num_iterations)((params,), problem)
    _checks.check_shape("start", start, params.shape, "[depth, d]")
    return _recorded_top(num_iterations)((params, jnp.asarray(start, params.dtype)), problem)


def _top_of_batch(states: tuple, problem: Problem, num_iterations: int) -> jax.Array:
    """The top eigenvalues `[N]` of `states = (params,)` or `(params, start)`, `[N, depth, d]`."""
    params, *start = (jnp.moveaxis(x, 0, -1) for x in states)
    columns = _lanczos_columns(params, start[0] if start else None, problem, num_iterations)
    return jax.vmap(largest_ritz_value, in_axes=(Tridiagonal(1, 1),))(columns)


def record_block(d: int, dtype) -> int:
    """States per block of the recorded `top_eigenvalue` on a CPU: a `[d, block]` slab in 5/6
    of the L1 data cache (`batching.cache_block`; 96 on W1 in float32 with 48 KiB)."""
    return batching.cache_block(d * jnp.dtype(dtype).itemsize)


def _block_of(states: tuple, problem: Problem) -> int:
    return record_block(states[0].shape[-1], states[0].dtype)


@functools.cache
def _recorded_top(num_iterations: int):
    """`_top_of_batch` as a function of one state, batched by `batching.flattening_vmap`."""
    batch_fn = functools.partial(_top_of_batch, num_iterations=num_iterations)
    return batching.flattening_vmap(batch_fn, _block_of)


# ----------------------------------------------------------------------------------------------
# The dense network


def dense_hvp(params: dense.Params, problem: Problem):
    """`v -> hess L(params) v` of the dense network (`v` a tuple like params), forward over
    reverse: `jax.jvp` of the closed-form `dense.grad`, exact."""
    dense.check_params(params, problem.d)
    params = tuple(params)

    def hvp(v):
        return jax.jvp(lambda q: dense.grad(q, problem), (params,), (tuple(v),))[1]

    return hvp


def dense_top_eigenvalue(
    params: dense.Params,
    problem: Problem,
    num_iterations: int = RECORD_ITERATIONS,
    start: dense.Params | None = None,
) -> jax.Array:
    """The largest eigenvalue of `hess L(params)` of the dense network, scalar.

    `num_iterations` steps of the plain three-term Lanczos recurrence on `dense_hvp` from
    `start` (default `lanczos.default_start`, shaped like params), the largest Ritz value by
    bisection. The default count is the diagonal network's on W1; none was measured for dense
    networks (their Hessians have large near-null spaces): pass the parameters' size `P` for
    the exact value (up to rounding), or measure a count against `eigvalsh(dense.hessian(...))`.

    Args:
      params: `(W_1 [h_1, d], ..., W_L [1, h_{L-1}])`.
      problem: the regression problem.
      num_iterations: Lanczos steps, static (cut to `P`).
      start: a tuple like params, any non-zero norm.
    """
    tridiagonal = lanczos(
        dense_hvp(params, problem),
        tuple(params),
        num_iterations=num_iterations,
        start=start,
        reorthogonalize=False,
    )
    return largest_ritz_value(tridiagonal)
