"""TLS: `serve --tls-cert/--tls-key` and an ADBC client that trusts the CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import USERS


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_gateway(test_root: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from gateway.serving import start_server
    from gateway.settings import load_settings

    directory = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(directory)
    settings = load_settings({"policy": str(test_root / "policy.yaml"),
                              "data_dir": str(directory / "state"), "port": 0,
                              "tls_cert": str(cert), "tls_key": str(key)}, env={})
    server, domain, url, _ = start_server(settings)
    role, password, attributes = USERS["rita"]
    domain.store.add_user("rita", role, password, attributes)
    yield url, cert
    server.shutdown()
    domain.close()


def test_tls_round_trip(tls_gateway):
    url, cert = tls_gateway
    assert url.startswith("grpc+tls://127.0.0.1:")
    conn = flight_sql.connect(url, autocommit=True, db_kwargs={
        "username": "rita", "password": USERS["rita"][1],
        "adbc.flight.sql.client_option.tls_root_certs": cert.read_text(),
    })
    cur = conn.cursor()
    cur.execute("SELECT count(*) AS n FROM registry.codes")
    assert cur.fetchall() == [(5,)]
    cur.close()
    conn.close()


def test_tls_refuses_an_untrusted_client(tls_gateway):
    url, _ = tls_gateway
    with pytest.raises(adbc_driver_manager.Error):
        conn = flight_sql.connect(url, autocommit=True, db_kwargs={
            "username": "rita", "password": USERS["rita"][1]})
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1")
        finally:
            conn.close()
