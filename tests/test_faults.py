"""Each research tool of trio_s6tls.testing does what it promises.

Faults are shown against the real ``s6-tlsd-io`` (a server engine on a
loopback TCP connection, its local side on two pipes): a cut at a record
boundary is a ragged EOF (exit 0 with ``-j``, 98 with ``-J``), a cut inside
a record is a truncation (98 even with ``-j``), a reset is a TCP RST (which ends the engine with 111), split writes still
make a correct tunnel, delayed pieces trip ``-K``.
Transcripts, the key log and the STARTTLS peer are shown on their own.

Rules: loopback only, port 0, a bound on every wait, no sleeps standing in
for a condition.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_s6tls.testing import (
    Faults,
    FaultyStream,
    HandshakeFailed,
    LoopbackPKI,
    TLSPeerStream,
    Transcript,
    TranscriptStream,
    find_program,
    peer_client_context,
    peer_server_context,
)

WAIT = 10.0


@dataclass
class EngineRun:
    """s6-tlsd-io serving one connection; we are both its peer and its app."""

    process: trio.Process
    peer: TLSPeerStream
    app_write_fd: int  # the engine reads cleartext from the other end
    app_read_fd: int  # the engine writes decrypted cleartext to the other end

    def close_app_input(self) -> None:
        if self.app_write_fd >= 0:
            os.close(self.app_write_fd)
            self.app_write_fd = -1

    async def app_output(self) -> bytes:
        """Everything the engine delivered to the application, up to EOF."""
        chunks = []
        with trio.fail_after(WAIT):
            while chunk := await trio.to_thread.run_sync(os.read, self.app_read_fd, 65536):
                chunks.append(chunk)
        return b"".join(chunks)

    async def status(self) -> tuple[int, str]:
        with trio.fail_after(WAIT):
            await self.process.wait()
        assert self.process.stderr is not None
        stderr = await self.process.stderr.receive_some(65536)
        assert self.process.returncode is not None
        return self.process.returncode, bytes(stderr).decode()


@asynccontextmanager
async def tlsd_io(
    pki: LoopbackPKI,
    *options: str,
    faults: Faults | None = None,
    wire_transcript: Transcript | None = None,
    start_tls: bool = True,
) -> AsyncIterator[EngineRun]:
    listener = socket.create_server(("127.0.0.1", 0))
    socket_stream = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
    network, _ = listener.accept()
    listener.close()
    engine_in, app_write = os.pipe()
    app_read, engine_out = os.pipe()
    env = {**os.environ, **pki.server_env}
    process = await trio.lowlevel.open_process(
        [find_program("s6-tlsd-io"), *options, "--", str(engine_in), str(engine_out)],
        stdin=network.fileno(),
        stdout=network.fileno(),
        stderr=subprocess.PIPE,
        pass_fds=(engine_in, engine_out),
        env=env,
    )
    for fd in (engine_in, engine_out):
        os.close(fd)
    network.close()
    transport: trio.abc.HalfCloseableStream = socket_stream
    faulty = None
    if wire_transcript is not None:
        transport = TranscriptStream(transport, wire_transcript)
    if faults is not None:
        faulty = FaultyStream(transport, faults)
        transport = faulty
    peer = TLSPeerStream(
        transport,
        peer_client_context(pki.ca_file),
        server_side=False,
        server_hostname="127.0.0.1",
        faulty=faulty,
    )
    run = EngineRun(process, peer, app_write, app_read)
    try:
        if start_tls:
            await peer.start_tls(WAIT)
        yield run
    finally:
        run.close_app_input()
        os.close(app_read)
        await peer.aclose()
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(WAIT, shield=True):
            await process.wait()


def cut_here(peer: TLSPeerStream, extra: int = 0) -> None:
    """Arrange a cut ``extra`` bytes from now."""
    assert peer.faulty is not None
    peer.faulty.faults.cut_after = peer.faulty.bytes_sent + extra


async def test_cut_at_record_boundary_is_ragged_and_fatal_with_enforce(pki: LoopbackPKI) -> None:
    async with tlsd_io(pki, "-J", faults=Faults(after_handshake=True)) as run:
        await run.peer.send_all(b"first")
        cut_here(run.peer)
        await run.peer.send_all(b"lost")  # dropped: the network "cut" here
        assert run.peer.faulty is not None and run.peer.faulty.cut
        assert await run.app_output() == b"first"
        code, stderr = await run.status()
    assert code == 98
    assert "s6-tlsd-io: fatal:" in stderr and "close_notify" in stderr


async def test_cut_at_record_boundary_is_a_normal_end_without_enforce(pki: LoopbackPKI) -> None:
    async with tlsd_io(pki, "-j", faults=Faults(after_handshake=True)) as run:
        await run.peer.send_all(b"first")
        cut_here(run.peer)
        await run.peer.send_all(b"lost")
        assert await run.app_output() == b"first"
        run.close_app_input()  # the other direction ends too: the engine may exit
        assert await run.peer.receive_some() == b""
        code, stderr = await run.status()
    assert (code, stderr) == (0, "")


async def test_cut_inside_a_record_is_always_fatal(pki: LoopbackPKI) -> None:
    async with tlsd_io(pki, "-j", faults=Faults(after_handshake=True)) as run:
        cut_here(run.peer, extra=10)  # a TLS record header is 5 bytes: cut mid-body
        await run.peer.send_all(b"x" * 100)
        assert await run.app_output() == b""
        code, stderr = await run.status()
    assert code == 98
    assert "middle of a TLS record" in stderr


async def test_reset_sends_a_tcp_rst() -> None:
    """The peer's next read fails with ECONNRESET, not a clean EOF."""
    listener = socket.create_server(("127.0.0.1", 0))
    stream = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
    accepted, _ = listener.accept()
    listener.close()
    faulty = FaultyStream(stream, Faults(reset_after=3))
    with accepted:
        with pytest.raises(trio.BrokenResourceError):
            await faulty.send_all(b"abcdef")
        accepted.settimeout(WAIT)
        assert accepted.recv(10) == b"abc"
        with pytest.raises(ConnectionResetError):
            accepted.recv(10)
    assert faulty.was_reset and faulty.bytes_sent == 3
    with pytest.raises(trio.BrokenResourceError):
        await faulty.receive_some()


