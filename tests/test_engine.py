"""The engine as a library, in process: the close rules of
docs/close-semantics.rst, one test per rule where it can be shown without
processes, each over both TLS transports (the ``transport`` fixture):
memory BIOs over trio memory streams, and an SSLSocket on a Unix
socketpair — the production path. The few that need one transport say why.

Rules: no network at all; every test bounded by fail_after. The -K and
linger bounds run on trio's autojump clock with the memory transport (the
``clock`` fixture), in real time over sockets.
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from support import RECORD_CUTS, tls_env

from trio_s6tls import (
    TLSOptions,
    _openssl,
    _records,
    client_context,
    run_engine,
    server_context,
    tls_over,
)
from trio_s6tls._engine import LINGER_SECONDS
from trio_s6tls._log import Log
from trio_s6tls._memory_tls import MemoryTLS
from trio_s6tls.testing import LoopbackPKI


class Passthrough(trio.abc.HalfCloseableStream):
    """A stream that hands every call to ``inner``; tests override one."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class CutAfter(Passthrough):
    """A network stream that delivers only the first ``limit`` bytes the
    peer sends, then an EOF: a cut with no close_notify."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, limit: int) -> None:
        super().__init__(inner)
        self.left = limit

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.left <= 0:
            await trio.lowlevel.checkpoint()
            return b""
        data = await self.inner.receive_some(min(self.left, max_bytes or 65536))
        self.left -= len(data)
        return data


@dataclass
class Side:
    app: trio.abc.HalfCloseableStream  # what the application holds
    status: list[int] = field(default_factory=list)
    variables: list[dict[str, str | None]] = field(default_factory=list)
    messages: io.StringIO = field(default_factory=io.StringIO)
    ended: trio.Event = field(default_factory=trio.Event)  # its engine returned


@pytest.fixture(params=["memory", "socket", "socket-fallback"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine's two TLS transports: memory BIOs over a Trio stream, and
    an SSLSocket on a real (Unix) socket. ``socket-fallback`` is a real
    socket on an interpreter where ctypes cannot reach OpenSSL's ``SSL *``
    (the layout check of _openssl fails): memory BIOs over the socket."""
    if request.param == "socket-fallback":
        monkeypatch.setattr(_openssl, "_ssl_pointer", lambda connection: None)
    return str(request.param)


@pytest.fixture
def clock(transport: str, request: pytest.FixtureRequest) -> trio.testing.MockClock | None:
    """pytest-trio's ``autojump_clock`` with the memory transport: only our
    tasks move bytes there, so once every one of them waits, nothing but
    time can change anything and the clock may jump ahead. None (real time)
    over sockets: the kernel moves bytes while every task waits, and a jump
    would race it."""
    if transport != "memory":
        return None
    mock = request.getfixturevalue("autojump_clock")
    assert isinstance(mock, trio.testing.MockClock)
    return mock


def network_pair(transport: str) -> tuple[object, object]:
    if transport.startswith("socket"):
        return socket.socketpair()
    return trio.testing.memory_stream_pair()


async def run_pair(
    pki: LoopbackPKI,
    client_options: TLSOptions,
    server_options: TLSOptions,
    script: object,
    *,
    transport: str = "memory",
    cut_client_to_server: int | None = None,
    limit: float = 10,
) -> tuple[Side, Side]:
    """Client and server engines back to back (``transport``: see the
    fixture); ``script(client, server)`` plays both applications; returns
    once both engines ended."""
    client_net, server_net = network_pair(transport)
    client_app, client_local = trio.testing.memory_stream_pair()
    server_app, server_local = trio.testing.memory_stream_pair()
    if cut_client_to_server is not None:
        server_net = CutAfter(server_net, cut_client_to_server)  # type: ignore[assignment]
    client, server = Side(client_app), Side(server_app)
    env = tls_env(pki)

    async def engine(
        side: Side,
        net: Any,
        local: trio.abc.HalfCloseableStream,
        server_side: bool,
        options: TLSOptions,
    ) -> None:
        context = server_context(env, options) if server_side else client_context(env, options)
        tls = tls_over(net, context, server_side=server_side, server_hostname=options.servername)
        side.status.append(
            await run_engine(
                tls,
                local,
                options,
                server_side=server_side,
                notify=side.variables.append,
                log=Log("test", 0, side.messages),
            )
        )
        side.ended.set()

    with trio.fail_after(limit):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine, client, client_net, client_local, False, client_options)
            nursery.start_soon(engine, server, server_net, server_local, True, server_options)
            await script(client, server)  # type: ignore[operator]
    return client, server


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while data := await stream.receive_some():
        chunks.append(data)
    return b"".join(chunks)


