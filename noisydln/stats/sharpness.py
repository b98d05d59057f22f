"""The sharpness claim of docs/theory.md s2: the noise drives the layers to the flattest factorisation."""

import math

import numpy as np

from noisydln.grid import GridResult
from noisydln.problem import Problem
from noisydln.simulate import SimConfig
from noisydln.stats.balancing import predicted_rate
from noisydln.stats.estimators import (
    ALPHA,
    cell_label,
    drift,
    grid_cells,
    require_quantities,
    standard_error,
    tail_mean,
    tail_window,
    z_bound,
    z_scores,
)
from noisydln.stats.inputs import accepts_dataset
from noisydln.stats.report import Report, judge


@accepts_dataset
def check_sharpness(
    result: GridResult,
    problem: Problem,
    config: SimConfig,
    *,
    tail: float = 0.1,
    fraction: float = 0.1,
    alpha: float = ALPHA,
) -> Report:
    """The noise drives the factorisation to the balanced one, of least sharpness (docs/theory.md s2).

    `result` is a `GridResult` of `config` on `problem`, or a results Dataset (then both are
    read from it unless given, and every static combination in it is checked).

    Along training the Monte Carlo means of the Hessian trace and of the average sharpness
    approach `min_hessian_trace` / `min_average_sharpness` of each trajectory's current
    product: the recorded gaps `trace_gap`, `sharpness_gap` (>= 0) go to 0 (the prediction),
    up to the O(eta) gap the fluctuating layers keep: the allowance, `fraction` of the initial
    gap, stated up front. First the tail is tested for stationarity: a gap still falling over
    the tail (beyond `z_bound` standard errors of the drift), or a run shorter than the time
    the slowest balancing rate needs to bring the gap down to `fraction`
    (`log(1 / fraction) / min rate`), while the gap is above the allowance, is "not converged"
    with that time. Otherwise the tail gap must be within the allowance plus `z_bound`
    standard errors. Cells without noise (nothing balances the layers) or that start balanced
    are "measured".
    """
    require_quantities(result, problem, config, ("trace_gap", "sharpness_gap"), "")
    window = tail_window(result, tail)
    pending = []
    for cell, sigma, eta, scale in grid_cells(result):
        for name, label in (("trace_gap", "tr hess - min tr hess"), ("sharpness_gap", "S - min S")):
            pending.append(
                _gap_row(
                    result, problem, config, name, label, cell, sigma, eta, scale, window, fraction
                )
            )
    return Report("sharpness", tuple(judge("sharpness", pending, alpha)))


def _gap_row(result, problem, config, name, label, cell, sigma, eta, scale, window, fraction):
    """`(fields, z)` of one gap in one cell: measured, not converged, or judged."""
    path = np.asarray(result.mean[name][cell], dtype=float)
    se_path = standard_error(result)[name][cell]
    initial = float(path[0])
    final, se = tail_mean(result, name, cell, window)
    checkpoints = ", ".join(f"{path[int(i)]:.3g}" for i in np.linspace(0, len(path) - 1, 4))
    fields = dict(
        quantity=f"{label} ({cell_label(sigma, eta, scale)})",
        prediction=0.0,
        estimate=float(final),
        standard_error=float(se),
    )
    if sigma == 0 or initial <= 0:
        why = "no noise: nothing balances the layers" if sigma == 0 else "starts balanced"
        return dict(fields, verdict="measured", note=f"{why}; gap per record {checkpoints}"), None
    allowance = fraction * initial  # the O(eta) stationary gap of the fluctuating layers
    fields.update(allowance=allowance)
    change, change_se = drift(path[window], se_path[window])
    bound = z_bound(1)
    falling = change < 0 and abs(change) > z_bound(2) * change_se + 0.1 * allowance
    rate = float(np.min(predicted_rate(problem, config, sigma))) * sigma ** (2 * (config.depth - 2))
    needed = math.log(1 / fraction) / rate  # the imbalance's slowest decay down to `fraction`
    covered = eta * float(result.steps[-1])
    if falling or (covered < needed and final > allowance + bound * se):
        return dict(
            fields,
            verdict="not converged",
            note=f"run too short: the gap still falls ({change:.3g} over the tail) at t = {covered:.3g}; "
            f"the slowest balancing rate predicts t >= {needed:.3g} ({math.ceil(needed / eta)} steps); "
            f"gap per record {checkpoints}",
        ), None
    z = z_scores(final, se, 0.0, allowance)
    return dict(
        fields,
        note=f"tail gap within {fraction:g} x initial {initial:.3g}; gap per record {checkpoints}",
    ), np.atleast_1d(z)
