"""What the server asks of a clinic each round, sent in the message's ConfigRecord.

The server is the single authority on model, classes and hyperparameters, so a clinic's
SuperNode needs no copy of the run config; the clinic validates what arrives. Every field is
required: the values come from the coordinator's run config, where their defaults are written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hxr_model.errors import ConfigError
from hxr_model.training import Imbalance
from protocol.records import PROTOCOL_VERSION
from protocol.schedule import Phase

MAX_ROUNDS = 10_000
# Beyond this many clinics the cross-site matrix is sampled: 20 local models, not N.
MAX_CROSS_SITE_CLINICS = 20


def kebab(name: str) -> str:
    """Flower records and run configs spell keys in kebab-case; Python fields in snake_case."""
    return name.replace("_", "-")


class RoundInstructions(BaseModel):
    """One round's settings, sent as a ConfigRecord (kebab-case keys)."""

    model_config = ConfigDict(
        extra="ignore", alias_generator=kebab, populate_by_name=True, frozen=True
    )

    protocol_version: int = PROTOCOL_VERSION
    # Upper bounds keep a coordinator from asking a clinic's laptop for unbounded work.
    server_round: int = Field(ge=1, le=MAX_ROUNDS)
    num_server_rounds: int = Field(ge=1, le=MAX_ROUNDS)
    phase: Phase
    model: str
    image_size: int = Field(ge=16, le=1024)
    class_names: list[str] = Field(min_length=2, max_length=64)
    local_epochs: int = Field(ge=0, le=100)
    learning_rate: float = Field(gt=0, le=10)
    optimizer: Literal["adamw", "sgd"]
    batch_size: int = Field(ge=2, le=1024)
    seed: int
    temperature: float = Field(gt=0)
    projection_dim: int = Field(ge=2, le=2048)
    proximal_mu: float = Field(ge=0)
    absent_class_scale: float = Field(ge=0, le=1)
    imbalance: Imbalance
    # The federation's pooled label share that a logit-adjusted loss targets (empty: equal).
    class_prior: list[float] = Field(max_length=64)
    local_batchnorm: bool
    keep_best_epoch: bool
    min_local_steps: int = Field(ge=0, le=100_000)
    personalise_epochs: int = Field(ge=0, le=100)
    gradcam_per_class: int = Field(ge=0, le=16)
    gradcam_size: int = Field(ge=8, le=128)

    @field_validator("class_prior")
    @classmethod
    def _a_share_per_class(cls, prior: list[float], info: ValidationInfo) -> list[float]:
        classes = len(info.data.get("class_names", []))
        if prior and (
            len(prior) != classes
            or not all(0 < share <= 1 for share in prior)
            or abs(sum(prior) - 1) > 1e-6
        ):
            raise ValueError(f"must be empty or {classes} positive shares summing to 1")
        return prior

    def to_config(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        version = config.get(kebab("protocol_version"))
        if version != PROTOCOL_VERSION:
            raise ConfigError(
                f"server instructions: protocol version {version!r}, this clinic speaks "
                f"{PROTOCOL_VERSION}: upgrade the older side"
            )
        try:
            return cls.model_validate(dict(config))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "instructions"
            raise ConfigError(f"server instructions: invalid '{field}': {first['msg']}") from None

    @property
    def sample_side(self) -> int:
        return sample_side_for(self.gradcam_size, self.image_size)

    @property
    def is_last_round(self) -> bool:
        return self.server_round == self.num_server_rounds

    def site_seed(self, site_name: str) -> int:
        """A seed fixed by (run seed, round, site): a resumed round trains exactly as before."""
        text = f"{self.seed}/{self.server_round}/{site_name}".encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


class CrossSiteInstructions(RoundInstructions):
    """A message of the cross-site round: the run's settings and how many models the round
    will ask each clinic to score (its sampled clinics' local models plus the global one), which
    bounds the clinic's cross-site evaluations. Metrics only: no Grad-CAM, no personalisation."""

    cross_site_models: int = Field(ge=1, le=MAX_CROSS_SITE_CLINICS + 1)
    gradcam_per_class: Literal[0]
    personalise_epochs: Literal[0]


class LocalModelInstructions(CrossSiteInstructions):
    """Train a model on the clinic's own images alone, with the federation's budget: the same
    passes over each image (SimCLR for the pre-warm rounds' epochs, then the fine-tuning
    rounds' epochs), at the phases' first-round rates."""

    prewarm_rounds: int = Field(ge=0, le=MAX_ROUNDS)
    prewarm_epochs: int = Field(ge=1, le=100)
    prewarm_learning_rate: float = Field(gt=0, le=10)

    @model_validator(mode="after")
    def _leaves_a_finetuning_round(self) -> LocalModelInstructions:
        if self.prewarm_rounds >= self.num_server_rounds:
            raise ValueError("prewarm-rounds must be fewer than num-server-rounds")
        return self

    @property
    def prewarm_budget(self) -> int:
        """SimCLR epochs: what the pre-warm rounds ran in all."""
        return self.prewarm_rounds * self.prewarm_epochs

    @property
    def finetune_budget(self) -> int:
        """Fine-tuning epochs: what the fine-tuning rounds ran in all."""
        return (self.num_server_rounds - self.prewarm_rounds) * self.local_epochs


def sample_side_for(gradcam_size: int, image_size: int) -> int:
    """Side of shared Grad-CAM samples: at most half the model's input, so an `overlay` image is
    always a downscaled copy, never the radiograph at full resolution."""
    return max(1, min(gradcam_size, image_size // 2))
