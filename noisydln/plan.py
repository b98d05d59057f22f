"""How a grid run is cut into chunks of seeds, and what one chunk costs in memory.

`plan_chunks` decides the devices, the seeds per compiled call and the number of calls, and
estimates the bytes a chunk needs before anything is compiled: the training states and their
temporaries, the values gathered at a record, the streamed moments, the kept trajectories. The
estimate is an upper bound of what XLA allocates (tests/test_plan_vs_xla_memory.py holds it
between 1x and 3x of XLA's own memory analysis); `check_fits` refuses a chunk that cannot fit
a device, or a `max_memory` limit, and names a chunk size that does.
"""

import math
import os
from typing import NamedTuple

import jax
import numpy as np

from noisydln import eigen, moments

STATE_ELEMENTS_PER_CHUNK = 2**21  # default chunk: at most about 8 MB of float32 parameters
STEP_TEMPORARIES = (
    6  # live copies of a state inside one step (noise, perturbed point, gradient, ...)
)
RECORD_TEMPORARIES = 3  # live copies of the recorded values (values, gathered, folded blocks)
# vectors of the parameters' size per trajectory while `top_eigenvalue` is recorded: its Lanczos
# recurrence keeps three (previous, current, next), the products p_l and the Hessian's
# couplings two more, and its start one; the warm runs after the first record keep their basis
# (`eigen.WARM_ITERATIONS` vectors), and the Ritz vector carried from record to record is one
# more, with the new one (`noisydln.eigen`; the cold first record and the rare longer runs make
# their Ritz vector in a second pass, without a basis). On a CPU, which computes it in blocks,
# XLA's memory analysis of W1's chunk showed 2.4 per trajectory before the warm start (the
# blocks' basis is not per trajectory), where the whole batch runs at once (an accelerator) all
LANCZOS_STATE_COPIES = 8 + eigen.WARM_ITERATIONS
KEPT_COPIES = 2  # kept records on the device: the scan's output, then with the first record
HOST_COPIES = 2  # kept trajectories on the host: the chunks, then their concatenation
MIN_BLOCKS = 2  # blocks of the fold per chunk, at least (see `round_chunk`)
FIT_FRACTION = 0.9  # of a device's memory a chunk may plan to use


class MemoryEstimate(NamedTuple):
    """Bytes one chunk needs, per device (`host_kept`: on the host, for the whole run).

    Attributes:
      states: training states of the device's seeds x cells, with the step's temporaries.
      records: one record's values of the whole chunk (gathered over devices) and the fold's,
        and the temporaries of computing them on the device (`RunSize.record_temporaries`).
      moments: the streamed moments, in and out of the compiled call.
      kept: the device's kept trajectories of the chunk (0 unless `keep_trajectories`).
      problem: the problem's arrays (X, gram, ...), replicated on every device.
      host_kept: all kept trajectories of the run, on the host.
    """

    states: int
    records: int
    moments: int
    kept: int
    problem: int
    host_kept: int

    @property
    def device_total(self) -> int:
        """Bytes per device for one chunk."""
        return self.states + self.records + self.moments + self.kept + self.problem


class RunSize(NamedTuple):
    """The sizes that decide a grid run's memory.

    Attributes:
      num_seeds: trajectories per cell; cells: grid cells (sigmas x etas x init scales);
      num_records: record steps; state_elements: numbers in one trajectory's state
      (parameters and optimiser state); record_elements: numbers one trajectory records at one
      record step (all quantities); problem_elements: numbers in the problem's arrays;
      itemsize: bytes per number (4 for float32); keep: whether trajectories are kept;
      record_temporaries: numbers per trajectory that computing a record needs besides the
      values (`record_temporaries(quantities, num_params)`: the Lanczos vectors of
      `top_eigenvalue`).
    """

    num_seeds: int
    cells: int
    num_records: int
    state_elements: int
    record_elements: int
    problem_elements: int
    itemsize: int
    keep: bool = False
    record_temporaries: int = 0


def record_temporaries(quantities, num_params: int) -> int:
    """Numbers per trajectory live while a record of `quantities` is computed, beyond the
    recorded values: `LANCZOS_STATE_COPIES` vectors of the `num_params` parameters for
    `top_eigenvalue`, else 0."""
    return LANCZOS_STATE_COPIES * num_params if "top_eigenvalue" in quantities else 0


class ChunkPlan(NamedTuple):
    """How `run_grid` runs: `num_chunks` compiled calls of `chunk_size` seeds (padding included)
    each, sharded over `num_devices` devices, with the memory `estimate` of one chunk."""

    size: RunSize
    chunk_size: int
    num_chunks: int
    num_devices: int
    estimate: MemoryEstimate


