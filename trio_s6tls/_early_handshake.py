"""A one-shot client's handshake before trio is imported.

A wrapper that forks its engine first (:mod:`._exec`) pays the import of
trio in the child (~100-250 ms) and only then starts the handshake, whose
round trips follow. Here the wrapper itself does the handshake, with the
standard library's blocking calls, and never imports trio: it forks the
engine child on the established connection, and the rest is
:func:`~._exec.handshake_then_exec`'s (notification, exec of prog, the
engine as prog's child). The child notifies at once, starts a thread that
imports trio, and carries the tunnel's first bytes meanwhile on
:mod:`._bridge` (the standard library's ``poll``); the trio engine takes
over where the bridge stopped. A request and its reply are usually over
before the import is.

What the user sees does not change: the handshake's failures are the
engine's own messages (:func:`~._tls_errors.handshake_failure`, the ``-K``
timeout) with its exit code (98), the ``SSL_*`` variables and the ``-v``
line are the engine's, and the close model is the engine's
(docs/close-semantics.rst). Used only where the old path would not drop
privileges for the engine (no ``TLS_UID``/``TLS_GID``), the network is one
stream socket, and this interpreter lets the engine take it on as an
SSLSocket (:func:`may_handshake_here`).
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
from ._tls_errors import handshake_failure, write_failure
from ._tlsconfig import TLSOptions


def _import_engine(ready_fd: int | None = None) -> None:
    """Import trio and the engine; then write a byte to ``ready_fd``."""
    try:
        import trio  # noqa: F401

        from . import _engine, _fdstreams, _socket_tls  # noqa: F401
    finally:
        if ready_fd is not None:
            os.write(ready_fd, b"+")
            os.close(ready_fd)


def start_engine_import() -> threading.Thread:
    """Import trio and the engine in a thread (daemon: an early failure
    must not wait for it), for a wrapper whose engine child does the
    handshake; join it before any fork."""
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
    """The engine child on an established connection, as an exit code: the
    notification at once, then the tunnel's first bytes on :mod:`._bridge`
    while a thread imports trio, then the trio engine from where the bridge
    stopped."""
    from ._bridge import carry_first_bytes
    from ._handshake_info import (
        describe_variables,
        encode_notification,
        handshake_variables,
        write_notification,
    )

    log = Log(name, options.verbosity)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    ready_read, ready_write = os.pipe()
    threading.Thread(target=_import_engine, args=(ready_write,), daemon=True).start()
    variables = handshake_variables(
        connection,
        server_side=server_side,
        peer_cert_requested=server_side and options.client_cert >= 1,  # as establish()
    )
    log.info(describe_variables(variables), level=2)
    write_notification(notify_fd, encode_notification(variables))
    carried = carry_first_bytes(connection, local[0], local[1], ready_read)
    os.read(ready_read, 1)  # the import is over (or failed: the import below says why)
    os.close(ready_read)
    if carried.refused is not None:  # the connection is dead: end at once, as the engine
        failure = write_failure(carried.refused)
        log.fatal(failure.message)
        connection.close()
        for fd in (*local, *spare):
            os.close(fd)
        return failure.exit_code

    import trio

    from ._engine import CHUNK, run_engine
    from ._fdstreams import FdPairStream
    from ._socket_tls import SocketTLS

    async def main() -> int:
        local_stream = FdPairStream(local[0], local[1], pipe_size=CHUNK)
        tls = SocketTLS.adopt(
            connection, reading_ended=carried.network_ended, error=carried.network_error
        )
        try:
            return await run_engine(
                tls, local_stream, options, server_side=server_side, log=log, carried=carried
            )
        finally:
            for fd in spare:  # the network's other fd (s6-tlsd's 1, -7)
                os.close(fd)

    try:
        return trio.run(main)
    except OSError as error:
        log.fatal(describe_os_error(error))
        return EXIT_SYSTEM
