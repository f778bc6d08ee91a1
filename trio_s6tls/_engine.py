"""The engine: handshake, notification, then a full-duplex tunnel between a
local cleartext stream and the TLS connection, ending as the close model of
docs/close-semantics.rst says.

Theory of operation — two pump tasks in one nursery, one per direction. The
close model depends on the negotiated version: under TLS 1.3 a close_notify
ends one direction (RFC 8446, 6.1), under TLS 1.2 the whole connection
(RFC 5246, 7.2.1, which the C tools implement).

1. **Handshake first**, under the ``-K`` deadline (98 on timeout or
   failure). Only then is the notification sent and data moved.
2. **Local EOF** (local → network): every pending record is flushed; then
   with ``-s`` the network write side is half-closed (``shutdown(SHUT_WR)``
   on a socket, close on a pipe), with ``-S`` — or when the peer has already
   sent its close_notify — a close_notify goes first. Reading the network
   goes on; after our close_notify, TLS 1.2 discards what still arrives
   until the peer's close_notify or EOF, TLS 1.3 delivers it.
3. **Network EOF or close_notify** (network → local): everything decrypted
   is delivered, then the local write side is closed. A ragged EOF (no
   close_notify) is normal with ``-j`` and fatal (98) with ``-J``; an EOF in
   the middle of a record is always fatal (98) — see ``_records.py``. A
   TLS 1.2 close_notify also ends our direction: we stop reading locally
   and answer with ours, so the application's later writes fail (EPIPE)
   rather than vanish.
4. **A TLS error or a reset while reading**: the bytes decrypted before it
   are delivered first (the transports hold the error back for one read),
   then the engine ends with its code.
5. **The local reader goes away** (EPIPE): network data is no longer
   delivered, but read and discarded, because closing a socket with unread
   bytes queued makes the kernel send RST and the peer then loses the end
   of our reply. Once our own direction is finished too, the discarding
   goes on for at most :data:`LINGER_SECONDS`.
6. **The network refuses our data** (reset, EPIPE): the connection is
   dead, as the C tools see it; the engine ends at once with 111, closing
   the local side both ways, so the application sees EOF and EPIPE instead
   of blocking on a pipe nobody reads.
7. **The engine returns when both directions are over**, 0 if all ended
   cleanly; a :class:`Fatal` in either direction ends both at once and its
   code is returned.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ._bridge import Carried
from ._errors import EXIT_SYSTEM, EXIT_TLS, Fatal, describe_os_error
from ._fds import same_object, stream_socket
from ._fdstreams import FdPairStream, Parking
from ._handshake_info import Variables, describe_variables, handshake_variables
from ._log import Log
from ._memory_tls import MemoryTLS
from ._openssl import reaches_openssl
from ._records import RECORD_SIZE, Records
from ._socket_tls import SocketTLS
from ._tls_errors import write_failure
from ._tlsconfig import TLSOptions

CHUNK = 256 * 1024  # large reads: few Python round trips per record
FIRST_BUFFER = 1024  # an idle connection's (a line, a request); doubles while reads fill it


class TLSTransport(Protocol):
    """What the engine needs from a TLS connection (both transports have it)."""

    records: Records
    close_notify_sent: bool

    @property
    def connection(self) -> ssl.SSLSocket | ssl.SSLObject: ...

    async def handshake(self) -> None: ...
    async def receive_into(self, buffer: bytearray) -> int: ...
    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...
    async def send_eof(self) -> None: ...
    async def send_close_notify(self) -> None: ...
    async def aclose(self) -> None: ...


def tls_over(
    network: socket.socket | trio.abc.HalfCloseableStream,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None = None,
) -> TLSTransport:
    """An ``SSLSocket`` transport for a socket, a memory-BIO one otherwise
    (and for a socket where ctypes cannot send our close_notify: see
    ``trio_s6tls._openssl``)."""
    if isinstance(network, socket.socket):
        if reaches_openssl(context, server_side=server_side):
            return SocketTLS(
                network, context, server_side=server_side, server_hostname=server_hostname
            )
        network = trio.SocketStream(trio.socket.from_stdlib_socket(network))
    return MemoryTLS(network, context, server_side=server_side, server_hostname=server_hostname)


def network_from_fds(
    read_fd: int, write_fd: int, *, pipe_size: int | None = None
) -> tuple[socket.socket | FdPairStream, list[int]]:
    """The network side over two fds: the socket itself when both name one
    stream socket (the fast path), else an :class:`FdPairStream`. Also
    returns the fds the caller must close at the end (a second fd for the
    same socket)."""
    if read_fd == write_fd or same_object(read_fd, write_fd):
        sock = stream_socket(read_fd)
        if sock is not None:
            return sock, ([write_fd] if write_fd != read_fd else [])
    return FdPairStream(read_fd, write_fd, pipe_size=pipe_size), []


LINGER_SECONDS = 2.0  # bounded drain before closing when nobody reads locally


class _Tunnel:
    """The two pumps of one tunnel and the little they share."""

    def __init__(
        self,
        tls: TLSTransport,
        local: trio.abc.HalfCloseableStream,
        options: TLSOptions,
        carried: Carried,
    ) -> None:
        self.tls = tls
        self.carried = carried
        self.local = local
        self.options = options
        self.tls13 = tls.connection.version() == "TLSv1.3"
        self.discarding = False  # rule 5: the local reader is gone
        self.up_done = False
        self.up_stopped = False  # rule 3: a TLS 1.2 close_notify ended our direction
        self.up_reading = trio.CancelScope()
        self.down_scope = trio.CancelScope()

    def _linger_if_over(self) -> None:
        """Both ways over but for a drain: bound the drain (rule 5)."""
        if self.discarding and self.up_done:
            deadline = trio.current_time() + LINGER_SECONDS
            self.down_scope.deadline = min(self.down_scope.deadline, deadline)

    def _ignoring_input(self) -> bool:
        """Rule 2 under TLS 1.2 (our close_notify is out), or rule 5."""
        return self.discarding or (self.tls.close_notify_sent and not self.tls13)

    async def down(self) -> None:
        """Network → local (rules 3, 4 and 5)."""
        tls = self.tls
        # bytearray() zero-fills, so its pages are resident at once: an idle
        # connection keeps 1 KiB, a busy one doubles it up to CHUNK.
        buffer = bytearray(FIRST_BUFFER)
        view = memoryview(buffer)
        direct = self.local if isinstance(self.local, FdPairStream) else None
        with self.down_scope:
            if self.carried.down:  # decrypted before trio was there (_bridge)
                try:
                    await self.local.send_all(self.carried.down)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.discarding = True
            while count := await tls.receive_into(buffer):
                if self._ignoring_input():
                    continue
                try:
                    # the loop waits in receive_into: the write needs no checkpoint
                    sent = direct.send_nowait(view[:count]) if direct is not None else 0
                    if sent < count:
                        await self.local.send_all(view[sent:count])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.discarding = True
                    self._linger_if_over()
                # More is coming when a read left no room for another record
                # (a 16 KiB record fills half of 32 KiB: "over half" stopped there).
                if len(buffer) - count < RECORD_SIZE and len(buffer) < CHUNK:
                    buffer = bytearray(min(2 * len(buffer), CHUNK))
                    view = memoryview(buffer)
        if self.down_scope.cancelled_caught:
            return  # the bounded drain is over
        ending = tls.records.ending()
        if ending == "close_notify" and not self.tls13:
            # Rule 3: answer now, whatever the application still writes. Its
            # input is closed with the rest when the tunnel ends, the fd we
            # read from first: it meets EPIPE, not a write that vanishes.
            self.up_stopped = True
            self.up_reading.cancel()
            return
        if self.discarding:
            return
        if ending == "truncated":
            raise Fatal(EXIT_TLS, "network stream ended in the middle of a TLS record")
        if ending == "ragged" and self.options.enforce_close_notify:
            raise Fatal(EXIT_TLS, "peer closed the connection without a close_notify")
        try:
            await self.local.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def up(self) -> None:
        """Local → network (rules 2 and 6)."""
        try:
            await self._send_up()
        finally:
            self.up_done = True
            self._linger_if_over()

    async def _send_up(self) -> None:
        if self.carried.up:  # read before trio was there (_bridge)
            try:
                await self.tls.send_all(self.carried.up)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                raise write_failure(error.__cause__) from None
        while not self.up_stopped:
            with trio.CancelScope() as self.up_reading:
                try:
                    data = await self.local.receive_some(CHUNK)
                except trio.BrokenResourceError as error:
                    cause = error.__cause__
                    detail = describe_os_error(cause) if isinstance(cause, OSError) else str(error)
                    raise Fatal(EXIT_SYSTEM, f"unable to read from local: {detail}") from None
            if self.up_reading.cancelled_caught or not data:
                break
            try:
                await self.tls.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                raise write_failure(error.__cause__) from None
        try:
            # The peer spoke TLS closure: answer in kind, even under -s.
            if self.options.close_notify or self.tls.records.close_notify:
                await self.tls.send_close_notify()
            else:
                await self.tls.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def establish(
    tls: TLSTransport,
    options: TLSOptions,
    *,
    server_side: bool,
    report_resumption: bool = False,
) -> Variables:
    """Complete the handshake under the ``-K`` deadline and return the
    ``SSL_*`` variables. Raises :class:`Fatal` (98) on failure or timeout;
    the caller closes ``tls``."""
    if options.handshake_timeout_ms:
        with trio.move_on_after(options.handshake_timeout_ms / 1000) as scope:
            await tls.handshake()
        if scope.cancelled_caught:
            raise Fatal(EXIT_TLS, f"handshake timed out after {options.handshake_timeout_ms} ms")
    else:
        await tls.handshake()
    return handshake_variables(
        tls.connection,
        server_side=server_side,
        resumed_flag=report_resumption,
        peer_cert_requested=server_side and options.client_cert >= 1,  # -Y/-y: all-zero hash
    )


async def tunnel(
    tls: TLSTransport,
    local: trio.abc.HalfCloseableStream,
    options: TLSOptions,
    carried: Carried | None = None,
) -> None:
    """Move data both ways after the handshake until neither direction can
    carry more (rules 2–7 above), first what ``carried`` holds (the bytes
    ``_bridge`` moved up to the handover). Raises the first :class:`Fatal`. Does not
    close ``tls`` or ``local``: close both when it returns (with
    ``local`` an :class:`FdPairStream`, the side it reads first) — after a
    TLS 1.2 close_notify that close is the application's EOF."""
    failure: list[Fatal] = []
    pumps = _Tunnel(tls, local, options, carried or Carried())

    async def guarded(nursery: trio.Nursery, pump: Callable[[], Awaitable[None]]) -> None:
        try:
            await pump()
        except Fatal as error:
            failure.append(error)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guarded, nursery, pumps.up)
        nursery.start_soon(guarded, nursery, pumps.down)
    if failure:
        raise failure[0]


