"""Closed forms of docs/theory.md: expected loss and gradient, sharpness, balancing rates and limits.

Each function cites the docs/theory.md section it implements; conventions are those of section 1:
loss `(1/n) ||y - X beta||^2`, independent `N(0, sigma^2)` noise on every layer and coordinate,
gradient evaluated at the perturbed weights. Functions act on one parameter array
`params: [depth, d]`; batch with `jax.vmap` (over seeds, sigmas or step sizes alike).

The functions of parameters check their arguments, then run as one compiled program per shape
and dtype (as `noisydln.loss` does), so that a first call outside `jit` compiles one program
rather than one per operation.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from noisydln import _checks
from noisydln.model import end_to_end, loss, pairwise_sum, products_except_one, residual
from noisydln.problem import Problem

_BISECTION_STEPS = 200
_NO_PROBLEM = object()  # `_check_params` without a problem (None is a wrong problem)


def _check_problem(problem) -> None:
    if not isinstance(problem, Problem):
        raise ValueError(
            f"problem must be a noisydln.Problem (make_problem, problem_from_data), got "
            f"{_checks.describe(problem)}"
        )


def _check_params(params, problem=_NO_PROBLEM) -> jax.Array:
    """`params` as a JAX array (integers as floats), or raises unless it is a finite real
    `[depth, d]` array (d the problem's when one is given)."""
    d = None
    if problem is not _NO_PROBLEM:
        _check_problem(problem)
        d = problem.d
    _checks.check_params(params, d)
    _checks.check_finite("params", params)
    dtype = _checks.dtype_of("params", params)
    return _checks.real_array(
        "params", params, dtype if jnp.issubdtype(dtype, jnp.floating) else None
    )


def _as_array(x):
    """`x` as an array (lists and tuples have no dtype for `jnp.result_type`)."""
    return x if isinstance(x, jax.Array) else np.asarray(x)


def _check_sigma(sigma, name: str = "sigma"):
    """`sigma`, or raises unless it is a real finite scalar >= 0 (its value unchecked when
    traced). An integer comes back as a float, and a NumPy number or a Python float above
    1e150 as a JAX scalar: `sigma**2` would overflow int64, or raise OverflowError (Python)
    or a RuntimeWarning (NumPy), instead of giving inf."""
    _checks.check_nonnegative(name, sigma)
    _checks.check_scalar(name, sigma)
    if _checks.is_traced(sigma):
        return sigma
    if jnp.issubdtype(_checks.dtype_of(name, sigma), jnp.integer):
        sigma = float(sigma)
    if isinstance(sigma, (np.generic, np.ndarray)) or (isinstance(sigma, float) and sigma > 1e150):
        return jnp.asarray(sigma)  # (a Python float stays weakly typed)
    return sigma


def average_sharpness(params: jax.Array, problem: Problem, sigma: ArrayLike) -> jax.Array:
    """`S(W) = L_R(W) - L(W) = sum_i D_i [prod_l (w_li^2 + sigma^2) - prod_l w_li^2]` (s2), scalar."""
    return _average_sharpness(_check_params(params, problem), problem, _check_sigma(sigma))


@jax.jit
def _average_sharpness(params: jax.Array, problem: Problem, sigma) -> jax.Array:
    squares = params**2
    gap = jnp.prod(squares + sigma**2, axis=0) - jnp.prod(squares, axis=0)
    return pairwise_sum(problem.gram_diag * gap)  # the same bits whatever the batch


def expected_loss(params: jax.Array, problem: Problem, sigma: ArrayLike) -> jax.Array:
    """`L_R(W) = E_xi L(W + xi)`, `xi ~ N(0, sigma^2)` i.i.d. (docs/theory.md s2), scalar.

    Examples:
      >>> import jax.numpy as jnp, jax, noisydln
      >>> problem = noisydln.make_problem(jax.random.key(0), 40, 4, design="orthogonal", k=1)
      >>> params = jnp.zeros((2, 4))   # at the origin L_R = L + sigma^4 tr(Sigma)
      >>> float(noisydln.theory.expected_loss(params, problem, 0.5) - noisydln.loss(params, problem))
      0.25
    """
    return _expected_loss(_check_params(params, problem), problem, _check_sigma(sigma))


@jax.jit
def _expected_loss(params: jax.Array, problem: Problem, sigma) -> jax.Array:
    return loss(params, problem) + _average_sharpness(params, problem, sigma)


def expected_grad(params: jax.Array, problem: Problem, sigma: ArrayLike) -> jax.Array:
    """`E_xi grad L(W + xi) = grad L_R(W)` (docs/theory.md s2), `[depth, d]`.

    `dL_R/dw_li = -r_i prod_{k!=l} w_ki + 2 D_i w_li [prod_{k!=l}(w_ki^2 + sigma^2) - prod_{k!=l} w_ki^2]`.
    """
    return _expected_grad(_check_params(params, problem), problem, _check_sigma(sigma))


@jax.jit
def _expected_grad(params: jax.Array, problem: Problem, sigma) -> jax.Array:
    r = residual(end_to_end(params), problem)
    squares = params**2
    penalty = products_except_one(squares + sigma**2) - products_except_one(squares)
    data = -r[None, :] * products_except_one(params)
    return data + 2 * problem.gram_diag[None, :] * params * penalty


def balanced(params: jax.Array) -> jax.Array:
    """The balanced factorisation of the same product (docs/theory.md s2), `[depth, d]`.

    Every layer gets magnitude `|beta_i|^(1/L)` and keeps its own sign, so the product (and the
    sign pattern of the layers) is unchanged.
    """
    return _balanced(_check_params(params))


@jax.jit
def _balanced(params: jax.Array) -> jax.Array:
    magnitude = jnp.abs(end_to_end(params)) ** (1.0 / params.shape[0])
    return jnp.sign(params) * magnitude[None, :]


def min_average_sharpness(
    beta: jax.Array, problem: Problem, sigma: ArrayLike, depth: int
) -> jax.Array:
    """`min S` over factorisations of `beta`: `sum_i D_i [(|b_i|^(2/L) + s^2)^L - b_i^2]` (s2)."""
    depth = _checks.check_depth(depth)
    return _min_average_sharpness(_check_beta(beta, problem), problem, _check_sigma(sigma), depth)


@functools.partial(jax.jit, static_argnames="depth")
def _min_average_sharpness(beta: jax.Array, problem: Problem, sigma, depth: int) -> jax.Array:
    balanced_square = jnp.abs(beta) ** (2.0 / depth)
    return problem.gram_diag @ ((balanced_square + sigma**2) ** depth - beta**2)


def _check_beta(beta, problem: Problem) -> jax.Array:
    """`beta` as an array of the problem's dtype, or raises unless it is finite, real, `[d]`."""
    _check_problem(problem)
    _checks.check_finite("beta", beta)
    _checks.check_shape("beta", beta, (problem.d,), "[d]")
    return _checks.real_array("beta", beta, problem.gram.dtype)


def min_hessian_trace(beta: jax.Array, problem: Problem, depth: int) -> jax.Array:
    """`min tr hess L` over factorisations of `beta`: `2 L sum_i D_i |b_i|^(2(L-1)/L)` (s2).

    The Hessian trace does not depend on sigma, so neither does its minimum.
    """
    depth = _checks.check_depth(depth)
    return _min_hessian_trace(_check_beta(beta, problem), problem, depth)


@functools.partial(jax.jit, static_argnames="depth")
def _min_hessian_trace(beta: jax.Array, problem: Problem, depth: int) -> jax.Array:
    return 2 * depth * problem.gram_diag @ (jnp.abs(beta) ** (2.0 * (depth - 1) / depth))


def balancing_rate(problem: Problem, sigma: ArrayLike) -> jax.Array:
    """Gradient-flow decay rate of the imbalance, depth 2: `Delta_i(t) = Delta_i(0) e^{-rate_i t}`.

    `rate_i = 4 sigma^2 D_i` (docs/theory.md s3), whatever the data fit; `[d]`. Time `t = eta * steps`.
    """
    _check_problem(problem)
    sigma = _check_sigma(sigma)
    return 4 * sigma**2 * problem.gram_diag


def imbalance_after_gd(
    params: jax.Array, problem: Problem, sigma: ArrayLike, eta: ArrayLike
) -> jax.Array:
    """Exact imbalances after one step of GD on `L_R` with step `eta`, any depth (docs/theory.md s3).

    With `c_l = 1 - 2 eta D A_l`, `A_l = prod_{k!=l}(w_k^2 + s^2) - prod_{k!=l} w_k^2` and
    `p_l = prod_{k!=l} w_k` (per coordinate),
    `Delta_lm^+ = c_l^2 w_l^2 - c_m^2 w_m^2 + 2 eta r beta (c_l - c_m) + eta^2 r^2 (p_l^2 - p_m^2)`.

    Args:
      params: `[depth, d]` before the step.
      problem: the regression problem.
      sigma: noise level, scalar >= 0.
      eta: step size, scalar >= 0.

    Returns:
      `out[l, m, i] = (w_li^+)^2 - (w_mi^+)^2`, `[depth, depth, d]`.
    """
    params = _check_params(params, problem)
    return _imbalance_after_gd(params, problem, _check_sigma(sigma), _check_sigma(eta, "eta"))


@jax.jit
def _imbalance_after_gd(params: jax.Array, problem: Problem, sigma, eta) -> jax.Array:
    beta = end_to_end(params)
    r = residual(beta, problem)[None, :]
    squares = params**2
    a = products_except_one(squares + sigma**2) - products_except_one(squares)
    c = 1 - 2 * eta * problem.gram_diag[None, :] * a
    p_squared = products_except_one(squares)
    per_layer_sq = c**2 * squares + eta**2 * r**2 * p_squared  # [depth, d]
    per_layer_cross = 2 * eta * r * beta[None, :] * c  # [depth, d]
    per_layer = per_layer_sq + per_layer_cross
    return per_layer[:, None, :] - per_layer[None, :, :]


def imbalance_factor(
    params: jax.Array, problem: Problem, sigma: ArrayLike, eta: ArrayLike
) -> jax.Array:
    """The exact conditional factor `rho_i` of one stochastic-SAM step, depth 2 (docs/theory.md s3).

    `E[Delta_i^{k+1} | W_k] = rho_i Delta_i^k` with `Delta = w_1^2 - w_2^2`,
    `rho_i = 1 - 4 eta s^2 D_i - eta^2 [r_i^2 + 4 V_i + 4 s^2 D_i^2 (w_1i^2 + w_2i^2) + 12 s^4 D_i^2]`,
    `V_i = s^2 sum_{j != i} Sigma_ij^2 (w_1j^2 + w_2j^2 + s^2)`. Holds for any eta and design.

    Returns:
      `rho`, `[d]`.
    """
    params = _check_params(params, problem)
    if params.shape[0] != 2:
        raise ValueError(
            f"imbalance_factor is the depth-2 formula; params has depth {params.shape[0]}"
        )
    return _imbalance_factor(params, problem, _check_sigma(sigma), _check_sigma(eta, "eta"))


@jax.jit
def _imbalance_factor(params: jax.Array, problem: Problem, sigma, eta) -> jax.Array:
    s2 = sigma**2
    diag = problem.gram_diag
    r = residual(end_to_end(params), problem)
    norm_sq = jnp.sum(params**2, axis=0)  # w_1^2 + w_2^2, [d]
    off_diagonal_sq = problem.gram**2 - jnp.diag(diag**2)
    v = s2 * off_diagonal_sq @ (norm_sq + s2)
    second_order = r**2 + 4 * v + 4 * s2 * diag**2 * norm_sq + 12 * s2**2 * diag**2
    return 1 - 4 * eta * s2 * diag - eta**2 * second_order


def threshold(sigma: ArrayLike, depth: int) -> jax.Array:
    """The thresholding level of the limit (docs/theory.md s4): `sigma^2` for depth 2, else `tau_L`.

    `tau_L = sigma^L (2(L-1)/L)^(L-1) (L/(L-2))^((L-2)/2)`: non-zero stationary points of a
    coordinate exist iff `|z_i| >= tau_L` (`tau_3 = 3.0792 sigma^3`, `tau_4 = 6.75 sigma^4`).
    """
    depth = _checks.check_depth(depth)
    _checks.check_nonnegative("sigma", sigma)
    sigma = _as_array(sigma)
    sigma = jnp.asarray(sigma, dtype=jnp.result_type(sigma, float))
    if depth == 2:
        return sigma**2
    try:
        constant = (2 * (depth - 1) / depth) ** (depth - 1) * (depth / (depth - 2)) ** (
            (depth - 2) / 2
        )
    except OverflowError:
        raise ValueError(
            f"depth = {depth} is too large: the constant of tau_L overflows a float"
        ) from None
    return constant * sigma**depth


def diagonal_target(problem: Problem) -> jax.Array:
    """`z_i = b_i / Sigma_ii`, the per-coordinate least-squares target of a diagonal design (s4), `[d]`."""
    _check_problem(problem)
    return problem.xty / problem.gram_diag


def _log_excess(a: jax.Array, abs_z: jax.Array, s2: jax.Array, depth: int) -> jax.Array:
    """`log[(a^2 + s^2)^(L-1) / (|z| a^(L-2))]`: decreasing, then increasing in `a > 0`."""
    a = jnp.maximum(a, jnp.finfo(a.dtype).tiny)
    return (depth - 1) * jnp.log(a**2 + s2) - (depth - 2) * jnp.log(a) - jnp.log(abs_z)


@functools.partial(jax.jit, static_argnames="depth")
def _stationary_roots(z: jax.Array, sigma: jax.Array, depth: int) -> tuple[jax.Array, jax.Array]:
    """`stationary_roots` for an array `z` and a scalar `sigma` of its dtype, compiled once per
    shape, dtype and depth. Both roots are bisected together, `_BISECTION_STEPS` halvings."""
    tiny = jnp.finfo(z.dtype).tiny
    abs_z = jnp.maximum(jnp.abs(z), tiny)
    s2 = sigma**2
    turning = jnp.broadcast_to(jnp.sqrt((depth - 2) * s2 / depth), z.shape)  # least excess
    smallest = (s2 ** (depth - 1) / abs_z) ** (1.0 / (depth - 2))
    largest = abs_z ** (1.0 / depth)
    # a_- in [min(smallest, turning), turning], a_+ in [turning, max(largest, turning)]; with
    # `orient` = +1 for a_- and -1 for a_+, `orient * excess` goes from >= 0 to <= 0 in each.
    lower = jnp.stack([jnp.minimum(smallest, turning), turning])  # [2, *z.shape]
    upper = jnp.stack([turning, jnp.maximum(largest, turning)])
    orient = jnp.array([1, -1], z.dtype).reshape((2,) + (1,) * z.ndim)
    abs_z_twice = jnp.stack([abs_z, abs_z])

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = orient * _log_excess(mid, abs_z_twice, s2, depth) >= 0
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, halve, (lower, upper))
    a_minus, a_plus = 0.5 * (lo + hi)
    exists = (jnp.abs(z) >= threshold(sigma, depth)) & (jnp.abs(z) > 0)
    return jnp.where(exists, a_minus, 0.0), jnp.where(exists, a_plus, 0.0)


