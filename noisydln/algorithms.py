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

`L(W) = (1/n) ||y - X beta||^2 = (1/n) sum_k l_k(W)` (`noisydln.model.loss`). Static options
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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from noisydln import _checks, theory
from noisydln import noise as noise_lib
from noisydln.model import end_to_end, grad, pairwise_sum, products_except_one
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
    """State of one trajectory.

    Attributes:
      params: `[depth, d]`.
      opt_state: the optax state of the update (momentum trace, schedule count).
      noise: the last perturbation `xi_t: [depth, d]` of `anti_pgd` (zeros at the start); None
        for every other rule, so that their state and computations are those of a plain SGD.
    """

    params: jax.Array
    opt_state: optax.OptState
    noise: jax.Array | None = None


Rule = Callable[[jax.Array, TrainState, Problem, Hyper], TrainState]

SCHEDULES = ("constant", "cosine", "step")
SCHEDULE_OPTIONS = {"constant": (), "cosine": ("alpha",), "step": ("boundaries", "factor")}
NOISE_STATE_RULES = ("anti_pgd",)  # rules whose state carries the last perturbation


def make_schedule(
    name: str,
    num_steps: int,
    *,
    alpha: float | None = None,
    boundaries: tuple[int, ...] | None = None,
    factor: float | None = None,
) -> optax.Schedule | None:
    """The step-size schedule `name` as an optax schedule of the factor `f(t)` multiplying the
    peak step size (`eta_t = eta f(t)`, step t counted from 0), None for "constant".

    Options (`SimConfig.schedule_*`, given only to the schedule that takes them):

    - "cosine": `optax.cosine_decay_schedule(1, num_steps, alpha)`,
      `f(t) = alpha + (1 - alpha) (1 + cos(pi t / num_steps)) / 2`, from 1 to `alpha` in
      `[0, 1]` (default 0) over the run;
    - "step": `optax.piecewise_constant_schedule`, `f(t) = factor^#{b in boundaries: t >= b}`,
      `boundaries` strictly increasing integers in `[1, num_steps]` (required), `factor` in
      `(0, 1]` (default 0.1).

    Raises a ValueError naming the `SimConfig` field (`schedule_alpha`, ...) that is wrong.

    Examples:
      >>> f = make_schedule("step", 10, boundaries=(4, 8), factor=0.5)
      >>> [float(f(t)) for t in (0, 3, 4, 8)]
      [1.0, 1.0, 0.5, 0.25]
    """
    if not isinstance(name, str) or name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {_checks.describe(name)}")
    num_steps = _checks.as_int("num_steps", num_steps)
    given = {"alpha": alpha, "boundaries": boundaries, "factor": factor}
    takes = SCHEDULE_OPTIONS[name]
    for option, value in given.items():
        if value is not None and option not in takes:
            takes_words = ", ".join(f"schedule_{o}" for o in takes) or "no options"
            raise ValueError(
                f"schedule_{option} is not an option of schedule {name!r} (it takes "
                f"{takes_words}), got {_checks.describe(value)}"
            )
    if name == "cosine":
        alpha = 0.0 if alpha is None else _checks.as_float("schedule_alpha", alpha, minimum=0.0)
        if alpha > 1:
            raise ValueError(f"schedule_alpha must be in [0, 1], got {alpha!r}")
        return optax.cosine_decay_schedule(1.0, num_steps, alpha)
    if name == "step":
        boundaries = check_boundaries(boundaries, num_steps)
        factor = 0.1 if factor is None else _checks.as_float("schedule_factor", factor)
        if not 0 < factor <= 1:
            raise ValueError(f"schedule_factor must be in (0, 1], got {factor!r}")
        return optax.piecewise_constant_schedule(1.0, dict.fromkeys(boundaries, factor))
    return None


def check_boundaries(boundaries, num_steps: int) -> tuple[int, ...]:
    """`boundaries` as a tuple of ints, or raises unless it is a non-empty, strictly increasing
    sequence of integers in `[1, num_steps]` (a boundary at 0 would skip the peak step size)."""
    if boundaries is None:
        raise ValueError(
            'schedule_boundaries must be given for schedule "step": the steps at which the step '
            "size is multiplied by schedule_factor"
        )
    if isinstance(boundaries, (str, bytes)) or not hasattr(boundaries, "__iter__"):
        raise ValueError(
            f"schedule_boundaries must be a list of steps, got {_checks.describe(boundaries)}"
        )
    boundaries = tuple(boundaries)
    if not boundaries:
        raise ValueError("schedule_boundaries must be a non-empty list of steps, got []")
    out = []
    for i, b in enumerate(boundaries):
        b = _checks.as_int(f"schedule_boundaries[{i}]", b)
        if b > num_steps:
            raise ValueError(
                f"schedule_boundaries[{i}] must be <= num_steps = {num_steps}, got {b}"
            )
        if out and b <= out[-1]:
            raise ValueError(
                f"schedule_boundaries must be strictly increasing, got {list(boundaries)}"
            )
        out.append(b)
    return tuple(out)


