"""TLS on the real socket: a non-blocking ``ssl.SSLSocket`` driven by Trio's
readiness waits.

OpenSSL reads and writes the kernel socket itself, so there are no memory-BIO
copies and few Python round trips per record: about twice the throughput of
``trio.SSLStream`` (docs/design.rst, "Performance"). Used when the network fd is a
stream socket and :mod:`._openssl` can reach OpenSSL. Same interface as
:class:`~trio_s6tls._memory_tls.MemoryTLS`.

Two tasks share the connection — one reads, one writes — which OpenSSL
allows on a non-blocking socket as long as calls do not overlap (they cannot:
one thread). A write interrupted by WANT_WRITE is retried with the same
buffer, as OpenSSL requires. The rare cross-wait (a read that must write, a
TLS 1.3 KeyUpdate reply on a full socket) would collide with the other task's
wait on the same fd; it polls briefly instead.
"""

from __future__ import annotations

import fcntl
import socket
import ssl
import struct
import termios

import trio

from ._errors import Fatal
from ._openssl import release_idle_buffers, send_close_notify_once
from ._records import RECORD_SIZE, attach
from ._tls_errors import handshake_failure, read_failure, reset_failure

_TCP_CLOSE = 7  # Linux tcp_info.tcpi_state after a reset
_WANT_READ = ssl.SSLWantReadError()  # what a read on an empty socket raises
_INT = struct.Struct("i")  # FIONREAD's answer
_INT_ZERO = bytes(_INT.size)
_HEADER = 5  # a TLS record header's bytes
_TRUSTED_HINT = RECORD_SIZE + 256  # a full record, header, tag and padding


