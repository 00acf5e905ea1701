"""HybridNet-XR: a plain PyTorch library (no Flower) for memory-frugal chest-radiograph models."""

from hxr_model.models import build_model, model_names

__all__ = ["build_model", "model_names"]
