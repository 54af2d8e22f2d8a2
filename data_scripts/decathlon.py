"""Medical Segmentation Decathlon: 3D volumes of 10 tasks, resampled to one size (default 128^3).

The paper's out-of-distribution experiment trains on BraTS (Task01_BrainTumour, in
distribution) and scores every other task as out of distribution.

    python -m data_scripts.decathlon --out data/msd                       # downloads all 10 tars
    python -m data_scripts.decathlon --out data/msd --source ~/msd --tasks Task01_BrainTumour Task04_Hippocampus
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from data_scripts._common import (DEFAULT_FRACTIONS, DatasetInfo, Logger, Record, Remote, add_common_args,
                                  add_source_args, apply_limit, check_fractions, cleanup_extracted, convert_all,
                                  echo, finish, fit_volume, fmt_shape, is_hidden_junk, load_volume, logger, obtain,
                                  prepare_output_dir, run_cli, save_nifti, scale_to_unit, spacing_of, split_of,
                                  strip_suffixes)

NAME = "MedicalSegmentationDecathlon"
_BASE = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
# URLs and md5s as MONAI's DecathlonDataset (monai/apps/datasets.py) uses them.
MD5: dict[str, str] = {
    "Task01_BrainTumour": "240a19d752f0d9e9101544901065d872",
    "Task02_Heart": "06ee59366e1e5124267b774dbd654057",
    "Task03_Liver": "a90ec6c4aa7f6a3d087205e23d4e6397",
    "Task04_Hippocampus": "9d24dba78a72977dbd1d2e110310f31b",
    "Task05_Prostate": "35138f08b1efaef89d7424d2bcc928db",
    "Task06_Lung": "8afd997733c7fc0432f71255ba4e52dc",
    "Task07_Pancreas": "4f7080cfca169fa8066d17ce6eb061e4",
    "Task08_HepaticVessel": "641d79e80ec66453921d997fbf12a29c",
    "Task09_Spleen": "410d4a301da4e5b2f6f86ec3ddba524e",
    "Task10_Colon": "bad7a188931dc2f6acf72b08eb6202d0",
}
TASKS: tuple[str, ...] = tuple(MD5)
URLS: dict[str, str] = {task: f"{_BASE}/{task}.tar" for task in TASKS}
IN_DISTRIBUTION = "Task01_BrainTumour"
DEFAULT_SIZE: tuple[int, int, int] = (128, 128, 128)
SUBSETS: tuple[str, ...] = ("imagesTr", "imagesTs")
CITATION = ("Antonelli, M. et al.: The Medical Segmentation Decathlon. Nature Communications 13, 4128 (2022); "
            "http://medicaldecathlon.com")
LICENCE = "CC BY-SA 4.0 (Medical Segmentation Decathlon)."


@dataclass(frozen=True)
class Volume:
    """One input volume of one task."""

    path: Path
    task: str
    subset: str


def task_text(task: str) -> str:
    """``Task08_HepaticVessel`` -> ``Hepatic Vessel`` (the text prompt of the task's images)."""
    name = task.split("_", 1)[-1]
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)


def task_folder(task: str, source: Path | None, urls: Mapping[str, str], md5: Mapping[str, str],
                cache: Path, log: Logger) -> Path:
    """The extracted folder of ``task``: found in ``source`` (folder or tar) or downloaded."""
    remote = Remote(urls.get(task, URLS[task]), f"{task}.tar", md5.get(task, MD5[task]), "md5")
    if source is None:
        root = obtain(None, remote, cache, log)
    elif source.name == task and source.is_dir():
        return source
    elif (source / task).is_dir():
        return source / task
    elif (source / f"{task}.tar").is_file():
        root = obtain(source / f"{task}.tar", remote, cache, log)
    else:
        raise FileNotFoundError(f"{task} not found in {source}: expected the folder {source / task}/ "
                                f"(with imagesTr/) or the archive {source / (task + '.tar')} (from {remote.url}).")
    return root / task if (root / task).is_dir() else root


def task_volumes(folder: Path, task: str, include_test: bool) -> list[Volume]:
    """The task's images (imagesTr, and imagesTs if asked), without macOS ``._`` junk files."""
    if not (folder / "imagesTr").is_dir():
        raise FileNotFoundError(f"{folder} has no imagesTr/ folder; expected the MSD layout "
                                f"{task}/imagesTr/*.nii.gz")
    subsets = SUBSETS if include_test else SUBSETS[:1]
    return [Volume(p, task, subset) for subset in subsets if (folder / subset).is_dir()
            for p in sorted((folder / subset).glob("*.nii*")) if not is_hidden_junk(p)]


def process_volume(volume: Volume, size: Sequence[int], mode: str,
                   channel: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], tuple[float, ...]]:
    """Load, scale to [0, 1] and bring to ``size`` (resize or crop/pad); return data, affine, old shape, spacing."""
    data, affine = load_volume(volume.path, channel)
    shape, spacing = tuple(data.shape), spacing_of(affine)
    data, affine = fit_volume(scale_to_unit(data), affine, size, mode)
    return data, affine, shape, spacing