class SocketTLS:
    """TLS over a connected stream socket, which it takes over."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        sock.setblocking(False)
        self.connection = context.wrap_socket(
            sock,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=False,
        )
        release_idle_buffers(self.connection)  # an idle connection holds no record buffers
        self.records = attach(self.connection)
        self._init_state()

    def _init_state(self) -> None:
        self.close_notify_sent = False
        self._fin_sent = False
        self._ended = False
        self._failure: Fatal | None = None  # seen after data: raised on the next read
        self._empty: ssl.SSLError | None = None  # OpenSSL has nothing: wait before reading
        # Raw bytes the kernel held at the last FIONREAD, less those read since.
        self._queued_hint = 0
        # The _ssl object's own calls: SSLSocket's wrappers re-check what
        # cannot change here (3 us a record).
        inner = self.connection._sslobj  # type: ignore[attr-defined]
        self._read = inner.read
        self._pending = inner.pending

    @classmethod
    def adopt(
        cls,
        connection: ssl.SSLSocket,
        *,
        reading_ended: bool = False,
        error: Exception | None = None,
    ) -> SocketTLS:
        """A transport for a connection whose handshake is done
        (:mod:`._early_handshake`): its :meth:`handshake` returns at once.
        With ``reading_ended``, someone else's read met the stream's end
        (``error``: how; None for an EOF) and :meth:`receive_into` reports
        it (:mod:`._bridge`)."""
        self = cls.__new__(cls)
        connection.setblocking(False)
        self.connection = connection
        records = getattr(connection, "s6_records", None)
        self.records = records if records is not None else attach(connection)
        self._init_state()
        if reading_ended:
            self._reading_ends(error)
        return self

    async def _wait(self, error: ssl.SSLError) -> None:
        wait = (
            trio.lowlevel.wait_readable
            if isinstance(error, ssl.SSLWantReadError)
            else trio.lowlevel.wait_writable
        )
        try:
            await wait(self.connection)
        except trio.BusyResourceError:
            await trio.sleep(0.001)  # the other task waits on this fd; poll

    async def handshake(self) -> None:
        while True:
            try:
                self.connection.do_handshake()
                return
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as error:
                await self._wait(error)
            except (ssl.SSLError, OSError) as error:
                raise handshake_failure(error) from None

    async def receive_into(self, buffer: bytearray) -> int:
        """Decrypt into ``buffer``; wait only until something arrived, then take
        what else is ready. 0 means the stream ended (see :attr:`records`).
        Bytes decrypted before an error are returned first; the error
        (:class:`Fatal`) is raised by the next call."""
        if self._failure is not None or self._ended:
            await trio.lowlevel.checkpoint()
            if self._failure is not None:
                raise self._failure
            return 0
        view = memoryview(buffer)
        size = len(view)
        read, pending = self._read, self._pending
        filled = 0
        waited = False
        if self._empty is not None:  # the last call ended on an empty socket
            await self._wait(self._empty)
            self._empty = None
            waited = True
        while True:
            try:
                count = read(size - filled, view[filled:])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as error:
                if filled:
                    # Wait first next time: a read now would almost surely
                    # fail again (measured: 3 % of a bulk transfer's CPU).
                    self._empty = error
                    break
                await self._wait(error)
                waited = True
                continue
            except (ssl.SSLError, OSError) as error:
                self._reading_ends(error)
                break
            if count == 0:
                self._reading_ends(None)
                break
            filled += count
            if size - filled < RECORD_SIZE:
                break
            if not pending() and not self._more_queued(count):
                # OpenSSL reads a record at a time: past one it holds no raw
                # bytes, so with none queued in the kernel the next read
                # would fail (5 us).
                self._empty = _WANT_READ
                break
        if self._failure is not None and not filled:
            raise self._failure
        if not waited:
            await trio.lowlevel.checkpoint()
        return filled

    def _reading_ends(self, error: Exception | None) -> None:
        """Note how the stream ended, from a read's error (None: it returned 0)."""
        if error is None or isinstance(error, (ssl.SSLZeroReturnError, ssl.SSLEOFError)):
            # OpenSSL reports a TCP reset as an EOF, sometimes even as a
            # clean one: ask the kernel unless a close_notify explains it.
            if not self.records.close_notify and self._was_reset():
                self._failure = reset_failure()
            else:
                self._ended = True
        else:
            self._failure = read_failure(error)

    def _more_queued(self, count: int) -> bool:
        """Whether the kernel may hold the start of another record, after
        one whose ``count`` bytes were just read. Asks (FIONREAD, 2 us) only
        once fewer than a full record's bytes may be left of those it last
        reported: a record takes at least its plaintext and a 5-byte header
        of them, so a guess errs only towards a read that fails (WANT_READ,
        handled as before), and asking near the end avoids even that."""
        self._queued_hint -= count + _HEADER
        if self._queued_hint > _TRUSTED_HINT:
            return True
        try:
            queued: int = _INT.unpack(fcntl.ioctl(self.connection, termios.FIONREAD, _INT_ZERO))[0]
        except OSError:
            return True  # unknown: try the read
        self._queued_hint = queued
        return queued > 0

    def _was_reset(self) -> bool:
        """Python reports an RST as an ``SSLEOFError``, like a FIN (``SSL_read_ex``
        leaves no errno). The kernel still knows: a reset TCP socket is in
        state CLOSE, one that got a FIN in CLOSE_WAIT. Once we have sent our
        own FIN, CLOSE is also where an orderly close ends (LAST_ACK → CLOSE),
        so then we cannot tell, and take it for an EOF."""
        if self._fin_sent:
            return False
        try:
            state = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        except (OSError, AttributeError):
            return False  # not TCP (a Unix socket), or no TCP_INFO here
        return state == _TCP_CLOSE

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send all of ``data``; trio.BrokenResourceError if the
        network refuses it (reset, EPIPE)."""
        waited = False
        while True:
            try:
                self.connection.send(data)
                break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as error:
                await self._wait(error)
                waited = True
            except (ssl.SSLError, OSError) as error:
                raise trio.BrokenResourceError(str(error)) from error
        if not waited:
            await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        """TCP half-close on the raw socket: ``SSLSocket.shutdown`` would drop
        the TLS state and with it our read side."""
        await trio.lowlevel.checkpoint()
        if self._fin_sent:
            return
        self._fin_sent = True
        try:
            socket.socket.shutdown(self.connection, socket.SHUT_WR)
        except OSError:
            pass

    async def send_close_notify(self) -> None:
        """Send close_notify, then half-close TCP; reading goes on. Built
        only where :mod:`._openssl` sends the alert with one call
        (:func:`~._engine.tls_over`): ``unwrap`` would read the peer's
        records after it, and drop their data."""
        self.close_notify_sent = True
        while True:
            try:
                if not send_close_notify_once(self.connection):
                    raise RuntimeError("SocketTLS where ctypes cannot reach OpenSSL")
                break
            except ssl.SSLWantWriteError as error:
                await self._wait(error)
            except (ssl.SSLError, OSError):
                break  # a dead socket: the reader will say why
        await self.send_eof()

    async def aclose(self) -> None:
        self.connection.close()
        await trio.lowlevel.checkpoint()
