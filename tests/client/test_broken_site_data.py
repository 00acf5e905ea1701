"""A clinic whose export folder holds every kind of broken file, with `skip_bad = true`: the
real ClientApp answers every round, trains on the good images only and reports in each train
reply how many files it left out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import radiograph_files  # registered by tests/conftest.py
from flwr.app import ConfigRecord, Message, RecordDict
from PIL import Image

from client.site_config import load_site_config
from client.site_data import load_site_data
from hxr_model.errors import DataError
from protocol.arrays import to_record
from protocol.records import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY
from protocol.schedule import phase_state
from server.federation import initial_state
from server.run_config import FederationConfig

CLASSES = ["normal", "pneumonia"]
SIDE = 32
EXTRA_PER_CLASS = 10  # beyond write_clinic_folder's three, so every split has images


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HXR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def clinic(tmp_path: Path) -> tuple[Path, int, int]:
    """(site TOML, good images, broken files) for a clinic folder under tmp_path."""
    root = tmp_path / "exports"
    good, broken = radiograph_files.write_clinic_folder(root)
    for index, name in enumerate(CLASSES * EXTRA_PER_CLASS):
        Image.fromarray(radiograph_files.noise(100 + index)).save(root / name / f"x{index}.png")
    site = tmp_path / "site.toml"
    site.write_text(
        f'name = "ward-7"\ndata = "folder:{root}"\nskip_bad = true\ndevice = "cpu"\n'
        'privacy = "none"\n[label_map]\nnormal = "normal"\npneumonia = "pneumonia"\n'
    )
    return site, len(good) + len(CLASSES) * EXTRA_PER_CLASS, len(broken)


def round_content(phase: str) -> RecordDict:
    """What the server sends a clinic in a round of `phase`: the weights and instructions."""
    config = FederationConfig(
        classes=CLASSES, model="hxr50", image_size=SIDE, batch_size=8, gradcam_per_class=0
    )
    instructions = config.round_instructions(1, phase)
    return RecordDict(
        {
            ARRAYS_KEY: to_record(phase_state(initial_state(config), phase)),
            CONFIG_KEY: ConfigRecord(instructions.to_config()),
        }
    )


def test_a_site_skipping_broken_files_trains_and_counts_them(
    clinic: tuple[Path, int, int], send_to_site: Callable[[Path, RecordDict, str], Message]
) -> None:
    site, good, broken = clinic
    # Without skip_bad the same folder is refused, naming the files: they really are broken.
    strict = load_site_config(site).model_copy(update={"skip_bad": False})
    with pytest.raises(DataError, match=f"{broken} bad file"):
        load_site_data(strict, CLASSES, SIDE)

    prewarm = send_to_site(site, round_content("prewarm"), "train")
    finetune = send_to_site(site, round_content("finetune"), "train")
    evaluate = send_to_site(site, round_content("finetune"), "evaluate")
    assert not any(reply.has_error() for reply in (prewarm, finetune, evaluate))
    for reply in (prewarm, finetune):
        assert reply.content[METRICS_KEY]["skipped-files"] == broken == 8
    # Pre-warming sees train + val, evaluation the test split: together every good image.
    seen = (
        prewarm.content[METRICS_KEY]["num-examples"] + evaluate.content[METRICS_KEY]["num-examples"]
    )
    assert seen == good
    assert (
        0
        < finetune.content[METRICS_KEY]["num-examples"]
        < prewarm.content[METRICS_KEY]["num-examples"]
    )
    assert np.isfinite(finetune.content[METRICS_KEY]["train-loss"])
