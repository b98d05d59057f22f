"""The diagnostics of beta (`quantities.beta_diagnostics`: `l1_norm`, `support_size`,
`distance_to_limit`, `test_loss`) and the held-out data of generated problems, against NumPy
formulas, at depth 2 and 3, in float64 and float32.

Tolerances are fixed in advance: float64 values to 1e-12 relative (sums of at most 100 terms),
float32 values to 1e-5 relative (a few hundred roundings of 6e-8) plus, for the limit, 1e-5
absolute (its own rounding: a root found by bisection); the support counts exactly. Each check
is shown to reject a realistic error: a support tolerance 10 times too large or too small, a
limit computed at a sigma 5 % off, the training loss in place of the held-out one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import quantities
from noisydln.algorithms import Hyper

SIGMA = 0.4
DIAGNOSTICS = quantities.BETA_DIAGNOSTICS


def numpy_limit(z: np.ndarray, sigma: float, depth: int) -> np.ndarray:
    """`sign(z) max(|z| - sigma^2, 0)` (depth 2); for depth >= 3 the non-zero stationary point
    `sign(z) a_+^L`, the largest root of `(a^2 + sigma^2)^(L-1) = |z| a^(L-2)`, where there is
    one (docs/theory.md s4)."""
    if depth == 2:
        return np.sign(z) * np.maximum(np.abs(z) - sigma**2, 0.0)
    out = np.zeros_like(z)
    for i, target in enumerate(z):
        poly = np.polynomial.Polynomial([sigma**2, 0.0, 1.0]) ** (depth - 1)
        poly = poly - abs(target) * np.polynomial.Polynomial([0.0] * (depth - 2) + [1.0])
        real = [r.real for r in poly.roots() if abs(r.imag) < 1e-9 and r.real > 0]
        out[i] = np.sign(target) * max(real) ** depth if real else 0.0
    return out


def numpy_case(dtype, design="diagonal"):
    """A 6-coordinate problem with NumPy-drawn training and held-out data (targets above and
    below every depth's threshold at SIGMA), and betas `[64, 6]` whose magnitudes span 1e-4 to
    2 (so that they cross the support level), with their NumPy data."""
    rng = np.random.default_rng(20250314)
    beta_star = np.array([1.2, -0.9, 0.4, 0.05, 0.0, -0.02])
    scale = np.sqrt(np.array([1.0, 2.0, 0.5, 1.0, 1.5, 0.8]))

    def draw(n):
        X = rng.standard_normal((n, 6))
        if design == "diagonal":  # exactly X^T X / n = diag(scale^2)
            X = np.linalg.qr(X)[0] * np.sqrt(n) * scale
        return X, X @ beta_star + 0.1 * rng.standard_normal(n)

    (X, y), (X_test, y_test) = draw(24), draw(40)
    problem = noisydln.problem_from_data(
        X.astype(dtype), y.astype(dtype), X_test=X_test.astype(dtype), y_test=y_test.astype(dtype)
    )
    magnitudes = 10.0 ** rng.uniform(-4, 0.3, (64, 6))
    betas = (np.sign(rng.standard_normal((64, 6))) * magnitudes).astype(dtype)
    return problem, betas, (X, y, X_test, y_test)


def targets(problem) -> np.ndarray:
    gram = np.asarray(problem.gram, dtype=np.float64)
    return np.asarray(problem.xty, dtype=np.float64) / np.diag(gram)


def support(beta: np.ndarray, problem, factor: float = 1.0) -> np.ndarray:
    """`#{i: |beta_i| > factor * 1e-2 max(1, max |z|)}`, the level in the betas' precision."""
    dtype = beta.dtype.type
    level = dtype(factor * 1e-2) * dtype(max(1.0, np.max(np.abs(targets(problem)))))
    return np.sum(np.abs(beta) > level, axis=-1).astype(float)


def diagnostics(betas, problem, sigma, depth) -> dict:
    one = lambda b: quantities.beta_diagnostics(b, problem, sigma, depth, DIAGNOSTICS)  # noqa: E731
    return {k: np.asarray(v) for k, v in jax.jit(jax.vmap(one))(jnp.asarray(betas)).items()}


@pytest.mark.parametrize(
    "depth,dtype", [(2, np.float64), (2, np.float32), (3, np.float64), (3, np.float32)]
)
def test_beta_diagnostics_vs_numpy_formulas(depth, dtype):
    problem, betas, (X, y, X_test, y_test) = numpy_case(dtype)
    values = diagnostics(betas, problem, SIGMA, depth)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for name in DIAGNOSTICS:
        assert values[name].dtype == dtype and values[name].shape == (64,), name
    wide = betas.astype(float)

    np.testing.assert_allclose(values["l1_norm"], np.abs(wide).sum(axis=-1), rtol=rtol)

    np.testing.assert_array_equal(values["support_size"], support(betas, problem))
    assert values["support_size"].min() < values["support_size"].max()  # the counts vary
    for wrong in (10.0, 0.1):  # a tolerance 10x off counts differently somewhere
        assert np.any(support(betas, problem, wrong) != values["support_size"])

    atol = 0 if dtype == np.float64 else 1e-5  # float32: the limit's own rounding
    z = targets(problem)

    def distance(sigma):
        return np.sqrt(((wide - numpy_limit(z, sigma, depth)) ** 2).sum(axis=-1))

    np.testing.assert_allclose(values["distance_to_limit"], distance(SIGMA), rtol=rtol, atol=atol)
    off = np.abs(values["distance_to_limit"] - distance(1.05 * SIGMA))
    assert np.max(off) > 100 * (rtol * np.max(values["distance_to_limit"]) + atol)

    # float32: (1/n_t)|y_t - X_t beta|^2 from float32 statistics cancels down to ~1e-5 of y_t^2
    X_test, y_test = X_test.astype(dtype).astype(float), y_test.astype(dtype).astype(float)
    held_out = ((y_test[None] - wide @ X_test.T) ** 2).mean(axis=-1)
    test_atol = 0 if dtype == np.float64 else 1e-5 * np.mean(y_test**2)
    np.testing.assert_allclose(values["test_loss"], held_out, rtol=rtol, atol=test_atol)
    training = (y.astype(dtype).astype(float)[None] - wide @ X.astype(dtype).astype(float).T) ** 2
    off = np.abs(values["test_loss"] - training.mean(axis=-1))
    assert np.max(off) > 100 * (rtol * np.max(held_out) + test_atol)


def test_recorded_diagnostics_vs_numpy_formulas_of_recorded_beta():
    """`run_grid` records the diagnostics of its own `beta` (depth 2, float64), every record."""
    problem = noisydln.make_problem(
        jax.random.key(7), 24, 6, design="diagonal", diag=np.array([1.0, 2.0, 0.5, 1.0, 1.5, 0.8]),
        beta_star=np.array([1.2, -0.9, 0.4, 0.05, 0.0, -0.02]), noise_std=0.1, n_test=40,
    )  # fmt: skip
    config = noisydln.SimConfig(
        num_steps=300, record_every=30, eta=0.02, init=0.7, quantities=("beta", *DIAGNOSTICS)
    )
    result = noisydln.run_grid(
        jax.random.key(8), problem, config, num_seeds=4, sigmas=[SIGMA], keep_trajectories=True
    )
    kept = {k: np.asarray(v[0, 0, 0]) for k, v in result.trajectories.items()}  # [seeds, R, ...]
    beta = kept["beta"]
    np.testing.assert_allclose(kept["l1_norm"], np.abs(beta).sum(axis=-1), rtol=1e-12)
    np.testing.assert_array_equal(kept["support_size"], support(beta, problem))
    gap = beta - numpy_limit(targets(problem), SIGMA, 2)
    np.testing.assert_allclose(kept["distance_to_limit"], np.sqrt((gap**2).sum(-1)), rtol=1e-12)
    gram, xty = np.asarray(problem.test_gram), np.asarray(problem.test_xty)
    quadratic = np.einsum("sri,ij,srj->sr", beta, gram, beta) - 2 * beta @ xty
    np.testing.assert_allclose(kept["test_loss"], quadratic + float(problem.test_yty), rtol=1e-12)
    # the trajectories approach the limit (to within the noise), so the distance has content
    assert kept["distance_to_limit"][:, -1].mean() < 0.5 * kept["distance_to_limit"][:, 0].mean()


def test_test_loss_without_held_out_data_refused_before_compiling(key, monkeypatch):
    problem = noisydln.make_problem(key, 20, 4)  # n_test = 0: none
    assert not problem.has_test_data
    config = noisydln.SimConfig(num_steps=10, quantities=("beta", "test_loss"))
    monkeypatch.setattr(noisydln.grid, "_run_chunk", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(ValueError, match="test_loss needs held-out data"):
        noisydln.run_grid(key, problem, config, num_seeds=16)
    with pytest.raises(ValueError, match="test_loss"):
        quantities.test_loss(jnp.zeros(4), problem)
    with pytest.raises(ValueError, match="X_test and y_test"):
        noisydln.problem_from_data(np.ones((3, 2)), np.ones(3), X_test=np.ones((2, 2)))
    with pytest.raises(ValueError, match="X_test"):
        noisydln.problem_from_data(
            np.ones((3, 2)), np.ones(3), X_test=np.ones((2, 3)), y_test=[1, 2]
        )
    with pytest.raises(ValueError, match="n_test"):
        noisydln.make_problem(key, 20, 4, design="orthogonal", n_test=3)


@pytest.mark.parametrize("design", ["gaussian", "orthogonal"])
def test_held_out_data_vs_their_definition(key, design):
    """The training data do not change with `n_test`; the held-out statistics are those of
    `y_t = X_t beta_star + noise_std eps_t` drawn from the keys the docstring names."""
    options = {"design": design, "k": 2, "noise_std": 0.3}
    without = noisydln.make_problem(key, 30, 4, **options)
    problem = noisydln.make_problem(key, 30, 4, n_test=50, **options)
    for name in ("X", "y", "beta_star", "gram", "xty", "yty"):
        np.testing.assert_array_equal(getattr(problem, name), getattr(without, name))
    key_design, key_noise = jax.random.split(jax.random.fold_in(key, 1))
    X_test = np.asarray(noisydln.problem.make_design(key_design, 50, 4, design))
    y_test = X_test @ np.asarray(problem.beta_star)
    y_test = y_test + 0.3 * np.asarray(jax.random.normal(key_noise, (50,)))
    np.testing.assert_allclose(problem.test_gram, X_test.T @ X_test / 50, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(problem.test_xty, X_test.T @ y_test / 50, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(problem.test_yty, y_test @ y_test / 50, rtol=1e-12)
    assert np.max(np.abs(problem.test_xty - problem.xty)) > 1e-3  # not the training data
    if design == "orthogonal":  # the same law: exactly orthogonal columns
        np.testing.assert_allclose(problem.test_gram, np.eye(4), atol=1e-12)


def test_spec_n_test_gives_held_out_data_in_both_dtypes():
    spec = noisydln.Experiment.from_toml_text("[problem]\nn = 30\nd = 4\nn_test = 60")
    wide = noisydln.experiment.build_problem(spec, np.float64)
    narrow = noisydln.experiment.build_problem(spec, np.float32)
    assert wide.test_gram.shape == (4, 4) and narrow.test_yty.dtype == np.float32
    np.testing.assert_allclose(narrow.test_gram, wide.test_gram, rtol=1e-6)
    assert not noisydln.experiment.build_problem(
        noisydln.Experiment.from_toml_text("[problem]\nn = 30\nd = 4"), np.float64
    ).has_test_data


def test_distance_to_limit_of_a_general_design_is_the_coordinate_formula():
    """A non-diagonal design: the distance to the coordinate-wise formula `theory.limit(b_i /
    Sigma_ii)` (documented; its limit is the weighted lasso)."""
    problem, betas, _ = numpy_case(np.float64, design="gaussian")
    assert np.abs(np.asarray(problem.gram) - np.diag(np.diag(problem.gram))).max() > 0.1
    gap = betas - numpy_limit(targets(problem), SIGMA, 2)
    distance = diagnostics(betas, problem, SIGMA, 2)["distance_to_limit"]
    np.testing.assert_allclose(distance, np.sqrt(np.sum(gap**2, axis=-1)), rtol=1e-12)


def test_diagnostics_with_a_zero_column_stay_finite():
    """`Sigma_ii = 0` (a zero column, `b_i = 0`): `z_i` is taken as 0, no NaN reaches the
    moments (which would count the trajectory as diverged)."""
    X = np.array([[1.0, 0.0, 2.0], [0.5, 0.0, -1.0], [2.0, 0.0, 0.3], [-1.0, 0.0, 1.0]])
    problem = noisydln.problem_from_data(
        X, X @ np.array([1.0, 0.0, -0.5]), X_test=X, y_test=X[:, 0]
    )
    record = jax.jit(quantities.record, static_argnums=3)
    values, memory = record(
        jnp.full((2, 3), 0.5), problem, Hyper(jnp.float64(0.3), 0.01), ("beta", *DIAGNOSTICS)
    )
    assert memory == {}  # nothing carried without top_eigenvalue
    assert all(np.all(np.isfinite(v)) for v in values.values())
    assert float(quantities.coordinate_targets(problem)[1]) == 0.0
