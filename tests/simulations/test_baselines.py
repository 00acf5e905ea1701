"""One fair test for every model: the pooled test split, the comparison on it, the cross-site
matrix."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from client.site_data import load_site_data
from hxr_model.data.phantoms import PHANTOM_CLASSES
from protocol.instructions import MAX_CROSS_SITE_CLINICS
from server.cross_site import FEDERATED, sampled_clinics
from simulations.baselines import (
    compare_models,
    local_summary,
    scores,
    train_baseline,
    train_baselines,
)
from simulations.federation import SimulationSettings, clinic_site, load_settings_splits

# The federation's budget, which each comparison model trains with: a pre-warm round, then a
# fine-tuning round of one local epoch.
SMALL_BUDGET = {"num_server_rounds": 2, "prewarm_rounds": 1, "local_epochs": 1}


def clinics_data(settings: SimulationSettings):
    splits = load_settings_splits(settings)
    clinics = [
        load_site_data(clinic_site(settings, k), splits.class_names, settings.image_size)
        for k in range(settings.sites)
    ]
    return splits, clinics


def names(dataset) -> set[str]:
    """Image names of a split, or of a clinic's (federation-labelled) share of one."""
    return set(getattr(dataset, "dataset", dataset).names)


def write_patient_manifest(root: Path) -> Path:
    """Two hospitals, 30 patients with two radiographs each, labels by patient."""
    rows = []
    rng = np.random.default_rng(0)
    for patient in range(30):
        for view in range(2):
            path = root / f"p{patient}-{view}.png"
            Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
            label = ("normal", "pneumonia")[patient % 2]
            rows.append([path.name, label, f"patient-{patient}", f"hospital-{patient % 3 // 2}"])
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id", "source"])
        writer.writerows(rows)
    return manifest


def test_the_pooled_test_split_shares_no_patient_with_any_clinics_training(tmp_path) -> None:
    manifest = write_patient_manifest(tmp_path)
    settings = SimulationSettings(data=f"csv:{manifest}", sites=2, image_size=32, out=tmp_path)
    splits, clinics = clinics_data(settings)
    pooled = set(splits.test.patient_ids)
    assert pooled
    for clinic in clinics:
        for part in (clinic.train, clinic.val):
            assert not pooled & set(part.dataset.patient_ids)
    assert set().union(*(set(c.test.dataset.patient_ids) for c in clinics)) == pooled


def test_a_file_without_a_test_split_gets_one_carved_before_partitioning(tmp_path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (120, 28, 28), dtype=np.uint8)
    labels = (np.arange(120) % 2).reshape(-1, 1).astype(np.uint8)
    path = tmp_path / "trainval.npz"
    np.savez(path, train_images=images[:100], train_labels=labels[:100],
             val_images=images[100:], val_labels=labels[100:])  # fmt: skip
    settings = SimulationSettings(
        data=f"medmnist:{path}", sites=3, partition="iid", image_size=28, out=tmp_path
    )
    splits, clinics = clinics_data(settings)
    pooled = names(splits.test)
    assert 14 <= len(pooled) <= 16  # 15 % of the training images, stratified by class
    for clinic in clinics:
        assert not pooled & (names(clinic.train) | names(clinic.val))
    assert set().union(*(names(clinic.test) for clinic in clinics)) == pooled


class AlwaysSays(nn.Module):
    """A classifier that predicts class `label` for every image."""

    def __init__(self, label: int, classes: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(label), classes) * 5.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(images), -1)


