"""Entry point of `hxr`: builds the sub-commands and turns expected errors into one line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from pydantic import ValidationError

from hxr_model.errors import HXRError, describe_validation_error

# Each module defines `register(subparsers)` and sets `handler` on the parsers it adds.
COMMAND_MODULES = (
    "hxr_cli.model_commands",
    "hxr_cli.export_command",
    "hxr_cli.data_commands",
    "hxr_cli.federation_commands",
    "hxr_cli.bench_command",
    "hxr_cli.deploy_commands",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before a bad option (16 lines for `hxr train`),
    burying the one line that matters; sub-command parsers inherit this class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="hxr", description="HybridNet-XR: federated chest-radiograph classification"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def describe_os_error(error: OSError) -> str:
    """`PATH: reason` (an --out that is a file, a full disk, a read-only folder)."""
    paths = [str(path) for path in (error.filename, error.filename2) if path is not None]
    if not paths or not error.strerror:
        return str(error)
    return f"{' -> '.join(paths)}: {error.strerror}"


def describe_error(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return describe_validation_error(error)
    if isinstance(error, OSError):
        return describe_os_error(error)
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (HXRError, ValidationError, OSError) as error:
        if args.debug:
            raise
        print(f"hxr: error: {describe_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hxr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
