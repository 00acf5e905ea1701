"""Grad-CAM: a known-answer case, the closed form for every registered model, the layer rule,
overlays, scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hxr_model.gradcam import (
    LocalisationSummary,
    choose_stage,
    gradcam,
    gradcam_layer,
    gradcam_stages,
    localisation_score,
    overlay_image,
    save_overlay_png,
    score_localisation,
)
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


def square_masks(images: torch.Tensor) -> np.ndarray:
    return (images[:, 0] == 1.0).numpy()  # the background never reaches 1


@pytest.fixture
def square_model(squares_train: Dataset, squares_val: Dataset) -> RadiographClassifier:
    """A full-resolution toy model that solves the bright-square task (without per-image
    equalisation, which would make every square the same share of the brightest levels as the
    noise of an empty image)."""
    torch.manual_seed(0)
    model = RadiographClassifier(
        FullResolutionEncoder(), 8, 2, "encoder.features", dropout=0.0, standardisation=None
    )
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
    assert accuracy >= 0.9, "the toy model must solve the task for the tests to mean anything"
    return model


def test_heat_map_peak_falls_inside_the_bright_square(
    square_model: RadiographClassifier, squares_val: Dataset
) -> None:
    images, labels = squares_val.images, torch.from_numpy(squares_val.labels)
    squares = images[labels == 1]
    heatmaps = gradcam(square_model, squares, [1] * len(squares))
    scores = [
        localisation_score(h, m) for h, m in zip(heatmaps, square_masks(squares), strict=True)
    ]
    assert np.mean([s["pointing_game_hit"] for s in scores]) >= 0.8
    # The square covers 64 of 1024 pixels yet holds far more than 1/16 of the heat.
    assert np.mean([s["energy_inside"] for s in scores]) > 0.5


def test_score_localisation_averages_the_images_with_a_lesion(
    square_model: RadiographClassifier, squares_val: Dataset
) -> None:
    masks = square_masks(squares_val.images)
    summary = score_localisation(square_model, squares_val, masks, batch_size=7)
    lesions = np.flatnonzero(squares_val.labels == 1)  # empty images have empty masks
    squares = squares_val.images[lesions]
    heatmaps = gradcam(square_model, squares, [1] * len(squares))
    scores = [localisation_score(h, m) for h, m in zip(heatmaps, masks[lesions], strict=True)]
    assert summary == LocalisationSummary(
        images=len(lesions),
        pointing_game=pytest.approx(np.mean([s["pointing_game_hit"] for s in scores])),
        energy_inside=pytest.approx(np.mean([s["energy_inside"] for s in scores]), abs=1e-6),
        mask_area=pytest.approx(1 / 16),  # an 8 px square in a 32 px image
    )
    assert summary.pointing_game >= 0.8 and summary.energy_inside > 0.5
    first = score_localisation(square_model, squares_val, masks, limit=3)
    assert first is not None and first.images == 3


def test_score_localisation_explains_the_true_class() -> None:
    torch.manual_seed(0)
    model = build_model("hxr50", 3).eval()
    images = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    labels = (predicted + 1) % 3  # never the predicted class
    masks = np.zeros((4, 32, 32), dtype=bool)
    masks[:, 4:20, 8:24] = True
    dataset = list(zip(images, labels.tolist(), strict=True))
    summary = score_localisation(model, dataset, masks)

    def energy(targets: torch.Tensor) -> float:
        maps = gradcam(model, images, targets.tolist())
        return float(
            np.mean(
                [
                    localisation_score(h, m)["energy_inside"]
                    for h, m in zip(maps, masks, strict=True)
                ]
            )
        )

    assert summary is not None
    assert summary.energy_inside == pytest.approx(energy(labels), abs=1e-6)
    assert summary.energy_inside != pytest.approx(energy(predicted), abs=1e-6)


def test_score_localisation_reports_nothing_without_lesions() -> None:
    model = build_model("hxr50", 2)
    dataset = [(torch.rand(1, 32, 32), 0) for _ in range(3)]
    assert score_localisation(model, dataset, None) is None
    assert score_localisation(model, dataset, np.zeros((3, 32, 32), dtype=bool)) is None
    with pytest.raises(ValueError, match="2 masks for 3 images"):
        score_localisation(model, dataset, np.ones((2, 32, 32), dtype=bool))


def test_choose_stage_by_hand() -> None:
    assert choose_stage([28, 14, 7, 7]) == 3  # 224 px: the last stage
    assert choose_stage([8, 4, 2, 2]) == 0  # 64 px: the deepest stage with 7 or more
    assert choose_stage([4, 2, 1, 1]) == 0  # 28 px: none reaches 7, so the largest
    assert choose_stage([7, 7, 3]) == 1  # the deepest of equal maps
    assert choose_stage([3, 3, 1]) == 1
    assert choose_stage([8, 4, 2, 2], min_side=1) == 3
    with pytest.raises(ValueError, match="no stage"):
        choose_stage([])


@pytest.mark.parametrize("name", model_names())
def test_layer_rule_gives_readable_maps_at_28_64_and_224_px(name: str) -> None:
    model = build_model(name, 2)
    last_stage = gradcam_stages(model)[-1][0]
    small, demo, large = (gradcam_layer(model, size) for size in (28, 64, 224))
    assert min(small.cells) >= 4
    assert min(demo.cells) >= 7  # the demo trains at 64 px
    assert min(large.cells) >= 7 and large.name == last_stage
    assert gradcam_layer(model, 64, min_side=1).name == last_stage


@pytest.mark.parametrize(("name", "size"), [("hxr50", 28), ("hxr50", 64), ("resnet18", 64)])
def test_gradcam_reads_the_layer_the_rule_names(name: str, size: int) -> None:
    """Grad-CAM computed by hand at `gradcam_layer`'s stage equals `gradcam`'s heat map."""
    torch.manual_seed(0)
    model = build_model(name, 3).eval()
    images = torch.rand(2, 1, size, size)
    targets = [2, 0]
    layer = gradcam_layer(model, size)
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(layer.name).register_forward_hook(
        lambda m, i, o: captured.append(o)
    )
    logits = model(images)
    handle.remove()
    assert tuple(captured[0].shape[-2:]) == layer.cells
    (gradients,) = torch.autograd.grad(logits[[0, 1], targets].sum(), captured[0])
    cam = F.relu((gradients.mean(dim=(2, 3), keepdim=True) * captured[0]).sum(1, keepdim=True))
    cam = F.interpolate(cam.detach(), size=(size, size), mode="bilinear", align_corners=False)
    spans = [np.ptp(expected) for expected in cam[:, 0].numpy()]
    assert max(spans) > 0, "at least one map must be non-trivial for the check to bite"
    for heatmap, expected, span in zip(
        gradcam(model, images, targets), cam[:, 0].numpy(), spans, strict=True
    ):
        expected = (expected - expected.min()) / span if span > 0 else (expected > 0)
        np.testing.assert_allclose(heatmap, expected, atol=1e-4)


@pytest.mark.parametrize("name", model_names())
def test_every_model_matches_the_closed_form(name: str) -> None:
    """Pooling + linear head: the class score's gradient per channel is W[c] / (h * w), so
    Grad-CAM is relu(sum_k W[c, k] A_k), upsampled and min-max scaled."""
    torch.manual_seed(0)
    model = build_model(name, 3).eval()
    images = torch.rand(2, 1, 64, 64)
    targets = [2, 0]
    heatmaps = gradcam(model, images, targets, min_side=1)  # the last stage

    captured: list[torch.Tensor] = []
    last_stage = gradcam_stages(model)[-1][1]
    handle = last_stage.register_forward_hook(lambda m, i, o: captured.append(o))
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
    with torch.no_grad():  # also works when the caller disabled gradients
        heatmaps = gradcam(model, torch.rand(3, 1, 48, 48))
    assert heatmaps.shape == (3, 48, 48)
    assert model.training
    assert not any(module._forward_hooks for _name, module in gradcam_stages(model))
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
