"""A timestamped transcript of both directions of a stream.

:class:`TranscriptStream` wraps any :class:`trio.abc.HalfCloseableStream`
and appends one :class:`TranscriptEntry` to a :class:`Transcript` per write,
per read and per end of stream. Put it *above* a TLS layer to record the
cleartext, *below* it to record the records on the wire (with
``SSLKEYLOGFILE`` a capture of the latter can be decrypted later).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import trio

Direction = Literal["sent", "received"]


@dataclass(frozen=True)
class TranscriptEntry:
    """One event: ``data`` moved in ``direction`` at ``time``.

    Attributes:
        time: :func:`trio.current_time` when it happened.
        direction: ``"sent"`` (by the side that owns the transcript) or ``"received"``.
        data: The bytes; empty with ``eof`` set for an end of stream.
        eof: True for "this direction has ended" (a sent EOF, or a read of
            zero bytes).
    """

    time: float
    direction: Direction
    data: bytes
    eof: bool = False


@dataclass
class Transcript:
    """Everything that went through a :class:`TranscriptStream`, in order."""

    entries: list[TranscriptEntry] = field(default_factory=list)

    def record(
        self, direction: Direction, data: bytes | bytearray | memoryview, *, eof: bool = False
    ) -> None:
        self.entries.append(TranscriptEntry(trio.current_time(), direction, bytes(data), eof))

    def sent(self) -> bytes:
        """All bytes sent, joined."""
        return b"".join(e.data for e in self.entries if e.direction == "sent")

    def received(self) -> bytes:
        """All bytes received, joined."""
        return b"".join(e.data for e in self.entries if e.direction == "received")

    def ended(self, direction: Direction) -> bool:
        """True if an end of stream was recorded in ``direction``."""
        return any(e.eof for e in self.entries if e.direction == direction)

    def format(self) -> str:
        """One line per entry: seconds since the first entry, ``>`` for sent,
        ``<`` for received, then the bytes (``EOF`` for an end of stream)."""
        if not self.entries:
            return ""
        start = self.entries[0].time
        lines = []
        for entry in self.entries:
            arrow = ">" if entry.direction == "sent" else "<"
            what = "EOF" if entry.eof else repr(entry.data)
            lines.append(f"{entry.time - start:10.6f} {arrow} {what}")
        return "\n".join(lines) + "\n"


class TranscriptStream(trio.abc.HalfCloseableStream):
    """``transport``, with every write, read and EOF recorded in ``transcript``."""

    def __init__(self, transport: trio.abc.HalfCloseableStream, transcript: Transcript) -> None:
        self.transport = transport
        self.transcript = transcript

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        payload = bytes(data)
        await self.transport.send_all(payload)
        self.transcript.record("sent", payload)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.transport.receive_some(max_bytes)
        self.transcript.record("received", data, eof=not data)
        return data

    async def send_eof(self) -> None:
        await self.transport.send_eof()
        self.transcript.record("sent", b"", eof=True)

    async def aclose(self) -> None:
        await self.transport.aclose()
