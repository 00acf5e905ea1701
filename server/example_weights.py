"""How many images each accepted update is weighed by: the clinic's report, capped.

FedAvg, FedProx and FedAdam weigh each update by the `num-examples` its clinic reports, so a
clinic reporting 2**62 images would replace the model by its own. No clinic's report can raise
its weight past `examples-cap-factor` times the round's median report, nor past the count the
coordinator registered for it (`max-examples`); honest clinics of similar size are untouched.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping


def capped_examples(
    reported: Mapping[str, int], registered: Mapping[str, int], cap_factor: float
) -> dict[str, int]:
    """Per site: min(its report, cap_factor x the median report, its registered maximum)."""
    if not reported:
        return {}
    ceiling = cap_factor * statistics.median(reported.values())
    return {
        site: max(1, int(min(count, ceiling, registered.get(site, count))))
        for site, count in reported.items()
    }
