"""A TLS peer we drive by hand: Python's ``ssl.SSLObject`` over memory BIOs
on a blocking socket or a pair of pipes, for the close-model tests.

Unlike an ``SSLSocket`` it can do what TLS 1.3 allows and tests need:
read after sending close_notify, send after receiving one, put application
data and a corrupt record into one write, and say exactly how the other
side's stream ended (close_notify, or a bare EOF). Every read is bounded.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import time
from dataclasses import dataclass

TIMEOUT = 20.0

#: An application-data record whose body cannot decrypt: bad_record_mac.
CORRUPT_RECORD = b"\x17\x03\x03\x00\x20" + bytes(range(32))


@dataclass
class Received:
    data: bytes
    ending: str  # "close_notify" or "eof" (a bare FIN, no close_notify)


class BioPeer:
    """One TLS endpoint over ``read_fd``/``write_fd`` (the same socket twice,
    or two pipes). Call :meth:`handshake` first."""

    def __init__(
        self,
        read_fd: int,
        write_fd: int,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = "localhost",
    ) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=None if server_side else server_hostname,
        )
        self.eof_seen = False

    # -- the transport ----------------------------------------------------

    def flush(self) -> None:
        data = self.outgoing.read()
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self.write_fd], [], TIMEOUT)
            assert writable, "the other side stopped reading"
            view = view[os.write(self.write_fd, view) :]

    def feed(self, timeout: float = TIMEOUT) -> bool:
        """Move what the transport has into the BIO; False at EOF."""
        readable, _, _ = select.select([self.read_fd], [], [], timeout)
        assert readable, f"nothing arrived in {timeout} s"
        try:
            data = os.read(self.read_fd, 1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            self.incoming.write_eof()
            self.eof_seen = True
            return False
        self.incoming.write(data)
        return True

    # -- TLS ----------------------------------------------------------------

    def handshake(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                assert self.feed(deadline - time.monotonic()), "EOF during the handshake"
        self.flush()

    def encrypt(self, data: bytes) -> bytes:
        """The records for ``data``, not yet sent."""
        self.tls.write(data)
        return self.outgoing.read()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.flush()

    def send_raw(self, wire: bytes) -> None:
        self.outgoing.write(wire)
        self.flush()

    def send_close_notify(self) -> None:
        """Our close_notify, and nothing else: the incoming BIO is empty
        here (we feed it only while reading), so ``unwrap`` cannot eat the
        peer's data while it looks for the peer's close_notify."""
        assert not self.incoming.pending
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        self.flush()

    def receive_all(self) -> Received:
        """Everything until the peer's close_notify or EOF."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                self.flush()  # a KeyUpdate reply, a ticket ack...
                self.feed()
                continue
            except ssl.SSLZeroReturnError:
                return Received(b"".join(chunks), "close_notify")
            except ssl.SSLEOFError:
                return Received(b"".join(chunks), "eof")
            if not chunk:
                return Received(b"".join(chunks), "close_notify")
            chunks.append(chunk)

    def shutdown_write(self) -> None:
        """A bare FIN (the TCP write side), no close_notify."""
        if self.read_fd == self.write_fd:
            with socket.socket(fileno=os.dup(self.write_fd)) as sock:
                sock.shutdown(socket.SHUT_WR)
        else:
            os.close(self.write_fd)


def client_context(cafile: str, version: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if version is not None:
        context.minimum_version = context.maximum_version = getattr(
            ssl.TLSVersion, "TLSv" + version.replace(".", "_")
        )
    return context


def server_context(certfile: str, version: str | None = None) -> ssl.SSLContext:
    """A plain Python server context (key and chain in ``certfile``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile)
    if version is not None:
        context.minimum_version = context.maximum_version = getattr(
            ssl.TLSVersion, "TLSv" + version.replace(".", "_")
        )
    return context