def stationary_roots(z: ArrayLike, sigma: ArrayLike, depth: int) -> tuple[jax.Array, jax.Array]:
    """Balanced magnitudes `a = |beta|^(1/L)` of the non-zero stationary points, depth >= 3 (s4).

    They solve `(a^2 + sigma^2)^(L-1) = |z| a^(L-2)`: the smaller root `a_-` is a saddle, the
    larger `a_+` a local minimum. Where `|z| < tau_L` there is none and both are exactly 0.
    Compiled once per shape, dtype and depth (sigma and z are traced).

    Returns:
      `(a_minus, a_plus)`, each shaped like `z`.
    """
    depth = _checks.check_depth(depth)
    if depth == 2:
        raise ValueError("stationary_roots is for depth >= 3; depth 2 is soft thresholding")
    sigma = _check_sigma(sigma)
    _checks.check_finite("z", z)
    threshold(sigma, depth)  # raises for a depth too large for the constant of tau_L
    z = _as_array(z)
    z = jnp.asarray(z, dtype=jnp.result_type(z, sigma, float))
    return _stationary_roots(z, jnp.asarray(sigma, z.dtype), depth)


@functools.partial(jax.jit, static_argnames="depth")
def _limit(z: jax.Array, sigma: jax.Array, init: jax.Array | None, depth: int) -> jax.Array:
    """`limit` for an array `z`, a scalar `sigma` and `init` of its dtype (or None)."""
    if depth == 2:
        return jnp.sign(z) * jnp.maximum(jnp.abs(z) - sigma**2, 0.0)
    a_minus, a_plus = _stationary_roots(z, sigma, depth)
    reached = jnp.abs(z) > threshold(sigma, depth)
    if init is not None:
        beta0 = end_to_end(init)
        start = jnp.abs(beta0) ** (1.0 / depth)
        reached = reached & (jnp.sign(beta0) == jnp.sign(z)) & (start > a_minus)
    return jnp.where(reached, jnp.sign(z) * a_plus**depth, 0.0)


