"""Radiograph data: one dataset interface over clinic exports, public sets and built-in phantoms.

Data references (the same string in `hxr train/evaluate/simulate`, site configs and run records):

- `synthetic[:N[:SITES]]`: N built-in procedural chest phantoms (default 600), six classes, with
  lesion masks; with SITES, SITES equal groups, each in its own scanner style, `source` scanner-K.
- `medmnist:PATH`: a MedMNIST `.npz` (`{train,val,test}_images` / `_labels`, any subset).
- `pneumoniamnist`: the official PneumoniaMNIST file, downloaded once into the cache, MD5-checked.
- `folder:DIR`: `DIR/CLASS/*` or `DIR/{train,val,test}/CLASS/*` (the Kaggle layouts; only
  `CLASS/images/` where a class folder has one).
- `csv:FILE`: manifest `path,label[,split,patient_id,source]`, paths relative to FILE.

Files may be DICOM (MONOCHROME1 inverted; rescale, VOI LUT or window applied; 8-16 bit), PNG
(8/16 bit), JPEG or anything else Pillow reads; colour becomes grey. Each image is padded to a
square (or centre-cropped) and resized to S x S, then cached under `$HXR_CACHE_DIR` (default
`~/.cache/hxr`) by file content, so later runs never decode it again.

Nothing is dropped silently: unreadable, truncated, empty, non-image, tiny or oversized files,
DICOMs without pixels, labels outside the label map, duplicates and patients crossing splits are
`FileProblem`s. `load_splits` refuses a dataset with any (listing each) unless `skip_bad`, and
then returns them in `DataSplits.skipped`; `check_data` (`hxr data check`) reports them all.
Splits and partitions keep each patient on one side.
"""

from hxr_model.data.check import DataReport, check_data
from hxr_model.data.dataset import RadiographDataset
from hxr_model.data.partition import label_skew, partition, partition_table
from hxr_model.data.problems import FileProblem
from hxr_model.data.resizing import ResizeMode
from hxr_model.data.splits import DataSplits, load_splits

__all__ = [
    "DataReport",
    "DataSplits",
    "FileProblem",
    "RadiographDataset",
    "ResizeMode",
    "check_data",
    "label_skew",
    "load_splits",
    "partition",
    "partition_table",
]
