"""The sharpness claim of docs/theory.md s2: the noise drives the layers to the flattest factorisation."""

import math

import numpy as np

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
)
from noisydln.stats.inputs import accepts_dataset
from noisydln.stats.report import Report, Row


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
    product: the recorded gaps `trace_gap`, `sharpness_gap` (>= 0) shrink. A cell with sigma > 0
    passes when the gap averaged over the `tail` of the run is below `fraction` of its initial
    value, up to `z_bound` standard errors (the stationary fluctuation of the layers keeps an
    O(eta) gap). Cells without noise conserve the imbalance: reported, not judged.
    """
    require_quantities(result, problem, config, ("trace_gap", "sharpness_gap"), "")
    window = tail_window(result, tail)
    cells = list(grid_cells(result))
    bound = z_bound(2 * len(cells), alpha)
    rows = []
    for cell, sigma, eta, scale in cells:
        for name, label in (("trace_gap", "tr hess - min tr hess"), ("sharpness_gap", "S - min S")):
            path = np.asarray(result.mean[name][cell])
            initial = float(path[0])
            final, se = tail_mean(result, name, cell, window)
            checkpoints = ", ".join(f"{path[int(i)]:.3g}" for i in np.linspace(0, len(path) - 1, 4))
            if sigma == 0 or initial <= 0:
                why = "no noise: the gap is conserved" if sigma == 0 else "starts balanced"
                rows.append(
                    Row(
                        "sharpness",
                        f"{label} ({cell_label(sigma, eta, scale)})",
                        initial,
                        float(final),
                        float(se),
                        math.nan,
                        True,
                        f"{why}; not judged; gap {checkpoints}",
                    )
                )
                continue
            target = fraction * initial
            z = (
                max(float(final) - target, 0.0) / float(se)
                if se > 0
                else (0.0 if final <= target else math.inf)
            )
            rows.append(
                Row(
                    "sharpness",
                    f"{label} ({cell_label(sigma, eta, scale)})",
                    target,
                    float(final),
                    float(se),
                    z,
                    z < bound,
                    f"tail gap <= {fraction:g} x initial {initial:.3g}; gap per record {checkpoints}",
                )
            )
    return Report("sharpness", tuple(rows))
