"""What federation is measured against, on one fair test: the pooled test split.

The pooled test split is carved from all clinics' sources before partitioning, patient-grouped,
and never trained or tuned on; each clinic's test share is its part of it. The federated model,
each clinic's own model (what it could train alone) and, if asked, one centralized model on all
clinics' images are scored on it, and on every clinic's share (the cross-site matrix, as in
NVFlare's cross-site validation). The comparison models get the federation's budget: the same
passes over each image (SimCLR epochs = pre-warm rounds x pre-warm epochs, then fine-tuning
epochs = fine-tuning rounds x local epochs). In binary tasks every model is scored at the
threshold its own validation data supports, by one rule (`hxr_model.metrics.threshold_choice`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from client.local_model import train_alone
from client.site_data import FederationLabels, SiteData, load_site_data
from hxr_model.data import DataSplits
from hxr_model.errors import ConfigError
from hxr_model.metrics import score_histogram, threshold_choice
from hxr_model.models import RadiographClassifier, build_model
from hxr_model.prewarm import PrewarmConfig
from hxr_model.runtime import resolve_device
from hxr_model.training import (
    LabelledDataset,
    TrainConfig,
    evaluate_classifier,
    predict_probabilities,
)
from server.cross_site import FEDERATED, local_name, sampled_clinics
from server.model_selection import served_model, served_threshold
from server.report import write_report
from server.run_store import RunStore
from server.summary import EVALUATION_KEYS, write_summary
from simulations.federation import (
    SimulationSettings,
    clinic_site,
    federation_config,
    load_settings_splits,
)

CENTRALIZED = "centralized"


def train_baseline(
    train: LabelledDataset, val: LabelledDataset | None, settings: SimulationSettings
) -> RadiographClassifier:
    """One model on `train` alone with the federation's budget, trained as a clinic trains
    its local-only model for the deployment's cross-site round (`client.local_model`)."""
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, len(train.class_names))
    common = {"seed": settings.seed, "device": settings.device, "progress": False}
    prewarm = PrewarmConfig(
        epochs=settings.prewarm_rounds * settings.prewarm_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.prewarm_learning_rate,
        temperature=settings.temperature,
        projection_dim=settings.projection_dim,
        **common,
    )
    finetune = TrainConfig(
        epochs=(settings.num_server_rounds - settings.prewarm_rounds) * settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        optimizer=settings.local_optimizer,
        **common,
    )
    train_alone(model, train, val, prewarm, finetune)
    return model


BaselineJob = tuple[LabelledDataset, LabelledDataset | None]


def _baseline_weights(job: BaselineJob, settings: SimulationSettings) -> dict[str, torch.Tensor]:
    """A worker process's share: one baseline, returned as weights (the picklable part)."""
    return train_baseline(*job, settings).state_dict()


def train_baselines(
    jobs: Mapping[str, BaselineJob], settings: SimulationSettings
) -> dict[str, RadiographClassifier]:
    """Train every comparison model, as many at once as the simulation has cores.

    The models are independent, and small models on small images use a second thread poorly:
    one process per core with one torch thread each (as every simulated clinic trains, in its
    Ray actor) halves the demo's baseline time on two cores against one process on both. Each
    model is seeded alone, so it does not depend on which worker trains it or when. On a GPU,
    or with one core, they are trained here, one after the other.
    """
    workers = min(len(jobs), settings.cpus or len(os.sched_getaffinity(0)))
    if workers <= 1 or resolve_device(settings.device).type != "cpu":
        return {name: train_baseline(*job, settings) for name, job in jobs.items()}
    # The largest first, so the last to finish is a small one.
    order = sorted(jobs, key=lambda name: -len(jobs[name][0]))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, context, initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        futures = {name: pool.submit(_baseline_weights, jobs[name], settings) for name in order}
        models = {}
        for name in jobs:
            model = build_model(settings.model, len(jobs[name][0].class_names))
            model.load_state_dict(futures[name].result())
            models[name] = model
    return models


def validation_threshold(
    model: RadiographClassifier, val: Dataset | None, device: str
) -> float | None:
    """Binary tasks: the threshold `threshold_choice` picks on the model's own validation
    images, the rule the federated model's threshold follows on the clinics' pooled counts."""
    if val is None or not len(val) or len(val.class_names) != 2:
        return None
    labels, probabilities = predict_probabilities(model, val, device=device)
    choice = threshold_choice(score_histogram(labels, probabilities[:, 1]))
    return None if choice is None else choice["threshold"]


