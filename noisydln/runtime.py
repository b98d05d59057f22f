"""Where the computation runs: every CPU core by default, several processes through
`jax.distributed`.

Every core. XLA runs each CPU device's program on one host thread pool; the seeds of a chunk
are sharded over devices, so on a CPU `run_grid` needs one device per core to use them all.
`import noisydln` therefore asks JAX for one CPU device per core available to the process
(`jax_num_cpu_devices`, read when JAX starts its CPU backend), unless the user chose already:
`XLA_FLAGS=--xla_force_host_platform_device_count=N`, `jax_num_cpu_devices` set, the variable
`NOISYDLN_CPU_DEVICES=N` (N = 1 turns this off), or a JAX backend already started before the
import (JAX then keeps what it has). Code that does not shard is unaffected: it runs on
device 0 as before.

Several processes. `initialize` starts JAX's multi-controller runtime: every process runs the
same program, `jax.devices()` lists the devices of all of them, and `run_grid` shards each
chunk's seeds over that global mesh (CPU processes exchange through gloo). With no arguments it
starts only where a cluster launcher says there are several processes (Slurm's
`SLURM_NTASKS`, Open MPI's `OMPI_COMM_WORLD_SIZE`), and lets JAX read the rest from there.
"""

import os

import jax

CPU_DEVICES_VARIABLE = "NOISYDLN_CPU_DEVICES"
CLUSTER_SIZE_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _backends_started() -> bool:
    from jax._src import xla_bridge  # noqa: PLC0415 (no public way to ask)

    return bool(xla_bridge._backends)


def _requested_cpu_devices() -> int | None:
    """The number of CPU devices noisydln should ask for, or None to leave JAX as it is."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    if jax.config.jax_num_cpu_devices != -1:
        return None
    text = os.environ.get(CPU_DEVICES_VARIABLE)
    if text is None:
        return available_cores()
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{CPU_DEVICES_VARIABLE} must be a positive integer, got {text!r}")
    return count


def use_every_core() -> int | None:
    """Asks JAX for one CPU device per available core (see the module docstring).

    Returns the number asked for, or None when the choice was left to the user or to a
    backend that had already started.
    """
    count = _requested_cpu_devices()
    if count is None or _backends_started():
        return None
    jax.config.update("jax_num_cpu_devices", count)
    return count


def cluster_size() -> int:
    """The number of processes a cluster launcher (Slurm, Open MPI) started, 1 if none."""
    for name in CLUSTER_SIZE_VARIABLES:
        try:
            return max(1, int(os.environ.get(name, "1")))
        except ValueError:
            continue
    return 1


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts `jax.distributed` for a run over several processes; returns whether it did.

    Args:
      coordinator: `HOST:PORT` of process 0 (the same for every process).
      num_processes: how many processes take part.
      process_id: this process's index, 0 .. num_processes - 1.

    With none given, it starts only when a cluster launcher started several processes
    (`cluster_size() > 1`), and JAX reads the three from the launcher's environment. Call it
    before anything else uses JAX.
    """
    given = (coordinator, num_processes, process_id)
    if any(value is not None for value in given) and any(value is None for value in given):
        raise ValueError(
            "coordinator, num_processes and process_id go together: give all three or none"
        )
    if coordinator is not None:
        if not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id must be an integer in [0, {num_processes}), got {process_id!r}"
            )
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"coordinator must be HOST:PORT, got {coordinator!r}")
    elif cluster_size() == 1:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def is_main_process() -> bool:
    """Whether this is the process that writes files (process 0)."""
    return jax.process_index() == 0
