"""Estimators with error bars, z-scores and verdicts, and the helpers the checks share."""

import math
import statistics

import numpy as np

from noisydln.grid import GridResult
from noisydln.problem import Problem
from noisydln.simulate import SimConfig

ALPHA = 0.01  # family-wise level of every combined verdict


def standard_error(result: GridResult) -> dict[str, np.ndarray]:
    """The standard error of every recorded mean, `[S, E, I, R, *shape]` (NaN below 2 seeds):
    `sqrt(var / count)`, with the rounding of the streamed mean added in quadrature."""
    out = {}
    for k, mean in result.mean.items():
        mean, var, count = (np.asarray(a) for a in (mean, result.var[k], result.count[k]))
        sampling = var / count
        out[k] = np.sqrt(sampling + streaming_rounding(mean, var, count, mean.dtype) ** 2)
    return out


def streaming_rounding(mean, var, count, dtype) -> np.ndarray:
    """The standard deviation of the rounding error of a mean streamed over `count` samples.

    Each of the `count / 16` block merges of `noisydln.moments` rounds the running mean by
    about one unit in the last place of `|mean| + sd`, and the later merges shrink the error of
    merge k by its share of the count: the errors add up to about `u (|mean| + sd) sqrt(K / 3)`
    (`u` the unit roundoff, `K = count / 16`; docs/precision.md). Negligible in float64; in
    float32 it is 0.1 to 2 standard errors of the sampling noise once the count reaches 10^6
    to 10^7 and the mean is 10 to 100 spreads from 0. It is 0 where the samples are all equal
    (every merge is then exact).
    """
    unit = float(np.finfo(np.dtype(dtype)).eps) / 2
    sd = np.sqrt(np.where(np.isfinite(var), var, 0.0))
    blocks = np.maximum(np.asarray(count, dtype=float) / 16, 1.0)
    return np.where(sd > 0, unit * (np.abs(mean) + sd) * np.sqrt(blocks / 3), 0.0)


def gaussian_quantile(probability: float) -> float:
    """The standard normal quantile."""
    return statistics.NormalDist().inv_cdf(probability)


def confidence_interval(result: GridResult, level: float = 0.95) -> dict[str, tuple]:
    """Normal confidence intervals `(low, high)` of every recorded mean."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    half = gaussian_quantile(0.5 + level / 2)
    se = standard_error(result)
    return {
        k: (np.asarray(m) - half * se[k], np.asarray(m) + half * se[k])
        for k, m in result.mean.items()
    }


ROUNDING_ULPS = 16  # rounding allowance of a deterministic comparison, in units of eps


def rounding_allowance(scale, dtype, num_steps: int = 1):
    """What floating-point rounding may change in a deterministic comparison.

    `ROUNDING_ULPS * eps(dtype) * sqrt(num_steps) * max(|scale|, 1)`: rounding errors of a
    run of `num_steps` steps add up like a random walk, each of a few units in the last place
    of the quantity's size `scale`. About 5e-5 for a quantity of size 1 after 1000 float32
    steps, 1e-13 in float64.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return ROUNDING_ULPS * eps * math.sqrt(max(num_steps, 1)) * np.maximum(np.abs(scale), 1.0)


