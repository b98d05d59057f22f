"""Experiment specs: one frozen dataclass that is also a TOML file.

A spec has four sections whose keys are the names of the Python arguments they feed:
`[problem]` (`make_problem`, or `data = "file.npz" | "file.csv"`), `[simulation]` (`SimConfig`),
`[grid]` (`run_grid`, plus static axes `depths`, `algorithms`, `noises`) and `[run]` (`dtype`,
`devices`). Every key is checked before anything compiles; an error names the key's path,
e.g. `grid.sigmas[2]: must be >= 0, got -0.1`.
"""

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import tomli_w
import tomllib

from noisydln import algorithms, networks, noise, problem
from noisydln.simulate import SimConfig

DTYPES = ("float32", "float64")
_MAX_SEEDS = 2**31 - 1  # seed indices are folded into keys as int32
_MAX_STEPS = 2**31 - 1  # step indices (and depths, sizes) are int32 inside compiled loops
_MAX_KEY_SEED = 2**32 - 1  # jax.random.key keeps 32 bits without x64 (float32 runs)


class SpecError(ValueError):
    """A spec that cannot run; the message starts with the key's path."""


# ---------------------------------------------------------------- value checks


def _fail(path: str, expected: str, value) -> SpecError:
    return SpecError(f"{path}: must be {expected}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _int(path, value, low=None, high=None):
    if (
        not _is_int(value)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        bounds = f" >= {low}" if low is not None else ""
        bounds += f" and <= {high}" if high is not None else ""
        raise _fail(path, f"an integer{bounds}", value)
    return int(value)


def _float(path, value, low=None, below=None):
    try:
        finite = _is_number(value) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise _fail(path, "a finite number", value)
    if low is not None and value < low:
        raise _fail(path, f">= {low:g}", value)
    if below is not None and value >= below:
        raise _fail(path, f"< {below:g}", value)
    return float(value)


def _bool(path, value):
    if not isinstance(value, bool):
        raise _fail(path, "true or false", value)
    return value


def _choice(path, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise _fail(path, f"one of {sorted(choices)}", value)
    return value


def _list(path, value, item, *, nonempty=True):
    if not isinstance(value, (list, tuple)) or (nonempty and not value):
        raise _fail(path, "a non-empty list" if nonempty else "a list", value)
    return tuple(item(f"{path}[{i}]", v) for i, v in enumerate(value))


def _number_or_list(path, value, low=None):
    if isinstance(value, (list, tuple)):
        return _list(path, value, lambda p, v: _float(p, v, low))
    return _float(path, value, low)


def _matrix(path, value):
    rows = _list(path, value, lambda p, row: _list(p, row, _float))
    if len({len(row) for row in rows}) != 1:
        raise _fail(path, "a rectangular array", value)
    return rows


def _init(path, value):
    """A scale, `[depth, d]` rows (diagonal network) or a list of matrices (dense network)."""
    if isinstance(value, (list, tuple)):
        first = value[0] if value else None
        if isinstance(first, (list, tuple)) and first and isinstance(first[0], (list, tuple)):
            return _list(path, value, _matrix)  # one matrix per layer
        rows = _list(path, value, lambda p, row: _list(p, row, _float))
        if len({len(row) for row in rows}) != 1:
            raise _fail(path, "a scale or a rectangular array [depth, d]", value)
        return rows
    return _float(path, value)


def _values(path, value):
    if isinstance(value, str) and value == "gaussian":
        return value
    return _number_or_list(path, value)


def _unknown(path: str, given: dict, known) -> None:
    unknown = sorted(set(given) - set(known), key=str)
    if unknown:
        where = f"{path}." if path else ""
        key = unknown[0]
        key = key if isinstance(key, str) and key.isprintable() else repr(key)  # one line
        raise SpecError(f"{where}{key}: unknown key; expected one of {', '.join(sorted(known))}")


def _check_fields(section, path: str) -> None:
    """Checks (and normalises: lists to tuples, ints to floats) every set field of a section,
    so that a section built in Python, or changed with `dataclasses.replace`, is checked too."""
    for name, check in section._CHECKS.items():
        value = getattr(section, name)
        if value is not None:
            object.__setattr__(section, name, check(f"{path}.{name}", value))


# ---------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class ProblemSpec:
    """`[problem]`: the arguments of `make_problem` plus `seed`, or a user's `data` file.

    `data` is a `.npz` file with arrays `X: [n, d]` and `y: [n]` (optionally `beta_star: [d]`)
    or a `.csv` file whose last column is `y` (a header line is skipped); a relative path is
    relative to the spec file. Unset keys (None) take `make_problem`'s defaults; `n`, `d`
    default to 100 and 20. `n_test` is the number of held-out rows that `test_loss` needs
    (default 0: none; generated problems only).
    """

    n: int | None = None
    d: int | None = None
    design: str | None = None
    diag: float | tuple[float, ...] | None = None
    k: int | None = None
    values: float | str | tuple[float, ...] | None = None
    beta_star: tuple[float, ...] | None = None
    noise_std: float | None = None
    n_test: int | None = None
    seed: int = 0
    data: str | None = None

    _CHECKS = {
        "n": lambda p, v: _int(p, v, 1),
        "d": lambda p, v: _int(p, v, 1),
        "design": lambda p, v: _choice(p, v, problem.DESIGNS),
        "diag": lambda p, v: _number_or_list(p, v, 0.0),
        "k": lambda p, v: _int(p, v, 0),
        "values": _values,
        "beta_star": lambda p, v: _list(p, v, _float),
        "noise_std": lambda p, v: _float(p, v, 0.0),
        "n_test": lambda p, v: _int(p, v, 0),
        "seed": lambda p, v: _int(p, v, 0, _MAX_KEY_SEED),
        "data": lambda p, v: _path(p, v),
    }

    def __post_init__(self):
        _check_fields(self, "problem")


def _path(path, value):
    if not isinstance(value, str) or not value:
        raise _fail(path, "a file path", value)
    return value


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """`[grid]`: the arguments of `run_grid` plus `seed` and the static axes.

    `depths`, `algorithms` and `noises` run one compiled program per combination, stitched
    into one result; unset, they take the `[simulation]` value.
    """

    num_seeds: int = 1024
    sigmas: tuple[float, ...] | None = None
    etas: tuple[float, ...] | None = None
    init_scales: tuple[float, ...] | None = None
    chunk_size: int | None = None
    seed: int = 0
    depths: tuple[int, ...] | None = None
    algorithms: tuple[str, ...] | None = None
    noises: tuple[str, ...] | None = None

    _CHECKS = {
        "num_seeds": lambda p, v: _int(p, v, 1, _MAX_SEEDS),
        "sigmas": lambda p, v: _list(p, v, lambda q, x: _float(q, x, 0.0)),
        "etas": lambda p, v: _list(p, v, lambda q, x: _float(q, x, 0.0)),
        "init_scales": lambda p, v: _list(p, v, lambda q, x: _float(q, x, 0.0)),
        "chunk_size": lambda p, v: _int(p, v, 1, _MAX_SEEDS),
        "seed": lambda p, v: _int(p, v, 0, _MAX_KEY_SEED),
        "depths": lambda p, v: _list(p, v, lambda q, x: _int(q, x, 2, _MAX_STEPS)),
        "algorithms": lambda p, v: _list(p, v, lambda q, x: _choice(q, x, algorithms.RULES)),
        "noises": lambda p, v: _list(p, v, lambda q, x: _choice(q, x, noise.SAMPLERS)),
    }

    def __post_init__(self):
        _check_fields(self, "grid")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """`[run]`: `dtype` ("float32", the default, or "float64"), `devices` (how many local
    devices to shard seeds over; default all) and `reference` (also run gradient descent on
    the expected loss from the same start, the deterministic reference of the mean; default
    true)."""

    dtype: str = "float32"
    devices: int | None = None
    reference: bool = True

    _CHECKS = {
        "dtype": lambda p, v: _choice(p, v, DTYPES),
        "devices": lambda p, v: _int(p, v, 1),
        "reference": lambda p, v: _bool(p, v),
    }

    def __post_init__(self):
        _check_fields(self, "run")


_SIMULATION_CHECKS = {
    "algorithm": lambda p, v: _choice(p, v, algorithms.RULES),
    "depth": lambda p, v: _int(p, v, 2, _MAX_STEPS),
    "num_steps": lambda p, v: _int(p, v, 1, _MAX_STEPS),
    "record_every": lambda p, v: _int(p, v, 1, _MAX_STEPS),
    "log_records": lambda p, v: _int(p, v, 1, _MAX_STEPS),
    "eta": lambda p, v: _float(p, v, 0.0),
    "sigma": lambda p, v: _float(p, v, 0.0),
    "init": _init,
    "noise": lambda p, v: _choice(p, v, noise.SAMPLERS),
    "momentum": lambda p, v: _float(p, v, 0.0, below=1.0),
    "batch_size": lambda p, v: _int(p, v, 1, _MAX_STEPS),
    "quantities": lambda p, v: _list(p, v, lambda q, x: _choice(q, x, networks.all_quantities())),
    "weight_decay": lambda p, v: _float(p, v, 0.0),
    "schedule": lambda p, v: _choice(p, v, algorithms.SCHEDULES),
    "schedule_alpha": lambda p, v: _float(p, v, 0.0),
    "schedule_boundaries": lambda p, v: _list(p, v, lambda q, x: _int(q, x, 1, _MAX_STEPS)),
    "schedule_factor": lambda p, v: _float(p, v, 0.0),
    "network": lambda p, v: _choice(p, v, networks.FAMILIES),
    "widths": lambda p, v: _list(p, v, lambda q, x: _int(q, x, 1, _MAX_STEPS)),
    "init_seed": lambda p, v: _int(p, v, 0, _MAX_KEY_SEED),
}


def _section(cls, path: str, given: dict, checks: dict):
    """Checks a section's keys and values and builds its dataclass (None values omitted)."""
    if not isinstance(given, dict):
        raise SpecError(f"{path}: must be a table [{path}], got {given!r}")
    _unknown(path, given, checks)
    values = {k: checks[k](f"{path}.{k}", v) for k, v in given.items() if v is not None}
    try:
        return cls(**values)
    except ValueError as error:
        if isinstance(error, SpecError):
            raise
        message = str(error)
        if message.startswith("imbalance_step_residual") or "is not a quantity of" in message:
            message = f"quantities: {message}"  # names the quantity, not the key
        raise SpecError(f"{path}.{message}") from error


# ---------------------------------------------------------------- the experiment


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A complete, runnable description of a simulation experiment (also a TOML file).

    Attributes:
      problem: the regression problem (`[problem]`).
      simulation: the run's `SimConfig` (`[simulation]`).
      grid: seeds, grid axes and static axes (`[grid]`).
      run: dtype and devices (`[run]`).
      name: a short label (top-level `name = "..."`).
      spec_dir: the folder relative data paths are resolved against (not part of the spec).

    Examples:
      >>> spec = Experiment.from_toml_text('[grid]\\nnum_seeds = 64\\nsigmas = [0.1, 0.2]')
      >>> spec.grid.sigmas, Experiment.from_toml_text(spec.to_toml()) == spec
      ((0.1, 0.2), True)
    """

    problem: ProblemSpec = ProblemSpec()
    simulation: SimConfig = SimConfig()
    grid: GridSpec = GridSpec()
    run: RunSpec = RunSpec()
    name: str = "experiment"
    spec_dir: str = dataclasses.field(default=".", compare=False, repr=False)

    def __post_init__(self):
        _check_consistent(self)

    @classmethod
    def from_dict(cls, spec: dict, spec_dir: str | Path = ".") -> "Experiment":
        """Builds and checks a spec from nested dicts (as `tomllib` reads them)."""
        if not isinstance(spec, dict):
            raise SpecError(
                f"a spec must be a table (a dict of sections), got {type(spec).__name__}"
            )
        sections = {"problem": ProblemSpec, "grid": GridSpec, "run": RunSpec}
        _unknown("", spec, ("name", "problem", "simulation", "grid", "run"))
        name = spec.get("name", "experiment")
        if not isinstance(name, str) or not name:
            raise _fail("name", "a non-empty string", name)
        parts = {
            key: _section(cls_, key, spec.get(key, {}), cls_._CHECKS)
            for key, cls_ in sections.items()
        }
        parts["simulation"] = _section(
            SimConfig, "simulation", spec.get("simulation", {}), _SIMULATION_CHECKS
        )
        return cls(**parts, name=name, spec_dir=str(spec_dir))

    @classmethod
    def from_toml_text(cls, text: str, spec_dir: str | Path = ".") -> "Experiment":
        """Parses TOML text (relative data paths resolved against `spec_dir`)."""
        if not isinstance(text, str):
            raise SpecError(f"a spec must be TOML text (a str), got {type(text).__name__}")
        try:
            spec = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise SpecError(f"not a valid TOML file: {error}") from error
        return cls.from_dict(spec, spec_dir)

    @classmethod
    def from_toml(cls, path: str | Path) -> "Experiment":
        """Reads a spec file; a relative `problem.data` path is relative to the file."""
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"spec file {str(path)!r} does not exist")
        return cls.from_toml_text(path.read_text(encoding="utf-8"), spec_dir=path.parent)

    def to_dict(self) -> dict:
        """The spec as nested dicts of TOML values (unset keys left out)."""
        out = {"name": self.name}
        for section in ("problem", "simulation", "grid", "run"):
            values = dataclasses.asdict(getattr(self, section))
            out[section] = {k: _plain(v) for k, v in values.items() if v is not None}
        return out

    def to_toml(self) -> str:
        """The spec as TOML text; `from_toml_text(spec.to_toml()) == spec`."""
        return tomli_w.dumps(self.to_dict())

    def static_configs(self) -> list[SimConfig]:
        """One `SimConfig` per static combination (algorithm, depth, noise), in grid order."""
        sim, grid = self.simulation, self.grid
        combos = itertools.product(
            grid.algorithms or (sim.algorithm,),
            grid.depths or (sim.depth,),
            grid.noises or (sim.noise,),
        )
        return [
            dataclasses.replace(sim, algorithm=a, depth=depth, noise=n) for a, depth, n in combos
        ]

    def data_path(self) -> Path | None:
        """The data file, resolved against the spec's folder, or None."""
        if self.problem.data is None:
            return None
        path = Path(self.problem.data)
        return path if path.is_absolute() else Path(self.spec_dir) / path


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _check_generated_problem(p: ProblemSpec, sim: SimConfig) -> None:
    """What `make_problem` would only find out after start-up: sizes that cannot fit."""
    n, d, design = p.n or 100, p.d or 20, p.design or "gaussian"
    if p.k is not None and p.k > d:
        raise SpecError(f"problem.k: must be <= d = {d}, got {p.k}")
    if design != "gaussian" and n < d:
        raise SpecError(f"problem.n: a {design} design needs n >= d = {d}, got {n}")
    if design != "gaussian" and p.n_test is not None and 0 < p.n_test < d:
        raise SpecError(
            f"problem.n_test: a {design} design needs n_test >= d = {d}, got {p.n_test}"
        )
    if (p.diag is not None) != (design == "diagonal"):
        raise SpecError(
            'problem.diag: must be given with design = "diagonal" and only then '
            f"(design = {design!r}, diag = {p.diag!r})"
        )
    if isinstance(p.diag, tuple) and len(p.diag) != d:
        raise SpecError(f"problem.diag: must have d = {d} entries, got {len(p.diag)}")
    if sim.batch_size is not None and sim.batch_size > n:
        raise SpecError(f"simulation.batch_size: must be <= n = {n}, got {sim.batch_size}")


def _check_consistent(spec: Experiment) -> None:
    """Checks across keys and sections (each message names the key that must change)."""
    given = {k for k, v in dataclasses.asdict(spec.problem).items() if v is not None}
    if spec.problem.data is not None:
        generator_keys = sorted(given - {"data", "seed", "beta_star"})
        if generator_keys:
            raise SpecError(
                f"problem.{generator_keys[0]}: not used with problem.data (the data fixes the "
                "problem); remove it"
            )
        suffix = Path(spec.problem.data).suffix
        if suffix not in (".npz", ".csv"):
            raise _fail("problem.data", "a .npz or .csv file", spec.problem.data)
    if spec.problem.beta_star is not None and spec.problem.k is not None:
        raise SpecError("problem.k: give either problem.beta_star or problem.k, not both")
    if spec.simulation.network != "diagonal" and spec.grid.depths is not None:
        other = [d for d in spec.grid.depths if d != spec.simulation.depth]
        if other:
            raise SpecError(
                f"grid.depths: simulation.widths fixes the depth of a {spec.simulation.network} "
                f"network to {spec.simulation.depth}, got depth {other[0]}"
            )
    if isinstance(spec.simulation.init, tuple) and spec.grid.depths is not None:
        other = [d for d in spec.grid.depths if d != len(spec.simulation.init)]
        if other:
            raise SpecError(
                f"grid.depths: an array simulation.init fixes depth {len(spec.simulation.init)}, "
                f"got depth {other[0]}; use a scale init with several depths"
            )
    if spec.problem.data is None:  # a generated problem's d is known before anything runs
        d, init, beta_star = spec.problem.d or 20, spec.simulation.init, spec.problem.beta_star
        if beta_star is not None and len(beta_star) != d:
            raise SpecError(f"problem.beta_star: must have d = {d} entries, got {len(beta_star)}")
        if isinstance(init, tuple):
            dense = spec.simulation.network == "dense"
            columns = len(init[0][0] if dense else init[0])
            if columns != d:
                what = "W_1 must have" if dense else "must have"
                raise SpecError(f"simulation.init: {what} d = {d} columns, got {columns}")
        _check_generated_problem(spec.problem, spec.simulation)
    sim, grid = spec.simulation, spec.grid
    for algorithm, depth, noise_law in itertools.product(
        grid.algorithms or (sim.algorithm,),
        grid.depths or (sim.depth,),
        grid.noises or (sim.noise,),
    ):
        try:  # building the combination's SimConfig checks it (static_configs would raise)
            dataclasses.replace(sim, algorithm=algorithm, depth=depth, noise=noise_law)
        except ValueError as error:
            if str(error).startswith("batch_size must be given"):  # the key to set
                raise SpecError(f"simulation.{error}; grid.algorithms has {algorithm!r}") from error
            axis = "grid" if (grid.algorithms or grid.depths or grid.noises) else "simulation"
            raise SpecError(
                f"{axis}: the combination algorithm={algorithm!r} depth={depth} "
                f"noise={noise_law!r} cannot run: {error}"
            ) from error


def example_path() -> Path:
    """The commented example spec that `noisydln spec --example` prints (also the demo's)."""
    return Path(__file__).parent / "specs" / "example.toml"


def example() -> Experiment:
    """The example spec (about 20 s on 2 CPU cores)."""
    return Experiment.from_toml(example_path())


# ---------------------------------------------------------------- building the problem


def load_data(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`(X [n, d], y [n], beta_star [d] or None)` from a `.npz` or `.csv` file.

    Raises a `SpecError` naming the file when it is missing, unreadable or inconsistent.
    """
    if not path.is_file():
        raise SpecError(f"problem.data: file {str(path)!r} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path) as arrays:
                missing = [name for name in ("X", "y") if name not in arrays]
                if missing:
                    raise SpecError(
                        f"problem.data: {str(path)!r} has no array named {missing[0]!r} "
                        f"(it holds {sorted(arrays)}); expected X [n, d] and y [n]"
                    )
                beta = arrays["beta_star"] if "beta_star" in arrays else None
                X, y = arrays["X"], arrays["y"]
        else:
            table = np.genfromtxt(path, delimiter=",", dtype=float)
            if np.isnan(table[0]).all():  # a header line
                table = table[1:]
            if table.ndim != 2 or table.shape[1] < 2:
                raise SpecError(
                    f"problem.data: {str(path)!r} must have at least two columns (X..., y)"
                )
            X, y, beta = table[:, :-1], table[:, -1], None
    except (OSError, ValueError) as error:
        if isinstance(error, SpecError):
            raise
        raise SpecError(f"problem.data: cannot read {str(path)!r}: {error}") from error
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise SpecError(
            f"problem.data: {str(path)!r} has X of shape {X.shape} and y of shape {y.shape}; "
            "expected X [n, d] and y [n] with the same n"
        )
    return X, y, beta


def build_problem(spec: Experiment, dtype) -> problem.Problem:
    """The spec's regression problem in `dtype` (generated from `problem.seed`, or loaded).

    A generated problem is drawn in float64 and rounded to `dtype`, so that float32 and
    float64 runs of one spec see the same data up to rounding.
    """
    import jax  # noqa: PLC0415 (keeps spec parsing free of JAX start-up)

    p = spec.problem
    path = spec.data_path()
    if path is not None:
        X, y, beta = load_data(path)
        if p.beta_star is not None:
            beta = np.asarray(p.beta_star)
        try:
            return problem.problem_from_data(
                np.asarray(X, dtype),
                np.asarray(y, dtype),
                None if beta is None else beta.astype(dtype),
            )
        except ValueError as error:
            raise SpecError(f"problem.data: {str(path)!r}: {error}") from error
    options = {
        k: v
        for k, v in dataclasses.asdict(p).items()
        if v is not None and k not in ("n", "d", "seed", "data")
    }
    try:  # drawn in float64 whatever the run's dtype, so float32 and float64 runs share it
        with jax.enable_x64(True):
            drawn = problem.make_problem(
                jax.random.key(p.seed), p.n or 100, p.d or 20, dtype=np.float64, **options
            )
            X, y, beta = (np.asarray(a) for a in (drawn.X, drawn.y, drawn.beta_star))
    except ValueError as error:
        raise SpecError(f"problem: {error}") from error
    built = problem.problem_from_data(X.astype(dtype), y.astype(dtype), beta.astype(dtype))
    if not drawn.has_test_data:
        return built
    # the held-out statistics of the float64 draw, rounded (the held-out rows are not kept)
    held_out = ("test_gram", "test_xty", "test_yty")
    return built._replace(
        **{k: jax.numpy.asarray(np.asarray(getattr(drawn, k)), built.gram.dtype) for k in held_out}
    )
