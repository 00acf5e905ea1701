"""What every data source lists before anything is decoded: one entry per image, plus the problems
already visible from the listing (missing files, bad manifest rows)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hxr_model.data.problems import FileProblem
from hxr_model.errors import DataError

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key putting `scanner-2` before `scanner-10` and `train/620` before `train/1306`."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


def normalise_split(name: str) -> str | None:
    """`train`, `val` (also `valid`, `validation`) or `test` in any case; None if none of them."""
    return _SPLIT_ALIASES.get(name.strip().lower())


@dataclass(frozen=True)
class Entry:
    """One image: a file to decode (`path`) or pixels a source already holds (`pixels`, uint8
    [H, W]). `name` identifies it in reports (path relative to the data root)."""

    name: str
    label: str
    split: str | None = None
    patient_id: str | None = None
    source: str | None = None
    path: Path | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Catalog:
    """A source's listing; `class_names` is the source's natural label order."""

    entries: list[Entry]
    class_names: list[str]
    problems: list[FileProblem] = field(default_factory=list)


def combine_catalogs(parts: list[tuple[str, Catalog]]) -> Catalog:
    """One listing of several sources, each given with its reference. Every name is prefixed
    with its source's reference (two sources may both hold `images/1.png`); classes are the
    union, in order of first appearance. Sources must all carry splits or none: entries without a
    split beside a source's official splits would belong to no split and be lost."""
    with_splits = [ref for ref, catalog in parts if any(e.split for e in catalog.entries)]
    if with_splits and len(with_splits) < len(parts):
        without = [ref for ref, _ in parts if ref not in with_splits]
        raise DataError(
            f"{', '.join(with_splits)} give train/val/test splits and {', '.join(without)} do "
            "not: combine sources that all carry splits, or none"
        )
    entries = [
        replace(entry, name=f"{ref}#{entry.name}")
        for ref, catalog in parts
        for entry in catalog.entries
    ]
    problems = [
        replace(problem, path=f"{ref}#{problem.path}")
        for ref, catalog in parts
        for problem in catalog.problems
    ]
    class_names = list(dict.fromkeys(name for _, catalog in parts for name in catalog.class_names))
    return Catalog(entries, class_names, problems)
