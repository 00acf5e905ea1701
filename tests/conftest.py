"""Suite-wide settings: one intra-op thread per test process, and the shared file builders.

On a 2-core machine torch's default thread pool oversubscribes the cores as soon as anything else
runs (measured: a small training test took 73 s with the default and 7 s with one thread).

Tests run in pytest's importlib mode (no test folder on sys.path), so the real-file builders in
`hxr_model/data/radiograph_files.py` are registered here as `radiograph_files`, before any test
module imports them.
"""

import importlib.util
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

_spec = importlib.util.spec_from_file_location(
    "radiograph_files", Path(__file__).parent / "hxr_model" / "data" / "radiograph_files.py"
)
assert _spec is not None and _spec.loader is not None
radiograph_files = importlib.util.module_from_spec(_spec)
sys.modules["radiograph_files"] = radiograph_files
_spec.loader.exec_module(radiograph_files)
