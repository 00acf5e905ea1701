"""`hxr simulate`: a whole federation of virtual clinics on this machine.

With no options it is the README's demo: built-in synthetic phantoms, four clinics whose scanners
render differently, a few pre-warm and fine-tuning rounds, a report at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import get_args

from hxr_cli.data_commands import parse_label_map
from hxr_cli.model_commands import parse_device
from hxr_model.data.cache import default_cache_dir
from hxr_model.data.refs import REF_FORMS, default_image_size
from hxr_model.errors import ConfigError
from hxr_model.models import model_names


def register(subparsers: argparse._SubParsersAction) -> None:
    # Imported here so Flower is not imported before `simulate` sets its environment.
    from client.site_config import PrivacyPolicy
    from server.run_config import StrategyName
    from simulations.federation import SimulationSettings

    default = {name: field.default for name, field in SimulationSettings.model_fields.items()}
    parser = subparsers.add_parser(
        "simulate",
        help="federated training of virtual clinics with Flower's simulation engine",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Partition a dataset into N virtual clinics and train one model across them with the "
            "project's Flower ServerApp and ClientApp. Writes OUT/global_model.pt, summary.json, "
            "report.html, rounds.jsonl, per-site CSVs and Grad-CAM PNGs under OUT/gradcam."
        ),
    )
    parser.add_argument("--data", default=default["data"], help=f"data reference: {REF_FORMS}")
    parser.add_argument(
        "--sites", type=int, default=default["sites"], help="number of virtual clinics"
    )
    parser.add_argument(
        "--partition",
        default=default["partition"],
        help="iid, dirichlet:ALPHA[:MIN], quantity:..., or by-source (one clinic per scanner)",
    )
    parser.add_argument("--rounds", type=int, default=default["rounds"], help="rounds in total")
    parser.add_argument(
        "--prewarm-rounds",
        type=int,
        default=default["prewarm_rounds"],
        help="the first rounds pre-warm the encoder (SimCLR)",
    )
    parser.add_argument(
        "--local-epochs",
        type=int,
        default=default["local_epochs"],
        help="fine-tuning epochs per round",
    )
    parser.add_argument(
        "--prewarm-epochs",
        type=int,
        default=default["prewarm_epochs"],
        help="SimCLR epochs per round",
    )
    parser.add_argument(
        "--model", default=default["model"], choices=model_names(), help="model variant"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"images are S x S px (default: a MedMNIST file's own size, else "
        f"{default['image_size']})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=default["batch_size"], help="local batch size"
    )
    parser.add_argument(
        "--lr", type=float, default=default["learning_rate"], help="local fine-tuning rate"
    )
    parser.add_argument(
        "--strategy",
        default=default["strategy"],
        choices=get_args(StrategyName),
        help="aggregation rule",
    )
    parser.add_argument(
        "--privacy",
        default=default["privacy"],
        choices=get_args(PrivacyPolicy),
        help="what Grad-CAM samples the clinics share",
    )
    parser.add_argument(
        "--gradcam-per-class",
        type=int,
        default=default["gradcam_per_class"],
        help="Grad-CAM samples per class and clinic",
    )
    parser.add_argument("--skip-bad", action="store_true", help="leave unreadable files out")
    parser.add_argument(
        "--labels",
        type=parse_label_map,
        default=None,
        help="classes to use at every clinic, e.g. 'normal,bacterial,viral' (other labels are "
        "bad files: add --skip-bad) or 'NORMAL=normal,PNEUMONIA=pneumonia'",
    )
    parser.add_argument("--seed", type=int, default=default["seed"], help="seeds everything")
    parser.add_argument("--cpus", type=int, default=None, help="cores for the clinics")
    parser.add_argument(
        "--device",
        default=default["device"],
        type=parse_device,
        choices=["auto", "cpu", "cuda"],
        help="torch device",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/sim-<time>)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out after its last round"
    )
    parser.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=default["dp_noise_multiplier"],
        help="client-level differential privacy: noise std over clipping norm (0 = off)",
    )
    parser.add_argument(
        "--dp-clipping-norm",
        type=float,
        default=default["dp_clipping_norm"],
        help="under DP, each clinic's update is clipped to this L2 norm",
    )
    parser.add_argument(
        "--dp-delta",
        type=float,
        default=default["dp_delta"],
        help="under DP, the delta at which the summary reports epsilon",
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also train a centralized model and each clinic alone, and compare",
    )
    parser.set_defaults(handler=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from simulations.baselines import ALL_SITES, add_baselines
    from simulations.federation import SimulationSettings, simulate

    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out naming the run folder to continue")
    out = args.out or Path("runs") / datetime.now().strftime("sim-%Y%m%d-%H%M%S")
    settings = SimulationSettings(
        data=args.data,
        sites=args.sites,
        partition=args.partition,
        rounds=args.rounds,
        prewarm_rounds=args.prewarm_rounds,
        local_epochs=args.local_epochs,
        prewarm_epochs=args.prewarm_epochs,
        model=args.model,
        image_size=args.image_size or default_image_size(args.data, default_cache_dir()),
        batch_size=args.batch_size,
        learning_rate=args.lr,
        strategy=args.strategy,
        privacy=args.privacy,
        gradcam_per_class=args.gradcam_per_class,
        skip_bad=args.skip_bad,
        label_map=args.labels or {},
        seed=args.seed,
        cpus=args.cpus,
        device=args.device,
        out=out,
        resume=args.resume,
        dp_noise_multiplier=args.dp_noise_multiplier,
        dp_clipping_norm=args.dp_clipping_norm,
        dp_delta=args.dp_delta,
    )
    try:
        run_dir = simulate(settings)
    except KeyboardInterrupt:
        # Ray is shut down and every completed round is on disk, but a Flower simulation thread
        # may still wait on a Ray actor the interrupt killed: end the process without joining it.
        print(f"hxr: interrupted; continue with --resume --out {out}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    if args.baselines:
        add_baselines(settings, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    print(f"federated model: {run_dir / 'global_model.pt'}")
    print(f"report:          {run_dir / 'report.html'}")
    federated = summary.get("federated", {})
    if federated:
        print(
            f"federated model on all clinics' test splits: accuracy "
            f"{_percent(federated.get('accuracy'))}, balanced accuracy "
            f"{_percent(federated.get('balanced-accuracy'))}"
        )
    privacy = summary.get("differential_privacy")
    if privacy:
        print(
            f"differential privacy: epsilon {privacy['epsilon']:.3g} at delta "
            f"{privacy['delta']:g} per clinic over {privacy['rounds']} round(s)"
        )
    for name, table in summary.get("baselines", {}).items():
        overall = table.get(ALL_SITES, {})
        print(
            f"{name:>11}: accuracy {_percent(overall.get('accuracy'))}, balanced accuracy "
            f"{_percent(overall.get('balanced-accuracy'))} (mean over clinics)"
        )
    return _final_round_verdict(run_dir)


def _final_round_verdict(run_dir: Path) -> int:
    """1 when the last round took no clinic's update: the run ended, but the federation did not
    train (every clinic failed or was rejected); the reasons are in summary.json."""
    from server.run_store import RunStore

    records = RunStore(run_dir).read_rounds()
    if records and not records[-1]["train"]["sites"]:
        problems = records[-1]["failures"] + records[-1]["rejected"]
        first = f"; first: {problems[0]['site']}: {problems[0]['reason']}" if problems else ""
        print(
            f"hxr: error: round {records[-1]['round']} accepted no clinic's update "
            f"({len(problems)} failed or rejected{first}); see {run_dir / 'summary.json'}",
            file=sys.stderr,
        )
        return 1
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"
