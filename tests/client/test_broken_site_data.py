"""A clinic whose export folder holds every kind of broken file, with `skip_bad = true`: the
real ClientApp answers every round, trains on the good images only and reports in each train
reply how many files it left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import radiograph_files  # registered by tests/conftest.py
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from PIL import Image

from client.client_app import build_client_app
from client.instructions import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, RoundInstructions
from client.model_state import phase_state, to_record
from client.site_config import load_site_config
from client.site_data import load_site_data
from hxr_model.errors import DataError
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


def ask(site: Path, message_type: str, phase: str) -> Message:
    """One round's message through the ClientApp a SuperNode would run for this site."""
    TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    config = FederationConfig(classes=CLASSES, model="hxr50", image_size=SIDE)
    instructions = RoundInstructions(
        server_round=1,
        phase=phase,
        model=config.model,
        image_size=SIDE,
        class_names=CLASSES,
        batch_size=8,
        gradcam_per_class=0,
    )
    content = RecordDict(
        {
            ARRAYS_KEY: to_record(phase_state(initial_state(config), phase)),
            CONFIG_KEY: ConfigRecord(instructions.to_config()),
        }
    )
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"site-config": str(site)},
        state=RecordDict(),
        run_config={},
    )
    return build_client_app()(Message(content, dst_node_id=7, message_type=message_type), context)


def test_a_site_skipping_broken_files_trains_and_counts_them(
    clinic: tuple[Path, int, int],
) -> None:
    site, good, broken = clinic
    # Without skip_bad the same folder is refused, naming the files: they really are broken.
    strict = load_site_config(site).model_copy(update={"skip_bad": False})
    with pytest.raises(DataError, match=f"{broken} bad file"):
        load_site_data(strict, CLASSES, SIDE, 0)

    prewarm = ask(site, "train", "prewarm")
    finetune = ask(site, "train", "finetune")
    evaluate = ask(site, "evaluate", "finetune")
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
