"The book's structure: nbdev 3 configuration, sidebar <-> notebooks, README from the index, top-level names."
import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import book  # noqa: E402


def test_nbdev3_config():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["nbdev"]
    assert not (ROOT / "settings.ini").exists(), "nbdev 3 stops on a settings.ini"
    assert "tags" in cfg["allowed_cell_metadata_keys"], "nbdev-clean would strip papermill's parameters tag"
    assert (ROOT / "nbs" / "_quarto.yml").exists()


def test_sidebar_lists_every_notebook_once():
    listed = book.book_notebooks()
    on_disk = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
    assert sorted(listed) == on_disk, f"sidebar {sorted(listed)} != notebooks {on_disk}"
    assert len(set(listed)) == len(listed)
    assert listed[0] == "index.ipynb"


def test_sidebar_is_generated_from_the_notebooks():
    assert book.sidebar_yaml() in (ROOT / "nbs" / "_quarto.yml").read_text(), "run `python tools/book.py sidebar`"


def test_quarto_site_has_a_colab_badge_for_every_chapter():
    import yaml
    text = (ROOT / "nbs" / "_quarto.yml").read_text()
    assert book.colab_yaml() in text, "run `python tools/book.py sidebar` (the Colab badges' page map is stale)"
    script = yaml.safe_load(text)["format"]["html"]["include-after-body"][0]["text"]
    for nb in book.book_notebooks()[1:]:
        assert f'"{book.published_name(nb)}":"{nb}"' in script and book.COLAB in script


def test_notebooks_are_numbered_and_export_one_module_each():
    for nb in (ROOT / "nbs").glob("*.ipynb"):
        if nb.name == "index.ipynb": continue
        assert nb.name[:2].isdigit() and nb.name[2] == "_", f"{nb.name}: chapters are named NN_topic.ipynb"
        cells = json.loads(nb.read_text())["cells"]
        exps = [line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()
                if line.replace(" ", "").startswith("#|default_exp")]
        assert len(exps) <= 1, f"{nb.name} sets default_exp {len(exps)} times"


def test_parameters_cells_keep_their_tag_through_clean(tmp_path):
    from nbdev.clean import clean_nb
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"], "scrolled": True},
                     "source": "profile = 'smoke'", "outputs": [], "execution_count": 3, "id": "x"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    clean_nb(nb, allowed_cell_metadata_keys=["tags"])
    assert nb["cells"][0]["metadata"] == {"tags": ["parameters"]}


def test_readme_is_written_from_index():
    assert (ROOT / "README.md").read_text() == book.readme_text(), "run `python tools/book.py readme`"
    head = (ROOT / "README.md").read_text().split("## ")[0]
    assert "make demo" in head and "make test" in head, "README must open with the two commands"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_public_name_is_importable_from_top_level():
    import medgen
    from medgen._modidx import d
    n = 0
    for mod, syms in d["syms"].items():
        if mod.rsplit(".", 1)[-1].startswith("_"): continue
        m = importlib.import_module(mod)
        for name in getattr(m, "__all__", []):
            if name.startswith("_") or not isinstance(getattr(m, name), type): continue
            assert getattr(medgen, name) is getattr(m, name), f"medgen.{name} is not {mod}.{name}"
            n += 1
    assert n >= 1


def test_import_medgen_is_lazy():
    code = "import sys, medgen; print('monai' in sys.modules, 'medgen.data' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"], "import medgen should not import the chapters (or MONAI) eagerly"


@pytest.mark.parametrize("name", ["DoesNotExist", "phantoms_typo"])
def test_unknown_top_level_name(name):
    import medgen
    with pytest.raises(AttributeError, match=name):
        getattr(medgen, name)


_TRAINS_OR_SAMPLES = ("backward(", ".sample(", "fit(", "train_loop(")


