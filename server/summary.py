"""`summary.json`: a federated run's outcome in one file that scripts and the CLI read.

Final metrics of the last evaluated round, per-site resources over the run, every rejected
update and failure, and the privacy spent; `server.report` renders the same numbers as HTML.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from hxr_model.atomic_files import write_text_atomic
from server.decision_threshold import decision_threshold
from server.differential_privacy import privacy_summary
from server.model_selection import served_record
from server.round_record import RoundRecord
from server.run_config import FederationConfig
from server.run_store import RunStore, json_ready

EVALUATION_KEYS = ("accuracy", "balanced-accuracy", "auc", "ece", "loss")
# Reported where clinics personalise (FedBN, head fine-tuning); NaN otherwise.
PERSONALISED_KEYS = ("personalised-accuracy", "personalised-balanced-accuracy")
# Reported where lesion masks are known (phantoms): the heat maps against them; NaN otherwise.
LOCALISATION_KEYS = ("pointing-game", "energy-in-mask", "mask-area")


def _site_resources(records: Sequence[RoundRecord]) -> dict[str, dict[str, Any]]:
    """Per site: examples, peak memory (max over rounds), local training time and speed."""
    table: dict[str, dict[str, Any]] = {}
    for record in records:
        for site, metrics in record.train.sites.items():
            row = table.setdefault(
                site,
                {
                    "train_examples": 0,
                    "peak_memory_mb": 0.0,
                    "train_seconds": 0.0,
                    "images_per_s": [],
                    "skipped_files": 0,
                    "rounds": 0,
                },
            )
            if record.phase == "finetune":
                row["train_examples"] = metrics["num-examples"]
            row["peak_memory_mb"] = max(row["peak_memory_mb"], metrics["peak-memory-mb"] or 0.0)
            row["train_seconds"] += metrics["seconds"] or 0.0
            row["images_per_s"].append(metrics["images-per-s"] or 0.0)
            row["skipped_files"] = metrics["skipped-files"]
            row["rounds"] += 1
    for row in table.values():
        row["images_per_s"] = float(np.mean(row["images_per_s"])) if row["images_per_s"] else 0.0
    return table


# A clinic the global model serves this much worse than the others' median is flagged.
FLAG_MARGIN = 0.15


def is_defined(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def worst_clinic(
    sites: Mapping[str, Mapping[str, Any]], class_names: Sequence[str]
) -> dict[str, Any] | None:
    """The clinic whose own test share the global model serves worst, with its lowest recall
    of a class it holds; flagged when its accuracy lies more than FLAG_MARGIN below the other
    clinics' median (a small clinic with its own disease, drowned by the others)."""
    scored = {site: m for site, m in sites.items() if is_defined(m.get("accuracy"))}
    if not scored:
        return None
    site = min(scored, key=lambda name: scored[name]["accuracy"])
    recalls = [
        (value, name)
        for value, name in zip(
            scored[site].get("per-class-recall") or [], class_names, strict=False
        )
        if is_defined(value)
    ]
    lowest, lowest_class = min(recalls) if recalls else (None, None)
    others = [m["accuracy"] for name, m in scored.items() if name != site]
    flagged = bool(others) and scored[site]["accuracy"] < float(np.median(others)) - FLAG_MARGIN
    return {
        "site": site,
        "accuracy": scored[site]["accuracy"],
        "lowest_recall": lowest,
        "lowest_recall_class": lowest_class,
        "flagged": flagged,
    }


def _incident_rows(
    records: Sequence[RoundRecord], kind: Literal["rejected", "failures"]
) -> list[dict[str, Any]]:
    """`rejected` or `failures` of every round as plain dicts, each tagged with its round."""
    return [
        {**incident.model_dump(), "round": record.round}
        for record in records
        for incident in getattr(record, kind)
    ]


def write_summary(
    store: RunStore,
    config: FederationConfig,
    records: Sequence[RoundRecord],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's outcome in one JSON file (final metrics, per-site resources, incidents)."""
    final = served_record(records, config)
    summary: dict[str, Any] = {
        "run_dir": str(store.run_dir),
        "model": config.model,
        "classes": config.classes,
        "strategy": config.strategy,
        "num_server_rounds": config.num_server_rounds,
        "prewarm_rounds": config.prewarm_rounds,
        "rounds_completed": records[-1].round if records else 0,
        "final_round": final.round if final else None,
        "served_by": config.served_round,
        "federated": dict(final.evaluate.aggregate) if final else {},
        "sites": dict(final.evaluate.sites) if final else {},
        "worst_clinic": worst_clinic(final.evaluate.sites, config.classes) if final else None,
        "decision_threshold": decision_threshold(config, records),
        "resources": _site_resources(records),
        "rejected": _incident_rows(records, "rejected"),
        "failures": _incident_rows(records, "failures"),
        "differential_privacy": privacy_summary(config, records),
        "global_model": "global_model.pt",
        "report": "report.html",
        **dict(extra or {}),
    }
    summary = json_ready(summary)
    write_text_atomic(store.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
