"""The `noisydln` command line: run spec files, plot and check their results, closed forms.

Subcommands: `run` (a spec file -> a netCDF results file), `plot` (results -> figures), `demo`
(the example spec end to end: results, the table of the claims, figures), `spec` (print the
example spec, check a spec), `validate` (the fixed validation suite), `predict` (closed forms of
one problem; the default) and `bench` (the benchmarks). Every bad input ends in one line
`noisydln: error: ...` on stderr and exit status 2; a failed claim exits with 1.

xarray, matplotlib and tqdm are imported inside the commands, so `noisydln --help` stays fast.
"""

import argparse
import dataclasses
import importlib
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from noisydln import problem as problem_lib
from noisydln import theory
from noisydln._files import remove_leftovers

# The bad inputs a command reports in one line (FileNotFoundError, FileExistsError are OSErrors).
INPUT_ERRORS = (ValueError, TypeError, OSError)
DEMO_DIR = "noisydln-demo"


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line on stderr (exit status 2), like the rest."""

    def error(self, message: str):
        self.exit(2, f"noisydln: error: {message} (see `{self.prog} --help`)\n")


# ---------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _floats(text: str) -> list[float]:
    """Comma-separated finite numbers; an empty entry (`0.1,,0.2`) is an error, not skipped."""
    values = []
    for item in text.split(","):
        if not item.strip():
            raise argparse.ArgumentTypeError(f"empty entry in {text!r}")
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers, got {item.strip()!r} in {text!r}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
        values.append(value)
    return values


def _process_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _size(text: str) -> int:
    from noisydln.plan import parse_bytes  # noqa: PLC0415

    try:
        return parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 2GB, 1.5GiB or 800MB, got {text!r}"
        ) from None


def _sigmas(text: str) -> list[float]:
    values = _floats(text)
    negative = [v for v in values if v < 0]
    if negative:
        raise argparse.ArgumentTypeError(f"noise levels must be >= 0, got {negative[0]:g}")
    return values


# ---------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="noisydln",
        description="Stochastic SAM on diagonal linear networks: simulations and closed forms. "
        "With no subcommand, `noisydln` runs `predict`.",
        epilog="Start with `noisydln demo`, or `noisydln spec --example > my.toml`, edit it, "
        "then `noisydln run my.toml` and `noisydln plot my.nc`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the experiment of a spec file and save its results (netCDF)",
        description="Runs every static combination (algorithm, depth, noise) of the spec's grid "
        "with a progress bar on stderr, saves the labelled Monte Carlo statistics and the "
        "closed-form predictions to a netCDF file and prints a one-line summary.",
    )
    run.add_argument("spec", metavar="SPEC.toml", help="the experiment (see `noisydln spec`)")
    run.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="results file (default: the spec's name with suffix .nc, in the current folder)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT.checkpoint, saved after every chunk of seeds (start afresh if "
        "there is none); the results are the same bit for bit as an uninterrupted run's",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the memory estimate, chunks and compiled programs, and run nothing",
    )
    run.add_argument(
        "--max-memory",
        metavar="SIZE",
        type=_size,
        help="refuse, before compiling, a chunk estimated to need more than SIZE per device "
        "(e.g. 2GB, 1.5GiB; default: what the device has)",
    )
    cluster = run.add_argument_group(
        "several processes (jax.distributed; detected by itself under Slurm or Open MPI)"
    )
    cluster.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    cluster.add_argument("--num-processes", type=_positive_int, metavar="N", help="processes")
    cluster.add_argument("--process-id", type=_process_id, metavar="I", help="0 .. N - 1")

    plot = commands.add_parser(
        "plot",
        help="draw the figures of a results file",
        description="Opens a results file of `noisydln run` and writes its figures (PNG, and "
        "PDF with --pdf); prints the paths written.",
    )
    plot.add_argument("results", metavar="OUT", help="results file written by `noisydln run`")
    plot.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="folder of the figures (default: OUT without its suffix, plus '-figures')",
    )
    plot.add_argument("--pdf", action="store_true", help="write PDF files beside the PNG files")

    demo = commands.add_parser(
        "demo",
        help="run the example experiment end to end: results, the claims' table, figures",
        description="Runs the embedded example spec (`noisydln spec --example`: the paper's "
        "three claims on one small problem, about 20 s on 2 CPU cores), saves DIR/results.nc, "
        "prints the table of the balancing, sharpness and limit checks and writes the figures "
        "into DIR. Exit status 0 when every claim passed, 1 when one failed.",
    )
    demo.add_argument(
        "-o", "--output", metavar="DIR", default=DEMO_DIR, help=f"folder (default ./{DEMO_DIR})"
    )
    demo.add_argument(
        "--seeds",
        type=_positive_int,
        metavar="N",
        help="seeds per grid cell (default: the spec's grid.num_seeds)",
    )
    demo.add_argument("--overwrite", action="store_true", help="replace an existing results.nc")
    demo.add_argument("--pdf", action="store_true", help="write PDF files beside the PNG files")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    spec = commands.add_parser(
        "spec",
        help="print the commented example spec, or check a spec file",
        description="`--example` prints the commented example spec (a starting point for your "
        "own); `--check FILE` checks every key of FILE, builds its problem and prints the "
        "normalized spec as TOML, with the number of programs it compiles as a comment.",
    )
    which = spec.add_mutually_exclusive_group(required=True)
    which.add_argument("--example", action="store_true", help="print the example spec file")
    which.add_argument("--check", metavar="FILE", help="check FILE and print it normalized")

    predict = commands.add_parser(
        "predict",
        help="build a problem and print the closed-form predictions (the default)",
        description="Builds one problem and prints, per noise level, the threshold, the "
        "balancing rate and the limit of stochastic SAM with the sharpness of its balanced "
        "factorisation (docs/theory.md s3-s4). Nothing is simulated.",
    )
    predict.add_argument("--n", type=int, default=100, help="samples (default 100)")
    predict.add_argument("--d", type=int, default=20, help="coordinates (default 20)")
    predict.add_argument("--k", type=int, default=3, help="teacher non-zeros (default 3)")
    predict.add_argument("--design", choices=problem_lib.DESIGNS, default="gaussian")
    predict.add_argument("--depth", type=int, default=2, help="network depth L >= 2 (default 2)")
    predict.add_argument("--noise-std", type=float, default=0.0, help="label noise (default 0)")
    predict.add_argument(
        "--sigmas",
        type=_sigmas,
        default=[0.0, 0.1, 0.2, 0.3],
        help="comma-separated noise levels >= 0 (default 0,0.1,0.2,0.3)",
    )
    predict.add_argument("--seed", type=int, default=0, help="PRNG seed of the problem")

    validate = commands.add_parser(
        "validate",
        help="run the fixed experiments of the three claims and print the verdicts",
        description="Runs the fixed validation suite (`noisydln.stats.validate`) and prints "
        "one table. Exit status 0 when every claim passed, 1 when one failed.",
    )
    validate.add_argument(
        "--seeds", type=_positive_int, default=2048, help="seeds per grid cell (default 2048)"
    )
    validate.add_argument("--quick", action="store_true", help="8x fewer seeds (same run lengths)")
    validate.add_argument("--float64", action="store_true", help="simulate in float64")
    validate.add_argument("--seed", type=int, default=0, help="root PRNG seed")

    commands.add_parser(
        "bench",
        add_help=False,  # `noisydln bench --help` is the benchmarks' own help
        help="run the benchmarks (`noisydln bench --help` for their options, e.g. --quick)",
    )
    return parser


# ---------------------------------------------------------------- predict


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


# ---------------------------------------------------------------- run, plot, demo


def _check_output(path: Path, overwrite: bool) -> None:
    """Raises before anything runs when the results could not be written to `path`."""
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder; give the results file's name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass --overwrite to replace it")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {str(path)!r}: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {str(path)!r}: {str(parent)!r} is not writable")


def _simulate(spec, *, quiet: bool, **options):
    """`run_experiment(spec, **options)` with a progress bar over chunks of seeds on stderr."""
    from tqdm import tqdm

    from noisydln.results import run_experiment

    with tqdm(desc=spec.name, unit="chunk", file=sys.stderr, disable=quiet) as bar:

        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        return run_experiment(spec, progress=progress, **options)


def _plot_module():
    try:
        return importlib.import_module("noisydln.plot")
    except ModuleNotFoundError as error:
        if error.name != "noisydln.plot":
            raise
        raise OSError("the figures need noisydln.plot, which is not installed") from error


def _check_claims(ds):
    """The balancing, sharpness and limit checks of every static combination, as one report.

    Returns `(report, notes)`; a check that does not apply (a quantity not recorded, a depth it
    does not cover: it raises ValueError) is skipped with a note saying why.
    """
    from noisydln import stats
    from noisydln.results import grid_results, problem_of, reference_result

    problem = problem_of(ds)
    combinations = grid_results(ds)
    reports, notes = [], []
    for labels, result, config in combinations:
        tag = " ".join(f"{k}={v}" for k, v in labels.items())
        checks = (
            stats.check_trajectory, stats.check_balancing, stats.check_sharpness, stats.check_limit,
        )  # fmt: skip
        for check in checks:
            options = {}
            if check is stats.check_trajectory:  # the run's own GD on L_R, stored beside it
                options["reference"] = reference_result(ds, labels["depth"])
            try:
                report = check(result, problem, config, **options)
            except ValueError as error:
                notes.append(f"skipped {check.__name__} ({tag}): {error}")
                continue
            if len(combinations) > 1:
                rows = tuple(row._replace(claim=f"{row.claim} [{tag}]") for row in report.rows)
                report = report._replace(rows=rows)
            reports.append(report)
    return stats.combine(*reports, name="demo"), notes


def _run(args: argparse.Namespace) -> int:
    from noisydln import results, runtime
    from noisydln.experiment import Experiment

    spec = Experiment.from_toml(args.spec)
    out = Path(args.output) if args.output else Path(Path(args.spec).stem + ".nc")
    if args.dry_run:
        print(_dry_run(spec, args.max_memory))
        return 0
    runtime.initialize(args.coordinator, args.num_processes, args.process_id)
    main = runtime.is_main_process()
    checkpoint = checkpoint_path(out)
    if main:
        _check_output(out, args.overwrite)
        remove_leftovers(out)  # a temporary OUT of a run killed while writing it
        if checkpoint.exists() and not args.resume:
            raise FileExistsError(
                f"{str(checkpoint)!r} holds an interrupted run: pass --resume to continue it, "
                "or delete it to start again"
            )
        if args.resume and not checkpoint.exists():
            print(f"noisydln: no checkpoint {str(checkpoint)!r}: starting afresh", file=sys.stderr)
    ds = _simulate(
        spec, quiet=args.quiet or not main, checkpoint=checkpoint, max_memory=args.max_memory
    )
    if main:
        path = results.save(ds, out, overwrite=args.overwrite)
        checkpoint.unlink(missing_ok=True)
        print(f"{results.summary(ds)}; saved to {path}")
    return 0


def checkpoint_path(out: Path) -> Path:
    """Where `noisydln run -o OUT` keeps its checkpoint: `OUT.checkpoint`, beside OUT."""
    return out.with_name(out.name + ".checkpoint")


def _dry_run(spec, max_memory: int | None) -> str:
    """What `run` would do: per grid run the seeds, cells, chunks and memory; nothing runs."""
    from noisydln.plan import format_bytes
    from noisydln.results import experiment_plans

    plans = experiment_plans(spec, max_memory=max_memory)
    lines = [
        f"{spec.name}: {len(plans)} grid runs, {len(plans)} compiled programs ({spec.run.dtype})"
    ]
    for run, plan in plans:
        c = run.config
        what = (
            "GD on L_R (reference)"
            if run.reference
            else f"{c.algorithm} ({c.noise or 'gaussian'} noise)"
        )
        e, size = plan.estimate, plan.size
        lines.append(
            f"  {what}, depth {c.depth}: {size.num_seeds} seeds x {size.cells} cells x "
            f"{size.num_records} records; {plan.num_chunks} chunk(s) of {plan.chunk_size} seeds "
            f"over {plan.num_devices} device(s); about {format_bytes(e.device_total)} per device "
            f"(states {format_bytes(e.states)}, records {format_bytes(e.records)}, moments "
            f"{format_bytes(e.moments)})"
        )
    largest = max(plan.estimate.device_total for _, plan in plans)
    limit = "" if max_memory is None else f" (--max-memory {format_bytes(max_memory)})"
    lines.append(f"largest chunk: about {format_bytes(largest)} per device{limit}; fits")
    return "\n".join(lines)


def _plot(args: argparse.Namespace) -> int:
    from noisydln import results

    source = Path(args.results)
    folder = Path(args.output) if args.output else source.with_name(f"{source.stem}-figures")
    ds = results.load(source)
    plot = _plot_module()
    for path in plot.save_figures(ds, folder, pdf=args.pdf):
        print(path)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from noisydln import experiment, results

    spec = experiment.example()
    if args.seeds is not None:
        spec = dataclasses.replace(spec, grid=dataclasses.replace(spec.grid, num_seeds=args.seeds))
    folder = Path(args.output)
    out = folder / "results.nc"
    _check_output(out, args.overwrite)
    plot = _plot_module()

    ds = _simulate(spec, quiet=args.quiet)
    path = results.save(ds, out, overwrite=args.overwrite)
    print(f"{results.summary(ds)}; saved to {path}")
    report, notes = _check_claims(ds)
    print("\n".join([*notes, report.table()]))
    figures = plot.save_figures(ds, folder, pdf=args.pdf)
    print(f"results: {path}; figures: {', '.join(str(f) for f in figures)}")
    return 0 if report.passed else 1


def _spec(args: argparse.Namespace) -> int:
    from noisydln import experiment

    if args.example:
        sys.stdout.write(experiment.example_path().read_text(encoding="utf-8"))
        return 0
    spec = experiment.Experiment.from_toml(args.check)
    dtype = {"float32": jnp.float32, "float64": jnp.float64}[spec.run.dtype]
    with jax.enable_x64(spec.run.dtype == "float64"):
        problem = experiment.build_problem(spec, dtype)  # loads a data file, checks its shapes
        for config in spec.static_configs():
            try:
                config.validate_for(problem)
            except ValueError as error:
                raise experiment.SpecError(f"simulation: {error}") from error
    count = len(spec.static_configs())
    sys.stdout.write(spec.to_toml())
    print(
        f"# {count} compiled program{'s' if count != 1 else ''} (one per algorithm x depth x noise)"
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    from noisydln import stats

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    report = stats.validate(jax.random.key(args.seed), num_seeds=args.seeds, quick=args.quick)
    print(report)
    return 0 if report.passed else 1


def _bench(rest: list[str]) -> int:
    try:
        bench = importlib.import_module("noisydln.bench")
    except ModuleNotFoundError as error:
        if error.name != "noisydln.bench":
            raise
        raise OSError("the benchmarks (noisydln.bench) are not installed") from error
    try:
        return int(bench.main(rest) or 0)
    except SystemExit as exit_:  # the benchmarks' own argparse (--help, a bad option)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `noisydln` command; with no command it runs `predict` on its defaults.

    Returns the exit status: 0, 1 when a checked claim failed, 2 for a bad input (one line on
    stderr), 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["predict", *argv]
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as exit_:  # --help, or a bad argument (already reported in one line)
        return exit_.code if isinstance(exit_.code, int) else 0
    if rest and args.command != "bench":
        print(f"noisydln: error: unrecognized arguments: {' '.join(rest)}", file=sys.stderr)
        return 2
    commands = {
        "run": _run,
        "plot": _plot,
        "demo": _demo,
        "spec": _spec,
        "validate": _validate,
    }
    try:
        if args.command == "bench":
            return _bench(rest)
        if args.command in commands:
            return commands[args.command](args)
        jax.config.update("jax_enable_x64", True)
        print(_predict(args))
        return 0
    except INPUT_ERRORS as error:
        print(f"noisydln: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("noisydln: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
