"""Dense deep linear networks `f(x) = W_L ... W_1 x` with Gaussian noise on every entry (docs/dense.md).

The parameters are a tuple of matrices `params = (W_1 [h_1, d], W_2 [h_2, h_1], ..., W_L [1, h_{L-1}])`
(`h_0 = d`, `h_L = 1`, depth `L >= 2`), the end-to-end vector is `beta^T = W_L ... W_1` and the loss
is the diagonal family's `(1/n) ||y - X beta||^2` (docs/theory.md s1). Stochastic SAM perturbs every
entry of every `W_l` by independent `N(0, sigma^2)` noise (../shared/THEORY.md s6).

Every function acts on ONE parameter tuple and one `Problem`; batch with `jax.vmap`. Shapes are
static under `jit` (the depth and the widths are the tuple's structure), `sigma` is a traced leaf.
Products and traces are sums in a fixed pairwise order (`noisydln.linalg`: `matvec`, `matmul`,
`trace`), not XLA dots and reductions, whose summation order depends on the batch: so a
trajectory's numbers do not depend on how many trajectories are computed with it (the engine's
chunk and device invariance).
Layers are numbered `l = 1..L` in docstrings; in code `params[k]` is `W_{k+1}`.

Notation (docs/dense.md): `B_l = W_l ... W_1` `[h_l, d]` (`B_0 = I_d`), `a_l = (W_L ... W_{l+1})^T`
`[h_l]` (`a_L = 1`, `a_0 = beta`), the input moments `N_0 = Sigma`,
`N_l = W_l N_{l-1} W_l^T + sigma^2 tr(N_{l-1}) I` and the output moments `G_L = 1`,
`G_{l-1} = W_l^T G_l W_l + sigma^2 tr(G_l) I`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from noisydln import _checks, _draws
from noisydln.linalg import matmul, matvec, trace, vecmat
from noisydln.model import pairwise_sum
from noisydln.problem import Problem

Params = tuple[jax.Array, ...]


# ----------------------------------------------------------------------------------------------
# Construction and validation


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """Returns the hidden widths `(h_1, ..., h_{L-1})` as ints, or raises a ValueError naming `widths`.

    Widths must be a non-empty sequence of positive integers (bools are refused): the network has
    at least one hidden layer (depth >= 2), like the diagonal family.
    """
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise ValueError(f"widths must be a sequence of positive integers, got {widths!r}")
    if len(widths) == 0:
        raise ValueError("widths must name at least one hidden layer (depth >= 2), got ()")
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
            raise ValueError(f"widths must be positive integers, got {tuple(widths)!r}")
    return tuple(int(width) for width in widths)


def _check_dimension(d) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    return int(d)


def layer_shapes(d: int, widths: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The shapes `((h_1, d), (h_2, h_1), ..., (1, h_{L-1}))` of the layers."""
    sizes = (_check_dimension(d), *check_widths(widths), 1)
    return tuple((sizes[k + 1], sizes[k]) for k in range(len(sizes) - 1))


def check_params(params, d: int | None = None) -> None:
    """Raises a ValueError naming `params` unless it is a chain of matrices ending in one output.

    `params` must be a tuple (or list) of at least two 2-D arrays `W_l [h_l, h_{l-1}]` whose
    shapes chain (`W_{l+1}.shape[1] == W_l.shape[0]`), the last with one row, the first with `d`
    columns when `d` is given. Only shapes are read, so the check also runs under `jit`.
    """
    if not isinstance(params, (tuple, list)):
        raise ValueError(f"params must be a tuple of matrices (W_1, ..., W_L), got {type(params)}")
    if len(params) < 2:
        raise ValueError(f"params must hold at least two layers (depth >= 2), got {len(params)}")
    shapes = [tuple(np.shape(w)) for w in params]
    if any(len(shape) != 2 for shape in shapes):
        raise ValueError(f"params must be matrices [h_l, h_(l-1)], got shapes {shapes}")
    for k in range(1, len(shapes)):
        if shapes[k][1] != shapes[k - 1][0]:
            raise ValueError(
                f"params must chain: W_{k + 1} needs {shapes[k - 1][0]} columns, got shapes {shapes}"
            )
    if shapes[-1][0] != 1:
        raise ValueError(
            f"params must end in one output (W_L of shape [1, h]), got shapes {shapes}"
        )
    if d is not None and shapes[0][1] != d:
        raise ValueError(f"params must start with W_1 of shape [h_1, d], d = {d}, got {shapes}")


