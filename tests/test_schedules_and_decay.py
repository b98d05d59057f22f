"""Weight decay and step-size schedules against their formulas, written out by hand in NumPy.

Weight decay adds `lambda W` (the gradient of `(lambda/2) ||W||^2`) to the direction before
momentum: one plain step is `W - eta (g + lambda W)`. A schedule multiplies the peak step `eta`
(the grid's traced value) by `f(t)`, step t counted from 0: cosine
`f(t) = alpha + (1 - alpha) (1 + cos(pi t / T)) / 2` over `T = num_steps`, step decay
`f(t) = factor^#{b in boundaries: t >= b}`. Tolerances: float64 1e-12 relative (1e-14 for the
step sizes themselves), float32 1e-6 for step sizes; each formula is also shown to reject a
plausible wrong one by more than 1e-3.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import noisydln
from noisydln import algorithms, grid, noise
from noisydln.algorithms import Hyper
from noisydln.experiment import Experiment, SpecError
from noisydln.simulate import _simulate_jit

SIGMA, ETA, LAMBDA = 0.3, 0.05, 0.1


@pytest.fixture
def setup(key):
    key_problem, key_params, key_run = jax.random.split(key, 3)
    problem = noisydln.make_problem(key_problem, 12, 4, k=2, noise_std=0.2)
    params = 0.8 * jax.random.normal(key_params, (3, 4))
    return problem, params, Hyper(sigma=jnp.asarray(SIGMA), eta=jnp.asarray(ETA)), key_run


def np_grad(w, problem):
    """The gradient of `(1/n) ||y - X beta||^2`, written out, `[L, d]`."""
    X, y = np.asarray(problem.X, np.float64), np.asarray(problem.y, np.float64)
    r = 2 * X.T @ (y - X @ np.prod(w, axis=0)) / len(y)
    others = np.array([np.prod(np.delete(w, l, axis=0), axis=0) for l in range(len(w))])
    return -r[None, :] * others


def cosine(t, num_steps, alpha):
    return alpha + (1 - alpha) * 0.5 * (1 + np.cos(np.pi * t / num_steps))


def step_decay(t, boundaries, factor):
    return factor ** np.sum(np.asarray(t)[:, None] >= np.asarray(boundaries)[None, :], axis=1)


def relative_error(actual, expected):
    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


# ---------------------------------------------------------------- weight decay


@pytest.mark.parametrize("name", ["gd", "stochastic_sam", "unnormalized_sam"])
def test_weight_decay_is_the_gradient_of_half_lambda_w_squared(key, setup, name):
    """One step is `W - eta (g + lambda W)`, with `g` the rule's own direction; the decay acts on
    the unperturbed weights (not on SAM's perturbed point), with the factor lambda (not 2 lambda)."""
    problem, params, hyper, key_run = setup
    w = np.asarray(params)
    xi = np.asarray(noise.gaussian(key_run, params.shape, params.dtype))
    at = {
        "gd": w,
        "stochastic_sam": w + SIGMA * xi,
        "unnormalized_sam": w + SIGMA * np_grad(w, problem),
    }
    g = np_grad(at[name], problem)
    rule = algorithms.get_rule(name, weight_decay=LAMBDA)
    state = rule(key_run, algorithms.init_state(params, weight_decay=LAMBDA), problem, hyper)
    assert relative_error(state.params, w - ETA * (g + LAMBDA * w)) < 1e-12
    assert relative_error(state.params, w - ETA * (g + 2 * LAMBDA * w)) > 1e-3
    if name == "stochastic_sam":
        assert relative_error(state.params, w - ETA * (g + LAMBDA * at[name])) > 1e-3


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
def test_weight_decay_with_momentum_goes_into_the_trace(key, setup, dtype, rtol):
    """`v <- momentum v + g + lambda W`, `W <- W - eta v` (optax: decay, then trace)."""
    problem, params, hyper, key_run = setup
    problem = noisydln.problem_from_data(problem.X.astype(dtype), problem.y.astype(dtype))
    params, hyper = params.astype(dtype), jax.tree.map(lambda x: x.astype(dtype), hyper)
    rule = algorithms.get_rule("gd", momentum=0.9, weight_decay=LAMBDA)
    state = algorithms.init_state(params, 0.9, weight_decay=LAMBDA)
    w, v = np.asarray(params, np.float64), np.zeros(params.shape)
    decoupled, trace = w, np.zeros(params.shape)  # the plausible slip: decay outside the trace
    for _ in range(3):
        state = rule(key_run, state, problem, hyper)
        v = 0.9 * v + np_grad(w, problem) + LAMBDA * w
        w = w - ETA * v
        trace = 0.9 * trace + np_grad(decoupled, problem)
        decoupled = decoupled - ETA * (trace + LAMBDA * decoupled)
    assert state.params.dtype == dtype
    assert relative_error(state.params, w) < rtol
    assert relative_error(state.params, decoupled) > 1e-3


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-14), (jnp.float32, 1e-6)])
def test_step_sizes_vs_formulas(dtype, rtol):
    t = np.arange(40)
    cases = [
        ({}, np.ones(40)),
        ({"schedule": "cosine"}, cosine(t, 40, 0.0)),
        ({"schedule": "cosine", "schedule_alpha": 0.3}, cosine(t, 40, 0.3)),
        ({"schedule": "step", "schedule_boundaries": (10, 25)}, step_decay(t, (10, 25), 0.1)),
        (
            {"schedule": "step", "schedule_boundaries": [1, 39, 40], "schedule_factor": 0.5},
            step_decay(t, (1, 39, 40), 0.5),
        ),
    ]
    for options, factor in cases:
        config = noisydln.SimConfig(num_steps=40, record_every=10, eta=ETA, **options)
        sizes = config.step_sizes(dtype=dtype)
        assert sizes.dtype == dtype and sizes.shape == (40,)
        np.testing.assert_allclose(sizes, ETA * factor, rtol=rtol, atol=0, err_msg=str(options))
        assert sizes[0] == np.asarray(ETA, dtype)  # eta is the peak, taken at step 0
        np.testing.assert_allclose(config.step_sizes(0.2, dtype), 0.2 * factor, rtol=rtol)
    # the wrong reading of "from eta to alpha eta over num_steps": alpha eta reached at T - 1
    config = noisydln.SimConfig(num_steps=40, record_every=10, eta=ETA, schedule="cosine")
    assert relative_error(config.step_sizes(dtype=dtype), ETA * cosine(t, 39, 0.0)) > 1e-3


