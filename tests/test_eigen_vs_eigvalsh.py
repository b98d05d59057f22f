"""The largest Hessian eigenvalue by Lanczos (`noisydln.eigen`, Hessian-vector products only)
against `eigvalsh` of the exact Hessian (`noisydln.hessian`, `noisydln.dense.hessian`).

Tolerances, from rounding bounds (not fitted to the results):

- float64: relative error <= 1e-6, the accuracy asked of `top_eigenvalue` (issue 10).
- float32: relative error <= (2 n + m) eps_32, n the length of the longest sum in one
  Hessian-vector product (d = 100 for W1, the product with Sigma; 10 for the dense networks
  below) and m the number of Lanczos steps: Higham's bound gamma_n = n eps on a rounded sum of
  n terms, for the product and for the sums that build it, and one rounding per step of the
  recurrence (2.9e-5 for W1 with 40 steps). The reference is the exact (float64) Hessian of the
  float32 numbers themselves.

States: workload W1's problem (n = 200, d = 100; depth 2: P = 200, depth 3: P = 300) at its
start, at random parameters and early on stochastic-SAM trajectories (10 and 20 steps, where
the top two eigenvalues are closest; after 2000 steps too in the slow test), with the recorder's
count `eigen.RECORD_ITERATIONS` (measured for W1); dense networks at random and trained
parameters with `P` steps. Every check is shown to reject a realistic error: 5 Lanczos steps
from the same start (in NumPy; 1 step, the start's Rayleigh quotient, for the dense networks,
whose top eigenvalue is far from the rest), a Hessian-vector product whose curvature term is
5 % off, and the second-largest eigenvalue.

The recorded values along W1 trajectories (the first record cold, the later ones warm-started
from the previous record's Ritz vector) are checked the same way against `eigvalsh` of the
recorded parameters; rejected: the warm runs without their fallback to `RECORD_ITERATIONS`
steps, and `WARM_ITERATIONS` steps from the cold start.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import dense, eigen, lanczos
from noisydln.algorithms import Hyper
from noisydln.simulate import advance, observe, scan_records

F64_RTOL = 1e-6


def rtol_for(dtype, longest_sum: int, steps: int) -> float:
    if dtype == jnp.float64:
        return F64_RTOL
    return (2 * longest_sum + steps) * float(jnp.finfo(jnp.float32).eps)


def w1_problem(dtype=jnp.float64):
    problem = noisydln.make_problem(jax.random.key(0), 200, 100, k=5, values=1.0)
    return noisydln.problem_from_data(problem.X.astype(dtype), problem.y.astype(dtype))


def in_float64(problem):
    """The float64 copy of the very numbers a run uses (its `gram` too, not `X^T X / n` again):
    the reference of a float32 run is the exact Hessian of its own data."""
    return jax.tree.map(lambda x: x.astype(jnp.float64), problem)


def w1_init(depth: int) -> jax.Array:
    """W1's start (rows 0.5, 0.25) and its depth-3 analogue (rows 0.5, 0.5, 0.25)."""
    return jnp.stack([jnp.full(100, r) for r in [0.5] * (depth - 1) + [0.25]])


def relative_errors(estimates, exact) -> np.ndarray:
    return np.abs(np.asarray(estimates, dtype=np.float64) - exact) / np.abs(exact)


@jax.jit
def _hessians(states, problem):
    return jax.vmap(noisydln.hessian, in_axes=(0, None))(states, problem)


def diagonal_spectra(states, problem) -> np.ndarray:
    """`eigvalsh` of the exact Hessians `[S, P]` (float64, of the states' own numbers)."""
    hessians = _hessians(jnp.asarray(states, jnp.float64), in_float64(problem))
    return np.linalg.eigvalsh(np.asarray(hessians))