def prepare(out: str | os.PathLike, source: str | os.PathLike | None = None, *,
            tasks: Sequence[str] = TASKS, size: Sequence[int] = DEFAULT_SIZE, mode: str = "resize",
            channel: int = 0, include_test: bool = True, in_distribution: str = IN_DISTRIBUTION,
            urls: Mapping[str, str] | None = None, md5: Mapping[str, str] | None = None, seed: int = 0,
            fractions: Sequence[float] = DEFAULT_FRACTIONS, overwrite: bool = False, limit: int | None = None,
            cache_dir: str | os.PathLike | None = None, keep_extracted: bool = False,
            log: Logger = echo) -> pd.DataFrame:
    """Write the chosen MSD tasks as float32 NIfTI volumes of ``size`` in the common layout.

    ``mode="resize"`` resamples every axis to ``size`` (spacing in the header is updated);
    ``mode="crop"`` centre-crops/pads without resampling (spacing kept). 4D inputs
    (BraTS, prostate) keep channel ``channel``. Label = task name; the split is by case.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or mode not in ("resize", "crop") or len(size) != 3:
        raise ValueError(f"bad arguments: unknown task(s) {unknown} (known: {list(TASKS)}), mode {mode!r} "
                         f"(resize|crop), size {list(size)} (three ints)")
    fractions = check_fractions(fractions)
    out = prepare_output_dir(out, overwrite)
    cache = Path(cache_dir) if cache_dir is not None else out / ".cache"
    src = Path(source) if source is not None else None
    if src is not None and not src.exists():
        raise FileNotFoundError(f"--source {src} does not exist; expected a folder with TaskXX_Name/ folders "
                                "or TaskXX_Name.tar archives.")
    volumes = [v for task in tasks
               for v in task_volumes(task_folder(task, src, urls or {}, md5 or {}, cache, log), task, include_test)]
    volumes = apply_limit(volumes, limit)

    def convert(volume: Volume) -> list[Record]:
        data, affine, shape, spacing = process_volume(volume, size, mode, channel)
        case = strip_suffixes(volume.path.name)
        rel = f"images/{volume.task}/{case}.nii.gz"
        save_nifti(data, affine, out / rel)
        extra = {"subject_id": f"{volume.task}/{case}", "task": volume.task, "subset": volume.subset,
                 "in_distribution": volume.task == in_distribution, "original_shape": fmt_shape(shape),
                 "original_spacing": fmt_shape(spacing)}
        split = split_of(f"{volume.task}/{case}", seed, fractions)
        return [Record(rel, split, volume.task, task_text(volume.task), extra)]

    records = convert_all(volumes, convert, log, every=20)
    cleanup_extracted(cache, keep_extracted, log)
    info = DatasetInfo(NAME, _BASE, CITATION, LICENCE, list(size), "nifti", __name__,
                       {"tasks": list(tasks), "mode": mode, "channel": channel, "include_test": include_test,
                        "in_distribution": in_distribution, "seed": seed, "fractions": list(fractions),
                        "limit": limit},
                       "float32 volumes scaled to [0, 1] (minimum to 99.5th percentile, clipped), RAS orientation; "
                       "label = task; in_distribution marks the task used for training in the OOD experiment.")
    return finish(out, records, info, log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.decathlon", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    add_source_args(parser, "folder holding TaskXX_Name/ folders and/or TaskXX_Name.tar archives; "
                                    f"without it the tars are downloaded from {_BASE} and md5-checked")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, metavar="TASK",
                        help="tasks to prepare (default: all ten)")
    parser.add_argument("--size", type=int, nargs=3, default=list(DEFAULT_SIZE), metavar=("X", "Y", "Z"),
                        help="output volume size (default 128 128 128)")
    parser.add_argument("--mode", choices=("resize", "crop"), default="resize",
                        help="resize: resample to --size; crop: centre crop/pad, no resampling")
    parser.add_argument("--channel", type=int, default=0, help="channel kept from 4D volumes (default 0)")
    parser.add_argument("--no-test", action="store_true", help="skip imagesTs (unlabelled test cases)")
    parser.add_argument("--in-distribution", default=IN_DISTRIBUTION, choices=TASKS, metavar="TASK",
                        help="task marked in_distribution=True (default Task01_BrainTumour)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def run(args: argparse.Namespace) -> pd.DataFrame:
        return prepare(args.out, args.source, tasks=args.tasks, size=args.size, mode=args.mode,
                       channel=args.channel, include_test=not args.no_test, in_distribution=args.in_distribution,
                       seed=args.seed, fractions=args.fractions, overwrite=args.overwrite, limit=args.limit,
                       cache_dir=args.cache_dir, keep_extracted=args.keep_extracted, log=logger(args.quiet))

    return run_cli(lambda: parser.parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