@pytest.mark.parametrize(
    "options",
    [
        {"schedule": "cosine", "schedule_alpha": 0.2, "momentum": 0.5, "weight_decay": LAMBDA},
        {"schedule": "step", "schedule_boundaries": (7, 15), "schedule_factor": 0.3},
    ],
)
def test_trajectory_with_a_schedule_vs_numpy_loop(setup, options):
    """`simulate` (records every step, and every 5 steps: the schedule's count survives the
    record segments) against the heavy-ball loop with `eta_t = eta f(t)` in NumPy."""
    problem, params, _, key_run = setup
    config = noisydln.SimConfig(
        algorithm="gd", depth=3, num_steps=20, record_every=1, eta=ETA, init=np.asarray(params),
        **options,
    )  # fmt: skip
    t = np.arange(20)
    if options["schedule"] == "cosine":
        factor = cosine(t, 20, 0.2)
    else:
        factor = step_decay(t, (7, 15), 0.3)
    momentum, decay = options.get("momentum", 0.0), options.get("weight_decay", 0.0)

    def numpy_betas(factor):
        w, v, betas = np.asarray(params), np.zeros(params.shape), [np.prod(params, axis=0)]
        for eta_t in ETA * factor:
            v = momentum * v + np_grad(w, problem) + decay * w
            w = w - eta_t * v
            betas.append(np.prod(w, axis=0))
        return np.array(betas)

    expected = numpy_betas(factor)
    dense = noisydln.simulate(key_run, problem, config).records["beta"]
    sparse = noisydln.simulate(key_run, problem, dataclasses.replace(config, record_every=5))
    assert relative_error(dense, expected) < 1e-12
    assert relative_error(sparse.records["beta"], expected[::5]) < 1e-12
    # a schedule read one step late (eta f(t + 1)) or not at all is rejected
    assert relative_error(dense, numpy_betas(np.append(factor[1:], factor[-1]))) > 1e-3
    assert relative_error(dense, numpy_betas(np.ones(20))) > 1e-3


def test_sweeping_eta_with_a_schedule_never_recompiles(key, setup):
    """eta stays a traced leaf, the peak of the schedule: another eta needs no compilation, and
    the grid's cell at eta is `simulate` with that eta."""
    problem, _, _, key_run = setup
    config = noisydln.SimConfig(
        algorithm="stochastic_sam", num_steps=20, record_every=10, eta=ETA, init=0.5,
        schedule="step", schedule_boundaries=(5, 12), weight_decay=LAMBDA,
    )  # fmt: skip
    run = lambda etas: noisydln.run_grid(  # noqa: E731
        key_run, problem, config, num_seeds=4, etas=etas, keep_trajectories=True
    )
    first = run([0.05, 0.02])
    compiled = grid._run_chunk._cache_size()
    again = run([0.01, 0.08])
    assert grid._run_chunk._cache_size() == compiled
    assert not np.array_equal(first.mean["beta"], again.mean["beta"])
    one = noisydln.simulate(jax.random.fold_in(key_run, 3), problem, config, eta=0.08)
    compiled_one = _simulate_jit._cache_size()
    noisydln.simulate(jax.random.fold_in(key_run, 3), problem, config, eta=0.03)
    assert _simulate_jit._cache_size() == compiled_one
    np.testing.assert_allclose(
        again.trajectories["beta"][0, 1, 0, 3], one.records["beta"], rtol=1e-12, atol=1e-14
    )


