"""Speed of the closed forms of docs/theory.md s4 along a sigma path: before and after.

Workload: `noisydln.make_problem(jax.random.key(0), 200, 100, k=5)` (Gaussian design, n = 200,
d = 100), 46 sigmas in `linspace(0, 1.2, 46)`, float64 (x64 on; float32 for the exact-zeros
check). "Old" is the implementation this change replaced, kept verbatim below: FISTA with
restart in a `while_loop` around closures built on every call (so every call compiles), and
bisection in `fori_loop`s around fresh closures. "New" is `noisydln.theory` now: one compiled
solver per shape and dtype (coordinate descent with a polishing solve), `lasso_path` warm-started
along the path. Compilation is reported apart from steady state.

Usage: `python benchmarks/closed_forms.py` (`--quick` runs the old per-call loop on 6 sigmas
instead of 46; its per-call time is the same).
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import noisydln  # noqa: E402
from noisydln import theory  # noqa: E402
from noisydln.model import end_to_end  # noqa: E402

NUM_SIGMAS = 46


# --- the implementation before this change, verbatim (less input checks) ---------------------


def old_lasso_limit(problem, sigma, signs=None, *, tol=None, max_steps=200_000):
    dtype = problem.gram.dtype
    if tol is None:
        tol = 1e-12 if dtype == jnp.float64 else 1e-5
    d = problem.d
    weights = 2 * jnp.asarray(sigma, dtype) ** 2 * problem.gram_diag
    signs = jnp.zeros((d,), dtype) if signs is None else jnp.asarray(signs, dtype)
    step = 1 / (2 * jnp.linalg.eigvalsh(problem.gram)[-1])

    def smooth_grad(beta):
        return 2 * (problem.gram @ beta - problem.xty)

    def prox(v):
        shrunk = jnp.sign(v) * jnp.maximum(jnp.abs(v) - step * weights, 0.0)
        return jnp.where(signs * shrunk < 0, 0.0, shrunk)

    def residual_norm(beta):
        return jnp.max(jnp.abs(beta - prox(beta - step * smooth_grad(beta)))) / step

    def keep_going(state):
        _, _, _, count, res = state
        return (res > tol) & (count < max_steps)

    def fista_step(state):
        beta, previous, momentum, count, _ = state
        extrapolated = beta + (momentum - 1) / (0.5 * (1 + jnp.sqrt(1 + 4 * momentum**2))) * (
            beta - previous
        )
        new = prox(extrapolated - step * smooth_grad(extrapolated))
        restart = jnp.dot(extrapolated - new, new - beta) > 0
        next_momentum = jnp.where(restart, 1.0, 0.5 * (1 + jnp.sqrt(1 + 4 * momentum**2)))
        return new, beta, next_momentum.astype(dtype), count + 1, residual_norm(new)

    start = jnp.zeros((d,), dtype)
    state = (start, start, jnp.ones((), dtype), 0, jnp.asarray(jnp.inf, dtype))
    beta, *_ = jax.lax.while_loop(keep_going, fista_step, state)
    return beta


def _old_bisect(fn, lower, upper):
    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = fn(mid) >= 0
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 200, halve, (lower, upper))
    return 0.5 * (lo + hi)


def old_stationary_roots(z, sigma, depth):
    z = jnp.asarray(z, dtype=jnp.result_type(z, sigma, float))
    tiny = jnp.finfo(z.dtype).tiny
    abs_z = jnp.maximum(jnp.abs(z), tiny)
    s2 = jnp.asarray(sigma, z.dtype) ** 2

    def excess(a):
        a = jnp.maximum(a, tiny)
        return (depth - 1) * jnp.log(a**2 + s2) - (depth - 2) * jnp.log(a) - jnp.log(abs_z)

    turning = jnp.full_like(z, jnp.sqrt((depth - 2) * s2 / depth))
    smallest = (s2 ** (depth - 1) / abs_z) ** (1.0 / (depth - 2))
    largest = abs_z ** (1.0 / depth)
    exists = (jnp.abs(z) >= theory.threshold(sigma, depth)) & (jnp.abs(z) > 0)
    a_minus = _old_bisect(excess, jnp.minimum(smallest, turning), turning)
    a_plus = _old_bisect(lambda a: -excess(a), turning, jnp.maximum(largest, turning))
    return jnp.where(exists, a_minus, 0.0), jnp.where(exists, a_plus, 0.0)


def old_limit(z, sigma, depth, init=None):
    z = jnp.asarray(z, dtype=jnp.result_type(z, sigma, float))
    a_minus, a_plus = old_stationary_roots(z, sigma, depth)
    reached = jnp.abs(z) > theory.threshold(sigma, depth)
    if init is not None:
        beta0 = end_to_end(jnp.asarray(init, z.dtype))
        reached = (
            reached & (jnp.sign(beta0) == jnp.sign(z)) & (jnp.abs(beta0) ** (1 / depth) > a_minus)
        )
    return jnp.where(reached, jnp.sign(z) * a_plus**depth, 0.0)


# --- timing -------------------------------------------------------------------------------------


def timed(fn, *args):
    """(seconds, result) of one call, waiting for the result."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, result