def format_bytes(count: float) -> str:
    """`1536 -> '1.5 KiB'`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def parse_bytes(text: str) -> int:
    """`'2GB' -> 2e9`, `'1.5GiB' -> 1.5 * 2**30`, `'800M' -> 8e8`, plain numbers are bytes."""
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
             "t": 1e12, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
    stripped = str(text).strip().lower().replace(" ", "")
    number = stripped.rstrip("kmgtib")
    unit = stripped[len(number) :]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(
            f"max_memory must be a size such as 2GB, 1.5GiB or 800MB, got {text!r}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"max_memory must be a positive size, got {text!r}")
    return int(value)


def default_devices(num_seeds: int) -> list:
    """Every device of every process, but no more than there are blocks of seeds to share
    (a 1-seed reference run is not padded to 16 seeds per device)."""
    devices = jax.devices()
    if jax.process_count() > 1:
        return devices  # every process must take part in every call
    blocks = -(-num_seeds // moments.BLOCK)
    return devices[: max(1, min(len(devices), blocks))]


def _default_chunk(num_seeds: int, cells: int, state_elements: int) -> int:
    """Seeds per chunk: all of them, or equal chunks that fit `STATE_ELEMENTS_PER_CHUNK`."""
    fit = max(1, STATE_ELEMENTS_PER_CHUNK // (cells * state_elements))
    num_chunks = -(-num_seeds // fit)
    return -(-num_seeds // num_chunks)


def round_chunk(chunk_size: int, num_devices: int) -> int:
    """`chunk_size` rounded up to whole blocks of the moment fold on every device.

    The numbers do not depend on the chunk size, so rounding changes nothing but the padding
    (at least 16 seeds per device also keeps Sigma @ beta a matrix product, which XLA would
    otherwise sum in another order; at least two blocks in all keeps the fold a loop, which XLA
    would otherwise inline and fuse with other rounding).
    """
    multiple = moments.BLOCK * num_devices
    return max(-(-int(chunk_size) // multiple) * multiple, MIN_BLOCKS * moments.BLOCK)


def estimate_memory(size: RunSize, chunk_size: int, num_devices: int) -> MemoryEstimate:
    """The `MemoryEstimate` of one chunk of `chunk_size` seeds (all devices together)."""
    per_device = chunk_size // num_devices
    record_bytes = size.cells * size.record_elements * size.itemsize
    moment_bytes = size.num_records * (2 * size.cells * size.record_elements + size.cells)
    kept = KEPT_COPIES * per_device * size.num_records * record_bytes if size.keep else 0
    host_kept = HOST_COPIES * size.num_seeds * size.num_records * record_bytes
    return MemoryEstimate(
        states=STEP_TEMPORARIES * per_device * size.cells * size.state_elements * size.itemsize,
        records=RECORD_TEMPORARIES * (chunk_size + per_device) * record_bytes
        + per_device * size.cells * size.record_temporaries * size.itemsize,
        moments=2 * moment_bytes * size.itemsize,
        kept=kept,
        problem=size.problem_elements * size.itemsize,
        host_kept=host_kept if size.keep else 0,
    )


def plan_chunks(size: RunSize, chunk_size: int | None, num_devices: int) -> ChunkPlan:
    """The `ChunkPlan` of a grid run (`chunk_size=None`: the default, all seeds or equal
    chunks whose parameters take at most about 8 MB)."""
    if chunk_size is None:
        chunk_size = _default_chunk(size.num_seeds, size.cells, size.state_elements)
    elif (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    chunk_size = round_chunk(chunk_size, num_devices)
    return ChunkPlan(
        size=size,
        chunk_size=chunk_size,
        num_chunks=-(-size.num_seeds // chunk_size),
        num_devices=num_devices,
        estimate=estimate_memory(size, chunk_size, num_devices),
    )


def available_host_bytes() -> int | None:
    """Memory the operating system can still give this process (Linux `MemAvailable`)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_bytes(device) -> int | None:
    """Memory one device may use: its allocator's limit on an accelerator; on the CPU, the
    host's available memory shared by the process's CPU devices. None if unknown."""
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 (a backend without memory statistics)
            stats = {}
        return stats.get("bytes_limit")
    host = available_host_bytes()
    local_cpus = [d for d in jax.local_devices() if d.platform == "cpu"]
    return None if host is None else host // max(1, len(local_cpus))


def _largest_fitting_chunk(plan: ChunkPlan, budget: float) -> int | None:
    """The largest chunk (whole blocks per device) whose estimate fits `budget`, or None."""
    step = moments.BLOCK * plan.num_devices
    fixed = estimate_memory(plan.size, 0, plan.num_devices).device_total
    per_step = estimate_memory(plan.size, step, plan.num_devices).device_total - fixed
    if fixed + per_step > budget:
        return None
    return int((budget - fixed) // per_step) * step


def check_fits(plan: ChunkPlan, device, max_memory: int | None = None) -> None:
    """Raises `ValueError` (with the estimate and a chunk size that fits) if one chunk of
    `plan` cannot fit `device`'s memory or `max_memory` bytes, or if the kept trajectories
    cannot fit the host."""
    estimate, size = plan.estimate, plan.size
    capacity = device_bytes(device)
    limits = [(max_memory, "max_memory")] if max_memory is not None else []
    if capacity is not None:
        limits.append((int(FIT_FRACTION * capacity), f"{device.platform} device memory"))
    for limit, what in limits:
        if estimate.device_total <= limit:
            continue
        fitting = _largest_fitting_chunk(plan, limit)
        advice = (
            f"chunk_size={fitting} fits"
            if fitting
            else "no chunk size fits: record fewer steps or quantities, or use fewer cells"
        )
        raise ValueError(
            f"a chunk of {plan.chunk_size} seeds needs about {format_bytes(estimate.device_total)}"
            f" per device (states {format_bytes(estimate.states)}, records "
            f"{format_bytes(estimate.records)}, moments {format_bytes(estimate.moments)}, kept "
            f"trajectories {format_bytes(estimate.kept)}), more than the {format_bytes(limit)} of "
            f"{what}; {advice}"
        )
    host = available_host_bytes()
    if estimate.host_kept and host is not None and estimate.host_kept > FIT_FRACTION * host:
        raise ValueError(
            f"keep_trajectories: {size.num_seeds} seeds x {size.cells} cells x "
            f"{size.num_records} records need about {format_bytes(estimate.host_kept)} on the "
            f"host, more than the {format_bytes(host)} available; keep fewer seeds, or drop "
            "keep_trajectories (the moments are streamed and need no such memory)"
        )
