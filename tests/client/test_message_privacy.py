"""What leaves a clinic: every reply of a real federated run, searched for the clinic's secrets.

Three clinics, one per Grad-CAM privacy policy, hold chest "radiographs" of pure noise (every
image unique, so any copy of one is recognisable at any scale) listed in a CSV manifest with
distinctive patient ids, file names, folder, manifest and hospital names, plus one corrupt file
the sites skip. The server's federation code runs a pre-warm and a fine-tuning round against the
real ClientApp over the in-process grid of tests/server (each clinic a partition of the manifest,
as `hxr simulate`'s run config names it), and the grid keeps every message the sites send back
(train in both phases, BatchNorm statistics, evaluate) exactly as the server receives it. Each
reply is searched

- as the bytes a SuperNode would push (the content-free message protobuf, then every record and
  array, deflated as Flower sends them) for every secret string and for raw pixel rows;
- as decoded arrays, every row of every array correlated with every image at its own size and
  rescaled as the data layer rescales (input size, half, quarter).

Only `overlay` clinics may send images, and only downscaled below the model's input size.
A failing site is covered separately with the real ClientApp: its error must not carry details.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message.message import remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from PIL import Image

from client.client_app import SiteFailure, build_client_app
from client.site_config import SiteConfig, load_site_config, site_from_node_config
from client.site_data import load_site_data
from hxr_model.data.resizing import to_square
from hxr_model.errors import ConfigError, DataError
from protocol.arrays import to_record
from protocol.records import (
    ARRAYS_KEY,
    CONFIG_KEY,
    GRADCAM_ARRAYS_KEY,
    METRICS_KEY,
    SITE_KEY,
    STATISTICS_MESSAGE,
    PrivacyPolicy,
)
from protocol.schedule import phase_state
from server.federation import initial_state, run_federation
from server.run_config import FederationConfig

# The in-process grid lives with the server's tests; tests/ is not a package, so load it by path.
_spec = importlib.util.spec_from_file_location(
    "server_test_grids", Path(__file__).parents[1] / "server" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
grids = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = grids
_spec.loader.exec_module(grids)

RAW_SIDE = 64  # the files' size
INPUT_SIDE = 32  # the model's input: what the data layer makes of the files
SIDES = (RAW_SIDE, INPUT_SIDE, INPUT_SIDE // 2, INPUT_SIDE // 4)
PER_SPLIT = {"train": 12, "val": 4, "test": 4}
HOSPITALS = ("osprey-general", "heron-childrens", "egret-county")
# Site k of the simulation (k-th hospital in sorted order: egret, heron, osprey) shares this.
POLICIES: tuple[PrivacyPolicy, ...] = ("none", "heatmap", "overlay")
FOLDER = "kestrel-ward-exports"
MANIFEST = "kestrel-ward-manifest.csv"
BROKEN = "scan-osprey-broken-quokka.png"
CLASSES = ["normal", "pneumonia"]
# A copy of an image correlates near 1 with it; unrelated arrays of >= 64 values essentially
# never reach this (|r| > 0.9 by chance is below 1e-20 at 64 values).
SAME_IMAGE = 0.9


@dataclass
class Clinics:
    """The shared data set on disk and everything about it that must stay at the sites."""

    root: Path
    manifest: Path
    images: list[np.ndarray] = field(default_factory=list)  # uint8 [RAW_SIDE, RAW_SIDE]
    origins: list[tuple[str, str]] = field(default_factory=list)  # (hospital, split) per image
    files: list[Path] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def indices(self, hospital: str, split: str) -> set[int]:
        return {i for i, origin in enumerate(self.origins) if origin == (hospital, split)}

    @property
    def reference(self) -> dict[int, np.ndarray]:
        """side -> every image at that side, flattened, centred and scaled to unit length."""
        table = {}
        for side in SIDES:
            rows = np.stack(
                [to_square(image.astype(np.float32) / 255.0, side).ravel() for image in self.images]
            ).astype(np.float64)
            rows -= rows.mean(axis=1, keepdims=True)
            table[side] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return table

    def needles(self) -> dict[str, bytes]:
        """What no reply's bytes may contain, by what it is: every secret string, the middle
        pixel row of every image as its file holds it and as the model sees it, and 64 bytes
        from the middle of every image file (its compressed pixels)."""
        found = {f"'{secret}'": secret.encode() for secret in self.secrets}
        for index, (image, path) in enumerate(zip(self.images, self.files, strict=True)):
            for side in (RAW_SIDE, INPUT_SIDE):
                row = to_square(image.astype(np.float32) / 255.0, side)[side // 2]
                found[f"pixels of image {index} at {side} px"] = row.tobytes()
            data = path.read_bytes()
            found[f"bytes of image file {index}"] = data[len(data) // 2 : len(data) // 2 + 64]
        return found


def write_clinics(root: Path) -> Clinics:
    """The hospitals' images under one manifest (source = hospital, one patient per image)."""
    folder = root / FOLDER
    folder.mkdir(parents=True)
    clinics = Clinics(root, folder / MANIFEST)
    rng = np.random.default_rng(20260)
    rows = []
    for hospital in HOSPITALS:
        for split, count in PER_SPLIT.items():
            for index in range(count):
                patient = f"PT-{hospital[:3].upper()}-{split}-{index:02d}-ZX81"
                path = folder / f"scan-{hospital[:5]}-{split}-{index:02d}-quokka.png"
                pixels = rng.integers(0, 256, (RAW_SIDE, RAW_SIDE), dtype=np.uint8)
                Image.fromarray(pixels).save(path)
                clinics.images.append(pixels)
                clinics.origins.append((hospital, split))
                clinics.files.append(path)
                clinics.secrets += [patient, path.name, path.stem]
                rows.append([path.name, CLASSES[index % 2], split, patient, hospital])
    (folder / BROKEN).write_bytes(b"not an image")
    rows.append([BROKEN, "normal", "train", "PT-OSP-broken-ZX81", HOSPITALS[0]])
    with clinics.manifest.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "split", "patient_id", "source"])
        writer.writerows(rows)
    clinics.secrets += [
        *HOSPITALS,
        FOLDER,
        MANIFEST,
        Path(MANIFEST).stem,
        BROKEN,
        "PT-OSP-broken-ZX81",
        str(root),
    ]
    return clinics


