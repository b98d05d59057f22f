"""Training rules: one step `(key, state, problem, hyper) -> state` each, updates through optax.

Every rule computes a search direction (a stochastic or exact gradient) and hands it to an
optax SGD transformation. `hyper.sigma` is the rule's noise scale:

| rule | one step (plain SGD update) | `sigma` means |
|---|---|---|
| `stochastic_sam` | `W - eta grad L(W + sigma xi)`, `xi` i.i.d. per layer and coordinate (docs/theory.md s1) | noise std |
| `one_layer_sam` | as above, but only one layer, chosen uniformly, is perturbed | noise std |
| `gd` | `W - eta grad L(W)` | ignored |
| `expected_gd` | `W - eta grad L_R(W)`, `theory.expected_grad` (the deterministic theory trajectory) | noise std |
| `sam` | `W - eta grad L(W + sigma g / ||g||)`, `g = grad L(W)` (Foret et al., 2021) | radius rho |
| `unnormalized_sam` | `W - eta grad L(W + sigma g)`, `g = grad L(W)` (no division by the norm) | ascent step rho |
| `per_example_sam` | `W - eta (1/n) sum_k grad l_k(W + sigma grad l_k(W))`, `l_k = (y_k - x_k beta)^2` (1-SAM) | ascent step rho |
| `random_sam` | `W - eta grad L(W + sigma u / ||u||)`, `u ~ N(0, I)` | radius rho |
| `anti_pgd` | `W - eta grad L(W) + sigma (xi_{t+1} - xi_t)`, `xi_0 = 0`, `xi_t` i.i.d. N(0, I) (Orvieto et al., 2022) | noise std |
| `gradient_noise` | `W - eta (grad L(W) + sigma eps)`, `eps ~ N(0, I)` per layer and coordinate | noise std |
| `label_noise_gd` | gradient of `(1/n) ||y + sigma eps - X beta||^2`, fresh `eps ~ N(0, I_n)` | label noise std |
| `minibatch_sgd` | gradient on `batch_size` rows of X drawn without replacement | ignored |

`L(W) = (1/n) ||y - X beta||^2 = (1/n) sum_k l_k(W)` (`noisydln.model.loss`). The rules are
written once for every network family: `network=` (a `noisydln.networks.Network`, default the
diagonal family, `params: [depth, d]`) gives the gradient, the pullback of a gradient in beta,
`L_R`'s gradient and the layers; noise is drawn for all parameters at once and cut into the
parameter pytree (`draw`), norms are Frobenius norms over every parameter. Static options
are keyword-only arguments; bind them with `get_rule`. The rule-specific ones are listed in
`OPTIONS` (perturbation law, batch size); every rule also takes the update options
`UPDATE_OPTIONS`, handed to `apply_direction` (see `optimizer`):

- `momentum`: heavy-ball momentum `v <- momentum v + g`, `W <- W - eta_t v` (optax `trace`);
- `weight_decay`: `lambda >= 0` adds `lambda W`, the gradient of `(lambda/2) ||W||^2`, to the
  direction before momentum (`optax.add_decayed_weights`), so that one plain step is
  `W - eta_t (g + lambda W)`;
- `schedule`: a step-size schedule from `make_schedule`, the factor `f(t)` multiplying the peak
  step `eta` at step t (`eta_t = eta f(t)`, counted by optax from 0); without one `eta_t = eta`.

`anti_pgd` keeps its last perturbation `xi_t` in `TrainState.noise` (`init_state(params,
algorithm="anti_pgd")`); its noise term is added after the optax update, so with momentum,
weight decay or a schedule `W_{t+1} = W_t + u_t + sigma (xi_{t+1} - xi_t)`, `u_t` the optax
update of `grad L(W_t)`: `Z_t = W_t - sigma xi_t` then follows stochastic SAM with the same
update, `Z_{t+1} = Z_t + u_t`, `u_t` computed from `grad L(Z_t + sigma xi_t)` (with weight decay
`lambda W_t`, the decay of the perturbed point). Every rule acts on ONE trajectory; batch with
`jax.vmap`.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from noisydln import _checks
from noisydln import noise as noise_lib
from noisydln.model import pairwise_sum
from noisydln.networks import DIAGONAL, Network
from noisydln.networks.base import Params
from noisydln.problem import Problem
from noisydln.schedules import (  # noqa: F401 (re-exported: algorithms.make_schedule, ...)
    SCHEDULE_OPTIONS,
    SCHEDULES,
    check_boundaries,
    make_schedule,
    scheduled,
    step_sizes,
)
from noisydln.updates import (  # noqa: F401 (re-exported: algorithms.init_state, ...)
    NOISE_STATE_RULES,
    Hyper,
    Rule,
    TrainState,
    apply_direction,
    draw,
    init_state,
    normalised,
    optimizer,
    shifted,
)


def stochastic_sam(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    noise: str = "gaussian",
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """The paper's rule: the gradient at `W + sigma * xi` applied to `W` (docs/theory.md s1).

    `xi` (like params) is drawn fresh from `noise` ("gaussian", or "rademacher" / "uniform",
    each with unit variance) independently for every parameter (`draw`).
    """
    xi = draw(noise_lib.get_sampler(noise), key, state.params)
    direction = network.grad(shifted(state.params, hyper.sigma, xi), problem)
    return apply_direction(state, direction, hyper, **update)


def one_layer_sam(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    noise: str = "gaussian",
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """Stochastic SAM that perturbs one layer per step, chosen uniformly at random."""
    key_layer, key_noise = jax.random.split(key)
    layer = jax.random.randint(key_layer, (), 0, network.num_layers(state.params))
    xi = draw(noise_lib.get_sampler(noise), key_noise, state.params)
    chosen = network.layer_mask(state.params, layer)
    perturbed = jax.tree.map(lambda w, c, x: w + hyper.sigma * c * x, state.params, chosen, xi)
    return apply_direction(state, network.grad(perturbed, problem), hyper, **update)


def gd(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """Plain gradient descent on the loss; `key` and `sigma` are not used."""
    del key
    return apply_direction(state, network.grad(state.params, problem), hyper, **update)


def expected_gd(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """Gradient descent on the expected loss `L_R` at noise level sigma (docs/theory.md s2,
    docs/dense.md s2)."""
    del key
    direction = network.expected_grad(state.params, problem, hyper.sigma)
    return apply_direction(state, direction, hyper, **update)


def sam(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """SAM (Foret et al.): ascend by radius `sigma` along the normalised gradient, descend from there."""
    del key
    ascent = normalised(network.grad(state.params, problem))
    direction = network.grad(shifted(state.params, hyper.sigma, ascent), problem)
    return apply_direction(state, direction, hyper, **update)


def unnormalized_sam(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """Unnormalised SAM: ascend by `sigma` times the gradient itself (no division by its norm),
    descend from there: the direction is `grad L(W + sigma grad L(W))`."""
    del key
    ascent = network.grad(state.params, problem)
    direction = network.grad(shifted(state.params, hyper.sigma, ascent), problem)
    return apply_direction(state, direction, hyper, **update)


def _example_grad(network: Network, params: Params, x: jax.Array, y: jax.Array) -> Params:
    """The gradient of one example's loss `l(W) = (y - x beta)^2`, like params, from `x: [d]`,
    `y: []` (summed in a fixed order, as `model.loss`)."""
    error = y - pairwise_sum(x * network.end_to_end(params))
    return network.pullback(params, -2 * error * x)


def per_example_sam(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """1-SAM (per-example unnormalised SAM): example k's gradient at its own ascent point
    `W + sigma grad l_k(W)`, `l_k(W) = (y_k - x_k beta)^2`, averaged over the n examples, so
    that at `sigma = 0` it is `grad L` with `L = (1/n) sum_k l_k` (`model.loss`).

    Holds `n` ascent points and gradients (each like params) per trajectory in the step.
    """
    del key
    example_grad = functools.partial(_example_grad, network)
    at_start = jax.vmap(example_grad, in_axes=(None, 0, 0))(state.params, problem.X, problem.y)
    ascents = jax.tree.map(lambda w, g: w[None] + hyper.sigma * g, state.params, at_start)
    at_ascent = jax.vmap(example_grad)(ascents, problem.X, problem.y)
    direction = jax.tree.map(lambda g: pairwise_sum(jnp.moveaxis(g, 0, -1)) / problem.n, at_ascent)
    return apply_direction(state, direction, hyper, **update)


def random_sam(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """Random-direction SAM: perturb by radius `sigma` along a uniformly random direction."""
    direction_of_noise = normalised(draw(noise_lib.gaussian, key, state.params))
    direction = network.grad(shifted(state.params, hyper.sigma, direction_of_noise), problem)
    return apply_direction(state, direction, hyper, **update)


def anti_pgd(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """Anti-PGD (Orvieto et al., 2022), anticorrelated perturbations:
    `W_{t+1} = W_t - eta grad L(W_t) + sigma (xi_{t+1} - xi_t)`, `xi_0 = 0`, `xi_{t+1}` (like
    params) i.i.d. standard Gaussian, drawn from this step's key and kept in `state.noise`.

    The noise term is added after the optax update `u_t` of `grad L(W_t)` (momentum, weight
    decay and schedule act on the gradient only), so `Z_t = W_t - sigma xi_t` follows stochastic
    SAM, `Z_{t+1} = Z_t + u_t` with `u_t` from `grad L(Z_t + sigma xi_t)`.
    """
    if state.noise is None:
        raise ValueError(
            "anti_pgd keeps its last perturbation in the state: start from "
            'init_state(params, ..., algorithm="anti_pgd") (TrainState.noise = zeros)'
        )
    xi = draw(noise_lib.gaussian, key, state.params)
    stepped = apply_direction(state, network.grad(state.params, problem), hyper, **update)
    params = jax.tree.map(
        lambda w, new, old: w + hyper.sigma * (new - old), stepped.params, xi, state.noise
    )
    return stepped._replace(params=params, noise=xi)


def gradient_noise(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """Gradient descent with additive gradient noise: the direction is `grad L(W) + sigma eps`,
    `eps` (like params) i.i.d. standard Gaussian, fresh every step."""
    eps = draw(noise_lib.gaussian, key, state.params)
    direction = shifted(network.grad(state.params, problem), hyper.sigma, eps)
    return apply_direction(state, direction, hyper, **update)


def label_noise_gd(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """Gradient descent on `(1/n) ||y + sigma eps - X beta||^2` with fresh `eps ~ N(0, I_n)`."""
    dtype = jax.tree.leaves(state.params)[0].dtype
    eps = noise_lib.gaussian(key, (problem.n,), dtype)
    noisy_xty = problem.xty + hyper.sigma * (problem.X.T @ eps) / problem.n
    beta = network.end_to_end(state.params)
    residual = 2 * (noisy_xty - problem.gram @ beta)
    direction = network.pullback(state.params, -residual)
    return apply_direction(state, direction, hyper, **update)


def minibatch_sgd(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    batch_size: int,
    network: Network = DIAGONAL,
    **update,
) -> TrainState:
    """SGD on `batch_size` rows of X drawn without replacement each step; `sigma` is not used.

    `batch_size` has no default: bind it with `get_rule("minibatch_sgd", batch_size=...)`.
    """
    rows = jax.random.choice(key, problem.n, (batch_size,), replace=False)
    X, y = problem.X[rows], problem.y[rows]
    beta = network.end_to_end(state.params)
    residual = 2 * X.T @ (y - X @ beta) / batch_size
    direction = network.pullback(state.params, -residual)
    return apply_direction(state, direction, hyper, **update)


RULES: dict[str, Callable[..., TrainState]] = {
    "stochastic_sam": stochastic_sam,
    "one_layer_sam": one_layer_sam,
    "gd": gd,
    "expected_gd": expected_gd,
    "sam": sam,
    "unnormalized_sam": unnormalized_sam,
    "per_example_sam": per_example_sam,
    "random_sam": random_sam,
    "anti_pgd": anti_pgd,
    "gradient_noise": gradient_noise,
    "label_noise_gd": label_noise_gd,
    "minibatch_sgd": minibatch_sgd,
}

UPDATE_OPTIONS = ("momentum", "weight_decay", "schedule")  # every rule takes these
OPTIONS: dict[str, tuple[str, ...]] = {  # a rule not listed takes UPDATE_OPTIONS only
    "stochastic_sam": ("noise", *UPDATE_OPTIONS),
    "one_layer_sam": ("noise", *UPDATE_OPTIONS),
    "minibatch_sgd": ("batch_size", *UPDATE_OPTIONS),
}
NETWORK_OPTION = "network"  # every rule takes it too: the family (default the diagonal one)


def get_rule(name: str, **options) -> Rule:
    """The rule `name` with its static options bound: `(key, state, problem, hyper) -> state`.

    Examples:
      >>> rule = get_rule("stochastic_sam", noise="rademacher")
      >>> rule.func.__name__, rule.keywords
      ('stochastic_sam', {'noise': 'rademacher'})
    """
    if not isinstance(name, str) or name not in RULES:
        raise ValueError(f"algorithm must be one of {sorted(RULES)}, got {_checks.describe(name)}")
    allowed = OPTIONS.get(name, UPDATE_OPTIONS)
    unknown = sorted(set(options) - {*allowed, NETWORK_OPTION})
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
    if "weight_decay" in options:
        _checks.as_float("weight_decay", options["weight_decay"], minimum=0.0)
    if NETWORK_OPTION in options and not isinstance(options[NETWORK_OPTION], Network):
        raise ValueError(
            "network must be a noisydln.networks.Network (networks.get), got "
            f"{_checks.describe(options[NETWORK_OPTION])}"
        )
    if "schedule" in options and not (options["schedule"] is None or callable(options["schedule"])):
        raise ValueError(
            "schedule must be a step-size schedule, a function of the step "
            f"(algorithms.make_schedule), or None, got {_checks.describe(options['schedule'])}"
        )
    return functools.partial(RULES[name], **options)
