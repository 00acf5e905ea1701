"""`hxr data check` and `hxr data partition` as a user runs them."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import radiograph_files  # registered by tests/conftest.py

from hxr_cli.main import main

REPO = Path(__file__).resolve().parents[2]
CXR4 = REPO.parent / "shared" / "data" / "cxr4" / "manifest.csv"


def hxr(command: str) -> int:
    """`hxr COMMAND`, split as a shell would."""
    return main(shlex.split(command))


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HXR_CACHE_DIR", str(tmp_path / "cache"))


def test_check_names_each_broken_file_and_no_good_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinic = tmp_path / "clinic"
    good, broken = radiograph_files.write_clinic_folder(clinic)
    assert len(set(broken.values())) >= 6
    code = main(
        ["data", "check", f"folder:{clinic}", "--image-size", "32", "--labels", "normal,pneumonia"]
    )
    out = capsys.readouterr().out
    assert code == 1
    reported = {line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ")}
    assert reported == set(broken)
    assert f"{len(good)} usable images, {len(broken)} broken" in out


def test_check_json_lists_problems_with_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinic = tmp_path / "clinic"
    _, broken = radiograph_files.write_clinic_folder(clinic)
    code = main(["data", "check", f"folder:{clinic}", "--labels", "normal,pneumonia", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["ok"] is False
    assert {p["path"]: p["kind"] for p in report["problems"]} == broken


def test_clean_synthetic_set_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "synthetic:60", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "emphysema" in out and "synthetic:60: 60 usable images, OK" in out


@pytest.mark.skipif(not CXR4.is_file(), reason=f"shared cxr4 data not present at {CXR4}")
def test_cxr4_manifest_passes_and_prints_the_class_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["data", "check", f"csv:{CXR4}", "--image-size", "16"]) == 0
    rows = {
        line.split()[0]: line.split()[1:]
        for line in capsys.readouterr().out.splitlines()
        if line.strip()
    }
    # The counts the dataset's README gives (no split column: one column plus the total).
    assert rows["bacterial"] == ["581", "581"] and rows["covid"] == ["129", "129"]
    assert rows["normal"] == ["390", "390"] and rows["viral"] == ["387", "387"]
    assert rows["total"] == ["1487", "1487"]


def test_partition_prints_per_site_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code = hxr(
        "data partition synthetic:120:3 --sites 3 --partition by-source --image-size 32 --seed 1"
    )
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    sites = [line.split() for line in lines if line.startswith("site ")]
    assert [row[-1] for row in sites] == ["scanner-0", "scanner-1", "scanner-2"]
    total = next(line.split() for line in lines if line.startswith("all"))
    assert sum(int(row[-2]) for row in sites) == int(total[-1])


def test_bad_partition_scheme_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = hxr("data partition synthetic:60 --sites 2 --partition zipf --image-size 32")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hxr: error: unknown partition scheme 'zipf'") and err.count("\n") == 1
