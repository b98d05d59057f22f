"""Overhead of the experiment layer: `run_experiment` against its bare `run_grid` calls, and I/O.

Workload W1 as an `Experiment` spec (n = 200, d = 100, k = 5 non-zeros equal to 1, Gaussian
design, problem seed 0; depth 2, eta = 0.01, init w_1 = 0.5, w_2 = 0.25, 2000 steps recorded
every 10; 8 sigmas in linspace(0, 0.3, 8), 1024 seeds; float32). Measures, in one fresh process
after a warm-up that compiles both programs:

(a) `noisydln.results.run_experiment(spec)` against the `run_grid` calls it makes (the same
    problem, configs, grid and key `jax.random.key(spec.grid.seed)`, plus the one-seed
    `expected_gd` reference run), run alternately, best of `--repeats` each; the ratio is the
    layer's overhead (target: at most 5 % extra);
(b) writing and reopening the results with `noisydln.results.save` / `load` (target: under 1 s).

Usage: `noisydln bench --suite experiment`, `python -m noisydln.bench.experiment` or
`python benchmarks/experiment_overhead.py` (`--quick`: 64 seeds, 200 steps; `--json FILE`).
On a CPU, seeds are sharded over one XLA host device per core unless `--devices` says otherwise.
"""

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from noisydln.bench.throughput import peak_memory_mb, run_worker, save_numbers, set_host_devices

WORKER_MODULE = "noisydln.bench.experiment"
OVERHEAD_TARGET = 0.05  # run_experiment may take at most 5 % longer than its run_grid calls
IO_TARGET_SECONDS = 1.0  # save + load


def w1_spec(num_seeds: int = 1024, num_steps: int = 2000):
    """Workload W1 as an `Experiment`."""
    import numpy as np

    from noisydln.experiment import Experiment

    return Experiment.from_dict(
        {
            "name": "w1",
            "problem": {"n": 200, "d": 100, "k": 5, "values": 1.0, "design": "gaussian", "seed": 0},
            "simulation": {
                "depth": 2,
                "eta": 0.01,
                "init": [[0.5] * 100, [0.25] * 100],
                "num_steps": num_steps,
                "record_every": 10,
            },
            "grid": {
                "sigmas": [float(s) for s in np.linspace(0.0, 0.3, 8)],
                "num_seeds": num_seeds,
            },
            "run": {"dtype": "float32"},
        }
    )


def bare_calls(spec) -> tuple:
    """What `run_experiment(spec)` hands to `run_grid`: `(key, problem, devices, calls)` with
    `calls` the `(config, num_seeds)` of each call, one per static combination with all seeds,
    then the one-seed `expected_gd` reference per depth."""
    import jax
    import jax.numpy as jnp

    from noisydln import results
    from noisydln.experiment import build_problem

    dtype = {"float32": jnp.float32, "float64": jnp.float64}[spec.run.dtype]
    with jax.enable_x64(spec.run.dtype == "float64"):
        problem = build_problem(spec, dtype)
        calls = [(run.config, run.num_seeds) for run in results.planned_runs(spec, problem)]
    devices = results._select_devices(spec.run.devices)
    return jax.random.key(spec.grid.seed), problem, devices, calls


def bare_runs(spec, prepared) -> list:
    """The `run_grid` calls of `run_experiment(spec)` and nothing else (`prepared` is
    `bare_calls(spec)`), waited for."""
    import jax

    from noisydln.grid import run_grid

    key, problem, devices, calls = prepared
    grid = spec.grid
    with jax.enable_x64(spec.run.dtype == "float64"):
        out = [
            run_grid(
                key,
                problem,
                config,
                num_seeds=num_seeds,
                sigmas=grid.sigmas,
                etas=grid.etas,
                init_scales=grid.init_scales,
                chunk_size=grid.chunk_size if num_seeds > 1 else None,
                devices=devices,
            )
            for config, num_seeds in calls
        ]
        jax.block_until_ready([(r.mean, r.var, r.count) for r in out])
    return out


def _same_numbers(ds, bare) -> bool:
    """Whether the Dataset holds exactly the bare runs' loss means (main and reference run)."""
    import numpy as np

    main, reference = bare[0], bare[-1]
    return bool(
        np.array_equal(ds["loss_mean"].values[0, 0, 0], np.asarray(main.mean["loss"]), True)
        and np.array_equal(
            ds["loss_gd_LR"].values[0], np.asarray(reference.mean["loss"]), equal_nan=True
        )
    )


def layer_only(spec, bare: list):
    """`run_experiment(spec)` with its `run_grid` calls replaced by replaying `bare` (their
    results, in call order): the experiment layer's own work, without the simulation's time."""
    from noisydln import results

    replay = iter(bare)
    original = results.run_grid
    results.run_grid = lambda *args, **kwargs: next(replay)
    try:
        return results.run_experiment(spec)
    finally:
        results.run_grid = original