async def request_reply(
    client: Side, server: Side, request: bytes = b"request", reply: bytes = b"reply" * 100000
) -> None:
    await client.app.send_all(request)
    await client.app.send_eof()
    assert await read_all(server.app) == request
    await server.app.send_all(reply)
    await server.app.send_eof()
    assert await read_all(client.app) == reply


async def test_half_close_reply_still_arrives_and_both_exit_0(
    pki: LoopbackPKI, transport: str
) -> None:
    client, server = await run_pair(
        pki, TLSOptions(servername="localhost"), TLSOptions(), request_reply, transport=transport
    )
    assert client.status == server.status == [0]
    assert client.variables[0]["SSL_TLS_SNI_SERVERNAME"] == "localhost"
    assert server.variables[0]["SSL_TLS_SNI_SERVERNAME"] == "localhost"


async def test_ragged_eof_is_fatal_only_with_enforce(pki: LoopbackPKI, transport: str) -> None:
    # -s on the client is a half-close without close_notify: ragged for -J
    _client, server = await run_pair(
        pki, TLSOptions(), TLSOptions(enforce_close_notify=True), send_then_eof, transport=transport
    )
    assert server.status == [98]
    assert (
        server.messages.getvalue()
        == "test: fatal: peer closed the connection without a close_notify\n"
    )
    _client, server = await run_pair(
        pki,
        TLSOptions(),
        TLSOptions(enforce_close_notify=False),
        request_reply,
        transport=transport,
    )
    assert server.status == [0]


async def send_then_eof(client: Side, server: Side) -> None:
    await client.app.send_all(b"request")
    await client.app.send_eof()
    assert await read_all(server.app) == b"request"
    await server.app.aclose()
    await read_all(client.app)


async def test_close_notify_satisfies_enforce(pki: LoopbackPKI, transport: str) -> None:
    client, server = await run_pair(
        pki,
        TLSOptions(close_notify=True),
        TLSOptions(enforce_close_notify=True),
        send_then_eof,
        transport=transport,
    )
    assert client.status == server.status == [0]


async def test_eof_inside_a_record_is_always_fatal(pki: LoopbackPKI) -> None:
    """Memory transport only: the cut is CutAfter, a wrapper around a Trio
    stream; the SSLSocket transport reads the kernel socket itself, with no
    stream in between to cut (test_io_programs cuts a real socket)."""

    async def big_send(client: Side, server: Side) -> None:
        await client.app.send_all(b"x" * 100000)
        await client.app.send_eof()
        await read_all(server.app)
        await server.app.aclose()
        await read_all(client.app)

    # The client's handshake flight is well under 4000 bytes; 4000 + 5 cuts
    # the first application record after its header.
    _client, server = await run_pair(
        pki, TLSOptions(), TLSOptions(), big_send, cut_client_to_server=4000
    )
    assert server.status == [98]
    assert "in the middle of a TLS record" in server.messages.getvalue()


@pytest.mark.parametrize("cut", RECORD_CUTS)
async def test_eof_anywhere_inside_a_record_is_fatal_on_memory_transport(
    pki: LoopbackPKI, cut: bytes
) -> None:
    """The memory transport (a network on pipes) tells a truncation from a
    ragged EOF also when the stream ends inside a record's 5-byte header."""
    env = tls_env(pki)
    client_net, server_net = trio.testing.memory_stream_pair()
    _server_app, server_local = trio.testing.memory_stream_pair()
    client = tls_over(client_net, client_context(env, TLSOptions()), server_side=False)  # type: ignore[arg-type]
    server = tls_over(server_net, server_context(env, TLSOptions()), server_side=True)  # type: ignore[arg-type]
    messages = io.StringIO()
    status: list[int] = []

    async def serve() -> None:
        log = Log("t", 0, stream=messages)
        status.append(
            await run_engine(server, server_local, TLSOptions(), server_side=True, log=log)
        )

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.handshake()
            await client_net.send_all(cut)  # raw bytes, past the client's TLS
            await client_net.send_eof()
    assert status == [98]
    assert "in the middle of a TLS record" in messages.getvalue()


