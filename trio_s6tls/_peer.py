"""The test peer: one side of a TLS (or STARTTLS) connection driven from a
test, with optional faults and transcripts.

Stack of one connection, from the network up::

    trio.SocketStream            (or any HalfCloseableStream)
    TranscriptStream             if a wire transcript is asked for
    FaultyStream                 if faults are given      (_faults.py)
    MemoryTLS                    once start_tls() ran     (_memory_tls.py)
    TLSPeerStream                what the test holds; cleartext transcript here

:class:`TLSPeerStream` starts in cleartext; :meth:`TLSPeerStream.start_tls`
turns TLS on over the same transport, which is all a UCSPI-TLS (STARTTLS)
peer needs. The immediate-TLS helpers simply call it at once.
"""

from __future__ import annotations

import operator
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import trio

from ._errors import Fatal
from ._faults import Faults, FaultyStream
from ._handshake_info import Variables, handshake_variables
from ._memory_tls import MemoryTLS
from ._tlsconfig import TLSOptions, client_context
from ._transcript import Transcript, TranscriptStream

#: Bound on the polite part of a close (close_notify, lingering drain).
CLOSE_TIMEOUT = 2.0
#: Default bound on connecting plus handshaking.
CONNECT_TIMEOUT = 10.0

_RECEIVE_SIZE = 65536


class _OneTaskAtATime:
    """Raise :class:`trio.BusyResourceError` when a second task enters, as
    every Trio stream must for each direction."""

    def __init__(self, doing: str) -> None:
        self._doing = doing
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(f"another task is already {self._doing}")
        self._busy = True

    def __exit__(self, *_: object) -> None:
        self._busy = False


class HandshakeFailed(Exception):
    """The test peer's TLS handshake did not complete (the message says why)."""