@functools.partial(jax.jit, static_argnames="stops")
def _trajectories(problem, init, keys, sigmas, stops):
    def trajectory(key, sigma):
        def step(t, w):
            noisy = noisydln.perturbed_grad(jax.random.fold_in(key, t), w, problem, sigma)
            return w - 0.01 * noisy

        states, params = [], init
        for start, stop in zip((0, *stops[:-1]), stops, strict=True):
            params = jax.lax.fori_loop(start, stop, step, params)
            states.append(params)
        return jnp.stack(states)

    return jax.vmap(trajectory)(keys, sigmas)


@functools.cache
def w1_states(depth: int, stops=(10, 20)) -> jax.Array:
    """W1 states `[5 + 2 len(stops), depth, 100]`: the start, two random ones, and two
    stochastic-SAM trajectories (eta 0.01, sigma 0.1 and 0.3) after `stops` steps."""
    problem = w1_problem()
    init = w1_init(depth)
    key_random, key_noise = jax.random.split(jax.random.key(20250314))
    keys = jax.random.split(key_noise, 2)
    trained = _trajectories(problem, init, keys, jnp.array([0.1, 0.3]), stops)
    random = 0.6 * jax.random.normal(key_random, (2, depth, 100))
    return jnp.concatenate([init[None], random, trained.reshape((-1, depth, 100))])


def test_diagonal_hvp_vs_hessian_and_autodiff(key):
    problem = noisydln.make_problem(key, 30, 7)

    @jax.jit
    def three_ways(params, v):
        gradient = jax.grad(lambda p: noisydln.loss(p, problem))
        by_autodiff = jax.jvp(gradient, (params,), (v,))[1]  # forward over reverse
        by_matrix = (noisydln.hessian(params, problem) @ v.reshape(-1)).reshape(v.shape)
        return eigen.diagonal_hvp(params, problem)(v), by_matrix, by_autodiff

    for depth in (2, 3):
        k_params, k_v = jax.random.split(jax.random.fold_in(key, depth))
        hv, by_matrix, by_autodiff = three_ways(
            jax.random.normal(k_params, (depth, 7)), jax.random.normal(k_v, (depth, 7))
        )
        np.testing.assert_allclose(hv, by_matrix, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hv, by_autodiff, rtol=1e-12, atol=1e-12)
        assert not np.allclose(1.05 * hv, by_matrix, rtol=1e-12, atol=1e-12)


def test_lanczos_vs_eigvalsh_after_all_steps(key):
    """With full reorthogonalisation, P steps give every eigenvalue of a P x P matrix; the
    bisection of `largest_ritz_value` gives the same top as `eigvalsh`, 5 steps do not."""
    a = jax.random.normal(key, (30, 30))
    matrix = a + a.T

    @jax.jit
    def every_way(matrix):
        tridiagonal = lanczos.lanczos(lambda v: matrix @ v, 30, num_iterations=45)  # cut to 30
        too_few = lanczos.lanczos(lambda v: matrix @ v, 30, num_iterations=5)
        largest_abs = eigen.top_abs_eigenvalue(lambda v: matrix @ v, 30, num_iterations=30)
        return (tridiagonal, lanczos.ritz_values(tridiagonal),
                lanczos.largest_ritz_value(tridiagonal), largest_abs,
                lanczos.largest_ritz_value(too_few))  # fmt: skip

    tridiagonal, values, largest, largest_abs, too_few = every_way(matrix)
    assert tridiagonal.diagonal.shape == (30,)
    exact = np.linalg.eigvalsh(np.asarray(matrix))
    np.testing.assert_allclose(values, exact, rtol=0, atol=1e-10)
    assert abs(float(largest) - exact[-1]) < 1e-10
    assert abs(float(largest_abs) - np.max(np.abs(exact))) < 1e-10
    assert abs(float(too_few) - exact[-1]) > 1e-3


