import pytest

from hxr_model.text_table import format_markdown_table, format_table


def test_names_align_left_and_figures_right_without_trailing_blanks() -> None:
    table = format_table(["class", "train", "note"], [["normal", 120, ""], ["covid19", 7, "rare"]])
    assert table.splitlines() == [
        "class    train  note",
        "normal     120",
        "covid19      7  rare",
    ]


def test_alignment_can_be_chosen_per_column() -> None:
    table = format_table(["stage", "params"], [["stem", "576"], ["head", "12,258"]], align="ll")
    assert table.splitlines() == ["stage  params", "stem   576", "head   12,258"]


@pytest.mark.parametrize("align", ["l", "lx", "lrr"])
def test_an_alignment_that_does_not_fit_the_columns_is_refused(align: str) -> None:
    with pytest.raises(ValueError, match="align"):
        format_table(["a", "b"], [["x", "y"]], align=align)


def test_markdown_tables_have_a_header_rule_and_unpadded_cells() -> None:
    assert format_markdown_table(["model", "AUC"], [["hxr50", "0.9123"]]).splitlines() == [
        "| model | AUC |",
        "|---|---|",
        "| hxr50 | 0.9123 |",
    ]
