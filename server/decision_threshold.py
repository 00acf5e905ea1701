"""The global model's decision threshold for binary tasks, chosen on the clinics' pooled
validation predictions.

Averaging thresholds the clinics chose on their own label-skewed validation shares gave one
that fits no clinic (measured: 0.385, costing accuracy on independent data). Instead every
clinic counts the global model's scores on its validation split per score bin
(`val-score-histogram`, no image or per-image score), the server adds the counts up and
applies `hxr_model.metrics.threshold_choice`: the bin edge that maximises balanced accuracy,
unless it beats 0.5 by less than a point. Both figures go into summary.json.

Under `local-imbalance = "logit-adjusted"` the clinics' loss already gives scores for the pooled
label share (`server/label_prior.py`), for which 0.5 is the cut that maximises accuracy; a
balanced-accuracy search on a few hundred pooled validation images can then only move it away
(measured on PneumoniaMNIST seed 2: 0.75 chosen, pooled test accuracy 0.948 at 0.5 against
0.924), so the threshold stays 0.5 and the search is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hxr_model.metrics import threshold_choice
from server.round_record import RoundRecord, last_evaluated
from server.run_config import FederationConfig

HISTOGRAM_KEY = "val-score-histogram"


def decision_threshold(
    config: FederationConfig, records: Sequence[RoundRecord]
) -> dict[str, Any] | None:
    """`threshold_choice` of the last evaluated round's pooled counts (0.5 kept under the
    logit-adjusted loss), or None for tasks that are not binary or where no clinic's validation
    held both classes."""
    if len(config.classes) != 2:
        return None
    final = last_evaluated(records)
    if final is None:
        return None
    histograms = [
        metrics[HISTOGRAM_KEY]
        for metrics in final.evaluate.sites.values()
        if isinstance(metrics.get(HISTOGRAM_KEY), list)
    ]
    if not histograms:
        return None
    choice = threshold_choice(np.sum(np.asarray(histograms, dtype=np.int64), axis=0).tolist())
    if choice is not None and config.local_imbalance == "logit-adjusted":
        choice["threshold"] = 0.5
    return choice