def test_lanczos_invariant_subspace_is_finite():
    """A start inside an invariant subspace ends the Krylov space early: no NaN, and the
    padding leaves the Ritz values inside the spectrum (the top one, 4, cannot be found)."""
    matrix = jnp.diag(jnp.array([1.0, 2.0, 3.0, 4.0, -5.0]))
    start = jnp.array([0.0, 1.0, 1.0, 0.0, 0.0])  # two eigenvectors: 2 and 3
    # the diagonal network's recurrence: Sigma = I, b = 0, W = 1: blocks [[2, 4], [4, 2]] per
    # coordinate; a start on one coordinate spans a 2-dimensional invariant space (6 and -2)
    problem = noisydln.problem_from_data(np.eye(3) * np.sqrt(3.0), np.zeros(3))
    on_one = jnp.zeros((2, 3)).at[0, 0].set(1.0)

    @jax.jit
    def every_way(matrix, start, problem, on_one):
        generic = [
            lanczos.ritz_values(
                lanczos.lanczos(
                    lambda v: matrix @ v,
                    5,
                    num_iterations=5,
                    start=start,
                    reorthogonalize=reorthogonalize,
                )  # fmt: skip
            )
            for reorthogonalize in (True, False)
        ]
        zero = eigen.top_eigenvalue(lambda v: 0 * v, 5, num_iterations=5)
        tridiagonal = eigen.diagonal_lanczos(jnp.ones((2, 3)), problem, 6, on_one)
        top = eigen.diagonal_top_eigenvalue(jnp.ones((2, 3)), problem, 6, on_one)
        return generic, zero, tridiagonal, top

    generic, zero, tridiagonal, top = every_way(matrix, start, problem, on_one)
    for values in generic:
        assert np.all(np.isfinite(values))
        assert float(values[-1]) == pytest.approx(3.0, abs=1e-12)
        assert float(values[0]) == pytest.approx(2.0, abs=1e-12)
    assert float(zero) == 0.0
    values = np.asarray(lanczos.ritz_values(tridiagonal))
    assert np.all(np.isfinite(values)) and np.all(tridiagonal.off_diagonal[1:] == 0)
    assert values[-1] == pytest.approx(6.0, abs=1e-12) and values[0] == pytest.approx(-2.0)
    assert float(top) == pytest.approx(6.0, abs=1e-12)


def test_top_eigenvalue_bad_input():
    with pytest.raises(ValueError, match="num_iterations"):
        eigen.top_eigenvalue(lambda v: v, 4, num_iterations=0)
    with pytest.raises(ValueError, match="start"):
        eigen.top_eigenvalue(lambda v: v, 4, num_iterations=2, start=jnp.ones(3))
    with pytest.raises(ValueError, match="dim_or_like"):
        eigen.top_eigenvalue(lambda v: v, 0, num_iterations=2)
    problem = noisydln.make_problem(jax.random.key(0), 10, 3)
    with pytest.raises(ValueError, match="num_iterations"):
        eigen.diagonal_top_eigenvalue(jnp.ones((2, 3)), problem, 2.5)
    with pytest.raises(ValueError, match="start"):
        eigen.diagonal_top_eigenvalue(jnp.ones((2, 3)), problem, 4, jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="params"):
        eigen.diagonal_top_eigenvalue(jnp.ones((2, 4)), problem)


@functools.partial(jax.jit, static_argnums=2)
def _tops(params, problem, num_iterations):
    return jax.vmap(eigen.diagonal_top_eigenvalue, in_axes=(0, None, None))(
        params, problem, num_iterations
    )


def numpy_lanczos_top(matrix: np.ndarray, start: np.ndarray, steps: int) -> float:
    """The largest Ritz value of `steps` Lanczos steps (full reorthogonalisation) in NumPy."""
    basis = [start.ravel() / np.linalg.norm(start)]
    for _ in range(steps - 1):
        w = matrix @ basis[-1]
        for v in basis + basis:  # twice
            w = w - (v @ w) * v
        basis.append(w / np.linalg.norm(w))
    v = np.stack(basis)
    return float(np.linalg.eigvalsh(v @ matrix @ v.T)[-1])


