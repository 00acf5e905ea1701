"""The deployment's cross-site round, with real ClientApps on the in-process grid: its matrix,
a clinic that does not share its local model, a hostile local model, the local model's budget
and the sampling beyond 20 clinics."""

import json

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.client_app import build_client_app
from client.local_model import local_model_round
from client.site_config import SiteConfig, simulated_site, site_from_node_config
from client.site_data import load_site_data
from protocol.arrays import from_record, to_record
from protocol.instructions import LocalModelInstructions
from protocol.records import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVALUATE_MODEL_ACTION,
    LOCAL_MODEL_ACTION,
    STATISTICS_ACTION,
)
from protocol.schedule import phase_state
from server.cross_site import (
    FEDERATED,
    cross_site_instructions,
    cross_site_matrix,
    local_name,
    sampled_clinics,
)
from server.federation import initial_state, run_federation
from simulations.baselines import train_baseline
from simulations.federation import SimulationSettings

from .conftest import DATA, SITES, LocalGrid, honest_app


def sharing_site(context: Context) -> SiteConfig:
    """A virtual clinic whose site config lets its local model leave it."""
    site = site_from_node_config(context.node_config, context.run_config)
    return site.model_copy(update={"share_local_model": True})


def sharing_app() -> ClientApp:
    return build_client_app(sharing_site)


def cross_site_config(make_config, **overrides):
    return make_config(cross_site_local_models=True, **overrides)


