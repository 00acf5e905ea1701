"""Accuracy frontier: accuracy and AUC against peak training memory, like the paper's figure.

One command runs every configuration on one machine, appends each result to `results.jsonl` as
it finishes (a rerun skips what is done), then writes `frontier.md` (table) and `frontier.png`.

    python -m experiments.accuracy_frontier --out docs/frontier --datasets pneumoniamnist

The configurations are in `frontier_runs`; peak training memory is measured apart, per phase,
in a fresh process (`frontier_memory`, kept in `memory.jsonl`). `--federated` adds HXR-150
pre-warmed over 5 virtual clinics, beside the same clinics alone and one model on all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
from datetime import date
from pathlib import Path
from typing import Any

import torch

from experiments.frontier_memory import recipe_memory
from experiments.frontier_plot import plot_frontier
from experiments.frontier_results import (
    append_row,
    figure,
    read_results,
    results_table,
    row_key,
    table_order,
)
from experiments.frontier_runs import (
    BASELINES,
    CENTRALIZED,
    FEDERATED_MODEL,
    HXR_MODELS,
    TEACHER,
    VARIANTS,
    FrontierSettings,
    configurations,
    run_centralized,
    run_federated,
)
from experiments.shared_data import SHARED_DATASETS, add_data_root_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/frontier"))
    add_data_root_option(parser)
    parser.add_argument("--datasets", default=",".join(SHARED_DATASETS))
    parser.add_argument("--models", default=",".join(HXR_MODELS + BASELINES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--federated",
        default="",
        help="datasets to also federate HXR-150 pre-warmed on, e.g. pneumoniamnist,cxr4",
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--prewarm-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    # Each setting is the option of the same name.
    settings = FrontierSettings(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(FrontierSettings)}
    )
    torch.set_num_threads(settings.threads)
    settings.out.mkdir(parents=True, exist_ok=True)
    results_path = settings.out / "results.jsonl"
    done = {row_key(row) for row in read_results(results_path)}
    variants = set(args.variants.split(","))
    for dataset_name in _names(args.datasets):
        for model, variant in configurations(args.models.split(",")):
            if (dataset_name, CENTRALIZED, model, variant) in done or variant not in variants:
                continue
            print(f"{dataset_name}: {model} {variant} ...", flush=True)
            teacher_key = (dataset_name, CENTRALIZED, TEACHER, "scratch")
            teacher_row = next(
                (row for row in read_results(results_path) if row_key(row) == teacher_key), None
            )
            row = run_centralized(dataset_name, model, variant, settings, teacher_row)
            _record(results_path, {"dataset": dataset_name, **row})
    for dataset_name in _names(args.federated):
        if (dataset_name, "federated", FEDERATED_MODEL, "prewarmed") in done:
            continue
        print(f"{dataset_name}: {FEDERATED_MODEL} prewarmed, federated ...", flush=True)
        for row in run_federated(dataset_name, settings):
            _record(results_path, {"dataset": dataset_name, **row})
    _write_frontier(sorted(read_results(results_path), key=table_order), settings)


def _names(listed: str) -> list[str]:
    return [name for name in listed.split(",") if name]


def _record(results_path: Path, row: dict[str, Any]) -> None:
    append_row(results_path, row)
    auc = figure(row["auc"], "{:.4f}")
    print(f"  {row['setting']}: accuracy {row['accuracy']:.4f}  AUC {auc}", flush=True)


def _write_frontier(rows: list[dict[str, Any]], settings: FrontierSettings) -> None:
    """Add each centralized row's memory, then write the figure and the table."""
    for row in rows:
        if row["setting"] == CENTRALIZED:
            row["peak_memory_mb"] = recipe_memory(row, settings)
    plot_frontier(rows, settings.out / "frontier.png")
    header = (
        f"Measured {date.today()} on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, epochs {settings.epochs}, pre-warm epochs "
        f"{settings.prewarm_epochs}, seed {settings.seed}.\n\n"
    )
    table = results_table(rows)
    (settings.out / "frontier.md").write_text(header + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
