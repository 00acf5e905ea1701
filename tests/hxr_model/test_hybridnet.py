"""HybridNet-XR building blocks: the patch stem, residual blocks and accepted input sizes."""

import pytest
import torch
from torch import nn

from hxr_model.models import build_model
from hxr_model.models.hybridnet import (
    STAGE_TABLE,
    HybridNetXREncoder,
    PatchConv,
    SeparableResidualBlock,
)


@pytest.mark.parametrize("size", [28, 30, 33])
def test_patch_conv_equals_a_strided_convolution(size: int) -> None:
    torch.manual_seed(0)
    reference = nn.Conv2d(2, 5, kernel_size=4, stride=4)
    patch = PatchConv(2, 5, kernel_size=4, stride=4)
    patch.load_state_dict(reference.state_dict())
    images = torch.rand(3, 2, size, size)
    assert torch.allclose(patch(images), reference(images), atol=1e-6)


def test_patch_conv_refuses_overlapping_patches() -> None:
    with pytest.raises(ValueError, match="kernel == stride"):
        PatchConv(1, 4, kernel_size=4, stride=2)


def test_blocks_use_identity_or_projection_shortcut() -> None:
    kept = SeparableResidualBlock(16, 16, stride=1, expansion=2)
    changed = SeparableResidualBlock(16, 32, stride=2, expansion=2)
    assert isinstance(kept.shortcut, nn.Identity)
    assert isinstance(changed.shortcut[0], nn.Conv2d) and changed.shortcut[0].stride == (2, 2)
    assert kept.depthwise[0].groups == 16 and kept.expand[0].out_channels == 32
    assert changed(torch.rand(1, 16, 8, 8)).shape == (1, 32, 4, 4)


def test_stages_follow_the_table_and_end_at_one_32nd() -> None:
    encoder = HybridNetXREncoder(1.0)
    assert [len(stage) for stage in encoder.stages] == [spec.blocks for spec in STAGE_TABLE]
    with torch.no_grad():
        spatial = encoder.stages(encoder.stem(torch.rand(1, 1, 224, 224)))
    assert spatial.shape == (1, encoder.out_channels, 7, 7)


@pytest.mark.parametrize("size", [28, 31, 97, 512])
def test_hxr150_accepts_any_side_from_28_to_512(size: int) -> None:
    model = build_model("hxr150", 2).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 1, size, size))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
