"""`hxr info MODEL` (static cost and stage table) and `hxr bench` (measured speed and memory)."""

from __future__ import annotations

import argparse
import json
import sys

from hxr_cli.model_commands import parse_device
from hxr_model.benchmark import BenchConfig, format_results, run_benchmark
from hxr_model.models import model_names
from hxr_model.profiling import format_profile, profile_model


def register(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser(
        "info", help="parameters, MACs and stage table of a model at a resolution"
    )
    info.add_argument("model", metavar="MODEL", help=f"one of: {', '.join(model_names())}")
    info.add_argument(
        "--resolution", type=int, default=224, help="input side in pixels (default 224)"
    )
    info.set_defaults(handler=run_info)

    bench = subparsers.add_parser(
        "bench",
        help="measure training/inference speed and training memory of models",
        description="Models are interleaved over repeated trials in one process and medians "
        "are reported; peak training memory is measured in a fresh process per model and trial.",
    )
    bench.add_argument(
        "--phase",
        default="finetune",
        help="training phases to measure, comma-separated: finetune (throughput and peak memory "
        "at --batch-size) and/or prewarm (peak memory of SimCLR pre-warming) (default finetune)",
    )
    bench.add_argument(
        "--models",
        default="hxr150,mobilenet_v2",
        help=f"comma-separated, from: {', '.join(model_names())} (default hxr150,mobilenet_v2)",
    )
    bench.add_argument("--resolution", type=int, default=224, help="input side (default 224)")
    bench.add_argument("--batch-size", type=int, default=32, help="training batch (default 32)")
    bench.add_argument("--device", type=parse_device, choices=("cpu", "cuda"), default="cpu")
    bench.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    bench.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    bench.add_argument("--trials", type=int, default=3, help="interleaved trials (default 3)")
    bench.add_argument(
        "--train-steps", type=int, default=3, help="timed training steps per trial (default 3)"
    )
    bench.add_argument(
        "--latency-runs", type=int, default=30, help="batch-1 runs per trial (default 30)"
    )
    bench.add_argument(
        "--prewarm-batch-size",
        type=int,
        default=256,
        help="image pairs per contrastive batch when pre-warming (default 256)",
    )
    bench.add_argument(
        "--max-memory-mb",
        type=float,
        default=None,
        help="pre-warming's memory budget, which picks how many pairs go through the network "
        "at once, as in hxr train (default: none, the whole batch at once: GBs at 224 px)",
    )
    bench.add_argument("--json", action="store_true", help="print a JSON list, one object a model")
    bench.set_defaults(handler=run_bench)


def run_info(args: argparse.Namespace) -> int:
    print(format_profile(profile_model(args.model, args.resolution)))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    config = BenchConfig(
        models=_names(args.models),
        resolution=args.resolution,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        trials=args.trials,
        train_steps=args.train_steps,
        latency_runs=args.latency_runs,
        phases=_names(args.phase),
        prewarm_batch_size=args.prewarm_batch_size,
        max_memory_mb=args.max_memory_mb,
    )
    results = run_benchmark(config, on_progress=lambda message: print(message, file=sys.stderr))
    if args.json:
        print(json.dumps([result.model_dump() for result in results], indent=2))
    else:
        print(format_results(results))
    return 0


def _names(option: str) -> list[str]:
    return [name.strip() for name in option.split(",") if name.strip()]