def scheduled(eta: jax.Array, schedule: optax.Schedule | None):
    """The learning rate handed to optax: `eta` itself, or `count -> eta * schedule(count)`
    (the factor cast to `eta`'s dtype, so the grid's traced `eta` stays the peak step)."""
    if schedule is None:
        return eta
    return lambda count: eta * jnp.asarray(schedule(count), jnp.result_type(eta))


def step_sizes(eta: jax.Array, schedule: optax.Schedule | None, num_steps: int) -> jax.Array:
    """The step size of steps `0 .. num_steps - 1`, `[num_steps]`, as the optimizer uses them."""
    eta = jnp.asarray(eta)
    if schedule is None:
        return jnp.full((num_steps,), eta)
    return jax.vmap(scheduled(eta, schedule))(jnp.arange(num_steps, dtype=jnp.int32))


def optimizer(
    eta: jax.Array,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    schedule: optax.Schedule | None = None,
) -> optax.GradientTransformation:
    """The parameter update: SGD with step `eta` (times `schedule(t)` when given), heavy-ball
    `momentum` when it is non-zero, preceded by `optax.add_decayed_weights(weight_decay)` when
    that is non-zero. With the defaults it is exactly `optax.sgd(eta)`."""
    sgd = optax.sgd(learning_rate=scheduled(eta, schedule), momentum=momentum if momentum else None)
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), sgd)
    return sgd


def init_state(
    params: jax.Array,
    momentum: float = 0.0,
    *,
    weight_decay: float = 0.0,
    schedule: optax.Schedule | None = None,
    algorithm: str | None = None,
) -> TrainState:
    """A fresh `TrainState` at `params: [depth, d]` for the update with these options; for a rule
    of `NOISE_STATE_RULES` (`algorithm="anti_pgd"`) with `noise` zeros (`xi_0 = 0`)."""
    update = optimizer(jnp.zeros((), params.dtype), momentum, weight_decay, schedule)
    noise = jnp.zeros_like(params) if algorithm in NOISE_STATE_RULES else None
    return TrainState(params=params, opt_state=update.init(params), noise=noise)


def apply_direction(
    state: TrainState,
    direction: jax.Array,
    hyper: Hyper,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    schedule: optax.Schedule | None = None,
) -> TrainState:
    """One optax update of `state` along the (stochastic) gradient `direction: [depth, d]`."""
    updates, opt_state = optimizer(hyper.eta, momentum, weight_decay, schedule).update(
        direction, state.opt_state, state.params
    )
    return state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)


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
    **update,
) -> TrainState:
    """The paper's rule: the gradient at `W + sigma * xi` applied to `W` (docs/theory.md s1).

    `xi: [depth, d]` is drawn fresh from `noise` ("gaussian", or "rademacher" / "uniform", each
    with unit variance) independently for every layer and coordinate.
    """
    xi = noise_lib.get_sampler(noise)(key, state.params.shape, state.params.dtype)
    direction = grad(state.params + hyper.sigma * xi, problem)
    return apply_direction(state, direction, hyper, **update)


def one_layer_sam(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    noise: str = "gaussian",
    **update,
) -> TrainState:
    """Stochastic SAM that perturbs one layer per step, chosen uniformly at random."""
    key_layer, key_noise = jax.random.split(key)
    depth = state.params.shape[0]
    layer = jax.random.randint(key_layer, (), 0, depth)
    xi = noise_lib.get_sampler(noise)(key_noise, state.params.shape, state.params.dtype)
    chosen = (jnp.arange(depth) == layer).astype(xi.dtype)[:, None]
    direction = grad(state.params + hyper.sigma * chosen * xi, problem)
    return apply_direction(state, direction, hyper, **update)


def gd(key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, **update) -> TrainState:
    """Plain gradient descent on the loss; `key` and `sigma` are not used."""
    del key
    return apply_direction(state, grad(state.params, problem), hyper, **update)


def expected_gd(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, **update
) -> TrainState:
    """Gradient descent on the expected loss `L_R` at noise level sigma (docs/theory.md s2)."""
    del key
    direction = theory.expected_grad(state.params, problem, hyper.sigma)
    return apply_direction(state, direction, hyper, **update)


def sam(key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, **update) -> TrainState:
    """SAM (Foret et al.): ascend by radius `sigma` along the normalised gradient, descend from there."""
    del key
    ascent = _normalised(grad(state.params, problem))
    direction = grad(state.params + hyper.sigma * ascent, problem)
    return apply_direction(state, direction, hyper, **update)


def unnormalized_sam(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, **update
) -> TrainState:
    """Unnormalised SAM: ascend by `sigma` times the gradient itself (no division by its norm),
    descend from there: the direction is `grad L(W + sigma grad L(W))`."""
    del key
    ascent = grad(state.params, problem)
    direction = grad(state.params + hyper.sigma * ascent, problem)
    return apply_direction(state, direction, hyper, **update)


