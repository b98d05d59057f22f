"""Every notebook in notebooks/ is clean and runs top to bottom in a real Jupyter kernel.

Clean: a valid nbformat-4 file with no stored outputs, no execution counts and no IPython magics
or shell escapes (the notebooks are plain Python a reader can paste anywhere), with some markdown.

Runs: `nbclient` starts the `python3` kernel and executes every cell in order, with
`NOISYDLN_SMOKE=1` in the environment (the kernel inherits it), so each notebook picks its tiny
smoke sizes. The executed copy is kept in memory; the file on disk is never rewritten. In smoke
mode the checks may honestly fail (the runs are too short to resolve the claims), so the test
asserts only that every cell runs without an error, in this test's own environment.

The kernel: the `python3` kernelspec found by `jupyter_client` (the venv's own,
`.venv/share/jupyter/kernels/python3`, whose argv is `python -m ipykernel_launcher -f ...`).
`jupyter_client` replaces a bare `python` in argv[0] by `sys.executable`, so the kernel runs the
interpreter that runs pytest; a cell appended to the in-memory copy checks that the kernel's
`sys.prefix` is pytest's.

Speed. Most of a smoke run is spent compiling XLA programs, tracing them and drawing figures,
not simulating (alone on 2 CPU cores with a warm cache, in their kernels: 01 9.9 s, 02 10.3 s,
03 11.1 s, 04 20.7 s, 05 18.5 s, 06 32.0 s). The default run executes `DEFAULT_RUNS`, the rest
run with `-m slow`. Two things keep them near a minute:
- the kernels share JAX's persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`, by default
  a folder in the system temp dir; set `NOISYDLN_NOTEBOOK_JAX_CACHE` or
  `JAX_COMPILATION_CACHE_DIR` to choose it). The first run fills it (a few minutes); later runs
  skip the XLA compilations. Entries are keyed on the whole compiled computation, so a changed
  program is compiled afresh, never served stale;
- the selected notebooks run `WORKERS` at a time, each in its own kernel, driven from one asyncio
  event loop (`NotebookClient.async_execute`) by a module fixture; each parametrised test then
  reports its own notebook.
"""

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
NAMES = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
TIMEOUT = 300  # seconds per cell
WORKERS = 2  # kernels at a time
PREFIX_CHECK = "import sys\nprint(sys.prefix)"
# run by the default test run: the quickstart (14 s in its kernel with an empty compile cache);
# the others run with `-m slow` (`.ci/run-slow`): 06, for one, compiles for 82 s with an empty
# cache (both network families, six rules, top_eigenvalue), more than a quarter of the default
# run's 5-minute budget, and what it shows is checked number by number by the default tests
DEFAULT_RUNS = ("01_quickstart.ipynb",)


def _load(name: str) -> dict:
    return json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _cache_dir() -> str:
    given = os.environ.get("NOISYDLN_NOTEBOOK_JAX_CACHE") or os.environ.get(
        "JAX_COMPILATION_CACHE_DIR"
    )
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return given or str(Path(tempfile.gettempdir()) / f"noisydln-notebook-jax-cache-{uid}")


def test_notebooks_exist():
    assert NAMES, f"no notebooks found in {NOTEBOOKS}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_clean(name):
    import nbformat

    notebook = _load(name)
    assert notebook["nbformat"] == 4, f"{name}: nbformat {notebook['nbformat']}, expected 4"
    nbformat.validate(nbformat.reads(json.dumps(notebook), as_version=4))
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
    markdown = [cell for cell in notebook["cells"] if cell["cell_type"] == "markdown"]
    assert markdown, f"{name} has no markdown: a notebook should explain what it shows"


async def _execute(name: str, gate: asyncio.Semaphore) -> dict:
    """Runs one notebook in a fresh kernel; returns its time, error text and kernel prefix."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)  # in memory only
    notebook.cells.append(nbformat.v4.new_code_cell(PREFIX_CHECK))
    client = NotebookClient(
        notebook,
        timeout=TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    error = None
    async with gate:
        start = time.perf_counter()
        try:
            await client.async_execute()
        except CellExecutionError as failure:  # its message holds the cell's source and traceback
            error = str(failure)
        except Exception as failure:  # a kernel that died or timed out
            error = f"{type(failure).__name__}: {failure}"
        seconds = time.perf_counter() - start
    outputs = notebook.cells[-1].get("outputs", [])
    prefix = "".join(out.get("text", "") for out in outputs).strip()
    return {"seconds": seconds, "error": error, "prefix": prefix}


async def _execute_all(names: list[str]) -> list[dict]:
    gate = asyncio.Semaphore(WORKERS)
    return await asyncio.gather(*(_execute(name, gate) for name in names))


@pytest.fixture(scope="module")
def smoke_runs(request):
    """Every selected notebook run once in smoke mode, `WORKERS` kernels at a time."""
    selected = sorted(
        {
            item.callspec.params["name"]
            for item in request.session.items
            if getattr(item, "originalname", None) == "test_notebook_runs"
        }
    )
    with pytest.MonkeyPatch.context() as patch:  # the kernels inherit this environment
        patch.setenv("NOISYDLN_SMOKE", "1")
        patch.setenv("JAX_COMPILATION_CACHE_DIR", _cache_dir())
        patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        runs = asyncio.run(_execute_all(selected))
    return dict(zip(selected, runs, strict=True))


@pytest.mark.parametrize(
    "name",
    [
        name if name in DEFAULT_RUNS else pytest.param(name, marks=pytest.mark.slow)
        for name in NAMES
    ],
)
def test_notebook_runs(name, smoke_runs):
    run = smoke_runs[name]
    if run["error"] is not None:
        pytest.fail(f"{name} failed in smoke mode:\n{run['error']}", pytrace=False)
    assert run["prefix"] == sys.prefix, (
        f"{name} ran in the environment {run['prefix']!r}, not {sys.prefix!r}"
    )
    print(f"{name}: {run['seconds']:.1f} s in its kernel (smoke mode, {WORKERS} kernels at a time)")
