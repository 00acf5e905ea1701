"""Server-optimiser state (FedAdam and FedYogi moments, FedAvgM momentum) kept across a restart.

A resumed run must continue exactly where it stopped, and an adaptive rule's moments are part
of where it stopped; `server_state.pt` stores them per phase (`server.run_store`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.serverapp.strategy import Strategy

from protocol.schedule import Phase

# The attributes in which Flower's server optimisers keep their state (FedAdam / FedYogi /
# FedAdagrad moments, FedAvgM's momentum).
OPTIMISER_SLOTS = ("m_t", "v_t", "momentum_vector")
LIST_SLOTS = frozenset({"momentum_vector"})  # lists in the order of the weights, not dicts

ArrayDict = dict[str, np.ndarray]
OptimiserState = dict[str, dict[str, ArrayDict]]  # phase -> slot ("m_t") -> weight name -> array


def optimiser_state(strategies: Mapping[Phase, Strategy]) -> OptimiserState:
    """Each phase's moments (empty for stateless rules). FedAvgM keeps a list in the order of
    the weights; it is stored under the positions' numbers."""
    state: OptimiserState = {}
    for phase, strategy in strategies.items():
        slots = {slot: getattr(strategy, slot, None) for slot in OPTIMISER_SLOTS}
        kept = {
            slot: dict(value) if isinstance(value, dict) else dict(enumerate(value))
            for slot, value in slots.items()
            if value
        }
        if kept:
            state[phase] = {
                slot: {str(k): v for k, v in arrays.items()} for slot, arrays in kept.items()
            }
    return state


def restore_optimiser_state(strategies: Mapping[Phase, Strategy], state: OptimiserState) -> None:
    for phase, slots in state.items():
        for slot, arrays in slots.items():
            values = {k: np.array(v) for k, v in arrays.items()}
            if slot in LIST_SLOTS:
                setattr(strategies[phase], slot, [values[str(k)] for k in range(len(values))])
            else:
                setattr(strategies[phase], slot, values)
