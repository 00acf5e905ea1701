"""Folders, manifests, MedMNIST files and phantoms through `load_splits` / `check_data`."""

from __future__ import annotations

import csv
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from radiograph_files import dicom_bytes, noise, png_bytes, quadrants, write_clinic_folder

import hxr_model.data.scan as scan_module
from hxr_model.data import RadiographDataset, check_data, load_splits
from hxr_model.data import medmnist as medmnist_module
from hxr_model.data.phantoms import PHANTOM_CLASSES, generate_phantoms, site_style
from hxr_model.data.refs import (
    DEFAULT_IMAGE_SIZE,
    FILE_IMAGE_SIZE,
    anchor_ref,
    default_image_size,
)
from hxr_model.errors import ConfigError, DataError

LABELS = {"normal": "normal", "pneumonia": "pneumonia"}


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_folder_with_split_folders_and_mixed_formats(tmp_path: Path) -> None:
    root = tmp_path / "data"
    files = {
        "train/normal/a.png": png_bytes(noise(1)),
        "train/normal/b.dcm": dicom_bytes(noise(2).astype(np.uint16), bits_stored=12),
        "train/PNEUMONIA/c.png": png_bytes(noise(3)),
        "train/PNEUMONIA/images/d.png": png_bytes(noise(4)),
        "test/normal/e.png": png_bytes(noise(5)),
        "test/PNEUMONIA/f.png": png_bytes(noise(6)),
        "train/normal/.DS_Store": b"\0\0junk",
        "README.txt": b"top-level files are not images of any class",
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    splits = load_splits(f"folder:{root}", 32)
    assert splits.class_names == ["PNEUMONIA", "normal"]
    # PNEUMONIA has an images/ folder, so c.png beside it is not part of the set.
    assert sorted(splits.train.names + splits.val.names) == [
        "train/PNEUMONIA/images/d.png",
        "train/normal/a.png",
        "train/normal/b.dcm",
    ]
    assert splits.test is not None and sorted(splits.test.names) == [
        "test/PNEUMONIA/f.png",
        "test/normal/e.png",
    ]
    image, label = splits.test[splits.test.names.index("test/normal/e.png")]
    assert image.dtype.is_floating_point and tuple(image.shape) == (1, 32, 32)
    assert label == 1 and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0


def test_broken_files_are_refused_by_name_or_skipped_and_listed(tmp_path: Path) -> None:
    clinic = tmp_path / "clinic"
    good, broken = write_clinic_folder(clinic)
    with pytest.raises(DataError) as refused:
        load_splits(f"folder:{clinic}", 32, label_map=LABELS)
    listed = {line.split(":")[0].strip() for line in str(refused.value).splitlines()[1:]}
    assert listed == set(broken)

    splits = load_splits(f"folder:{clinic}", 32, label_map=LABELS, skip_bad=True)
    assert {(p.path, p.kind) for p in splits.skipped} == set(broken.items())
    assert set(splits.train.names + splits.val.names + splits.test.names) == good


def test_a_refusal_names_twenty_files_and_counts_the_rest(tmp_path: Path) -> None:
    """A wrong label map on a big folder must not print thousands of lines."""
    folder = tmp_path / "clinic"
    (folder / "normal").mkdir(parents=True)
    for index in range(25):
        (folder / "normal" / f"{index:02d}.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as refused:
        load_splits(f"folder:{folder}", 32)
    lines = str(refused.value).splitlines()
    assert lines[0].startswith("25 bad file(s)")
    assert [line.split(":")[0].strip() for line in lines[1:21]] == [
        f"normal/{index:02d}.png" for index in range(20)
    ]
    assert lines[21:] == ["  ... and 5 more (hxr data check lists them all)"]


def test_check_reports_every_problem_and_counts_the_rest(tmp_path: Path) -> None:
    clinic = tmp_path / "clinic"
    good, broken = write_clinic_folder(clinic)
    report = check_data(f"folder:{clinic}", 32, label_map=LABELS)
    assert not report.ok
    assert {(p.path, p.kind) for p in report.problems} == set(broken.items())
    assert report.counts == {"unsplit": {"normal": 3, "pneumonia": 3}}
    assert report.usable == len(good)
    assert report.to_dict()["ok"] is False


def test_unsplit_manifest_splits_by_patient_seeded_and_stratified(tmp_path: Path) -> None:
    rows = []
    for patient in range(30):
        label = ("normal", "pneumonia")[patient % 2]
        for view in range(2):
            name = f"p{patient}_{view}.png"
            (tmp_path / name).write_bytes(png_bytes(noise(100 + 2 * patient + view, side=32)))
            rows.append({"path": name, "label": label, "patient_id": f"P{patient}", "x": "?"})
    ref = f"csv:{write_manifest(tmp_path / 'manifest.csv', rows)}"
    splits = load_splits(ref, 32, seed=3, val_fraction=0.2, test_fraction=0.2)
    assert splits.test is not None
    parts = [splits.train, splits.val, splits.test]
    patients = [set(part.patient_ids) for part in parts]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert sum(len(part) for part in parts) == 60
    # 30 images per class; 20 % is 6 images = 3 patients of each class in val and in test.
    for part in parts[1:]:
        assert part.class_counts().tolist() == [6, 6]
    again = load_splits(ref, 32, seed=3, val_fraction=0.2, test_fraction=0.2)
    assert again.val.names == splits.val.names
    other = load_splits(ref, 32, seed=4, val_fraction=0.2, test_fraction=0.2)
    assert other.val.names != splits.val.names


def test_manifest_problems_name_rows_and_files(tmp_path: Path) -> None:
    for index in range(4):
        (tmp_path / f"{index}.png").write_bytes(png_bytes(noise(index)))
    (tmp_path / "copy.png").write_bytes(png_bytes(noise(0)))
    rows = [
        {"path": "0.png", "label": "a", "split": "train", "patient_id": "P1"},
        {"path": "1.png", "label": "b", "split": "val", "patient_id": "P1"},
        {"path": "2.png", "label": "a", "split": "holdout", "patient_id": "P2"},
        {"path": "3.png", "label": "", "split": "train", "patient_id": "P3"},
        {"path": "gone.png", "label": "a", "split": "test", "patient_id": "P4"},
        {"path": "copy.png", "label": "b", "split": "test", "patient_id": "P5"},
    ]
    ref = f"csv:{write_manifest(tmp_path / 'm.csv', rows)}"
    report = check_data(ref, 32)
    kinds = {p.path: p.kind for p in report.problems}
    assert kinds == {
        "1.png": "patient-crosses-splits",
        "2.png": "bad-row",
        "3.png": "bad-row",
        "gone.png": "missing",
        "copy.png": "duplicate",
    }
    copy = next(p for p in report.problems if p.path == "copy.png")
    assert "0.png" in copy.reason and "across splits" in copy.reason
    assert report.counts["train"] == {"a": 1, "b": 0}


def test_manifest_without_label_column_is_a_one_line_error(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.png", "diagnosis": "x"}])
    with pytest.raises(DataError, match=r"missing column\(s\) label"):
        load_splits(f"csv:{manifest}")


def write_npz(path: Path, **splits: tuple[np.ndarray, np.ndarray]) -> Path:
    arrays = {}
    for split, (images, labels) in splits.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(path, **arrays)
    return path


def mnist_like(count: int, seed: int, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    return images, (np.arange(count) % classes).reshape(-1, 1).astype(np.uint8)


def test_medmnist_without_val_carves_it_from_train(tmp_path: Path) -> None:
    path = write_npz(
        tmp_path / "pneumoniamnist.npz", train=mnist_like(100, 1), test=mnist_like(20, 2)
    )
    splits = load_splits(f"medmnist:{path}", 28, val_fraction=0.2)
    assert splits.class_names == ["normal", "pneumonia"]
    assert splits.val.class_counts().tolist() == [10, 10]
    assert len(splits.train) == 80 and splits.test is not None and len(splits.test) == 20
    index = splits.test.names.index("pneumoniamnist.npz:test/3")
    original = np.load(path)["test_images"][3]
    np.testing.assert_array_equal(splits.test.image_array(index), original)


def test_medmnist_members_that_would_inflate_past_the_limit_are_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_npz(tmp_path / "big.npz", train=mnist_like(100, 1), val=mnist_like(9, 2))
    load_splits(f"medmnist:{path}", 28)  # within the limit
    monkeypatch.setattr(medmnist_module, "MAX_MEMBER_BYTES", 28 * 28 * 50)
    monkeypatch.setattr(np, "load", lambda *args, **kwargs: pytest.fail("decompressed"))
    with pytest.raises(DataError, match=r"member train_images.npy would inflate to"):
        load_splits(f"medmnist:{path}", 28)


def test_medmnist_train_val_only_has_no_test_and_resizes(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "other.npz", train=mnist_like(30, 1, 3), val=mnist_like(9, 2, 3))
    splits = load_splits(f"medmnist:{path}", 32)
    assert splits.test is None and splits.class_names == ["0", "1", "2"]
    assert (len(splits.train), len(splits.val)) == (30, 9)
    assert splits.train.images.shape == (30, 32, 32)


def test_duplicates_in_a_published_release_are_kept_and_reported(tmp_path: Path) -> None:
    # The official PneumoniaMNIST file has duplicates, some across train and val: its splits
    # define the benchmark, so they are warnings (named, counted), not refused files.
    train, val = mnist_like(30, 1), mnist_like(10, 2)
    val[0][3] = train[0][7]
    path = write_npz(tmp_path / "pneumoniamnist.npz", train=train, val=val)
    splits = load_splits(f"medmnist:{path}", 28)
    assert (len(splits.train), len(splits.val)) == (30, 10) and not splits.skipped
    assert [w.path for w in splits.warnings] == ["pneumoniamnist.npz:val/3"]
    assert "leaking across splits" in splits.warnings[0].reason
    report = check_data(f"medmnist:{path}", 28)
    assert report.ok and [w.kind for w in report.warnings] == ["duplicate"]


def test_medmnist_rgb_becomes_grey_and_multilabel_is_refused(tmp_path: Path) -> None:
    rgb = np.zeros((4, 28, 28, 3), np.uint8)
    rgb[..., 0] = np.array([0, 10, 20, 30], np.uint8)[:, None, None]
    rgb[..., 1] = 100  # luma 0.299 R + 0.587 G: 58.7, 61.69, 64.68, 67.67
    val = rgb[:2].copy()
    val[..., 2] = 200
    labels = np.array([[0], [1], [0], [1]], np.uint8)
    path = write_npz(tmp_path / "rgb.npz", train=(rgb, labels), val=(val, labels[:2]))
    splits = load_splits(f"medmnist:{path}", 28)
    assert sorted(int(image[0, 0]) for image in splits.train.images) == [59, 62, 65, 68]
    multi = write_npz(tmp_path / "chest.npz", train=(rgb[..., 0], np.zeros((4, 14), np.uint8)))
    with pytest.raises(DataError, match="multi-label"):
        load_splits(f"medmnist:{multi}")


def test_pneumoniamnist_offline_fails_at_once_naming_url_and_local_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(medmnist_module.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as refused:
        load_splits("pneumoniamnist")
    assert medmnist_module.PNEUMONIAMNIST_URL in str(refused.value)
    assert "medmnist:" in str(refused.value)


class FakeResponse:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self, size: int) -> bytes:
        chunk, self.payload = self.payload[:size], self.payload[size:]
        return chunk


def test_pneumoniamnist_download_is_md5_checked_and_cached(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = write_npz(tmp_path / "p.npz", train=mnist_like(20, 1)).read_bytes()
    downloads: list[str] = []

    def serve(url: str, timeout: float) -> FakeResponse:
        downloads.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(medmnist_module.urllib.request, "urlopen", serve)
    with pytest.raises(DataError, match="MD5"):
        load_splits("pneumoniamnist", 28)
    assert not (cache_dir / "medmnist" / "pneumoniamnist.npz").exists()

    digest = medmnist_module._md5(tmp_path / "p.npz")
    monkeypatch.setattr(medmnist_module, "PNEUMONIAMNIST_MD5", digest)
    first = load_splits("pneumoniamnist", 28)
    assert first.class_names == ["normal", "pneumonia"]
    assert len(first.train) + len(first.val) == 20
    load_splits("pneumoniamnist", 28)
    assert len(downloads) == 2  # the failed try and the first good one; then the cache


def test_second_load_reads_the_cache_instead_of_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    for index in range(6):
        (data / ("a", "b")[index % 2]).mkdir(parents=True, exist_ok=True)
        (data / ("a", "b")[index % 2] / f"{index}.dcm").write_bytes(
            dicom_bytes(quadrants([index, 100, 200, 300 + index]))
        )
    first = load_splits(f"folder:{data}", 32)
    decoded: list[str] = []
    real_decode = scan_module.decode_image_bytes

    def counting(content: bytes, name: str = "") -> np.ndarray:
        decoded.append(name)
        return real_decode(content, name)

    monkeypatch.setattr(scan_module, "decode_image_bytes", counting)
    second = load_splits(f"folder:{data}", 32)
    assert decoded == []
    np.testing.assert_array_equal(second.train.images, first.train.images)
    load_splits(f"folder:{data}", 16)  # another size is another cache entry
    assert len(decoded) == 6


def test_unsplit_source_uses_both_fractions_and_test_can_be_off() -> None:
    splits = load_splits("synthetic:120", 32, val_fraction=0.25, test_fraction=0.25)
    assert splits.test is not None
    # 20 phantoms per class: 5 to val and 5 to test in each.
    assert splits.val.class_counts().tolist() == [5] * 6
    assert splits.test.class_counts().tolist() == [5] * 6
    assert load_splits("synthetic:120", 32, test_fraction=0).test is None
    with pytest.raises(ConfigError):
        load_splits("synthetic:120", 32, val_fraction=0.6, test_fraction=0.4)


def test_synthetic_sites_are_scanner_sources_with_lesion_masks() -> None:
    splits = load_splits("synthetic:90:3", 32, val_fraction=0.2, test_fraction=0)
    sources = splits.train.sources + splits.val.sources
    assert {name: sources.count(name) for name in set(sources)} == {
        "scanner-0": 30,
        "scanner-1": 30,
        "scanner-2": 30,
    }
    again = load_splits("synthetic:90:3", 32, val_fraction=0.2, test_fraction=0)
    np.testing.assert_array_equal(again.train.images, splits.train.images)


def test_synthetic_images_labels_and_masks_are_the_phantoms() -> None:
    whole = load_splits("synthetic:30:2", 32, val_fraction=0, test_fraction=0).train
    for site in range(2):
        batch = generate_phantoms(15, 32, seed=site, style=site_style(site))
        rows = [i for i, source in enumerate(whole.sources) if source == f"scanner-{site}"]
        np.testing.assert_array_equal(whole.images[rows], batch.images)
        np.testing.assert_array_equal(whole.labels[rows], batch.labels)
        assert whole.masks is not None
        np.testing.assert_array_equal(whole.masks[rows], batch.masks)
    assert whole.class_names == list(PHANTOM_CLASSES)
    assert whole.lesion_mask(0) is not None


@pytest.mark.parametrize("ref", ["synthetic:0", "synthetic:10:11", "synthetic:a", "imagenet:x"])
def test_bad_references_are_data_errors(ref: str) -> None:
    with pytest.raises(DataError):
        load_splits(ref, 32)


def test_dataset_items_subset_and_tensors() -> None:
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    masks = images % 2 == 0
    dataset = RadiographDataset(
        images, np.array([1, 0, 1]), ["a", "b"], patient_ids=["x", None, "y"], masks=masks
    )
    image, label = dataset[2]
    assert label == 1 and tuple(image.shape) == (1, 4, 4)
    assert float(image[0, 0, 0]) == pytest.approx(32 / 255)
    part = dataset.subset([2, 0])
    assert part.patient_ids == ["y", "x"] and part.labels.tolist() == [1, 1]
    np.testing.assert_array_equal(part.lesion_mask(0), masks[2])
    batch, labels = part.tensors()
    assert tuple(batch.shape) == (2, 1, 4, 4) and labels.tolist() == [1, 1]
    assert dataset.class_counts().tolist() == [1, 2]


def test_default_image_size_is_a_medmnist_files_own_resolution_and_clinical_for_files(
    tmp_path: Path,
) -> None:
    path = write_npz(tmp_path / "pneumoniamnist.npz", train=mnist_like(4, 1))
    assert default_image_size(f"medmnist:{path}", tmp_path) == 28
    assert default_image_size("synthetic:10", tmp_path) == DEFAULT_IMAGE_SIZE == 64
    for ref in ("csv:m.csv", "folder:xr", f"medmnist:{path}+folder:xr"):
        assert default_image_size(ref, tmp_path) == FILE_IMAGE_SIZE == 128


def test_joined_references_split_by_patient_across_both_sources(tmp_path: Path) -> None:
    """Two hospitals' manifests that share patients (the same child in both) load as one
    dataset: every image is kept, classes are the union, and no patient straddles two splits."""
    refs = []
    for site, labels in (("a", ("normal", "pneumonia")), ("b", ("pneumonia", "covid"))):
        folder = tmp_path / site
        folder.mkdir()
        rows = []
        for patient in range(12):
            name = f"{patient}.png"
            seed = 1000 * len(refs) + patient
            (folder / name).write_bytes(png_bytes(noise(seed, side=32)))
            rows.append({"path": name, "label": labels[patient % 2], "patient_id": f"P{patient}"})
        refs.append(f"csv:{write_manifest(folder / 'manifest.csv', rows)}")
    splits = load_splits("+".join(refs), 32, seed=1, val_fraction=0.25, test_fraction=0.25)
    assert splits.test is not None
    parts = [splits.train, splits.val, splits.test]
    assert sum(len(part) for part in parts) == 24
    assert splits.class_names == ["normal", "pneumonia", "covid"]
    patients = [set(part.patient_ids) for part in parts]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    names = [name for part in parts for name in part.names]
    assert f"{refs[0]}#0.png" in names and f"{refs[1]}#0.png" in names
    assert anchor_ref("csv:a.csv+folder:x", tmp_path) == f"csv:{tmp_path}/a.csv+folder:{tmp_path}/x"


def test_joining_a_source_with_splits_to_one_without_is_refused(tmp_path: Path) -> None:
    rows = [{"path": "x.png", "label": "normal", "split": "train"}]
    (tmp_path / "x.png").write_bytes(png_bytes(noise(5, side=32)))
    split_ref = f"csv:{write_manifest(tmp_path / 'split.csv', rows)}"
    with pytest.raises(DataError, match="give train/val/test splits and synthetic:8 do not"):
        load_splits(f"{split_ref}+synthetic:8", 32)
