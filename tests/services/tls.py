"""A self-signed TLS certificate for the HTTPS servers the tests start on 127.0.0.1.

The test session trusts it (``tests/conftest.py`` points ``SSL_CERT_FILE`` and
``REQUESTS_CA_BUNDLE`` at a bundle of certifi's roots plus this certificate before any
client library is imported), so the product's own TLS code verifies it like a real one.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TestCertificate:
    """``cert`` and ``key`` (PEM files) of ``localhost``/``127.0.0.1``; ``bundle`` trusts it."""

    cert: Path
    key: Path
    bundle: Path


def make_certificate(directory: Path) -> TestCertificate:
    """Write a fresh self-signed certificate (EC P-256, valid one day) into ``directory``."""
    import certifi
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "factoryflow test server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(pem)
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "bundle.pem").write_bytes(Path(certifi.where()).read_bytes() + b"\n" + pem)
    return TestCertificate(directory / "cert.pem", directory / "key.pem", directory / "bundle.pem")


def make_client_certificate(ca: TestCertificate, directory: Path, name: str = "factoryflow") -> tuple[Path, Path]:
    """Write a client certificate for ``name`` signed by ``ca`` (its key), valid one day:
    ``(cert, key)`` PEM files in ``directory``, for servers that require one (Mosquitto's
    ``require_certificate``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    issuer = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    issuer_key = serialization.load_pem_private_key(ca.key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(issuer_key, hashes.SHA256()))  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory / f"{name}.pem", directory / f"{name}.key"