@pytest.fixture(scope="module")
def clinics(tmp_path_factory: pytest.TempPathFactory) -> Clinics:
    return write_clinics(tmp_path_factory.mktemp("clinics"))


class RecordingGrid(grids.LocalGrid):
    """The in-process grid, keeping every message the server sends with the reply it gets."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exchanges: list[tuple[Message, Message]] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.exchanges.extend(zip(messages, replies, strict=True))
        return replies


def wire_bytes(message: Message) -> bytes:
    """What a SuperNode pushes for `message`: its protobuf without content, then each nested
    object (records, arrays) deflated (flwr.supernode.runtime.run_clientapp.push_message)."""
    header = message_to_proto(remove_content_from_message(message)).SerializeToString()
    return header + b"".join(part.deflate() for part in get_all_nested_objects(message).values())


def image_matches(values: np.ndarray, reference: dict[int, np.ndarray]) -> list[tuple[int, int]]:
    """(side, image index) for every row of `values`, read as side x side pixels, that is a
    copy of an image at that side (any dtype, scale or offset)."""
    flat = values.astype(np.float64).ravel()
    found = []
    for side, images in reference.items():
        if flat.size % (side * side):
            continue
        rows = flat.reshape(-1, side * side)
        rows = rows - rows.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(rows, axis=1)
        rows = rows[norms > 0] / norms[norms > 0, None]
        hits = np.argwhere(np.abs(rows @ images.T) > SAME_IMAGE)
        found += [(side, int(index)) for index in hits[:, 1]]
    return found


def kind(request: Message, reply: Message) -> str:
    return f"{reply.metadata.message_type}/{request.content[CONFIG_KEY]['phase']}"


def site_with_its_own_policy(context: Context) -> SiteConfig:
    """A virtual clinic as the run config names it, except that site k keeps POLICIES[k - 1]
    (a simulation gives every site one policy), so one federation covers every policy."""
    site = site_from_node_config(context.node_config, context.run_config)
    assert site.partition is not None
    return site.model_copy(update={"privacy": POLICIES[site.partition.index]})


@pytest.mark.slow
def test_no_reply_carries_images_paths_or_patient_ids_beyond_the_sites_policy(
    clinics: Clinics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HXR_CACHE_DIR", str(tmp_path / "cache"))
    config = FederationConfig(
        classes=CLASSES,
        min_nodes=len(HOSPITALS),
        num_server_rounds=2,
        prewarm_rounds=1,
        local_epochs=1,
        prewarm_epochs=1,
        image_size=INPUT_SIDE,
        batch_size=8,
        gradcam_per_class=2,
        out_dir=str(tmp_path / "run"),
    )
    run_config = {"data": f"csv:{clinics.manifest}", "partition": "by-source", "seed": 0}
    run_config |= {"skip-bad": True, "device": "cpu"}
    apps = {100 + k: build_client_app(site_with_its_own_policy) for k in range(len(HOSPITALS))}
    grid = RecordingGrid(apps, len(HOSPITALS), run_config=run_config)
    run_federation(grid, config, run_id=1)

    # Every request was answered without error, on every path a site replies on.
    assert not any(reply.has_error() for _, reply in grid.exchanges)
    kinds = sorted(kind(*exchange) for exchange in grid.exchanges)
    expected = ["train/prewarm", "train/finetune", f"{STATISTICS_MESSAGE}/finetune"]
    assert kinds == sorted([*expected, "evaluate/finetune"] * len(HOSPITALS))

    reference = clinics.reference
    needles = clinics.needles()
    shared: dict[PrivacyPolicy, list[str]] = {policy: [] for policy in POLICIES}
    for request, reply in grid.exchanges:
        where = kind(request, reply)
        site = reply.content[SITE_KEY]["name"]
        index = int(site.removeprefix("site-")) - 1
        policy = POLICIES[index]
        wire = wire_bytes(reply)
        assert site.encode() in wire  # the search sees what a site puts in a record
        leaked = [name for name, needle in needles.items() if needle in wire]
        assert not leaked, f"{site} ({policy}) {where} reply carries {leaked}"
        if where.startswith("train/"):  # the corrupt file is counted, never named
            assert reply.content[METRICS_KEY]["skipped-files"] == 1

        for record_name, record in reply.content.array_records.items():
            for array_name, array in record.items():
                values = array.numpy()
                matches = image_matches(values, reference)
                if record_name == GRADCAM_ARRAYS_KEY:
                    shared[policy].append(array_name)
                if (record_name, array_name) != (GRADCAM_ARRAYS_KEY, "images"):
                    assert not matches, f"{site} {where} {record_name}/{array_name}: images"
                    continue
                # Overlay images: each one of this site's test images, smaller than its input.
                assert policy == "overlay", f"{site} ({policy}) sent images"
                assert values.tobytes() in wire
                assert values.shape[1:] == (INPUT_SIDE // 2,) * 2
                assert {side for side, _ in matches} == {INPUT_SIDE // 2}
                own_tests = clinics.indices(sorted(HOSPITALS)[index], "test")
                assert {image for _, image in matches} <= own_tests
                assert len({image for _, image in matches}) == len(values)
    assert shared == {"none": [], "heatmap": ["heatmaps"], "overlay": ["heatmaps", "images"]}


def test_a_failing_site_reports_the_kind_of_error_and_nothing_else(
    clinics: Clinics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    send_to_site: Callable[[Path, RecordDict, str], Message],
) -> None:
    """The same clinic without skip_bad: its data error names the corrupt file and the site
    file; Flower would forward the exception's text, so not even a traceback may name them."""
    monkeypatch.setenv("HXR_CACHE_DIR", str(tmp_path / "cache"))
    site_file = clinics.root / "kestrel-ward-site.toml"
    site_file.write_text(
        f'name = "kestrel"\ndata = "csv:{clinics.manifest}"\nprivacy = "overlay"\ndevice = "cpu"\n'
    )
    missing_file = clinics.root / "kestrel-ward-missing-site.toml"
    config = FederationConfig(classes=CLASSES, image_size=INPUT_SIDE)
    instructions = config.round_instructions(1, "finetune")
    content = RecordDict(
        {
            ARRAYS_KEY: to_record(phase_state(initial_state(config), "finetune")),
            CONFIG_KEY: ConfigRecord(instructions.to_config()),
        }
    )
    # The details exist at the site, so it is the ClientApp that keeps them there.
    with pytest.raises(DataError, match=BROKEN):
        load_site_data(load_site_config(site_file), CLASSES, INPUT_SIDE)
    with pytest.raises(ConfigError, match=missing_file.name):
        load_site_config(missing_file)
    for site, secret in ((site_file, BROKEN), (missing_file, missing_file.name)):
        for message_type in ("train", "evaluate", STATISTICS_MESSAGE):
            with pytest.raises(SiteFailure) as failure:
                send_to_site(site, content, message_type)
            text = "".join(traceback.format_exception(failure.value))
            assert "at the site (details in its log)" in str(failure.value)
            for leak in (secret, str(clinics.root), FOLDER, MANIFEST):
                assert leak not in text, f"{message_type} error names {leak}"
