"""Parameter, MAC, checkpoint-size and stage-table figures, checked by hand where possible."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hxr_model.errors import ConfigError
from hxr_model.models import build_model
from hxr_model.profiling import (
    checkpoint_size_mb,
    count_macs,
    count_parameters,
    format_profile,
    layer_macs,
    profile_model,
    stage_table,
)


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 4 x 8 x 8 outputs, 1*3*3 MACs each = 2304
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),  # 4 x 4 x 4 outputs, 9 each = 576
        nn.Conv2d(4, 8, 1),  # 8 x 4 x 4 outputs, 4 each = 512
        nn.Flatten(),
        nn.Linear(128, 2),  # 2 outputs, 128 each = 256
    )


def test_layer_macs_match_hand_count_on_a_tiny_conv_net() -> None:
    assert layer_macs(tiny_net(), 8) == {"0": 2304, "1": 576, "2": 512, "4": 256}
    assert count_macs(tiny_net(), 8) == 2304 + 576 + 512 + 256


def test_macs_agree_with_torch_flop_counter() -> None:
    model = build_model("hxr50", 2).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 64, 64))
    assert count_macs(model, 64) * 2 == counter.get_total_flops()


def test_parameters_and_checkpoint_size() -> None:
    model = build_model("hxr50", 2)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    tensor_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    assert tensor_mb < checkpoint_size_mb(model) < tensor_mb + 0.2  # plus pickle bookkeeping


def test_stage_table_of_hybridnet_adds_up() -> None:
    model = build_model("hxr50", 2)
    rows = stage_table(model, 224)
    names = [row.name for row in rows]
    assert names[0] == "encoder.stem" and names[-2:] == ["encoder.pool", "head"]
    assert all(name.startswith("encoder.stages.") for name in names[1:-2])
    assert rows[0].output_shape[1:] == (56, 56)  # the stem reaches 1/4 resolution
    assert rows[-3].output_shape[1:] == (7, 7)
    assert rows[-2].output_shape == (model.feature_dim,)
    assert rows[-1].output_shape == (2,)
    assert sum(row.params for row in rows) == count_parameters(model)
    assert sum(row.macs for row in rows) == count_macs(model, 224)


def test_stage_table_of_a_baseline_splits_its_feature_blocks() -> None:
    model = build_model("mobilenet_v2", 2)
    rows = stage_table(model, 64)
    assert len(rows) == len(model.encoder.features) + 2
    assert rows[0].output_shape == (32, 32, 32)
    assert sum(row.params for row in rows) == count_parameters(model)


def test_profile_and_its_text() -> None:
    profile = profile_model("hxr50", 64)
    model = build_model("hxr50", 2)
    assert profile.params == count_parameters(model)
    assert profile.macs == count_macs(model, 64)
    text = format_profile(profile)
    assert f"parameters: {profile.params:,}" in text
    assert "encoder.stages.0" in text and "64 x 64" in text
    # The stage Grad-CAM reads at 64 px: HybridNet-XR's first stage, 8 x 8 cells.
    assert profile.gradcam == ("encoder.stages.0", (8, 8))
    assert "Grad-CAM: encoder.stages.0 (8 x 8 cells)" in text
    assert profile_model("hxr50", 224).gradcam == ("encoder.stages.3", (7, 7))


@pytest.mark.parametrize("resolution", [27, 513])
def test_profile_rejects_resolution_outside_supported_range(resolution: int) -> None:
    with pytest.raises(ConfigError, match="resolution"):
        profile_model("hxr50", resolution)
