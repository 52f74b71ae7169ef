"""TLS to Postgres on a deployed stage: what gateway.db asks libpq for, and that the libpq bundled
with psycopg-binary really verifies with it. A loopback server answers Postgres' SSLRequest and
completes the TLS handshake with a certificate from a throw-away CA (then closes: no database is
needed to see whether the handshake was accepted)."""

from __future__ import annotations

import datetime
import queue
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import db
from gateway.config import Settings

pytestmark = pytest.mark.integration

DEPLOYED = {"stage": "prod", "admin_api_key": "adm-" + "x" * 30, "upstash_redis_rest_url": "https://x.upstash.io",
            "upstash_redis_rest_token": "AX" + "y" * 30}


def _cert(tmp: Path) -> tuple[Path, Path, Path]:
    """(CA cert, server cert, server key) for the name "localhost"."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlp test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, queue.Queue[str]]]:
    ca, cert, key = _cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    outcomes: queue.Queue[str] = queue.Queue()  # what the server saw, one per connection

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(8)          # SSLRequest
                conn.sendall(b"S")    # "TLS, please"
                try:
                    with context.wrap_socket(conn, server_side=True):
                        outcomes.put("handshake")
                except (ssl.SSLError, OSError):
                    outcomes.put("refused")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], ca, outcomes
    listener.close()
    thread.join(5)


def _connect(url: str, **kwargs: str) -> str:
    try:
        psycopg.connect(url, connect_timeout=3, **kwargs).close()
    except psycopg.OperationalError as exc:
        return db.describe(exc)
    return "connected"


def test_deployed_stage_asks_for_verify_full_with_system_roots() -> None:
    s = Settings(**DEPLOYED, database_url="postgresql://app:pw@db.example.com/app?sslmode=require")
    assert db.tls_kwargs(s, s.database_url) == {"sslmode": "verify-full", "sslrootcert": "system"}
    s = Settings(**DEPLOYED, database_url="postgresql://app:pw@db.example.com/app?sslmode=verify-ca&sslrootcert=/opt/ca.pem")
    assert db.tls_kwargs(s, s.database_url) == {}  # the operator's explicit verification is kept
    s = Settings(**DEPLOYED, database_url="postgresql://app:pw@127.0.0.1/app")
    assert db.tls_kwargs(s, s.database_url) == {}  # loopback never leaves the machine
    assert db.tls_kwargs(Settings(stage="test"), "postgresql://app@db.example.com/app") == {}


def test_system_roots_refuse_an_unknown_ca_and_require_would_not(
        tls_server: tuple[int, Path, queue.Queue[str]]) -> None:
    port, ca, outcomes = tls_server

    def server_saw() -> str:  # the server thread records the handshake after the client has returned
        return outcomes.get(timeout=5)

    url = f"postgresql://app@localhost:{port}/app"
    # What gateway.db uses on a deployed stage: the certificate is checked against the system's roots.
    assert _connect(url, sslmode="verify-full", sslrootcert="system") == "TLS certificate verification failed"
    assert server_saw() == "refused"
    # sslmode=require (the default of many connection strings) would have accepted it.
    _connect(url, sslmode="require")
    assert server_saw() == "handshake"
    # And the check is real: trusting the CA that signed it, verify-full completes the handshake.
    _connect(url, sslmode="verify-full", sslrootcert=str(ca))
    assert server_saw() == "handshake"
