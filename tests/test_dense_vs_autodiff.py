"""Closed forms of the dense network (docs/dense.md) against autodiff, exact expectations and the
diagonal family.

Widths are drawn from the fixture key (never searched). Exact identities are checked in float64
(rtol 1e-10 to 1e-13); the float32 cases are held to `FLOAT32_RTOL` of the largest entry.
Everything is computed by two jitted functions, `closed_forms` and `autodiff`, so that each
network shape compiles once (eager JAX compiles every primitive on its own, ten times slower).
"""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noisydln import dense, model, theory
from noisydln.problem import Problem

D, SIGMA = 4, 0.4
FLOAT32_RTOL = 1e-5  # float32 against float64, relative to the largest entry (seen: <= 2e-7)


def case_rng(key, *labels):
    """A NumPy generator seeded by the fixture key's bits and the case's labels.

    Problems and parameters are drawn in NumPy (no JAX compilation per shape); the key is the
    suite's one root key, never searched.
    """
    return np.random.default_rng([*np.asarray(jax.random.key_data(key)).tolist(), *labels])


def numpy_problem(rng, n, d, noise_std=0.3):
    """`y = X beta_star + noise`, Gaussian `X [n, d]`, `beta_star` Gaussian on its first two
    coordinates, as a `Problem` with its sufficient statistics computed in NumPy."""
    X = rng.standard_normal((n, d))
    beta_star = np.where(np.arange(d) < 2, rng.standard_normal(d), 0.0)
    y = X @ beta_star + noise_std * rng.standard_normal(n)
    gram = X.T @ X / n
    arrays = (X, y, beta_star, (gram + gram.T) / 2, X.T @ y / n, np.asarray(y @ y / n))
    return Problem(*(jax.device_put(a) for a in arrays))  # (jnp.asarray compiles per shape)


def numpy_params(rng, d, widths, scale):
    """`scale` times standard normal entries, shaped like `dense.init_params(_, d, widths)`."""
    return tuple(
        jax.device_put(scale * rng.standard_normal(s)) for s in dense.layer_shapes(d, widths)
    )


def make_case(key, depth, d=D, scale=0.7):
    """A problem (n = 30) and parameters with `depth - 1` hidden widths drawn in 2..5 (at least
    two units, so that every `D_l` is a genuine matrix; width 1 is the d = 1 test's)."""
    rng = case_rng(key, depth, d)
    widths = tuple(int(w) for w in rng.integers(2, 6, depth - 1))
    return numpy_problem(rng, 30, d), numpy_params(rng, d, widths, scale)


def direct_loss(params, problem):
    """The loss from X and y and the explicit matrix product, not from the sufficient statistics."""
    row = functools.reduce(lambda acc, w: w @ acc, params)  # W_L ... W_1, [1, d]
    return jnp.mean((problem.y - problem.X @ row[0]) ** 2)


@jax.jit
def closed_forms(params, problem, sigma):
    """Every closed form of `dense` at one point."""
    return {
        "loss": dense.loss(params, problem),
        "grad": dense.grad(params, problem),
        "hessian": dense.hessian(params, problem),
        "hessian_trace": dense.hessian_trace(params, problem),
        "expected_loss": dense.expected_loss(params, problem, sigma),
        "expected_grad": dense.expected_grad(params, problem, sigma),
        "inputs": dense.input_moments(params, problem, sigma),
        "outputs": dense.output_moments(params, sigma),
        "gap": dense.weighted_gap(params, problem, sigma),
        "rate": dense.imbalance_flow_rate(params, problem, sigma),
    }


def imbalance_drift(params, problem, sigma):
    """`dD_l/dt` along `dW/dt = -grad L_R` by `jax.jvp` of `imbalance`, grad L_R by autodiff."""
    velocity = jax.tree.map(jnp.negative, jax.grad(dense.expected_loss)(params, problem, sigma))
    return jax.jvp(dense.imbalance, (params,), (velocity,))[1]