def constant_params(d: int, widths: Sequence[int], scale: ArrayLike = 1.0, dtype=None) -> Params:
    """The deterministic start: every entry of every layer equals `scale`.

    The dense analogue of the diagonal family's `scale * ones((depth, d))`. Its hidden units
    are all alike (gradient descent without noise keeps them alike).

    Returns:
      `(W_1 [h_1, d], ..., W_L [1, h_{L-1}])`.
    """
    dtype = dtype or jnp.result_type(float)
    return tuple(jnp.full(shape, scale, dtype) for shape in layer_shapes(d, widths))


def init_params(
    key: jax.Array | None, d: int, widths: Sequence[int], scale: ArrayLike = 1.0, dtype=None
) -> Params:
    """Initial parameters: i.i.d. `N(0, scale^2)` entries, or `constant_params` when `key` is None.

    Args:
      key: PRNG key, split once into one key per layer; None for the deterministic start.
      d: input dimension.
      widths: hidden widths `(h_1, ..., h_{L-1})`, positive integers, at least one.
      scale: standard deviation of the entries (the constant entry when `key` is None).
      dtype: float dtype (JAX's default float when None).

    Returns:
      `(W_1 [h_1, d], ..., W_L [1, h_{L-1}])`.
    """
    shapes = layer_shapes(d, widths)
    if key is None:
        return constant_params(d, widths, scale, dtype)
    dtype = dtype or jnp.result_type(float)
    keys = jax.random.split(key, len(shapes))
    return tuple(
        scale * _draws.standard_normal(k, shape, dtype)
        for k, shape in zip(keys, shapes, strict=True)
    )


def flatten(params: Params) -> jax.Array:
    """All entries in one vector `[P]`: `W_1` row-major first, then `W_2`, ..., `W_L`.

    This is the row (and column) order of `hessian`; `P = sum_l h_l h_{l-1}`.
    """
    return jnp.concatenate([jnp.reshape(w, (-1,)) for w in params])


def unflatten(vector: jax.Array, like: Params) -> Params:
    """Inverse of `flatten`: the vector `[P]` cut into matrices shaped like `like`'s layers."""
    sizes = [int(np.prod(np.shape(w))) for w in like]
    _checks.check_shape("vector", vector, (sum(sizes),), "[P]")
    offsets = np.cumsum([0, *sizes])
    return tuple(
        jnp.reshape(vector[offsets[k] : offsets[k + 1]], np.shape(w)) for k, w in enumerate(like)
    )


# ----------------------------------------------------------------------------------------------
# The noiseless network: products, loss, gradient, Hessian


def _after_vectors(params: Params) -> list[jax.Array]:
    """`[a_0, ..., a_L]`, `a_l = (W_L ... W_{l+1})^T` `[h_l]`, by matrix-vector products."""
    after = [jnp.ones((1,), params[-1].dtype)]
    for w in reversed(params):
        after.insert(0, vecmat(after[0], w))
    return after


def _forward_vectors(params: Params, v: jax.Array) -> list[jax.Array]:
    """`[B_0 v, ..., B_{L-1} v]` for `v [d]` (`B_l = W_l ... W_1`)."""
    out = [v]
    for w in params[:-1]:
        out.append(matvec(w, out[-1]))
    return out


def _before_matrices(params: Params) -> list[jax.Array]:
    """`[B_0, ..., B_{L-1}]`, `B_l = W_l ... W_1` `[h_l, d]`."""
    out = [jnp.eye(params[0].shape[1], dtype=params[0].dtype)]
    for w in params[:-1]:
        out.append(matmul(w, out[-1]))
    return out


def end_to_end(params: Params) -> jax.Array:
    """`beta = (W_L ... W_1)^T`, `[d]`."""
    check_params(params)
    return _after_vectors(params)[0]


def residual(beta: jax.Array, problem: Problem) -> jax.Array:
    """`r = 2 (b - Sigma beta)`, minus the gradient of the loss in beta, `[d]`: `model.residual`
    with `Sigma beta` summed in a fixed order (`linalg.vecmat`)."""
    return 2 * (problem.xty - vecmat(beta, problem.gram))


def loss_of_beta(beta: jax.Array, problem: Problem) -> jax.Array:
    """`beta^T (Sigma beta - 2 b) + y^T y / n`, scalar: `model.loss_of_beta` with `Sigma beta`
    summed in a fixed order."""
    return pairwise_sum(beta * (vecmat(beta, problem.gram) - 2 * problem.xty)) + problem.yty


