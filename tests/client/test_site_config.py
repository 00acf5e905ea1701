from pathlib import Path

import pytest

from client.site_config import (
    load_site_config,
    site_from_node_config,
)
from hxr_model.errors import ConfigError

GOOD_TOML = """
name = "north-clinic"
data = "folder:/srv/xr"
privacy = "overlay"
max_memory_mb = 900
[label_map]
PNEUMONIA = "pneumonia"
NORMAL = "normal"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_a_site_toml_is_read_through_the_node_config(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_TOML)
    site = site_from_node_config({"site-config": str(path)}, {})
    assert site.name == "north-clinic" and site.data == "folder:/srv/xr"
    assert site.label_map == {"PNEUMONIA": "pneumonia", "NORMAL": "normal"}
    assert site.privacy == "overlay" and site.max_memory_mb == 900
    assert site.device == "auto" and site.partition is None


def test_privacy_defaults_to_heatmaps_only(tmp_path: Path) -> None:
    site = load_site_config(write(tmp_path, 'name = "a"\ndata = "synthetic"\n'))
    assert site.privacy == "heatmap"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('name = "a"\ndata = "x"\nprivacy = "everything"\n', "'privacy'"),
        ('name = "../etc"\ndata = "x"\n', "'name'"),
        ('name = "a"\n', "'data'"),
        ('name = "a"\ndata = "x"\nmax_memory_mb = -5\n', "'max_memory_mb'"),
        ('name = "a"\ndata = "x"\ncolour = "blue"\n', "'colour'"),
        ('name = "a"\ndata = "x"\n[label_map]\nA = 3\n', "'label_map.A'"),
    ],
)
def test_a_bad_site_config_is_one_line_naming_file_and_field(
    tmp_path: Path, text: str, field: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_site_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: invalid value for {field}") and "\n" not in message


def test_unreadable_or_missing_site_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not readable TOML"):
        load_site_config(write(tmp_path, "name = \n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_site_config(tmp_path / "absent.toml")


def test_key_values_in_the_node_config_make_a_site() -> None:
    node_config = {
        "site-name": "south",
        "data": "csv:/srv/manifest.csv",
        "label-map": "PNEUMONIA=pneumonia, NORMAL=normal",
        "privacy": "none",
        "skip-bad": True,
    }
    site = site_from_node_config(node_config, {})
    assert site.name == "south" and site.privacy == "none" and site.skip_bad
    assert site.label_map == {"PNEUMONIA": "pneumonia", "NORMAL": "normal"}
    with pytest.raises(ConfigError, match="node config: invalid value for 'privacy'"):
        site_from_node_config(node_config | {"privacy": "all"}, {})


def test_a_simulation_node_plays_a_partition_of_the_run_data() -> None:
    node_config = {"partition-id": 2, "num-partitions": 4}
    site = site_from_node_config(node_config, {"data": "synthetic:400:4", "partition": "iid"})
    assert site.name == "site-3" and site.data == "synthetic:400:4"
    assert (site.partition.index, site.partition.num_sites, site.partition.scheme) == (2, 4, "iid")
    with pytest.raises(ConfigError, match="need 'data'"):
        site_from_node_config(node_config, {})


def test_a_node_without_any_site_is_told_how_to_configure_one() -> None:
    with pytest.raises(ConfigError, match="site-config"):
        site_from_node_config({}, {})


def test_a_node_config_label_map_is_read_with_the_one_grammar() -> None:
    site = site_from_node_config(
        {"site-name": "north", "data": "synthetic:8", "label-map": "a=b,c"}, {}
    )
    assert site.label_map == {"a": "b", "c": "c"}
    with pytest.raises(ConfigError, match=r"invalid value for 'label-map'.*'=c'"):
        site_from_node_config(
            {"site-name": "north", "data": "synthetic:8", "label-map": "a=b,=c"}, {}
        )


@pytest.mark.parametrize(
    "data, expected",
    [
        ("folder:xr", "folder:{base}/xr"),
        ("csv:../exports/manifest.csv", "csv:{base}/../exports/manifest.csv"),
        ("medmnist:/srv/pneumoniamnist.npz", "medmnist:/srv/pneumoniamnist.npz"),
        ("synthetic:40", "synthetic:40"),
        ("pneumoniamnist", "pneumoniamnist"),
    ],
)
def test_relative_data_paths_are_read_from_the_site_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: str, expected: str
) -> None:
    path = write(tmp_path, f'name = "a"\ndata = "{data}"\n')
    monkeypatch.chdir("/")
    assert load_site_config(path).data == expected.format(base=tmp_path.resolve())
