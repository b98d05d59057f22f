"""The closed forms of docs/theory.md s4 against independent NumPy float64 solvers, in both dtypes.

`lasso_limit` (free and sign-restricted) and `lasso_path` against proximal gradient descent (ISTA)
written here in NumPy float64 and run until its KKT violation is below 1e-12; `limit` and
`stationary_roots` against the roots of the stationarity polynomial from `np.roots`. Supports
must agree exactly (zeros are exact in float32 too); values to 1e-10 (float64) or 1e-4 of the
largest value (float32). Plus: no retracing on new numbers, and `jax.vmap` over sigma.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import theory

DTYPES = [jnp.float64, jnp.float32]
# The support is well defined when every zero coordinate has `|grad_i| < w_i` and every non-zero
# one `|beta_i| > 0` by at least this much: 100 times the float32 rounding of the gradient (about
# 1e-6 here), so that the float32 support is not a matter of luck. Checked on the reference.
SUPPORT_MARGIN = 1e-4


def in_dtype(problem, dtype):
    """The same data in `dtype`; its Gram matrix is computed in that dtype."""
    return noisydln.problem_from_data(problem.X.astype(dtype), problem.y.astype(dtype))


def problems(key):
    """Noisy Gaussian teachers with n > d (Sigma well conditioned), n = d (Sigma nearly singular,
    dense answers at small sigma) and n < d (Sigma singular)."""
    key_tall, key_wide, key_square = jax.random.split(key, 3)
    return {
        "tall": noisydln.make_problem(key_tall, 200, 100, k=5, values="gaussian", noise_std=0.5),
        "square": noisydln.make_problem(
            key_square, 100, 100, k=3, values="gaussian", noise_std=1.0
        ),
        "wide": noisydln.make_problem(key_wide, 60, 100, k=5, values="gaussian", noise_std=0.5),
    }


def kkt_violation(beta, gram, xty, sigma, signs):
    """Largest distance of 0 from `grad_i + w_i d|beta_i| + N_i` (orthant normal cone), float64."""
    gradient = 2 * (gram @ beta - xty)
    weights = 2 * sigma**2 * np.diag(gram)
    on_support = np.abs(gradient + weights * np.sign(beta))
    upward = np.where(signs > 0, 0.0, np.maximum(gradient - weights, 0.0))
    downward = np.where(signs < 0, 0.0, np.maximum(-gradient - weights, 0.0))
    per_coordinate = np.where(beta != 0, on_support, upward + downward)
    return np.max(np.where(signs * beta < 0, np.inf, per_coordinate))


def reference_lasso(problem, sigma, signs=None):
    """The weighted lasso by ISTA (proximal gradient, step 1 / (2 lambda_max), no momentum) in
    NumPy float64 on the problem's own Gram matrix, until the KKT violation is below 1e-12."""
    gram = np.asarray(problem.gram, np.float64)
    xty = np.asarray(problem.xty, np.float64)
    d = xty.shape[0]
    signs = np.zeros(d) if signs is None else np.asarray(signs, np.float64)
    weights = 2 * sigma**2 * np.diag(gram)
    step = 1 / (2 * np.linalg.eigvalsh(gram)[-1])
    beta = np.zeros(d)
    for iteration in range(400_000):
        v = beta - step * 2 * (gram @ beta - xty)
        beta = np.sign(v) * np.maximum(np.abs(v) - step * weights, 0.0)
        beta[signs * beta < 0] = 0.0
        if iteration % 20 == 0 and kkt_violation(beta, gram, xty, sigma, signs) < 1e-12:
            break
    else:
        raise AssertionError("the reference ISTA did not converge")
    gradient = 2 * (gram @ beta - xty)
    zero = beta == 0
    slack = weights - np.where(
        signs > 0, -gradient, np.where(signs < 0, gradient, np.abs(gradient))
    )
    assert np.all(slack[zero & (weights > 0)] > SUPPORT_MARGIN), "support not well defined"
    assert np.all(np.abs(beta[~zero]) > SUPPORT_MARGIN), "support not well defined"
    return beta


def mismatch(beta, reference, dtype) -> str | None:
    """Why `beta` is not `reference` to the dtype's tolerance; None when it is."""
    beta = np.asarray(beta, np.float64)
    if not np.array_equal(beta != 0, reference != 0):
        return (
            f"support: {np.count_nonzero(beta)} non-zeros, {np.count_nonzero(reference)} expected"
        )
    error = np.max(np.abs(beta - reference))
    allowed = 1e-10 if dtype == jnp.float64 else 1e-4 * np.max(np.abs(reference))
    return None if error <= allowed else f"values off by {error:.3g} > {allowed:.3g}"


