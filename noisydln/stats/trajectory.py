"""Expected trajectories: the Monte Carlo mean against gradient descent on `L_R` (docs/theory.md s3).

One step of stochastic SAM moves the parameters by `-eta grad L(W + xi)`, whose mean given `W`
is `-eta grad L_R(W)`. The mean trajectory therefore follows gradient descent on `L_R` from the
same start with the same step, up to the curvature of `grad L_R` against the O(eta) spread of
the seeds: a bias of order eta, while the seeds fluctuate around it by O(sqrt(eta)). A run is
judged on the time it covers, at every record, not on a limit it may not have reached.
"""

import dataclasses
import math

import jax
import numpy as np

from noisydln.grid import GridResult, run_grid
from noisydln.problem import Problem
from noisydln.simulate import SimConfig
from noisydln.stats.estimators import (
    ALPHA,
    cell_label,
    grid_cells,
    require_quantities,
    rounding_allowance,
    standard_error,
    z_scores,
)
from noisydln.stats.inputs import accepts_dataset
from noisydln.stats.report import Report, judge

# rules whose mean trajectory is gradient descent on L_R up to O(eta): every unit-variance
# perturbation law gives the same L_R (only second moments enter it, docs/theory.md s2)
TRAJECTORY_RULES = ("stochastic_sam", "expected_gd")
NOT_COMPARED = ("imbalance_step_residual", "basin")  # judged by check_balancing / check_limit
# judged with one step size against the stated allowance: the parameters' own moments, whose
# O(eta) difference from GD on L_R comes from the drift of the mean, not from the seeds' spread
STATED_ALLOWANCE = ("beta", "imbalance")
# not smooth in the parameters: where the seeds straddle a kink the mean is off from GD on L_R
# by O(sqrt(eta)), not O(eta), so no extrapolation in eta applies; measured, never judged
_NOT_SMOOTH_BECAUSE = {
    "trace_gap": "built on |beta|, whose mean is off by O(sqrt(eta)) where beta fluctuates about 0",
    "sharpness_gap": "built on |beta|, whose mean is off by O(sqrt(eta)) where beta fluctuates "
    "about 0",
    "l1_norm": "built on |beta|, whose mean is off by O(sqrt(eta)) where beta fluctuates about 0",
    "distance_to_limit": "a norm, whose mean is off by O(sqrt(eta)) where beta fluctuates about "
    "the limit",
    "support_size": "a count of |beta_i| above a level, a step function of beta",
    "top_eigenvalue": "the largest of the Hessian's eigenvalues, not smooth where the top two "
    "cross (0.2 % apart on W1's early records)",
}
NON_SMOOTH = tuple(_NOT_SMOOTH_BECAUSE)


def expected_trajectories(problem: Problem, config: SimConfig, result: GridResult) -> GridResult:
    """Gradient descent on `L_R` from each cell's start with its step: one deterministic run.

    Returns a `GridResult` over the same grid and records as `result`, one seed.
    """
    names = tuple(q for q in result.mean if q not in NOT_COMPARED)
    reference = dataclasses.replace(
        config, algorithm="expected_gd", noise=None, batch_size=None, quantities=names
    )
    return run_grid(
        jax.random.key(0), problem, reference, num_seeds=1, sigmas=result.sigmas,
        etas=result.etas, init_scales=result.init_scales,
    )  # fmt: skip


def _aligned_records(steps: np.ndarray, eta_big: float, eta_small: float):
    """Record indices `(big, small)` at equal times `eta * step`, or None if they do not align."""
    ratio = eta_big / eta_small
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 2:
        return None
    ratio = round(ratio)
    position = {int(s): i for i, s in enumerate(steps)}
    pairs = [
        (i, position[int(s) * ratio]) for i, s in enumerate(steps) if int(s) * ratio in position
    ]
    if len(pairs) < 2:
        return None
    big, small = zip(*pairs, strict=True)
    return np.asarray(big), np.asarray(small)


def _worst(z: np.ndarray) -> tuple[int, ...]:
    flat = np.where(np.isnan(z), -1.0, np.abs(z))
    return np.unravel_index(int(np.argmax(flat)), z.shape)


def _where(index, steps, eta) -> str:
    record, *element = index
    place = f"step {int(steps[record])} (t = {eta * steps[record]:.3g})"
    return place + (f", element {tuple(int(i) for i in element)}" if element else "")


