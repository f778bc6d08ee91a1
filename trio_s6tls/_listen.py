"""Listening sockets for the super-server, and two socket chores of a
connection: sending the banner, and lingering after a failed handshake.
Used by :mod:`trio_s6tls._server` (which re-exports :func:`bind` and
:func:`listener_from`)."""

from __future__ import annotations

import contextlib
import socket

import trio

from ._errors import EXIT_SYSTEM, Fatal, describe_os_error


def bind(ip: str, port: int, backlog: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``ip:port`` (port 0: any free port), made
    before ``trio.run`` so that workers can be forked after it. Raises
    :class:`Fatal` (111) on failure."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise Fatal(EXIT_SYSTEM, f"unable to create socket: {describe_os_error(error)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((ip, port))
        sock.listen(min(backlog, 2**31 - 1))  # the kernel caps it at somaxconn anyway
    except OSError as error:
        sock.close()
        raise Fatal(
            EXIT_SYSTEM, f"unable to bind to {ip} port {port}: {describe_os_error(error)}"
        ) from None
    return sock


def listener_from(sock: socket.socket) -> trio.SocketListener:
    """Inside ``trio.run``: a Trio listener over a socket from :func:`bind`."""
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


LINGER_SECONDS = 0.25


async def linger(sock: socket.socket) -> None:
    """After a failed handshake: half-close, then discard what the peer
    still sends, briefly, before the close. Closing with unread bytes would
    send an RST, which can destroy our alert before the client reads it."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_WR)
    with trio.move_on_after(LINGER_SECONDS):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:  # the raw socket under the SSLSocket: no TLS any more
                if not socket.socket.recv(sock, 16384):
                    return
            except BlockingIOError:
                continue
            except OSError:
                return


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]
