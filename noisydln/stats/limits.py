"""The limits of docs/theory.md s4: shrinkage-thresholding and the weighted lasso."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from noisydln import theory
from noisydln.grid import GridResult
from noisydln.problem import Problem
from noisydln.simulate import SimConfig
from noisydln.stats.estimators import (
    ALPHA,
    cell_label,
    drift,
    grid_cells,
    require_quantities,
    rounding_allowance,
    standard_error,
    tail_mean,
    tail_window,
    z_bound,
    z_scores,
)
from noisydln.stats.inputs import accepts_dataset
from noisydln.stats.report import Report, judge


def is_diagonal(problem: Problem) -> bool:
    """Whether `Sigma = X^T X / n` is diagonal up to rounding (the decoupled case of s4)."""
    gram = np.asarray(problem.gram)
    off = gram - np.diag(np.diag(gram))
    return bool(np.max(np.abs(off)) <= 100 * np.finfo(gram.dtype).eps * np.max(np.abs(gram)))


def predicted_limit(problem: Problem, sigma: float, depth: int, init) -> np.ndarray:
    """The limit of docs/theory.md s4: shrinkage-thresholding (diagonal design, with the basin rule
    from `init` for depth >= 3) or the weighted lasso (general design, depth 2)."""
    if is_diagonal(problem):
        return np.asarray(theory.limit(theory.diagonal_target(problem), sigma, depth, init))
    if depth != 2:
        raise ValueError(
            "the limit of a depth >= 3 network is known in closed form only for a diagonal "
            "design (docs/theory.md s4); this problem's Sigma is not diagonal"
        )
    return np.asarray(theory.lasso_limit(problem, sigma))


@functools.partial(jax.jit, static_argnames="max_steps")
def _gd_on_expected_loss(params, problem, sigma, eta, tol, max_steps: int):
    def keep_going(state):
        _, gradient_norm, count = state
        return (gradient_norm > tol) & (count < max_steps)

    def step(state):
        params, _, count = state
        gradient = theory.expected_grad(params, problem, sigma)
        return params - eta * gradient, jnp.max(jnp.abs(gradient)), count + 1

    start = (params, jnp.asarray(jnp.inf, params.dtype), 0)
    params, gradient_norm, _ = jax.lax.while_loop(keep_going, step, start)
    return params, gradient_norm


def gd_limit(problem: Problem, sigma: float, init, eta: float, *, max_steps: int = 1_000_000):
    """Where gradient descent on `L_R` goes from `init` with step `eta`: `(beta [d], converged)`.

    Runs until the largest partial derivative of `L_R` is below a tolerance fixed from the
    dtype (1e-10 in float64, 1e-5 in float32) or `max_steps`; compiled once per shape.
    """
    dtype = problem.gram.dtype
    tol = 1e-10 if dtype == jnp.float64 else 1e-5
    params, gradient_norm = _gd_on_expected_loss(
        jnp.asarray(init, dtype), problem, jnp.asarray(sigma, dtype), jnp.asarray(eta, dtype),
        jnp.asarray(tol, dtype), max_steps,
    )  # fmt: skip
    return np.asarray(jnp.prod(params, axis=0)), bool(gradient_norm <= tol)


def time_needed(problem: Problem, sigma: float, depth: int, limit: np.ndarray) -> float | None:
    """Time `t = eta * step` for a diagonal design to come within e^-5 of its limit.

    Depth 2: near its limit a coordinate moves at the rate `4 D_i | |z_i| - sigma^2 |` (the
    balanced flow linearised at `beta_i = sign(z_i)(|z_i| - sigma^2)`, or at 0 below the
    threshold). Depth L >= 3: a coordinate whose limit is 0 leaves at the origin's rate
    `2 L D_i sigma^(2(L-1))`. Five times the slowest rate's time constant; None where no rate
    is known.
    """
    if not is_diagonal(problem):
        return None
    z = np.asarray(theory.diagonal_target(problem), dtype=float)
    diag = np.asarray(problem.gram_diag, dtype=float)
    if depth == 2:
        rates = 4 * diag * np.abs(np.abs(z) - sigma**2)
    else:  # only the origin's rate is known: L_R ~ D sigma^(2(L-1)) sum_l w_l^2 near it
        at_origin = np.asarray(limit) == 0
        if not at_origin.any():
            return None
        rates = 2 * depth * diag[at_origin] * sigma ** (2 * (depth - 1))
    slowest = float(np.min(rates))
    return math.inf if slowest == 0 else 5.0 / slowest


@accepts_dataset
def check_limit(
    result: GridResult,
    problem: Problem,
    config: SimConfig,
    *,
    tail: float = 0.25,
    bias_per_eta: float = 1.0,
    alpha: float = ALPHA,
) -> Report:
    """The mean of beta over seeds and over the tail of the run against the limit (docs/theory.md s4).

    `result` is a `GridResult` of `config` on `problem`, or a results Dataset (then both are
    read from it unless given, and every static combination in it is checked).

    The prediction is `predicted_limit`: shrinkage-thresholding on a diagonal design (with the
    deterministic basin rule from the start for depth >= 3), the weighted lasso otherwise.
    Every cell is first tested for stationarity: if the mean still drifts between the two
    halves of the tail window (beyond `z_bound` standard errors of the drift, or beyond float
    rounding for a deterministic run), or is off while the run is shorter than the slowest
    predicted rate needs (`time_needed`), the row is "not converged" with that time, never
    "fail". A "fail" means: converged, and away from theory past the allowance:

    - gradient descent on `L_R` (`expected_gd`, deterministic): the stationary point itself,
      up to float rounding (`rounding_allowance` of `1 + |limit|` over the run);
    - the stochastic rules: an O(eta) bias, allowed as `bias_per_eta * eta * (1 + |limit|)`
      (depth 2; measured 0.2-0.4 eta). With two step sizes the O(eta) term is instead removed
      by the extrapolation `(eta_1 m_2 - eta_2 m_1) / (eta_1 - eta_2)`, judged on the support
      within `z_bound` (conservative) standard errors, the bias must shrink with eta, and
      depth >= 3 per-eta rows (no known constant) are "measured".

    Basins (depth >= 3): with the `basin` quantity recorded, the fraction of seeds that end
    nearer the non-zero root than 0 is reported per coordinate ("measured"), and where seeds
    split between the basins the prediction of that coordinate is the mixture
    `p a + (1 - p) b` of the two roots. General design (depth 2): beside the unrestricted
    lasso (the prediction), the lasso restricted to the start's signs and the limit of
    gradient descent on `L_R` from the run's own start are reported, with the distance of the
    mean to each, so that one sees which the run follows.
    """
    require_quantities(result, problem, config, ("beta",), "")
    window = tail_window(result, tail)
    base, _ = config.base_init(problem.d, problem.gram.dtype)
    se_all = standard_error(result)["beta"]
    cells = list(grid_cells(result))
    drift_bound = z_bound(len(cells) * problem.d, alpha)
    two_etas = len(result.etas) > 1 and config.algorithm != "expected_gd"
    pending, estimates = [], {}
    for cell, sigma, eta, scale in cells:
        init = np.asarray(base) * scale
        limit = predicted_limit(problem, sigma, config.depth, init)
        estimate, se = tail_mean(result, "beta", cell, window)
        path = np.asarray(result.mean["beta"][cell], dtype=float)
        label = cell_label(sigma, eta, scale)
        if np.all(np.isnan(estimate)):
            pending.append((dict(quantity=f"beta tail mean ({label})", prediction=math.nan,
                                 estimate=math.nan, verdict="fail",
                                 note="every trajectory diverged"), None))  # fmt: skip
            continue
        limit, se, mixture_note, basin_rows = _basins(
            result, problem, config, cell, limit, se, window, label
        )
        pending += basin_rows
        deterministic = bool(np.all(np.nan_to_num(se_all[cell]) == 0))
        if deterministic:  # one seed, or no noise: every seed follows the same path
            se = np.zeros_like(se)
        rounding = rounding_allowance(
            1 + np.abs(limit), result.mean["beta"].dtype, config.num_steps
        )
        if deterministic:
            allowance = rounding
        else:
            allowance = bias_per_eta * eta * (1 + np.abs(limit)) + rounding
        change, change_se = drift(path[window], np.nan_to_num(se_all[cell][window]))
        # still moving: beyond its noise, and by more than a quarter of what the verdict allows
        drifting = np.abs(change) > np.maximum(
            0.0 if deterministic else drift_bound * change_se,
            (1.0 if deterministic else 0.25) * allowance,
        )
        z = z_scores(estimate, se, limit, allowance)
        estimates[cell] = (limit, estimate, se, bool(np.any(drifting)))
        i = int(np.argmax(np.abs(np.where(np.isnan(z), 0, z))))
        fields = dict(
            quantity=f"beta_{i} tail mean ({label})",
            prediction=float(limit[i]), estimate=float(estimate[i]), standard_error=float(se[i]),
            allowance=float(allowance[i]),
        )  # fmt: skip
        base_note = (
            f"{_source(problem, config)}; max |bias| {np.nanmax(np.abs(estimate - limit)):.3g}; "
            f"{int(np.sum(np.abs(limit) > 0))} of {problem.d} coords non-zero{mixture_note}"
        )
        needed = time_needed(problem, sigma, config.depth, limit)
        covered = eta * float(result.steps[-1])
        off = bool(np.nanmax(np.abs(z)) >= z_bound(len(cells) * problem.d, alpha))
        if np.any(drifting) or (off and needed is not None and covered < needed):
            j = int(np.argmax(np.abs(change) - (0 if deterministic else drift_bound * change_se)))
            wanted = (
                f"about t = {needed:.3g} ({math.ceil(needed / eta)} steps) from the slowest rate"
                if needed is not None and math.isfinite(needed)
                else f"at least twice as long (t > {2 * covered:.3g})"
            )
            pending.append((dict(fields, verdict="not converged", note=(
                f"run too short: at t = {covered:.3g} beta_{j} still moves by {change[j]:.3g} "
                f"over the tail; needs {wanted}; {base_note}")), None))  # fmt: skip
        elif two_etas and config.depth >= 3:
            pending.append((dict(fields, verdict="measured", note=f"O(eta) bias, judged by the eta -> 0 extrapolation; {base_note}"), None))  # fmt: skip
        elif deterministic:
            passed = bool(np.all(np.abs(estimate - limit) <= allowance))
            pending.append((dict(fields, threshold=float(allowance[i]), verdict="pass" if passed else "fail",
                                 note=f"deterministic: equal up to float rounding; {base_note}"), None))  # fmt: skip
        else:
            pending.append(
                (dict(fields, note=f"allowance {bias_per_eta:g} eta (1 + |limit|); {base_note}"), z)
            )
        if not is_diagonal(problem) and config.depth == 2:
            pending += _candidate_rows(problem, sigma, eta, init, estimate, se, label)
    if two_etas:
        pending += _extrapolation_rows(result, estimates, alpha)
    return Report("limit", tuple(judge("limit", pending, alpha)))


def _source(problem: Problem, config: SimConfig) -> str:
    if not is_diagonal(problem):
        return "weighted lasso (unrestricted)"
    if config.depth == 2:
        return "soft thresholding"
    return "shrinkage-thresholding, deterministic basin rule from the start"


def _basins(result, problem, config, cell, limit, se, window, label):
    """The measured fractions in each basin, and the prediction mixed where seeds split."""
    if "basin" not in result.mean:
        note = "; record 'basin' to measure crossings" if config.depth >= 3 else ""
        return limit, se, note, []
    fraction, fraction_se = tail_mean(result, "basin", cell, window)
    sigma = float(result.sigmas[cell[0]])
    target = np.asarray(theory.diagonal_target(problem), dtype=float)
    root = np.sign(target) * np.abs(
        np.asarray(theory.limit(target, sigma, config.depth), dtype=float)
    )
    split = (fraction - 3 * fraction_se > 0) & (fraction + 3 * fraction_se < 1) & (root != 0)
    moved = (root != 0) & (np.abs(limit - root) > 0) & (fraction - 3 * fraction_se > 0)
    mixed = split | moved
    mixture = fraction * root + (1 - fraction) * limit
    mixture_se = np.sqrt(se**2 + (np.abs(root - limit) * fraction_se) ** 2)
    new_limit = np.where(mixed, mixture, limit)
    new_se = np.where(mixed, mixture_se, se)
    rows = []
    for i in np.nonzero(root != 0)[0]:
        rows.append((dict(
            quantity=f"fraction of seeds in the basin of beta_{i} = {root[i]:.4g} ({label})",
            prediction=float(np.abs(limit[i]) > 0), estimate=float(fraction[i]),
            standard_error=float(fraction_se[i]), verdict="measured",
            note="the deterministic basin rule predicts " + ("all" if limit[i] != 0 else "none")
            + ("; seeds split between the basins: the limit row uses the mixture" if mixed[i] else ""),
        ), None))  # fmt: skip
    note = f"; mixture of basins for coords {np.nonzero(mixed)[0].tolist()}" if mixed.any() else ""
    return new_limit, new_se, note, rows


def _candidate_rows(problem, sigma, eta, init, estimate, se, label) -> list:
    """Which limit a depth-2 run on a general design follows: distances to three candidates."""
    start_signs = np.sign(np.prod(init, axis=0))
    candidates = {
        "unrestricted lasso": np.asarray(theory.lasso_limit(problem, sigma), dtype=float),
        "lasso in the start's orthant": np.asarray(
            theory.lasso_limit(problem, sigma, start_signs), dtype=float
        ),
        "GD on L_R from this start": gd_limit(problem, sigma, init, eta)[0].astype(float),
    }
    distances = {
        name: float(np.nanmax(np.abs(estimate - value))) for name, value in candidates.items()
    }
    closest = min(distances, key=distances.get)
    rows = []
    for name, value in candidates.items():
        z = np.abs(estimate - value) / np.where(se > 0, se, np.inf)
        i = int(np.argmax(np.abs(estimate - value)))
        rows.append((dict(
            quantity=f"distance to the {name} ({label})", prediction=float(value[i]),
            estimate=float(estimate[i]), standard_error=float(se[i]), z=float(np.nanmax(z)),
            verdict="measured",
            note=f"max |mean - candidate| = {distances[name]:.3g} at beta_{i}"
            + ("; the closest of the three" if name == closest else ""),
        ), None))  # fmt: skip
    return rows


def _extrapolation_rows(result, estimates, alpha) -> list:
    """With two etas: the bias shrinks, and the eta -> 0 extrapolation hits the limit."""
    big, small = int(np.argmax(result.etas)), int(np.argmin(result.etas))
    eta_big, eta_small = float(result.etas[big]), float(result.etas[small])
    pending = []
    for i, sigma in enumerate(result.sigmas):
        for k, scale in enumerate(result.init_scales):
            if (i, big, k) not in estimates or (i, small, k) not in estimates:
                continue
            limit, m_big, se_big, drift_big = estimates[(i, big, k)]
            _, m_small, se_small, drift_small = estimates[(i, small, k)]
            label = f"sigma={sigma:g} init x{scale:g}"
            if not (np.any(se_big > 0) or np.any(se_small > 0)):
                continue  # deterministic cells: each step size is judged exactly on its own
            if drift_big or drift_small:
                pending.append((dict(quantity=f"eta -> 0 extrapolation ({label})", prediction=math.nan,
                                     estimate=math.nan, verdict="not converged",
                                     note="a step size's run has not converged (see its row)"), None))  # fmt: skip
                continue
            b_big, b_small = np.abs(m_big - limit), np.abs(m_small - limit)
            j = int(np.argmax(b_small))
            pending.append((dict(
                quantity=f"bias shrinks with eta: max |bias| at eta={eta_small:g} vs eta={eta_big:g} ({label})",
                prediction=float(b_big.max()), estimate=float(b_small.max()),
                standard_error=float(se_small[j] + se_big[j]),
                note="the bias at the smaller step may not exceed the larger's",
            ), np.atleast_1d(max(b_small.max() - b_big.max(), 0) / (se_small[j] + se_big[j]))))  # fmt: skip
            extrapolated = (eta_big * m_small - eta_small * m_big) / (eta_big - eta_small)
            # |a m_2 - b m_1| has SE at most a se_2 + b se_1, whatever the correlation
            se_extrapolated = (eta_big * se_small + eta_small * se_big) / (eta_big - eta_small)
            # the bias is linear in eta on the support; at a thresholded coordinate the
            # fluctuation about 0 is not, so the extrapolation is judged on the support only
            support = np.abs(limit) > 0
            z = np.where(support, z_scores(extrapolated, se_extrapolated, limit), np.nan)
            if not support.any():
                continue
            j = int(np.nanargmax(np.abs(z)))
            pending.append((dict(
                quantity=f"eta -> 0 extrapolation of beta_{j} ({label})",
                prediction=float(limit[j]), estimate=float(extrapolated[j]),
                standard_error=float(se_extrapolated[j]),
                note=f"Richardson from eta={eta_big:g}, {eta_small:g}; {int(support.sum())} coords on the support",
            ), z))  # fmt: skip
    return pending
