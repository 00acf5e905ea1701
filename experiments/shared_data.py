"""The real data beside the project (never copied into it) and the `--data-root` option."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

# Relative to the directory the study runs from, the repository root in every documented command.
DEFAULT_DATA_ROOT = "../shared/data"


@dataclass(frozen=True)
class SharedDataset:
    """A dataset under the data root, with the image size and label map the studies read it at."""

    reader: str
    file: str
    image_size: int
    label_map: dict[str, str] | None = None

    def ref(self, data_root: Path) -> str:
        """The data reference that `load_splits` and `hxr simulate --data` take."""
        return f"{self.reader}:{data_root / self.file}"


KERMANY_CLASSES = {"normal": "normal", "bacterial": "bacterial", "viral": "viral"}
SHARED_DATASETS = {
    "pneumoniamnist": SharedDataset("medmnist", "pneumoniamnist/pneumoniamnist_trainval.npz", 28),
    "cxr4": SharedDataset("csv", "cxr4/manifest.csv", 64),
    # The Kermany subset: no confound between disease and hospital (see the data's README).
    "cxr4-kermany": SharedDataset("csv", "cxr4/manifest.csv", 64, KERMANY_CLASSES),
    # The same hospital's radiographs processed differently (224 px, aspect ratio squashed).
    "kermany224": SharedDataset("csv", "kermany224/manifest.csv", 64, KERMANY_CLASSES),
}


def add_data_root_option(parser: argparse.ArgumentParser) -> None:
    """`--data-root DIR`, made absolute at once: run folders record the references they read."""
    parser.add_argument(
        "--data-root",
        type=lambda text: Path(text).resolve(),
        default=DEFAULT_DATA_ROOT,
        help=f"folder holding the shared datasets (default: {DEFAULT_DATA_ROOT})",
    )
