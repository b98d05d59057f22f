"""A grid run's result: `GridResult`, assembled from the streamed moments (`assemble`)."""

import warnings
from typing import NamedTuple

import jax
import numpy as np

from noisydln import moments


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


def fetch(tree):
    """A pytree of (possibly multi-process) arrays as NumPy arrays on this host."""

    def one(x):
        if x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils  # noqa: PLC0415 (multi-process runs only)

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def assemble(total, kept, config, grid_shape, axes, num_seeds) -> GridResult:
    """Reshapes `[R, C, ...]` moments to `[S, E, I, R, ...]` and reports divergence.

    On the host (NumPy), then put on the device: nothing here compiles."""
    total = fetch(total)

    def to_grid(x):
        x = np.moveaxis(x, 1, 0)
        return x.reshape(grid_shape + x.shape[1:])

    mean = {k: to_grid(v) for k, v in moments.mean_or_nan(total).items()}
    var = {k: to_grid(v) for k, v in moments.variance(total).items()}
    count_grid = to_grid(total.count)
    count = {
        k: np.broadcast_to(count_grid.reshape(count_grid.shape + (1,) * (v.ndim - 4)), v.shape)
        for k, v in mean.items()
    }
    mean, var, count = ({k: jax.device_put(v) for k, v in d.items()} for d in (mean, var, count))
    diverged = (num_seeds - count_grid[..., -1]).astype(int)
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
            trajectories[k] = jax.device_put(values.reshape(grid_shape + values.shape[1:]))
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
