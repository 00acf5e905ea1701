"""The typed metrics a clinic replies with, one model per kind of reply.

The client builds its MetricRecord through these models and the server parses every reply
through the same ones, so both sides agree on every name (kebab-case, as Flower carries them),
type and range. A value a reply may not hold (an infinite loss, a rate of 3, a per-class list of
the wrong length, a list where a number belongs) rejects that reply with the field's name; NaN
stands for "undefined here" (no AUC on a split with one class) and is allowed where noted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from flwr.app import ConfigRecord, MetricRecord, RecordDict
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from hxr_model.metrics import SCORE_BINS
from protocol.instructions import kebab
from protocol.records import PROTOCOL_VERSION, PROTOCOL_VERSION_KEY, SITE_KEY, SITE_NAME_KEY
from protocol.schedule import Phase
from protocol.site_names import is_site_name


class ReplyRejected(ValueError):
    """Why one clinic's reply was left out of the round, in words."""


def _not_infinite(value: float) -> float:
    if math.isinf(value):
        raise ValueError("must be finite or NaN (undefined), not infinite")
    return value


def _rate(value: float) -> float:
    if not math.isnan(value) and not 0 <= value <= 1:
        raise ValueError("must lie in [0, 1] or be NaN (undefined)")
    return value


Measure = Annotated[float, AfterValidator(_not_infinite)]
Rate = Annotated[float, AfterValidator(_rate)]
Count = Annotated[int, Field(ge=0)]


# No clinic holds a billion radiographs; a larger count is a weight grab, not a measurement.
MAX_EXAMPLES = 10**9


class Metrics(BaseModel):
    """Base of every reply's metrics: how many images the clinic used (what FedAvg weighs by)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, alias_generator=kebab, populate_by_name=True
    )

    num_examples: int = Field(gt=0, le=MAX_EXAMPLES)

    PER_CLASS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The metric keys this reply carries, as they appear on the wire."""
        return tuple(kebab(name) for name in cls.model_fields)

    def to_record(self) -> MetricRecord:
        return MetricRecord(self.model_dump(by_alias=True))

    @classmethod
    def parse(cls, values: Mapping[str, Any], num_classes: int) -> Self:
        """Validate a received record; per-class lists must hold exactly `num_classes` values."""
        try:
            return cls.model_validate(dict(values), context={"num_classes": num_classes})
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "metrics"
            reason = first["msg"].removeprefix("Value error, ")
            raise ReplyRejected(f"metric '{where}': {reason}") from None


class ResourceMetrics(Metrics):
    """What the clinic's laptop spent on a training round."""

    train_loss: Measure
    peak_memory_mb: Measure
    seconds: Measure
    images_per_s: Measure
    skipped_files: Count


class PrewarmMetrics(ResourceMetrics):
    """A SimCLR round: its contrastive loss and resources."""


def _per_class(value: list, info: ValidationInfo, squared: bool = False) -> list:
    classes = (info.context or {}).get("num_classes")
    if classes is not None:
        expected = classes * classes if squared else classes
        if len(value) != expected:
            raise ValueError(f"must hold {expected} values, one per class, not {len(value)}")
    return value


class FinetuneMetrics(ResourceMetrics):
    """A supervised round: loss, resources and scores on the clinic's validation split."""

    val_accuracy: Rate
    val_balanced_accuracy: Rate
    val_auc: Rate
    val_threshold: Rate
    per_class_recall: list[Rate]
    # Optimiser steps behind the returned weights (those of the epoch it returns).
    local_steps: int = Field(ge=1, le=MAX_EXAMPLES)

    _per_class_length = field_validator("per_class_recall")(_per_class)


class StatisticsMetrics(Metrics):
    """A BatchNorm statistics query: only the number of images measured."""


class EvaluateMetrics(Metrics):
    """The global model on the clinic's held-out split."""

    accuracy: Rate
    balanced_accuracy: Rate
    auc: Rate
    loss: Measure
    ece: Rate
    per_class_recall: list[Rate]
    confusion_matrix: list[Count]
    # Binary tasks: the global model's positive-class scores on the site's validation split, as
    # counts per score bin (negatives, then positives); zeros otherwise. Pooled by the server to
    # choose the federation's decision threshold without any image or per-image score.
    val_score_histogram: list[Count]
    # The global model on the clinic's validation split, as a confusion matrix (counts; zeros
    # where it has none): the server picks the round whose model it serves by these, as each
    # clinic alone keeps its best epoch on its validation split (`server.model_selection`).
    val_confusion_matrix: list[Count]
    # The clinic's own version of the global model (its BatchNorm layers under FedBN, its head
    # fine-tuned under personalisation) on the same split; NaN when the run asks for neither.
    personalised_accuracy: Rate
    personalised_balanced_accuracy: Rate
    personalised_per_class_recall: list[Rate]
    # Where lesions are known (phantoms): Grad-CAM of the true class against the lesion masks,
    # over `localisation_images` test images; NaN and 0 elsewhere. Aggregates, like accuracy.
    localisation_images: Count
    pointing_game: Rate
    energy_in_mask: Rate
    mask_area: Rate

    _per_class_length = field_validator("per_class_recall", "personalised_per_class_recall")(
        _per_class
    )

    @field_validator("val_score_histogram")
    @classmethod
    def _two_histograms(cls, value: list[int]) -> list[int]:
        if len(value) != 2 * SCORE_BINS:
            raise ValueError(f"must hold {2 * SCORE_BINS} counts, not {len(value)}")
        return value

    @field_validator("confusion_matrix", "val_confusion_matrix")
    @classmethod
    def _square(cls, value: list[int], info: ValidationInfo) -> list[int]:
        return _per_class(value, info, squared=True)


TRAIN_METRICS: dict[Phase, type[ResourceMetrics]] = {
    "prewarm": PrewarmMetrics,
    "finetune": FinetuneMetrics,
}


def site_record(site_name: str) -> ConfigRecord:
    """Who replies, and in which protocol version."""
    return ConfigRecord({SITE_NAME_KEY: site_name, PROTOCOL_VERSION_KEY: PROTOCOL_VERSION})


def replying_site(content: RecordDict) -> str | None:
    """The name a reply claims, if it is a valid site name (it becomes a folder name)."""
    record = content.config_records.get(SITE_KEY)
    name = record.get(SITE_NAME_KEY) if record is not None else None
    return name if is_site_name(name) else None


def check_protocol_version(content: RecordDict) -> None:
    record = content.config_records.get(SITE_KEY)
    version = record.get(PROTOCOL_VERSION_KEY) if record is not None else None
    if version != PROTOCOL_VERSION:
        raise ReplyRejected(
            f"speaks protocol version {version!r}, the coordinator {PROTOCOL_VERSION}: "
            f"upgrade the older side"
        )
