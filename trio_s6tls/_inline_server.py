"""``s6-tcpserver … s6-tlsd [opts] prog…`` served in one process: the
s6-tlsd of each connection runs in the super-server as an engine task
instead of an interpreter start (docs/programs/s6-tcpserver.rst, "The
s6-tlsd chain in process").

Theory of operation — every connection takes the chain's steps:

1. **Up to the spawn of s6-tlsd, it is s6-tcpserver's connection**: limits,
   rules, names, the environment (the whole of the server's, TLS variables
   included, as s6-tcpserver passes it), the banner.
2. **Inline or the real chain, per connection.** The connection is served
   in process only when what s6-tlsd would see is what it was planned
   for: the same argv (an access rule's ``exec`` replaces it), the same
   variables that steer it (``CERTFILE``, ``CADIR``…, ``PATH``,
   ``PYTHON*``: an access rule's environment may change them) and a TLS
   context built from them. Otherwise the real s6-tlsd is spawned with
   the socket, exactly as without inlining, and it reports its own errors
   (a missing ``CERTFILE``…).
3. **The context follows the files**, as a fresh s6-tlsd per connection
   would: it is built on first use, and again when one of the files the
   environment names changes (inode, size or time stamps).
4. **s6-tlsd's engine**, :func:`~trio_s6tls._engine.run_engine`, with
   s6-tlsd's own log name and verbosity; prog gets s6-tlsd's environment
   (:func:`~trio_s6tls._env.program_environment`: TLS variables removed
   unless ``-Z``, the ``SSL_*`` variables set) and the two pipe ends as
   its stdin and stdout. The status of the connection is the chain's: the
   engine's exit code if the handshake failed (prog never runs), 111 if
   prog cannot be started, else prog's; prog's exit frees the connection's
   slot (``-c``, ``-C``) while the engine may still flush, as the chain's
   engine, left behind by its s6-tlsd, would.
5. **Signals as the chain sees them**: SIGTERM (and SIGQUIT) stop the
   server, which leaves every connection past step 1 to go on, as the
   s6-tlsd processes would; the server exits once they have ended. SIGHUP
   ends the connections still in their handshake (s6-tlsd dies of the
   SIGTERM) and passes SIGTERM and SIGCONT to every prog.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from ._engine import run_engine, tls_over
from ._env import is_tls_variable, program_environment
from ._errors import EXIT_ENGINE, EXIT_SYSTEM, Fatal
from ._fds import prog_pipes
from ._fdstreams import FdPairStream
from ._handshake_info import Variables
from ._log import Log
from ._server import ConnectionRecord, Server, ServerConfig, _Slot
from ._tlsconfig import TLSOptions, configure_resumption, server_context

#: Prefixes of the variables that change what an s6-tlsd would be or do.
_STEERING_PREFIXES = ("PYTHON", "TRIO_S6TLS_", "LD_", "OPENSSL_", "SSL_CERT_", "SSLKEYLOGFILE")


def steering_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that decide which s6-tlsd runs and its TLS setup."""
    return {
        name: value
        for name, value in env.items()
        if is_tls_variable(name) or name == "PATH" or name.startswith(_STEERING_PREFIXES)
    }


