"""`summary.json` and a self-contained `report.html` for a federated run.

The report is one file a coordinator can mail to the clinics: every plot and Grad-CAM image is
an inline base64 PNG, so it opens offline and nothing is fetched from anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from server.differential_privacy import privacy_summary
from server.run_config import FederationConfig
from server.run_store import RunStore, json_ready, write_text_atomic

EVALUATION_KEYS = ("accuracy", "balanced-accuracy", "auc", "ece", "loss")
Record = Mapping[str, Any]


def _last(records: Sequence[Record], stage: str) -> Record | None:
    return next((r for r in reversed(records) if r[stage]["sites"]), None)


def _site_resources(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """Per site: examples, peak memory (max over rounds), local training time and speed."""
    table: dict[str, dict[str, Any]] = {}
    for record in records:
        for site, metrics in record["train"]["sites"].items():
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
            if record["phase"] == "finetune":
                row["train_examples"] = metrics["num-examples"]
            row["peak_memory_mb"] = max(row["peak_memory_mb"], metrics["peak-memory-mb"] or 0.0)
            row["train_seconds"] += metrics["seconds"] or 0.0
            row["images_per_s"].append(metrics["images-per-s"] or 0.0)
            row["skipped_files"] = metrics["skipped-files"]
            row["rounds"] += 1
    for row in table.values():
        row["images_per_s"] = float(np.mean(row["images_per_s"])) if row["images_per_s"] else 0.0
    return table


def write_summary(
    store: RunStore,
    config: FederationConfig,
    records: Sequence[Record],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's outcome in one JSON file (final metrics, per-site resources, incidents)."""
    last_eval = _last(records, "evaluate")
    summary: dict[str, Any] = {
        "run_dir": str(store.run_dir),
        "model": config.model,
        "classes": config.classes,
        "strategy": config.strategy,
        "num_server_rounds": config.num_server_rounds,
        "prewarm_rounds": config.prewarm_rounds,
        "rounds_completed": records[-1]["round"] if records else 0,
        "final_round": last_eval["round"] if last_eval else None,
        "federated": dict(last_eval["evaluate"]["aggregate"]) if last_eval else {},
        "sites": dict(last_eval["evaluate"]["sites"]) if last_eval else {},
        "resources": _site_resources(records),
        "rejected": [dict(item, round=r["round"]) for r in records for item in r["rejected"]],
        "failures": [dict(item, round=r["round"]) for r in records for item in r["failures"]],
        "differential_privacy": privacy_summary(config, records),
        "global_model": "global_model.pt",
        "report": "report.html",
        **dict(extra or {}),
    }
    summary = json_ready(summary)
    write_text_atomic(store.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


# -- HTML --------------------------------------------------------------------------------------


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(data: str, alt: str, css: str = "plot") -> str:
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metric_plots(records: Sequence[Record], prewarm_rounds: int) -> str:
    """Per-site curves over rounds: test accuracy, balanced accuracy, AUC and training loss
    (NT-Xent in the shaded pre-warm rounds, cross-entropy after)."""
    panels = [
        ("evaluate", "accuracy", "test accuracy"),
        ("evaluate", "balanced-accuracy", "test balanced accuracy"),
        ("evaluate", "auc", "test AUC"),
        ("train", "train-loss", "local training loss"),
    ]
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    for index, (stage, key, title) in enumerate(panels, start=1):
        axes = figure.add_subplot(2, 2, index)
        sites = sorted({s for r in records for s in r[stage]["sites"]})
        for site in sites:
            points = [
                (r["round"], r[stage]["sites"][site].get(key))
                for r in records
                if site in r[stage]["sites"]
            ]
            xs = [x for x, y in points if y is not None]
            axes.plot(xs, [y for _, y in points if y is not None], marker="o", label=site)
        federated = [
            (r["round"], r[stage]["aggregate"].get(key)) for r in records if r[stage]["aggregate"]
        ]
        federated = [(x, y) for x, y in federated if y is not None]
        if federated:
            axes.plot(*zip(*federated, strict=True), "k--", linewidth=2, label="federation")
        if stage == "train" and prewarm_rounds:
            axes.axvspan(0.5, prewarm_rounds + 0.5, color="0.92", label="pre-warm")
        axes.set_title(title)
        axes.set_xlabel("round")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if sites:
            axes.legend(fontsize=7)
    return _img(_png(figure), "metrics per site over rounds")


def _confusion_plots(record: Record, class_names: Sequence[str]) -> str:
    matrices = {"federation": record["evaluate"]["aggregate"].get("confusion-matrix")}
    matrices |= {
        s: m.get("confusion-matrix") for s, m in sorted(record["evaluate"]["sites"].items())
    }
    matrices = {name: m for name, m in matrices.items() if m}
    size = len(class_names)
    columns = min(3, len(matrices))
    rows = math.ceil(len(matrices) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.9 * rows), layout="constrained")
    for index, (name, flat) in enumerate(matrices.items(), start=1):
        matrix = np.asarray(flat, dtype=float).reshape(size, size)
        axes = figure.add_subplot(rows, columns, index)
        axes.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            axes.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=8)
        axes.set_xticks(range(size), [c[:10] for c in class_names], rotation=45, fontsize=7)
        axes.set_yticks(range(size), [c[:10] for c in class_names], fontsize=7)
        axes.set_title(name)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
    return _img(_png(figure), "confusion matrices")


