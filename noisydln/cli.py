"""The `noisydln` command line: `predict` (closed forms of a problem), `validate` (the claims)."""

import argparse
import math
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from noisydln import problem as problem_lib
from noisydln import theory


def _floats(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noisydln",
        description="Stochastic SAM on diagonal linear networks: simulations and closed forms.",
    )
    commands = parser.add_subparsers(dest="command")
    predict = commands.add_parser(
        "predict", help="build a problem and print the closed-form predictions (the default)"
    )
    predict.add_argument("--n", type=int, default=100, help="samples (default 100)")
    predict.add_argument("--d", type=int, default=20, help="coordinates (default 20)")
    predict.add_argument("--k", type=int, default=3, help="teacher non-zeros (default 3)")
    predict.add_argument("--design", choices=problem_lib.DESIGNS, default="gaussian")
    predict.add_argument("--depth", type=int, default=2, help="network depth L >= 2 (default 2)")
    predict.add_argument("--noise-std", type=float, default=0.0, help="label noise (default 0)")
    predict.add_argument(
        "--sigmas", type=_floats, default=[0.0, 0.1, 0.2, 0.3], help="comma-separated noise levels"
    )
    predict.add_argument("--seed", type=int, default=0, help="PRNG seed of the problem")
    validate = commands.add_parser(
        "validate", help="run the fixed experiments of the three claims and print the verdicts"
    )
    validate.add_argument("--seeds", type=int, default=2048, help="seeds per grid cell")
    validate.add_argument("--quick", action="store_true", help="8x fewer seeds (same run lengths)")
    validate.add_argument("--float64", action="store_true", help="simulate in float64")
    validate.add_argument("--seed", type=int, default=0, help="root PRNG seed")
    return parser


def _predict(args: argparse.Namespace) -> str:
    """The text report of `noisydln predict`."""
    problem = problem_lib.make_problem(
        jax.random.key(args.seed),
        args.n,
        args.d,
        design=args.design,
        diag=1.0 if args.design == "diagonal" else None,
        k=args.k,
        noise_std=args.noise_std,
    )
    depth = args.depth
    diag = problem.gram_diag
    diagonal_design = bool(jnp.allclose(problem.gram, jnp.diag(diag), atol=1e-10))
    lines = [
        f"problem: n={problem.n} d={problem.d} design={args.design} k={args.k} "
        f"label noise={args.noise_std} depth={depth} seed={args.seed}",
        f"teacher non-zeros: {[round(float(v), 4) for v in problem.beta_star[: args.k]]}",
        f"diag(Sigma): min {float(diag.min()):.4f}  mean {float(diag.mean()):.4f}  "
        f"max {float(diag.max()):.4f}",
        "",
    ]
    if diagonal_design:
        source = "shrinkage-thresholding (docs/theory.md s4)"
    elif depth == 2:
        source = "weighted lasso (docs/theory.md s4)"
    else:
        source = "none: depth >= 3 limits need a diagonal design"
    lines.append(f"limit: {source}")
    header = (
        f"{'sigma':>7} {'threshold':>10} {'rate 4s^2D':>11} {'half-life t':>12} "
        f"{'nonzeros':>9} {'limit[0]':>9} {'||limit-b*||':>12} {'min S':>10} {'min tr H':>10}"
    )
    lines += [header, "-" * len(header)]
    for sigma in args.sigmas:
        if depth == 2:
            rate = float(jnp.mean(theory.balancing_rate(problem, sigma)))
            half_life = math.log(2) / rate if rate > 0 else math.inf
            rate_cells = f"{rate:>11.5f} {half_life:>12.2f}"
        else:
            rate_cells = f"{'-':>11} {'-':>12}"
        if diagonal_design:
            beta = theory.limit(theory.diagonal_target(problem), sigma, depth)
        elif depth == 2:
            beta = theory.lasso_limit(problem, sigma)
        else:
            beta = None
        if beta is None:
            limit_cells = f"{'-':>9} {'-':>9} {'-':>12} {'-':>10} {'-':>10}"
        else:
            error = float(jnp.linalg.norm(beta - problem.beta_star))
            min_s = float(theory.min_average_sharpness(beta, problem, sigma, depth))
            min_trace = float(theory.min_hessian_trace(beta, problem, depth))
            limit_cells = (
                f"{int(jnp.sum(jnp.abs(beta) > 1e-9)):>9d} {float(beta[0]):>9.4f} {error:>12.4f} "
                f"{min_s:>10.4f} {min_trace:>10.4f}"
            )
        lines.append(
            f"{sigma:>7.3f} {float(theory.threshold(sigma, depth)):>10.5f} {rate_cells} "
            f"{limit_cells}"
        )
    lines += [
        "",
        "rate: mean over coordinates of the depth-2 gradient-flow balancing rate 4 sigma^2 D_i,",
        "      half-life in time t = eta * step (docs/theory.md s3).",
        "min S, min tr H: average sharpness and Hessian trace of the balanced factorisation of the limit.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `noisydln` command; with no command it runs `predict` on its defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["predict", *argv]
    args = build_parser().parse_args(argv)
    try:
        if args.command == "validate":
            from noisydln import stats

            if args.float64:
                jax.config.update("jax_enable_x64", True)
            report = stats.validate(
                jax.random.key(args.seed), num_seeds=args.seeds, quick=args.quick
            )
            print(report)
            return 0 if report.passed else 1
        jax.config.update("jax_enable_x64", True)
        print(_predict(args))
    except ValueError as error:
        print(f"noisydln: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
