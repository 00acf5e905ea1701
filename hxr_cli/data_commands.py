"""`hxr data check` and `hxr data partition`: look at a dataset before training on it."""

from __future__ import annotations

import argparse
import json

from hxr_model.data import check_data, load_splits, partition, partition_table
from hxr_model.data.partition import SCHEMES
from hxr_model.data.problems import describe_problems
from hxr_model.data.resizing import RESIZE_MODES
from hxr_model.errors import ConfigError


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
    parser.add_argument("--resize", default="pad", choices=RESIZE_MODES)
    parser.add_argument(
        "--labels",
        type=parse_label_map,
        default=None,
        metavar="MAP",
        help="accepted labels, e.g. 'normal,pneumonia' or 'NORMAL=normal,PNEUMONIA=pneumonia'",
    )


def parse_label_map(text: str) -> dict[str, str]:
    """`a,b` accepts labels a and b as they are; `raw=name` renames (several raws may share a
    name). Class order is the order names first appear."""
    mapping: dict[str, str] = {}
    for item in text.split(","):
        raw, _, name = item.partition("=")
        raw, name = raw.strip(), (name or raw).strip()
        if not raw or not name:
            raise argparse.ArgumentTypeError(f"bad label map item '{item}' in '{text}'")
        mapping[raw] = name
    return mapping


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
    splits = load_splits(
        args.data,
        args.image_size,
        skip_bad=args.skip_bad,
        seed=args.seed,
        resize=args.resize,
        label_map=args.labels,
    )
    dataset = getattr(splits, args.split)
    if dataset is None:
        raise ConfigError(f"{args.data} has no {args.split} split")
    parts = partition(dataset, args.partition, args.sites, args.seed)
    print(f"{args.data}, {args.split} split, partition {args.partition}, {args.sites} sites:")
    print(partition_table(dataset, parts))
    if splits.skipped:
        print(f"skipped {len(splits.skipped)} bad file(s)")
    return 0