def _stamp(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def files_stamp(env: Mapping[str, str]) -> tuple[object, ...]:
    """What the files named by the environment look like now (a change
    means a fresh s6-tlsd would read something else)."""
    stamps: list[object] = []
    for name in sorted(env):
        if name in ("CERTFILE", "KEYFILE", "CAFILE") or name.startswith(("CERTFILE:", "KEYFILE:")):
            stamps.append((name, _stamp(env[name])))
    cadir = env.get("CADIR")
    if cadir:
        stamps.append(("CADIR", _stamp(cadir)))
        with contextlib.suppress(OSError):
            for entry in sorted(os.listdir(cadir)):
                stamps.append((entry, _stamp(os.path.join(cadir, entry))))
    keylog = env.get("SSLKEYLOGFILE")
    if keylog:  # written to by every handshake: only a new file counts
        found = _stamp(keylog)
        stamps.append(("SSLKEYLOGFILE", None if found is None else found[:2]))
    return tuple(stamps)


@dataclass
class InlineTlsd:
    """A planned ``s6-tlsd [opts] prog…`` of s6-tcpserver's command line
    (``chain_argv``), parsed with s6-tlsd's own option table."""

    chain_argv: tuple[str, ...]
    prog: tuple[str, ...]
    options: TLSOptions
    keep_tls: bool  # -Z
    steering: dict[str, str]  # steering_variables() of the server's environment
    log: Log  # s6-tlsd's name and verbosity
    _loaded: tuple[tuple[object, ...], ssl.SSLContext | None] | None = field(default=None)

    def context_for(self, argv: Sequence[str], env: Mapping[str, str]) -> ssl.SSLContext | None:
        """The context for a connection with this argv and environment, or
        None when only the real chain would be exact (rule 2)."""
        if tuple(argv) != self.chain_argv or steering_variables(env) != self.steering:
            return None
        stamp = files_stamp(env)
        if self._loaded is None or self._loaded[0] != stamp:
            context: ssl.SSLContext | None
            try:
                # s6-tlsd's context; no tickets: a fresh s6-tlsd could not
                # resume a session either.
                context = configure_resumption(server_context(env, self.options), False)
            except Exception:  # the real s6-tlsd will say what is wrong
                context = None
            self._loaded = (stamp, context)
        return self._loaded[1]

    def server(
        self, config: ServerConfig, on_finished: Callable[[ConnectionRecord], None] | None
    ) -> Server:
        return InlineTlsdServer(config, on_finished, self)


class InlineTlsdServer(Server):
    """:class:`~trio_s6tls._server.Server` whose prog is s6-tlsd, served in
    process where that is exact (module doc)."""

    def __init__(
        self,
        config: ServerConfig,
        on_finished: Callable[[ConnectionRecord], None] | None,
        inline: InlineTlsd,
    ) -> None:
        super().__init__(config, on_finished)
        self.inline = inline
        self.handshaking: set[trio.CancelScope] = set()  # "s6-tlsd" before its exec
        self.abandonable: set[trio.CancelScope] = set()  # real chains with a running prog

    def exit_now(self, *, abandon_children: bool = False) -> None:
        if not abandon_children:
            super().exit_now()
            return
        # The C-like SIGTERM: the server goes, every s6-tlsd and prog stays.
        # The real chains are left running; the inline ones are ours to
        # finish, and serve() returns when they have.
        self.abandon_children = True
        self.stop()
        for scope in list(self.abandonable):
            scope.cancel()

    def signal_children(self, signum: int) -> None:
        super().signal_children(signum)
        if signum in (signal.SIGTERM, signal.SIGKILL):
            for scope in list(self.handshaking):
                scope.cancel()

    async def _run_plain(
        self,
        sock: trio.socket.SocketType,
        argv: list[str],
        env: dict[str, str],
        slot: _Slot,
        record: ConnectionRecord,
        waiting: trio.CancelScope,
    ) -> None:
        context = self.inline.context_for(argv, env)
        if context is None:
            with self._abandonable():
                await super()._run_plain(sock, argv, env, slot, record, waiting)
            return
        await self._prog_starting(waiting)  # where the chain spawns s6-tlsd
        with trio.CancelScope() as handshaking:
            self.handshaking.add(handshaking)
            try:
                await self._run_inline(sock, context, env, slot, record, handshaking)
            finally:
                self.handshaking.discard(handshaking)
        if handshaking.cancelled_caught and record.prog_status is None:
            record.prog_status = -signal.SIGTERM  # how that s6-tlsd would have ended

    @contextlib.contextmanager
    def _abandonable(self) -> Iterator[None]:
        with trio.CancelScope() as scope:
            self.abandonable.add(scope)
            try:
                yield
            finally:
                self.abandonable.discard(scope)

    async def _run_inline(
        self,
        sock: trio.socket.SocketType,
        context: ssl.SSLContext,
        env: dict[str, str],
        slot: _Slot,
        record: ConnectionRecord,
        handshaking: trio.CancelScope,
    ) -> None:
        """What s6-tlsd and its engine child do, as one task (rule 4)."""
        inline = self.inline
        log = inline.log
        raw = socket.socket(fileno=sock.detach())
        try:
            tls = tls_over(raw, context, server_side=True)
        except (ssl.SSLError, ValueError, OSError) as error:
            raw.close()
            log.fatal(f"unable to set up the TLS engine: {error}")
            record.prog_status = EXIT_ENGINE
            slot.free()
            return
        to_prog_read, to_prog_write, from_prog_read, from_prog_write = prog_pipes()
        prog_ends = [to_prog_read, from_prog_write]
        local = FdPairStream(from_prog_read, to_prog_write)
        shaken: list[Variables] = []
        done = trio.Event()
        engine_status: list[int] = []

        def notify(variables: Variables) -> None:
            shaken.append(variables)
            done.set()

        async def engine() -> None:
            try:
                engine_status.append(
                    await run_engine(
                        tls, local, inline.options, server_side=True, notify=notify, log=log
                    )
                )
            finally:
                done.set()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine)
                await done.wait()
                if not shaken:  # prog never runs: the status is the engine's
                    code = engine_status[0] if engine_status else EXIT_SYSTEM
                    if code == 0:
                        log.fatal("TLS engine exited without completing the handshake")
                        code = EXIT_SYSTEM
                    record.prog_status = code
                    slot.free()
                    return
                self.handshaking.discard(handshaking)  # prog is about to run
                prog_env = program_environment(
                    env, keep_tls=inline.keep_tls, updates=dict(shaken[0])
                )
                try:
                    process = await self._spawn(
                        list(inline.prog), prog_env, stdin=to_prog_read, stdout=from_prog_write
                    )
                except Fatal as error:
                    detail = error.message.rpartition(": ")[2]
                    log.fatal(f"unable to exec {inline.prog[0]}: {detail}")
                    record.prog_status = EXIT_SYSTEM
                    slot.free()
                    return
                finally:
                    _close_all(prog_ends)
                record.env = prog_env
                self._accepted(process, slot)
                try:
                    await self._reap(process, slot, record)
                finally:
                    await self._settle(process)
        finally:
            _close_all(prog_ends)


def _close_all(fds: list[int]) -> None:
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())
