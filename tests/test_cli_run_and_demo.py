"""The `noisydln` subcommands against the library calls they wrap, and bad input against one line."""

import contextlib
import io
import subprocess
import sys
import types
from pathlib import Path

import pytest

from noisydln import cli, experiment, stats
from noisydln.experiment import Experiment

TINY_SPEC = """\
name = "tiny"

[problem]
n = 20
d = 4
design = "orthogonal"
beta_star = [1.0, -0.5, 0.05, 0.0]

[simulation]
num_steps = 200
record_every = 50
init = 0.5
quantities = ["beta", "imbalance"]

[grid]
num_seeds = 32
sigmas = [0.1, 0.3]
chunk_size = 16
"""


def _main(*argv: str) -> tuple[int, str, str]:
    """`cli.main(argv)` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(argv))
    return status, out.getvalue(), err.getvalue()


def _assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("noisydln: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`noisydln run tiny.toml -o tiny.nc`, once per module: (spec path, results path, stderr)."""
    folder = tmp_path_factory.mktemp("run")
    spec_path = folder / "tiny.toml"
    spec_path.write_text(TINY_SPEC)
    out = folder / "tiny.nc"
    status, stdout, stderr = _main("run", str(spec_path), "-o", str(out))
    assert status == 0, stderr
    assert stdout.count("\n") == 1 and stdout.rstrip().endswith(f"saved to {out}")
    return spec_path, out, stderr


