"""The quantities a run can record per record step, and `record`, which computes them.

`QUANTITIES` are recorded by default; `EXTRA_QUANTITIES` on request
(`SimConfig(quantities=noisydln.QUANTITIES + ("trace_gap",))`). `DESCRIPTIONS` gives each
one's shape and meaning (also written into result files).
"""

import jax
import jax.numpy as jnp

from noisydln import algorithms, theory
from noisydln.model import end_to_end, hessian_trace, loss_of_beta
from noisydln.problem import Problem

QUANTITIES = ("beta", "imbalance", "loss", "expected_loss", "sharpness", "hessian_trace")
EXTRA_QUANTITIES = ("trace_gap", "sharpness_gap", "imbalance_step_residual", "basin")
ALL_QUANTITIES = QUANTITIES + EXTRA_QUANTITIES

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
}


def record(
    params: jax.Array,
    problem: Problem,
    hyper: algorithms.Hyper,
    quantities,
    next_params: jax.Array | None = None,
) -> dict:
    """The recorded quantities of one state (closed forms of docs/theory.md s1-3).

    Returns:
      dict with (a subset of) `beta: [d]`, `imbalance: [depth - 1, d]` (`w_l^2 - w_1^2` for
      l > 1), `loss`, `expected_loss`, `sharpness` (average sharpness at sigma),
      `hessian_trace`, the gaps to the balanced factorisation of the same product
      `trace_gap = tr hess - min tr hess` and `sharpness_gap = S - min S` (docs/theory.md s2), and,
      given the parameters after the next step, `imbalance_step_residual: [d]`
      `= Delta(next) - rho(params) Delta(params)` (depth 2, docs/theory.md s3; mean 0 over seeds),
      and `basin: [d]`, 1 where `beta_i` is nearer the non-zero stationary point of a diagonal
      design than 0 (docs/theory.md s4).
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
    if "imbalance_step_residual" in wanted:
        rho = theory.imbalance_factor(params, problem, hyper.sigma, hyper.eta)
        before = params[0] ** 2 - params[1] ** 2
        after = next_params[0] ** 2 - next_params[1] ** 2
        values["imbalance_step_residual"] = after - rho * before
    return {name: values[name] for name in quantities}
