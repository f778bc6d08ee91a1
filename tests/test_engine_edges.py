"""The engine at its edges, end to end (the installed programs as
subprocesses, over loopback TCP and over pipes):

1. bytes decrypted before a TLS error reach the application before the
   engine exits 98;
2. the close model per negotiated version (docs/close-semantics.rst):
   TLS 1.3 closes one direction at a time, TLS 1.2 ends both at the first
   close_notify, which is answered;
3. a client that stops reading cannot wedge a connection.

The peer is Python's ``ssl`` over memory BIOs (``support.BioPeer``), which can
read after sending close_notify and say how our side's stream ended.

Rules: loopback only, port 0; every wait bounded; no sleeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import signal
import socket
import subprocess
import time

import pytest
from support import (
    CORRUPT_RECORD,
    TIMEOUT,
    BioPeer,
    Engine,
    Network,
    Sink,
    one_line,
    openssl_port,
    program,
    python_client_context,
    python_server_context,
    read_exactly,
    read_to_eof,
    running_server,
    start_client,
    start_server,
    tls_env,
)

from trio_s6tls.testing import LoopbackPKI

VERSIONS = ["1.2", "1.3"]


def serve(pki: LoopbackPKI, network: Network, args: list[str]) -> tuple[BioPeer, Engine]:
    """s6-tlsd-io with ``args`` on the server side of ``network``, and a
    handshaken peer on the client side."""
    (client_read, client_write), (server_read, server_write) = network
    engine = start_server(args, server_read, server_write, tls_env(pki))
    for fd in {server_read, server_write}:
        os.close(fd)
    peer = BioPeer(client_read, client_write, python_client_context(pki.ca_file))
    peer.handshake()
    return peer, engine


# -- 1. deliver before failing -----------------------------------------------------


@pytest.mark.parametrize("count", [1, 1000, 65536, 1_000_000])
def test_data_before_a_corrupt_record_reaches_the_application(
    pki: LoopbackPKI, network: Network, count: int
) -> None:
    peer, engine = serve(pki, network, [])
    got = Sink(engine.from_app)
    payload = os.urandom(count)
    peer.send_raw(peer.encrypt(payload) + CORRUPT_RECORD)  # one write
    assert got.result() == (count, hashlib.sha256(payload).hexdigest())
    status, err = engine.finish()
    assert status == 98
    assert "TLS error reading from network" in one_line(err, "s6-tlsd-io")


@pytest.mark.parametrize("count", [1, 1000, 65536, 1_000_000])
def test_data_before_a_corrupt_record_reaches_prog_under_tlsserver(
    pki: LoopbackPKI, count: int
) -> None:
    # prog counts what it got on stdin and says so on stderr (the server's)
    argv = ["s6-tlsserver", "127.0.0.1", "0", "sh", "-c", "echo got $(wc -c) >&2"]
    with running_server(argv, tls_env(pki)) as srv:
        assert srv.log is not None
        with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as sock:
            peer = BioPeer(sock.fileno(), sock.fileno(), python_client_context(pki.ca_file))
            peer.handshake()
            peer.send_raw(peer.encrypt(os.urandom(count)) + CORRUPT_RECORD)
            lines = srv.log.lines_until(rb"^got \d+$")
        assert lines[-1] == f"got {count}".encode()
        # logged before prog's stdin is closed, so before prog's line
        assert any(
            b"warning: " in line and b"TLS error reading from network" in line for line in lines
        )
        assert srv.stop() == 0


# -- 2. the close model --------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_peer_data_after_our_close_notify(pki: LoopbackPKI, network: Network, version: str) -> None:
    """-S: our close_notify ends our direction. TLS 1.3: the peer's later
    data still reaches the application. TLS 1.2: it is discarded."""
    peer, engine = serve(pki, network, ["-S", "--max-version", version])
    peer.send(b"early")
    assert read_exactly(engine.from_app, 5) == b"early"
    os.write(engine.to_app, b"reply")
    os.close(engine.to_app)  # local EOF: -S sends close_notify
    received = peer.receive_all()
    assert (received.data, received.ending) == (b"reply", "close_notify")
    peer.send(b"late")
    peer.send_close_notify()
    expected = b"late" if version == "1.3" else b""
    assert read_to_eof(engine.from_app) == expected
    assert engine.finish() == (0, b"")


@pytest.mark.parametrize("version", VERSIONS)
def test_peer_close_notify_first(pki: LoopbackPKI, network: Network, version: str) -> None:
    """The peer sends its request and close_notify (default -s here).
    TLS 1.3: EOF for the application, whose reply still goes out, ended by
    our close_notify (the peer spoke TLS closure). TLS 1.2: answered at
    once with ours, the engine ends, and the application's reply fails
    with EPIPE instead of vanishing."""
    peer, engine = serve(pki, network, ["--max-version", version])
    peer.send(b"request")
    peer.send_close_notify()
    assert read_to_eof(engine.from_app) == b"request"
    if version == "1.3":
        os.write(engine.to_app, b"reply")
        os.close(engine.to_app)
        received = peer.receive_all()
        assert (received.data, received.ending) == (b"reply", "close_notify")
        assert engine.finish() == (0, b"")
    else:
        received = peer.receive_all()
        assert (received.data, received.ending) == (b"", "close_notify")
        assert engine.finish() == (0, b"")
        with pytest.raises(BrokenPipeError):
            os.write(engine.to_app, b"reply")
        os.close(engine.to_app)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("flag", "status"), [("-j", 0), ("-J", 98)])
def test_peer_bare_fin(
    pki: LoopbackPKI, network: Network, version: str, flag: str, status: int
) -> None:
    """A bare FIN after the request: the request is delivered either way;
    -J makes the missing close_notify fatal, -j lets the reply go out."""
    peer, engine = serve(pki, network, [flag, "--max-version", version])
    peer.send(b"request")
    peer.shutdown_write()
    assert read_exactly(engine.from_app, 7) == b"request"
    if status == 0:
        assert read_to_eof(engine.from_app) == b""
        os.write(engine.to_app, b"reply")
        os.close(engine.to_app)
        received = peer.receive_all()
        assert (received.data, received.ending) == (b"reply", "eof")  # -s: a bare FIN
        assert engine.finish() == (0, b"")
    else:
        assert read_to_eof(engine.from_app) == b""
        code, err = engine.finish()
        assert code == 98
        assert "without a close_notify" in one_line(err, "s6-tlsd-io")


@pytest.mark.parametrize("version", VERSIONS)
def test_client_engine_answers_the_servers_close_notify(
    pki: LoopbackPKI, network: Network, version: str
) -> None:
    """s6-tlsc-io against a server that speaks first and closes with
    close_notify: the banner is delivered; under TLS 1.3 the client's reply
    still goes out (our end a close_notify), under TLS 1.2 ours answers at
    once."""
    (client_read, client_write), (server_read, server_write) = network
    engine = start_client(
        ["-k", "localhost", "--max-version", version], client_read, client_write, tls_env(pki)
    )
    for fd in {client_read, client_write}:
        os.close(fd)
    context = python_server_context(pki.server_file)
    peer = BioPeer(server_read, server_write, context, server_side=True)
    peer.handshake()
    peer.send(b"banner")
    peer.send_close_notify()
    assert read_to_eof(engine.from_app) == b"banner"
    if version == "1.3":
        os.write(engine.to_app, b"reply")
        os.close(engine.to_app)
        received = peer.receive_all()
        assert (received.data, received.ending) == (b"reply", "close_notify")
    else:
        received = peer.receive_all()
        assert (received.data, received.ending) == (b"", "close_notify")
        os.close(engine.to_app)
    assert engine.finish() == (0, b"")


# -- 3. a client that stops reading ------------------------------------------------

CLOG_SECONDS = 1.0  # no progress for this long: the pipeline is full


def push_without_reading(sock: socket.socket, peer: BioPeer, total: int) -> int:
    """Send ``total`` bytes of application data and read nothing back;
    returns how many went out before the pipeline clogged (or all)."""
    wire = memoryview(peer.encrypt(os.urandom(total)))
    sent = 0
    sock.setblocking(False)
    while sent < len(wire):
        _, writable, _ = select.select([], [sock], [], CLOG_SECONDS)
        if not writable:
            break
        try:
            sent += sock.send(wire[sent:])
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    return sent


def leave(sock: socket.socket, how: str) -> None:
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # unread echo queued: the kernel resets anyway


def echo_once(pki: LoopbackPKI, port: int, limit: float) -> None:
    context = python_client_context(pki.ca_file)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=limit) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"ping\n")
        assert tls.recv(5) == b"ping\n"


def test_clients_that_stop_reading_free_their_slots(
    pki: LoopbackPKI, resources: contextlib.ExitStack
) -> None:
    """Three clients send 1 MB to cat behind -c 3 and leave without reading
    the echo: their slots come back, a fourth client is served, SIGTERM
    completes."""
    with running_server(["s6-tlsserver", "-c", "3", "127.0.0.1", "0", "cat"], tls_env(pki)) as srv:
        for how in ("close", "reset", "close"):
            sock = resources.enter_context(
                socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
            )
            peer = BioPeer(sock.fileno(), sock.fileno(), python_client_context(pki.ca_file))
            peer.handshake()
            push_without_reading(sock, peer, 1_000_000)
            leave(sock, how)
        started = time.monotonic()
        echo_once(pki, srv.port, limit=5)
        assert time.monotonic() - started < 5
        assert srv.stop(signal.SIGTERM, timeout=5) == 0


def test_chain_leaves_no_engine_or_prog_behind(
    pki: LoopbackPKI, resources: contextlib.ExitStack
) -> None:
    """s6-tcpserver … s6-tlsd cat, a client that sends until the pipeline is
    full (8 MB or so) and leaves: the engine child and cat end by
    themselves. They hold the server's stderr, so its EOF after the
    server's own exit says that nobody is left."""
    argv = ["s6-tcpserver", "127.0.0.1", "0", program("s6-tlsd"), "cat"]
    with running_server(argv, tls_env(pki)) as srv:
        assert srv.log is not None
        sock = resources.enter_context(
            socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
        )
        peer = BioPeer(sock.fileno(), sock.fileno(), python_client_context(pki.ca_file))
        peer.handshake()
        sent = push_without_reading(sock, peer, 32_000_000)
        assert sent < 32_000_000, "the pipeline never filled up"
        leave(sock, "close")
        assert srv.stop(signal.SIGTERM) == 0  # s6-tcpserver leaves its children be
        assert srv.log.wait_eof(10), "an engine or prog still holds the server's stderr"


