"""Label-flip study: one clinic of five swaps two classes; FedAvg against FedMedian.

Four federations on the same clinics (IID partition, so only the flipping differs): FedAvg and
FedMedian, each with no flipping clinic and with clinic 1 flipping. Every final global model is
scored centrally on the whole validation split with its true labels (the federation's own
evaluation would score the flipping clinic against its flipped labels).

    python -m experiments.label_flip --out runs/label-flip

Each run's folder is kept; a rerun skips runs whose summary.json exists.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from experiments.shared_data import SHARED_DATASETS, add_data_root_option
from hxr_model.checkpoint import load_checkpoint
from hxr_model.text_table import format_markdown_table
from hxr_model.training import evaluate_classifier
from simulations.federation import SimulationSettings, load_settings_splits, simulate

FLIPPING_CLINIC = 1
STRATEGIES = ("fedavg", "fedmedian")


def swap_map(class_names: list[str]) -> dict[str, str]:
    """Every class as itself, except the first two, which trade names."""
    first, second = class_names[:2]
    return {name: name for name in class_names} | {first: second, second: first}


def run(settings: SimulationSettings) -> dict[str, Any]:
    """Federate (unless done before) and score the global model on the true validation labels."""
    run_dir = settings.out
    if not (run_dir / "summary.json").is_file():
        simulate(settings)
    summary = json.loads((run_dir / "summary.json").read_text())
    validation = load_settings_splits(settings).val
    model = load_checkpoint(run_dir / "global_model.pt").model
    scores = evaluate_classifier(model, validation, device="cpu")
    return {
        "strategy": settings.strategy,
        "flipping_clinic": FLIPPING_CLINIC if settings.site_label_maps else None,
        "accuracy": scores["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"],
        "auc": scores["auc"],
        "val_images": scores["n"],
        "rejected_updates": len(summary["rejected"]),
        "run_dir": str(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/label-flip"))
    add_data_root_option(parser)
    parser.add_argument("--data", help="data reference (default: PneumoniaMNIST in --data-root)")
    parser.add_argument("--model", default="hxr50")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.cpus)
    common = SimulationSettings(
        data=args.data or SHARED_DATASETS["pneumoniamnist"].ref(args.data_root),
        sites=5,
        partition="iid",
        rounds=args.rounds,
        prewarm_rounds=0,
        local_epochs=1,
        model=args.model,
        image_size=28,
        gradcam_per_class=0,
        seed=args.seed,
        cpus=args.cpus,
        device="cpu",
        out=args.out,
    )
    flip = {FLIPPING_CLINIC: swap_map(load_settings_splits(common).class_names)}
    rows = []
    for strategy in STRATEGIES:
        for flipped in (False, True):
            name = f"{strategy}-{'flip' if flipped else 'clean'}"
            print(f"{name} ...", flush=True)
            settings = common.model_copy(
                update={
                    "strategy": strategy,
                    "site_label_maps": flip if flipped else {},
                    "out": args.out / name,
                }
            )
            rows.append(run(settings))
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(results_table(rows))


def results_table(rows: list[dict[str, Any]]) -> str:
    return format_markdown_table(
        ("strategy", "flipping clinic", "val accuracy", "balanced acc.", "AUC"),
        [
            (
                row["strategy"],
                row["flipping_clinic"] or "none",
                f"{row['accuracy']:.4f}",
                f"{row['balanced_accuracy']:.4f}",
                f"{row['auc']:.4f}",
            )
            for row in rows
        ],
    )


if __name__ == "__main__":
    main()
