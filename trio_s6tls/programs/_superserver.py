"""The super-server programs (s6-tcpserver, s6-tlsserver) around the
library server: what a parsed command line asks for (:class:`Launch`),
binding, the identity switch, readiness, forked ``--workers`` and the
signals.

Theory of operation:

1. **Everything that can fail on configuration fails first**: the TLS
   context (with ``TLS_UID``/``TLS_GID``), the identity, the rules
   directory or file — before the socket is bound.
2. **Bind, then become the server's identity** (``-u``/``-g``/``-G``/``-U``
   or ``TLS_UID``/``TLS_GID``, see :mod:`trio_s6tls._identity`): keys are
   loaded and the port bound as root, nothing after that runs as root,
   and every prog inherits that identity.
3. **Workers are forked before any event loop** (``--workers N``), each
   with its own ``SO_REUSEPORT`` socket on the same port; the parent stays
   as a supervisor that forwards signals and exits when every worker has.
4. **Signals** (blocked from binding until a handler is in place, so that
   one sent right after the readiness line is not lost): SIGTERM and
   SIGINT stop (:meth:`~trio_s6tls._server.Server.stop`), a second SIGINT
   stops at once; SIGHUP and SIGQUIT pass SIGTERM and SIGCONT to every
   prog (SIGQUIT then exits); SIGABRT kills every prog and exits; SIGUSR1
   reloads the certificates for new connections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from .._errors import EXIT_SYSTEM, Fatal, describe_os_error
from .._fds import flush_stdio
from .._identity import assume, parse_identity, server_identity
from .._log import Log
from .._server import Server, ServerConfig, bind, listener_from, serve
from .._tlsconfig import configure_resumption, context_from_environment
from .._ucspi import canonical_ip


@dataclass(frozen=True)
class Listen:
    """Where and how to listen."""

    ip: str
    port: int  # 0: any free port
    backlog: int | None  # -b; None: the system's maximum
    readiness: bool  # -1: print the port once listening
    workers: int  # --workers


@dataclass(frozen=True)
class Launch:
    """What a parsed s6-tcpserver / s6-tlsserver command line asks for.
    ``server`` lacks what only the launch knows: the context (loaded from
    the environment then) and the environment itself."""

    listen: Listen
    server: ServerConfig
    tls: bool
    resumption: bool = False  # --resumption
    uid: int | None = None  # -u / -U
    gid: int | None = None  # -g / -U
    groups: tuple[int, ...] | None = None  # -G / -U


#: Signals the programs act on; blocked from binding until a handler is in
#: place, so that one sent right after the readiness line is not lost.
HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGABRT,
    signal.SIGUSR1,
)


def launch(plan: Launch) -> int:
    """Everything s6-tcpserver / s6-tlsserver do after parsing options:
    load the TLS context and check the identity (errors before any network
    I/O), bind, become the server's identity (:mod:`.._identity`: ``-u``,
    ``-g``, ``-G``, ``-U``, ``TLS_UID``/``TLS_GID``; prog inherits it),
    announce readiness (``-1``), then serve in this process or in
    ``--workers`` forked processes (forked before ``trio.run``, each with
    its own ``SO_REUSEPORT`` socket on the same port)."""
    env = dict(os.environ)
    server = plan.server
    context: ssl.SSLContext | None = None
    reload: Callable[[], ssl.SSLContext] | None = None
    tls_ids: tuple[int | None, int | None] = (None, None)
    if plan.tls:

        def load_context() -> ssl.SSLContext:
            context, _ = context_from_environment(os.environ, server.tls_options, server_side=True)
            return configure_resumption(context, plan.resumption)

        tls_ids = parse_identity(env)
        context = load_context()
        reload = load_context
    identity = server_identity(plan.uid, plan.gid, plan.groups, tls_ids, as_root=os.geteuid() == 0)
    if server.rules_dir is not None and not os.path.isdir(server.rules_dir):
        raise Fatal(EXIT_SYSTEM, f"unable to read rules directory {server.rules_dir}")
    rules_file = server.rules_file
    if rules_file is not None and not (os.path.isfile(rules_file) and os.access(rules_file, 4)):
        raise Fatal(EXIT_SYSTEM, f"unable to read rules file {rules_file}")
    config = dataclasses.replace(server, context=context, base_env=env)
    listen = plan.listen
    backlog = listen.backlog if listen.backlog is not None else socket.SOMAXCONN
    first = bind(listen.ip, listen.port, backlog, reuse_port=listen.workers > 1)
    port = first.getsockname()[1]
    server.log.info(f"starting - bound to ip {canonical_ip(first.getsockname()[0])} port {port}", 2)
    sockets = [first] + [
        bind(listen.ip, port, backlog, reuse_port=True) for _ in range(listen.workers - 1)
    ]
    for signum in HANDLED_SIGNALS:
        # Inherited SIG_IGN (nohup, a background job): the kernel would drop
        # these while blocked, and we handle them once trio runs.
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)  # until the handlers are in place
    assume(identity)  # bound and keys loaded: no TLS code runs as root from here on
    if listen.readiness:
        _announce(port)
    if listen.workers == 1:
        return _run_worker(first, config, reload)
    return _fork_workers(sockets, config, reload)


def _announce(port: int) -> None:
    """``-1``: the port and a newline on stdout, then stdout closed (fd 1
    kept open on /dev/null so that no later fd takes its number)."""
    try:
        os.write(1, f"{port}\n".encode())
    except OSError as error:
        raise Fatal(EXIT_SYSTEM, f"unable to write readiness: {describe_os_error(error)}") from None
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def _run_worker(
    sock: socket.socket, config: ServerConfig, reload: Callable[[], ssl.SSLContext] | None
) -> int:
    async def main() -> int:
        with trio.open_signal_receiver(*HANDLED_SIGNALS) as receiver:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            try:
                async with trio.open_nursery() as nursery:

                    async def serve_then_stop(
                        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
                        try:
                            await serve([listener_from(sock)], config, task_status=task_status)
                        finally:
                            nursery.cancel_scope.cancel()

                    server: Server = await nursery.start(serve_then_stop)
                    nursery.start_soon(_obey_signals, receiver, server, reload)
            finally:
                # Done serving: a late signal (a second SIGINT, one the
                # supervisor forwards) must not kill us with its default
                # action once the receiver is gone.
                signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        config.log.info("exiting", level=2)
        return 0

    return trio.run(main)


async def _obey_signals(
    receiver: AsyncIterator[int], server: Server, reload: Callable[[], ssl.SSLContext] | None
) -> None:
    """The documented signals. Repeats may coalesce; each action is
    idempotent. SIGINT (Ctrl-C) is SIGTERM; a second SIGINT: exit now."""
    log = server.config.log
    plain = server.config.context is None
    interrupted = False
    async for signum in receiver:
        doing = _DOING[signum] if signum != signal.SIGUSR1 or reload else "ignoring it"
        log.info(f"received {signal.Signals(signum).name}, {doing}", level=2)
        if signum in (signal.SIGTERM, signal.SIGINT):
            if signum == signal.SIGINT:
                if interrupted:
                    server.exit_now()  # the second Ctrl-C: do not wait for the progs
                interrupted = True
            server.stop()
            if plain:  # progs own their sockets: they outlive us, as with the C tool
                server.exit_now(abandon_children=True)
        elif signum in (signal.SIGHUP, signal.SIGQUIT):
            server.signal_children(signal.SIGTERM)
            server.signal_children(signal.SIGCONT)
            if signum == signal.SIGQUIT:
                server.exit_now(abandon_children=True)
        elif signum == signal.SIGABRT:
            server.signal_children(signal.SIGKILL)
            server.exit_now()
        elif signum == signal.SIGUSR1 and reload is not None:
            try:
                server.reload(reload())
            except Fatal as error:
                log.warn(f"certificate reload failed, keeping the old ones: {error.message}")
            except Exception as error:  # whatever it is, the server goes on
                log.warn(f"certificate reload failed, keeping the old ones: {error!r}")
            else:
                log.info("certificates reloaded", level=2)


#: What each signal makes us do, in s6-tcpserverd's words where it has one.
_DOING: dict[int, str] = {
    signal.SIGTERM: "quitting",
    signal.SIGINT: "quitting",
    signal.SIGHUP: "sending SIGTERM and SIGCONT to all connections",
    signal.SIGQUIT: "sending SIGTERM and SIGCONT to all connections and quitting",
    signal.SIGABRT: "sending SIGKILL to all connections and quitting",
    signal.SIGUSR1: "reloading the certificates",
}


def _fork_workers(
    sockets: list[socket.socket], config: ServerConfig, reload: Callable[[], ssl.SSLContext] | None
) -> int:
    """One worker per socket; we stay as a supervisor that forwards signals
    and exits when every worker has."""
    log = config.log
    flush_stdio()
    pids: list[int] = []
    for sock in sockets:
        pid = os.fork()
        if pid == 0:  # the worker: no trio loop and no thread exists yet
            code = EXIT_SYSTEM
            try:
                for other in sockets:
                    if other is not sock:
                        other.close()
                code = _run_worker(sock, config, reload)
            except Fatal as error:
                log.fatal(error.message)
                code = error.exit_code
            except BaseException as error:
                log.fatal(f"worker failed: {error!r}")
            finally:
                flush_stdio()
                os._exit(code)
        pids.append(pid)
    for sock in sockets:
        sock.close()
    return _supervise(pids, log)


def _supervise(pids: list[int], log: Log) -> int:
    live = set(pids)
    interrupted = False

    def forward(signum: int, _frame: object) -> None:
        # Ctrl-C reaches the workers directly too (one process group), so
        # SIGINT is not passed on as itself, which could count twice: the
        # first becomes SIGTERM (stop), the next SIGABRT (stop at once).
        nonlocal interrupted
        if signum == signal.SIGINT:
            signum = signal.SIGABRT if interrupted else signal.SIGTERM
            interrupted = True
        for pid in list(live):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in HANDLED_SIGNALS:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    status = 0
    while live:
        try:
            pid, wait_status = os.waitpid(-1, 0)  # retried after a handler (PEP 475)
        except ChildProcessError:
            break
        if pid not in live:
            continue
        live.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code:
            log.warn(f"worker {pid} ended with status {code}")
            status = status or (code if code > 0 else EXIT_SYSTEM)
    return status
