"""The frontier's result store (JSON lines, appended as runs finish) and its markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.frontier_runs import BASELINES, CENTRALIZED, HXR_MODELS, VARIANTS
from experiments.shared_data import SHARED_DATASETS
from hxr_model.text_table import format_markdown_table

RowKey = tuple[str, str, str, str]

TABLE_HEADER = (
    "data",
    "setting",
    "model",
    "variant",
    "val accuracy",
    "balanced acc.",
    "AUC",
    "peak train MB",
    "seconds",
)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSON-lines file; none when it does not exist yet."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One line at the end: a run that stops later loses nothing already written."""
    with path.open("a") as stream:
        stream.write(json.dumps(row) + "\n")


def read_results(path: Path) -> list[dict[str, Any]]:
    """The result rows; rows written before the federated setting existed are centralized."""
    return [{"setting": CENTRALIZED, **row} for row in read_rows(path)]


def row_key(row: dict[str, Any]) -> RowKey:
    """What identifies a configuration's row, so a rerun can skip what is done."""
    return row["dataset"], row["setting"], row["model"], row["variant"]


def table_order(row: dict[str, Any]) -> tuple[int, bool, int, int]:
    """Datasets as listed, centralized rows first, models and variants in configuration order."""
    models = [*HXR_MODELS, *BASELINES]
    return (
        list(SHARED_DATASETS).index(row["dataset"]),
        row["setting"] != CENTRALIZED,
        models.index(row["model"]),
        VARIANTS.index(row["variant"]),
    )


def figure(value: float | None, pattern: str) -> str:
    """`value` formatted, or n/a where a setting does not measure it."""
    return "n/a" if value is None else pattern.format(value)


def results_table(rows: list[dict[str, Any]]) -> str:
    return format_markdown_table(
        TABLE_HEADER,
        [
            (
                row["dataset"],
                row["setting"],
                row["model"],
                row["variant"],
                f"{row['accuracy']:.4f}",
                f"{row['balanced_accuracy']:.4f}",
                figure(row["auc"], "{:.4f}"),
                figure(row["peak_memory_mb"], "{:.0f}"),
                figure(row["seconds"], "{:.0f}"),
            )
            for row in rows
        ],
    )