class SizeRecorder(Passthrough):
    """A local stream that notes the size of every write the engine makes."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        super().__init__(inner)
        self.sizes: list[int] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sizes.append(len(data))
        await self.inner.send_all(data)


async def test_a_bulk_receiver_delivers_many_records_per_write(pki: LoopbackPKI) -> None:
    """Records queued in the kernel reach the application in large writes
    (up to 256 KiB), not one 16 KiB record per wake-up: the receive buffer
    grows while reads fill it."""
    env = tls_env(pki)
    client_net, server_net = socket.socketpair()
    server_app, server_local = trio.testing.memory_stream_pair()
    local = SizeRecorder(server_local)
    client = tls_over(client_net, client_context(env, TLSOptions()), server_side=False)
    server = tls_over(server_net, server_context(env, TLSOptions()), server_side=True)
    payload = b"b" * (4 << 20)
    received = bytearray()

    async def serve() -> None:
        await run_engine(server, local, TLSOptions(), server_side=True, log=Log("t", 0))

    async def application() -> None:
        while data := await server_app.receive_some(1 << 20):
            received.extend(data)
        await server_app.aclose()

    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                nursery.start_soon(application)
                await client.handshake()
                await client.send_all(payload)
                await client.send_eof()
    finally:
        await client.aclose()
    assert received == payload
    assert max(local.sizes) > 4 * 16384, sorted(local.sizes)[-5:]


async def test_handshake_timeout(
    pki: LoopbackPKI, transport: str, clock: trio.testing.MockClock | None
) -> None:
    """-K 200 against a client that never says a word: 98, after 200 ms
    (exactly, on the virtual clock)."""
    client_net, server_net = network_pair(transport)
    _server_app, server_local = trio.testing.memory_stream_pair()
    options = TLSOptions(handshake_timeout_ms=200)
    tls = tls_over(server_net, server_context(tls_env(pki), options), server_side=True)  # type: ignore[arg-type]
    try:
        started = trio.current_time()
        with trio.fail_after(5):
            status = await run_engine(
                tls, server_local, options, server_side=True, log=Log("test", 0)
            )
        elapsed = trio.current_time() - started
    finally:
        if isinstance(client_net, socket.socket):
            client_net.close()
    assert status == 98
    assert elapsed >= 0.2
    if clock is not None:
        assert elapsed == pytest.approx(0.2)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_protocol_versions(pki: LoopbackPKI, transport: str, version: str) -> None:
    client, server = await run_pair(
        pki, TLSOptions(max_version=version), TLSOptions(), request_reply, transport=transport
    )
    assert server.variables[0]["SSL_PROTOCOL"] == f"TLSv{version}"
    assert client.status == server.status == [0]


def test_default_context_refuses_old_protocols(pki: LoopbackPKI) -> None:
    context = server_context(tls_env(pki), TLSOptions())
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


#: On the virtual clock the endless peer sends a chunk every PACE seconds:
#: time passes only while every task waits, and one that always has more to
#: send would never let it.
PACE = 0.01


async def test_local_reader_gone_drains_for_a_bounded_time(
    pki: LoopbackPKI, transport: str, clock: trio.testing.MockClock | None
) -> None:
    """Rule 5: with nobody reading locally, network data is drained (no RST
    from unread bytes) but not forever: LINGER_SECONDS after our side ends.
    Over sockets the peer sends as fast as it can, in real time."""
    started: list[float] = []

    async def endless_peer(client: Side, server: Side) -> None:
        await server.app.aclose()  # the server application reads nothing, sends nothing
        started.append(trio.current_time())
        with trio.move_on_after(LINGER_SECONDS + 3):
            try:
                while True:
                    await client.app.send_all(b"x" * 65536)
                    if clock is not None:
                        await trio.sleep(PACE)  # pacing the traffic, not waiting for anything
            except trio.BrokenResourceError:
                pass  # the client engine ended: the server closed after lingering

    _client, server = await run_pair(
        pki, TLSOptions(), TLSOptions(), endless_peer, limit=LINGER_SECONDS + 5, transport=transport
    )
    elapsed = trio.current_time() - started[0]
    assert server.status == [0]
    assert LINGER_SECONDS <= elapsed < LINGER_SECONDS + 2


# -- the close model per version (docs/close-semantics.rst) ---------------------


async def test_tls13_close_notify_closes_one_direction(pki: LoopbackPKI, transport: str) -> None:
    """-S under TLS 1.3: the client's close_notify ends its direction only;
    the server's reply, written after it, still reaches the client, and
    ends with the server's close_notify (-J on the client is satisfied)."""
    client, server = await run_pair(
        pki,
        TLSOptions(close_notify=True, enforce_close_notify=True),
        TLSOptions(),
        request_reply,
        transport=transport,
    )
    assert client.variables[0]["SSL_PROTOCOL"] == "TLSv1.3"
    assert client.status == server.status == [0]


