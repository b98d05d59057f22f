"""Training rules: one step `(key, state, problem, hyper) -> state` each, updates through optax.

Every rule computes a search direction (a stochastic or exact gradient) and hands it to an
optax SGD transformation (momentum optional). `hyper.sigma` is the rule's noise scale:

| rule | direction | `sigma` means |
|---|---|---|
| `stochastic_sam` | `grad L(W + sigma xi)`, `xi` i.i.d. per layer and coordinate (docs/theory.md s1) | noise std |
| `one_layer_sam` | as above, but only one layer, chosen uniformly, is perturbed | noise std |
| `gd` | `grad L(W)` | ignored |
| `expected_gd` | `grad L_R(W)` = `theory.expected_grad` (the deterministic theory trajectory) | noise std |
| `sam` | `grad L(W + sigma g / ||g||)`, `g = grad L(W)` (Foret et al., 2021) | radius rho |
| `random_sam` | `grad L(W + sigma u / ||u||)`, `u ~ N(0, I)` | radius rho |
| `label_noise_gd` | gradient of `(1/n) ||y + sigma eps - X beta||^2`, fresh `eps ~ N(0, I_n)` | label noise std |
| `minibatch_sgd` | gradient on `batch_size` rows of X drawn without replacement | ignored |

Static options (perturbation law, momentum, batch size) are keyword-only arguments; bind them
with `get_rule`. Every rule acts on ONE trajectory; batch with `jax.vmap`.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from noisydln import _checks, theory
from noisydln import noise as noise_lib
from noisydln.model import end_to_end, grad, products_except_one
from noisydln.problem import Problem


class Hyper(NamedTuple):
    """Swept hyper-parameters, traced leaves so that sweeping them never recompiles.

    Attributes:
      sigma: the rule's noise scale (see the module table), `[]`.
      eta: step size, `[]`.
    """

    sigma: jax.Array
    eta: jax.Array


class TrainState(NamedTuple):
    """State of one trajectory: `params: [depth, d]` and the optax state of the update."""

    params: jax.Array
    opt_state: optax.OptState


Rule = Callable[[jax.Array, TrainState, Problem, Hyper], TrainState]


def optimizer(eta: jax.Array, momentum: float = 0.0) -> optax.GradientTransformation:
    """The parameter update: SGD with step `eta`, heavy-ball `momentum` when it is non-zero."""
    return optax.sgd(learning_rate=eta, momentum=momentum if momentum else None)


def init_state(params: jax.Array, momentum: float = 0.0) -> TrainState:
    """A fresh `TrainState` at `params: [depth, d]`."""
    opt_state = optimizer(jnp.zeros((), params.dtype), momentum).init(params)
    return TrainState(params=params, opt_state=opt_state)


def apply_direction(
    state: TrainState, direction: jax.Array, hyper: Hyper, momentum: float
) -> TrainState:
    """One optax update of `state` along the (stochastic) gradient `direction: [depth, d]`."""
    updates, opt_state = optimizer(hyper.eta, momentum).update(
        direction, state.opt_state, state.params
    )
    return TrainState(params=optax.apply_updates(state.params, updates), opt_state=opt_state)


def _normalised(direction: jax.Array) -> jax.Array:
    """`direction / ||direction||` (Frobenius), 0 where the direction vanishes."""
    norm = jnp.sqrt(jnp.sum(direction**2))
    safe = jnp.where(norm > 0, norm, 1)
    return jnp.where(norm > 0, direction / safe, 0)


def stochastic_sam(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    noise: str = "gaussian",
    momentum: float = 0.0,
) -> TrainState:
    """The paper's rule: the gradient at `W + sigma * xi` applied to `W` (docs/theory.md s1).

    `xi: [depth, d]` is drawn fresh from `noise` ("gaussian", or "rademacher" / "uniform", each
    with unit variance) independently for every layer and coordinate.
    """
    xi = noise_lib.get_sampler(noise)(key, state.params.shape, state.params.dtype)
    direction = grad(state.params + hyper.sigma * xi, problem)
    return apply_direction(state, direction, hyper, momentum)


def one_layer_sam(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    noise: str = "gaussian",
    momentum: float = 0.0,
) -> TrainState:
    """Stochastic SAM that perturbs one layer per step, chosen uniformly at random."""
    key_layer, key_noise = jax.random.split(key)
    depth = state.params.shape[0]
    layer = jax.random.randint(key_layer, (), 0, depth)
    xi = noise_lib.get_sampler(noise)(key_noise, state.params.shape, state.params.dtype)
    chosen = (jnp.arange(depth) == layer).astype(xi.dtype)[:, None]
    direction = grad(state.params + hyper.sigma * chosen * xi, problem)
    return apply_direction(state, direction, hyper, momentum)


def gd(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, *, momentum: float = 0.0
) -> TrainState:
    """Plain gradient descent on the loss; `key` and `sigma` are not used."""
    del key
    return apply_direction(state, grad(state.params, problem), hyper, momentum)


def expected_gd(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, *, momentum: float = 0.0
) -> TrainState:
    """Gradient descent on the expected loss `L_R` at noise level sigma (docs/theory.md s2)."""
    del key
    direction = theory.expected_grad(state.params, problem, hyper.sigma)
    return apply_direction(state, direction, hyper, momentum)


def sam(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, *, momentum: float = 0.0
) -> TrainState:
    """SAM (Foret et al.): ascend by radius `sigma` along the normalised gradient, descend from there."""
    del key
    ascent = _normalised(grad(state.params, problem))
    direction = grad(state.params + hyper.sigma * ascent, problem)
    return apply_direction(state, direction, hyper, momentum)


def random_sam(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, *, momentum: float = 0.0
) -> TrainState:
    """Random-direction SAM: perturb by radius `sigma` along a uniformly random direction."""
    direction_of_noise = _normalised(
        noise_lib.gaussian(key, state.params.shape, state.params.dtype)
    )
    direction = grad(state.params + hyper.sigma * direction_of_noise, problem)
    return apply_direction(state, direction, hyper, momentum)


def label_noise_gd(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, *, momentum: float = 0.0
) -> TrainState:
    """Gradient descent on `(1/n) ||y + sigma eps - X beta||^2` with fresh `eps ~ N(0, I_n)`."""
    eps = noise_lib.gaussian(key, (problem.n,), state.params.dtype)
    noisy_xty = problem.xty + hyper.sigma * (problem.X.T @ eps) / problem.n
    beta = end_to_end(state.params)
    residual = 2 * (noisy_xty - problem.gram @ beta)
    direction = -residual[None, :] * products_except_one(state.params)
    return apply_direction(state, direction, hyper, momentum)


def minibatch_sgd(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    batch_size: int,
    momentum: float = 0.0,
) -> TrainState:
    """SGD on `batch_size` rows of X drawn without replacement each step; `sigma` is not used.

    `batch_size` has no default: bind it with `get_rule("minibatch_sgd", batch_size=...)`.
    """
    rows = jax.random.choice(key, problem.n, (batch_size,), replace=False)
    X, y = problem.X[rows], problem.y[rows]
    beta = end_to_end(state.params)
    residual = 2 * X.T @ (y - X @ beta) / batch_size
    direction = -residual[None, :] * products_except_one(state.params)
    return apply_direction(state, direction, hyper, momentum)


RULES: dict[str, Callable[..., TrainState]] = {
    "stochastic_sam": stochastic_sam,
    "one_layer_sam": one_layer_sam,
    "gd": gd,
    "expected_gd": expected_gd,
    "sam": sam,
    "random_sam": random_sam,
    "label_noise_gd": label_noise_gd,
    "minibatch_sgd": minibatch_sgd,
}

OPTIONS: dict[str, tuple[str, ...]] = {
    "stochastic_sam": ("noise", "momentum"),
    "one_layer_sam": ("noise", "momentum"),
    "minibatch_sgd": ("batch_size", "momentum"),
}


def get_rule(name: str, **options) -> Rule:
    """The rule `name` with its static options bound: `(key, state, problem, hyper) -> state`.

    Examples:
      >>> rule = get_rule("stochastic_sam", noise="rademacher")
      >>> rule.func.__name__, rule.keywords
      ('stochastic_sam', {'noise': 'rademacher'})
    """
    if not isinstance(name, str) or name not in RULES:
        raise ValueError(f"algorithm must be one of {sorted(RULES)}, got {_checks.describe(name)}")
    allowed = OPTIONS.get(name, ("momentum",))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"algorithm {name!r} takes the options {allowed}, got unknown {unknown}")
    if "noise" in options:
        if not isinstance(options["noise"], str):
            raise ValueError(
                f"noise must be one of {sorted(noise_lib.SAMPLERS)}, got "
                f"{_checks.describe(options['noise'])}"
            )
        noise_lib.get_sampler(options["noise"])
    if "batch_size" in allowed and "batch_size" not in options:
        raise ValueError(
            f"batch_size must be given for algorithm {name!r}: the number of rows drawn per step"
        )
    if "batch_size" in options:
        batch_size = options["batch_size"]
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1
        ):
            raise ValueError(
                f"batch_size must be a positive integer, got {_checks.describe(batch_size)}"
            )
    if "momentum" in options:
        momentum = _checks.as_float("momentum", options["momentum"], minimum=0.0)
        if not momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {options['momentum']!r}")
    return functools.partial(RULES[name], **options)