def scores(
    model: RadiographClassifier, dataset: Dataset, device: str, threshold: float | None = None
) -> dict[str, Any]:
    """A model's figures on one test set, named as the federation names them; in binary tasks
    with a `threshold`, accuracy and recalls are those at it (accuracy at 0.5 kept beside)."""
    metrics = evaluate_classifier(model, dataset, device=device, threshold=threshold)
    recall = [cls["recall"] if cls["support"] else None for cls in metrics["per_class"].values()]
    accuracy, balanced = metrics["accuracy"], metrics["balanced_accuracy"]
    if "accuracy_at_threshold" in metrics:
        at_threshold = (metrics["specificity_at_threshold"], metrics["sensitivity_at_threshold"])
        recall = [
            value if old is not None else None
            for value, old in zip(at_threshold, recall, strict=True)
        ]
        accuracy = metrics["accuracy_at_threshold"]
        balanced = float(np.mean([value for value in recall if value is not None]))
    return {
        "num-examples": metrics["n"],
        "accuracy": accuracy,
        "accuracy-at-0.5": metrics["accuracy"],
        "threshold": threshold,
        "balanced-accuracy": balanced,
        "auc": metrics["auc"],
        "ece": metrics["ece"],
        "loss": metrics["loss"],
        "per-class-recall": recall,
    }


def local_summary(local: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The clinics' own models on the pooled test split: their mean, and the best of them."""
    mean = {
        key: float(np.mean([row[key] for row in local.values() if row[key] is not None]))
        for key in EVALUATION_KEYS
        if any(row[key] is not None for row in local.values())
    }
    best_site = max(local, key=lambda site: local[site]["accuracy"])
    return {"mean": mean, "best": {"site": best_site, **local[best_site]}}


def compare_models(
    settings: SimulationSettings,
    splits: DataSplits,
    federated: RadiographClassifier,
    centralized: bool,
    federated_threshold: float | None = None,
) -> dict[str, Any]:
    """Every model on the pooled test split and on each clinic's test share (cross-site)."""
    class_names = splits.class_names
    if splits.test is None or not len(splits.test):
        raise ConfigError("the simulation has no pooled test split to compare models on")
    sites: dict[str, SiteData] = {}
    for index in sampled_clinics(settings.sites, settings.seed):
        site = clinic_site(settings, index)
        sites[site.name] = load_site_data(site, class_names, settings.image_size)
    identity = np.arange(len(class_names))
    pooled_test = FederationLabels(splits.test, identity, class_names)
    device = settings.device
    jobs: dict[str, BaselineJob] = {}
    if centralized:
        pooled_train = FederationLabels(splits.train, identity, class_names)
        pooled_val = FederationLabels(splits.val, identity, class_names)
        jobs[CENTRALIZED] = (pooled_train, pooled_val)
    for name, data in sorted(sites.items()):
        jobs[local_name(name)] = (data.train, data.val)
    described = ", ".join(
        ["one model on all clinics' images"] * centralized + [f"{len(sites)} clinics alone"]
    )
    print(f"baselines: {described}, same budget ...", flush=True)
    models: dict[str, RadiographClassifier] = {
        FEDERATED: federated,
        **train_baselines(jobs, settings),
    }
    thresholds: dict[str, float | None] = {FEDERATED: federated_threshold}
    for name, job in jobs.items():
        thresholds[name] = validation_threshold(models[name], job[1], device)
    pooled = {
        name: scores(model, pooled_test, device, thresholds[name]) for name, model in models.items()
    }
    local = {site: pooled[local_name(site)] for site in sorted(sites)}
    shares = sorted(sites)
    matrix = {
        name: {
            site: scores(model, sites[site].evaluation, device, thresholds[name]) for site in shares
        }
        for name, model in models.items()
    }
    return {
        "pooled_test": {
            "num-examples": len(pooled_test),
            **{name: pooled[name] for name in models if name in (FEDERATED, CENTRALIZED)},
            "local-only": local,
            "local-only summary": local_summary(local),
        },
        "cross_site": {"shares": shares, "models": matrix},
    }


def add_comparison(
    settings: SimulationSettings, run_dir: Path, centralized: bool = False
) -> dict[str, Any]:
    """Train the comparison models, score everything, and rewrite summary.json and report.html
    with the comparison (the federation's own records are not touched)."""
    splits = load_settings_splits(settings)
    config = federation_config(settings, splits.class_names)
    store = RunStore(run_dir)
    records = store.read_rounds()
    federated, _ = served_model(store, config)
    threshold = served_threshold(records, config)
    comparison = compare_models(settings, splits, federated, centralized, threshold)
    summary = write_summary(store, config, records, {"comparison": comparison})
    write_report(store, config, records, summary)
    return comparison
