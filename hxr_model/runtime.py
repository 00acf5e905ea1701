"""Shared by training, pre-warming and distillation: device, seeds, optimiser, schedule."""

from __future__ import annotations

import random
from typing import Literal

import numpy as np
import torch
from torch import nn

OptimizerName = Literal["adamw", "sgd"]
ScheduleName = Literal["cosine", "onecycle", "constant"]


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; an explicit `cuda` on a machine without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return resolved


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG training touches; returns a CPU generator for augmentations and sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(
    parameters: list[nn.Parameter], name: OptimizerName, learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    return torch.optim.SGD(
        parameters, lr=learning_rate, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: ScheduleName, learning_rate: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule over the whole run."""
    total_steps = max(1, total_steps)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=learning_rate, total_steps=total_steps
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def autocast_context(device: torch.device):
    """Mixed precision on CUDA (bf16 where supported, else fp16); full precision on CPU."""
    if device.type != "cuda":
        return torch.autocast(device_type="cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def needs_grad_scaler(device: torch.device) -> bool:
    return device.type == "cuda" and not torch.cuda.is_bf16_supported()
