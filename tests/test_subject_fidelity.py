"""``SSL_PEER_CERT_SUBJECT`` and ``SSL_PEER_CERT_HASH`` as the C tools export
them (BearSSL's name decoding, s6-networking's printer), and ``-Y``.

First pure tests of the expected strings (hand-built DER, any string type);
then client certificates with awkward subjects presented to the C
``s6-tlsd-io -Y`` and to ours, whose notifications must match each other and
:func:`trio_s6tls._der.certificate_subject`; then what ``-Y`` exports when
the client sends no certificate or one from an unknown CA.

Rules: TLS over a socketpair (no network), a timeout on every socket, pipe
and process wait. Tests that need the C tools skip without them, and fail
under ``CI=true``.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import select
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from c_tools import CPki, Tools, make_pki, ours, require_c_tools
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trio_s6tls import _der
from trio_s6tls._handshake_info import NO_CERT_HASH, decode_notification, handshake_variables

TIMEOUT = 20.0

# -- pure: the printer -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (b" Lead, Trail ", b"Lead\\, Trail"),  # issue row 7
        (b"   ", b""),
        (b"a  b", b"a  b"),  # inner runs kept
        (b"  a \t", b"a \t"),  # only spaces are trimmed, not tabs
        (b",=+<>#\\", b"\\,\\=\\+\\<\\>\\#\\\\"),
        (b"a\nb", b"a\\\nb"),  # backslash, then the newline itself
        (b"a , b", b"a\\ , b"),  # C prints the backslash before the pending spaces
        (b"a  #", b"a\\  #"),
        (b"#x", b"\\#x"),  # '#' escaped anywhere, not only first
        (b";\"'", b";\"'"),  # not special to C's printer
        ("é".encode(), "é".encode()),
    ],
)
def test_escape_dn_value(value: bytes, printed: bytes) -> None:
    assert _der.escape_dn_value(value) == printed


# -- pure: decoding as BearSSL ------------------------------------------------------------

UTF8, PRINTABLE, T61, IA5, BMP, UNIVERSAL, VISIBLE = 0x0C, 0x13, 0x14, 0x16, 0x1E, 0x1C, 0x1A


@pytest.mark.parametrize(
    ("tag", "value", "decoded"),
    [
        (UTF8, "été".encode(), "été".encode()),
        (UTF8, b"", b""),
        (UTF8, b"a\0b", None),  # NUL refused
        (UTF8, b"\xc0\x80", None),  # overlong
        (UTF8, b"\xed\xa0\x80", None),  # surrogate
        (UTF8, "a\ufdd0".encode(), None),  # noncharacter
        (UTF8, "a\U0001fffe".encode(), None),  # noncharacter in another plane
        (UTF8, "\ufeff\ufeffab".encode(), b"ab"),  # leading BOMs dropped
        (UTF8, "a\ufeff".encode(), "a\ufeff".encode()),  # not leading: kept
        (PRINTABLE, b"Plain", b"Plain"),
        (T61, b"\xe9", "é".encode()),  # read as Latin-1
        (IA5, b"\xc3\xa9", "Ã©".encode()),  # so is any byte string type
        (IA5, b"a\0", None),
        (BMP, "Ĳ€😀".encode("utf-16-be"), "Ĳ€😀".encode()),
        (BMP, b"\xff\xfe" + "le".encode("utf-16-le"), b"le"),  # FF FE: little-endian
        (BMP, b"\xfe\xff" + "be".encode("utf-16-be"), b"be"),  # FE FF: dropped as a BOM
        (BMP, b"", b""),
        (BMP, b"\xd8\x3d", None),  # lone high surrogate
        (BMP, b"\xdc\x00", None),  # lone low surrogate
        (BMP, b"\x00\x00\x00", None),  # a NUL ends the reading before the odd byte
        (UNIVERSAL, "x".encode("utf-32-be"), None),  # not decoded by BearSSL
        (VISIBLE, b"x", None),
        (0x04, b"x", None),  # OCTET STRING
        (0x80, b"x", None),  # context-specific
    ],
)
def test_dn_string_utf8(tag: int, value: bytes, decoded: bytes | None) -> None:
    assert _der.dn_string_utf8(tag, value) == decoded


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        (BMP, b"\x00a\x00"),  # odd length: BearSSL fails the whole certificate
        (0x2C, b""),  # constructed UTF8String
        (0x43, b"x"),  # application class
        (0x1F, b"x"),  # long-form tag
    ],
)
def test_dn_string_that_fails_the_certificate(tag: int, value: bytes) -> None:
    with pytest.raises(ValueError):
        _der.dn_string_utf8(tag, value)


def tlv(tag: int, body: bytes) -> bytes:
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


OIDS = {
    "C": b"\x55\x04\x06",
    "ST": b"\x55\x04\x08",
    "L": b"\x55\x04\x07",
    "O": b"\x55\x04\x0a",
    "OU": b"\x55\x04\x0b",
    "CN": b"\x55\x04\x03",
    "email": b"\x2a\x86\x48\x86\xf7\x0d\x01\x09\x01",
    "serial": b"\x55\x04\x05",
}


def attribute(name: str, value: bytes, tag: int = UTF8) -> bytes:
    return tlv(0x30, tlv(0x06, OIDS[name]) + tlv(tag, value))


def rdn(*attributes: bytes) -> bytes:
    return tlv(0x31, b"".join(attributes))


def certificate(*rdns: bytes) -> bytes:
    """Enough of a certificate for certificate_subject: the TBS fields up to
    the subject (no key, no signature)."""
    tbs = (
        tlv(0xA0, tlv(0x02, b"\x02"))
        + tlv(0x02, b"\x01")
        + tlv(0x30, tlv(0x06, b"\x2a\x86\x48\xce\x3d\x04\x03\x02"))
        + tlv(0x30, b"")
        + tlv(0x30, tlv(0x17, b"250101000000Z") + tlv(0x17, b"350101000000Z"))
        + tlv(0x30, b"".join(rdns))
    )
    return tlv(0x30, tlv(0x30, tbs))


@pytest.mark.parametrize(
    ("rdns", "subject"),
    [
        ([rdn(attribute("O", b" Lead, Trail "))], "O=Lead\\, Trail"),
        (
            # certificate order does not matter, C's does
            [rdn(attribute(n, n.encode())) for n in ("CN", "OU", "O", "L", "ST", "C")],
            "C=C, ST=ST, L=L, O=O, OU=OU, CN=CN",
        ),
        ([rdn(attribute("CN", b"first")), rdn(attribute("CN", b"second"))], "CN=first"),
        ([rdn(attribute("CN", b"one"), attribute("O", b"two"))], "O=two, CN=one"),  # multi-valued
        ([rdn(attribute("email", b"a@b"), attribute("serial", b"7"))], None),  # none of the six
        ([], None),
        ([rdn(attribute("O", b""))], "O="),
        ([rdn(attribute("O", b"   "))], "O="),
        ([rdn(attribute("C", b"FR")), rdn(attribute("CN", b"x" * 64))], "C=FR, CN=" + "x" * 64),
        ([rdn(attribute("CN", b"x" * 65))], "<invalid>"),  # CN holds 64 bytes
        ([rdn(attribute("CN", "é".encode() * 33))], "<invalid>"),  # 66 bytes of UTF-8
        ([rdn(attribute("C", b"FRA"))], "<invalid>"),  # C holds 2
        (
            [rdn(attribute("ST", b"s" * 128)), rdn(attribute("L", b"l" * 128))],
            "ST=" + "s" * 128 + ", L=" + "l" * 128,
        ),
        ([rdn(attribute("O", b"ok")), rdn(attribute("CN", b"x", UNIVERSAL))], "<invalid>"),
        # the first CN is invalid: a second one does not replace it
        ([rdn(attribute("CN", b"a\0")), rdn(attribute("CN", b"fine"))], "<invalid>"),
        ([rdn(attribute("email", b"x", UNIVERSAL)), rdn(attribute("CN", b"fine"))], "CN=fine"),
        ([rdn(attribute("OU", "Ĳ".encode("utf-16-be"), BMP))], "OU=Ĳ"),
    ],
)
def test_certificate_subject(rdns: list[bytes], subject: str | None) -> None:
    assert _der.certificate_subject(certificate(*rdns)) == subject


@pytest.mark.parametrize(
    "rdns",
    [
        [tlv(0x31, b"")],  # an empty RDN
        [rdn(tlv(0x30, tlv(0x06, OIDS["CN"])))],  # an attribute without a value
        [rdn(attribute("email", b"\x00a\x00", BMP))],  # odd BMPString, even unused
    ],
)
def test_subject_bearssl_would_refuse(rdns: list[bytes]) -> None:
    with pytest.raises(ValueError):
        _der.certificate_subject(certificate(*rdns))


# -- certificates, for the engines ----------------------------------------------------------


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path
    der: bytes

    @property
    def sha256_hash(self) -> str:
        return "SHA256:" + hashlib.sha256(self.der).hexdigest()


def make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "subject fidelity CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def issue_client(
    directory: Path,
    stem: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    subject: x509.Name,
) -> ClientCert:
    """An EC client certificate BearSSL accepts (extendedKeyUsage not critical)."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = directory / f"{stem}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / f"{stem}-key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ClientCert(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))


