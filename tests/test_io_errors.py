"""s6-tlsc-io / s6-tlsd-io: SNI certificate choice, client certificates, and
every error of the exit-code list — exit code and a single
``PROG: fatal:`` / ``PROG: usage:`` line, no traceback, no hang.

Rules: loopback only, port 0, every wait bounded (TIMEOUT).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from support import (
    TIMEOUT,
    ClientCert,
    Sink,
    connect_and_serve,
    one_line,
    read_to_eof,
    serve_one,
    spawn,
    tls_env,
)

from trio_s6tls import decode_notification
from trio_s6tls.testing import LoopbackPKI

# -- SNI -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sni_env(pki: LoopbackPKI) -> dict[str, str]:
    return {**tls_env(pki), **pki.sni_env("exact.example.org", "*.example.com")}


def served_names(
    pki: LoopbackPKI, listener: socket.socket, args: list[str], env: dict[str, str], servername: str
) -> tuple[list[str] | None, int]:
    """The DNS names of the certificate the server presented for
    ``servername`` (None if the handshake failed), and its exit code."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.check_hostname = False
    names: list[str] | None = None

    def client() -> None:
        nonlocal names
        raw = socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT)
        try:
            with context.wrap_socket(raw, server_hostname=servername) as sock:
                names = [
                    value for kind, value in sock.getpeercert()["subjectAltName"] if kind == "DNS"
                ]  # type: ignore[index, misc]
                while sock.recv(1024):  # read to the end: closing with unread
                    pass  # session tickets would make the kernel send an RST
        except ssl.SSLError:
            raw.close()

    thread = threading.Thread(target=client)
    thread.start()
    engine = serve_one(listener, args, env)
    os.close(engine.to_app)
    os.close(engine.from_app)
    thread.join(TIMEOUT)
    return names, engine.finish()[0]


@pytest.mark.parametrize(
    ("level", "servername", "expected"),
    [
        ("1", "exact.example.org", ["exact.example.org"]),
        ("1", "a.example.com", ["*.example.com"]),
        ("1", "a.b.example.com", ["localhost"]),  # wildcards cover one label only
        ("1", "unknown.example.net", ["localhost"]),
        ("0", "exact.example.org", ["localhost"]),
        ("2", "a.example.com", ["*.example.com"]),
        ("2", "unknown.example.net", None),
    ],
)
def test_sni_levels(
    pki: LoopbackPKI,
    listener: socket.socket,
    sni_env: dict[str, str],
    level: str,
    servername: str,
    expected: list[str] | None,
) -> None:
    # -S: Python's default client context answers a bare FIN with an alert
    names, code = served_names(pki, listener, ["-S", "-k", level], sni_env, servername)
    assert names == expected
    assert code == (0 if expected else 98)


# -- client certificates ----------------------------------------------------------


def test_mandatory_client_cert_refuses_a_client_without_one(
    pki: LoopbackPKI, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    failures: list[Exception] = []

    def client() -> None:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        try:
            with context.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT),
                server_hostname="localhost",
            ) as sock:
                sock.recv(10)  # TLS 1.3: the refusal arrives after the client's Finished
        except (ssl.SSLError, OSError) as error:
            failures.append(error)

    thread = threading.Thread(target=client)
    thread.start()
    engine = serve_one(listener, ["-y"], tls_env(pki))
    thread.join(TIMEOUT)
    code, err = engine.finish()
    assert code == 98
    assert "peer did not return a certificate" in one_line(err, "s6-tlsd-io")
    assert failures  # the client saw the refusal


def test_mandatory_client_cert_with_one(
    pki: LoopbackPKI,
    client_cert: ClientCert,
    listener: socket.socket,
    resources: contextlib.ExitStack,
) -> None:
    notify_r, notify_w = os.pipe()
    sock, engine = connect_and_serve(
        pki, listener, ["-y", "-d", "5"], extra={5: notify_w}, cert=client_cert.file
    )
    resources.enter_context(sock)  # closed even if the test fails
    os.close(notify_w)
    variables = decode_notification(read_to_eof(notify_r))
    sock.close()
    os.close(engine.to_app)
    os.close(engine.from_app)
    engine.finish()
    assert (
        variables["SSL_PEER_CERT_HASH"] == "SHA256:" + hashlib.sha256(client_cert.der).hexdigest()
    )
    assert variables["SSL_PEER_CERT_SUBJECT"] == "O=Clients\\, Inc., OU=QA, CN=test client"


