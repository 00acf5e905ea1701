"""Combining the sites' metric records into one per round.

Flower's default weighted mean turns a single undefined value (a site whose test split lacks a
class has no AUC, sent as NaN) into NaN for the whole federation, and would average confusion
matrices. Here undefined values are skipped and counts are summed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from flwr.app import MetricRecord, RecordDict

SUMMED_KEYS = frozenset(
    {"confusion-matrix", "skipped-files", "val-score-histogram", "val-confusion-matrix"}
)


def _weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if math.isfinite(v) and w > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total > 0 else math.nan


def combine_metrics(
    records: Sequence[Mapping[str, float | int | list]], weight_key: str
) -> dict[str, float | int | list]:
    """NaN-skipping weighted means (element-wise for lists); SUMMED_KEYS are added up."""
    if not records:
        return {}
    weights = [float(record[weight_key]) for record in records]
    combined: dict[str, float | int | list] = {weight_key: int(sum(weights))}
    for key in records[0]:
        if key == weight_key:
            continue
        values = [record[key] for record in records]
        if key in SUMMED_KEYS:
            combined[key] = (
                [sum(column) for column in zip(*values, strict=True)]
                if isinstance(values[0], list)
                else sum(values)
            )
        elif isinstance(values[0], list):
            combined[key] = [
                _weighted_mean([float(v) for v in column], weights)
                for column in zip(*values, strict=True)
            ]
        else:
            combined[key] = _weighted_mean([float(v) for v in values], weights)
    return combined


def aggregate_metric_records(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Flower `*_metrics_aggr_fn`: each reply holds exactly one MetricRecord."""
    metrics = [next(iter(record.metric_records.values())) for record in records]
    return MetricRecord(combine_metrics(metrics, weight_key))
