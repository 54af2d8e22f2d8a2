"""Shared machinery of the data-preparation scripts.

Everything two scripts need lives here, once: checksummed downloads, safe archive
extraction, the deterministic subject-level split, the image helpers and the writers
of the common on-disk layout (``images/``, ``manifest.csv``, ``dataset.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar
from urllib.request import urlopen

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

SCRIPT_VERSION = "1.0.0"
SPLITS: tuple[str, str, str] = ("train", "val", "test")
MANIFEST_COLUMNS: tuple[str, ...] = ("image", "split", "label", "text")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TAR_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CHUNK_SIZE = 1 << 20
COMPLETE_MARKER = ".extracted-complete"

Logger = Callable[[str], None]
Fractions = tuple[float, float, float]
T = TypeVar("T")


def echo(message: str) -> None:
    """Default logger: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- checksums


def file_digest(path: str | os.PathLike, hash_type: str = "md5") -> str:
    """Hex digest of a file, read in chunks (works for multi-GB archives)."""
    hasher = hashlib.new(hash_type)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_SIZE), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def check_digest(actual: str, expected: str | None, hash_type: str, what: str) -> None:
    """Raise ValueError when ``expected`` is given and differs from ``actual``."""
    if expected is not None and actual.lower() != expected.strip().lower():
        raise ValueError(
            f"{hash_type} checksum mismatch for {what}: expected {expected.strip().lower()}, got {actual}. "
            "The file is corrupt, incomplete or a different version; delete it and fetch it again."
        )


def verify_checksum(path: str | os.PathLike, expected: str | None, hash_type: str = "md5",
                    log: Logger = echo) -> str:
    """Compute the digest of ``path``, log it, compare it with ``expected`` (if given); return it."""
    digest = file_digest(path, hash_type)
    log(f"{hash_type}({Path(path).name}) = {digest}")
    check_digest(digest, expected, hash_type, str(path))
    return digest


# --------------------------------------------------------------------------- downloads


class DownloadError(RuntimeError):
    """A download failed (no network, unreachable URL); the message says what to fetch by hand."""


def manual_download_hint(url: str, dest: Path) -> str:
    """The text telling a user how to do by hand what a failed download could not."""
    return (f"Fetch {url} yourself (browser, curl, another machine), put the file at {dest} "
            f"(or anywhere) and rerun with --source PATH_TO_THAT_FILE (or to its extracted folder).")


def _stream_to(url: str, fh: Any, hasher: Any, opener: Callable[..., Any], timeout: float) -> int:
    """Copy ``url`` into the open file ``fh`` chunk by chunk, hashing on the way; return bytes written."""
    size = 0
    with opener(url, timeout=timeout) as response:
        for chunk in iter(lambda: response.read(CHUNK_SIZE), b""):
            fh.write(chunk)
            hasher.update(chunk)
            size += len(chunk)
    return size


def download(url: str, dest: str | os.PathLike, *, checksum: str | None = None, hash_type: str = "md5",
             opener: Callable[..., Any] | None = None, timeout: float = 60.0, log: Logger = echo) -> Path:
    """Download ``url`` to ``dest``: streamed into a temporary file, checksum verified, renamed atomically.

    An existing ``dest`` whose checksum matches is reused. Without network access the
    DownloadError names the URL and where to put a manually fetched copy.
    """
    dest = Path(dest)
    if dest.is_file() and checksum is not None and file_digest(dest, hash_type) == checksum.lower():
        log(f"reusing {dest} (checksum ok)")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    hasher = hashlib.new(hash_type)
    log(f"downloading {url} -> {dest}")
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                size = _stream_to(url, fh, hasher, opener or urlopen, timeout)
            except (OSError, http.client.HTTPException, ValueError) as err:
                raise DownloadError(f"Could not download {url}: {err}. " + manual_download_hint(url, dest)) from err
        digest = hasher.hexdigest()
        log(f"{hash_type}({dest.name}) = {digest} ({size} bytes)")
        check_digest(digest, checksum, hash_type, f"{url} (downloaded to {dest})")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------- archives


