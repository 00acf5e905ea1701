"""The throughput study runs as documented, from the repository root, on one core."""

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def test_it_prints_images_per_second_on_one_core() -> None:
    command = [sys.executable, "-m", "experiments.phantom_throughput"]
    options = ["--count", "8", "--size", "32", "--repeats", "1"]
    done = subprocess.run(
        command + options, cwd=REPOSITORY, capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("synthetic phantoms: ")
    assert "images/s at 32 px on one core" in done.stdout
