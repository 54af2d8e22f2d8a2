"""The book's notebooks as tests. Each chapter runs once under nbval (`pytest nbs/`, conftest.py at the root): its
cells in order in one kernel, and the cells marked `# NBVAL_CHECK_OUTPUT` must print what the page shows. Here:
quick guards that run before those executions, and a proof that a stale page fails."""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))
MARK = "# NBVAL_CHECK_OUTPUT"


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_code_cell_parses(nb: Path):
    "No cell is cut mid-statement (e.g. by a tool that splits cells)."
    for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        code = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)
        try:
            ast.parse(code)
        except SyntaxError as e:
            pytest.fail(f"{nb.name}, cell {i} (id {cell.get('id')}): {e}")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_chapter_checks_a_stored_output(nb: Path):
    "At least one cell per notebook compares its fresh output with the stored one, and that cell has an output."
    checked = [c for c in json.loads(nb.read_text())["cells"]
               if c["cell_type"] == "code" and MARK in "".join(c["source"]).splitlines()]
    assert checked, f"{nb.name}: no cell is marked {MARK!r}"
    for c in checked:
        assert c.get("outputs"), f"{nb.name}: cell {c.get('id')} is marked {MARK!r} but has no stored output"


def _nbval(nb: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           str(nb.relative_to(ROOT))], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_stale_stored_output_fails(tmp_path):
    "The index's checked cell, run by nbval: passes as committed; with its stored number changed, fails with a diff."
    probe = ROOT / "_build" / "nbval_probe"
    shutil.rmtree(probe, ignore_errors=True); probe.mkdir(parents=True)
    try:
        nb = json.loads((ROOT / "nbs" / "index.ipynb").read_text())
        nb["cells"] = [c for c in nb["cells"] if c["cell_type"] == "code"][:2]  # the install cell, the checked cell
        assert MARK in "".join(nb["cells"][1]["source"])
        (probe / "fresh.ipynb").write_text(json.dumps(nb))
        out = nb["cells"][1]["outputs"][0]
        out["text"] = [t.replace("public names", "public names, and one more") for t in out["text"]]
        (probe / "stale.ipynb").write_text(json.dumps(nb))
        fresh, stale = _nbval(probe / "fresh.ipynb"), _nbval(probe / "stale.ipynb")
        assert fresh.returncode == 0, fresh.stdout[-3000:]
        assert stale.returncode == 1 and "one more" in stale.stdout, stale.stdout[-3000:]
    finally:
        shutil.rmtree(probe, ignore_errors=True)
