"The Quarto-free HTML preview of the book: every chapter page exists, shows its figures and no errors."
import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import book  # noqa: E402

def _build(out: Path) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "book.py"), "preview", "--out", str(out / "site"),
                        "--figures", str(out / "figures")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "site" / "book.json").read_text())


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    "The site, built once per test session: nbdev's proc_nbs writes to the shared ROOT/_proc, so builds must not overlap."
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp("site")
        return out, _build(out)
    shared = tmp_path_factory.getbasetemp().parent  # one folder per session, common to its xdist workers
    out = shared / "preview"
    with open(shared / "preview.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker builds, the others wait and read what it built
        if (out / "site" / "book.json").exists(): return out, json.loads((out / "site" / "book.json").read_text())
        out.mkdir(exist_ok=True)
        return out, _build(out)


def _images_in_source(nb: str) -> int:
    cells = json.loads((ROOT / "nbs" / nb).read_text())["cells"]
    return sum(1 for c in cells if c["cell_type"] == "code" and not "".join(c["source"]).lstrip().startswith("#| hide")
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))


@pytest.mark.parametrize("nb", book.book_notebooks())
def test_chapter_page(site, nb):
    out, rep = site
    page = out / "site" / Path(nb).with_suffix(".html").name
    assert page.exists(), f"no page for {nb}"
    html = page.read_text()
    assert rep["pages"][nb]["errors"] == 0, f"{nb} has error outputs"
    assert "Traceback (most recent call last)" not in html
    # nbval's markers stay out of the code a reader sees (the text may still name them, as inline code)
    assert html.count("NBVAL_") == html.count("<code># NBVAL_"), f"{nb}: an nbval marker shows in a code cell"
    n_img = len(re.findall(r"<img [^>]*src=\"data:image/png", html))
    assert n_img >= _images_in_source(nb), f"{nb}: {n_img} images on the page, {_images_in_source(nb)} in the notebook"
    assert len(list((out / "figures" / Path(nb).stem).glob("*.png"))) == rep["pages"][nb]["figures"]
    for other in book.book_notebooks():  # the navigation links every chapter
        assert Path(other).with_suffix(".html").name in html


@pytest.mark.parametrize("nb", [nb for nb in book.book_notebooks() if nb[:2] in {"01", "02"}])
def test_data_chapters_have_figures(site, nb):
    assert site[1]["pages"][nb]["figures"] >= 3, f"{nb} should show each kind of data in a figure"


# ---------------------------------------------------------------- the pages as a reader meets them, offline
@pytest.fixture(scope="session")
def reader(site):
    "Every built page opened in one headless Chromium with no network (Debian's `chromium`), after MathJax ran."
    import shutil
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("Debian's `chromium` is not installed (tools/setup.sh installs it where apt-get works): "
                    "the offline reading checks of the preview are skipped")
    return book.audit_site(site[0] / "site")


PAGES = [Path(nb).with_suffix(".html").name for nb in book.book_notebooks()]


def test_pages_need_no_network(reader):
    assert not reader["network"], f"pages ask the network for {sorted(set(reader['network']))[:5]}"


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset(reader, page):
    r = reader["pages"][page]
    assert r["mathjax"] == "typeset", f"{page}: MathJax {r['mathjax']}"
    assert not r["tex"], f"{page}: {len(r['tex'])} formulas left as raw TeX, e.g. {r['tex'][:3]}"
    src = (ROOT / "nbs" / page.replace(".html", ".ipynb")).read_text()
    if re.search(r"\$[^$\n]+\$", src): assert r["math"] > 0, f"{page}: the notebook has math, the page shows none"


@pytest.mark.parametrize("page", PAGES)
def test_code_scrolls_instead_of_clipping(reader, page):
    r = reader["pages"][page]
    assert not r["clipped"], f"{page}: {len(r['clipped'])} code blocks cut off, e.g. {r['clipped'][:2]}"


@pytest.mark.parametrize("page", PAGES)
def test_images_have_alt_text(reader, page):
    r = reader["pages"][page]
    assert not r["placeholder_alt"], f"{page}: {len(r['placeholder_alt'])} of {len(r['imgs'])} images without alt text"


@pytest.mark.parametrize("page", PAGES)
def test_links_stay_in_the_book(reader, page):
    r = reader["pages"][page]
    assert not r["leaves_book"], f"{page}: links to the published site instead of the local page: {r['leaves_book'][:3]}"
    assert not r["unresolved"], f"{page}: local links to no page or no anchor: {r['unresolved'][:5]}"


def test_index_links_every_chapter(reader):
    links = reader["pages"]["index.html"]["links"]
    main = [h.split("#")[0] for h in links]
    for page in PAGES[1:]:
        assert main.count(page) >= 2, f"the index's chapter table does not link {page}"  # sidebar + table


# ---------------------------------------------------------------- Quarto's figure options, as the preview renders them
_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def _fig_cell(src: str) -> dict:
    return {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": src,
            "outputs": [{"output_type": "display_data", "metadata": {}, "data": {"image/png": _PNG, "text/plain": "<Figure>"}}]}


def test_figure_options_give_numbered_captions_and_alt_text(tmp_path):
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# A chapter\n\n## Noise\n\nSee @fig-b and @fig-a."},
             _fig_cell('#| label: fig-a\n#| fig-cap: "First: *what* to see."\n#| fig-alt: "A grey square."\nplt.show()'),
             _fig_cell('#| label: fig-b\n#| fig-cap: "Second, with a colon: here."\nax.set_title("noise level")'),
             _fig_cell('ax.set_title("loss curve")'), _fig_cell("plt.show()")]
    for k, c in enumerate(cells): c["id"] = f"c{k}"
    nb = tmp_path / "13_x.ipynb"
    nb.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    d = book._read_clean(nb)
    html = [c.outputs[0].data.get("text/html", "") for c in d.cells[1:]]
    assert 'id="fig-a"' in html[0] and 'alt="A grey square."' in html[0]
    assert "Figure 13.1: </span>First: <em>what</em> to see." in html[0]
    assert "Figure 13.2: </span>Second, with a colon: here." in html[1]
    assert 'alt="Second, with a colon: here."' in html[1], "without fig-alt the caption is the alt text"
    assert 'alt="Figure: loss curve"' in html[2], "without a caption: the plot's title"
    assert "Noise" in html[3] and "A chapter" in html[3] and book.PLACEHOLDER_ALT not in html[3]
    assert "<figcaption>" not in html[2] + html[3]
    assert "[Figure 13.2](#fig-b) and [Figure 13.1](#fig-a)" in d.cells[0].source, "@fig- references become links"
    assert all("image/png" in c.outputs[0].data for c in d.cells[1:]), "the figure files are still written"


def test_preview_text_fixes():
    assert book._escape_stars("shape (B, C, *spatial) and `(B, *spatial)` and a *spatial transformer*") == \
        "shape (B, C, \\*spatial) and `(B, *spatial)` and a *spatial transformer*"
    assert book._collapse_cr("  0%|  | 0/3\r 33%|# | 1/3\r100%|##| 3/3\nnext\n") == "100%|##| 3/3\nnext\n"
    assert book.published_name("13_diffusion_unet.ipynb") == "diffusion_unet"
