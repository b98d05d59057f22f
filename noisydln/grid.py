"""Many trajectories at once: seeds x noise levels x step sizes x init scales, reduced on device.

`run_grid` is the one place that compiles. At every record it folds the trajectories of every
grid cell into streamed moments (count, mean, m2) inside the compiled scan, so memory does not
grow with the number of seeds. Seeds run in chunks and, when several devices exist (those of
every process in a `jax.distributed` run), each chunk is sharded over them; the moments are
folded seed after seed in index order by one loop body, so the statistics are the same bit for
bit whatever the chunk size or device count. After every chunk, `on_chunk` receives a
`GridState` (the moments so far and the next seed) from which a later call continues exactly.

Common random numbers: seed s draws its noise from `fold_in(key, s)` in every grid cell, so
cells differ only through sigma / eta / init, not through the noise. Differences between cells
are then estimated with far less variance than with independent noise (the same paths are
compared); the per-cell means and standard errors are those of independent runs.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from jax.typing import ArrayLike

from noisydln import algorithms, moments
from noisydln.grid_result import GridResult as GridResult
from noisydln.grid_result import assemble, fetch
from noisydln.plan import (
    ChunkPlan,
    RunSize,
    check_fits,
    default_devices,
    plan_chunks,
    record_temporaries,
)
from noisydln.problem import Problem
from noisydln.simulate import (
    SimConfig,
    advance,
    check_problem_and_config,
    check_run_arguments,
    observe,
    scan_records,
)

MAX_FLOAT32_SEEDS = 2**24  # float32 counts are exact integers up to here


def _grid_axis(name: str, values, default: float) -> np.ndarray:
    if values is None:
        return np.asarray([default], dtype=float)
    try:  # a string, bools, complex numbers or ragged nesting are not an axis of numbers
        dtype = np.asarray(values).dtype
    except (ValueError, TypeError):
        dtype = np.dtype(object)
    entries = values if isinstance(values, (list, tuple)) else ()
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)) or any(
        isinstance(v, (bool, np.bool_)) for v in entries
    ):
        shown = " ".join(repr(values).split())
        raise ValueError(
            f"{name} must be a 1-D sequence of real numbers, got "
            f"{shown if len(shown) <= 80 else shown[:77] + '...'}"
        )
    if np.ndim(values) > 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {np.shape(values)}")
    array = np.asarray(values, dtype=float).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {values!r}")
    if np.any(array < 0):
        raise ValueError(f"{name} must be >= 0, got {values!r}")
    return array


class GridState(NamedTuple):
    """Where a grid run stands: the moments of seeds `0 .. next_seed - 1` (`Moments` with
    `count: [R, C]`, `mean[name]: [R, C, *shape]`), folded in seed order. A run continued
    from a `GridState` gives the same numbers, bit for bit, as one that never stopped."""

    moments: moments.Moments
    next_seed: int


def _seed_block(key, first, num_seeds, size, axis_name):
    """This device's `size` seeds of the chunk starting at seed `first`: their keys `[size]`
    and whether each is a real seed (`bool [size]`, False for the padding past `num_seeds`)."""
    offset = first if axis_name is None else first + jax.lax.axis_index(axis_name) * size
    seeds = offset + jnp.arange(size, dtype=jnp.int32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, seeds), seeds < num_seeds


def _chunk(acc, key, first, num_seeds, problem, hyper, params0, *, config, keep, size, axis_name):
    """Runs this device's `size` seeds x all cells and folds the chunk into the moments `acc`.

    Args:
      acc: `Moments` with `count: [R, C]`, `mean[name]: [R, C, *shape]`.
      key: the root key; first: the chunk's first seed; num_seeds: seeds in the run (`[]`).
      hyper: `Hyper` of `[C]` arrays; params0: the network's parameters with a leading `[C]`
        axis (`[C, depth, d]` for the diagonal network).
      axis_name: the mesh axis the seeds are sharded over, or None.

    Returns:
      `(acc, values)`, `values[name]: [R, size, C, *shape]` when `keep`, else None.
    """
    rule, family, quantities = config.rule(), config.family(), config.quantities
    seed_keys, valid = _seed_block(key, first, num_seeds, size, axis_name)
    states = jax.vmap(config.init_state)(params0)
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, valid.shape + x.shape), states)

    def advance_all(states, start, stop):
        def one_seed(key, cell_states):  # the seed's noise is drawn once, shared by all cells
            return jax.vmap(lambda state, h: advance(rule, key, state, problem, h, start, stop))(
                cell_states, hyper
            )

        return jax.vmap(one_seed)(seed_keys, states)

    def observe_all(states, acc_r, step, memory):  # memory: [size, C, ...] per trajectory
        def one_seed(key, cell_states, cell_memory):
            return jax.vmap(
                lambda state, h, m: observe(
                    rule, key, state, problem, h, step, quantities, family, m
                )
            )(cell_states, hyper, cell_memory)

        values, memory = jax.vmap(one_seed)(seed_keys, states, memory)
        finite = valid[:, None]
        for value in values.values():
            flat = value.reshape(value.shape[:2] + (-1,))
            finite = finite & jnp.all(jnp.isfinite(flat), axis=-1)
        gathered, gathered_finite = values, finite
        if axis_name is not None:  # every device folds all seeds, in seed order
            gathered, gathered_finite = jax.lax.all_gather((values, finite), axis_name, tiled=True)
        acc_r = moments.fold(acc_r, gathered, gathered_finite)
        return (acc_r, (values if keep else None)), memory

    return scan_records(states, config.record_steps(), advance_all, observe_all, per_record=acc)


@functools.partial(jax.jit, static_argnames=("config", "keep", "mesh", "chunk_size"))
def _run_chunk(acc, key, first, num_seeds, problem, hyper, params0, *, config, keep, mesh,
               chunk_size):  # fmt: skip
    args = (acc, key, first, num_seeds, problem, hyper, params0)
    if mesh is None:
        return _chunk(*args, config=config, keep=keep, size=chunk_size, axis_name=None)
    body = functools.partial(
        _chunk, config=config, keep=keep, size=chunk_size // mesh.size, axis_name="seeds"
    )
    replicated = PartitionSpec()
    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(replicated,) * len(args),
        out_specs=(replicated, PartitionSpec(None, "seeds") if keep else replicated),
        check_vma=False,
    )(*args)


def _seed_mesh(devices) -> Mesh | None:
    """A 1-D mesh named "seeds" over `devices`, or None for a single device."""
    return Mesh(np.asarray(devices), ("seeds",)) if len(devices) > 1 else None


class _Grid(NamedTuple):
    """A grid run's traced inputs and static sizes, before anything is compiled."""

    axes: tuple[np.ndarray, np.ndarray, np.ndarray]  # sigmas, etas, init scales
    hyper: algorithms.Hyper  # [C] per cell
    params0: object  # the network's parameters with a leading [C] axis: [C, depth, d], ...
    like: dict  # name -> ShapeDtypeStruct of one record of one trajectory
    state_elements: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(a.size for a in self.axes)


