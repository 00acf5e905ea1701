"""Grad-CAM: a known-answer case, the closed form for every registered model, overlays, scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hxr_model.gradcam import gradcam, localisation_score, overlay_image, save_overlay_png
from hxr_model.models import RadiographClassifier, build_model, model_names


class FullResolutionEncoder(nn.Module):
    """Two 3x3 convolutions without downsampling, so Grad-CAM can point at single pixels."""

    out_channels = 8

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


def test_heat_map_peak_falls_inside_the_bright_square(
    squares_train: Dataset, squares_val: Dataset
) -> None:
    torch.manual_seed(0)
    model = RadiographClassifier(FullResolutionEncoder(), 8, 2, "encoder.features", dropout=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(squares_train, batch_size=32, shuffle=True)
    for _ in range(20):
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    images, labels = squares_val.images, torch.from_numpy(squares_val.labels)
    model.eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.9, "the toy model must solve the task for the test to mean anything"
    squares = images[labels == 1]
    heatmaps = gradcam(model, squares, [1] * len(squares))
    masks = (squares[:, 0] == 1.0).numpy()  # the background never reaches 1
    scores = [localisation_score(h, m) for h, m in zip(heatmaps, masks, strict=True)]
    assert np.mean([s["pointing_game_hit"] for s in scores]) >= 0.8
    # The square covers 64 of 1024 pixels yet holds far more than 1/16 of the heat.
    assert np.mean([s["energy_inside"] for s in scores]) > 0.5


@pytest.mark.parametrize("name", model_names())
def test_every_model_matches_the_closed_form(name: str) -> None:
    """Pooling + linear head: the class score's gradient per channel is W[c] / (h * w), so
    Grad-CAM is relu(sum_k W[c, k] A_k), upsampled and min-max scaled."""
    torch.manual_seed(0)
    model = build_model(name, 3).eval()
    images = torch.rand(2, 1, 64, 64)
    targets = [2, 0]
    heatmaps = gradcam(model, images, targets)

    captured: list[torch.Tensor] = []
    handle = model.gradcam_module().register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(images)
        handle.remove()
        weights = model.head[1].weight[targets]
        cam = F.relu(torch.einsum("bk,bkhw->bhw", weights, captured[0]))[:, None]
        cam = F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    for heatmap, expected in zip(heatmaps, cam.numpy(), strict=True):
        span = expected.max() - expected.min()
        if span > 0:
            expected = (expected - expected.min()) / span
        np.testing.assert_allclose(heatmap, expected, atol=1e-4)

    assert heatmaps.shape == (2, 64, 64)
    assert heatmaps.dtype == np.float32
    assert np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0.0
    assert heatmaps.max() == 1.0, "at least one map must be non-trivial for the check to bite"


def test_gradcam_leaves_the_model_as_it_found_it() -> None:
    model = build_model("hxr50", 2).train()
    layer = model.gradcam_module()
    with torch.no_grad():  # also works when the caller disabled gradients
        heatmaps = gradcam(model, torch.rand(3, 1, 48, 48))
    assert heatmaps.shape == (3, 48, 48)
    assert model.training
    assert not layer._forward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_default_target_is_the_predicted_class() -> None:
    torch.manual_seed(1)
    model = build_model("resnet18", 2).eval()
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        predicted = model(images).argmax(1).tolist()
    np.testing.assert_array_equal(gradcam(model, images), gradcam(model, images, predicted))


def test_one_target_per_image_is_required() -> None:
    with pytest.raises(ValueError, match="one target class per image"):
        gradcam(build_model("hxr50", 2), torch.rand(2, 1, 32, 32), [0])


def test_overlay_colours_by_hand() -> None:
    # jet(0) = (0, 0, 0.5) and jet(1) = (0.5, 0, 0); alpha 0.5 blends half gray, half colour.
    image = np.array([[0, 255]], dtype=np.uint8)
    overlay = overlay_image(image, np.array([[0.0, 1.0]]), alpha=0.5)
    assert overlay.mode == "RGB"
    assert overlay.size == (2, 1)
    np.testing.assert_array_equal(np.asarray(overlay), [[[0, 0, 64], [191, 128, 128]]])


def test_overlay_accepts_float_images_and_resizes_the_heat_map() -> None:
    overlay = overlay_image(np.full((1, 40, 30), 0.5, dtype=np.float32), np.zeros((10, 10)))
    assert overlay.size == (30, 40)
    # Gray 0.5 blended with jet(0) at alpha 0.45: (0.275, 0.275, 0.5).
    np.testing.assert_array_equal(np.asarray(overlay)[0, 0], [70, 70, 128])


def test_save_overlay_png(tmp_path: Path) -> None:
    path = tmp_path / "out" / "case.png"
    save_overlay_png(path, np.zeros((16, 24), dtype=np.uint8), np.ones((16, 24)))
    with Image.open(path) as written:
        assert (written.format, written.mode, written.size) == ("PNG", "RGB", (24, 16))


def test_localisation_score_by_hand() -> None:
    heat = np.zeros((4, 4))
    heat[1, 2] = 1.0  # row 1, column 2: x = 2, y = 1
    heat[3, 0] = 0.5
    inside = localisation_score(heat, (2, 1, 3, 2))
    assert inside == {"pointing_game_hit": True, "energy_inside": pytest.approx(1 / 1.5)}
    transposed = localisation_score(heat, (1, 2, 2, 3))
    assert transposed == {"pointing_game_hit": False, "energy_inside": 0.0}
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 2] = mask[3, 0] = True
    assert localisation_score(heat, mask) == {"pointing_game_hit": True, "energy_inside": 1.0}
    assert localisation_score(np.zeros((4, 4)), mask)["energy_inside"] == 0.0


def test_localisation_mask_must_match_the_heat_map() -> None:
    with pytest.raises(ValueError, match="mask shape"):
        localisation_score(np.zeros((4, 4)), np.zeros((3, 4)))
