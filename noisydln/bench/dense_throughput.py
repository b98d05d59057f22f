"""Throughput of `run_grid` on dense networks of width 100, beside workload W1.

D1: W1's problem (n = 200, d = 100, k = 5 non-zeros equal to 1, Gaussian design, float32),
stochastic SAM with eta = 0.01, 8 sigmas in linspace(0, 0.05, 8) (W1's sigmas up to 0.3 make a
third of these trajectories diverge: the noise on 10100 weights is 50 times W1's), on a depth-2
dense network `W_1 [100, 100], W_2 [1, 100]` (P = 10100 parameters per trajectory) from a seeded
random start of scale 0.5 (`SimConfig(network="dense", widths=(100,), init=0.5, init_seed=0)`),
record every 10 steps. Two runs: recording `beta` only (the training steps' cost) and the
default dense quantities (whose expected loss, weighted gaps and Hessian trace cost `O(h^2 d)`
per record in fixed-order products, `noisydln.linalg`). Fewer seeds and steps than W1
(`--seeds`, `--steps`), so the rates are the figures to compare: trajectory-steps per second
and parameter-steps (trajectory-steps x P) per second. Run by `noisydln bench --suite throughput`
in its own process, or alone: `python -m noisydln.bench.dense_throughput`.
"""

import argparse
import json
import sys
import time

from noisydln.bench.throughput import peak_memory_mb, run_worker, set_host_devices, w1_data

WORKER_MODULE = "noisydln.bench.dense_throughput"
WIDTH = 100
NUM_SIGMAS = 8
MAX_SIGMA = 0.05
RECORDINGS = ("beta", "default")  # --record: beta alone, or the family's default quantities


def worker(args) -> dict:
    """Compiles, then times `args.repeats` runs of D1 in this process; the best is kept."""
    set_host_devices(args.devices)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import noisydln

    X, y, _, _ = w1_data(NUM_SIGMAS)
    sigmas = np.linspace(0.0, MAX_SIGMA, NUM_SIGMAS)
    problem = noisydln.problem_from_data(jnp.asarray(X), jnp.asarray(y))
    quantities = {"beta": ("beta",), "default": noisydln.networks.Dense((1,)).quantities}
    config = noisydln.SimConfig(
        network="dense", widths=(args.width,), init=0.5, init_seed=0,
        num_steps=args.steps, record_every=10, eta=0.01, quantities=quantities[args.record],
    )  # fmt: skip

    def run(key):
        start = time.perf_counter()
        result = noisydln.run_grid(key, problem, config, num_seeds=args.seeds, sigmas=sigmas)
        jax.block_until_ready(result.mean)
        return time.perf_counter() - start, result

    first, _ = run(jax.random.key(1))  # compiles
    steady = [run(jax.random.key(2 + repeat))[0] for repeat in range(args.repeats)]
    _, result = run(jax.random.key(2))
    memory, memory_kind = peak_memory_mb(jax)
    best = min(steady)
    return {
        "method": f"jax run_grid, dense width {args.width}, recording {args.record}",
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})",
        "seconds": best,
        "compile_seconds": max(first - best, 0.0),
        "memory_mb": memory,
        "memory_kind": memory_kind,
        "num_params": config.family().num_params(2, problem.d),
        "final_beta_0_mean": np.asarray(result.mean["beta"][:, 0, 0, -1, 0]).tolist(),
        "diverged": int(result.diverged.sum()),
    }


def measure(
    seeds: int, steps: int, repeats: int, devices: int | None = None, record: str = "default"
) -> dict:
    """Runs D1 in a fresh process and returns its report with the rates added."""
    argv = ["--worker", "--seeds", str(seeds), "--steps", str(steps), "--repeats", str(repeats)]
    argv += ["--record", record]
    if devices:
        argv += ["--devices", str(devices)]
    report = run_worker(WORKER_MODULE, argv)
    work = NUM_SIGMAS * seeds * steps
    report["trajectory_steps_per_second"] = work / report["seconds"]
    report["parameter_steps_per_second"] = work * report["num_params"] / report["seconds"]
    report.update(seeds=seeds, steps=steps, record=record)
    return report


def measure_both(seeds: int, steps: int, repeats: int, devices: int | None = None) -> list[dict]:
    """`measure` recording beta alone, then the default quantities."""
    return [measure(seeds, steps, repeats, devices, record) for record in RECORDINGS]


def describe(report: dict) -> str:
    """One line of the benchmark's table."""
    return (
        f"D1 dense width {WIDTH} (P = {report['num_params']}), recording {report['record']}: "
        f"{NUM_SIGMAS} sigmas x "
        f"{report['seeds']} seeds x {report['steps']} steps in {report['seconds']:.2f} s (compile "
        f"{report['compile_seconds']:.2f} s): {report['trajectory_steps_per_second'] / 1e6:.4f} M "
        f"traj-steps/s, {report['parameter_steps_per_second'] / 1e6:.1f} M parameter-steps/s, "
        f"peak {report['memory_mb']:.0f} MB, diverged {report['diverged']}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--record", choices=RECORDINGS, default="default")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--devices", type=int)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    for report in measure_both(args.seeds, args.steps, args.repeats, args.devices):
        print(describe(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
