"""Many trajectories at once: seeds x noise levels x step sizes x init scales, reduced on device.

`run_grid` is the one place that compiles. At every record it folds the trajectories of every
grid cell into streamed moments (count, mean, m2) inside the compiled scan, so memory does not
grow with the number of seeds. Seeds run in chunks and, when several local devices exist, each
chunk is sharded over them; the moments are folded seed after seed in index order by one loop
body, so the statistics are the same bit for bit whatever the chunk size or device count.

Common random numbers: seed s draws its noise from `fold_in(key, s)` in every grid cell, so
cells differ only through sigma / eta / init, not through the noise. Differences between cells
are then estimated with far less variance than with independent noise (the same paths are
compared); the per-cell means and standard errors are those of independent runs.
"""

import functools
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from jax.typing import ArrayLike

from noisydln import algorithms, moments
from noisydln.problem import Problem
from noisydln.quantities import record
from noisydln.simulate import SimConfig, advance, observe, scan_records

_STATE_ELEMENTS_PER_CHUNK = 2**21  # default chunk: at most about 8 MB of float32 parameters


class GridResult(NamedTuple):
    """Monte Carlo statistics of a grid run.

    Every array in `mean`, `var` and `count` is `[S, E, I, R, *shape]`: S = len(sigmas),
    E = len(etas), I = len(init_scales), R = len(steps) and `shape` the quantity's own
    (`beta: [d]`, `imbalance: [depth - 1, d]`, scalars otherwise). `var` is the unbiased sample
    variance over the finite trajectories, `count` their number. `diverged: [S, E, I]` counts
    the trajectories that became non-finite (they are left out of the moments).
    `trajectories` (only with `keep_trajectories=True`): `[S, E, I, num_seeds, R, *shape]`.
    """

    steps: np.ndarray
    mean: dict[str, jax.Array]
    var: dict[str, jax.Array]
    count: dict[str, jax.Array]
    sigmas: np.ndarray
    etas: np.ndarray
    init_scales: np.ndarray
    num_seeds: int
    diverged: np.ndarray
    trajectories: dict[str, jax.Array] | None = None


def _grid_axis(name: str, values, default: float) -> np.ndarray:
    if values is None:
        return np.asarray([default], dtype=float)
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