def orthant(d):
    """A fixed mixed sign pattern: -1 on every third coordinate, 0 on every seventh, else +1."""
    return np.where(np.arange(d) % 3 == 0, -1.0, 1.0) * (np.arange(d) % 7 != 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "name,sigma",
    [
        ("tall", 0.1),
        ("tall", 0.5),
        ("square", 0.1),
        ("square", 0.25),
        ("wide", 0.25),
        ("wide", 0.5),
    ],
)
def test_lasso_limit_vs_numpy_ista(key, dtype, name, sigma):
    problem = in_dtype(problems(key)[name], dtype)
    reference = reference_lasso(problem, sigma)
    beta = theory.lasso_limit(problem, sigma)
    assert beta.dtype == dtype
    assert mismatch(beta, reference, dtype) is None, mismatch(beta, reference, dtype)
    if dtype == jnp.float64:
        gram, xty = np.asarray(problem.gram), np.asarray(problem.xty)
        assert kkt_violation(np.asarray(beta), gram, xty, sigma, np.zeros(problem.d)) < 1e-12
    # the comparison can fail: the answer for a sigma 5 % off is rejected ...
    assert mismatch(theory.lasso_limit(problem, 1.05 * sigma), reference, dtype) is not None
    # ... and so is one stray non-zero far below the value tolerance (the support is exact)
    stray = np.asarray(beta, np.float64).copy()
    stray[np.flatnonzero(reference == 0)[0]] = 1e-6 * np.max(np.abs(reference))
    assert mismatch(stray, reference, dtype).startswith("support")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["tall", "square", "wide"])
def test_sign_restricted_lasso_vs_numpy_ista(key, dtype, name):
    problem = in_dtype(problems(key)[name], dtype)
    sigma, signs = 0.3, orthant(problem.d)
    reference = reference_lasso(problem, sigma, signs)
    beta = theory.lasso_limit(problem, sigma, jnp.asarray(signs, dtype))
    assert mismatch(beta, reference, dtype) is None, mismatch(beta, reference, dtype)
    assert np.all(signs * np.asarray(beta) >= 0)
    if dtype == jnp.float64:
        gram, xty = np.asarray(problem.gram), np.asarray(problem.xty)
        assert kkt_violation(np.asarray(beta), gram, xty, sigma, signs) < 1e-12
    # the constraint binds (the free answer is another one), and 5 % off in sigma is rejected
    assert mismatch(theory.lasso_limit(problem, sigma), reference, dtype) is not None
    off = theory.lasso_limit(problem, 1.05 * sigma, jnp.asarray(signs, dtype))
    assert mismatch(off, reference, dtype) is not None


def path_sigmas(key):
    """46 noise levels from 0 (least squares) to 2 (all zero), in a shuffled order."""
    return jax.random.permutation(key, jnp.linspace(0.0, 2.0, 46))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("restricted", [False, True])
def test_lasso_path_vs_per_sigma_lasso_limit(key, dtype, restricted):
    problem = in_dtype(problems(key)["tall"], dtype)  # unique answers down to sigma = 0
    sigmas = path_sigmas(key).astype(dtype)
    signs = jnp.asarray(orthant(problem.d), dtype) if restricted else None
    path = theory.lasso_path(problem, sigmas, signs)
    assert path.shape == (46, problem.d) and path.dtype == dtype
    one_by_one = [np.asarray(theory.lasso_limit(problem, s, signs), np.float64) for s in sigmas]
    for row, expected in zip(path, one_by_one, strict=True):
        assert mismatch(row, expected, dtype) is None, mismatch(row, expected, dtype)
    supports = np.count_nonzero(np.asarray(path), axis=1)
    assert supports.min() == 0 and supports.max() > 10  # the path spans sparse and dense answers
    # the comparison can fail: against the answers one sigma along, every non-zero row is rejected
    order = np.argsort(np.asarray(sigmas))
    neighbours = [
        (i, j) for i, j in zip(order[1:], order[:-1], strict=True) if np.any(one_by_one[j] != 0)
    ]
    assert all(mismatch(path[i], one_by_one[j], dtype) for i, j in neighbours)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lasso_limit_vmaps_over_sigma(key, dtype):
    problem = in_dtype(problems(key)["wide"], dtype)
    sigmas = jnp.linspace(0.1, 0.8, 8, dtype=dtype)
    batched = jax.vmap(lambda s: theory.lasso_limit(problem, s))(sigmas)
    jitted = jax.jit(jax.vmap(theory.lasso_limit, in_axes=(None, 0)))(problem, sigmas)
    for i, sigma in enumerate(sigmas):
        expected = np.asarray(theory.lasso_limit(problem, sigma), np.float64)
        assert mismatch(batched[i], expected, dtype) is None
        assert mismatch(jitted[i], expected, dtype) is None
        if i:  # and a neighbouring sigma's answer is not taken for this one
            assert mismatch(batched[i - 1], expected, dtype) is not None


