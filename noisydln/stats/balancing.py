"""The balancing claims of docs/theory.md s3: the imbalance decays at rate 4 sigma^2 D_i."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from noisydln import theory
from noisydln.grid import GridResult
from noisydln.model import residual
from noisydln.problem import Problem
from noisydln.simulate import SimConfig
from noisydln.stats.estimators import (
    ALPHA,
    cell_label,
    combined_verdict,
    fit_decay_rate,
    grid_cells,
    require_quantities,
    standard_error,
    z_scores,
)
from noisydln.stats.inputs import accepts_dataset
from noisydln.stats.report import Report, Row


def _one_step_rows(result: GridResult, alpha: float) -> list[Row]:
    """The paired residuals `Delta_{t+1} - rho_t Delta_t` pooled over records, per coordinate.

    The residuals of one seed at different steps are martingale differences: uncorrelated, so
    the variance of their average over records is the sum of the per-record variances / R^2.
    Pooling keeps every z-score close to Gaussian (a sum over many steps and seeds), where the
    per-record residuals, heavy-tailed (fourth powers of the noise), would not be.
    """
    se = standard_error(result)["imbalance_step_residual"]
    rows = []
    for cell, sigma, eta, scale in grid_cells(result):
        mean = np.asarray(result.mean["imbalance_step_residual"][cell])  # [R, d]
        pooled = mean.mean(axis=0)
        pooled_se = np.sqrt(np.sum(se[cell] ** 2, axis=0)) / mean.shape[0]
        size = np.nanmax(np.abs(np.asarray(result.mean["imbalance"][cell])))
        rounding = 100 * np.finfo(mean.dtype).eps * max(size, 1.0)
        z = z_scores(pooled, pooled_se, 0.0, rounding)
        _, bound, passed = combined_verdict(z, alpha)
        i = int(np.argmax(np.abs(z)))
        rows.append(
            Row(
                "balancing",
                f"E[Delta+ - rho Delta | W], coord {i} ({cell_label(sigma, eta, scale)})",
                0.0,
                float(pooled[i]),
                float(pooled_se[i]),
                float(z[i]),
                passed,
                f"pooled over {mean.shape[0]} records; max|z| of {z.size} < {bound:.2f}",
            )
        )
    return rows


def _gd_recursion_rows(problem: Problem, config: SimConfig, result: GridResult) -> list[Row]:
    """GD on L_R run step by step against `theory.imbalance_after_gd` (exact up to rounding)."""
    base, _ = config.base_init(problem.d, problem.gram.dtype)
    steps = min(config.num_steps, 200)
    tolerance = 1e-9 if problem.gram.dtype == jnp.float64 else 1e-4
    rows = []
    for _, sigma, eta, scale in grid_cells(result):

        def step(params, _, sigma=sigma, eta=eta):
            predicted = theory.imbalance_after_gd(params, problem, sigma, eta)
            new = params - eta * theory.expected_grad(params, problem, sigma)
            actual = new[:, None] ** 2 - new[None, :] ** 2
            size = jnp.max(jnp.abs(actual)) + jnp.finfo(new.dtype).tiny
            return new, jnp.max(jnp.abs(predicted - actual)) / size

        _, errors = jax.lax.scan(step, base * scale, None, length=steps)
        worst = float(jnp.max(errors))
        rows.append(
            Row(
                "balancing",
                f"GD on L_R vs exact recursion ({cell_label(sigma, eta, scale)})",
                0.0,
                worst,
                0.0,
                math.nan,
                worst < tolerance,
                f"max rel. error over {steps} steps < {tolerance:g}",
            )
        )
    return rows


def _rate_rows(result: GridResult, problem: Problem, alpha: float, sigma_scale: float) -> list[Row]:
    se_all = standard_error(result)
    diag = np.asarray(problem.gram_diag)
    rows = []
    for cell, sigma, eta, scale in grid_cells(result):
        imbalance = np.asarray(result.mean["imbalance"][cell])[:, 0, :]  # [R, d] w_2^2 - w_1^2
        se = se_all["imbalance"][cell][:, 0, :]
        beta = np.asarray(result.mean["beta"][cell])  # [R, d]
        times = eta * result.steps
        if sigma == 0:
            rows.append(_conservation_row(problem, result, cell, eta, scale, imbalance, beta))
            continue
        # O(eta) allowance fixed up front from the exact step factor (docs/theory.md s3):
        # -log(rho)/eta = 4 s^2 D + eta [Q + 8 s^4 D^2] + O(eta^2), Q the eta^2 bracket of rho
        r = np.asarray(jax.vmap(residual, in_axes=(0, None))(jnp.asarray(beta), problem))
        norm_sq = np.sqrt(imbalance**2 + 4 * beta**2)  # w_1^2 + w_2^2 of the mean path
        off = np.asarray(problem.gram) ** 2 - np.diag(diag**2)
        v = sigma**2 * (norm_sq + sigma**2) @ off.T
        q = r**2 + 4 * v + 4 * sigma**2 * diag**2 * norm_sq + 12 * sigma**4 * diag**2
        allowance = 2 * eta * (np.max(q, axis=0) + 8 * sigma**4 * diag**2)
        predicted = np.asarray(theory.balancing_rate(problem, sigma_scale * sigma))
        worst = None
        zs = []
        for i in range(problem.d):
            fitted, fit_se = fit_decay_rate(times, imbalance[:, i], se[:, i])
            if not np.isfinite(fitted):
                continue
            excess = max(abs(fitted - predicted[i]) - allowance[i], 0.0)
            z = excess / fit_se
            zs.append(z)
            if worst is None or z > worst[0]:
                worst = (z, i, fitted, fit_se)
        if worst is None:
            raise ValueError(
                f"no coordinate's mean imbalance is resolved over 3 records in cell "
                f"{cell_label(sigma, eta, scale)}: use more seeds, records or an unbalanced init"
            )
        _, bound, passed = combined_verdict(zs, alpha)
        z, i, fitted, fit_se = worst
        rows.append(
            Row(
                "balancing",
                f"decay rate of E Delta_{i} ({cell_label(sigma, eta, scale)})",
                float(predicted[i]),
                fitted,
                fit_se,
                z,
                passed,
                f"4 s^2 D_i; O(eta) allowance {allowance[i]:.3g}; z past it, {len(zs)} coords < {bound:.2f}",
            )
        )
    return rows


def _conservation_row(problem, result, cell, eta, scale, imbalance, beta) -> Row:
    """sigma = 0: the imbalance is conserved by the flow; GD moves it by O(eta^2 r^2) per step."""
    r = np.asarray(jax.vmap(residual, in_axes=(0, None))(jnp.asarray(beta), problem))
    stride = np.diff(result.steps)[:, None]
    allowance = 2 * eta**2 * np.sum(stride * np.maximum(r[:-1] ** 2, r[1:] ** 2), axis=0)
    first, last = imbalance[0], imbalance[-1]
    resolved = np.abs(first) > 0
    change = np.zeros_like(first)
    change[resolved] = np.abs(np.log(np.abs(last[resolved] / first[resolved])))
    change[resolved & (np.sign(last) != np.sign(first))] = np.inf
    i = int(np.argmax(change - allowance))
    return Row(
        "balancing",
        f"sigma=0 conserves Delta ({cell_label(0.0, eta, scale)})",
        0.0,
        float(change[i]),
        0.0,
        math.nan,
        bool(np.all(change <= allowance)),
        f"|log Delta_T/Delta_0| of coord {i}; allowance 2 eta^2 sum r^2 = {allowance[i]:.3g}",
    )


@accepts_dataset
def check_balancing(
    result: GridResult,
    problem: Problem,
    config: SimConfig,
    *,
    alpha: float = ALPHA,
    sigma_scale: float = 1.0,
) -> Report:
    """The balancing claims of docs/theory.md s3 on a depth-2 stochastic-SAM grid.

    Three comparisons, each named in the report: (1) the exact one-step law
    `E[Delta_{t+1} | W_t] = rho(W_t) Delta_t`, through the recorded paired residual
    `imbalance_step_residual` (mean 0; judged per coordinate, pooled over the records); (2) gradient descent on
    `L_R` against `theory.imbalance_after_gd` step by step (exact up to rounding); (3) the decay
    rate of the mean imbalance fitted per coordinate against `4 sigma^2 D_i`, with an O(eta)
    allowance computed up front from the exact factor, and at sigma = 0 the conservation of the
    imbalance. `sigma_scale` multiplies the sigma of the rate prediction (to show that a wrong
    one is rejected).

    Args:
      result: a results Dataset (`run_experiment`, `results.load`; problem and config
        are then read from it and every static combination is checked), or a results Dataset (`run_experiment`, `results.load`: problem and config
        are then read from it and every static combination is checked), or a `run_grid` result of `config` recording "beta", "imbalance" and
        "imbalance_step_residual" (record often: the rate is fitted on the records).
      problem: the problem it ran on.
      config: its config (depth 2, `stochastic_sam`).
    """
    require_quantities(
        result, problem, config, ("beta", "imbalance", "imbalance_step_residual"), "and depth=2"
    )
    if config.depth != 2:
        raise ValueError(f"check_balancing needs a depth-2 run, got depth {config.depth}")
    rows = _one_step_rows(result, alpha)
    rows += _gd_recursion_rows(problem, config, result)
    rows += _rate_rows(result, problem, alpha, sigma_scale)
    return Report("balancing", tuple(rows))
