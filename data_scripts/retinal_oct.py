"""Retinal OCT (Kermany et al. 2018, Mendeley Data, CC BY 4.0): 84,484 B-scans in 4 classes, 512x512.

    python -m data_scripts.retinal_oct --out data/oct --source OCT2017.tar.gz
    python -m data_scripts.retinal_oct --out data/oct --source OCT2017/
    python -m data_scripts.retinal_oct --out data/oct --download [--sha256 HEX]

Mendeley publishes no checksum for OCT2017.tar.gz: the script prints the sha256 it
computes; pass --sha256 to check a copy against a value you trust.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from data_scripts._common import (DEFAULT_FRACTIONS, IMAGE_SUFFIXES, DatasetInfo, Logger, Record, Remote,
                                  add_common_args, add_source_args, apply_limit, check_fractions, cleanup_extracted,
                                  convert_all, echo, finish, is_hidden_junk, logger, obtain, prepare_output_dir,
                                  read_gray, resize_2d, run_cli, save_png, split_of)

NAME = "RetinalOCT"
PAGE = "https://data.mendeley.com/datasets/rscbjbr9sj/2"
# Direct link of OCT2017.tar.gz on the Mendeley v2 page (5.4 GB); no checksum is published.
URL = "https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/5699a1d8-d1b6-45db-bb92-b61051445347/file_downloaded"
ARCHIVE = "OCT2017.tar.gz"
PROMPTS: dict[str, str] = {
    "CNV": "Choroidal Neovascularization",
    "DME": "Diabetic Macular Edema",
    "DRUSEN": "Drusen",
    "NORMAL": "Normal retina",
}
DEFAULT_SIZE: tuple[int, int] = (512, 512)
OFFICIAL_SPLITS = ("train", "val", "test")
_NAME_RE = re.compile(r"^(CNV|DME|DRUSEN|NORMAL)-(\d+)-(\d+)$", re.IGNORECASE)
CITATION = ("Kermany, D., Zhang, K., Goldbaum, M.: Labeled optical coherence tomography (OCT) and chest X-ray "
            "images for classification. Mendeley Data v2 (2018), doi:10.17632/rscbjbr9sj.2")
LICENCE = "CC BY 4.0"


@dataclass(frozen=True)
class Scan:
    """One OCT B-scan file and what its path says about it."""

    path: Path
    cls: str
    patient: str
    official_split: str


def parse_scan(path: Path) -> Scan:
    """Class from the parent folder, patient id from ``CLASS-PATIENT-N.jpeg`` (else the file stem)."""
    cls = path.parent.name.upper()
    match = _NAME_RE.match(path.stem)
    patient = match.group(2) if match else path.stem
    official = path.parent.parent.name.lower()
    return Scan(path, cls, patient, official if official in OFFICIAL_SPLITS else "")


def collect(root: Path) -> list[Scan]:
    """Every image under a folder named CNV/DME/DRUSEN/NORMAL, de-duplicated by file name."""
    seen: dict[str, Scan] = {}
    for path in sorted(root.rglob("*")):
        if (path.suffix.lower() in IMAGE_SUFFIXES and path.parent.name.upper() in PROMPTS
                and not is_hidden_junk(path) and path.is_file()):
            seen.setdefault(path.name, parse_scan(path))
    if not seen:
        raise FileNotFoundError(f"No OCT images found under {root}: expected folders named "
                                f"{'/'.join(PROMPTS)} (e.g. OCT2017/train/CNV/CNV-1016042-1.jpeg).")
    return sorted(seen.values(), key=lambda s: (s.cls, s.path.name))


def prepare(out: str | os.PathLike, source: str | os.PathLike | None = None, *, download: bool = False,
            url: str = URL, sha256: str | None = None, size: Sequence[int] = DEFAULT_SIZE,
            resize_mode: str = "stretch", seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS,
            overwrite: bool = False, limit: int | None = None, cache_dir: str | os.PathLike | None = None,
            keep_extracted: bool = False, log: Logger = echo) -> pd.DataFrame:
    """Write the Kermany OCT images, resized to ``size`` (H, W), with the paper's class prompts.

    The split is by patient id over all official folders (official split kept in a column).
    """
    if source is None and not download:
        raise ValueError(f"Give --source (OCT2017.tar.gz or its extracted folder, from {PAGE}) or --download.")
    fractions = check_fractions(fractions)
    out = prepare_output_dir(out, overwrite)
    cache = Path(cache_dir) if cache_dir is not None else out / ".cache"
    scans = apply_limit(collect(obtain(source, Remote(url, ARCHIVE, sha256, "sha256"), cache, log)), limit)

    def convert(scan: Scan) -> list[Record]:
        rel = f"images/{scan.cls}/{scan.path.stem}.png"
        save_png(resize_2d(read_gray(scan.path), size, resize_mode), out / rel)
        extra = {"subject_id": scan.patient, "official_split": scan.official_split}
        return [Record(rel, split_of(scan.patient, seed, fractions), scan.cls, PROMPTS[scan.cls], extra)]

    records = convert_all(scans, convert, log)
    cleanup_extracted(cache, keep_extracted, log)
    info = DatasetInfo(NAME, PAGE, CITATION, LICENCE, list(size), "png", __name__,
                       {"size": list(size), "resize_mode": resize_mode, "seed": seed,
                        "fractions": list(fractions), "limit": limit, "sha256": sha256},
                       "split by patient id (CLASS-PATIENT-N file names); official_split keeps the "
                       "release's train/test folder.")
    return finish(out, records, info, log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.retinal_oct", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    add_source_args(parser, f"{ARCHIVE} or its extracted folder (from {PAGE}); or use --download")
    parser.add_argument("--download", action="store_true", help=f"download {ARCHIVE} from --url (5.4 GB)")
    parser.add_argument("--url", default=URL, help="download URL (default: the Mendeley v2 file link)")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the archive (none is published)")
    parser.add_argument("--size", type=int, nargs=2, default=list(DEFAULT_SIZE), metavar=("H", "W"),
                        help="output size (default 512 512)")
    parser.add_argument("--resize-mode", choices=("stretch", "crop", "pad"), default="stretch",
                        help="stretch (default), or keep the aspect ratio and crop / pad")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def run(args: argparse.Namespace) -> pd.DataFrame:
        return prepare(args.out, args.source, download=args.download, url=args.url, sha256=args.sha256,
                       size=args.size, resize_mode=args.resize_mode, seed=args.seed, fractions=args.fractions,
                       overwrite=args.overwrite, limit=args.limit, cache_dir=args.cache_dir,
                       keep_extracted=args.keep_extracted, log=logger(args.quiet))

    return run_cli(lambda: parser.parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
