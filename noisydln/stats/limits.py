"""The limits of docs/theory.md s4: shrinkage-thresholding and the weighted lasso."""

import math

import numpy as np

from noisydln import theory
from noisydln.grid import GridResult
from noisydln.problem import Problem
from noisydln.simulate import SimConfig
from noisydln.stats.estimators import (
    ALPHA,
    cell_label,
    grid_cells,
    require_quantities,
    tail_mean,
    tail_window,
    z_bound,
    z_scores,
)
from noisydln.stats.inputs import accepts_dataset
from noisydln.stats.report import Report, Row


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

    For `expected_gd` (gradient descent on `L_R`, deterministic) the limit is the stationary
    point itself, at any depth and from either side of the saddle: every coordinate must match
    to `1e-6 (1 + |limit|)` (float32: `1e-4`). The stochastic algorithm instead fluctuates
    around the limit with an O(eta) bias. Depth 2: a cell
    passes when every `|estimate - limit|` is within `bias_per_eta * eta * (1 + |limit|)` (docs/theory.md
    saw 0.4 eta at sigma = 0.3) plus `z_bound` standard errors. Depth >= 3 has no known constant:
    its cells are reported, and judged through two step sizes. With several etas in the grid,
    the largest bias must shrink from the largest eta to the smallest, and on the support the
    Richardson extrapolation `(eta_1 m_2 - eta_2 m_1) / (eta_1 - eta_2)`, free of the O(eta)
    term, must match the limit within `z_bound` (conservative) standard errors.
    """
    require_quantities(result, problem, config, ("beta",), "")
    window = tail_window(result, tail)
    base, _ = config.base_init(problem.d, problem.gram.dtype)
    cells = list(grid_cells(result))
    bound = z_bound(len(cells) * problem.d, alpha)
    rows, estimates = [], {}
    for cell, sigma, eta, scale in cells:
        limit = predicted_limit(problem, sigma, config.depth, base * scale)
        estimate, se = tail_mean(result, "beta", cell, window)
        estimates[cell] = (limit, estimate, se)
        bias = estimate - limit
        i = int(np.argmax(np.abs(bias)))
        note = f"max |bias| {np.abs(bias).max():.3g}; {int(np.sum(np.abs(limit) > 0))} of {problem.d} coords non-zero"
        if config.algorithm == "expected_gd":
            tolerance = (1e-6 if estimate.dtype == np.float64 else 1e-4) * (1 + np.abs(limit))
            z = np.where(np.abs(bias) <= tolerance, 0.0, np.inf)
            verdict, z_max = bool(np.all(z == 0)), float(np.max(z))
            note += "; GD on L_R: the stationary point itself, to 1e-6 (1 + |limit|)"
        elif config.depth == 2:
            allowance = bias_per_eta * eta * (1 + np.abs(limit))
            z = z_scores(np.maximum(np.abs(bias) - allowance, 0), se, 0.0)
            verdict, z_max = bool(np.max(z) < bound), float(np.max(z))
            note += f"; allowance {bias_per_eta:g} eta (1 + |limit|)"
        else:
            verdict, z_max = True, math.nan
            note += "; not judged alone (no O(eta) constant for depth >= 3: see two etas)"
        row = Row(
            "limit",
            f"beta_{i} tail mean ({cell_label(sigma, eta, scale)})",
            float(limit[i]),
            float(estimate[i]),
            float(se[i]),
            z_max,
            verdict,
            note,
        )
        rows.append(row)
    if len(result.etas) > 1:
        big, small = int(np.argmax(result.etas)), int(np.argmin(result.etas))
        eta_big, eta_small = float(result.etas[big]), float(result.etas[small])
        for i, sigma in enumerate(result.sigmas):
            for k, scale in enumerate(result.init_scales):
                limit, m_big, se_big = estimates[(i, big, k)]
                _, m_small, se_small = estimates[(i, small, k)]
                b_big, b_small = np.abs(m_big - limit).max(), np.abs(m_small - limit).max()
                j = int(np.argmax(np.abs(m_small - limit)))
                rows.append(
                    Row(
                        "limit",
                        f"bias shrinks with eta (sigma={sigma:g} init x{scale:g})",
                        float(b_big),
                        float(b_small),
                        float(se_small[j]),
                        math.nan,
                        bool(b_small <= b_big + bound * se_small[j]),
                        f"max |bias| at eta={eta_small:g} vs eta={eta_big:g}",
                    )
                )
                extrapolated = (eta_big * m_small - eta_small * m_big) / (eta_big - eta_small)
                # |a m_2 - b m_1| has SE at most a se_2 + b se_1, whatever the correlation
                se_extrapolated = (eta_big * se_small + eta_small * se_big) / (eta_big - eta_small)
                # the bias is linear in eta on the support; at a thresholded coordinate the
                # fluctuation about 0 is not, so the extrapolation is judged on the support only
                support = np.abs(limit) > 0
                z = np.where(support, z_scores(extrapolated, se_extrapolated, limit), 0.0)
                j = int(np.argmax(np.abs(z)))
                rows.append(
                    Row(
                        "limit",
                        f"eta -> 0 extrapolation of beta_{j} (sigma={sigma:g} init x{scale:g})",
                        float(limit[j]),
                        float(extrapolated[j]),
                        float(se_extrapolated[j]),
                        float(np.abs(z).max()),
                        bool(np.abs(z).max() < bound),
                        f"Richardson from eta={eta_big:g}, {eta_small:g}; max|z| of {int(support.sum())} on the support < {bound:.2f}",
                    )
                )
    return Report("limit", tuple(rows))
