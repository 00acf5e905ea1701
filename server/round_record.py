"""What one federated round leaves in `rounds.jsonl`: a typed record, written and read back.

The strategy fills it during the round, the run store writes it as one JSON line, and the
report, the summary and the CLI read it back through the same model. Undefined metrics (NaN)
are written as JSON null and read back as None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.schedule import Phase

MetricValue = int | float | list[int | float | None] | None
SiteMetrics = dict[str, MetricValue]
Stage = Literal["train", "statistics", "evaluate"]


class StageResults(BaseModel):
    """One stage of a round: the federation's combined metrics and each site's own."""

    model_config = ConfigDict(extra="forbid")

    aggregate: SiteMetrics = Field(default_factory=dict)
    sites: dict[str, SiteMetrics] = Field(default_factory=dict)


class Incident(BaseModel):
    """A site's reply that was rejected, or a failure (error, silence past the timeout)."""

    model_config = ConfigDict(extra="forbid")

    site: str
    stage: Stage
    reason: str


class GallerySample(BaseModel):
    """One Grad-CAM PNG of the run folder's gallery, with its true and predicted class."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    file: str
    true: str
    predicted: str


class RoundRecord(BaseModel):
    """One completed round (see `server.run_store` for where it lands on disk)."""

    model_config = ConfigDict(extra="forbid")

    round: int = Field(ge=1)
    phase: Phase
    train: StageResults = Field(default_factory=StageResults)
    evaluate: StageResults = Field(default_factory=StageResults)
    rejected: list[Incident] = Field(default_factory=list)
    failures: list[Incident] = Field(default_factory=list)
    gradcam: dict[str, list[GallerySample]] = Field(default_factory=dict)
    # Sites whose BatchNorm statistics of the aggregated weights were pooled this round.
    statistics: list[str] = Field(default_factory=list)
    # Per accepted site: ||update - global|| / ||global|| over its learned weights, and the image
    # count its update was weighed by (its report, capped: `server.example_weights`).
    update_ratios: dict[str, float] = Field(default_factory=dict)
    weighted_examples: dict[str, int] = Field(default_factory=dict)
    # SHA-256 of the global weights at the round's start and end (`weights_digest`).
    weights_sha256: dict[Literal["start", "end"], str] = Field(default_factory=dict)
    seconds: float = 0.0
    finished_at: str = ""

    @property
    def accepted_no_update(self) -> bool:
        """True when no site's training update was accepted: the round trained nothing."""
        return not self.train.sites


def last_evaluated(records: Sequence[RoundRecord]) -> RoundRecord | None:
    """The latest round any site evaluated in: its numbers are the run's final result."""
    return next((record for record in reversed(records) if record.evaluate.sites), None)
