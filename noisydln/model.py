"""The diagonal linear network `beta = w_1 * ... * w_L`: loss, gradient, exact Hessian (docs/theory.md s1-2).

Every function acts on ONE parameter array `params: [depth, d]` (row l is the diagonal of the
layer `W_l`) and one `Problem`; batch over seeds or grids with `jax.vmap`.

`loss`, `grad`, `perturbed_grad`, `hessian` and `hessian_trace` check their arguments, then
run as one compiled program per shape and dtype. Called outside `jit` (as in a notebook),
their operations one by one would each compile a program of their own (23 for `hessian`):
a first call at a new size (d = 50, 2 cores) took 0.3 to 1.5 s of CPU that way, and takes 0.2
to 0.6 s as one program. Inside `jit` and `vmap` they trace into the caller's program.
"""

import functools
import operator

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from noisydln import _checks
from noisydln.problem import Problem


def pairwise_sum(x: jax.Array) -> jax.Array:
    """Sum over the last axis in a fixed pairwise order, `[..., m] -> [...]`.

    XLA's own reductions pick their summation order by the shape of the whole batch; this
    one is a fixed tree of elementwise additions, so a trajectory's recorded numbers do not
    depend on how many trajectories are computed with it (and it is as accurate as a tree).
    """
    size = x.shape[-1]
    width = 1 << max(size - 1, 0).bit_length()
    x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (width - size,), x.dtype)], axis=-1)
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def end_to_end(params: jax.Array) -> jax.Array:
    """The product `beta = w_1 * ... * w_L`, `[d]` from `params: [depth, d]`."""
    return functools.reduce(operator.mul, list(params))  # unrolled: one order for any batch


def products_except_one(factors: jax.Array) -> jax.Array:
    """`out[l] = prod_{k != l} factors[k]` along axis 0, without division, `[L, d] -> [L, d]`."""
    ones = jnp.ones_like(factors[:1])
    before = jnp.cumprod(jnp.concatenate([ones, factors[:-1]]), axis=0)
    after = jnp.cumprod(jnp.concatenate([ones, factors[:0:-1]]), axis=0)[::-1]
    return before * after


def products_except_two(factors: jax.Array) -> jax.Array:
    """`out[l, m] = prod_{k not in {l, m}} factors[k]` along axis 0, `[L, d] -> [L, L, d]`."""
    depth = factors.shape[0]
    index = jnp.arange(depth)
    keep = (index[None, None, :] != index[:, None, None]) & (
        index[None, None, :] != index[None, :, None]
    )
    return jnp.prod(jnp.where(keep[..., None], factors[None, None], 1), axis=2)


def residual(beta: jax.Array, problem: Problem) -> jax.Array:
    """`r = 2 (b - Sigma beta)`, minus the gradient of the loss in beta, `[d]` (docs/theory.md s1).

    Written `beta @ Sigma` (Sigma is symmetric): batched over trajectories this is one
    row-major matrix product `[batch, d] @ [d, d]`, twice as fast on CPU as `Sigma @ beta`.
    """
    return 2 * (problem.xty - beta @ problem.gram)


def loss_of_beta(beta: jax.Array, problem: Problem) -> jax.Array:
    """`(1/n) ||y - X beta||^2 = beta^T (Sigma beta - 2 b) + y^T y / n`, scalar.

    The inner product is a `pairwise_sum` rather than a `dot`, whose summation order XLA picks
    by batch size: this way a trajectory's loss does not depend on how many trajectories are
    batched with it.
    """
    return pairwise_sum(beta * (beta @ problem.gram - 2 * problem.xty)) + problem.yty


def loss(params: jax.Array, problem: Problem) -> jax.Array:
    """The mean squared error `(1/n) ||y - X beta||^2` of the network, scalar.

    Args:
      params: `[depth, d]`.
      problem: the regression problem (only its sufficient statistics are used).
    """
    _checks.check_params(params, problem.d)
    return _loss(params, problem)


