"""One training trajectory: `SimConfig`, the `lax.scan` loop with strided recording, `simulate`."""

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from noisydln import _checks, algorithms
from noisydln.problem import Problem
from noisydln.quantities import ALL_QUANTITIES, QUANTITIES, record


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """The static description of a run (hashable); `sigma`, `eta`, `init` are its defaults.

    Attributes:
      algorithm: a rule of `noisydln.algorithms.RULES` (default the paper's `"stochastic_sam"`).
      depth: network depth L >= 2.
      num_steps: number of training steps.
      record_every: record every this many steps (steps 0, k, 2k, ..., num_steps).
      log_records: if set, record instead at about this many log-spaced steps (plus step 0).
      eta: step size.
      sigma: the rule's noise scale (perturbation std for stochastic SAM).
      init: initial parameters, an array `[depth, d]` (stored as nested tuples) or a scale
        giving `init * ones((depth, d))`. Grid `init_scales` multiply the array, or replace
        the scale.
      noise: perturbation law of the SAM rules: "gaussian" (default), "rademacher", "uniform".
      momentum: heavy-ball momentum of the optax SGD update (0 for plain SGD).
      batch_size: rows per step of `minibatch_sgd`.
      quantities: names recorded per record, from `QUANTITIES` (the default) and
        `EXTRA_QUANTITIES` (see `record`).
    """

    algorithm: str = "stochastic_sam"
    depth: int = 2
    num_steps: int = 1000
    record_every: int = 10
    log_records: int | None = None
    eta: float = 0.01
    sigma: float = 0.1
    init: float | tuple = 0.1
    noise: str | None = None
    momentum: float = 0.0
    batch_size: int | None = None
    quantities: tuple[str, ...] = QUANTITIES

    def __post_init__(self):
        if not isinstance(self.init, (int, float)):
            object.__setattr__(self, "init", _as_nested_tuple(self.init, "init"))
        object.__setattr__(self, "quantities", tuple(self.quantities))
        _checks.check_depth(self.depth)
        for name in ("num_steps", "record_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.log_records is None and self.num_steps % self.record_every:
            raise ValueError(
                f"num_steps ({self.num_steps}) must be a multiple of record_every "
                f"({self.record_every}), the recording stride"
            )
        if self.log_records is not None and (
            not isinstance(self.log_records, int) or self.log_records < 1
        ):
            raise ValueError(f"log_records must be a positive integer, got {self.log_records!r}")
        _checks.check_nonnegative("eta", self.eta)
        _checks.check_nonnegative("sigma", self.sigma)
        unknown = sorted(set(self.quantities) - set(ALL_QUANTITIES))
        if unknown or not self.quantities:
            raise ValueError(
                f"quantities must be a non-empty subset of {ALL_QUANTITIES}, got unknown {unknown}"
            )
        if "imbalance_step_residual" in self.quantities and self.depth != 2:
            raise ValueError("imbalance_step_residual uses the depth-2 factor rho: set depth=2")
        if isinstance(self.init, tuple):
            shape = np.shape(self.init)
            if len(shape) != 2 or shape[0] != self.depth:
                raise ValueError(
                    f"init must be a scale or have shape [depth, d] = ({self.depth}, d), got {shape}"
                )
            _checks.check_finite("init", np.asarray(self.init))
        else:
            _checks.check_finite("init", self.init)
        self.rule()  # validates the algorithm name and its options

    def rule(self) -> algorithms.Rule:
        """The training rule with this config's static options bound."""
        options = {"momentum": self.momentum} if self.momentum else {}
        if self.noise is not None:
            options["noise"] = self.noise
        if self.batch_size is not None:
            options["batch_size"] = self.batch_size
        return algorithms.get_rule(self.algorithm, **options)

    def record_steps(self) -> np.ndarray:
        """The steps at which the state is recorded, `int [num_records]`, starting with 0."""
        if self.log_records is None:
            return np.arange(0, self.num_steps + 1, self.record_every)
        grid = np.geomspace(1, self.num_steps, self.log_records)
        return np.unique(np.concatenate([[0], np.round(grid).astype(int), [self.num_steps]]))

    def static(self) -> "SimConfig":
        """This config without its numeric defaults: the part that decides compilation."""
        return dataclasses.replace(self, eta=0.0, sigma=0.0, init=0.0)

    def base_init(self, d: int, dtype) -> tuple[jax.Array, float]:
        """`(base, scale)`: initial parameters are `scale * base`, `base: [depth, d]`."""
        if isinstance(self.init, tuple):
            base = jnp.asarray(self.init, dtype)
            _checks.check_shape("init", base, (self.depth, d), "[depth, d]")
            return base, 1.0
        return jnp.ones((self.depth, d), dtype), float(self.init)

    def validate_for(self, problem: Problem) -> None:
        """Raises if this config cannot run on `problem`."""
        self.base_init(problem.d, problem.gram.dtype)
        if self.batch_size is not None and self.batch_size > problem.n:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= n = {problem.n}")


def _as_nested_tuple(value: ArrayLike, name: str) -> tuple:
    array = np.asarray(value, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a scale or an array [depth, d], got shape {array.shape}")
    return tuple(tuple(float(v) for v in row) for row in array)


def observe(
    rule: algorithms.Rule,
    key: jax.Array,
    state: algorithms.TrainState,
    problem: Problem,
    hyper: algorithms.Hyper,
    step: jax.Array,
    quantities,
) -> dict:
    """`record` of one trajectory at `step`, taking the next step too when a quantity needs it."""
    next_params = None
    if "imbalance_step_residual" in quantities:  # the very step the run takes next
        next_params = rule(jax.random.fold_in(key, step), state, problem, hyper).params
    return record(state.params, problem, hyper, quantities, next_params)


def advance(
    rule: algorithms.Rule,
    key: jax.Array,
    state: algorithms.TrainState,
    problem: Problem,
    hyper: algorithms.Hyper,
    start: jax.Array,
    stop: jax.Array,
) -> algorithms.TrainState:
    """Steps `start, ..., stop - 1` of one trajectory; step t uses `fold_in(key, t)`."""

    def one_step(t, state):
        return rule(jax.random.fold_in(key, t), state, problem, hyper)

    return jax.lax.fori_loop(start, stop, one_step, state)


def segments(steps: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """`(starts, stops)` of the stretches between consecutive record steps, `int32 [R - 1]`."""
    return jnp.asarray(steps[:-1], jnp.int32), jnp.asarray(steps[1:], jnp.int32)


class Trajectory(NamedTuple):
    """A recorded trajectory: `steps: [R]` and `records`: name -> `[R, *shape]`."""

    steps: np.ndarray
    records: dict[str, jax.Array]


def simulate(
    key: jax.Array,
    problem: Problem,
    config: SimConfig,
    *,
    sigma: ArrayLike | None = None,
    eta: ArrayLike | None = None,
    init_scale: ArrayLike | None = None,
) -> Trajectory:
    """One trajectory of `config.algorithm`, a `lax.scan` over the record steps.

    The noise of step t is drawn from `jax.random.fold_in(key, t)`, so a trajectory depends only
    on its key; `run_grid` gives seed s the key `fold_in(key, s)`.

    Args:
      key: the trajectory's PRNG key.
      problem: the regression problem.
      config: the run's description; `sigma`, `eta`, `init_scale` override its defaults.

    Returns:
      The `Trajectory`, recorded at `config.record_steps()`.
    """
    config.validate_for(problem)
    dtype = problem.gram.dtype
    hyper = algorithms.Hyper(
        sigma=jnp.asarray(config.sigma if sigma is None else sigma, dtype),
        eta=jnp.asarray(config.eta if eta is None else eta, dtype),
    )
    _checks.check_nonnegative("sigma", hyper.sigma)
    _checks.check_nonnegative("eta", hyper.eta)
    base, scale = config.base_init(problem.d, dtype)
    params = base * jnp.asarray(scale if init_scale is None else init_scale, dtype)
    steps = config.record_steps()
    records = _simulate_jit(key, problem, hyper, params, config.static())
    return Trajectory(steps=steps, records=records)


def scan_records(
    state,
    steps: np.ndarray,
    advance_fn: Callable[[object, jax.Array, jax.Array], object],
    observe_fn: Callable[[object, object, jax.Array], object],
    per_record=None,
):
    """`observe_fn(state, per_record[r], steps[r])` at every record r, advancing in between.

    Args:
      state: the initial state (one trajectory, or a batch of them).
      steps: the record steps, `int [R]`, starting with 0.
      advance_fn: `(state, start, stop) -> state`, the steps `start .. stop - 1`.
      observe_fn: `(state, extra, step) -> observation` at a record step.
      per_record: optional pytree with leading axis `[R]`, handed to `observe_fn` record by record.

    Returns:
      The observations stacked along a leading axis `[R, ...]`.
    """
    take = lambda r: jax.tree.map(lambda x: x[r], per_record)  # noqa: E731

    def body(state, inputs):
        (start, stop), extra = inputs
        state = advance_fn(state, start, stop)
        return state, observe_fn(state, extra, stop)

    first = observe_fn(state, take(0), jnp.asarray(steps[0], jnp.int32))
    rest_inputs = jax.tree.map(lambda x: x[1:], per_record)
    _, rest = jax.lax.scan(body, state, (segments(steps), rest_inputs))
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)


@functools.partial(jax.jit, static_argnames="config")
def _simulate_jit(key, problem, hyper, params, config):
    rule = config.rule()
    return scan_records(
        algorithms.init_state(params, config.momentum),
        config.record_steps(),
        lambda state, start, stop: advance(rule, key, state, problem, hyper, start, stop),
        lambda state, _, step: observe(rule, key, state, problem, hyper, step, config.quantities),
    )
