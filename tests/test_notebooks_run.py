"""Every notebook in notebooks/ is clean (nbformat 4, no outputs, no magics) and runs in its smoke size."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
NAMES = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))


def _load(name: str) -> dict:
    return json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def test_notebooks_exist():
    assert NAMES, f"no notebooks found in {NOTEBOOKS}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_clean(name):
    notebook = _load(name)
    assert notebook["nbformat"] == 4, f"{name}: nbformat {notebook['nbformat']}, expected 4"
    code_cells = [
        (i, cell) for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"
    ]
    assert code_cells, f"{name} has no code cells"
    for i, cell in code_cells:
        assert cell.get("outputs", []) == [], f"{name}[cell {i}] stores outputs; clear them"
        assert cell.get("execution_count") is None, f"{name}[cell {i}] stores an execution count"
        magics = [
            line for line in _source(cell).splitlines() if line.lstrip().startswith(("%", "!"))
        ]
        assert not magics, f"{name}[cell {i}] uses IPython magics or shell escapes: {magics}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, monkeypatch):
    monkeypatch.setenv("NOISYDLN_SMOKE", "1")
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(_load(name)["cells"]):
        if cell["cell_type"] == "code":
            exec(compile(_source(cell), f"{name}[cell {i}]", "exec"), namespace)
