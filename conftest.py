"""Strict test configuration for tests and doctests: float64, no implicit rank promotion, one key.

Speed and memory: every process of a test run (xdist workers, the `noisydln` subprocesses and
notebook kernels they start) shares JAX's persistent compilation cache, so a program compiled
by one is loaded by the others (entries are keyed on the whole computation and the backend, so
nothing stale is served; set JAX_COMPILATION_CACHE_DIR to choose the folder), and a test
process drops its compiled programs at the end of a module once it holds more than 800 MB, so
its memory does not grow with the number of modules it has run (dropping them after every
module made each later module load its small programs again: 626 s of CPU for a cold run
against 575 s). Each test process has one CPU device and, under pytest-xdist (one worker per
core), its own core; tests of several devices start their own processes.
"""

import gc
import os
import tempfile
from pathlib import Path

_UID = os.getuid() if hasattr(os, "getuid") else "user"
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(tempfile.gettempdir()) / f"noisydln-test-jax-cache-{_UID}"),
)
# every program, however quick to compile: the modules' small eager programs are loaded again,
# not compiled again, after `jax.clear_caches()` and in the subprocesses
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# one CPU device per test process: pytest-xdist already runs a worker per core (tests of
# several devices start processes with XLA_FLAGS, tests/test_runtime_devices.py the default)
os.environ.setdefault("NOISYDLN_CPU_DEVICES", "1")

# the cores the whole run may use (None where the OS does not say)
RUN_CORES = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def _cores_of_this_worker() -> None:
    """Gives each pytest-xdist worker its own share of the run's cores (where the OS allows it).

    XLA compiles on threads as many as the process's cores. With two workers on two cores both
    sets contend for both cores: nine chunk programs took 10.5 s of CPU to compile on two cores
    against 8.5 s on one; ten or eleven compile-heavy modules, cold, took 8 to 12 % less CPU
    and 2 to 7 % less time with one core per worker (four alternating pairs). Tests whose
    processes need the run's cores (their number, or two processes that wait on each other)
    use `every_core`.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or workers < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(RUN_CORES)
    if len(cores) >= workers:
        os.sched_setaffinity(0, cores[int(worker[2:]) % workers :: workers])


_cores_of_this_worker()  # before JAX starts its threads: they inherit this thread's cores

import jax  # noqa: E402 (after the cache settings it reads)
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


# see the module docstring: the memory above which a module's end drops the compiled programs
RELEASE_ABOVE_BYTES = int(float(os.environ.get("NOISYDLN_TEST_RELEASE_ABOVE_MB", "800")) * 2**20)


def _resident_bytes() -> int | None:
    """This process's resident memory now (Linux), None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drops the compiled programs when a module ends with the process above
    `RELEASE_ABOVE_BYTES` (or when its memory cannot be read)."""
    yield
    resident = _resident_bytes()
    if resident is None or resident > RELEASE_ABOVE_BYTES:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="module")
def every_core():
    """The module runs on all the run's cores, not only its worker's share, and so do the
    processes it starts (they inherit them): for tests of the default device count, and of
    processes that wait on each other."""
    if RUN_CORES is None:
        yield
        return
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, RUN_CORES)
    yield
    os.sched_setaffinity(0, own)


@pytest.fixture
def key():
    """The one root key of the test suite; tests split it, never search for a passing seed."""
    return jax.random.key(20250314)


def _xla_chunk_bytes(problem, config, *, num_seeds, sigmas, keep, devices):
    """`(ChunkPlan, bytes per device XLA allocates for one chunk: arguments + outputs +
    temporaries - aliased)` from the compiled chunk's memory analysis."""
    from noisydln import grid, plan

    setup = grid._set_up(problem, config, sigmas, None, None)
    size = grid._run_size(setup, problem, config, num_seeds, keep)
    chunk_plan = plan.plan_chunks(size, None, len(devices))
    state = grid._empty_state(setup, size.num_records)
    compiled = grid._run_chunk.lower(
        state.moments, jax.random.key(0), jnp.int32(0), jnp.int32(num_seeds), problem,
        setup.hyper, setup.params0, config=config.static(), keep=keep,
        mesh=grid._seed_mesh(devices), chunk_size=chunk_plan.chunk_size,
    ).compile()  # fmt: skip
    m = compiled.memory_analysis()
    used = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return chunk_plan, used - m.alias_size_in_bytes


@pytest.fixture
def xla_chunk_bytes():
    """XLA's memory analysis of one compiled chunk of `run_grid` (see `_xla_chunk_bytes`)."""
    return _xla_chunk_bytes


# Longest modules first, so that pytest-xdist (`--dist loadfile --no-loadscope-reorder` hands
# out whole modules in collection order; without the second flag it would hand them out by
# number of tests) does not leave one worker alone with a long module at the end. The order is
# from measured durations of a cold run (`--durations=0`, summed per module); a module not
# listed runs after these, in file order.
LONGEST_FIRST = (
    "test_eigen_vs_eigvalsh.py",
    "test_checks_vs_realistic_errors.py",
    "test_checkpoint_vs_uninterrupted_run.py",
    "test_closed_forms_vs_solvers.py",
    "test_dense_grid_invariance.py",
    "test_dense_vs_autodiff.py",
    "test_readme_runs.py",
    "test_new_rules_vs_numpy.py",
    "test_limits_vs_gradient_descent.py",
    "test_bad_input_properties.py",
    "test_results_vs_run_grid.py",
    "test_model_vs_autodiff.py",
    "test_theory_vs_quadrature.py",
    "test_plan_vs_xla_memory.py",
    "test_distributed_vs_one_process.py",
    "test_grid_invariance.py",
    "test_algorithms_vs_formulas.py",
    "test_cli_run_and_demo.py",
    "test_notebooks_run.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a module


def pytest_collection_finish(session):
    """Moves everything alive after collection (JAX, the package, the test modules: alive until
    the end anyway) out of the garbage collector's sight, so that each full collection, the
    modules' own and Python's, scans only what the tests make (0.1 s less each)."""
    gc.collect()
    gc.freeze()
