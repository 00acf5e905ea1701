"""One-file model checkpoints that are safe to load from an untrusted source.

A checkpoint holds a format marker, the weights, everything needed to rebuild the model (name,
classes, dropout, intensity standardisation, normalisation, input size, decision threshold) and
JSON metadata. Loading uses `torch.load(weights_only=True)`, which only rebuilds tensors and plain
containers, so a file crafted to run code when unpickled is refused before anything in it runs.
Writes are atomic (`hxr_model.atomic_files`), so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hxr_model.atomic_files import write_atomic
from hxr_model.errors import CheckpointError, describe_validation_error
from hxr_model.models import RadiographClassifier, build_model, check_model_name
from hxr_model.standardisation import IntensityStandardisation, StandardisationConfig

FORMAT = "hybridnet-xr-checkpoint"
VERSION = 1


class ModelConfig(BaseModel):
    """What `build_model` needs to rebuild the saved model, plus how to use its outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    num_classes: int = Field(ge=2)
    dropout: float = Field(ge=0.0, lt=1.0)
    mean: float
    std: float = Field(gt=0.0)
    class_names: list[str]
    image_size: int = Field(ge=1)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # None (also what checkpoints written before standardisation existed read as): images reach
    # the normalisation unchanged, so those models keep their outputs.
    standardisation: StandardisationConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        check_model_name(self.model_name)
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.threshold is not None and self.num_classes != 2:
            raise ValueError("a decision threshold only applies to binary tasks")
        return self


@dataclass
class LoadedCheckpoint:
    model: RadiographClassifier
    model_name: str
    class_names: list[str]
    image_size: int
    threshold: float | None
    metadata: dict[str, Any]


def save_checkpoint(
    path: Path,
    model: RadiographClassifier,
    *,
    model_name: str,
    class_names: Sequence[str],
    image_size: int,
    threshold: float | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write `model` and its configuration to `path` atomically (parent folders are created).

    `metadata` must be JSON-serialisable (training settings, metrics, data provenance). The file
    is readable by its owner only, as it derives from patient data.
    """
    config = ModelConfig(
        model_name=model_name,
        num_classes=model.num_classes,
        dropout=model.head[0].p,
        mean=float(model.normalize.mean),
        std=float(model.normalize.std),
        class_names=list(class_names),
        image_size=image_size,
        threshold=threshold,
        standardisation=model.standardize.config,
    )
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.model_dump(),
        "metadata": json.loads(json.dumps(dict(metadata or {}))),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    write_atomic(Path(path), lambda handle: torch.save(payload, handle))


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """Name the forbidden object when torch's weights-only unpickler says which one it was."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found:
        return f"refused: it would call {found.group(1)} when loaded (not a plain weights file)"
    return "refused: it holds objects other than tensors and plain data, or is corrupt"


def _read(path: Path, device: torch.device) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a checkpoint (corrupt, truncated or another format)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: {_refusal_reason(error)}") from None
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: corrupt checkpoint ({reason})") from None


def _config(path: Path, payload: Any) -> ModelConfig:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a HybridNet-XR checkpoint (no {FORMAT!r} marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('version')!r} is not supported "
            f"(this release reads version {VERSION})"
        )
    try:
        return ModelConfig.model_validate(payload.get("config"))
    except ValidationError as error:
        problem = describe_validation_error(error)
        raise CheckpointError(f"{path}: model config: {problem}") from None


def _check_weights(path: Path, model: RadiographClassifier, state: Any) -> None:
    """Name the first missing, unexpected or mis-shaped tensor instead of torch's long report."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state_dict is not a mapping of tensors")
    expected = model.state_dict()
    problems = []
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing:
        problems.append(f"{len(missing)} missing tensor(s), e.g. {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]!r}")
    for key in sorted(expected.keys() & state.keys()):
        if state[key].shape != expected[key].shape:
            problems.append(
                f"{key!r} has shape {tuple(state[key].shape)}, "
                f"the model needs {tuple(expected[key].shape)}"
            )
            break
    if problems:
        raise CheckpointError(f"{path}: weights do not match the model: {'; '.join(problems)}")


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the saved model on `device` in eval mode; any problem is one CheckpointError line."""
    path = Path(path)
    device = torch.device(device)
    payload = _read(path, device)
    config = _config(path, payload)
    model = build_model(
        config.model_name,
        config.num_classes,
        dropout=config.dropout,
        mean=config.mean,
        std=config.std,
    )
    model.standardize = IntensityStandardisation(config.standardisation)
    state = payload.get("state_dict")
    _check_weights(path, model, state)
    model.load_state_dict(state)
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: metadata is not a mapping")
    return LoadedCheckpoint(
        model=model.to(device).eval(),
        model_name=config.model_name,
        class_names=list(config.class_names),
        image_size=config.image_size,
        threshold=config.threshold,
        metadata=metadata,
    )
