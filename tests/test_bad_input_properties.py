"""Bad input, systematically: every public entry point either refuses an argument with a
one-line `ValueError` (or `SpecError`) that names it, or gives a correct, finite result; never
a crash inside XLA, a hang, a `MemoryError` or a silent NaN.

The property tests draw malformed shapes, wrong dtypes (bools, complex numbers, strings, None),
negative, zero, NaN and infinite values and huge sizes; valid draws are kept small, so that a
run is tiny. Set `NOISYDLN_BAD_INPUT_EXAMPLES=20` to draw 20 times as many examples.
"""

import math
import os

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.extra import numpy as hnp

import noisydln
from noisydln import algorithms, experiment, noise, theory
from noisydln.experiment import Experiment, SpecError, build_problem
from noisydln.quantities import ALL_QUANTITIES

SCALE = float(os.environ.get("NOISYDLN_BAD_INPUT_EXAMPLES", "1"))
N, D = 8, 2  # the one small problem every run uses
TINY = {"num_steps": 2, "record_every": 1, "quantities": ("loss",)}  # quick to compile


def examples(count: int):
    """Hypothesis settings: `count` examples (times `SCALE`), no deadline, no database."""
    return settings(
        max_examples=max(1, int(count * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def refused_or(call, *names):
    """`call()`'s result, or None if it raised a one-line ValueError naming one of `names`."""
    try:
        return call()
    except ValueError as error:  # SpecError is a ValueError
        message = str(error)
        assert "\n" not in message, f"not one line: {message!r}"
        assert any(name in message for name in names), f"{message!r} does not name {names}"
        return None


def all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def problem():
    return noisydln.make_problem(jax.random.key(3), N, D, k=1, noise_std=0.1)


# ---------------------------------------------------------------- strategies

HUGE_INTS = st.sampled_from([2**31, 2**40, 2**63, 2**64, 10**12, 10**30])
SIZES = st.one_of(  # sizes of a problem: small ones, or far too large for any machine
    st.integers(-2, 3), st.sampled_from([2**40, 10**12, 2**63, 10**30])
)
NON_NUMBERS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(["0.1", "", "nan", "1e3", b"1"]),
    st.complex_numbers(max_magnitude=10, allow_nan=False).filter(lambda z: z.imag != 0),
    st.sampled_from([np.bool_(True), np.complex64(1j), np.array("0.1"), [0.1], (0.1, 0.2)]),
    st.builds(lambda: jnp.ones(2)),
    st.builds(lambda: {"value": 0.1}),
)
SMALL_NUMBERS = st.one_of(
    st.floats(-2, 2),
    st.integers(-3, 3),
    st.sampled_from([np.float32(0.25), np.int64(1), np.float64(0.5)]),
    st.floats(0, 2).map(jnp.asarray),  # a 0-d array is a number
)
ODD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -1e-300, 1e300, -0.0])
NUMBERS_AND_JUNK = st.one_of(SMALL_NUMBERS, ODD_FLOATS, HUGE_INTS, NON_NUMBERS)
INTS_AND_JUNK = st.one_of(
    st.integers(-3, 6), HUGE_INTS, st.floats(-2, 8), st.sampled_from([np.int32(3)]), NON_NUMBERS
)
ARRAY_DTYPES = st.sampled_from(
    [np.int8, np.int64, np.uint8, np.float16, np.float32, np.float64, np.bool_, np.complex128, "U3"]
)


def arrays(shape=None, max_side=3):
    """NumPy arrays of any dtype (NaN and inf included for floats), of `shape` or any small one."""
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_side)
    return hnp.arrays(ARRAY_DTYPES, st.just(shape) if shape else shapes)


