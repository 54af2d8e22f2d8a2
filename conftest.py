"""The book's notebooks as tests (nbval): `pytest nbs/` runs each chapter once, top to bottom, in one kernel.

nbval runs every code cell; with `--nbval-lax` (pyproject's addopts) it compares a cell's fresh output with the
stored one only where the cell says `# NBVAL_CHECK_OUTPUT`, after the substitutions of nbs/nbval_sanitize.cfg
(timings, temporary paths, addresses, float noise below 1e-5). Here nbval is taught nbdev's conventions, so a
notebook runs under pytest exactly as under `nbdev-test`:

- cells nbdev would not run are skipped: `#| eval: false`, the test flags of `[tool.nbdev] tst_flags` (`#| slow`,
  `#| notest`), and whole notebooks with `skip_exec: true` in their front matter;
- the kernel sees `IN_TEST=1`, as nbdev's runner sets it (headless figures, no interactive widgets);
- run in parallel with pytest-xdist's `--dist loadfile` (tools/test.sh), so that all cells of a notebook stay on
  one worker, in order (`--dist load` would scatter them; `loadgroup` marks do not reach node ids under pytest 9).
"""
import os
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("MPLBACKEND", "Agg")


def _test_flags() -> set[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("nbdev", {})
    return set(str(cfg.get("tst_flags", "")).split())


def _nbdev_skips(path: Path) -> list[bool]:
    "For each code cell of the notebook, in order: does nbdev's test runner leave it out?"
    from nbdev.process import NBProcessor
    from nbdev.test import _skip_cell
    nb = NBProcessor(path, rm_directives=False, process=True).nb
    skip = _skip_cell(nb, sorted(_test_flags()))
    return [bool(skip(c)) for c in nb.cells if c.cell_type == "code"]


def pytest_configure(config):
    if config.getoption("nbval_lax", default=False) or config.getoption("nbval", default=False):
        os.environ["IN_TEST"] = "1"  # the kernels nbval starts inherit it


def pytest_collection_modifyitems(config, items):
    skips: dict[Path, list[bool]] = {}
    for item in items:
        if type(item).__name__ != "IPyNbCell":
            continue
        path = Path(str(item.parent.fspath))
        if path not in skips: skips[path] = _nbdev_skips(path)
        if item.cell.get("outputs") and item.cell.get("execution_count") is None:
            item.cell["execution_count"] = 0  # nbdev-clean erases the counts; a cell with outputs has been run
        item.add_marker(pytest.mark.notebook)
        if item.cell_num < len(skips[path]) and skips[path][item.cell_num]:
            item.add_marker(pytest.mark.skip(reason="nbdev skips this cell (eval: false, or a tst_flags flag)"))

