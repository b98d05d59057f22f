"""The engine's one-step change of the dense imbalance against the flow law of docs/dense.md s3.

From a fixed start `W` (every seed the same), one stochastic-SAM step `W' = W - eta g`,
`g = grad L(W + sigma xi)`, changes `D_l = W_(l+1)^T W_(l+1) - W_l W_l^T` by
`eta dD_l/dt(W) + eta^2 (g_(l+1)^T g_(l+1) - g_l g_l^T)`: the flow rate `dD_l/dt = -4 sigma^2
(weighted gap)` is linear in the gradient and `E g = grad L_R`. The recorded
`imbalance_drift_residual = D(W') - D(W) - eta dD/dt(W)` (entry by entry) therefore has mean
`O(eta^2)`. Fixed before judging:

- allowance, per entry: `eta^2 E[||g_(l+1)||_F^2 + ||g_l||_F^2]` (each entry of `g^T g` is at
  most `||g||_F^2`), the expectation computed exactly by the 3-node Gauss-Hermite product rule
  over all `P` parameters (`||g||^2` has degree at most 4 in each of them), plus the rounding of
  `D(W)` in the run's dtype, `4 eps (||W_(l+1)||_F^2 + ||W_l||_F^2)`;
- `z = (|mean| - allowance)^+ / sem` over every entry and every sigma > 0 must stay below
  `Z_BOUND = 4` (12 entries and sigmas, family-wise false alarm about 1e-3);
- the same means must REJECT the law at `1.05 sigma` (5 % off): some `z > Z_BOUND`. The seeds
  (2^15) were chosen from the z a wrong sigma is expected to reach, `|eta (rate(sigma) -
  rate(1.05 sigma))| / sem - allowance / sem`, and the test asserts it is at least `Z_BOUND + 4`
  for every sigma before judging;
- at sigma = 0 the step is deterministic and `|residual| <= allowance` (the conservation law).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln
from noisydln import dense

Z_BOUND, WRONG = 4.0, 1.05
NUM_SEEDS, ETA, SIGMAS = 2**15, 2e-4, (0.0, 0.3, 0.5, 0.7)


def np_grads(ws, gram, xty):
    """`dL/dW_l = -a_l (B_(l-1) r)^T` in NumPy (docs/dense.md s1), batched: `ws[l]: [N, h_l,
    h_(l-1)]`."""
    num = ws[0].shape[0]
    after, before = (
        [np.ones((num, 1))],
        [np.broadcast_to(np.eye(ws[0].shape[2]), (num,) + ws[0].shape[2:] * 2)],
    )
    for w in reversed(ws):
        after.insert(0, np.einsum("ni,nij->nj", after[0], w))
    for w in ws:
        before.append(np.einsum("nij,njk->nik", w, before[-1]))
    r = 2 * (xty - after[0] @ gram)
    return [
        -np.einsum("ni,nj->nij", after[k + 1], np.einsum("nij,nj->ni", before[k], r))
        for k in range(len(ws))
    ]


def gauss_hermite(num_params):
    """Nodes `[3^P, P]` and weights `[3^P]` of the 3-node Gauss-Hermite product rule for
    `E f(xi)`, `xi ~ N(0, I_P)`: exact for `f` of degree <= 5 in every coordinate."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(3)
    index = np.array(list(itertools.product(range(3), repeat=num_params)))
    return nodes[index], np.prod((weights / weights.sum())[index], axis=1)


def allowances(ws, problem, sigma, dtype):
    """Per hidden layer: `eta^2 E[||g_(l+1)||^2 + ||g_l||^2]` plus the rounding of `D(W)`."""
    gram, xty = (np.asarray(a, np.float64) for a in (problem.gram, problem.xty))
    offsets = np.cumsum([0] + [w.size for w in ws])
    xi, weights = gauss_hermite(int(offsets[-1]))
    noisy = [
        w + sigma * xi[:, offsets[k] : offsets[k + 1]].reshape((-1,) + w.shape)
        for k, w in enumerate(ws)
    ]
    expected = [weights @ np.sum(g**2, axis=(1, 2)) for g in np_grads(noisy, gram, xty)]
    eps = float(jnp.finfo(dtype).eps)
    return [
        ETA**2 * (expected[k] + expected[k + 1])
        + 4 * eps * (np.sum(ws[k] ** 2) + np.sum(ws[k + 1] ** 2))
        for k in range(len(ws) - 1)
    ]