def name(
    *attributes: tuple[x509.ObjectIdentifier, str] | tuple[x509.ObjectIdentifier, str, _ASN1Type],
) -> x509.Name:
    with warnings.catch_warnings():  # lengths cryptography warns about are the point here
        warnings.simplefilter("ignore")
        return x509.Name(
            [
                x509.NameAttribute(item[0], item[1], *item[2:], _validate=False)  # type: ignore[arg-type]
                for item in attributes
            ]
        )


N = NameOID
SUBJECTS = {
    "row 7: leading and trailing spaces": name((N.ORGANIZATION_NAME, " Lead, Trail ")),
    "inner spaces, every position": name(
        (N.COUNTRY_NAME, " X"),
        (N.STATE_OR_PROVINCE_NAME, "  two  leading"),
        (N.LOCALITY_NAME, "trailing  two  "),
        (N.ORGANIZATIONAL_UNIT_NAME, "   "),
        (N.COMMON_NAME, "a   b"),
    ),
    "every escaped character": name(
        (N.ORGANIZATION_NAME, ",=+<>#\\"), (N.COMMON_NAME, '#a\nb;c"d')
    ),
    "special after spaces": name((N.COMMON_NAME, "a , b  # c")),
    "repeated attributes keep the first": name(
        (N.COMMON_NAME, "first"),
        (N.ORGANIZATIONAL_UNIT_NAME, "u1"),
        (N.COMMON_NAME, "second"),
        (N.ORGANIZATIONAL_UNIT_NAME, "u2"),
    ),
    "string types": name(
        (N.COUNTRY_NAME, "FR", _ASN1Type.PrintableString),
        (N.LOCALITY_NAME, "é", _ASN1Type.T61String),  # UTF-8 bytes, read as Latin-1
        (N.ORGANIZATION_NAME, "Ĳ€", _ASN1Type.BMPString),  # OpenSSL refuses surrogates here
        (N.COMMON_NAME, "ia5", _ASN1Type.IA5String),
    ),
    "UniversalString: invalid": name(
        (N.ORGANIZATION_NAME, "fine"), (N.COMMON_NAME, "x", _ASN1Type.UniversalString)
    ),
    "too long for its buffer: invalid": name((N.COMMON_NAME, "é" * 33)),
    "longest that fits": name((N.COMMON_NAME, "x" * 64), (N.STATE_OR_PROVINCE_NAME, "s" * 128)),
    "leading byte-order mark": name((N.COMMON_NAME, "\ufeffbom")),
    "noncharacter: invalid": name((N.COMMON_NAME, "a\ufdd0")),
    "NUL: invalid": name((N.COMMON_NAME, "a\x00b")),
    "empty value": name((N.ORGANIZATION_NAME, "")),
    "none of the six: unset": name((N.EMAIL_ADDRESS, "a@example.com"), (N.SERIAL_NUMBER, "7")),
    "empty subject: unset": x509.Name([]),
}


