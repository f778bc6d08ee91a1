"""The C s6-networking tools and certificates they accept, for the interoperability
tests (their fixtures, ``c_tools`` and ``c_pki``, are in conftest.py).

The C tools are skarnet's s6-networking 2.8.0.1 on BearSSL, built by
``interop/build-c-s6.sh PREFIX``. They are looked for in ``$TRIO_S6TLS_C_TOOLS``
(a ``bin`` directory), else in ``<repo>/.c-s6/bin``. When they are missing the
tests that need them are skipped, except under ``CI=true``, where a missing
build is a failure: CI builds them first, so their absence there is a bug.

BearSSL rejects a certificate with a critical extendedKeyUsage, which trustme
makes, so the PKI here is made with ``cryptography`` directly: plain EC P-256
certificates, extendedKeyUsage present but not critical (OpenSSL checks it).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parent.parent
OURS_BIN = Path(sys.executable).parent

#: What a test says when it skips for want of the C tools.
MISSING_REASON = "C s6-networking not built: run interop/build-c-s6.sh .c-s6"

#: The C programs the interoperability tests run.
C_PROGRAMS = (
    "s6-tlsc-io",
    "s6-tlsd-io",
    "s6-tlsc",
    "s6-tlsd",
    "s6-tlsclient",
    "s6-tlsserver",
    "s6-tcpclient",
    "s6-tcpserver",
)


def c_bin_dir() -> Path:
    """Where the C tools are expected: ``$TRIO_S6TLS_C_TOOLS``, else ``.c-s6/bin``."""
    configured = os.environ.get("TRIO_S6TLS_C_TOOLS")
    return Path(configured) if configured else REPO / ".c-s6" / "bin"


def missing_c_programs(directory: Path) -> list[str]:
    return [name for name in C_PROGRAMS if not os.access(directory / name, os.X_OK)]


@dataclass(frozen=True)
class Tools:
    """Paths of one implementation's programs (``c`` or ``ours``)."""

    name: str
    bin: Path

    def __call__(self, program: str) -> str:
        return str(self.bin / program)


def ours() -> Tools:
    """Our console scripts, installed next to the running interpreter."""
    tools = Tools("ours", OURS_BIN)
    missing = [p for p in C_PROGRAMS if not (OURS_BIN / p).exists()]
    assert not missing, f"{missing} not installed next to {sys.executable}"
    return tools


def require_c_tools() -> Tools:
    """The C tools; skips the test without them, or fails it under ``CI=true``."""
    directory = c_bin_dir()
    missing = missing_c_programs(directory)
    if missing:
        detail = f"{MISSING_REASON} (not in {directory}: {', '.join(missing)})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {detail}", pytrace=False)
        pytest.skip(detail)
    return Tools("c", directory)


# --- PKI -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertKey:
    cert: Path  # end-entity certificate (PEM), for CERTFILE
    key: Path  # its private key (PEM, PKCS#8), for KEYFILE
    der: bytes  # the end-entity certificate

    @property
    def sha256_hash(self) -> str:
        """The value of SSL_PEER_CERT_HASH for a peer presenting this certificate."""
        return "SHA256:" + hashlib.sha256(self.der).hexdigest()


@dataclass(frozen=True)
class CPki:
    """Certificates on disk, acceptable to BearSSL and OpenSSL alike."""

    dir: Path
    ca: Path  # ca.pem, for CAFILE
    server: CertKey  # localhost, 127.0.0.1, ::1 (SAN), CN=localhost
    client: CertKey  # CN=test client
    other_ca: Path  # a CA that signed none of the above, for "wrong CA" cases

    def client_env(self, *, cert: bool = False) -> dict[str, str]:
        env = {"CAFILE": str(self.ca)}
        if cert:
            env.update(CERTFILE=str(self.client.cert), KEYFILE=str(self.client.key))
        return env

    def server_env(self, *, verify_clients: bool = False) -> dict[str, str]:
        env = {"CERTFILE": str(self.server.cert), "KEYFILE": str(self.server.key)}
        if verify_clients:
            env["CAFILE"] = str(self.ca)
        return env


_TLS_VARIABLES = ("CADIR", "CAFILE", "CERTFILE", "KEYFILE", "TLS_UID", "TLS_GID")


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without any TLS variable or ``SSL_*`` one, plus ``extra``."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in _TLS_VARIABLES
        and not k.startswith(("CERTFILE:", "KEYFILE:", "SSL_", "TCP"))
        and k != "SSLKEYLOGFILE"
    }
    return {**base, **(extra or {})}


def _name(common_name: str, organization: str = "trio_s6tls interop") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _make_ca(
    directory: Path, stem: str, common_name: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def _issue(
    directory: Path,
    stem: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> CertKey:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Not critical: BearSSL refuses a critical extendedKeyUsage.
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path = directory / f"{stem}.pem"
    # The chain without its root: here only the end-entity certificate.
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / f"{stem}-key.pem"
    _write_key(key_path, key)
    return CertKey(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))


def make_pki(directory: Path) -> CPki:
    """A CA, a server certificate for localhost / 127.0.0.1 / ::1, a client
    certificate, and an unrelated CA, as PEM files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key, ca_path = _make_ca(directory, "ca", "trio_s6tls interop CA")
    server = _issue(
        directory,
        "server",
        ca_cert,
        ca_key,
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ],
    )
    client = _issue(
        directory, "client", ca_cert, ca_key, "test client", ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    _, _, other_ca = _make_ca(directory, "other-ca", "some other CA")
    return CPki(directory, ca_path, server, client, other_ca)