def worker(args) -> dict:
    set_host_devices(args.devices)
    import jax
    import numpy as np

    from noisydln import results

    spec = w1_spec(args.seeds, args.steps)
    prepared = bare_calls(spec)  # the problem, built once: only run_grid is timed

    def timed(function):
        gc.collect()
        start = time.perf_counter()
        value = function()
        return time.perf_counter() - start, value

    first_experiment, ds = timed(lambda: results.run_experiment(spec))  # compiles
    first_bare, bare = timed(lambda: bare_runs(spec, prepared))  # compiled by the line above
    experiment_seconds, bare_seconds, layer_seconds = [], [], []
    for _ in range(args.repeats):  # alternating, so that both see the same machine load
        bare_seconds.append(timed(lambda: bare_runs(spec, prepared))[0])
        experiment_seconds.append(timed(lambda: results.run_experiment(spec))[0])
        layer_seconds.append(timed(lambda: layer_only(spec, bare))[0])
    same = _same_numbers(ds, bare)

    save_seconds, load_seconds = [], []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w1.nc"
        for _ in range(args.repeats):
            save_seconds.append(timed(lambda: results.save(ds, path, overwrite=True))[0])
            seconds, loaded = timed(lambda: results.load(path))
            load_seconds.append(seconds)
        file_mb = path.stat().st_size / 2**20
    reopened = bool(loaded["loss_mean"].equals(ds["loss_mean"]))
    memory, memory_kind = peak_memory_mb(jax)
    best_experiment, best_bare = min(experiment_seconds), min(bare_seconds)
    paired = [e / b for e, b in zip(experiment_seconds, bare_seconds, strict=True)]
    return {
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})",
        "seeds": args.seeds,
        "steps": args.steps,
        "sigmas": len(spec.grid.sigmas),
        "repeats": args.repeats,
        "run_grid_calls": len(bare),
        "run_grid_seconds": best_bare,
        "run_grid_all_seconds": bare_seconds,
        "run_grid_first_seconds": first_bare,
        "experiment_seconds": best_experiment,
        "experiment_all_seconds": experiment_seconds,
        "compile_seconds": max(first_experiment - best_experiment, 0.0),
        "overhead": best_experiment / best_bare - 1.0,
        "overhead_seconds": best_experiment - best_bare,
        "overhead_paired_median": float(np.median(paired)) - 1.0,
        "layer_seconds": min(layer_seconds),
        "layer_all_seconds": layer_seconds,
        "overhead_layer": min(layer_seconds) / best_bare,
        "same_numbers": same,
        "save_seconds": min(save_seconds),
        "load_seconds": min(load_seconds),
        "file_mb": file_mb,
        "dataset_mb": ds.nbytes / 2**20,
        "reopened_equal": reopened,
        "memory_mb": memory,
        "memory_kind": memory_kind,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options (`--quick` already applied to the sizes)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (best kept)")
    parser.add_argument("--devices", type=int, default=os.cpu_count(), help="XLA host devices")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and not args.worker:
        args.seeds, args.steps, args.repeats = 64, 200, 3
    return args


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def benchmark(args: argparse.Namespace) -> dict:
    """Runs the measurements in a fresh process, prints the table and returns the numbers."""
    argv = ["--worker", "--seeds", str(args.seeds), "--steps", str(args.steps)]
    argv += ["--repeats", str(args.repeats), "--devices", str(args.devices)]
    r = run_worker(WORKER_MODULE, argv)
    io = r["save_seconds"] + r["load_seconds"]
    print(
        f"W1 as an Experiment: {r['sigmas']} sigmas x {r['seeds']} seeds x {r['steps']} steps "
        f"(record every 10), n=200 d=100 depth 2, float32, on {r['device']}; best of "
        f"{r['repeats']}, run_grid and run_experiment alternating"
    )
    header = f"{'measurement':38s} {'compile s':>9s} {'best s':>8s} {'ratio':>7s}  target"
    print(header + "\n" + "-" * len(header))
    rows = [
        (
            f"run_grid ({r['run_grid_calls']} calls, as run_experiment)",
            "",
            r["run_grid_seconds"],
            1.0,
            "",
        ),
        (
            "run_experiment",
            f"{r['compile_seconds']:9.2f}",
            r["experiment_seconds"],
            1.0 + r["overhead"],
            f"<= {1 + OVERHEAD_TARGET:.2f}: {_verdict(r['overhead'] <= OVERHEAD_TARGET)} "
            f"({r['overhead']:+.1%}, {r['overhead_seconds']:+.3f} s; median of the pairs "
            f"{r['overhead_paired_median']:+.1%})",
        ),
        (
            "  its own work (run_grid replayed)",
            "",
            r["layer_seconds"],
            1.0 + r["overhead_layer"],
            f"<= {1 + OVERHEAD_TARGET:.2f}: {_verdict(r['overhead_layer'] <= OVERHEAD_TARGET)}",
        ),
        (f"results.save ({r['file_mb']:.1f} MB netCDF)", "", r["save_seconds"], None, ""),
        (
            "results.load",
            "",
            r["load_seconds"],
            None,
            f"save + load {io:.3f} s < {IO_TARGET_SECONDS:.0f} s: {_verdict(io < IO_TARGET_SECONDS)}",
        ),
    ]
    for label, compile_s, seconds, ratio, target in rows:
        ratio_s = "" if ratio is None else f"{ratio:7.3f}"
        print(f"{label:38s} {compile_s:>9s} {seconds:8.3f} {ratio_s:>7s}  {target}".rstrip())
    print(
        f"(same numbers as the bare run_grid calls: {r['same_numbers']}; reopened file equal: "
        f"{r['reopened_equal']}; {r['memory_kind']} {r['memory_mb']:.0f} MB)"
    )
    return r


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    numbers = benchmark(args)
    save_numbers(args.json, numbers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
