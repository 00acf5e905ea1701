"""Which clinics a round trains and evaluates: a seeded draw over site names.

With `fraction-train` below 1 a round trains `max(int(fraction x connected), min-train-nodes)`
clinics (Flower's sizing), and likewise for evaluation. Flower draws node IDs with Python's
global random generator, and node IDs are new in every process (a simulation registers fresh
ones when it resumes), so its draw cannot be repeated. Here the draw is over the clinics' site
names, sorted, with a generator seeded by (run seed, round, stage): a resumed run trains the
clinics the uninterrupted one would have, and any run can say which clinics a round drew.

A clinic's name comes from its registered SuperNode name, or from its replies; a clinic the
coordinator has not heard from yet is asked in a roll call (a `query` message it answers with
its site name only) before the first draw that needs it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from server.round_record import Stage


def sample_size(available: int, fraction: float, minimum: int) -> int:
    """Clinics a stage draws from `available`: none when `fraction` is 0."""
    if fraction == 0 or available == 0:
        return 0
    return min(available, max(int(available * fraction), minimum))


def draw_clinics(
    sites: Mapping[int, str], count: int, seed: int, server_round: int, stage: Stage
) -> list[int]:
    """`count` of the nodes in `sites` (node -> site name), the same for the same names and
    arguments whatever the node IDs; all of them, in name order, when `count` covers them."""
    order = sorted(sites, key=lambda node: (sites[node], node))
    if count >= len(order):
        return order
    chosen = random.Random(f"{seed}/{server_round}/{stage}").sample(range(len(order)), count)
    return [order[index] for index in sorted(chosen)]