@jax.jit
def autodiff(params, problem, sigma):
    """The same quantities by automatic differentiation of `direct_loss` and `expected_loss`."""
    flat_loss = lambda vector: direct_loss(dense.unflatten(vector, params), problem)  # noqa: E731
    second_in_sigma = jax.grad(jax.grad(dense.expected_loss, argnums=2), argnums=2)
    return {
        "loss": direct_loss(params, problem),
        "grad": jax.grad(direct_loss)(params, problem),
        "hessian": jax.hessian(flat_loss)(dense.flatten(params)),
        "expected_grad": jax.grad(dense.expected_loss)(params, problem, sigma),
        "sigma_curvature_at_0": second_in_sigma(params, problem, 0.0),
        "drift": imbalance_drift(params, problem, sigma),
        "grad_scale": jnp.max(jnp.abs(dense.flatten(jax.grad(direct_loss)(params, problem)))),
    }


def assert_tree_close(actual, expected, rtol, atol=0.0):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def max_relative_error(actual, expected):
    """`max |a - e| / max |e|` over all leaves of two equal pytrees."""
    leaves = (map(np.asarray, jax.tree.leaves(tree)) for tree in (actual, expected))
    pairs = list(zip(*leaves, strict=True))
    diff = max(float(np.max(np.abs(a - e))) for a, e in pairs)
    return diff / max(float(np.max(np.abs(e))) for _, e in pairs)


def to_float32(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float32), tree)


# ----------------------------------------------------------------------------------------------
# Closed forms against autodiff, any depth


# depth 4 (two middle layers of the moment recursion; 6 s of compiling) runs with -m slow
@pytest.mark.parametrize("depth", [2, 3, pytest.param(4, marks=pytest.mark.slow)])
def test_closed_forms_vs_autodiff(key, depth):
    problem, params = make_case(key, depth)
    ours, ref = closed_forms(params, problem, SIGMA), autodiff(params, problem, SIGMA)
    ours_at_0, ref_at_0 = closed_forms(params, problem, 0.0), autodiff(params, problem, 0.0)
    # the loss and its derivatives (docs/dense.md s1)
    np.testing.assert_allclose(ours["loss"], ref["loss"], rtol=1e-12)
    assert_tree_close(ours["grad"], ref["grad"], 1e-11, 1e-12)
    np.testing.assert_allclose(ours["hessian"], ref["hessian"], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(ours["hessian_trace"], jnp.trace(ref["hessian"]), rtol=1e-12)
    # the expected loss (s2): its gradient, its sigma -> 0 limit and curvature (tr H)
    assert_tree_close(ours["expected_grad"], ref["expected_grad"], 1e-11, 1e-12)
    np.testing.assert_allclose(ours_at_0["expected_loss"], ours["loss"], rtol=1e-13)
    np.testing.assert_allclose(ref["sigma_curvature_at_0"], ours["hessian_trace"], rtol=1e-12)
    # N_L = tr(G_l N_l) at every layer: the same noisy quadratic read from either side
    for n_l, g_l in zip(ours["inputs"], ours["outputs"], strict=True):
        np.testing.assert_allclose(jnp.trace(g_l @ n_l), ours["inputs"][-1][0, 0], rtol=1e-12)
    # the imbalance flow (s3) against jax.jvp of D_l along -grad L_R
    assert [r.shape for r in ours["rate"]] == [(w.shape[0],) * 2 for w in params[:-1]]
    assert max_relative_error(ours["rate"], ref["drift"]) < 1e-10
    # without noise D_l is conserved: the drift is rounding against the size of the gradient
    for drift in ref_at_0["drift"]:
        assert float(jnp.max(jnp.abs(drift))) < 1e-12 * max(float(ref["grad_scale"]), 1.0)
    for rate in ours_at_0["rate"]:
        np.testing.assert_array_equal(rate, 0.0)


@pytest.mark.parametrize("depth", [3])
def test_float32_closed_forms_vs_float64_autodiff(key, depth):
    problem, params = make_case(key, depth)
    ours32 = closed_forms(to_float32(params), to_float32(problem), SIGMA)
    ours64, ref = closed_forms(params, problem, SIGMA), autodiff(params, problem, SIGMA)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(ours32))
    for name in ("loss", "grad", "hessian", "hessian_trace", "expected_loss", "expected_grad"):
        assert max_relative_error(ours32[name], ours64[name]) < FLOAT32_RTOL, name
    assert max_relative_error(ours32["rate"], ref["drift"]) < FLOAT32_RTOL


# ----------------------------------------------------------------------------------------------
# Depth 2 against ../shared/THEORY.md s6


