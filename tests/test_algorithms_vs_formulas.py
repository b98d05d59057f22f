"""One step of every training rule against its formula written out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import algorithms, noise, theory
from noisydln.algorithms import Hyper, init_state

SIGMA, ETA = 0.3, 0.05


@pytest.fixture
def setup(key):
    key_problem, key_params = jax.random.split(key)
    problem = noisydln.make_problem(key_problem, 20, 5, k=2, noise_std=0.2)
    params = jax.random.normal(key_params, (3, 5))
    return problem, params, Hyper(sigma=jnp.asarray(SIGMA), eta=jnp.asarray(ETA))


def step(name, key, params, problem, hyper, **options):
    return algorithms.get_rule(name, **options)(key, init_state(params), problem, hyper).params


@pytest.mark.parametrize("law", ["gaussian", "rademacher", "uniform"])
def test_stochastic_sam(key, setup, law):
    problem, params, hyper = setup
    xi = noise.get_sampler(law)(key, params.shape, params.dtype)
    expected = params - ETA * noisydln.grad(params + SIGMA * xi, problem)
    np.testing.assert_allclose(
        step("stochastic_sam", key, params, problem, hyper, noise=law), expected, rtol=1e-13
    )


def test_one_layer_sam_perturbs_exactly_one_layer(key, setup):
    problem, params, hyper = setup
    key_layer, key_noise = jax.random.split(key)
    layer = int(jax.random.randint(key_layer, (), 0, 3))
    xi = noise.gaussian(key_noise, params.shape, params.dtype)
    perturbed = params.at[layer].add(SIGMA * xi[layer])
    expected = params - ETA * noisydln.grad(perturbed, problem)
    np.testing.assert_allclose(
        step("one_layer_sam", key, params, problem, hyper), expected, rtol=1e-13
    )
    chosen = [
        int(jax.random.randint(jax.random.split(jax.random.key(s))[0], (), 0, 3)) for s in range(60)
    ]
    assert set(chosen) == {0, 1, 2}


def test_gd_and_expected_gd(key, setup):
    problem, params, hyper = setup
    np.testing.assert_allclose(
        step("gd", key, params, problem, hyper),
        params - ETA * noisydln.grad(params, problem),
        rtol=1e-14,
    )
    expected = params - ETA * jax.grad(theory.expected_loss)(params, problem, SIGMA)
    np.testing.assert_allclose(
        step("expected_gd", key, params, problem, hyper), expected, rtol=1e-12
    )


def test_sam_ascends_along_the_normalised_gradient(key, setup):
    problem, params, hyper = setup
    g = noisydln.grad(params, problem)
    ascent = params + SIGMA * g / jnp.linalg.norm(g)
    np.testing.assert_allclose(
        step("sam", key, params, problem, hyper),
        params - ETA * noisydln.grad(ascent, problem),
        rtol=1e-13,
    )


def test_random_sam_moves_by_exactly_rho(key, setup):
    problem, params, hyper = setup
    u = noise.gaussian(key, params.shape, params.dtype)
    perturbed = params + SIGMA * u / jnp.linalg.norm(u)
    np.testing.assert_allclose(jnp.linalg.norm(perturbed - params), SIGMA, rtol=1e-14)
    np.testing.assert_allclose(
        step("random_sam", key, params, problem, hyper),
        params - ETA * noisydln.grad(perturbed, problem),
        rtol=1e-13,
    )


def test_label_noise_gd_is_gd_on_noisy_labels(key, setup):
    problem, params, hyper = setup
    eps = noise.gaussian(key, (problem.n,), params.dtype)
    noisy = noisydln.problem_from_data(problem.X, problem.y + SIGMA * eps)
    np.testing.assert_allclose(
        step("label_noise_gd", key, params, problem, hyper),
        params - ETA * noisydln.grad(params, noisy),
        rtol=1e-12,
    )


def test_minibatch_sgd(key, setup):
    problem, params, hyper = setup
    rows = jax.random.choice(key, problem.n, (8,), replace=False)
    batch = noisydln.problem_from_data(problem.X[rows], problem.y[rows])
    np.testing.assert_allclose(
        step("minibatch_sgd", key, params, problem, hyper, batch_size=8),
        params - ETA * noisydln.grad(params, batch),
        rtol=1e-12,
    )
    full = step(
        "minibatch_sgd", key, params, problem, hyper, batch_size=problem.n
    )  # the whole data
    np.testing.assert_allclose(full, step("gd", key, params, problem, hyper), rtol=1e-12)


def test_momentum_is_heavy_ball(key, setup):
    problem, params, hyper = setup
    rule = algorithms.get_rule("gd", momentum=0.9)
    state = rule(key, algorithms.init_state(params, 0.9), problem, hyper)
    state = rule(key, state, problem, hyper)
    g0 = noisydln.grad(params, problem)
    w1 = params - ETA * g0
    velocity = 0.9 * g0 + noisydln.grad(w1, problem)
    np.testing.assert_allclose(state.params, w1 - ETA * velocity, rtol=1e-13)


def test_expected_gd_trajectory_vs_imbalance_after_gd(key, setup):
    """The deterministic theory trajectory follows docs/theory.md's exact GD recursion step by step."""
    problem, params, _ = setup
    config = noisydln.SimConfig(
        algorithm="expected_gd",
        depth=3,
        num_steps=30,
        record_every=1,
        eta=ETA,
        sigma=SIGMA,
        init=np.asarray(params),
    )
    trajectory = noisydln.simulate(key, problem, config)
    imbalance = trajectory.records["imbalance"]  # [R, depth - 1, d]: w_l^2 - w_1^2
    state = params
    for t in range(30):
        predicted = theory.imbalance_after_gd(state, problem, SIGMA, ETA)[1:, 0]  # l > 1 against 1
        np.testing.assert_allclose(imbalance[t + 1], predicted, rtol=1e-10, atol=1e-13)
        state = state - ETA * theory.expected_grad(state, problem, SIGMA)


def test_log_spaced_records(key, setup):
    problem, _, _ = setup
    config = noisydln.SimConfig(num_steps=1000, log_records=8, eta=ETA, sigma=SIGMA, init=0.5)
    steps = config.record_steps()
    assert steps[0] == 0 and steps[-1] == 1000 and np.all(np.diff(steps) > 0)
    assert np.allclose(np.diff(np.log(steps[1:])), np.log(1000) / 7, atol=0.2)
    dense = noisydln.SimConfig(num_steps=1000, record_every=1, eta=ETA, sigma=SIGMA, init=0.5)
    sparse_run = noisydln.simulate(key, problem, config)
    dense_run = noisydln.simulate(key, problem, dense)
    np.testing.assert_allclose(
        sparse_run.records["beta"], dense_run.records["beta"][steps], rtol=1e-10
    )


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("adam", {}, "algorithm must be one of"),
        ("gd", {"noise": "gaussian"}, "takes the options"),
        ("stochastic_sam", {"noise": "cauchy"}, "noise must be one of"),
        ("minibatch_sgd", {"batch_size": 0}, "batch_size must be a positive integer"),
        ("gd", {"momentum": 1.5}, "momentum must be in"),
    ],
)
def test_bad_rule_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        algorithms.get_rule(name, **options)