def limit(z: ArrayLike, sigma: ArrayLike, depth: int, init: jax.Array | None = None) -> jax.Array:
    """The shrinkage-thresholding limit of a diagonal design (docs/theory.md s4), shaped like `z`.

    Depth 2: soft thresholding, `sign(z) max(|z| - sigma^2, 0)`, from any start off the origin's
    stable manifold (`init` is not used). Depth `L >= 3`: `sign(z) a_+^L` where `|z| > tau_L`,
    else 0 (the origin is always a local minimum). When `init` is given, the basin rule applies
    too: a coordinate reaches `a_+^L` only if its starting product has the sign of `z` and
    balanced magnitude `|beta_0|^(1/L)` above the saddle `a_-`, else it goes to 0. The rule is
    exact for balanced starts; for unbalanced ones it assumes the layers balance before `beta`
    crosses the saddle. Zeros are exact in any dtype. Compiled once per shape, dtype and depth.

    Args:
      z: per-coordinate targets `b_i / Sigma_ii` (`diagonal_target(problem)`), `[d]`.
      sigma: noise level, scalar >= 0.
      depth: network depth L >= 2.
      init: optional starting parameters, `[depth, d]`.

    Examples:
      >>> import jax.numpy as jnp, noisydln
      >>> [round(v, 4) for v in noisydln.theory.limit(jnp.array([1.0, -0.5, 0.05]), 0.3, 2).tolist()]
      [0.91, -0.41, 0.0]
    """
    depth = _checks.check_depth(depth)
    sigma = _check_sigma(sigma)
    _checks.check_finite("z", z)
    if depth > 2:
        threshold(sigma, depth)  # raises for a depth too large for the constant of tau_L
    z = _as_array(z)
    z = jnp.asarray(z, dtype=jnp.result_type(z, sigma, float))
    if depth == 2:
        init = None  # not used: no recompilation for it either
    elif init is not None:
        _checks.check_finite("init", init)
        _checks.check_shape("init", init, (depth,) + z.shape, "[depth, d]")
        init = jnp.asarray(init, z.dtype)
    return _limit(z, jnp.asarray(sigma, z.dtype), init, depth)


