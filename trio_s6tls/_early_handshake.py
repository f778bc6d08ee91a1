"""A one-shot client's handshake while trio is being imported.

A wrapper that forks its engine first (:mod:`._exec`) pays the import of
trio in the child (~100-200 ms) and only then starts the handshake, whose
round trips follow. Here the wrapper itself does the handshake, with the
standard library's blocking calls (which release the GIL while they wait
on the network and while OpenSSL computes), as a thread imports trio and
the engine meanwhile. Then, with that thread finished (no thread is alive
at fork time, docs/design.rst), the engine child is forked on the
established connection and runs only the tunnel; the rest is
:func:`~._exec.handshake_then_exec`'s: notification, exec of prog, the
engine as prog's child.

What the user sees does not change: the handshake's failures are the
engine's own messages (:func:`~._tls_errors.handshake_failure`, the ``-K``
timeout) with its exit code (98), and the ``SSL_*`` variables and the
``-v`` line come from the engine, as before. Used only where the old path
would not drop privileges for the engine (no ``TLS_UID``/``TLS_GID``), the
network is one stream socket, and this interpreter lets the engine take it
on as an SSLSocket (:func:`may_handshake_here`).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import threading
import time
from collections.abc import Sequence

from ._errors import EXIT_ENGINE, EXIT_SYSTEM, EXIT_TLS, Fatal, describe_os_error
from ._log import Log
from ._openssl import reaches_openssl
from ._records import attach
from ._tls_errors import handshake_failure
from ._tlsconfig import TLSOptions


def _import_engine() -> None:
    import trio  # noqa: F401

    from . import _engine, _fdstreams, _socket_tls  # noqa: F401


def start_engine_import() -> threading.Thread:
    """Import trio and the engine in a thread (daemon: an early failure
    must not wait for it); join it before any fork."""
    thread = threading.Thread(target=_import_engine, name="import trio", daemon=True)
    thread.start()
    return thread


def may_handshake_here(
    context: ssl.SSLContext, identity: tuple[int | None, int | None], *, server_side: bool
) -> bool:
    """Whether the wrapper may do the handshake: the engine would not change
    identity (``TLS_UID``/``TLS_GID``), and it may take the connection on as
    an SSLSocket (:func:`~._openssl.reaches_openssl`; else the engine child
    handshakes on memory BIOs, as before)."""
    return identity == (None, None) and reaches_openssl(context, server_side=server_side)


def handshake_now(fd: int, context: ssl.SSLContext, options: TLSOptions) -> ssl.SSLSocket:
    """The client handshake on the connected socket ``fd``, under ``-K``;
    the socket is the returned ``SSLSocket``'s. Raises the engine's
    :class:`Fatal` (98) on failure (the socket closed)."""
    return _handshake(socket.socket(fileno=fd), context, options, server_side=False)


def early_handshake(
    network: tuple[int, int], options: TLSOptions, *, server_side: bool
) -> ssl.SSLSocket | None:
    """s6-tlsc / s6-tlsd: the handshake on the network fds now, if they are
    one stream socket and the engine would not change identity; else None
    (the engine child does it, as before). Checks and fails as the engine
    would: the fds, then the configuration, then the handshake."""
    from ._fds import check_open, same_object, stream_socket
    from ._tlsconfig import context_from_environment

    check_open(network)
    read_fd, write_fd = network
    if read_fd != write_fd and not same_object(read_fd, write_fd):
        return None
    sock = stream_socket(read_fd)
    if sock is None:
        return None
    try:
        context, identity = context_from_environment(os.environ, options, server_side=server_side)
    except BaseException:
        sock.detach()
        raise
    if not may_handshake_here(context, identity, server_side=server_side):
        sock.detach()
        return None
    return _handshake(sock, context, options, server_side=server_side)


def _handshake(
    sock: socket.socket, context: ssl.SSLContext, options: TLSOptions, *, server_side: bool
) -> ssl.SSLSocket:
    sock.setblocking(False)
    try:
        tls = context.wrap_socket(
            sock,
            server_side=server_side,
            server_hostname=None if server_side else options.servername,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=False,
        )
    except (ssl.SSLError, ValueError, OSError) as error:
        sock.close()
        raise Fatal(EXIT_ENGINE, f"unable to set up the TLS engine: {error}") from None
    attach(tls)
    timeout_ms = options.handshake_timeout_ms
    deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Fatal(EXIT_TLS, f"handshake timed out after {timeout_ms} ms")
            poller = select.poll()
            poller.register(tls.fileno(), events)
            poller.poll(None if remaining is None else max(1, int(remaining * 1000 + 0.999)))
    except (ssl.SSLError, OSError) as error:
        tls.close()
        raise handshake_failure(error) from None
    except BaseException:
        tls.close()
        raise


def run_established_child(
    *,
    name: str,
    options: TLSOptions,
    connection: ssl.SSLSocket,
    local: tuple[int, int],
    notify_fd: int,
    server_side: bool = False,
    spare: Sequence[int] = (),
) -> int:
    """The engine child on an established connection: what
    :func:`~._iorun.run_engine_child` does after its handshake (which is
    immediate here: it is done), as an exit code."""
    import trio

    from ._engine import CHUNK, run_engine, write_notification
    from ._fdstreams import FdPairStream
    from ._handshake_info import Variables, encode_notification
    from ._socket_tls import SocketTLS

    log = Log(name, options.verbosity)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def notify(variables: Variables) -> None:
        write_notification(notify_fd, encode_notification(variables))

    async def main() -> int:
        local_stream = FdPairStream(local[0], local[1], pipe_size=CHUNK)
        try:
            return await run_engine(
                SocketTLS.adopt(connection),
                local_stream,
                options,
                server_side=server_side,
                notify=notify,
                log=log,
            )
        finally:
            for fd in spare:  # the network's other fd (s6-tlsd's 1, -7)
                os.close(fd)

    try:
        return trio.run(main)
    except OSError as error:
        log.fatal(describe_os_error(error))
        return EXIT_SYSTEM