def check_diagonal_states(states, dtype):
    """The recorder's Lanczos on `states` within tolerance, and the rejected errors."""
    problem, count = w1_problem(dtype), eigen.RECORD_ITERATIONS
    params = states.astype(dtype)
    spectra = diagonal_spectra(params, problem)  # of the rounded numbers
    rtol = rtol_for(dtype, 100, count)
    estimates = _tops(params, problem, count)
    assert estimates.dtype == dtype
    assert np.max(relative_errors(estimates, spectra[:, -1])) <= rtol
    assert np.min(relative_errors(spectra[:, -2], spectra[:, -1])) > 10 * rtol
    hessians = np.asarray(_hessians(jnp.asarray(params, jnp.float64), in_float64(problem)))
    starts = np.asarray(jax.jit(jax.vmap(eigen.diagonal_start, in_axes=(0, None)))(params, problem))
    too_few = [numpy_lanczos_top(h, v, 5) for h, v in zip(hessians, starts, strict=True)]
    assert np.max(relative_errors(too_few, spectra[:, -1])) > 10 * rtol
    off = problem._replace(xty=1.05 * problem.xty)  # the curvature term -r q is 5 % off
    wrong = _tops(params, off, count)
    assert np.max(relative_errors(wrong, spectra[:, -1])) > 10 * rtol


def test_blocks_traced_once_on_a_cpu_and_the_same_numbers_as_the_switch(monkeypatch):
    """`batching.in_blocks` where the default platform is the CPU traces the kernel once (no
    platform switch); with the switch (as where an accelerator is the default) it is traced
    twice, and lowered for the CPU it gives the same numbers: 10 states in blocks of 4, the
    last one padded."""
    from noisydln import batching

    if jax.default_backend() != "cpu":
        pytest.skip("the direct path is taken where the CPU is the default platform")

    traces = []

    def kernel(states, scale):  # a per-state function of the batch [N, 3]
        traces.append(states[0].shape)
        return (jnp.sin(states[0]) * scale,)

    states = (jnp.arange(30.0).reshape(10, 3),)
    run = jax.jit(lambda s, c: batching.in_blocks(kernel, s, c, 4))
    direct = run(states, 2.0)[0]
    assert traces == [(4, 3)]  # one trace, of one block
    np.testing.assert_array_equal(direct, jnp.sin(states[0]) * 2.0)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    switched = jax.jit(lambda s, c: batching.in_blocks(kernel, s, c, 4))(states, 2.0)[0]
    assert sorted(traces) == [(4, 3), (4, 3), (10, 3)]  # both branches traced
    np.testing.assert_array_equal(switched, direct)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_diagonal_top_eigenvalue_vs_eigvalsh(dtype):
    """The recorder's cold Lanczos (`diagonal_top_eigenvalue`, `RECORD_ITERATIONS` steps) on W1
    states at depth 2 (the default suite checks the recorded values, cold and warm, against
    `eigvalsh` along W1 trajectories in float64, and 6 states in float32 in
    `test_top_eigenvalue_same_numbers_whatever_the_batch`)."""
    check_diagonal_states(w1_states(2), dtype)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_diagonal_top_eigenvalue_vs_eigvalsh_long(depth, dtype):
    """The same at depth 2 and 3 on 13 states, up to 2000 steps of stochastic SAM."""
    check_diagonal_states(w1_states(depth, stops=(10, 20, 100, 2000)), dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.float64, marks=pytest.mark.slow)])
