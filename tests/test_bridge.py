"""The first bytes of a wrapper's tunnel move before its engine child has
imported trio (``trio_s6tls._bridge``), and nothing is lost when the trio
engine takes over.

The end-to-end tests hold trio's import in the engine child on a gate: a
pipe that the child's ``sitecustomize`` reads before ``import trio`` goes
on, and that the test opens by closing its write end. While the gate is
shut, whatever prog exchanges over the tunnel went through the bridge.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trio
from support import TIMEOUT, finish, read_line_matching, reaped, sh, spawn, tls_env

from trio_s6tls._bridge import Carried, carry_first_bytes
from trio_s6tls._engine import CHUNK, run_engine
from trio_s6tls._errors import EXIT_SYSTEM, EXIT_TLS
from trio_s6tls._fdstreams import FdPairStream
from trio_s6tls._records import attach
from trio_s6tls._socket_tls import SocketTLS
from trio_s6tls._tls_errors import write_failure
from trio_s6tls._tlsconfig import TLSOptions
from trio_s6tls.testing import LoopbackPKI

GATE_FD = 9  # the gate's read end, in the client and everything it starts

TRIO_IMPORT_WAITS = (
    "import os, sys\n"
    "class _Gate:\n"
    "    shut = True\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'trio' and self.shut:\n"
    "            self.shut = False\n"
    "            sys.stderr.write('test: trio waits at the gate\\n')\n"
    f"            os.read({GATE_FD}, 1)\n"
    "        return None\n"
    "sys.meta_path.insert(0, _Gate())\n"
)


class Gate:
    """The pipe that holds ``import trio`` in our client's processes."""

    def __init__(self, directory: Path) -> None:
        (directory / "sitecustomize.py").write_text(TRIO_IMPORT_WAITS)
        self.directory = directory
        self.read_fd, self.write_fd = os.pipe()

    def open(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close_fds(self) -> None:
        self.open()
        os.close(self.read_fd)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    gate = Gate(tmp_path)
    try:
        yield gate
    finally:
        gate.close_fds()


def start_gated_pair(
    pki: LoopbackPKI,
    tcp_pair: tuple[socket.socket, socket.socket],
    gate: Gate,
    client_prog: list[str],
    server_prog: list[str],
    client_flags: tuple[str, ...] = ("-k", "localhost"),
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """s6-tlsc (gated) + client_prog against s6-tlsd + server_prog."""
    client, server = tcp_pair
    tlsd = spawn(
        ["s6-tlsd", "--", *server_prog], {0: server.fileno(), 1: server.fileno()}, tls_env(pki)
    )
    tlsc = spawn(
        ["s6-tlsc", *client_flags, "--", *client_prog],
        {6: client.fileno(), 7: client.fileno(), GATE_FD: gate.read_fd},
        tls_env(pki, PYTHONPATH=str(gate.directory)),
        stdout=subprocess.PIPE,
    )
    client.close()
    server.close()
    return tlsc, tlsd


def test_the_exchange_is_over_before_the_engine_has_imported_trio(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], gate: Gate
) -> None:
    """A one-shot client: prog's line goes out, the reply comes back, and
    prog exits, all while trio's import is held; then the engine closes the
    connection as usual."""
    client_prog = sh('echo ping >&7; read -r reply <&6; echo "$reply"')
    server_prog = sh('read -r line; echo "got $line"; cat >/dev/null; echo done >&2')
    tlsc, tlsd = start_gated_pair(pki, tcp_pair, gate, client_prog, server_prog)
    with reaped(tlsc, tlsd):
        try:
            code = tlsc.wait(timeout=TIMEOUT)  # prog's exit; the engine lives on
        except subprocess.TimeoutExpired:
            raise AssertionError("prog did not finish while trio's import was held") from None
        assert tlsc.stdout is not None
        reply = tlsc.stdout.read()  # the engine's stdout is /dev/null: EOF now
        gate.open()
        _, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert code == 0 and reply == b"got ping\n", client_err
    assert b"test: trio waits at the gate" in client_err
    assert tlsd.returncode == 0, server_err
    assert b"done" in server_err  # prog's EOF reached the server: the engine closed


def test_data_in_flight_when_the_engine_takes_over_is_delivered(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], gate: Gate
) -> None:
    """The server sends 8 MB while prog reads none of it and trio's import
    is held: the bridge holds what the pipe to prog refuses, and the engine,
    once trio is there, delivers it and what follows, byte for byte."""
    size = 8_000_000
    client_prog = sh(
        f'echo ping >&7; read -r reply <&6; echo "$reply"; read -r x <&{GATE_FD}; wc -c <&6'
    )
    server_prog = sh(f'read -r line; echo "got $line"; head -c {size} /dev/zero')
    tlsc, tlsd = start_gated_pair(pki, tcp_pair, gate, client_prog, server_prog)
    with reaped(tlsc, tlsd):
        assert tlsc.stdout is not None
        assert read_line_matching(tlsc.stdout, b"got ping") == b"got ping"
        gate.open()
        out, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert tlsc.returncode == 0 and tlsd.returncode == 0, (client_err, server_err)
    assert out.split() == [str(size).encode()]
    assert b"test: trio waits at the gate" in client_err


