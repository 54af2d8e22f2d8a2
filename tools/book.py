#!/usr/bin/env python
"""Build and check the medgen book without Quarto.

    python tools/book.py execute [NB ...] [--inplace] [--profile smoke]   run notebooks (papermill)
    python tools/book.py preview [--src DIR] [--out DIR]                  HTML preview of the book
    python tools/book.py readme [--check]                                 README.md from nbs/index.ipynb
    python tools/book.py demo [--profile smoke]                           execute everything, then preview

The preview uses nbdev's own docs processing (`nbdev.serve.proc_nbs`, the step behind
`nbdev-proc-nbs`/`nbdev-docs`: directives applied, hidden cells dropped, `show_doc` rendered) and
then nbconvert instead of Quarto. `nbdev-proc-nbs` itself cannot be called here because it insists on
installing Quarto first. Where Quarto is installed, `nbdev-docs` builds the real site from the same
`nbs/_quarto.yml`.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
BUILD = ROOT / "_build"
SITE_URL = "https://medgen-book.github.io/medgen/"
COLAB = "https://colab.research.google.com/github/medgen-book/medgen/blob/main/nbs/"
PLACEHOLDER_ALT = "No description has been provided for this image"


# ---------------------------------------------------------------- the book's table of contents
def book_parts(nbs: Path = NBS) -> list[tuple[str, list[str]]]:
    "The sidebar of `nbs/_quarto.yml` as [(part title, [notebook, ...]), ...]; the index is part ''."
    import yaml
    side = yaml.safe_load((nbs / "_quarto.yml").read_text())["website"]["sidebar"]["contents"]
    parts: list[tuple[str, list[str]]] = [("", [])]
    for item in side:
        if isinstance(item, str): parts[0][1].append(item)
        else: parts.append((item["section"], list(item["contents"])))
    return parts


PARTS = {0: "Foundations", 1: "Part I — Diffusion", 2: "Part II — Compression models",
         3: "Part III — Autoregressive models", 4: "Part IV — Control and semantic synthesis",
         5: "Part V — Evaluation", 6: "Part VI — The workshop", 7: "Part VII — The paper's experiments"}


def sidebar_yaml(nbs: Path = NBS) -> str:
    "The sidebar `contents` for `nbs/_quarto.yml`: index, then one section per part (the tens digit of NN_)."
    chapters = sorted(p.name for p in nbs.glob("[0-9][0-9]_*.ipynb"))
    out = ["    contents:", "      - index.ipynb"]
    for part, title in PARTS.items():
        mine = [c for c in chapters if int(c[0]) == part]
        if mine: out += [f'      - section: "{title}"', "        contents:"] + [f"          - {c}" for c in mine]
    return "\n".join(out) + "\n"


def colab_yaml(nbs: Path = NBS) -> str:
    "`include-after-body` for the Quarto site: a script that puts an Open-in-Colab badge under each chapter's title."
    import yaml
    pages = {published_name(nb): nb for nb in book_notebooks(nbs) if nb != "index.ipynb"}
    js = ("<script>(function () { var nb = " + json.dumps(pages, separators=(",", ":")) +
          "[location.pathname.split('/').pop().replace(/\\.html$/, '')]; if (!nb) return;"
          " var a = document.createElement('a'); a.href = '" + COLAB + "' + nb;"
          " a.innerHTML = '<img src=\"https://colab.research.google.com/assets/colab-badge.svg\" alt=\"Open in Colab\">';"
          " var h = document.querySelector('#title-block-header') || document.querySelector('main h1');"
          " if (h) h.appendChild(a); })();</script>")
    return "    include-after-body:\n      - text: " + yaml.safe_dump(js, width=float("inf"), default_style="'").strip() + "\n"


def write_sidebar(nbs: Path = NBS) -> bool:
    "Rewrite the sidebar (and the Colab badges' page map) of `nbs/_quarto.yml` from the notebooks on disk; True if changed."
    q = nbs / "_quarto.yml"
    text = q.read_text()
    new = re.sub(r"    contents:\n(?:      .*\n)+", lambda m: sidebar_yaml(nbs), text, count=1)
    if new != text: q.write_text(new)  # the badges' map follows the sidebar just written
    if "    include-after-body:\n" in new:
        new = re.sub(r"    include-after-body:\n      - text: .*\n", lambda m: colab_yaml(nbs), new, count=1)
    else:
        new = new.replace("    keep-md: true\n", "    keep-md: true\n" + colab_yaml(nbs), 1)
    if new != text: q.write_text(new)
    return new != text


def _module_of(nb: Path) -> str:
    "`medgen.<default_exp>` of a notebook, or `medgen` for the package's `__init__`."
    for c in json.loads(nb.read_text())["cells"]:
        m = re.search(r"^#\|\s*default_exp\s+(\S+)", "".join(c["source"]), re.M)
        if m: return "medgen" if m.group(1) in ("core", "__init__") else f"medgen.{m.group(1)}"
    return ""


def _lead(nb: Path) -> str:
    "The first sentence of a chapter's lead (the `> ...` line under its title)."
    for c in json.loads(nb.read_text())["cells"]:
        m = re.search(r"^>\s*(.+)$", "".join(c["source"]), re.M)
        if c["cell_type"] == "markdown" and m: return re.split(r"(?<=[.;])\s", m.group(1).strip())[0].rstrip(".;")
    return ""


_TABLE_HEAD = "| part | notebook | module | what it teaches |\n|---|---|---|---|\n"


def chapter_table(nbs: Path = NBS, teaches: dict[str, str] | None = None) -> str:
    "The index's chapter table from the sidebar: every chapter linked (its page on the site), module, what it teaches."
    teaches = teaches or {}
    rows = []
    for part, chapters in book_parts(nbs)[1:]:
        for k, nb in enumerate(chapters):
            stem = Path(nb).stem
            label = part.replace("Part ", "") if k == 0 else ""
            what = teaches.get(stem) or _lead(nbs / nb).replace("|", "\\|")
            rows.append(f"| {label} | [`{stem}`]({SITE_URL}{published_name(nb)}.html) | `{_module_of(nbs / nb)}` | {what} |")
    return _TABLE_HEAD + "\n".join(rows) + "\n"


def write_index_table(nbs: Path = NBS, write: bool = True) -> bool:
    "Rewrite the chapter table of `nbs/index.ipynb` from the sidebar (keeping each row's 'what it teaches'); True if changed."
    path = nbs / "index.ipynb"
    d = json.loads(path.read_text())
    for c in d["cells"]:
        src = "".join(c["source"])
        m = re.search(r"^\| part \|.*\n(?:\|.*(?:\n|$))+", src, re.M)
        if c["cell_type"] != "markdown" or not src.startswith("## The chapters") or not m: continue
        teaches = {}
        for row in m.group(0).splitlines()[2:]:
            cols = [x.strip() for x in re.split(r"(?<!\\)\|", row)[1:-1]]
            name = re.search(r"`(\d\d_\w+)`", cols[1]) if len(cols) == 4 else None
            if name: teaches[name.group(1)] = cols[3]
        new = src[:m.start()] + chapter_table(nbs, teaches) + src[m.end():].lstrip("\n").join(["\n", ""])
        if new == src or not write: return new != src
        c["source"] = new.splitlines(keepends=True)
        path.write_text(json.dumps(d, indent=1, ensure_ascii=False) + "\n")
        from nbdev.clean import nbdev_clean
        nbdev_clean(fname=str(path))  # as `nbdev-clean` leaves it, or CI's export-drift check sees a change
        return True
    raise ValueError(f"{path}: no '## The chapters' cell with a '| part |' table")


def book_notebooks(nbs: Path = NBS) -> list[str]:
    "Every notebook in the sidebar, in reading order."
    return [nb for _, nbs_ in book_parts(nbs) for nb in nbs_]


def has_parameters(nb_path: Path) -> bool:
    "Does the notebook have a papermill `parameters` cell?"
    nb = json.loads(nb_path.read_text())
    return any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])


# ---------------------------------------------------------------- executing notebooks
def _execute_one(args: tuple[str, str, str, int]) -> tuple[str, float, str]:
    src, dst, profile, timeout = args
    import papermill as pm
    os.environ.pop("MPLBACKEND", None)  # the kernel must use its inline backend, or figures are not saved
    os.environ["MEDGEN_BOOK_BUILD"] = "1"  # no live front end: widgets (the slice viewer) draw their static fallback
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' weight-loading bars would be stored as dead widgets
    t0 = time.time()
    params = {"profile": profile} if has_parameters(Path(src)) else {}
    try:
        pm.execute_notebook(src, dst, parameters=params, cwd=str(Path(src).parent), kernel_name="python3",
                            progress_bar=False, execution_timeout=timeout, log_output=False)
        err = ""
    except Exception as e:  # report every failure, not just the first
        err = f"{type(e).__name__}: {str(e)[-2000:]}"
    return src, time.time() - t0, err


def drop_injected_parameters(nb_path: Path) -> bool:
    "Drop papermill's injected cell from a notebook kept in nbs/; keep progress bars' final text. True if changed."
    text = Path(nb_path).read_text()
    d = json.loads(text)
    d["cells"] = [coalesce_streams(c) for c in d["cells"]
                  if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    new = json.dumps(d, indent=1, ensure_ascii=False) + "\n"
    if new != text: Path(nb_path).write_text(new)
    return new != text


def execute(notebooks: list[Path], out: Path | None, inplace: bool, profile: str, jobs: int, timeout: int) -> int:
    "Run notebooks top to bottom in fresh kernels; write executed copies to `out` (or back in place)."
    if not inplace: out.mkdir(parents=True, exist_ok=True)
    # smoke: one torch thread per kernel, however many run at once (as `make demo` and CI), so the outputs written back
    # do not depend on --jobs (a notebook's numbers can change with the thread count); OMP_NUM_THREADS overrides it
    if profile == "smoke" or jobs > 1: os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = [(str(nb), str(nb if inplace else out / nb.name), profile, timeout) for nb in notebooks]
    failed = 0
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for src, dt, err in pool.map(_execute_one, work):
            print(f"{'FAIL' if err else 'ok  '} {dt:6.1f}s  {Path(src).name}" + (f"\n      {err}" if err else ""), flush=True)
            failed += bool(err)
    if inplace:
        from nbdev.clean import nbdev_clean
        for nb in notebooks:
            drop_injected_parameters(nb)
            nbdev_clean(fname=str(nb))
    elif profile == "smoke":  # every notebook's default: papermill's injected cell would only repeat it on the page
        for nb in notebooks: drop_injected_parameters(out / nb.name)
    return failed


# ---------------------------------------------------------------- the HTML preview
def _proc(src: Path) -> Path:
    "nbdev's docs processing of every notebook in `src` -> ROOT/_proc (what Quarto would render)."
    os.chdir(ROOT)
    from nbdev.quarto import refresh_quarto_yml
    from nbdev.serve import proc_nbs
    import nbdev.doclinks
    refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    only = "^(" + "|".join(re.escape(nb) for nb in book_notebooks(NBS)) + ")$"  # the sidebar's: not drafts beside them
    return proc_nbs(str(src), n_workers=0, force=True, file_re=only)


def _title(nb: dict, default: str) -> str:
    for c in nb["cells"]:
        if c["cell_type"] == "markdown":
            m = re.search(r"^#\s+(.+)$", "".join(c["source"]), re.M)
            if m: return m.group(1).strip()
    fm = nb.get("metadata", {})
    return fm.get("title", default)


def _figures(nb: dict, dest: Path) -> list[Path]:
    "Write every image output of a notebook to `dest` and return the paths."
    files = []
    for i, c in enumerate(nb["cells"]):
        for j, o in enumerate(c.get("outputs", [])):
            data = o.get("data", {})
            for mime, ext in (("image/png", "png"), ("image/jpeg", "jpg"), ("image/svg+xml", "svg")):
                if mime in data:
                    dest.mkdir(parents=True, exist_ok=True)
                    f = dest / f"cell{i:03d}_{j}.{ext}"
                    raw = data[mime] if isinstance(data[mime], str) else "".join(data[mime])
                    f.write_bytes(raw.encode() if ext == "svg" else base64.b64decode(raw))
                    files.append(f)
    return files




def published_name(nb: str) -> str:
    "The page name of a notebook on the published site: nbdev drops the `NN_` prefix (`13_diffusion_unet` -> `diffusion_unet`)."
    return re.sub(r"^\d+_", "", Path(nb).stem)


def _mathjax_dir() -> Path:
    "MathJax 2.7 as shipped inside the `jupyter-server-mathjax` package (a dev dependency): the site's offline math."
    try:
        import jupyter_server_mathjax
    except ImportError as e:
        raise SystemExit("the preview ships MathJax from the `jupyter-server-mathjax` package: "
                         'pip install -e ".[dev]"') from e
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def _copy_mathjax(out: Path):
    "Copy MathJax (core, TeX input, HTML-CSS output, STIX-Web fonts; English only) into `out/mathjax`."
    src = _mathjax_dir()
    shutil.copytree(src, out / "mathjax", ignore=lambda d, names: [n for n in names if Path(d).name == "localization"
                                                                   and n != "en"])
    # A page opened from disk (file://) may not load web fonts from other files (Chromium: CORS), and MathJax
    # would fall back to glyphs from whatever fonts are installed: hand it the STIX-Web fonts as data: URLs.
    woff = {f.stem: base64.b64encode(f.read_bytes()).decode()
            for f in sorted((src / "fonts/HTML-CSS/STIX-Web/woff").glob("*.woff"))}
    (out / "mathjax" / "stix-web-woff.js").write_text("var MEDGEN_WOFF = " + json.dumps(woff) + ";\n" + _FONT_HOOK)


_FONT_HOOK = """MathJax.Hub.Register.StartupHook("HTML-CSS Jax Ready", function () {
  var font = MathJax.OutputJax["HTML-CSS"].Font, face = font.fontFace;
  font.fontFace = function () {
    var rule = face.apply(this, arguments), m = /([A-Za-z0-9_-]+)\\.woff/.exec(rule.src || "");
    if (m && MEDGEN_WOFF[m[1]]) rule.src = "url(data:font/woff;base64," + MEDGEN_WOFF[m[1]] + ") format('woff')";
    return rule;
  };
});
"""


_MATHJAX = """<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  tex2jax: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], displayMath: [["$$", "$$"], ["\\\\[", "\\\\]"]],
            processEscapes: true, processEnvironments: true, skipTags: ["script", "noscript", "style", "textarea", "pre", "code"]},
  TeX: {extensions: ["AMSmath.js", "AMSsymbols.js", "noErrors.js", "noUndefined.js"], equationNumbers: {autoNumber: "none"}},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null},
  "fast-preview": {disabled: true},  // typeset once, not a rough preview first: half the time on a long page
  showMathMenu: false, messageStyle: "none", displayAlign: "center"
});
</script>
<script src="mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"></script>
<script src="mathjax/stix-web-woff.js"></script>"""

# ---- figures: Quarto's `label: fig-*`, `fig-cap`, `fig-alt` cell options, rendered as Quarto renders them
_IMG_MIMES = (("image/png", "png"), ("image/jpeg", "jpeg"), ("image/svg+xml", "svg"))


_NBVAL = re.compile(r"^\s*# NBVAL_[A-Z_]+\s*$")


def _cell_options(src: str) -> dict:
    "The `#| key: value` options of a cell (YAML values, so quoted captions keep their colons)."
    import yaml
    opts = {}
    for ln in src.splitlines():
        if not ln.startswith("#|"): continue
        try: val = yaml.safe_load(ln[2:].strip())
        except yaml.YAMLError: continue
        if isinstance(val, dict): opts.update(val)
    return opts


def _plain(md: str) -> str:
    "Markdown/TeX caption -> plain text for alt attributes."
    t = re.sub(r"`([^`]*)`", r"\1", md)
    t = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", t)
    t = re.sub(r"[*_]{1,2}([^*_]+)[*_]{1,2}", r"\1", t)
    return re.sub(r"\s+", " ", t.replace("$", "")).strip()


def _fallback_alt(src: str, heading: str, chapter: str) -> str:
    "Alt text for a figure without `fig-alt`/`fig-cap`: its titles in the code, else the section it is in."
    titles = re.findall(r"""(?:set_title|suptitle|title)\s*\(\s*f?["']([^"'{}]{3,})["']""", src)
    titles += re.findall(r"""title\s*=\s*f?["']([^"'{}]{3,})["']""", src)
    if titles: return "Figure: " + "; ".join(dict.fromkeys(titles))[:300]
    return f"Figure of the section “{heading or chapter}” in the chapter “{chapter}”"


def _img_html(data: dict, meta: dict, alt: str) -> str:
    for mime, ext in _IMG_MIMES:
        if mime not in data: continue
        raw = data[mime] if isinstance(data[mime], str) else "".join(data[mime])
        if ext == "svg": raw = base64.b64encode(raw.encode()).decode()
        m = meta.get(mime, {}) if isinstance(meta.get(mime), dict) else {}
        size = "".join(f' {k}="{int(m[k])}"' for k in ("width", "height") if k in m)
        return f'<img src="data:{mime if ext != "svg" else "image/svg+xml"};base64,{raw.strip()}" alt="{html.escape(alt)}"{size}>'
    return ""


def _md_inline(md: str) -> str:
    from markdown_it import MarkdownIt
    return MarkdownIt("commonmark").renderInline(md)


_STAR_ARG = re.compile(r"(?:(?<=\()|(?<=, )|(?<=\[))\*(?=(?:spatial|shape|args|kwargs|dims|size)\b)")


def _escape_stars(md: str) -> str:
    "`(B, C, *spatial)` outside code and math: escape the star, or markdown opens an emphasis there."
    parts = re.split(r"(`[^`]*`|\$\$.*?\$\$|\$[^$\n]*\$)", md, flags=re.S)
    return "".join(p if i % 2 else _STAR_ARG.sub(r"\\*", p) for i, p in enumerate(parts))


def _collapse_cr(text: str) -> str:
    "A progress bar's stream as a terminal shows it: each line keeps what came after its last carriage return."
    return "\n".join(ln.rsplit("\r", 1)[-1] for ln in re.sub(r"\r+\n", "\n", text).split("\n"))


_CELL_KEYS = {"cell_type", "metadata", "source", "outputs", "execution_count", "id", "attachments"}
_FM = re.compile(r"\A\s*---\n(.*?)\n---\s*", re.S)
_QUARTO_ATTR = re.compile(r"\{(?:target|style|\.)[^{}\n]*\}")
_FIG_REF = re.compile(r"(?<![\w@])@(fig-[\w-]*\w)")


def _render_front_matter(md: str) -> str:
    "Quarto front matter (title, description) -> a markdown title and lead, as the site shows it."
    import yaml
    m = _FM.match(md)
    if not m: return md
    meta = yaml.safe_load(m.group(1)) or {}
    head = f"# {meta['title']}\n\n" if meta.get("title") else ""
    if meta.get("description"): head += f"> {meta['description']}\n\n"
    return head + md[m.end():]


def _chapter_number(nb: str) -> int | None:
    m = re.match(r"(\d+)_", Path(nb).name)
    return int(m.group(1)) if m else None


def _figure_numbers(cells: list, number: int | None) -> dict[str, str]:
    "`label: fig-*` cells in order -> 'N.k' (chapter N, k-th figure), as Quarto numbers a book's figures."
    labels = [str(_cell_options("".join(c["source"])).get("label", "")) for c in cells if c["cell_type"] == "code"]
    labels = [lab for lab in labels if lab.startswith("fig-")]
    return {lab: (f"{number}.{k}" if number is not None else str(k)) for k, lab in enumerate(labels, 1)}


def _figure_outputs(c: dict, opts: dict, figs: dict, heading: str, chapter: str):
    "Give each image output of a cell its alt text, and the cell's caption (numbered when labelled) to the last one."
    src = "".join(c["source"])
    label = str(opts.get("label", ""))
    cap = opts.get("fig-cap")
    alt = str(opts.get("fig-alt") or (_plain(str(cap)) if cap else "") or _fallback_alt(src, heading, chapter))
    with_img = [o for o in c.get("outputs", []) if any(m in o.get("data", {}) for m, _ in _IMG_MIMES)]
    for i, o in enumerate(with_img):
        img = _img_html(o["data"], o.get("metadata", {}), alt)
        fid = f' id="{html.escape(label)}"' if label and i == 0 else ""
        caption = ""
        if cap and i == len(with_img) - 1:
            num = f"Figure {figs[label]}: " if label in figs else ""
            caption = f'<figcaption><span class="fig-num">{num}</span>{_md_inline(str(cap))}</figcaption>'
        o["data"]["text/html"] = f'<figure class="book-figure"{fid}>{img}{caption}</figure>'


def coalesce_streams(c: dict) -> dict:
    "Merge a cell's consecutive stream outputs of one name, each line as a terminal leaves it (progress bars)."
    out = []
    for o in c.get("outputs", []):
        if (o.get("output_type") == "stream" and out and out[-1].get("output_type") == "stream"
                and out[-1].get("name") == o.get("name")):
            out[-1]["text"] = "".join(out[-1]["text"]) + "".join(o["text"])
        else: out.append(o)
    for o in out:
        if o.get("output_type") == "stream": o["text"] = _collapse_cr("".join(o["text"]))
    c["outputs"] = [o for o in out if o.get("output_type") != "stream" or o["text"].strip()]
    return c


def _clean_outputs(c: dict):
    "Progress bars as text; widgets (which a static page cannot run) dropped."
    keep = []
    for o in coalesce_streams(c).get("outputs", []):
        data = o.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in data:
            data.pop("application/vnd.jupyter.widget-view+json")
            if set(data) <= {"text/plain"}: continue  # a widget's repr ('interactive(children=...', '0%|...') says nothing
        keep.append(o)
    c["outputs"] = keep


def _read_clean(path: Path):
    "A processed notebook made valid for nbconvert and shown as Quarto would: front matter, echo: false, figures."
    import nbformat
    d = json.loads(path.read_text())
    d.get("metadata", {}).pop("widgets", None)
    figs = _figure_numbers(d["cells"], _chapter_number(path.name))
    chapter, heading = "", ""
    for c in d["cells"]:
        for k in set(c) - _CELL_KEYS: del c[k]
        c["metadata"] = {k: v for k, v in c.get("metadata", {}).items() if k in ("tags", "collapsed", "scrolled")}
        src = "".join(c["source"])
        if c["cell_type"] == "raw" and _FM.match(src): c["cell_type"] = "markdown"  # Quarto front matter
        if c["cell_type"] == "markdown":
            c.pop("outputs", None); c.pop("execution_count", None)
            md = _QUARTO_ATTR.sub("", _render_front_matter(src))
            md = _FIG_REF.sub(lambda m: f"[Figure {figs[m.group(1)]}](#{m.group(1)})" if m.group(1) in figs
                              else m.group(0), md)
            c["source"] = _escape_stars(md)
            for lvl, text in re.findall(r"^(#{1,3})\s+(.+)$", md, re.M):
                if lvl == "#" and not chapter: chapter = text.strip()
                heading = text.strip()
            continue
        lines = src.splitlines()
        opts = _cell_options(src)
        if opts.get("echo") is False or opts.get("output") == "asis":
            c["metadata"].setdefault("tags", []).append("remove_input")
        if opts.get("code-fold") in (True, "show"):  # nbdev's "Exported source": a fold, open for `show`
            c["metadata"].setdefault("tags", []).append("code_fold_show" if opts["code-fold"] == "show" else "code_fold")
        # directives, and nbval's markers (`# NBVAL_CHECK_OUTPUT`: a test's business, not the reader's)
        c["source"] = "\n".join(ln for ln in lines if not ln.startswith("#| ") and not _NBVAL.match(ln))
        _clean_outputs(c)
        for o in c.get("outputs", []):
            md = o.get("data", {}).get("text/markdown")
            if md is not None: o["data"]["text/markdown"] = _escape_stars(_QUARTO_ATTR.sub("", "".join(md)))
        _figure_outputs(c, opts, figs, heading, chapter or path.stem)
    return nbformat.reads(json.dumps(d), as_version=4)


# ---- the page around a chapter: navigation, contents, search, Colab, previous/next
_CSS = """body{margin:0;font-family:system-ui,sans-serif}
nav.book{position:fixed;top:0;left:0;bottom:0;width:14rem;overflow:auto;background:#f6f7f9;padding:1rem;font-size:.9rem;box-sizing:border-box}
nav.book h3{font-size:.8rem;text-transform:uppercase;color:#666;margin:1rem 0 .3rem}
nav.book a{display:block;color:#234;text-decoration:none;padding:.1rem 0} nav.book a.here{font-weight:bold}
main.book{margin-left:14rem;margin-right:13rem;max-width:62rem;padding:1rem 1.5rem;box-sizing:border-box;min-width:0}
aside.toc{position:fixed;top:0;right:0;bottom:0;width:13rem;overflow:auto;padding:1rem;font-size:.82rem;box-sizing:border-box;border-left:1px solid #eee}
aside.toc a{display:block;color:#345;text-decoration:none;padding:.12rem 0} aside.toc a.h3{padding-left:.8rem;color:#567}
aside.toc h4, nav.book h4{margin:.2rem 0 .5rem;font-size:.85rem}
@media (max-width:1100px){aside.toc{display:none} main.book{margin-right:0}}
.book-top{display:flex;gap:1rem;align-items:center;justify-content:flex-end;margin:.2rem 0 .5rem}
a.colab{display:inline-block;background:#444;color:#fff;border-radius:4px;padding:.15rem .55rem;font-size:.8rem;text-decoration:none}
a.colab b{color:#f9ab00}
.book-pager{display:flex;justify-content:space-between;gap:1rem;border-top:1px solid #ddd;margin-top:2rem;padding-top:1rem}
.book-pager a{text-decoration:none;max-width:48%} .book-pager small{display:block;color:#777}
#book-search{width:100%;box-sizing:border-box;padding:.3rem;margin:.4rem 0;font-size:.85rem}
#book-hits{list-style:none;padding:0;margin:0 0 .5rem} #book-hits li{margin:.25rem 0;font-size:.8rem}
#book-hits small{display:block;color:#777}
/* code boxes scroll instead of cutting lines off; no In[ ]/Out[ ] columns (Quarto shows none) */
.jp-InputPrompt,.jp-OutputPrompt{display:none!important}
.jp-InputArea-editor,.jp-OutputArea-output,.jp-RenderedText,.jp-Cell-inputWrapper,.jp-Cell-outputWrapper{overflow-x:auto!important;min-width:0}
.jp-InputArea,.jp-OutputArea-child,.jp-Cell{min-width:0;max-width:100%}
.highlight pre,.jp-RenderedText pre,.jp-OutputArea-output pre{overflow-x:auto!important;white-space:pre}
.jp-RenderedHTMLCommon pre{overflow-x:auto}
/* symbol tables: the meaning column gets the room, math stays on its line */
div.book-table{overflow-x:auto;max-width:100%;margin-bottom:1em}
.jp-RenderedHTMLCommon table{table-layout:auto;width:100%;margin:0}
.jp-RenderedHTMLCommon td,.jp-RenderedHTMLCommon th{text-align:left!important;vertical-align:top;max-width:none}
.jp-RenderedHTMLCommon td:last-child{min-width:10rem;width:45%}
.jp-RenderedHTMLCommon td:last-child code{overflow-wrap:anywhere}
details.code-fold>summary{cursor:pointer;color:#666;font-size:.85rem;margin:.2rem 0}
figure.book-figure{margin:.5rem 0 1rem} figure.book-figure img{max-width:100%;height:auto}
figure.book-figure figcaption{font-size:.9rem;color:#333;margin-top:.3rem;max-width:48rem}
.fig-num{font-weight:600}
"""

_JS = r"""(function () {  // nbdev's folds of exported source, as Quarto draws them (`code-fold`)
  document.querySelectorAll('.celltag_code_fold, .celltag_code_fold_show').forEach(function (cell) {
    var code = cell.querySelector('.jp-Cell-inputWrapper');
    if (!code) return;
    var fold = document.createElement('details'), summary = document.createElement('summary');
    summary.textContent = 'Exported source'; fold.className = 'code-fold';
    fold.open = cell.classList.contains('celltag_code_fold_show');
    code.parentNode.insertBefore(fold, code); fold.appendChild(summary); fold.appendChild(code);
  });
})();
(function () {
  var box = document.getElementById('book-search'), hits = document.getElementById('book-hits');
  if (!box || !window.BOOK_INDEX) return;
  function esc(s) { return s.replace(/[&<>"]/g, function (c) { return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]; }); }
  box.addEventListener('input', function () {
    var words = box.value.toLowerCase().split(/\s+/).filter(function (w) { return w.length > 1; });
    hits.innerHTML = '';
    if (!words.length) return;
    var scored = [];
    BOOK_INDEX.forEach(function (s) {
      var t = s.t.toLowerCase(), x = s.x.toLowerCase(), score = 0;
      for (var i = 0; i < words.length; i++) {
        var inT = t.indexOf(words[i]) >= 0, inX = x.indexOf(words[i]) >= 0;
        if (!inT && !inX) return;
        score += (inT ? 10 : 0) + (inX ? 1 : 0);
      }
      scored.push([score, s]);
    });
    scored.sort(function (a, b) { return b[0] - a[0]; });
    scored.slice(0, 15).forEach(function (p) {
      var s = p[1], li = document.createElement('li'), k = s.x.toLowerCase().indexOf(words[0]);
      var snip = k >= 0 ? s.x.slice(Math.max(0, k - 40), k + 80) : s.x.slice(0, 100);
      li.innerHTML = '<a href="' + s.p + (s.a ? '#' + s.a : '') + '">' + esc(s.t) + '</a><small>' + esc(s.c) + ' · …' + esc(snip) + '…</small>';
      hits.appendChild(li);
    });
    if (!scored.length) hits.innerHTML = '<li><small>no match</small></li>';
  });
})();
"""


def _text(fragment: str) -> str:
    "Visible text of an HTML fragment (tags, scripts, styles and code dropped)."
    t = re.sub(r"<(script|style|pre)\b.*?</\1>", " ", fragment, flags=re.S | re.I)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t))).strip()


_HEAD = re.compile(r'<h([1-4]) id="([^"]+)"[^>]*>(.*?)</h\1>', re.S)


def _anchor_aliases(body: str) -> str:
    "Ids for `class Name`, `def name(` and `Name.method` in the shown source: where links to symbols without a doc heading land."
    lower = {i.lower() for i in re.findall(r'\sid="([^"]+)"', body)}
    blocks = body.split('<div class="highlight">')
    for k in range(1, len(blocks)):
        cls = ""

        def define(m):
            nonlocal cls
            name = m.group(2).lower()
            if m.group(1) == "nc": cls = name
            ids = [i for i in dict.fromkeys([name] + ([f"{cls}.{name}"] if cls and m.group(1) != "nc" else []))
                   if i not in lower]
            lower.update(ids)
            return "".join(f'<span id="{html.escape(i)}"></span>' for i in ids) + m.group(0)
        blocks[k] = re.sub(r'<span class="(nf|nc|fm)">(\w+)</span>', define, blocks[k])
    return '<div class="highlight">'.join(blocks)


def _toc(body: str) -> str:
    items = []
    for lvl, hid, inner in _HEAD.findall(body):
        if lvl in "23":
            items.append(f'<a class="h{lvl}" href="#{hid}">{html.escape(_text(inner).rstrip("¶ ").strip())}</a>')
    return '<aside class="toc"><h4>On this page</h4>' + "\n".join(items) + "</aside>" if items else ""


def _sections(body: str, page: str, chapter: str) -> list[dict]:
    "Search entries: one per heading (title, anchor, text up to the next heading)."
    main = body.split('<main class="book">', 1)[-1]
    out, marks = [], list(_HEAD.finditer(main))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(main)
        text = re.sub(r"(?:In|Out)\s*\[\s*\d*\s*\]:|¶", " ", _text(main[m.end():end]))
        text = re.sub(r"\s+", " ", text).strip()[:1200]
        out.append({"p": page, "a": m.group(2), "t": _text(m.group(3)).rstrip("¶ ").strip(), "c": chapter, "x": text})
    return out


def _chrome(body: str, parts, titles: dict[str, str], order: list[str], nb: str) -> str:
    "Wrap nbconvert's page: offline MathJax, the book's navigation, search, Colab badge, contents, previous/next."
    page = Path(nb).with_suffix(".html").name
    body = re.sub(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", lambda m: _MATHJAX, body, count=1, flags=re.S)
    body = re.sub(r'<script[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>', "", body)  # require.js, widget managers: CDN only
    body = re.sub(r'<script type="application/vnd.jupyter.widget-state\+json">.*?</script>', "", body, flags=re.S)
    body = re.sub(r"<title>.*?</title>", f"<title>{html.escape(titles.get(nb, nb))} — medgen</title>", body, count=1, flags=re.S)
    body = body.replace("</head>", '<link rel="stylesheet" href="book.css"></head>', 1)
    body = _anchor_aliases(body)
    body = re.sub(r"<table\b", '<div class="book-table"><table', body).replace("</table>", "</table></div>")
    i = order.index(nb)
    prev_, next_ = (order[i - 1] if i else None), (order[i + 1] if i + 1 < len(order) else None)
    pager = '<div class="book-pager">' + "".join(
        f'<a href="{Path(p).with_suffix(".html").name}"{" style=margin-left:auto" if side == "next" else ""}>'
        f'<small>{"← previous" if side == "prev" else "next →"}</small>{html.escape(titles.get(p, p))}</a>'
        for side, p in (("prev", prev_), ("next", next_)) if p) + "</div>"
    top = '<div class="book-top">'
    if nb != "index.ipynb":
        top += (f'<a class="colab" href="{COLAB}{nb}" title="Run this chapter in Google Colab">'
                f'Open in <b>Colab</b></a>')
    top += "</div>"
    toc = _toc(body)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + _nav(parts, titles, page) + toc + '<main class="book">' + top,
                  body, count=1)
    scripts = '<script src="search-index.js"></script><script src="book.js"></script>'
    return body.replace("</body>", pager + "</main>" + scripts + "</body>", 1)


def _nav(parts, titles: dict[str, str], here: str) -> str:
    out = [f'<nav class="book"><a href="index.html"{" class=here" if here == "index.html" else ""}><b>medgen</b></a>',
           '<input id="book-search" type="search" placeholder="Search the book" aria-label="Search the book">',
           '<ul id="book-hits"></ul>']
    for part, nbs in parts:
        if part: out.append(f"<h3>{html.escape(part)}</h3>")
        for nb in nbs:
            page = Path(nb).with_suffix(".html").name
            if page == "index.html": continue  # the book's name above links it
            cls = ' class="here"' if page == here else ""
            out.append(f'<a{cls} href="{page}">{html.escape(titles.get(nb, nb))}</a>')
    return "\n".join(out + ["</nav>"])


_BOOK_URL = re.compile(r"^https?://medgen-book\.github\.io/medgen/?(?:([\w.-]+?)\.html)?(?:#(.*))?$")


def _local_links(body: str, page_of: dict[str, str], ids: dict[str, set[str]], here: str, stats: dict) -> str:
    "Links to the published site and to `.ipynb` notebooks -> the numbered local page; anchors matched to its ids."
    def resolve(page: str, frag: str | None) -> str:
        if not frag: return page
        have = ids.get(page, set())
        lower = {i.lower(): i for i in sorted(have, reverse=True)}  # the published site's ids are lower case
        for cand in (frag, frag.lower(), frag.lower().rsplit(".", 1)[-1]):
            if cand in have or cand in lower:
                cand = cand if cand in have else lower[cand]
                return f"{page}#{cand}" if page != here else f"#{cand}"
        stats["dropped_anchors"].append(f"{page}#{frag}")
        return page

    def sub(m):
        href = html.unescape(m.group(2))
        b = _BOOK_URL.match(href)
        if b:
            name = b.group(1) or "index"
            if name in page_of:
                stats["rewritten"] += 1
                return f'{m.group(1)}"{html.escape(resolve(page_of[name], b.group(2)))}"'
            stats["unknown_pages"].append(href)
            return m.group(0)
        n = re.match(r"^(?:\./)?([\w-]+)\.ipynb(?:#(.*))?$", href)
        if n and n.group(1) + ".html" in ids:
            stats["rewritten"] += 1
            return f'{m.group(1)}"{html.escape(resolve(n.group(1) + ".html", n.group(2)))}"'
        if href.startswith("#") and len(href) > 1 and href[1:] not in ids.get(here, set()):
            return f'{m.group(1)}"{html.escape(resolve(here, href[1:]))}"'
        return m.group(0)
    return re.sub(r'(<a\s[^>]*?href=)"([^"]*)"', sub, body)


def preview(src: Path = NBS, out: Path = BUILD / "site", figures: Path = BUILD / "figures") -> dict:
    "Render every notebook of the book into `out/*.html` (offline: MathJax and search ship with it) and its figures."
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    parts = book_parts(NBS)
    cache = _proc(src)
    shutil.rmtree(out, ignore_errors=True); shutil.rmtree(figures, ignore_errors=True)
    out.mkdir(parents=True)
    _copy_mathjax(out)
    cfg = Config({"TagRemovePreprocessor": {"enabled": True, "remove_input_tags": ["remove_input"]}})
    exporter = HTMLExporter(template_name="lab", config=cfg)
    nbs = {nb: _read_clean(cache / nb) for nb in book_notebooks(NBS) if (cache / nb).exists()}
    titles = {nb: _title(d, nb) for nb, d in nbs.items()}
    order = list(nbs)
    report = {"site": str(out), "figures": str(figures), "pages": {},
              "missing": [nb for nb in book_notebooks(NBS) if nb not in nbs]}
    bodies, ids = {}, {}
    for nb, d in nbs.items():
        body, _ = exporter.from_notebook_node(d)
        page = Path(nb).with_suffix(".html").name
        bodies[nb] = _chrome(body, parts, titles, order, nb)
        ids[page] = set(re.findall(r'\sid="([^"]+)"', bodies[nb]))
        figs = _figures(d, figures / Path(nb).stem)
        n_err = sum(o.get("output_type") == "error" for c in d["cells"] for o in c.get("outputs", []))
        report["pages"][nb] = {"html": str(out / page), "figures": len(figs), "errors": n_err, "title": titles[nb]}
    page_of = {published_name(nb): Path(nb).with_suffix(".html").name for nb in nbs}
    page_of["index"] = "index.html"
    stats = {"rewritten": 0, "dropped_anchors": [], "unknown_pages": []}
    index = []
    for nb, body in bodies.items():
        page = Path(nb).with_suffix(".html").name
        body = _local_links(body, page_of, ids, page, stats)
        (out / page).write_text(body)
        index += _sections(body, page, titles[nb])
    (out / "book.css").write_text(_CSS)
    (out / "book.js").write_text(_JS)
    (out / "search-index.js").write_text("window.BOOK_INDEX = " + json.dumps(index, ensure_ascii=False) + ";\n")
    report["links"] = stats
    (out / "book.json").write_text(json.dumps(report, indent=1))
    return report


# ---------------------------------------------------------------- reading the built pages as a reader does
class Chromium:
    "Headless Chromium driven over the DevTools protocol on a pipe (fds 3/4): no port, no extra package, no network."

    def __init__(self, exe: str = "chromium", width: int = 1280, height: int = 900):
        import subprocess
        import tempfile
        self.exe = shutil.which(exe) or shutil.which("chromium-browser")
        if not self.exe: raise FileNotFoundError("no `chromium` on PATH (Debian: apt-get install chromium)")
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="medgen-chromium-")
        args = [self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "--remote-debugging-pipe",
                "about:blank"]

        def fds():  # Chromium reads commands on fd 3 and answers on fd 4
            os.dup2(cmd_r, 3); os.dup2(out_w, 4)
        self.proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=fds, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r); os.close(out_w)
        self.w, self.r = os.fdopen(cmd_w, "wb", buffering=0), os.fdopen(out_r, "rb", buffering=0)
        self.buf, self.n, self.events = b"", 0, []
        self.width, self.height = width, height
        self.session = self.tab()

    def tab(self) -> str:
        "A new page (tab) to drive; its session id."
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for m in ("Page.enable", "Network.enable"): self.send(m, session)
        self.send("Emulation.setDeviceMetricsOverride", session, width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return session

    def _read(self, timeout: float = 120) -> dict:
        import select
        while b"\0" not in self.buf:
            if not select.select([self.r], [], [], timeout)[0]:
                raise TimeoutError(f"chromium said nothing for {timeout}s")
            chunk = self.r.read(1 << 16)
            if not chunk: raise RuntimeError("chromium closed its DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params} | ({"sessionId": session} if session else {})
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            r = self._read()
            if r.get("id") == self.n:
                if "error" in r: raise RuntimeError(f"{method}: {r['error']}")
                return r.get("result", {})
            self.events.append(r)

    def evaluate(self, js: str, session: str | None = None, timeout_ms: int = 60000):
        r = self.send("Runtime.evaluate", session or self.session, expression=js, awaitPromise=True,
                      returnByValue=True, timeout=timeout_ms)
        if "exceptionDetails" in r: raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def navigate(self, url: str, session: str | None = None):
        "Start loading `url` (in `session`'s tab)."
        session = session or self.session
        self.events = [e for e in self.events if not (e.get("method") == "Page.loadEventFired"
                                                      and e.get("sessionId") == session)]
        self.send("Page.navigate", session, url=url)

    def wait_load(self, session: str | None = None, timeout: float = 60):
        session, t0 = session or self.session, time.time()
        while not any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session for e in self.events):
            if time.time() - t0 > timeout: raise TimeoutError(f"no page load in {timeout}s")
            self.events.append(self._read())

    def open(self, url: str, session: str | None = None):
        "Load `url` and wait for its load event."
        self.navigate(url, session); self.wait_load(session)

    def screenshot(self, path: Path, width: int = 1280, height: int = 1600):
        self.send("Emulation.setDeviceMetricsOverride", self.session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        png = self.send("Page.captureScreenshot", self.session, format="png")["data"]
        Path(path).write_bytes(base64.b64decode(png))

    def requests(self) -> list[str]:
        "URLs the pages asked for so far (http(s) ones would mean the book needs a network)."
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self):
        try: self.send("Browser.close")
        except (RuntimeError, OSError): pass
        try: self.proc.wait(10)
        except Exception: self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


_TYPESET = """new Promise(res => { let calm = 0; const t0 = Date.now();
  (function poll() {
    if (!window.MathJax || !MathJax.Hub) return res('no mathjax');
    calm = MathJax.isReady && MathJax.Hub.queue.pending === 0 && !MathJax.Hub.queue.running ? calm + 1 : 0;
    if (calm >= 2) return res('typeset');
    if (Date.now() - t0 > 45000) return res('timeout');
    setTimeout(poll, 100);
  })(); })"""

_AUDIT = r"""(() => {
  const root = document.querySelector('main') || document.body;
  const SKIP = '.MathJax, .MathJax_Display, .MathJax_Preview, .MJX_Assistive_MathML, mjx-container, script, style, pre, code, textarea, nav, noscript';
  const blocks = new Map(), w = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  while (w.nextNode()) {
    const n = w.currentNode, p = n.parentElement;
    if (!p || p.closest(SKIP) || !p.getClientRects().length) continue;
    const b = p.closest('p, li, td, th, h1, h2, h3, h4, h5, h6, dd, dt, figcaption, blockquote, div');
    blocks.set(b, (blocks.get(b) || '') + n.nodeValue);
  }
  const tex = [], re = /\$\$[\s\S]+?\$\$|\$[^$\n]+?\$|\\\([\s\S]+?\\\)|\\\[[\s\S]+?\\\]|\\begin\{/g;
  for (const t of blocks.values()) for (const m of t.matchAll(re)) tex.push(m[0].slice(0, 100));
  const clipped = [];
  for (const pre of root.querySelectorAll('pre')) {
    let el = pre, bad = null;
    while (el) {  // content wider than a box must meet a scrolling box before one that hides or spills it
      const ox = getComputedStyle(el).overflowX;
      if (el.scrollWidth > el.clientWidth + 1) {
        if (ox === 'auto' || ox === 'scroll') { bad = null; break; }
        if (ox === 'hidden' || ox === 'clip') { bad = 'clipped'; break; }
        bad = 'spills';
      }
      if (el === root) break;
      el = el.parentElement;
    }
    if (bad) clipped.push(bad + ': ' + pre.textContent.split('\n').sort((a, b) => b.length - a.length)[0].slice(0, 100));
  }
  const imgs = [...root.querySelectorAll('img')].map(i => i.getAttribute('alt') || '');
  return {tex, clipped, imgs, math: root.querySelectorAll('.MathJax, .MathJax_Display, mjx-container').length,
          links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
          ids: [...document.querySelectorAll('[id]')].map(e => e.id)};
})()"""


def audit_site(site: Path, pages: list[str] | None = None, tabs: int = 2) -> dict:
    "Open every page of the built site offline in one headless Chromium and report what a reader would meet."
    from urllib.parse import unquote, urlsplit
    site = Path(site).resolve()
    pages = pages or sorted(p.name for p in site.glob("*.html"))
    browser, res = Chromium(), {}
    try:
        tabs = [browser.session] + [browser.tab() for _ in range(tabs - 1)]
        for k in range(0, len(pages), len(tabs)):  # a few pages typeset at once, one per tab
            batch, t0 = list(zip(tabs, pages[k:k + len(tabs)])), time.time()
            for tab, page in batch: browser.navigate((site / page).as_uri(), tab)
            for tab, page in batch:
                browser.wait_load(tab)
                state = browser.evaluate(_TYPESET, tab)
                res[page] = browser.evaluate(_AUDIT, tab) | {"mathjax": state, "seconds": round(time.time() - t0, 2)}
        net = [u for u in browser.requests() if re.match(r"https?:|wss?:", u)]
    finally:
        browser.close()
    for page, r in res.items():
        r["external"] = [h for h in r["links"] if re.match(r"[a-z][\w+.-]*:", h)]
        r["leaves_book"] = [h for h in r["external"] if "medgen-book.github.io" in h]
        r["unresolved"] = []
        for h in r["links"]:
            if re.match(r"[a-z][\w+.-]*:", h): continue
            u = urlsplit(h)
            target = Path(unquote(u.path)).name if u.path else page
            ids = res.get(target, {}).get("ids", [])  # browsers match the fragment as written, then decoded
            ok = (site / target).exists() and (not u.fragment or target not in res
                                               or u.fragment in ids or unquote(u.fragment) in ids)
            if not ok: r["unresolved"].append(h)
        r["placeholder_alt"] = [a for a in r["imgs"] if not a.strip() or a == PLACEHOLDER_ALT]
    for r in res.values(): del r["ids"]
    return {"pages": res, "network": net}


SCREENSHOTS = {"index.html": "The-chapters", "13_diffusion_unet.html": "", "02_phantoms.html": "fig-contrasts"}


def screenshots(site: Path, out: Path, pages: dict[str, str] = SCREENSHOTS, width: int = 1280, height: int = 860):
    "PNG screenshots of pages of the built site (scrolled to an anchor where given), typeset, in 64 colours."
    from PIL import Image
    out.mkdir(parents=True, exist_ok=True)
    browser = Chromium(width=width, height=height)
    try:
        for page, anchor in pages.items():
            browser.open((Path(site).resolve() / page).as_uri())
            browser.evaluate(_TYPESET)
            if anchor: browser.evaluate(f"document.getElementById('{anchor}').scrollIntoView({{block: 'center'}})")
            png = out / page.replace(".html", ".png")
            browser.screenshot(png, width, height)
            Image.open(png).convert("RGB").quantize(64, dither=Image.Dither.NONE).save(png, optimize=True)
    finally:
        browser.close()


def audit_counts(report: dict) -> dict:
    "Totals over the site: the numbers the book's reader-facing checks are about."
    p = report["pages"].values()
    return {"pages": len(report["pages"]), "raw_tex": sum(len(r["tex"]) for r in p),
            "typeset_math": sum(r["math"] for r in p), "clipped_code": sum(len(r["clipped"]) for r in p),
            "images": sum(len(r["imgs"]) for r in p), "placeholder_alt": sum(len(r["placeholder_alt"]) for r in p),
            "links_leaving_book": sum(len(r["leaves_book"]) for r in p),
            "external_links": sum(len(r["external"]) for r in p),
            "unresolved_local_links": sum(len(r["unresolved"]) for r in p), "network_requests": len(report["network"])}


# ---------------------------------------------------------------- README from the index notebook
def readme_text() -> str:
    "README.md as nbdev would write it from nbs/index.ipynb (markdown cells, code cells with their outputs)."
    import nbformat
    from fastcore.nbio import read_nb
    from nbconvert import MarkdownExporter
    from nbdev.processors import FilterDefaults
    os.chdir(ROOT)
    nb = read_nb(NBS / "index.ipynb")
    FilterDefaults()(nb)
    nb = nbformat.reads(json.dumps(nb, default=dict), as_version=4)
    md, _ = MarkdownExporter().from_notebook_node(nb)
    fm = re.match(r"\s*---\n(.*?)\n---\n", md, re.S)
    meta = __import__("yaml").safe_load(fm.group(1)) if fm else {}
    md = md[fm.end():] if fm else md
    md = re.sub(r"<!-- WARNING: THIS FILE WAS AUTOGENERATED!.*?-->", "", md)
    head = f"# {meta.get('title', 'medgen')}\n\n> {meta.get('description', '')}\n\n"
    note = "<!-- generated from nbs/index.ipynb by `python tools/book.py readme`: edit the notebook, not this file -->\n"
    return head + re.sub(r"\n{3,}", "\n\n", md).strip() + "\n\n" + note


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("execute", help="run notebooks in fresh kernels")
    ex.add_argument("notebooks", nargs="*", type=Path)
    ex.add_argument("--inplace", action="store_true", help="save outputs back into nbs/ (then nbdev-clean)")
    ex.add_argument("--out", type=Path, default=BUILD / "nbs")
    for p in (ex, sub.add_parser("demo", help="execute the whole book, then build the preview")):
        p.add_argument("--profile", default="smoke", choices=["smoke", "full"])
        p.add_argument("--jobs", type=int, default=2)
        p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    pv = sub.add_parser("preview", help="HTML preview of the book from nbs/ as committed")
    pv.add_argument("--src", type=Path, default=NBS)
    pv.add_argument("--out", type=Path, default=BUILD / "site")
    pv.add_argument("--figures", type=Path, default=BUILD / "figures")
    ck = sub.add_parser("check", help="open the built preview offline in headless Chromium; print what a reader meets")
    ck.add_argument("--site", type=Path, default=BUILD / "site")
    ck.add_argument("--json", type=Path, help="write the full report here")
    sh = sub.add_parser("screenshots", help="screenshots of three pages of the built preview (for the README)")
    sh.add_argument("--site", type=Path, default=BUILD / "site")
    sh.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    sub.add_parser("sidebar", help="rewrite the sidebar of nbs/_quarto.yml, the index's chapter table and README.md "
                                   "from the notebooks on disk")
    rd = sub.add_parser("readme", help="write README.md from nbs/index.ipynb")
    rd.add_argument("--check", action="store_true", help="fail if README.md is not up to date")
    a = ap.parse_args(argv)

    if a.cmd == "screenshots":
        screenshots(a.site, a.out)
        print("\n".join(f"{p}  {p.stat().st_size // 1024} KiB" for p in sorted(a.out.glob("*.png"))))
        return 0
    if a.cmd == "check":
        rep = audit_site(a.site)
        if a.json: a.json.write_text(json.dumps(rep, indent=1))
        for page, r in rep["pages"].items():
            print(f"{page:30s} math {r['math']:4d}  raw TeX {len(r['tex']):3d}  clipped {len(r['clipped']):3d}  "
                  f"placeholder alt {len(r['placeholder_alt']):2d}/{len(r['imgs']):2d}  leaves book "
                  f"{len(r['leaves_book']):3d}  unresolved {len(r['unresolved']):3d}  {r['mathjax']} {r['seconds']}s")
        counts = audit_counts(rep)
        print(json.dumps(counts))
        bad = counts["raw_tex"] + counts["clipped_code"] + counts["placeholder_alt"] + counts["links_leaving_book"]
        return 1 if bad + counts["unresolved_local_links"] + counts["network_requests"] else 0
    if a.cmd == "sidebar":
        print("nbs/_quarto.yml sidebar " + ("updated" if write_sidebar() else "already up to date"))
        print("nbs/index.ipynb chapter table " + ("updated" if write_index_table() else "already up to date"))
        (ROOT / "README.md").write_text(readme_text())
        return 0
    if a.cmd == "readme":
        text = readme_text()
        if a.check:
            ok = (ROOT / "README.md").exists() and (ROOT / "README.md").read_text() == text
            print("README.md is up to date" if ok else "README.md is stale: run `python tools/book.py readme`")
            return 0 if ok else 1
        (ROOT / "README.md").write_text(text)
        return 0
    if a.cmd == "execute":
        nbs = [p.resolve() for p in a.notebooks] or [NBS / nb for nb in book_notebooks()]
        return 1 if execute(nbs, a.out.resolve(), a.inplace, a.profile, a.jobs, a.timeout) else 0
    if a.cmd == "preview":
        rep = preview(a.src.resolve(), a.out.resolve(), a.figures.resolve())
    else:  # demo
        t0 = time.time()
        exec_dir = BUILD / "nbs"
        shutil.rmtree(exec_dir, ignore_errors=True)
        shutil.copytree(NBS, exec_dir, ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
        failed = execute([NBS / nb for nb in book_notebooks()], exec_dir, False, a.profile, a.jobs, a.timeout)
        rep = preview(exec_dir)
        print(f"executed the book ({a.profile} profile) in {time.time() - t0:.0f}s; {failed} notebook(s) failed")
        if failed: return 1
    n_fig = sum(p["figures"] for p in rep["pages"].values())
    print(f"\nHTML preview: {rep['site']}/index.html  ({len(rep['pages'])} pages)")
    print(f"figures:      {rep['figures']}/<chapter>/*.png  ({n_fig} figures)")
    bad = {nb: p["errors"] for nb, p in rep["pages"].items() if p["errors"]}
    if bad or rep["missing"]: print(f"pages with errors: {bad}; missing: {rep['missing']}")
    return 1 if bad or rep["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
