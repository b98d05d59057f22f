"""`import noisydln` asks for one CPU device per core unless the user chose (and leaves xarray for
later); `initialize` checks its arguments. Each case runs in a fresh process (the device count
is fixed when JAX starts)."""

import os
import subprocess
import sys

import pytest

from noisydln import runtime

# the default device count is one per core of the process: all the run's cores (conftest)
pytestmark = pytest.mark.usefixtures("every_core")


def _devices_after_import(code_before: str = "", **env) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    environment.pop(runtime.CPU_DEVICES_VARIABLE, None)
    environment.update(env)
    code = f"{code_before}\nimport noisydln, jax\nprint(len(jax.devices()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True
    )
    return out.stdout.strip() or out.stderr.strip().splitlines()[-1]


def test_default_is_one_device_per_available_core():
    assert _devices_after_import() == str(runtime.available_cores())


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, "3"),  # the user's flag
        ({runtime.CPU_DEVICES_VARIABLE: "1"}, "1"),
        ({runtime.CPU_DEVICES_VARIABLE: "5"}, "5"),
    ],
)
def test_user_choice_is_kept(env, expected):
    assert _devices_after_import(**env) == expected


def test_started_backend_is_left_alone():
    assert _devices_after_import("import jax; jax.numpy.zeros(1)") == "1"


def test_bad_device_variable_names_it():
    line = _devices_after_import(**{runtime.CPU_DEVICES_VARIABLE: "many"})
    assert line.startswith("ValueError") and runtime.CPU_DEVICES_VARIABLE in line


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"coordinator": "127.0.0.1:1234"}, "give all three or none"),
        ({"coordinator": "h:1", "num_processes": 0, "process_id": 0}, "num_processes"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, "process_id"),
        ({"coordinator": "h", "num_processes": 2, "process_id": 0}, "HOST:PORT"),
    ],
)
def test_initialize_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        runtime.initialize(**kwargs)


def test_initialize_without_a_cluster_does_nothing(monkeypatch):
    for name in runtime.CLUSTER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert runtime.cluster_size() == 1
    assert runtime.initialize() is False
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert runtime.cluster_size() == 4


def test_import_loads_xarray_only_when_results_are_used():
    """`import noisydln` (and a one-line CLI error) starts without xarray and pandas;
    `noisydln.results` and `noisydln.run_experiment` bring them on first use."""
    code = (
        "import sys, noisydln\n"
        "before = 'xarray' in sys.modules\n"
        "run = noisydln.run_experiment\n"
        "print(before, 'xarray' in sys.modules, run is noisydln.results.run_experiment)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]
