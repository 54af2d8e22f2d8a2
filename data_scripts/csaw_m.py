"""CSAW-M mammograms (Sorkhei et al. 2021) with masking-level prompts, 640x512 (H x W).

CSAW-M needs your own download (SciLifeLab figshare, doi:10.17044/scilifelab.14687271,
after accepting its terms). The paper used the 9,523 training images.

    python -m data_scripts.csaw_m --out data/csaw --source CSAW-M/            # train subset
    python -m data_scripts.csaw_m --out data/csaw --images DIR --labels CSV
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from data_scripts._common import (DEFAULT_FRACTIONS, DatasetInfo, Logger, Record, add_common_args, apply_limit,
                                  check_fractions, convert_all, echo, finish, logger, prepare_output_dir,
                                  read_gray, read_table, require_dir, resize_2d, run_cli, save_png, split_of)

NAME = "CSAW-M"
SOURCE = "https://doi.org/10.17044/scilifelab.14687271"
DEFAULT_SIZE: tuple[int, int] = (640, 512)
REQUIRED_COLUMNS: tuple[str, str] = ("Filename", "Label")
CITATION = ("Sorkhei, M. et al.: CSAW-M: An ordinal classification dataset for benchmarking mammographic masking "
            "of cancer. arXiv:2112.01330 (2021)")
LICENCE = ("Access after accepting the CSAW-M terms on its SciLifeLab figshare page; check those terms "
           "before sharing anything derived from it.")


def masking_prompt(level: int) -> str:
    """The paper's prompt: Low (level <= 2), Medium (2 < level <= 6), High (level > 6) masking level."""
    if not 1 <= level <= 8:
        raise ValueError(f"CSAW-M masking level must be 1..8, got {level}")
    if level <= 2:
        return "Low masking level"
    return "Medium masking level" if level <= 6 else "High masking level"


def default_paths(source: Path | None, images: Path | None, labels: Path | None,
                  subset: str) -> tuple[Path, Path]:
    """Images folder and label csv: explicit ones, else the release layout under ``source``."""
    if source is None and (images is None or labels is None):
        raise ValueError("Give --source (the CSAW-M folder) or both --images and --labels.")
    if source is not None:
        require_dir(source, "CSAW-M folder (--source)")
    images = images or source / "images" / "preprocessed" / subset
    labels = labels or source / "labels" / f"CSAW-M_{subset}.csv"
    return require_dir(images, f"CSAW-M images folder (expected images/preprocessed/{subset}/*.png)"), labels


def read_labels(labels: Path, subject_column: str | None) -> pd.DataFrame:
    """The label table, checked: Filename, Label 1..8 (and the subject column if named)."""
    required = REQUIRED_COLUMNS + ((subject_column,) if subject_column else ())
    table = read_table(labels, required, "CSAW-M label csv")
    levels = pd.to_numeric(table["Label"], errors="coerce")
    bad = table.loc[levels.isna() | ~levels.between(1, 8), "Filename"].tolist()
    if bad:
        raise ValueError(f"{labels}: column Label must hold masking levels 1..8; bad rows for {bad[:5]}")
    return table.assign(Label=levels.astype(int))


def check_images(table: pd.DataFrame, images: Path) -> None:
    """FileNotFoundError listing (a few of) the label rows whose image file is missing."""
    missing = [f for f in table["Filename"] if not (images / str(f)).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) named in the label csv are missing from {images}, "
                                f"e.g. {missing[:5]}")


def prepare(out: str | os.PathLike, source: str | os.PathLike | None = None, *,
            images: str | os.PathLike | None = None, labels: str | os.PathLike | None = None,
            subset: str = "train", subject_column: str | None = None, size: Sequence[int] = DEFAULT_SIZE,
            resize_mode: str = "stretch", seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS,
            overwrite: bool = False, limit: int | None = None, log: Logger = echo) -> pd.DataFrame:
    """Write CSAW-M images resized to ``size`` (H, W) with masking-level prompts; label = level 1..8.

    The public csv has no patient id: each image is its own subject unless ``subject_column`` names one.
    """
    fractions = check_fractions(fractions)
    image_dir, label_csv = default_paths(Path(source) if source else None, Path(images) if images else None,
                                         Path(labels) if labels else None, subset)
    table = read_labels(label_csv, subject_column)
    check_images(table, image_dir)
    out = prepare_output_dir(out, overwrite)
    rows = apply_limit(table.to_dict("records"), limit)

    def convert(entry: dict[str, Any]) -> list[Record]:
        name, level = str(entry["Filename"]), int(entry["Label"])
        subject = str(entry[subject_column]) if subject_column else Path(name).stem
        rel = f"images/{Path(name).stem}.png"
        save_png(resize_2d(read_gray(image_dir / name), size, resize_mode), out / rel)
        extra = {"subject_id": subject, "masking_level": level, "subset": subset}
        return [Record(rel, split_of(subject, seed, fractions), str(level), masking_prompt(level), extra)]

    records = convert_all(rows, convert, log)
    info = DatasetInfo(NAME, SOURCE, CITATION, LICENCE, list(size), "png", __name__,
                       {"subset": subset, "size": list(size), "resize_mode": resize_mode, "seed": seed,
                        "fractions": list(fractions), "subject_column": subject_column, "limit": limit},
                       "label = masking level 1..8; text = Low (<=2) / Medium (3..6) / High (>6) masking level.")
    return finish(out, records, info, log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.csaw_m", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--source", type=Path, default=None, help="the CSAW-M folder (images/, labels/)")
    parser.add_argument("--subset", choices=("train", "test"), default="train",
                        help="which release subset to read from --source (default train, as the paper)")
    parser.add_argument("--images", type=Path, default=None, help="folder of the images (overrides --source)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="label csv with Filename and Label columns (overrides --source)")
    parser.add_argument("--subject-column", default=None, help="csv column with a patient id, if you have one")
    parser.add_argument("--size", type=int, nargs=2, default=list(DEFAULT_SIZE), metavar=("H", "W"),
                        help="output size (default 640 512)")
    parser.add_argument("--resize-mode", choices=("stretch", "crop", "pad"), default="stretch",
                        help="stretch (default), or keep the aspect ratio and crop / pad")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def run(args: argparse.Namespace) -> pd.DataFrame:
        return prepare(args.out, args.source, images=args.images, labels=args.labels, subset=args.subset,
                       subject_column=args.subject_column, size=args.size, resize_mode=args.resize_mode,
                       seed=args.seed, fractions=args.fractions, overwrite=args.overwrite, limit=args.limit,
                       log=logger(args.quiet))

    return run_cli(lambda: parser.parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
