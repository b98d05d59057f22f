"""Closed forms of docs/theory.md: expected loss and gradient, sharpness, balancing rates and limits.

Each function cites the docs/theory.md section it implements; conventions are those of section 1:
loss `(1/n) ||y - X beta||^2`, independent `N(0, sigma^2)` noise on every layer and coordinate,
gradient evaluated at the perturbed weights. Functions act on one parameter array
`params: [depth, d]`; batch with `jax.vmap` (over seeds, sigmas or step sizes alike).
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from noisydln import _checks
from noisydln.model import end_to_end, loss, pairwise_sum, products_except_one, residual
from noisydln.problem import Problem

_BISECTION_STEPS = 200


def average_sharpness(params: jax.Array, problem: Problem, sigma: ArrayLike) -> jax.Array:
    """`S(W) = L_R(W) - L(W) = sum_i D_i [prod_l (w_li^2 + sigma^2) - prod_l w_li^2]` (s2), scalar."""
    _checks.check_params(params, problem.d)
    _checks.check_nonnegative("sigma", sigma)
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
    return loss(params, problem) + average_sharpness(params, problem, sigma)


def expected_grad(params: jax.Array, problem: Problem, sigma: ArrayLike) -> jax.Array:
    """`E_xi grad L(W + xi) = grad L_R(W)` (docs/theory.md s2), `[depth, d]`.

    `dL_R/dw_li = -r_i prod_{k!=l} w_ki + 2 D_i w_li [prod_{k!=l}(w_ki^2 + sigma^2) - prod_{k!=l} w_ki^2]`.
    """
    _checks.check_params(params, problem.d)
    _checks.check_nonnegative("sigma", sigma)
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
    _checks.check_params(params)
    magnitude = jnp.abs(end_to_end(params)) ** (1.0 / params.shape[0])
    return jnp.sign(params) * magnitude[None, :]


def min_average_sharpness(
    beta: jax.Array, problem: Problem, sigma: ArrayLike, depth: int
) -> jax.Array:
    """`min S` over factorisations of `beta`: `sum_i D_i [(|b_i|^(2/L) + s^2)^L - b_i^2]` (s2)."""
    depth = _checks.check_depth(depth)
    _checks.check_shape("beta", beta, (problem.d,), "[d]")
    _checks.check_nonnegative("sigma", sigma)
    balanced_square = jnp.abs(beta) ** (2.0 / depth)
    return problem.gram_diag @ ((balanced_square + sigma**2) ** depth - beta**2)


def min_hessian_trace(beta: jax.Array, problem: Problem, depth: int) -> jax.Array:
    """`min tr hess L` over factorisations of `beta`: `2 L sum_i D_i |b_i|^(2(L-1)/L)` (s2).

    The Hessian trace does not depend on sigma, so neither does its minimum.
    """
    depth = _checks.check_depth(depth)
    _checks.check_shape("beta", beta, (problem.d,), "[d]")
    return 2 * depth * problem.gram_diag @ (jnp.abs(beta) ** (2.0 * (depth - 1) / depth))


def balancing_rate(problem: Problem, sigma: ArrayLike) -> jax.Array:
    """Gradient-flow decay rate of the imbalance, depth 2: `Delta_i(t) = Delta_i(0) e^{-rate_i t}`.

    `rate_i = 4 sigma^2 D_i` (docs/theory.md s3), whatever the data fit; `[d]`. Time `t = eta * steps`.
    """
    _checks.check_nonnegative("sigma", sigma)
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
    _checks.check_params(params, problem.d)
    _checks.check_nonnegative("sigma", sigma)
    _checks.check_nonnegative("eta", eta)
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
    _checks.check_params(params, problem.d)
    if params.shape[0] != 2:
        raise ValueError(
            f"imbalance_factor is the depth-2 formula; params has depth {params.shape[0]}"
        )
    _checks.check_nonnegative("sigma", sigma)
    _checks.check_nonnegative("eta", eta)
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
    sigma = jnp.asarray(sigma, dtype=jnp.result_type(sigma, float))
    if depth == 2:
        return sigma**2
    constant = (2 * (depth - 1) / depth) ** (depth - 1) * (depth / (depth - 2)) ** ((depth - 2) / 2)
    return constant * sigma**depth


def diagonal_target(problem: Problem) -> jax.Array:
    """`z_i = b_i / Sigma_ii`, the per-coordinate least-squares target of a diagonal design (s4), `[d]`."""
    return problem.xty / problem.gram_diag


def _bisect(fn, lower: jax.Array, upper: jax.Array) -> jax.Array:
    """Root of `fn` in `[lower, upper]` elementwise, for `fn(lower) >= 0 >= fn(upper)`."""

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = fn(mid) >= 0
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, halve, (lower, upper))
    return 0.5 * (lo + hi)


def stationary_roots(z: ArrayLike, sigma: ArrayLike, depth: int) -> tuple[jax.Array, jax.Array]:
    """Balanced magnitudes `a = |beta|^(1/L)` of the non-zero stationary points, depth >= 3 (s4).

    They solve `(a^2 + sigma^2)^(L-1) = |z| a^(L-2)`: the smaller root `a_-` is a saddle, the
    larger `a_+` a local minimum. Where `|z| < tau_L` there is none and both are returned as 0.

    Returns:
      `(a_minus, a_plus)`, each shaped like `z`.
    """
    depth = _checks.check_depth(depth)
    if depth == 2:
        raise ValueError("stationary_roots is for depth >= 3; depth 2 is soft thresholding")
    _checks.check_nonnegative("sigma", sigma)
    z = jnp.asarray(z, dtype=jnp.result_type(z, sigma, float))
    tiny = jnp.finfo(z.dtype).tiny
    abs_z = jnp.maximum(jnp.abs(z), tiny)
    s2 = jnp.asarray(sigma, z.dtype) ** 2

    def excess(a):  # log of (a^2 + s^2)^(L-1) / (|z| a^(L-2)); decreasing then increasing in a
        a = jnp.maximum(a, tiny)
        return (depth - 1) * jnp.log(a**2 + s2) - (depth - 2) * jnp.log(a) - jnp.log(abs_z)

    turning = jnp.full_like(z, jnp.sqrt((depth - 2) * s2 / depth))  # where `excess` is least
    smallest = (s2 ** (depth - 1) / abs_z) ** (1.0 / (depth - 2))
    largest = abs_z ** (1.0 / depth)
    exists = (jnp.abs(z) >= threshold(sigma, depth)) & (jnp.abs(z) > 0)
    lower_lo = jnp.minimum(smallest, turning)
    upper_hi = jnp.maximum(largest, turning)
    a_minus = _bisect(excess, lower_lo, turning)
    a_plus = _bisect(lambda a: -excess(a), turning, upper_hi)
    return jnp.where(exists, a_minus, 0.0), jnp.where(exists, a_plus, 0.0)


def limit(z: ArrayLike, sigma: ArrayLike, depth: int, init: jax.Array | None = None) -> jax.Array:
    """The shrinkage-thresholding limit of a diagonal design (docs/theory.md s4), shaped like `z`.

    Depth 2: soft thresholding, `sign(z) max(|z| - sigma^2, 0)`, from any start off the origin's
    stable manifold (`init` is not used). Depth `L >= 3`: `sign(z) a_+^L` where `|z| > tau_L`,
    else 0 (the origin is always a local minimum). When `init` is given, the basin rule applies
    too: a coordinate reaches `a_+^L` only if its starting product has the sign of `z` and
    balanced magnitude `|beta_0|^(1/L)` above the saddle `a_-`, else it goes to 0. The rule is
    exact for balanced starts; for unbalanced ones it assumes the layers balance before `beta`
    crosses the saddle.

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
    _checks.check_nonnegative("sigma", sigma)
    z = jnp.asarray(z, dtype=jnp.result_type(z, sigma, float))
    _checks.check_finite("z", z)
    if depth == 2:
        return jnp.sign(z) * jnp.maximum(jnp.abs(z) - sigma**2, 0.0)
    a_minus, a_plus = stationary_roots(z, sigma, depth)
    reached = jnp.abs(z) > threshold(sigma, depth)
    if init is not None:
        _checks.check_shape("init", init, (depth,) + z.shape, "[depth, d]")
        beta0 = end_to_end(jnp.asarray(init, z.dtype))
        start = jnp.abs(beta0) ** (1.0 / depth)
        reached = reached & (jnp.sign(beta0) == jnp.sign(z)) & (start > a_minus)
    return jnp.where(reached, jnp.sign(z) * a_plus**depth, 0.0)


