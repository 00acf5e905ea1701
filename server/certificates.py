"""Keys and certificates for a consortium: TLS for the SuperLink, identities for the clinics.

The coordinator runs this once. It makes a private certificate authority, a SuperLink
certificate signed by it (valid for the names the clinics dial, plus localhost for the
SuperLink's own SuperExec), and one elliptic-curve key pair per clinic for Flower's SuperNode
authentication: the coordinator registers the public key, the clinic keeps the private key.
Clinics receive `ca.crt` (to trust the SuperLink) and their own private key, nothing else.

Layout of the output folder:
  ca.crt, ca.key                     the certificate authority (keep ca.key offline)
  superlink.crt, superlink.key       the SuperLink's TLS certificate and key
  supernodes/supernode-K(.pub)       clinic K's authentication key pair (OpenSSH format)
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hxr_model.atomic_files import write_atomic
from hxr_model.errors import ConfigError

# Flower accepts NIST curves for SuperNode keys; its guide uses P-384.
CURVE = ec.SECP384R1()
CA_EXTRA_DAYS = 365
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
# RFC 1123 host names (labels of letters, digits and inner hyphens).
HOST_PATTERN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")
PUBLIC_MODE = 0o644
PRIVATE_MODE = 0o600


@dataclass(frozen=True)
class SupernodeKeys:
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class ConsortiumCertificates:
    """Paths of everything `generate_certificates` wrote."""

    ca_certificate: Path
    ca_key: Path
    superlink_certificate: Path
    superlink_key: Path
    superexec_secret: Path  # shared by SuperLink and SuperExec, so no other process runs apps
    supernodes: list[SupernodeKeys]

    @property
    def private_files(self) -> list[Path]:
        nodes = (node.private_key for node in self.supernodes)
        return [self.ca_key, self.superlink_key, self.superexec_secret, *nodes]

    @property
    def all_files(self) -> list[Path]:
        public = [self.ca_certificate, self.superlink_certificate]
        return [*public, *self.private_files, *(node.public_key for node in self.supernodes)]


def supernode_name(index: int) -> str:
    """Name of clinic key pair `index` (0-based): `supernode-1`, `supernode-2`, ..."""
    return f"supernode-{index + 1}"


def planned_files(out: Path, supernodes: int) -> ConsortiumCertificates:
    """Where each file goes, before anything is written."""
    folder = out / "supernodes"
    return ConsortiumCertificates(
        ca_certificate=out / "ca.crt",
        ca_key=out / "ca.key",
        superlink_certificate=out / "superlink.crt",
        superlink_key=out / "superlink.key",
        superexec_secret=out / "superexec.secret",
        supernodes=[
            SupernodeKeys(folder / supernode_name(index), folder / f"{supernode_name(index)}.pub")
            for index in range(supernodes)
        ],
    )


def subject_alternative_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses the SuperLink certificate is valid for, local ones always."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, *LOCAL_NAMES]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not HOST_PATTERN.match(host):
                raise ConfigError(
                    f"--host {host!r} is neither an IP address nor a host name "
                    f"(give the bare name the clinics dial, e.g. coordinator.example.org)"
                ) from None
            names.append(x509.DNSName(host.rstrip(".")))
    return names


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HybridNet-XR consortium"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )


def _certificate_authority(days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(CURVE)
    name = _name("HybridNet-XR consortium CA")
    certificate = (
        _certificate(name, key.public_key(), name, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA384())
    )
    return certificate, key


def _superlink_certificate(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName],
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(CURVE)
    certificate = (
        _certificate(_name("superlink"), key.public_key(), ca.subject, ca_key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return certificate, key


def _pem_key(key: ec.EllipticCurvePrivateKey, form: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write with `mode` set before the rename: a key is never readable by others, and a
    certificate never appears under its name with the wrong permissions."""
    write_atomic(path, lambda handle: handle.write(data), mode)


def generate_certificates(
    out: Path,
    supernodes: int,
    hosts: Sequence[str] = (),
    *,
    force: bool = False,
    days: int = 365,
) -> ConsortiumCertificates:
    """Write a CA, a SuperLink certificate for `hosts` (+ localhost) and `supernodes` clinic
    key pairs under `out`. Existing files are only replaced with `force`: a new key would
    silently lock out every clinic registered with the old one."""
    if supernodes < 1:
        raise ConfigError(f"--supernodes must be at least 1, got {supernodes}")
    if days < 1:
        raise ConfigError(f"certificate validity must be at least 1 day, got {days}")
    names = subject_alternative_names(hosts)
    plan = planned_files(out, supernodes)
    existing = [path for path in plan.all_files if path.exists()]
    if existing and not force:
        raise ConfigError(
            f"{existing[0]} already exists; refusing to replace keys "
            f"(use --force to make new ones, then re-register every clinic)"
        )
    # The CA outlives the certificates it signs, so renewing a SuperLink certificate near its
    # end needs no new CA (which would mean new trust at every clinic).
    ca, ca_key = _certificate_authority(days + CA_EXTRA_DAYS)
    superlink, superlink_key = _superlink_certificate(ca, ca_key, names, days)
    pem = serialization.Encoding.PEM
    _write(plan.ca_key, _pem_key(ca_key, serialization.PrivateFormat.PKCS8), PRIVATE_MODE)
    _write(plan.ca_certificate, ca.public_bytes(pem), PUBLIC_MODE)
    _write(
        plan.superlink_key,
        _pem_key(superlink_key, serialization.PrivateFormat.PKCS8),
        PRIVATE_MODE,
    )
    _write(plan.superlink_certificate, superlink.public_bytes(pem), PUBLIC_MODE)
    _write(plan.superexec_secret, secrets.token_hex(32).encode(), PRIVATE_MODE)
    for index, node in enumerate(plan.supernodes):
        key = ec.generate_private_key(CURVE)
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write(node.private_key, _pem_key(key, serialization.PrivateFormat.OpenSSH), PRIVATE_MODE)
        _write(node.public_key, public + f" {supernode_name(index)}\n".encode(), PUBLIC_MODE)
    return plan