def _inside(root: Path, name: str, archive: Path) -> Path:
    """Resolve archive member ``name`` under ``root``; ValueError if it would escape ``root``."""
    target = (root / name).resolve()
    if Path(name).is_absolute() or not target.is_relative_to(root):
        raise ValueError(f"Refusing to extract {archive}: member {name!r} would be written outside "
                         f"{root} (absolute path or '..' path traversal).")
    return target


def _check_tar_member(member: tarfile.TarInfo, root: Path, archive: Path) -> None:
    """Reject members that escape ``root``: bad names, escaping links, device files."""
    target = _inside(root, member.name, archive)
    if member.issym():
        _inside(root, str(target.parent.relative_to(root) / member.linkname), archive)
    elif member.islnk():
        _inside(root, member.linkname, archive)
    elif not (member.isfile() or member.isdir()):
        raise ValueError(f"Refusing to extract {archive}: member {member.name!r} is a device or fifo.")


def _extract_tar(archive: Path, root: Path) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            _check_tar_member(member, root, archive)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(root, members=members)


def _extract_zip(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            _inside(root, name, archive)
        zf.extractall(root)


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a tar (any compression) or zip archive into ``dest``, refusing path traversal."""
    archive, root = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"Archive {archive} does not exist.")
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    name = archive.name.lower()
    if name.endswith(".zip") or (not name.endswith(TAR_SUFFIXES) and zipfile.is_zipfile(archive)):
        _extract_zip(archive, root)
    elif name.endswith(TAR_SUFFIXES) or tarfile.is_tarfile(archive):
        _extract_tar(archive, root)
    else:
        raise ValueError(f"{archive} is neither a tar nor a zip archive.")
    return root


def archive_stem(path: Path) -> str:
    """``Task01.tar`` -> ``Task01``; ``MedNIST.tar.gz`` -> ``MedNIST``."""
    name = path.name
    for suffix in sorted(TAR_SUFFIXES + (".zip",), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def extract_cached(archive: Path, cache_dir: Path, log: Logger = echo) -> Path:
    """Extract ``archive`` once into ``cache_dir/extracted/<stem>``; later calls reuse it."""
    dest = cache_dir / "extracted" / archive_stem(archive)
    if (dest / COMPLETE_MARKER).is_file():
        log(f"reusing extracted {dest}")
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    log(f"extracting {archive} -> {dest}")
    safe_extract(archive, dest)
    (dest / COMPLETE_MARKER).touch()
    return dest


@dataclass(frozen=True)
class Remote:
    """Where a public archive lives and how to check it."""

    url: str
    filename: str
    checksum: str | None = None
    hash_type: str = "md5"


def obtain(source: str | os.PathLike | None, remote: Remote, cache_dir: Path, log: Logger = echo) -> Path:
    """Return a folder with the data: ``source`` if it is a folder, extracted if it is an archive,
    else the archive is downloaded from ``remote`` (checksum verified) and extracted."""
    if source is None:
        archive = download(remote.url, cache_dir / "downloads" / remote.filename, checksum=remote.checksum,
                           hash_type=remote.hash_type, log=log)
        return extract_cached(archive, cache_dir, log)
    path = Path(source)
    if path.is_dir():
        return path
    if not path.exists():
        raise FileNotFoundError(f"--source {path} does not exist; expected the extracted folder or the "
                                f"archive {remote.filename} (from {remote.url}).")
    verify_checksum(path, remote.checksum, remote.hash_type, log)
    return extract_cached(path, cache_dir, log)


def cleanup_extracted(cache_dir: Path, keep: bool, log: Logger = echo) -> None:
    """Remove ``cache_dir/extracted`` unless asked to keep it (downloads are always kept)."""
    extracted = cache_dir / "extracted"
    if not keep and extracted.is_dir():
        shutil.rmtree(extracted)
        log(f"removed {extracted} (use --keep-extracted to keep it)")


# --------------------------------------------------------------------------- splits


def check_fractions(fractions: Sequence[float]) -> Fractions:
    """Validate (train, val, test) fractions: three non-negative numbers summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers (train val test) summing to 1, "
                         f"got {list(fractions)}")
    return values  # type: ignore[return-value]


