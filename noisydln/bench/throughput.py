"""Throughput of `run_grid` on workload W1 against NumPy baselines measured in the same run.

W1: n = 200, d = 100, depth 2, k = 5 non-zeros equal to 1, Gaussian design, eta = 0.01, init
w_1 = 0.5, w_2 = 0.25, 8 sigmas in linspace(0, 0.3, 8), 1024 seeds each, 2000 steps, record
every 10, float32. Every measurement runs in its own process (its own peak memory, no shared
thread pools). Usage: `noisydln bench --suite throughput`, `python -m noisydln.bench.throughput`
or `python benchmarks/throughput.py` (`--quick` for a small smoke run, `--json FILE` to save the
numbers). The JAX engine runs with default settings, as a user gets it (on a CPU, noisydln asks
for one XLA host device per core), unless `--devices N` sets the host device count; the run
also measures 1 and one-per-core host devices set explicitly, and W1 in chunks of 128 seeds
with and without a checkpoint saved after every chunk, and D1, a dense network of width 100 on
W1's problem (`noisydln.bench.dense_throughput`). On a GPU it runs unchanged.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

WORKER_MODULE = "noisydln.bench.throughput"
DENSE_SIZES = {False: (16, 100), True: (4, 20)}  # D1's (seeds, steps), by --quick


def w1_data(num_sigmas: int):
    """The W1 problem as NumPy arrays (the same numbers for JAX and the baselines)."""
    import jax
    import numpy as np

    import noisydln

    problem = noisydln.make_problem(jax.random.key(0), 200, 100, k=5, values=1.0)
    X, y = np.asarray(problem.X, np.float32), np.asarray(problem.y, np.float32)
    init = np.stack([np.full(100, 0.5), np.full(100, 0.25)]).astype(np.float32)
    return X, y, init, np.linspace(0.0, 0.3, num_sigmas)


def peak_memory_mb(jax_module=None) -> tuple[float, str]:
    """Peak memory of this process (host RSS), or of the accelerator when there is one."""
    if jax_module is not None:
        device = jax_module.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20, f"{device.platform} peak bytes in use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host peak RSS"


def set_host_devices(devices: int | None) -> None:
    """Asks JAX for `devices` CPU devices (before its backend starts; `python -m` has imported
    noisydln, which asked for one per core, already)."""
    if devices:
        import jax

        jax.config.update("jax_num_cpu_devices", devices)


def worker_command(module: str, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run `python -m module argv` in a fresh process, with
    this copy of noisydln first on the path (an installed package or a checkout alike)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds noisydln/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", module, *argv], env


def save_numbers(path: Path | None, numbers: dict) -> None:
    """Writes the benchmark's numbers as JSON to `path` (`--json`), if one is given."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(numbers, indent=2))


def run_worker(module: str, argv: list[str]) -> dict:
    """Runs one measurement in a fresh Python process and returns its JSON report (the last
    line of its output)."""
    command, env = worker_command(module, argv)
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise subprocess.CalledProcessError(out.returncode, command, out.stdout, out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_jax(args) -> dict:
    set_host_devices(args.devices)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import noisydln

    X, y, init, sigmas = w1_data(args.sigmas)
    problem = noisydln.problem_from_data(jnp.asarray(X), jnp.asarray(y))
    config = noisydln.SimConfig(
        num_steps=args.steps, record_every=args.record_every, eta=0.01, init=init
    )

    options = {"chunk_size": args.chunk_size} if args.chunk_size else {}

    def run(key):
        start = time.perf_counter()
        result = noisydln.run_grid(
            key, problem, config, num_seeds=args.seeds, sigmas=sigmas, **options
        )
        jax.block_until_ready(result.mean)
        return time.perf_counter() - start, result

    first, _ = run(jax.random.key(1))  # compiles
    steady = []
    for repeat in range(args.repeats):
        seconds, result = run(jax.random.key(2 + repeat))
        steady.append(seconds)
    memory, memory_kind = peak_memory_mb(jax)
    best = min(steady)
    return {
        "method": "jax run_grid",
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})",
        "seconds": best,
        "compile_seconds": max(first - best, 0.0),
        "memory_mb": memory,
        "memory_kind": memory_kind,
        "loss_mean": np.asarray(result.mean["loss"][:, 0, 0, -1]).tolist(),
        "loss_var": np.asarray(result.var["loss"][:, 0, 0, -1]).tolist(),
        "diverged": int(result.diverged.sum()),
    }