def _set_up(problem, config, sigmas, etas, init_scales) -> _Grid:
    check_problem_and_config(problem, config)
    config.validate_for(problem)
    dtype = problem.gram.dtype
    base, default_scale = config.base_init(problem.d, dtype)
    axes = (
        _grid_axis("sigmas", sigmas, config.sigma),
        _grid_axis("etas", etas, config.eta),
        _grid_axis("init_scales", init_scales, default_scale),
    )
    # the cells' values on the host (NumPy's IEEE products are XLA's): nothing compiles here
    cell_sigma, cell_eta, cell_scale = (
        np.asarray(a.reshape(-1), dtype) for a in np.meshgrid(*axes, indexing="ij")
    )
    hyper = algorithms.Hyper(sigma=jax.device_put(cell_sigma), eta=jax.device_put(cell_eta))
    one = algorithms.Hyper(cell_sigma[0], cell_eta[0])
    record = functools.partial(config.family().record, quantities=config.quantities)
    like = jax.eval_shape(lambda p: record(p, problem, one, next_params=p)[0], base)
    state = jax.eval_shape(config.init_state, base)
    state_elements = sum(math.prod(x.shape) for x in jax.tree.leaves(state))
    params0 = jax.tree.map(
        lambda w: jax.device_put(cell_scale.reshape((-1,) + (1,) * w.ndim) * np.asarray(w)[None]),
        base,
    )
    return _Grid(axes, hyper, params0, like, state_elements)


