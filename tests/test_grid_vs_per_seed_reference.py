"""`run_grid` / `simulate` against an independent per-seed NumPy implementation of stochastic SAM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import noise

Z_BOUND = 5.0


def reference_run(problem, init, sigma, eta, num_steps, record_every, draw_noise):
    """Stochastic SAM written out in float64 NumPy for one trajectory; `draw_noise(t) -> [L, d]`."""
    gram, xty, diag = (
        np.asarray(a, np.float64) for a in (problem.gram, problem.xty, problem.gram_diag)
    )
    X, y = np.asarray(problem.X, np.float64), np.asarray(problem.y, np.float64)
    w = np.array(init, np.float64)
    records = []

    def observe(w):
        beta = np.prod(w, axis=0)
        loss = np.mean((y - X @ beta) ** 2)
        sharpness = diag @ (np.prod(w**2 + sigma**2, axis=0) - np.prod(w**2, axis=0))
        others = np.array([np.prod(np.delete(w**2, l, axis=0), axis=0) for l in range(len(w))])
        return {
            "beta": beta,
            "imbalance": w[1:] ** 2 - w[:1] ** 2,
            "loss": loss,
            "sharpness": sharpness,
            "expected_loss": loss + sharpness,
            "hessian_trace": 2 * diag @ others.sum(axis=0),
        }

    records.append(observe(w))
    for t in range(num_steps):
        p = w + sigma * draw_noise(t)
        others = np.array([np.prod(np.delete(p, l, axis=0), axis=0) for l in range(len(p))])
        residual = 2 * (gram @ np.prod(p, axis=0) - xty)
        w = w - eta * residual[None, :] * others
        if (t + 1) % record_every == 0:
            records.append(observe(w))
    return {k: np.array([r[k] for r in records]) for k in records[0]}


@pytest.fixture
def problem(key):
    return noisydln.make_problem(key, 30, 6, k=2, noise_std=0.1)


@pytest.mark.parametrize("depth", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_kept_trajectories_vs_reference_with_the_same_noise(key, problem, depth):
    init = 0.6 * np.ones((depth, 6))
    init[0, ::2] *= -1
    config = noisydln.SimConfig(depth=depth, num_steps=60, record_every=20, eta=0.05, init=init)
    result = noisydln.run_grid(
        key,
        problem,
        config,
        num_seeds=3,
        sigmas=[0.0, 0.3],
        etas=[0.05, 0.02],
        keep_trajectories=True,
    )
    for (i, sigma), (j, eta), seed in [
        ((1, 0.3), (0, 0.05), 2),
        ((0, 0.0), (1, 0.02), 0),
        ((1, 0.3), (1, 0.02), 1),
    ]:
        seed_key = jax.random.fold_in(key, seed)
        expected = reference_run(
            problem, init, sigma, eta, 60, 20,
            lambda t, k=seed_key: np.asarray(noise.gaussian(jax.random.fold_in(k, t), (depth, 6), jnp.float64)),
        )  # fmt: skip
        for name, value in expected.items():
            np.testing.assert_allclose(
                result.trajectories[name][i, j, 0, seed],
                value,
                rtol=1e-11,
                atol=1e-13,
                err_msg=name,
            )
    assert result.trajectories["beta"].shape == (2, 2, 1, 3, 4, 6)


def test_simulate_is_seed_s_of_run_grid(key, problem):
    # the grid of test_moments_vs_numpy_on_kept_trajectories (one compiled program for both)
    config = noisydln.SimConfig(num_steps=30, record_every=10, eta=0.05, sigma=0.3, init=0.5)
    result = noisydln.run_grid(
        key, problem, config, num_seeds=37, sigmas=[0.3, 0.1], keep_trajectories=True
    )
    single = noisydln.simulate(jax.random.fold_in(key, 3), problem, config)
    np.testing.assert_array_equal(single.steps, result.steps)
    for name, value in single.records.items():
        np.testing.assert_allclose(
            result.trajectories[name][0, 0, 0, 3], value, rtol=1e-12, atol=1e-14
        )


def test_grid_statistics_vs_independent_numpy_seeds(key, problem):
    """Means over 400 seeds against 400 NumPy-noise seeds: |z| < 5 everywhere; 1.3 sigma rejected."""
    init = np.full((2, 6), 0.5)
    config = noisydln.SimConfig(num_steps=40, record_every=10, eta=0.05, init=init)
    sigma, num_seeds = 0.4, 400
    result = noisydln.run_grid(key, problem, config, num_seeds=num_seeds, sigmas=[sigma])

    def numpy_statistics(sigma_used):
        runs = []
        for seed in range(num_seeds):
            rng = np.random.default_rng(seed)
            draw = lambda t, rng=rng: rng.standard_normal((2, 6))  # noqa: E731
            runs.append(reference_run(problem, init, sigma_used, 0.05, 40, 10, draw))
        stacked = {k: np.stack([r[k] for r in runs]) for k in runs[0]}
        return {k: (v.mean(0), v.var(0, ddof=1)) for k, v in stacked.items()}

    def max_abs_z(reference, names):
        worst = 0.0
        for name in names:
            mean, var = reference[name]
            grid_mean, grid_var = (
                np.asarray(result.mean[name][0, 0, 0]),
                np.asarray(result.var[name][0, 0, 0]),
            )
            se = np.sqrt((grid_var + var) / num_seeds)
            random = se > 1e-10  # record 0 is deterministic: it must agree up to rounding
            if not np.allclose(grid_mean[~random], mean[~random], rtol=1e-12, atol=1e-14):
                return np.inf
            z = (grid_mean - mean)[random] / se[random]
            worst = max(worst, float(np.max(np.abs(z))))
        return worst

    assert np.all(np.asarray(result.count["loss"]) == num_seeds)
    assert max_abs_z(numpy_statistics(sigma), result.mean) < Z_BOUND
    # the dynamics alone (not the sigma inside the sharpness formula) tell the wrong sigma apart
    assert max_abs_z(numpy_statistics(1.3 * sigma), ("beta", "imbalance", "loss")) > Z_BOUND


def test_moments_vs_numpy_on_kept_trajectories(key, problem):
    config = noisydln.SimConfig(num_steps=30, record_every=10, eta=0.05, sigma=0.3, init=0.5)
    result = noisydln.run_grid(
        key, problem, config, num_seeds=37, sigmas=[0.1, 0.3], keep_trajectories=True
    )
    for name in result.mean:
        kept = np.asarray(result.trajectories[name])  # [S, E, I, seeds, R, ...]
        np.testing.assert_allclose(result.mean[name], kept.mean(axis=3), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            result.var[name], kept.var(axis=3, ddof=1), rtol=1e-9, atol=1e-15
        )
        assert np.all(np.asarray(result.count[name]) == 37)
