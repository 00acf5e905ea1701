"""The federation's settings, written once: defaults, ranges and what each one means.

`FederationSettings` holds every setting a simulation and a deployment share; its defaults are
the README's demo, so `flwr run . local` (whose `[tool.flwr.app.config]` lists the same values,
checked by a test) and `hxr simulate` run the same default job. `FederationConfig` is the
coordinator's run config: the shared settings plus what a deployment sets and a simulation
derives (`SIMULATION_DERIVED`). Flower hands the ServerApp a flat dict of kebab-case keys; a
typo or a negative round count stops the run with one line naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hxr_model.data.label_map import (
    format_label_map,
    format_site_label_maps,
    parse_label_map,
    parse_site_label_maps,
)
from hxr_model.errors import ConfigError, describe_validation_error
from hxr_model.models import check_model_name
from hxr_model.training import Imbalance
from protocol.instructions import MAX_ROUNDS, RoundInstructions, kebab
from protocol.records import PrivacyPolicy
from protocol.schedule import Phase

StrategyName = Literal[
    "fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg", "krum"
]
# Rules that bound what a minority of clinics can do to the model, whatever they report; under
# them BatchNorm statistics are pooled robustly too (`server.recalibration`).
ROBUST_STRATEGIES = frozenset({"fedmedian", "fedtrimmedavg", "krum"})

# Run-config keys a simulation fills in itself rather than taking from the settings: written
# once here, so the test comparing `hxr simulate` with `flwr run` knows the difference.
SIMULATION_DERIVED = {
    "classes": "the classes found in the simulated data",
    "min_nodes": "the number of virtual clinics (rounds start once all are up, then sample)",
    "out_dir": "hxr simulate --out",
    "resume": "hxr simulate --resume",
}


def _parsed(parse: Callable[[str], Any], value: Any) -> Any:
    """A run config's text form of a mapping, parsed (pydantic reports the ValueError)."""
    if not isinstance(value, str):
        return value
    try:
        return parse(value)
    except ConfigError as error:
        raise ValueError(str(error)) from None


