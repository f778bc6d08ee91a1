"""Test UCSPI applications under real TLS, and drive TLS sessions with
controlled faults.

The pytest plugin (:mod:`trio_s6tls.pytest_plugin`) turns these into
fixtures; everything here also works without pytest, inside any
:func:`trio.run`.

* :class:`LoopbackPKI` — a :class:`trustme.CA` with a server certificate for
  ``localhost``, ``127.0.0.1`` and ``::1`` and a client certificate, on disk.
* :func:`open_ucspi_tls_server` — serve a program per connection exactly as
  ``s6-tlsserver`` would, on loopback port 0, and connect to it with
  :meth:`UcspiTLSServer.connect`.
* :func:`run_ucspi_tls_client` — run a client program as ``s6-tlsclient``
  would against an in-process TLS server whose per-connection behaviour is
  an async handler.
* Research tools, each usable alone on any Trio stream:
  :class:`Faults`/:class:`FaultyStream`, :class:`Transcript`/
  :class:`TranscriptStream`, the STARTTLS-capable :class:`TLSPeerStream`,
  and ``SSLKEYLOGFILE`` (``keylog_file=``).

Every wait has a bound; every process and task is cleaned up on the way
out, also when the test fails or is cancelled.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import trustme  # the testing extra; only the caller makes a trustme.CA

from . import _server
from ._errors import Fatal
from ._faults import Faults, FaultyStream
from ._peer import (
    CONNECT_TIMEOUT,
    HandshakeFailed,
    TLSPeerStream,
    base_environment,
    open_tls_peer,
    peer_client_context,
    wrap_transport,
)
from ._server import ConnectionRecord
from ._tlsconfig import TLSOptions, configure_resumption, server_context
from ._transcript import Transcript, TranscriptEntry, TranscriptStream

__all__ = [
    "ClientResult",
    "ConnectionRecord",
    "Faults",
    "FaultyStream",
    "HandshakeFailed",
    "LoopbackPKI",
    "TLSPeerStream",
    "Transcript",
    "TranscriptEntry",
    "TranscriptStream",
    "UcspiTLSServer",
    "find_program",
    "open_tls_peer",
    "open_ucspi_tls_server",
    "peer_client_context",
    "peer_server_context",
    "run_ucspi_tls_client",
]

#: Bound on a program's run in :func:`run_ucspi_tls_client`.
PROGRAM_TIMEOUT = 30.0
#: Bound on stopping a server or letting handlers finish.
STOP_TIMEOUT = 5.0

LOOPBACK = "127.0.0.1"


class LoopbackPKI:
    """Certificates from ``ca`` written under ``directory``.

    Attributes:
        ca: The certificate authority.
        ca_file: PEM of the CA certificate (``CAFILE``).
        server_file: PEM key and chain for ``localhost``, ``127.0.0.1``, ``::1``.
        client_file: PEM key and chain of a client certificate
            (``CN=trio_s6tls test client``).
    """

    def __init__(self, ca: trustme.CA, directory: str | os.PathLike[str]) -> None:
        self.ca = ca
        base = self._directory = Path(directory)
        base.mkdir(parents=True, exist_ok=True)
        self.ca_file = base / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server = ca.issue_cert("localhost", "127.0.0.1", "::1", common_name="localhost")
        self.server_file = base / "server.pem"
        server.private_key_and_cert_chain_pem.write_to_path(str(self.server_file))
        client = ca.issue_cert("client.test", common_name="trio_s6tls test client")
        self.client_file = base / "client.pem"
        client.private_key_and_cert_chain_pem.write_to_path(str(self.client_file))

    def sni_env(self, *names: str) -> dict[str, str]:
        """``KEYFILE:NAME``/``CERTFILE:NAME`` pairs, one certificate per name
        (``*.example.test`` works too), for servers run with ``-k 1`` or ``-k 2``."""
        env: dict[str, str] = {}
        for name in names:
            path = self._directory / f"sni-{name.replace('*', '_star_')}.pem"
            if not path.exists():
                issued = self.ca.issue_cert(name, common_name=name)
                issued.private_key_and_cert_chain_pem.write_to_path(str(path))
            env[f"KEYFILE:{name}"] = env[f"CERTFILE:{name}"] = str(path)
        return env

    @property
    def server_env(self) -> dict[str, str]:
        """``KEYFILE`` and ``CERTFILE`` for the server certificate."""
        return {"KEYFILE": str(self.server_file), "CERTFILE": str(self.server_file)}

    @property
    def client_env(self) -> dict[str, str]:
        """``CAFILE`` trusting the CA."""
        return {"CAFILE": str(self.ca_file)}

    @property
    def client_cert_env(self) -> dict[str, str]:
        """``CAFILE``, plus ``KEYFILE`` and ``CERTFILE`` for the client certificate."""
        return {
            **self.client_env,
            "KEYFILE": str(self.client_file),
            "CERTFILE": str(self.client_file),
        }


def find_program(name: str) -> str:
    """The path of an installed program: next to the running interpreter
    (a virtualenv's ``bin``) first, then ``$PATH``. Paths pass through."""
    if os.sep in name:
        return name
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"program not found: {name}")
    return found


