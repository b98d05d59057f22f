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
    fit_decay_rate,
    grid_cells,
    require_quantities,
    rounding_allowance,
    standard_error,
    z_scores,
)
from noisydln.stats.inputs import accepts_dataset
from noisydln.stats.report import Report, judge


def _one_step_rows(result: GridResult, config: SimConfig) -> list[dict]:
    """The paired residuals `Delta_{t+1} - rho_t Delta_t` pooled over records, per coordinate.

    The residuals of one seed at different steps are martingale differences: uncorrelated, so
    the variance of their average over records is the sum of the per-record variances / R^2.
    Pooling keeps every z-score close to Gaussian (a sum over many steps and seeds), where the
    per-record residuals, heavy-tailed (fourth powers of the noise), would not be.
    """
    se = standard_error(result)["imbalance_step_residual"]
    dtype = result.mean["imbalance_step_residual"].dtype
    pending = []
    for cell, sigma, eta, scale in grid_cells(result):
        mean = np.asarray(result.mean["imbalance_step_residual"][cell], dtype=float)  # [R, d]
        pooled = mean.mean(axis=0)
        pooled_se = np.sqrt(np.sum(np.nan_to_num(se[cell]) ** 2, axis=0)) / mean.shape[0]
        size = np.nanmax(np.abs(np.asarray(result.mean["imbalance"][cell], dtype=float)))
        rounding = rounding_allowance(size, dtype, ONE_STEP_OPERATIONS)
        z = z_scores(pooled, pooled_se, 0.0, rounding)
        i = int(np.argmax(np.abs(z)))
        pending.append(
            (
                dict(
                    quantity=f"E[Delta+ - rho Delta | W], coord {i} ({cell_label(sigma, eta, scale)})",
                    prediction=0.0,
                    estimate=float(pooled[i]),
                    standard_error=float(pooled_se[i]),
                    allowance=float(rounding),
                    note=f"exact one-step law, pooled over {mean.shape[0]} records",
                ),
                z,
            )
        )
    return pending


ONE_STEP_OPERATIONS = 64  # the rounding of one step and of rho, in `rounding_allowance` terms


def predicted_rate(problem: Problem, config: SimConfig, sigma: float) -> np.ndarray:
    """The flow's balancing rate of the mean imbalance per coordinate (docs/theory.md s3), `[d]`.

    `stochastic_sam`: `4 sigma^2 D_i`. `one_layer_sam` perturbs one of the L layers per step,
    so its expected loss carries 1/L of the penalty: `4 sigma^2 D_i / L`.
    """
    rate = np.asarray(theory.balancing_rate(problem, sigma), dtype=float)
    return rate / config.depth if config.algorithm == "one_layer_sam" else rate


def _rate_rows(result, problem, config, sigma_scale) -> list:
    se_all = standard_error(result)
    diag = np.asarray(problem.gram_diag)
    pending = []
    for cell, sigma, eta, scale in grid_cells(result):
        imbalance = np.asarray(result.mean["imbalance"][cell])[:, 0, :]  # [R, d] w_2^2 - w_1^2
        se = se_all["imbalance"][cell][:, 0, :]
        beta = np.asarray(result.mean["beta"][cell])  # [R, d]
        times = eta * result.steps
        label = cell_label(sigma, eta, scale)
        if sigma == 0:
            pending.append(
                (_conservation_row(problem, result, cell, eta, scale, imbalance, beta), None)
            )
            continue
        # O(eta) allowance fixed up front from the exact step factor (docs/theory.md s3):
        # -log(rho)/eta = 4 s^2 D + eta [Q + 8 s^4 D^2] + O(eta^2), Q the eta^2 bracket of rho
        r = np.asarray(jax.vmap(residual, in_axes=(0, None))(jnp.asarray(beta), problem))
        norm_sq = np.sqrt(imbalance**2 + 4 * beta**2)  # w_1^2 + w_2^2 of the mean path
        off = np.asarray(problem.gram) ** 2 - np.diag(diag**2)
        v = sigma**2 * (norm_sq + sigma**2) @ off.T
        q = r**2 + 4 * v + 4 * sigma**2 * diag**2 * norm_sq + 12 * sigma**4 * diag**2
        allowance = 2 * eta * (np.max(q, axis=0) + 8 * sigma**4 * diag**2)
        predicted = predicted_rate(problem, config, sigma_scale * sigma)
        fitted = np.full(problem.d, np.nan)
        fit_se = np.full(problem.d, np.nan)
        for i in range(problem.d):
            fitted[i], fit_se[i] = fit_decay_rate(times, imbalance[:, i], se[:, i])
        resolved = np.isfinite(fitted)
        if not resolved.any():
            pending.append((
                dict(
                    quantity=f"decay rate of E Delta ({label})",
                    prediction=float(predicted.max()), estimate=math.nan, verdict="fail",
                    note="too few seeds or records: no coordinate's mean imbalance is resolved "
                    "(|mean| > 5 SE) at a record after the start; use more seeds, records or "
                    "an unbalanced init",
                ),
                None,
            ))  # fmt: skip
            continue
        z = np.where(resolved, z_scores(fitted, fit_se, predicted, allowance), np.nan)
        i = int(np.nanargmax(np.abs(z)))
        skipped = int((~resolved).sum())
        pending.append((
            dict(
                quantity=f"decay rate of E Delta_{i} ({label})",
                prediction=float(predicted[i]), estimate=float(fitted[i]),
                standard_error=float(fit_se[i]), allowance=float(allowance[i]),
                note=f"{config.algorithm} flow rate; O(eta) allowance from the exact factor; "
                f"{int(resolved.sum())} coords judged"
                + (f", {skipped} unresolved (decayed into the noise at the first record)" if skipped else ""),
            ),
            z,
        ))  # fmt: skip
    return pending


