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

Warm start. Along a trajectory the recorder carries each record's top Ritz vector to the next
record (`recorded_top_eigenvalue`, the diagonal family's record memory): `WARM_ITERATIONS`
steps from it suffice once the Hessian turns slowly, and a residual test sends the other
states to `RECORD_ITERATIONS` more steps. The dense family's `top_eigenvalue` stays cold.
"""

import functools

import jax
import jax.numpy as jnp

from noisydln import _checks, batching, dense
from noisydln.diagonal_lanczos import (  # noqa: F401 (the diagonal network's, re-exported)
    column_norms,
    combine,
    diagonal_hvp,
    diagonal_lanczos,
    diagonal_start,
    gram_top_eigenvector,
    lanczos_columns,
)
from noisydln.lanczos import (
    Tridiagonal,
    lanczos,
    largest_ritz_value,
    ritz_values,
    top_ritz_vector,
)
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

# The warm start (`recorded_top_eigenvalue`): after a trajectory's first record, its records run
# WARM_ITERATIONS Lanczos steps from the previous record's Ritz vector, and RECORD_ITERATIONS
# more from the new Ritz vector where its relative residual `|H x - theta x| / |theta|` exceeds
# `residual_tolerance` (RESIDUAL_TOLERANCE, or RESIDUAL_EPS eps: 1.2e-4 in float32, where
# rounding leaves residuals up to some 1e-5). Measured on W1 trajectories (the path of
# `tests/test_eigen_vs_eigvalsh.py`: 8 seeds x 8 sigmas in [0, 0.3], 2000 steps recorded every
# 10, 12864 states, against `eigvalsh` of the exact Hessian of the recorded parameters): largest
# relative error 1.6e-10 in float64 (3.7e-10 with 8 warm steps on 2 seeds), 3.2e-6 in float32
# (rounding, as cold). With 10 warm steps only the records of the first 100 steps exceed the
# residual (1e-2 to 4e-2 at 10 to 40 steps, where the Hessian turns fastest and the warm value
# alone is off by up to 4e-3); the warm values taken are within 1.1e-10 (float64, residuals 1e-5
# and below). Cost (`python -m noisydln.bench.eigen_cost`, 1024 seeds, 2 CPU devices on a shared
# 2-core machine): `run_grid` with `top_eigenvalue` x2.77 the time without it, wall and CPU
# (x5.1 cold, with RECORD_ITERATIONS steps at every record).
WARM_ITERATIONS = 10
RESIDUAL_TOLERANCE = 1e-5
RESIDUAL_EPS = 1000


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
# The diagonal network (its kernel: `noisydln.diagonal_lanczos`)


def _check_iterations(num_iterations) -> None:
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int):
        raise ValueError(f"num_iterations must be a positive integer, got {num_iterations!r}")
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be a positive integer, got {num_iterations}")


def diagonal_top_eigenvalue(
    params: jax.Array,
    problem: Problem,
    num_iterations: int = RECORD_ITERATIONS,
    start: jax.Array | None = None,
) -> jax.Array:
    """The largest eigenvalue of `hess L(params)` of the diagonal network, scalar (the recorded
    `top_eigenvalue` of a trajectory's first record; later ones: `diagonal_top_eigenpair`).

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
    return diagonal_top_eigenpair(params, problem, num_iterations, start, vector=False)


def diagonal_top_eigenpair(
    params: jax.Array,
    problem: Problem,
    num_iterations: int,
    start: jax.Array | None = None,
    *,
    first_iterations: int | None = None,
    vector: bool = True,
):
    """`(value, vector)`: `diagonal_top_eigenvalue` and its Ritz vector `[depth, d]` (unit norm,
    the start of the next record's warm run), or the value alone (`vector=False`).

    With a `start` and `first_iterations`, a warm run: `first_iterations` steps from `start`,
    and `num_iterations` more from their Ritz vector for a state whose Ritz residual `|H x -
    value x|` exceeds `residual_tolerance(dtype) |value|` (on a CPU run only for the blocks
    that hold one). The Ritz vector is `sum_j y_j q_j`, `y = lanczos.top_ritz_vector(T,
    value)`, from the kept basis (`m` vectors per state), or after a run from `diagonal_start`
    (`start` None: once per trajectory) from a second pass of the same steps, so that the
    memory stays that of the short warm runs.
    """
    _checks.check_params(params, problem.d)
    _check_iterations(num_iterations)
    states = (params,)
    if start is not None:  # None: computed with the rest, in the same program whatever the batch
        _checks.check_shape("start", start, params.shape, "[depth, d]")
        states = (params, jnp.asarray(start, params.dtype))
        if first_iterations is not None:
            _check_iterations(first_iterations)
    else:
        first_iterations = None
    return _recorded_top(num_iterations, first_iterations, vector)(states, problem)


def residual_tolerance(dtype) -> float:
    """The relative Ritz residual up to which a warm run's value is taken: `RESIDUAL_TOLERANCE`,
    or `RESIDUAL_EPS eps` where rounding alone leaves more (1.2e-4 in float32)."""
    return max(RESIDUAL_TOLERANCE, RESIDUAL_EPS * float(jnp.finfo(dtype).eps))


def _pair_of_columns(params, start, problem, num_iterations, keep_basis: bool):
    """`(top [B], Ritz vector [depth, d, B] of unit norm, relative residual [B])` of the
    columns `params: [depth, d, B]` from `start` (None: `diagonal_start`); the Ritz vector from
    the kept basis, or from a second pass (`keep_basis` False: no `[m, depth, d, B]` basis)."""
    keep = "basis" if keep_basis else None
    columns, coupling, basis = lanczos_columns(params, start, problem, num_iterations, keep)
    top = jax.vmap(largest_ritz_value, in_axes=(Tridiagonal(1, 1),))(columns)
    coefficients = jax.vmap(top_ritz_vector, in_axes=(Tridiagonal(1, 1), 0), out_axes=1)(
        columns, top
    )  # [m, B]
    if basis is None:  # the cold run again, combining its vectors
        ritz = lanczos_columns(params, start, problem, num_iterations, coefficients)[2]
    else:
        ritz = combine(basis, coefficients)
    residual = coupling * jnp.abs(coefficients[-1]) / jnp.abs(top)
    return top, ritz / column_norms(ritz)[None, None], residual


def _top_of_batch(states: tuple, problem: Problem, num_iterations: int, first: int | None,
                  vector: bool):  # fmt: skip
    """The top eigenvalues `[N]` of `states = (params,)` or `(params, start)`, `[N, depth, d]`,
    and with `vector` their Ritz vectors `[N, depth, d]` (`diagonal_top_eigenpair`)."""
    params, *start = (jnp.moveaxis(x, 0, -1) for x in states)
    start = start[0] if start else None
    if not vector:
        columns, _, _ = lanczos_columns(params, start, problem, num_iterations)
        return jax.vmap(largest_ritz_value, in_axes=(Tridiagonal(1, 1),))(columns)
    if first is None:
        top, ritz, _ = _pair_of_columns(params, start, problem, num_iterations, False)
    else:
        top, ritz, residual = _pair_of_columns(params, start, problem, first, True)
        taken = residual <= residual_tolerance(params.dtype)

        def again(_):
            more = _pair_of_columns(params, ritz, problem, num_iterations, False)[:2]
            return jnp.where(taken, top, more[0]), jnp.where(taken[None, None], ritz, more[1])

        top, ritz = jax.lax.cond(jnp.all(taken), lambda _: (top, ritz), again, None)
    return top, jnp.moveaxis(ritz, -1, 0)


def record_block(d: int, dtype) -> int:
    """States per block of the recorded `top_eigenvalue` on a CPU: a `[d, block]` slab in 5/6
    of the L1 data cache (`batching.cache_block`; 96 on W1 in float32 with 48 KiB)."""
    return batching.cache_block(d * jnp.dtype(dtype).itemsize)


def _block_of(states: tuple, problem: Problem) -> int:
    return record_block(states[0].shape[-1], states[0].dtype)


@functools.cache
def _recorded_top(num_iterations: int, first: int | None, vector: bool):
    """`_top_of_batch` as a function of one state, batched by `batching.flattening_vmap`."""
    batch_fn = functools.partial(
        _top_of_batch, num_iterations=num_iterations, first=first, vector=vector
    )
    return batching.flattening_vmap(batch_fn, _block_of)


def recorded_top_eigenvalue(params: jax.Array, problem: Problem, carried: jax.Array | None):
    """`(top_eigenvalue, its Ritz vector)` of one record of a trajectory: `RECORD_ITERATIONS`
    cold steps at the first record (`carried` None), else `WARM_ITERATIONS` steps from the
    previous record's Ritz vector `carried: [depth, d]` (and `RECORD_ITERATIONS` more where
    they leave a residual above `residual_tolerance`)."""
    if carried is None:
        return diagonal_top_eigenpair(params, problem, RECORD_ITERATIONS)
    return diagonal_top_eigenpair(
        params, problem, RECORD_ITERATIONS, carried, first_iterations=WARM_ITERATIONS
    )


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
    bisection. The default count is the diagonal network's on W1. Measured for dense networks
    in float64 against `eigvalsh(dense.hessian(...))` (Gaussian designs, n = 100; d, widths =
    30, (20, 10); 50, (30,); 40, (40,): P = 810 to 1640; 4 random starts of scale 0.5 each, at
    0, 10, 30, 100 and 300 steps of GD): largest relative error 2.3e-15, the top eigenvalue
    being far from the rest there. For other networks pass `P` for the exact value (up to
    rounding), or check a count against `eigvalsh`.

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
