"""Engine input checks name the argument; diverging trajectories are counted, never averaged."""

import numpy as np
import pytest

import noisydln


@pytest.fixture
def problem(key):
    return noisydln.make_problem(key, 20, 4, k=2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_steps": 0}, "num_steps must be a positive integer"),
        ({"record_every": 0}, "record_every must be a positive integer"),
        ({"record_every": -3}, "record_every must be a positive integer"),
        ({"num_steps": 100, "record_every": 30}, "must be a multiple of record_every"),
        ({"algorithm": "adam"}, "algorithm must be one of"),
        ({"depth": 1}, "depth must be an integer >= 2"),
        ({"eta": -0.1}, "eta must be >= 0"),
        ({"sigma": float("nan")}, "sigma must be finite"),
        ({"init": np.ones((3, 4))}, r"init must be a scale or have shape \[depth, d\]"),
        ({"init": float("inf")}, "init must be finite"),
        ({"quantities": ("beta", "gradient")}, "quantities must be a non-empty subset"),
        ({"log_records": 0}, "log_records must be a positive integer"),
        ({"algorithm": "gd", "noise": "gaussian"}, "takes the options"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noisydln.SimConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_seeds": 0}, "num_seeds must be a positive integer"),
        ({"num_seeds": -5}, "num_seeds must be a positive integer"),
        ({"num_seeds": 2.5}, "num_seeds must be a positive integer"),
        ({"num_seeds": 4, "sigmas": []}, "sigmas must not be empty"),
        ({"num_seeds": 4, "sigmas": [0.1, np.nan]}, "sigmas must be finite"),
        ({"num_seeds": 4, "etas": [np.inf]}, "etas must be finite"),
        ({"num_seeds": 4, "sigmas": [-0.1]}, "sigmas must be >= 0"),
        ({"num_seeds": 4, "init_scales": [[1.0]]}, "init_scales must be a 1-D sequence"),
        ({"num_seeds": 4, "chunk_size": 0}, "chunk_size must be a positive integer"),
    ],
)
def test_bad_grid_arguments(key, problem, kwargs, match):
    config = noisydln.SimConfig(num_steps=10, record_every=5)
    with pytest.raises(ValueError, match=match):
        noisydln.run_grid(key, problem, config, **kwargs)


def test_config_that_does_not_fit_the_problem(key, problem):
    with pytest.raises(ValueError, match=r"init must have shape \[depth, d\]"):
        noisydln.simulate(key, problem, noisydln.SimConfig(init=np.ones((2, 5))))
    with pytest.raises(ValueError, match="batch_size .* must be <= n"):
        noisydln.simulate(
            key, problem, noisydln.SimConfig(algorithm="minibatch_sgd", batch_size=50)
        )
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        noisydln.simulate(key, problem, noisydln.SimConfig(), sigma=-1.0)


def test_diverging_trajectories_are_counted_and_left_out(key, problem):
    """A step size past the stability limit blows up some seeds; they are reported, not averaged."""
    config = noisydln.SimConfig(num_steps=200, record_every=50, init=0.5, sigma=0.6)
    with pytest.warns(RuntimeWarning, match="became non-finite"):
        result = noisydln.run_grid(
            key, problem, config, num_seeds=64, etas=[0.05, 0.1, 5.0], keep_trajectories=True
        )
    kept = np.asarray(result.trajectories["loss"])[0, :, 0]  # [etas, seeds, R]
    finite_at_end = np.isfinite(kept[:, :, -1]).sum(axis=1)
    np.testing.assert_array_equal(result.count["loss"][0, :, 0, -1], finite_at_end)
    np.testing.assert_array_equal(result.diverged[0, :, 0], 64 - finite_at_end)
    assert result.diverged[0, 0, 0] == 0 and result.diverged[0, 2, 0] == 64
    assert 0 < result.diverged[0, 1, 0] < 64, "the middle step size should lose some seeds, not all"
    # the survivors' statistics are finite and equal to those of the finite trajectories
    middle = kept[1, :, -1]
    assert np.isfinite(result.mean["loss"][0, 1, 0, -1])
    np.testing.assert_allclose(
        result.mean["loss"][0, 1, 0, -1], middle[np.isfinite(middle)].mean(), rtol=1e-10
    )
    # where every seed diverged the mean is undefined: NaN with count 0, never a silent number
    assert result.count["loss"][0, 2, 0, -1] == 0 and np.isnan(result.mean["loss"][0, 2, 0, -1])


def test_no_warning_when_nothing_diverges(key, problem, recwarn):
    config = noisydln.SimConfig(num_steps=20, record_every=10, init=0.5, sigma=0.1, eta=0.05)
    result = noisydln.run_grid(key, problem, config, num_seeds=8)
    assert result.diverged.sum() == 0 and len(recwarn) == 0