@pytest.fixture(scope="module")
def subject_pki(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[CPki, Path, dict[str, ClientCert]]:
    """The BearSSL-friendly server PKI of c_tools, a trust file holding its CA
    and ours, and one client certificate per entry of SUBJECTS."""
    directory = tmp_path_factory.mktemp("subjects")
    pki = make_pki(directory / "pki")
    ca_cert, ca_key, ca_path = make_ca(directory)
    trust = directory / "trust.pem"
    trust.write_bytes(pki.ca.read_bytes() + ca_path.read_bytes())
    clients = {
        label: issue_client(directory, f"client{index}", (ca_cert, ca_key), subject)
        for index, (label, subject) in enumerate(SUBJECTS.items())
    }
    return pki, trust, clients


# -- running an engine ----------------------------------------------------------------------


@dataclass
class EngineRun:
    notification: dict[str, str | None] | None  # None: no complete block
    client_error: str | None
    stderr: bytes


def _read_block(fd: int, deadline: float) -> bytes:
    data = b""
    while not data.endswith(b"\0\0"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def run_tlsd_io(
    program: str,
    flags: Sequence[str],
    server_env: dict[str, str],
    client: ClientCert | None,
) -> EngineRun:
    """``program -d N flags... fdr fdw`` with the network on a socketpair and a
    Python client (with ``client``'s certificate, if any) doing the handshake;
    returns the notification block, decoded."""
    network, peer = socket.socketpair()
    app_in_r, app_in_w = os.pipe()  # local data to the engine: EOF once done
    app_out_r, app_out_w = os.pipe()  # what the engine decrypts: drained on close
    notify_r, notify_w = os.pipe()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **server_env}
    with network:
        process = subprocess.Popen(
            [program, "-d", str(notify_w), *flags, str(app_in_r), str(app_out_w)],
            stdin=network,
            stdout=network,
            stderr=subprocess.PIPE,
            pass_fds=(app_in_r, app_out_w, notify_w),
            env=env,
        )
    for fd in (app_in_r, app_out_w, notify_w):
        os.close(fd)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server's certificate is not under test
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    peer.settimeout(TIMEOUT)
    client_error = None
    tls = None
    try:
        tls = context.wrap_socket(peer)
        block = _read_block(notify_r, time.monotonic() + TIMEOUT)
    except (OSError, ssl.SSLError) as error:
        client_error = repr(error)
        block = _read_block(notify_r, time.monotonic() + 1)
    finally:
        os.close(notify_r)
        os.close(app_in_w)  # local EOF: the engine half-closes, then sees ours
        try:
            if tls is not None:
                tls.close()
            peer.close()
        finally:
            try:
                _, stderr = process.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate(timeout=TIMEOUT)
            os.close(app_out_r)
    notification = decode_notification(block) if block.endswith(b"\0\0") else None
    return EngineRun(notification, client_error, stderr)


@pytest.fixture(scope="module")
def engines() -> dict[str, Tools]:
    return {"c": require_c_tools(), "ours": ours()}


@pytest.mark.parametrize("label", list(SUBJECTS))
def test_subject_as_c_exports_it(
    label: str,
    subject_pki: tuple[CPki, Path, dict[str, ClientCert]],
    engines: dict[str, Tools],
) -> None:
    pki, trust, clients = subject_pki
    client = clients[label]
    expected = _der.certificate_subject(client.der)
    server_env = {**pki.server_env(), "CAFILE": str(trust)}
    for implementation, tools in engines.items():
        run = run_tlsd_io(tools("s6-tlsd-io"), ["-Y"], server_env, client)
        assert run.notification is not None, (implementation, run)
        assert run.notification["SSL_PEER_CERT_HASH"] == client.sha256_hash, (implementation, run)
        assert run.notification["SSL_PEER_CERT_SUBJECT"] == expected, (implementation, run)


def test_expected_subjects_by_hand(subject_pki: tuple[CPki, Path, dict[str, ClientCert]]) -> None:
    """What the C comparison above found, spelt out (so that a change in the
    shared function cannot pass both sides unnoticed)."""
    _, _, clients = subject_pki
    got = {label: _der.certificate_subject(client.der) for label, client in clients.items()}
    assert got == {
        "row 7: leading and trailing spaces": "O=Lead\\, Trail",
        "inner spaces, every position": "C=X, ST=two  leading, L=trailing  two, OU=, CN=a   b",
        "every escaped character": 'O=\\,\\=\\+\\<\\>\\#\\\\, CN=\\#a\\\nb;c"d',
        "special after spaces": "CN=a\\ , b\\  # c",
        "repeated attributes keep the first": "OU=u1, CN=first",
        "string types": "C=FR, L=Ã©, O=Ĳ€, CN=ia5",
        "UniversalString: invalid": "<invalid>",
        "too long for its buffer: invalid": "<invalid>",
        "longest that fits": "ST=" + "s" * 128 + ", CN=" + "x" * 64,
        "leading byte-order mark": "CN=bom",
        "noncharacter: invalid": "<invalid>",
        "NUL: invalid": "<invalid>",
        "empty value": "O=",
        "none of the six: unset": None,
        "empty subject: unset": None,
    }


# -- -Y: no certificate, and a certificate from an unknown CA ------------------------------


def test_c_y_without_client_cert_exports_a_zero_hash(
    subject_pki: tuple[CPki, Path, dict[str, ClientCert]],
    engines: dict[str, Tools],
) -> None:
    pki, _, _ = subject_pki
    run = run_tlsd_io(engines["c"]("s6-tlsd-io"), ["-Y"], pki.server_env(verify_clients=True), None)
    assert run.notification is not None, run
    assert run.notification["SSL_PEER_CERT_HASH"] == NO_CERT_HASH
    assert run.notification["SSL_PEER_CERT_SUBJECT"] is None


def test_c_without_y_exports_no_hash(
    subject_pki: tuple[CPki, Path, dict[str, ClientCert]],
    engines: dict[str, Tools],
) -> None:
    pki, _, _ = subject_pki
    run = run_tlsd_io(engines["c"]("s6-tlsd-io"), [], pki.server_env(), None)
    assert run.notification is not None, run
    assert run.notification["SSL_PEER_CERT_HASH"] is None
    assert run.notification["SSL_PEER_CERT_SUBJECT"] is None


def test_c_y_accepts_a_client_cert_from_an_unknown_ca(
    subject_pki: tuple[CPki, Path, dict[str, ClientCert]],
    engines: dict[str, Tools],
) -> None:
    # The reference for the documented difference (issue row 9): BearSSL
    # with BR_OPT_TOLERATE_NO_CLIENT_AUTH goes on when the chain does not
    # verify; the hash (computed while the certificate arrives) is exported,
    # the subject (filled only by a successful validation) is not.
    pki, _, clients = subject_pki
    client = clients["row 7: leading and trailing spaces"]  # signed by a CA pki.ca is not
    run = run_tlsd_io(
        engines["c"]("s6-tlsd-io"), ["-Y"], pki.server_env(verify_clients=True), client
    )
    assert run.notification is not None, run
    assert run.notification["SSL_PEER_CERT_HASH"] == client.sha256_hash
    assert run.notification["SSL_PEER_CERT_SUBJECT"] is None


def _memory_handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Both sides of a handshake through memory BIOs; raises the server's error."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    client_side = client.wrap_bio(c_in, c_out, server_side=False)
    done = {"server": False, "client": False}
    for _ in range(20):  # a handshake takes a few flights; bounded anyway
        for role, obj in (("client", client_side), ("server", server_side)):
            if not done[role]:
                try:
                    obj.do_handshake()
                    done[role] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server's verdict on the client certificate comes
            # with its first read, after the client's handshake is done.
            try:
                server_side.read(1)
            except ssl.SSLWantReadError:
                pass
            return server_side, client_side
    raise AssertionError("handshake did not finish")


def _server_context(pki: CPki, *, trust: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    context.verify_mode = ssl.CERT_OPTIONAL
    if trust is not None:
        context.load_verify_locations(trust)
    return context


def _client_context(cert: ClientCert | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_handshake_variables_when_a_cert_was_requested(
    subject_pki: tuple[CPki, Path, dict[str, ClientCert]], version: ssl.TLSVersion
) -> None:
    pki, trust, clients = subject_pki
    server = _server_context(pki, trust=trust)
    server.maximum_version = version
    conn, _ = _memory_handshake(server, _client_context(None))
    assert (
        conn.version()
        == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    )
    requested = handshake_variables(conn, server_side=True, peer_cert_requested=True)
    assert requested["SSL_PEER_CERT_HASH"] == NO_CERT_HASH
    assert requested["SSL_PEER_CERT_SUBJECT"] is None
    not_requested = handshake_variables(conn, server_side=True)
    assert not_requested["SSL_PEER_CERT_HASH"] is None

    client = clients["row 7: leading and trailing spaces"]
    conn, _ = _memory_handshake(server, _client_context(client))
    variables = handshake_variables(conn, server_side=True, peer_cert_requested=True)
    assert variables["SSL_PEER_CERT_HASH"] == client.sha256_hash
    assert variables["SSL_PEER_CERT_SUBJECT"] == "O=Lead\\, Trail"
    unset = handshake_variables(
        _memory_handshake(server, _client_context(clients["empty subject: unset"]))[0],
        server_side=True,
        peer_cert_requested=True,
    )
    assert unset["SSL_PEER_CERT_SUBJECT"] is None


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_python_ssl_verifies_what_cert_optional_receives(
    subject_pki: tuple[CPki, Path, dict[str, ClientCert]], version: ssl.TLSVersion
) -> None:
    """Why issue row 9 cannot be matched: CERT_OPTIONAL verifies a
    certificate that is sent, and a failed verification ends the handshake;
    the ssl module has no verify callback to tolerate it."""
    pki, _, clients = subject_pki
    server = _server_context(pki, trust=pki.ca)  # does not know the clients' CA
    server.maximum_version = version
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        _memory_handshake(server, _client_context(clients["row 7: leading and trailing spaces"]))


def test_a_self_signed_client_cert_in_the_trust_file_is_accepted(tmp_path: Path) -> None:
    """What a user of ``-Y`` with certificates from no common CA does
    instead: put each (self-signed) client certificate in CAFILE/CADIR,
    and let prog check SSL_PEER_CERT_HASH."""
    pki = make_pki(tmp_path / "pki")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed client")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "self.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = tmp_path / "self-key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    client = ClientCert(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))
    conn, _ = _memory_handshake(_server_context(pki, trust=cert_path), _client_context(client))
    variables = handshake_variables(conn, server_side=True, peer_cert_requested=True)
    assert variables["SSL_PEER_CERT_HASH"] == client.sha256_hash
    assert variables["SSL_PEER_CERT_SUBJECT"] == "CN=self-signed client"
