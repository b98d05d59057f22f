"""The statistics layer: estimators against NumPy, and every check passing on a correct
simulation and failing on a deliberately wrong one (tolerances fixed in the checks)."""

import jax
import numpy as np
import pytest

import noisydln
from noisydln import algorithms, grid, stats
from noisydln.quantities import QUANTITIES

CHECKED = QUANTITIES + ("trace_gap", "sharpness_gap", "imbalance_step_residual")


@pytest.fixture(scope="module")
def balancing_setup():
    key = jax.random.key(11)
    problem = noisydln.make_problem(key, 40, 4, k=2, noise_std=0.1)
    init = np.stack([np.ones(4), np.full(4, 0.3)])
    config = noisydln.SimConfig(
        num_steps=600, record_every=3, eta=0.01, init=init, quantities=CHECKED
    )
    result = noisydln.run_grid(key, problem, config, num_seeds=1024, sigmas=[0.0, 0.4])
    return problem, config, result


def test_estimators_vs_numpy(key):
    problem = noisydln.make_problem(key, 30, 5, k=2)
    config = noisydln.SimConfig(num_steps=20, record_every=10, eta=0.05, sigma=0.3, init=0.5)
    result = noisydln.run_grid(key, problem, config, num_seeds=50, keep_trajectories=True)
    kept = np.asarray(result.trajectories["beta"])
    se = stats.standard_error(result)["beta"]
    np.testing.assert_allclose(se, kept.std(axis=3, ddof=1) / np.sqrt(50), rtol=1e-9)
    low, high = stats.confidence_interval(result, 0.95)["beta"]
    np.testing.assert_allclose(high - low, 2 * 1.959963984540054 * se, rtol=1e-12)
    assert stats.z_bound(1, 0.05) == pytest.approx(1.959963984540054)
    assert stats.z_bound(100, 0.01) == pytest.approx(3.890591886, rel=1e-8)  # 1 - 0.01 / 200
    assert stats.combined_verdict([0.5, -2.7, np.nan], 0.01)[2] is True  # bound 2.807 for two tests
    assert stats.combined_verdict([0.5, -2.9], 0.01)[2] is False
    assert stats.combined_verdict([0.5, np.inf], 0.01)[2] is False  # a deterministic mismatch
    assert stats.combined_verdict([0.5, -np.inf, np.nan], 0.01)[2] is False
    np.testing.assert_array_equal(
        stats.z_scores([1.0, 1.0, 2.0], [0.5, 0.0, 0.0], 1.0), [0.0, 0.0, np.inf]
    )


def test_check_balancing_passes_on_stochastic_sam(balancing_setup):
    problem, config, result = balancing_setup
    report = stats.check_balancing(result, problem, config)
    assert report.passed, report.table()
    names = " ".join(row.quantity for row in report.rows)
    for part in ("rho Delta", "decay rate", "sigma=0 conserves"):
        assert part in names


def test_check_balancing_rejects_a_wrong_rate(balancing_setup):
    problem, config, result = balancing_setup
    report = stats.check_balancing(result, problem, config, sigma_scale=1.2)
    rate_rows = [row for row in report.rows if "decay rate" in row.quantity]
    assert rate_rows and not any(row.passed for row in rate_rows), report.table()


@pytest.mark.slow  # a gross error; tests/test_checks_vs_realistic_errors.py rejects 10 % ones
def test_check_balancing_rejects_an_engine_with_doubled_noise_variance(
    balancing_setup, monkeypatch
):
    """The one-step law holds for the paper's noise: noise of twice the variance breaks it."""
    problem, config, _ = balancing_setup

    def doubled(key, state, problem, hyper, **options):
        louder = hyper._replace(sigma=np.sqrt(2.0) * hyper.sigma)
        xi = noisydln.noise.gaussian(key, state.params.shape, state.params.dtype)
        direction = noisydln.grad(state.params + louder.sigma * xi, problem)
        return algorithms.apply_direction(state, direction, hyper, 0.0)

    monkeypatch.setitem(algorithms.RULES, "stochastic_sam", doubled)
    grid._run_chunk.clear_cache()
    try:
        wrong = noisydln.run_grid(
            jax.random.key(12), problem, config, num_seeds=1024, sigmas=[0.0, 0.4]
        )
    finally:
        monkeypatch.undo()
        grid._run_chunk.clear_cache()
    report = stats.check_balancing(wrong, problem, config)
    one_step = [row for row in report.rows if "rho Delta" in row.quantity]
    assert one_step[0].passed and not one_step[1].passed, report.table()  # sigma = 0 is unaffected


def test_check_sharpness_passes_and_rejects(balancing_setup):
    problem, config, result = balancing_setup
    assert stats.check_sharpness(result, problem, config).passed
    # plain gradient descent (no noise) labelled as if it had sigma = 0.4: the gap does not shrink
    noiseless = noisydln.SimConfig(
        **{**config.__dict__, "algorithm": "gd", "quantities": ("trace_gap", "sharpness_gap")}
    )
    wrong = noisydln.run_grid(jax.random.key(13), problem, noiseless, num_seeds=64, sigmas=[0.4])
    report = stats.check_sharpness(wrong, problem, noiseless)
    assert not report.passed, report.table()