def loss(params: Params, problem: Problem) -> jax.Array:
    """`(1/n) ||y - X beta||^2 = beta^T Sigma beta - 2 b^T beta + y^T y / n`, scalar.

    The same function of `beta` as the diagonal family's `model.loss` (`model.loss_of_beta`).
    """
    check_params(params, problem.d)
    return loss_of_beta(end_to_end(params), problem)


def grad(params: Params, problem: Problem) -> Params:
    """Closed-form gradient `dL/dW_l = -a_l (B_{l-1} r)^T`, `r = 2 (b - Sigma beta)`, like params.

    From `beta^T = a_l^T W_l B_{l-1}` and `dL/dbeta = -r` (docs/dense.md s1).
    """
    check_params(params, problem.d)
    return pullback(params, -residual(end_to_end(params), problem))


def pullback(params: Params, beta_grad: jax.Array) -> Params:
    """`dF/dW_l = a_l (B_{l-1} g)^T` for a function `F(beta)` with `dF/dbeta = g` (`beta_grad:
    [d]`), like params: from `beta^T = a_l^T W_l B_{l-1}` (docs/dense.md s1)."""
    check_params(params)
    after = _after_vectors(params)
    inputs = _forward_vectors(params, beta_grad)
    return tuple(after[k + 1][:, None] * inputs[k][None, :] for k in range(len(params)))


def perturbed_grad(key: jax.Array, params: Params, problem: Problem, sigma: ArrayLike) -> Params:
    """One stochastic-SAM direction `grad L(params + sigma * xi)`, like params.

    `xi` has i.i.d. `N(0, 1)` entries on every layer; `key` is split once into one key per layer
    (layer `l` uses `jax.random.split(key, L)[l - 1]`). Its mean is `expected_grad`.

    Args:
      key: PRNG key.
      params: `(W_1, ..., W_L)`.
      problem: the regression problem.
      sigma: noise standard deviation, scalar >= 0.
    """
    check_params(params, problem.d)
    _checks.check_nonnegative("sigma", sigma)
    keys = jax.random.split(key, len(params))
    perturbed = tuple(
        w + sigma * jax.random.normal(k, w.shape, w.dtype)
        for k, w in zip(keys, params, strict=True)
    )
    return grad(perturbed, problem)


def _middle_products(params: Params, k: int) -> list[jax.Array]:
    """The factors between code layers `k < m` of `beta^T`, for `m = k + 1, ..., L - 1`.

    `out[m - k - 1] = params[m - 1] @ ... @ params[k + 1]`, shape `[h_m, h_{k+1}]` (the sizes of
    `params[m]`'s columns and `params[k]`'s rows), the identity for `m = k + 1`.
    """
    middle = [jnp.eye(params[k].shape[0], dtype=params[k].dtype)]
    for m in range(k + 1, len(params) - 1):
        middle.append(params[m] @ middle[-1])
    return middle


def hessian(params: Params, problem: Problem) -> jax.Array:
    """The exact Hessian of `loss`, `[P, P]`, rows and columns in the order of `flatten`.

    With `r = 2 (b - Sigma beta)` and, for layers `l < m`, `M = W_{m-1} ... W_{l+1}` (the identity
    when `m = l + 1`), the entry for `W_l[i, j]` and `W_m[p, q]` is (docs/dense.md s1)

        2 a_l[i] a_m[p] (B_{l-1} Sigma B_{m-1}^T)[j, q]  -  [l < m] a_m[p] M[q, i] (B_{l-1} r)[j]

    and the transpose for `l > m` (`beta` is linear in each layer, so no curvature term at `l = m`).
    """
    check_params(params, problem.d)
    depth = len(params)
    after = _after_vectors(params)
    before = _before_matrices(params)
    r_in = _forward_vectors(params, residual(after[0], problem))
    sizes = [w.size for w in params]
    blocks = [[None] * depth for _ in range(depth)]
    for k in range(depth):
        middle = _middle_products(params, k)
        for m in range(k, depth):
            data = 2 * jnp.einsum(
                "i,p,jq->ijpq", after[k + 1], after[m + 1], before[k] @ problem.gram @ before[m].T
            )
            if m > k:
                data = data - jnp.einsum("p,qi,j->ijpq", after[m + 1], middle[m - k - 1], r_in[k])
            blocks[k][m] = jnp.reshape(data, (sizes[k], sizes[m]))
            blocks[m][k] = blocks[k][m].T
    return jnp.block(blocks)