@pytest.mark.parametrize("nb", sorted((ROOT / "nbs").glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_that_train_or_sample_have_a_profile_parameter(nb):
    cells = json.loads(nb.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if any(k in code for k in _TRAINS_OR_SAMPLES):
        assert params, f"{nb.name} trains or samples but has no papermill `parameters` cell"
    for c in params:
        src = "".join(c["source"])
        assert "profile" in src and "smoke" in src, f"{nb.name}: the parameters cell must set profile (smoke/full)"
        assert cells.index(c) < 8, f"{nb.name}: the parameters cell belongs near the top"


@pytest.mark.parametrize("nb", sorted((ROOT / "nbs").glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_exported_code_is_shown_in_the_book(nb):
    "The book shows its code: `#| exports` (export and show), not `#| export` (which nbdev hides in the docs)."
    cells = json.loads(nb.read_text())["cells"]
    hidden = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
              and any(line.strip().replace(" ", "") == "#|export" for line in "".join(c["source"]).splitlines())]
    assert not hidden, f"{nb.name}: cells {hidden} use `#| export`; use `#| exports` so readers see the code"


@pytest.mark.parametrize("nb", sorted((ROOT / "nbs").glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_chapters_install_medgen_when_missing(nb):
    "Opened in Colab or a bare kernel, a chapter's first cells install medgen."
    if nb.name == "00_core.ipynb": return  # the package's own __init__
    cells = json.loads(nb.read_text())["cells"][:4]
    src = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "except ImportError" in src and "pip" in src and "medgen" in src, f"{nb.name}: no install cell near the top"


def test_readme_maps_every_chapter():
    readme = (ROOT / "README.md").read_text()
    missing = [p.stem for p in (ROOT / "nbs").glob("[0-9]*.ipynb") if f"`{p.stem}`" not in readme]
    assert not missing, f"the chapter table of nbs/index.ipynb does not list {missing}"


@pytest.mark.parametrize("nb", sorted((ROOT / "nbs").glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_no_injected_parameters_cell(nb):
    "`book.py execute --inplace` drops papermill's injected cell: the book shows the parameters cell once."
    cells = json.loads(nb.read_text())["cells"]
    assert not any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in cells), nb.name


def test_index_chapter_table_is_generated_from_the_sidebar():
    assert not book.write_index_table(write=False), "run `python tools/book.py sidebar` (index table is stale)"
    readme = (ROOT / "README.md").read_text()
    for nb in book.book_notebooks()[1:]:  # every chapter linked to its page
        assert f"[`{Path(nb).stem}`]({book.SITE_URL}{book.published_name(nb)}.html)" in readme, nb


_IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")


@pytest.mark.parametrize("nb", sorted((ROOT / "nbs").glob("[0-6][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_every_figure_has_a_numbered_caption_and_alt_text(nb):
    "Parts 0-VI: each cell that draws a figure is labelled `fig-*` (numbered) with a `fig-cap` and a `fig-alt`."
    bare = []
    for c in json.loads(nb.read_text())["cells"]:
        if c["cell_type"] != "code" or not any(m in o.get("data", {}) for o in c.get("outputs", []) for m in _IMAGE_MIMES):
            continue
        opts = book._cell_options("".join(c["source"]))
        if not (str(opts.get("label", "")).startswith("fig-") and opts.get("fig-cap") and opts.get("fig-alt")):
            bare.append(c.get("id"))
    assert not bare, f"{nb.name}: figure cells without label/fig-cap/fig-alt: {bare}"


@pytest.mark.parametrize("nb", sorted((ROOT / "nbs").glob("[0-6][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_no_stray_generator_outputs(nb):
    "A bare `torch.manual_seed(0)` ending a cell prints `<torch._C.Generator at 0x...>`: assign it to `_` instead."
    stray = [c.get("id") for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"
             and any("torch._C.Generator" in "".join(o.get("data", {}).get("text/plain", "")) for o in c.get("outputs", []))]
    assert not stray, f"{nb.name}: cells {stray} show a torch.Generator object"


def test_shipped_book_models_have_cards_and_load():
    "Each book model in medgen/book_models: a full card, a README made from it, every network loads and runs."
    from medgen.experiments import BOOK_CARD_KEYS, book_card_markdown, book_models_dir, load_book_models
    folders = sorted(p for p in book_models_dir().iterdir() if p.is_dir()) if book_models_dir().exists() else []
    total = sum(f.stat().st_size for f in book_models_dir().rglob("*") if f.is_file()) if folders else 0
    assert total < 40e6, f"book models take {total / 1e6:.1f} MB; the budget is 40 MB (the issue: about 40)"
    for folder in folders:
        card = json.loads((folder / "card.json").read_text())
        assert set(BOOK_CARD_KEYS) <= set(card), (folder.name, set(BOOK_CARD_KEYS) - set(card))
        assert (folder / "README.md").read_text() == book_card_markdown(card), folder.name
        assert (ROOT / card["notebook"]).exists(), card["notebook"]
        models, _ = load_book_models(folder.name)
        assert set(models) == set(card["networks"])
        for n, m in models.items():
            module = json.loads((folder / n / "config.json").read_text())["module"]
            assert module.startswith("medgen."), f"{folder.name}/{n} names module {module!r}: a notebook's own class"
            assert sum(p.numel() for p in m.parameters()) == card["networks"][n]
            assert all(bool(p.isfinite().all()) for p in m.parameters())
            if "weights_dtype" in card:  # stored smaller: every floating tensor in the file has that dtype
                from safetensors import safe_open
                with safe_open(str(folder / n / "model.safetensors"), "pt") as f:
                    dtypes = {str(f.get_tensor(k).dtype) for k in f.keys() if f.get_tensor(k).is_floating_point()}
                assert dtypes == {card["weights_dtype"]}, (folder.name, n, dtypes)


@pytest.mark.parametrize("nb", sorted((ROOT / "nbs").glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_install_cell_names_real_extras(nb):
    "The Colab install cell's command installs this repository with extras that pyproject declares."
    import re
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    cells = json.loads(nb.read_text())["cells"][:4]
    for spec in re.findall(r"\"(medgen(?:\[[^\]]*\])? @ [^\"]+)\"", "\n".join("".join(c["source"]) for c in cells)):
        wanted = re.match(r"medgen(?:\[([^\]]*)\])?", spec).group(1)
        unknown = {e.strip() for e in (wanted or "").split(",") if e.strip()} - extras
        assert not unknown, f"{nb.name}: the install cell asks for extras {sorted(unknown)}; pyproject has {sorted(extras)}"
        assert spec.endswith("git+https://github.com/medgen-book/medgen"), f"{nb.name}: {spec}"