def _default_chunk(num_seeds: int, cells: int, params_size: int) -> int:
    """Seeds per chunk: all of them, or equal chunks that fit `_STATE_ELEMENTS_PER_CHUNK`."""
    fit = max(1, _STATE_ELEMENTS_PER_CHUNK // (cells * params_size))
    num_chunks = -(-num_seeds // fit)
    return -(-num_seeds // num_chunks)


def chunk_plan(
    num_seeds: int, cells: int, params_size: int, chunk_size: int | None, num_devices: int
) -> tuple[int, int]:
    """`(seeds per chunk, number of chunks)` that `run_grid` uses.

    The chunk is `chunk_size` (default: all seeds, or equal chunks whose parameters take at
    most about 8 MB) rounded up to whole blocks of the moment fold on every device.
    """
    if chunk_size is None:
        chunk_size = _default_chunk(num_seeds, cells, params_size)
    elif (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    # whole blocks of the fold on every device: the numbers do not depend on the chunk size,
    # so rounding it up changes nothing but the padding (at least 16 seeds per device also
    # keeps Sigma @ beta a matrix product, which XLA would otherwise sum in another order)
    multiple = moments.BLOCK * num_devices
    chunk_size = -(-int(chunk_size) // multiple) * multiple
    return chunk_size, -(-num_seeds // chunk_size)


def _chunk(acc, seed_keys, valid, problem, hyper, params0, *, config, keep, axis_name):
    """Runs a block of seeds x all cells and folds it into the per-record moments `acc`.

    Args:
      acc: `Moments` with `count: [R, C]`, `mean[name]: [R, C, *shape]`.
      seed_keys: `[c]` keys of this device's seeds; valid: `bool [c]` (False for padding).
      hyper: `Hyper` of `[C]` arrays; params0: `[C, depth, d]`.
      axis_name: the mesh axis the seeds are sharded over, or None.

    Returns:
      `(acc, values)`, `values[name]: [R, c, C, *shape]` when `keep`, else None.
    """
    rule = config.rule()
    states = jax.vmap(algorithms.init_state, in_axes=(0, None))(params0, config.momentum)
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, valid.shape + x.shape), states)

    def advance_all(states, start, stop):
        def one_seed(key, cell_states):  # the seed's noise is drawn once, shared by all cells
            return jax.vmap(lambda state, h: advance(rule, key, state, problem, h, start, stop))(
                cell_states, hyper
            )

        return jax.vmap(one_seed)(seed_keys, states)

    def observe_all(states, acc_r, step):
        def one_seed(key, cell_states):
            return jax.vmap(
                lambda state, h: observe(rule, key, state, problem, h, step, config.quantities)
            )(cell_states, hyper)

        values = jax.vmap(one_seed)(seed_keys, states)
        finite = valid[:, None]
        for value in values.values():
            flat = value.reshape(value.shape[:2] + (-1,))
            finite = finite & jnp.all(jnp.isfinite(flat), axis=-1)
        gathered, gathered_finite = values, finite
        if axis_name is not None:  # every device folds all seeds, in seed order
            gathered, gathered_finite = jax.lax.all_gather((values, finite), axis_name, tiled=True)
        acc_r = moments.fold(acc_r, gathered, gathered_finite)
        return acc_r, (values if keep else None)

    return scan_records(states, config.record_steps(), advance_all, observe_all, per_record=acc)


@functools.partial(jax.jit, static_argnames=("config", "keep", "mesh"))
def _run_chunk(acc, seed_keys, valid, problem, hyper, params0, *, config, keep, mesh):
    if mesh is None:
        return _chunk(
            acc, seed_keys, valid, problem, hyper, params0, config=config, keep=keep, axis_name=None
        )
    seeds, replicated = PartitionSpec("seeds"), PartitionSpec()
    return jax.shard_map(
        functools.partial(_chunk, config=config, keep=keep, axis_name="seeds"),
        mesh=mesh,
        in_specs=(replicated, seeds, seeds, replicated, replicated, replicated),
        out_specs=(replicated, PartitionSpec(None, "seeds") if keep else replicated),
        check_vma=False,
    )(acc, seed_keys, valid, problem, hyper, params0)


def _seed_mesh(devices) -> Mesh | None:
    """A 1-D mesh named "seeds" over `devices`, or None for a single device."""
    return Mesh(np.asarray(devices), ("seeds",)) if len(devices) > 1 else None


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
    progress: Callable[[int, int], None] | None = None,
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
        parameters take at most about 8 MB), rounded up to a multiple of 16 x the number of devices.
        Any chunk size gives the same numbers.
      keep_trajectories: also return every seed's records (memory grows with num_seeds).
      devices: devices to shard each chunk's seeds over (default: all local devices).
      progress: called as `progress(chunks_done, num_chunks)` after each chunk has finished.

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
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, (int, np.integer)) or num_seeds < 1:
        raise ValueError(f"num_seeds must be a positive integer, got {num_seeds!r}")
    config.validate_for(problem)
    dtype = problem.gram.dtype
    base, default_scale = config.base_init(problem.d, dtype)
    sigma_axis = _grid_axis("sigmas", sigmas, config.sigma)
    eta_axis = _grid_axis("etas", etas, config.eta)
    scale_axis = _grid_axis("init_scales", init_scales, default_scale)
    grid_shape = (sigma_axis.size, eta_axis.size, scale_axis.size)
    cell_sigma, cell_eta, cell_scale = (
        jnp.asarray(a.reshape(-1), dtype)
        for a in np.meshgrid(sigma_axis, eta_axis, scale_axis, indexing="ij")
    )
    hyper = algorithms.Hyper(sigma=cell_sigma, eta=cell_eta)
    params0 = cell_scale[:, None, None] * base[None]
    cells = math.prod(grid_shape)

    devices = jax.local_devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    chunk_size, num_chunks = chunk_plan(num_seeds, cells, base.size, chunk_size, len(devices))
    mesh = _seed_mesh(devices)

    steps = config.record_steps()
    like = jax.eval_shape(
        lambda: record(
            params0[0],
            problem,
            algorithms.Hyper(cell_sigma[0], cell_eta[0]),
            config.quantities,
            next_params=params0[0],
        )
    )
    acc = moments.empty(
        {k: jnp.zeros((len(steps), cells) + v.shape, dtype) for k, v in like.items()},
        (len(steps), cells),
    )
    kept = []
    for index, first in enumerate(range(0, num_seeds, chunk_size)):
        seeds = jnp.arange(first, first + chunk_size)
        seed_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, seeds)
        acc, values = _run_chunk(
            acc, seed_keys, seeds < num_seeds, problem, hyper, params0,
            config=config.static(), keep=keep_trajectories, mesh=mesh,
        )  # fmt: skip
        if keep_trajectories:
            kept.append(jax.device_get(values))
        if progress is not None:
            jax.block_until_ready(acc)
            progress(index + 1, num_chunks)
    return _assemble(acc, kept, config, grid_shape, (sigma_axis, eta_axis, scale_axis), num_seeds)


def _assemble(total, kept, config, grid_shape, axes, num_seeds) -> GridResult:
    """Reshapes `[R, C, ...]` moments to `[S, E, I, R, ...]` and reports divergence."""

    def to_grid(x):
        x = jnp.moveaxis(x, 1, 0)
        return x.reshape(grid_shape + x.shape[1:])

    mean = {k: to_grid(v) for k, v in moments.mean_or_nan(total).items()}
    var = {k: to_grid(v) for k, v in moments.variance(total).items()}
    count_grid = to_grid(total.count)
    count = {
        k: jnp.broadcast_to(count_grid.reshape(count_grid.shape + (1,) * (v.ndim - 4)), v.shape)
        for k, v in mean.items()
    }
    diverged = np.asarray(num_seeds - count_grid[..., -1]).astype(int)
    if diverged.any():
        cells = [tuple(int(i) for i in idx) for idx in zip(*np.nonzero(diverged), strict=True)]
        warnings.warn(
            f"{int(diverged.sum())} trajectories became non-finite and were left out of the "
            f"statistics; (sigma, eta, init) cells {cells[:5]}{' ...' if len(cells) > 5 else ''} "
            "(see GridResult.diverged and count)",
            RuntimeWarning,
            stacklevel=3,
        )
    trajectories = None
    if kept:
        trajectories = {}
        for k in kept[0]:
            values = np.concatenate([chunk[k] for chunk in kept], axis=1)[:, :num_seeds]
            values = np.moveaxis(values, (2, 1), (0, 1))  # [C, seeds, R, ...]
            trajectories[k] = jnp.asarray(values.reshape(grid_shape + values.shape[1:]))
    return GridResult(
        steps=config.record_steps(),
        mean=mean,
        var=var,
        count=count,
        sigmas=axes[0],
        etas=axes[1],
        init_scales=axes[2],
        num_seeds=num_seeds,
        diverged=diverged,
        trajectories=trajectories,
    )
