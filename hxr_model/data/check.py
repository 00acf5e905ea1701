"""`hxr data check`: every problem in a dataset by file, and what is usable per class and split."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hxr_model.data.catalog import SPLITS
from hxr_model.data.problems import FileProblem
from hxr_model.data.resizing import ResizeMode
from hxr_model.data.scan import scan
from hxr_model.text_table import format_table

UNSPLIT = "unsplit"


@dataclass
class DataReport:
    """`counts[split][class]` counts usable images; split is train/val/test as the source gave
    them, or `unsplit` for sources without splits."""

    ref: str
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    problems: list[FileProblem]
    warnings: list[FileProblem]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def usable(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def table(self) -> str:
        splits = list(self.counts)
        rows: list[list[object]] = [
            [
                name,
                *(self.counts[split][name] for split in splits),
                sum(self.counts[split][name] for split in splits),
            ]
            for name in self.class_names
        ]
        rows.append(["total", *(sum(self.counts[s].values()) for s in splits), self.usable])
        return format_table(["class", *splits, "total"], rows)

    def to_dict(self) -> dict[str, object]:
        return {
            "ref": self.ref,
            "ok": self.ok,
            "usable_images": self.usable,
            "class_names": self.class_names,
            "counts": self.counts,
            "problems": [asdict(problem) for problem in self.problems],
            "warnings": [asdict(warning) for warning in self.warnings],
        }


def check_data(
    ref: str,
    image_size: int = 64,
    *,
    resize: ResizeMode = "pad",
    label_map: dict[str, str] | None = None,
    cache_dir: Path | None = None,
) -> DataReport:
    """Read every image of `ref` (filling the cache that training will reuse) and report."""
    result = scan(ref, image_size, resize=resize, label_map=label_map, cache_dir=cache_dir)
    dataset = result.dataset
    present = [split for split in (*SPLITS, None) if split in result.splits] or [None]
    splits = np.array(result.splits, dtype=object)
    counts = {
        split or UNSPLIT: dict(
            zip(
                dataset.class_names,
                np.bincount(
                    dataset.labels[splits == split], minlength=len(dataset.class_names)
                ).tolist(),
                strict=True,
            )
        )
        for split in present
    }
    return DataReport(ref, dataset.class_names, counts, result.problems, result.warnings)
