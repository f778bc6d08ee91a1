"""The super-server as a library: one Trio task tree serves every connection.

Theory of operation (docs/design.rst, "Process model"):

1. **Accept under the global limit.** Each accept loop takes a slot of a
   semaphore of ``max_conn`` *before* calling ``accept``: while every slot
   is taken nobody accepts, and new clients wait in the kernel's backlog
   (``-c``). A connection gives its slot back when its prog exits (as
   s6-tcpserverd does: a TLS tunnel still flushing does not hold it), or
   when it ends without a prog.
2. **Per-IP limit** (``-C``): a connection that would make more than
   ``max_per_ip`` from one address is closed at once and logged.
   ``TCPCONNNUM`` is the address's *other* connections (0 for its first).
3. **Access rules** (``-i`` directory, ``-x`` CDB), then the **PROXY
   header** (``-L``, which replaces the addresses in the environment), then
   the **banner** (``-B``); the rules lookup (in a thread: it reads files),
   name lookups and the PROXY wait are bounded by ``-t``. An ``exec`` rule
   replaces TLS and prog alike, as in the C chain where
   s6-tcpserver-access runs before s6-tlsd: its program gets the socket.
4. **TLS** (when ``config.context`` is set): the handshake under ``-K`` on
   the accepted socket itself (:func:`~trio_s6tls._engine.tls_over`), with
   the context current at that moment (a reload only affects new
   connections). A failed handshake ends that connection only: prog never
   starts.
5. **prog** runs with stdin/stdout on two pipes whose other ends form the
   local side of :func:`~trio_s6tls._engine.tunnel`. Without TLS the socket
   itself is prog's fds 0 and 1 (back in blocking mode). prog is started
   with ``posix_spawn`` from the loop itself: its vfork-style clone holds
   the loop until the exec (180 µs here), where handing it to a worker
   thread cost 300-500 µs of CPU per connection. SIGPIPE and SIGXFSZ are
   back at their defaults and the signal mask is empty; only a change of
   identity (``-u``/``-g``/``-G``) takes the slower ``Popen`` path.
6. **Every prog is reaped** (through a pidfd, or ``trio.Process.wait``);
   if the server itself is cancelled, remaining progs are killed, then
   reaped. Signals meant for every prog (SIGHUP...) also reach the ones
   still being spawned.
7. **Stopping** (:meth:`Server.stop`, SIGTERM): the listeners close, and so
   does every connection whose prog has not started yet — each runs in a
   cancel scope of its own until the moment prog is spawned — whatever it
   was waiting for (a handshake, a PROXY header, a lookup); the
   connections with a running prog end on their own.

Nothing in one connection waits on another: each runs in its own task, and
blocking work (name lookups, spawning) runs in threads. An unexpected
error costs its own connection only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import socket
import ssl
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from ._access import Access, Refused
from ._engine import establish, local_when_active, tls_over, tunnel
from ._env import apply_variables, is_tls_variable
from ._errors import EXIT_ENGINE, EXIT_SYSTEM, Fatal, describe_os_error
from ._fds import prog_pipes
from ._fdstreams import Parking
from ._handshake_info import describe_variables
from ._listen import bind as bind
from ._listen import linger, send_all
from ._listen import listener_from as listener_from
from ._log import Log
from ._spawn import ChildProcess, spawn_child
from ._tlsconfig import (
    TLSOptions,
)
from ._ucspi import canonical_ip, tcp_environment


@dataclass
class ConnectionRecord:
    """One ended connection, as :func:`serve` reports it to ``on_finished``."""

    env: dict[str, str]  # what prog was given ({} if prog never ran)
    prog_status: int | None  # prog's returncode (-N: killed by signal N), None if never run
    engine_status: int  # 0, or the TLS engine's exit code (98: handshake failure...);
    # 111 when prog could not be spawned
    remote: tuple[str, int]  # the peer as accepted (before any PROXY header)
    refused: str | None = None  # why the connection was closed before prog, if it was


@dataclass(frozen=True)
class ServerConfig:
    """Everything :func:`serve` needs; the programs build it from options.

    ``context`` is ``None`` for plain TCP (s6-tcpserver). A certificate
    reload replaces the running server's context
    (:meth:`Server.reload`): each connection uses the one current when its
    handshake starts.
    """

    argv: Sequence[str]
    context: ssl.SSLContext | None = None
    tls_options: TLSOptions = field(default_factory=TLSOptions)
    base_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    max_conn: int = 40
    max_per_ip: int = 40
    rules_dir: str | None = None  # -i
    rules_file: str | None = None  # -x: a CDB from s6-accessrules-cdb-from-fs
    access_timeout_ms: int = 0  # -t: lookups and PROXY header; 0 = no bound
    proxy: bool = False  # -L
    banner: bytes = b""  # -B
    remote_lookup: bool = True  # -H turns it off
    use_hosts: bool = False  # -h: /etc/hosts before the DNS
    paranoid: bool = False  # -p: a remote name must resolve back to the IP
    local_name: str | None = None  # -l
    strict_resolution: bool = False  # -w: a failed lookup refuses the client (-W: not)
    nodelay: bool = False  # -D
    # prog's identity, set at each spawn (needs root). The programs leave it
    # unset: the server process itself takes -u/-g/-G, and prog inherits it.
    uid: int | None = None
    gid: int | None = None
    groups: Sequence[int] | None = None
    keep_env: bool = False  # -Z: leave CERTFILE, KEYFILE... in prog's env
    report_resumption: bool = False  # export SSL_SESSION_RESUMED
    server_type: Callable[..., Server] | None = None  # a Server subclass (see _inline_server)
    log: Log = field(default_factory=lambda: Log("trio_s6tls"))

    @property
    def verbosity(self) -> int:
        return self.log.verbosity


# accept() errors about one connection (retry at once) or about resources
# (back off: a connection that ends will free some).
_TRANSIENT_ACCEPT_ERRORS = {
    errno.ECONNABORTED,
    errno.EPROTO,
    errno.EPERM,
    errno.ENETDOWN,
    errno.EHOSTUNREACH,
}
_RESOURCE_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class Server:
    """A running :func:`serve`: what the programs' signal handlers act on.
    Handed out by ``await nursery.start(serve, ...)``."""

    def __init__(
        self, config: ServerConfig, on_finished: Callable[[ConnectionRecord], None] | None
    ) -> None:
        self.config = config
        self.context = config.context  # the current one (see reload)
        self.on_finished = on_finished
        self.slots = trio.Semaphore(max(config.max_conn, 1))
        self.per_ip: Counter[str] = Counter()
        self.processes: set[ChildProcess] = set()
        # Signals for progs still being spawned (the Popen path waits for
        # its exec: prog may already run, and be seen by a client, before
        # we know it).
        self.spawning: dict[object, list[int]] = {}
        self.accept_scope = trio.CancelScope()
        self.cancel_scope = trio.CancelScope()
        self.access = Access(
            log=config.log,
            timeout_ms=config.access_timeout_ms,
            threads=config.max_conn,
            rules_dir=config.rules_dir,
            rules_file=config.rules_file,
            remote_lookup=config.remote_lookup,
            use_hosts=config.use_hosts,
            paranoid=config.paranoid,
            local_name=config.local_name,
            strict_resolution=config.strict_resolution,
        )
        self.parking = Parking()  # idle connections wait there (see local_when_active)
        # One cancel scope per connection whose prog has not started yet.
        self.waiting: set[trio.CancelScope] = set()
        self.stopping = False
        self.abandon_children = False
        self.addresses: list[tuple[str, int]] = []
        self.connections_served = 0

    @property
    def active(self) -> int:
        """The connections counted now (accepted, and their prog not yet exited)."""
        return sum(self.per_ip.values())

    def log_status(self) -> None:
        """s6-tcpserverd's ``status: N/MAXCONN`` line (-v)."""
        self.config.log.info(f"status: {self.active}/{self.config.max_conn}", level=2)

    def stop_accepting(self) -> None:
        """Close the listeners; :func:`serve` returns once every open
        connection has ended."""
        self.accept_scope.cancel()

    def stop(self) -> None:
        """SIGTERM: stop accepting, and close at once every connection whose
        prog has not started (idle clients, handshakes, PROXY headers);
        :func:`serve` returns when the connections with a running prog have
        ended."""
        self.stopping = True
        self.stop_accepting()
        for scope in list(self.waiting):
            scope.cancel()

    def signal_children(self, signum: int) -> None:
        """Send ``signum`` to every running prog, and to those being spawned
        as soon as they are."""
        for pending in self.spawning.values():
            pending.append(signum)
        for process in list(self.processes):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    def exit_now(self, *, abandon_children: bool = False) -> None:
        """End :func:`serve` at once. Running progs are killed and reaped,
        or with ``abandon_children`` left running (s6-tcpserver's SIGTERM:
        they own their sockets and outlive us)."""
        self.abandon_children = abandon_children
        self.cancel_scope.cancel()

    def reload(self, context: ssl.SSLContext) -> None:
        """New connections use ``context``; open ones keep theirs."""
        self.context = context

    # -- accepting -------------------------------------------------------

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        log = self.config.log
        while True:
            await self.slots.acquire()
            try:
                sock, _ = await listener.socket.accept()
            except OSError as error:
                self.slots.release()
                if error.errno in _TRANSIENT_ACCEPT_ERRORS:
                    continue
                if error.errno in _RESOURCE_ACCEPT_ERRORS:
                    log.warn(f"unable to accept: {describe_os_error(error)}")
                    await trio.sleep(0.1)  # back off until a connection ends and frees fds
                    continue
                raise
            except BaseException:
                self.slots.release()
                raise
            nursery.start_soon(self.connection, sock)

    # -- one connection --------------------------------------------------

    async def connection(self, sock: trio.socket.SocketType) -> None:
        config = self.config
        log = config.log
        try:
            remote_raw = sock.getpeername()
            local_raw = sock.getsockname()
        except OSError:  # reset before we looked at it
            sock.close()
            self.slots.release()
            return
        remote = (canonical_ip(remote_raw[0]), int(remote_raw[1]))
        local = (canonical_ip(local_raw[0]), int(local_raw[1]))
        ip = remote[0]
        others = self.per_ip[ip]  # TCPCONNNUM
        slot = _Slot(self, ip, remote[1])
        self.connections_served += 1
        record = ConnectionRecord({}, None, 0, remote)
        waiting = trio.CancelScope()  # until prog starts (see stop)
        self.waiting.add(waiting)
        if self.stopping:
            waiting.cancel()
        try:
            if others >= config.max_per_ip:
                # s6-tcpserverd's wording, with the count of the others
                log.info(f"reject {ip}_{remote[1]} count {others}/{config.max_per_ip}", level=1)
                record.refused = "per-ip limit"
                return
            log.info(f"allow? {ip} port {remote[1]} ({others} other connections)", level=3)
            with waiting:
                await self._serve_one(sock, local, remote, others, slot, record, waiting)
            if waiting.cancelled_caught:
                log.info(f"closing {ip} port {remote[1]}: the server is stopping", level=2)
                record.refused = "server stopping"
        except Refused as refusal:
            record.refused = str(refusal)
        except Fatal as error:
            log.warn(f"connection from {ip} port {remote[1]}: {error.message}")
            record.engine_status = error.exit_code
        except OSError as error:  # the client left during the banner, the PROXY header...
            detail = describe_os_error(error)
            log.info(f"connection from {ip} port {remote[1]}: {detail}", level=2)
            record.refused = f"network error: {detail}"
        except Exception as error:  # a bug must cost one connection, never the server
            log.warn(f"connection from {ip} port {remote[1]}: internal error: {error!r}")
            record.engine_status = EXIT_SYSTEM
        finally:
            if record.prog_status is not None:
                log.info(f"connection from {ip} port {remote[1]}: engine {record.engine_status}", 3)
            self.waiting.discard(waiting)
            sock.close()
            slot.free()
            if self.on_finished is not None:
                self.on_finished(record)

    async def _serve_one(
        self,
        sock: trio.socket.SocketType,
        local: tuple[str, int],
        remote: tuple[str, int],
        others: int,
        slot: _Slot,
        record: ConnectionRecord,
        waiting: trio.CancelScope,
    ) -> None:
        config = self.config
        argv = list(config.argv)
        rules_env: dict[str, str | None] = {}
        exec_rule = False
        if config.rules_dir is not None or config.rules_file is not None:
            decision = await self.access.rules(remote)
            if decision.argv:
                # C: s6-tcpserver-access execs it instead of s6-tlsd prog, so
                # it gets the socket and the environment s6-tlsd never cleaned
                argv, exec_rule = decision.argv, True
            rules_env = decision.env
        env = dict(config.base_env) if exec_rule else self._base_env()
        if config.proxy:
            header = await self.access.proxy_header(sock, remote)
            if header.source is not None and header.destination is not None:
                remote = (canonical_ip(header.source[0]), header.source[1])
                local = (canonical_ip(header.destination[0]), header.destination[1])
        remote_host, local_host = await self.access.names(local, remote)
        apply_variables(
            env,
            tcp_environment(
                local=local,
                remote=remote,
                local_host=local_host,
                remote_host=remote_host,
                other_connections=others,
            ),
        )
        apply_variables(env, rules_env)
        if config.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if config.banner:
            await send_all(sock, config.banner)
        if self.context is None or exec_rule:
            await self._run_plain(sock, argv, env, slot, record, waiting)
        else:
            await self._run_tls(sock, self.context, argv, env, slot, record, waiting)

    async def _prog_starting(self, waiting: trio.CancelScope) -> None:
        """From here on, stopping the server no longer closes this
        connection: it waits for its prog."""
        self.waiting.discard(waiting)
        await trio.lowlevel.checkpoint_if_cancelled()  # stopped just before: no prog

    def _base_env(self) -> dict[str, str]:
        config = self.config
        if config.context is None or config.keep_env:
            return dict(config.base_env)
        return {k: v for k, v in config.base_env.items() if not is_tls_variable(k)}

    async def _spawn(
        self, argv: list[str], env: dict[str, str], *, stdin: int, stdout: int
    ) -> ChildProcess:
        """Start prog: ``posix_spawn`` in the loop (see the module doc), or
        for a change of identity ``Popen``, which trio runs in a thread.
        prog may then run (and talk to its client) before we know its pid:
        signals for every prog that arrive meanwhile are kept for it."""
        config = self.config
        pending: list[int] = []
        ticket = object()
        self.spawning[ticket] = pending
        try:
            process: ChildProcess
            same_identity = config.uid is None and config.gid is None and config.groups is None
            if same_identity and hasattr(os, "pidfd_open"):
                # posix_spawn: a vfork-style clone, no Python in the child
                process = spawn_child(argv, env, stdin=stdin, stdout=stdout)
                await trio.lowlevel.checkpoint()
            else:
                process = await trio.lowlevel.open_process(
                    argv,
                    stdin=stdin,
                    stdout=stdout,
                    env=env,
                    user=config.uid,
                    group=config.gid,
                    extra_groups=None if config.groups is None else list(config.groups),
                    restore_signals=True,  # SIGPIPE back to the default in prog
                )
        except (OSError, subprocess.SubprocessError) as error:
            detail = describe_os_error(error) if isinstance(error, OSError) else str(error)
            raise Fatal(EXIT_SYSTEM, f"unable to spawn {shlex.join(argv)}: {detail}") from None
        finally:
            del self.spawning[ticket]
        self.processes.add(process)
        for signum in pending:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
        config.log.info(f"pid {process.pid} started: {shlex.join(argv)}", level=3)
        return process

    def _accepted(self, process: ChildProcess, slot: _Slot) -> None:
        """s6-tcpserverd's ``accept`` line, once prog runs."""
        count = f"{self.per_ip[slot.ip]}/{self.config.max_per_ip}"
        self.config.log.info(f"accept {slot.ip}_{slot.port} pid {process.pid} count {count}", 2)
        self.log_status()

    async def _reap(self, process: ChildProcess, slot: _Slot, record: ConnectionRecord) -> None:
        """Wait for prog; its end frees the connection's slot and is logged
        as s6-tcpserverd logs it (exit code, or the signal that killed it)."""
        status = record.prog_status = await process.wait()
        slot.free()
        how = f"signal {-status}" if status < 0 else f"exitcode {status}"
        count = f"{self.per_ip.get(slot.ip, 0)}/{self.config.max_per_ip}"
        self.config.log.info(f"end pid {process.pid} {how} count {count}", level=2)
        self.log_status()

    async def _settle(self, process: ChildProcess) -> None:
        """Make sure prog is reaped: on a normal end it already is; when we
        are cancelled it is killed first (unless children are abandoned)."""
        try:
            if process.returncode is None and not self.abandon_children:
                process.kill()
            if not self.abandon_children:
                with trio.CancelScope(shield=True):
                    await process.wait()
        finally:
            self.processes.discard(process)

    async def _run_plain(
        self,
        sock: trio.socket.SocketType,
        argv: list[str],
        env: dict[str, str],
        slot: _Slot,
        record: ConnectionRecord,
        waiting: trio.CancelScope,
    ) -> None:
        """s6-tcpserver: the socket itself is prog's stdin and stdout."""
        await self._prog_starting(waiting)
        raw = socket.socket(fileno=sock.detach())
        try:
            raw.setblocking(True)  # O_NONBLOCK is shared with prog's copy
            process = await self._spawn(argv, env, stdin=raw.fileno(), stdout=raw.fileno())
        finally:
            raw.close()
        record.env = env
        self._accepted(process, slot)
        try:
            await self._reap(process, slot, record)
        finally:
            await self._settle(process)

    async def _run_tls(
        self,
        sock: trio.socket.SocketType,
        context: ssl.SSLContext,
        argv: list[str],
        env: dict[str, str],
        slot: _Slot,
        record: ConnectionRecord,
        waiting: trio.CancelScope,
    ) -> None:
        config = self.config
        options = config.tls_options
        raw = socket.socket(fileno=sock.detach())
        try:
            tls = tls_over(raw, context, server_side=True)
        except (ssl.SSLError, ValueError, OSError) as error:
            raw.close()
            raise Fatal(EXIT_ENGINE, f"unable to set up the TLS engine: {error}") from None
        try:
            try:
                variables = await establish(
                    tls, options, server_side=True, report_resumption=config.report_resumption
                )
            except Fatal:
                if isinstance(tls.connection, socket.socket):
                    await linger(tls.connection)
                raise
            config.log.info(describe_variables(variables), level=3)
            apply_variables(env, variables)
            await self._prog_starting(waiting)
            to_prog_read, to_prog_write, from_prog_read, from_prog_write = prog_pipes()
            try:
                process = await self._spawn(argv, env, stdin=to_prog_read, stdout=from_prog_write)
            except BaseException:
                os.close(to_prog_write)
                os.close(from_prog_read)
                raise
            finally:
                os.close(to_prog_read)
                os.close(from_prog_write)
            record.env = env
            self._accepted(process, slot)
            try:
                pidfd = getattr(process, "pidfd", None)
                local = await local_when_active(
                    self.parking, tls, from_prog_read, to_prog_write, pidfd
                )
                async with trio.open_nursery() as reaper:
                    # prog's end frees the slot even while the tunnel flushes
                    reaper.start_soon(self._reap, process, slot, record)
                    try:
                        await tunnel(tls, local, options)
                    except Fatal as error:
                        config.log.warn(
                            f"connection from {record.remote[0]} port {record.remote[1]}:"
                            f" {error.message}"
                        )
                        record.engine_status = error.exit_code
                    finally:
                        with trio.CancelScope(shield=True):
                            await tls.aclose()
                            await local.aclose()
            finally:
                await self._settle(process)
        finally:
            with trio.CancelScope(shield=True):
                await tls.aclose()


