"""Two clinics of one hospital whose radiographs were processed differently: cxr4's Kermany
images (centre-cropped, 256 px) and kermany224 (224 px, aspect ratio squashed).

Nearly every cxr4 Kermany patient is also in kermany224, so each patient goes to exactly one
clinic by a seeded hash of `patient_id`: clinic `cxr4` trains on its patients' cxr4 images,
clinic `kermany224` on its patients' kermany224 images; a patient's images in the other set are
left out and counted. The combined manifest (absolute image paths, nothing copied) is written
into the output folder, and each variant is an `hxr simulate` run on it partitioned by source,
so the pooled test split, the clinics alone and the cross-site matrix come from the simulation.

    python -m experiments.kermany_sites --out runs/kermany-sites

Each run's folder is kept; a rerun skips runs whose summary.json exists.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from experiments.shared_data import add_data_root_option
from hxr_model.text_table import format_markdown_table
from server.cross_site import FEDERATED, local_name
from simulations.baselines import add_comparison
from simulations.federation import SimulationSettings, simulate

# (clinic name, manifest under the data root, the manifest's `source` values it takes)
CLINICS = (
    ("cxr4", "cxr4/manifest.csv", {"kermany"}),
    ("kermany224", "kermany224/manifest.csv", {"kermany-224"}),
)
VARIANTS: dict[str, dict[str, Any]] = {"fedavg": {}, "fedbn": {"local_batchnorm": True}}


def clinic_of(patient_id: str, seed: int) -> str:
    """The one clinic a patient belongs to: a seeded hash, so both sets agree on it."""
    digest = hashlib.sha256(f"{seed}/{patient_id}".encode()).digest()
    return CLINICS[digest[0] % len(CLINICS)][0]


def write_manifest(data_root: Path, out: Path, seed: int) -> dict[str, int]:
    """The two clinics' images as one manifest (`source` = clinic); returns image counts."""
    rows, counts = [], {"left out (patient at the other clinic)": 0}
    for clinic, manifest, sources in CLINICS:
        counts[clinic] = 0
        with (data_root / manifest).open(newline="") as stream:
            for row in csv.DictReader(stream):
                if row["source"] not in sources:
                    continue
                if clinic_of(row["patient_id"], seed) != clinic:
                    counts["left out (patient at the other clinic)"] += 1
                    continue
                path = (data_root / manifest).parent / row["path"]
                rows.append({"path": str(path), "label": row["label"],
                             "patient_id": row["patient_id"], "source": clinic})  # fmt: skip
                counts[clinic] += 1
    out.mkdir(parents=True, exist_ok=True)
    with (out / "manifest.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["path", "label", "patient_id", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return counts


def run(settings: SimulationSettings) -> dict[str, Any]:
    """Federate (unless done before), then score every model (unless done before)."""
    summary_file = settings.out / "summary.json"
    if not summary_file.is_file():
        simulate(settings)
    if "comparison" not in json.loads(summary_file.read_text()):
        add_comparison(settings, settings.out)
    return json.loads(summary_file.read_text())


def rows_of(variant: str, summary: dict[str, Any]) -> list[list[Any]]:
    """Per model: pooled test accuracy, then its accuracy on each clinic's test share; under
    FedBN also each clinic's own version (its BatchNorm layers) on its own share."""
    comparison = summary["comparison"]
    pooled = comparison["pooled_test"]
    pooled_scores = {FEDERATED: pooled[FEDERATED]}
    pooled_scores |= {local_name(site): row for site, row in pooled["local-only"].items()}
    shares = comparison["cross_site"]["shares"]
    rows = [
        [
            f"{variant}: {model}",
            pooled_scores[model]["accuracy"],
            *(m[s]["accuracy"] for s in shares),
        ]
        for model, m in comparison["cross_site"]["models"].items()
    ]
    if VARIANTS[variant].get("local_batchnorm"):
        own = [summary["sites"][site]["personalised-accuracy"] for site in shares]
        rows.append([f"{variant}: each clinic's own BatchNorm, own share only", None, *own])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_root_option(parser)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--prewarm-rounds", type=int, default=2)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--model", default="hxr150")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    counts = write_manifest(args.data_root, args.out, args.seed)
    print("images:", ", ".join(f"{name} {count}" for name, count in counts.items()))
    table: list[list[Any]] = []
    for variant, options in VARIANTS.items():
        settings = SimulationSettings(
            data=f"csv:{args.out / 'manifest.csv'}", sites=len(CLINICS), partition="by-source",
            num_server_rounds=args.rounds, prewarm_rounds=args.prewarm_rounds,
            local_epochs=args.local_epochs, model=args.model, image_size=args.image_size,
            seed=args.seed, out=args.out / variant,
            **options,
        )  # fmt: skip
        table += rows_of(variant, run(settings))
    sites = [f"site-{k} ({name})" for k, (name, _, _) in enumerate(CLINICS, start=1)]
    header = ["model", "pooled test", *(f"on {site}'s test share" for site in sites)]
    print(format_markdown_table(header, table))


if __name__ == "__main__":
    main()
