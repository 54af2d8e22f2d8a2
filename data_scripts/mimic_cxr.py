"""MIMIC-CXR-JPG chest X-rays with report-sentence prompts, 512x512 (credentialed PhysioNet access).

Expects your download of MIMIC-CXR-JPG 2.0.0 (physionet.org/content/mimic-cxr-jpg) and the
free-text reports of MIMIC-CXR 2.0.0 (mimic-cxr-reports.zip, extracted):

    SOURCE/mimic-cxr-2.0.0-split.csv(.gz)       dicom_id, study_id, subject_id, split
    SOURCE/mimic-cxr-2.0.0-chexpert.csv(.gz)    subject_id, study_id, one column per finding
    SOURCE/mimic-cxr-2.0.0-metadata.csv(.gz)    optional; needed for --views (ViewPosition)
    SOURCE/files/p10/p10000032/s50414267/<dicom_id>.jpg
    REPORTS/files/p10/p10000032/s50414267.txt   (REPORTS defaults to SOURCE)

    python -m data_scripts.mimic_cxr --out data/mimic --source mimic-cxr-jpg/ --reports mimic-cxr-reports/

Text = up to 5 sentences drawn at random (seeded by --seed and the dicom id, so
reproducible) from the report's FINDINGS and IMPRESSION sections.
"""

from __future__ import annotations

import argparse
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from data_scripts._common import (DEFAULT_FRACTIONS, DatasetInfo, Logger, Record, add_common_args, apply_limit,
                                  check_fractions, convert_all, echo, find_file, finish, logger,
                                  prepare_output_dir, read_gray, read_table, require_dir, resize_2d, run_cli,
                                  save_png, split_of)

NAME = "MIMIC-CXR-JPG"
SOURCE = "https://physionet.org/content/mimic-cxr-jpg/2.0.0/"
DEFAULT_SIZE: tuple[int, int] = (512, 512)
MAX_SENTENCES = 5
NO_FINDING = "No Finding"
ID_COLUMNS: tuple[str, str] = ("subject_id", "study_id")
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
OFFICIAL_TO_SPLIT: dict[str, str] = {"train": "train", "validate": "val", "val": "val", "test": "test"}
WANTED_SECTIONS: tuple[str, ...] = ("FINDINGS", "IMPRESSION")
NON_FINDING_SECTIONS = frozenset({"EXAMINATION", "EXAM", "INDICATION", "HISTORY", "CLINICAL HISTORY",
                                  "TECHNIQUE", "COMPARISON", "COMPARISONS", "NOTIFICATION", "WET READ",
                                  "REFERENCE EXAM", "CLINICAL INFORMATION", "REASON FOR EXAMINATION"})
_HEADING = re.compile(r"^\s*([A-Z][A-Z &/()-]*[A-Z)])\s*:\s*(.*)$")
CITATION = ("Johnson, A.E.W. et al.: MIMIC-CXR, a de-identified publicly available database of chest radiographs "
            "with free-text reports. Scientific Data 6, 317 (2019); MIMIC-CXR-JPG v2.0.0, PhysioNet.")
LICENCE = "PhysioNet Credentialed Health Data License 1.5.0: credentialed users only; do not share the output."


@dataclass(frozen=True)
class Study:
    """One image of one study, with everything its manifest row needs."""

    dicom_id: str
    study_id: str
    subject_id: str
    official_split: str
    label: str
    view: str
    image: Path
    report: Path


# --------------------------------------------------------------------------- reports


