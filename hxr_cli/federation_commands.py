"""`hxr simulate`: a whole federation of virtual clinics on this machine.

With no options it is the README's demo: built-in synthetic phantoms, four clinics whose scanners
render differently, a few pre-warm and fine-tuning rounds, a report at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from pydantic import BaseModel

from hxr_cli.data_commands import label_map_argument
from hxr_cli.model_commands import parse_device
from hxr_model.data.cache import default_cache_dir
from hxr_model.data.refs import FILE_IMAGE_SIZE, REF_FORMS, default_image_size
from hxr_model.errors import ConfigError
from hxr_model.models import model_names
from protocol.instructions import kebab

if TYPE_CHECKING:
    from simulations.federation import SimulationSettings

# Flags that differ from the field's kebab-case name, kept from the first release of the CLI.
FLAG_NAMES = {"num_server_rounds": "--rounds", "learning_rate": "--lr"}
# Settings `hxr simulate` takes in its own shape (below), or that only a program sets.
OWN_OPTIONS = {"image_size", "label_map", "site_label_maps", "out", "data", "device", "model"}


def add_settings_options(
    parser: argparse.ArgumentParser, settings: type[BaseModel], skip: set[str]
) -> None:
    """One option per settings field: flag, type, choices, default and help come from the
    model, so an option can never disagree with the setting it sets."""
    for name, field in settings.model_fields.items():
        if name in skip:
            continue
        flag = FLAG_NAMES.get(name, "--" + kebab(name))
        # Options left out stay unset, so the settings know what the user chose (DP refuses an
        # explicit --recalibrate-statistics, and turns the default off).
        options: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            # Every option here is a simulation's; the run config's notes say whose a key is.
            "help": f"{field.description.removeprefix('simulation only: ')} "
            f"(default: {field.default})",
        }
        kind = field.annotation
        if get_origin(kind) is Literal:
            options["choices"] = list(get_args(kind))
        elif kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = next(t for t in (int, float, str) if t == kind or t in get_args(kind))
        parser.add_argument(flag, **options)


def register(subparsers: argparse._SubParsersAction) -> None:
    # Imported here so Flower is not imported before `simulate` sets its environment.
    from simulations.federation import SimulationSettings

    fields = SimulationSettings.model_fields
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
    parser.add_argument(
        "--data", default=fields["data"].default, help=f"data reference: {REF_FORMS}"
    )
    parser.add_argument(
        "--model", default=fields["model"].default, choices=model_names(), help="model variant"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"images are S x S px (default: a MedMNIST file's own size, {FILE_IMAGE_SIZE} "
        f"for folders and manifests, else {fields['image_size'].default})",
    )
    parser.add_argument(
        "--labels",
        dest="label_map",
        type=label_map_argument,
        default=None,
        help="classes to use at every clinic, e.g. 'normal,bacterial,viral' (other labels are "
        "bad files: add --skip-bad) or 'NORMAL=normal,PNEUMONIA=pneumonia'",
    )
    parser.add_argument(
        "--device",
        default=fields["device"].default,
        type=parse_device,
        choices=["auto", "cpu", "cuda"],
        help="torch device",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/sim-<time>)"
    )
    add_settings_options(parser, SimulationSettings, OWN_OPTIONS)
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also train one centralized model on all clinics' images (same budget) and compare",
    )
    parser.set_defaults(handler=run_simulate)


def settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    """The simulation `args` describe: the options given, the settings' defaults otherwise."""
    from simulations.federation import SimulationSettings

    if getattr(args, "resume", False) and args.out is None:
        raise ConfigError("--resume needs --out naming the run folder to continue")
    values = {name: getattr(args, name) for name in SimulationSettings.model_fields if name in args}
    values["out"] = args.out or Path("runs") / datetime.now().strftime("sim-%Y%m%d-%H%M%S")
    values["image_size"] = args.image_size or default_image_size(args.data, default_cache_dir())
    values["label_map"] = args.label_map or {}
    return SimulationSettings.model_validate(values)


def run_simulate(args: argparse.Namespace) -> int:
    from simulations.baselines import add_comparison
    from simulations.federation import simulate

    settings = settings_from_args(args)
    try:
        run_dir = simulate(settings)
    except KeyboardInterrupt:
        # The local SuperLink and its clinics are stopped; every completed round is on disk.
        print(f"hxr: interrupted; continue with --resume --out {settings.out}", file=sys.stderr)
        return 130
    verdict = _final_round_verdict(run_dir)
    if verdict == 0 and (settings.local_baselines or args.baselines):
        add_comparison(settings, run_dir, centralized=args.baselines)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    served = ""
    if summary.get("served_by") == "best-validation":
        served = f" (round {summary['final_round']}: best on the clinics' validation)"
    print(f"federated model: {run_dir / 'global_model.pt'}{served}")
    privacy = summary.get("differential_privacy")
    if privacy:
        print(
            f"differential privacy: epsilon {privacy['epsilon']:.3g} at delta "
            f"{privacy['delta']:g} per clinic over {privacy['rounds']} round(s)"
        )
    for line in outcome_lines(summary):
        print(line)
    print(f"report: {run_dir / 'report.html'} (open it in a browser: it is one offline file)")
    return verdict


def outcome_lines(summary: dict) -> list[str]:
    """The run's outcome as a clinic would ask for it: the federated model against what each
    clinic could train alone, on the pooled test split, then the clinic it serves worst."""
    lines = []
    pooled = summary.get("comparison", {}).get("pooled_test")
    if pooled:
        local = pooled["local-only summary"]
        lines.append(
            f"federated model on the pooled test split ({pooled['num-examples']} images): "
            f"accuracy {_percent(pooled['federated']['accuracy'])}, balanced accuracy "
            f"{_percent(pooled['federated']['balanced-accuracy'])}"
        )
        lines.append(
            f"clinics alone on the same split: best {_percent(local['best']['accuracy'])} "
            f"({local['best']['site']}), mean {_percent(local['mean']['accuracy'])}"
        )
        if "centralized" in pooled:
            lines.append(
                f"one centralized model (same budget): "
                f"{_percent(pooled['centralized']['accuracy'])}"
            )
    elif summary.get("federated"):
        lines.append(
            f"federated model on all clinics' test shares: accuracy "
            f"{_percent(summary['federated'].get('accuracy'))}"
        )
    worst = summary.get("worst_clinic")
    if worst:
        flag = "WARNING: served far worse than the others; " if worst["flagged"] else ""
        lines.append(
            f"{flag}worst clinic: {worst['site']}, accuracy {_percent(worst['accuracy'])} on "
            f"its own test share, lowest class recall {_percent(worst['lowest_recall'])} "
            f"({worst['lowest_recall_class']})"
        )
    return lines


def _final_round_verdict(run_dir: Path) -> int:
    """1 when the last round took no clinic's update: the run ended, but the federation did not
    train (every clinic failed or was rejected); the reasons are in summary.json."""
    from server.run_store import RunStore

    records = RunStore(run_dir).read_rounds()
    if records and records[-1].accepted_no_update:
        problems = records[-1].failures + records[-1].rejected
        first = f"; first: {problems[0].site}: {problems[0].reason}" if problems else ""
        print(
            f"hxr: error: round {records[-1].round} accepted no clinic's update "
            f"({len(problems)} failed or rejected{first}); see {run_dir / 'summary.json'}",
            file=sys.stderr,
        )
        return 1
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"