def split_of(subject_id: str, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """Deterministic split of one subject: a hash of (seed, subject id) mapped to [0, 1).

    It depends on nothing else (not on the order, number or content of the other
    images), so every image of a subject lands in the same split on every run.
    """
    fractions = check_fractions(fractions)
    digest = hashlib.sha256(f"{seed}\x00{subject_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    cumulative = 0.0
    for name, fraction in zip(SPLITS, fractions):
        cumulative += fraction
        if u < cumulative:
            return name
    return [name for name, fraction in zip(SPLITS, fractions) if fraction > 0][-1]


# --------------------------------------------------------------------------- manifest and dataset.json


@dataclass(frozen=True)
class Record:
    """One row of ``manifest.csv``."""

    image: str
    split: str
    label: str
    text: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"image": self.image, "split": self.split, "label": self.label, "text": self.text, **self.extra}


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says about a prepared data set."""

    name: str
    source: str
    citation: str
    licence: str
    image_size: Sequence[int]
    image_format: str
    script: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""


def prepare_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Create ``out/images``; refuse to mix with an earlier run unless ``overwrite``."""
    out = Path(out)
    if (out / "manifest.csv").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a prepared data set (manifest.csv); pass --overwrite "
                              "(overwrite=True) to replace it.")
    if overwrite:
        shutil.rmtree(out / "images", ignore_errors=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    return out


def write_manifest(out: Path, records: Sequence[Record]) -> pd.DataFrame:
    """Write ``manifest.csv`` (image, split, label, text, extras...) sorted by image path."""
    frame = pd.DataFrame([r.row() for r in records])
    extras = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    frame = frame[list(MANIFEST_COLUMNS) + extras].sort_values("image", kind="stable").reset_index(drop=True)
    frame.to_csv(out / "manifest.csv", index=False)
    return frame


def split_counts(records: Iterable[Record]) -> dict[str, int]:
    counts = {name: 0 for name in SPLITS}
    for record in records:
        counts[record.split] += 1
    return counts


def write_dataset_json(out: Path, info: DatasetInfo, records: Sequence[Record]) -> dict[str, Any]:
    """Write ``dataset.json`` describing the data set and return its content."""
    content = {
        "name": info.name,
        "source": info.source,
        "citation": info.citation,
        "licence": info.licence,
        "image_size": list(info.image_size),
        "image_format": info.image_format,
        "num_images": len(records),
        "splits": split_counts(records),
        "labels": {k: int(v) for k, v in sorted(pd.Series([r.label for r in records]).value_counts().items())},
        "script": info.script,
        "script_version": SCRIPT_VERSION,
        "parameters": dict(info.parameters),
        "notes": info.notes,
    }
    (out / "dataset.json").write_text(json.dumps(content, indent=2, default=str) + "\n")
    return content


def finish(out: Path, records: Sequence[Record], info: DatasetInfo, log: Logger = echo) -> pd.DataFrame:
    """Write manifest.csv and dataset.json; return the manifest."""
    if not records:
        raise ValueError(f"No images were written to {out}; check --source and the filters.")
    frame = write_manifest(out, records)
    content = write_dataset_json(out, info, records)
    log(f"{info.name}: {content['num_images']} images {content['splits']} -> {out}")
    return frame


def convert_all(items: Sequence[T], convert: Callable[[T], list[Record]], log: Logger = echo,
                every: int = 1000) -> list[Record]:
    """Run ``convert`` over ``items`` with a progress line every ``every`` items."""
    records: list[Record] = []
    for i, item in enumerate(items, 1):
        records.extend(convert(item))
        if i % every == 0 or i == len(items):
            log(f"  {i}/{len(items)} done")
    return records


def apply_limit(items: list[T], limit: int | None) -> list[T]:
    """The first ``limit`` items (all when ``limit`` is None): for quick trial runs."""
    return items if limit is None else items[:limit]


# --------------------------------------------------------------------------- table helpers


def read_table(path: Path, required: Sequence[str], what: str) -> pd.DataFrame:
    """Read a csv (``,`` ``;`` or tab separated, optionally gzipped) and check its columns."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    frame = pd.read_csv(path, sep=None, engine="python", na_values=["-"])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} {path} lacks column(s) {missing}; expected at least {list(required)}, "
                         f"found {list(frame.columns)}")
    return frame


def find_file(folder: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` that exists in ``folder``; FileNotFoundError naming them all otherwise."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{what} not found in {folder}: expected one of {list(names)}")


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; FileNotFoundError saying what was expected there if it is no folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a folder.")
    return path


def is_hidden_junk(path: Path) -> bool:
    """macOS resource forks (``._x``) and dot files that some archives carry."""
    return path.name.startswith(".")


def list_images(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files directly in ``folder``, sorted, without junk files."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in suffixes and not is_hidden_junk(p))


def strip_suffixes(name: str) -> str:
    """``a.nii.gz`` -> ``a``; ``b.jpeg`` -> ``b``."""
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# --------------------------------------------------------------------------- 2D images


def read_gray(path: Path) -> np.ndarray:
    """A 2D grayscale array: uint16 for 16-bit files, uint8 otherwise (colour is converted)."""
    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.clip(np.asarray(img, dtype=np.int64), 0, 65535).astype(np.uint16)
        return np.asarray(img.convert("L"), dtype=np.uint8)


def _fit_box(shape: tuple[int, int], size: tuple[int, int], cover: bool) -> tuple[int, int]:
    """Aspect-preserving (h, w) that covers (crop mode) or fits in (pad mode) ``size``."""
    scale = (max if cover else min)(size[0] / shape[0], size[1] / shape[1])
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def resize_2d(image: np.ndarray, size: Sequence[int], mode: str = "stretch") -> np.ndarray:
    """Resize a 2D array to ``size`` = (height, width), keeping its dtype.

    ``stretch`` resizes each axis independently; ``crop`` keeps the aspect ratio and
    crops the centre; ``pad`` keeps the aspect ratio and pads with zeros.
    """
    if mode not in ("stretch", "crop", "pad"):
        raise ValueError(f"resize mode must be stretch, crop or pad, got {mode!r}")
    height, width = int(size[0]), int(size[1])
    box = (height, width) if mode == "stretch" else _fit_box(image.shape[:2], (height, width), mode == "crop")
    resized = image if image.shape[:2] == box else _resample_2d(image, box)
    return crop_or_pad(resized, (height, width))


def _resample_2d(image: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased) resize through a float image, rounded back to the input dtype."""
    pil = Image.fromarray(image.astype(np.float32), mode="F").resize((box[1], box[0]), Image.Resampling.BILINEAR)
    info = np.iinfo(image.dtype)
    return np.clip(np.rint(np.asarray(pil)), info.min, info.max).astype(image.dtype)


def save_png(image: np.ndarray, path: Path) -> None:
    """Save a 2D uint8 or uint16 array as a grayscale PNG (parents created)."""
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"save_png expects a 2D uint8/uint16 array, got {image.dtype} {image.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8."""
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def scale_to_unit(array: np.ndarray, lower_percentile: float = 0.0, upper_percentile: float = 99.5) -> np.ndarray:
    """Clip to the given percentiles and rescale to [0, 1] as float32 (constant input -> zeros)."""
    data = np.asarray(array, dtype=np.float32)
    low, high = np.percentile(data, [lower_percentile, upper_percentile])
    if high <= low:
        return np.zeros_like(data)
    return ((np.clip(data, low, high) - low) / (high - low)).astype(np.float32)


# --------------------------------------------------------------------------- 3D volumes


def load_volume(path: Path, channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI volume reoriented to RAS; a 4D volume gives channel ``channel`` (default 0)."""
    image = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4:
        index = 0 if channel is None else channel
        if not 0 <= index < data.shape[3]:
            raise ValueError(f"{path} has {data.shape[3]} channels; channel {index} does not exist.")
        data = data[..., index]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D (or 4D multi-channel) volume, got shape {data.shape}")
    return np.asarray(data, dtype=np.float32), image.affine.copy()


def spacing_of(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel size (mm) along each axis of an affine."""
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def crop_or_pad(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre-crop and/or zero-pad every axis of ``array`` to ``shape``."""
    out = np.zeros(tuple(shape), dtype=array.dtype)
    src, dst = [], []
    for have, want in zip(array.shape, shape):
        start = (have - want) // 2
        src.append(slice(max(start, 0), max(start, 0) + min(have, want)))
        dst.append(slice(max(-start, 0), max(-start, 0) + min(have, want)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def crop_or_pad_affine(affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """The affine of ``crop_or_pad`` output: world coordinates of every kept voxel are unchanged."""
    shift = np.eye(4)
    shift[:3, 3] = [(have - want) // 2 for have, want in zip(old_shape, new_shape)]
    return affine @ shift


def resize_volume(volume: np.ndarray, affine: np.ndarray, shape: Sequence[int],
                  order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``volume`` to exactly ``shape`` (same field of view); return it with its new affine."""
    factors = [want / have for have, want in zip(volume.shape, shape)]
    resized = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    resized = crop_or_pad(resized, shape)  # guards against off-by-one rounding in zoom
    scale = np.eye(4)
    for axis, factor in enumerate(factors):
        scale[axis, axis] = 1.0 / factor
        scale[axis, 3] = (1.0 / factor - 1.0) / 2.0
    return resized.astype(np.float32), affine @ scale


def fit_volume(volume: np.ndarray, affine: np.ndarray, shape: Sequence[int],
               mode: str = "resize") -> tuple[np.ndarray, np.ndarray]:
    """Bring a volume to ``shape``: ``resize`` resamples (spacing changes), ``crop`` centre-crops/pads."""
    if mode == "resize":
        return resize_volume(volume, affine, shape)
    if mode == "crop":
        return crop_or_pad(volume, shape), crop_or_pad_affine(affine, volume.shape, shape)
    raise ValueError(f"volume mode must be resize or crop, got {mode!r}")


def save_nifti(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save a float32 NIfTI (.nii.gz); voxel spacing is carried by the affine/header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(volume.astype(np.float32), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


# --------------------------------------------------------------------------- command line


def fmt_shape(values: Iterable[float]) -> str:
    """``(240, 240, 155)`` -> ``240x240x155``; floats with two decimals."""
    return "x".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in values)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options every script has: --out, --seed, --fractions, --overwrite, --limit, --quiet."""
    parser.add_argument("--out", required=True, type=Path, help="output folder (images/, manifest.csv, dataset.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subject-level split (default 0)")
    parser.add_argument("--fractions", type=float, nargs=3, default=list(DEFAULT_FRACTIONS),
                        metavar=("TRAIN", "VAL", "TEST"), help="split fractions (default 0.8 0.1 0.1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--limit", type=int, default=None, help="only the first N inputs (quick trial run)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def add_source_args(parser: argparse.ArgumentParser, source_help: str) -> None:
    """--source and the cache options of the scripts that can download a public archive."""
    parser.add_argument("--source", type=Path, default=None, help=source_help)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where downloads and extracted archives go (default OUT/.cache)")
    parser.add_argument("--keep-extracted", action="store_true",
                        help="keep the extracted archive in the cache (downloads are always kept)")


def logger(quiet: bool) -> Logger:
    return (lambda message: None) if quiet else echo


def run_cli(parse: Callable[[], argparse.Namespace], run: Callable[[argparse.Namespace], pd.DataFrame]) -> int:
    """Parse, run, and turn expected failures into a one-line error and exit status 2."""
    args = parse()
    try:
        run(args)
    except (ValueError, FileNotFoundError, FileExistsError, DownloadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