def test_the_cross_site_matrix_has_every_model_on_every_share_and_a_known_answer(
    tmp_path, monkeypatch
) -> None:
    """A model that always predicts class 0 scores, at every clinic, that class's share."""
    settings = SimulationSettings(
        data="synthetic:96:2", sites=2, image_size=32, batch_size=16, out=tmp_path, **SMALL_BUDGET
    )
    splits, clinics = clinics_data(settings)
    classes = len(PHANTOM_CLASSES)
    monkeypatch.setattr(
        "simulations.baselines.train_baselines",
        lambda jobs, settings: {name: AlwaysSays(1, classes) for name in jobs},
    )
    comparison = compare_models(settings, splits, AlwaysSays(0, classes), centralized=True)
    matrix = comparison["cross_site"]
    assert matrix["shares"] == ["site-1", "site-2"]
    assert set(matrix["models"]) == {FEDERATED, "centralized", "site-1 alone", "site-2 alone"}
    for share, clinic in zip(matrix["shares"], clinics, strict=True):
        labels = clinic.evaluation.labels
        assert matrix["models"][FEDERATED][share]["accuracy"] == pytest.approx(np.mean(labels == 0))
        assert matrix["models"]["site-1 alone"][share]["accuracy"] == pytest.approx(
            np.mean(labels == 1)
        )
    pooled = comparison["pooled_test"]
    assert pooled["num-examples"] == len(splits.test)
    assert pooled[FEDERATED]["accuracy"] == pytest.approx(np.mean(splits.test.labels == 0))


def test_real_local_models_are_trained_with_the_federations_budget(tmp_path) -> None:
    settings = SimulationSettings(
        data="synthetic:48:2", sites=2, image_size=32, batch_size=16, out=tmp_path, **SMALL_BUDGET
    )
    splits, _ = clinics_data(settings)
    classes = len(PHANTOM_CLASSES)
    comparison = compare_models(settings, splits, AlwaysSays(0, classes), centralized=False)
    local = comparison["pooled_test"]["local-only"]
    assert set(local) == {"site-1", "site-2"} and "centralized" not in comparison["pooled_test"]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in local.values())


def test_baselines_trained_side_by_side_are_those_trained_one_after_the_other(tmp_path) -> None:
    """Two worker processes, one torch thread each: the same weights as training each model
    here on one thread, whichever worker took it."""
    settings = SimulationSettings(
        data="synthetic:48:2", sites=2, image_size=32, batch_size=16, out=tmp_path, cpus=2,
        **SMALL_BUDGET,
    )  # fmt: skip
    _, clinics = clinics_data(settings)
    jobs = {f"clinic {k}": (clinic.train, clinic.val) for k, clinic in enumerate(clinics)}
    side_by_side = train_baselines(jobs, settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_by_one = {name: train_baseline(*job, settings) for name, job in jobs.items()}
    finally:
        torch.set_num_threads(threads)
    assert set(side_by_side) == set(jobs)
    for name, model in one_by_one.items():
        expected = model.state_dict()
        for key, value in side_by_side[name].state_dict().items():
            assert torch.equal(value, expected[key]), (name, key)
    first, second = (side_by_side[name].state_dict() for name in jobs)
    assert not all(torch.equal(first[key], second[key]) for key in first)  # two real models


def test_the_local_summary_names_the_best_clinic_and_the_mean() -> None:
    row = {"auc": None, "ece": 0.1, "loss": 1.0, "balanced-accuracy": 0.5}
    local = {"a": {**row, "accuracy": 0.6}, "b": {**row, "accuracy": 0.8}}
    summary = local_summary(local)
    assert summary["best"]["site"] == "b" and summary["mean"]["accuracy"] == pytest.approx(0.7)
    assert "auc" not in summary["mean"]  # undefined everywhere


def test_scores_report_recall_only_for_classes_present(tmp_path) -> None:
    settings = SimulationSettings(data="synthetic:48:2", sites=2, image_size=32, out=tmp_path)
    _, clinics = clinics_data(settings)
    result = scores(AlwaysSays(0, len(PHANTOM_CLASSES)), clinics[0].evaluation, "cpu")
    present = set(clinics[0].evaluation.labels.tolist())
    for index, recall in enumerate(result["per-class-recall"]):
        assert (recall is None) == (index not in present)


def test_beyond_twenty_clinics_the_comparison_is_a_seeded_sample() -> None:
    assert sampled_clinics(5, seed=0) == [0, 1, 2, 3, 4]
    sample = sampled_clinics(300, seed=0)
    assert len(sample) == MAX_CROSS_SITE_CLINICS == len(set(sample)) and sample == sorted(sample)
    assert sample == sampled_clinics(300, seed=0) != sampled_clinics(300, seed=1)
    assert all(0 <= k < 300 for k in sample)
