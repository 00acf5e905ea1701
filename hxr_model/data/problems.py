"""Per-file problems: the unit of every data report, refusal and `--skip-bad` count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hxr_model.errors import DataError


@dataclass(frozen=True)
class FileProblem:
    """One input the data layer will not use: `path` names it (relative to the data root where
    there is one), `kind` is a stable short code to count by, `reason` is for people."""

    path: str
    reason: str
    kind: str


class ImageProblem(DataError):
    """Raised by the decoders for one bad image; callers turn it into a FileProblem."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


# Error messages name this many files; a wrong label map on a big folder would name thousands.
LISTED_PROBLEMS = 20


def describe_problems(problems: Sequence[FileProblem], limit: int | None = None) -> str:
    """One line per problem, in the order found; past `limit`, a count of the rest."""
    shown = problems if limit is None else problems[:limit]
    lines = [f"  {problem.path}: {problem.reason}" for problem in shown]
    if len(problems) > len(shown):
        lines.append(f"  ... and {len(problems) - len(shown)} more (hxr data check lists them all)")
    return "\n".join(lines)
