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


def describe_problems(problems: Sequence[FileProblem]) -> str:
    """One line per problem, in the order found."""
    return "\n".join(f"  {problem.path}: {problem.reason}" for problem in problems)