# --- the weighted lasso of a general design, depth 2 (docs/theory.md s4) ----------------------
#
# Minimise `F(beta) = beta^T Sigma beta - 2 b^T beta + sum_i w_i |beta_i|`, `w = 2 sigma^2 D`,
# within the orthant `signs_i beta_i >= 0`. Each step is
#  1. one cyclic sweep of coordinate descent on the Gram matrix: every coordinate minimised
#     exactly by soft thresholding, so zeros are exact zeros, in any dtype;
#  2. a polish: on the sweep's support S and signs s, solve the KKT equations
#     `Sigma_SS beta_S = b_S - w_S s_S / 2` by Cholesky (S also holds every coordinate with neither
#     penalty nor sign constraint, as at sigma = 0). If the solution flips a sign, go only as far
#     towards it as the first sign change and set that coordinate to 0 (an active-set move: F is
#     a convex quadratic on the face of signs s, least at the solution, so F decreases on the way);
#  3. keep the polished point if its KKT violation or its F is no larger than the sweep's (two
#     tests, since near the answer rounding can tie either one), else the sweep's.
# A point with KKT violation below `tol` is a certified minimiser; on easy problems the first
# polish already is one. Stops there, after `max_steps` steps, or at a floating-point fixed point
# (a step that changes no bit).