def summary_of(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_every_model_is_scored_on_every_share_and_a_refusing_clinic_is_named(
    make_config,
) -> None:
    """site-1 shares its local model, site-2's config does not allow it: the matrix holds the
    global model and site-1's, each on both clinics' test shares, and names site-2's refusal."""
    grid = LocalGrid({100: sharing_app(), 101: honest_app()}, SITES)
    run_dir = run_federation(grid, cross_site_config(make_config), run_id=1)
    summary = summary_of(run_dir)
    matrix = summary["cross_site"]
    assert matrix["shares"] == ["site-1", "site-2"] and matrix["clinics"] == 2
    assert list(matrix["models"]) == [FEDERATED, local_name("site-1")]
    for row in matrix["models"].values():
        assert list(row) == matrix["shares"]
        for cell in row.values():
            assert 0 <= cell["accuracy"] <= 1 and cell["num-examples"] > 0
    # The global model scores what the last round's evaluation scored, share by share.
    for site in matrix["shares"]:
        assert matrix["models"][FEDERATED][site]["accuracy"] == summary["sites"][site]["accuracy"]
    assert set(matrix["local_validation"]) == {"site-1"}
    (refusal,) = matrix["incidents"]
    assert refusal["site"] == "site-2" and refusal["model"] == local_name("site-2")
    assert refusal["reason"] == "DisclosureRefused at the site (details in its log)"
    report = (run_dir / "report.html").read_text()
    assert "Cross-site matrix" in report and "DisclosureRefused at the site" in report


def test_a_finished_run_resumed_with_the_setting_gains_its_matrix_and_no_round(
    make_config,
) -> None:
    config = make_config()
    run_dir = run_federation(LocalGrid({100: sharing_app(), 101: sharing_app()}, SITES), config, 1)
    rounds = (run_dir / "rounds.jsonl").read_text()
    assert "cross_site" not in summary_of(run_dir)
    resumed = cross_site_config(make_config, resume=True)
    run_federation(LocalGrid({100: sharing_app(), 101: sharing_app()}, SITES), resumed, 2)
    matrix = summary_of(run_dir)["cross_site"]
    assert list(matrix["models"]) == [FEDERATED, *(local_name(s) for s in ("site-1", "site-2"))]
    assert not matrix["incidents"]
    assert (run_dir / "rounds.jsonl").read_text() == rounds


def test_a_local_model_that_is_not_finite_is_rejected_and_the_round_goes_on(make_config) -> None:
    honest = sharing_app()
    app = ClientApp()

    @app.query(LOCAL_MODEL_ACTION)
    def poisoned(message: Message, context) -> Message:
        reply = honest(message, context)
        weights = from_record(reply.content[ARRAYS_KEY])
        reply.content[ARRAYS_KEY] = to_record({n: a * np.nan for n, a in weights.items()})
        return reply

    app.train()(honest)
    app.evaluate()(honest)
    for action in (STATISTICS_ACTION, EVALUATE_MODEL_ACTION):
        app.query(action)(honest)
    grid = LocalGrid({100: sharing_app(), 101: app}, SITES)
    matrix = summary_of(run_federation(grid, cross_site_config(make_config), run_id=1))
    matrix = matrix["cross_site"]
    assert list(matrix["models"]) == [FEDERATED, local_name("site-1")]
    (rejected,) = matrix["incidents"]
    assert (rejected["site"], rejected["outcome"]) == ("site-2", "rejected")
    assert "NaN" in rejected["reason"]


def test_the_local_model_is_the_simulations_local_baseline(make_config) -> None:
    """Same data, same budget (one SimCLR epoch, then one fine-tuning epoch), same seed: the
    clinic's local model has exactly the weights of the simulation's baseline for it."""
    config = make_config()
    instructions = LocalModelInstructions(
        **cross_site_instructions(config, models=2),
        prewarm_rounds=config.prewarm_rounds,
        prewarm_epochs=config.prewarm_epochs,
        prewarm_learning_rate=config.prewarm_learning_rate,
    )
    site = simulated_site(0, SITES, DATA, "by-source", 0)
    data = load_site_data(site, config.classes, config.image_size)
    initial = phase_state(initial_state(config), "finetune")
    weights, metrics = local_model_round(initial, instructions, site, data)
    settings = SimulationSettings(
        **config.model_dump(include=set(SimulationSettings.model_fields)), out="unused"
    )
    baseline = train_baseline(data.train, data.val, settings)
    assert metrics.num_examples == len(data.train)
    for name, tensor in baseline.state_dict().items():
        if tensor.is_floating_point():
            np.testing.assert_allclose(weights[name], tensor.numpy(), atol=1e-6, err_msg=name)
    assert not all(np.array_equal(weights[n], initial[n]) for n in initial)  # it did train


def test_the_local_models_budget_is_the_federations_passes_over_each_image(make_config) -> None:
    config = make_config(num_server_rounds=5, prewarm_rounds=2, local_epochs=3, prewarm_epochs=2)
    instructions = LocalModelInstructions(
        **cross_site_instructions(config, models=3),
        prewarm_rounds=config.prewarm_rounds,
        prewarm_epochs=config.prewarm_epochs,
        prewarm_learning_rate=config.prewarm_learning_rate,
    )
    assert (instructions.prewarm_budget, instructions.finetune_budget) == (4, 9)
    assert instructions.learning_rate == config.learning_rate  # not a later round's lower rate


def test_beyond_20_clinics_the_matrix_is_a_seeded_sample(make_config) -> None:
    assert sampled_clinics(5, seed=0) == [0, 1, 2, 3, 4]
    sample = sampled_clinics(300, seed=0)
    assert len(sample) == 20 == len(set(sample)) and sample == sorted(sample)
    assert sample == sampled_clinics(300, seed=0) != sampled_clinics(300, seed=1)
    # 25 clinics that answer nothing: 20 of them are asked, each named with its failures.
    asked: list[Message] = []

    def silent(message: Message, context) -> Message:
        asked.append(message)
        raise RuntimeError("no answer")

    grid = LocalGrid({1000 + k: silent for k in range(25)}, 25)
    config = make_config()
    state = initial_state(config)
    matrix = cross_site_matrix(grid, config, state, state)
    sampled = [f"node-{1000 + k}" for k in sampled_clinics(25, config.seed)]
    assert matrix["clinics"] == 25 and matrix["shares"] == sorted(sampled)
    assert matrix["models"] == {FEDERATED: dict.fromkeys(sorted(sampled))}
    assert len(matrix["incidents"]) == 2 * 20  # the global model's scores, the local models
    assert {int(m.content[CONFIG_KEY]["cross-site-models"]) for m in asked} == {21}
