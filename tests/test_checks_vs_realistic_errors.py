"""Every check of `noisydln.stats` against engines with small, realistic bugs.

A check that catches only gross errors (doubled noise variance, plain GD) proves little. Here each
check is handed an engine with a plausible bug: 10 % excess noise variance, sigma 5 % high, one
noise draw shared by both layers, `one_layer_sam` that never perturbs the last layer. Each must be
rejected by the tolerance the check fixes itself (its Bonferroni bound over its own standard
errors), while the correct engine, on the same problem with the same seeds, passes. The sizes
(1024 seeds, etas 0.02 and 0.005, sigma = 0.5) were chosen from the expected size of each error
against its standard error; the z expected at these sizes is written next to each rejection.
The keys are fixed, never searched; a wrong engine reuses its correct engine's key, so that both
see the same noise draws.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import algorithms, stats
from noisydln.grid import GridResult

SIGMA = 0.5
ETAS = (0.02, 0.005)  # integer ratio 4: records at equal times t = eta * step (Richardson rows)
SMALL_ETA = slice(1, 2)  # the eta = 0.005 cells alone
NUM_SEEDS = 1024
TARGET = np.array([0.7, -0.6, 0.0, 0.0])  # two coordinates on the support, two thresholded
# unbalanced start with the target's signs; the thresholded coordinates start at beta = 0 exactly,
# where GD without noise leaves them (from elsewhere it reaches a zero target only like 1 / t)
INIT = np.array([[1.2, 1.2, 1.2, 1.2], [0.6, -0.5, 0.0, 0.0]])
# t = 1200 * 0.005 = 6 at the small step: past the t = 5 that `time_needed` asks for this problem
CONFIG = noisydln.SimConfig(
    num_steps=1200,
    record_every=10,
    eta=ETAS[0],
    sigma=SIGMA,
    init=INIT,
    quantities=("beta", "imbalance", "imbalance_step_residual"),
)
EXCESS = math.sqrt(1.1)  # the loud engine's noise std over the sigma it is told
INFLATION = 14.0  # standard errors this many times too wide hide the loud engine (one-step law)


def make_test_problem(dtype=jnp.float64) -> noisydln.Problem:
    """The orthogonal design (`Sigma = I`, so `z = TARGET`) every depth-2 run here uses."""
    return noisydln.make_problem(
        jax.random.key(31), 8, 4, design="orthogonal", beta_star=TARGET, dtype=dtype
    )


def cell(
    result: GridResult, sigma_index: int, *, sigma=None, etas=slice(None), records=slice(None)
) -> GridResult:
    """One sigma of a grid with some of its etas and records, labelled `sigma` when given.

    Labelling a run simulated at one sigma with another is how a run is judged "as if" it had
    the nominal sigma (the checks read sigma from the result).
    """
    index = (slice(sigma_index, sigma_index + 1), etas, slice(None), records)

    def take(values):
        return {name: value[index] for name, value in values.items()}

    kept = None
    if result.trajectories is not None:  # [S, E, I, seeds, R, ...]
        kept = {
            name: value[index[:3] + (slice(None), records)]
            for name, value in result.trajectories.items()
        }
    return result._replace(
        steps=result.steps[records],
        mean=take(result.mean),
        var=take(result.var),
        count=take(result.count),
        sigmas=np.array([result.sigmas[sigma_index] if sigma is None else sigma]),
        etas=result.etas[etas],
        diverged=result.diverged[index[:3]],
        trajectories=kept,
    )


def rows_of(report: stats.Report, *words: str) -> list[stats.Row]:
    """The rows whose quantity contains every one of `words`."""
    return [row for row in report.rows if all(word in row.quantity for word in words)]


def stochastic_sam_with_excess_variance(
    key, state, problem, hyper, *, noise="gaussian", momentum=0.0
):
    """`algorithms.stochastic_sam` whose perturbation has variance 1.1 sigma^2, not sigma^2."""
    xi = noisydln.noise.get_sampler(noise)(key, state.params.shape, state.params.dtype)
    direction = noisydln.grad(state.params + EXCESS * hyper.sigma * xi, problem)
    return algorithms.apply_direction(state, direction, hyper, momentum)


def stochastic_sam_with_shared_noise(key, state, problem, hyper, *, noise="gaussian", momentum=0.0):
    """`algorithms.stochastic_sam` drawing one `xi: [d]` and adding it to every layer."""
    xi = noisydln.noise.get_sampler(noise)(key, state.params.shape[1:], state.params.dtype)
    direction = noisydln.grad(state.params + hyper.sigma * xi[None, :], problem)
    return algorithms.apply_direction(state, direction, hyper, momentum)


def one_layer_sam_off_by_one(key, state, problem, hyper, *, noise="gaussian", momentum=0.0):
    """`algorithms.one_layer_sam` drawing its layer from `randint(0, depth - 1)`: never the last."""
    key_layer, key_noise = jax.random.split(key)
    depth = state.params.shape[0]
    layer = jax.random.randint(key_layer, (), 0, depth - 1)  # the bug: maxval is exclusive
    xi = noisydln.noise.get_sampler(noise)(key_noise, state.params.shape, state.params.dtype)
    chosen = (jnp.arange(depth) == layer).astype(xi.dtype)[:, None]
    direction = noisydln.grad(state.params + hyper.sigma * chosen * xi, problem)
    return algorithms.apply_direction(state, direction, hyper, momentum)


@pytest.fixture(scope="module")
def problem():
    return make_test_problem()


@pytest.fixture(scope="module")
def runs(problem):
    """The correct engine at sigma, and at 1.05 sigma judged as if at sigma (common seeds)."""
    result = noisydln.run_grid(
        jax.random.key(32), problem, CONFIG, num_seeds=NUM_SEEDS,
        sigmas=[SIGMA, 1.05 * SIGMA], etas=ETAS,
    )  # fmt: skip
    return {"correct": cell(result, 0), "sigma 5% high": cell(result, 1, sigma=SIGMA)}


@pytest.fixture(scope="module")
def loud(problem):
    """The engine with 10 % excess noise variance, same seeds as `runs`, trajectories kept."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(algorithms.RULES, "loud_sam", stochastic_sam_with_excess_variance)
        config = dataclasses.replace(CONFIG, algorithm="loud_sam")
        return noisydln.run_grid(
            jax.random.key(32), problem, config, num_seeds=NUM_SEEDS, sigmas=[SIGMA], etas=ETAS,
            keep_trajectories=True,
        )  # fmt: skip