# -- the error list -----------------------------------------------------------------


def run_with_socket(prog: str, args: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run an engine whose network is one end of a socketpair nobody talks on
    (configuration errors must be reported before any network I/O)."""
    ours, theirs = socket.socketpair()
    null = os.open(os.devnull, os.O_RDWR)
    fds = (
        {0: theirs.fileno(), 1: theirs.fileno(), 3: null, 4: null}
        if prog == "s6-tlsd-io"
        else {0: null, 1: null, 6: theirs.fileno(), 7: theirs.fileno()}
    )
    operands = ["3", "4"] if prog == "s6-tlsd-io" else ["6", "7"]
    proc = spawn([prog, *args, *operands], fds, env)
    theirs.close()
    os.close(null)
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        ours.close()
    return proc.returncode, err


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


@pytest.fixture(scope="module")
def bad_files(pki: LoopbackPKI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("bad")
    (directory / "empty").mkdir()
    (directory / "garbage.pem").write_text("this is not a certificate\n")
    other = directory / "other.pem"
    pki.ca.issue_cert("localhost").private_key_pem.write_to_path(str(other))
    return {
        "empty": str(directory / "empty"),
        "garbage": str(directory / "garbage.pem"),
        "other_key": str(other),
    }


CASES = [
    # (program, args, env change, exit code, kind, message fragment)
    ("s6-tlsc-io", [], {"-": "CADIR CAFILE"}, 100, "fatal", "CADIR or CAFILE not set"),
    ("s6-tlsd-io", [], {"-": "CERTFILE"}, 100, "fatal", "CERTFILE not set"),
    ("s6-tlsd-io", [], {"-": "KEYFILE"}, 100, "fatal", "KEYFILE not set"),
    ("s6-tlsc-io", ["-d", "0"], {"-": "CADIR CAFILE"}, 100, "fatal", "CADIR or CAFILE not set"),
    ("s6-tlsc-io", [], {"CADIR": "empty"}, 96, "fatal", "no trust anchor"),
    ("s6-tlsc-io", [], {"CAFILE": "garbage"}, 96, "fatal", "trust anchor"),
    (
        "s6-tlsd-io",
        [],
        {"KEYFILE": "/nonexistent/key.pem"},
        96,
        "fatal",
        "unable to read private key file",
    ),
    ("s6-tlsd-io", [], {"KEYFILE": "other_key"}, 96, "fatal", "does not match"),
    ("s6-tlsd-io", [], {"TLS_UID": "nobody"}, 100, "fatal", "invalid TLS_UID"),
    ("s6-tlsc-io", [], {"TLS_GID": "-1"}, 100, "fatal", "invalid TLS_GID"),
    ("s6-tlsd-io", ["-X"], {}, 100, "fatal", "unrecognized option: -X"),
    ("s6-tlsc-io", ["-K", "soon"], {}, 100, "fatal", "invalid argument for -K"),
]


@pytest.mark.parametrize(("prog", "args", "change", "code", "kind", "fragment"), CASES)
def test_error_exit_codes_and_messages(
    pki: LoopbackPKI,
    bad_files: dict[str, str],
    prog: str,
    args: list[str],
    change: dict[str, str],
    code: int,
    kind: str,
    fragment: str,
) -> None:
    env = tls_env(pki)
    for name, value in change.items():
        if name == "-":
            env = without(env, *value.split())
        else:
            env[name] = bad_files.get(value, value)
    status, err = run_with_socket(prog, args, env)
    assert status == code
    assert fragment in one_line(err, prog, kind)


@pytest.mark.parametrize("operands", [["x", "7"], ["6"], ["6", "7", "8"]])
def test_bad_fd_operands_are_usage_errors(pki: LoopbackPKI, operands: list[str]) -> None:
    proc = spawn(["s6-tlsc-io", *operands], {}, tls_env(pki))
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 100
    one_line(err, "s6-tlsc-io", "usage")


def test_closed_fd_is_a_system_error(pki: LoopbackPKI) -> None:
    proc = spawn(["s6-tlsc-io", "6", "7"], {}, tls_env(pki))
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 111
    assert "file descriptor 6" in one_line(err, "s6-tlsc-io")


def test_garbage_instead_of_client_hello(pki: LoopbackPKI, listener: socket.socket) -> None:
    with socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT) as peer:
        engine = serve_one(listener, [], tls_env(pki))
        peer.sendall(b"GET / HTTP/1.0\r\n\r\n")
        code, err = engine.finish()
    assert code == 98
    assert "handshake" in one_line(err, "s6-tlsd-io")


def test_peer_reset_mid_stream(
    pki: LoopbackPKI, listener: socket.socket, resources: contextlib.ExitStack
) -> None:
    sock, engine = connect_and_serve(pki, listener, [])
    resources.enter_context(sock)  # closed even if the test fails
    got = Sink(engine.from_app, keep=True)
    sock.sendall(b"some data")
    got.wait_for(lambda data: data == b"some data")  # delivered before the reset
    raw = socket.socket(fileno=sock.detach())
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # RST
    got.result()
    os.close(engine.to_app)
    code, err = engine.finish()
    assert code == 111
    assert "reset" in one_line(err, "s6-tlsd-io").lower()


# -- privileges -----------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
def test_tls_uid_gid_are_dropped_after_loading_the_keys(
    pki: LoopbackPKI, listener: socket.socket, tmp_path: Path, resources: contextlib.ExitStack
) -> None:
    private = tmp_path / "root-only.pem"
    private.write_bytes(pki.server_file.read_bytes())
    private.chmod(0o600)  # readable by root only: it must be loaded before the drop
    env = tls_env(
        pki, CERTFILE=str(private), KEYFILE=str(private), TLS_UID="65534", TLS_GID="65533"
    )
    sock, engine = connect_and_serve(pki, listener, [], env)
    resources.enter_context(sock)  # closed even if the test fails
    status = Path(f"/proc/{engine.proc.pid}/status").read_text()
    ids = {
        line.split(":")[0]: line.split()[1:]
        for line in status.splitlines()
        if line.startswith(("Uid:", "Gid:", "Groups:"))
    }
    sock.close()
    os.close(engine.to_app)
    os.close(engine.from_app)
    engine.finish()
    assert ids["Uid"] == ["65534"] * 4
    assert ids["Gid"] == ["65533"] * 4
    assert ids["Groups"] == []  # no supplementary group survives the drop, as in C


# -- protocol and cipher policy ----------------------------------------------------------


def handshake_with(
    pki: LoopbackPKI, listener: socket.socket, configure: Callable[[ssl.SSLContext], None]
) -> tuple[bool, int, bytes]:
    """Whether a client configured by ``configure`` completes a handshake
    with s6-tlsd-io, and the server's exit code and stderr."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki.ca_file))
    configure(context)
    completed: list[bool] = []

    def client() -> None:
        raw = socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT)
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                completed.append(True)
                while sock.recv(1024):
                    pass
        except (ssl.SSLError, OSError):
            raw.close()

    thread = threading.Thread(target=client)
    thread.start()
    engine = serve_one(listener, ["-S"], tls_env(pki))
    os.close(engine.to_app)
    os.close(engine.from_app)
    thread.join(TIMEOUT)
    return (bool(completed), *engine.finish())


def old_protocol(context: ssl.SSLContext) -> None:
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # deprecated, which is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1


def cbc_only(context: ssl.SSLContext) -> None:
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES256-SHA384")


def forward_secret_aead(context: ssl.SSLContext) -> None:
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


@pytest.mark.parametrize(
    ("configure", "refusal"),
    [
        (old_protocol, "unsupported protocol"),
        (cbc_only, "no shared cipher"),
        (forward_secret_aead, None),
    ],
)
def test_server_protocol_and_cipher_policy(
    pki: LoopbackPKI,
    listener: socket.socket,
    configure: Callable[[ssl.SSLContext], None],
    refusal: str | None,
) -> None:
    completed, code, err = handshake_with(pki, listener, configure)
    assert completed is (refusal is None)
    if refusal is None:
        assert code == 0
    else:  # refused by the server's policy, not a client that gave up
        assert code == 98
        assert refusal in one_line(err, "s6-tlsd-io")