async def test_tls12_close_notify_ends_both_directions(pki: LoopbackPKI, transport: str) -> None:
    """-S under TLS 1.2: the server answers the close_notify with its own
    and stops; its application's later writes fail instead of vanishing."""

    async def late_reply(client: Side, server: Side) -> None:
        await client.app.send_all(b"request")
        await client.app.send_eof()
        assert await read_all(server.app) == b"request"
        await server.ended.wait()
        with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            await server.app.send_all(b"too late")
        assert await read_all(client.app) == b""

    client, server = await run_pair(
        pki,
        TLSOptions(close_notify=True, enforce_close_notify=True, max_version="1.2"),
        TLSOptions(enforce_close_notify=True),
        late_reply,
        transport=transport,
    )
    assert client.variables[0]["SSL_PROTOCOL"] == "TLSv1.2"
    assert client.status == server.status == [0]  # -J on both: every end was a close_notify


async def test_network_write_failure_ends_the_engine_at_once(
    pki: LoopbackPKI, transport: str
) -> None:
    """The peer disappears while the server's application writes and reads
    nothing: the server engine must end (111), not sit forever delivering
    to an application that waits for it."""
    client_net, server_net = network_pair(transport)
    server_app, server_local = trio.testing.lockstep_stream_pair()
    messages = io.StringIO()
    env = tls_env(pki)
    with trio.fail_after(10):
        client = tls_over(client_net, client_context(env, TLSOptions()), server_side=False)  # type: ignore[arg-type]
        server = tls_over(server_net, server_context(env, TLSOptions()), server_side=True)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.handshake)
            await server.handshake()
        status: list[int] = []

        async def serve() -> None:
            status.append(
                await run_engine(
                    server, server_local, TLSOptions(), server_side=True, log=Log("t", 0, messages)
                )
            )

        async def app_writes_forever() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while True:
                    await server_app.send_all(b"x" * 65536)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(app_writes_forever)
            await client.send_all(b"y" * 1_000_000 if transport == "memory" else b"y" * 100_000)
            await client.aclose()  # gone without reading anything
    assert status == [111]
    assert messages.getvalue().startswith("t: fatal: unable to write to network: ")


@pytest.mark.parametrize("network", ["memory", "socket"])
async def test_close_notify_without_ctypes_keeps_tls13_data(
    pki: LoopbackPKI, monkeypatch: pytest.MonkeyPatch, network: str
) -> None:
    """Where ctypes cannot reach OpenSSL's ``SSL *`` (the one-call
    SSL_shutdown), close_notify is sent without losing the peer's data that
    has already arrived, in OpenSSL's incoming BIO or in the kernel's socket
    buffer. A socket then takes the memory-BIO transport: SSLSocket's own
    shutdown would read that data and drop it."""
    monkeypatch.setattr(_openssl, "_ssl_pointer", lambda connection: None)
    env = tls_env(pki)
    client_net, server_net = network_pair(network)
    client = tls_over(client_net, client_context(env, TLSOptions()), server_side=False)  # type: ignore[arg-type]
    server = tls_over(server_net, server_context(env, TLSOptions()), server_side=True)  # type: ignore[arg-type]
    assert isinstance(client, MemoryTLS)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.handshake)
                await server.handshake()
            await server.send_all(b"already here")
            if isinstance(client_net, socket.socket):  # the record waits in the kernel
                await trio.lowlevel.wait_readable(client_net)
            else:  # the record waits in the client's incoming BIO
                await client._feed()
            await client.send_close_notify()
            buffer = bytearray(65536)
            count = await client.receive_into(buffer)
        assert bytes(buffer[:count]) == b"already here"
        assert client.connection.version() == "TLSv1.3"
    finally:
        await client.aclose()
        await server.aclose()


def test_one_call_shutdown_is_available_here(pki: LoopbackPKI) -> None:
    """The ctypes path of _openssl must work on the interpreter CI uses:
    a changed layout would otherwise silently fall back."""
    context = client_context(tls_env(pki), TLSOptions())
    first, second = socket.socketpair()
    with first, second:
        connection = context.wrap_socket(first, do_handshake_on_connect=False)
        with connection:
            assert _openssl._ssl_pointer(connection) is not None
            assert _openssl.reaches_openssl(context, server_side=False)  # socket: SocketTLS
            # and so the socket transport asks OpenSSL how a stream ended,
            # with no Python call per record
            assert isinstance(_records.attach(connection), _records.SocketRecordState)
