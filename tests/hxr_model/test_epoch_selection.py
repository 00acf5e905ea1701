"""Which epoch's weights training returns."""

import torch

from hxr_model.models import build_model
from hxr_model.training import TrainConfig, train_classifier

QUIET = {"progress": False, "device": "cpu"}


def test_without_best_epoch_selection_the_last_epochs_weights_come_back(
    squares_train, squares_val
) -> None:
    """A rate so high that later epochs get worse: the best epoch is early, the last differs."""
    settings = {"epochs": 3, "batch_size": 32, "learning_rate": 0.5, "monitor": "loss", **QUIET}
    results, models = {}, {}
    for keep in (True, False):
        torch.manual_seed(0)
        models[keep] = build_model("hxr50", 2)
        config = TrainConfig(keep_best_epoch=keep, **settings)
        results[keep] = train_classifier(models[keep], squares_train, squares_val, config)
    assert results[False].best_epoch == 3  # the returned weights are the last epoch's
    assert results[True].history == results[False].history  # the same training either way
    assert results[True].best_epoch < 3  # this setup's best epoch is an early one ...
    best, last = models[True].state_dict(), models[False].state_dict()
    assert any(not torch.equal(best[name], last[name]) for name in best)  # ... kept only there
