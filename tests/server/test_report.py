"""summary.json and report.html from hand-made round records; the report in a real browser."""

import json
import math
import re
import shutil
import subprocess
import warnings
from base64 import b64decode
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocol.gradcam_samples import GradcamSamples
from server.federation import RoundCommitter
from server.report import MAX_NAMED_SITES, _confusion_plot, _metric_plot, write_report
from server.round_record import RoundRecord
from server.run_config import FederationConfig
from server.run_store import RunStore
from server.summary import write_summary

CLASSES = ["normal", "pneumonia"]
PROBE = (
    "<script>addEventListener('load', () => { const all = [...document.images];"
    " document.body.dataset.rendered ="
    " all.filter(i => i.complete && i.naturalWidth > 0).length + '/' + all.length; });</script>"
)


def site_metrics(accuracy: float, examples: int) -> dict:
    return {
        "num-examples": examples,
        "accuracy": accuracy,
        "balanced-accuracy": accuracy,
        "auc": math.nan,
        "loss": 0.7,
        "ece": 0.1,
        "per-class-recall": [accuracy, accuracy],
        "confusion-matrix": [3, 1, 1, 3],
    }


def train_metrics(loss: float) -> dict:
    return {
        "num-examples": 20,
        "train-loss": loss,
        "peak-memory-mb": 120.0,
        "seconds": 2.0,
        "images-per-s": 10.0,
        "skipped-files": 1,
    }


def record(round_: int, phase: str, reason: str = "contains NaN") -> RoundRecord:
    evaluated = phase == "finetune"
    return RoundRecord.model_validate(
        {
            "round": round_,
            "phase": phase,
            "seconds": 3.0,
            "train": {
                "aggregate": train_metrics(1.0),
                "sites": {"north": train_metrics(1.1), "south": train_metrics(0.9)},
            },
            "evaluate": {
                "aggregate": site_metrics(0.75, 16) if evaluated else {},
                "sites": {"north": site_metrics(0.5, 8), "south": site_metrics(1.0, 8)}
                if evaluated
                else {},
            },
            "rejected": [{"site": "mallory", "stage": "train", "reason": reason}],
            "failures": [],
            "gradcam": {},
        }
    )


@pytest.fixture
def run(tmp_path: Path) -> tuple[RunStore, FederationConfig]:
    config = FederationConfig(
        classes=CLASSES, num_server_rounds=2, prewarm_rounds=1, out_dir=str(tmp_path / "run")
    )
    store = RunStore(tmp_path / "run")
    committer = RoundCommitter(config, store)
    rng = np.random.default_rng(0)
    samples = GradcamSamples(
        heatmaps=rng.integers(0, 256, (2, 32, 32), dtype=np.uint8),
        images=rng.integers(0, 256, (2, 32, 32), dtype=np.uint8),
        labels=[0, 1],
        predictions=[0, 0],
    )
    for number, phase in ((1, "prewarm"), (2, "finetune")):
        committer.record_round(record(number, phase), {"north": samples})
    return store, config


def write_both(store: RunStore, config: FederationConfig) -> str:
    """summary.json, then report.html from it; returns the page."""
    records = store.read_rounds()
    write_report(store, config, records, write_summary(store, config, records))
    return (store.run_dir / "report.html").read_text()


def test_summary_holds_final_metrics_resources_and_incidents(run) -> None:
    store, config = run
    summary = write_summary(store, config, store.read_rounds())
    written = json.loads((store.run_dir / "summary.json").read_text())
    assert written == summary
    assert summary["rounds_completed"] == 2 and summary["final_round"] == 2
    assert summary["federated"]["accuracy"] == 0.75 and summary["federated"]["auc"] is None
    assert summary["resources"]["north"]["peak_memory_mb"] == 120.0
    assert summary["resources"]["north"]["train_seconds"] == pytest.approx(4.0)
    assert [item["round"] for item in summary["rejected"]] == [1, 2]


def test_gallery_images_are_owner_only_like_every_run_file(run) -> None:
    store, _ = run
    pictures = list((store.run_dir / "gradcam").rglob("*.png"))
    assert len(pictures) == 4  # north's two samples in each of two rounds
    assert {picture.stat().st_mode & 0o777 for picture in pictures} == {0o600}


def test_report_is_self_contained(run) -> None:
    store, config = run
    page = write_both(store, config)
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing fetched from outside
    assert page.count("data:image/png;base64,") == 3 + 2  # plots + north's two samples
    assert "mallory" in page and "true: pneumonia" in page


def test_report_escapes_what_sites_send(tmp_path: Path) -> None:
    """A failure reason is text from a site: it must show as text, never run as markup."""
    config = FederationConfig(
        classes=CLASSES, num_server_rounds=2, prewarm_rounds=1, out_dir=str(tmp_path)
    )
    store = RunStore(tmp_path)
    records = [record(1, "prewarm", reason="<script>alert(1)</script>"), record(2, "finetune")]
    write_report(store, config, records, write_summary(store, config, records))
    page = (store.run_dir / "report.html").read_text()
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_report_renders_in_headless_chromium(run, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs the Debian package)")
    store, config = run
    page = write_both(store, config)
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    rendered = re.search(r'data-rendered="(\d+)/(\d+)"', result.stdout)
    assert rendered, f"chromium produced no DOM: {result.stderr[-500:]}"
    assert rendered.group(1) == rendered.group(2) == "5"


def test_personalised_scores_get_columns_only_where_clinics_report_them(tmp_path: Path) -> None:
    config = FederationConfig(
        classes=CLASSES, num_server_rounds=1, prewarm_rounds=0, out_dir=str(tmp_path / "r")
    )
    store = RunStore(tmp_path / "r")
    plain = record(1, "finetune")
    RoundCommitter(config, store).record_round(plain, {})
    assert "personalised-accuracy" not in write_both(store, config)
    personal = record(1, "finetune")
    personal.evaluate.sites["north"] |= {"personalised-accuracy": 0.625}
    shutil.rmtree(store.run_dir)
    RoundCommitter(config, RunStore(tmp_path / "r")).record_round(personal, {})
    page = write_both(RunStore(tmp_path / "r"), config)
    assert "personalised-accuracy" in page and "0.625" in page


def test_a_hundred_clinics_get_readable_plots_without_warnings(tmp_path: Path) -> None:
    """Beyond MAX_NAMED_SITES the curves lose their legend and the confusion matrices show the
    clinics served worst: a legend of 100 names collapsed matplotlib's layout (a warning on the
    user's terminal) and 100 matrices made a page-long image."""
    sites = {f"site-{k}": site_metrics(k / 100, 8) for k in range(1, 101)}
    final = record(2, "finetune")
    final.evaluate.sites = sites
    final.train.sites = {name: train_metrics(1.0) for name in sites}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _metric_plot([record(1, "prewarm"), final], 1)
        matrices = _confusion_plot(final, CLASSES)
    assert matrices is not None
    height = Image.open(BytesIO(b64decode(matrices))).height
    rows = math.ceil(MAX_NAMED_SITES / 3)
    assert height <= rows * 3.9 * 90 + 1  # federation + the 11 worst clinics, 3 per row
