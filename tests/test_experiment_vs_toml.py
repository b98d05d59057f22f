"""Experiment specs vs their TOML text: exact round trips, key-path errors raised before anything
runs, and a user's data files vs `problem_from_data` on the same arrays."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import noisydln
from noisydln import algorithms, noise
from noisydln.experiment import (
    Experiment,
    GridSpec,
    ProblemSpec,
    RunSpec,
    SpecError,
    build_problem,
    example,
)
from noisydln.quantities import ALL_QUANTITIES
from noisydln.simulate import SimConfig

SECTIONS = {"problem": ProblemSpec, "simulation": SimConfig, "grid": GridSpec, "run": RunSpec}


def _round_trip(spec: Experiment) -> Experiment:
    again = Experiment.from_toml_text(spec.to_toml())
    assert again == spec
    assert again.to_toml() == spec.to_toml()  # repr of every float: -0.0 and 1e-310 included
    return again


# ---------------------------------------------------------------- round trips


def test_example_spec_vs_its_toml_text():
    spec = example()
    again = _round_trip(spec)
    assert again.simulation.init == spec.simulation.init  # the [depth, d] array, float for float
    assert isinstance(again.simulation.init, tuple) and len(again.simulation.init) == 2
    # the comparison can fail: one changed number is seen
    assert dataclasses.replace(spec, grid=dataclasses.replace(spec.grid, seed=2)) != spec
    changed = spec.to_toml().replace("sigma = 0.3", "sigma = 0.30000000000000004")
    assert Experiment.from_toml_text(changed) != spec


# Three specs that together set every key of every section (the test below checks that).
FULL_SPECS = {
    "array init, static SAM axes, float64": """
        name = "every key: generated problem"
        [problem]
        n = 30
        d = 3
        design = "diagonal"
        diag = [1.0, 0.5, 2.5]
        k = 2
        values = [0.75, -1.25]
        noise_std = 0.125
        seed = 4294967295
        n_test = 7
        [simulation]
        algorithm = "one_layer_sam"
        depth = 3
        num_steps = 700
        record_every = 7
        eta = 0.003
        sigma = 0.21
        init = [[0.9, -0.1, 0.3], [0.2, 0.2, 0.2], [1e-310, -0.0, 1.7976931348623157e308]]
        noise = "uniform"
        momentum = 0.5
        quantities = ["beta", "imbalance", "trace_gap", "sharpness_gap", "test_loss"]
        weight_decay = 0.0001
        schedule = "cosine"
        schedule_alpha = 0.25
        [grid]
        num_seeds = 2147483647
        sigmas = [0.0, 0.1, 0.30000000000000004]
        etas = [0.01, 5e-324]
        init_scales = [1.0, 0.5]
        chunk_size = 48
        seed = 0
        depths = [3]
        algorithms = ["stochastic_sam", "one_layer_sam"]
        noises = ["gaussian", "rademacher", "uniform"]
        [run]
        dtype = "float64"
        devices = 2
        reference = false
        """,
    "data file, minibatch SGD, several depths": """
        name = "every key: data file"
        [problem]
        data = "data/train.csv"
        beta_star = [1.0, 0.0, -2.0]
        seed = 3
        [simulation]
        algorithm = "minibatch_sgd"
        depth = 2
        num_steps = 999
        record_every = 4
        log_records = 25
        eta = 0.02
        sigma = 0.0
        init = 0.05
        batch_size = 8
        schedule = "step"
        schedule_boundaries = [100, 500, 999]
        schedule_factor = 0.5
        [grid]
        num_seeds = 17
        depths = [2, 3, 4]
        algorithms = ["minibatch_sgd"]
        [run]
        dtype = "float32"
        devices = 1
        """,
    "teacher beta_star, gaussian values": """
        [problem]
        n = 8
        d = 2
        design = "orthogonal"
        values = "gaussian"
        beta_star = [0.5, -0.5]
        [simulation]
        algorithm = "stochastic_sam"
        quantities = ["imbalance_step_residual", "beta"]
        [grid]
        sigmas = [0.2]
        noises = ["rademacher"]
        """,
    "dense network, seeded start": """
        [problem]
        n = 10
        d = 3
        [simulation]
        network = "dense"
        widths = [4, 2]
        init = 0.3
        init_seed = 11
        quantities = ["beta", "imbalance_norm", "imbalance_drift_residual"]
        [grid]
        sigmas = [0.1]
        """,
}


@pytest.mark.parametrize("text", FULL_SPECS.values(), ids=FULL_SPECS.keys())
def test_full_specs_vs_their_toml_text(text):
    spec = Experiment.from_toml_text(textwrap.dedent(text))
    again = _round_trip(spec)
    assert again.static_configs() == spec.static_configs()


def test_full_specs_set_every_key_of_every_section():
    given_keys = {section: set() for section in SECTIONS}
    for text in FULL_SPECS.values():
        parsed = Experiment.from_toml_text(textwrap.dedent(text))
        for section in SECTIONS:
            given_keys[section] |= set(parsed.to_dict()[section])
    for section, cls in SECTIONS.items():
        assert given_keys[section] == {f.name for f in dataclasses.fields(cls)}, section


def test_full_spec_values_vs_the_text():
    spec = Experiment.from_toml_text(
        textwrap.dedent(FULL_SPECS["array init, static SAM axes, float64"])
    )
    assert spec.simulation.init[2] == (1e-310, -0.0, 1.7976931348623157e308)
    assert str(spec.simulation.init[2][1]) == "-0.0"
    assert spec.grid.sigmas == (0.0, 0.1, 0.30000000000000004)
    assert spec.grid.etas[1] == 5e-324
    assert [(c.algorithm, c.depth, c.noise) for c in spec.static_configs()] == [
        (a, 3, n)
        for a in ("stochastic_sam", "one_layer_sam")
        for n in ("gaussian", "rademacher", "uniform")
    ]
    assert all(c.init == spec.simulation.init for c in spec.static_configs())


# ---------------------------------------------------------------- generated valid specs

_finite = st.floats(allow_nan=False, allow_infinity=False)
_nonnegative = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)
_key_seed = st.integers(0, 2**32 - 1)
_NOISE_RULES = sorted(r for r in algorithms.RULES if "noise" in algorithms.OPTIONS.get(r, ()))
_BATCH_RULES = sorted(r for r in algorithms.RULES if "batch_size" in algorithms.OPTIONS.get(r, ()))
_PLAIN_RULES = sorted(set(algorithms.RULES) - set(_NOISE_RULES) - set(_BATCH_RULES))


def _some(draw, strategy):
    """`strategy`'s value, or None (the key left out)."""
    return draw(strategy) if draw(st.booleans()) else None