@pytest.fixture(scope="module")
def limit_setup():
    key = jax.random.key(21)
    problem = noisydln.make_problem(
        key, 12, 6, design="orthogonal", beta_star=np.array([1.0, -0.6, 0.3, 0.05, 0.0, 0.0])
    )
    config = noisydln.SimConfig(
        num_steps=16000,  # t = 40 at eta = 0.0025: past the 31 that beta_3 (z = 0.05) needs
        record_every=200,
        init=np.stack([0.6 * np.ones(6), 0.3 * np.ones(6)]),
        quantities=("beta",),
    )
    return problem, config, key


@pytest.mark.slow  # 16000 steps; the limit check passes and rejects in tests/test_checks_vs_realistic_errors.py
def test_check_limit_passes_with_the_bias_shrinking(limit_setup):
    problem, config, key = limit_setup
    result = noisydln.run_grid(
        key, problem, config, num_seeds=256, sigmas=[0.3], etas=[0.01, 0.0025]
    )
    report = stats.check_limit(result, problem, config)
    assert report.passed, report.table()
    assert any("extrapolation" in row.quantity for row in report.rows)


@pytest.mark.slow  # a gross error; tests/test_checks_vs_realistic_errors.py rejects 10 % ones
def test_check_limit_rejects_an_engine_with_doubled_noise_variance(limit_setup):
    problem, config, key = limit_setup
    louder = noisydln.run_grid(
        key, problem, config, num_seeds=256, sigmas=[np.sqrt(2) * 0.3], etas=[0.01]
    )
    mislabelled = louder._replace(sigmas=np.array([0.3]))  # predicted with the nominal sigma
    report = stats.check_limit(mislabelled, problem, config)
    assert not report.passed, report.table()


def test_checks_say_what_is_missing(balancing_setup, limit_setup):
    problem, config, result = balancing_setup
    bare = result._replace(
        mean={"beta": result.mean["beta"]},
        var={"beta": result.var["beta"]},
        count={"beta": result.count["beta"]},
    )
    with pytest.raises(
        ValueError,
        match=r"does not hold \['imbalance'\]: run it with SimConfig\(quantities=",
    ):
        stats.check_balancing(bare, problem, config)
    with pytest.raises(ValueError, match=r"does not hold \['trace_gap', 'sharpness_gap'\]"):
        stats.check_sharpness(bare, problem, config)
    other = noisydln.make_problem(jax.random.key(0), 40, 5, k=2)
    with pytest.raises(ValueError, match="the result has d = 4 but the problem has d = 5"):
        stats.check_limit(result, other, config)
    deeper = noisydln.SimConfig(
        **{**config.__dict__, "depth": 3, "init": 0.5, "quantities": ("beta", "imbalance")}
    )
    with pytest.raises(
        ValueError, match="the result comes from depth 2 but the config has depth 3"
    ):
        stats.check_limit(result, problem, deeper)
    longer = noisydln.SimConfig(**{**config.__dict__, "num_steps": 900})
    with pytest.raises(ValueError, match="record steps are not those of the config"):
        stats.check_sharpness(result, problem, longer)
    with pytest.raises(ValueError, match="imbalance_step_residual uses the depth-2 factor"):
        noisydln.SimConfig(depth=3, quantities=("imbalance_step_residual",))
    gaussian = noisydln.make_problem(jax.random.key(0), 40, 4, k=2)
    with pytest.raises(ValueError, match="known in closed form only for a diagonal design"):
        stats.predicted_limit(gaussian, 0.3, 3, np.ones((3, 4)))


@pytest.mark.slow
def test_validate_reports_every_claim_reproduced():
    report = noisydln.validate(quick=True)
    assert report.passed, report.table()
    claims = {row.claim for row in report.rows}
    assert claims == {"trajectory", "balancing", "sharpness", "limit"}
    assert "verdict" in report.table()


@pytest.mark.parametrize("depth,sigma", [(3, 0.5), pytest.param(4, 0.6, marks=pytest.mark.slow)])
def test_check_limit_judges_the_basins_of_gd_on_the_expected_loss(depth, sigma):
    """A start below the saddle goes to 0; predicting with a start above it is rejected."""
    target = np.array([2.0, 1.5, -1.8, 0.5, 0.0, 0.3])
    problem = noisydln.make_problem(jax.random.key(5), 12, 6, design="orthogonal", beta_star=target)
    a_minus, _ = noisydln.theory.stationary_roots(
        noisydln.theory.diagonal_target(problem), sigma, depth
    )
    start = np.ones((depth, 6))
    start[0] *= np.where(target < 0, -1.0, 1.0)
    below = start.copy()
    below[:, 1] *= 0.5 * float(a_minus[1])
    config = noisydln.SimConfig(
        algorithm="expected_gd",
        depth=depth,
        num_steps=20000,
        record_every=1000,
        eta=0.05,
        init=below,
        quantities=("beta",),
    )
    result = noisydln.run_grid(jax.random.key(6), problem, config, num_seeds=1, sigmas=[sigma])
    assert float(np.abs(result.mean["beta"][0, 0, 0, -1, 1])) < 1e-10  # coordinate 1 went to 0
    assert stats.check_limit(result, problem, config, tail=0.01).passed
    above = noisydln.SimConfig(**{**config.__dict__, "init": start})
    assert not stats.check_limit(result, problem, above, tail=0.01).passed
