"""A self-contained `report.html` for a federated run.

The report is one file a coordinator can mail to the clinics: every plot and Grad-CAM image is
an inline base64 PNG, so it opens offline and nothing is fetched from anywhere. Python prepares
plain data (numbers, base64 strings); the template in `server.report_template` lays it out with
autoescaping, so a site name or failure reason can never inject markup into the page.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from jinja2 import DictLoader, Environment, StrictUndefined
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hxr_model.atomic_files import write_text_atomic
from server.model_selection import served_record
from server.report_template import REPORT_TEMPLATE
from server.round_record import RoundRecord
from server.run_config import FederationConfig
from server.run_store import RunStore
from server.summary import EVALUATION_KEYS, LOCALISATION_KEYS, PERSONALISED_KEYS, is_defined


def format_cell(value: Any) -> str:
    """A table cell: undefined metrics (None, NaN) read "n/a", floats get three decimals."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


TEMPLATES = Environment(
    loader=DictLoader({"report.html": REPORT_TEMPLATE}),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
TEMPLATES.filters["fmt"] = format_cell


# Beyond this many clinics the plots stop naming each one (a legend or grid would not fit).
MAX_NAMED_SITES = 12


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _metric_plot(records: Sequence[RoundRecord], prewarm_rounds: int) -> str:
    """Per-site curves over rounds: test accuracy, balanced accuracy, AUC and training loss
    (NT-Xent in the shaded pre-warm rounds, cross-entropy after)."""
    panels: list[tuple[Literal["train", "evaluate"], str, str]] = [
        ("evaluate", "accuracy", "test accuracy"),
        ("evaluate", "balanced-accuracy", "test balanced accuracy"),
        ("evaluate", "auc", "test AUC"),
        ("train", "train-loss", "local training loss"),
    ]
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    for index, (stage, key, title) in enumerate(panels, start=1):
        axes = figure.add_subplot(2, 2, index)
        results = [(record.round, getattr(record, stage)) for record in records]
        sites = sorted({site for _, result in results for site in result.sites})
        named = len(sites) <= MAX_NAMED_SITES
        for site in sites:
            points = [
                (number, result.sites[site].get(key))
                for number, result in results
                if site in result.sites
            ]
            points = [(x, y) for x, y in points if y is not None]
            xs, ys = [x for x, _ in points], [y for _, y in points]
            if named:
                axes.plot(xs, ys, marker="o", label=site)
            else:  # a legend of every clinic would not fit: thin grey lines, one label
                label = f"{len(sites)} clinics" if site == sites[0] else None
                axes.plot(xs, ys, color="0.6", linewidth=0.6, alpha=0.6, label=label)
        federated = [
            (number, result.aggregate.get(key)) for number, result in results if result.aggregate
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
    return _png(figure)


def _confusion_plot(record: RoundRecord, class_names: Sequence[str]) -> str | None:
    """The federation's and each site's confusion matrix (beyond MAX_NAMED_SITES sites, those
    of the sites with the lowest accuracy); None when no one sent one."""
    matrices = {"federation": record.evaluate.aggregate.get("confusion-matrix")}
    sites = sorted(record.evaluate.sites.items())
    if len(sites) > MAX_NAMED_SITES:
        worst_first = sorted(sites, key=lambda item: np.nan_to_num(_accuracy(item[1]), nan=2.0))
        sites = worst_first[: MAX_NAMED_SITES - 1]
        sites = [(f"{site} (worst {rank})", m) for rank, (site, m) in enumerate(sites, start=1)]
    matrices |= {site: metrics.get("confusion-matrix") for site, metrics in sites}
    matrices = {name: matrix for name, matrix in matrices.items() if matrix}
    if not matrices:
        return None
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
    return _png(figure)


def _accuracy(cell: Mapping[str, Any] | None) -> float:
    """A matrix cell's accuracy; NaN where it is undefined or the cell has no result."""
    value = (cell or {}).get("accuracy")
    return np.nan if value is None else value


def _cross_site_plot(cross_site: Mapping[str, Any]) -> str:
    """Accuracy of every model (rows) on every clinic's test share (columns), as a heat map."""
    shares, models = cross_site["shares"], cross_site["models"]
    matrix = np.array([[_accuracy(models[m].get(s)) for s in shares] for m in models])
    figure = Figure(figsize=(1.2 * len(shares) + 3, 0.5 * len(models) + 1.5), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(matrix, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(matrix):
        axes.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                  color="white" if value < 0.6 else "black", fontsize=8)  # fmt: skip
    axes.set_xticks(range(len(shares)), [f"{s} test" for s in shares], rotation=30, fontsize=8)
    axes.set_yticks(range(len(models)), list(models), fontsize=8)
    figure.colorbar(image, ax=axes, label="accuracy")
    return _png(figure)


def _comparison(comparison: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The lead table: every model on the pooled test split, and the cross-site heat map."""
    if not comparison:
        return None
    pooled = comparison["pooled_test"]
    summary = pooled["local-only summary"]
    rows = [_evaluation_row("federated", pooled["federated"])]
    if "centralized" in pooled:
        rows.append(_evaluation_row("centralized (same budget)", pooled["centralized"]))
    rows.append(_evaluation_row(f"best clinic alone ({summary['best']['site']})", summary["best"]))
    rows.append(_evaluation_row("mean of the clinics alone", summary["mean"]))
    rows += [
        _evaluation_row(f"{site} alone", scores) for site, scores in pooled["local-only"].items()
    ]
    return {"images": pooled["num-examples"], "rows": rows}


def _cross_site(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cross-site heat map: the deployment's cross-site round where it ran, else the
    simulation's comparison; with the clinics the round sampled and its incidents."""
    cross_site = summary.get("cross_site") or (summary.get("comparison") or {}).get("cross_site")
    if not cross_site:
        return None
    return {
        "png": _cross_site_plot(cross_site),
        "shares": len(cross_site["shares"]),
        "clinics": cross_site.get("clinics"),
        "incidents": [
            [incident["site"], incident["model"], incident["stage"], incident["reason"]]
            for incident in cross_site.get("incidents", [])
        ],
    }


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
    return _png(figure)


def _gallery(store: RunStore, record: RoundRecord) -> list[dict[str, Any]]:
    """Each site's Grad-CAM PNGs read back from the run folder (missing files are left out)."""
    sites = []
    for site, samples in sorted(record.gradcam.items()):
        pictures = [
            {
                "png": base64.b64encode(path.read_bytes()).decode("ascii"),
                "true": sample.true,
                "predicted": sample.predicted,
            }
            for sample in samples
            if (path := store.run_dir / sample.file).exists()
        ]
        sites.append({"name": site, "pictures": pictures})
    return sites


def _privacy(privacy: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The privacy guarantee's numbers as the report prints them; None without DP."""
    if not privacy:
        return None
    return {
        "epsilon": f"{privacy['epsilon']:.3g}",
        "delta": f"{privacy['delta']:g}",
        "rounds": str(privacy["rounds"]),
        "noise_multiplier": f"{privacy['noise_multiplier']:g}",
        "clipping_norm": f"{privacy['clipping_norm']:g}",
    }


def _evaluation_keys(final: RoundRecord | None) -> tuple[str, ...]:
    """The final table's columns: the personalised and localisation scores too where clinics
    reported them."""
    sites = list(final.evaluate.sites.values()) if final else []
    keys = EVALUATION_KEYS
    for extra in (PERSONALISED_KEYS, LOCALISATION_KEYS):
        if any(is_defined(metrics.get(extra[0])) for metrics in sites):
            keys += extra
    return keys


def _evaluation_row(
    name: str, metrics: Mapping[str, Any], keys: Sequence[str] = EVALUATION_KEYS
) -> list[Any]:
    return [name, *(metrics.get(key) for key in keys)]


def write_report(
    store: RunStore,
    config: FederationConfig,
    records: Sequence[RoundRecord],
    summary: Mapping[str, Any],
) -> None:
    """report.html: settings, final metrics, the cross-site matrix, curves, confusion
    matrices, resources, gallery."""
    final = served_record(records, config)
    keys = _evaluation_keys(final)
    resources = summary["resources"]
    gallery_round = next((record for record in reversed(records) if record.gradcam), None)
    page = TEMPLATES.get_template("report.html").render(
        run_dir=str(store.run_dir),
        settings={
            "model": config.model,
            "strategy": config.strategy,
            "rounds": summary["rounds_completed"],
            "prewarm_rounds": config.prewarm_rounds,
            "classes": ", ".join(config.classes),
            "served_round": config.served_round,
        },
        privacy=_privacy(summary.get("differential_privacy")),
        evaluation_keys=keys,
        final=None
        if final is None
        else {
            "round": final.round,
            "rows": [
                _evaluation_row("federation", final.evaluate.aggregate, keys),
                *(
                    _evaluation_row(site, metrics, keys)
                    for site, metrics in sorted(final.evaluate.sites.items())
                ),
            ],
            "confusion_png": _confusion_plot(final, config.classes),
        },
        comparison=_comparison(summary.get("comparison")),
        cross_site=_cross_site(summary),
        worst=summary.get("worst_clinic"),
        threshold=summary.get("decision_threshold"),
        metrics_png=_metric_plot(records, config.prewarm_rounds),
        resources=[
            [
                site,
                row["train_examples"],
                row["peak_memory_mb"],
                row["train_seconds"],
                row["images_per_s"],
                row["skipped_files"],
            ]
            for site, row in sorted(resources.items())
        ],
        resources_png=_resource_plot(resources) if resources else None,
        incidents=[
            [incident["round"], incident["site"], incident["stage"], incident["reason"]]
            for incident in [*summary["rejected"], *summary["failures"]]
        ],
        gallery=None
        if gallery_round is None
        else {"round": gallery_round.round, "sites": _gallery(store, gallery_round)},
    )
    write_text_atomic(store.run_dir / "report.html", page)
