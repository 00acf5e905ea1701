"""The coordinator's run config (`[tool.flwr.app.config]`, `flwr run --run-config`), validated.

Flower hands the ServerApp a flat dict of kebab-case keys; a typo or a negative round count
should stop the run with one line naming the key, not fail twenty minutes in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from client.instructions import Phase
from hxr_model.errors import ConfigError, describe_validation_error
from hxr_model.models import model_names
from server.update_validation import DEFAULT_MAX_UPDATE_RATIO

StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedmedian"]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class FederationConfig(BaseModel):
    """Rounds, schedule, strategy and where results go; one field per run-config key."""

    model_config = ConfigDict(extra="forbid", alias_generator=_kebab, populate_by_name=True)

    num_server_rounds: int = Field(3, ge=1, le=10_000)
    prewarm_rounds: int = Field(1, ge=0)
    local_epochs: int = Field(1, ge=1)
    prewarm_epochs: int = Field(1, ge=1)
    learning_rate: float = Field(2e-3, gt=0, le=10)
    prewarm_learning_rate: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(32, ge=2, le=4096)
    model: str = "hxr50"
    image_size: int = Field(64, ge=16, le=1024)
    classes: list[str] = Field(min_length=2)
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    min_nodes: int = Field(2, ge=1)
    seed: int = 0
    strategy: StrategyName = "fedavg"
    proximal_mu: float = Field(0.01, ge=0)
    server_learning_rate: float = Field(0.01, gt=0)
    temperature: float = Field(0.2, gt=0)
    projection_dim: int = Field(64, ge=2)
    max_update_ratio: float = Field(DEFAULT_MAX_UPDATE_RATIO, gt=0)
    recalibrate_statistics: bool = True
    gradcam_per_class: int = Field(2, ge=0, le=16)
    gradcam_size: int = Field(32, ge=8, le=128)
    round_timeout: float = Field(3600.0, gt=0)
    # Where results go; empty means `runs/<Flower run id>`. Resuming needs the same directory.
    out_dir: str = ""
    resume: bool = False
    # Simulation only: the dataset and partitioning that nodes without a site config play.
    data: str = ""
    partition: str = "iid"
    # Client-level differential privacy, off at 0 (see server.differential_privacy): each site
    # clips its update to the norm, the server noises the average and reports epsilon at delta.
    dp_noise_multiplier: float = Field(0.0, ge=0)
    dp_clipping_norm: float = Field(1.0, gt=0)
    dp_delta: float = Field(1e-5, gt=0, lt=1)

    @field_validator("classes", mode="before")
    @classmethod
    def _split_classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in model_names():
            raise ValueError(f"unknown model {value!r}; choose one of {', '.join(model_names())}")
        return value

    @model_validator(mode="after")
    def _schedule_fits(self) -> FederationConfig:
        if self.prewarm_rounds >= self.num_server_rounds:
            raise ValueError(
                f"prewarm-rounds ({self.prewarm_rounds}) must be fewer than "
                f"num-server-rounds ({self.num_server_rounds}) to leave a fine-tuning round"
            )
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be distinct")
        return self

    @model_validator(mode="after")
    def _privacy_fits(self) -> FederationConfig:
        """Flower's accountant holds for FedAvg's average only, and the BatchNorm statistics
        query would release each site's statistics without noise, so DP turns it off."""
        if self.dp_noise_multiplier == 0:
            return self
        if self.strategy not in ("fedavg", "fedprox"):
            raise ValueError(
                f"dp-noise-multiplier needs strategy fedavg or fedprox, not {self.strategy}"
            )
        if self.recalibrate_statistics and "recalibrate_statistics" in self.model_fields_set:
            raise ValueError(
                "dp-noise-multiplier needs recalibrate-statistics = false: the statistics "
                "query releases each site's BatchNorm statistics without noise"
            )
        self.recalibrate_statistics = False
        return self

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationConfig:
        try:
            return cls.model_validate(dict(run_config))
        except ValidationError as error:
            problem = describe_validation_error(
                error, lambda part: _kebab(part) if part in cls.model_fields else part
            )
            raise ConfigError(f"run config: {problem}") from None

    def phase(self, server_round: int) -> Phase:
        """First `prewarm_rounds` rounds pre-warm the encoder, the rest fine-tune."""
        return "prewarm" if server_round <= self.prewarm_rounds else "finetune"

    def run_dir(self, run_id: int) -> Path:
        return Path(self.out_dir).expanduser() if self.out_dir else Path("runs") / str(run_id)