def is_real_scalar(value) -> bool:
    """An int or float (Python, NumPy or 0-d array), not a bool, complex or string."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        return False
    dtype = getattr(value, "dtype", None)
    if dtype is None:  # a Python int NumPy cannot hold is refused too (it is not a float)
        return isinstance(value, float) or (isinstance(value, int) and -(2**63) <= value < 2**64)
    return np.shape(value) == () and (
        jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    )


def is_number(value, low=-math.inf, below=math.inf) -> bool:
    """A real, finite scalar in `[low, below)`."""
    return is_real_scalar(value) and math.isfinite(float(value)) and low <= float(value) < below


def is_int(value, low=1, high=2**31 - 1) -> bool:
    return (
        isinstance(value, (int, np.integer))
        and not isinstance(value, (bool, np.bool_))
        and low <= value <= high
    )


def is_real_array(value) -> bool:
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (
        jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    )


# ---------------------------------------------------------------- problems


@examples(30)
@given(n=st.one_of(SIZES, NON_NUMBERS), d=st.one_of(SIZES, NON_NUMBERS))
def test_make_problem_sizes(n, d):
    problem = refused_or(lambda: noisydln.make_problem(jax.random.key(0), n, d), "n", "d")
    valid = is_int(n, 1, 10**6) and is_int(d, 1, 10**6)
    assert (problem is not None) == valid, (n, d)
    if valid:
        assert problem.X.shape == (n, d) and all_finite(problem[1:])


MAKE_PROBLEM_OPTIONS = {
    "design": st.one_of(
        st.sampled_from(noisydln.problem.DESIGNS), st.text(max_size=4), NON_NUMBERS
    ),
    "diag": st.one_of(NUMBERS_AND_JUNK, arrays()),
    "k": INTS_AND_JUNK,
    "values": st.one_of(NUMBERS_AND_JUNK, arrays(), st.just("gaussian")),
    "beta_star": st.one_of(arrays(), arrays((D,)), NON_NUMBERS),
    "noise_std": NUMBERS_AND_JUNK,
    "dtype": st.sampled_from([np.float32, "float64", np.int32, np.complex64, "nope", bool, None]),
}


@examples(40)
@given(data=st.data(), name=st.sampled_from(sorted(MAKE_PROBLEM_OPTIONS)))
def test_make_problem_options(data, name):
    value = data.draw(MAKE_PROBLEM_OPTIONS[name], label=name)
    options = {name: value}
    if name == "diag":
        options["design"] = "diagonal"
    if name == "beta_star":
        options["k"] = None
    problem = refused_or(lambda: noisydln.make_problem(jax.random.key(0), N, D, **options), name)
    if problem is not None:  # accepted: a finite problem
        assert all_finite(problem[:2] + problem[3:]), options
    if name == "noise_std":
        assert (problem is not None) == is_number(value, 0.0, 1e100), value
    if name == "k":
        assert (problem is not None) == (value is None or is_int(value, 0, D)), value


def test_make_problem_huge_sizes_are_refused_before_allocating(key):
    for n, d in [(10**12, 2), (2, 10**7), (2**40, 2**40)]:
        with pytest.raises(ValueError, match="n and d are too large"):
            noisydln.make_problem(key, n, d)
    with pytest.raises(ValueError, match="X is too large"):  # a 1 x 10^7 view: a 10^14 gram
        noisydln.problem_from_data(np.broadcast_to(np.ones(1), (1, 10**7)), np.ones(1))


@examples(80)
@given(X=st.one_of(arrays(), arrays((3, 2)), NON_NUMBERS), y=st.one_of(arrays(), arrays((3,))))
def test_problem_from_data(X, y):
    problem = refused_or(lambda: noisydln.problem_from_data(X, y), "X", "y")
    valid = (
        is_real_array(X)
        and is_real_array(y)
        and np.ndim(X) == 2
        and np.size(X) > 0
        and np.shape(y) == np.shape(X)[:1]
        and all_finite((X, y))
    )
    if valid and problem is None:  # only refusal left for valid data: statistics overflow
        dtype = X.dtype if jnp.issubdtype(X.dtype, jnp.floating) else np.float64
        big = np.finfo(dtype).max ** 0.5
        assert np.max(np.abs(X), initial=0) > big / 10 or np.max(np.abs(y), initial=0) > big / 10
    assert valid or problem is None, (X, y)
    if problem is not None:
        assert all_finite(problem[:2] + problem[3:])
        assert jnp.issubdtype(problem.X.dtype, jnp.floating)
        np.testing.assert_array_equal(problem.X, np.asarray(X, problem.X.dtype))


def test_problem_from_data_integer_data_are_floats():
    X = np.array([[1, 2], [3, 2**40], [0, -7]], dtype=np.int64)
    y = np.array([1, 0, 2**35], dtype=np.int64)
    problem = noisydln.problem_from_data(X, y)
    assert problem.X.dtype == jnp.float64
    np.testing.assert_array_equal(problem.X, X.astype(float))
    with jax.enable_x64(False):  # int64 data are not wrapped to int32 on the way to float32
        small = noisydln.problem_from_data(X, y)
    assert small.X.dtype == jnp.float32
    np.testing.assert_array_equal(small.X, X.astype(np.float32))
    np.testing.assert_array_equal(small.y, y.astype(np.float32))


@pytest.mark.parametrize(
    "X,y,beta_star,name",
    [
        (np.ones((2, 2), complex), np.ones(2), None, "X"),
        (np.ones((2, 2), bool), np.ones(2), None, "X"),
        (np.full((2, 2), "1"), np.ones(2), None, "X"),
        (None, np.ones(2), None, "X"),
        ([[1.0], [1.0, 2.0]], np.ones(2), None, "X"),
        (np.ones((2, 2)), np.ones(2) * 1j, None, "y"),
        (np.ones((2, 2)), [True, False], None, "y"),
        (np.ones((2, 2)), ["1", "2"], None, "y"),
        (np.ones((2, 2)), np.ones(2), [1j, 0], "beta_star"),
        (np.ones((2, 2)), np.ones(2), ["a", "b"], "beta_star"),
        (np.full((2, 2), 1e200), np.ones(2), None, "X and y are too large"),
    ],
)
def test_problem_from_data_refuses_non_real_data(X, y, beta_star, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        noisydln.problem_from_data(X, y, beta_star)


def test_float64_data_stored_as_float32_warn():
    X, y = np.ones((4, 2)), np.arange(4.0)
    with jax.enable_x64(False):
        with pytest.warns(
            UserWarning, match="float64.*stored as float32.*jax_enable_x64"
        ) as caught:
            problem = noisydln.problem_from_data(X, y)
        assert problem.X.dtype == jnp.float32
        assert 'jax.config.update("jax_enable_x64", True)' in str(caught[0].message)
        assert "jax.enable_x64(True)" in str(caught[0].message)
        # no warning (filterwarnings = error): float32 data, Python floats, integers
        noisydln.problem_from_data(X.astype(np.float32), y.astype(np.float32))
        noisydln.problem_from_data(X.tolist(), y.tolist())
        noisydln.problem_from_data(X.astype(int), y.astype(int))
        noisydln.problem_from_data(X.astype(np.float32), y)  # y takes X's dtype, as with x64
        noisydln.make_problem(jax.random.key(0), N, D)
        # the spec layer draws in float64 and rounds itself before building the problem
        spec = Experiment.from_toml_text(f"[problem]\nn = {N}\nd = {D}")
        assert build_problem(spec, np.float32).X.dtype == jnp.float32
    assert noisydln.problem_from_data(X, y).X.dtype == jnp.float64  # x64 on: kept, no warning


# ---------------------------------------------------------------- SimConfig

SIM_FIELDS = {
    "algorithm": st.one_of(st.sampled_from(sorted(algorithms.RULES)), st.text(max_size=4)),
    "depth": INTS_AND_JUNK,
    "num_steps": INTS_AND_JUNK,
    "record_every": INTS_AND_JUNK,
    "log_records": INTS_AND_JUNK,
    "eta": NUMBERS_AND_JUNK,
    "sigma": NUMBERS_AND_JUNK,
    "momentum": NUMBERS_AND_JUNK,
    "init": st.one_of(NUMBERS_AND_JUNK, arrays(), arrays((2, D))),
    "noise": st.one_of(st.sampled_from(sorted(noise.SAMPLERS)), NON_NUMBERS),
    "batch_size": INTS_AND_JUNK,
    "quantities": st.one_of(
        st.lists(st.sampled_from(ALL_QUANTITIES), max_size=3),
        st.lists(st.one_of(st.sampled_from(ALL_QUANTITIES), NON_NUMBERS), max_size=3),
        NON_NUMBERS,
    ),
}


@examples(150)
@given(data=st.data(), name=st.sampled_from(sorted(SIM_FIELDS)))
def test_sim_config_fields(data, name):
    value = data.draw(SIM_FIELDS[name], label=name)
    base = {"num_steps": 4, "record_every": 2}
    config = refused_or(lambda: noisydln.SimConfig(**{**base, name: value}), name)
    numeric = {"eta": (0.0, math.inf), "sigma": (0.0, math.inf), "momentum": (0.0, 1.0)}
    if name in numeric:
        assert (config is not None) == is_number(value, *numeric[name]), value
    if name == "depth":  # None: the network's default depth
        assert (config is not None) == (value is None or is_int(value, 2)), value
    if name == "log_records":
        assert (config is not None) == (value is None or is_int(value)), value
    if name == "num_steps":  # a multiple of record_every = 2
        assert (config is not None) == (is_int(value) and value % 2 == 0), value
    if config is None:
        return
    hash(config)  # static: must be hashable, so every field is a plain Python value
    for field in ("eta", "sigma", "momentum"):
        assert type(getattr(config, field)) is float
    for field in ("depth", "num_steps", "record_every"):
        assert type(getattr(config, field)) is int
    assert isinstance(config.init, (float, tuple)) and isinstance(config.quantities, tuple)
    assert noisydln.SimConfig(**{**base, name: value}) == config


@pytest.mark.parametrize(
    "value", [jnp.array(0.1), np.float32(0.1), np.float64(0.1), np.array(0.1), np.int64(1), 1]
)
def test_sim_config_numbers_become_python_floats(value):
    config = noisydln.SimConfig(sigma=value, eta=value, init=value)
    assert (type(config.sigma), type(config.eta), type(config.init)) == (float, float, float)
    assert config.sigma == float(value)
    hash(config)
    assert config.static() == noisydln.SimConfig(sigma=0.0, eta=0.0, init=0.0)


@pytest.mark.parametrize("name", ["sigma", "eta", "momentum"])
@pytest.mark.parametrize(
    "value", ["0.1", True, 0.1j, jnp.ones(2), [0.1], None, math.nan, math.inf, -0.1]
)
def test_sim_config_refuses_non_numbers(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        noisydln.SimConfig(**{name: value})


def test_minibatch_sgd_needs_batch_size(key, problem):
    with pytest.raises(ValueError, match="^batch_size must be given"):
        noisydln.SimConfig(algorithm="minibatch_sgd")
    with pytest.raises(ValueError, match="^batch_size must be given"):
        algorithms.get_rule("minibatch_sgd")
    with pytest.raises(ValueError, match="takes the options .* got unknown \\['batch_size'\\]"):
        noisydln.SimConfig(algorithm="gd", batch_size=4)
    with pytest.raises(SpecError, match="simulation.batch_size must be given"):
        Experiment.from_toml_text('[simulation]\nalgorithm = "minibatch_sgd"')
    with pytest.raises(SpecError, match="simulation.batch_size must be given.*grid.algorithms"):
        Experiment.from_toml_text('[grid]\nalgorithms = ["minibatch_sgd"]')
    config = noisydln.SimConfig(algorithm="minibatch_sgd", batch_size=np.int64(4), **TINY)
    assert type(config.batch_size) is int
    assert all_finite(noisydln.simulate(key, problem, config).records)


# ---------------------------------------------------------------- simulate


@pytest.mark.parametrize("name", ["sigma", "eta", "init_scale"])
@pytest.mark.parametrize("value", ["0.1", b"0.1", True, 0.1j, [0.1, 0.2], {"a": 1}, math.nan])
def test_simulate_refuses_strings_and_non_numbers(key, problem, name, value):
    config = noisydln.SimConfig(**TINY)
    with pytest.raises(ValueError, match=f"^{name} must"):
        noisydln.simulate(key, problem, config, **{name: value})


@examples(40)
@given(name=st.sampled_from(["sigma", "eta", "init_scale"]), value=NUMBERS_AND_JUNK)
def test_simulate_hyperparameters(key, problem, name, value):
    config = noisydln.SimConfig(**TINY)
    run = refused_or(lambda: noisydln.simulate(key, problem, config, **{name: value}), name)
    if value is None:  # the config's value
        assert run is not None
        return
    valid = is_number(value) if name == "init_scale" else is_number(value, 0.0)
    assert (run is not None) == valid, value
    if run is not None and abs(float(value)) <= 2:
        assert all_finite(run.records)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda p, c: noisydln.simulate(0, p, c), "key"),
        (lambda p, c: noisydln.simulate(None, p, c), "key"),
        (lambda p, c: noisydln.simulate(jax.random.split(jax.random.key(0)), p, c), "key"),
        (lambda p, c: noisydln.simulate(jax.random.key(0), p._asdict(), c), "problem"),
        (lambda p, c: noisydln.simulate(jax.random.key(0), p, {"num_steps": 2}), "config"),
        (
            lambda p, c: noisydln.simulate(
                jax.random.key(0), p, noisydln.SimConfig(depth=2**30, **TINY)
            ),
            "depth",
        ),
        (
            lambda p, c: noisydln.simulate(
                jax.random.key(0), p, noisydln.SimConfig(num_steps=2**31 - 1, record_every=1)
            ),
            "num_steps",
        ),
        (
            lambda p, c: noisydln.simulate(
                jax.random.key(0), p, noisydln.SimConfig(num_steps=2, log_records=2**31 - 1)
            ),
            "log_records",
        ),
    ],
)
def test_simulate_refuses_wrong_arguments(problem, call, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        call(problem, noisydln.SimConfig(**TINY))


# ---------------------------------------------------------------- run_grid

AXES = st.one_of(
    st.lists(st.floats(0, 1), min_size=1, max_size=2),
    st.lists(st.one_of(st.floats(0, 1), ODD_FLOATS, NON_NUMBERS), max_size=3),
    st.sampled_from(["0.1,0.2", "0.1", [[0.1]], [0.1, True], [0.1, [0.2]], np.array([[0.1]])]),
    arrays(max_side=2),
    st.floats(0, 1),
)


def is_axis(values) -> bool:
    if isinstance(values, (list, tuple)):
        return len(values) > 0 and all(is_number(v, 0.0) for v in values)
    if is_real_array(values) and np.ndim(values) <= 1 and np.size(values) > 0:
        return bool(np.all(np.isfinite(values)) and np.all(np.asarray(values) >= 0))
    return is_number(values, 0.0)


@examples(25)
@given(name=st.sampled_from(["sigmas", "etas", "init_scales"]), values=AXES)
def test_run_grid_axes(key, problem, name, values):
    config = noisydln.SimConfig(**TINY)
    run = lambda: noisydln.run_grid(key, problem, config, num_seeds=2, **{name: values})  # noqa: E731
    valid = is_axis(values) and np.max(np.asarray(values, dtype=float)) <= 1
    if is_axis(values) and (not valid or np.size(values) > 2):
        return  # valid, but a run that may diverge, or one more compilation (3 cells)
    result = refused_or(run, name)
    assert (result is not None) == valid, values
    if result is not None:
        assert all_finite(result.mean) and int(result.diverged.sum()) == 0


@examples(30)
@given(num_seeds=st.one_of(INTS_AND_JUNK, st.sampled_from([2**31 - 1 + 1, 2**40, np.int64(2**40)])))
def test_run_grid_num_seeds(key, problem, num_seeds):
    config = noisydln.SimConfig(**TINY)
    if is_int(num_seeds, 1, 2**31 - 1) and num_seeds > 6:
        return  # valid, and long to run: not bad input
    run = lambda: noisydln.run_grid(key, problem, config, num_seeds=num_seeds)  # noqa: E731
    result = refused_or(run, "num_seeds")
    assert (result is not None) == is_int(num_seeds, 1, 6), num_seeds
    if result is not None:
        assert all_finite(result.mean) and result.num_seeds == num_seeds


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sigmas": "0.1,0.2"}, "^sigmas must be a 1-D sequence of real numbers"),
        ({"etas": "0.1"}, "^etas must be a 1-D sequence of real numbers"),
        ({"sigmas": [0.1, True]}, "^sigmas must be a 1-D sequence of real numbers"),
        ({"init_scales": [1j]}, "^init_scales must be a 1-D sequence of real numbers"),
        ({"sigmas": [0.1, None]}, "^sigmas must be a 1-D sequence of real numbers"),
        ({"sigmas": [0.1, [0.2]]}, "^sigmas must be a 1-D sequence of real numbers"),
        ({"sigmas": np.array([True])}, "^sigmas must be a 1-D sequence of real numbers"),
        ({"num_seeds": 2**31}, "^num_seeds must be at most 2\\*\\*31 - 1"),
        ({"num_seeds": 2**40}, "^num_seeds must be at most 2\\*\\*31 - 1"),
    ],
)
def test_run_grid_refuses_strings_bools_and_int32_overflow(key, problem, kwargs, match):
    config = noisydln.SimConfig(**TINY)
    with pytest.raises(ValueError, match=match):
        noisydln.run_grid(key, problem, config, **{"num_seeds": 2, **kwargs})


# ---------------------------------------------------------------- theory

PARAMS = jnp.array([[0.5, -1.0], [0.3, 0.2]])


def sigma_calls(problem):
    """Every closed form that takes a scalar sigma: name -> sigma -> result."""
    return {
        "average_sharpness": lambda s: theory.average_sharpness(PARAMS, problem, s),
        "expected_loss": lambda s: theory.expected_loss(PARAMS, problem, s),
        "expected_grad": lambda s: theory.expected_grad(PARAMS, problem, s),
        "min_average_sharpness": lambda s: theory.min_average_sharpness(PARAMS[0], problem, s, 3),
        "balancing_rate": lambda s: theory.balancing_rate(problem, s),
        "imbalance_after_gd": lambda s: theory.imbalance_after_gd(PARAMS, problem, s, 0.1),
        "imbalance_factor": lambda s: theory.imbalance_factor(PARAMS, problem, s, 0.1),
        "threshold": lambda s: theory.threshold(s, 3),
        "limit 2": lambda s: theory.limit(PARAMS[0], s, 2),
        "limit 3": lambda s: theory.limit(PARAMS[0], s, 3),
        "stationary_roots": lambda s: theory.stationary_roots(PARAMS[0], s, 3),
        "lasso_limit": lambda s: theory.lasso_limit(problem, s),
    }


@examples(80)
@given(data=st.data(), sigma=NUMBERS_AND_JUNK)
def test_theory_sigma(problem, data, sigma):
    calls = sigma_calls(problem)
    name = data.draw(st.sampled_from(sorted(calls)), label="function")
    result = refused_or(lambda: calls[name](sigma), "sigma")
    valid = is_number(sigma, 0.0) or (name == "threshold" and sigma is not None and is_axis(sigma))
    assert (result is not None) == valid, (name, sigma)
    if result is not None and np.max(np.asarray(sigma, dtype=float)) <= 2:
        assert all_finite(result), (name, sigma, result)


@examples(60)
@given(data=st.data(), params=st.one_of(arrays(), arrays((2, D)), arrays((3, D)), NON_NUMBERS))
def test_theory_params(problem, data, params):
    calls = {
        "average_sharpness": lambda: theory.average_sharpness(params, problem, 0.1),
        "expected_loss": lambda: theory.expected_loss(params, problem, 0.1),
        "expected_grad": lambda: theory.expected_grad(params, problem, 0.1),
        "balanced": lambda: theory.balanced(params),
        "imbalance_after_gd": lambda: theory.imbalance_after_gd(params, problem, 0.1, 0.1),
        "imbalance_factor": lambda: theory.imbalance_factor(params, problem, 0.1, 0.1),
    }
    name = data.draw(st.sampled_from(sorted(calls)), label="function")
    result = refused_or(calls[name], "params")
    shape = np.shape(params)
    valid = is_real_array(params) and len(shape) == 2 and shape[0] >= 2 and all_finite(params)
    if name != "balanced":  # the others need the problem's d (and depth 2 for rho)
        valid = valid and shape[1] == D and (name != "imbalance_factor" or shape[0] == 2)
    assert (result is not None) == valid, (name, params)
    if result is not None and np.max(np.abs(np.asarray(params, float)), initial=0) <= 100:
        assert all_finite(result), (name, params, result)


@examples(60)
@given(data=st.data(), depth=st.one_of(INTS_AND_JUNK, st.sampled_from([10**4, 2**31 - 1])))
def test_theory_depth(problem, data, depth):
    calls = {
        "threshold": lambda: theory.threshold(0.3, depth),
        "limit": lambda: theory.limit(PARAMS[0], 0.3, depth),
        "min_hessian_trace": lambda: theory.min_hessian_trace(PARAMS[0], problem, depth),
        "min_average_sharpness": lambda: theory.min_average_sharpness(
            PARAMS[0], problem, 0.3, depth
        ),
        "stationary_roots": lambda: theory.stationary_roots(PARAMS[0], 0.3, depth),
    }
    name = data.draw(st.sampled_from(sorted(calls)), label="function")
    if name in ("limit", "stationary_roots") and is_int(depth, 7):
        return  # compiled once per depth: a long depth is a slow compile, not bad input
    result = refused_or(calls[name], "depth")
    if is_int(depth, 2, 6) and not (name == "stationary_roots" and depth == 2):
        assert result is not None and all_finite(result), (name, depth, result)
    if not is_int(depth, 2):
        assert result is None, (name, depth)
    if result is not None:
        assert not np.any(np.isnan(np.asarray(result))), (name, depth, result)


@examples(80)
@given(data=st.data(), value=st.one_of(arrays(), arrays((D,)), NUMBERS_AND_JUNK))
def test_theory_arrays(problem, data, value):
    calls = {
        "z": lambda: theory.limit(value, 0.3, 2),
        "z ": lambda: theory.stationary_roots(value, 0.3, 3),
        "beta": lambda: theory.min_hessian_trace(value, problem, 2),
        "signs": lambda: theory.lasso_limit(problem, 0.3, value),
        "sigmas": lambda: theory.lasso_path(problem, value),
        "tol": lambda: theory.lasso_limit(problem, 0.3, tol=value),
        "max_steps": lambda: theory.lasso_limit(problem, 0.3, max_steps=value),
        "init": lambda: theory.limit(PARAMS[0], 0.3, 3, init=value),
    }
    name = data.draw(st.sampled_from(sorted(calls)), label="argument")
    if name == "init" and np.shape(value) == (2,):
        value = np.stack([value] * 3)  # the right shape [3, d], whatever its dtype and numbers
    result = refused_or(calls[name], name.strip())
    if name == "signs" and is_real_array(value) and np.shape(value) == (D,):
        valid = bool(np.all(np.isin(value, (-1, 0, 1))))
        assert (result is not None) == valid, value
    if name == "max_steps":
        assert (result is not None) == is_int(value, 0, 2**31 - 1), value
    if name == "tol":
        assert (result is not None) == (value is None or is_number(value, 0.0)), value
    if result is not None:
        assert not any(np.any(np.isnan(np.asarray(x))) for x in jax.tree.leaves(result)), result


def test_threshold_huge_depth_is_refused_not_an_overflow_error():
    with pytest.raises(ValueError, match="^depth"):
        theory.threshold(0.5, 10**6)
    with pytest.raises(ValueError, match="^depth must be an integer in"):
        theory.min_hessian_trace(jnp.ones(2), noisydln.make_problem(jax.random.key(0), 4, 2), 2**63)


# ---------------------------------------------------------------- the spec loader

SPEC_BASE = {
    "name": "bad input",
    "problem": {"n": N, "d": D, "seed": 0},
    "simulation": {"num_steps": 4, "record_every": 2},
    "grid": {"num_seeds": 4},
    "run": {"dtype": "float32"},
}
SPEC_KEYS = [  # every key of every section, and a typo
    (section, key)
    for section, checks in (
        ("problem", experiment.ProblemSpec._CHECKS),
        ("simulation", experiment._SIMULATION_CHECKS),
        ("grid", experiment.GridSpec._CHECKS),
        ("run", experiment.RunSpec._CHECKS),
    )
    for key in checks
] + [("grid", "sigma")]
TOML_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 8),
        HUGE_INTS,
        st.sampled_from([10**400, -(2**63)]),
        st.floats(-2, 2),
        ODD_FLOATS,
        st.text(max_size=4),
        st.sampled_from(sorted(algorithms.RULES) + sorted(noise.SAMPLERS) + list(ALL_QUANTITIES)),
        st.sampled_from(["gaussian", "diagonal", "x.npz", "float64"]),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@examples(200)
@given(where=st.sampled_from(SPEC_KEYS), value=TOML_VALUES)
def test_spec_keys(where, value):
    section, key = where
    spec = {**SPEC_BASE, section: {**SPEC_BASE[section], key: value}}
    loaded = refused_or(lambda: Experiment.from_dict(spec), key)
    if loaded is not None:
        assert Experiment.from_toml_text(loaded.to_toml()) == loaded
        hash(loaded.simulation)


@examples(60)
@given(
    section=st.sampled_from(["name", "problem", "simulation", "grid", "run", "extra"]),
    value=TOML_VALUES,
)
def test_spec_sections(section, value):
    loaded = refused_or(lambda: Experiment.from_dict({**SPEC_BASE, section: value}), section)
    if loaded is not None:
        assert Experiment.from_toml_text(loaded.to_toml()) == loaded


@examples(60)
@given(text=st.text(max_size=40))
def test_spec_text(text):
    refused_or(lambda: Experiment.from_toml_text(text), "")  # any one-line SpecError


@pytest.mark.parametrize("spec", [None, 3, "[grid]", ["grid"]])
def test_spec_dict_of_the_wrong_type(spec):
    with pytest.raises(SpecError, match="^a spec must be a table"):
        Experiment.from_dict(spec)


@pytest.mark.parametrize("text", [None, b"[grid]", {"grid": {}}])
def test_spec_text_of_the_wrong_type(text):
    with pytest.raises(SpecError, match="^a spec must be TOML text"):
        Experiment.from_toml_text(text)


# ---------------------------------------------------------------- what the properties found


def test_large_python_numbers_are_not_an_overflow_error(problem):
    """`sigma**2` of a Python float above 1e154 raised OverflowError, of a Python int above
    2**32 overflowed int64 inside JAX: both now give the float answer (inf where it is)."""
    for sigma in (1e300, 2**40, 2**63):
        assert float(theory.average_sharpness(PARAMS, problem, sigma)) > 1e20
        assert float(theory.balancing_rate(problem, sigma)[0]) > 1e20
    noisy = noisydln.make_problem(jax.random.key(0), N, D, noise_std=2**63)
    assert all_finite(noisy[:2] + noisy[3:])


def test_lists_are_arrays_in_theory():
    """`jnp.result_type` has no dtype for a list: `threshold([0.1])` raised TypeError."""
    np.testing.assert_allclose(theory.threshold([0.1, 0.2], 2), [0.01, 0.04])
    np.testing.assert_allclose(theory.limit([1.0, -0.5], 0.5, 2), [0.75, -0.25])
    a_minus, a_plus = theory.stationary_roots([1.0], 0.3, 3)
    assert 0 < float(a_minus[0]) < float(a_plus[0])


def test_numpy_params_compute_in_jax():
    """NumPy params were multiplied by NumPy (an overflow RuntimeWarning in float32)."""
    params = np.full((3, 2), 7e12, np.float32)
    beta = theory.balanced(params)  # no RuntimeWarning (filterwarnings = error)
    assert isinstance(beta, jax.Array) and bool(jnp.all(jnp.isinf(beta)))


def test_labels_that_do_not_fit_the_design_dtype():
    """float32 labels of 65520 became inf in X's float16, with a RuntimeWarning."""
    X = np.ones((3, 2), np.float16)
    with pytest.raises(ValueError, match="^y does not fit float16"):
        noisydln.problem_from_data(X, np.full(3, 65520.0, np.float32))
    with jax.enable_x64(False), pytest.warns(UserWarning, match="stored as float32"):
        with pytest.raises(ValueError, match="^X does not fit float32"):
            noisydln.problem_from_data(np.full((2, 2), 1e39), np.ones(2), None)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda p: theory.lasso_limit(p, 0.3, [0.5, 1.0]), "^signs must hold -1, 0 or"),
        (lambda p: theory.lasso_limit(p, 0.3, [np.nan, 1.0]), "^signs must be finite"),
        (lambda p: theory.lasso_limit(p, 0.3, max_steps=2**40), "^max_steps must be an integer"),
        (lambda p: theory.lasso_limit(p, 0.3, max_steps=1.5), "^max_steps must be an integer"),
        (lambda p: theory.lasso_path(p, [True]), "^sigmas must be"),
        (lambda p: theory.limit(jnp.ones(2), 0.1, 3, init=jnp.full((3, 2), np.nan)), "^init"),
        (lambda p: theory.limit(jnp.array([1j]), 0.1, 2), "^z must hold real numbers"),
        (lambda p: theory.expected_loss(jnp.full((2, 2), np.nan), p, 0.1), "^params must be"),
        (lambda p: theory.expected_loss(jnp.ones((2, 2)) * 1j, p, 0.1), "^params must hold"),
        (lambda p: theory.expected_loss(jnp.ones((2, 2)), p, jnp.ones(3)), "^sigma must be a"),
        (lambda p: theory.expected_loss(jnp.ones((2, 2)), None, 0.1), "^problem must be"),
        (lambda p: theory.min_hessian_trace(["a", "b"], p, 2), "^beta must hold"),
        (lambda p: noisydln.SimConfig(quantities=np.array("beta")), "^quantities must be"),
        (lambda p: noisydln.SimConfig(log_records=True), "^log_records must be"),
        (lambda p: noisydln.SimConfig(init=True), "^init must hold real numbers"),
        (lambda p: noisydln.SimConfig(momentum="0.5"), "^momentum must be"),
        (lambda p: noisydln.SimConfig(num_steps=2**40, record_every=2**40), "^num_steps must"),
        (lambda p: noisydln.make_problem(jax.random.key(0), 4, 2, dtype=jnp.complex64), "^dtype"),
        (lambda p: Experiment.from_dict({"problem": {"\n": 1}}), "^problem.'\\\\n': unknown key"),
        (
            lambda p: Experiment.from_toml_text(f"[simulation]\nsigma = {10**400}"),
            "^simulation.sigma",
        ),
    ],
)
def test_found_by_the_properties(problem, call, match):
    with pytest.raises(ValueError, match=match):
        call(problem)


def test_large_numpy_sigma_is_not_a_runtime_warning(problem):
    for sigma in (np.float32(1e30), np.array(1e200), np.float64(1e300)):
        assert float(theory.balancing_rate(problem, sigma)[0]) > 1e20  # inf, no RuntimeWarning


@examples(30)
@given(key=st.one_of(NUMBERS_AND_JUNK, arrays(), arrays((2,))))
def test_keys(problem, key):
    valid = getattr(key, "dtype", None) == np.uint32 and np.shape(key) == (2,)  # a raw key
    made = refused_or(lambda: noisydln.make_problem(key, N, D), "key")
    assert (made is not None) == valid, key
    config = noisydln.SimConfig(**TINY)
    run = refused_or(lambda: noisydln.simulate(key, problem, config), "key")
    assert (run is not None) == valid, key