@pytest.fixture(scope="module")
def float32_runs():
    """The same grid in float32, with a noiseless cell: `(problem, {name: result})`."""
    problem = make_test_problem(jnp.float32)
    result = noisydln.run_grid(
        jax.random.key(34), problem, CONFIG, num_seeds=NUM_SEEDS,
        sigmas=[0.0, SIGMA, 1.05 * SIGMA], etas=ETAS,
    )  # fmt: skip
    assert result.mean["beta"].dtype == jnp.float32
    return problem, {
        "sigma 0": cell(result, 0),
        "correct": cell(result, 1),
        "sigma 5% high": cell(result, 2, sigma=SIGMA),
    }


# ------------------------------------------------------------- 1. 10 % excess noise variance


def test_ten_percent_excess_variance_vs_trajectory_and_balancing(problem, runs, loud):
    for check in (stats.check_trajectory, stats.check_balancing):
        report = check(runs["correct"], problem, CONFIG)
        assert report.passed, report.table()
    trajectory = stats.check_trajectory(loud, problem, CONFIG)
    extrapolations = rows_of(trajectory, "eta -> 0 extrapolation")
    assert [row.quantity.split(":")[0] for row in extrapolations] == ["beta", "imbalance"]
    # z about 9 (beta) and 17 (imbalance) against a bound of 4.1
    assert all(row.verdict == "fail" for row in extrapolations), trajectory.table()
    balancing = stats.check_balancing(loud, problem, CONFIG)
    (rate,) = rows_of(balancing, "decay rate", f"eta={ETAS[1]:g}")
    # the rate is 4.4 sigma^2 D, not 4 sigma^2 D: z about 8.4 against 3.4 at eta = 0.005 (at
    # eta = 0.02 the O(eta) allowance, 0.11, is larger than the error, 0.1)
    assert rate.verdict == "fail" and rate.estimate > rate.prediction, balancing.table()


