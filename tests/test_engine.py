"""The engine as a library, over trio memory streams (the memory-BIO
transport): the close rules of SPEC.md, one test per rule where it can be
shown without processes.

Rules: no network at all; every test bounded by fail_after.
"""

from __future__ import annotations

import io
import ssl
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from conftest import Pki

from trio_s6tls import TLSOptions, client_context, run_engine, server_context, tls_over
from trio_s6tls._engine import LINGER_SECONDS
from trio_s6tls._log import Log


class CutAfter(trio.abc.HalfCloseableStream):
    """A network stream that delivers only the first ``limit`` bytes the
    peer sends, then an EOF: a cut with no close_notify."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, limit: int) -> None:
        self.inner = inner
        self.left = limit

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.left <= 0:
            await trio.lowlevel.checkpoint()
            return b""
        data = await self.inner.receive_some(min(self.left, max_bytes or 65536))
        self.left -= len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Side:
    app: trio.abc.HalfCloseableStream  # what the application holds
    status: list[int] = field(default_factory=list)
    variables: list[dict[str, str | None]] = field(default_factory=list)
    messages: io.StringIO = field(default_factory=io.StringIO)


async def run_pair(
    pki: Pki,
    client_options: TLSOptions,
    server_options: TLSOptions,
    script: object,
    *,
    cut_client_to_server: int | None = None,
    limit: float = 10,
) -> tuple[Side, Side]:
    """Client and server engines back to back in memory; ``script(client,
    server)`` plays both applications; returns once both engines ended."""
    client_net, server_net = trio.testing.memory_stream_pair()
    client_app, client_local = trio.testing.memory_stream_pair()
    server_app, server_local = trio.testing.memory_stream_pair()
    if cut_client_to_server is not None:
        server_net = CutAfter(server_net, cut_client_to_server)  # type: ignore[assignment]
    client, server = Side(client_app), Side(server_app)
    env = pki.env()

    async def engine(
        side: Side,
        net: trio.abc.HalfCloseableStream,
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


async def test_half_close_reply_still_arrives_and_both_exit_0(pki: Pki) -> None:
    client, server = await run_pair(
        pki, TLSOptions(servername="localhost"), TLSOptions(), request_reply
    )
    assert client.status == server.status == [0]
    assert client.variables[0]["SSL_TLS_SNI_SERVERNAME"] == "localhost"
    assert server.variables[0]["SSL_TLS_SNI_SERVERNAME"] == "localhost"


async def test_ragged_eof_is_fatal_only_with_enforce(pki: Pki) -> None:
    # -s on the client is a half-close without close_notify: ragged for -J
    _client, server = await run_pair(
        pki, TLSOptions(), TLSOptions(enforce_close_notify=True), send_then_eof
    )
    assert server.status == [98]
    assert (
        server.messages.getvalue()
        == "test: fatal: peer closed the connection without a close_notify\n"
    )
    _client, server = await run_pair(
        pki, TLSOptions(), TLSOptions(enforce_close_notify=False), request_reply
    )
    assert server.status == [0]


async def send_then_eof(client: Side, server: Side) -> None:
    await client.app.send_all(b"request")
    await client.app.send_eof()
    assert await read_all(server.app) == b"request"
    await server.app.aclose()
    await read_all(client.app)


async def test_close_notify_satisfies_enforce(pki: Pki) -> None:
    client, server = await run_pair(
        pki, TLSOptions(close_notify=True), TLSOptions(enforce_close_notify=True), send_then_eof
    )
    assert client.status == server.status == [0]


async def test_eof_inside_a_record_is_always_fatal(pki: Pki) -> None:
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


async def test_handshake_timeout(pki: Pki) -> None:
    _client_net, server_net = trio.testing.memory_stream_pair()
    _server_app, server_local = trio.testing.memory_stream_pair()
    options = TLSOptions(handshake_timeout_ms=200)
    tls = tls_over(server_net, server_context(pki.env(), options), server_side=True)
    with trio.fail_after(5):
        status = await run_engine(tls, server_local, options, server_side=True, log=Log("test", 0))
    assert status == 98


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_protocol_versions(pki: Pki, version: str) -> None:
    client, server = await run_pair(
        pki, TLSOptions(max_version=version), TLSOptions(), request_reply
    )
    assert server.variables[0]["SSL_PROTOCOL"] == f"TLSv{version}"
    assert client.status == server.status == [0]


def test_default_context_refuses_old_protocols(pki: Pki) -> None:
    context = server_context(pki.env(), TLSOptions())
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_local_reader_gone_drains_for_a_bounded_time(pki: Pki) -> None:
    """Rule 4: with nobody reading locally, network data is drained (no RST
    from unread bytes) but not forever: LINGER_SECONDS after our side ends."""
    started: list[float] = []

    async def endless_peer(client: Side, server: Side) -> None:
        await server.app.aclose()  # the server application reads nothing, sends nothing
        started.append(trio.current_time())
        with trio.move_on_after(LINGER_SECONDS + 3):
            try:
                while True:
                    await client.app.send_all(b"x" * 65536)
            except trio.BrokenResourceError:
                pass  # the client engine ended: the server closed after lingering

    _client, server = await run_pair(
        pki, TLSOptions(), TLSOptions(), endless_peer, limit=LINGER_SECONDS + 5
    )
    assert server.status == [0]
    assert trio.current_time() - started[0] < LINGER_SECONDS + 2