def test_top_eigenvalue_same_numbers_whatever_the_batch(key, dtype):
    """Under `vmap` a CPU computes the recorded eigenvalue in blocks of `record_block(d)`
    states (`lax.map`; 96 for d = 100 in float32 with a 48 KiB L1 cache): 224 states in two
    nested levels of `vmap` (flattened into one batch, in blocks) and in batches of 16 (less
    than a block: no blocks) give the same bits, within tolerance of `eigvalsh`."""
    problem = jax.tree.map(lambda x: x.astype(dtype), noisydln.make_problem(key, 120, 100))
    params = jax.random.normal(jax.random.fold_in(key, 1), (224, 2, 100), dtype)
    top = jax.jit(jax.vmap(eigen.diagonal_top_eigenvalue, in_axes=(0, None)))
    nested = jax.jit(
        jax.vmap(jax.vmap(eigen.diagonal_top_eigenvalue, in_axes=(0, None)), (0, None))
    )
    assert 16 <= eigen.record_block(100, dtype) < params.shape[0]
    in_blocks = np.asarray(nested(params.reshape(7, 32, 2, 100), problem)).ravel()
    in_16 = np.concatenate([top(p, problem) for p in params[:48].reshape(3, 16, 2, 100)])
    np.testing.assert_array_equal(in_16, in_blocks[:48])
    exact = diagonal_spectra(params[:6], problem)[:, -1]
    assert np.max(relative_errors(in_blocks[:6], exact)) <= rtol_for(dtype, 100, 40)


@pytest.mark.slow
def test_top_eigenvalue_of_a_batch_of_problems(key):
    """A batch of problems is vmapped as it is (no flattening): each problem's value."""
    params = jax.random.normal(jax.random.fold_in(key, 1), (3, 2, 7))
    problems = jax.vmap(lambda k: noisydln.make_problem(k, 30, 7))(jax.random.split(key, 3))
    per_problem = jax.jit(jax.vmap(eigen.diagonal_top_eigenvalue))(params, problems)
    for i in range(3):
        one = jax.tree.map(lambda x, i=i: x[i], problems)
        exact = diagonal_spectra(params[i : i + 1], one)[0, -1]
        assert relative_errors(per_problem[i], exact) <= F64_RTOL


@pytest.mark.parametrize(
    "widths,dtype",
    [((5,), jnp.float32), pytest.param((4, 3), jnp.float64, marks=pytest.mark.slow)],
    ids=["depth2-f32", "depth3-f64"],
)
def test_dense_top_eigenvalue_vs_eigvalsh(key, widths, dtype):
    """Dense networks (d = 6) at a random start and after 100 steps of gradient descent:
    `dense_top_eigenvalue` (the plain recurrence, `P` steps: the default count, which exceeds
    `P` here and is cut to it) and the products against the Hessian matrix."""
    problem64 = noisydln.make_problem(key, 40, 6, k=3)
    problem = noisydln.problem_from_data(problem64.X.astype(dtype), problem64.y.astype(dtype))
    start = dense.init_params(jax.random.fold_in(key, 1), 6, widths, 0.5, dtype)

    def gd(_, params):
        return jax.tree.map(lambda x, g: x - 0.02 * g, params, dense.grad(params, problem))

    trained = jax.jit(lambda p: jax.lax.fori_loop(0, 100, gd, p))(start)
    size = dense.flatten(start).size
    assert size <= eigen.RECORD_ITERATIONS
    rtol = rtol_for(dtype, max(6, *widths), size)
    top = jax.jit(eigen.dense_top_eigenvalue, static_argnums=2)
    hessian = jax.jit(lambda p: dense.hessian(p, in_float64(problem)))
    v = dense.init_params(jax.random.fold_in(key, 2), 6, widths, 1.0, dtype)
    hv = dense.flatten(eigen.dense_hvp(start, problem)(v))  # the products themselves
    by_matrix = hessian(tuple(w.astype(jnp.float64) for w in start)) @ dense.flatten(v)
    np.testing.assert_allclose(hv, by_matrix, rtol=rtol, atol=rtol * np.max(np.abs(by_matrix)))
    first = np.asarray(lanczos.default_start(size, jnp.float64))  # the start: 1 Lanczos step
    for params in (start, trained):
        matrix = np.asarray(hessian(tuple(w.astype(jnp.float64) for w in params)))
        exact = np.linalg.eigvalsh(matrix)
        estimate = top(params, problem, eigen.RECORD_ITERATIONS)
        assert estimate.dtype == dtype
        assert relative_errors(estimate, exact[-1]) <= rtol
        assert relative_errors(exact[-2], exact[-1]) > 10 * rtol
        assert relative_errors(first @ matrix @ first, exact[-1]) > 10 * rtol


