"""The README vs what runs: every Python block executes as written, every file it cites exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


def test_every_python_block_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the blocks write their files here
    namespace = {"__name__": "__main__"}
    for i, block in enumerate(BLOCKS):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    assert (tmp_path / "quickstart.nc").is_file()
    assert (tmp_path / "quickstart-limits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_spec_error_shown_is_the_one_raised():
    import noisydln

    shown = re.search(r"print\(error\)  # (.*)\n", README).group(1)
    with pytest.raises(ValueError) as error:
        noisydln.Experiment.from_toml_text("[grid]\nsigmas = [0.1, 0.2, -0.1]")
    assert str(error.value) == shown


@pytest.mark.parametrize(
    "cited",
    sorted(
        set(
            re.findall(
                r"(?<![\w/.])((?:docs|noisydln|notebooks|tests|benchmarks|\.ci)/[\w./-]+)", README
            )
        )
    ),
)
def test_every_cited_path_exists(cited):
    assert (ROOT / cited.rstrip(".")).exists(), (
        f"README cites {cited}, which is not in the repository"
    )


SHELL_BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
COMMANDS = [
    line.split("noisydln ", 1)[1].split("&&")[0].split()
    for block in SHELL_BLOCKS
    for line in block.splitlines()
    if re.search(r"(^|/| )noisydln ", line) and not line.lstrip().startswith("#")
]


def test_readme_shell_blocks_are_valid_bash(tmp_path):
    import subprocess

    for i, block in enumerate(SHELL_BLOCKS):
        script = tmp_path / f"block{i}.sh"
        script.write_text(block)
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, block


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_readme_noisydln_commands_parse(argv):
    """The commands the README shows but this machine cannot run (a cluster, a GPU) name only
    options that exist."""
    from noisydln import cli

    argv = [a.replace("N", "2").replace("i", "0") if a in ("N", "i") else a for a in argv]
    args, rest = cli.build_parser().parse_known_args(argv)
    assert not rest or args.command == "bench", rest