class _Slot:
    """A connection's place under ``-c`` and in its IP's ``-C`` count, taken
    at accept and given back once (:meth:`free`)."""

    def __init__(self, server: Server, ip: str, port: int) -> None:
        self.server = server
        self.ip = ip
        self.port = port
        self.taken = True
        server.per_ip[ip] += 1

    def free(self) -> None:
        if not self.taken:
            return
        self.taken = False
        per_ip = self.server.per_ip
        per_ip[self.ip] -= 1
        if not per_ip[self.ip]:
            del per_ip[self.ip]
        self.server.slots.release()


async def serve(
    listeners: list[trio.SocketListener],
    config: ServerConfig,
    *,
    on_finished: Callable[[ConnectionRecord], None] | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve connections on ``listeners`` until :meth:`Server.stop_accepting`
    (then return once every open connection has ended), :meth:`Server.stop`
    (the same, but the connections whose prog has not started are closed at
    once) or cancellation (then
    every prog still running is killed and reaped, unless
    :meth:`Server.exit_now` was asked to abandon them).

    ``await nursery.start(serve, ...)`` returns the :class:`Server`; the
    listeners are already accepting (the kernel queues clients) by then.
    ``on_finished`` is called once per ended connection, refused ones
    included. The listeners are closed when accepting stops, either way.
    """
    server = (config.server_type or Server)(config, on_finished)
    for listener in listeners:
        name = listener.socket.getsockname()
        server.addresses.append((str(name[0]), int(name[1])))
    with server.cancel_scope:
        task_status.started(server)
        server.log_status()
        async with trio.open_nursery() as connections:
            try:
                with server.accept_scope:
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(server.accept_loop, listener, connections)
            finally:
                # Not accepting any more (stopped or cancelled): refuse
                # newcomers rather than let them wait in the backlog.
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()
