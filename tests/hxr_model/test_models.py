import pytest
import torch

from hxr_model.models import MODELS, build_model
from hxr_model.models.classifier import DEFAULT_STD
from hxr_model.models.hybridnet import HybridNetXREncoder, make_divisible


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size", [28, 64, 224])
def test_every_model_maps_a_radiograph_batch_to_class_logits(name: str, size: int) -> None:
    model = build_model(name, num_classes=6).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, size, size))
    assert logits.shape == (2, 6)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_encoder_head_split_and_gradcam_layer(name: str) -> None:
    model = build_model(name, num_classes=3).eval()
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        features = model.features(images)
        assert features.shape == (2, model.feature_dim)
        assert torch.allclose(model.head(features), model(images))
    captured = []
    handle = model.gradcam_module().register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(images)
    handle.remove()
    assert captured[0].ndim == 4 and captured[0].shape[0] == 2


def test_widths_scale_the_hybridnet_variants() -> None:
    params = {
        name: sum(p.numel() for p in build_model(name, 2).parameters())
        for name in ("hxr50", "hxr100", "hxr150")
    }
    assert params["hxr50"] < params["hxr100"] < params["hxr150"]
    assert HybridNetXREncoder(1.5).out_channels == make_divisible(256 * 1.5)


def test_stem_reaches_quarter_resolution_before_the_first_stage() -> None:
    encoder = HybridNetXREncoder(1.0)
    assert encoder.stem(torch.rand(1, 1, 224, 224)).shape[-1] == 56


def test_unknown_model_and_bad_class_count_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'hxr999'"):
        build_model("hxr999", 2)
    with pytest.raises(ValueError, match="at least 2"):
        build_model("hxr50", 1)


def test_make_divisible_rounds_to_multiples_of_eight() -> None:
    assert make_divisible(16 * 0.5) == 8
    assert make_divisible(32 * 1.5) == 48
    assert make_divisible(3) == 8


def test_input_normalisation_is_configuration_not_exchanged_state() -> None:
    """Weights travel (federated averaging, privacy noise) through the state dict: the fixed
    normalisation must not, or noise could make its std zero or negative."""
    model = build_model("hxr50", 2)
    assert not [name for name in model.state_dict() if name.startswith("normalize")]
    model.load_state_dict(build_model("hxr50", 2).state_dict())
    assert float(model.normalize.std) == DEFAULT_STD


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_tracks_batchnorm_statistics_at_the_same_rate(name: str) -> None:
    """A clinic trains a few hundred steps: BatchNorm running statistics must follow the weights
    at PyTorch's default rate in every model, baselines included (torchvision's MobileNetV3 uses
    0.01, which left them far behind and its accuracy near chance on cxr4)."""
    model = build_model(name, num_classes=2)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(norm.momentum == 0.1 for norm in norms)
