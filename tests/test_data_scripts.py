"""Tests of ``data_scripts``: every script runs on tiny fake downloads built in tmp_path.

Nothing is downloaded: "downloads" go through ``file://`` URLs or a monkeypatched opener.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Callable
from urllib.error import URLError

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from data_scripts import _common, csaw_m, decathlon, mednist, mimic_cxr, retinal_oct, ukbiobank  # noqa: E402

MODULES = (mednist, decathlon, retinal_oct, csaw_m, mimic_cxr, ukbiobank)


def quiet(message: str) -> None:
    """A logger that says nothing."""


# --------------------------------------------------------------------------- fixtures' helpers


def save_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def save_volume(path: Path, data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([*spacing, 1.0])), str(path))
    return path


def make_tar(folder: Path, archive: Path) -> Path:
    """Archive ``folder`` (under its own name) as tar or tar.gz, by ``archive``'s suffix."""
    with tarfile.open(archive, "w:gz" if archive.name.endswith(".gz") else "w") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def digest(path: Path, hash_type: str = "md5") -> str:
    return hashlib.new(hash_type, path.read_bytes()).hexdigest()


def read_manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", keep_default_na=False, dtype=str)


def read_info(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def check_layout(out: Path, n_rows: int) -> pd.DataFrame:
    """Columns, row count, files present, dataset.json agreeing with the manifest."""
    manifest = read_manifest(out)
    assert list(manifest.columns[:4]) == ["image", "split", "label", "text"]
    assert len(manifest) == n_rows
    assert set(manifest["split"]) <= {"train", "val", "test"}
    assert all((out / rel).is_file() and rel.startswith("images/") for rel in manifest["image"])
    info = read_info(out)
    assert info["num_images"] == n_rows
    assert info["splits"] == {s: int((manifest["split"] == s).sum()) for s in ("train", "val", "test")}
    assert info["script_version"] == _common.SCRIPT_VERSION
    assert {"name", "source", "citation", "licence", "image_size"} <= set(info)
    return manifest


def assert_subject_disjoint(manifest: pd.DataFrame) -> None:
    assert (manifest.groupby("subject_id")["split"].nunique() == 1).all()


# --------------------------------------------------------------------------- _common: split


def test_split_is_deterministic_subject_level_and_follows_fractions() -> None:
    ids = [f"subject-{i}" for i in range(4000)]
    first = [_common.split_of(s, seed=0) for s in ids]
    assert first == [_common.split_of(s, seed=0) for s in ids]
    counts = pd.Series(first).value_counts(normalize=True)
    assert abs(counts["train"] - 0.8) < 0.03 and abs(counts["val"] - 0.1) < 0.03 and abs(counts["test"] - 0.1) < 0.03
    other_seed = [_common.split_of(s, seed=1) for s in ids]
    assert sum(a != b for a, b in zip(first, other_seed)) > 400
    assert {_common.split_of(s, 0, (0.0, 0.0, 1.0)) for s in ids[:50]} == {"test"}
    assert _common.split_of("x", 3, (0.5, 0.25, 0.25)) == _common.split_of("x", 3, [0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="summing to 1"):
        _common.split_of("x", 0, (0.8, 0.3, 0.1))


# --------------------------------------------------------------------------- _common: download


def test_download_file_url_verifies_checksum_and_renames_atomically(tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 5000)
    dest = tmp_path / "dl" / "payload.bin"
    got = _common.download(payload.as_uri(), dest, checksum=digest(payload, "sha256"), hash_type="sha256", log=quiet)
    assert got == dest and dest.read_bytes() == payload.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["payload.bin"]  # no temp file left

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a verified existing file must be reused, not downloaded again")

    assert _common.download("https://example.org/x", dest, checksum=digest(payload), opener=no_network,
                            log=quiet) == dest

    bad = tmp_path / "dl2" / "payload.bin"
    with pytest.raises(ValueError, match="checksum mismatch"):
        _common.download(payload.as_uri(), bad, checksum="0" * 32, log=quiet)
    assert not bad.exists() and list(bad.parent.iterdir()) == []


def test_download_without_network_names_url_and_destination(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float = 0) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_common, "urlopen", offline)
    url = "https://example.org/data/archive.tar.gz"
    dest = tmp_path / "downloads" / "archive.tar.gz"
    with pytest.raises(_common.DownloadError) as err:
        _common.download(url, dest, checksum="0" * 32, log=quiet)
    message = str(err.value)
    assert url in message and str(dest) in message and "--source" in message
    assert not dest.exists() and list(dest.parent.iterdir()) == []


# --------------------------------------------------------------------------- _common: archives


def _tar_with(tmp_path: Path, info: tarfile.TarInfo, data: bytes = b"evil") -> Path:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        ok = tarfile.TarInfo("fine/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        info.size = len(data) if info.isfile() else 0
        tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return archive


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize("member", [
    tarfile.TarInfo("../evil.txt"),
    tarfile.TarInfo("fine/../../evil.txt"),
    tarfile.TarInfo("/tmp/medgen-evil.txt"),
    _symlink("fine/link", "../../evil.txt"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink"])
def test_safe_extract_rejects_path_traversal_in_tar(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = _tar_with(tmp_path, member)
    dest = tmp_path / "a" / "b"
    with pytest.raises(ValueError, match="outside"):
        _common.safe_extract(archive, dest)
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (dest / "fine" / "ok.txt").exists()  # nothing extracted at all


def test_safe_extract_rejects_zip_traversal_and_extracts_good_archives(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.txt", b"evil")
    with pytest.raises(ValueError, match="outside"):
        _common.safe_extract(bad, tmp_path / "x")
    assert not (tmp_path / "evil.txt").exists()

    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("d/e.txt", b"hello")
    assert (_common.safe_extract(good, tmp_path / "z") / "d" / "e.txt").read_bytes() == b"hello"
    folder = tmp_path / "pkg"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f.txt").write_text("content")
    root = _common.safe_extract(make_tar(folder, tmp_path / "pkg.tar.gz"), tmp_path / "t")
    assert (root / "pkg" / "sub" / "f.txt").read_text() == "content"


# --------------------------------------------------------------------------- _common: images


def test_image_helpers_keep_geometry() -> None:
    wide = np.full((4, 8), 200, dtype=np.uint8)
    assert _common.resize_2d(wide, (6, 10)).shape == (6, 10)
    padded = _common.resize_2d(wide, (8, 8), "pad")
    assert padded.shape == (8, 8) and (padded[:2] == 0).all() and (padded[2:6] == 200).all()
    cropped = _common.resize_2d(wide, (8, 8), "crop")
    assert cropped.shape == (8, 8) and (cropped == 200).all()
    deep = np.full((5, 5), 40000, dtype=np.uint16)
    assert _common.resize_2d(deep, (3, 3)).dtype == np.uint16 and (_common.resize_2d(deep, (3, 3)) == 40000).all()

    volume = np.arange(6 * 8 * 4, dtype=np.float32).reshape(6, 8, 4)
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    cropped3, affine3 = _common.fit_volume(volume, affine, (4, 10, 4), "crop")
    assert cropped3.shape == (4, 10, 4) and cropped3[0, 1, 0] == volume[1, 0, 0]
    np.testing.assert_allclose(affine3 @ [0, 1, 0, 1], affine @ [1, 0, 0, 1])  # same world position
    resized, affine_r = _common.fit_volume(volume, affine, (3, 16, 4), "resize")
    assert resized.shape == (3, 16, 4)
    np.testing.assert_allclose(_common.spacing_of(affine_r), (4.0, 0.5, 3.0))
    centre_old = affine @ [2.5, 3.5, 1.5, 1]
    np.testing.assert_allclose(affine_r @ [1.0, 7.5, 1.5, 1], centre_old)  # same field of view


# --------------------------------------------------------------------------- MedNIST


def fake_mednist(tmp_path: Path, per_class: int = 3) -> Path:
    """MedNIST/<class>/00000i.jpeg, 8x8, a distinct gray value per class."""
    root = tmp_path / "fake" / "MedNIST"
    for c, cls in enumerate(mednist.CLASSES):
        for i in range(per_class):
            save_image(root / cls / f"{i:06d}.jpeg", np.full((8, 8), 30 * (c + 1), dtype=np.uint8))
    (root / "README.md").write_text("fake")
    return root


def test_mednist_from_tarball(tmp_path: Path) -> None:
    archive = make_tar(fake_mednist(tmp_path), tmp_path / "MedNIST.tar.gz")
    out = tmp_path / "out"
    mednist.prepare(out, archive, md5=digest(archive), log=quiet)
    manifest = check_layout(out, 18)
    assert (manifest["label"] == manifest["text"]).all()
    assert manifest.groupby("label").size().to_dict() == {cls: 3 for cls in mednist.CLASSES}
    for row in manifest.itertuples():
        with Image.open(out / row.image) as img:
            assert img.size == (8, 8) and img.mode == "L"
            assert abs(np.asarray(img).mean() - 30 * (mednist.CLASSES.index(row.label) + 1)) <= 2
        assert row.split == _common.split_of(row.subject_id, 0)
    assert read_info(out)["image_size"] == [64, 64]
    assert not (out / ".cache" / "extracted").exists()  # cleaned up after success


def test_mednist_download_via_file_url_matches_local_run(tmp_path: Path) -> None:
    archive = make_tar(fake_mednist(tmp_path), tmp_path / "MedNIST.tar.gz")
    local, remote = tmp_path / "local", tmp_path / "remote"
    first = mednist.prepare(local, archive, md5=digest(archive), log=quiet)
    second = mednist.prepare(remote, url=archive.as_uri(), md5=digest(archive), log=quiet)
    pd.testing.assert_frame_equal(first, second)
    assert digest(remote / ".cache" / "downloads" / "MedNIST.tar.gz") == digest(archive)


def test_mednist_folder_source_resize_and_errors(tmp_path: Path) -> None:
    root = fake_mednist(tmp_path)
    out = tmp_path / "out"
    mednist.prepare(out, root.parent, size=(16, 12), fractions=(0.5, 0.25, 0.25), log=quiet)
    manifest = check_layout(out, 18)
    assert {Image.open(out / rel).size for rel in manifest["image"]} == {(12, 16)}
    with pytest.raises(FileExistsError, match="overwrite"):
        mednist.prepare(out, root.parent, log=quiet)
    mednist.prepare(out, root, overwrite=True, limit=4, log=quiet)
    check_layout(out, 4)

    archive = make_tar(root, tmp_path / "MedNIST.tar.gz")
    with pytest.raises(ValueError, match="checksum mismatch"):
        mednist.prepare(tmp_path / "bad", archive, md5="0" * 32, log=quiet)
    assert not (tmp_path / "bad" / "manifest.csv").exists()
    for path in (root / "HeadCT").iterdir():
        path.unlink()
    (root / "HeadCT").rmdir()
    with pytest.raises(FileNotFoundError, match="HeadCT"):
        mednist.prepare(tmp_path / "missing", root, log=quiet)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mednist.prepare(tmp_path / "nosrc", tmp_path / "no-such.tar.gz", log=quiet)


def test_mednist_offline_download_error_names_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float = 0) -> None:
        raise URLError("network is unreachable")

    monkeypatch.setattr(_common, "urlopen", offline)
    with pytest.raises(_common.DownloadError) as err:
        mednist.prepare(tmp_path / "out", log=quiet)
    assert mednist.URL in str(err.value) and "MedNIST.tar.gz" in str(err.value) and "--source" in str(err.value)


# --------------------------------------------------------------------------- Decathlon


def fake_task(tmp_path: Path, task: str, shape: tuple[int, ...], cases: int, test_cases: int) -> Path:
    folder = tmp_path / "msd_src" / task
    prefix = task.split("_")[1].lower()
    rng = np.random.default_rng(0)
    for subset, n, start in (("imagesTr", cases, 1), ("imagesTs", test_cases, 100)):
        for i in range(start, start + n):
            save_volume(folder / subset / f"{prefix}_{i:03d}.nii.gz", rng.uniform(0, 500, shape))
    save_volume(folder / "labelsTr" / f"{prefix}_001.nii.gz", np.zeros(shape[:3]))
    (folder / "imagesTr" / f"._{prefix}_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    (folder / "dataset.json").write_text("{}")
    return folder


@pytest.fixture()
def msd_tars(tmp_path: Path) -> dict[str, Path]:
    brats = fake_task(tmp_path, "Task01_BrainTumour", (10, 12, 6, 2), cases=2, test_cases=1)
    hippo = fake_task(tmp_path, "Task04_Hippocampus", (6, 7, 5), cases=2, test_cases=0)
    tars = tmp_path / "tars"
    tars.mkdir()
    return {f.name: make_tar(f, tars / f"{f.name}.tar") for f in (brats, hippo)}


def test_decathlon_from_tars_resized_with_spacing(tmp_path: Path, msd_tars: dict[str, Path]) -> None:
    out = tmp_path / "out"
    md5 = {task: digest(path) for task, path in msd_tars.items()}
    decathlon.prepare(out, tmp_path / "tars", tasks=list(msd_tars), size=(8, 8, 8), md5=md5, log=quiet)
    manifest = check_layout(out, 5)  # 2 + 1 BraTS, 2 hippocampus; ._ junk skipped
    assert manifest.groupby("label").size().to_dict() == {"Task01_BrainTumour": 3, "Task04_Hippocampus": 2}
    assert dict(zip(manifest["label"], manifest["text"])) == {"Task01_BrainTumour": "Brain Tumour",
                                                              "Task04_Hippocampus": "Hippocampus"}
    assert (manifest["in_distribution"] == (manifest["task"] == "Task01_BrainTumour").astype(str)).all()
    assert sorted(manifest["subset"]) == ["imagesTr"] * 4 + ["imagesTs"]
    for row in manifest.itertuples():
        image = nib.load(str(out / row.image))
        data = image.get_fdata()
        assert data.shape == (8, 8, 8) and 0.0 <= data.min() and data.max() <= 1.0
        expected = (1.25, 1.5, 0.75) if row.task == "Task01_BrainTumour" else (0.75, 0.875, 0.625)
        np.testing.assert_allclose(image.header.get_zooms(), expected, rtol=1e-5)
    assert manifest.loc[manifest["task"] == "Task01_BrainTumour", "original_shape"].unique().tolist() == ["10x12x6"]
    assert read_info(out)["image_size"] == [8, 8, 8]


def test_decathlon_download_via_file_url_crop_mode(tmp_path: Path, msd_tars: dict[str, Path]) -> None:
    out = tmp_path / "out"
    urls = {task: path.as_uri() for task, path in msd_tars.items()}
    md5 = {task: digest(path) for task, path in msd_tars.items()}
    decathlon.prepare(out, tasks=["Task04_Hippocampus"], size=(4, 4, 4), mode="crop", urls=urls, md5=md5,
                      log=quiet)
    manifest = check_layout(out, 2)
    image = nib.load(str(out / manifest["image"][0]))
    assert image.shape == (4, 4, 4) and image.header.get_zooms() == (1.0, 1.0, 1.0)
    assert (out / ".cache" / "downloads" / "Task04_Hippocampus.tar").is_file()


def test_decathlon_errors(tmp_path: Path, msd_tars: dict[str, Path]) -> None:
    with pytest.raises(FileNotFoundError, match="Task02_Heart"):
        decathlon.prepare(tmp_path / "a", tmp_path / "tars", tasks=["Task02_Heart"], log=quiet)
    with pytest.raises(ValueError, match="checksum mismatch"):
        decathlon.prepare(tmp_path / "b", tmp_path / "tars", tasks=["Task04_Hippocampus"],
                          md5={"Task04_Hippocampus": "1" * 32}, log=quiet)
    with pytest.raises(ValueError, match="unknown task"):
        decathlon.prepare(tmp_path / "c", tmp_path / "tars", tasks=["Task99_Nothing"], log=quiet)
    extracted = tmp_path / "msd_src"  # extracted task folders also work as --source
    decathlon.prepare(tmp_path / "d", extracted, tasks=["Task01_BrainTumour"], size=(4, 4, 4),
                      include_test=False, channel=1, log=quiet)
    assert len(read_manifest(tmp_path / "d")) == 2


# --------------------------------------------------------------------------- Retinal OCT


def fake_oct(tmp_path: Path) -> Path:
    """OCT2017/{train,test}/CLASS/CLASS-PATIENT-N.jpeg; patient 7 has CNV and DME scans."""
    root = tmp_path / "oct_src" / "OCT2017"
    plan = {("train", "CNV"): [7, 8], ("train", "DME"): [7, 9], ("train", "DRUSEN"): [10, 11],
            ("train", "NORMAL"): [12, 13, 14], ("test", "CNV"): [20], ("test", "NORMAL"): [21]}
    for (official, cls), patients in plan.items():
        for patient in patients:
            for n in (1, 2):
                save_image(root / official / cls / f"{cls}-{patient}-{n}.jpeg",
                           np.full((10, 12), 100, dtype=np.uint8))
    (root / "train" / "CNV" / "._CNV-7-1.jpeg").write_bytes(b"junk")
    return root


def test_retinal_oct_prompts_sizes_and_patient_split(tmp_path: Path) -> None:
    root = fake_oct(tmp_path)
    archive = make_tar(root, tmp_path / "OCT2017.tar.gz")
    messages: list[str] = []
    out = tmp_path / "out"
    retinal_oct.prepare(out, archive, sha256=digest(archive, "sha256"), size=(16, 16), log=messages.append)
    manifest = check_layout(out, 22)
    assert any(digest(archive, "sha256") in m for m in messages)  # computed sha256 is printed
    assert dict(zip(manifest["label"], manifest["text"])) == {
        "CNV": "Choroidal Neovascularization", "DME": "Diabetic Macular Edema",
        "DRUSEN": "Drusen", "NORMAL": "Normal retina"}
    assert {Image.open(out / rel).size for rel in manifest["image"]} == {(16, 16)}
    assert set(manifest["official_split"]) == {"train", "test"}
    assert_subject_disjoint(manifest)
    assert sorted(manifest.loc[manifest["subject_id"] == "7", "label"]) == ["CNV", "CNV", "DME", "DME"]
    again = retinal_oct.prepare(tmp_path / "again", root.parent, size=(16, 16), log=quiet)
    assert again["split"].tolist() == manifest["split"].tolist()


def test_retinal_oct_errors(tmp_path: Path) -> None:
    archive = make_tar(fake_oct(tmp_path), tmp_path / "OCT2017.tar.gz")
    with pytest.raises(ValueError, match="checksum mismatch"):
        retinal_oct.prepare(tmp_path / "a", archive, sha256="f" * 64, log=quiet)
    with pytest.raises(ValueError, match="--source"):
        retinal_oct.prepare(tmp_path / "b", log=quiet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="CNV/DME/DRUSEN/NORMAL"):
        retinal_oct.prepare(tmp_path / "c", tmp_path / "empty", log=quiet)


def test_retinal_oct_offline_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float = 0) -> None:
        raise URLError("no route to host")

    monkeypatch.setattr(_common, "urlopen", offline)
    with pytest.raises(_common.DownloadError, match="data.mendeley.com") as err:
        retinal_oct.prepare(tmp_path / "out", download=True, log=quiet)
    assert "OCT2017.tar.gz" in str(err.value)


# --------------------------------------------------------------------------- CSAW-M


def fake_csaw(tmp_path: Path, levels: tuple[int, ...] = (1, 2, 3, 6, 7, 8)) -> Path:
    root = tmp_path / "CSAW-M"
    rows = []
    for i, level in enumerate(levels):
        name = f"{i:05d}_{level}.png"
        if i == 0:
            image = np.full((40, 32), 50000, dtype=np.uint16)
        else:
            image = np.full((40, 32), 20 * level, dtype=np.uint8)
        save_image(root / "images" / "preprocessed" / "train" / name, image)
        rows.append(f"{name};{level};{i % 2}")
    (root / "labels").mkdir()
    (root / "labels" / "CSAW-M_train.csv").write_text("Filename;Label;If_cancer\n" + "\n".join(rows) + "\n")
    return root


def test_csaw_m_prompts_labels_and_size(tmp_path: Path) -> None:
    out = tmp_path / "out"
    csaw_m.prepare(out, fake_csaw(tmp_path), size=(20, 16), log=quiet)
    manifest = check_layout(out, 6)
    assert dict(zip(manifest["label"], manifest["text"])) == {
        "1": "Low masking level", "2": "Low masking level", "3": "Medium masking level",
        "6": "Medium masking level", "7": "High masking level", "8": "High masking level"}
    sizes_modes = {(Image.open(out / rel).size, Image.open(out / rel).mode) for rel in manifest["image"]}
    assert sizes_modes == {((16, 20), "L"), ((16, 20), "I;16")}  # W x H; 16-bit kept
    assert csaw_m.DEFAULT_SIZE == (640, 512)
    assert [csaw_m.masking_prompt(level) for level in (2, 3, 6, 7)] == [
        "Low masking level", "Medium masking level", "Medium masking level", "High masking level"]


def test_csaw_m_bad_inputs(tmp_path: Path) -> None:
    root = fake_csaw(tmp_path)
    labels = root / "labels" / "CSAW-M_train.csv"
    no_label = tmp_path / "no_label.csv"
    no_label.write_text("Filename;If_cancer\n00000_1.png;0\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['Label'\]"):
        csaw_m.prepare(tmp_path / "a", root, labels=no_label, log=quiet)
    out_of_range = tmp_path / "range.csv"
    out_of_range.write_text("Filename;Label\n00000_1.png;9\n")
    with pytest.raises(ValueError, match="1..8"):
        csaw_m.prepare(tmp_path / "b", root, labels=out_of_range, log=quiet)
    (root / "images" / "preprocessed" / "train" / "00002_3.png").unlink()
    with pytest.raises(FileNotFoundError, match="00002_3.png"):
        csaw_m.prepare(tmp_path / "c", root, log=quiet)
    with pytest.raises(FileNotFoundError, match="images/preprocessed/test"):
        csaw_m.prepare(tmp_path / "d", root, subset="test", log=quiet)
    with pytest.raises(ValueError, match="--images and --labels"):
        csaw_m.prepare(tmp_path / "e", images=root, log=quiet)
    assert labels.is_file()


# --------------------------------------------------------------------------- MIMIC-CXR

FINDINGS = ["Heart size is enlarged.", "There is mild pulmonary edema.", "No pleural effusion is seen.",
            "There is no pneumothorax.", "Lungs are otherwise clear.", "Osseous structures are intact.",
            "A central line is in place."]
IMPRESSION = ["Cardiomegaly with mild edema."]
REPORT = ("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
          " INDICATION:  Indication sentence marker. ___F with dyspnea.\n\n TECHNIQUE:  Chest PA and lateral.\n\n"
          " FINDINGS:\n\n " + "  ".join(FINDINGS[:4]) + "\n " + " ".join(FINDINGS[4:]) +
          "\n\n IMPRESSION:\n\n 1. " + IMPRESSION[0] + "\n")
STUDIES = [  # subject, study, dicoms, official split
    ("10000032", "50414267", ["d1", "d2"], "train"),
    ("10000032", "53189527", ["d3"], "train"),
    ("11000011", "51111111", ["d4"], "validate"),
    ("12000012", "52222222", ["d5"], "test"),
]
VIEWS = {"d1": "PA", "d2": "LATERAL", "d3": "AP", "d4": "PA", "d5": "PA"}


def fake_mimic(tmp_path: Path) -> tuple[Path, Path]:
    source, reports = tmp_path / "mimic-cxr-jpg", tmp_path / "mimic-cxr-reports"
    split_rows = ["dicom_id,study_id,subject_id,split"]
    for subject, study, dicoms, official in STUDIES:
        folder = source / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for dicom in dicoms:
            save_image(folder / f"{dicom}.jpg", np.full((24, 20), 90, dtype=np.uint8))
            split_rows.append(f"{dicom},{study},{subject},{official}")
        report = reports / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(REPORT if study == "50414267" else " FINDINGS: No acute process.\n")
    with gzip.open(source / "mimic-cxr-2.0.0-split.csv.gz", "wt") as fh:
        fh.write("\n".join(split_rows) + "\n")
    (source / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        "subject_id,study_id,Atelectasis,Cardiomegaly,Edema,No Finding\n"
        "10000032,50414267,-1.0,1.0,1.0,\n10000032,53189527,,,,1.0\n11000011,51111111,0.0,0.0,,\n")
    (source / "mimic-cxr-2.0.0-metadata.csv").write_text(
        "dicom_id,ViewPosition\n" + "\n".join(f"{d},{v}" for d, v in VIEWS.items()) + "\n")
    return source, reports


def test_mimic_cxr_labels_prompts_and_official_split(tmp_path: Path) -> None:
    source, reports = fake_mimic(tmp_path)
    out = tmp_path / "out"
    mimic_cxr.prepare(out, source, reports=reports, size=(16, 16), log=quiet)
    manifest = check_layout(out, 5).set_index("dicom_id")
    assert manifest["label"].to_dict() == {"d1": "Cardiomegaly|Edema", "d2": "Cardiomegaly|Edema",
                                           "d3": "No Finding", "d4": "No Finding", "d5": "No Finding"}
    assert manifest["split"].to_dict() == {"d1": "train", "d2": "train", "d3": "train", "d4": "val", "d5": "test"}
    assert manifest["view"].to_dict() == VIEWS
    assert {Image.open(out / rel).size for rel in manifest["image"]} == {(16, 16)}
    assert manifest.loc["d1", "image"] == "images/p10/p10000032/s50414267/d1.png"
    allowed = FINDINGS + IMPRESSION
    for dicom in ("d1", "d2"):
        sentences = mimic_cxr.split_sentences(manifest.loc[dicom, "text"])
        assert len(sentences) == 5 and set(sentences) <= set(allowed)
        assert sentences == sorted(sentences, key=allowed.index)  # report order kept
    assert manifest.loc["d3", "text"] == "No acute process."
    assert "Indication" not in " ".join(manifest["text"])

    same = mimic_cxr.prepare(tmp_path / "same", source, reports=reports, size=(16, 16), log=quiet)
    assert same["text"].tolist() == read_manifest(out)["text"].tolist()
    other = mimic_cxr.prepare(tmp_path / "other", source, reports=reports, size=(16, 16), seed=1, log=quiet)
    assert other["text"].tolist() != same["text"].tolist()


def test_mimic_cxr_views_hash_split_and_missing_files(tmp_path: Path) -> None:
    source, reports = fake_mimic(tmp_path)
    frontal = mimic_cxr.prepare(tmp_path / "pa", source, reports=reports, views=["PA"], size=(8, 8), log=quiet)
    assert sorted(frontal["dicom_id"].astype(str)) == ["d1", "d4", "d5"]
    hashed = mimic_cxr.prepare(tmp_path / "hash", source, reports=reports, split_source="hash",
                               fractions=(0.4, 0.3, 0.3), size=(8, 8), log=quiet)
    manifest = read_manifest(tmp_path / "hash")
    assert_subject_disjoint(manifest)
    assert hashed["split"].tolist() == [_common.split_of(s, 0, (0.4, 0.3, 0.3)) for s in manifest["subject_id"]]

    (reports / "files" / "p12" / "p12000012" / "s52222222.txt").unlink()
    with pytest.raises(FileNotFoundError, match="s52222222.txt"):
        mimic_cxr.prepare(tmp_path / "miss", source, reports=reports, log=quiet)
    kept = mimic_cxr.prepare(tmp_path / "skip", source, reports=reports, skip_missing=True, size=(8, 8), log=quiet)
    assert len(kept) == 4
    bad_split = tmp_path / "split.csv"
    bad_split.write_text("dicom_id,study_id,subject_id\nd1,50414267,10000032\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['split'\]"):
        mimic_cxr.prepare(tmp_path / "bad", source, reports=reports, split_csv=bad_split, log=quiet)
    with pytest.raises(FileNotFoundError, match=r"split csv not found .*mimic-cxr-2\.0\.0-split\.csv"):
        mimic_cxr.prepare(tmp_path / "nosplit", reports, log=quiet)
    (source / "mimic-cxr-2.0.0-chexpert.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"CheXpert label csv not found .*mimic-cxr-2\.0\.0-chexpert\.csv"):
        mimic_cxr.prepare(tmp_path / "nochex", source, reports=reports, log=quiet)


def test_mimic_report_parsing() -> None:
    assert mimic_cxr.findings_text(REPORT).startswith("Heart size is enlarged.")
    assert "Indication" not in mimic_cxr.findings_text(REPORT)
    no_headings = "FINAL REPORT\n INDICATION: cough.\n\n Small left effusion. Otherwise normal.\n"
    assert mimic_cxr.split_sentences(mimic_cxr.findings_text("FINAL REPORT\n Small left effusion.")) == [
        "Small left effusion."]
    assert mimic_cxr.findings_text(no_headings) == "Small left effusion. Otherwise normal."
    assert mimic_cxr.findings_text(" IMPRESSION: Stable.\n\n NOTIFICATION: Called Dr. ___.\n") == "Stable."
    assert mimic_cxr.split_sentences("1. First finding. 2. Second one.  ___.") == ["First finding.", "Second one."]
    assert mimic_cxr.sample_sentences(["a b c."] * 3, 5, "k") == "a b c. a b c. a b c."


# --------------------------------------------------------------------------- UK Biobank


def fake_ukb(tmp_path: Path) -> Path:
    """Four visits (eid 1000001 twice) of a 12x14x10 volume with brain only in z = 3..6."""
    source = tmp_path / "ukb"
    rng = np.random.default_rng(1)
    for visit in ("1000001_20252_2_0", "1000001_20252_3_0", "1000002_20252_2_0", "1000003_20252_2_0"):
        volume = np.zeros((12, 14, 10))
        volume[2:10, 2:12, 3:7] = rng.uniform(100, 200, (8, 10, 4))
        save_volume(source / visit / "T1" / "T1_brain_to_MNI.nii.gz", volume)
    return source


def test_ukbiobank_3d_volumes(tmp_path: Path) -> None:
    out = tmp_path / "out3d"
    ukbiobank.prepare(out, fake_ukb(tmp_path), mode="3d", size=(8, 10, 8), log=quiet)
    manifest = check_layout(out, 4)
    assert set(manifest["text"]) == {"T1-weighted image of a brain."}
    assert manifest["subject_id"].tolist() == ["1000001", "1000001", "1000002", "1000003"]
    assert_subject_disjoint(manifest)
    for rel in manifest["image"]:
        image = nib.load(str(out / rel))
        assert image.shape == (8, 10, 8) and image.header.get_zooms() == (1.0, 1.0, 1.0)
        assert 0.0 <= image.get_fdata().min() and image.get_fdata().max() <= 1.0
    assert ukbiobank.DEFAULT_SIZE == (160, 224, 160) and read_info(out)["image_size"] == [8, 10, 8]


def test_ukbiobank_2d_slices_skip_empty(tmp_path: Path) -> None:
    out = tmp_path / "out2d"
    ukbiobank.prepare(out, fake_ukb(tmp_path), mode="2d", size=(8, 10, 8), log=quiet)
    manifest = check_layout(out, 16)  # 4 visits x 4 slices with brain (z 3..6 -> 2..5 after the crop)
    assert sorted(set(manifest["slice"].astype(int))) == [2, 3, 4, 5]
    assert {Image.open(out / rel).size for rel in manifest["image"]} == {(10, 8)}
    assert set(manifest["text"]) == {"T1-weighted image of a brain."}
    assert_subject_disjoint(manifest)
    assert read_info(out)["image_size"] == [8, 10]


def test_ukbiobank_missing_files(tmp_path: Path) -> None:
    source = fake_ukb(tmp_path)
    (source / "1000003_20252_2_0" / "T1" / "T1_brain_to_MNI.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="1000003_20252_2_0"):
        ukbiobank.prepare(tmp_path / "a", source, log=quiet)
    kept = ukbiobank.prepare(tmp_path / "b", source, skip_missing=True, size=(8, 10, 8), log=quiet)
    assert len(kept) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No subject folders"):
        ukbiobank.prepare(tmp_path / "c", tmp_path / "empty", log=quiet)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ukbiobank.prepare(tmp_path / "d", tmp_path / "nowhere", log=quiet)


# --------------------------------------------------------------------------- command line


def test_module_help_runs_as_script() -> None:
    result = subprocess.run([sys.executable, "-m", "data_scripts.mednist", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--source" in result.stdout and "--md5" in result.stdout


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.split(".")[-1])
def test_every_script_has_help(module: object, capsys: pytest.CaptureFixture[str]) -> None:
    main: Callable[[list[str]], int] = getattr(module, "main")
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out
    assert callable(getattr(module, "prepare"))


def test_cli_runs_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_csaw(tmp_path)
    out = tmp_path / "out"
    assert csaw_m.main(["--out", str(out), "--source", str(root), "--size", "10", "8", "--quiet"]) == 0
    assert len(read_manifest(out)) == 6
    assert csaw_m.main(["--out", str(tmp_path / "x"), "--source", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
