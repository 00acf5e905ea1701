"""What federation is measured against: one centralized model and every clinic alone.

Both baselines get the federation's budget (SimCLR epochs = pre-warm rounds x pre-warm epochs,
then fine-tuning epochs = fine-tuning rounds x local epochs) and the clinics' own splits, and
are scored on each clinic's evaluation split, like the federated model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from client.site_data import FederationLabels, SiteData, load_site_data
from hxr_model.data import DataSplits
from hxr_model.models import RadiographClassifier, build_model
from hxr_model.prewarm import PrewarmConfig, prewarm_encoder
from hxr_model.training import LabelledDataset, TrainConfig, evaluate_classifier, train_classifier
from server.report import write_report
from server.run_store import RunStore
from server.summary import EVALUATION_KEYS, write_summary
from simulations.federation import (
    SimulationSettings,
    federation_config,
    load_settings_splits,
    simulated_sites,
)

ALL_SITES = "all clinics"


def train_baseline(
    train: LabelledDataset, val: LabelledDataset | None, settings: SimulationSettings
) -> RadiographClassifier:
    """Pre-warm then fine-tune one model on `train` with the federation's total epochs."""
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, len(train.class_names))
    prewarm_epochs = settings.prewarm_rounds * settings.prewarm_epochs
    if prewarm_epochs:
        images: Dataset = ConcatDataset([train, val]) if val is not None and len(val) else train
        prewarm_encoder(
            model,
            images,
            PrewarmConfig(
                epochs=prewarm_epochs,
                batch_size=settings.batch_size,
                seed=settings.seed,
                device=settings.device,
                progress=False,
            ),
        )
    train_classifier(
        model,
        train,
        val if val is not None and len(val) else None,
        TrainConfig(
            epochs=(settings.num_server_rounds - settings.prewarm_rounds) * settings.local_epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            seed=settings.seed,
            device=settings.device,
            progress=False,
        ),
    )
    return model


def _scores(model: RadiographClassifier, dataset: FederationLabels, device: str) -> dict:
    metrics = evaluate_classifier(model, dataset, device=device)
    return {
        "num-examples": metrics["n"],
        "accuracy": metrics["accuracy"],
        "balanced-accuracy": metrics["balanced_accuracy"],
        "auc": metrics["auc"],
        "ece": metrics["ece"],
        "loss": metrics["loss"],
    }


def weighted_mean(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Example-weighted mean over clinics, as the federation aggregates its own scores."""
    combined: dict[str, float | None] = {}
    for key in EVALUATION_KEYS:
        pairs = [(row[key], row["num-examples"]) for row in rows if row.get(key) is not None]
        total = sum(weight for _, weight in pairs)
        combined[key] = sum(v * w for v, w in pairs) / total if total else None
    return combined


def compare_baselines(
    settings: SimulationSettings, splits: DataSplits
) -> dict[str, dict[str, dict]]:
    """Scores per clinic (and over all clinics) of the centralized and local-only models."""
    class_names = splits.class_names
    sites: dict[str, SiteData] = {}
    clinics = simulated_sites(settings)
    for index in range(settings.sites):
        site = clinics.site(index, settings.sites)
        sites[site.name] = load_site_data(site, class_names, settings.image_size)
    identity = np.arange(len(class_names))
    pooled_train = FederationLabels(splits.train, identity, class_names)
    pooled_val = FederationLabels(splits.val, identity, class_names)
    print("baseline: one model on all clinics' images ...", flush=True)
    centralized = train_baseline(pooled_train, pooled_val, settings)
    results: dict[str, dict[str, dict]] = {"centralized": {}, "local-only": {}}
    for name, data in sorted(sites.items()):
        results["centralized"][name] = _scores(centralized, data.evaluation, settings.device)
        print(f"baseline: {name} alone ...", flush=True)
        local = train_baseline(data.train, data.val, settings)
        results["local-only"][name] = _scores(local, data.evaluation, settings.device)
    for table in results.values():
        table[ALL_SITES] = weighted_mean(list(table.values()))
    return results


def add_baselines(settings: SimulationSettings, run_dir: Path) -> dict[str, dict[str, dict]]:
    """Train both baselines and rewrite summary.json and report.html with the comparison."""
    splits = load_settings_splits(settings)
    baselines = compare_baselines(settings, splits)
    config = federation_config(settings, splits.class_names)
    store = RunStore(run_dir)
    records = store.read_rounds()
    federated_sites = records[-1].evaluate.sites if records else {}
    federated = {
        site: {key: metrics.get(key) for key in ("num-examples", *EVALUATION_KEYS)}
        for site, metrics in federated_sites.items()
    }
    federated[ALL_SITES] = weighted_mean(list(federated.values()))
    summary = write_summary(
        store, config, records, {"baselines": {"federated": federated, **baselines}}
    )
    write_report(store, config, records, summary)
    return baselines