class _LassoState(NamedTuple):
    """The solver's state: the iterate, its gradient `2 (Sigma beta - b)`, its KKT violation,
    the number of sweeps done, and whether the last step changed nothing."""

    beta: jax.Array  # [d]
    gradient: jax.Array  # [d]
    violation: jax.Array  # []
    sweeps: jax.Array  # [] int32
    stalled: jax.Array  # [] bool


def _kkt_violation(
    beta: jax.Array, gradient: jax.Array, weights: jax.Array, signs: jax.Array
) -> jax.Array:
    """`max_i` of the least-norm element of `grad_i + w_i d|beta_i| + N_i(beta_i)`, scalar.

    `N_i` is the normal cone of the orthant constraint; an infeasible coordinate counts as inf.
    It bounds the proximal-gradient residual `||beta - prox(beta - t grad)||_inf / t` above.
    """
    on_support = jnp.abs(gradient + weights * jnp.sign(beta))
    upward = jnp.where(signs > 0, 0.0, jnp.maximum(gradient - weights, 0.0))  # beta_i < 0 helps
    downward = jnp.where(signs < 0, 0.0, jnp.maximum(-gradient - weights, 0.0))  # beta_i > 0 helps
    per_coordinate = jnp.where(beta != 0, on_support, upward + downward)
    return jnp.max(jnp.where(signs * beta < 0, jnp.inf, per_coordinate))


