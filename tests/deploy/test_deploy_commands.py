"""`hxr certs` and `hxr site check` as the coordinator and a clinic run them."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from hxr_cli.main import main

REPO = Path(__file__).resolve().parents[2]


def write_site(tmp_path: Path, data: Path, extra: str = "") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        f'name = "north"\ndata = "folder:{data}"\ndevice = "cpu"\n{extra}'
        '[label_map]\nNORMAL = "normal"\nPNEUMONIA = "pneumonia"\n'
    )
    return path


def test_certs_writes_keys_then_refuses_to_replace_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    args = ["certs", "--out", str(out), "--supernodes", "2", "--host", "coordinator.example.org"]
    assert main(args) == 0
    written = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert written == [
        "ca.crt",
        "ca.key",
        "superexec.secret",
        "superlink.crt",
        "superlink.key",
        "supernodes/supernode-1",
        "supernodes/supernode-1.pub",
        "supernodes/supernode-2",
        "supernodes/supernode-2.pub",
    ]
    assert stat.S_IMODE((out / "supernodes" / "supernode-2").stat().st_mode) == 0o600
    assert "superexec.secret (SuperLink and SuperExec only)" in capsys.readouterr().out
    key = (out / "superlink.key").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "already exists" in error and "--force" in error
    assert (out / "superlink.key").read_bytes() == key
    assert main([*args, "--force"]) == 0
    assert (out / "superlink.key").read_bytes() != key


def test_site_check_accepts_a_ready_clinic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_clinic: Callable[..., Path]
) -> None:
    site = write_site(tmp_path, make_clinic(tmp_path / "xr"))
    code = main(["site", "check", str(site), "--image-size", "16", "--classes", "normal,pneumonia"])
    out = capsys.readouterr().out
    assert code == 0
    assert "normal" in out and "pneumonia" in out and "12 usable images, OK" in out
    assert "ready to join" in out


def test_the_shipped_site_template_is_valid(tmp_path: Path) -> None:
    from client.site_config import load_site_config

    site = load_site_config(REPO / "examples" / "site.toml")
    assert site.privacy == "heatmap"
    assert site.label_map


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('privacy = "everything"\n', "'privacy'"),
        ("max_memory_mb = -5\n", "'max_memory_mb'"),
        ('colour = "blue"\n', "'colour'"),
    ],
)
def test_site_check_names_the_bad_field_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, field: str
) -> None:
    site = write_site(tmp_path, tmp_path / "unused", extra)
    assert main(["site", "check", str(site)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and field in error and str(site) in error


def test_site_check_reports_broken_files_and_is_not_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_clinic: Callable[..., Path]
) -> None:
    data = make_clinic(tmp_path / "xr")
    (data / "PNEUMONIA" / "scan.png").write_bytes(b"not an image")
    site = write_site(tmp_path, data)
    assert main(["site", "check", str(site), "--image-size", "16"]) == 1
    out = capsys.readouterr().out
    assert "scan.png" in out and "NOT ready" in out


def test_site_check_refuses_labels_outside_the_federation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_clinic: Callable[..., Path]
) -> None:
    site = write_site(tmp_path, make_clinic(tmp_path / "xr"))
    code = main(["site", "check", str(site), "--image-size", "16", "--classes", "normal,covid19"])
    assert code == 2
    error = capsys.readouterr().err
    assert "'pneumonia' that the model does not know" in error and "label_map" in error
