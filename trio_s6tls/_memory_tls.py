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

from ._errors import Fatal
from ._records import RECORD_SIZE, attach
from ._tls_errors import handshake_failure, read_failure

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
        self._failure: Fatal | None = None  # seen after data: raised on the next read

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
            raise read_failure(cause if isinstance(cause, OSError) else error) from None
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
        """As :meth:`SocketTLS.receive_into <trio_s6tls._socket_tls.SocketTLS.receive_into>`:
        bytes decrypted before an error come first, the error next time."""
        if self._failure is not None:
            await trio.lowlevel.checkpoint()
            raise self._failure
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
                try:
                    await self._feed()
                except Fatal as failure:
                    self._failure = failure
                    break
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                count = 0
            except ssl.SSLError as error:
                self._failure = read_failure(error)
                break
            if count == 0:
                break
            self.records.data()
            filled += count
            if len(view) - filled < RECORD_SIZE:
                break
        if self._failure is not None and not filled:
            raise self._failure
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
        """Our close_notify, then EOF on the transport; reading goes on."""
        from ._openssl import send_close_notify_once  # ctypes: only when closing

        self.close_notify_sent = True
        try:
            if not send_close_notify_once(self.connection):
                self._unwrap_keeping_input()
        except ssl.SSLError:
            pass  # the connection is failing anyway: the reader will say why
        try:
            await self.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _unwrap_keeping_input(self) -> None:
        """Without :mod:`._openssl`: ``unwrap`` sends close_notify, then reads
        the incoming BIO for the peer's, discarding application data. Hide
        what the BIO holds during the call and put it back after."""
        pending = self._incoming.read()
        try:
            self.connection.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent; the peer's has not come yet
        finally:
            if pending:
                self._incoming.write(pending)

    async def aclose(self) -> None:
        await self.transport.aclose()