def _lasso_objective(beta: jax.Array, gradient: jax.Array, xty: jax.Array, weights: jax.Array):
    """`F(beta)` from the gradient `2 (Sigma beta - b)`, scalar."""
    return beta @ (0.5 * gradient - xty) + weights @ jnp.abs(beta)


def _coordinate_sweep(
    beta: jax.Array, gradient: jax.Array, gram: jax.Array, weights: jax.Array, signs: jax.Array
) -> jax.Array:
    """One cyclic sweep of exact coordinate minimisation of `F` over the orthant, `[d]`."""
    diag = jnp.diagonal(gram)
    safe_diag = jnp.where(diag > 0, diag, 1.0)

    def update(i, carry):
        beta, half_gradient = carry  # half_gradient = Sigma beta - b, updated in rank one
        old = beta[i]
        target = diag[i] * old - half_gradient[i]  # b_i - sum_{j != i} Sigma_ij beta_j
        new = jnp.sign(target) * jnp.maximum(jnp.abs(target) - 0.5 * weights[i], 0.0)
        new = jnp.where((signs[i] * new < 0) | (diag[i] <= 0), 0.0, new / safe_diag[i])
        return beta.at[i].set(new), half_gradient + gram[i] * (new - old)

    beta, _ = jax.lax.fori_loop(0, beta.shape[0], update, (beta, 0.5 * gradient))
    return beta


def _polish(
    beta: jax.Array, gram: jax.Array, xty: jax.Array, weights: jax.Array, free: jax.Array
) -> jax.Array:
    """Solves the KKT equations on the support and signs of `beta`, exact zeros off it, `[d]`.

    The support takes in the `free` coordinates too (no penalty, no sign constraint: their
    equation holds whatever their sign). NaN where `Sigma_SS` is not positive definite.
    """
    support = (beta != 0) | free
    eye = jnp.eye(beta.shape[0], dtype=gram.dtype)
    matrix = jnp.where(support[:, None] & support[None, :], gram, eye)
    rhs = jnp.where(support, xty - 0.5 * weights * jnp.sign(beta), 0.0)
    factor = jnp.linalg.cholesky(matrix)
    solution = jax.scipy.linalg.cho_solve((factor, True), rhs)
    return jnp.where(support, solution, 0.0)


def _towards(swept: jax.Array, polished: jax.Array, free: jax.Array) -> jax.Array:
    """The point `swept + t (polished - swept)` with the largest `t <= 1` that changes no sign, `[d]`.

    The coordinates that reach 0 at that `t` are set to exactly 0. `F` is a convex quadratic on
    the face of `swept`'s signs with its least value at `polished`, so it decreases along the way.
    """
    flips = ~free & (swept * polished < 0)
    crossing = jnp.where(flips, swept / jnp.where(flips, swept - polished, 1.0), jnp.inf)
    t = jnp.minimum(jnp.min(crossing), 1.0)
    moved = swept + t * (polished - swept)
    kept = free | (jnp.sign(moved) * jnp.sign(swept) > 0)
    return jnp.where((crossing <= t) | ~kept, 0.0, moved)


