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


def write_sidebar(nbs: Path = NBS) -> bool:
    "Rewrite the sidebar of `nbs/_quarto.yml` from the notebooks on disk; True if it changed."
    q = nbs / "_quarto.yml"
    text = q.read_text()
    new = re.sub(r"    contents:\n(?:      .*\n)+", lambda m: sidebar_yaml(nbs), text, count=1)
    if new != text: q.write_text(new)
    return new != text


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
    "Remove papermill's `injected-parameters` cell (the run's profile) from a notebook kept in nbs/; True if removed."
    d = json.loads(Path(nb_path).read_text())
    keep = [c for c in d["cells"] if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    if len(keep) == len(d["cells"]): return False
    d["cells"] = keep
    Path(nb_path).write_text(json.dumps(d, indent=1, ensure_ascii=False) + "\n")
    return True


def execute(notebooks: list[Path], out: Path | None, inplace: bool, profile: str, jobs: int, timeout: int) -> int:
    "Run notebooks top to bottom in fresh kernels; write executed copies to `out` (or back in place)."
    if not inplace: out.mkdir(parents=True, exist_ok=True)
    if jobs > 1: os.environ.setdefault("OMP_NUM_THREADS", "1")  # parallel kernels: one torch thread each
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
    return proc_nbs(str(src), n_workers=0, force=True)


_CSS = """body{margin:0;font-family:system-ui,sans-serif}
nav.book{position:fixed;top:0;left:0;bottom:0;width:15rem;overflow:auto;background:#f6f7f9;padding:1rem;font-size:.9rem}
nav.book h3{font-size:.8rem;text-transform:uppercase;color:#666;margin:1rem 0 .3rem}
nav.book a{display:block;color:#234;text-decoration:none;padding:.1rem 0} nav.book a.here{font-weight:bold}
main.book{margin-left:17rem;max-width:60rem;padding:1rem}"""


def _nav(parts, titles: dict[str, str], here: str) -> str:
    out = ['<nav class="book"><a href="index.html"><b>medgen</b></a>']
    for part, nbs in parts:
        if part: out.append(f"<h3>{html.escape(part)}</h3>")
        for nb in nbs:
            page = Path(nb).with_suffix(".html").name
            cls = ' class="here"' if page == here else ""
            out.append(f'<a{cls} href="{page}">{html.escape(titles.get(nb, nb))}</a>')
    return "\n".join(out + ["</nav>"])


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


_CELL_KEYS = {"cell_type", "metadata", "source", "outputs", "execution_count", "id", "attachments"}
_FM = re.compile(r"\A\s*---\n(.*?)\n---\s*", re.S)
_QUARTO_ATTR = re.compile(r"\{(?:target|style|\.)[^{}\n]*\}")


def _render_front_matter(md: str) -> str:
    "Quarto front matter (title, description) -> a markdown title and lead, as the site shows it."
    import yaml
    m = _FM.match(md)
    if not m: return md
    meta = yaml.safe_load(m.group(1)) or {}
    head = f"# {meta['title']}\n\n" if meta.get("title") else ""
    if meta.get("description"): head += f"> {meta['description']}\n\n"
    return head + md[m.end():]


def _read_clean(path: Path):
    "A processed notebook made valid for nbconvert and shown as Quarto would: front matter, echo: false, attributes."
    import nbformat
    d = json.loads(path.read_text())
    for c in d["cells"]:
        for k in set(c) - _CELL_KEYS: del c[k]
        c["metadata"] = {k: v for k, v in c.get("metadata", {}).items() if k in ("tags", "collapsed", "scrolled")}
        src = "".join(c["source"])
        if c["cell_type"] == "raw" and _FM.match(src): c["cell_type"] = "markdown"  # Quarto front matter
        if c["cell_type"] == "markdown":
            c.pop("outputs", None); c.pop("execution_count", None)
            c["source"] = _QUARTO_ATTR.sub("", _render_front_matter(src))
            continue
        lines = src.splitlines()
        dirs = [ln for ln in lines if ln.startswith("#| ")]
        if any(ln.replace(" ", "") in ("#|echo:false", "#|output:asis") for ln in dirs):
            c["metadata"].setdefault("tags", []).append("remove_input")
        c["source"] = "\n".join(ln for ln in lines if not ln.startswith("#| "))
        for o in c.get("outputs", []):
            md = o.get("data", {}).get("text/markdown")
            if md is not None: o["data"]["text/markdown"] = _QUARTO_ATTR.sub("", "".join(md))
    return nbformat.reads(json.dumps(d), as_version=4)


def preview(src: Path = NBS, out: Path = BUILD / "site", figures: Path = BUILD / "figures") -> dict:
    "Render every notebook of the book into `out/*.html` and its figures into `figures/<chapter>/`."
    from nbconvert import HTMLExporter
    parts = book_parts(NBS)
    cache = _proc(src)
    shutil.rmtree(out, ignore_errors=True); shutil.rmtree(figures, ignore_errors=True)
    out.mkdir(parents=True)
    from traitlets.config import Config
    cfg = Config({"TagRemovePreprocessor": {"enabled": True, "remove_input_tags": ["remove_input"]}})
    exporter = HTMLExporter(template_name="lab", config=cfg)
    nbs = {nb: _read_clean(cache / nb) for nb in book_notebooks(NBS) if (cache / nb).exists()}
    titles = {nb: _title(d, nb) for nb, d in nbs.items()}
    report = {"site": str(out), "figures": str(figures), "pages": {},
              "missing": [nb for nb in book_notebooks(NBS) if nb not in nbs]}
    for nb, d in nbs.items():
        body, _ = exporter.from_notebook_node(d)
        page = Path(nb).with_suffix(".html").name
        body = body.replace("</head>", f"<style>{_CSS}</style></head>", 1)
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + _nav(parts, titles, page) + '<main class="book">', body, 1)
        body = body.replace("</body>", "</main></body>", 1)
        (out / page).write_text(body)
        figs = _figures(d, figures / Path(nb).stem)
        n_err = sum(o.get("output_type") == "error" for c in d["cells"] for o in c.get("outputs", []))
        report["pages"][nb] = {"html": str(out / page), "figures": len(figs), "errors": n_err, "title": titles[nb]}
    (out / "book.json").write_text(json.dumps(report, indent=1))
    return report


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
    sub.add_parser("sidebar", help="rewrite the sidebar of nbs/_quarto.yml from the notebooks on disk")
    rd = sub.add_parser("readme", help="write README.md from nbs/index.ipynb")
    rd.add_argument("--check", action="store_true", help="fail if README.md is not up to date")
    a = ap.parse_args(argv)

    if a.cmd == "sidebar":
        print("nbs/_quarto.yml sidebar " + ("updated" if write_sidebar() else "already up to date"))
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