@accepts_dataset
def check_trajectory(
    result: GridResult,
    problem: Problem,
    config: SimConfig,
    *,
    reference: GridResult | None = None,
    bias_per_eta: float = 1.0,
    alpha: float = ALPHA,
) -> Report:
    """The mean of every recorded quantity against gradient descent on `L_R`, at every record.

    The reference is the deterministic trajectory of gradient descent on the expected loss
    `L_R` from the same start with the same step (`expected_gd`; docs/theory.md s3), computed
    here (one compiled run) unless given. The difference `d(eta, t)` of the mean from it is
    O(eta); the allowance for it is fixed before looking:

    - with two step sizes whose ratio is an integer (records at equal times `t = eta * step`),
      the O(eta) term cancels in the extrapolation `(eta_1 d_2 - eta_2 d_1) / (eta_1 - eta_2)`,
      which must be 0 within `z_bound` standard errors (conservative: the sum of the two
      scaled SEs) past an allowance `eta_1 |d_2|` for the O(eta^2) remainder; each step
      size's own difference is reported as "measured";
    - with one step size, `|d|` of `beta` and `imbalance` may reach
      `bias_per_eta * eta * (1 + |reference|)`; the other quantities (losses, sharpness, trace,
      gaps: nonlinear in the parameters, so their O(eta) part includes the spread of the
      seeds, of unknown constant) are "measured".

    A deterministic run (sigma = 0, or `expected_gd`) must equal the reference up to float
    rounding (`rounding_allowance`). All z-scores of the check form one family (Bonferroni at
    level `alpha`).

    Args:
      result: a `GridResult` of `config` on `problem` (`stochastic_sam` with any noise law,
        or `expected_gd`), or a results Dataset (its `<q>_gd_LR` variables are the reference).
      reference: the reference run (`expected_trajectories`), if already at hand.
      bias_per_eta: the one-step-size allowance per unit of eta.
    """
    if config.algorithm not in TRAJECTORY_RULES:
        raise ValueError(
            f"the expected trajectory of {config.algorithm!r} is not gradient descent on L_R; "
            f"check_trajectory takes {TRAJECTORY_RULES}"
        )
    require_quantities(result, problem, config, ("beta",), "")
    if reference is None:
        reference = expected_trajectories(problem, config, result)
    names = [q for q in result.mean if q not in NOT_COMPARED and q in reference.mean]
    se_all = standard_error(result)
    steps = result.steps
    pending = []  # (row fields, z array or None) judged once the family size is known
    for name in names:
        for cell, sigma, eta, scale in grid_cells(result):
            mean = np.asarray(result.mean[name][cell], dtype=float)
            ref = np.asarray(reference.mean[name][cell], dtype=float)
            se = se_all[name][cell]
            scale_q = np.nanmax(np.abs(ref))
            rounding = rounding_allowance(scale_q, result.mean[name].dtype, config.num_steps)
            label = f"{name} ({cell_label(sigma, eta, scale)})"
            if np.all(np.isnan(mean)):
                pending.append(
                    (
                        dict(
                            quantity=label,
                            prediction=float(ref[-1].ravel()[0]),
                            estimate=math.nan,
                            verdict="fail",
                            note="every trajectory diverged",
                        ),
                        None,
                    )
                )
                continue
            deterministic = bool(np.all((se == 0) | np.isnan(se)))
            judged_by_extrapolation = not deterministic and _pair_for(result, eta) is not None
            allowance = (
                rounding
                if deterministic or judged_by_extrapolation
                else (bias_per_eta * eta * (1 + np.abs(ref)) + rounding)
            )
            z = z_scores(mean, np.where(np.isnan(se), 0.0, se), ref, allowance)
            index = _worst(np.where(np.isnan(z), 0.0, z) if deterministic else z)
            fields = dict(
                quantity=f"{label}, worst at {_where(index, steps, eta)}",
                prediction=float(ref[index]),
                estimate=float(mean[index]),
                standard_error=float(se[index]) if not deterministic else 0.0,
                allowance=float(np.broadcast_to(allowance, mean.shape)[index]),
            )
            if deterministic:
                passed = bool(np.all(np.abs(mean - ref) <= allowance))
                fields.update(
                    verdict="pass" if passed else "fail",
                    threshold=fields["allowance"],
                    note="deterministic: equal up to float rounding"
                    + (
                        ""
                        if passed
                        else f"; off by {abs(fields['estimate'] - fields['prediction']):.3g}"
                    ),
                )
                pending.append((fields, None))
            elif (why := _measured_because(name, judged_by_extrapolation)) is not None:
                gap = float(np.nanmax(np.abs(mean - ref)))
                fields.update(verdict="measured", note=f"max |mean - GD on L_R| = {gap:.3g}; {why}")
                pending.append((fields, None))
            else:
                fields.update(note=f"allowance {bias_per_eta:g} eta (1 + |reference|) + rounding")
                pending.append((fields, z))
        if name not in NON_SMOOTH:
            pending += _extrapolation_rows(result, reference, name, se_all[name], steps, config)
    return Report("trajectory", tuple(judge("trajectory", pending, alpha)))


