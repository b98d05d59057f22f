"""One training trajectory: `SimConfig`, the `lax.scan` loop with strided recording, `simulate`."""

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from noisydln import _checks, algorithms, networks
from noisydln.problem import Problem


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """The static description of a run (hashable); `sigma`, `eta`, `init` are its defaults.

    Attributes:
      algorithm: a rule of `noisydln.algorithms.RULES` (default the paper's `"stochastic_sam"`).
      depth: network depth L >= 2 (unset: 2 for the diagonal network, `len(widths) + 1` for a
        dense one, which it must match when set).
      num_steps: number of training steps.
      record_every: record every this many steps (steps 0, k, 2k, ..., num_steps).
      log_records: if set, record instead at about this many log-spaced steps (plus step 0).
      eta: step size.
      sigma: the rule's noise scale (perturbation std for stochastic SAM).
      init: initial parameters, an array `[depth, d]` (stored as nested tuples) or a scale
        giving `init * ones((depth, d))`; for a dense network a tuple of matrices
        `(W_1 [h_1, d], ..., W_L [1, h_(L-1)])` or a scale giving `init` times a seeded
        standard normal start (`noisydln.networks.dense`). Grid `init_scales` multiply the
        given parameters, or replace the scale.
      noise: perturbation law of the SAM rules: "gaussian" (default), "rademacher", "uniform".
      momentum: heavy-ball momentum of the optax SGD update (0 for plain SGD).
      batch_size: rows per step of `minibatch_sgd`.
      quantities: names recorded per record, from the network's default quantities (the
        default: `QUANTITIES` for the diagonal network) and its extra ones (`EXTRA_QUANTITIES`;
        see `noisydln.quantities.record` and `noisydln.networks.dense`).
      weight_decay: `lambda >= 0` (0: off) adds `lambda W`, the gradient of
        `(lambda/2) ||W||^2`, to every rule's direction before the optax update
        (`optax.add_decayed_weights`): one plain step is `W - eta_t (g + lambda W)`.
      schedule: the step-size schedule, `eta_t = eta f(t)` with `eta` the (swept) peak step:
        "constant" (default, `f = 1`), "cosine" (from `eta` to `schedule_alpha * eta` over
        `num_steps`) or "step" (times `schedule_factor` at each of `schedule_boundaries`); see
        `algorithms.make_schedule`.
      schedule_alpha: the final factor of "cosine", in `[0, 1]` (unset: 0).
      schedule_boundaries: the steps of "step" at which the step size is multiplied, strictly
        increasing integers in `[1, num_steps]` (required for "step").
      schedule_factor: the factor of "step" at each boundary, in `(0, 1]` (unset: 0.1).
      network: the network family, "diagonal" (default, `params: [depth, d]`) or "dense"
        (full matrices; `noisydln.networks`).
      widths: the hidden widths `(h_1, ..., h_(L-1))` of a dense network (required for it,
        refused for the diagonal one).
      init_seed: the seed of a dense network's random start when `init` is a scale (unset: 0).
    """

    algorithm: str = "stochastic_sam"
    depth: int | None = None
    num_steps: int = 1000
    record_every: int = 10
    log_records: int | None = None
    eta: float = 0.01
    sigma: float = 0.1
    init: float | tuple = 0.1
    noise: str | None = None
    momentum: float = 0.0
    batch_size: int | None = None
    quantities: tuple[str, ...] | None = None
    weight_decay: float = 0.0
    schedule: str = "constant"
    schedule_alpha: float | None = None
    schedule_boundaries: tuple[int, ...] | None = None
    schedule_factor: float | None = None
    network: str = "diagonal"
    widths: tuple[int, ...] | None = None
    init_seed: int | None = None

    def __post_init__(self):
        """Checks every field and normalises it to a hashable Python value: numbers to `int` /
        `float`, an array `init` to nested tuples, `quantities` to a tuple, unset `depth` and
        `quantities` to the network's defaults."""
        set_field = functools.partial(object.__setattr__, self)
        if not isinstance(self.algorithm, str):
            raise ValueError(
                f"algorithm must be one of {sorted(algorithms.RULES)}, got "
                f"{_checks.describe(self.algorithm)}"
            )
        family = networks.get(self.network, self.widths)
        if self.widths is not None:
            set_field("widths", family.widths)
        set_field("depth", family.check_depth(self.depth))
        for name in ("num_steps", "record_every"):  # steps are int32 inside the compiled loop
            set_field(name, _checks.as_int(name, getattr(self, name)))
        if self.log_records is None and self.num_steps % self.record_every:
            raise ValueError(
                f"num_steps ({self.num_steps}) must be a multiple of record_every "
                f"({self.record_every}), the recording stride"
            )
        if self.log_records is not None:
            set_field("log_records", _checks.as_int("log_records", self.log_records))
        for name in ("eta", "sigma", "momentum"):
            set_field(name, _checks.as_float(name, getattr(self, name), minimum=0.0))
        set_field("init", family.check_init(self.init, self.depth))
        set_field("init_seed", family.check_init_seed(self.init_seed, self.init))
        if self.noise is not None and not isinstance(self.noise, str):
            raise ValueError(f"noise must be a name or None, got {_checks.describe(self.noise)}")
        if self.batch_size is not None:
            set_field("batch_size", _checks.as_int("batch_size", self.batch_size))
        if self.quantities is None:
            set_field("quantities", family.quantities)
        set_field("quantities", _check_quantities(self.quantities))
        family.check_quantities(self.quantities, self.depth)
        set_field("weight_decay", _checks.as_float("weight_decay", self.weight_decay, minimum=0.0))
        for name in ("schedule_alpha", "schedule_factor"):
            if getattr(self, name) is not None:
                set_field(name, _checks.as_float(name, getattr(self, name)))
        if self.schedule_boundaries is not None and self.schedule == "step":
            set_field(
                "schedule_boundaries",
                algorithms.check_boundaries(self.schedule_boundaries, self.num_steps),
            )
        self.rule()  # validates the algorithm name, its options and the schedule

    def family(self) -> networks.Network:
        """The network family with this config's static shape (`networks.get`)."""
        return networks.get(self.network, self.widths)

    def step_schedule(self):
        """The optax schedule of the step-size factor `f(t)` (`algorithms.make_schedule`), or
        None for "constant"."""
        return algorithms.make_schedule(
            self.schedule,
            self.num_steps,
            alpha=self.schedule_alpha,
            boundaries=self.schedule_boundaries,
            factor=self.schedule_factor,
        )

    def _update_options(self) -> dict:
        """The options of the optax update that differ from plain SGD."""
        options = {"momentum": self.momentum} if self.momentum else {}
        if self.weight_decay:
            options["weight_decay"] = self.weight_decay
        schedule = self.step_schedule()
        if schedule is not None:
            options["schedule"] = schedule
        return options

    def rule(self) -> algorithms.Rule:
        """The training rule with this config's static options bound."""
        options = self._update_options()
        if self.noise is not None:
            options["noise"] = self.noise
        if self.batch_size is not None:
            options["batch_size"] = self.batch_size
        family = self.family()
        if family != networks.DIAGONAL:  # the rules' default
            options["network"] = family
        return algorithms.get_rule(self.algorithm, **options)

    def init_state(self, params) -> algorithms.TrainState:
        """A fresh training state of this config's rule at `params` (the network's pytree)."""
        return algorithms.init_state(params, **self._update_options(), algorithm=self.algorithm)

    def step_sizes(self, eta: ArrayLike | None = None, dtype=None) -> jax.Array:
        """The step size of every step `0 .. num_steps - 1`, `[num_steps]`: the peak `eta`
        (default `self.eta`) times the schedule's factor, as the optimizer computes it."""
        eta = jnp.asarray(self.eta if eta is None else eta, dtype)
        return algorithms.step_sizes(eta, self.step_schedule(), self.num_steps)

    def record_steps(self) -> np.ndarray:
        """The steps at which the state is recorded, `int [num_records]`, starting with 0."""
        if self.log_records is None:
            return np.arange(0, self.num_steps + 1, self.record_every)
        grid = np.geomspace(1, self.num_steps, self.log_records)
        return np.unique(np.concatenate([[0], np.round(grid).astype(int), [self.num_steps]]))

    def static(self) -> "SimConfig":
        """This config without its numeric defaults: the part that decides compilation."""
        return dataclasses.replace(self, eta=0.0, sigma=0.0, init=0.0, init_seed=None)

    def base_init(self, d: int, dtype) -> tuple[object, float]:
        """`(base, scale)`: initial parameters are `scale * base`, `base` the network's pytree
        (`[depth, d]` for the diagonal network)."""
        return self.family().base_init(self.init, self.init_seed, self.depth, d, dtype)

    def validate_for(self, problem: Problem) -> None:
        """Raises if this config cannot run on `problem` (shapes, and memory of one trajectory)."""
        itemsize = np.dtype(problem.gram.dtype).itemsize
        size = self.family().num_params(self.depth, problem.d)
        shape, per_example = f"[depth, d] = [{self.depth}, {problem.d}]", "[n, depth, d]"
        per_example_sizes = f"[{problem.n}, {self.depth}, {problem.d}]"
        if self.network != "diagonal":  # P numbers in a parameter pytree
            shape, per_example = f"[P] = [{size}] (widths {self.widths}, d = {problem.d})", "[n, P]"
            per_example_sizes = f"[{problem.n}, {size}]"
        _checks.check_fits(
            "depth is" if self.network == "diagonal" else "widths are",
            f"parameters {shape} and their step's temporaries",
            8 * size * itemsize,
        )
        names, num_records = "log_records is", (self.log_records or 0) + 2
        if self.log_records is None:
            names, num_records = "num_steps is", self.num_steps // self.record_every + 1
        _checks.check_fits(
            names,
            f"{num_records} records of one trajectory (at most {len(self.quantities)} quantities "
            f"of {shape} numbers each)",
            num_records * (16 + len(self.quantities) * size * itemsize),
        )
        if self.algorithm == "per_example_sam":
            _checks.check_fits(
                "n is",
                f"per_example_sam's ascent points and gradients of every example, twice "
                f"{per_example} = {per_example_sizes}",
                2 * problem.n * size * itemsize,
            )
        self.base_init(problem.d, problem.gram.dtype)
        if self.batch_size is not None and self.batch_size > problem.n:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= n = {problem.n}")
        if "test_loss" in self.quantities and not problem.has_test_data:
            raise ValueError(
                "quantities: test_loss needs held-out data, which this problem has none of: "
                "generate it with make_problem (n_test > 0, the default) or give "
                "problem_from_data X_test and y_test"
            )


