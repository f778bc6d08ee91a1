"""TLS over any Trio stream: an ``ssl.SSLObject`` with memory BIOs, in the
manner of ``trio.SSLStream`` but with s6's close semantics (half-close,
close_notify and ragged EOF kept apart).

Used when the network is a pipe or anything that is not a socket, and by the
library for in-memory and fault-injected transports.

Theory of operation: bytes from the transport are fed into the incoming BIO;
OpenSSL writes records into the outgoing BIO, which is drained onto the
transport under a lock, so at most one task sends at a time. Reading can
make OpenSSL write (alerts, TLS 1.3 KeyUpdate replies); the reading task
drains those itself unless the writing task holds the lock — that task
re-checks the BIO after every send, so nothing waits forever, and the reader
never blocks on a writer stuck behind a peer that does not read.
"""

from __future__ import annotations

import ssl
from typing import cast

import trio

from ._errors import EXIT_SYSTEM, Fatal, describe_os_error
from ._records import attach
from ._socket_tls import RECORD_SIZE, handshake_failure, read_failure

RECEIVE_CHUNK = 256 * 1024


class MemoryTLS:
    """TLS over ``transport``, a :class:`trio.abc.HalfCloseableStream`."""

    def __init__(
        self,
        transport: trio.abc.HalfCloseableStream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.connection = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.records = attach(self.connection)
        self.close_notify_sent = False
        self._send_lock = trio.Lock()

    async def _flush(self) -> None:
        async with self._send_lock:
            while self._outgoing.pending:
                await self.transport.send_all(self._outgoing.read())

    async def _flush_if_free(self) -> None:
        if self._outgoing.pending and not self._send_lock.locked():
            try:
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # our write side is gone; a KeyUpdate reply cannot go out

    async def _feed(self) -> None:
        try:
            data = await self.transport.receive_some(RECEIVE_CHUNK)
        except trio.BrokenResourceError as error:
            cause = error.__cause__
            if isinstance(cause, OSError):
                raise Fatal(
                    EXIT_SYSTEM, f"unable to read from network: {describe_os_error(cause)}"
                ) from None
            raise Fatal(EXIT_SYSTEM, f"unable to read from network: {error}") from None
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def handshake(self) -> None:
        try:
            while True:
                try:
                    self.connection.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._flush()
                    await self._feed()
            await self._flush()
        except (ssl.SSLError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            raise handshake_failure(error) from None

    async def receive_into(self, buffer: bytearray) -> int:
        view = memoryview(buffer)
        filled = 0
        while True:
            try:
                # with a buffer, read() returns a count (typeshed says bytes)
                count = cast(int, self.connection.read(len(view) - filled, view[filled:]))
            except ssl.SSLWantReadError:
                await self._flush_if_free()
                if filled:
                    break
                await self._feed()
                continue
            except ssl.SSLZeroReturnError:
                count = 0
            except ssl.SSLError as error:
                if not self.close_notify_sent:
                    raise read_failure(error) from None
                count = 0
            if count == 0:
                break
            self.records.data()
            filled += count
            if len(view) - filled < RECORD_SIZE:
                break
        await trio.lowlevel.checkpoint()
        return filled

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.connection.write(data)
        except ssl.SSLError as error:
            raise trio.BrokenResourceError(str(error)) from error
        await self._flush()

    async def send_eof(self) -> None:
        await self._flush()
        await self.transport.send_eof()

    async def send_close_notify(self) -> None:
        self.close_notify_sent = True
        try:
            self.connection.unwrap()
        except ssl.SSLError:
            pass  # WANT_READ (sent, peer's not yet here) or peer data: discarded
        try:
            await self.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def aclose(self) -> None:
        await self.transport.aclose()