def _resolve(argv: Sequence[str]) -> list[str]:
    if not argv:
        raise ValueError("empty argv")
    return [find_program(argv[0]), *argv[1:]]


def peer_server_context(
    pki: LoopbackPKI,
    *,
    alpn: tuple[str, ...] = (),
    client_cert: int = 0,
    tls_version: str | None = None,
    keylog_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """The server context of the in-process test server.

    ``client_cert``: 0 none, 1 request one, 2 require one (verified against
    the CA). ``keylog_file`` defaults to ``$SSLKEYLOGFILE``.
    """
    env = {**pki.server_env, **pki.client_env}
    keylog = keylog_file if keylog_file is not None else os.environ.get("SSLKEYLOGFILE")
    if keylog:
        env["SSLKEYLOGFILE"] = os.fspath(keylog)
    options = TLSOptions(
        alpn=alpn, client_cert=client_cert, min_version=tls_version, max_version=tls_version
    )
    try:
        return server_context(env, options)
    except Fatal as error:
        raise ValueError(error.message) from None


# -- the server side: a program served as s6-tlsserver would -------------


@dataclass
class UcspiTLSServer:
    """A running :func:`open_ucspi_tls_server`.

    Attributes:
        host: The loopback address it listens on.
        port: Its port.
        pki: The certificates it uses.
        finished: One record per ended connection, in the order they ended
            (``env``: what the program was given; ``prog_status``: its exit
            status, ``None`` if it never ran; ``engine_status``: 0 or the TLS
            engine's exit code, e.g. 98 for a failed handshake).
    """

    host: str
    port: int
    pki: LoopbackPKI
    finished: list[ConnectionRecord] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    def _record(self, record: ConnectionRecord) -> None:
        self.finished.append(record)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_finished(self, count: int = 1, timeout: float = 10.0) -> list[ConnectionRecord]:
        """Wait until ``count`` connections have ended (at most ``timeout``
        seconds, then :class:`TimeoutError`) and return the records."""
        with trio.fail_after(timeout):
            while len(self.finished) < count:
                await self._changed.wait()
        return self.finished

    def connect(
        self,
        *,
        servername: str | None = None,
        alpn: Sequence[str] = (),
        client_cert: bool = False,
        tls_version: str | None = None,
        starttls: bool = False,
        close_notify: bool = False,
        faults: Faults | None = None,
        transcript: Transcript | None = None,
        wire_transcript: Transcript | None = None,
        keylog_file: str | os.PathLike[str] | None = None,
        timeout: float = CONNECT_TIMEOUT,
    ) -> AbstractAsyncContextManager[TLSPeerStream]:
        """``async with server.connect() as stream:`` — a cleartext
        :class:`TLSPeerStream` through a verified TLS connection.

        Args:
            servername: SNI name to send and verify (default: none, verify ``host``).
            alpn: Protocols to offer.
            client_cert: Send the PKI's client certificate.
            tls_version: ``"1.2"`` or ``"1.3"`` to allow only that version.
            starttls: Stay in cleartext until ``await stream.start_tls()``
                (for a server started with ``starttls=True``).
            close_notify: ``stream.send_eof()`` sends a close_notify (``-S``)
                instead of only half-closing TCP (``-s``).
            faults: Misbehave on the transport (see :class:`Faults`).
            transcript: Record the cleartext both ways.
            wire_transcript: Record the bytes on the wire both ways.
            keylog_file: Append the session secrets there (default ``$SSLKEYLOGFILE``).
            timeout: Bound on connecting plus the handshake.
        """
        context = peer_client_context(
            self.pki.ca_file,
            client_cert=self.pki.client_file if client_cert else None,
            alpn=tuple(alpn),
            tls_version=tls_version,
            keylog_file=keylog_file,
        )
        return open_tls_peer(
            self.host,
            self.port,
            context,
            servername=servername,
            starttls=starttls,
            close_notify=close_notify,
            faults=faults,
            transcript=transcript,
            wire_transcript=wire_transcript,
            timeout=timeout,
        )


def _server_config(
    argv: list[str],
    server_options: Sequence[str],
    base_env: dict[str, str],
    *,
    tls: bool,
    host: str,
) -> tuple[_server.ServerConfig, int | None]:
    """The configuration s6-tlsserver (``tls``) or s6-tcpserver would build
    from ``server_options``, parsed by the program's own option table;
    ValueError for what either rejects or what makes no sense in process
    (``--workers`` above 1). Also returns the ``-b`` backlog."""
    from .programs import tcpserver, tlsserver

    program = tlsserver.PROGRAM if tls else tcpserver.PROGRAM
    try:
        parsed = program.parse([*server_options, host, "0", *argv])
        if parsed.operands[2:] != argv:
            raise ValueError(f"{list(server_options)!r}: not all options")
        launch = (
            tlsserver.tls_server_launch(parsed)
            if tls
            else tcpserver.server_launch(parsed, name=program.name)
        )
        if launch.listen.workers != 1:
            raise ValueError("--workers is not available in process")
        context = None
        if tls:
            context = configure_resumption(
                server_context(base_env, launch.server.tls_options), launch.resumption
            )
    except Fatal as error:
        raise ValueError(f"{list(server_options)!r}: {error.message}") from None
    config = dataclasses.replace(launch.server, context=context, base_env=base_env)
    return config, launch.listen.backlog


@asynccontextmanager
async def open_ucspi_tls_server(
    argv: Sequence[str],
    pki: LoopbackPKI,
    tls_options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    starttls: bool = False,
    server_options: Sequence[str] = (),
    host: str = LOOPBACK,
) -> AsyncIterator[UcspiTLSServer]:
    """Serve ``argv`` per connection as ``s6-tlsserver [tls_options] host 0
    argv...`` would: the handshake, then the program with stdin/stdout on
    the TLS tunnel and the UCSPI and ``SSL_*`` variables.

    ``tls_options`` are s6-tlsserver's options, parsed by s6-tlsserver's
    own option table: the TLS ones (``-J``, ``-S``, ``-y``, ``-K 500``,
    ``--alpn h2``, ``-Z``, ``--resumption``, …) and the TCP ones too
    (``-H``, ``-c 5``, ``-C 1``, ``-B banner``, ``-i rulesdir``, ``-L``, …).
    Anything it rejects, and ``--workers`` above 1, is a
    :class:`ValueError`. ``server_options`` are added after them. ``env`` is
    added to the program's environment (over ``os.environ`` and the PKI's
    ``KEYFILE``/``CERTFILE``/``CAFILE``, which the program does not see
    unless ``-Z``).

    With ``starttls`` the server is plain TCP, as ``s6-tcpserver
    [server_options] host 0 s6-ucspitlsd [tls_options] argv...`` would run
    it (``tls_options`` are then s6-ucspitlsd's): connect with
    ``connect(starttls=True)`` and call ``start_tls()`` when the protocol
    says so.

    On exit the listener is closed and every program still running is
    killed and reaped (bounded).
    """
    base_env = base_environment({**pki.server_env, **pki.client_env, **(env or {})})
    if starttls:
        prog = [find_program("s6-ucspitlsd"), *tls_options, "--", *_resolve(argv)]
        config, backlog = _server_config(prog, server_options, base_env, tls=False, host=host)
    else:
        config, backlog = _server_config(
            _resolve(argv), [*tls_options, *server_options], base_env, tls=True, host=host
        )
    listeners = await trio.open_tcp_listeners(0, host=host, backlog=backlog)
    port = listeners[0].socket.getsockname()[1]
    server = UcspiTLSServer(host, port, pki)
    try:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(
                    functools.partial(_server.serve, on_finished=server._record), listeners, config
                )
                yield server
            finally:
                nursery.cancel_scope.cancel()  # serve() kills and reaps the programs
    finally:
        # serve() closes them too, but not if it failed before starting.
        for listener in listeners:
            await trio.aclose_forcefully(listener)


# -- the client side: a program run as s6-tlsclient would ------------------


@dataclass
class ClientResult:
    """What :func:`run_ucspi_tls_client` returns.

    Attributes:
        returncode: The program's exit status (``-N``: killed by signal N).
        stdout: Everything it wrote on stdout.
        stderr: Everything it (and the TLS client) wrote on stderr.
        connections: The server side's ``SSL_*`` variables, one dict per
            connection whose handshake completed (``SSL_PEER_CERT_HASH`` is
            the client's certificate, if it sent one).
    """

    returncode: int
    stdout: bytes
    stderr: bytes
    connections: list[dict[str, str | None]] = field(default_factory=list)


Handler = Callable[[TLSPeerStream], Awaitable[object]]


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The single real error inside nested groups, else the group."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        elif not isinstance(error, trio.Cancelled):
            leaves.append(error)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group


async def run_ucspi_tls_client(
    argv: Sequence[str],
    handler: Handler,
    pki: LoopbackPKI,
    tls_options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    starttls: bool = False,
    alpn: Sequence[str] = (),
    request_client_cert: int = 0,
    tls_version: str | None = None,
    faults: Faults | None = None,
    transcript: Transcript | None = None,
    wire_transcript: Transcript | None = None,
    keylog_file: str | os.PathLike[str] | None = None,
    timeout: float = PROGRAM_TIMEOUT,
) -> ClientResult:
    """Run ``argv`` as ``s6-tlsclient [tls_options] 127.0.0.1 PORT argv...``
    would (fds 6/7 on the TLS tunnel, ``SSL_*`` and UCSPI variables), against
    an in-process TLS server on loopback port 0 that runs ``await
    handler(stream)`` per connection, with ``stream`` a server-side
    :class:`TLSPeerStream`.

    With ``starttls`` the program runs as ``s6-tcpclient 127.0.0.1 PORT
    s6-ucspitlsc [tls_options] argv...``: the handler gets a cleartext
    stream and calls ``await stream.start_tls()`` when the protocol says so.

    ``faults``, ``transcript`` and ``wire_transcript`` apply to every
    connection's server side. An exception in a handler kills the program
    and is raised here. The program is killed after ``timeout`` seconds
    (then :class:`TimeoutError`); handlers still running
    ``STOP_TIMEOUT`` (5) seconds after it exited are cancelled and
    :class:`TimeoutError` is raised.
    """
    context = peer_server_context(
        pki,
        alpn=tuple(alpn),
        client_cert=request_client_cert,
        tls_version=tls_version,
        keylog_file=keylog_file,
    )
    result = ClientResult(-1, b"", b"")
    pending_handlers = 0
    handlers_done = trio.Event()
    handlers_done.set()

    async def serve_one(socket_stream: trio.SocketStream) -> None:
        nonlocal pending_handlers, handlers_done
        if pending_handlers == 0:
            handlers_done = trio.Event()
        pending_handlers += 1
        transport, faulty = wrap_transport(
            socket_stream, faults=faults, wire_transcript=wire_transcript
        )
        stream = TLSPeerStream(
            transport, context, server_side=True, transcript=transcript, faulty=faulty
        )
        try:
            if not starttls:
                try:
                    await stream.start_tls()
                except (HandshakeFailed, TimeoutError):
                    await trio.aclose_forcefully(stream)
                    return  # the program reports it; its exit status tells the test
            await handler(stream)
            if stream.variables is not None:
                result.connections.append(dict(stream.variables))
        except BaseException:
            await trio.aclose_forcefully(stream)  # the test failed: no polite close
            raise
        else:
            await stream.aclose()
        finally:
            pending_handlers -= 1
            if pending_handlers == 0:
                handlers_done.set()

    client_env = base_environment({**pki.client_env, **(env or {})})
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    port = str(listeners[0].socket.getsockname()[1])
    if starttls:
        command = [
            find_program("s6-tcpclient"), LOOPBACK, port,
            find_program("s6-ucspitlsc"), *tls_options, "--", *_resolve(argv),
        ]  # fmt: skip
    else:
        command = [
            find_program("s6-tlsclient"),
            *tls_options,
            "--",
            LOOPBACK,
            port,
            *_resolve(argv),
        ]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, serve_one, listeners)
            with trio.fail_after(timeout):
                completed = await trio.run_process(
                    command,
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    env=client_env,
                )
            result.returncode = completed.returncode
            result.stdout = completed.stdout
            result.stderr = completed.stderr
            with trio.fail_after(STOP_TIMEOUT):
                await handlers_done.wait()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = _unwrap(group)
        if error is group:
            raise
        raise error from None
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
    return result
