"""Monte Carlo means of the perturbed loss and of `perturbed_grad` against `dense.expected_loss` and
`dense.expected_grad` (docs/dense.md s2).

Fixed in advance: every z-score `(mean - closed form) / sem` must lie within `Z_BOUND = 4`
(the gradient's largest |z| over its P <= 20 entries too: a family-wise false alarm rate of
about 20 * 6.3e-5 = 1.3e-3). The same draws must reject a wrong noise level: the loss at
`1.05 sigma` (5 % off) and the gradient at `sqrt(1.1) sigma` (10 % excess noise variance), each
with some |z| > Z_BOUND. Before judging, each test checks its own power: the z a wrong sigma is
expected to reach, `|closed form(wrong) - closed form(sigma)| / sem`, must be at least
`Z_BOUND + POWER_MARGIN`, so the rejection cannot hinge on a lucky fluctuation. The number of
draws was chosen from that expected z (see the report of the test run, docs/dense.md s4).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noisydln import dense
from noisydln.problem import Problem

NUM_DRAWS = 200_000
Z_BOUND = 4.0
POWER_MARGIN = 4.0  # a wrong sigma must be expected at |z| >= Z_BOUND + POWER_MARGIN
SIGMA = 0.4
LOSS_WRONG_SIGMA = 1.05 * SIGMA  # 5 % off
GRAD_WRONG_SIGMA = np.sqrt(1.1) * SIGMA  # 10 % excess noise variance


def numpy_case(key, d, widths, dtype):
    """A Gaussian-design problem (n = 40, label noise 0.3) and N(0, 0.6^2) parameters, drawn by a
    NumPy generator seeded by the fixture key's bits (never searched)."""
    rng = np.random.default_rng([*np.asarray(jax.random.key_data(key)).tolist(), d, *widths])
    n = 40
    X = rng.standard_normal((n, d))
    beta_star = np.where(np.arange(d) < 2, rng.standard_normal(d), 0.0)
    y = X @ beta_star + 0.3 * rng.standard_normal(n)
    gram = X.T @ X / n
    arrays = (X, y, beta_star, (gram + gram.T) / 2, X.T @ y / n, np.asarray(y @ y / n))
    problem = Problem(*(jnp.asarray(a, dtype) for a in arrays))
    shapes = dense.layer_shapes(d, widths)
    params = tuple(jnp.asarray(0.6 * rng.standard_normal(s), dtype) for s in shapes)
    return problem, params


@jax.jit
def draws(keys, params, problem, sigma):
    """Per key: the loss at the perturbed point, `perturbed_grad`, and the gradient at the same
    perturbation built by hand (one key per layer, `jax.random.split(key, L)`)."""

    def one(key):
        layer_keys = jax.random.split(key, len(params))
        perturbed = tuple(
            w + sigma * jax.random.normal(k, w.shape, w.dtype)
            for k, w in zip(layer_keys, params, strict=True)
        )
        return (
            dense.loss(perturbed, problem),
            dense.flatten(dense.perturbed_grad(key, params, problem, sigma)),
            dense.flatten(dense.grad(perturbed, problem)),
        )

    return jax.vmap(one)(keys)


@jax.jit
def closed_forms(params, problem, sigma):
    return dense.expected_loss(params, problem, sigma), dense.flatten(
        dense.expected_grad(params, problem, sigma)
    )


def mean_and_sem(samples):
    """Mean and standard error along axis 0, accumulated in float64."""
    samples = np.asarray(samples, dtype=np.float64)
    return samples.mean(axis=0), samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])


@pytest.mark.parametrize(
    "d,widths,dtype",
    [(4, (3, 2), jnp.float64), (3, (3,), jnp.float32)],
    ids=["depth3-f64", "depth2-f32"],
)
def test_monte_carlo_means_vs_expected_loss_and_grad(key, d, widths, dtype):
    problem, params = numpy_case(key, d, widths, dtype)
    keys = jax.random.split(key, NUM_DRAWS)
    losses, grads, grads_by_hand = draws(keys, params, problem, SIGMA)
    assert losses.dtype == grads.dtype == dtype

    # the noise convention: perturbed_grad is the gradient at params + sigma * xi, one key per layer
    rounding = 100 * float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(grads, grads_by_hand, rtol=rounding, atol=rounding)

    loss_mean, loss_sem = mean_and_sem(losses)
    grad_mean, grad_sem = mean_and_sem(grads)
    closed_loss, closed_grad = (
        np.asarray(a, np.float64) for a in closed_forms(params, problem, SIGMA)
    )
    wrong_loss = np.asarray(closed_forms(params, problem, LOSS_WRONG_SIGMA)[0], np.float64)
    wrong_grad = np.asarray(closed_forms(params, problem, GRAD_WRONG_SIGMA)[1], np.float64)

    # power, before judging: the z a wrong sigma is expected to reach
    expected_loss_z = abs(wrong_loss - closed_loss) / loss_sem
    expected_grad_z = np.max(np.abs(wrong_grad - closed_grad) / grad_sem)
    assert expected_loss_z >= Z_BOUND + POWER_MARGIN, expected_loss_z
    assert expected_grad_z >= Z_BOUND + POWER_MARGIN, expected_grad_z

    # accept the right sigma ...
    z_loss = (loss_mean - closed_loss) / loss_sem
    z_grad = (grad_mean - closed_grad) / grad_sem
    assert abs(z_loss) < Z_BOUND, z_loss
    assert np.max(np.abs(z_grad)) < Z_BOUND, z_grad
    # ... and reject the wrong one with the same draws
    z_loss_wrong = (loss_mean - wrong_loss) / loss_sem
    z_grad_wrong = (grad_mean - wrong_grad) / grad_sem
    assert abs(z_loss_wrong) > Z_BOUND, z_loss_wrong
    assert np.max(np.abs(z_grad_wrong)) > Z_BOUND, z_grad_wrong
    print(
        f"\n{widths} {jnp.dtype(dtype).name}: z_loss {z_loss:+.2f}, max|z_grad| "
        f"{np.max(np.abs(z_grad)):.2f}; expected wrong z loss {expected_loss_z:.1f} grad "
        f"{expected_grad_z:.1f}; measured wrong z loss {z_loss_wrong:+.2f} grad "
        f"{np.max(np.abs(z_grad_wrong)):.2f}"
    )
