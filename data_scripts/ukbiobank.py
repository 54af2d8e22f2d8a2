"""UK Biobank T1-weighted brain MRI (credentialed access), as 3D volumes or 2D axial slices.

Expects one folder per subject visit, as UK Biobank's bulk field 20252 unpacks them:

    SOURCE/1000123_20252_2_0/T1/T1_brain_to_MNI.nii.gz   (the file is set by --image-name)

    python -m data_scripts.ukbiobank --out data/ukb3d --source ukb/ --mode 3d   # 160x224x160 NIfTI
    python -m data_scripts.ukbiobank --out data/ukb2d --source ukb/ --mode 2d   # 160x224 PNG slices

The subject id (for the split) is the folder name up to the first ``_`` (the eid),
so repeat visits of one participant share a split. Text: "T1-weighted image of a brain.".
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data_scripts._common import (DEFAULT_FRACTIONS, DatasetInfo, Logger, Record, add_common_args, apply_limit,
                                  check_fractions, convert_all, echo, finish, fit_volume, is_hidden_junk,
                                  load_volume, logger, prepare_output_dir, require_dir, run_cli, save_nifti,
                                  save_png, scale_to_unit, split_of, to_uint8)

NAME = "UKBiobank-T1"
SOURCE = "https://www.ukbiobank.ac.uk (data field 20252, T1 structural brain images)"
TEXT = "T1-weighted image of a brain."
LABEL = "T1"
DEFAULT_IMAGE = "T1/T1_brain_to_MNI.nii.gz"
DEFAULT_SIZE: tuple[int, int, int] = (160, 224, 160)
FOREGROUND_LEVEL = 0.01  # a pixel (scaled to [0, 1]) above this is brain, not background
CITATION = ("Sudlow, C. et al.: UK Biobank: an open access resource for identifying the causes of a wide range "
            "of complex diseases of middle and old age. PLoS Medicine 12(3), e1001779 (2015)")
LICENCE = "UK Biobank Material Transfer Agreement: approved projects only; do not share the output."


@dataclass(frozen=True)
class Visit:
    """One subject visit folder and its T1 file."""

    subject_id: str
    name: str
    image: Path


def find_image(folder: Path, image_name: str) -> Path | None:
    """``folder/image_name``, else the first file of that name anywhere below ``folder``."""
    direct = folder / image_name
    if direct.is_file():
        return direct
    return next(iter(sorted(folder.rglob(Path(image_name).name))), None)


def collect(source: Path, image_name: str, skip_missing: bool, log: Logger) -> list[Visit]:
    """The visits under ``source``; FileNotFoundError if none, or some lack the image (unless skipping)."""
    folders = sorted(p for p in source.iterdir() if p.is_dir() and not is_hidden_junk(p))
    if not folders:
        raise FileNotFoundError(f"No subject folders in {source}; expected SOURCE/<eid>_20252_2_0/{image_name}")
    found = {f: find_image(f, image_name) for f in folders}
    missing = [f.name for f, image in found.items() if image is None]
    if missing and (not skip_missing or len(missing) == len(folders)):
        raise FileNotFoundError(f"{len(missing)} of {len(folders)} subject folders lack {image_name}, e.g. "
                                f"{missing[:5]} (pass --image-name to choose the file, --skip-missing to skip).")
    if missing:
        log(f"skipping {len(missing)} folders without {image_name}")
    return [Visit(f.name.split("_")[0], f.name, image) for f, image in found.items() if image is not None]


def axial_slices(volume: np.ndarray, min_foreground: float) -> list[tuple[int, np.ndarray]]:
    """(index, uint8 slice) for the axial slices whose brain fraction exceeds ``min_foreground``."""
    kept = []
    for k in range(volume.shape[2]):
        plane = volume[:, :, k]
        if float(np.mean(plane > FOREGROUND_LEVEL)) > min_foreground:
            kept.append((k, to_uint8(plane)))
    return kept


def prepare(out: str | os.PathLike, source: str | os.PathLike, *, mode: str = "3d",
            image_name: str = DEFAULT_IMAGE, size: Sequence[int] = DEFAULT_SIZE, volume_mode: str = "crop",
            min_foreground: float = 0.0, skip_missing: bool = False, seed: int = 0,
            fractions: Sequence[float] = DEFAULT_FRACTIONS, overwrite: bool = False, limit: int | None = None,
            log: Logger = echo) -> pd.DataFrame:
    """Write UK Biobank T1 images: ``mode="3d"`` float32 NIfTI of ``size`` (RAS, [0, 1]),
    ``mode="2d"`` uint8 PNG axial slices of size[:2], skipping slices without brain.

    ``volume_mode="crop"`` centre-crops/pads (MNI 182x218x182 -> 160x224x160, spacing kept);
    ``"resize"`` resamples instead.
    """
    if mode not in ("2d", "3d") or len(size) != 3:
        raise ValueError(f"mode must be '2d' or '3d' (got {mode!r}) and size three ints (got {list(size)})")
    fractions = check_fractions(fractions)
    visits = apply_limit(collect(require_dir(source, "UK Biobank folder (--source)"), image_name,
                                 skip_missing, log), limit)
    out = prepare_output_dir(out, overwrite)

    def convert(visit: Visit) -> list[Record]:
        data, affine = load_volume(visit.image)
        volume, affine = fit_volume(scale_to_unit(data), affine, size, volume_mode)
        split = split_of(visit.subject_id, seed, fractions)
        extra = {"subject_id": visit.subject_id, "visit": visit.name}
        if mode == "3d":
            rel = f"images/{visit.name}.nii.gz"
            save_nifti(volume, affine, out / rel)
            return [Record(rel, split, LABEL, TEXT, extra)]
        records = []
        for k, plane in axial_slices(volume, min_foreground):
            rel = f"images/{visit.name}/slice_{k:03d}.png"
            save_png(plane, out / rel)
            records.append(Record(rel, split, LABEL, TEXT, {**extra, "slice": k}))
        return records

    records = convert_all(visits, convert, log, every=100)
    image_size = list(size) if mode == "3d" else list(size[:2])
    info = DatasetInfo(f"{NAME}-{mode}", SOURCE, CITATION, LICENCE, image_size, "nifti" if mode == "3d" else "png",
                       __name__, {"mode": mode, "image_name": image_name, "size": list(size),
                                  "volume_mode": volume_mode, "min_foreground": min_foreground, "seed": seed,
                                  "fractions": list(fractions), "limit": limit},
                       "RAS orientation, intensities scaled to [0, 1] (minimum to 99.5th percentile); 2D slices are "
                       "volume[:, :, k] (rows = left-right axis, columns = posterior-anterior axis).")
    return finish(out, records, info, log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.ukbiobank", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--source", type=Path, required=True, help="folder of subject visit folders")
    parser.add_argument("--mode", choices=("3d", "2d"), default="3d", help="3d volumes or 2d axial slices")
    parser.add_argument("--image-name", default=DEFAULT_IMAGE, help=f"file in each folder (default {DEFAULT_IMAGE})")
    parser.add_argument("--size", type=int, nargs=3, default=list(DEFAULT_SIZE), metavar=("X", "Y", "Z"),
                        help="volume size (default 160 224 160); 2D slices are X x Y")
    parser.add_argument("--volume-mode", choices=("crop", "resize"), default="crop",
                        help="crop: centre crop/pad (default, for MNI-registered images); resize: resample")
    parser.add_argument("--min-foreground", type=float, default=0.0,
                        help="2D: keep slices whose brain fraction exceeds this (default 0: drop empty slices)")
    parser.add_argument("--skip-missing", action="store_true", help="skip folders without the image")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def run(args: argparse.Namespace) -> pd.DataFrame:
        return prepare(args.out, args.source, mode=args.mode, image_name=args.image_name, size=args.size,
                       volume_mode=args.volume_mode, min_foreground=args.min_foreground,
                       skip_missing=args.skip_missing, seed=args.seed, fractions=args.fractions,
                       overwrite=args.overwrite, limit=args.limit, log=logger(args.quiet))

    return run_cli(lambda: parser.parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
