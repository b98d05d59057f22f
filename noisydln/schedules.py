"""Step-size schedules: the factor `f(t)` multiplying the peak step size, as optax schedules."""

import jax
import jax.numpy as jnp
import optax

from noisydln import _checks

SCHEDULES = ("constant", "cosine", "step")
SCHEDULE_OPTIONS = {"constant": (), "cosine": ("alpha",), "step": ("boundaries", "factor")}


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
