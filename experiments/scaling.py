"""Seconds per round and peak memory as a simulated federation grows, with a fixed sample.

Each row runs `hxr simulate` in its own process on `synthetic:6000:4` (HXR-50, 64 px, the
demo's other defaults) with N clinics and 10 drawn per round for training and for evaluation.
With a fixed dataset each clinic holds fewer images as N grows, so its training gets cheaper;
`--images-per-clinic K` grows the data with the clinics instead (synthetic:N*K:4), which keeps
the clinics' own work per round constant and leaves what the rest of the round costs in view
(the clinics' summed training seconds are reported beside the round's).
While it runs, the proportional set size (PSS: shared pages split between the processes that
map them, so the Ray workers' shared libraries and the memory-mapped image cache count once)
of the whole process tree (driver, Ray's services, the clinic actors) is summed every half
second; the peak is reported. Seconds per round come from the run's own `rounds.jsonl` (every
message of the round). Round 1 also holds the one-off costs (each Ray worker decodes and
partitions the data once, the roll call asks every clinic its name), so it is reported apart
and the steady rounds by their median.

    python -m experiments.scaling --sites 10,30,100,300 --rounds 6
    python -m experiments.scaling --sites 10,30,100,300 --rounds 6 --images-per-clinic 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hxr_model.text_table import format_markdown_table
from simulations.process_guard import descendants

SAMPLED = 10
POLL_S = 0.5


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pss_mib(root: int) -> float:
    """PSS of `root` and every descendant, in MiB."""
    return sum(_pss_kib(pid) for pid in {root} | descendants(root)) / 1024


def run_row(
    sites: int, rounds: int, folder: Path, images_per_clinic: int | None, extra: list[str]
) -> dict[str, object]:
    out = folder / f"sites-{sites}"
    fraction = min(1.0, SAMPLED / sites)
    data = f"synthetic:{images_per_clinic * sites if images_per_clinic else 6000}:4"
    command = [
        str(Path(sys.executable).with_name("hxr")),
        "simulate",
        *("--data", data, "--sites", str(sites), "--rounds", str(rounds)),
        *("--fraction-train", f"{fraction:.6f}", "--fraction-evaluate", f"{fraction:.6f}"),
        *("--min-train-nodes", str(SAMPLED), "--min-evaluate-nodes", str(SAMPLED)),
        *("--out", str(out), "--no-local-baselines", *extra),
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.wait(POLL_S):
            peak = max(peak, tree_pss_mib(process.pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, errors = process.communicate()
    stop.set()
    watcher.join()
    wall = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"{sites} clinics failed:\n{errors.decode()[-2000:]}")
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    seconds = [record["seconds"] for record in records]
    trained = {len(record["train"]["sites"]) for record in records}
    training = [
        sum(site["seconds"] for site in record["train"]["sites"].values()) for record in records
    ]
    examples = [
        site["num-examples"] for record in records for site in record["train"]["sites"].values()
    ]
    return {
        "clinics": sites,
        "data": data,
        "trained per round": ",".join(map(str, sorted(trained))),
        "training images per clinic": round(statistics.mean(examples)),
        "clinic training s/round": round(statistics.median(training[1:]), 2),
        "round 1 s": round(seconds[0], 1),
        "median s/round (2..)": round(statistics.median(seconds[1:]), 2),
        "peak PSS MiB": round(peak),
        "wall s": round(wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", default="10,30,100,300")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    parser.add_argument(
        "--images-per-clinic",
        type=int,
        default=None,
        help="grow the data with the clinics (synthetic:N*K:4) instead of synthetic:6000:4",
    )
    args, extra = parser.parse_known_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="hxr-scaling-"))
    rows = []
    for sites in (int(value) for value in args.sites.split(",")):
        rows.append(run_row(sites, args.rounds, folder, args.images_per_clinic, extra))
        print(json.dumps(rows[-1]), flush=True)
    print(format_markdown_table(list(rows[0]), [list(row.values()) for row in rows]))
    base = rows[0]["median s/round (2..)"]
    for row in rows[1:]:
        ratio = row["median s/round (2..)"] / base
        print(
            f"{row['clinics']} clinics: {ratio:.2f}x the seconds per round of {rows[0]['clinics']}"
        )


if __name__ == "__main__":
    main()