def _run_size(grid: _Grid, problem, config, num_seeds, keep) -> RunSize:
    if problem.gram.dtype.itemsize < 8 and num_seeds > MAX_FLOAT32_SEEDS:
        raise ValueError(
            f"num_seeds: float32 moments count at most 2**24 = {MAX_FLOAT32_SEEDS} seeds exactly, "
            f"got {num_seeds}; run in float64 (jax_enable_x64), or run several grids with "
            "different keys and pool them"
        )
    return RunSize(
        num_seeds=num_seeds,
        cells=math.prod(grid.shape),
        num_records=len(config.record_steps()),
        state_elements=grid.state_elements,
        record_elements=sum(math.prod(v.shape) for v in grid.like.values()),
        problem_elements=sum(x.size for x in jax.tree.leaves(problem)),
        itemsize=problem.gram.dtype.itemsize,
        keep=bool(keep),
        record_temporaries=record_temporaries(
            config.quantities, sum(math.prod(x.shape[1:]) for x in jax.tree.leaves(grid.params0))
        )
        + config.family().record_temporaries(config.quantities, problem.d),
    )


def _check_num_seeds(num_seeds) -> None:
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, (int, np.integer)) or num_seeds < 1:
        raise ValueError(f"num_seeds must be a positive integer, got {num_seeds!r}")
    if num_seeds > 2**31 - 1:  # seed indices are int32 inside fold_in
        raise ValueError(f"num_seeds must be at most 2**31 - 1 (seeds are int32), got {num_seeds}")


def _devices(devices, num_seeds) -> list:
    if devices is None:
        return default_devices(num_seeds)
    if isinstance(devices, (str, bytes)) or not hasattr(devices, "__iter__"):
        raise ValueError(f"devices must be a list of jax devices, got {devices!r}")
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ValueError(f"devices must be a non-empty list of jax devices, got {devices!r}")
    return devices


def grid_plan(
    problem: Problem,
    config: SimConfig,
    *,
    num_seeds: int,
    sigmas: ArrayLike | None = None,
    etas: ArrayLike | None = None,
    init_scales: ArrayLike | None = None,
    chunk_size: int | None = None,
    keep_trajectories: bool = False,
    devices=None,
) -> ChunkPlan:
    """The `ChunkPlan` `run_grid` would follow with these arguments (chunks, devices, memory
    estimate), computed without compiling or running anything."""
    _check_num_seeds(num_seeds)
    grid = _set_up(problem, config, sigmas, etas, init_scales)
    size = _run_size(grid, problem, config, num_seeds, keep_trajectories)
    return plan_chunks(size, chunk_size, len(_devices(devices, num_seeds)))


def _empty_state(grid: _Grid, num_records: int) -> GridState:
    cells = math.prod(grid.shape)
    template = {
        k: jax.ShapeDtypeStruct((num_records, cells) + v.shape, v.dtype)
        for k, v in grid.like.items()
    }
    return GridState(moments.empty(template, (num_records, cells)), 0)


def _check_start(start: GridState, empty: GridState, num_seeds: int) -> GridState:
    """`start` as arrays of the run's shapes, or a ValueError saying what does not match."""
    like = jax.tree.map(lambda x: (x.shape, x.dtype), empty.moments)
    given = jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype), start.moments)
    if jax.tree.structure(like) != jax.tree.structure(given) or like != given:
        raise ValueError("start: its moments do not have this run's quantities, shapes and dtype")
    next_seed = start.next_seed
    if not (0 <= next_seed <= num_seeds) or (next_seed % moments.BLOCK and next_seed != num_seeds):
        raise ValueError(
            f"start: next_seed must be a multiple of {moments.BLOCK} in [0, num_seeds], "
            f"got {next_seed}"
        )
    return GridState(jax.tree.map(jnp.asarray, start.moments), int(next_seed))