async def test_reset_ends_the_engine_with_a_system_error(pki: LoopbackPKI) -> None:
    async with tlsd_io(pki, faults=Faults(after_handshake=True)) as run:
        assert run.peer.faulty is not None
        run.peer.faulty.faults.reset_after = 0
        with pytest.raises(trio.BrokenResourceError):
            await run.peer.send_all(b"never sent")
        assert run.peer.faulty.was_reset
        with trio.move_on_after(2):
            await run.process.wait()
        run.close_app_input()  # if it took the RST for an EOF, let it end
        code, stderr = await run.status()
    assert code == 111, stderr
    assert "reset" in stderr.lower()


async def test_split_writes_leave_in_pieces_and_still_tunnel(pki: LoopbackPKI) -> None:
    wire = Transcript()
    payload = bytes(range(256)) * 40
    async with tlsd_io(pki, faults=Faults(split=7), wire_transcript=wire) as run:
        await run.peer.send_all(payload)
        await run.peer.send_eof()
        assert await run.app_output() == payload
        run.close_app_input()
        assert await run.peer.receive_some() == b""
        code, _ = await run.status()
    assert code == 0
    sent = [entry for entry in wire.entries if entry.direction == "sent" and not entry.eof]
    assert sent and all(len(entry.data) <= 7 for entry in sent)
    assert len(sent) > len(payload) // 7  # the handshake was split too


async def test_delayed_pieces_trip_the_handshake_timeout(pki: LoopbackPKI) -> None:
    wire = Transcript()
    faults = Faults(split=64, delay=0.1)
    async with tlsd_io(
        pki, "-K", "250", faults=faults, wire_transcript=wire, start_tls=False
    ) as run:
        with pytest.raises(HandshakeFailed):
            await run.peer.start_tls(WAIT)
        code, stderr = await run.status()
    assert code == 98
    assert "handshake timed out" in stderr
    times = [entry.time for entry in wire.entries if entry.direction == "sent"]
    assert len(times) >= 3
    assert all(later - earlier >= 0.09 for earlier, later in itertools.pairwise(times))


async def test_faults_apply_from_the_start_unless_after_handshake() -> None:
    left, right = trio.testing.memory_stream_pair()
    faulty = FaultyStream(left, Faults(split=2, after_handshake=True))
    await faulty.send_all(b"hello")  # not armed yet: one write
    assert await right.receive_some() == b"hello"
    faulty.arm()
    faulty.faults.cut_after = 3
    await faulty.send_all(b"abcdef")
    assert faulty.cut and faulty.bytes_sent == 3
    received = b""
    with trio.fail_after(WAIT):
        while chunk := await right.receive_some():
            received += chunk
    assert received == b"abc"  # then EOF: the cut half-closed the transport


async def test_wrappers_are_conforming_half_closeable_streams() -> None:
    """Without faults, both wrappers are invisible to trio's stream checker."""

    async def transcribed() -> tuple[TranscriptStream, TranscriptStream]:
        left, right = trio.testing.memory_stream_pair()
        return TranscriptStream(left, Transcript()), TranscriptStream(right, Transcript())

    async def faulty() -> tuple[FaultyStream, FaultyStream]:
        left, right = trio.testing.memory_stream_pair()
        return FaultyStream(left, Faults()), FaultyStream(right, Faults(split=1000))

    with trio.fail_after(WAIT):
        await trio.testing.check_half_closeable_stream(transcribed, None)
        await trio.testing.check_half_closeable_stream(faulty, None)


