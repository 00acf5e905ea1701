"""The two-clinic Kermany study's manifest: every patient at exactly one clinic, nothing lost
without being counted."""

import csv
from pathlib import Path

from experiments.kermany_sites import clinic_of, write_manifest

HEADER = ["path", "label", "patient_id", "source", "license"]


def write(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as stream:
        csv.writer(stream).writerows([HEADER, *rows])


def test_each_patient_lands_at_one_clinic_with_that_clinics_images_only(tmp_path: Path) -> None:
    patients = [f"kermany:person{k}" for k in range(40)]
    cxr4 = [[f"images/a{k}.png", "normal", p, "kermany", "x"] for k, p in enumerate(patients)]
    write(
        tmp_path / "cxr4/manifest.csv",
        [*cxr4, ["images/h.png", "covid", "hannover:1", "hannover", "x"]],
    )
    other = [[f"images/b{k}.jpg", "viral", p, "kermany-224", "x"] for k, p in enumerate(patients)]
    write(tmp_path / "kermany224/manifest.csv", other)
    counts = write_manifest(tmp_path, tmp_path / "out", seed=3)
    with (tmp_path / "out/manifest.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    clinics_of_patient: dict[str, set[str]] = {}
    for row in rows:
        clinics_of_patient.setdefault(row["patient_id"], set()).add(row["source"])
        assert Path(row["path"]).is_absolute()
    assert all(len(clinics) == 1 for clinics in clinics_of_patient.values())
    assert {p: c.pop() for p, c in clinics_of_patient.items()} == {
        p: clinic_of(p, 3) for p in patients
    }
    assert "hannover:1" not in clinics_of_patient  # another hospital, not part of the study
    assert counts["cxr4"] + counts["kermany224"] == len(rows) == 40
    assert counts["left out (patient at the other clinic)"] == 40  # each patient's other image
    assert 0 < counts["cxr4"] < 40  # the hash splits the patients
