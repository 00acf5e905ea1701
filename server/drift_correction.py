"""SCAFFOLD's control variates (Karimireddy et al. 2020, option I), kept by the server.

Under label skew each clinic's local steps follow its own gradient, and the clinics' updates
pull the global model towards their own optima in turn (measured on cxr4 by source: a one-class
clinic's share swings between recalled and erased from round to round). SCAFFOLD adds to every
local step the federation's mean gradient less the clinic's own, both measured at the global
weights of a round the clinic trained in, so each clinic descends an estimate of the
federation's objective rather than its own.

The server keeps every clinic's control variate (its mean gradient, reported with its update)
and sends each clinic its shift, their mean less its own; a clinic keeps nothing between
rounds, so a restarted SuperNode or a clinic drawn only now and then is corrected alike, and a
resumed run continues with the table (`server_state.pt`). A report replaces the clinic's entry,
so no clinic gains influence round by round; a clinic not yet in the table is sent no shift
(its own gradient is unknown, so the mean is its best estimate).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord

from protocol.arrays import decode_checked, specs_of
from protocol.schedule import is_statistic
from server.update_validation import UpdateRejected

ArrayDict = dict[str, np.ndarray]
# Where `server_state.pt` keeps the table, beside the phases' server-optimiser moments.
CONTROL_VARIATES_KEY = "control-variates"


def trainable(state: Mapping[str, np.ndarray]) -> ArrayDict:
    """The learned weights of a state: what gradients and shifts are about."""
    return {name: array for name, array in state.items() if not is_statistic(name)}


def checked_gradient(record: ArrayRecord, sent: Mapping[str, np.ndarray]) -> ArrayDict:
    """A clinic's reported mean gradient: one finite array per learned weight it was sent,
    each of that weight's dtype and shape."""
    gradient = decode_checked(record, specs_of(trainable(sent)))
    for name, array in gradient.items():
        if not np.all(np.isfinite(array)):
            raise UpdateRejected(f"drift correction: '{name}' contains NaN or infinite values")
    return gradient


class ControlVariates:
    """Each clinic's latest mean gradient by site name, and the shifts they give."""

    def __init__(self, table: Mapping[str, ArrayDict] | None = None) -> None:
        self.table: dict[str, ArrayDict] = {site: dict(g) for site, g in (table or {}).items()}

    def mean(self) -> ArrayDict:
        gradients = list(self.table.values())
        return {
            name: np.mean([g[name] for g in gradients], axis=0, dtype=np.float64)
            for name in gradients[0]
        }

    def shift_for(self, site: str) -> ArrayDict | None:
        """The mean gradient less the site's own, or None for a site not yet in the table."""
        if site not in self.table:
            return None
        own = self.table[site]
        return {name: (c - own[name]).astype(own[name].dtype) for name, c in self.mean().items()}

    def report(self, site: str, gradient: ArrayDict) -> None:
        self.table[site] = gradient