def _measured_because(name: str, judged_by_extrapolation: bool) -> str | None:
    """Why a stochastic row is measured rather than judged, or None when it is judged."""
    if name in NON_SMOOTH:
        judged = " (check_sharpness judges the gaps)" if name.endswith("_gap") else ""
        return f"{_NOT_SMOOTH_BECAUSE[name]}: not judged{judged}"
    if judged_by_extrapolation:
        return "the O(eta) difference is judged by the eta -> 0 extrapolation"
    if name not in STATED_ALLOWANCE:
        return (
            "its O(eta) part includes the spread of the seeds (nonlinear in the parameters); "
            "judged with two step sizes"
        )
    return None


def _pair_for(result: GridResult, eta: float):
    """The (big, small) step sizes that judge `eta` by extrapolation, or None."""
    if len(result.etas) < 2:
        return None
    big, small = float(np.max(result.etas)), float(np.min(result.etas))
    if eta not in (big, small) or _aligned_records(result.steps, big, small) is None:
        return None
    return big, small


def _extrapolation_rows(result, reference, name, se, steps, config) -> list:
    """The eta -> 0 extrapolation of the difference from GD on L_R, per (sigma, init)."""
    if len(result.etas) < 2:
        return []
    big_index, small_index = int(np.argmax(result.etas)), int(np.argmin(result.etas))
    eta_big, eta_small = float(result.etas[big_index]), float(result.etas[small_index])
    aligned = _aligned_records(steps, eta_big, eta_small)
    if aligned is None:
        return []
    at_big, at_small = aligned
    rows = []
    for i, sigma in enumerate(result.sigmas):
        for k, scale in enumerate(result.init_scales):
            big, small = (i, big_index, k), (i, small_index, k)
            d_big = (
                np.asarray(result.mean[name][big], float)[at_big]
                - np.asarray(reference.mean[name][big], float)[at_big]
            )
            d_small = (
                np.asarray(result.mean[name][small], float)[at_small]
                - np.asarray(reference.mean[name][small], float)[at_small]
            )
            se_big, se_small = se[big][at_big], se[small][at_small]
            if np.all((se_big == 0) & (se_small == 0)):
                continue  # deterministic cells are judged directly
            span = eta_big - eta_small
            extrapolated = (eta_big * d_small - eta_small * d_big) / span
            extrapolated_se = (eta_big * se_small + eta_small * se_big) / span
            ref_scale = np.nanmax(np.abs(np.asarray(reference.mean[name][small], float)))
            allowance = eta_big * np.abs(d_small) + rounding_allowance(
                ref_scale, result.mean[name].dtype, config.num_steps
            )
            z = z_scores(extrapolated, extrapolated_se, 0.0, allowance)
            index = _worst(z)
            time = eta_big * steps[at_big][index[0]]
            rows.append(
                (
                    dict(
                        quantity=f"{name}: eta -> 0 extrapolation of mean - GD on L_R (sigma={sigma:g} init x{scale:g}), worst at t = {time:.3g}",
                        prediction=0.0,
                        estimate=float(extrapolated[index]),
                        standard_error=float(extrapolated_se[index]),
                        allowance=float(allowance[index]),
                        note=f"Richardson from eta = {eta_big:g}, {eta_small:g} at {len(at_big)} common times; allowance eta_1 |d_2| (O(eta^2))",
                    ),
                    z,
                )
            )
    return rows
