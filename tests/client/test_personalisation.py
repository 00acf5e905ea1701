"""FedBN and personalisation at the clinic: which weights stay local, and what is reported."""

import math

import numpy as np
import torch
from flwr.app import Context, RecordDict

from client.client_app import LOCAL_BATCHNORM_KEY, keep_local_batchnorm, with_local_batchnorm
from client.local_rounds import evaluate_round, personalised_model
from client.site_config import simulated_site
from client.site_data import load_site_data
from hxr_model.data.phantoms import PHANTOM_CLASSES
from hxr_model.models import build_model
from protocol.arrays import from_record
from protocol.model_state import float_state
from protocol.schedule import batchnorm_names
from server.run_config import FederationConfig

CLASSES = list(PHANTOM_CLASSES)


def instructions(server_round: int = 3, **settings):
    config = FederationConfig(
        classes=CLASSES, image_size=32, batch_size=16, local_epochs=1, num_server_rounds=4,
        gradcam_per_class=0, **settings,
    )  # fmt: skip
    return config.round_instructions(server_round, "finetune")


def clinic(images: int = 48):
    site = simulated_site(0, 2, f"synthetic:{images}:2", "by-source", 0, privacy="none")
    return site, load_site_data(site, CLASSES, 32)


def global_state() -> dict[str, np.ndarray]:
    return float_state(build_model("hxr50", len(CLASSES)))


def test_batchnorm_names_are_the_statistics_and_affine_weights_of_batchnorm_layers() -> None:
    model = build_model("hxr50", len(CLASSES))
    state = float_state(model)
    expected = {
        f"{layer}.{suffix}"
        for layer, module in model.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        for suffix in ("weight", "bias", "running_mean", "running_var")
    }
    assert expected and batchnorm_names(state) == expected
    assert not any(name.startswith("head.") for name in batchnorm_names(state))


def test_under_fedbn_a_clinic_trains_from_its_own_batchnorm_and_keeps_it() -> None:
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    fedbn = instructions(local_batchnorm=True)
    sent = global_state()
    assert with_local_batchnorm(sent, context, fedbn) == sent  # first round: nothing kept yet
    own = {name: array + 1.0 for name, array in sent.items()}
    keep_local_batchnorm(own, context, fedbn)
    kept = from_record(context.state.array_records[LOCAL_BATCHNORM_KEY])
    assert set(kept) == batchnorm_names(sent)
    start = with_local_batchnorm(sent, context, fedbn)
    for name in sent:
        expected = own[name] if name in kept else sent[name]
        np.testing.assert_array_equal(start[name], expected, err_msg=name)
    # without FedBN the same context changes nothing and keeps nothing
    plain = instructions()
    assert with_local_batchnorm(sent, context, plain) == sent


def test_personalisation_fine_tunes_the_head_only_and_only_in_the_last_round() -> None:
    site, data = clinic()
    sent = global_state()
    assert personalised_model(sent, {}, instructions(personalise_epochs=2), site, data) is None
    model = personalised_model(sent, {}, instructions(4, personalise_epochs=2), site, data)
    tuned = float_state(model)
    learned = {n for n, p in model.named_parameters()}
    changed = {n for n in learned if not np.array_equal(tuned[n], sent[n])}
    assert changed and all(name.startswith("head.") for name in changed)


def test_the_evaluate_reply_holds_global_and_personalised_scores() -> None:
    site, data = clinic()
    sent = global_state()
    plain, _ = evaluate_round(sent, instructions(4), site, data)
    assert math.isnan(plain.personalised_accuracy)
    personal, _ = evaluate_round(sent, instructions(4, personalise_epochs=2), site, data)
    assert personal.accuracy == plain.accuracy  # the global model's score is unchanged
    assert 0 <= personal.personalised_accuracy <= 1
    assert len(personal.personalised_per_class_recall) == len(CLASSES)
