"""A dense-network `run_grid` against an independent per-seed NumPy implementation with the same
noise, for the rules that tests/test_dense_grid_vs_numpy_reference.py does not cover: `gd`,
`expected_gd`, `unnormalized_sam`, `per_example_sam`, `random_sam`, `anti_pgd`,
`gradient_noise`, `label_noise_gd`, `minibatch_sgd`, and stochastic SAM and GD with weight decay
and with the cosine and step schedules. Every kept trajectory of `beta`, `loss` and
`imbalance_trace` (records at steps 0, 10, 20) is compared, seed by seed and sigma by sigma.

The NumPy side writes the rules of `noisydln.algorithms` out in float64 with explicit matrix
products from `X` and `y` (not from the problem's `Sigma` and `b`): `beta^T = W_L ... W_1`, the
gradient of `(1/m) ||y - X beta||^2` on any `m` rows as `-a_l (B_(l-1) r)^T` with
`r = (2/m) X^T (y - X beta)`, each example's gradient from its own row, the expected gradient
`2 G_l W_l N_(l-1) - 2 a_l (B_(l-1) b)^T` from the moment recursions of docs/dense.md s2, the
step sizes `eta f(t)` from the schedule formulas of `noisydln.schedules` (cosine
`alpha + (1 - alpha) (1 + cos(pi t / T)) / 2`, step `factor^#{b <= t}`), weight decay as
`W - eta_t (g + lambda W)` and anti-PGD as `W - eta grad L(W) + sigma (xi_(t+1) - xi_t)`. It
draws only the random numbers through the library, from the same keys: step t of seed s uses
`k = fold_in(fold_in(key, s), t)`, the parameter noise is `noise.gaussian(k, (P,))` cut into
`W_1, ..., W_L` row-major (`updates.draw`), the label noise `noise.gaussian(k, (n,))`, the
minibatch `jax.random.choice(k, n, (batch_size,), replace=False)`.

Tolerances, fixed in advance as in test_dense_grid_vs_numpy_reference: float64 runs agree to rtol
1e-10 with atol 1e-12 times the quantity's largest value (at least 1) (the same products summed
in another order, ~1e-16 per operation, grown over 20 steps of a contracting map); float32 runs
(NumPy in float64 from the float32 data, start and noise) to 1e-4 of the largest value (float32
rounding, 1.2e-7 per operation, grown over 20 steps). `test_check_rejects_a_five_percent_error`
shows that the float64 check is sharp: a reference with sigma, rho, lambda or the schedule's
final factor 5 % off misses by more than 100 tolerances (in fact by 1e7 to 1e9).

The default run compiles three grids (anti-PGD, 1-SAM, stochastic SAM with weight decay and the
cosine schedule, all float64) and reuses them for the planted errors; every other rule, depths 3
and 4, the step schedule and the float32 runs are marked slow (`-m slow`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dense_numpy import cut, np_after_before, np_moments

import noisydln
from noisydln import noise

D, N, NUM_STEPS, RECORD_EVERY, ETA = 4, 30, 20, 10, 0.05
QUANTITIES = ("beta", "loss", "imbalance_trace")
TOLERANCE = {"float64": (1e-10, 1e-12), "float32": (0.0, 1e-4)}  # (rtol, atol x largest value)
SIGMA = 0.3
SIGMAS = {  # the rule's noise scale in the grid's second cell (the first is 0)
    "unnormalized_sam": 0.05,  # ascent step rho along grad L
    "per_example_sam": 0.02,  # ascent step rho along grad l_k, n times grad L's share
    "random_sam": 0.3,  # radius
}
BATCH_SIZE = 8
WEIGHT_DECAY = 0.01
SCHEDULES = {
    "cosine": {"schedule": "cosine", "schedule_alpha": 0.2},
    "step": {"schedule": "step", "schedule_boundaries": (5, 15), "schedule_factor": 0.5},
}


# ---------------------------------------------------------------- NumPy reference


def np_grad(ws, X, y):
    """The gradient of `(1/m) ||y - X beta||^2` on the `m` rows of `X`, one matrix per layer."""
    after, before = np_after_before(ws)
    r = 2 * X.T @ (y - X @ after[0]) / len(y)
    return [-np.outer(after[k + 1], before[k] @ r) for k in range(len(ws))]


def np_expected_grad(ws, X, y, sigma):
    """`dL_R/dW_l = 2 G_l W_l N_(l-1) - 2 a_l (B_(l-1) b)^T` (docs/dense.md s2)."""
    gram, xty = X.T @ X / len(y), X.T @ y / len(y)
    inputs, outputs = np_moments(ws, gram, sigma)
    after, before = np_after_before(ws)
    return [
        2 * outputs[k + 1] @ ws[k] @ inputs[k] - 2 * np.outer(after[k + 1], before[k] @ xty)
        for k in range(len(ws))
    ]


def plus(ws, scale, vs):
    return [w + scale * v for w, v in zip(ws, vs, strict=True)]


def np_step_sizes(
    eta, num_steps, schedule=None, schedule_alpha=0.0, schedule_boundaries=(), schedule_factor=0.1
):
    """`eta f(t)`, `t = 0..num_steps-1`, from the formulas of `schedules.make_schedule`."""
    t = np.arange(num_steps)
    if schedule == "cosine":
        return eta * (
            schedule_alpha + (1 - schedule_alpha) * (1 + np.cos(np.pi * t / num_steps)) / 2
        )
    if schedule == "step":
        return eta * schedule_factor ** np.array(
            [sum(t_ >= b for b in schedule_boundaries) for t_ in t]
        )
    return np.full(num_steps, eta)


def np_direction(rule, ws, key, sigma, X, y, dtype, batch_size):
    """`(direction, xi)`: the rule's direction at `ws` with this step's key, and anti-PGD's new
    perturbation `xi_(t+1)` (None for the other rules)."""
    gaussian = lambda size: np.asarray(noise.gaussian(key, (size,), dtype), np.float64)  # noqa: E731
    size = sum(w.size for w in ws)
    if rule == "gd":
        return np_grad(ws, X, y), None
    if rule == "expected_gd":
        return np_expected_grad(ws, X, y, sigma), None
    if rule == "stochastic_sam":
        return np_grad(plus(ws, sigma, cut(gaussian(size), ws)), X, y), None
    if rule == "unnormalized_sam":
        return np_grad(plus(ws, sigma, np_grad(ws, X, y)), X, y), None
    if rule == "per_example_sam":
        grads = [
            np_grad(plus(ws, sigma, np_grad(ws, X[k : k + 1], y[k : k + 1])), X[k : k + 1], y[k : k + 1])
            for k in range(len(y))
        ]  # fmt: skip
        return [np.mean([g[l] for g in grads], axis=0) for l in range(len(ws))], None
    if rule == "random_sam":
        u = gaussian(size)
        return np_grad(plus(ws, sigma / np.linalg.norm(u), cut(u, ws)), X, y), None
    if rule == "anti_pgd":
        return np_grad(ws, X, y), cut(gaussian(size), ws)
    if rule == "gradient_noise":
        return plus(np_grad(ws, X, y), sigma, cut(gaussian(size), ws)), None
    if rule == "label_noise_gd":
        return np_grad(ws, X, y + sigma * gaussian(len(y))), None
    if rule == "minibatch_sgd":
        rows = np.asarray(jax.random.choice(key, len(y), (batch_size,), replace=False))
        assert len(set(rows.tolist())) == batch_size
        return np_grad(ws, X[rows], y[rows]), None
    raise AssertionError(rule)


def np_observe(ws, X, y):
    after, _ = np_after_before(ws)
    return {
        "beta": after[0],
        "loss": np.mean((y - X @ after[0]) ** 2),
        "imbalance_trace": np.array(
            [np.sum(ws[k + 1] ** 2) - np.sum(ws[k] ** 2) for k in range(len(ws) - 1)]
        ),
    }


def reference_run(
    rule, problem, init, sigma, seed_key, dtype, etas, weight_decay=0.0, batch_size=None
):
    """The records of one trajectory, `{name: [num_records, ...]}`, in float64 NumPy."""
    X, y = (np.asarray(a, np.float64) for a in (problem.X, problem.y))
    ws = [np.asarray(w, np.float64) for w in init]
    xi = [np.zeros_like(w) for w in ws]  # anti-PGD's xi_0
    records = [np_observe(ws, X, y)]
    for t in range(len(etas)):
        key = jax.random.fold_in(seed_key, t)
        g, new_xi = np_direction(rule, ws, key, sigma, X, y, dtype, batch_size)
        ws = [w - etas[t] * (v + weight_decay * w) for w, v in zip(ws, g, strict=True)]
        if new_xi is not None:
            ws = [w + sigma * (a - b) for w, a, b in zip(ws, new_xi, xi, strict=True)]
            xi = new_xi
        if (t + 1) % RECORD_EVERY == 0:
            records.append(np_observe(ws, X, y))
    return {k: np.array([r[k] for r in records]) for k in records[0]}


# ---------------------------------------------------------------- the engine and the comparison


@functools.cache
def engine_run(key_data, rule, widths, dtype, options):
    """`(engine, problem, init)`: the kept trajectories `{name: [sigma, seed, record, ...]}` of a
    dense `run_grid` (sigmas 0 and the rule's, 2 seeds), the problem and the start in float64.
    Cached: a test of a planted error reuses the run of its rule's comparison."""
    key = jax.random.wrap_key_data(np.asarray(key_data, np.uint32))
    with jax.enable_x64(dtype == "float64"):
        drawn = noisydln.make_problem(key, N, D, k=2, noise_std=0.1)
        problem = noisydln.problem_from_data(np.asarray(drawn.X, dtype), np.asarray(drawn.y, dtype))
        config = noisydln.SimConfig(
            algorithm=rule, network="dense", widths=widths, num_steps=NUM_STEPS,
            record_every=RECORD_EVERY, eta=ETA, init=0.6, quantities=QUANTITIES, **dict(options),
        )  # fmt: skip
        result = noisydln.run_grid(
            key, problem, config, num_seeds=2, sigmas=[0.0, SIGMAS.get(rule, SIGMA)],
            keep_trajectories=True,
        )  # fmt: skip
        engine = {
            name: np.asarray(result.trajectories[name][:, 0, 0], np.float64) for name in QUANTITIES
        }
        base, scale = config.base_init(D, jnp.dtype(dtype))
    return engine, problem, [scale * np.asarray(w, np.float64) for w in base]


def run_both(key, rule, widths, dtype, options=None, reference_changes=None):
    """`(engine, references)`, `{name: [sigma, seed, record, ...]}`: `engine_run` and
    `reference_run` for both sigmas and seeds (with `reference_changes` to its sigma, weight
    decay or schedule options, to plant an error)."""
    options = dict(options or {})
    changes = dict(reference_changes or {})
    if rule == "minibatch_sgd":
        options["batch_size"] = BATCH_SIZE
    key_data = tuple(int(v) for v in np.asarray(jax.random.key_data(key)))
    engine, problem, init = engine_run(
        key_data, rule, tuple(widths), dtype, tuple(sorted(options.items()))
    )
    schedule = {k: v for k, v in options.items() if k.startswith("schedule")}
    schedule.update({k: v for k, v in changes.items() if k.startswith("schedule")})
    etas = np_step_sizes(ETA, NUM_STEPS, **schedule)
    sigma = SIGMAS.get(rule, SIGMA)
    with jax.enable_x64(
        dtype == "float64"
    ):  # the minibatch rows are drawn as the engine draws them
        runs = [
            [
                reference_run(
                    rule,
                    problem,
                    init,
                    s * changes.get("sigma_factor", 1.0),
                    jax.random.fold_in(key, seed),
                    jnp.dtype(dtype),
                    etas,
                    changes.get("weight_decay", options.get("weight_decay", 0.0)),
                    options.get("batch_size"),
                )  # fmt: skip
                for seed in range(2)
            ]
            for s in (0.0, sigma)
        ]
    references = {name: np.array([[r[name] for r in row] for row in runs]) for name in QUANTITIES}
    return engine, references


def misses(engine, references, dtype):
    """`{name: max |engine - reference| / (rtol |reference| + atol max(1, max |reference|))}`,
    computed per kept trajectory (sigma, seed); <= 1 passes."""
    rtol, atol = TOLERANCE[dtype]
    out = {}
    for name in QUANTITIES:
        got, expected = engine[name], references[name]
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        worst = 0.0
        for i in range(expected.shape[0]):
            for seed in range(expected.shape[1]):
                e, g = expected[i, seed], got[i, seed]
                bound = rtol * np.abs(e) + atol * max(1.0, float(np.max(np.abs(e))))
                worst = max(worst, float(np.max(np.abs(g - e) / bound)))
        out[name] = worst
    return out


# (rule, widths, dtype, SimConfig options). The default run compiles three grids, most of the
# file's time (4-9 s each on one core): anti-PGD (the rule with a noise state), 1-SAM
# (per-example gradients) and stochastic SAM with weight decay and the cosine schedule; the other
# rules, depths 3 and 4, the step schedule and every float32 case run with -m slow.
WD_COSINE = {"weight_decay": WEIGHT_DECAY, **SCHEDULES["cosine"]}
CASES = [
    ("anti_pgd", (3,), "float64", {}),
    ("per_example_sam", (3,), "float64", {}),
    ("stochastic_sam", (3,), "float64", WD_COSINE),
]
SLOW_CASES = [
    ("gd", (3,), "float64", {}),
    ("expected_gd", (3, 2), "float64", {}),
    ("unnormalized_sam", (3,), "float64", {}),
    ("random_sam", (3, 2), "float64", {}),
    ("gradient_noise", (3, 2), "float64", {}),
    ("label_noise_gd", (3,), "float64", {}),
    ("minibatch_sgd", (3, 2), "float64", {}),
    ("stochastic_sam", (3,), "float64", {"weight_decay": WEIGHT_DECAY}),
    ("stochastic_sam", (3, 2), "float64", SCHEDULES["cosine"]),
    ("gd", (3, 2), "float64", SCHEDULES["step"]),
    ("gd", (3,), "float64", {"weight_decay": WEIGHT_DECAY}),
    ("expected_gd", (2, 2, 3), "float64", {}),
    ("unnormalized_sam", (2, 3), "float64", {}),
    ("per_example_sam", (3, 2), "float64", {}),
    ("label_noise_gd", (3, 2), "float64", {}),
    ("stochastic_sam", (3, 2), "float64", WD_COSINE),
    ("stochastic_sam", (3, 2), "float64", {"weight_decay": WEIGHT_DECAY, **SCHEDULES["step"]}),
    ("anti_pgd", (3, 2), "float32", {}),
    ("minibatch_sgd", (3,), "float32", {}),
    ("gradient_noise", (3,), "float32", {}),
    ("random_sam", (3,), "float32", {}),
    ("label_noise_gd", (3, 2), "float32", {}),
    ("expected_gd", (3,), "float32", {}),
    ("stochastic_sam", (3, 2), "float32", WD_COSINE),
]


@pytest.mark.parametrize(
    "rule,widths,dtype,options",
    CASES + [pytest.param(*case, marks=pytest.mark.slow) for case in SLOW_CASES],
)
def test_kept_dense_trajectories_vs_numpy_with_the_same_noise(key, rule, widths, dtype, options):
    engine, references = run_both(key, rule, widths, dtype, options)
    for name in QUANTITIES:
        assert np.all(np.isfinite(references[name])), name
    worst = misses(engine, references, dtype)
    assert max(worst.values()) <= 1.0, worst


# (rule, widths, SimConfig options, planted error in the reference): the grids of CASES, reused
PLANTED = [
    ("anti_pgd", (3,), {}, {"sigma_factor": 1.05}),
    ("per_example_sam", (3,), {}, {"sigma_factor": 0.95}),
    ("stochastic_sam", (3,), WD_COSINE, {"weight_decay": 1.05 * WEIGHT_DECAY}),
    ("stochastic_sam", (3,), WD_COSINE, {"schedule_alpha": 0.21}),
]


@pytest.mark.parametrize("rule,widths,options,error", PLANTED)
def test_check_rejects_a_five_percent_error(key, rule, widths, options, error):
    """The reference with sigma, rho, lambda or the cosine's final factor 5 % off misses the
    float64 tolerance by more than 100 times on beta."""
    engine, references = run_both(key, rule, widths, "float64", options, error)
    assert misses(engine, references, "float64")["beta"] > 100
