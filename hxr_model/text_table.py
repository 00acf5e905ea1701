"""Tables of names and figures for people: plain text for terminals and logs, Markdown for docs.

Every table the project prints (data checks, partitions, `hxr info`, `hxr bench`, `hxr evaluate`)
comes from `format_table`, so they all line up the same way.
"""

from __future__ import annotations

from collections.abc import Sequence


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None
) -> str:
    """Columns padded to their widest cell and separated by two spaces, no trailing blanks.

    `align` holds one letter per column, `l` (left) or `r` (right); by default the first column
    (names) is left-aligned and the others (figures) right-aligned.
    """
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l' or 'r' per column ({len(header)}), got {align!r}")
    cells = [[str(cell) for cell in row] for row in (header, *rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        ).rstrip()
        for row in cells
    )


def format_markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table, cells unpadded (the renderer lines them up)."""
    lines = ["| " + " | ".join(str(cell) for cell in line) + " |" for line in (header, *rows)]
    return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])
