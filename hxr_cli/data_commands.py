"""`hxr data check` and `hxr data partition`: look at a dataset before training on it."""

from __future__ import annotations

import argparse
import json
import sys

from hxr_model.data import DataSplits, check_data, load_splits, partition, partition_table
from hxr_model.data.label_map import parse_label_map
from hxr_model.data.partition import SCHEMES
from hxr_model.data.problems import LISTED_PROBLEMS, describe_problems
from hxr_model.data.resizing import RESIZE_MODES
from hxr_model.errors import ConfigError

LABELS_HELP = (
    "labels to use, other labels are bad files: NAME keeps a label, LOCAL=CLASS renames it, "
    "e.g. 'normal,pneumonia' or 'NORMAL=normal,BACTERIA=pneumonia,VIRUS=pneumonia'"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="check a dataset or preview its partition")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check", help="read every image and report broken files, duplicates and class counts"
    )
    _add_common(check)
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(handler=run_check)

    split = commands.add_parser("partition", help="per-site class counts of a partition")
    _add_common(split)
    split.add_argument("--sites", type=int, required=True, help="number of virtual sites")
    split.add_argument("--partition", required=True, metavar="SCHEME", help=SCHEMES)
    split.add_argument(
        "--split", default="train", choices=["train", "val", "test"], help="split to partition"
    )
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--skip-bad", action="store_true", help="skip broken files, counting them")
    split.set_defaults(handler=run_partition)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA_REF", help="e.g. csv:FILE, folder:DIR, synthetic")
    parser.add_argument("--image-size", type=int, default=64, help="decode at S x S (cached)")
    add_reading_arguments(parser)


def add_reading_arguments(parser: argparse.ArgumentParser) -> None:
    """`--resize` and `--labels`, read the same way by every command that loads a dataset."""
    parser.add_argument("--resize", default="pad", choices=RESIZE_MODES)
    parser.add_argument(
        "--labels", type=label_map_argument, default=None, metavar="MAP", help=LABELS_HELP
    )


def label_map_argument(text: str) -> dict[str, str]:
    """`--labels MAP` in the shared label-map grammar; a bad item becomes argparse's one-line
    usage error (argparse only turns ArgumentTypeError into one)."""
    try:
        return parse_label_map(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def load_data(args: argparse.Namespace, image_size: int) -> DataSplits:
    """`load_splits` from the data options, with kept warnings and skipped files on stderr."""
    splits = load_splits(
        args.data,
        image_size,
        skip_bad=args.skip_bad,
        seed=args.seed,
        resize=args.resize,
        label_map=args.labels,
    )
    if splits.warnings:
        print(
            f"note: {len(splits.warnings)} image(s) kept with warnings (see hxr data check):\n"
            f"{describe_problems(splits.warnings, 5)}",
            file=sys.stderr,
        )
    if splits.skipped:
        print(
            f"skipped {len(splits.skipped)} bad file(s):\n"
            f"{describe_problems(splits.skipped, LISTED_PROBLEMS)}",
            file=sys.stderr,
        )
    return splits


def run_check(args: argparse.Namespace) -> int:
    report = check_data(args.data, args.image_size, resize=args.resize, label_map=args.labels)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    if report.problems:
        print(f"{len(report.problems)} broken file(s):")
        print(describe_problems(report.problems))
        print()
    if report.warnings:
        print(f"{len(report.warnings)} warning(s), images kept:")
        print(describe_problems(report.warnings))
        print()
    print(report.table())
    verdict = "OK" if report.ok else f"{len(report.problems)} broken"
    print(f"\n{args.data}: {report.usable} usable images, {verdict}")
    return 0 if report.ok else 1


def run_partition(args: argparse.Namespace) -> int:
    splits = load_data(args, args.image_size)
    dataset = getattr(splits, args.split)
    if dataset is None:
        raise ConfigError(f"{args.data} has no {args.split} split")
    parts = partition(dataset, args.partition, args.sites, args.seed)
    print(f"{args.data}, {args.split} split, partition {args.partition}, {args.sites} sites:")
    print(partition_table(dataset, parts))
    return 0