def _resource_plot(resources: Mapping[str, Mapping[str, Any]]) -> str:
    sites = sorted(resources)
    figure = Figure(figsize=(10, 3.2), layout="constrained")
    for index, (key, title) in enumerate(
        [("peak_memory_mb", "peak memory (MB)"), ("train_seconds", "local training time (s)")],
        start=1,
    ):
        axes = figure.add_subplot(1, 2, index)
        axes.bar(sites, [resources[s][key] for s in sites], color="tab:blue")
        axes.set_title(title)
        axes.tick_params(axis="x", labelrotation=30)
    return _img(_png(figure), "memory and time per site")


def _gallery(store: RunStore, record: Record) -> str:
    parts = []
    for site, samples in sorted(record["gradcam"].items()):
        figures = []
        for sample in samples:
            path = store.run_dir / sample["file"]
            if path.exists():
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                alt = f"Grad-CAM, true {sample['true']}, predicted {sample['predicted']}"
                figures.append(
                    f"<figure>{_img(data, alt, 'gradcam')}<figcaption>"
                    f"true: {html.escape(sample['true'])}<br>"
                    f"pred: {html.escape(sample['predicted'])}</figcaption></figure>"
                )
        parts.append(f"<h3>{html.escape(site)}</h3><div class='gallery'>{''.join(figures)}</div>")
    return "".join(parts)


def _privacy_line(privacy: Mapping[str, Any] | None) -> str:
    if not privacy:
        return "<p>Differential privacy: off.</p>"
    return (
        f"<p>Differential privacy per clinic: (ε = {privacy['epsilon']:.3g}, "
        f"δ = {privacy['delta']:g}) over {privacy['rounds']} round(s), noise multiplier "
        f"{privacy['noise_multiplier']:g}, clipping norm {privacy['clipping_norm']:g}; covers "
        f"the model updates, not the metrics or Grad-CAM samples sites share.</p>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}img.plot{max-width:100%}.gallery{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:110px;text-align:center;font-size:10px;overflow-wrap:anywhere}img.gradcam{width:96px;height:96px}
"""


def write_report(
    store: RunStore,
    config: FederationConfig,
    records: Sequence[Record],
    summary: Mapping[str, Any],
) -> None:
    """report.html: settings, final metrics, curves, confusion matrices, resources, gallery."""
    sections = [
        f"<h1>HybridNet-XR federated run</h1><p>{html.escape(str(store.run_dir))}</p>",
        _table(
            ["model", "strategy", "rounds", "pre-warm rounds", "classes"],
            [
                [
                    config.model,
                    config.strategy,
                    summary["rounds_completed"],
                    config.prewarm_rounds,
                    ", ".join(config.classes),
                ]
            ],
        ),
    ]
    sections.append(_privacy_line(summary.get("differential_privacy")))
    final = _last(records, "evaluate")
    if final is not None:
        rows = [["federation", *(final["evaluate"]["aggregate"].get(k) for k in EVALUATION_KEYS)]]
        rows += [
            [site, *(metrics.get(k) for k in EVALUATION_KEYS)]
            for site, metrics in sorted(final["evaluate"]["sites"].items())
        ]
        sections += [
            f"<h2>Global model on each site's test split (round {final['round']})</h2>",
            _table(["site", *EVALUATION_KEYS], rows),
        ]
    for name, table in (summary.get("baselines") or {}).items():
        sections.append(f"<h2>Baseline: {html.escape(name)}</h2>")
        sections.append(
            _table(
                ["model", *EVALUATION_KEYS],
                [[row, *(table[row].get(k) for k in EVALUATION_KEYS)] for row in sorted(table)],
            )
        )
    sections += [
        "<h2>Metrics per site over rounds</h2>",
        _metric_plots(records, config.prewarm_rounds),
    ]
    if final is not None:
        sections += ["<h2>Confusion matrices</h2>", _confusion_plots(final, config.classes)]
    resources = summary["resources"]
    if resources:
        sections += [
            "<h2>Memory and time per site</h2>",
            _table(
                [
                    "site",
                    "training images",
                    "peak memory MB",
                    "training s",
                    "images/s",
                    "skipped files",
                ],
                [
                    [
                        s,
                        r["train_examples"],
                        r["peak_memory_mb"],
                        r["train_seconds"],
                        r["images_per_s"],
                        r["skipped_files"],
                    ]
                    for s, r in sorted(resources.items())
                ],
            ),
            _resource_plot(resources),
        ]
    incidents = [*summary["rejected"], *summary["failures"]]
    if incidents:
        sections += [
            "<h2>Rejected updates and failures</h2>",
            _table(
                ["round", "site", "stage", "reason"],
                [[i["round"], i["site"], i["stage"], i["reason"]] for i in incidents],
            ),
        ]
    gallery_round = next((r for r in reversed(records) if r["gradcam"]), None)
    if gallery_round is not None:
        sections += [
            f"<h2>Grad-CAM gallery (round {gallery_round['round']})</h2>",
            _gallery(store, gallery_round),
        ]
    else:
        sections.append("<h2>Grad-CAM gallery</h2><p>No samples: no site's policy allows any.</p>")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>HybridNet-XR federated run</title><style>{STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )
    write_text_atomic(store.run_dir / "report.html", page)