def _conservation_row(problem, result, cell, eta, scale, imbalance, beta) -> dict:
    """sigma = 0: the imbalance is conserved by the flow; GD moves it by O(eta^2 r^2) per step."""
    r = np.asarray(jax.vmap(residual, in_axes=(0, None))(jnp.asarray(beta), problem))
    stride = np.diff(result.steps)[:, None]
    allowance = 2 * eta**2 * np.sum(stride * np.maximum(r[:-1] ** 2, r[1:] ** 2), axis=0)
    allowance = allowance + rounding_allowance(
        1.0, result.mean["imbalance"].dtype, int(result.steps[-1])
    )
    first, last = imbalance[0], imbalance[-1]
    resolved = np.abs(first) > 0
    change = np.zeros_like(first)
    change[resolved] = np.abs(np.log(np.abs(last[resolved] / first[resolved])))
    change[resolved & (np.sign(last) != np.sign(first))] = np.inf
    i = int(np.argmax(change - allowance))
    passed = bool(np.all(change <= allowance))
    return dict(
        quantity=f"sigma=0 conserves Delta ({cell_label(0.0, eta, scale)})",
        prediction=0.0, estimate=float(change[i]), allowance=float(allowance[i]),
        threshold=float(allowance[i]), verdict="pass" if passed else "fail",
        note=f"|log Delta_T/Delta_0| of coord {i}; allowance 2 eta^2 sum r^2 + rounding"
        + ("" if passed else "; the imbalance moved more than GD without noise can move it"),
    )  # fmt: skip


@accepts_dataset
def check_balancing(
    result: GridResult,
    problem: Problem,
    config: SimConfig,
    *,
    alpha: float = ALPHA,
    sigma_scale: float = 1.0,
) -> Report:
    """The balancing claims of docs/theory.md s3 on a depth-2 grid.

    Two comparisons, each named in the report: (1) for `stochastic_sam` with Gaussian noise,
    the exact one-step law `E[Delta_{t+1} | W_t] = rho(W_t) Delta_t` through the recorded paired
    residual `imbalance_step_residual` (mean 0; judged per coordinate, pooled over the records);
    (2) the decay rate of the mean imbalance fitted per coordinate against the flow's rate
    (`predicted_rate`: `4 sigma^2 D_i`, or `2 sigma^2 D_i` for `one_layer_sam`), with an O(eta)
    allowance computed up front from the exact factor, and at sigma = 0 the conservation of the
    imbalance. The trajectory of the mean imbalance itself is judged by `check_trajectory`.
    `sigma_scale` multiplies the sigma of the rate prediction (to show that a wrong one is
    rejected). All z-scores form one Bonferroni family at level `alpha`.

    Args:
      result: a `run_grid` result of `config` recording "beta" and "imbalance" (and
        "imbalance_step_residual" for the one-step law; record often: the rate is fitted on
        the records), or a results Dataset.
      problem: the problem it ran on.
      config: its config (depth 2, `stochastic_sam` or `one_layer_sam`).
    """
    require_quantities(result, problem, config, ("beta", "imbalance"), "and depth=2")
    if config.depth != 2:
        raise ValueError(f"check_balancing needs a depth-2 run, got depth {config.depth}")
    if config.algorithm not in ("stochastic_sam", "one_layer_sam"):
        raise ValueError(
            f"check_balancing judges stochastic_sam and one_layer_sam, got {config.algorithm!r}"
        )
    pending = []
    if config.algorithm == "stochastic_sam" and config.noise in (None, "gaussian"):
        require_quantities(result, problem, config, ("imbalance_step_residual",), "")
        pending += _one_step_rows(result, config)
    pending += _rate_rows(result, problem, config, sigma_scale)
    return Report("balancing", tuple(judge("balancing", pending, alpha)))
