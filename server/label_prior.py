"""The federation's pooled label share, which a logit-adjusted local loss targets.

Under `local-imbalance = "logit-adjusted"` each clinic adds its own log class prior to its
logits in the loss and subtracts the log of the share the server sends, so every clinic learns
the scores of the pooled task rather than of its own label mix, and the average of their updates
is the model the pooled images would train. The server knows that share without any image or
per-image label: each evaluate reply carries the global model's confusion counts on the clinic's
validation split, whose rows add up to the clinic's validation label counts. Before the first
evaluated round the share is unknown and the clinics target equal shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from server.model_selection import VALIDATION_CONFUSION_KEY
from server.round_record import RoundRecord, last_evaluated


def pooled_label_share(records: Sequence[RoundRecord], num_classes: int) -> list[float]:
    """The label share of all clinics' validation images in the last evaluated round (the rows
    of the round's summed validation confusion counts), every class counted at least once (a
    share must stay positive); empty where none was reported."""
    final = last_evaluated(records)
    matrix = final.evaluate.aggregate.get(VALIDATION_CONFUSION_KEY) if final else None
    if not isinstance(matrix, list) or len(matrix) != num_classes * num_classes:
        return []
    counts = np.asarray(matrix, dtype=np.float64).reshape(num_classes, -1).sum(axis=1)
    if not counts.any():
        return []
    counts = np.maximum(counts, 1.0)
    return (counts / counts.sum()).tolist()
