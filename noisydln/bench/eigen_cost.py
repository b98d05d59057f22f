"""Cost and accuracy of the recorded `top_eigenvalue` (Lanczos, `noisydln.eigen`) on workload W1.

Cost: steady-state seconds of `run_grid` on W1 (n = 200, d = 100, depth 2, k = 5 teacher values
1, Gaussian design, eta = 0.01, init w_1 = 0.5, w_2 = 0.25, 8 sigmas in linspace(0, 0.3, 8), 1024
seeds, 2000 steps, record every 10, float32) with the default quantities and with
`top_eigenvalue` added (its first record cold, the later ones warm-started,
`eigen.recorded_top_eigenvalue`), and their ratio. Both are compiled first; then the two runs alternate
`--repeats` times and the least time of each is kept (the machine's load hits both alike), in
wall-clock seconds and in the process's CPU seconds (which do not count the time the process
waits for a core on a shared machine).

Accuracy (`--parts accuracy`): the relative error of `eigen.diagonal_top_eigenvalue` against
`eigvalsh` of the exact Hessian, in float64 and in float32, on W1 states from real trajectories:
the start and after 10, 20, ..., 100, 200, 500, 1000 and 2000 steps of stochastic SAM, 8 sigmas
x `--accuracy-seeds` seeds, for the iteration counts `--iterations`. This is how
`eigen.RECORD_ITERATIONS` was chosen.

Each part runs in its own process (the accuracy with x64 on). Usage: `noisydln bench --suite
eigen` or `python -m noisydln.bench.eigen_cost` (`--seeds 256` for a smaller grid, `--quick` for
a smoke run of under a minute, `--parts accuracy` or `--parts cost,accuracy` for the accuracy
table, `--json FILE` to save the numbers).
"""

import argparse
import json
import sys
import time
from pathlib import Path

from noisydln.bench.throughput import run_worker, save_numbers, set_host_devices, w1_data

WORKER_MODULE = "noisydln.bench.eigen_cost"
ACCURACY_STEPS = (*range(10, 101, 10), 200, 500, 1000, 2000)
PARTS = ("cost", "accuracy")


def worker_cost(args) -> dict:
    set_host_devices(args.devices)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import noisydln
    from noisydln import eigen

    X, y, init, sigmas = w1_data(8)
    problem = noisydln.problem_from_data(jnp.asarray(X), jnp.asarray(y))
    configs = {
        name: noisydln.SimConfig(
            num_steps=args.steps, record_every=10, eta=0.01, init=init, quantities=quantities
        )
        for name, quantities in (
            ("without", noisydln.QUANTITIES),
            ("with", noisydln.QUANTITIES + ("top_eigenvalue",)),
        )
    }

    def run(name, key):
        wall, cpu = time.perf_counter(), time.process_time()
        result = noisydln.run_grid(key, problem, configs[name], num_seeds=args.seeds, sigmas=sigmas)
        jax.block_until_ready(result.mean)
        return time.perf_counter() - wall, time.process_time() - cpu, result

    first = {name: run(name, jax.random.key(1))[0] for name in configs}  # compiles
    steady = {name: [] for name in configs}
    cpu = {name: [] for name in configs}
    for repeat in range(args.repeats):  # interleaved: the machine's load hits both alike
        for name in configs:
            seconds, cpu_seconds, result = run(name, jax.random.key(2 + repeat))
            steady[name].append(seconds)
            cpu[name].append(cpu_seconds)
    best = {name: min(times) for name, times in steady.items()}
    best_cpu = {name: min(times) for name, times in cpu.items()}
    records = len(configs["with"].record_steps())
    top = np.asarray(result.mean["top_eigenvalue"][:, 0, 0, -1])
    return {
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})",
        "seeds": args.seeds,
        "steps": args.steps,
        "records": records,
        "iterations": eigen.RECORD_ITERATIONS,
        "warm_iterations": eigen.WARM_ITERATIONS,
        "seconds": best,
        "all_seconds": steady,
        "cpu_seconds": best_cpu,
        "compile_seconds": {name: max(first[name] - best[name], 0.0) for name in configs},
        "ratio": best["with"] / best["without"],
        "cpu_ratio": best_cpu["with"] / best_cpu["without"],
        "ms_per_record": 1e3 * (best["with"] - best["without"]) / records,
        "final_top_eigenvalue_mean": top.tolist(),
        "diverged": int(result.diverged.sum()),
    }


