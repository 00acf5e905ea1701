"""`server.certificates`: the files a consortium's TLS and SuperNode authentication rest on."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from hxr_model.errors import ConfigError
from server.certificates import ConsortiumCertificates, generate_certificates


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> ConsortiumCertificates:
    out = tmp_path_factory.mktemp("certs")
    return generate_certificates(out, 2, ["coordinator.example.org", "10.1.2.3"])


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_superlink_certificate_is_signed_by_the_ca_for_given_and_local_names(
    made: ConsortiumCertificates,
) -> None:
    ca, superlink = _load(made.ca_certificate), _load(made.superlink_certificate)
    superlink.verify_directly_issued_by(ca)
    names = superlink.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"coordinator.example.org", "localhost"}
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not superlink.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_ca_outlives_the_certificate_it_signs(made: ConsortiumCertificates) -> None:
    """A SuperLink certificate can be renewed under the same CA before either expires."""
    ca, superlink = _load(made.ca_certificate), _load(made.superlink_certificate)
    margin = ca.not_valid_after_utc - superlink.not_valid_after_utc
    assert margin.days >= 364


def test_private_keys_are_readable_by_the_owner_only(made: ConsortiumCertificates) -> None:
    for path in made.private_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (made.ca_certificate, made.superlink_certificate, made.supernodes[0].public_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert len(made.private_files) == 3 + 2


def test_the_superexec_secret_is_random_and_loads_the_way_flower_loads_it(tmp_path: Path) -> None:
    first, second = (generate_certificates(tmp_path / name, 1) for name in ("a", "b"))
    secret = load_superexec_auth_secret(str(first.superexec_secret))
    assert secret is not None and len(secret) == 64  # 32 random bytes, hex
    assert secret != second.superexec_secret.read_bytes()


def test_supernode_keys_load_the_way_flower_loads_them(made: ConsortiumCertificates) -> None:
    first, second = made.supernodes
    private = load_ssh_private_key(first.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    # What `flwr supernode register` stores must be what `flower-supernode` presents.
    registered = try_load_public_key(first.public_key)
    assert registered == public_key_to_bytes(private.public_key())
    assert registered != try_load_public_key(second.public_key)


def test_existing_keys_are_never_replaced_without_force(tmp_path: Path) -> None:
    made = generate_certificates(tmp_path, 1)
    before = {path: path.read_bytes() for path in made.all_files}
    with pytest.raises(ConfigError, match=r"already exists.*--force"):
        generate_certificates(tmp_path, 1)
    assert {path: path.read_bytes() for path in made.all_files} == before
    generate_certificates(tmp_path, 1, force=True)
    assert made.ca_key.read_bytes() != before[made.ca_key]
    assert made.supernodes[0].private_key.read_bytes() != before[made.supernodes[0].private_key]
    assert stat.S_IMODE(made.ca_key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("hosts", "supernodes", "message"),
    [
        (["https://coordinator.org"], 1, "neither an IP address nor a host name"),
        (["two words"], 1, "neither an IP address nor a host name"),
        ([], 0, "--supernodes must be at least 1"),
    ],
)
def test_bad_requests_fail_in_one_line_before_writing(
    tmp_path: Path, hosts: list[str], supernodes: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        generate_certificates(tmp_path / "out", supernodes, hosts)
    assert not (tmp_path / "out").exists()


def _serve_once(made: ConsortiumCertificates) -> tuple[int, threading.Thread]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(made.superlink_certificate, made.superlink_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def accept() -> None:
        with listener:
            for _ in range(2):
                connection, _ = listener.accept()
                try:
                    with context.wrap_socket(connection, server_side=True) as tls:
                        tls.sendall(b"ok")
                except ssl.SSLError:
                    connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def _handshake(port: int, context: ssl.SSLContext, host: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.recv(2)


def test_tls_works_with_the_ca_and_fails_without_it(made: ConsortiumCertificates) -> None:
    port, server = _serve_once(made)
    with_ca = ssl.create_default_context(cafile=made.ca_certificate)
    assert _handshake(port, with_ca, "localhost") == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(port, ssl.create_default_context(), "localhost")
    server.join(timeout=10)
