"""What a clinic accepts from its coordinator: one protocol version and bounded work."""

import pytest

from hxr_model.errors import ConfigError
from protocol.instructions import RoundInstructions
from server.run_config import FederationConfig

ASKED = FederationConfig(classes=["normal", "pneumonia"]).round_instructions(3, "finetune")


def test_instructions_round_trip_through_their_config_record() -> None:
    assert RoundInstructions.from_config(ASKED.to_config()) == ASKED


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"batch-size": 100_000}, "batch-size"),
        ({"local-epochs": 10_000}, "local-epochs"),
        ({"projection-dim": 1 << 20}, "projection-dim"),
        ({"class-names": [f"c{k}" for k in range(1000)]}, "class-names"),
        ({"image-size": 4096}, "image-size"),
        ({"gradcam-per-class": 1000}, "gradcam-per-class"),
        ({"class-prior": [0.2, 0.3, 0.5]}, "class-prior"),
        ({"class-prior": [1.0, 0.0]}, "class-prior"),
    ],
)
def test_unbounded_work_is_refused_by_name(change: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid '{field}'"):
        RoundInstructions.from_config(ASKED.to_config() | change)


def test_a_coordinator_of_another_protocol_version_is_refused() -> None:
    with pytest.raises(ConfigError, match="protocol version 1"):
        RoundInstructions.from_config(ASKED.to_config() | {"protocol-version": 1})
