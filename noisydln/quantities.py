"""The quantities a run can record per record step, and `record`, which computes them.

`QUANTITIES` are recorded by default; `EXTRA_QUANTITIES` on request
(`SimConfig(quantities=noisydln.QUANTITIES + ("trace_gap",))`). `DESCRIPTIONS` gives each
one's shape and meaning (also written into result files). `beta_diagnostics` computes those
that depend on the end-to-end vector alone (`BETA_DIAGNOSTICS`), for any network family.
"""

import jax
import jax.numpy as jnp

from noisydln import algorithms, eigen, theory
from noisydln.model import end_to_end, hessian_trace, loss_of_beta, pairwise_sum
from noisydln.problem import Problem

QUANTITIES = ("beta", "imbalance", "loss", "expected_loss", "sharpness", "hessian_trace")
EXTRA_QUANTITIES = (
    "trace_gap",
    "sharpness_gap",
    "imbalance_step_residual",
    "basin",
    "top_eigenvalue",
    "l1_norm",
    "support_size",
    "distance_to_limit",
    "test_loss",
)
BETA_DIAGNOSTICS = ("l1_norm", "support_size", "distance_to_limit", "test_loss")
ALL_QUANTITIES = QUANTITIES + EXTRA_QUANTITIES

# `support_size` counts |beta_i| > SUPPORT_TOLERANCE * max(1, max_i |z_i|) (`support_tolerance`).
# Measured on W1 (float32, 32 seeds, sigmas 0.17 to 0.3, after 6000 steps): the coordinates
# outside the limit's support fluctuate at |beta_i| up to 2e-3 (99 % below 1.3e-3), those inside
# stay above 0.7. 1e-2 sits between: 5 times above that noise (1e-3 would count up to 2 % of the
# zeros), and it still counts a coordinate whose limit is 1 % of the targets' scale.
SUPPORT_TOLERANCE = 1e-2

DESCRIPTIONS = {
    "beta": ("[d]", "end-to-end product beta = w_1 * ... * w_L"),
    "imbalance": ("[depth - 1, d]", "layer imbalance w_l^2 - w_1^2 for l = 2..L"),
    "loss": ("[]", "training loss (1/n) ||y - X beta||^2"),
    "expected_loss": ("[]", "expected loss L_R = E L(W + xi) at the cell's sigma"),
    "sharpness": ("[]", "average sharpness S = L_R - L at the cell's sigma"),
    "hessian_trace": ("[]", "trace of the Hessian of L"),
    "trace_gap": ("[]", "tr hess L - its minimum over factorisations of the same beta"),
    "sharpness_gap": ("[]", "S - its minimum over factorisations of the same beta"),
    "basin": (
        "[d]",
        "1 where beta_i is nearer the non-zero stationary point sign(z_i) r_i than 0 (the mean "
        "is the fraction of seeds in that basin; diagonal designs)",
    ),
    "imbalance_step_residual": (
        "[d]",
        "Delta(next) - rho(W) Delta(W), the one-step law's residual (depth 2; mean 0)",
    ),
    "top_eigenvalue": (
        "[]",
        f"largest (algebraic) eigenvalue of the Hessian of L, by {eigen.RECORD_ITERATIONS} "
        f"Lanczos steps at the first record, then {eigen.WARM_ITERATIONS} from the previous "
        "record's Ritz vector (noisydln.eigen)",
    ),
    "l1_norm": ("[]", "||beta||_1"),
    "support_size": (
        "[]",
        f"number of coordinates with |beta_i| > {SUPPORT_TOLERANCE:g} max(1, max_i |z_i|), "
        "z_i = b_i / Sigma_ii (a float)",
    ),
    "distance_to_limit": (
        "[]",
        "||beta - limit||_2, limit = theory.limit(z, sigma, depth) coordinate-wise, "
        "z_i = b_i / Sigma_ii: the limit of a diagonal design (for depth >= 3 its non-zero "
        "branch, without the basin rule); for other designs only the distance to that formula",
    ),
    "test_loss": (
        "[]",
        "loss on held-out data (1/n_t) ||y_t - X_t beta||^2, drawn from the same teacher, design "
        "and label noise (generated problems; Problem.test_gram, test_xty, test_yty)",
    ),
}


