"""The fixed validation suite: experiment specs covering the paper's three claims, one table.

Each experiment is a spec file in `noisydln/specs/validation/` (run any of them alone with
`noisydln run`); `VALIDATION` names the checks that judge it.
"""

import dataclasses
from pathlib import Path

import jax

from noisydln.stats.balancing import check_balancing
from noisydln.stats.limits import check_limit
from noisydln.stats.report import Report, combine
from noisydln.stats.sharpness import check_sharpness
from noisydln.stats.trajectory import check_trajectory

SPEC_DIR = Path(__file__).parents[1] / "specs" / "validation"
FULL_SEEDS = 2048  # the seeds the spec files are written for

# spec file stem -> (check, options) pairs, in the order of the printed table
VALIDATION = {
    "balancing": ((check_trajectory, {}), (check_balancing, {}), (check_sharpness, {})),
    "soft_thresholding": ((check_trajectory, {}), (check_limit, {})),
    "depth3_limit": ((check_limit, {}),),
    "weighted_lasso": ((check_limit, {}),),
    "basins_depth3": ((check_limit, {"tail": 0.01}),),
    "basins_depth4": ((check_limit, {"tail": 0.01}),),
}


def validation_specs(*, num_seeds: int = FULL_SEEDS, quick: bool = False, dtype: str | None = None):
    """The validation experiments, `{name: Experiment}`, scaled to `num_seeds`.

    Args:
      num_seeds: seeds per grid cell of the main experiments (each spec's own count is scaled
        by `num_seeds / 2048`; the gradient-descent runs keep their one seed).
      quick: 8x fewer seeds, and one step size for soft thresholding.
      dtype: "float32" or "float64" (default: float64 when JAX runs with x64 enabled).
    """
    from noisydln.experiment import Experiment  # noqa: PLC0415 (specs build on the engine)

    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"num_seeds must be a positive integer, got {num_seeds!r}")
    seeds = max(num_seeds // (8 if quick else 1), 32)
    dtype = dtype or ("float64" if jax.config.jax_enable_x64 else "float32")
    specs = {}
    for name in VALIDATION:
        spec = Experiment.from_toml(SPEC_DIR / f"{name}.toml")
        grid = spec.grid
        if grid.num_seeds > 1:
            grid = dataclasses.replace(grid, num_seeds=max(grid.num_seeds * seeds // FULL_SEEDS, 8))
        if quick and name == "soft_thresholding":
            grid = dataclasses.replace(grid, etas=grid.etas[:1])
        run = dataclasses.replace(spec.run, dtype=dtype)
        specs[name] = dataclasses.replace(spec, grid=grid, run=run)
    return specs


def validate(
    seed: int | jax.Array = 0, *, num_seeds: int = FULL_SEEDS, quick: bool = False
) -> Report:
    """Runs the fixed experiments covering the paper's three claims; one table.

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
      seed: added to every spec's grid seed (an int, or a PRNG key from which one is drawn).
      num_seeds: seeds per grid cell (`quick` divides it by 8; the run lengths stay).
      quick: fewer seeds and one step size for soft thresholding.
    """
    from noisydln.results import run_experiment  # noqa: PLC0415 (results builds on stats)

    if not isinstance(seed, int):
        seed = int(jax.random.randint(seed, (), 0, 2**20))
    reports = []
    for name, spec in validation_specs(num_seeds=num_seeds, quick=quick).items():
        spec = dataclasses.replace(
            spec, grid=dataclasses.replace(spec.grid, seed=spec.grid.seed + seed)
        )
        ds = run_experiment(spec)
        reports += [check(ds, **options) for check, options in VALIDATION[name]]
    return combine(*reports)