def numpy_params(beta: np.ndarray, imbalance: np.ndarray) -> np.ndarray:
    """Parameters with the recorded product and imbalances (`w_l^2 - w_1^2`), `[depth, d]`.

    `x = w_1^2` is the root of `x prod_l (x + Delta_l) = beta^2` above `max(0, -Delta_l)`
    (the left side increases there). Signs: `w_1, ..., w_{L-1} >= 0`, `w_L` has beta's sign;
    flipping the signs of two layers of one coordinate is an orthogonal similarity of the
    Hessian, so every factorisation of the record has the same spectrum.
    """
    first = np.empty_like(beta)
    for i, (b, deltas) in enumerate(zip(beta, imbalance.T, strict=True)):
        poly = np.polynomial.Polynomial([0.0, 1.0])
        for delta in deltas:
            poly = poly * np.polynomial.Polynomial([delta, 1.0])
        roots = (poly - b**2).roots()
        real = roots[np.abs(roots.imag) <= 1e-9 * (1 + np.abs(roots))].real
        first[i] = np.max(real[real >= max(0.0, *(-deltas))], initial=0.0)
    squares = np.concatenate([first[None], first[None] + imbalance])
    layers = np.sqrt(np.maximum(squares, 0.0))
    layers[-1] = np.sign(beta) * layers[-1]
    return layers


def test_recorded_top_eigenvalue_vs_eigvalsh_of_recorded_states(key):
    """`run_grid` records `top_eigenvalue` (depth 3: the curvature couples three layers) at
    every record; the states are rebuilt from the recorded `beta` and `imbalance` alone (an
    independent route: no noise is redrawn) and their Hessians' spectra computed by NumPy."""
    problem = noisydln.make_problem(key, 40, 10, k=3)
    config = noisydln.SimConfig(
        depth=3, num_steps=30, record_every=10, eta=0.02, init=0.8,
        quantities=("beta", "imbalance", "top_eigenvalue"),
    )  # fmt: skip
    result = noisydln.run_grid(
        key, problem, config, num_seeds=16, sigmas=[0.3], keep_trajectories=True
    )
    kept = {k: np.asarray(v[0, 0, 0, :2]) for k, v in result.trajectories.items()}  # 2 seeds
    records = [(s, r) for s in range(2) for r in range(kept["beta"].shape[1])]
    states = [numpy_params(kept["beta"][s, r], kept["imbalance"][s, r]) for s, r in records]
    for (s, r), params in zip(records, states, strict=True):
        np.testing.assert_allclose(np.prod(params, axis=0), kept["beta"][s, r], rtol=1e-12)
        imbalance = params[1:] ** 2 - params[:1] ** 2
        np.testing.assert_allclose(imbalance, kept["imbalance"][s, r], rtol=1e-12, atol=1e-12)
    exact = diagonal_spectra(np.stack(states), problem)[:, -1]
    recorded = np.array([kept["top_eigenvalue"][s, r] for s, r in records])
    assert np.max(relative_errors(recorded, exact)) <= F64_RTOL
    assert np.ptp(recorded) > 1.0  # the eigenvalue moves: not a constant


@functools.partial(jax.jit, static_argnames="config")
def _recorded_along(problem, keys, sigmas, config):
    """`(top_eigenvalue, params, carried Ritz vector)` at every record `[S, C, R, ...]` of the
    trajectories of `keys` x `sigmas`, by the recorder's own path (`simulate.observe` in
    `simulate.scan_records`, batched like a grid chunk)."""
    rule, family, dtype = config.rule(), config.family(), problem.gram.dtype
    params0 = jnp.asarray(config.init, dtype)

    def one(key, sigma):
        hyper = Hyper(sigma=sigma, eta=jnp.asarray(config.eta, dtype))

        def record(state, _, step, memory):
            values, memory = observe(
                rule, key, state, problem, hyper, step, config.quantities, family, memory
            )
            return (values["top_eigenvalue"], state.params, memory["top_eigenvector"]), memory

        def steps(state, start, stop):
            return advance(rule, key, state, problem, hyper, start, stop)

        return scan_records(config.init_state(params0), config.record_steps(), steps, record)

    return jax.vmap(lambda k: jax.vmap(lambda s: one(k, s))(sigmas))(keys)