# ------------------------------------------------------------------------- 2. sigma 5 % high


def test_sigma_five_percent_high_vs_trajectory_and_limit(problem, runs):
    for name, verdict in (("correct", "pass"), ("sigma 5% high", "fail")):
        trajectory = stats.check_trajectory(runs[name], problem, CONFIG)
        extrapolations = rows_of(trajectory, "eta -> 0 extrapolation")
        assert len(extrapolations) == 2
        # wrong: z about 9 (beta) and 17 (imbalance) against 4.1
        assert all(row.verdict == verdict for row in extrapolations), trajectory.table()
        limit = stats.check_limit(runs[name], problem, CONFIG)
        (extrapolation,) = rows_of(limit, "eta -> 0 extrapolation of beta")
        # the limit moves by 0.1025 sigma^2 = 0.026: z about 8.6 against 3.3
        assert extrapolation.verdict == verdict, limit.table()
        assert limit.passed is (verdict == "pass"), limit.table()


# ------------------------------------------------------------- 3. noise shared across layers


def test_noise_shared_across_layers_vs_trajectory(problem, runs, monkeypatch):
    """Judged as `stochastic_sam`, the shared-noise engine fails the trajectory check.

    Its imbalance law is the paper's to first order (`E[w_1 g_1 - w_2 g_2] = 2 sigma^2 D Delta`
    for shared noise too), so the balancing rows cannot see it; the mean product can:
    `E[(w_1 + sigma xi)(w_2 + sigma xi)] = beta + sigma^2` moves every coordinate's drift.
    """
    monkeypatch.setitem(algorithms.RULES, "shared_noise_sam", stochastic_sam_with_shared_noise)
    config = dataclasses.replace(
        CONFIG, algorithm="shared_noise_sam", quantities=("beta", "imbalance")
    )
    shared = noisydln.run_grid(
        jax.random.key(32), problem, config, num_seeds=NUM_SEEDS, sigmas=[SIGMA], etas=ETAS
    )
    assert stats.check_trajectory(runs["correct"], problem, CONFIG).passed
    report = stats.check_trajectory(shared, problem, CONFIG)  # judged as stochastic_sam
    (beta,) = rows_of(report, "beta: eta -> 0 extrapolation")
    assert beta.verdict == "fail", report.table()  # z about 350 against 4.1


# ------------------------------------------------- 4. one_layer_sam never perturbing layer 2


def test_one_layer_sam_never_perturbing_the_last_layer_vs_balancing(problem, monkeypatch):
    monkeypatch.setitem(algorithms.RULES, "one_layer_sam_off_by_one", one_layer_sam_off_by_one)
    moving = INIT.copy()
    moving[1, 2:] = 0.3  # with w_2 = 0 and layer 2 never perturbed, nothing would move there
    config = noisydln.SimConfig(
        algorithm="one_layer_sam", num_steps=600, record_every=10, eta=ETAS[1], sigma=SIGMA,
        init=moving, quantities=("beta", "imbalance"),
    )  # fmt: skip
    key = jax.random.key(33)
    correct = noisydln.run_grid(key, problem, config, num_seeds=256)
    report = stats.check_balancing(correct, problem, config)
    assert report.passed, report.table()
    wrong_config = dataclasses.replace(config, algorithm="one_layer_sam_off_by_one")
    wrong = noisydln.run_grid(key, problem, wrong_config, num_seeds=256)
    report = stats.check_balancing(wrong, problem, config)  # judged as one_layer_sam
    (rate,) = rows_of(report, "decay rate")
    # perturbing w_1 alone penalises w_2^2 only: w_1^2 - w_2^2 grows instead of decaying at
    # 2 sigma^2 D = 0.5 (z about 9000 against 3.0)
    assert rate.verdict == "fail" and rate.estimate < 0.1 * rate.prediction, report.table()