@st.composite
def valid_spec_dicts(draw):
    """Nested dicts of valid specs, keys left out at random, cross-key rules respected."""
    problem = {"seed": _some(draw, _key_seed)}
    if draw(st.booleans()):  # a user's data file: no generator keys, any width
        stem = draw(st.text(st.characters(exclude_characters="/\\"), min_size=1, max_size=10))
        problem["data"] = stem + draw(st.sampled_from([".npz", ".csv"]))
        problem["beta_star"] = _some(draw, st.lists(_finite, min_size=1, max_size=4))
        width = draw(st.integers(1, 4))
    else:
        width = draw(st.integers(1, 4))
        problem["d"] = width
        design = draw(st.sampled_from(noisydln.problem.DESIGNS))
        problem["design"] = design if design != "gaussian" or draw(st.booleans()) else None
        low_n = 1 if design == "gaussian" else width  # orthogonal / diagonal need n >= d
        problem["n"] = draw(st.integers(max(low_n, 10**4 + 1), 10**6))  # >= any batch_size
        if design == "diagonal":  # diag is required there, and only there
            problem["diag"] = draw(
                _nonnegative | st.lists(_nonnegative, min_size=width, max_size=width)
            )
        problem["noise_std"] = _some(draw, _nonnegative)
        values = _finite | st.just("gaussian") | st.lists(_finite, min_size=1, max_size=4)
        problem["values"] = _some(draw, values)
        if draw(st.booleans()):
            problem["beta_star"] = draw(st.lists(_finite, min_size=width, max_size=width))
        else:
            problem["k"] = _some(draw, st.integers(0, width))

    family = draw(st.sampled_from([_NOISE_RULES, _BATCH_RULES, _PLAIN_RULES]))
    depth = draw(st.integers(2, 5))
    simulation = {
        "algorithm": draw(st.sampled_from(family)),
        "depth": depth,
        "eta": _some(draw, _nonnegative),
        "sigma": _some(draw, _nonnegative),
        "momentum": _some(draw, st.floats(0.0, 1.0, exclude_max=True)),
    }
    if draw(st.booleans()):
        simulation["log_records"] = draw(st.integers(1, 500))
        simulation["num_steps"] = _some(draw, st.integers(1, 10**6))
        simulation["record_every"] = _some(draw, st.integers(1, 10**6))
    else:
        every = draw(st.integers(1, 100))
        simulation["record_every"] = every
        simulation["num_steps"] = every * draw(st.integers(1, 1000))
    array_init = draw(st.booleans())
    if array_init:
        row = st.lists(_finite, min_size=width, max_size=width)
        simulation["init"] = draw(st.lists(row, min_size=depth, max_size=depth))
    else:
        simulation["init"] = _some(draw, _finite)
    if family is _NOISE_RULES:
        simulation["noise"] = _some(draw, st.sampled_from(sorted(noise.SAMPLERS)))
    if family is _BATCH_RULES:
        simulation["batch_size"] = draw(st.integers(1, 10**4))  # required: no default

    grid = {
        "num_seeds": _some(draw, st.integers(1, 2**31 - 1)),
        "chunk_size": _some(draw, st.integers(1, 2**31 - 1)),
        "seed": _some(draw, _key_seed),
        "algorithms": _some(draw, st.lists(st.sampled_from(family), min_size=1, unique=True)),
    }
    for axis in ("sigmas", "etas", "init_scales"):
        grid[axis] = _some(draw, st.lists(_nonnegative, min_size=1, max_size=4))
    depths = (
        st.just([depth]) if array_init else st.lists(st.integers(2, 6), min_size=1, unique=True)
    )
    grid["depths"] = _some(draw, depths)
    if family is _NOISE_RULES:
        grid["noises"] = _some(
            draw, st.lists(st.sampled_from(sorted(noise.SAMPLERS)), min_size=1, unique=True)
        )
    deep = depth != 2 or any(x != 2 for x in grid["depths"] or ())
    allowed = [q for q in ALL_QUANTITIES if not (deep and q == "imbalance_step_residual")]
    simulation["quantities"] = _some(
        draw, st.lists(st.sampled_from(allowed), min_size=1, unique=True)
    )

    run = {"dtype": _some(draw, st.sampled_from(["float32", "float64"]))}
    run["devices"] = _some(draw, st.integers(1, 64))
    run["reference"] = _some(draw, st.booleans())
    out = {"name": _some(draw, st.text(min_size=1, max_size=20))}
    for section, values in (("problem", problem), ("simulation", simulation), ("grid", grid)):
        out[section] = {k: v for k, v in values.items() if v is not None}
    out["run"] = {k: v for k, v in run.items() if v is not None}
    return {k: v for k, v in out.items() if v is not None}


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(valid_spec_dicts())
def test_generated_specs_vs_their_toml_text(spec_dict):
    spec = Experiment.from_dict(spec_dict)  # valid by construction: must not raise
    again = _round_trip(spec)
    written = again.to_dict()
    for section, values in spec_dict.items():  # nothing given was changed on the way
        if section == "name":
            assert written["name"] == values
            continue
        for key, value in values.items():
            assert written[section][key] == value, f"{section}.{key}"
            assert repr(written[section][key]) == repr(value), f"{section}.{key}"