def worker_accuracy(args) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import noisydln
    from noisydln import eigen

    _, _, init, sigmas = w1_data(8)
    problem = noisydln.make_problem(jax.random.key(0), 200, 100, k=5, values=1.0)  # float64
    start = jnp.asarray(init, jnp.float64)

    def trajectory(key, sigma):
        def step(t, w):
            noisy = noisydln.perturbed_grad(jax.random.fold_in(key, t), w, problem, sigma)
            return w - 0.01 * noisy

        out, done, params = [start], 0, start
        for target in ACCURACY_STEPS:
            params = jax.lax.fori_loop(done, target, step, params)
            out.append(params)
            done = target
        return jnp.stack(out)

    keys = jax.random.split(jax.random.key(1), args.accuracy_seeds)
    states = jax.jit(jax.vmap(lambda k: jax.vmap(lambda s: trajectory(k, s))(sigmas)))(keys)
    states = jnp.moveaxis(states, 2, 0).reshape(len(ACCURACY_STEPS) + 1, -1, 2, 100)
    flat = states.reshape(-1, 2, 100)
    rows = []
    for dtype in (jnp.float64, jnp.float32):
        data = noisydln.problem_from_data(problem.X.astype(dtype), problem.y.astype(dtype))
        data64 = jax.tree.map(lambda x: x.astype(jnp.float64), data)  # its very numbers
        rounded = flat.astype(dtype).astype(jnp.float64)
        hessian = jax.jit(jax.vmap(lambda p, data64=data64: noisydln.hessian(p, data64)))
        reference = np.concatenate(
            [
                np.linalg.eigvalsh(np.asarray(hessian(chunk)))[:, -1]
                for chunk in np.array_split(rounded, 16)
            ]
        )
        for m in args.iterations:
            top = jax.jit(
                jax.vmap(lambda p, m=m, data=data: eigen.diagonal_top_eigenvalue(p, data, m))
            )
            estimate = np.asarray(top(flat.astype(dtype)), dtype=np.float64)
            error = (np.abs(estimate - reference) / np.abs(reference)).reshape(states.shape[:2])
            rows.append({
                "dtype": jnp.dtype(dtype).name,
                "iterations": m,
                "max_relative_error": float(error.max()),
                "quantile_99": float(np.quantile(error, 0.99)),
                "max_by_step": dict(zip((0, *ACCURACY_STEPS), error.max(axis=1).tolist(), strict=True)),
            })  # fmt: skip
    return {"states": int(flat.shape[0]), "rows": rows}


def spawn(args, worker: str) -> dict:
    argv = ["--worker", worker, "--seeds", str(args.seeds), "--steps", str(args.steps),
            "--repeats", str(args.repeats), "--accuracy-seeds", str(args.accuracy_seeds),
            "--iterations", ",".join(map(str, args.iterations))]  # fmt: skip
    if args.devices is not None:
        argv += ["--devices", str(args.devices)]
    return run_worker(WORKER_MODULE, argv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options (`--quick` already applied to the sizes)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2, help="steady-state repeats (best kept)")
    parser.add_argument(
        "--devices", type=int, help="XLA host devices (default: noisydln's, one per core)"
    )
    parser.add_argument(
        "--parts",
        type=lambda text: tuple(text.split(",")),
        default=("cost",),
        help="what to measure: cost, accuracy or cost,accuracy (default: cost)",
    )
    parser.add_argument("--accuracy-seeds", type=int, default=64)
    parser.add_argument(
        "--iterations",
        type=lambda text: tuple(int(m) for m in text.split(",")),
        default=None,
        help="Lanczos steps compared by the accuracy part (default: 5, 30, 40, 45 and the "
        "recorded count)",
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    if args.iterations is None:
        from noisydln.eigen import RECORD_ITERATIONS  # noqa: PLC0415 (imports JAX)

        args.iterations = tuple(sorted({5, 30, 40, 45, RECORD_ITERATIONS}))
    if args.quick and not args.worker:
        args.seeds, args.steps, args.repeats, args.accuracy_seeds = 64, 100, 1, 2
    return args


def benchmark(args: argparse.Namespace) -> dict:
    """Runs the measurements, prints them and returns `{"cost": ..., "accuracy": ...}`."""
    numbers = {}
    if "cost" in args.parts:
        print(
            f"W1 with and without top_eigenvalue: 8 sigmas x {args.seeds} seeds x {args.steps} "
            "steps (record every 10), n=200 d=100 depth 2, float32",
            flush=True,
        )
        numbers["cost"] = cost = spawn(args, "cost")
        seconds, cpu = cost["seconds"], cost["cpu_seconds"]
        print(
            f"  {cost['device']}: without {seconds['without']:.2f} s, with {seconds['with']:.2f} "
            f"s (steady state, best of {args.repeats} interleaved; compile "
            f"{cost['compile_seconds']['without']:.1f} s and {cost['compile_seconds']['with']:.1f} "
            f"s): ratio x{cost['ratio']:.2f}, {cost['ms_per_record']:.0f} ms per record "
            f"({cost['iterations']} Lanczos steps at the first record, then "
            f"{cost['warm_iterations']} from the carried Ritz vector); process CPU time {cpu['without']:.2f} s and "
            f"{cpu['with']:.2f} s: ratio x{cost['cpu_ratio']:.2f}",
            flush=True,
        )
    if "accuracy" in args.parts:
        accuracy = spawn(args, "accuracy")
        print(
            f"\nrelative error of the largest Ritz value against eigvalsh, {accuracy['states']} "
            "W1 states (start, 10..100, 200, 500, 1000, 2000 steps of stochastic SAM):"
        )
        print(f"  {'dtype':8s} {'steps':>5s} {'max':>9s} {'99%':>9s}  worst record step")
        for row in accuracy["rows"]:
            worst = max(row["max_by_step"], key=row["max_by_step"].get)
            print(
                f"  {row['dtype']:8s} {row['iterations']:5d} {row['max_relative_error']:9.1e} "
                f"{row['quantile_99']:9.1e}  {worst}"
            )
        numbers["accuracy"] = accuracy
    return numbers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        report = worker_cost(args) if args.worker == "cost" else worker_accuracy(args)
        print(json.dumps(report))
        return 0
    numbers = benchmark(args)
    save_numbers(args.json, numbers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
