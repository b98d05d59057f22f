"""What every training rule shares: its state, the optax update, noise and norms over the
parameter pytree of any network family (`noisydln.networks`)."""

import functools
import math
import operator
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from noisydln import noise as noise_lib
from noisydln.networks.base import Params
from noisydln.problem import Problem
from noisydln.schedules import scheduled


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
      params: the network's parameters, `[depth, d]` (diagonal) or a tuple of matrices (dense).
      opt_state: the optax state of the update (momentum trace, schedule count).
      noise: the last perturbation `xi_t` (like params) of `anti_pgd` (zeros at the start); None
        for every other rule, so that their state and computations are those of a plain SGD.
    """

    params: Params
    opt_state: optax.OptState
    noise: Params | None = None


Rule = Callable[[jax.Array, TrainState, Problem, Hyper], TrainState]

NOISE_STATE_RULES = ("anti_pgd",)  # rules whose state carries the last perturbation


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
    params: Params,
    momentum: float = 0.0,
    *,
    weight_decay: float = 0.0,
    schedule: optax.Schedule | None = None,
    algorithm: str | None = None,
) -> TrainState:
    """A fresh `TrainState` at `params` for the update with these options; for a rule of
    `NOISE_STATE_RULES` (`algorithm="anti_pgd"`) with `noise` zeros (`xi_0 = 0`)."""
    dtype = jax.tree.leaves(params)[0].dtype
    update = optimizer(jnp.zeros((), dtype), momentum, weight_decay, schedule)
    noise = jax.tree.map(jnp.zeros_like, params) if algorithm in NOISE_STATE_RULES else None
    return TrainState(params=params, opt_state=update.init(params), noise=noise)


def apply_direction(
    state: TrainState,
    direction: Params,
    hyper: Hyper,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    schedule: optax.Schedule | None = None,
) -> TrainState:
    """One optax update of `state` along the (stochastic) gradient `direction` (like params)."""
    updates, opt_state = optimizer(hyper.eta, momentum, weight_decay, schedule).update(
        direction, state.opt_state, state.params
    )
    return state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)


def draw(sampler: noise_lib.Sampler, key: jax.Array, like: Params) -> Params:
    """Noise shaped like `like`: all its `P` entries drawn at once, `sampler(key, (P,))`, and
    cut into leaves in `jax.tree` order (for one array, exactly `sampler(key, shape)`)."""
    leaves, treedef = jax.tree.flatten(like)
    sizes = [math.prod(leaf.shape) for leaf in leaves]
    flat = sampler(key, (sum(sizes),), leaves[0].dtype)
    offsets = np.cumsum([0, *sizes])
    parts = [flat[offsets[k] : offsets[k + 1]].reshape(leaf.shape) for k, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, parts)


def shifted(params: Params, scale: jax.Array, direction: Params) -> Params:
    """`params + scale * direction`, leaf by leaf."""
    return jax.tree.map(lambda w, v: w + scale * v, params, direction)


def normalised(direction: Params) -> Params:
    """`direction / ||direction||` (Frobenius over every leaf), 0 where the direction vanishes."""
    squares = [jnp.sum(leaf**2) for leaf in jax.tree.leaves(direction)]
    norm = jnp.sqrt(functools.reduce(operator.add, squares))
    safe = jnp.where(norm > 0, norm, 1)
    return jax.tree.map(lambda v: jnp.where(norm > 0, v / safe, 0), direction)
