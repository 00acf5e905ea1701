"""Checkpoints: exact round trip, one-line errors, refusal of code payloads, atomic writes,
intensity standardisation stored and older checkpoints without it loaded unchanged."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import torch

from hxr_model.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from hxr_model.errors import CheckpointError
from hxr_model.models import RadiographClassifier, build_model
from hxr_model.standardisation import (
    DEFAULT_STANDARDISATION,
    IntensityStandardisation,
    StandardisationConfig,
)

CLASSES = ["normal", "pneumonia"]


def trained_like_model() -> RadiographClassifier:
    """hxr50 with non-default dropout, normalisation and batch-norm statistics."""
    torch.manual_seed(0)
    model = build_model("hxr50", 2, dropout=0.3, mean=0.45, std=0.3)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 1, 32, 32))  # moves the running statistics off their defaults
    return model.eval()


def save(path: Path, model: RadiographClassifier | None = None, **overrides: Any) -> None:
    arguments: dict[str, Any] = {
        "model_name": "hxr50",
        "class_names": CLASSES,
        "image_size": 32,
        "threshold": 0.42,
        "metadata": {"epochs": 3, "metrics": {"auc": 0.91}, "seed": 0},
    }
    save_checkpoint(path, model or trained_like_model(), **(arguments | overrides))


def payload(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def expect_error(path: Path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
    return message


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = trained_like_model()
    path = tmp_path / "run" / "model.pt"
    save(path, model)
    loaded = load_checkpoint(path)

    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), model(images))
    assert not loaded.model.training
    assert loaded.model_name == "hxr50"
    assert loaded.class_names == CLASSES
    assert loaded.image_size == 32
    assert loaded.threshold == 0.42
    assert loaded.metadata == {"epochs": 3, "metrics": {"auc": 0.91}, "seed": 0}
    assert loaded.model.head[0].p == 0.3
    assert float(loaded.model.normalize.mean) == pytest.approx(0.45)
    assert float(loaded.model.normalize.std) == pytest.approx(0.3)


def test_standardisation_is_stored_and_the_round_trip_gives_equal_outputs(
    tmp_path: Path,
) -> None:
    model = trained_like_model()
    custom = StandardisationConfig(low_percentile=2.0, high_percentile=97.5, equalise=False)
    model.standardize = IntensityStandardisation(custom)
    path = tmp_path / "model.pt"
    save(path, model)
    assert payload(path)["config"]["standardisation"] == custom.model_dump()
    loaded = load_checkpoint(path).model
    assert loaded.standardize.config == custom

    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        outputs = model(images)
        assert torch.equal(loaded(images), outputs)
        assert torch.equal(loaded(images), outputs)  # deterministic: no state changes
        model.standardize = IntensityStandardisation(None)
        assert not torch.allclose(model(images), outputs)  # the stored step mattered


def test_new_models_store_the_default_standardisation(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save(path)
    assert load_checkpoint(path).model.standardize.config == DEFAULT_STANDARDISATION


def test_checkpoint_from_before_standardisation_loads_without_it(tmp_path: Path) -> None:
    """A checkpoint written before the step existed has no such field: its model must see its
    images as it always did."""
    model = trained_like_model()
    path = tmp_path / "model.pt"
    save(path, model)
    content = payload(path)
    del content["config"]["standardisation"]
    torch.save(content, path)

    loaded = load_checkpoint(path).model
    assert loaded.standardize.config is None
    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        model.standardize = IntensityStandardisation(None)
        assert torch.equal(loaded(images), model(images))


def test_multiclass_checkpoint_without_threshold(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    model = build_model("hxr50", 4)
    save(path, model, class_names=list("abcd"), threshold=None, metadata=None)
    loaded = load_checkpoint(path)
    assert (loaded.class_names, loaded.threshold, loaded.metadata) == (list("abcd"), None, {})


def test_checkpoint_is_one_marked_file_with_config(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save(path)
    content = payload(path)
    assert content["format"] == FORMAT
    assert content["version"] == 1
    assert content["config"]["model_name"] == "hxr50"
    assert content["config"]["num_classes"] == 2
    assert content["config"]["dropout"] == 0.3
    assert "head.1.weight" in content["state_dict"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_metadata_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save(tmp_path / "model.pt", metadata={"when": object()})
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "absent.pt", "no such checkpoint file")


@pytest.mark.parametrize(
    "content", [b"", b"definitely not a checkpoint" * 10], ids=["empty", "garbage"]
)
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    expect_error(path, "not a checkpoint")


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(path, "corrupt, truncated")


def test_foreign_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(trained_like_model().state_dict(), path)  # a bare state_dict, no marker
    expect_error(path, "not a HybridNet-XR checkpoint")


def test_newer_format_version(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save(path)
    content = payload(path)
    torch.save(content | {"version": 99}, path)
    expect_error(path, "version 99 is not supported")


def with_config(path: Path, **changes: Any) -> Path:
    """A saved checkpoint whose config was then edited, as by hand or by another program."""
    save(path)
    content = payload(path)
    content["config"] |= changes
    torch.save(content, path)
    return path


def test_invalid_config_names_the_field(tmp_path: Path) -> None:
    path = with_config(tmp_path / "model.pt", class_names=["only-one"])
    expect_error(path, "model config: .*1 class names for 2 classes")


def test_unknown_model_name(tmp_path: Path) -> None:
    expect_error(with_config(tmp_path / "model.pt", model_name="hxr999"), "unknown model 'hxr999'")


def test_mismatched_shapes(tmp_path: Path) -> None:
    path = with_config(tmp_path / "model.pt", model_name="hxr100")  # same keys, 2x the channels
    message = expect_error(path, "weights do not match the model")
    assert "has shape" in message


def test_missing_and_unexpected_tensors(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save(path)
    content = payload(path)
    content["state_dict"]["extra.weight"] = content["state_dict"].pop("head.1.bias")
    torch.save(content, path)
    expect_error(path, "1 missing tensor.*'head.1.bias'.*1 unexpected tensor.*'extra.weight'")


class CreatesMarkerFile:
    """Unpickling this calls open(marker, "w"): a harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    marker = tmp_path / "payload-ran"
    save(path)
    content = payload(path)
    content["metadata"] = {"notes": CreatesMarkerFile(marker)}
    torch.save(content, path)

    torch.load(path, weights_only=False)  # proves the payload is live when unpickled unsafely
    assert marker.exists()
    marker.unlink()

    message = expect_error(path, "refused")
    assert "open" in message
    assert not marker.exists()


def test_atomic_write_leaves_only_the_checkpoint(tmp_path: Path) -> None:
    save(tmp_path / "model.pt")
    save(tmp_path / "model.pt")  # overwriting goes through a temporary file too
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_interrupted_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.pt"
    save(path)
    before = path.read_bytes()

    def crash_halfway(obj: Any, handle: Any) -> None:
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        save(path, threshold=0.9)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert load_checkpoint(path).threshold == 0.42