def hessian_trace(params: Params, problem: Problem) -> jax.Array:
    """`tr hess L = 2 sum_l ||a_l||^2 tr(B_{l-1} Sigma B_{l-1}^T)`, scalar; free of `y`.

    The diagonal block of layer `l` is `2 (a_l a_l^T) kron (B_{l-1} Sigma B_{l-1}^T)`
    (docs/dense.md s1). Cost: one `[h, h]` recursion, no `[P, P]` matrix.
    """
    check_params(params, problem.d)
    after = _after_vectors(params)
    moments = [problem.gram]  # the noiseless input moments B_l Sigma B_l^T
    for w in params[:-1]:
        moments.append(matmul(matmul(w, moments[-1]), w.T))
    terms = [pairwise_sum(after[k + 1] ** 2) * trace(moments[k]) for k in range(len(params))]
    return 2 * pairwise_sum(jnp.stack(terms))


# ----------------------------------------------------------------------------------------------
# The noisy network: moments, expected loss and gradient, imbalance flow


def input_moments(params: Params, problem: Problem, sigma: ArrayLike) -> list[jax.Array]:
    """`[N_0, ..., N_L]`: `N_0 = Sigma`, `N_l = W_l N_{l-1} W_l^T + sigma^2 tr(N_{l-1}) I`, `[h_l, h_l]`.

    `N_l = E[B'_l Sigma B'_l^T]` for the perturbed `B'_l` (../shared/THEORY.md s6, docs/dense.md s2).
    """
    check_params(params, problem.d)
    _checks.check_nonnegative("sigma", sigma)
    s2 = jnp.asarray(sigma, params[0].dtype) ** 2
    moments = [problem.gram]
    for w in params:
        previous = moments[-1]
        identity = jnp.eye(w.shape[0], dtype=w.dtype)
        moments.append(matmul(matmul(w, previous), w.T) + s2 * trace(previous) * identity)
    return moments


def output_moments(params: Params, sigma: ArrayLike) -> list[jax.Array]:
    """`[G_0, ..., G_L]`: `G_L = 1`, `G_{l-1} = W_l^T G_l W_l + sigma^2 tr(G_l) I`, `[h_l, h_l]`.

    `G_l = E[A'_l^T A'_l]` for the perturbed `A'_l = W'_L ... W'_{l+1}`; `N_L = tr(G_l N_l)` for
    every `l` (docs/dense.md s2).
    """
    check_params(params)
    _checks.check_nonnegative("sigma", sigma)
    s2 = jnp.asarray(sigma, params[0].dtype) ** 2
    moments = [jnp.ones((1, 1), params[-1].dtype)]
    for w in reversed(params):
        following = moments[0]
        identity = jnp.eye(w.shape[1], dtype=w.dtype)
        moments.insert(0, matmul(matmul(w.T, following), w) + s2 * trace(following) * identity)
    return moments


def expected_loss(params: Params, problem: Problem, sigma: ArrayLike) -> jax.Array:
    """`L_R = E_xi L(W + sigma xi) = y^T y / n - 2 b^T beta + N_L`, exactly, scalar.

    ../shared/THEORY.md s6; docs/dense.md s2. At depth 2 it equals
    `L + sigma^2 tr(Sigma) ||W_2||^2 + sigma^2 tr(W_1 Sigma W_1^T) + sigma^4 h_1 tr(Sigma)`.

    Examples:
      >>> import jax, numpy as np, noisydln
      >>> from noisydln import dense
      >>> problem = noisydln.problem_from_data(np.eye(3), np.ones(3))  # Sigma = I / 3, y^T y / n = 1
      >>> params = dense.constant_params(3, (2,), 0.0)  # at 0: L_R = y^T y / n + sigma^4 h_1 tr(Sigma)
      >>> round(float(jax.jit(dense.expected_loss)(params, problem, 0.5)), 12)
      1.125
    """
    beta = end_to_end(params)
    noisy_quadratic = input_moments(params, problem, sigma)[-1][0, 0]
    return problem.yty - 2 * pairwise_sum(problem.xty * beta) + noisy_quadratic