def coordinate_targets(problem: Problem) -> jax.Array:
    """`z_i = b_i / Sigma_ii`, 0 where `Sigma_ii = 0` (a zero column, where `b_i = 0` too), `[d]`.

    `theory.diagonal_target` without its 0 / 0: the recorded quantities stay finite.
    """
    diag = problem.gram_diag
    return jnp.where(diag > 0, problem.xty / jnp.where(diag > 0, diag, 1), 0)


def support_tolerance(problem: Problem) -> jax.Array:
    """The level above which `|beta_i|` counts in `support_size`: `SUPPORT_TOLERANCE` times the
    scale `max(1, max_i |z_i|)` of the targets (so a problem whose labels are 1000 times larger
    has the same support), scalar."""
    scale = jnp.maximum(1, jnp.max(jnp.abs(coordinate_targets(problem))))
    return SUPPORT_TOLERANCE * scale


def coordinate_limit(problem: Problem, sigma, depth: int) -> jax.Array:
    """`theory.limit(z, sigma, depth)` of `z = coordinate_targets(problem)`, `[d]`: the limit of
    beta on a diagonal design (docs/theory.md s4); for depth >= 3 the non-zero stationary
    point `sign(z_i) a_+^L` wherever `|z_i| > tau_L` (the basin rule needs the start, which a
    record does not know). On other designs it is only this coordinate-wise formula (their
    limit is the weighted lasso, `theory.lasso_limit`)."""
    return theory.limit(coordinate_targets(problem), sigma, depth)


def test_loss(beta: jax.Array, problem: Problem) -> jax.Array:
    """`(1/n_t) ||y_t - X_t beta||^2 = beta^T (G_t beta - 2 b_t) + y_t^T y_t / n_t` of the
    held-out data's statistics, scalar, in a fixed order of additions (`model.loss_of_beta`).

    Raises:
      ValueError: the problem has no held-out data.
    """
    if not problem.has_test_data:
        raise ValueError(
            "test_loss needs held-out data: generate the problem with make_problem (n_test > 0) "
            "or give problem_from_data X_test and y_test"
        )
    return pairwise_sum(beta * (beta @ problem.test_gram - 2 * problem.test_xty)) + problem.test_yty


def beta_diagnostics(
    beta: jax.Array, problem: Problem, sigma: jax.Array, depth: int, wanted
) -> dict:
    """The recorded quantities that depend on the end-to-end vector alone, of one state.

    Pure and traceable (batch with `jax.vmap`; `depth` static): any network family records
    them from its `beta`.

    Args:
      beta: `[d]`.
      problem: the regression problem (`test_loss` needs its held-out statistics).
      sigma: the cell's noise level, scalar (`distance_to_limit`'s limit depends on it).
      depth: the network's depth L (the limit's branch).
      wanted: names; those of `BETA_DIAGNOSTICS` among them are computed, others ignored.

    Returns:
      dict of scalars in `beta`'s dtype, for the names wanted: `l1_norm = ||beta||_1`;
      `support_size`, the number of `|beta_i| > support_tolerance(problem)` (a float, so that it
      has moments); `distance_to_limit = ||beta - coordinate_limit(problem, sigma, depth)||_2`;
      `test_loss` (`test_loss(beta, problem)`).
    """
    wanted = set(wanted)
    values = {}
    if "l1_norm" in wanted:
        values["l1_norm"] = pairwise_sum(jnp.abs(beta))
    if "support_size" in wanted:
        inside = jnp.abs(beta) > support_tolerance(problem).astype(beta.dtype)
        values["support_size"] = pairwise_sum(inside.astype(beta.dtype))
    if "distance_to_limit" in wanted:
        gap = beta - coordinate_limit(problem, sigma, depth).astype(beta.dtype)
        values["distance_to_limit"] = jnp.sqrt(pairwise_sum(gap**2))
    if "test_loss" in wanted:
        values["test_loss"] = test_loss(beta, problem).astype(beta.dtype)
    return values


