"""A dense-network `run_grid` against an independent per-seed NumPy implementation with the same
noise: every kept trajectory of every recorded quantity, for stochastic SAM, one-layer SAM and SAM.

The NumPy side forms the matrix products explicitly (`beta^T = W_L ... W_1`, the loss from `X`
and `y`, the gradient `-a_l (B_(l-1) r)^T`, the moment recursions of docs/dense.md s2 for the
expected loss and the weighted gaps) in float64, and draws the same noise: step t of seed s
uses `noise.gaussian(fold_in(fold_in(key, s), t), (P,))` cut into the matrices `W_1, ..., W_L`
(`algorithms.draw`). Tolerances fixed in advance: float64 runs agree to rtol 1e-10 (the
products are summed in another order); float32 runs to 1e-4 of each quantity's largest value
(float32 rounding, 1.2e-7 per operation, grown over 20 steps of a contracting map).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dense_numpy import cut, np_after_before, np_moments

import noisydln
from noisydln import dense, noise, quantities

D, NUM_STEPS, RECORD_EVERY, ETA, SIGMA = 4, 20, 10, 0.05, 0.3
QUANTITIES = (
    "beta",
    "imbalance_norm",
    "imbalance_trace",
    "weighted_gap_norm",
    "weighted_gap_trace",
    "loss",
    "expected_loss",
    "sharpness",
    "hessian_trace",
)
TOLERANCE = {"float64": (1e-10, 1e-12), "float32": (0.0, 1e-4)}  # (rtol, atol x largest value)


def np_grad(ws, gram, xty):
    after, before = np_after_before(ws)
    r = 2 * (xty - gram @ after[0])
    return [-np.outer(after[k + 1], before[k] @ r) for k in range(len(ws))]


def np_diagnostics(ws, beta, problem, sigma):
    """The shared diagnostics: the Hessian's top eigenvalue by `eigvalsh` of the closed-form
    Hessian (`dense.hessian`, checked against `jax.hessian` in test_dense_vs_autodiff), the rest
    from beta in NumPy."""
    with jax.enable_x64(True):
        problem64 = noisydln.problem_from_data(
            np.asarray(problem.X, np.float64), np.asarray(problem.y, np.float64)
        )
        hess = np.asarray(dense.hessian(tuple(jnp.asarray(w) for w in ws), problem64))
        limit = np.asarray(quantities.coordinate_limit(problem64, sigma, len(ws)))
    tolerance = float(quantities.support_tolerance(problem))
    return {
        "top_eigenvalue": np.linalg.eigvalsh(hess)[-1],
        "l1_norm": np.sum(np.abs(beta)),
        "support_size": float(np.sum(np.abs(beta) > tolerance)),
        "distance_to_limit": np.linalg.norm(beta - limit),
    }


def np_observe(ws, X, y, gram, xty, yty, sigma, problem=None):
    after, before = np_after_before(ws)
    beta = after[0]
    loss = np.mean((y - X @ beta) ** 2)
    inputs, outputs = np_moments(ws, gram, sigma)
    expected = yty - 2 * xty @ beta + inputs[-1][0, 0]
    imbalances = [ws[k + 1].T @ ws[k + 1] - ws[k] @ ws[k].T for k in range(len(ws) - 1)]
    gaps = [
        np.trace(inputs[k]) * ws[k + 1].T @ outputs[k + 2] @ ws[k + 1]
        - np.trace(outputs[k + 2]) * ws[k] @ inputs[k] @ ws[k].T
        for k in range(len(ws) - 1)
    ]
    trace = 2 * sum(
        np.sum(after[k + 1] ** 2) * np.trace(before[k] @ gram @ before[k].T) for k in range(len(ws))
    )
    shared = np_diagnostics(ws, beta, problem, sigma) if problem is not None else {}
    return shared | {
        "beta": beta,
        "imbalance_norm": np.array([np.linalg.norm(m) for m in imbalances]),
        "imbalance_trace": np.array([np.trace(m) for m in imbalances]),
        "weighted_gap_norm": np.array([np.linalg.norm(m) for m in gaps]),
        "weighted_gap_trace": np.array([np.trace(m) for m in gaps]),
        "loss": loss,
        "expected_loss": expected,
        "sharpness": expected - loss,
        "hessian_trace": trace,
    }


def np_direction(rule, ws, key, sigma, gram, xty, dtype):
    """One rule's direction at `ws` with this step's key (docs of `noisydln.algorithms`)."""
    size = sum(w.size for w in ws)
    if rule == "stochastic_sam":
        xi = cut(np.asarray(noise.gaussian(key, (size,), dtype), np.float64), ws)
        return np_grad([w + sigma * x for w, x in zip(ws, xi, strict=True)], gram, xty)
    if rule == "one_layer_sam":
        key_layer, key_noise = jax.random.split(key)
        layer = int(jax.random.randint(key_layer, (), 0, len(ws)))
        xi = cut(np.asarray(noise.gaussian(key_noise, (size,), dtype), np.float64), ws)
        return np_grad(
            [w + sigma * (k == layer) * x for k, (w, x) in enumerate(zip(ws, xi, strict=True))],
            gram,
            xty,
        )
    g = np_grad(ws, gram, xty)  # sam: ascend along the normalised gradient
    norm = np.sqrt(sum(np.sum(v**2) for v in g))
    return np_grad([w + sigma * v / norm for w, v in zip(ws, g, strict=True)], gram, xty)


def reference_run(rule, problem, init, sigma, seed_key, dtype, diagnostics=False):
    X, y, gram, xty = (
        np.asarray(a, np.float64) for a in (problem.X, problem.y, problem.gram, problem.xty)
    )
    yty = float(problem.yty)
    ws = [np.asarray(w, np.float64) for w in init]
    records = [np_observe(ws, X, y, gram, xty, yty, sigma, problem if diagnostics else None)]
    for t in range(NUM_STEPS):
        g = np_direction(rule, ws, jax.random.fold_in(seed_key, t), sigma, gram, xty, dtype)
        ws = [w - ETA * v for w, v in zip(ws, g, strict=True)]
        if (t + 1) % RECORD_EVERY == 0:
            records.append(
                np_observe(ws, X, y, gram, xty, yty, sigma, problem if diagnostics else None)
            )
    return {k: np.array([r[k] for r in records]) for k in records[0]}


CASES = [("stochastic_sam", (3, 2), "float64", QUANTITIES)]  # (rule, widths, dtype, quantities)
DIAGNOSTICS = ("beta", "top_eigenvalue", "l1_norm", "support_size", "distance_to_limit")
SLOW_CASES = [
    ("stochastic_sam", (3, 2), "float64", DIAGNOSTICS),
    ("one_layer_sam", (3,), "float32", ("beta", "loss", "imbalance_trace", "weighted_gap_trace")),
    ("sam", (2, 3), "float64", ("beta", "loss", "imbalance_norm", "sharpness")),
    ("stochastic_sam", (3, 2), "float32", QUANTITIES),
    ("one_layer_sam", (2, 2, 3), "float64", QUANTITIES),
    ("sam", (3,), "float32", QUANTITIES),
]


@pytest.mark.parametrize(
    "rule,widths,dtype,quantities",
    CASES + [pytest.param(*case, marks=pytest.mark.slow) for case in SLOW_CASES],
)
def test_kept_dense_trajectories_vs_numpy_with_the_same_noise(key, rule, widths, dtype, quantities):
    with jax.enable_x64(dtype == "float64"):
        drawn = noisydln.make_problem(key, 30, D, k=2, noise_std=0.1)
        problem = noisydln.problem_from_data(np.asarray(drawn.X, dtype), np.asarray(drawn.y, dtype))
        config = noisydln.SimConfig(
            algorithm=rule, network="dense", widths=widths, num_steps=NUM_STEPS,
            record_every=RECORD_EVERY, eta=ETA, init=0.6, quantities=quantities,
        )  # fmt: skip
        result = noisydln.run_grid(
            key, problem, config, num_seeds=2, sigmas=[0.0, SIGMA], keep_trajectories=True
        )
        base, scale = config.base_init(D, jnp.dtype(dtype))
        init = [scale * np.asarray(w, np.float64) for w in base]
        references = {  # in the run's x64 mode: one_layer_sam's layer is drawn as the engine draws it
            (i, seed): reference_run(
                rule,
                problem,
                init,
                sigma,
                jax.random.fold_in(key, seed),
                jnp.dtype(dtype),
                diagnostics="top_eigenvalue" in quantities,
            )
            for i, sigma in enumerate((0.0, SIGMA))
            for seed in range(2)
        }
    rtol, atol = TOLERANCE[dtype]
    for (i, seed), expected in references.items():
        for name in quantities:
            got = np.asarray(result.trajectories[name][i, 0, 0, seed], np.float64)
            scale_of = max(1.0, float(np.max(np.abs(expected[name]))))
            np.testing.assert_allclose(
                got, expected[name], rtol=rtol, atol=atol * scale_of, err_msg=name
            )