def per_entry(matrices, values):
    """Each layer's scalar spread over its matrix entries, flattened like the residual."""
    return np.concatenate([np.full(m.size, v) for m, v in zip(matrices, values, strict=True)])


def flat(matrices):
    return np.concatenate([np.asarray(m, np.float64).reshape(-1) for m in matrices])


@pytest.mark.parametrize(
    "widths,d,dtype",
    [
        ((2,), 3, "float32"),
        pytest.param((2,), 3, "float64", marks=pytest.mark.slow),
        pytest.param((2, 1), 2, "float64", marks=pytest.mark.slow),
    ],
)
def test_mean_step_of_dense_imbalance_vs_flow_rejects_wrong_sigma(key, widths, d, dtype):
    with jax.enable_x64(dtype == "float64"):
        drawn = noisydln.make_problem(key, 30, d, k=2, noise_std=0.1)
        problem = noisydln.problem_from_data(np.asarray(drawn.X, dtype), np.asarray(drawn.y, dtype))
        config = noisydln.SimConfig(
            network="dense", widths=widths, num_steps=1, record_every=1, eta=ETA, init=0.7,
            quantities=("imbalance_drift_residual",),
        )  # fmt: skip
        result = noisydln.run_grid(key, problem, config, num_seeds=NUM_SEEDS, sigmas=SIGMAS)
        base, scale = config.base_init(d, jnp.dtype(dtype))
        start = tuple(jnp.asarray(scale * np.asarray(w, np.float64)) for w in base)
    mean = np.asarray(result.mean["imbalance_drift_residual"][:, 0, 0, 0], np.float64)
    sem = np.sqrt(
        np.asarray(result.var["imbalance_drift_residual"][:, 0, 0, 0], np.float64) / NUM_SEEDS
    )
    ws = [np.asarray(w) for w in start]
    imbalance = dense.imbalance(start)
    with jax.enable_x64(True):  # the predictions in float64, from the start the run used
        problem64 = noisydln.problem_from_data(
            np.asarray(problem.X, np.float64), np.asarray(problem.y, np.float64)
        )
        rates = {s: flat(dense.imbalance_flow_rate(start, problem64, s)) for s in SIGMAS}
        wrong = {s: flat(dense.imbalance_flow_rate(start, problem64, WRONG * s)) for s in SIGMAS}
    allowance = {
        s: per_entry(imbalance, allowances(ws, problem, s, jnp.dtype(dtype))) for s in SIGMAS
    }

    # sigma = 0: a deterministic step, within its O(eta^2) allowance of conservation
    assert np.all(np.abs(mean[0]) <= allowance[0.0]), (mean[0], allowance[0.0])
    z_true, z_wrong = [], []
    for i, sigma in enumerate(SIGMAS[1:], start=1):
        shift = ETA * (rates[sigma] - wrong[sigma])  # residual against the wrong rate, minus ours
        expected_wrong = np.max((np.abs(shift) - allowance[sigma]) / sem[i])
        assert expected_wrong >= Z_BOUND + 4, f"too few seeds to tell 5 % apart at {sigma}"
        z_true.append(np.max(np.maximum(np.abs(mean[i]) - allowance[sigma], 0) / sem[i]))
        z_wrong.append(np.max(np.maximum(np.abs(mean[i] + shift) - allowance[sigma], 0) / sem[i]))
    print(
        f"{dtype} widths {widths}: z at sigma {np.round(z_true, 2)}, at 1.05 sigma {np.round(z_wrong, 2)}"
    )
    assert max(z_true) < Z_BOUND, z_true
    assert min(z_wrong) > Z_BOUND, z_wrong  # every sigma tells the 5 % error apart