class TLSPeerStream(trio.abc.HalfCloseableStream):
    """A cleartext stream through TLS over ``transport``, for tests.

    Cleartext until :meth:`start_tls` (for STARTTLS protocols); then every
    byte goes through TLS. :meth:`send_eof` half-closes the transport
    without a close_notify (s6's ``-s``), or sends one when ``close_notify``
    is true (``-S``). :meth:`aclose` is polite and bounded: close_notify,
    then a short drain of what the peer still sends (so that closing never
    turns into a TCP reset that could cost the peer its last bytes); when
    cancelled it closes at once.

    Attributes:
        transport: The stream TLS runs over (faults and wire transcript included).
        faulty: The :class:`FaultyStream` in the stack, if any (to change the
            faults while the connection runs).
        variables: The ``SSL_*`` variables of *this* side once TLS is on
            (``SSL_PEER_CERT_HASH`` is the other side's certificate).
        transcript: The cleartext transcript, if one was asked for.
    """

    def __init__(
        self,
        transport: trio.abc.HalfCloseableStream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        close_notify: bool = False,
        transcript: Transcript | None = None,
        faulty: FaultyStream | None = None,
    ) -> None:
        self.transport = transport
        self.faulty = faulty
        self.transcript = transcript
        self.variables: Variables | None = None
        self._context = context
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._close_notify = close_notify
        self._tls: MemoryTLS | None = None
        self._closed = False
        self._sending = _OneTaskAtATime("sending on this stream")
        self._receiving = _OneTaskAtATime("receiving on this stream")

    @property
    def tls_active(self) -> bool:
        """True once :meth:`start_tls` has completed the handshake."""
        return self.variables is not None

    async def start_tls(self, timeout: float = CONNECT_TIMEOUT) -> Variables:
        """Run the handshake over the transport and switch to TLS.

        Returns the ``SSL_*`` variables of this side. Raises
        :class:`HandshakeFailed` on failure, :class:`TimeoutError` after
        ``timeout`` seconds.
        """
        if self._tls is not None:
            raise RuntimeError("TLS is already on")
        self._tls = MemoryTLS(
            self.transport,
            self._context,
            server_side=self._server_side,
            server_hostname=self._server_hostname,
        )
        with trio.fail_after(timeout):
            try:
                await self._tls.handshake()
            except Fatal as error:
                raise HandshakeFailed(error.message) from None
        self.variables = handshake_variables(self._tls.connection, server_side=self._server_side)
        if self.faulty is not None:
            self.faulty.arm()
        return self.variables

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        with self._sending:
            if self._tls is None:
                await self.transport.send_all(data)
            else:
                await self._tls.send_all(data)
        if self.transcript is not None:
            self.transcript.record("sent", bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        with self._sending:  # it is a send-side call: one at a time with the others
            await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        # As trio.SSLStream: None means "a good size", anything else must be
        # a positive integer (0 would otherwise wait for data it cannot return).
        if max_bytes is None:
            size = _RECEIVE_SIZE
        else:
            size = operator.index(max_bytes)
            if size < 1:
                raise ValueError("max_bytes must be >= 1")
        with self._receiving:
            if self._tls is None:
                data = bytes(await self.transport.receive_some(size))
            else:
                buffer = bytearray(size)
                try:
                    count = await self._tls.receive_into(buffer)
                except Fatal as error:
                    raise trio.BrokenResourceError(error.message) from None
                data = bytes(buffer[:count])
        if self.transcript is not None:
            self.transcript.record("received", data, eof=not data)
        return data

    def peer_ending(self) -> str | None:
        """How the peer's TLS stream ended, after a read returned ``b""``:
        ``"close_notify"``, ``"ragged"`` or ``"truncated"``; None before TLS."""
        return None if self._tls is None else self._tls.records.ending()

    async def send_close_notify(self) -> None:
        """Send a close_notify and half-close the transport."""
        if self._tls is None:
            raise RuntimeError("TLS is not on")
        with self._sending:
            await self._tls.send_close_notify()
        if self.transcript is not None:
            self.transcript.record("sent", b"", eof=True)

    async def send_eof(self) -> None:
        if self._tls is not None and self._close_notify:
            await self.send_close_notify()
            return
        with self._sending:
            if self._tls is None:
                await self.transport.send_eof()
            else:
                await self._tls.send_eof()
        if self.transcript is not None:
            self.transcript.record("sent", b"", eof=True)

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()  # a second close is a checkpoint too
            return
        self._closed = True
        try:
            # Not shielded: cancelled (or under trio.aclose_forcefully), we
            # skip the polite part, as trio's aclose convention wants.
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._polite_close()
        finally:
            await trio.aclose_forcefully(self.transport)

    async def _polite_close(self) -> None:
        try:
            if self._tls is not None and not self._tls.close_notify_sent:
                await self._tls.send_close_notify()
            else:
                await self.transport.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        # Linger: unread bytes at close() make the kernel send RST.
        try:
            while await self.transport.receive_some(_RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def wrap_transport(
    transport: trio.abc.HalfCloseableStream,
    *,
    faults: Faults | None = None,
    wire_transcript: Transcript | None = None,
) -> tuple[trio.abc.HalfCloseableStream, FaultyStream | None]:
    """``transport`` with a wire transcript, then faults, layered on top: the
    transcript sees what really left (each piece, nothing after a cut)."""
    if wire_transcript is not None:
        transport = TranscriptStream(transport, wire_transcript)
    faulty = None
    if faults is not None:
        faulty = FaultyStream(transport, faults)
        transport = faulty
    return transport, faulty


def peer_client_context(
    cafile: str | os.PathLike[str],
    *,
    client_cert: str | os.PathLike[str] | None = None,
    alpn: tuple[str, ...] = (),
    tls_version: str | None = None,
    keylog_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A verifying client context for the test peer.

    Args:
        cafile: PEM trust anchors.
        client_cert: A PEM file with the client's key and chain, to send one.
        alpn: Protocols to offer.
        tls_version: ``"1.2"`` or ``"1.3"`` to allow only that version.
        keylog_file: Where to append session secrets (NSS key log format);
            by default ``$SSLKEYLOGFILE`` if set.
    """
    env: dict[str, str] = {"CAFILE": os.fspath(cafile)}
    if client_cert is not None:
        env["CERTFILE"] = env["KEYFILE"] = os.fspath(client_cert)
    keylog = keylog_file if keylog_file is not None else os.environ.get("SSLKEYLOGFILE")
    if keylog:
        env["SSLKEYLOGFILE"] = os.fspath(keylog)
    options = TLSOptions(
        client_cert=1 if client_cert is not None else 0,
        alpn=alpn,
        min_version=tls_version,
        max_version=tls_version,
    )
    try:
        context = client_context(env, options)
    except Fatal as error:
        raise ValueError(error.message) from None
    context.check_hostname = True  # a test peer always checks the name
    return context


@asynccontextmanager
async def open_tls_peer(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    servername: str | None = None,
    starttls: bool = False,
    close_notify: bool = False,
    faults: Faults | None = None,
    transcript: Transcript | None = None,
    wire_transcript: Transcript | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> AsyncIterator[TLSPeerStream]:
    """Connect to ``host:port`` and yield a :class:`TLSPeerStream`.

    The server certificate is verified against ``servername`` (sent as SNI)
    or, without it, against ``host`` (an IP address is checked against the
    certificate's IP addresses and sends no SNI). With ``starttls`` the
    stream stays cleartext until the test calls
    :meth:`TLSPeerStream.start_tls`. The stream is closed on exit.
    """
    with trio.fail_after(timeout):
        socket_stream = await trio.open_tcp_stream(host, port)
    transport, faulty = wrap_transport(
        socket_stream, faults=faults, wire_transcript=wire_transcript
    )
    stream = TLSPeerStream(
        transport,
        context,
        server_side=False,
        server_hostname=servername or host,
        close_notify=close_notify,
        transcript=transcript,
        faulty=faulty,
    )
    try:
        if not starttls:
            await stream.start_tls(timeout)
        yield stream
    except BaseException:
        await trio.aclose_forcefully(stream)  # the test failed: no polite close
        raise
    else:
        await stream.aclose()


def base_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without the TLS variables, plus ``env``."""
    from ._env import is_tls_variable

    clean = {k: v for k, v in os.environ.items() if not is_tls_variable(k)}
    clean.update(env or {})
    return clean