def lasso_limit(
    problem: Problem,
    sigma: ArrayLike,
    signs: ArrayLike | None = None,
    *,
    tol: float | None = None,
    max_steps: int = 200_000,
) -> jax.Array:
    """The depth-2 limit for a general design: a weighted lasso (docs/theory.md s4), `[d]`.

    Minimises `beta^T Sigma beta - 2 b^T beta + 2 sigma^2 sum_i D_i |beta_i|` by accelerated
    proximal gradient (FISTA with gradient restart) until the fixed-point residual is below
    `tol`. With `signs` (`[d]` in {-1, 0, +1}) the minimum is taken within that orthant:
    `signs_i beta_i >= 0` for non-zero `signs_i` (gradient descent from a balanced start keeps
    the sign of each `beta_i`, so pass `sign(beta_0)`); 0 leaves a coordinate free.

    Args:
      problem: the regression problem.
      sigma: noise level, scalar >= 0.
      signs: optional orthant, `[d]`.
      tol: stopping tolerance on `||beta - prox(beta - t grad)||_inf / t`; default 1e-12 in
        float64 (solutions to about 1e-10), 1e-5 in float32.
      max_steps: iteration cap.
    """
    _checks.check_nonnegative("sigma", sigma)
    dtype = problem.gram.dtype
    if tol is None:
        tol = 1e-12 if dtype == jnp.float64 else 1e-5
    d = problem.d
    weights = 2 * jnp.asarray(sigma, dtype) ** 2 * problem.gram_diag
    if signs is None:
        signs = jnp.zeros((d,), dtype)
    else:
        signs = jnp.asarray(signs, dtype)
        _checks.check_shape("signs", signs, (d,), "[d]")
    step = 1 / (2 * jnp.linalg.eigvalsh(problem.gram)[-1])

    def smooth_grad(beta):
        return 2 * (problem.gram @ beta - problem.xty)

    def prox(v):
        shrunk = jnp.sign(v) * jnp.maximum(jnp.abs(v) - step * weights, 0.0)
        return jnp.where(signs * shrunk < 0, 0.0, shrunk)

    def residual_norm(beta):
        return jnp.max(jnp.abs(beta - prox(beta - step * smooth_grad(beta)))) / step

    def keep_going(state):
        _, _, _, count, res = state
        return (res > tol) & (count < max_steps)

    def fista_step(state):
        beta, previous, momentum, count, _ = state
        extrapolated = beta + (momentum - 1) / (0.5 * (1 + jnp.sqrt(1 + 4 * momentum**2))) * (
            beta - previous
        )
        new = prox(extrapolated - step * smooth_grad(extrapolated))
        restart = jnp.dot(extrapolated - new, new - beta) > 0
        next_momentum = jnp.where(restart, 1.0, 0.5 * (1 + jnp.sqrt(1 + 4 * momentum**2)))
        return new, beta, next_momentum.astype(dtype), count + 1, residual_norm(new)

    start = jnp.zeros((d,), dtype)
    state = (start, start, jnp.ones((), dtype), 0, jnp.asarray(jnp.inf, dtype))
    beta, *_ = jax.lax.while_loop(keep_going, fista_step, state)
    return beta
