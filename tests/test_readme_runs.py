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