def test_depth2_expected_loss_and_flow_vs_theory(key):
    """`L_R = L + s^2 tr(S) ||W_2||^2 + s^2 tr(W_1 S W_1^T) + s^4 h tr(S)` and
    `dD/dt = -4 s^2 (tr(S) W_2^T W_2 - W_1 S W_1^T)`; the gap does not depend on sigma."""
    problem, params = make_case(key, 2)
    w1, w2 = params
    trace = jnp.trace(problem.gram)
    closed = (
        dense.loss(params, problem)
        + SIGMA**2 * trace * jnp.sum(w2**2)
        + SIGMA**2 * jnp.trace(w1 @ problem.gram @ w1.T)
        + SIGMA**4 * w1.shape[0] * trace
    )
    gap = trace * w2.T @ w2 - w1 @ problem.gram @ w1.T
    ours = closed_forms(params, problem, SIGMA)
    np.testing.assert_allclose(ours["expected_loss"], closed, rtol=1e-13)
    np.testing.assert_allclose(ours["rate"][0], -4 * SIGMA**2 * gap, rtol=1e-12, atol=1e-14)
    for sigma in (0.0, 0.1, 2.0):
        gap_at_sigma = closed_forms(params, problem, sigma)["gap"][0]
        np.testing.assert_allclose(gap_at_sigma, gap, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# Exact expectations: an average over all sign vectors


def sign_average(fn, params, sigma):
    """`E fn(params + sigma xi)` over all sign vectors `xi in {-1, +1}^P`, exactly.

    The loss and every entry of its gradient have degree <= 2 in each single parameter (beta is
    linear in each), so every law with mean 0 and variance 1 gives the same expectation; the
    2-node Gauss-Hermite rule (nodes +-1, weights 1/2) is exact.
    """
    vector = dense.flatten(params)
    signs = jnp.array(list(itertools.product((-1.0, 1.0), repeat=vector.shape[0])))
    at = lambda xi: fn(dense.unflatten(vector + sigma * xi, params))  # noqa: E731
    return jax.tree.map(lambda v: jnp.mean(v, axis=0), jax.jit(jax.vmap(at))(signs))


@pytest.mark.parametrize("d,widths", [(2, (2, 2)), (1, (2, 1, 2))])
def test_expected_loss_and_grad_vs_exact_expectation(key, d, widths):
    rng = case_rng(key, d, *widths)
    problem, params = numpy_problem(rng, 20, d), numpy_params(rng, d, widths, 0.8)
    exact = sign_average(lambda p: (dense.loss(p, problem), dense.grad(p, problem)), params, SIGMA)
    ours = closed_forms(params, problem, SIGMA)
    np.testing.assert_allclose(ours["expected_loss"], exact[0], rtol=1e-12)
    assert_tree_close(ours["expected_grad"], exact[1], 1e-11, 1e-12)


# ----------------------------------------------------------------------------------------------
# The diagonal family as a special case: d = 1, every width 1


@jax.jit
def diagonal_forms(params, problem, sigma):
    """The diagonal family's closed forms (`model`, `theory`) and its imbalance drift."""
    velocity = -theory.expected_grad(params, problem, sigma)
    return {
        "loss": model.loss(params, problem),
        "grad": model.grad(params, problem),
        "hessian": model.hessian(params, problem),
        "hessian_trace": model.hessian_trace(params, problem),
        "expected_loss": theory.expected_loss(params, problem, sigma),
        "expected_grad": theory.expected_grad(params, problem, sigma),
        "drift": jax.jvp(model.imbalances, (params,), (velocity,))[1],
    }


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_unit_widths_at_d1_vs_diagonal_family(key, depth):
    """At `d = 1` with all widths 1 every layer is a scalar and every noise entry a diagonal one,
    so the dense network IS the diagonal network of the same depth at `d = 1`."""
    rng = case_rng(key, depth, 1)
    problem, params = numpy_problem(rng, 25, 1), numpy_params(rng, 1, (1,) * (depth - 1), 0.9)
    as_diagonal = lambda tree: jnp.stack([w[0] for w in tree])  # noqa: E731  [depth, 1]
    ours = closed_forms(params, problem, SIGMA)
    theirs = diagonal_forms(as_diagonal(params), problem, SIGMA)
    for name in ("loss", "hessian_trace", "expected_loss"):
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-13, err_msg=name)
    np.testing.assert_allclose(ours["hessian"], theirs["hessian"], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(as_diagonal(ours["grad"]), theirs["grad"], rtol=1e-13)
    np.testing.assert_allclose(
        as_diagonal(ours["expected_grad"]), theirs["expected_grad"], rtol=1e-12
    )
    # D_l = w_{l+1}^2 - w_l^2 = imbalances[l + 1, l] of the diagonal family
    for l in range(depth - 1):
        np.testing.assert_allclose(ours["rate"][l][0, 0], theirs["drift"][l + 1, l, 0], rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Structure, transforms, inputs


def test_end_to_end_flatten_and_unflatten(key):
    _, params = make_case(key, 3)
    row = params[2] @ params[1] @ params[0]
    np.testing.assert_allclose(dense.end_to_end(params), row[0], rtol=1e-14)
    vector = dense.flatten(params)
    assert vector.shape == (sum(w.size for w in params),)
    np.testing.assert_array_equal(vector[0], params[0][0, 0])
    np.testing.assert_array_equal(vector[params[0].shape[1]], params[0][1, 0])  # row-major
    np.testing.assert_array_equal(vector[params[0].size], params[1][0, 0])  # then W_2
    np.testing.assert_array_equal(vector[-1], params[-1][0, -1])
    assert_tree_close(dense.unflatten(vector, params), params, rtol=0)


def test_sigma_is_traced_no_recompilation(key):
    problem, params = make_case(key, 3)

    def rate_and_loss(sigma):
        rate = dense.imbalance_flow_rate(params, problem, sigma)
        return rate, dense.expected_loss(params, problem, sigma)

    counted = jax.jit(chex.assert_max_traces(rate_and_loss, n=1))
    sigmas = jnp.array([0.1, 0.2, 0.3])
    over_sigma = jax.jit(jax.vmap(rate_and_loss))(sigmas)
    for i, sigma in enumerate(sigmas):  # sigma is a traced leaf: one trace for the whole sweep
        row = [leaf[i] for leaf in jax.tree.leaves(over_sigma)]
        assert_tree_close(counted(sigma), row, 1e-12)


@pytest.mark.parametrize("widths", [(0,), (3, -1), (2.0,), (True,), (), "3", 3])
def test_bad_widths_are_refused(widths):
    with pytest.raises(ValueError, match="widths"):
        dense.init_params(None, 3, widths)


def test_bad_params_and_arguments_are_refused(key):
    problem, params = make_case(key, 3)
    with pytest.raises(ValueError, match="params"):
        dense.loss(params[:1], problem)  # depth 1
    with pytest.raises(ValueError, match="params"):
        dense.loss(params[::-1], problem)  # shapes do not chain
    with pytest.raises(ValueError, match="params"):
        dense.loss((params[0], jnp.ones((params[0].shape[0],))), problem)  # not a matrix
    with pytest.raises(ValueError, match="params"):
        dense.loss(dense.init_params(None, D + 1, (2,)), problem)  # wrong d
    with pytest.raises(ValueError, match="params"):
        dense.end_to_end(dense.flatten(params))
    with pytest.raises(ValueError, match="d must"):
        dense.init_params(None, 0, (2,))
    with pytest.raises(ValueError, match="vector"):
        dense.unflatten(dense.flatten(params)[1:], params)
    with pytest.raises(ValueError, match="sigma"):
        dense.expected_loss(params, problem, -0.1)
    with pytest.raises(ValueError, match="sigma"):
        dense.perturbed_grad(key, params, problem, -0.1)


def test_init_params_shapes_and_determinism(key):
    params = dense.init_params(key, 1, (1, 1), 0.5)  # equal shapes: one compilation of normal
    assert [w.shape for w in params] == [(1, 1)] * 3
    keys = jax.random.split(key, 3)  # one key per layer, split once
    for k, w in zip(keys, params, strict=True):
        np.testing.assert_array_equal(w, 0.5 * jax.random.normal(k, (1, 1)))
    constant = dense.init_params(None, 5, (4, np.int64(3)), scale=0.5, dtype=jnp.float32)
    assert [w.shape for w in constant] == [(4, 5), (3, 4), (1, 3)]
    assert all(w.dtype == jnp.float32 and bool(jnp.all(w == 0.5)) for w in constant)