def record(
    params: jax.Array,
    problem: Problem,
    hyper: algorithms.Hyper,
    quantities,
    next_params: jax.Array | None = None,
    memory: dict | None = None,
) -> tuple[dict, dict]:
    """The recorded quantities of one state (closed forms of docs/theory.md s1-3), and what the
    trajectory's next record needs from this one.

    `memory` is what the previous record of the trajectory returned (None at its first record):
    `{"top_eigenvector": [depth, d]}` when `top_eigenvalue` is recorded (the start of the next
    record's warm Lanczos run, `eigen.recorded_top_eigenvalue`), else `{}`.

    Returns:
      `(values, memory)`, values a dict with (a subset of) `beta: [d]`, `imbalance: [depth - 1, d]` (`w_l^2 - w_1^2` for
      l > 1), `loss`, `expected_loss`, `sharpness` (average sharpness at sigma),
      `hessian_trace`, the gaps to the balanced factorisation of the same product
      `trace_gap = tr hess - min tr hess` and `sharpness_gap = S - min S` (docs/theory.md s2), and,
      given the parameters after the next step, `imbalance_step_residual: [d]`
      `= Delta(next) - rho(params) Delta(params)` (depth 2, docs/theory.md s3; mean 0 over seeds),
      and `basin: [d]`, 1 where `beta_i` is nearer the non-zero stationary point of a diagonal
      design than 0 (docs/theory.md s4). Diagnostics: `top_eigenvalue`, the largest eigenvalue
      of the Hessian (`eigen.recorded_top_eigenvalue`, Lanczos from Hessian-vector products),
      and the diagnostics of `beta_diagnostics`: `l1_norm`, `support_size`,
      `distance_to_limit` and `test_loss` (held-out data).
    """
    depth = params.shape[0]
    beta = end_to_end(params)
    loss = loss_of_beta(beta, problem)
    sharpness = theory.average_sharpness(params, problem, hyper.sigma)
    trace = hessian_trace(params, problem)
    wanted = set(quantities)
    values = {
        "beta": beta,
        "imbalance": params[1:] ** 2 - params[:1] ** 2,
        "loss": loss,
        "expected_loss": loss + sharpness,
        "sharpness": sharpness,
        "hessian_trace": trace,
    }
    if "trace_gap" in wanted:
        values["trace_gap"] = trace - theory.min_hessian_trace(beta, problem, depth)
    if "sharpness_gap" in wanted:
        values["sharpness_gap"] = sharpness - theory.min_average_sharpness(
            beta, problem, hyper.sigma, depth
        )
    if "basin" in wanted:  # the non-zero root of a diagonal design, from theory.limit
        z = theory.diagonal_target(problem)
        root = jnp.sign(z) * jnp.abs(theory.limit(z, hyper.sigma, depth))
        values["basin"] = ((root != 0) & (jnp.abs(beta - root) < jnp.abs(beta))).astype(beta.dtype)
    following = {}
    if "top_eigenvalue" in wanted:
        carried = None if memory is None else memory["top_eigenvector"]
        top, following["top_eigenvector"] = eigen.recorded_top_eigenvalue(params, problem, carried)
        values["top_eigenvalue"] = top
    values.update(beta_diagnostics(beta, problem, hyper.sigma, depth, wanted))
    if "imbalance_step_residual" in wanted:
        rho = theory.imbalance_factor(params, problem, hyper.sigma, hyper.eta)
        before = params[0] ** 2 - params[1] ** 2
        after = next_params[0] ** 2 - next_params[1] ** 2
        values["imbalance_step_residual"] = after - rho * before
    return {name: values[name] for name in quantities}, following
