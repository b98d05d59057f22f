"""The rules from the neighbouring literature (unnormalised SAM, 1-SAM, anti-PGD, gradient noise)
against hand-written NumPy formulas fed the same noise, and anti-PGD against stochastic SAM.

The engine runs through `simulate.advance` (the `fori_loop` that `simulate` and `run_grid` use),
its noise drawn from `fold_in(key, t)` at step t; the NumPy reference draws the same numbers from
the same keys and applies the formulas of `noisydln.algorithms` with the gradients of the
diagonal network written out: `beta = prod_l w_l`, `L = (1/n) ||y - X beta||^2`,
`dL/dw_l = -(2/n) X^T (y - X beta) * prod_{m != l} w_m`, `l_k = (y_k - x_k beta)^2`.

Tolerances, fixed in advance: float64 `|engine - numpy| <= 1e-12 (|numpy| + max |numpy|)`;
float32 (NumPy in float64 from the float32 inputs and noise) `2e-5` on the same scale, about 200
float32 epsilons for five steps of a depth-3 product. Each rule is also compared with a
plausible wrong formula, which must miss by more than 1e-3 on that scale.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import algorithms, noise
from noisydln.algorithms import Hyper
from noisydln.simulate import advance

SIGMA, ETA, DEPTH, N, D = 0.3, 0.05, 3, 12, 4
RHO = 0.1  # 1-SAM's ascent step: per-example gradients are n times those of L
RTOL = {jnp.float64: 1e-12, jnp.float32: 2e-5}
NEW_RULES = ("unnormalized_sam", "per_example_sam", "anti_pgd", "gradient_noise")
SIGMAS = {"per_example_sam": RHO}  # the others at SIGMA


# ---------------------------------------------------------------- NumPy reference


def np_others(w):
    """`prod_{m != l} w_m` for every layer l, `[L, d]`."""
    return np.array([np.prod(np.delete(w, l, axis=0), axis=0) for l in range(len(w))])


def np_grad(w, X, y):
    """The gradient of `(1/n) ||y - X beta||^2`, `[L, d]`."""
    r = 2 * X.T @ (y - X @ np.prod(w, axis=0)) / len(y)
    return -r[None, :] * np_others(w)


def np_example_grad(w, x, y_k):
    """The gradient of `(y_k - x beta)^2`, `[L, d]`."""
    return -2 * (y_k - x @ np.prod(w, axis=0)) * x[None, :] * np_others(w)


def np_unnormalized_sam(w, X, y, draw, state):
    g = np_grad(w, X, y)
    return w - ETA * np_grad(w + SIGMA * g, X, y), state


def np_per_example_sam(w, X, y, draw, state):
    grads = [
        np_example_grad(w + RHO * np_example_grad(w, x, y_k), x, y_k)
        for x, y_k in zip(X, y, strict=True)
    ]
    return w - ETA * np.mean(grads, axis=0), state


def np_anti_pgd(w, X, y, draw, previous):
    xi = draw()
    return w - ETA * np_grad(w, X, y) + SIGMA * (xi - previous), xi


def np_gradient_noise(w, X, y, draw, state):
    return w - ETA * (np_grad(w, X, y) + SIGMA * draw()), state


NUMPY_STEPS = {
    "unnormalized_sam": np_unnormalized_sam,
    "per_example_sam": np_per_example_sam,
    "anti_pgd": np_anti_pgd,
    "gradient_noise": np_gradient_noise,
}


# plausible bugs, each a one-line slip in the formula
def bug_normalised_ascent(w, X, y, draw, state):  # unnormalized_sam with the norm of `sam`
    g = np_grad(w, X, y)
    return w - ETA * np_grad(w + SIGMA * g / np.linalg.norm(g), X, y), state


def bug_average_gradient_ascent(w, X, y, draw, state):  # 1-SAM ascending along grad L
    ascent = w + RHO * np_grad(w, X, y)
    grads = [np_example_grad(ascent, x, y_k) for x, y_k in zip(X, y, strict=True)]
    return w - ETA * np.mean(grads, axis=0), state


def bug_sum_not_mean(w, X, y, draw, state):  # 1-SAM summing the examples' gradients
    grads = [
        np_example_grad(w + RHO * np_example_grad(w, x, y_k), x, y_k)
        for x, y_k in zip(X, y, strict=True)
    ]
    return w - ETA * np.sum(grads, axis=0), state


def bug_no_minus_previous(w, X, y, draw, previous):  # anti-PGD without -xi_t: perturbed GD
    xi = draw()
    return w - ETA * np_grad(w, X, y) + SIGMA * xi, xi


def bug_noise_not_times_eta(w, X, y, draw, state):  # gradient noise added to W, not to g
    return w - ETA * np_grad(w, X, y) + SIGMA * draw(), state


BUGS = {
    "unnormalized_sam": [bug_normalised_ascent],
    "per_example_sam": [bug_average_gradient_ascent, bug_sum_not_mean],
    "anti_pgd": [bug_no_minus_previous],
    "gradient_noise": [bug_noise_not_times_eta],
}


def numpy_run(step, w0, problem, key, num_steps, dtype):
    """`num_steps` of `step` in float64 NumPy; step t draws `noise.gaussian(fold_in(key, t))`."""
    X, y = (np.asarray(a, np.float64) for a in (problem.X, problem.y))
    w, state = np.asarray(w0, np.float64), np.zeros(np.shape(w0))
    for t in range(num_steps):
        draw = lambda t=t: np.asarray(  # noqa: E731
            noise.gaussian(jax.random.fold_in(key, t), np.shape(w0), dtype), np.float64
        )
        w, state = step(w, X, y, draw, state)
    return w


# ---------------------------------------------------------------- fixtures and helpers


def make_setup(key, dtype, sigma=SIGMA):
    key_problem, key_params, key_run = jax.random.split(key, 3)
    problem = noisydln.make_problem(key_problem, N, D, k=2, noise_std=0.2)
    problem = noisydln.problem_from_data(problem.X.astype(dtype), problem.y.astype(dtype))
    params = (0.8 * jax.random.normal(key_params, (DEPTH, D))).astype(dtype)
    hyper = Hyper(sigma=jnp.asarray(sigma, dtype), eta=jnp.asarray(ETA, dtype))
    return problem, params, hyper, key_run


# traced bounds: one program (a while loop) for any number of steps of a rule and dtype, which
# the second call loads from the compilation cache (the rule is a new object at every call)
advance_compiled = jax.jit(advance, static_argnums=0)


def engine_run(name, key, params, problem, hyper, num_steps, **options):
    rule = algorithms.get_rule(name, **options)
    state = algorithms.init_state(params, options.get("momentum", 0.0), algorithm=name)
    return advance_compiled(rule, key, state, problem, hyper, 0, num_steps)


def scaled_error(actual, expected):
    """`max |actual - expected| / (|expected| + max |expected|)`, elementwise scale."""
    expected = np.asarray(expected, np.float64)
    scale = np.abs(expected) + np.max(np.abs(expected))
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected) / scale))


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("name", NEW_RULES)
def test_one_and_five_steps_vs_numpy(key, name, dtype):
    problem, params, hyper, key_run = make_setup(key, dtype, SIGMAS.get(name, SIGMA))
    for num_steps in (1, 5):
        state = engine_run(name, key_run, params, problem, hyper, num_steps)
        assert state.params.dtype == dtype
        expected = numpy_run(NUMPY_STEPS[name], params, problem, key_run, num_steps, dtype)
        assert scaled_error(state.params, expected) <= RTOL[dtype], (name, num_steps)
        if name == "anti_pgd":  # the state keeps the last draw, xi_t
            last = noise.gaussian(jax.random.fold_in(key_run, num_steps - 1), params.shape, dtype)
            # equal in float64; in float32 the compiled Box-Muller may round differently from
            # an eager draw (XLA fuses log and sqrt), by a few float32 epsilons
            np.testing.assert_allclose(state.noise, last, rtol=1e-5 if dtype == jnp.float32 else 0)
        else:
            assert state.noise is None


@pytest.mark.parametrize("name", NEW_RULES)
def test_plausible_bugs_are_caught(key, name):
    """Two steps of each wrong formula (anti-PGD's slip shows from step 2, as `xi_0 = 0`) miss
    the engine by far more than the float64 tolerance."""
    problem, params, hyper, key_run = make_setup(key, jnp.float64, SIGMAS.get(name, SIGMA))
    state = engine_run(name, key_run, params, problem, hyper, 2)
    for bug in BUGS[name]:
        wrong = numpy_run(bug, params, problem, key_run, 2, jnp.float64)
        assert scaled_error(state.params, wrong) > 1e-3, bug.__name__


def test_per_example_sam_on_one_example_is_unnormalized_sam(key):
    problem, params, hyper, key_run = make_setup(key, jnp.float64, RHO)
    one = noisydln.problem_from_data(problem.X[3:4], problem.y[3:4])
    np.testing.assert_allclose(
        engine_run("per_example_sam", key_run, params, one, hyper, 3).params,
        engine_run("unnormalized_sam", key_run, params, one, hyper, 3).params,
        rtol=1e-12,
    )
    # and at sigma = 0 it is gradient descent on L = (1/n) sum_k l_k (the loss of noisydln.loss)
    still = hyper._replace(sigma=jnp.asarray(0.0))
    np.testing.assert_allclose(
        engine_run("per_example_sam", key_run, params, problem, still, 3).params,
        engine_run("gd", key_run, params, problem, still, 3).params,
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    "options", [{}, {"momentum": 0.6, "schedule": algorithms.make_schedule("cosine", 30)}]
)
def test_anti_pgd_is_stochastic_sam_on_z_draw_by_draw(key, options):
    """`Z_t = W_t - sigma xi_t` follows stochastic SAM with the perturbation `xi_t` that anti-PGD
    drew at step t - 1 (key `fold_in(key, t - 1)`; `xi_0 = 0`), with the same optax update."""
    problem, params, hyper, key_run = make_setup(key, jnp.float64)
    momentum = options.get("momentum", 0.0)
    anti = algorithms.get_rule("anti_pgd", **options)
    sam = algorithms.get_rule("stochastic_sam", **options)
    still = hyper._replace(sigma=jnp.zeros_like(hyper.sigma))  # step 0: xi_0 = 0
    w_state = algorithms.init_state(params, momentum, algorithm="anti_pgd", **_schedule(options))
    z_state = algorithms.init_state(params, momentum, **_schedule(options))
    for t in range(30):
        w_state = anti(jax.random.fold_in(key_run, t), w_state, problem, hyper)
        if t == 0:
            z_state = sam(jax.random.fold_in(key_run, 0), z_state, problem, still)
        else:
            z_state = sam(jax.random.fold_in(key_run, t - 1), z_state, problem, hyper)
        z = w_state.params - SIGMA * w_state.noise
        np.testing.assert_allclose(z_state.params, z, rtol=1e-12, atol=1e-13, err_msg=f"step {t}")
    if not options:  # without the -xi_t term, Z_2 is already off stochastic SAM
        bug = numpy_run(bug_no_minus_previous, params, problem, key_run, 2, jnp.float64)
        xi_2 = np.asarray(noise.gaussian(jax.random.fold_in(key_run, 1), params.shape, jnp.float64))
        z_2 = sam(jax.random.fold_in(key_run, 0), algorithms.init_state(params), problem, still)
        z_2 = sam(jax.random.fold_in(key_run, 0), z_2, problem, hyper)
        assert scaled_error(z_2.params, bug - SIGMA * xi_2) > 1e-3


def _schedule(options):
    return {"schedule": options["schedule"]} if "schedule" in options else {}


@pytest.mark.parametrize("name", ["anti_pgd", "per_example_sam"])
def test_new_state_runs_in_the_grid_unchanged(key, name):
    """run_grid vmaps the extended state: chunking changes no bit, and seed s of the grid is
    `simulate(fold_in(key, s))`."""
    problem, _, _, key_run = make_setup(key, jnp.float64)
    config = noisydln.SimConfig(
        algorithm=name,
        depth=DEPTH,
        num_steps=12,
        record_every=4,
        eta=ETA,
        sigma=SIGMAS.get(name, SIGMA),
        init=0.6,
    )
    run = lambda chunk: noisydln.run_grid(  # noqa: E731
        key_run, problem, config, num_seeds=5, sigmas=[0.0, config.sigma], chunk_size=chunk,
        keep_trajectories=True,
    )  # fmt: skip
    whole, chunked = run(None), run(2)
    for q in whole.mean:
        np.testing.assert_array_equal(whole.mean[q], chunked.mean[q], err_msg=q)
    single = noisydln.simulate(jax.random.fold_in(key_run, 4), problem, config)
    for q, value in single.records.items():
        np.testing.assert_allclose(
            whole.trajectories[q][1, 0, 0, 4], value, rtol=1e-12, atol=1e-14, err_msg=q
        )


def test_anti_pgd_needs_its_noise_state(key):
    problem, params, hyper, key_run = make_setup(key, jnp.float64)
    with pytest.raises(ValueError, match='algorithm="anti_pgd"'):
        algorithms.get_rule("anti_pgd")(key_run, algorithms.init_state(params), problem, hyper)


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("anti_pgd", {"noise": "rademacher"}, "takes the options"),
        ("per_example_sam", {"batch_size": 4}, "takes the options"),
        ("gradient_noise", {"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ("unnormalized_sam", {"schedule": "cosine"}, "schedule must be a step-size schedule"),
    ],
)
def test_bad_options_of_the_new_rules(name, options, match):
    with pytest.raises(ValueError, match=match):
        algorithms.get_rule(name, **options)
