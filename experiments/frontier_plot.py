"""The frontier figure: validation accuracy and AUC against peak training memory, per dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from experiments.frontier_runs import CENTRALIZED

VARIANT_MARKERS = {"scratch": "o", "prewarmed": "*", "distilled": "s"}
METRICS = ("accuracy", "auc")


def plot_frontier(rows: list[dict[str, Any]], path: Path) -> None:
    """One column per dataset, one line per metric; federated rows drawn hollow in red."""
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    figure, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 8), squeeze=False)
    for column, name in enumerate(datasets):
        for line, metric in enumerate(METRICS):
            axis = axes[line][column]
            plotted = (
                r
                for r in rows
                if r["dataset"] == name and r[metric] is not None and r["peak_memory_mb"]
            )
            for row in plotted:
                federated = row["setting"] != CENTRALIZED
                axis.scatter(
                    row["peak_memory_mb"],
                    row[metric],
                    marker=VARIANT_MARKERS[row["variant"]],
                    s=70,
                    facecolors="none" if federated else None,
                    edgecolors="C3" if federated else None,
                )
                label = f"{row['model']}/{row['variant']}" + (" (federated)" if federated else "")
                axis.annotate(
                    label,
                    (row["peak_memory_mb"], row[metric]),
                    fontsize=7,
                    xytext=(4, 2),
                    textcoords="offset points",
                )
            axis.set_xlabel("peak training memory (MB, RSS increase in a fresh process)")
            axis.set_ylabel(f"validation {metric}")
            axis.set_title(name)
            axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
