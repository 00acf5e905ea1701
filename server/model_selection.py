"""Which round's global model a run serves: its last, or its best on the clinics' validation.

Each clinic alone keeps its best epoch on its validation split; a federation can do the same
with rounds, on counts alone: every evaluate reply carries the global model's confusion matrix
on the clinic's validation split (`val-confusion-matrix`), and under `served-round =
"best-validation"` the fine-tuning round with the highest mean over the clinics of their
validation balanced accuracy is the one `global_model.pt`, the summary, the report and the
comparison serve (a tie goes to the later round). Every round's global model is kept in
`checkpoints/`, so the choice needs no extra state and survives a resume. Where two clinics pull
one class in opposite directions, the global model can reach a good state mid-run and lose it
again (docs/benchmarks.md, cxr4 by source): the last round is then not the model to serve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hxr_model.checkpoint import load_checkpoint
from hxr_model.errors import ConfigError
from hxr_model.models import RadiographClassifier, build_model
from protocol.model_state import load_into
from server.decision_threshold import decision_threshold
from server.round_record import RoundRecord, last_evaluated
from server.run_config import FederationConfig
from server.run_store import RunStore

VALIDATION_CONFUSION_KEY = "val-confusion-matrix"


def classifier_from(
    config: FederationConfig, state: Mapping[str, np.ndarray]
) -> RadiographClassifier:
    """The global weights `state` as the run's classifier, in evaluation mode."""
    model = build_model(config.model, len(config.classes))
    load_into(model, state, "finetune")
    return model.eval()


def balanced_accuracy_of(counts: object, num_classes: int) -> float | None:
    """Mean recall over the classes a confusion matrix (flat counts) holds; None without any."""
    if not isinstance(counts, list) or len(counts) != num_classes * num_classes:
        return None
    matrix = np.asarray(counts, dtype=np.float64).reshape(num_classes, num_classes)
    support = matrix.sum(axis=1)
    if not support.any():
        return None
    present = support > 0
    return float((np.diag(matrix)[present] / support[present]).mean())


def validation_balanced_accuracy(record: RoundRecord, num_classes: int) -> float | None:
    """The mean over the evaluated clinics of each one's balanced accuracy on its validation
    split: every clinic one vote (a small clinic with its own disease weighs as much as a large
    one, and no clinic's counts, however large, outweigh another's); None where no clinic sent
    validation counts."""
    scores = [
        score
        for metrics in record.evaluate.sites.values()
        if (score := balanced_accuracy_of(metrics.get(VALIDATION_CONFUSION_KEY), num_classes))
        is not None
    ]
    return float(np.mean(scores)) if scores else None


def served_record(records: Sequence[RoundRecord], config: FederationConfig) -> RoundRecord | None:
    """The round whose global model the run serves (None before any evaluated round)."""
    final = last_evaluated(records)
    if config.served_round == "last":
        return final
    scored = [
        (score, record.round, record)
        for record in records
        if record.phase == "finetune"
        and (score := validation_balanced_accuracy(record, len(config.classes))) is not None
    ]
    return max(scored, key=lambda item: item[:2])[2] if scored else final


def served_threshold(records: Sequence[RoundRecord], config: FederationConfig) -> float | None:
    """The binary decision threshold stored with the served model: the one its own round's
    pooled validation counts choose (None for other tasks)."""
    served = served_record(records, config)
    upto = [record for record in records if served is None or record.round <= served.round]
    return (decision_threshold(config, upto) or {}).get("threshold")


def served_model(store: RunStore, config: FederationConfig) -> tuple[RadiographClassifier, int]:
    """The served round's global model and the round's number (the last committed one where no
    round was evaluated)."""
    final = store.load_state()
    if final is None:
        raise ConfigError(f"{store.run_dir}: no round completed")
    served = served_record(store.read_rounds(), config)
    if served is None or served.round == final.round:
        return classifier_from(config, final.arrays), final.round
    model = load_checkpoint(store.round_checkpoint(served.round)).model
    return model.eval(), served.round