# ---------------------------------------------------------------- bad input: the key's path

BAD_SPECS = {
    "unknown section": ("[optimizer]\nlr = 0.1", "optimizer: unknown key"),
    "unknown top-level key": ('nmae = "x"', "nmae: unknown key"),
    "typo grid.sigma": ("[grid]\nsigma = [0.1]", "grid.sigma: unknown key; expected one of"),
    "section not a table": ("grid = 3", "grid: must be a table"),
    "num_seeds string": ('[grid]\nnum_seeds = "10"', "grid.num_seeds: must be an integer"),
    "num_seeds bool": ("[grid]\nnum_seeds = true", "grid.num_seeds: must be an integer"),
    "num_seeds float": ("[grid]\nnum_seeds = 1.5", "grid.num_seeds: must be an integer"),
    "num_seeds zero": ("[grid]\nnum_seeds = 0", "grid.num_seeds: must be an integer >= 1"),
    "negative sigma": (
        "[grid]\nsigmas = [0.1, 0.2, -0.1]",
        "grid.sigmas[2]: must be >= 0, got -0.1",
    ),
    "sigma string": ('[grid]\nsigmas = [0.1, "0.2"]', "grid.sigmas[1]: must be a finite number"),
    "nan sigma": (
        "[grid]\nsigmas = [0.1, nan]",
        "grid.sigmas[1]: must be a finite number, got nan",
    ),
    "inf eta": ("[simulation]\neta = inf", "simulation.eta: must be a finite number, got inf"),
    "-inf eta axis": ("[grid]\netas = [-inf]", "grid.etas[0]: must be a finite number, got -inf"),
    "nan noise_std": ("[problem]\nnoise_std = nan", "problem.noise_std: must be a finite number"),
    "inf in array init": (
        "[simulation]\ninit = [[1.0, 2.0], [3.0, inf]]",
        "simulation.init[1][1]: must be a finite number, got inf",
    ),
    "empty sigmas": ("[grid]\nsigmas = []", "grid.sigmas: must be a non-empty list, got []"),
    "empty depths": ("[grid]\ndepths = []", "grid.depths: must be a non-empty list"),
    "empty quantities": (
        "[simulation]\nquantities = []",
        "simulation.quantities: must be a non-empty",
    ),
    "algorithm adam": ('[simulation]\nalgorithm = "adam"', "simulation.algorithm: must be one of"),
    "noise law": ('[grid]\nnoises = ["cauchy"]', "grid.noises[0]: must be one of"),
    "depth 1": ("[grid]\ndepths = [2, 1]", "grid.depths[1]: must be an integer >= 2"),
    "num_steps off the stride": (
        "[simulation]\nnum_steps = 1001\nrecord_every = 10",
        "simulation.num_steps (1001) must be a multiple of record_every (10)",
    ),
    "momentum 1": ("[simulation]\nmomentum = 1.0", "simulation.momentum: must be < 1"),
    "dtype float16": (
        '[run]\ndtype = "float16"',
        "run.dtype: must be one of ['float32', 'float64']",
    ),
    "devices 0": ("[run]\ndevices = 0", "run.devices: must be an integer >= 1"),
    "empty name": ('name = ""', "name: must be a non-empty string"),
    "data with generator keys": (
        '[problem]\ndata = "train.npz"\nn = 10',
        "problem.n: not used with problem.data",
    ),
    "data with design": (
        '[problem]\ndata = "train.csv"\ndesign = "orthogonal"',
        "problem.design: not used with problem.data",
    ),
    "data suffix": ('[problem]\ndata = "train.txt"', "problem.data: must be a .npz or .csv file"),
    "k and beta_star": (
        "[problem]\nd = 2\nk = 1\nbeta_star = [1.0, 0.0]",
        "problem.k: give either problem.beta_star or problem.k",
    ),
    "beta_star of the wrong length": (
        "[problem]\nd = 4\nbeta_star = [1.0, 0.0, 0.5]",
        "problem.beta_star: must have d = 4 entries, got 3",
    ),
    "array init of the wrong width": (
        "[problem]\nd = 4\n[simulation]\ninit = [[1.0, 2.0], [3.0, 4.0]]",
        "simulation.init: must have d = 4 columns, got 2",
    ),
    "ragged array init": (
        "[simulation]\ninit = [[1.0, 2.0], [3.0]]",
        "simulation.init: must be a scale or a rectangular array",
    ),
    "noises with gd": (
        '[grid]\nalgorithms = ["stochastic_sam", "gd"]\nnoises = ["gaussian", "rademacher"]',
        "grid: the combination algorithm='gd' depth=2 noise='gaussian' cannot run",
    ),
    "noise with gd": (
        '[simulation]\nalgorithm = "gd"\nnoise = "rademacher"',
        "simulation.algorithm 'gd' takes the options",
    ),
    "array init with several depths": (
        "[problem]\nd = 2\n[simulation]\ninit = [[1.0, 2.0], [3.0, 4.0]]\n[grid]\ndepths = [2, 3]",
        "grid.depths: an array simulation.init fixes depth 2, got depth 3",
    ),
    "imbalance_step_residual at depth 3": (
        '[simulation]\ndepth = 3\nquantities = ["beta", "imbalance_step_residual"]',
        "simulation.quantities: imbalance_step_residual",
    ),
    "imbalance_step_residual with depths [2, 3]": (
        '[simulation]\nquantities = ["imbalance_step_residual"]\n[grid]\ndepths = [2, 3]',
        "grid: the combination algorithm='stochastic_sam' depth=3 noise=None cannot run",
    ),
    "negative seed": ("[problem]\nseed = -1", "problem.seed: must be an integer >= 0"),
    "seed beyond 32 bits": (
        "[grid]\nseed = 4294967296",
        "grid.seed: must be an integer >= 0 and <= 4294967295, got 4294967296",
    ),
    "not TOML": ("[grid\nsigmas = [0.1]", "not a valid TOML file"),
}