def _check_quantities(quantities) -> tuple[str, ...]:
    """`quantities` as a tuple of names, or raises unless it is a non-empty sequence of names
    some network records (`networks.all_quantities`)."""
    try:
        if isinstance(quantities, (str, bytes)):
            raise TypeError("a single string")
        quantities = tuple(quantities)
    except TypeError:  # not iterable, or a 0-d array
        raise ValueError(
            f"quantities must be a non-empty list of names from {networks.all_quantities()}, got "
            f"{_checks.describe(quantities)}"
        ) from None
    known = networks.all_quantities()
    unknown = [q for q in quantities if not isinstance(q, str) or q not in known]
    if unknown or not quantities:
        raise ValueError(f"quantities must be a non-empty subset of {known}, got unknown {unknown}")
    return quantities


def observe(
    rule: algorithms.Rule,
    key: jax.Array,
    state: algorithms.TrainState,
    problem: Problem,
    hyper: algorithms.Hyper,
    step: jax.Array,
    quantities,
    network: networks.Network = networks.DIAGONAL,
    memory=None,
) -> tuple[dict, object]:
    """`network.record` of one trajectory at `step`, taking the next step too when a quantity
    needs it: `(values, memory)`, `memory` the previous record's (None at the first)."""
    next_params = None
    if set(quantities) & set(network.step_quantities):  # the very step the run takes next
        next_params = rule(jax.random.fold_in(key, step), state, problem, hyper).params
    return network.record(state.params, problem, hyper, quantities, next_params, memory)


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


