"""What honest clinics' updates look like: the distribution behind `max-update-ratio`'s default.

Every federated run records, per accepted clinic and round, ||update - global|| / ||global||
over the learned weights (`update_ratios` in `rounds.jsonl`). This reads run folders of honest
runs and prints the distribution per phase and the bound it suggests: three times the largest
honest ratio, and never below 1 (a ratio of about 1.4 is what replacing the model by an
unrelated one of the same norm takes, so a bound near 1 keeps every update a nudge).
Run after the optimisation defaults change:
`python -m experiments.update_ratios runs/demo runs/pneumonia ...`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from hxr_model.text_table import format_table
from server.run_store import RunStore

SAFETY_FACTOR = 3.0
FLOOR = 1.0


def ratios_by_phase(run_dirs: Iterable[Path]) -> dict[str, list[float]]:
    phases: dict[str, list[float]] = {}
    for run_dir in run_dirs:
        for record in RunStore(run_dir).read_rounds():
            phases.setdefault(record.phase, []).extend(record.update_ratios.values())
    return phases


def suggested_bound(ratios: Sequence[float]) -> float:
    return max(FLOOR, SAFETY_FACTOR * max(ratios))


def report(phases: dict[str, list[float]]) -> str:
    rows = [
        [phase, len(values), *(f"{q:.3f}" for q in np.quantile(values, [0.5, 0.95, 1.0]))]
        for phase, values in sorted(phases.items())
        if values
    ]
    everything = [value for values in phases.values() for value in values]
    table = format_table(["phase", "updates", "median", "95th pct", "max"], rows)
    return f"{table}\nsuggested max-update-ratio: {suggested_bound(everything):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of honest federations")
    print(report(ratios_by_phase(parser.parse_args().runs)))


if __name__ == "__main__":
    main()