@pytest.mark.parametrize("text, message", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_spec_vs_its_message(text, message):
    with pytest.raises(SpecError) as error:
        Experiment.from_toml_text(text)
    assert str(error.value).startswith(message), str(error.value)


def test_bad_specs_are_the_only_change_from_a_valid_one():
    """The same texts without the bad line parse: each error comes from the line it names."""
    fixed = {
        "negative sigma": "[grid]\nsigmas = [0.1, 0.2, 0.1]",
        "num_steps off the stride": "[simulation]\nnum_steps = 1000\nrecord_every = 10",
        "noises with gd": '[grid]\nalgorithms = ["stochastic_sam", "one_layer_sam"]\n'
        'noises = ["gaussian", "rademacher"]',
        "imbalance_step_residual at depth 3": "[simulation]\ndepth = 2\n"
        'quantities = ["beta", "imbalance_step_residual"]',
        "seed beyond 32 bits": "[grid]\nseed = 4294967295",
        "array init of the wrong width": "[problem]\nd = 2\n[simulation]\ninit = [[1.0, 2.0], [3.0, 4.0]]",
    }
    for name, text in fixed.items():
        assert name in BAD_SPECS
        Experiment.from_toml_text(text)


def _write_bad_data(folder: Path) -> dict[str, tuple[str, str]]:
    """Spec texts whose data file is missing or inconsistent, with the message expected."""
    rng = np.random.default_rng(0)
    np.savez(folder / "mismatched.npz", X=rng.normal(size=(5, 3)), y=rng.normal(size=4))
    np.savez(folder / "no_y.npz", X=rng.normal(size=(5, 3)), labels=rng.normal(size=5))
    np.savez(folder / "flat_X.npz", X=rng.normal(size=5), y=rng.normal(size=5))
    (folder / "one_column.csv").write_text("y\n1.0\n2.0\n3.0\n")
    cases = {
        "missing.npz": "does not exist",
        "mismatched.npz": "has X of shape (5, 3) and y of shape (4,)",
        "no_y.npz": "has no array named 'y'",
        "flat_X.npz": "has X of shape (5,)",
        "one_column.csv": "must have at least two columns",
    }
    return {  # the key, then the file (a missing file is "problem.data: file '...'")
        name: (f'[problem]\ndata = "{name}"', f"{str(folder / name)!r}") for name in cases
    } | {
        name + " (detail)": (f'[problem]\ndata = "{name}"', detail)
        for name, detail in cases.items()
    }


def test_bad_data_files_vs_their_messages(tmp_path):
    for name, (text, message) in _write_bad_data(tmp_path).items():
        spec = Experiment.from_toml_text(text, spec_dir=tmp_path)
        with pytest.raises(SpecError) as error:
            build_problem(spec, jnp.float64)
        assert str(error.value).startswith("problem.data: "), str(error.value)
        assert message in str(error.value), (name, str(error.value))


_NO_BACKEND_SCRIPT = """
import json, sys
import jax.numpy as jnp
from noisydln.experiment import Experiment, SpecError, build_problem

out = []
for text, spec_dir, build in json.load(sys.stdin):
    try:
        spec = Experiment.from_toml_text(text, spec_dir=spec_dir)
        if build:
            build_problem(spec, jnp.float64)
        out.append(["ok", ""])
    except Exception as error:
        out.append([type(error).__name__, str(error)])
try:  # the guard is on: any computation fails
    jnp.ones(3) + 1
    out.append(["ok", ""])
except Exception as error:
    out.append([type(error).__name__, str(error)])
print(json.dumps(out))
"""


def _outcome(text: str, spec_dir: str, build: bool) -> list[str]:
    try:
        spec = Experiment.from_toml_text(text, spec_dir=spec_dir)
        if build:
            build_problem(spec, jnp.float64)
    except Exception as error:
        return [type(error).__name__, str(error)]
    return ["ok", ""]


def test_bad_specs_fail_the_same_way_without_a_jax_backend(tmp_path):
    """Every error above comes from parsing: with no usable JAX backend (any computation, hence
    any compile, fails), each spec still fails with the very same SpecError."""
    cases = [(text, ".", False) for text, _ in BAD_SPECS.values()]
    cases += [(text, str(tmp_path), True) for text, _ in _write_bad_data(tmp_path).values()]
    env = dict(os.environ, JAX_PLATFORMS="no_such_backend")
    done = subprocess.run(
        [sys.executable, "-c", _NO_BACKEND_SCRIPT],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    *outcomes, guard = json.loads(done.stdout.strip().splitlines()[-1])
    assert guard[0] == "RuntimeError" and "no_such_backend" in guard[1]  # the guard is on
    for case, outcome in zip(cases, outcomes, strict=True):
        assert outcome[0] == "SpecError", outcome
        assert outcome == _outcome(*case)


# ---------------------------------------------------------------- a user's data files


def _assert_same_problem(got: noisydln.Problem, want: noisydln.Problem) -> None:
    for field in ("X", "y", "gram", "xty", "yty", "beta_star"):
        a, b = np.asarray(getattr(got, field)), np.asarray(getattr(want, field))
        assert a.dtype == b.dtype == np.float64, field
        assert np.array_equal(a, b, equal_nan=True), field


@pytest.fixture
def user_data(tmp_path):
    """`(X, y)` and a spec folder holding them as `train.npz` and `tables/train.csv`."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(9, 3)) * np.array([1.0, 1e-3, 1e5])
    y = X @ np.array([0.5, -2.0, 1e-5]) + 0.1 * rng.normal(size=9)
    folder = tmp_path / "experiment"
    (folder / "tables").mkdir(parents=True)
    np.savez(folder / "train.npz", X=X, y=y)
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in np.column_stack([X, y]))
    (folder / "tables" / "train.csv").write_text("x1,x2,x3,y\n" + rows + "\n")
    return X, y, folder


@pytest.mark.parametrize("data", ["train.npz", "tables/train.csv"])
def test_data_file_vs_problem_from_data(user_data, tmp_path, monkeypatch, data):
    X, y, folder = user_data
    spec_file = folder / "spec.toml"
    spec_file.write_text(f'[problem]\ndata = "{data}"\n[grid]\nnum_seeds = 8\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the spec file, not to the working directory
    spec = Experiment.from_toml(spec_file)
    assert spec.data_path() == folder / data
    got = build_problem(spec, jnp.float64)
    _assert_same_problem(got, noisydln.problem_from_data(X, y))
    assert np.all(np.isnan(np.asarray(got.beta_star)))
    # the same text read from the working directory finds no file
    with pytest.raises(SpecError, match="does not exist"):
        build_problem(Experiment.from_toml_text(spec_file.read_text()), jnp.float64)


def test_data_file_teacher_vs_spec_teacher(user_data):
    X, y, folder = user_data
    stored = np.array([0.5, -2.0, 1e-5])
    np.savez(folder / "with_teacher.npz", X=X, y=y, beta_star=stored)
    spec = Experiment.from_toml_text('[problem]\ndata = "with_teacher.npz"', spec_dir=folder)
    _assert_same_problem(build_problem(spec, jnp.float64), noisydln.problem_from_data(X, y, stored))
    given = [1.0, 0.0, -1.0]  # the spec's beta_star replaces the file's
    text = f'[problem]\ndata = "with_teacher.npz"\nbeta_star = {given}'
    spec = Experiment.from_toml_text(text, spec_dir=folder)
    _assert_same_problem(build_problem(spec, jnp.float64), noisydln.problem_from_data(X, y, given))
    text = '[problem]\ndata = "with_teacher.npz"\nbeta_star = [1.0, 0.0]'
    with pytest.raises(SpecError, match="with_teacher.npz"):  # d = 3 in the file
        build_problem(Experiment.from_toml_text(text, spec_dir=folder), jnp.float64)


def test_hand_written_spec_and_csv_vs_numpy_loadtxt(tmp_path, monkeypatch):
    """A spec and a CSV file written by hand (comments; quoted header, CRLF line ends, 1E2)."""
    data = Path(__file__).parent / "data"
    monkeypatch.chdir(tmp_path)
    spec = Experiment.from_toml(data / "hand_written.toml")
    _round_trip(spec)
    table = np.loadtxt(data / "hand_written.csv", delimiter=",", skiprows=1)
    assert table.shape == (5, 4) and table[1, 2] == 100.0 and table[4, 1] == 1e-300
    got = build_problem(spec, jnp.float64)
    _assert_same_problem(got, noisydln.problem_from_data(table[:, :-1], table[:, -1]))