def _lasso_step(
    state: _LassoState, gram: jax.Array, xty: jax.Array, weights: jax.Array, signs: jax.Array
) -> _LassoState:
    """A coordinate sweep, then a move towards the polished point, kept where it is no worse."""
    swept = _coordinate_sweep(state.beta, state.gradient, gram, weights, signs)
    swept_gradient = 2 * (gram @ swept - xty)
    swept_violation = _kkt_violation(swept, swept_gradient, weights, signs)
    free = (weights == 0) & (signs == 0)
    polished = _towards(swept, _polish(swept, gram, xty, weights, free), free)
    polished_gradient = 2 * (gram @ polished - xty)
    polished_violation = _kkt_violation(polished, polished_gradient, weights, signs)
    no_worse = (polished_violation <= swept_violation) | (
        _lasso_objective(polished, polished_gradient, xty, weights)
        <= _lasso_objective(swept, swept_gradient, xty, weights)
    )
    use = jnp.all(jnp.isfinite(polished)) & no_worse
    beta = jnp.where(use, polished, swept)
    return _LassoState(
        beta=beta,
        gradient=jnp.where(use, polished_gradient, swept_gradient),
        violation=jnp.where(use, polished_violation, swept_violation),
        sweeps=state.sweeps + 1,
        stalled=jnp.all(beta == state.beta),
    )


def _lasso_iterate(
    gram: jax.Array,
    xty: jax.Array,
    sigma: jax.Array,
    signs: jax.Array,
    start: jax.Array,
    tol: jax.Array,
    max_steps: jax.Array,
) -> _LassoState:
    """Solves the weighted lasso from `start` (projected onto the orthant); traceable."""
    weights = 2 * sigma**2 * jnp.diagonal(gram)
    beta = jnp.where(signs * start < 0, 0.0, start)
    gradient = 2 * (gram @ beta - xty)
    state = _LassoState(
        beta=beta,
        gradient=gradient,
        violation=_kkt_violation(beta, gradient, weights, signs),
        sweeps=jnp.zeros((), jnp.int32),
        stalled=jnp.zeros((), bool),
    )

    def keep_going(state):
        return (state.violation > tol) & (state.sweeps < max_steps) & ~state.stalled

    def step(state):
        return _lasso_step(state, gram, xty, weights, signs)

    return jax.lax.while_loop(keep_going, step, state)


@jax.jit
def _lasso_solve(gram, xty, sigma, signs, tol, max_steps) -> _LassoState:
    """The weighted lasso from the origin, compiled once per `d` and dtype."""
    return _lasso_iterate(gram, xty, sigma, signs, jnp.zeros_like(xty), tol, max_steps)


@jax.jit
def _lasso_path(gram, xty, sigmas, signs, tol, max_steps) -> _LassoState:
    """The weighted lasso for every sigma, largest first, each warm-started from the last
    solution; states stacked in the order of `sigmas`. Compiled once per `d`, `S` and dtype."""
    order = jnp.argsort(-sigmas)

    def solve(beta, sigma):
        state = _lasso_iterate(gram, xty, sigma, signs, beta, tol, max_steps)
        return state.beta, state

    _, states = jax.lax.scan(solve, jnp.zeros_like(xty), sigmas[order])
    return jax.tree.map(lambda x: jnp.zeros_like(x).at[order].set(x), states)


def _lasso_arguments(problem: Problem, signs, tol, max_steps):
    """The traced arguments shared by `lasso_limit` and `lasso_path`: signs, tol, max_steps."""
    _check_problem(problem)
    dtype = problem.gram.dtype
    if signs is None:
        signs = jnp.zeros((problem.d,), dtype)
    else:
        _checks.check_finite("signs", signs)
        _checks.check_shape("signs", signs, (problem.d,), "[d]")
        if not _checks.is_traced(signs) and not np.all(np.isin(np.asarray(signs), (-1, 0, 1))):
            raise ValueError(f"signs must hold -1, 0 or +1 only, got {_checks.describe(signs)}")
        signs = _checks.real_array("signs", signs, dtype)
    if tol is None:
        tol = 1e-12 if dtype == jnp.float64 else 1e-5
    _check_sigma(tol, "tol")
    if _checks.is_traced(max_steps):
        if not jnp.issubdtype(max_steps.dtype, jnp.integer):
            raise ValueError(
                f"max_steps must be an integer >= 0, got {_checks.describe(max_steps)}"
            )
    else:
        max_steps = _checks.as_int("max_steps", max_steps, minimum=0)
    return signs, jnp.asarray(tol, dtype), jnp.asarray(max_steps, jnp.int32)