def _example_grad(params: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """The gradient of one example's loss `l(W) = (y - x beta)^2`, `[depth, d]`, from
    `params: [depth, d]`, `x: [d]`, `y: []` (summed in a fixed order, as `model.loss`)."""
    error = y - pairwise_sum(x * end_to_end(params))
    return -2 * error * x[None, :] * products_except_one(params)


def per_example_sam(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, **update
) -> TrainState:
    """1-SAM (per-example unnormalised SAM): example k's gradient at its own ascent point
    `W + sigma grad l_k(W)`, `l_k(W) = (y_k - x_k beta)^2`, averaged over the n examples, so
    that at `sigma = 0` it is `grad L` with `L = (1/n) sum_k l_k` (`model.loss`).

    Holds `[n, depth, d]` ascent points and gradients per trajectory in the step.
    """
    del key
    at_start = jax.vmap(_example_grad, in_axes=(None, 0, 0))(state.params, problem.X, problem.y)
    ascents = state.params[None] + hyper.sigma * at_start
    at_ascent = jax.vmap(_example_grad)(ascents, problem.X, problem.y)
    direction = pairwise_sum(jnp.moveaxis(at_ascent, 0, -1)) / problem.n
    return apply_direction(state, direction, hyper, **update)


def random_sam(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, **update
) -> TrainState:
    """Random-direction SAM: perturb by radius `sigma` along a uniformly random direction."""
    direction_of_noise = _normalised(
        noise_lib.gaussian(key, state.params.shape, state.params.dtype)
    )
    direction = grad(state.params + hyper.sigma * direction_of_noise, problem)
    return apply_direction(state, direction, hyper, **update)


def anti_pgd(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, **update
) -> TrainState:
    """Anti-PGD (Orvieto et al., 2022), anticorrelated perturbations:
    `W_{t+1} = W_t - eta grad L(W_t) + sigma (xi_{t+1} - xi_t)`, `xi_0 = 0`, `xi_{t+1}: [depth, d]`
    i.i.d. standard Gaussian, drawn from this step's key and kept in `state.noise`.

    The noise term is added after the optax update `u_t` of `grad L(W_t)` (momentum, weight
    decay and schedule act on the gradient only), so `Z_t = W_t - sigma xi_t` follows stochastic
    SAM, `Z_{t+1} = Z_t + u_t` with `u_t` from `grad L(Z_t + sigma xi_t)`.
    """
    if state.noise is None:
        raise ValueError(
            "anti_pgd keeps its last perturbation in the state: start from "
            'init_state(params, ..., algorithm="anti_pgd") (TrainState.noise = zeros)'
        )
    xi = noise_lib.gaussian(key, state.params.shape, state.params.dtype)
    stepped = apply_direction(state, grad(state.params, problem), hyper, **update)
    return stepped._replace(params=stepped.params + hyper.sigma * (xi - state.noise), noise=xi)


def gradient_noise(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, **update
) -> TrainState:
    """Gradient descent with additive gradient noise: the direction is `grad L(W) + sigma eps`,
    `eps: [depth, d]` i.i.d. standard Gaussian, fresh every step."""
    eps = noise_lib.gaussian(key, state.params.shape, state.params.dtype)
    direction = grad(state.params, problem) + hyper.sigma * eps
    return apply_direction(state, direction, hyper, **update)


def label_noise_gd(
    key: jax.Array, state: TrainState, problem: Problem, hyper: Hyper, **update
) -> TrainState:
    """Gradient descent on `(1/n) ||y + sigma eps - X beta||^2` with fresh `eps ~ N(0, I_n)`."""
    eps = noise_lib.gaussian(key, (problem.n,), state.params.dtype)
    noisy_xty = problem.xty + hyper.sigma * (problem.X.T @ eps) / problem.n
    beta = end_to_end(state.params)
    residual = 2 * (noisy_xty - problem.gram @ beta)
    direction = -residual[None, :] * products_except_one(state.params)
    return apply_direction(state, direction, hyper, **update)


def minibatch_sgd(
    key: jax.Array,
    state: TrainState,
    problem: Problem,
    hyper: Hyper,
    *,
    batch_size: int,
    **update,
) -> TrainState:
    """SGD on `batch_size` rows of X drawn without replacement each step; `sigma` is not used.

    `batch_size` has no default: bind it with `get_rule("minibatch_sgd", batch_size=...)`.
    """
    rows = jax.random.choice(key, problem.n, (batch_size,), replace=False)
    X, y = problem.X[rows], problem.y[rows]
    beta = end_to_end(state.params)
    residual = 2 * X.T @ (y - X @ beta) / batch_size
    direction = -residual[None, :] * products_except_one(state.params)
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
    if "weight_decay" in options:
        _checks.as_float("weight_decay", options["weight_decay"], minimum=0.0)
    if "schedule" in options and not (options["schedule"] is None or callable(options["schedule"])):
        raise ValueError(
            "schedule must be a step-size schedule, a function of the step "
            f"(algorithms.make_schedule), or None, got {_checks.describe(options['schedule'])}"
        )
    return functools.partial(RULES[name], **options)
