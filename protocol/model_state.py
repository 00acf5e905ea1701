"""Moving weights between PyTorch modules and the flat numpy state the federation exchanges.

Only floating-point tensors travel: integer buffers such as BatchNorm's `num_batches_tracked`
cannot be averaged and do not influence a forward pass with momentum-based statistics.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from hxr_model.models import RadiographClassifier
from hxr_model.prewarm import ProjectionHead
from protocol.schedule import PROJECTION_PREFIX, Phase, is_exchanged


def float_state(module: nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """Floating-point state of `module` as numpy copies, names optionally prefixed."""
    return {
        prefix + name: tensor.detach().cpu().numpy().copy()
        for name, tensor in module.state_dict().items()
        if tensor.is_floating_point()
    }


def federated_state(
    classifier: RadiographClassifier, projection: ProjectionHead
) -> dict[str, np.ndarray]:
    """Everything the federation aggregates: classifier weights and the SimCLR projection head."""
    return {**float_state(classifier), **float_state(projection, PROJECTION_PREFIX)}


def load_into(
    module: nn.Module, state: Mapping[str, np.ndarray], phase: Phase, prefix: str = ""
) -> None:
    """Copy the `prefix`ed entries of `state` into `module`: exactly the floating tensors that
    `phase` exchanges must be there (pre-warming leaves the classifier head untouched)."""
    own = module.state_dict()
    wanted = {
        name
        for name, tensor in own.items()
        if tensor.is_floating_point() and is_exchanged(prefix + name, phase)
    }
    # The classifier's names carry no prefix, so the projection head's must be set aside.
    given = {
        name[len(prefix) :]: array
        for name, array in state.items()
        if name.startswith(prefix) and (prefix or not name.startswith(PROJECTION_PREFIX))
    }
    missing = sorted(wanted - set(given))
    unexpected = sorted(set(given) - wanted)
    if missing or unexpected:
        detail = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise ValueError(f"received weights do not fit the model: {detail}")
    module.load_state_dict(
        {name: torch.from_numpy(np.array(array)) for name, array in given.items()}, strict=False
    )