# ------------------------------------------------------------------ 5. the standard errors


def test_standard_errors_vs_numpy_std_of_kept_trajectories(problem, loud):
    se = stats.standard_error(loud)
    for name, kept in loud.trajectories.items():
        kept = np.asarray(kept)  # [S, E, I, seeds, R, ...]
        kept = kept - kept[:, :, :, :1]  # shifted by seed 0 (the variance is shift-invariant),
        # so that a record where every seed agrees (the start) has a std of exactly 0
        expected = kept.std(axis=3, ddof=1) / np.sqrt(kept.shape[3])
        np.testing.assert_allclose(se[name], expected, rtol=1e-12, err_msg=name)
    report = stats.check_balancing(loud, problem, CONFIG)
    residual = np.asarray(loud.trajectories["imbalance_step_residual"])[0, :, 0]  # [E, seeds, R, d]
    for j, eta in enumerate(loud.etas):
        (row,) = rows_of(report, "rho Delta", f"eta={eta:g}")
        i = int(re.search(r"coord (\d+)", row.quantity).group(1))
        per_record = residual[j, :, :, i]  # [seeds, R]
        record_se = per_record.std(axis=0, ddof=1) / np.sqrt(per_record.shape[0])
        pooled_se = np.sqrt(np.sum(record_se**2)) / per_record.shape[1]
        assert row.standard_error == pytest.approx(pooled_se, rel=1e-12)
        assert row.estimate == pytest.approx(per_record.mean(), rel=1e-10)


def test_one_step_law_power_comes_from_its_standard_error(problem, loud):
    """With its own standard error the one-step law rejects the loud engine (z about 12 at
    eta = 0.005, 7 at 0.02, bound 3.4); with every standard error 14 times too wide (z about
    0.9 and 0.5) it does not: the power comes from the right standard error."""
    honest = rows_of(stats.check_balancing(loud, problem, CONFIG), "rho Delta")
    wide = loud._replace(var={name: INFLATION**2 * var for name, var in loud.var.items()})
    inflated = rows_of(stats.check_balancing(wide, problem, CONFIG), "rho Delta")
    assert len(honest) == len(inflated) == len(ETAS)
    assert all(row.verdict == "fail" for row in honest), honest
    assert all(row.verdict == "pass" for row in inflated), inflated
    for before, after in zip(honest, inflated, strict=True):
        assert after.estimate == before.estimate
        assert after.standard_error == pytest.approx(INFLATION * before.standard_error, rel=1e-12)


# -------------------------------------------------------------------------------- 6. verdicts


