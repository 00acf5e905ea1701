import pytest

from hxr_model.data.label_map import parse_label_map
from hxr_model.errors import ConfigError


def test_bare_names_keep_labels_in_order() -> None:
    mapping = parse_label_map("normal,pneumonia")
    assert mapping == {"normal": "normal", "pneumonia": "pneumonia"}
    assert list(mapping) == ["normal", "pneumonia"]


def test_renames_may_share_a_class_and_mix_with_bare_names() -> None:
    assert parse_label_map("NORMAL=normal, BACTERIA=pneumonia,VIRUS=pneumonia,covid") == {
        "NORMAL": "normal",
        "BACTERIA": "pneumonia",
        "VIRUS": "pneumonia",
        "covid": "covid",
    }


def test_blanks_and_empty_items_are_ignored() -> None:
    assert parse_label_map(" a = b ,, c = d ,") == {"a": "b", "c": "d"}
    assert parse_label_map("") == {}


@pytest.mark.parametrize("item", ["=b", "a=", " = ", "="])
def test_an_item_with_an_empty_side_is_refused_by_name(item: str) -> None:
    with pytest.raises(ConfigError, match=f"bad label map item {item.strip()!r}"):
        parse_label_map(f"ok,{item},fine=good")
