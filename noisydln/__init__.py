"""noisydln: Monte Carlo simulation of stochastic SAM on diagonal (and dense) linear networks, in JAX."""

from noisydln import algorithms as algorithms
from noisydln import networks as networks
from noisydln import noise as noise
from noisydln import quantities as quantities
from noisydln import runtime as runtime
from noisydln import stats as stats
from noisydln import theory as theory
from noisydln import threefry as threefry
from noisydln.experiment import Experiment as Experiment
from noisydln.grid import GridResult as GridResult
from noisydln.grid import run_grid as run_grid
from noisydln.model import end_to_end as end_to_end
from noisydln.model import grad as grad
from noisydln.model import hessian as hessian
from noisydln.model import hessian_trace as hessian_trace
from noisydln.model import imbalances as imbalances
from noisydln.model import loss as loss
from noisydln.model import perturbed_grad as perturbed_grad
from noisydln.problem import Problem as Problem
from noisydln.problem import make_design as make_design
from noisydln.problem import make_problem as make_problem
from noisydln.problem import problem_from_data as problem_from_data
from noisydln.problem import sparse_teacher as sparse_teacher
from noisydln.quantities import EXTRA_QUANTITIES as EXTRA_QUANTITIES
from noisydln.quantities import QUANTITIES as QUANTITIES
from noisydln.simulate import SimConfig as SimConfig
from noisydln.simulate import Trajectory as Trajectory
from noisydln.simulate import simulate as simulate
from noisydln.stats import validate as validate

__version__ = "0.1.0"


def __getattr__(name: str):
    """`noisydln.results` and `noisydln.run_experiment` are imported on first use: they bring
    xarray and pandas, which a run of `run_grid` or a one-line CLI error does not need."""
    if name in ("results", "run_experiment"):
        import importlib  # noqa: PLC0415

        results = importlib.import_module("noisydln.results")
        return results if name == "results" else results.run_experiment
    raise AttributeError(f"module 'noisydln' has no attribute {name!r}")


runtime.use_every_core()  # one CPU device per core, unless chosen already (see noisydln.runtime)
threefry.use_unrolled_on_cpu()  # the same bits, compiled faster (see noisydln.threefry)
