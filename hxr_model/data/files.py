"""Image files on disk: class folders (`folder:DIR`) and CSV manifests (`csv:FILE`).

Nothing is opened here; every listed file is decoded (or refused) later, so a stray file in a
class folder is reported instead of skipped.
"""

from __future__ import annotations

import csv
from pathlib import Path

from hxr_model.data.catalog import Catalog, Entry, normalise_split
from hxr_model.data.problems import FileProblem
from hxr_model.errors import DataError

MANIFEST_REQUIRED = ("path", "label")


def list_folder(root: Path) -> Catalog:
    """`DIR/CLASS/...` or `DIR/{train,val,test}/CLASS/...` (Kaggle layouts).

    A class folder that holds an `images/` folder contributes only that folder, which is how the
    COVID-19 Radiography Database keeps its lung masks apart.
    """
    if not root.is_dir():
        raise DataError(f"folder:{root}: no such directory")
    top = _visible_dirs(root)
    split_dirs = [folder for folder in top if normalise_split(folder.name)]
    if split_dirs and len(split_dirs) != len(top):
        others = ", ".join(folder.name for folder in top if folder not in split_dirs)
        raise DataError(
            f"folder:{root}: mixes split folders ({', '.join(f.name for f in split_dirs)}) "
            f"with class folders ({others}); put every class folder under train/, val/ or test/"
        )
    layout = [(folder, normalise_split(folder.name)) for folder in split_dirs] or [(root, None)]
    entries: list[Entry] = []
    class_names: set[str] = set()
    for parent, split in layout:
        for class_dir in _visible_dirs(parent):
            class_names.add(class_dir.name)
            entries.extend(
                Entry(
                    name=path.relative_to(root).as_posix(),
                    label=class_dir.name,
                    split=split,
                    path=path,
                )
                for path in _image_files(class_dir)
            )
    if not class_names:
        raise DataError(
            f"folder:{root}: no class subfolders (expected DIR/CLASS/images or "
            "DIR/train/CLASS/images)"
        )
    return Catalog(entries, sorted(class_names))


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    base = class_dir / "images" if (class_dir / "images").is_dir() else class_dir
    return sorted(
        path
        for path in base.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(base).parts)
    )


def list_manifest(manifest: Path) -> Catalog:
    """Columns `path,label` and optional `split,patient_id,source`; paths relative to the file."""
    if not manifest.is_file():
        raise DataError(f"csv:{manifest}: no such file")
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            columns = reader.fieldnames or []
            missing = [column for column in MANIFEST_REQUIRED if column not in columns]
            if missing:
                raise DataError(
                    f"csv:{manifest}: missing column(s) {', '.join(missing)} "
                    f"(has: {', '.join(columns) or 'no header'})"
                )
            rows = [(reader.line_num, row) for row in reader]
    except (csv.Error, UnicodeDecodeError) as error:
        raise DataError(f"csv:{manifest}: not a readable CSV manifest: {error}") from None
    return _manifest_catalog(manifest, rows)


def _manifest_catalog(manifest: Path, rows: list[tuple[int, dict[str, str | None]]]) -> Catalog:
    entries: list[Entry] = []
    problems: list[FileProblem] = []
    for line, row in rows:
        path_text, label, split_text, patient, source = (
            (row.get(column) or "").strip()
            for column in ("path", "label", "split", "patient_id", "source")
        )
        name = path_text or f"{manifest.name} line {line}"
        split = normalise_split(split_text) if split_text else None
        if not path_text or not label:
            problems.append(
                FileProblem(name, f"manifest line {line} has no path or no label", "bad-row")
            )
        elif split_text and split is None:
            problems.append(
                FileProblem(
                    name,
                    f"manifest line {line}: unknown split '{split_text}' (train, val or test)",
                    "bad-row",
                )
            )
        else:
            entries.append(
                Entry(
                    name,
                    label,
                    split,
                    patient or None,
                    source or None,
                    path=manifest.parent / path_text,
                )
            )
    if any(entry.split for entry in entries):
        problems.extend(
            FileProblem(entry.name, "no split while other manifest rows have one", "bad-row")
            for entry in entries
            if entry.split is None
        )
        entries = [entry for entry in entries if entry.split]
    return Catalog(entries, sorted({entry.label for entry in entries}), problems)
