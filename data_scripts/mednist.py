"""MedNIST: 58,954 64x64 images in 6 classes (public; the MONAI tutorials' toy data set).

    python -m data_scripts.mednist --out data/mednist                 # downloads (md5-checked)
    python -m data_scripts.mednist --out data/mednist --source MedNIST.tar.gz
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from data_scripts._common import (DEFAULT_FRACTIONS, DatasetInfo, Logger, Record, Remote, add_common_args,
                                  add_source_args, apply_limit, check_fractions, cleanup_extracted, convert_all,
                                  echo, finish, list_images, logger, obtain, prepare_output_dir, read_gray,
                                  resize_2d, run_cli, save_png, split_of)

NAME = "MedNIST"
# URL and md5 as MONAI's MedNISTDataset (monai/apps/datasets.py) uses them.
URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/MedNIST.tar.gz"
MD5 = "0bc7306e7427e00ad1c5526a6677552d"
CLASSES: tuple[str, ...] = ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")
CITATION = ("MedNIST, gathered by Bradley J. Erickson (Mayo Clinic) from TCIA, the RSNA Bone Age Challenge and "
            "the NIH Chest X-ray data set; distributed by Project MONAI.")
LICENCE = "CC BY-SA 4.0 (as stated by MONAI for MedNIST); check the terms of the original sources."


def find_root(folder: Path) -> Path:
    """The folder that holds the six class folders (``folder`` itself or ``folder/MedNIST``)."""
    for candidate in (folder, folder / NAME):
        if all((candidate / c).is_dir() for c in CLASSES):
            return candidate
    have = folder / NAME if (folder / NAME).is_dir() else folder
    missing = [c for c in CLASSES if not (have / c).is_dir()]
    raise FileNotFoundError(f"MedNIST class folder(s) {missing} not found in {have}; expected "
                            f"{NAME}/{{{','.join(CLASSES)}}}/*.jpeg")


def collect(root: Path) -> list[tuple[Path, str]]:
    """(image, class) pairs, sorted by class then file name."""
    items = [(path, cls) for cls in CLASSES for path in list_images(root / cls)]
    if not items:
        raise FileNotFoundError(f"No images in the class folders of {root}")
    return items


def prepare(out: str | os.PathLike, source: str | os.PathLike | None = None, *, url: str = URL,
            md5: str | None = MD5, size: Sequence[int] | None = None, seed: int = 0,
            fractions: Sequence[float] = DEFAULT_FRACTIONS, overwrite: bool = False, limit: int | None = None,
            cache_dir: str | os.PathLike | None = None, keep_extracted: bool = False,
            log: Logger = echo) -> pd.DataFrame:
    """Write MedNIST in the common layout; ``size`` = (height, width) or None to keep 64x64.

    MedNIST has no patient ids: each image is its own subject for the split.
    """
    fractions = check_fractions(fractions)
    out = prepare_output_dir(out, overwrite)
    cache = Path(cache_dir) if cache_dir is not None else out / ".cache"
    root = find_root(obtain(source, Remote(url, "MedNIST.tar.gz", md5, "md5"), cache, log))
    items = apply_limit(collect(root), limit)

    def convert(item: tuple[Path, str]) -> list[Record]:
        path, cls = item
        image = read_gray(path)
        if size is not None:
            image = resize_2d(image, size)
        rel = f"images/{cls}/{path.stem}.png"
        save_png(image, out / rel)
        split = split_of(f"{cls}/{path.stem}", seed, fractions)
        return [Record(rel, split, cls, cls, {"subject_id": f"{cls}/{path.stem}"})]

    records = convert_all(items, convert, log)
    cleanup_extracted(cache, keep_extracted, log)
    info = DatasetInfo(NAME, url, CITATION, LICENCE, list(size) if size else [64, 64], "png", __name__,
                       {"seed": seed, "fractions": list(fractions), "size": size, "limit": limit},
                       "text = class name; no patient ids, so every image is its own subject.")
    return finish(out, records, info, log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.mednist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    add_source_args(parser, "MedNIST.tar.gz or its extracted folder; without it the archive is "
                                    f"downloaded from --url ({URL}) and md5-checked")
    parser.add_argument("--url", default=URL, help="download URL (default: MONAI's)")
    parser.add_argument("--md5", default=MD5, help="expected md5 of the archive (default: MONAI's)")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="resize to H W (default: keep 64x64)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def run(args: argparse.Namespace) -> pd.DataFrame:
        return prepare(args.out, args.source, url=args.url, md5=args.md5, size=args.size, seed=args.seed,
                       fractions=args.fractions, overwrite=args.overwrite, limit=args.limit,
                       cache_dir=args.cache_dir, keep_extracted=args.keep_extracted, log=logger(args.quiet))

    return run_cli(lambda: parser.parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
