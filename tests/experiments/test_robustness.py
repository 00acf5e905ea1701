"""The robustness study: folds that never train on the held-out style, fixed shifts, tables."""

import numpy as np
import torch

from experiments.robustness import (
    SHIFTS,
    processing_table,
    shifts_table,
    style_folds,
    styles_table,
    unseen_patients,
)
from hxr_model.data import RadiographDataset
from hxr_model.data.scan import scan


def test_each_fold_trains_and_validates_on_the_other_styles_only() -> None:
    dataset = scan("synthetic:48:4", 32).dataset
    folds = list(style_folds(dataset))
    assert [style for style, *_ in folds] == [0, 1, 2, 3]
    for style, train, val, held_out in folds:
        name = f"scanner-{style}"
        assert set(held_out.sources) == {name} and len(held_out) == 12
        assert name not in set(train.sources) | set(val.sources)
        assert len(train) + len(val) == 36 and len(val) > 0
        assert not set(train.names) & set(val.names)


def test_shifts_are_fixed_and_change_the_images() -> None:
    images = scan("synthetic:8", 32).dataset.tensors()[0]
    for name, shift in SHIFTS.items():
        view = shift(images)
        assert view.shape == images.shape and view.min() >= 0 and view.max() <= 1
        assert torch.equal(view, shift(images)), name
        assert torch.equal(view, images) == (name == "clean"), name


def test_the_tables_average_over_seeds() -> None:
    styles = [
        {
            "study": "styles",
            "arm": "before",
            "seed": seed,
            "held_out": style,
            "accuracy": value,
            "val_accuracy": 0.9,
        }
        for seed, value in ((0, 0.5), (1, 0.7))
        for style in range(4)
    ]
    table = styles_table(styles).splitlines()
    assert table[0].startswith("| arm | scanner-0 held out |")
    assert table[2] == "| before |" + " 0.600 ± 0.141 |" * 5 + " 0.900 ± 0.000 |"
    shifts = [
        {
            "study": "shifts",
            "arm": "after",
            "seed": seed,
            "scores": {name: {"accuracy": 0.25} for name in SHIFTS},
        }
        for seed in (0, 1)
    ]
    row = "| after |" + " 0.250 ± 0.000 |" * (len(SHIFTS) + 1)
    assert shifts_table(shifts).splitlines()[2] == row


def test_the_processing_shift_is_scored_on_patients_absent_from_training_data_only() -> None:
    """kermany224 shares patients with cxr4: only the others (with a known id) are unseen."""
    patients = ["kermany:person1", "kermany:person2", "kermany:person3", None, "kermany:person2"]
    shifted = RadiographDataset(
        np.zeros((5, 8, 8), np.uint8), np.array([0, 1, 2, 0, 1]), ["normal", "bacterial", "viral"],
        patient_ids=patients,
    )  # fmt: skip
    unseen = unseen_patients(shifted, {"kermany:person1", "kermany:person3"})
    assert unseen.patient_ids == ["kermany:person2", "kermany:person2"]
    assert unseen.labels.tolist() == [1, 1]


def test_the_processing_table_gives_both_views_per_arm() -> None:
    views = ("cxr4 test patients", "kermany224, patients not in cxr4")
    records = [
        {
            "study": "processing",
            "arm": "after",
            "seed": seed,
            "scores": {v: {"accuracy": acc, "balanced_accuracy": 0.5} for v in views},
        }
        for seed, acc in ((0, 0.6), (1, 0.8))
    ]
    table = processing_table(records).splitlines()
    assert table[0] == (
        "| arm | cxr4 test patients: accuracy | cxr4 test patients: balanced acc. "
        "| kermany224, patients not in cxr4: accuracy "
        "| kermany224, patients not in cxr4: balanced acc. |"
    )
    assert table[2] == "| after |" + " 0.700 ± 0.141 | 0.500 ± 0.000 |" * 2
