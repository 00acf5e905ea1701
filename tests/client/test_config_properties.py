"""Whatever a clinic writes in its site TOML or node config, the SuperNode stops with one
ConfigError line naming the file (or "node config") and the field, or gets a valid SiteConfig.

Generated keys leave out line breaks and other unprintable characters: how those must be
reported is pinned by the xfail tests at the end, which need a change in client/site_config.py.
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from client.site_config import (
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    SITE_CONFIG_KEY,
    SiteConfig,
    load_site_config,
    site_from_node_config,
)
from hxr_model.errors import ConfigError

FAST = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
pytestmark = pytest.mark.timeout(120)

SITE_FIELDS = list(SiteConfig.model_fields)
PRINTABLE = st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"])
KEYS = st.sampled_from(SITE_FIELDS) | st.text(PRINTABLE, min_size=1, max_size=8)
TOML_SCALARS = (
    st.text(max_size=12)
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.booleans()
    | st.dates()
    | st.datetimes(timezones=st.just(datetime.UTC))
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
# Documents that are mostly right: the real fields, plausible values, a few wrong ones.
PLAUSIBLE = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["north", "a" * 65, "../etc", ""]) | st.text(max_size=8),
        "data": st.sampled_from(["folder:/srv/xr", "synthetic", ""]),
        "label_map": st.dictionaries(KEYS, st.text(max_size=6) | st.integers(), max_size=3),
        "privacy": st.sampled_from(["none", "heatmap", "overlay", "everything"]),
        "device": st.text(max_size=6),
        "max_memory_mb": st.floats() | st.integers(),
        "skip_bad": st.booleans() | st.text(max_size=3),
        "partition": st.dictionaries(
            st.sampled_from(["scheme", "num_sites", "index", "seed", "colour"]),
            st.integers(-3, 5) | st.text(max_size=4),
        ),
    },
)


def site_file(folder: str, data: bytes) -> Path:
    path = Path(folder) / "site.toml"
    path.write_bytes(data)
    return path


def assert_one_line_naming(error: ConfigError, *names: str) -> None:
    message = str(error)
    assert len(message.splitlines()) == 1, message
    assert any(name in message for name in names), message


def load_or_refuse(data: bytes) -> SiteConfig | None:
    with tempfile.TemporaryDirectory() as folder:
        path = site_file(folder, data)
        try:
            return load_site_config(path)
        except ConfigError as error:
            assert_one_line_naming(error, str(path))
            return None


@FAST
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
@example(b'name = "a"\ndata = "x"\nname = "b"\n')  # a key twice
@example(b"\xef\xbb\xbfname = 1")  # UTF-8 byte order mark
def test_any_file_content_is_a_site_or_one_config_error(data: bytes) -> None:
    load_or_refuse(data)


@FAST
@given(st.dictionaries(KEYS, TOML_VALUES, max_size=6) | PLAUSIBLE)
@example({"name": "north", "data": "synthetic", "max_memory_mb": float("nan")})
@example({"name": "north", "data": "synthetic", "label_map": {"A": 3}})
def test_any_toml_document_is_a_site_or_names_the_bad_field(document: dict[str, Any]) -> None:
    site = load_or_refuse(tomli_w.dumps(document).encode())
    if site is not None:
        assert set(document) <= set(SITE_FIELDS)
        assert site.name == document["name"] and site.data == document["data"]


NODE_VALUES = st.text(max_size=10) | st.integers() | st.floats() | st.booleans()
NODE_KEYS = st.sampled_from(
    ["site-name", "data", "label-map", "privacy", "device", "max-memory-mb", "skip-bad"]
) | st.text(PRINTABLE, min_size=1, max_size=8).filter(
    lambda key: key not in (SITE_CONFIG_KEY, PARTITION_ID_KEY, NUM_PARTITIONS_KEY)
)


@FAST
@given(st.dictionaries(NODE_KEYS, NODE_VALUES, min_size=1, max_size=6))
@example({"site-name": "south", "data": "synthetic", "label-map": "a=b,c"})
def test_any_node_config_is_a_site_or_one_config_error(node_config: dict[str, Any]) -> None:
    try:
        site = site_from_node_config(node_config, {})
    except ConfigError as error:
        assert_one_line_naming(error, "node config")
        return
    assert site.data == node_config["data"]


def test_deeply_nested_toml_is_a_config_error(tmp_path: Path) -> None:
    """tomllib recurses per nesting level and raises RecursionError past about 1,000."""
    with pytest.raises(ConfigError, match="not readable TOML"):
        load_site_config(site_file(str(tmp_path), b"a = " + b"[" * 5000 + b"]" * 5000))


def test_a_key_with_a_line_break_is_reported_on_one_line(tmp_path: Path) -> None:
    path = site_file(str(tmp_path), b'name = "a"\ndata = "x"\n[label_map]\n"A\\nB" = 3\n')
    with pytest.raises(ConfigError) as error:
        load_site_config(path)
    assert_one_line_naming(error.value, str(path))


@pytest.mark.parametrize("location", ["site\0.toml", "~no-such-user-hxr/site.toml"])
def test_an_impossible_site_config_path_is_a_config_error(location: str) -> None:
    with pytest.raises(ConfigError):
        site_from_node_config({SITE_CONFIG_KEY: location}, {})


def test_a_partition_index_beyond_the_sites_is_a_config_error(tmp_path: Path) -> None:
    """Accepted today, it fails later as an IndexError when the site loads its data."""
    text = b'name = "a"\ndata = "x"\n[partition]\nscheme = "iid"\nnum_sites = 2\nindex = 2\n'
    with pytest.raises(ConfigError, match="partition"):
        load_site_config(site_file(str(tmp_path), text))