@pytest.fixture
def bad_spec(tmp_path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text("[grid]\nsigmas = [0.1, 0.2, -0.1]\n")
    return path


# ---------------------------------------------------------------- run, plot


def test_run_file_vs_run_experiment_in_process(tiny):
    xarray = pytest.importorskip("xarray")
    from noisydln import results

    spec_path, out, stderr = tiny
    saved = results.load(out)
    direct = results.run_experiment(Experiment.from_toml(spec_path))
    assert set(saved.data_vars) == set(direct.data_vars)
    for name in direct.data_vars:
        xarray.testing.assert_equal(saved[name], direct[name])
    assert saved.attrs["spec"] == direct.attrs["spec"]
    assert "100%" in stderr and "chunk" in stderr  # the progress bar reached its total


def test_run_quiet_has_no_progress_bar_and_default_output_is_stem_in_cwd(
    tiny, tmp_path, monkeypatch
):
    spec_path, _, _ = tiny
    monkeypatch.chdir(tmp_path)
    status, out, err = _main("run", str(spec_path), "--quiet")
    assert status == 0, err
    assert err == ""
    assert (tmp_path / "tiny.nc").is_file()
    assert out.rstrip().endswith("saved to tiny.nc")


def test_run_refuses_existing_output_before_running(tiny, tmp_path, monkeypatch):
    spec_path, _, _ = tiny
    out = tmp_path / "taken.nc"
    out.write_text("keep me")

    def never(*args, **kwargs):
        raise AssertionError("the run started although OUT exists")

    monkeypatch.setattr(cli, "_simulate", never)
    status, _, err = _main("run", str(spec_path), "-o", str(out))
    _assert_one_line_error(status, err, "exists", "--overwrite")
    assert out.read_text() == "keep me"
    status, _, err = _main("run", str(spec_path), "-o", str(tmp_path))  # a folder
    _assert_one_line_error(status, err, "folder")
    status, _, err = _main("run", str(spec_path), "-o", str(out / "under_a_file.nc"))
    _assert_one_line_error(status, err, "not a folder")


def test_plot_writes_the_figures_it_prints(tiny, tmp_path):
    pytest.importorskip("noisydln.plot")
    _, out, _ = tiny
    status, stdout, err = _main("plot", str(out), "-o", str(tmp_path / "figures"))
    assert status == 0, err
    paths = [Path(line) for line in stdout.splitlines()]
    assert paths and all(p.suffix == ".png" and p.is_file() for p in paths)
    assert all(p.parent == tmp_path / "figures" for p in paths)


# ---------------------------------------------------------------- bad input: one line, status 2


def test_bad_inputs_in_process(tmp_path, bad_spec):
    _assert_one_line_error(*_main("run", str(bad_spec))[::2], "grid.sigmas[2]")
    _assert_one_line_error(*_main("spec", "--check", str(bad_spec))[::2], "grid.sigmas[2]")
    missing = str(tmp_path / "missing.toml")
    _assert_one_line_error(*_main("run", missing)[::2], "missing.toml", "does not exist")
    _assert_one_line_error(*_main("plot", str(tmp_path / "none.nc"))[::2], "none.nc")
    for seeds in ("-5", "0", "two"):
        _assert_one_line_error(*_main("validate", "--seeds", seeds)[::2], "--seeds")
        _assert_one_line_error(*_main("demo", "--seeds", seeds)[::2], "--seeds")
    for sigmas in ("0.1,,0.2", "0.1,", "0.1,-0.2", "0.1,nan", "0.1,inf", "x"):
        _assert_one_line_error(*_main("predict", "--sigmas", sigmas)[::2], "--sigmas")
    _assert_one_line_error(*_main("--sigmas", "0.1,,0.2")[::2], "--sigmas")  # default: predict
    _assert_one_line_error(*_main("run", str(bad_spec), "--bogus")[::2], "--bogus")
    _assert_one_line_error(*_main("spec")[::2], "--example")
    typo = tmp_path / "typo.toml"
    typo.write_text("[grid]\nsigma = [0.1]\n")
    _assert_one_line_error(*_main("run", str(typo))[::2], "grid.sigma", "unknown key")


def test_bad_inputs_as_subprocesses(tiny, tmp_path, bad_spec):
    spec_path, _, _ = tiny
    taken = tmp_path / "taken.nc"
    taken.write_text("keep me")
    # a spec's value, an existing output, an option's value: the other cases of
    # test_bad_inputs_in_process take the same path through `main`
    cases = {
        "grid.sigmas[2]": ["run", str(bad_spec)],
        "--overwrite": ["run", str(spec_path), "-o", str(taken)],
        "--seeds": ["validate", "--seeds", "-5"],
    }
    running = {
        fragment: subprocess.Popen(
            [sys.executable, "-m", "noisydln", *argv],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for fragment, argv in cases.items()
    }
    for fragment, process in running.items():
        out, err = process.communicate(timeout=120)
        _assert_one_line_error(process.returncode, err, fragment)
        assert out == ""
    assert taken.read_text() == "keep me"


# ---------------------------------------------------------------- spec, help, bench


def test_spec_example_vs_example_file():
    status, out, _ = _main("spec", "--example")
    assert status == 0
    assert out == experiment.example_path().read_text()
    assert Experiment.from_toml_text(out) == experiment.example()


def test_spec_check_prints_the_normalized_spec(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text(TINY_SPEC + "depths = [2, 3]\n")
    status, out, err = _main("spec", "--check", str(path))
    assert status == 0, err
    spec = Experiment.from_toml(path)
    assert Experiment.from_toml_text(out) == spec  # still TOML: the count is a comment
    assert out.startswith(spec.to_toml())
    assert out.rstrip().splitlines()[-1].startswith(f"# {len(spec.static_configs())} compiled")
    assert len(spec.static_configs()) == 2


def test_every_subcommand_has_help():
    status, out, _ = _main("--help")
    assert status == 0
    for command in ("run", "plot", "demo", "spec", "predict", "validate", "bench"):
        assert command in out
    for command in ("run", "plot", "demo", "spec", "predict", "validate"):
        status, out, _ = _main(command, "--help")
        assert status == 0 and f"usage: noisydln {command}" in out and len(out) > 200


def test_bench_passes_its_arguments_through(monkeypatch):
    seen = []

    def fake_main(argv):
        seen.append(list(argv))
        return 3

    monkeypatch.setitem(sys.modules, "noisydln.bench", types.SimpleNamespace(main=fake_main))
    assert _main("bench", "--quick", "--suite", "all", "-h")[0] == 3
    assert _main("bench")[0] == 3
    assert seen == [["--quick", "--suite", "all", "-h"], []]


# ---------------------------------------------------------------- demo


@pytest.mark.slow  # CI runs the full demo as its install step (.ci/run)
def test_demo_small_vs_its_report(tmp_path):
    pytest.importorskip("noisydln.plot")
    folder = tmp_path / "demo"
    status, out, err = _main("demo", "-o", str(folder), "--seeds", "32", "--quiet")
    assert status in (0, 1), err
    assert ("demo: passed" in out) == (status == 0) and ("demo: FAILED" in out) == (status == 1)
    for claim in ("balancing", "sharpness", "limit"):
        assert f"\n{claim} " in out  # a table row of every claim
    assert (folder / "results.nc").is_file()
    last = out.rstrip().splitlines()[-1]
    assert last.startswith(f"results: {folder / 'results.nc'}; figures: ")
    figures = [Path(p) for p in last.split("figures: ")[1].split(", ")]
    assert figures and all(p.is_file() and p.parent == folder for p in figures)
    from noisydln import results

    assert results.load(folder / "results.nc").attrs["num_seeds"] == 32
    status, _, err = _main("demo", "-o", str(folder), "--seeds", "32")
    _assert_one_line_error(status, err, "results.nc", "--overwrite")


def test_demo_status_vs_its_report_and_skipped_checks(tiny, tmp_path, monkeypatch):
    """The demo's plumbing on the tiny results (no balancing or sharpness quantities recorded):
    checks that do not apply are skipped with a note, the status follows the report."""
    pytest.importorskip("noisydln.plot")
    from noisydln import results

    _, out, _ = tiny
    monkeypatch.setattr(cli, "_simulate", lambda spec, quiet: results.load(out))
    drawn = []  # the figures themselves are drawn by test_plot_writes_the_figures_it_prints
    figures = types.SimpleNamespace(save_figures=lambda ds, folder, pdf: drawn.append(folder) or [])
    monkeypatch.setattr(cli, "_plot_module", lambda: figures)
    verdicts = {}
    for passed in (True, False):

        def check_limit(result, problem, config, passed=passed):
            row = stats.report.make_row(
                "limit", f"a {passed} prediction", prediction=1.0, estimate=0.0,
                verdict="pass" if passed else "fail",
            )  # fmt: skip
            return stats.Report("limit", (row,))

        monkeypatch.setattr(stats, "check_limit", check_limit)
        folder = tmp_path / str(passed)
        status, stdout, err = _main("demo", "-o", str(folder), "--quiet")
        verdicts[passed] = status
        assert "skipped check_balancing" in stdout and "imbalance_step_residual" in stdout
        assert "skipped check_sharpness" in stdout and "trace_gap" in stdout
        assert f"demo: {'passed' if passed else 'FAILED'}" in stdout
        assert f"a {passed} prediction" in stdout
        assert (folder / "results.nc").is_file() and drawn[-1] == folder
    assert verdicts == {True: 0, False: 1}


@pytest.mark.slow
def test_demo_full_size_passes(tmp_path):
    status, out, err = _main("demo", "-o", str(tmp_path))
    assert status == 0, out + err
    spec = experiment.example()
    assert f"x {spec.grid.num_seeds} seeds" in out
