"""Train / validation / test splits that never put one patient on both sides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hxr_model.data.dataset import RadiographDataset
from hxr_model.data.problems import LISTED_PROBLEMS, FileProblem, describe_problems
from hxr_model.data.resizing import ResizeMode
from hxr_model.data.scan import scan
from hxr_model.errors import ConfigError, DataError

# One seed drives numpy (any non-negative integer) and torch (below 2**64) alike.
MAX_SEED = 2**64 - 1


@dataclass
class DataSplits:
    """`skipped` lists the bad files left out under `skip_bad` so runs can count them;
    `warnings` the images kept but worth knowing about (duplicates in a published release)."""

    train: RadiographDataset
    val: RadiographDataset
    test: RadiographDataset | None
    class_names: list[str]
    skipped: list[FileProblem]
    warnings: list[FileProblem] = field(default_factory=list)


def load_splits(
    ref: str,
    image_size: int = 64,
    *,
    skip_bad: bool = False,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    resize: ResizeMode = "pad",
    label_map: dict[str, str] | None = None,
    cache_dir: Path | None = None,
    carve_missing_test: bool = False,
) -> DataSplits:
    """Load `ref` and split it by patient.

    A source without splits is split seeded, stratified and patient-grouped into
    train/val/test by the two fractions (test is None when `test_fraction` is 0). A source with
    splits keeps them; a missing val split is carved from train (`val_fraction` of it) and a
    missing test split stays None, or with `carve_missing_test` is carved from train too
    (`test_fraction` of it): a federation's pooled test split must exist, unseen by training and
    tuning, even where a file ships only train and val. Bad files raise DataError listing each
    one, unless `skip_bad`, which leaves them out and lists them in `skipped`.
    """
    check_seed(seed)
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val and test fractions must be >= 0 and sum below 1, got {val_fraction} and "
            f"{test_fraction}"
        )
    result = scan(ref, image_size, resize=resize, label_map=label_map, cache_dir=cache_dir)
    if result.problems and not skip_bad:
        raise DataError(
            f"{len(result.problems)} bad file(s) in {ref} (fix them, or pass --skip-bad to leave "
            f"them out and count them):\n{describe_problems(result.problems, LISTED_PROBLEMS)}"
        )
    dataset = result.dataset
    if not len(dataset):
        raise DataError(f"{ref}: no usable images")
    splits = np.array(result.splits, dtype=object)
    if all(split is None for split in result.splits):
        train, val, test = grouped_split(dataset, [val_fraction, test_fraction], seed)
        test_part: np.ndarray | None = test if test_fraction > 0 else None
    else:
        train, val = (np.flatnonzero(splits == name) for name in ("train", "val"))
        if not val.size:
            kept, carved = grouped_split(dataset.subset(train), [val_fraction], seed)
            train, val = train[kept], train[carved]
        test_part = np.flatnonzero(splits == "test") if "test" in result.splits else None
        if test_part is None and carve_missing_test and test_fraction > 0:
            kept, carved = grouped_split(dataset.subset(train), [test_fraction], seed)
            train, test_part = train[kept], train[carved]
    return DataSplits(
        train=dataset.subset(train),
        val=dataset.subset(val),
        test=None if test_part is None else dataset.subset(test_part),
        class_names=dataset.class_names,
        skipped=result.problems,
        warnings=result.warnings,
    )


def check_seed(seed: int) -> None:
    """numpy refuses negative seeds and torch ones past 64 bits, deep inside a run; say so
    first, naming the value."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to 2**64 - 1, got {seed}")


def patient_groups(dataset: RadiographDataset) -> list[np.ndarray]:
    """Indices per patient in order of first appearance; an image without a patient id is its
    own group."""
    groups: dict[object, list[int]] = {}
    for index, patient in enumerate(dataset.patient_ids):
        groups.setdefault(index if patient is None else patient, []).append(index)
    return [np.array(members, dtype=np.int64) for members in groups.values()]


def group_labels(dataset: RadiographDataset, groups: Sequence[np.ndarray]) -> np.ndarray:
    """Each group's most frequent label (lowest class index on ties)."""
    return np.array(
        [np.bincount(dataset.labels[group]).argmax() for group in groups], dtype=np.int64
    )


def grouped_split(
    dataset: RadiographDataset, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Sorted index arrays [rest, part 1, part 2, ...]: part k gets about fractions[k-1] of every
    class's images, in whole patients (stratified by each patient's most frequent label)."""
    rng = np.random.default_rng(seed)
    groups = patient_groups(dataset)
    labels = group_labels(dataset, groups)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for label in range(len(dataset.class_names)):
        members = [groups[i] for i in rng.permutation(np.flatnonzero(labels == label))]
        total = sum(len(group) for group in members)
        targets = [round(fraction * total) for fraction in fractions]
        filled = [0] * len(fractions)
        for group in members:
            part = next((k for k, target in enumerate(targets) if filled[k] < target), None)
            if part is None:
                parts[0].append(group)
            else:
                filled[part] += len(group)
                parts[part + 1].append(group)
    return [join_groups(part) for part in parts]


def join_groups(groups: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted indices of several groups (an empty int64 array for none)."""
    return np.sort(np.concatenate(groups)) if groups else np.zeros(0, dtype=np.int64)