def run_grid(
    key: jax.Array,
    problem: Problem,
    config: SimConfig,
    *,
    num_seeds: int,
    sigmas: ArrayLike | None = None,
    etas: ArrayLike | None = None,
    init_scales: ArrayLike | None = None,
    chunk_size: int | None = None,
    keep_trajectories: bool = False,
    devices=None,
    max_memory: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    start: GridState | None = None,
    on_chunk: Callable[[GridState], None] | None = None,
) -> GridResult:
    """Monte Carlo statistics of `num_seeds` trajectories in every cell of a grid.

    Args:
      key: root key; seed s uses `fold_in(key, s)` in every cell (common random numbers), the
        key `simulate` would be given for that seed.
      problem: the regression problem.
      config: the run's description; its `sigma`, `eta` and init scale are the defaults of the
        grid axes. The grid values are traced: sweeping them never recompiles.
      num_seeds: trajectories per cell, >= 1.
      sigmas, etas, init_scales: 1-D grid axes (values >= 0); one value each when not given.
      chunk_size: seeds per compiled call (default: all seeds, or equal chunks whose
        parameters take at most about 8 MB), rounded up to a multiple of 16 x the number of
        devices (and to at least 32).
        Any chunk size gives the same numbers.
      keep_trajectories: also return every seed's records (memory grows with num_seeds).
      devices: devices to shard each chunk's seeds over (default: every device of every
        process, `jax.devices()`, but no more than one per 16 seeds).
      max_memory: bytes a chunk may use per device; before compiling, a chunk estimated to
        need more (or more than the device has) is refused with a `ValueError` that gives the
        estimate and a chunk size that fits (see `grid_plan`).
      progress: called as `progress(chunks_done, num_chunks)` after each chunk has finished.
      start: a `GridState` handed to `on_chunk` by an earlier run with the same arguments:
        the run continues from it and gives the same numbers as one that never stopped.
      on_chunk: called with the `GridState` (moments on the host) after every chunk, e.g. to
        save a checkpoint.

    Returns:
      The `GridResult`.

    Examples:
      >>> import jax, noisydln
      >>> problem = noisydln.make_problem(jax.random.key(0), 40, 8, design="orthogonal", k=2)
      >>> config = noisydln.SimConfig(num_steps=100, record_every=50, eta=0.05, init=0.5)
      >>> result = noisydln.run_grid(jax.random.key(1), problem, config, num_seeds=16, sigmas=[0.1, 0.3])
      >>> result.mean["beta"].shape, result.steps.tolist()
      ((2, 1, 1, 3, 8), [0, 50, 100])
    """
    check_run_arguments(key, problem, config)
    _check_num_seeds(num_seeds)
    grid = _set_up(problem, config, sigmas, etas, init_scales)
    devices = _devices(devices, num_seeds)
    size = _run_size(grid, problem, config, num_seeds, keep_trajectories)
    plan = plan_chunks(size, chunk_size, len(devices))
    check_fits(plan, devices[0], max_memory)
    state = _empty_state(grid, size.num_records)
    if start is not None:
        if keep_trajectories:
            raise ValueError("start: a run that keeps trajectories cannot be continued")
        state = _check_start(start, state, num_seeds)
    mesh = _seed_mesh(devices)
    firsts = range(state.next_seed, num_seeds, plan.chunk_size)
    done_before = plan.num_chunks - len(firsts)
    acc, kept = state.moments, []

    def report(done_acc, next_seed, index):  # after chunk `index` has finished
        if on_chunk is not None:
            on_chunk(GridState(fetch(done_acc), next_seed))
        if progress is not None:
            jax.block_until_ready(done_acc)
            progress(done_before + index + 1, plan.num_chunks)

    pending = None  # the last chunk dispatched; reported once the next one is on its way
    for index, first in enumerate(firsts):
        acc, values = _run_chunk(
            acc, key, jnp.int32(first), jnp.int32(num_seeds), problem, grid.hyper, grid.params0,
            config=config.static(), keep=keep_trajectories, mesh=mesh, chunk_size=plan.chunk_size,
        )  # fmt: skip
        if pending is not None:
            report(*pending)  # saving overlaps the chunk just dispatched
        pending = (acc, min(first + plan.chunk_size, num_seeds), index)
        if keep_trajectories:
            kept.append(fetch(values))
    if pending is not None:
        report(*pending)
    return assemble(acc, kept, config, grid.shape, grid.axes, num_seeds)