# --- the bridge itself, in process: where it stops and what it hands over ---
#
# Each case makes the bridge stop at a point the test controls: its ready
# fd is an fd that turns readable exactly when the state to check exists
# (the pipe to prog once the bridge wrote to it, the server's socket once a
# record reached it), so no case depends on timing.


class Link:
    """An established TLS connection on loopback TCP: our side non-blocking
    for the bridge, the peer's blocking for the test, and prog's two pipes."""

    def __init__(self, pki: LoopbackPKI, version: ssl.TLSVersion, pipe_size: int = 0) -> None:
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(pki.server_file)
        server_context.minimum_version = server_context.maximum_version = version
        # without this, OpenSSL 3 answers our -s FIN with a decode_error alert
        server_context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
        client_context = ssl.create_default_context(cafile=str(pki.ca_file))
        with socket.create_server(("127.0.0.1", 0)) as listener:
            raw = socket.create_connection(listener.getsockname()[:2])
            peer_raw, _ = listener.accept()
        self.pool = ThreadPoolExecutor(3)  # the test's blocking peers
        accepted = self.pool.submit(server_context.wrap_socket, peer_raw, server_side=True)
        self.connection = client_context.wrap_socket(raw, server_hostname="localhost")
        self.peer = accepted.result(timeout=TIMEOUT)
        attach(self.connection)
        self.peer.settimeout(TIMEOUT)
        self.prog_reads, self.to_prog = os.pipe()  # network → prog
        self.from_prog, self.prog_writes = os.pipe()  # prog → network
        if pipe_size:
            fcntl.fcntl(self.to_prog, fcntl.F_SETPIPE_SZ, pipe_size)

    def carry(self, ready_fd: int) -> Carried:
        return carry_first_bytes(self.connection, self.from_prog, self.to_prog, ready_fd)

    def take_over(self, carried: Carried, options: TLSOptions | None = None) -> int:
        """The trio engine from where the bridge stopped: its exit code."""

        async def main() -> int:
            tls = SocketTLS.adopt(
                self.connection, reading_ended=carried.network_ended, error=carried.network_error
            )
            local = FdPairStream(self.from_prog, self.to_prog, pipe_size=CHUNK)
            return await run_engine(
                tls, local, options or TLSOptions(), server_side=False, carried=carried
            )

        try:
            return trio.run(main)
        finally:
            self.from_prog = self.to_prog = -1  # the engine closed them

    def close(self) -> None:
        """Close everything, waking any thread of the test still blocked on it."""
        with contextlib.suppress(OSError):
            tcp_shutdown(self.peer, socket.SHUT_RDWR)
        for fd in (self.prog_writes, self.to_prog, self.from_prog, self.prog_reads):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.peer.close()
        self.connection.close()
        self.pool.shutdown()


