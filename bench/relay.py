#!/usr/bin/env python3
"""A delaying TCP relay: a slow link on loopback, for the latency benchmarks.

Listens on 127.0.0.1 (port 0 unless told) and forwards each accepted
connection to a target, holding every byte for ``delay`` ms in each
direction (default 25 ms each way = 50 ms RTT). Byte order is kept, and so
are half-closes: a FIN read from one side is forwarded, after the same
delay, as ``shutdown(SHUT_WR)`` on the other, while the other direction
goes on. A connection is closed once both directions have ended.

One thread runs a ``selectors`` loop with a timed queue per direction: what
is read at time t is written at t + delay, in order, as soon as the
destination takes it. Every relay socket has TCP_NODELAY, so the relay adds
no Nagle stall of its own (the endpoints keep whatever they chose). No
throughput limit that matters here: 64 KiB reads, and a direction stops
reading only while 16 MiB wait in its queue.

What it does not model: the TCP handshake. The kernel accepts the
connection at once, so ``connect()`` through the relay costs no round
trip, where a real 50 ms link would charge one. Every tool measured through
the relay gets the same discount (a constant taken off both sides of a
ratio, so ratios here are a little stricter than on a real link). Nor does
it model loss, bandwidth or a congestion window.

Library use::

    with Relay(("127.0.0.1", port), delay_ms=25) as relay:
        connect_to(relay.address)

Command line (prints the listening port on its own line, then relays
until killed)::

    python bench/relay.py [--delay MS] [--port PORT] TARGET_HOST TARGET_PORT
    python bench/relay.py --self-test [--delay MS]

``--self-test`` checks the RTT (one byte each way, median) against 2 x delay,
byte order (a few MiB each way, by hash) and a half-close (the far end's
reply after our FIN), and exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import math
import os
import selectors
import socket
import statistics
import sys
import threading
import time
from types import TracebackType

READ_SIZE = 65536
QUEUE_LIMIT = 16 << 20
TIMEOUT = 30.0


class _Direction:
    """One way of one connection: read ``src``, write ``dst`` ``delay`` later."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0  # bytes in the queue
        self.partial = b""  # a due chunk the destination took only part of
        self.read_done = False
        self.done = False  # EOF forwarded, or the destination is gone

    def wants_read(self) -> bool:
        return not self.read_done and self.queued < QUEUE_LIMIT

    def blocked(self) -> bool:
        return bool(self.partial)

    def next_due(self) -> float | None:
        if self.partial or not self.queue:
            return None
        return self.queue[0][0]

    def read(self, due: float) -> None:
        try:
            data = self.src.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # a reset reads as an end here
        if data:
            self.queue.append((due, data))
            self.queued += len(data)
        else:
            self.queue.append((due, None))
            self.read_done = True

    def flush(self, now: float) -> None:
        """Write what is due, in order, as far as the destination takes it."""
        while not self.done:
            if self.partial:
                chunk = self.partial
            elif self.queue and self.queue[0][0] <= now:
                _, item = self.queue.popleft()
                if item is None:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    self.done = True
                    return
                self.queued -= len(item)
                chunk = item
            else:
                return
            try:
                sent = self.dst.send(chunk)
            except (BlockingIOError, InterruptedError):
                self.partial = chunk
                return
            except OSError:
                self.done = True  # the far end is gone: drop the rest
                self.read_done = True
                self.queue.clear()
                return
            self.partial = chunk[sent:]


class _Connection:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.sockets = (client, server)
        self.directions = (_Direction(client, server), _Direction(server, client))

    def finished(self) -> bool:
        return all(direction.done for direction in self.directions)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