class FederationSettings(BaseModel):
    """Rounds, schedule, local training, aggregation and privacy of a federated run."""

    model_config = ConfigDict(extra="forbid", alias_generator=kebab, populate_by_name=True)

    num_server_rounds: int = Field(20, ge=1, le=MAX_ROUNDS, description="rounds in total")
    prewarm_rounds: int = Field(
        2, ge=0, description="the first rounds pre-warm the encoder (SimCLR)"
    )
    local_epochs: int = Field(8, ge=1, description="fine-tuning epochs per round")
    prewarm_epochs: int = Field(1, ge=1, description="SimCLR epochs per round")
    learning_rate: float = Field(
        1e-2, gt=0, le=10, description="local fine-tuning rate of the first fine-tuning round"
    )
    prewarm_learning_rate: float = Field(
        1e-3, gt=0, le=10, description="local SimCLR rate of the first pre-warm round"
    )
    local_optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="the clinics' fine-tuning optimiser (sgd: Nesterov momentum 0.9); SimCLR "
        "pre-warming keeps AdamW",
    )
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine",
        description="how the server lowers the local rate over each phase's rounds (clinics "
        "train at a constant rate within a round)",
    )
    batch_size: int = Field(32, ge=2, le=4096, description="local batch size")
    model: str = Field("hxr50", description="model variant")
    image_size: int = Field(64, ge=16, le=1024, description="images are S x S px")
    fraction_train: float = Field(
        1.0, gt=0, le=1, description="share of the connected clinics trained each round (seeded)"
    )
    fraction_evaluate: float = Field(
        1.0, ge=0, le=1, description="share of the connected clinics evaluated each round"
    )
    min_train_nodes: int = Field(
        2, ge=1, description="clinics trained each round at least, whatever fraction-train gives"
    )
    min_evaluate_nodes: int = Field(
        2, ge=1, description="clinics evaluated each round at least (unless fraction-evaluate is 0)"
    )
    seed: int = Field(0, description="seeds everything")
    strategy: StrategyName = Field("fedavg", description="aggregation rule")
    proximal_mu: float = Field(0.01, ge=0, description="FedProx's proximal term (fedprox)")
    server_learning_rate: float | None = Field(
        None,
        gt=0,
        description="the server optimiser's step: FedAvgM's learning rate (default 1, FedAvg's "
        "full step; below 1 the global model moves only that share of the way to the clinics' "
        "average, which damps a model swinging between clinics' optima), FedAdam's and "
        "FedYogi's eta (default 0.01)",
    )
    server_momentum: float = Field(0.9, ge=0, lt=1, description="FedAvgM's momentum (fedavgm)")
    trim_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="share cut from each end per coordinate (fedtrimmedavg)"
    )
    assumed_malicious: int = Field(1, ge=0, description="clinics Krum assumes hostile (krum)")
    absent_class_scale: float = Field(
        1.0,
        ge=0,
        le=1,
        description="FedRS: clinics scale the logits of classes they hold no image of by this "
        "factor in local training (1 = off; the FedRS paper uses 0.5)",
    )
    local_imbalance: Imbalance = Field(
        "logit-adjusted",
        description="the clinics' loss under label skew: logit-adjusted adds each clinic's log "
        "class share, less the federation's pooled one, to its logits in the loss (FedLC's "
        "calibration), so no clinic's label mix is written into the shared head (a clinic "
        "lacking a class, or whose mix is consistent with the pooled one by a chi-square test "
        "at the 1 percent level, keeps plain cross-entropy); or class-weights, "
        "balanced-sampler, none",
    )
    clinic_weighting: Literal["examples", "uniform"] = Field(
        "examples",
        description="weigh each clinic's update by its (capped) image count, or all alike, so "
        "a small clinic with its own disease keeps a voice",
    )
    min_local_steps: int = Field(
        0,
        ge=0,
        le=100_000,
        description="a clinic fine-tunes for more epochs than local-epochs where that takes "
        "fewer optimiser steps than this, so a small clinic's update is not a few steps "
        "against a large clinic's hundreds (0 = off)",
    )
    local_epoch_selection: Literal["best", "last"] = Field(
        "best",
        description="the weights a clinic returns: its best local epoch on its validation split, "
        "or its last epoch (what FedAvg assumes; a one-class validation split keeps epoch 1)",
    )
    local_batchnorm: bool = Field(
        False,
        description="FedBN: each clinic keeps its own BatchNorm layers (weights and statistics) "
        "across rounds; global_model.pt carries their average, for clinics outside the federation",
    )
    served_round: Literal["last", "best-validation"] = Field(
        "last",
        description="the round whose global model the run serves (global_model.pt, the summary, "
        "the comparison): the last, or the fine-tuning round whose balanced accuracy on the "
        "clinics' validation splits, averaged over clinics, is best (as each clinic alone keeps "
        "its best epoch)",
    )
    personalise_epochs: int = Field(
        0,
        ge=0,
        le=100,
        description="after the last round each clinic fine-tunes the global model's head for this "
        "many epochs on its own images and reports global and personalised scores (0 = off)",
    )
    examples_cap_factor: float = Field(
        4.0,
        ge=1,
        description="a clinic weighs at most this many times the round's median example count",
    )
    temperature: float = Field(0.2, gt=0, description="SimCLR's NT-Xent temperature")
    projection_dim: int = Field(64, ge=2, description="SimCLR projection head width")
    # 3x the largest honest ratio measured (0.64: docs/benchmarks.md, honest update ratios).
    max_update_ratio: float = Field(
        2.0, gt=0, description="reject a site if ||update - global|| > ratio x ||global||"
    )
    recalibrate_statistics: bool = Field(
        True, description="re-estimate BatchNorm statistics of each aggregate at the sites"
    )
    gradcam_per_class: int = Field(
        2, ge=0, le=16, description="Grad-CAM samples per class and clinic"
    )
    gradcam_size: int = Field(
        32, ge=8, le=128, description="Grad-CAM sample side in px (at most image-size / 2)"
    )
    cross_site_local_models: bool = Field(
        False,
        description="after the last round, up to 20 sampled clinics train a model on their own "
        "images alone (same budget); each, and the global model, is scored on every sampled "
        "clinic's test share; only clinics whose site config sets share_local_model share theirs",
    )
    round_timeout: float = Field(3600.0, gt=0, description="seconds a round waits for replies")
    data: str = Field(
        "synthetic:960:4",
        description="simulation only: the dataset the virtual clinics partition",
    )
    partition: str = Field(
        "by-source",
        description="simulation only: iid, dirichlet:ALPHA[:MIN], quantity:..., or by-source "
        "(one clinic per scanner)",
    )
    privacy: PrivacyPolicy = Field(
        "heatmap", description="simulation only: what Grad-CAM samples the clinics share"
    )
    skip_bad: bool = Field(False, description="simulation only: clinics leave unreadable files out")
    label_map: dict[str, str] = Field(
        default_factory=dict, description="simulation only: source label -> class, at every clinic"
    )
    site_label_maps: dict[int, dict[str, str]] = Field(
        default_factory=dict,
        description="simulation only: per clinic (numbered from 1), a label map replacing "
        "`label-map` there, e.g. '2:covid19=normal,normal=covid19'",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="simulation only: the clinics' torch device"
    )
    dp_noise_multiplier: float = Field(
        0.0, ge=0, description="client-level differential privacy: noise std / clipping norm"
    )
    dp_clipping_norm: float = Field(
        1.0, gt=0, description="under DP, each clinic's update is clipped to this L2 norm"
    )
    dp_delta: float = Field(
        1e-5, gt=0, lt=1, description="under DP, the delta at which epsilon is reported"
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_model_name(value)

    @field_validator("label_map", mode="before")
    @classmethod
    def _parse_label_map(cls, value: Any) -> Any:
        return _parsed(parse_label_map, value)

    @field_validator("site_label_maps", mode="before")
    @classmethod
    def _parse_site_label_maps(cls, value: Any) -> Any:
        return _parsed(parse_site_label_maps, value)

    @field_validator("server_learning_rate", mode="before")
    @classmethod
    def _rule_default(cls, value: Any) -> Any:
        """A run config has no null: "" there means the rule's own default."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _schedule_fits(self) -> FederationSettings:
        if self.prewarm_rounds >= self.num_server_rounds:
            raise ValueError(
                f"prewarm-rounds ({self.prewarm_rounds}) must be fewer than "
                f"num-server-rounds ({self.num_server_rounds}) to leave a fine-tuning round"
            )
        return self

    @model_validator(mode="after")
    def _privacy_fits(self) -> FederationSettings:
        """Flower's accountant holds for FedAvg's average only, and the BatchNorm statistics
        query would release each site's statistics without noise, so DP turns it off."""
        if self.dp_noise_multiplier == 0:
            return self
        if self.fraction_train < 1:
            raise ValueError(
                "dp-noise-multiplier needs fraction-train = 1: the accountant assumes every "
                "round trains every clinic (no amplification by sampling)"
            )
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

    @model_validator(mode="after")
    def _cross_site_fits(self) -> FederationSettings:
        """A shared local model carries no noise: it would void the run's DP guarantee."""
        if self.cross_site_local_models and self.dp_noise_multiplier > 0:
            raise ValueError("cross-site-local-models cannot combine with dp-noise-multiplier > 0")
        return self

    def run_config_values(self) -> dict[str, str | int | float | bool]:
        """This config as Flower carries it (kebab-case keys, scalar values), which
        `from_run_config` reads back as the same config: `hxr simulate`'s `--run-config`."""
        text_forms: dict[str, Callable[[Any], Any]] = {
            "classes": ",".join,
            "max_examples": lambda caps: format_label_map({s: str(n) for s, n in caps.items()}),
            "label_map": format_label_map,
            "site_label_maps": format_site_label_maps,
            "server_learning_rate": lambda rate: "" if rate is None else rate,
        }
        return {
            kebab(name): text_forms.get(name, lambda value: value)(value)
            for name, value in self.model_dump().items()
        }

    def phase(self, server_round: int) -> Phase:
        """First `prewarm_rounds` rounds pre-warm the encoder, the rest fine-tune."""
        return "prewarm" if server_round <= self.prewarm_rounds else "finetune"

    def round_learning_rate(self, server_round: int) -> float:
        """The local rate of `server_round`: the phase's rate, lowered by a cosine over the
        phase's rounds. One schedule across rounds, not one restarting in every round: late
        rounds take small steps, so the global model settles instead of jumping between the
        clinics' optima."""
        if self.phase(server_round) == "prewarm":
            rate, step, steps = self.prewarm_learning_rate, server_round - 1, self.prewarm_rounds
        else:
            rate, step = self.learning_rate, server_round - self.prewarm_rounds - 1
            steps = self.num_server_rounds - self.prewarm_rounds
        if self.lr_schedule == "constant":
            return rate
        return rate * 0.5 * (1 + math.cos(math.pi * step / steps))


class FederationConfig(FederationSettings):
    """The coordinator's run config: the shared settings, the classes and where results go."""

    classes: list[str] = Field(min_length=2)
    # Clinics a round waits for before it samples (`min-train-nodes` is how many it trains).
    min_nodes: int = Field(2, ge=1)
    # Where results go; empty means `runs/<Flower run id>`. Resuming needs the same directory.
    out_dir: str = ""
    resume: bool = False
    # The most images each registered clinic may be weighed by ("north=1200,south=800"): what a
    # coordinator knows of its consortium, which no clinic's own report can raise.
    max_examples: dict[str, int] = Field(default_factory=dict)

    @field_validator("max_examples", mode="before")
    @classmethod
    def _parse_caps(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return {site: int(count) for site, count in parse_label_map(value).items()}
            except ValueError:
                raise ValueError(f"expected SITE=COUNT pairs, got {value!r}") from None
        return value

    @field_validator("classes", mode="before")
    @classmethod
    def _split_classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("classes must be distinct")
        return value

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationConfig:
        try:
            return cls.model_validate(dict(run_config))
        except ValidationError as error:
            problem = describe_validation_error(
                error, lambda part: kebab(part) if part in cls.model_fields else part
            )
            raise ConfigError(f"run config: {problem}") from None

    def run_dir(self, run_id: int) -> Path:
        return Path(self.out_dir).expanduser() if self.out_dir else Path("runs") / str(run_id)

    def round_instructions(
        self, current: int, phase: Phase, class_prior: Sequence[float] = ()
    ) -> RoundInstructions:
        """What the clinics are asked to do in round `current` of `phase`; `class_prior` is the
        pooled label share a logit-adjusted local loss targets (equal shares until known)."""
        prewarm = phase == "prewarm"
        return RoundInstructions(
            server_round=current,
            num_server_rounds=self.num_server_rounds,
            phase=phase,
            model=self.model,
            image_size=self.image_size,
            class_names=self.classes,
            local_epochs=self.prewarm_epochs if prewarm else self.local_epochs,
            learning_rate=self.round_learning_rate(current),
            optimizer="adamw" if prewarm else self.local_optimizer,
            batch_size=self.batch_size,
            seed=self.seed,
            temperature=self.temperature,
            projection_dim=self.projection_dim,
            proximal_mu=self.proximal_mu if self.strategy == "fedprox" else 0.0,
            absent_class_scale=self.absent_class_scale,
            imbalance=self.local_imbalance,
            class_prior=list(class_prior) if self.local_imbalance == "logit-adjusted" else [],
            local_batchnorm=self.local_batchnorm,
            keep_best_epoch=self.local_epoch_selection == "best",
            min_local_steps=self.min_local_steps,
            personalise_epochs=self.personalise_epochs,
            gradcam_per_class=self.gradcam_per_class,
            gradcam_size=self.gradcam_size,
        )