def check_problem_and_config(problem, config) -> None:
    """Raises a ValueError naming the argument unless `problem` is a `Problem` and `config` a
    `SimConfig`."""
    if not isinstance(problem, Problem):
        raise ValueError(
            f"problem must be a noisydln.Problem (make_problem, problem_from_data), got "
            f"{_checks.describe(problem)}"
        )
    if not isinstance(config, SimConfig):
        raise ValueError(f"config must be a noisydln.SimConfig, got {_checks.describe(config)}")


def check_run_arguments(key, problem, config) -> None:
    """`check_problem_and_config`, and `key` must be a PRNG key."""
    _checks.check_key(key)
    check_problem_and_config(problem, config)


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
    check_run_arguments(key, problem, config)
    for name, value in (("sigma", sigma), ("eta", eta), ("init_scale", init_scale)):
        if value is not None:  # checked before any conversion: "0.1" is not a number
            if name == "init_scale":
                _checks.check_finite(name, value)
            else:
                _checks.check_nonnegative(name, value)
            _checks.check_scalar(name, value)
    config.validate_for(problem)
    dtype = problem.gram.dtype
    hyper = algorithms.Hyper(
        sigma=jnp.asarray(config.sigma if sigma is None else sigma, dtype),
        eta=jnp.asarray(config.eta if eta is None else eta, dtype),
    )
    base, scale = config.base_init(problem.d, dtype)
    scale = jnp.asarray(scale if init_scale is None else init_scale, dtype)
    params = jax.tree.map(lambda w: w * scale, base)
    steps = config.record_steps()
    records = _simulate_jit(key, problem, hyper, params, config.static())
    return Trajectory(steps=steps, records=records)


