import os
import stat
from pathlib import Path

import pytest

from hxr_model.atomic_files import write_atomic, write_text_atomic


def test_the_content_lands_under_the_name_in_new_folders(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "file.bin"
    write_atomic(target, lambda handle: handle.write(b"\x00weights"))
    assert target.read_bytes() == b"\x00weights"
    assert list(target.parent.iterdir()) == [target]


def test_a_failing_writer_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "rounds.jsonl"
    write_text_atomic(target, "round 1\n")

    def fail_halfway(handle) -> None:
        handle.write(b"round 2, half writ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, fail_halfway)
    assert target.read_text() == "round 1\n"
    assert list(tmp_path.iterdir()) == [target]


def test_files_are_private_unless_a_mode_is_given(tmp_path: Path) -> None:
    private, public = tmp_path / "site.key", tmp_path / "ca.crt"
    write_text_atomic(private, "secret")
    write_text_atomic(public, "certificate", mode=0o644)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert public.read_text() == "certificate"


def test_a_new_mode_replaces_the_old_file_s_mode(tmp_path: Path) -> None:
    target = tmp_path / "superlink.key"
    write_text_atomic(target, "old", mode=0o644)
    write_text_atomic(target, "new", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() == "new"


def test_the_folder_is_synced_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    """Without the folder sync a power cut can lose the new name even though the data is on disk."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append("folder" if os.path.isdir(f"/proc/self/fd/{descriptor}") else "file")
        real_fsync(descriptor)

    def replace(source, target) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text_atomic(tmp_path / "rounds.jsonl", "{}\n")
    assert events == ["file", "rename", "folder"]