def average_sharpness(params: Params, problem: Problem, sigma: ArrayLike) -> jax.Array:
    """`S = L_R - L = N_L(sigma) - N_L(0)`, scalar, by the recursion of the difference
    `Delta_0 = 0`, `Delta_l = W_l Delta_(l-1) W_l^T + sigma^2 tr(N_(l-1)) I` (docs/dense.md s2):
    exactly 0 at `sigma = 0`, whatever the rounding of the moments.
    """
    inputs = input_moments(params, problem, sigma)
    s2 = jnp.asarray(sigma, params[0].dtype) ** 2
    difference = s2 * trace(inputs[0]) * jnp.eye(params[0].shape[0], dtype=params[0].dtype)
    for k in range(1, len(params)):  # (no arithmetic on a constant zero Delta_0: see linalg)
        identity = jnp.eye(params[k].shape[0], dtype=params[k].dtype)
        w = params[k]
        difference = matmul(matmul(w, difference), w.T) + s2 * trace(inputs[k]) * identity
    return difference[0, 0]


def expected_grad(params: Params, problem: Problem, sigma: ArrayLike) -> Params:
    """`grad L_R = E_xi grad L(W + sigma xi)`: `dL_R/dW_l = 2 G_l W_l N_{l-1} - 2 a_l (B_{l-1} b)^T`.

    Closed form (docs/dense.md s2), checked against `jax.grad(expected_loss)` (exact, since
    `expected_loss` is) and against a Monte Carlo mean of `perturbed_grad`. Like params.
    """
    inputs = input_moments(params, problem, sigma)
    outputs = output_moments(params, sigma)
    after = _after_vectors(params)
    b_in = _forward_vectors(params, problem.xty)
    return tuple(
        2 * matmul(matmul(outputs[k + 1], w), inputs[k])
        - 2 * after[k + 1][:, None] * b_in[k][None, :]
        for k, w in enumerate(params)
    )


def imbalance(params: Params) -> tuple[jax.Array, ...]:
    """`D_l = W_{l+1}^T W_{l+1} - W_l W_l^T`, `[h_l, h_l]`, for `l = 1..L-1` (conserved without noise)."""
    check_params(params)
    return tuple(
        matmul(params[k + 1].T, params[k + 1]) - matmul(params[k], params[k].T)
        for k in range(len(params) - 1)
    )


def weighted_gap(params: Params, problem: Problem, sigma: ArrayLike) -> tuple[jax.Array, ...]:
    """The noise-weighted gaps `tr(N_{l-1}) W_{l+1}^T G_{l+1} W_{l+1} - tr(G_{l+1}) W_l N_{l-1} W_l^T`.

    One `[h_l, h_l]` matrix per hidden layer `l = 1..L-1` (docs/dense.md s3). At depth 2 it does
    not depend on `sigma` and is the Sigma-weighted gap `tr(Sigma) W_2^T W_2 - W_1 Sigma W_1^T` of
    ../shared/THEORY.md s6. Gradient flow on `L_R` moves `D_l` by `-4 sigma^2` times it.
    """
    inputs = input_moments(params, problem, sigma)
    outputs = output_moments(params, sigma)
    gaps = []
    for k in range(len(params) - 1):
        w_in, w_out = params[k], params[k + 1]
        outgoing = matmul(matmul(w_out.T, outputs[k + 2]), w_out)
        incoming = matmul(matmul(w_in, inputs[k]), w_in.T)
        gaps.append(trace(inputs[k]) * outgoing - trace(outputs[k + 2]) * incoming)
    return tuple(gaps)


def imbalance_flow_rate(
    params: Params, problem: Problem, sigma: ArrayLike
) -> tuple[jax.Array, ...]:
    """`dD_l/dt` under gradient flow `dW/dt = -grad L_R`, any depth (docs/dense.md s3).

        dD_l/dt = -4 sigma^2 [ tr(N_{l-1}) W_{l+1}^T G_{l+1} W_{l+1} - tr(G_{l+1}) W_l N_{l-1} W_l^T ]

    The data terms cancel, as in the diagonal family. Depth 2:
    `dD/dt = -4 sigma^2 (tr(Sigma) W_2^T W_2 - W_1 Sigma W_1^T)` (../shared/THEORY.md s6).

    Returns:
      `(dD_1/dt, ..., dD_{L-1}/dt)`, each `[h_l, h_l]`.
    """
    s2 = jnp.asarray(sigma, params[0].dtype) ** 2
    return tuple(-4 * s2 * gap for gap in weighted_gap(params, problem, sigma))
