"""Whatever a coordinator puts in `[tool.flwr.app.config]` or `--run-config`, the ServerApp gets
a valid FederationConfig or stops with one ConfigError line naming the key."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hxr_model.errors import ConfigError
from server.run_config import FederationConfig

pytestmark = pytest.mark.timeout(120)

KEYS = [name.replace("_", "-") for name in FederationConfig.model_fields]
# Flower run-config values are scalars: bool, int, float or str.
VALUES = st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
PLAUSIBLE = {
    "classes": st.sampled_from(["normal,pneumonia", "a", "a,a", "", " , "]) | VALUES,
    "num-server-rounds": st.integers(-2, 6),
    "prewarm-rounds": st.integers(-1, 6),
    "model": st.sampled_from(["hxr50", "resnet18", "hxr9000"]),
    "strategy": st.sampled_from(["fedavg", "fedprox", "fedadam", "fedmedian", "fedsgd"]),
    "dp-noise-multiplier": st.floats(-1, 2),
}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(
    st.fixed_dictionaries({}, optional=PLAUSIBLE)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(min_size=1, max_size=8), VALUES, max_size=6)
)
@example({"classes": "a,b", "bad\nkey": 1})  # the key must not break the line
@example({"classes": "a,b", "model": "x\ny"})
@example({"classes": "a,b", "num_server_rounds": 0})  # snake_case is accepted, then named
@example({"classes": "a,b", "num-server-rounds": 2, "prewarm-rounds": 2})
def test_any_run_config_is_valid_or_one_config_error_naming_the_key(
    run_config: dict[str, Any],
) -> None:
    try:
        config = FederationConfig.from_run_config(run_config)
    except ConfigError as error:
        message = str(error)
        assert len(message.splitlines()) == 1, message
        assert message.startswith("run config: invalid value for ")
        assert "Value error, " not in message
        keys = ["(root)", *run_config, *KEYS]
        assert any(repr(key)[1:-1] in message for key in keys), message
        return
    assert len(set(config.classes)) == len(config.classes) >= 2
    assert config.prewarm_rounds < config.num_server_rounds


def test_the_app_config_in_pyproject_lists_every_run_config_key() -> None:
    """Flower refuses `--run-config` overrides of keys missing from `[tool.flwr.app.config]`,
    so a key left out there could never be set by a coordinator."""
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    app_config = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    assert set(app_config) == set(KEYS)
    FederationConfig.from_run_config(app_config)


def test_a_config_travels_through_a_run_config_unchanged() -> None:
    """`hxr simulate` hands Flower `run_config_values()`: every mapping in its text form, no
    null, and the ServerApp and every virtual clinic read back the same settings."""
    config = FederationConfig(
        classes=["normal", "covid19"],
        label_map={"NORMAL": "normal", "covid19": "covid19"},
        site_label_maps={2: {"NORMAL": "covid19", "COVID": "normal"}},
        max_examples={"north": 1200, "south": 800},
        privacy="overlay",
        skip_bad=True,
        server_learning_rate=None,
    )
    values = config.run_config_values()
    assert all(isinstance(value, str | int | float | bool) for value in values.values())
    assert values["site-label-maps"] == "2:NORMAL=covid19,COVID=normal"
    assert values["server-learning-rate"] == "" and values["classes"] == "normal,covid19"
    assert FederationConfig.from_run_config(values) == config
    assert (
        FederationConfig.from_run_config(
            config.model_copy(update={"server_learning_rate": 0.5}).run_config_values()
        ).server_learning_rate
        == 0.5
    )
