"""`hxr certs` and `hxr site check`: preparing a consortium before anyone starts a SuperNode.

The coordinator makes the certificates and clinic keys once; each clinic checks its site
configuration and data here, where a mistake costs a second instead of a federated round.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hxr_cli.data_commands import run_check
from hxr_model.data.resizing import RESIZE_MODES
from hxr_model.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    certs = subparsers.add_parser(
        "certs",
        help="make the consortium's CA, SuperLink certificate and clinic keys",
        description=(
            "Write OUT/ca.crt, OUT/superlink.crt + .key (TLS, valid for every --host and "
            "localhost) and OUT/supernodes/supernode-K + .pub (SuperNode authentication). "
            "Private keys are written with mode 0600."
        ),
    )
    certs.add_argument("--out", type=Path, required=True, help="folder to write to")
    certs.add_argument(
        "--supernodes", type=int, required=True, metavar="N", help="number of clinic key pairs"
    )
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="DNS name or IP address the clinics use to reach the SuperLink (repeatable)",
    )
    certs.add_argument("--days", type=int, default=365, help="validity of the certificates")
    certs.add_argument(
        "--force", action="store_true", help="replace existing keys (clinics must re-register)"
    )
    certs.set_defaults(handler=run_certs)

    site = subparsers.add_parser("site", help="a clinic's site configuration")
    commands = site.add_subparsers(dest="site_command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a site TOML, then run `hxr data check` on its data",
        description=(
            "Validate the site configuration the clinic's SuperNode will read, then read every "
            "image of its data reference. Exit status 0 means the clinic is ready to join."
        ),
    )
    check.add_argument("site_config", type=Path, metavar="SITE.toml")
    check.add_argument(
        "--classes",
        default=None,
        metavar="A,B,...",
        help="the federation's classes (from the coordinator): every local label must map "
        "to one of them",
    )
    check.add_argument("--image-size", type=int, default=64, help="decode at S x S (cached)")
    check.add_argument("--resize", default="pad", choices=RESIZE_MODES)
    check.set_defaults(handler=run_site_check)


def run_certs(args: argparse.Namespace) -> int:
    from server.certificates import generate_certificates

    made = generate_certificates(
        args.out, args.supernodes, args.host, force=args.force, days=args.days
    )
    print(f"certificate authority: {made.ca_certificate} (give it to every clinic)")
    print(f"                       {made.ca_key} (keep offline; signs new certificates)")
    print(f"SuperLink TLS:         {made.superlink_certificate}, {made.superlink_key}")
    print(f"SuperExec secret:      {made.superexec_secret} (SuperLink and SuperExec only)")
    for node in made.supernodes:
        print(f"clinic key pair:       {node.private_key} (to the clinic), {node.public_key}")
    print("next: register each .pub with `flwr supernode register` (see docs/consortium.md)")
    return 0


def run_site_check(args: argparse.Namespace) -> int:
    from client.site_config import load_site_config
    from client.site_data import label_mapping
    from hxr_model.data import check_data
    from hxr_model.runtime import resolve_device

    site = load_site_config(args.site_config)
    try:
        resolve_device(site.device)
    except (ValueError, RuntimeError) as error:
        raise ConfigError(f"{args.site_config}: invalid value for 'device': {error}") from None
    print(
        f"{args.site_config}: site '{site.name}', data {site.data}, privacy {site.privacy}, "
        f"device {site.device}, memory budget "
        f"{'none' if site.max_memory_mb is None else f'{site.max_memory_mb:g} MB'}"
    )
    labels = site.label_map or None
    # The same check and printout as `hxr data check`, on the data the SuperNode will read.
    status = run_check(
        argparse.Namespace(
            data=site.data,
            image_size=args.image_size,
            resize=args.resize,
            labels=labels,
            json=False,
        )
    )
    if status:
        print(f"site '{site.name}' is NOT ready: fix the files above (or set skip_bad = true)")
        return status
    if args.classes is not None:
        # Decoded images are cached by the check above, so this pass only lists them.
        classes = [name.strip() for name in args.classes.split(",") if name.strip()]
        local = check_data(site.data, args.image_size, resize=args.resize, label_map=labels)
        label_mapping(site.name, local.class_names, classes)
    print(f"site '{site.name}' is ready to join the federation")
    return 0
