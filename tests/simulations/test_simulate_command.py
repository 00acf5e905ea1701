"""`hxr simulate` end to end through Flower's simulation engine (Ray actors as clinics)."""

import json
import os
from pathlib import Path

import pytest

from hxr_cli.main import main
from hxr_model.checkpoint import load_checkpoint
from hxr_model.errors import ConfigError


def child_processes() -> list[int]:
    """Live (non-zombie) processes whose parent is this test process, but for the resource
    tracker that Python's multiprocessing keeps for the life of its process (the baselines')."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            helper = b"multiprocessing.resource_tracker" in command
            if int(fields[1]) == os.getpid() and fields[0] != "Z" and not helper:
                children.append(int(entry.name))
    return children


def test_simulate_trains_three_clinics_calmly_and_leaves_no_process_behind(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """`hxr simulate` as a user starts it; `capfd` holds everything written to the terminal by
    it and by every process it starts."""
    # Earlier tests may have left long-lived helpers (multiprocessing's resource tracker): only
    # processes the simulation starts count.
    already_running = set(child_processes())
    out = tmp_path / "run"
    arguments = ["simulate", "--data", "synthetic:72:3", "--sites", "3", "--rounds", "2"]
    arguments += ["--prewarm-rounds", "1", "--image-size", "32", "--batch-size", "16"]
    assert main([*arguments, "--local-epochs", "1", "--cpus", "2", "--out", str(out)]) == 0

    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["prewarm", "finetune"]
    assert all(sorted(r["train"]["sites"]) == ["site-1", "site-2", "site-3"] for r in records)
    final = records[-1]["evaluate"]["aggregate"]
    assert 0.0 <= final["accuracy"] <= 1.0 and final["loss"] > 0
    assert not records[-1]["rejected"] and not records[-1]["failures"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and set(summary["sites"]) == {
        "site-1",
        "site-2",
        "site-3",
    }
    assert load_checkpoint(out / "global_model.pt").model_name == "hxr50"
    assert len(list((out / "gradcam").rglob("*.png"))) >= 3
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 3
    assert set(child_processes()) - already_running == set()
    # The run ends with the comparison a clinic asks for, on the pooled test split.
    pooled = summary["comparison"]["pooled_test"]
    assert set(pooled["local-only"]) == {"site-1", "site-2", "site-3"}
    assert set(summary["comparison"]["cross_site"]["models"]) == {
        "federated", "site-1 alone", "site-2 alone", "site-3 alone"
    }  # fmt: skip
    written = capfd.readouterr()
    lines = written.out.splitlines()
    federated = next(i for i, line in enumerate(lines) if "federated model on the pooled" in line)
    assert lines[federated + 1].startswith("clinics alone on the same split: best ")
    assert any(line.startswith("worst clinic: ") or "worst clinic:" in line for line in lines)
    report = (out / "report.html").read_text()
    assert report.index("against each clinic alone") < report.index("test share (round")
    # Without --verbose: a line per round, no deprecation notice, no raw metric dictionary,
    # none of the clinics' own lines (those stay in Ray's logs).
    shown = written.out + written.err
    assert "deprecated" not in shown.lower()
    assert "MetricRecord" not in shown and "{'" not in shown
    assert "ClientAppActor" not in shown and "site-1: prewarm round 1" not in shown
    rounds = [line for line in shown.splitlines() if " done in " in line]
    assert len(rounds) == 2 and all("clinic(s) trained" in line for line in rounds)
    assert "Federated run finished" in (out / "flower.log").read_text()  # the whole log


def test_an_impossible_partition_fails_in_one_line_before_starting_clinics(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    arguments = ["simulate", "--data", "synthetic:40:2", "--sites", "1", "--image-size", "32"]
    assert main([*arguments, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hxr: error:") and "\n" not in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("size_option", "expected"), [([], 28), (["--image-size", "40"], 40)])
def test_a_medmnist_federation_trains_at_the_files_own_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size_option: list[str], expected: int
) -> None:
    """Like `hxr train`: MedMNIST was made at 28 px and upsampling adds only time."""
    import numpy as np

    import simulations.federation

    images = np.zeros((4, 28, 28), np.uint8)
    labels = np.array([[0], [1], [0], [1]])
    np.savez(tmp_path / "tiny.npz", train_images=images, train_labels=labels)
    chosen = []

    def stop_after_settings(settings: simulations.federation.SimulationSettings) -> None:
        chosen.append(settings)
        raise ConfigError("stopped before starting the clinics")

    monkeypatch.setattr(simulations.federation, "simulate", stop_after_settings)
    main(["simulate", "--data", f"medmnist:{tmp_path / 'tiny.npz'}", *size_option,
          "--out", str(tmp_path / "run")])  # fmt: skip
    assert [settings.image_size for settings in chosen] == [expected]


def test_labels_reach_every_clinic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--labels normal,bacterial,viral`: the Kermany subset of cxr4, at each clinic."""
    import simulations.federation

    chosen = []

    def stop_after_settings(settings: simulations.federation.SimulationSettings) -> None:
        chosen.append(settings)
        raise ConfigError("stopped before starting the clinics")

    monkeypatch.setattr(simulations.federation, "simulate", stop_after_settings)
    main(["simulate", "--data", "synthetic:40:2", "--sites", "2", "--labels", "normal,viral=v",
          "--out", str(tmp_path / "run")])  # fmt: skip
    (settings,) = chosen
    expected = {"normal": "normal", "viral": "v"}
    sites = [simulations.federation.clinic_site(settings, index) for index in range(2)]
    assert [site.label_map for site in sites] == [expected, expected]


def test_a_federation_whose_last_round_took_no_update_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Every clinic failed: the run folder is kept, but the command must not report success.
    The run itself is played by the real server over an in-process grid in tests/server; here
    only its outcome on disk is given."""
    import simulations.federation
    from server.round_record import Incident, RoundRecord, StageResults
    from server.run_store import RunStore

    failure = {"site": "site-1", "stage": "train", "reason": "DataError at the site"}

    def every_clinic_fails(settings: simulations.federation.SimulationSettings) -> Path:
        settings.out.mkdir(parents=True)
        store = RunStore(settings.out)
        for number, sites in ((1, {"site-1": {"num-examples": 8}}), (2, {})):
            record = RoundRecord(
                round=number,
                phase="finetune",
                train=StageResults(sites=sites),
                failures=[] if sites else [Incident(**failure)],
            )
            store.append_round(record, ["a", "b"])
        (settings.out / "summary.json").write_text("{}")
        return settings.out

    monkeypatch.setattr(simulations.federation, "simulate", every_clinic_fails)
    out = tmp_path / "run"
    assert main(["simulate", "--data", "synthetic:40:2", "--sites", "2", "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("hxr: error: round 2 accepted no clinic's update")
    assert "site-1: DataError at the site" in error and "\n" not in error