def report_sections(report: str) -> dict[str, str]:
    """Split a report at its ``HEADING:`` lines; text before any heading goes under ``""``."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in report.splitlines():
        match = _HEADING.match(line)
        if match:
            current, line = match.group(1).strip(), match.group(2)
            sections.setdefault(current, [])
        sections[current].append(line)
    return {name: " ".join(" ".join(lines).split()) for name, lines in sections.items()}


def last_paragraph(report: str) -> str:
    """The last paragraph that is not an indication/technique/comparison/... section (MIMIC's own fallback)."""
    for paragraph in reversed(re.split(r"\n\s*\n", report)):
        sections = report_sections(paragraph)
        text = " ".join(sections.values()).replace("FINAL REPORT", "").strip()
        if text and not any(name in NON_FINDING_SECTIONS for name in sections if name):
            return text
    return ""


def findings_text(report: str) -> str:
    """FINDINGS + IMPRESSION sections; without either, the report's last paragraph."""
    sections = report_sections(report)
    wanted = [sections[name] for name in WANTED_SECTIONS if sections.get(name)]
    return " ".join(wanted) if wanted else last_paragraph(report)


def split_sentences(text: str) -> list[str]:
    """Sentences of a report section, list numbering removed, fragments without words dropped."""
    parts = re.split(r"(?<=[.!?])\s+", text)
    sentences = [re.sub(r"^\d+[.)]\s*", "", part).strip() for part in parts]
    return [s for s in sentences if sum(ch.isalpha() for ch in s) >= 3]


def sample_sentences(sentences: Sequence[str], max_sentences: int, key: str) -> str:
    """Up to ``max_sentences`` sentences chosen at random (seeded by ``key``), kept in report order."""
    rng = random.Random(key)
    picked = sorted(rng.sample(range(len(sentences)), min(max_sentences, len(sentences))))
    return " ".join(sentences[i] for i in picked)


def prompt_for(report: Path, max_sentences: int, key: str) -> str:
    """The text prompt of one image from its study's report file."""
    text = findings_text(report.read_text(encoding="utf-8", errors="replace"))
    return sample_sentences(split_sentences(text), max_sentences, key)


# --------------------------------------------------------------------------- tables


def chexpert_labels(table: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(subject_id, study_id) -> positive CheXpert findings joined by ``|`` (``No Finding`` when none)."""
    findings = [c for c in table.columns if c not in ID_COLUMNS]
    if not findings:
        raise ValueError("CheXpert label csv has no finding columns (e.g. Atelectasis, Cardiomegaly, No Finding).")
    labels = {}
    for row in table.to_dict("records"):
        positive = [name for name in findings if row[name] == 1]
        labels[(str(row["subject_id"]), str(row["study_id"]))] = "|".join(positive) or NO_FINDING
    return labels


def study_folder(root: Path, subject_id: str, study_id: str) -> Path:
    """``root/files/p10/p10000032/s50414267`` for subject 10000032, study 50414267."""
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


def load_tables(source: Path, split_csv: Path | None, chexpert_csv: Path | None,
                metadata_csv: Path | None, views: Sequence[str] | None) -> tuple[pd.DataFrame, dict, dict]:
    """The split table (filtered by view), the CheXpert labels and dicom_id -> ViewPosition."""
    split_csv = split_csv or find_file(source, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"],
                                       "MIMIC-CXR-JPG split csv")
    chexpert_csv = chexpert_csv or find_file(source, ["mimic-cxr-2.0.0-chexpert.csv.gz",
                                                      "mimic-cxr-2.0.0-chexpert.csv"], "CheXpert label csv")
    split = read_table(split_csv, SPLIT_COLUMNS, "MIMIC-CXR-JPG split csv").astype({c: str for c in SPLIT_COLUMNS})
    labels = chexpert_labels(read_table(chexpert_csv, ID_COLUMNS, "CheXpert label csv").astype(
        {c: str for c in ID_COLUMNS}))
    view_of = load_views(source, metadata_csv, required=bool(views))
    if views:
        split = split[split["dicom_id"].map(view_of).isin(views)]
    return split, labels, view_of


def load_views(source: Path, metadata_csv: Path | None, required: bool) -> dict[str, str]:
    """dicom_id -> ViewPosition from the metadata csv ({} when it is absent and not required)."""
    names = ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"]
    if metadata_csv is None and not required and not any((source / n).is_file() for n in names):
        return {}
    path = metadata_csv or find_file(source, names, "MIMIC-CXR-JPG metadata csv (needed for --views)")
    table = read_table(path, ("dicom_id", "ViewPosition"), "MIMIC-CXR-JPG metadata csv")
    return dict(zip(table["dicom_id"].astype(str), table["ViewPosition"].fillna("").astype(str)))


def build_studies(split: pd.DataFrame, labels: dict, view_of: dict, source: Path, reports: Path) -> list[Study]:
    """One Study per row of the split table, with its image and report paths."""
    studies = []
    for row in split.sort_values(["subject_id", "study_id", "dicom_id"]).to_dict("records"):
        official = row["split"].strip().lower()
        if official not in OFFICIAL_TO_SPLIT:
            raise ValueError(f"split csv: unknown split {row['split']!r} (expected train/validate/test)")
        folder = study_folder(source, row["subject_id"], row["study_id"])
        report = study_folder(reports, row["subject_id"], row["study_id"]).with_suffix(".txt")
        label = labels.get((row["subject_id"], row["study_id"]), NO_FINDING)
        studies.append(Study(row["dicom_id"], row["study_id"], row["subject_id"], official, label,
                             view_of.get(row["dicom_id"], ""), folder / f"{row['dicom_id']}.jpg", report))
    return studies


def drop_missing(studies: list[Study], skip_missing: bool, log: Logger) -> list[Study]:
    """Raise FileNotFoundError naming missing images/reports, or drop them when ``skip_missing``."""
    missing = [s for s in studies if not (s.image.is_file() and s.report.is_file())]
    if missing and not skip_missing:
        examples = [str(p) for s in missing[:3] for p in (s.image, s.report) if not p.is_file()]
        raise FileNotFoundError(f"{len(missing)} of {len(studies)} images lack their jpg or report, e.g. "
                                f"{examples}; expected files/pXX/pSUBJECT/sSTUDY/DICOM.jpg under --source and "
                                "files/pXX/pSUBJECT/sSTUDY.txt under --reports (or pass --skip-missing).")
    if missing:
        log(f"skipping {len(missing)} images without jpg or report")
    dropped = set(missing)
    return [s for s in studies if s not in dropped]


# --------------------------------------------------------------------------- main work


def prepare(out: str | os.PathLike, source: str | os.PathLike, *, reports: str | os.PathLike | None = None,
            split_csv: str | os.PathLike | None = None, chexpert_csv: str | os.PathLike | None = None,
            metadata_csv: str | os.PathLike | None = None, views: Sequence[str] | None = None,
            size: Sequence[int] = DEFAULT_SIZE, resize_mode: str = "stretch", max_sentences: int = MAX_SENTENCES,
            split_source: str = "official", skip_missing: bool = False, seed: int = 0,
            fractions: Sequence[float] = DEFAULT_FRACTIONS, overwrite: bool = False, limit: int | None = None,
            log: Logger = echo) -> pd.DataFrame:
    """Write MIMIC-CXR-JPG images resized to ``size`` with report-sentence prompts and CheXpert labels.

    ``split_source="official"`` keeps MIMIC's subject-level split (validate -> val);
    ``"hash"`` re-splits by subject id with ``seed`` and ``fractions``.
    """
    if split_source not in ("official", "hash"):
        raise ValueError(f"split_source must be 'official' or 'hash', got {split_source!r}")
    fractions = check_fractions(fractions)
    src = require_dir(source, "MIMIC-CXR-JPG folder (--source)")
    report_root = require_dir(reports or src, "MIMIC-CXR reports folder (--reports)")
    opt = [Path(p) if p else None for p in (split_csv, chexpert_csv, metadata_csv)]
    split, labels, view_of = load_tables(src, opt[0], opt[1], opt[2], views)
    studies = drop_missing(apply_limit(build_studies(split, labels, view_of, src, report_root), limit),
                           skip_missing, log)
    out = prepare_output_dir(out, overwrite)

    def convert(study: Study) -> list[Record]:
        rel = f"images/p{study.subject_id[:2]}/p{study.subject_id}/s{study.study_id}/{study.dicom_id}.png"
        save_png(resize_2d(read_gray(study.image), size, resize_mode), out / rel)
        text = prompt_for(study.report, max_sentences, f"{seed}:{study.dicom_id}")
        chosen = (OFFICIAL_TO_SPLIT[study.official_split] if split_source == "official"
                  else split_of(study.subject_id, seed, fractions))
        extra = {"subject_id": study.subject_id, "study_id": study.study_id, "dicom_id": study.dicom_id,
                 "official_split": study.official_split, "view": study.view}
        return [Record(rel, chosen, study.label, text, extra)]

    records = convert_all(studies, convert, log)
    info = DatasetInfo(NAME, SOURCE, CITATION, LICENCE, list(size), "png", __name__,
                       {"size": list(size), "resize_mode": resize_mode, "views": list(views or []),
                        "max_sentences": max_sentences, "split_source": split_source, "seed": seed,
                        "fractions": list(fractions), "limit": limit},
                       "label = positive CheXpert findings joined by '|' ('No Finding' when none); text = up to "
                       f"{max_sentences} seeded random sentences of FINDINGS/IMPRESSION.")
    return finish(out, records, info, log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.mimic_cxr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--source", type=Path, required=True, help="MIMIC-CXR-JPG folder (csvs and files/)")
    parser.add_argument("--reports", type=Path, default=None, help="folder holding files/pXX/.../sSTUDY.txt")
    parser.add_argument("--split-csv", type=Path, default=None, help="default SOURCE/mimic-cxr-2.0.0-split.csv.gz")
    parser.add_argument("--chexpert-csv", type=Path, default=None,
                        help="default SOURCE/mimic-cxr-2.0.0-chexpert.csv.gz")
    parser.add_argument("--metadata-csv", type=Path, default=None,
                        help="default SOURCE/mimic-cxr-2.0.0-metadata.csv.gz (optional)")
    parser.add_argument("--views", nargs="+", default=None, help="keep only these ViewPositions, e.g. PA AP")
    parser.add_argument("--size", type=int, nargs=2, default=list(DEFAULT_SIZE), metavar=("H", "W"),
                        help="output size (default 512 512)")
    parser.add_argument("--resize-mode", choices=("stretch", "crop", "pad"), default="stretch",
                        help="stretch (default), or keep the aspect ratio and crop / pad")
    parser.add_argument("--max-sentences", type=int, default=MAX_SENTENCES, help="sentences per prompt (5)")
    parser.add_argument("--split-source", choices=("official", "hash"), default="official",
                        help="official MIMIC split (default) or a seeded hash of the subject id")
    parser.add_argument("--skip-missing", action="store_true", help="skip images whose jpg or report is missing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def run(args: argparse.Namespace) -> pd.DataFrame:
        return prepare(args.out, args.source, reports=args.reports, split_csv=args.split_csv,
                       chexpert_csv=args.chexpert_csv, metadata_csv=args.metadata_csv, views=args.views,
                       size=args.size, resize_mode=args.resize_mode, max_sentences=args.max_sentences,
                       split_source=args.split_source, skip_missing=args.skip_missing, seed=args.seed,
                       fractions=args.fractions, overwrite=args.overwrite, limit=args.limit,
                       log=logger(args.quiet))

    return run_cli(lambda: parser.parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
