"""`hxr simulate`, SimulationSettings, FederationConfig and `[tool.flwr.app.config]` agree: every
federation setting has one default, and `flwr run . local` runs the demo `hxr simulate` runs."""

import argparse
import tomllib
from pathlib import Path

from hxr_cli.federation_commands import register, settings_from_args
from hxr_model.data.phantoms import PHANTOM_CLASSES
from server.run_config import SIMULATION_DERIVED, FederationConfig, FederationSettings
from simulations.federation import SimulationSettings

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def app_config() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]


def simulate_defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["simulate"])


def test_the_app_config_lists_every_setting_at_its_default() -> None:
    config = app_config()
    keys = {field.alias or name for name, field in FederationConfig.model_fields.items()}
    assert set(config) == keys
    from_pyproject = FederationConfig.from_run_config(config)
    derived = set(SIMULATION_DERIVED)
    defaults = FederationConfig(classes=from_pyproject.classes)
    assert from_pyproject.model_dump(exclude=derived) == defaults.model_dump(exclude=derived)


def test_the_app_config_derives_what_the_demo_simulation_derives() -> None:
    """The named differences: the demo's phantom classes and one node per virtual clinic."""
    config = FederationConfig.from_run_config(app_config())
    assert set(SIMULATION_DERIVED) == {"classes", "min_nodes", "out_dir", "resume"}
    assert config.classes == list(PHANTOM_CLASSES)
    assert config.min_nodes == SimulationSettings.model_fields["sites"].default
    assert (config.out_dir, config.resume) == ("", False)


def test_simulate_without_options_runs_the_settings_defaults() -> None:
    settings = settings_from_args(simulate_defaults())
    assert settings == SimulationSettings(out=settings.out)
    for name, field in FederationSettings.model_fields.items():
        assert getattr(settings, name) == field.get_default(call_default_factory=True), name


def test_every_simulate_option_sets_the_setting_it_names(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    options = ["--rounds", "7", "--lr", "0.5", "--no-recalibrate-statistics", "--sites", "3"]
    args = parser.parse_args(
        ["simulate", *options, "--strategy", "fedmedian", "--out", str(tmp_path)]
    )
    settings = settings_from_args(args)
    assert (settings.num_server_rounds, settings.learning_rate, settings.sites) == (7, 0.5, 3)
    assert settings.strategy == "fedmedian" and settings.recalibrate_statistics is False
    assert settings.model_fields_set >= {"num_server_rounds", "learning_rate", "strategy"}
    assert "seed" not in settings.model_fields_set  # left to its default


def test_a_simulation_run_config_is_its_settings_plus_the_derived_keys() -> None:
    from simulations.federation import federation_config

    settings = SimulationSettings(out=Path("runs/x"), sites=3, num_server_rounds=5)
    config = federation_config(settings, ["a", "b"])
    assert config.model_dump(include=set(FederationSettings.model_fields)) == settings.model_dump(
        include=set(FederationSettings.model_fields)
    )
    expected = (["a", "b"], 3, str(Path("runs/x").resolve()))
    assert (config.classes, config.min_nodes, config.out_dir) == expected
