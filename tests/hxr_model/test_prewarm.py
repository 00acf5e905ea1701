import math

import pytest
import torch

from hxr_model.models import build_model
from hxr_model.prewarm import PrewarmConfig, encoder_state, nt_xent_loss, prewarm_encoder


def test_nt_xent_matches_a_hand_computed_value() -> None:
    # Two orthogonal images, each view identical to its pair: every row sees its positive at
    # similarity 1/T and two negatives at 0, so loss = log(1 + 2 exp(-1/T)).
    views = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for temperature in (1.0, 0.5):
        expected = math.log(1 + 2 * math.exp(-1 / temperature))
        assert nt_xent_loss(views, views * 3, temperature).item() == pytest.approx(expected)


def test_nt_xent_rewards_matching_views() -> None:
    torch.manual_seed(0)
    anchors = torch.randn(8, 16)
    matched = nt_xent_loss(anchors, anchors + 0.01 * torch.randn(8, 16), 0.2)
    shuffled = nt_xent_loss(anchors, anchors[torch.randperm(8)], 0.2)
    assert matched < shuffled


def test_nt_xent_refuses_mismatched_views() -> None:
    with pytest.raises(ValueError, match="views"):
        nt_xent_loss(torch.zeros(4, 8), torch.zeros(3, 8), 0.5)


def test_prewarming_lowers_the_contrastive_loss_and_trains_only_the_encoder(squares_train):
    model = build_model("hxr50", 2)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in encoder_state(model).items()}
    config = PrewarmConfig(epochs=4, batch_size=32, device="cpu", progress=False)
    result = prewarm_encoder(model, squares_train, config)
    assert result.losses[-1] < result.losses[0]
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())
    changed = [k for k, v in encoder_state(model).items() if not torch.equal(v, encoder_before[k])]
    assert changed
    assert result.peak_memory_mb >= 0 and result.images_per_s > 0


def test_prewarmed_encoder_loads_into_a_fresh_classifier(squares_train) -> None:
    model = build_model("hxr50", 2)
    prewarm_encoder(model, squares_train, PrewarmConfig(epochs=1, device="cpu", progress=False))
    state = encoder_state(model)
    assert all(key.startswith("encoder.") for key in state)
    fresh = build_model("hxr50", 2)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and all(key.startswith("head.") for key in missing)
    images = torch.rand(3, 1, 32, 32)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.allclose(model.features(images), fresh.features(images))