async def peer_pair(
    pki: LoopbackPKI,
    transports: tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream],
    version: str,
    *,
    tickets: bool = True,
) -> tuple[TLSPeerStream, TLSPeerStream]:
    """A client and a server TLSPeerStream over ``transports``, handshake done."""
    server_context = peer_server_context(pki, tls_version=version)
    if not tickets:
        server_context.num_tickets = 0
    client = TLSPeerStream(
        transports[0],
        peer_client_context(pki.ca_file, tls_version=version),
        server_side=False,
        server_hostname="localhost",
    )
    server = TLSPeerStream(transports[1], server_context, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.start_tls)
        nursery.start_soon(server.start_tls)
    return client, server


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_peer_stream_is_a_conforming_half_closeable_stream(
    pki: LoopbackPKI, version: str
) -> None:
    """TLSPeerStream with TLS on, through trio's checker, as trio's own
    test_ssl.py runs SSLStream: memory streams, and lockstep ("clogged")
    streams whose sends wait for the other side to read. The handshakes are
    done up front (as trio's test does), and the clogged server sends no
    TLS 1.3 session ticket: its handshake would wait for a client that has
    finished its own and reads no more. Real time: the checker's senders
    never wait on a memory stream, so a virtual clock would never move."""

    async def memory() -> tuple[TLSPeerStream, TLSPeerStream]:
        return await peer_pair(pki, trio.testing.memory_stream_pair(), version)

    async def clogged() -> tuple[TLSPeerStream, TLSPeerStream]:
        return await peer_pair(pki, trio.testing.lockstep_stream_pair(), version, tickets=False)

    with trio.fail_after(WAIT * 3):
        await trio.testing.check_half_closeable_stream(memory, clogged)


def test_faults_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        Faults(split=0)
    with pytest.raises(ValueError):
        Faults(delay=-1)
    with pytest.raises(ValueError):
        Faults(cut_after=-1)


async def test_starttls_peers_and_transcripts_on_their_own(pki: LoopbackPKI) -> None:
    """Two TLSPeerStreams in memory: a cleartext exchange, STARTTLS, then
    TLS; the cleartext transcript has both phases, the wire one does not."""
    client_wire, server_wire = trio.testing.memory_stream_pair()
    client_text = Transcript()
    wire = Transcript()
    client = TLSPeerStream(
        TranscriptStream(client_wire, wire),
        peer_client_context(pki.ca_file),
        server_side=False,
        server_hostname="localhost",
        transcript=client_text,
    )
    server = TLSPeerStream(server_wire, peer_server_context(pki), server_side=True)
    with trio.fail_after(WAIT):
        await client.send_all(b"STARTTLS\r\n")
        assert await server.receive_some() == b"STARTTLS\r\n"
        await server.send_all(b"220 go ahead\r\n")
        assert await client.receive_some() == b"220 go ahead\r\n"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.start_tls)
            nursery.start_soon(client.start_tls)
        assert client.variables is not None and client.variables["SSL_PROTOCOL"] == "TLSv1.3"
        assert server.tls_active
        await client.send_all(b"secret")
        assert await server.receive_some() == b"secret"
        await server.send_close_notify()
        assert await client.receive_some() == b""
        assert client.peer_ending() == "close_notify"
        await client.aclose()
        await server.aclose()
    assert client_text.sent() == b"STARTTLS\r\nsecret"
    assert client_text.received() == b"220 go ahead\r\n"
    assert client_text.ended("received")
    assert b"STARTTLS" in wire.sent() and b"secret" not in wire.sent()
    assert "> b'STARTTLS\\r\\n'" in client_text.format()


async def test_peer_stream_allows_one_task_per_direction(pki: LoopbackPKI) -> None:
    left, _right = trio.testing.memory_stream_pair()
    peer = TLSPeerStream(left, peer_server_context(pki), server_side=True)
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await peer.receive_some()
            nursery.cancel_scope.cancel()
    await trio.aclose_forcefully(peer)


async def test_keylog_file_gets_the_session_secrets(pki: LoopbackPKI, tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    client_wire, server_wire = trio.testing.memory_stream_pair()
    client = TLSPeerStream(
        client_wire,
        peer_client_context(pki.ca_file, keylog_file=keylog),
        server_side=False,
        server_hostname="localhost",
    )
    server = TLSPeerStream(server_wire, peer_server_context(pki), server_side=True)
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.start_tls)
            nursery.start_soon(client.start_tls)
        async with trio.open_nursery() as nursery:  # each close waits for the other's
            nursery.start_soon(client.aclose)
            nursery.start_soon(server.aclose)
    text = keylog.read_text()
    assert "CLIENT_TRAFFIC_SECRET_0" in text and "SERVER_HANDSHAKE_TRAFFIC_SECRET" in text