@pytest.fixture(params=[ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def version(request: pytest.FixtureRequest) -> ssl.TLSVersion:
    return request.param  # type: ignore[no-any-return]


def tcp_shutdown(connection: ssl.SSLSocket, how: int) -> None:
    """shutdown(2) under TLS's feet (SSLSocket.shutdown would drop its TLS state)."""
    with socket.socket(fileno=os.dup(connection.fileno())) as raw:
        raw.shutdown(how)


def read_to_eof(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_record_the_pipe_does_not_take_is_handed_over_and_delivered_first(
    pki: LoopbackPKI, version: ssl.TLSVersion
) -> None:
    link = Link(pki, version, pipe_size=4096)
    try:
        payload = bytes(range(256)) * 1024  # 256 KiB: its first record is 16 KiB
        link.peer.sendall(payload)
        carried = link.carry(ready_fd=link.prog_reads)  # ready once prog's pipe holds bytes
        assert len(carried.down) == 16384 - 4096 and not carried.network_ended
        tcp_shutdown(link.peer, socket.SHUT_WR)  # the peer's end (a bare FIN: fine under -j)
        os.close(link.prog_writes)  # prog's end
        link.prog_writes = -1
        delivered = link.pool.submit(read_to_eof, link.prog_reads)
        assert link.take_over(carried) == 0
        assert delivered.result(timeout=TIMEOUT) == payload
    finally:
        link.close()


def test_a_record_the_network_does_not_take_is_handed_over_and_sent_first(
    pki: LoopbackPKI, version: ssl.TLSVersion
) -> None:
    link = Link(pki, version)
    try:
        link.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        link.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        payload = os.urandom(65536)
        os.write(link.prog_writes, payload)  # the bridge reads it whole and cannot send it whole
        carried = link.carry(ready_fd=link.peer.fileno())  # ready when a record arrives
        assert carried.up and not carried.refused
        received = link.pool.submit(lambda: b"".join(iter(lambda: link.peer.recv(65536), b"")))
        os.write(link.prog_writes, b"and the rest")
        os.close(link.prog_writes)
        link.prog_writes = -1
        engine = link.pool.submit(link.take_over, carried)
        assert received.result(timeout=TIMEOUT) == payload + b"and the rest"
        tcp_shutdown(link.peer, socket.SHUT_WR)  # prog's FIN came (-s); the peer's ends it
        assert engine.result(timeout=TIMEOUT) == 0
    finally:
        link.close()


def test_the_peers_close_notify_stops_the_bridge_and_the_engine_closes_as_the_model_says(
    pki: LoopbackPKI, version: ssl.TLSVersion
) -> None:
    link = Link(pki, version)
    try:
        link.peer.sendall(b"last words\n")
        closed = link.pool.submit(link.peer.unwrap)  # close_notify, then waits for ours
        carried = link.carry(ready_fd=link.prog_writes)  # never readable: only the end stops it
        assert carried.network_ended and carried.network_error is None
        assert os.read(link.prog_reads, 100) == b"last words\n"
        engine = link.pool.submit(link.take_over, carried)
        assert read_to_eof(link.prog_reads) == b""  # the close is prog's EOF
        os.close(link.prog_writes)  # (TLS 1.3: prog's direction ends with our close_notify)
        link.prog_writes = -1
        assert engine.result(timeout=TIMEOUT) == 0
        closed.result(timeout=TIMEOUT)  # the peer got our close_notify: a clean close
    finally:
        link.close()


def test_a_tcp_eof_without_close_notify_is_handed_over_as_a_ragged_end(
    pki: LoopbackPKI, version: ssl.TLSVersion
) -> None:
    link = Link(pki, version)
    try:
        tcp_shutdown(link.peer, socket.SHUT_WR)  # EOF, no close_notify
        carried = link.carry(ready_fd=link.prog_writes)
        assert carried.network_ended and carried.network_error is None
        # the engine knows it was no close_notify: -J makes that fatal
        assert link.take_over(carried, TLSOptions(enforce_close_notify=True)) == EXIT_TLS
    finally:
        link.close()


def test_progs_eof_ends_carrying_up_but_not_down(pki: LoopbackPKI, version: ssl.TLSVersion) -> None:
    link = Link(pki, version)
    try:
        os.close(link.prog_writes)
        link.prog_writes = -1
        link.peer.sendall(b"after your EOF\n")
        carried = link.carry(ready_fd=link.prog_reads)
        # nothing held, nothing ended: the engine reads the EOF again
        assert (carried.up, carried.down, carried.network_ended) == (b"", b"", False)
        assert os.read(link.prog_reads, 100) == b"after your EOF\n"
    finally:
        link.close()


def test_a_refused_write_is_handed_over_as_the_connections_death(
    pki: LoopbackPKI, version: ssl.TLSVersion
) -> None:
    link = Link(pki, version)
    try:
        tcp_shutdown(link.connection, socket.SHUT_WR)  # our sending side is gone: EPIPE
        os.write(link.prog_writes, b"too late\n")
        carried = link.carry(ready_fd=link.prog_reads)  # never readable: the refusal stops it
        assert isinstance(carried.refused, OSError) and carried.up == b"too late\n"
        assert write_failure(carried.refused).exit_code == EXIT_SYSTEM
    finally:
        link.close()