def z_scores(estimate, standard_err, prediction, allowance=0.0) -> np.ndarray:
    """`max(|estimate - prediction| - allowance, 0) / standard_error`, elementwise, signed.

    `allowance` is a deterministic difference allowed before judging (an O(eta) bias, float
    rounding). Where the standard error is 0 (a deterministic quantity) z is 0 when the
    difference is within the allowance, and infinite otherwise: an infinite z is a failure,
    never dropped (`combined_verdict`).
    """
    diff = np.asarray(estimate, dtype=float) - np.asarray(prediction, dtype=float)
    excess = np.maximum(np.abs(diff) - np.asarray(allowance, dtype=float), 0.0) * np.sign(diff)
    se = np.broadcast_to(np.asarray(standard_err, dtype=float), diff.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = excess / se
    return np.where(se == 0, np.copysign(np.where(excess == 0, 0.0, np.inf), excess), z)


def z_bound(num_tests: int, alpha: float = ALPHA) -> float:
    """The |z| a family of `num_tests` comparisons may reach at family-wise level `alpha`."""
    return gaussian_quantile(1 - alpha / (2 * max(num_tests, 1)))


def combined_verdict(z, alpha: float = ALPHA) -> tuple[float, float, bool]:
    """`(max |z|, bound, passed)` for many z-scores judged together (Bonferroni).

    NaNs (no estimate: fewer than two seeds) are left out; an infinite z (a deterministic
    mismatch) fails.
    """
    z = np.abs(np.asarray(z, dtype=float)).ravel()
    z = z[~np.isnan(z)]
    if z.size == 0:
        raise ValueError("no z-score to judge: too few seeds (need count >= 2)")
    bound = z_bound(z.size, alpha)
    return float(z.max()), bound, bool(z.max() < bound)


def drift(mean, se, axis: int = 0):
    """Change of a mean between the two halves of a window of records, and its standard error.

    `mean`, `se: [R, ...]` (records along `axis`). Records of one seed are correlated, so the
    standard error of each half's average is bounded by the average of its SEs, and that of
    the difference by their sum (conservative, whatever the correlation).

    Returns:
      `(later - earlier, standard error)`, each `[...]`.
    """
    mean, se = (
        np.moveaxis(np.asarray(mean, float), axis, 0),
        np.moveaxis(np.asarray(se, float), axis, 0),
    )
    half = max(mean.shape[0] // 2, 1)
    early, late = slice(0, half), slice(mean.shape[0] - half, None)
    change = mean[late].mean(axis=0) - mean[early].mean(axis=0)
    return change, se[late].mean(axis=0) + se[early].mean(axis=0)


def fit_decay_rate(times, mean, se) -> tuple[float, float]:
    """Decay rate of a mean that starts deterministic, `-log(mean_T / mean_0) / T`, and its SE.

    `T` is the last record before the mean stops being resolved (`|mean| > 5 se`, same sign as
    at the start). Records share their seeds, so a regression through all of them would
    understate its error; with a deterministic start the two-point rate has the standard
    error `(se_T / |mean_T|) / T` (delta method), which is honest.
    """
    times, mean, se = (np.asarray(a, dtype=float) for a in (times, mean, se))
    resolved = (np.sign(mean) == np.sign(mean[0])) & (np.abs(mean) > 5 * se) & (mean != 0)
    resolved = np.cumprod(resolved).astype(bool)
    last = int(np.nonzero(resolved)[0][-1]) if resolved.any() else 0
    if last < 1 or se[0] > 0:
        return math.nan, math.nan
    span = times[last] - times[0]
    rate = -np.log(mean[last] / mean[0]) / span
    return float(rate), float(se[last] / abs(mean[last]) / span)


# ---------------------------------------------------------------- helpers


def require_quantities(
    result: GridResult, problem: Problem, config: SimConfig, names, how: str
) -> None:
    """Raises unless `result` holds `names` and matches `problem` (d) and `config` (depth, steps),
    and `config` runs the diagonal network, whose closed forms (docs/theory.md) the checks use."""
    if config.network != "diagonal":
        raise ValueError(
            f"the checks of noisydln.stats judge the diagonal network against docs/theory.md; "
            f"this run has network = {config.network!r} (see docs/dense.md for its checks)"
        )
    missing = [n for n in names if n not in result.mean]
    if missing:
        raise ValueError(
            f"the result does not hold {missing}: run it with "
            f"SimConfig(quantities=(..., {', '.join(repr(n) for n in missing)})) {how}"
        )
    d = result.mean["beta"].shape[-1] if "beta" in result.mean else None
    if d is not None and d != problem.d:
        raise ValueError(f"the result has d = {d} but the problem has d = {problem.d}")
    if "imbalance" in result.mean and result.mean["imbalance"].shape[-2] != config.depth - 1:
        depth = result.mean["imbalance"].shape[-2] + 1
        raise ValueError(
            f"the result comes from depth {depth} but the config has depth {config.depth}"
        )
    if not np.array_equal(result.steps, config.record_steps()):
        raise ValueError(
            "the result's record steps are not those of the config: pass the config it ran"
        )


def grid_cells(result: GridResult):
    """`(cell index, sigma, eta, init scale)` of every cell of the grid."""
    for i, sigma in enumerate(result.sigmas):
        for j, eta in enumerate(result.etas):
            for k, scale in enumerate(result.init_scales):
                yield (i, j, k), float(sigma), float(eta), float(scale)


def cell_label(sigma, eta, scale) -> str:
    """The name of a grid cell in a report row."""
    return f"sigma={sigma:g} eta={eta:g} init x{scale:g}"


def tail_window(result: GridResult, tail: float) -> slice:
    """The last `tail` fraction of the records (at least one) as a slice."""
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail}")
    return slice(len(result.steps) - max(1, math.ceil(tail * len(result.steps))), None)


def tail_mean(result: GridResult, name: str, cell, tail: slice):
    """Mean over the tail records of the mean over seeds, with a conservative standard error.

    Records of one seed are correlated; the standard deviation of an average is at most the
    average of the standard deviations, so the mean of the per-record SEs bounds its SE.
    """
    mean = np.asarray(result.mean[name][cell])[tail]
    se = standard_error(result)[name][cell][tail]
    return mean.mean(axis=0), se.mean(axis=0)