# -- 2b. the close model against OpenSSL's own tools ----------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_our_close_notify_against_openssl_s_server(pki: LoopbackPKI, version: str) -> None:
    """s6-tlsc-io -S -J sends a line and closes with close_notify;
    ``s_server -rev`` answers the line, then its own close_notify.
    TLS 1.3: the answer, sent after our close_notify, is delivered. TLS 1.2:
    it is discarded if it comes after our close_notify (a race with
    s_server here; test_peer_data_after_our_close_notify pins it down).
    Either way the end is clean: s_server's close_notify passes -J."""
    s_server = subprocess.Popen(
        ["openssl", "s_server", "-rev", "-naccept", "1", "-accept", "127.0.0.1:0"]
        + ["-cert", str(pki.server_file), f"-tls{version.replace('.', '_')}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        port = openssl_port(s_server)
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        client = start_client(
            ["-S", "-J", "-k", "localhost"], sock.fileno(), sock.fileno(), tls_env(pki)
        )
        sock.close()
        os.write(client.to_app, b"hello s_server\n")
        os.close(client.to_app)
        answer = read_to_eof(client.from_app)
        if version == "1.3":
            assert answer == b"revres_s olleh\n"
        else:
            assert answer in (b"", b"revres_s olleh\n")
        assert client.finish() == (0, b"")
    finally:
        s_server.kill()
        s_server.communicate(timeout=TIMEOUT)


@pytest.mark.parametrize("version", VERSIONS)
def test_openssl_s_client_close_notify(pki: LoopbackPKI, version: str) -> None:
    """``s_client`` sends a line and, at the end of its input, its
    close_notify, then closes (it does not wait for ours). s6-tlsd-io -J
    delivers the line, then EOF, and takes the close_notify as a clean end.
    TLS 1.2: it answers and exits by itself, the application's side still
    open. TLS 1.3: it waits for the application's end (here, at once)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        s_client = subprocess.Popen(
            ["openssl", "s_client", "-no_ign_eof", "-CAfile", str(pki.ca_file)]
            + ["-servername", "localhost", f"-tls{version.replace('.', '_')}"]
            + ["-connect", f"127.0.0.1:{listener.getsockname()[1]}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        listener.settimeout(TIMEOUT)
        accepted, _ = listener.accept()
    server = start_server(["-J"], accepted.fileno(), accepted.fileno(), tls_env(pki))
    accepted.close()
    try:
        assert s_client.stdin is not None
        s_client.stdin.write(b"ping from openssl\n")
        s_client.stdin.close()
        assert read_to_eof(server.from_app) == b"ping from openssl\n"
        if version == "1.3":
            os.close(server.to_app)
        assert server.finish() == (0, b"")
        if version == "1.2":
            os.close(server.to_app)
        assert s_client.wait(timeout=TIMEOUT) == 0
    finally:
        if s_client.poll() is None:
            s_client.kill()
            s_client.wait(timeout=TIMEOUT)