class Relay:
    """A delaying relay to ``target``, running in a daemon thread.

    ``address`` is where to connect. ``close()`` (or leaving the ``with``)
    stops it and closes every connection; ``connections`` counts those
    accepted so far.
    """

    def __init__(self, target: tuple[str, int], delay_ms: float = 25.0, *, port: int = 0) -> None:
        self.target = target
        self.delay = delay_ms / 1000
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.setblocking(False)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._live: list[_Connection] = []
        self._sources: dict[socket.socket, _Direction] = {}
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._loop, name="relay", daemon=True)
        self._thread.start()

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(TIMEOUT)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the loop ---------------------------------------------------------------

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            server = socket.create_connection(self.target, timeout=TIMEOUT)
        except OSError:
            client.close()  # the target refuses: so does the relay
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
        self.connections += 1
        connection = _Connection(client, server)
        self._live.append(connection)
        for direction in connection.directions:
            self._sources[direction.src] = direction

    def _register(self) -> None:
        """Interest per socket for the coming wait: read as a source, write
        as a destination with a blocked chunk."""
        wanted: dict[socket.socket, int] = {}
        for connection in self._live:
            for direction in connection.directions:
                if direction.wants_read():
                    wanted[direction.src] = wanted.get(direction.src, 0) | selectors.EVENT_READ
                if direction.blocked() and not direction.done:
                    wanted[direction.dst] = wanted.get(direction.dst, 0) | selectors.EVENT_WRITE
        for key in list(self._selector.get_map().values()):
            sock = key.fileobj
            if isinstance(sock, socket.socket) and sock is not self._listener:
                if sock not in wanted:
                    self._selector.unregister(sock)
                elif key.events != wanted[sock]:
                    self._selector.modify(sock, wanted.pop(sock))
                else:
                    del wanted[sock]
        for sock, events in wanted.items():
            self._selector.register(sock, events)

    def _loop(self) -> None:
        selector = self._selector
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping:
                now = time.monotonic()
                for connection in self._live:
                    for direction in connection.directions:
                        direction.flush(now)
                for connection in [c for c in self._live if c.finished()]:
                    self._live.remove(connection)
                    for sock in connection.sockets:
                        del self._sources[sock]
                        if sock in selector.get_map():
                            selector.unregister(sock)
                    connection.close()
                self._register()
                dues = [
                    due
                    for connection in self._live
                    for direction in connection.directions
                    if (due := direction.next_due()) is not None
                ]
                # epoll counts whole milliseconds and selectors rounds up, which
                # would make every delay up to 1 ms late: wait the whole
                # milliseconds, then spin through the last one.
                timeout = None
                if dues:
                    timeout = math.floor(max(min(dues) - time.monotonic(), 0) * 1000) / 1000
                for key, events in selector.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj == self._wake_r:
                        continue
                    elif events & selectors.EVENT_READ:
                        source = self._sources[key.fileobj]  # type: ignore[index]
                        source.read(time.monotonic() + self.delay)
        finally:
            for connection in self._live:
                connection.close()
            self._live.clear()
            selector.close()
            self._listener.close()


# -- self-test -------------------------------------------------------------------


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """A plain TCP echo server, one thread per connection, that echoes until
    EOF and then half-closes (so a reply after our FIN is visible)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)

    def serve(connection: socket.socket) -> None:
        with connection:
            connection.settimeout(TIMEOUT)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := connection.recv(READ_SIZE):
                connection.sendall(data)
            connection.sendall(b"bye\n")  # after the peer's FIN
            connection.shutdown(socket.SHUT_WR)

    def accept_loop() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    return listener, thread


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(READ_SIZE, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def self_test(delay_ms: float, rounds: int = 20) -> int:
    failures = 0
    listener, _ = _echo_server()
    with (
        listener,
        Relay(listener.getsockname()[:2], delay_ms) as relay,
        socket.create_connection(relay.address, timeout=TIMEOUT) as sock,
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(rounds):
            started = time.perf_counter()
            sock.sendall(b"x")
            assert _receive_exactly(sock, 1) == b"x"
            rtts.append((time.perf_counter() - started) * 1000)
        rtt = statistics.median(rtts)
        ok = abs(rtt - 2 * delay_ms) <= 3
        failures += not ok
        print(
            f"rtt: median {rtt:.2f} ms over {rounds} (min {min(rtts):.2f}, max {max(rtts):.2f}),"
            f" expected {2 * delay_ms:.0f} ± 3: {'ok' if ok else 'FAIL'}"
        )

        payload = os.urandom(4 << 20)
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        started = time.perf_counter()
        sender.start()
        echoed = _receive_exactly(sock, len(payload))
        sender.join(TIMEOUT)
        elapsed = time.perf_counter() - started
        ok = hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        failures += not ok
        print(
            f"order: {len(payload) >> 20} MiB echoed in {elapsed * 1000:.0f} ms"
            f" ({len(payload) / elapsed / 1e6:.0f} MB/s through the delay),"
            f" sha256 {'equal' if ok else 'DIFFERENT: FAIL'}"
        )

        started = time.perf_counter()
        sock.sendall(b"last\n")
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := sock.recv(READ_SIZE):
            rest += chunk
        elapsed = (time.perf_counter() - started) * 1000
        ok = rest == b"last\nbye\n" and abs(elapsed - 2 * delay_ms) <= 5
        failures += not ok
        print(
            f"half-close: after our FIN, got {rest!r} and the far FIN in {elapsed:.1f} ms:"
            f" {'ok' if ok else 'FAIL'}"
        )
    print("self-test:", "ok" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Prints the listening port, then relays until killed.",
    )
    parser.add_argument("--delay", type=float, default=25.0, help="ms each way (default 25)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any)")
    parser.add_argument("--self-test", action="store_true", help="check RTT, order, half-close")
    parser.add_argument("target_host", nargs="?")
    parser.add_argument("target_port", nargs="?", type=int)
    args = parser.parse_args(argv)
    if args.self_test:
        return self_test(args.delay)
    if args.target_host is None or args.target_port is None:
        parser.error("TARGET_HOST TARGET_PORT are required without --self-test")
    with Relay((args.target_host, args.target_port), args.delay, port=args.port) as relay:
        print(relay.address[1], flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