@functools.partial(jax.jit, static_argnums=3)
def _realistic_errors(params, carried, problem, num_iterations):
    """Two ways to get the warm start wrong, `[N]` each: `num_iterations` Lanczos steps from
    each record's carried vector and nothing more, and as many from `diagonal_start`."""

    def both(p, s):
        warm = eigen.diagonal_top_eigenpair(p, problem, num_iterations, s, vector=False)
        return warm, eigen.diagonal_top_eigenvalue(p, problem, num_iterations)

    return jax.vmap(both)(params, carried)


@pytest.mark.parametrize("dtype", [jnp.float64, pytest.param(jnp.float32, marks=pytest.mark.slow)])
def test_warm_started_records_vs_eigvalsh_along_trajectories(dtype):
    """The recorded `top_eigenvalue` along W1 trajectories (stochastic SAM, sigma 0.1 and 0.3,
    2 seeds, 200 steps recorded every 10: the first record cold, the later ones warm from the
    previous record's Ritz vector, `eigen.WARM_ITERATIONS` steps and `RECORD_ITERATIONS` more
    where the residual is large, as in the hard records 10 to 40 steps in) against `eigvalsh`
    of the exact Hessian of the very parameters recorded. Rejected: the warm runs without that
    fallback, and `WARM_ITERATIONS` cold steps from `diagonal_start`."""
    problem = w1_problem(dtype)
    config = noisydln.SimConfig(
        num_steps=200, record_every=10, eta=0.01, init=tuple(map(tuple, np.asarray(w1_init(2)))),
        quantities=("top_eigenvalue",),
    )  # fmt: skip
    keys = jax.random.split(jax.random.key(5), 2)
    tops, params, carried = _recorded_along(problem, keys, jnp.array([0.1, 0.3], dtype), config)
    assert tops.dtype == dtype and tops.shape == (2, 2, 21)
    flat = params.reshape(-1, 2, 100)
    spectra = diagonal_spectra(flat, problem)
    exact = spectra[:, -1].reshape(tops.shape)
    rtol = rtol_for(dtype, 100, eigen.RECORD_ITERATIONS)
    assert np.max(relative_errors(tops, exact)) <= rtol
    previous = carried[:, :, :-1].reshape(-1, 2, 100)  # each record's start: the one before
    later = params[:, :, 1:].reshape(-1, 2, 100)
    without, cold = _realistic_errors(later, previous, problem, eigen.WARM_ITERATIONS)
    assert np.max(relative_errors(without, exact[:, :, 1:].ravel())) > 10 * rtol
    assert np.max(relative_errors(cold, exact[:, :, 1:].ravel())) > 10 * rtol


@pytest.mark.slow
def test_warm_started_records_same_numbers_whatever_the_chunk(key):
    """The carried Ritz vectors leave a trajectory's recorded `top_eigenvalue` the same, bit
    for bit, in one chunk of 16 seeds and in chunks of 8 (other blocks of the recorder, other
    neighbours in them)."""
    problem = noisydln.make_problem(key, 40, 10, k=3)
    config = noisydln.SimConfig(
        num_steps=60, record_every=10, eta=0.02, init=0.8, quantities=("top_eigenvalue",)
    )
    runs = [
        noisydln.run_grid(
            key, problem, config, num_seeds=16, sigmas=[0.1, 0.3], chunk_size=chunk,
            keep_trajectories=True,
        ).trajectories["top_eigenvalue"]
        for chunk in (16, 8)
    ]  # fmt: skip
    np.testing.assert_array_equal(runs[0], runs[1])