async def local_when_active(
    parking: Parking, tls: TLSTransport, read_fd: int, write_fd: int, pidfd: int | None
) -> FdPairStream:
    """The local stream over ``read_fd`` and ``write_fd``, once there is
    something to do: the network or ``read_fd`` readable, or the process
    behind ``pidfd`` ended. Until then an idle connection waits in its own
    task alone (:class:`~._fdstreams.Parking`), without the tunnel's tasks,
    streams and buffer. Both fds are closed if this is cancelled."""
    connection = tls.connection
    # Decrypted bytes already waiting in OpenSSL make the socket look idle.
    if pidfd is not None and isinstance(connection, ssl.SSLSocket) and not connection.pending():
        try:
            await parking.wait_any_readable([connection.fileno(), read_fd, pidfd])
        except OSError:
            pass  # no room to park (fds, epoll watches): the tunnel waits as usual
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
    return FdPairStream(read_fd, write_fd)


async def run_engine(
    tls: TLSTransport,
    local: trio.abc.HalfCloseableStream,
    options: TLSOptions,
    *,
    server_side: bool,
    notify: Callable[[Variables], None] | None = None,
    log: Log | None = None,
    report_resumption: bool = False,
    carried: Carried | None = None,
) -> int:
    """Run one TLS tunnel to its end and return the exit status (docs/programs/index.rst):
    :func:`establish`, then ``notify(variables)``, then :func:`tunnel`.
    With ``carried``, the handshake was done, notified, and the tunnel's
    first bytes moved by ``_bridge``: only the tunnel is left.

    Fatal errors are reported on ``log`` as one ``fatal:`` line. Both ``tls``
    and ``local`` are closed on return.
    """
    log = log or Log("trio_s6tls", options.verbosity)
    try:
        if carried is None:
            variables = await establish(
                tls, options, server_side=server_side, report_resumption=report_resumption
            )
            log.info(describe_variables(variables), level=2)
            if notify is not None:
                notify(variables)
        await tunnel(tls, local, options, carried)
        return 0
    except Fatal as error:
        log.fatal(error.message)
        return error.exit_code
    finally:
        with trio.CancelScope(shield=True):
            await tls.aclose()
            await local.aclose()