def compiles(caplog, fn, *args):
    """The XLA compilations logged while `fn(*args)` runs."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        jax.block_until_ready(fn(*args))
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]


# jit's cache is keyed on shapes and dtypes alike: float32 (7 s of compiling) runs with -m slow
@pytest.mark.parametrize("dtype", [jnp.float64, pytest.param(jnp.float32, marks=pytest.mark.slow)])
def test_no_recompilation_for_new_numbers(caplog, dtype):
    def inputs(seed, n, d):
        key_problem, key_signs, key_z = jax.random.split(jax.random.key(seed), 3)
        problem = in_dtype(noisydln.make_problem(key_problem, n, d, k=3, noise_std=0.3), dtype)
        signs = jnp.sign(jax.random.normal(key_signs, (d,), dtype))
        z = jax.random.normal(key_z, (d,), dtype)
        init = jnp.full((3, d), 0.5, dtype)
        return problem, signs, z, init, jnp.linspace(0.0, 0.3 + 0.1 * seed, 46, dtype=dtype)

    def every_closed_form(problem, signs, z, init, sigmas, sigma):
        return (
            theory.lasso_limit(problem, sigma),
            theory.lasso_limit(problem, sigma, signs, tol=1e-3 * sigma, max_steps=int(100 * sigma)),
            theory.lasso_path(problem, sigmas, signs),
            theory.limit(z, sigma, 2),
            theory.limit(z, sigma, 3),
            theory.limit(z, sigma, 3, init),
            theory.stationary_roots(z, sigma, 4),
        )

    jitted = (theory._lasso_solve, theory._lasso_path, theory._limit, theory._stationary_roots)
    seed = 1
    first = inputs(seed, 200, 100)  # the shapes of the tests above (46 sigmas on a path)
    every_closed_form(*first, 0.3)  # compiles (or finds compiled) everything for d = 100
    sizes = [fn._cache_size() for fn in jitted]
    for seed, sigma in [(2, 0.2), (3, 0.45)]:
        new = inputs(seed, 200, 100)  # new numbers, same shapes
        assert compiles(caplog, every_closed_form, *new, sigma) == []
        assert [fn._cache_size() for fn in jitted] == sizes
    # the check can fail: a new d compiles the lasso solver again
    other = inputs(seed, 40, 11)
    logged = compiles(caplog, theory.lasso_limit, other[0], 0.3)
    assert any("_lasso_solve" in message for message in logged)
    assert theory._lasso_solve._cache_size() == sizes[0] + 1


def polynomial_a_plus(z, sigma, depth):
    """The largest positive root of `(a^2 + s^2)^(L-1) - |z| a^(L-2)` by `np.roots`, float64."""
    square_term = np.polynomial.polynomial.polypow([sigma**2, 0.0, 1.0], depth - 1)
    coefficients = square_term.copy()
    coefficients[depth - 2] -= abs(z)
    roots = np.roots(coefficients[::-1])
    real = roots[(np.abs(roots.imag) < 1e-9) & (roots.real > 0)].real
    return real.max() if real.size else 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_limit_and_roots_vs_polynomial_roots_exact_zeros(dtype, depth):
    sigma = 0.6
    tau = float(theory.threshold(sigma, depth))
    ratios = np.array([0.0, 0.5, -0.9, 0.99, 1.01, -1.2, 2.0, -3.0, 5.0])
    z = jnp.asarray(ratios * tau, dtype)
    beta = theory.limit(z, sigma, depth)
    assert beta.dtype == dtype
    above = np.abs(ratios) > 1
    np.testing.assert_array_equal(np.asarray(beta) != 0, above)  # exact zeros below tau
    if depth == 2:
        expected = np.sign(ratios) * np.maximum(np.abs(ratios * tau) - sigma**2, 0.0)
    else:
        a_plus = [polynomial_a_plus(r * tau, sigma, depth) for r in ratios]
        expected = np.where(above, np.sign(ratios) * np.asarray(a_plus) ** depth, 0.0)
        a_minus, a_plus_ours = theory.stationary_roots(z, sigma, depth)
        for root in (a_minus, a_plus_ours):
            np.testing.assert_array_equal(np.asarray(root) != 0, np.abs(ratios) >= 1)
    rtol = 1e-10 if dtype == jnp.float64 else 1e-5
    clear = np.abs(np.abs(ratios) - 1) > 0.1  # np.roots loses digits where two roots merge
    np.testing.assert_allclose(np.asarray(beta)[clear], expected[clear], rtol=rtol, atol=0)
    # the comparison can fail: the limit for a sigma 5 % off is rejected
    off = np.asarray(theory.limit(z, 1.05 * sigma, depth))[clear & above]
    assert not np.allclose(off, expected[clear & above], rtol=rtol, atol=0)