def _checkpoint_saver(timings: list[float]):
    """`on_chunk` that saves a checkpoint after every chunk, as `noisydln run` does, and appends
    the seconds each save took to `timings`."""
    import tempfile

    from noisydln import checkpoint, experiment

    path = Path(tempfile.mkdtemp()) / "w1.checkpoint"
    spec = experiment.example()  # only hashed

    def save(state):
        start = time.perf_counter()
        checkpoint.save(path, spec, [state])
        timings.append(time.perf_counter() - start)

    return save


def worker_checkpoint(args) -> dict:
    """W1 in chunks of `args.chunk_size`, alternately without and with a checkpoint after every
    chunk (`args.repeats` pairs after a compiling run); the best of each and the save time."""
    set_host_devices(args.devices)
    import jax
    import jax.numpy as jnp

    import noisydln

    X, y, init, sigmas = w1_data(args.sigmas)
    problem = noisydln.problem_from_data(jnp.asarray(X), jnp.asarray(y))
    config = noisydln.SimConfig(
        num_steps=args.steps, record_every=args.record_every, eta=0.01, init=init
    )

    def run(key, on_chunk=None):
        start = time.perf_counter()
        result = noisydln.run_grid(
            key, problem, config, num_seeds=args.seeds, sigmas=sigmas,
            chunk_size=args.chunk_size, on_chunk=on_chunk,
        )  # fmt: skip
        jax.block_until_ready(result.mean)
        return time.perf_counter() - start

    run(jax.random.key(1))  # compiles
    without, with_, saves = [], [], []
    for repeat in range(args.repeats):
        without.append(run(jax.random.key(2 + repeat)))
        timings = []
        with_.append(run(jax.random.key(2 + repeat), _checkpoint_saver(timings)))
        saves.append(sum(timings))
    return {
        "method": "jax run_grid, checkpoints",
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})",
        "seconds_without": min(without),
        "seconds_with": min(with_),
        "samples_without": without,
        "samples_with": with_,
        "save_seconds": min(saves),
        "num_saves": len(timings),
    }


def worker_numpy(args, method: str) -> dict:
    import numpy as np

    from noisydln.bench import baselines

    X, y, init, sigmas = w1_data(args.sigmas)
    seeds = args.seeds if method == "vectorised" else args.loop_seeds
    run = baselines.vectorised if method == "vectorised" else baselines.per_seed_loop
    start = time.perf_counter()
    result = run(X, y, init, sigmas, seeds, args.steps, args.record_every, 0.01, seed=1)
    seconds = time.perf_counter() - start
    memory, memory_kind = peak_memory_mb()
    return {
        "method": f"numpy {method}",
        "device": "cpu (numpy)",
        "seconds": seconds * args.seeds / seeds,  # per-seed loop: extrapolated from its seeds
        "measured_seeds": seeds,
        "compile_seconds": 0.0,
        "memory_mb": memory,
        "memory_kind": memory_kind,
        "loss_mean": np.asarray(result["mean"]["loss"][:, -1]).tolist(),
        "loss_var": np.asarray(result["var"]["loss"][:, -1]).tolist(),
    }


