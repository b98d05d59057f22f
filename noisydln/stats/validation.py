"""The fixed validation suite: a few experiments covering the paper's three claims, one table."""

import jax
import numpy as np

from noisydln import theory
from noisydln.simulate import SimConfig
from noisydln.stats.balancing import check_balancing
from noisydln.stats.limits import check_limit
from noisydln.stats.report import Report, combine
from noisydln.stats.sharpness import check_sharpness


def validate(key: jax.Array | None = None, *, num_seeds: int = 2048, quick: bool = False) -> Report:
    """Runs a small fixed set of experiments covering the paper's three claims; one table.

    1. Balancing and sharpness (depth 2, Gaussian design n = 100, d = 8, unbalanced start
       w_1 = 1, w_2 = 0.3, sigmas 0 / 0.3 / 0.5, eta = 0.01, 1000 steps): `check_balancing`,
       `check_sharpness`.
    2. Shrinkage-thresholding, depth 2 (orthogonal design, beta* = (1, -0.6, 0.3, 0.05, 0, 0),
       sigma = 0.3, etas 0.01 and 0.0025): `check_limit`, bias shrinking with eta.
    3. Depth 3 (diagonal design, sigma = 0.4, tau_3 = 0.197, a balanced start above the saddle,
       etas 0.004 and 0.002): `check_limit` with the basin rule, judged by the eta -> 0
       extrapolation. (With a large eta the noise carries some seeds into the origin's basin,
       a local minimum for depth >= 3: the mean is then a mixture, not `a_+^L`.)
    4. Weighted lasso, depth 2, Gaussian design (n = 60, d = 8, sigma = 0.3): `check_limit`.
    5. The basins, depths 3 and 4, by gradient descent on `L_R` (`expected_gd`): targets above
       and below tau_L, balanced starts above the saddle `a_-` and, for one coordinate, below
       it (that coordinate goes to 0 although its target is above the threshold).

    Args:
      key: root key (default `jax.random.key(0)`).
      num_seeds: seeds per grid cell (`quick` divides it by 8; the run lengths stay).
    """
    from noisydln.grid import run_grid  # the engine sits above this module's inputs
    from noisydln.problem import make_problem
    from noisydln.quantities import QUANTITIES

    key = jax.random.key(0) if key is None else key
    keys = jax.random.split(key, 8)
    scale = 1  # run lengths are what the claims need; `quick` only takes fewer seeds
    seeds = max(num_seeds // (8 if quick else 1), 32)

    balancing_problem = make_problem(keys[0], 100, 8, k=3, noise_std=0.1)
    unbalanced = np.stack([np.ones(8), np.full(8, 0.3)])
    balancing_config = SimConfig(
        num_steps=1000 // scale, record_every=5, eta=0.01, init=unbalanced,
        quantities=QUANTITIES + ("trace_gap", "sharpness_gap", "imbalance_step_residual"),
    )  # fmt: skip
    balancing_run = run_grid(
        keys[1], balancing_problem, balancing_config, num_seeds=seeds, sigmas=[0.0, 0.3, 0.5]
    )
    reports = [
        check_balancing(balancing_run, balancing_problem, balancing_config),
        check_sharpness(balancing_run, balancing_problem, balancing_config),
    ]

    teacher = np.array([1.0, -0.6, 0.3, 0.05, 0.0, 0.0])
    soft = make_problem(keys[2], 12, 6, design="orthogonal", beta_star=teacher)
    soft_config = SimConfig(
        num_steps=12000 // scale,
        record_every=100 // scale,
        init=np.stack([0.6 * np.ones(6), 0.3 * np.ones(6)]),
        quantities=("beta",),
    )
    soft_run = run_grid(
        keys[3],
        soft,
        soft_config,
        num_seeds=seeds,
        sigmas=[0.3],
        etas=[0.01, 0.0025] if not quick else [0.01],
    )
    reports.append(check_limit(soft_run, soft, soft_config))

    deep_teacher = np.array([1.0, 1.2, -0.8, 0.1, 0.0, 0.05])  # tau_3(0.4) = 0.197
    deep_diag = np.array([1.0, 2.0, 1.0, 0.5, 1.0, 1.5])
    deep = make_problem(keys[4], 12, 6, design="diagonal", diag=deep_diag, beta_star=deep_teacher)
    deep_init = 0.9 * np.ones((3, 6))
    deep_init[0] *= np.where(deep_teacher < 0, -1.0, 1.0)  # balanced, with the signs of z
    deep_config = SimConfig(
        depth=3,
        num_steps=24000 // scale,
        record_every=200 // scale,
        init=deep_init,
        quantities=("beta",),
    )
    deep_run = run_grid(
        keys[5], deep, deep_config, num_seeds=seeds // 4, sigmas=[0.4], etas=[0.004, 0.002]
    )
    reports.append(check_limit(deep_run, deep, deep_config))

    lasso = make_problem(keys[6], 60, 8, k=3, values="gaussian", noise_std=0.5)
    lasso_config = SimConfig(
        num_steps=8000 // scale, record_every=100 // scale, eta=0.01, init=0.4, quantities=("beta",)
    )
    lasso_run = run_grid(keys[7], lasso, lasso_config, num_seeds=seeds, sigmas=[0.3])
    reports.append(check_limit(lasso_run, lasso, lasso_config))

    basin_target = np.array([2.0, 1.5, -1.8, 0.5, 0.0, 0.3])
    basin = make_problem(keys[7], 12, 6, design="orthogonal", beta_star=basin_target)
    for depth, sigma in ((3, 0.5), (4, 0.6)):
        a_minus, _ = theory.stationary_roots(theory.diagonal_target(basin), sigma, depth)
        start = np.ones((depth, 6))
        start[0] *= np.where(basin_target < 0, -1.0, 1.0)  # balanced, with the signs of z
        start[:, 1] *= 0.5 * float(a_minus[1])  # coordinate 1 starts below its saddle
        basin_config = SimConfig(
            algorithm="expected_gd", depth=depth, num_steps=20000, record_every=1000,
            eta=0.05, init=start, quantities=("beta",),
        )  # fmt: skip
        basin_run = run_grid(keys[7], basin, basin_config, num_seeds=1, sigmas=[sigma])
        reports.append(check_limit(basin_run, basin, basin_config, tail=0.01))
    return combine(*reports)