def test_run_too_short_for_its_limit_is_not_converged_and_long_enough_passes(problem, runs):
    short_steps = 200  # t = 1 at eta = 0.005, of the t = 5 that the slowest rate (1) needs
    short_config = dataclasses.replace(CONFIG, num_steps=short_steps)
    records = slice(0, short_steps // CONFIG.record_every + 1)
    short = cell(runs["correct"], 0, etas=SMALL_ETA, records=records)
    report = stats.check_limit(short, problem, short_config)
    verdicts = [row.verdict for row in report.rows]
    assert "fail" not in verdicts and "not converged" in verdicts, report.table()
    assert report.verdict == "not converged" and not report.passed
    note = report.rows[verdicts.index("not converged")].note
    needed = int(re.search(r"\((\d+) steps\)", note).group(1))
    assert short_steps < needed <= CONFIG.num_steps, note
    full = stats.check_limit(cell(runs["correct"], 0, etas=SMALL_ETA), problem, CONFIG)
    assert full.verdict == "pass" and full.passed, full.table()


def test_sigma_zero_in_float32_is_compared_deterministically(float32_runs):
    problem, runs = float32_runs
    noiseless = runs["sigma 0"]
    reports = [
        stats.check_trajectory(noiseless, problem, CONFIG),
        stats.check_balancing(noiseless, problem, CONFIG),
    ]
    reports += [  # one step size at a time; both together below
        stats.check_limit(cell(noiseless, 0, etas=slice(j, j + 1)), problem, CONFIG)
        for j in range(len(ETAS))
    ]
    for report in reports:
        assert report.passed, report.table()
        assert not any(np.isinf(row.z) for row in report.rows), report.table()
    deterministic = [
        row for report in reports for row in report.rows if "deterministic" in row.note
    ]
    # trajectory: beta and imbalance per eta; limit: one row per eta
    assert len(deterministic) == 3 * len(ETAS), [row.quantity for row in deterministic]
    assert all(row.standard_error == 0 and row.allowance > 0 for row in deterministic)


def test_sigma_zero_in_float32_with_two_etas_vs_check_limit(float32_runs):
    problem, runs = float32_runs
    report = stats.check_limit(runs["sigma 0"], problem, CONFIG)
    assert report.passed, report.table()


def test_depth3_basin_fraction_is_measured_with_the_standard_error_of_a_proportion():
    """Coordinate 0 starts with the sign opposite its target: GD on `L_R` takes it to the
    origin's basin, but at eta = 0.03 the noise carries part of the seeds across."""
    problem = noisydln.make_problem(
        jax.random.key(35), 8, 2, design="orthogonal", beta_star=np.array([1.0, 0.5])
    )
    config = noisydln.SimConfig(
        depth=3, num_steps=300, record_every=50, eta=0.03, sigma=0.4,
        init=[[-0.5, 0.8], [0.5, 0.8], [0.5, 0.8]], quantities=("beta", "basin"),
    )  # fmt: skip
    result = noisydln.run_grid(jax.random.key(36), problem, config, num_seeds=4096)
    report = stats.check_limit(result, problem, config, tail=0.01)  # the last record alone
    (row,) = rows_of(report, "fraction of seeds in the basin of beta_0")
    assert row.verdict == "measured" and row.prediction == 0.0, report.table()  # the rule: none
    p, count = row.estimate, int(result.count["basin"][0, 0, 0, -1, 0])
    assert count == 4096 and 0 < p < 1, report.table()
    # sqrt(var / N) with the unbiased variance of a 0/1 sample, N p (1 - p) / (N - 1) ...
    assert row.standard_error == pytest.approx(math.sqrt(p * (1 - p) / (count - 1)), rel=1e-9)
    # ... which is sqrt(p (1 - p) / N) up to sqrt(N / (N - 1)): under 1e-6 at N = 4096
    assert abs(row.standard_error - math.sqrt(p * (1 - p) / count)) < 1e-6


def test_report_frame_and_combined_verdict(problem, runs):
    report = stats.check_limit(runs["correct"], problem, CONFIG)
    frame = report.to_frame()
    assert "verdict" in frame.columns
    assert list(frame["verdict"]) == [row.verdict for row in report.rows]
    assert set(frame["verdict"]) <= set(stats.VERDICTS)
    assert stats.combined_verdict([0.5, np.inf])[2] is False


# ------------------------------------------------------------------------------- 7. float32


def test_float32_trajectory_and_balancing_vs_sigma_five_percent_high(float32_runs):
    problem, runs = float32_runs
    for check in (stats.check_trajectory, stats.check_balancing):
        report = check(runs["correct"], problem, CONFIG)
        assert report.passed, report.table()
    trajectory = stats.check_trajectory(runs["sigma 5% high"], problem, CONFIG)
    extrapolations = rows_of(trajectory, "eta -> 0 extrapolation")
    # z about 9 (beta) and 18 (imbalance) against 4.1
    assert len(extrapolations) == 2 and all(row.verdict == "fail" for row in extrapolations)
    balancing = stats.check_balancing(runs["sigma 5% high"], problem, CONFIG)
    (rate,) = rows_of(balancing, "decay rate", f"eta={ETAS[1]:g}")
    assert rate.verdict == "fail", balancing.table()  # z about 8.4 against 3.4