def lasso_limit(
    problem: Problem,
    sigma: ArrayLike,
    signs: ArrayLike | None = None,
    *,
    tol: float | None = None,
    max_steps: int = 10_000,
) -> jax.Array:
    """The depth-2 limit for a general design: a weighted lasso (docs/theory.md s4), `[d]`.

    Minimises `beta^T Sigma beta - 2 b^T beta + 2 sigma^2 sum_i D_i |beta_i|` by coordinate
    descent, polishing after every sweep by solving the optimality equations on the current
    support, until the KKT violation is below `tol`. Zeros are exact, in any dtype. With `signs`
    (`[d]` in {-1, 0, +1}) the minimum is taken within that orthant: `signs_i beta_i >= 0` for
    non-zero `signs_i` (gradient descent from a balanced start keeps the sign of each `beta_i`, so
    pass `sign(beta_0)`); 0 leaves a coordinate free. Compiled once per `d` and dtype: sigma,
    signs, tol, max_steps and the problem's numbers are traced, so `jax.vmap` over sigma works.
    For many sigmas, `lasso_path` is faster.

    Args:
      problem: the regression problem.
      sigma: noise level, scalar >= 0.
      signs: optional orthant, `[d]`.
      tol: stopping tolerance on the KKT violation, the largest distance of `0` from
        `grad_i + 2 sigma^2 D_i d|beta_i|` (an upper bound on the proximal fixed-point residual);
        default 1e-12 in float64, 1e-5 in float32. The polished answer usually does far better.
      max_steps: cap on coordinate sweeps (each costs about one product with `Sigma`).

    Examples:
      >>> import jax, noisydln
      >>> problem = noisydln.make_problem(jax.random.key(0), 200, 100, k=5)
      >>> beta = noisydln.theory.lasso_limit(problem, 0.3)
      >>> int((beta != 0).sum()), [round(v, 3) for v in beta[:5].tolist()]
      (5, [0.922, 0.902, 0.911, 0.919, 0.915])
    """
    sigma = _check_sigma(sigma)
    signs, tol, max_steps = _lasso_arguments(problem, signs, tol, max_steps)
    sigma = jnp.asarray(sigma, problem.gram.dtype)
    return _lasso_solve(problem.gram, problem.xty, sigma, signs, tol, max_steps).beta


def lasso_path(
    problem: Problem,
    sigmas: ArrayLike,
    signs: ArrayLike | None = None,
    *,
    tol: float | None = None,
    max_steps: int = 10_000,
) -> jax.Array:
    """`lasso_limit` for every sigma of a path, `[S, d]` (docs/theory.md s4).

    Solves from the largest sigma down, each solve warm-started from the previous solution, so a
    path costs a few sweeps per sigma; the answers are those of `lasso_limit` (same tolerance).

    Args:
      problem: the regression problem.
      sigmas: noise levels, `[S]`, >= 0, in any order.
      signs: optional orthant, `[d]`, as for `lasso_limit`.
      tol, max_steps: as for `lasso_limit`.

    Examples:
      >>> import jax, jax.numpy as jnp, noisydln
      >>> problem = noisydln.make_problem(jax.random.key(0), 200, 100, k=5)
      >>> path = noisydln.theory.lasso_path(problem, jnp.linspace(0.0, 1.2, 7))
      >>> path.shape, (path != 0).sum(axis=1).tolist()
      ((7, 100), [100, 5, 5, 5, 5, 4, 0])
    """
    _check_problem(problem)
    _checks.check_nonnegative("sigmas", sigmas)
    if np.ndim(sigmas) != 1:
        raise ValueError(f"sigmas must have shape [S], got {np.shape(sigmas)}")
    sigmas = jnp.asarray(sigmas, problem.gram.dtype)
    signs, tol, max_steps = _lasso_arguments(problem, signs, tol, max_steps)
    return _lasso_path(problem.gram, problem.xty, sigmas, signs, tol, max_steps).beta