def test_defaults_are_plain_sgd(setup):
    """Without weight decay and schedule the update is `optax.sgd` itself: the state of gd has
    no leaf but the parameters, so existing runs compute exactly what they did."""
    _, params, _, _ = setup
    config = noisydln.SimConfig(algorithm="gd", init=0.5)
    state = config.init_state(params)
    assert jax.tree.leaves(state) == [params] and state.noise is None
    expected = jax.tree.structure(optax.sgd(0.1).init(params))
    assert jax.tree.structure(state.opt_state) == expected
    assert config.rule().keywords == {}


# ---------------------------------------------------------------- bad input


BAD = [  # (SimConfig keywords, message of SimConfig, message of the spec loader)
    ({"schedule": "linear"}, "schedule must be one of", "simulation.schedule: must be one of"),
    (
        {"schedule": "step", "schedule_boundaries": (-5,)},
        r"schedule_boundaries\[0\] must be a positive integer",
        r"simulation.schedule_boundaries\[0\]: must be an integer >= 1",
    ),
    (
        {"schedule": "step", "schedule_boundaries": (10, 2.5)},
        r"schedule_boundaries\[1\] must be a positive integer",
        r"simulation.schedule_boundaries\[1\]: must be an integer >= 1",
    ),
    (
        {"schedule": "step", "schedule_boundaries": (10, 150)},
        r"schedule_boundaries\[1\] must be <= num_steps = 100",
        r"simulation.schedule_boundaries\[1\] must be <= num_steps = 100",
    ),
    (
        {"schedule": "step", "schedule_boundaries": (30, 30)},
        "schedule_boundaries must be strictly increasing",
        "simulation.schedule_boundaries must be strictly increasing",
    ),
    (
        {"schedule": "step"},
        "schedule_boundaries must be given",
        "simulation.schedule_boundaries must be given",
    ),
    (
        {"schedule": "cosine", "schedule_factor": 0.5},
        "schedule_factor is not an option of schedule 'cosine'",
        "simulation.schedule_factor is not an option of schedule 'cosine'",
    ),
    (
        {"schedule_alpha": 0.1},
        "schedule_alpha is not an option of schedule 'constant'",
        "simulation.schedule_alpha is not an option of schedule 'constant'",
    ),
    (
        {"schedule": "step", "schedule_boundaries": (5,), "schedule_alpha": 0.1},
        "schedule_alpha is not an option of schedule 'step'",
        "simulation.schedule_alpha is not an option of schedule 'step'",
    ),
    (
        {"schedule": "cosine", "schedule_alpha": 1.5},
        r"schedule_alpha must be in \[0, 1\]",
        r"simulation.schedule_alpha must be in \[0, 1\]",
    ),
    (
        {"schedule": "step", "schedule_boundaries": (5,), "schedule_factor": 0.0},
        r"schedule_factor must be in \(0, 1\]",
        r"simulation.schedule_factor must be in \(0, 1\]",
    ),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0", "simulation.weight_decay: must be >= 0"),
    (
        {"weight_decay": float("nan")},
        "weight_decay must be finite",
        "simulation.weight_decay: must be a finite number",
    ),
    (
        {"algorithm": "anti_pgd", "noise": "rademacher"},
        r"algorithm 'anti_pgd' takes the options .*got unknown \['noise'\]",
        r"simulation.algorithm 'anti_pgd' takes the options .*got unknown \['noise'\]",
    ),
]


@pytest.mark.parametrize("keywords,message,spec_message", BAD)
def test_bad_schedules_and_decay_name_the_key(keywords, message, spec_message):
    with pytest.raises(ValueError, match=message):
        noisydln.SimConfig(num_steps=100, record_every=10, **keywords)
    with pytest.raises(SpecError, match=spec_message):
        Experiment.from_dict(
            {"simulation": {"num_steps": 100, "record_every": 10, **_toml_values(keywords)}}
        )


def _toml_values(keywords):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in keywords.items()}


def test_spec_round_trip_with_schedule_and_decay():
    text = """
[simulation]
algorithm = "anti_pgd"
num_steps = 100
record_every = 10
weight_decay = 0.01
schedule = "step"
schedule_boundaries = [40, 80]
schedule_factor = 0.5
"""
    spec = Experiment.from_toml_text(text)
    sim = spec.simulation
    assert (sim.weight_decay, sim.schedule, sim.schedule_boundaries, sim.schedule_factor) == (
        0.01, "step", (40, 80), 0.5,
    )  # fmt: skip
    assert Experiment.from_toml_text(spec.to_toml()) == spec
    np.testing.assert_allclose(
        sim.step_sizes(1.0), step_decay(np.arange(100), (40, 80), 0.5), rtol=1e-15
    )
