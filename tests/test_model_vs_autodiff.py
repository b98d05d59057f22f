"""Closed-form loss, gradient, Hessian and Hessian trace against autodiff of `(1/n)||y - X beta||^2`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisydln

DESIGNS = {
    "gaussian": {"design": "gaussian"},
    "orthogonal": {"design": "orthogonal"},
    "diagonal": {"design": "diagonal", "diag": jnp.array([0.5, 1.0, 2.0, 3.0, 0.25])},
}


@jax.jit
def direct_loss(params, problem):
    """The loss computed from X and y, not from the sufficient statistics."""
    beta = jnp.prod(params, axis=0)
    return jnp.mean((problem.y - problem.X @ beta) ** 2)


# one compiled program each (op by op, autodiff outside jit compiles dozens)
autodiff_grad = jax.jit(jax.grad(direct_loss))
autodiff_hessian = jax.jit(jax.hessian(direct_loss))


def make_case(key, depth, design):
    key_problem, key_params = jax.random.split(key)
    problem = noisydln.make_problem(
        key_problem, 12, 5, k=3, values="gaussian", noise_std=0.4, **DESIGNS[design]
    )
    params = jax.random.normal(key_params, (depth, 5))
    return problem, params


@pytest.mark.parametrize("design", sorted(DESIGNS))
@pytest.mark.parametrize("depth", [2, 3, pytest.param(4, marks=pytest.mark.slow)])
def test_closed_forms_vs_autodiff(key, depth, design):
    problem, params = make_case(key, depth, design)
    hessian = autodiff_hessian(params, problem).reshape(depth * 5, depth * 5)
    np.testing.assert_allclose(
        noisydln.loss(params, problem), direct_loss(params, problem), rtol=1e-12
    )
    np.testing.assert_allclose(
        noisydln.grad(params, problem),
        autodiff_grad(params, problem),
        rtol=1e-11,
        atol=1e-12,
    )
    np.testing.assert_allclose(noisydln.hessian(params, problem), hessian, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(
        noisydln.hessian_trace(params, problem), np.trace(hessian), rtol=1e-12
    )


def test_end_to_end_is_the_product_of_layers(key):
    params = jax.random.normal(key, (3, 7))
    np.testing.assert_array_equal(noisydln.end_to_end(params), params[0] * params[1] * params[2])


def test_imbalances_are_differences_of_squares(key):
    params = jax.random.normal(key, (3, 4))
    out = noisydln.imbalances(params)
    assert out.shape == (3, 3, 4)
    np.testing.assert_allclose(out[2, 0], params[2] ** 2 - params[0] ** 2, rtol=1e-15)


@pytest.mark.parametrize("depth", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_float32_vs_float64(key, depth):
    problem, params = make_case(key, depth, "gaussian")
    problem32 = jax.tree.map(lambda a: a.astype(jnp.float32), problem)
    params32 = params.astype(jnp.float32)
    for fn in (noisydln.loss, noisydln.grad, noisydln.hessian, noisydln.hessian_trace):
        out32 = fn(params32, problem32)
        assert out32.dtype == jnp.float32, fn.__name__
        np.testing.assert_allclose(
            out32, fn(params, problem), rtol=2e-4, atol=2e-4, err_msg=fn.__name__
        )
    draw = noisydln.perturbed_grad(key, params32, problem32, 0.1)
    assert draw.dtype == jnp.float32


def test_jit_and_vmap_vs_plain_calls(key):
    problem, params = make_case(key, 3, "gaussian")
    keys = jax.random.split(key, 4)
    batched = jax.jit(jax.vmap(noisydln.perturbed_grad, in_axes=(0, None, None, None)))(
        keys, params, problem, 0.2
    )
    for i in range(4):
        np.testing.assert_allclose(
            batched[i], noisydln.perturbed_grad(keys[i], params, problem, 0.2), rtol=1e-13
        )
    sigmas = jnp.array([0.0, 0.1, 0.3])
    over_sigma = jax.vmap(noisydln.perturbed_grad, in_axes=(None, None, None, 0))(
        key, params, problem, sigmas
    )
    np.testing.assert_allclose(over_sigma[0], noisydln.grad(params, problem), rtol=1e-13)
    np.testing.assert_allclose(
        jax.jit(noisydln.hessian)(params, problem), noisydln.hessian(params, problem), rtol=1e-13
    )


def test_perturbed_grad_is_grad_at_the_perturbed_point(key):
    problem, params = make_case(key, 2, "gaussian")
    xi = jax.random.normal(key, params.shape)
    np.testing.assert_allclose(
        noisydln.perturbed_grad(key, params, problem, 0.3),
        noisydln.grad(params + 0.3 * xi, problem),
        rtol=1e-13,
    )
