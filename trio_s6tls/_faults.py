"""Fault injection on the transport under a TLS connection, for tests and
protocol research.

:class:`FaultyStream` wraps any :class:`trio.abc.HalfCloseableStream` (usually
the TCP :class:`trio.SocketStream` under a TLS layer) and misbehaves on the
*sending* side only, as :class:`Faults` says:

1. ``split``: every write leaves in pieces of at most this many bytes (one
   ``send_all`` per piece, so on TCP each piece can become its own segment);
2. ``delay``: sleep this long before each piece;
3. ``cut_after``: once this many bytes have left, half-close the transport
   (TCP FIN) with no close_notify and silently drop every later write, as a
   network that lost the rest would. Receiving goes on, so a test can see
   how the peer reacts;
4. ``reset_after``: once this many bytes have left, abort the connection
   with a TCP RST (``SO_LINGER`` 0, then close); later operations raise
   :class:`trio.BrokenResourceError`.

Byte counts start when the stream is *armed*: at once, or — with
``after_handshake`` — when the owner calls :meth:`FaultyStream.arm` (the
helpers of :mod:`trio_s6tls.testing` do so when the TLS handshake is done).
Before that the stream passes data through untouched.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass

import trio


@dataclass
class Faults:
    """What a :class:`FaultyStream` does to the bytes it sends.

    Attributes:
        split: Largest piece written at once, in bytes; ``None`` keeps writes whole.
        delay: Seconds to wait before each piece.
        cut_after: Bytes to let through before a silent half-close (no
            close_notify); ``None`` never cuts.
        reset_after: Bytes to let through before a TCP reset; ``None`` never resets.
        after_handshake: Count bytes, and misbehave, only once armed (after
            the TLS handshake when used through :mod:`trio_s6tls.testing`).
    """

    split: int | None = None
    delay: float = 0.0
    cut_after: int | None = None
    reset_after: int | None = None
    after_handshake: bool = False

    def __post_init__(self) -> None:
        if self.split is not None and self.split < 1:
            raise ValueError("split must be at least 1 byte")
        if self.delay < 0:
            raise ValueError("delay must not be negative")
        for name in ("cut_after", "reset_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")


def _abort_with_reset(stream: trio.abc.Stream) -> bool:
    """Make the next close send RST; False if there is no socket under
    ``stream`` (wrappers are followed through their ``transport``)."""
    layer: object = stream
    while getattr(layer, "socket", None) is None and hasattr(layer, "transport"):
        layer = layer.transport
    sock = getattr(layer, "socket", None)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        return False
    return True


class FaultyStream(trio.abc.HalfCloseableStream):
    """``transport`` with :class:`Faults` applied to what is sent through it.

    Attributes:
        transport: The wrapped stream.
        faults: The faults; they may be changed while the stream is in use.
        bytes_sent: Bytes that have left since the stream was armed.
        cut: True once ``cut_after`` has taken effect.
        was_reset: True once ``reset_after`` has taken effect.
    """

    def __init__(self, transport: trio.abc.HalfCloseableStream, faults: Faults) -> None:
        self.transport = transport
        self.faults = faults
        self.armed = not faults.after_handshake
        self.bytes_sent = 0
        self.cut = False
        self.was_reset = False

    def arm(self) -> None:
        """Start counting bytes and applying the faults."""
        self.armed = True

    def _allowance(self) -> int | None:
        """Bytes that may still leave before a cut or reset; None: no limit."""
        limits = [x for x in (self.faults.cut_after, self.faults.reset_after) if x is not None]
        if not limits:
            return None
        return max(0, min(limits) - self.bytes_sent)

    async def _trip(self) -> None:
        """The byte limit is reached: cut or reset, whichever comes first."""
        cut_at = self.faults.cut_after
        reset_at = self.faults.reset_after
        if reset_at is not None and (cut_at is None or reset_at <= cut_at):
            self.was_reset = True
            _abort_with_reset(self.transport)
            await self.transport.aclose()
            return
        if not self.cut:
            self.cut = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.transport.send_eof()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.was_reset:
            raise trio.BrokenResourceError("connection reset by fault injection")
        if not self.armed or not data:
            await self.transport.send_all(data)  # also the checkpoint of an empty write
            return
        view = memoryview(data).cast("B")
        while view:
            allowance = self._allowance()
            if allowance == 0:
                await self._trip()
                if self.was_reset:
                    raise trio.BrokenResourceError("connection reset by fault injection")
                return  # cut: the network "lost" the rest
            size = len(view)
            if self.faults.split is not None:
                size = min(size, self.faults.split)
            if allowance is not None:
                size = min(size, allowance)
            if self.faults.delay:
                await trio.sleep(self.faults.delay)
            await self.transport.send_all(view[:size])
            self.bytes_sent += size
            view = view[size:]
        if self._allowance() == 0:
            await self._trip()  # exactly at the limit: do not wait for a next write

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.was_reset:
            raise trio.BrokenResourceError("connection reset by fault injection")
        return await self.transport.receive_some(max_bytes)

    async def send_eof(self) -> None:
        if self.cut or self.was_reset:
            await trio.lowlevel.checkpoint()
            return
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()
