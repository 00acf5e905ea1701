"""Entry point of `hxr`: builds the sub-commands and turns expected errors into one line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from hxr_model.errors import HXRError

# Each module defines `register(subparsers)` and sets `handler` on the parsers it adds.
COMMAND_MODULES = (
    "hxr_cli.model_commands",
    "hxr_cli.data_commands",
    "hxr_cli.federation_commands",
    "hxr_cli.bench_command",
    "hxr_cli.deploy_commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hxr", description="HybridNet-XR: federated chest-radiograph classification"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def describe_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(root)"
    return f"invalid value for '{field}': {first['msg']}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (HXRError, ValidationError, FileNotFoundError, PermissionError) as error:
        if args.debug:
            raise
        message = (
            describe_validation_error(error) if isinstance(error, ValidationError) else str(error)
        )
        print(f"hxr: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hxr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
