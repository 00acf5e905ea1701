"""Server-optimiser moments (FedAdam, FedYogi, FedAdagrad) kept across a restart.

A resumed run must continue exactly where it stopped, and an adaptive rule's moments are part
of where it stopped; `server_state.pt` stores them per phase (`server.run_store`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.serverapp.strategy import Strategy

from protocol.schedule import Phase

# The attributes in which Flower's adaptive strategies keep their moments.
OPTIMISER_SLOTS = ("m_t", "v_t")

ArrayDict = dict[str, np.ndarray]
OptimiserState = dict[str, dict[str, ArrayDict]]  # phase -> slot ("m_t") -> weight name -> array


def optimiser_state(strategies: Mapping[Phase, Strategy]) -> OptimiserState:
    """Each phase's moments (empty for stateless rules)."""
    state: OptimiserState = {}
    for phase, strategy in strategies.items():
        slots = {slot: getattr(strategy, slot, None) for slot in OPTIMISER_SLOTS}
        kept = {slot: dict(value) for slot, value in slots.items() if value}
        if kept:
            state[phase] = kept
    return state


def restore_optimiser_state(strategies: Mapping[Phase, Strategy], state: OptimiserState) -> None:
    for phase, slots in state.items():
        for slot, arrays in slots.items():
            setattr(strategies[phase], slot, {k: np.array(v) for k, v in arrays.items()})
