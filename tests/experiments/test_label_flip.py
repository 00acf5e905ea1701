"""The label-flip study's flipping clinic and its results table."""

from experiments.label_flip import results_table, swap_map


def test_the_flipping_clinic_swaps_the_first_two_classes_only() -> None:
    assert swap_map(["normal", "pneumonia", "covid"]) == {
        "normal": "pneumonia",
        "pneumonia": "normal",
        "covid": "covid",
    }


def test_the_table_names_the_flipping_clinic_or_none() -> None:
    scores = {"accuracy": 0.93514, "balanced_accuracy": 0.8862, "auc": 0.97468}
    rows = [
        {"strategy": "fedavg", "flipping_clinic": None, **scores},
        {"strategy": "fedmedian", "flipping_clinic": 1, **scores},
    ]
    assert results_table(rows).splitlines() == [
        "| strategy | flipping clinic | val accuracy | balanced acc. | AUC |",
        "|---|---|---|---|---|",
        "| fedavg | none | 0.9351 | 0.8862 | 0.9747 |",
        "| fedmedian | 1 | 0.9351 | 0.8862 | 0.9747 |",
    ]
