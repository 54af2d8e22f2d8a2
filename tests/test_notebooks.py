"Every notebook of the book, executed top to bottom in a fresh shell (nbdev's test runner), one test each."
from pathlib import Path

import pytest
import nbdev.test as nbdev_test

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb: Path):
    ok, secs = nbdev_test.test_nb(nb, skip_flags=["slow", "notest"], showerr=True, cell_timeout=600)
    assert ok, f"{nb.name} failed after {secs:.0f}s (the cell's traceback is printed above)"


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_code_cell_parses(nb: Path):
    "A quick guard that runs before the slow executions: no cell is cut mid-statement (e.g. by a tool that splits cells)."
    import ast
    import json
    for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        code = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)
        try:
            ast.parse(code)
        except SyntaxError as e:
            pytest.fail(f"{nb.name}, cell {i} (id {cell.get('id')}): {e}")