def spawn(args, method: str, **overrides) -> dict:
    """Runs one measurement in a fresh Python process and returns its JSON report."""
    settings = vars(args) | overrides
    argv = ["--worker", method]
    for name in ("seeds", "steps", "record_every", "sigmas", "loop_seeds", "repeats", "devices",
                 "chunk_size"):  # fmt: skip
        if settings[name] is not None:
            argv += [f"--{name.replace('_', '-')}", str(settings[name])]
    return run_worker(WORKER_MODULE, argv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options (`--quick` already applied to the sizes)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--record-every", type=int, default=10)
    parser.add_argument("--sigmas", type=int, default=8)
    parser.add_argument("--loop-seeds", type=int, default=4, help="seeds the per-seed loop runs")
    parser.add_argument("--repeats", type=int, default=2, help="steady-state repeats (best kept)")
    parser.add_argument(
        "--devices", type=int, help="XLA host devices (default: noisydln's, one per core)"
    )
    parser.add_argument("--chunk-size", type=int, help="seeds per compiled call (worker)")
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="interleaved rounds of the device-setting and checkpoint comparisons",
    )  # fmt: skip
    parser.add_argument("--scaling", default="64,256,1024,4096,16384", help="seed counts")
    parser.add_argument("--scaling-steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and not args.worker:
        args.seeds, args.steps, args.loop_seeds, args.repeats = 64, 100, 2, 1
        args.scaling, args.scaling_steps, args.rounds = "16,64", 50, 1
    return args


def benchmark(args: argparse.Namespace) -> dict:
    """Runs the measurements, prints the table and returns `{"w1": [...], "scaling": [...]}`."""
    cells = args.sigmas
    work = cells * args.seeds * args.steps
    print(
        f"W1: {cells} sigmas x {args.seeds} seeds x {args.steps} steps (record every "
        f"{args.record_every}), n=200 d=100 depth 2, float32 = {work / 1e6:.1f} M trajectory-steps"
    )
    reports = [spawn(args, "jax"), spawn(args, "vectorised"), spawn(args, "loop")]
    jax_rate = work / reports[0]["seconds"]
    header = f"{'method':22s} {'device':32s} {'compile s':>9s} {'steady s':>9s} {'M traj-steps/s':>14s} {'JAX speed-up':>12s} {'peak MB':>8s}"
    print(header + "\n" + "-" * len(header))
    for report in reports:
        rate = work / report["seconds"]
        report["trajectory_steps_per_second"] = rate
        report["jax_speedup"] = jax_rate / rate
        print(
            f"{report['method']:22s} {report['device'][:32]:32s} {report['compile_seconds']:9.2f} "
            f"{report['seconds']:9.2f} {rate / 1e6:14.3f} {jax_rate / rate:12.1f} {report['memory_mb']:8.0f}"
        )
    print(
        f"(per-seed loop measured on {reports[2]['measured_seeds']} seeds per sigma, rate extrapolated; memory: {reports[0]['memory_kind']} for JAX, host RSS for NumPy)"
    )
    print(f"diverged trajectories (JAX): {reports[0]['diverged']}")
    from noisydln.bench import dense_throughput  # noqa: PLC0415 (it imports this module's helpers)

    dense = dense_throughput.measure_both(*DENSE_SIZES[args.quick], args.repeats, args.devices)
    for report in dense:
        print(dense_throughput.describe(report))
    print(
        f"  parameter-steps/s of W1 (P = 200): {jax_rate * 200 / 1e6:.1f} M; D1 recording beta "
        f"reaches {dense[0]['parameter_steps_per_second'] / (jax_rate * 200):.2f} of it"
    )

    # the three estimate the same means (different noise): standardised differences of the loss
    for other in reports[1:]:
        if other["measured_seeds"] < 30:
            continue  # too few seeds for a variance estimate
        z = [
            (a - b) / max((va / args.seeds + vb / other["measured_seeds"]) ** 0.5, 1e-30)
            for a, b, va, vb in zip(
                reports[0]["loss_mean"],
                other["loss_mean"],
                reports[0]["loss_var"],
                other["loss_var"],
                strict=True,
            )
            if va + vb > 0
        ]
        print(
            f"final mean loss, JAX vs {other['method']}: max |z| over sigmas = {max(map(abs, z), default=0.0):.2f}"
        )

    scaling = []
    print(f"\nscaling with the number of seeds ({cells} sigmas x {args.scaling_steps} steps):")
    for seeds in (int(s) for s in args.scaling.split(",")):
        report = spawn(args, "jax", seeds=seeds, steps=args.scaling_steps, repeats=1)
        rate = cells * seeds * args.scaling_steps / report["seconds"]
        scaling.append({"seeds": seeds, "trajectory_steps_per_second": rate, **report})
        print(
            f"  {seeds:6d} seeds: {rate / 1e6:7.3f} M traj-steps/s (compile {report['compile_seconds']:.2f} s, peak {report['memory_mb']:.0f} MB)"
        )
    return {"w1": reports, "dense": dense, "scaling": scaling, "devices": device_settings(args, reports[0]),
            "checkpoint": checkpoint_cost(args)}  # fmt: skip


def device_settings(args, default: dict) -> list[dict]:
    """W1 with default settings against 1 and one-per-core XLA host devices set explicitly.

    On a shared machine two identical runs can differ by tens of percent, so the settings are
    measured in `args.rounds` interleaved rounds (default, 1, one per core, default, 1, ...), each
    in a fresh process, and each setting keeps its best time; the W1 run above is the default
    setting's first sample."""
    from noisydln.runtime import available_cores

    counts = sorted({1, available_cores()})
    settings = [None, *counts]
    samples = {None: [default["seconds"]], **{count: [] for count in counts}}
    reports = {None: default}
    for round_index in range(args.rounds):
        for devices in settings:
            if devices is None and round_index == 0:
                continue  # the W1 run above
            report = spawn(args, "jax", devices=devices, repeats=1)
            samples[devices].append(report["seconds"])
            reports.setdefault(devices, report)
    best = min(min(times) for times in samples.values())
    print(
        f"\nW1 by XLA host device setting ({args.rounds} interleaved rounds, best steady seconds; ratio to the fastest):"
    )
    out = []
    for devices in settings:
        label = "default settings" if devices is None else f"--devices {devices}"
        report = dict(reports[devices], setting=label, samples=samples[devices])
        report["seconds"] = min(samples[devices])
        report["ratio_to_best"] = report["seconds"] / best
        times = ", ".join(f"{t:.2f}" for t in samples[devices])
        print(
            f"  {label:18s} {report['device'][:32]:32s} {report['seconds']:8.2f} s  x{report['ratio_to_best']:.2f}  (samples: {times})"
        )
        out.append(report)
    return out


def checkpoint_cost(args) -> dict:
    """W1 in chunks of 128 seeds, without and with a checkpoint saved after every chunk, in one
    process: `args.rounds` interleaved pairs after one compiling run, best of each kept, and the
    seconds spent inside the saves themselves."""
    report = spawn(args, "checkpoint", chunk_size=128, repeats=args.rounds)
    ratio = report["seconds_with"] / report["seconds_without"]
    report["ratio"] = ratio
    print(
        f"\nW1 in chunks of 128 seeds ({args.rounds} interleaved pairs, best of each): "
        f"{report['seconds_without']:.2f} s without checkpoints, {report['seconds_with']:.2f} s "
        f"with one after every chunk (x{ratio:.3f}); the {report['num_saves']} saves themselves "
        f"took {report['save_seconds']:.3f} s per run (x{1 + report['save_seconds'] / report['seconds_without']:.3f} if none overlapped)"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        workers = {"jax": worker_jax, "checkpoint": worker_checkpoint}
        report = workers.get(args.worker, lambda a: worker_numpy(a, args.worker))(args)
        print(json.dumps(report))
        return 0
    numbers = benchmark(args)
    save_numbers(args.json, numbers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
