"""What the server asks of a client each round, and the record keys both sides use.

The server is the single authority on model, classes and hyperparameters; it sends them in the
message's ConfigRecord so a clinic's SuperNode needs no copy of the run config. This module is
the contract: the server builds `RoundInstructions`, the client validates what arrives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hxr_model.errors import ConfigError
from hxr_model.prewarm import ENCODER_PREFIX

Phase = Literal["prewarm", "finetune"]

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
SITE_KEY = "site"
GRADCAM_ARRAYS_KEY = "gradcam"
GRADCAM_META_KEY = "gradcam-meta"
WEIGHT_KEY = "num-examples"

# Every reply of a kind carries exactly these metrics (undefined ones as NaN), so the server can
# refuse malformed replies before Flower's aggregation sees them.
RESOURCE_METRICS = ("peak-memory-mb", "seconds", "images-per-s", "skipped-files")
TRAIN_METRICS: dict[str, tuple[str, ...]] = {
    "prewarm": (WEIGHT_KEY, "train-loss", *RESOURCE_METRICS),
    "finetune": (
        WEIGHT_KEY,
        "train-loss",
        "val-accuracy",
        "val-balanced-accuracy",
        "val-auc",
        "val-threshold",
        "per-class-recall",
        *RESOURCE_METRICS,
    ),
}
EVALUATE_METRICS = (
    WEIGHT_KEY,
    "accuracy",
    "balanced-accuracy",
    "auc",
    "loss",
    "ece",
    "per-class-recall",
    "confusion-matrix",
)

# BatchNorm re-estimation for the aggregated weights, between training and evaluation.
STATISTICS_ACTION = "batchnorm_statistics"
STATISTICS_MESSAGE = f"query.{STATISTICS_ACTION}"  # Flower message type: category.action
STATISTICS_METRICS = (WEIGHT_KEY,)
STATISTICS_SUFFIXES = (".running_mean", ".running_var")

PROJECTION_PREFIX = "projection."


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class RoundInstructions(BaseModel):
    """One round's settings, sent as a ConfigRecord (kebab-case keys)."""

    model_config = ConfigDict(
        extra="ignore", alias_generator=_kebab, populate_by_name=True, frozen=True
    )

    server_round: int = Field(ge=1)
    phase: Phase
    model: str
    image_size: int = Field(ge=16, le=1024)
    class_names: list[str] = Field(min_length=2)
    local_epochs: int = Field(1, ge=0)
    learning_rate: float = Field(2e-3, gt=0)
    batch_size: int = Field(32, ge=2)
    seed: int = 0
    temperature: float = Field(0.2, gt=0)
    projection_dim: int = Field(64, ge=2)
    proximal_mu: float = Field(0.0, ge=0)
    gradcam_per_class: int = Field(2, ge=0, le=16)
    gradcam_size: int = Field(32, ge=8, le=128)

    def to_config(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RoundInstructions:
        try:
            return cls.model_validate(dict(config))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"server instructions: invalid '{field}': {first['msg']}") from None

    @property
    def sample_side(self) -> int:
        """Side of shared Grad-CAM samples: at most half the model's input, so an `overlay`
        image is always a downscaled copy, never the radiograph at full resolution."""
        return sample_side_for(self.gradcam_size, self.image_size)

    def site_seed(self, site_name: str) -> int:
        """A seed fixed by (run seed, round, site): a resumed round trains exactly as before."""
        text = f"{self.seed}/{self.server_round}/{site_name}".encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def sample_side_for(gradcam_size: int, image_size: int) -> int:
    return max(1, min(gradcam_size, image_size // 2))


def is_exchanged(name: str, phase: Phase) -> bool:
    """Which global weights a phase sends out: pre-warming touches encoder + projection only."""
    if phase == "prewarm":
        return name.startswith((ENCODER_PREFIX, PROJECTION_PREFIX))
    return not name.startswith(PROJECTION_PREFIX)