@jax.jit
def _loss(params: jax.Array, problem: Problem) -> jax.Array:
    return loss_of_beta(end_to_end(params), problem)


def grad(params: jax.Array, problem: Problem) -> jax.Array:
    """Closed-form gradient `dL/dw_{l,i} = -r_i prod_{k != l} w_{k,i}`, `[depth, d]`."""
    _checks.check_params(params, problem.d)
    return _grad(params, problem)


@jax.jit
def _grad(params: jax.Array, problem: Problem) -> jax.Array:
    return -residual(end_to_end(params), problem)[None, :] * products_except_one(params)


def perturbed_grad(
    key: jax.Array, params: jax.Array, problem: Problem, sigma: ArrayLike
) -> jax.Array:
    """The noise-injected gradient `grad L(params + sigma * xi)`, `xi ~ N(0, I)`, `[depth, d]`.

    This is one draw of the stochastic-SAM gradient of docs/theory.md section 1: independent
    Gaussian noise on every layer and coordinate; its mean is `theory.expected_grad`.

    Args:
      key: PRNG key for `xi`.
      params: `[depth, d]`.
      problem: the regression problem.
      sigma: noise standard deviation, scalar >= 0.
    """
    _checks.check_nonnegative("sigma", sigma)
    _checks.check_params(params, problem.d)
    return _perturbed_grad(key, params, problem, sigma)


@jax.jit
def _perturbed_grad(key, params: jax.Array, problem: Problem, sigma) -> jax.Array:
    xi = jax.random.normal(key, jnp.shape(params), jnp.result_type(params))
    return _grad(params + sigma * xi, problem)


def hessian(params: jax.Array, problem: Problem) -> jax.Array:
    """The exact Hessian of `loss`, `[depth * d, depth * d]`, rows ordered like `params.reshape(-1)`.

    With `p_{l,i} = prod_{k != l} w_{k,i}` and `q_{lm,i} = prod_{k not in {l,m}} w_{k,i}`:
    `H[(l,i), (m,j)] = 2 Sigma_ij p_{l,i} p_{m,j} - [i = j, l != m] r_i q_{lm,i}`.
    """
    _checks.check_params(params, problem.d)
    return _hessian(params, problem)


@jax.jit
def _hessian(params: jax.Array, problem: Problem) -> jax.Array:
    depth, d = params.shape
    p = products_except_one(params)
    r = residual(end_to_end(params), problem)
    data_term = 2 * p[:, :, None, None] * problem.gram[None, :, None, :] * p[None, None, :, :]
    off_layer = 1 - jnp.eye(depth, dtype=params.dtype)
    curvature = -r[None, None, :] * products_except_two(params) * off_layer[:, :, None]
    same_coordinate = curvature[:, :, :, None] * jnp.eye(d, dtype=params.dtype)[None, None, :, :]
    hess = data_term + jnp.transpose(same_coordinate, (0, 2, 1, 3))
    return hess.reshape(depth * d, depth * d)


def hessian_trace(params: jax.Array, problem: Problem) -> jax.Array:
    """`tr hess L = 2 sum_i D_i sum_l prod_{k != l} w_{k,i}^2`, scalar (docs/theory.md s2); y-free."""
    _checks.check_params(params, problem.d)
    return _hessian_trace(params, problem)


@jax.jit
def _hessian_trace(params: jax.Array, problem: Problem) -> jax.Array:
    per_coordinate = pairwise_sum(products_except_one(params**2).T)  # summed over layers, [d]
    return 2 * pairwise_sum(problem.gram_diag * per_coordinate)


def imbalances(params: jax.Array) -> jax.Array:
    """All pairwise imbalances `Delta_lm = w_l^2 - w_m^2` (docs/theory.md s1), `[depth, depth, d]`."""
    squares = params**2
    return squares[:, None, :] - squares[None, :, :]
