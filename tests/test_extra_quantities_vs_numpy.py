"""The extra recorded quantities (`trace_gap`, `sharpness_gap`, `basin`) against NumPy formulas of
docs/theory.md s2 and s4, at depth 2 and depth 3, in float64 and float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln

EXTRAS = ("beta", "hessian_trace", "sharpness", "trace_gap", "sharpness_gap", "basin")


def numpy_root(z: np.ndarray, sigma: float, depth: int) -> np.ndarray:
    """The non-zero stationary point `sign(z) a_+^L` of a diagonal design (0 where none), by
    the roots of `(a^2 + sigma^2)^(L-1) - |z| a^(L-2)`."""
    if depth == 2:
        return np.sign(z) * np.maximum(np.abs(z) - sigma**2, 0.0)
    out = np.zeros_like(z)
    for i, target in enumerate(z):
        poly = np.polynomial.Polynomial([sigma**2, 0.0, 1.0]) ** (depth - 1)
        poly = poly - abs(target) * np.polynomial.Polynomial([0.0] * (depth - 2) + [1.0])
        real = [r.real for r in poly.roots() if abs(r.imag) < 1e-9 and r.real > 0]
        out[i] = np.sign(target) * max(real) ** depth if real else 0.0
    return out


def run(depth: int, dtype, sigma: float):
    problem = noisydln.make_problem(
        jax.random.key(7), 24, 5, design="diagonal", diag=np.array([1.0, 2.0, 0.5, 1.0, 1.5]),
        beta_star=np.array([1.2, -0.9, 0.4, 0.05, 0.0]), dtype=dtype,
    )  # fmt: skip
    init = np.full((depth, 5), 0.7)
    init[0, 1] = -0.2  # an unbalanced start, one coordinate with the target's sign flipped
    init[0, 2] = -0.7
    config = noisydln.SimConfig(
        depth=depth, num_steps=300, record_every=50, eta=0.02, init=init, quantities=EXTRAS
    )
    result = noisydln.run_grid(
        jax.random.key(8), problem, config, num_seeds=16, sigmas=[sigma], keep_trajectories=True
    )
    return problem, {k: np.asarray(v[0, 0, 0], dtype=float) for k, v in result.trajectories.items()}


@pytest.mark.parametrize(
    "depth,dtype",
    [(2, jnp.float32), pytest.param(3, jnp.float64, marks=pytest.mark.slow), (3, jnp.float32)],
)
def test_extra_quantities_vs_numpy_formulas(depth, dtype):
    sigma = 0.4
    problem, kept = run(depth, dtype, sigma)
    diag = np.asarray(problem.gram_diag, dtype=float)
    beta = kept["beta"]  # [seeds, R, d]
    rtol = 1e-10 if dtype == jnp.float64 else 2e-4
    min_trace = 2 * depth * np.sum(diag * np.abs(beta) ** (2 * (depth - 1) / depth), axis=-1)
    np.testing.assert_allclose(
        kept["trace_gap"], kept["hessian_trace"] - min_trace, rtol=rtol, atol=rtol
    )
    min_sharpness = np.sum(
        diag * ((np.abs(beta) ** (2 / depth) + sigma**2) ** depth - beta**2), axis=-1
    )
    np.testing.assert_allclose(
        kept["sharpness_gap"], kept["sharpness"] - min_sharpness, rtol=rtol, atol=rtol
    )
    # the gaps are those of this depth: the depth-2 minimum would not match at depth 3
    if depth == 3:
        depth2_trace = 4 * np.sum(diag * np.abs(beta), axis=-1)
        assert np.max(np.abs(kept["hessian_trace"] - depth2_trace - kept["trace_gap"])) > 1e-2
    root = numpy_root(
        np.asarray(noisydln.theory.diagonal_target(problem), dtype=float), sigma, depth
    )
    nearer = (root != 0) & (np.abs(beta - root) < np.abs(beta))
    np.testing.assert_array_equal(kept["basin"], nearer.astype(float))
    assert 0 < kept["basin"].mean() < 1  # both basins occur, so the comparison has content