def scan_records(
    state,
    steps: np.ndarray,
    advance_fn: Callable[[object, jax.Array, jax.Array], object],
    observe_fn: Callable[[object, object, jax.Array, object], tuple[object, object]],
    per_record=None,
):
    """`observe_fn(state, per_record[r], steps[r], memory)` at every record r, advancing in
    between; the recorder's `memory` is carried from each record to the next.

    Args:
      state: the initial state (one trajectory, or a batch of them).
      steps: the record steps, `int [R]`, starting with 0.
      advance_fn: `(state, start, stop) -> state`, the steps `start .. stop - 1`.
      observe_fn: `(state, extra, step, memory) -> (observation, memory)` at a record step;
        `memory` is None at the first record, then what the previous call returned (a pytree
        whose structure and shapes stay those of the first call's, `{}` for nothing).
      per_record: optional pytree with leading axis `[R]`, handed to `observe_fn` record by record.

    Returns:
      The observations stacked along a leading axis `[R, ...]`.
    """
    take = lambda r: jax.tree.map(lambda x: x[r], per_record)  # noqa: E731

    def body(carry, inputs):
        state, memory = carry
        (start, stop), extra = inputs
        state = advance_fn(state, start, stop)
        observation, memory = observe_fn(state, extra, stop, memory)
        return (state, memory), observation

    step0 = jnp.asarray(steps[0], jnp.int32)
    carried = jax.eval_shape(lambda s, e: observe_fn(s, e, step0, None)[1], state, take(0))
    if not jax.tree.leaves(carried):
        # nothing carried from record to record: every record, the first included (after an
        # empty stretch), is taken by the one loop body, which XLA then compiles once
        starts = np.concatenate([steps[:1], steps[:-1]])
        stretches = (jnp.asarray(starts, jnp.int32), jnp.asarray(steps, jnp.int32))
        return jax.lax.scan(body, (state, carried), (stretches, per_record))[1]
    first, memory = observe_fn(state, take(0), step0, None)
    rest_inputs = jax.tree.map(lambda x: x[1:], per_record)
    _, rest = jax.lax.scan(body, (state, memory), (segments(steps), rest_inputs))
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)


@functools.partial(jax.jit, static_argnames="config")
def _simulate_jit(key, problem, hyper, params, config):
    rule = config.rule()
    return scan_records(
        config.init_state(params),
        config.record_steps(),
        lambda state, start, stop: advance(rule, key, state, problem, hyper, start, stop),
        lambda state, _, step, memory: observe(
            rule, key, state, problem, hyper, step, config.quantities, config.family(), memory
        ),
    )