def per_sigma(fn, sigmas):
    """(seconds per call, stacked results) of `fn(sigma)` called once per sigma, in order."""
    start = time.perf_counter()
    results = [jax.block_until_ready(fn(s)) for s in sigmas]
    return (time.perf_counter() - start) / len(sigmas), jnp.stack(results)


def best_of(repeats, fn, *args):
    """The least time of `repeats` calls (steady state), and the last result."""
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(fn, *args)
        times.append(seconds)
    return min(times), result


def kkt_violation(beta, problem, sigma):
    """Largest violation of the weighted-lasso optimality conditions (float64, NumPy)."""
    gram, xty = np.asarray(problem.gram, np.float64), np.asarray(problem.xty, np.float64)
    beta = np.asarray(beta, np.float64)
    gradient = 2 * (gram @ beta - xty)
    weights = 2 * sigma**2 * np.diag(gram)
    on = np.abs(gradient + weights * np.sign(beta))
    off = np.maximum(np.abs(gradient) - weights, 0.0)
    return float(np.max(np.where(beta != 0, on, off)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="old per-call loop on 6 sigmas")
    parser.add_argument("--repeats", type=int, default=5, help="steady-state repeats (best kept)")
    args = parser.parse_args(argv)

    problem = noisydln.make_problem(jax.random.key(0), 200, 100, k=5)
    sigmas = jnp.linspace(0.0, 1.2, NUM_SIGMAS)
    old_sigmas = sigmas[:: NUM_SIGMAS // 6][:6] if args.quick else sigmas
    print(
        f"lasso_limit over {NUM_SIGMAS} sigmas in [0, 1.2], n = 200, d = 100, k = 5, float64, "
        f"on {jax.devices()[0].device_kind} ({jax.devices()[0].platform})"
    )
    rows = []  # (method, compile s, steady s per sigma, note)

    # old: every eager call builds new closures, so every call compiles
    old_each, old_betas = per_sigma(lambda s: old_lasso_limit(problem, s), old_sigmas)
    rows.append(("old lasso_limit, as called", None, old_each, "compiles on every call"))
    old_jit = jax.jit(lambda s: old_lasso_limit(problem, s))
    first, _ = timed(old_jit, sigmas[1])
    steady, _ = per_sigma(old_jit, sigmas)
    rows.append(("old FISTA, jitted once", first - steady, steady, "solver cost alone"))

    # new: one compilation per shape and dtype; the numbers are traced
    first, _ = timed(theory.lasso_limit, problem, sigmas[1])
    steady, new_betas = per_sigma(lambda s: theory.lasso_limit(problem, s), sigmas)
    steady = min(steady, per_sigma(lambda s: theory.lasso_limit(problem, s), sigmas)[0])
    rows.append(("new lasso_limit", first - steady, steady, "per call, from the origin"))
    first, _ = timed(theory.lasso_path, problem, sigmas)
    steady, path = best_of(args.repeats, theory.lasso_path, problem, sigmas)
    rows.append(
        ("new lasso_path", first - steady, steady / NUM_SIGMAS, "whole path / 46, warm starts")
    )
    batched = jax.jit(jax.vmap(theory.lasso_limit, in_axes=(None, 0)))
    first, _ = timed(batched, problem, sigmas)
    steady, vmapped = best_of(args.repeats, batched, problem, sigmas)
    rows.append(("new vmap(lasso_limit)", first - steady, steady / NUM_SIGMAS, "whole batch / 46"))

    header = f"{'method':28s} {'compile s':>9s} {'s per sigma':>12s} {'46 sigmas s':>12s}  note"
    print(header + "\n" + "-" * len(header))
    for method, compile_s, each, note in rows:
        compile_cell = "-" if compile_s is None else f"{compile_s:.3f}"
        total = each * NUM_SIGMAS + (compile_s or 0.0)
        print(f"{method:28s} {compile_cell:>9s} {each:12.5f} {total:12.3f}  {note}")

    state = theory._lasso_solve(
        problem.gram,
        problem.xty,
        jnp.asarray(0.3),
        jnp.zeros(problem.d),
        jnp.asarray(1e-12),
        jnp.asarray(10_000, jnp.int32),
    )
    sweeps = jax.vmap(
        lambda s: (
            theory._lasso_solve(
                problem.gram,
                problem.xty,
                s,
                jnp.zeros(problem.d),
                jnp.asarray(1e-12),
                jnp.asarray(10_000, jnp.int32),
            ).sweeps
        )
    )(sigmas)
    print(
        f"\nnew solver: {int(state.sweeps)} sweep(s) at sigma = 0.3; over the path, from the "
        f"origin, mean {float(sweeps.mean()):.1f} and max {int(sweeps.max())} sweeps per sigma"
    )
    old_on_path = old_betas if not args.quick else None
    if old_on_path is not None:
        print(
            f"max |new - old| over the path: {float(jnp.max(jnp.abs(new_betas - old_on_path))):.2e}"
        )
    print(
        f"max |lasso_path - lasso_limit|: {float(jnp.max(jnp.abs(path - new_betas))):.2e}, "
        f"max |vmap - lasso_limit|: {float(jnp.max(jnp.abs(vmapped - new_betas))):.2e}"
    )
    violations = [
        kkt_violation(b, problem, float(s)) for b, s in zip(new_betas, sigmas, strict=True)
    ]
    print(f"largest KKT violation of the new answers: {max(violations):.1e} (tolerance 1e-12)")

    # float32: exact zeros
    problem32 = noisydln.problem_from_data(
        problem.X.astype(jnp.float32), problem.y.astype(jnp.float32)
    )
    for sigma in (0.3, 0.6):
        reference = theory.lasso_limit(problem, sigma)
        new32 = theory.lasso_limit(problem32, sigma)
        old32 = old_lasso_limit(problem32, sigma)
        scale = float(jnp.max(jnp.abs(reference)))
        print(
            f"float32, sigma = {sigma}: non-zeros new {int((new32 != 0).sum())}, old "
            f"{int((old32 != 0).sum())}, float64 {int((reference != 0).sum())}; largest error / "
            f"max|beta| new {float(jnp.max(jnp.abs(new32 - reference))) / scale:.1e}, old "
            f"{float(jnp.max(jnp.abs(old32 - reference))) / scale:.1e}"
        )

    # depth 3 shrinkage-thresholding on d = 100 targets
    z = 3.0 * jax.random.normal(jax.random.key(1), (100,))
    limit_sigmas = sigmas[1:]
    old_each, old_limits = per_sigma(
        lambda s: old_limit(z, s, 3), limit_sigmas[:: 9 if args.quick else 1]
    )
    first, _ = timed(theory.limit, z, limit_sigmas[0], 3)
    steady, new_limits = per_sigma(lambda s: theory.limit(z, s, 3), limit_sigmas)
    print(
        f"\nlimit, depth 3, d = 100, {len(limit_sigmas)} sigmas: old {old_each:.4f} s per call "
        f"(compiles every call); new compile {first - steady:.3f} s, then {steady:.5f} s per call"
    )
    if not args.quick:
        print(f"max |new - old| limit: {float(jnp.max(jnp.abs(new_limits - old_limits))):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
