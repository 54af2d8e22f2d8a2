#!/usr/bin/env python
"""Copy the metrics.json of Part VII runs into results/<profile>/<notebook stem>/ for the results chapter.

    MEDGEN_OUT=/tmp/runs python tools/book.py execute nbs/7[1-5]_*.ipynb --inplace
    python tools/collect_results.py /tmp/runs          # then re-execute nbs/79_results.ipynb

Only metrics.json files are copied (a few KB each); checkpoints and saved models stay in the run folder.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def collect(runs: Path, dest: Path = ROOT / "results") -> list[Path]:
    "Copy every runs/<stem>/metrics.json (checked by medgen.experiments.read_metrics) to dest/<profile>/<stem>/."
    from medgen.experiments import read_metrics
    copied = []
    for src in sorted(runs.glob("*/metrics.json")):
        profile = read_metrics(src)["profile"]
        target = dest / profile / src.parent.name / "metrics.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        copied.append(target)
    return copied


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, help="the MEDGEN_OUT folder the experiments wrote into")
    args = ap.parse_args()
    done = collect(args.runs)
    for p in done: print(p.relative_to(ROOT))
    sys.exit(0 if done else f"no <stem>/metrics.json below {args.runs}")
