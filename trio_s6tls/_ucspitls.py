"""UCSPI-TLS: opportunistic TLS started by the application (STARTTLS).

Two halves of one protocol live here.

**The wrapper side** (s6-ucspitlsc, s6-ucspitlsd) — :func:`ucspitls_then_exec`:

1. Check the TLS configuration in the parent, so a bad key or CA fails at
   once (96/100) rather than in the middle of the application's session.
2. Create two pipes (engine → prog, prog → engine) and a Unix socketpair
   (the control channel), then fork — outside any event loop.
3. The parent execs prog at once (same pid) with ``SSLCTLFD``,
   ``SSLREADFD``, ``SSLWRITEFD`` naming its ends; the cleartext network fds
   stay where they were.
4. The child blocks on one byte of the control socket: EOF → prog declined,
   exit 0; ``y`` → run the engine; ``Y`` → run the engine and write the
   handshake notification back on the control socket (then close it);
   anything else → ``fatal: unrecognized command on control socket``, 100.

**The application side** — :class:`UcspiTLS`, for a program run under those
wrappers: :meth:`UcspiTLS.start_tls` (blocking) or
:meth:`UcspiTLS.start_tls_async` (Trio) sends the command, returns the
``SSL_*`` variables (``Y``), and from then on the application talks
cleartext to :attr:`UcspiTLS.read_fd` / :attr:`UcspiTLS.write_fd` instead of
its network fds. :meth:`UcspiTLS.decline` says "no TLS" by closing them all.

.. warning:: Send the command only after the protocol's "go ahead" reply
   (SMTP ``220 Ready to start TLS``) has been written, and stop using the
   cleartext network fds from then on: the engine reads and writes them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ._env import program_environment
from ._errors import EXIT_USAGE, Fatal
from ._fds import check_open, close_fds, high_pipe, high_socketpair, null_fds
from ._spawn import exec_program, fork_child

if TYPE_CHECKING:
    from ._fdstreams import FdPairStream
    from ._tlsconfig import TLSOptions

#: Commands on the control socket.
START = b"y"
START_AND_REPORT = b"Y"

#: The application's environment variables naming its UCSPI-TLS fds.
CONTROL_VARIABLE = "SSLCTLFD"
READ_VARIABLE = "SSLREADFD"
WRITE_VARIABLE = "SSLWRITEFD"

_MAX_BLOCK = 4096


# --- the wrapper side ------------------------------------------------------


def _await_command(
    control: socket.socket,
    *,
    name: str,
    options: TLSOptions,
    server_side: bool,
    network: tuple[int, int],
    local: tuple[int, int],
    prog_pid: int,
) -> int:
    """The child: one command byte decides what happens (see step 4). The
    log names prog's pid (the parent's, which execs prog), as C does."""
    from ._log import Log

    log = Log(name, options.verbosity)
    try:
        command = control.recv(1)
    except OSError:
        command = b""  # prog died with the socket in a bad state: declined
    if not command:
        log.info(f"pid {prog_pid} declined opportunistic TLS", level=2)
        return 0
    if command not in (START, START_AND_REPORT):
        log.fatal("unrecognized command on control socket")
        return EXIT_USAGE
    log.info(f"pid {prog_pid} accepted opportunistic TLS", level=2)
    notify_fd: int | None = None
    if command == START_AND_REPORT:
        notify_fd = control.detach()  # the engine writes the block, then closes it
    else:
        control.close()
    from ._iorun import run_engine_child  # trio: in the child only

    return run_engine_child(
        name=name,
        options=options,
        server_side=server_side,
        network=network,
        local=local,
        notify_fd=notify_fd,
    )


def ucspitls_then_exec(
    prog: Sequence[str],
    *,
    name: str,
    options: TLSOptions,
    server_side: bool,
    network: tuple[int, int],
    keep_tls: bool,
) -> int:
    """s6-ucspitlsc / s6-ucspitlsd: fork the waiting engine child and exec
    prog at once. Returns only by raising :class:`Fatal`."""
    from ._tlsconfig import context_from_environment

    check_open(network)
    context_from_environment(os.environ, options, server_side=server_side)
    to_prog_read, to_prog_write = high_pipe()  # engine → prog (cleartext)
    from_prog_read, from_prog_write = high_pipe()  # prog → engine (cleartext)
    control_prog, control_engine = high_socketpair()
    own_stdio = [fd for fd in (0, 1) if fd not in network]
    prog_pid = os.getpid()  # this process execs prog

    def engine() -> int:
        close_fds([to_prog_read, from_prog_write])
        control_prog.close()
        null_fds(own_stdio)  # do not hold the caller's stdin/stdout open
        return _await_command(
            control_engine,
            name=name,
            options=options,
            server_side=server_side,
            network=network,
            local=(from_prog_read, to_prog_write),
            prog_pid=prog_pid,
        )

    fork_child(engine)
    close_fds([from_prog_read, to_prog_write])
    control_engine.close()
    control_fd = control_prog.detach()
    for fd in (control_fd, to_prog_read, from_prog_write):
        os.set_inheritable(fd, True)
    env = program_environment(
        os.environ,
        keep_tls=keep_tls,
        updates={
            CONTROL_VARIABLE: str(control_fd),
            READ_VARIABLE: str(to_prog_read),
            WRITE_VARIABLE: str(from_prog_write),
        },
    )
    exec_program(prog, env, blocking_fds=(*network, control_fd, to_prog_read, from_prog_write))


# --- the application side --------------------------------------------------


class UcspiTLSError(Fatal):
    """UCSPI-TLS is unavailable, or the handshake failed (the engine said
    why on stderr). Exit code 111 if a program lets it through."""

    def __init__(self, message: str) -> None:
        super().__init__(111, message)


def _fd_variable(env: Mapping[str, str], variable: str) -> int:
    text = env.get(variable, "")
    if not text.isdigit():
        raise UcspiTLSError(f"{variable} is not set to a file descriptor")
    return int(text)


class UcspiTLS:
    """The application's end of UCSPI-TLS: the control socket and the two
    cleartext pipes that become its network once TLS is on.

    Build it with :meth:`from_environ`; then call exactly one of
    :meth:`start_tls`, :meth:`start_tls_async` or :meth:`decline`.
    """

    def __init__(self, control_fd: int, read_fd: int, write_fd: int) -> None:
        self.control_fd = control_fd
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.variables: dict[str, str | None] = {}
        self._used = False

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> UcspiTLS | None:
        """The fds named by ``SSLCTLFD``/``SSLREADFD``/``SSLWRITEFD``, or
        ``None`` when the program does not run under a UCSPI-TLS wrapper."""
        env = os.environ if env is None else env
        if CONTROL_VARIABLE not in env:
            return None
        return cls(
            _fd_variable(env, CONTROL_VARIABLE),
            _fd_variable(env, READ_VARIABLE),
            _fd_variable(env, WRITE_VARIABLE),
        )

    def _take(self) -> socket.socket:
        if self._used:
            raise UcspiTLSError("UCSPI-TLS was already started or declined")
        self._used = True
        return socket.socket(fileno=self.control_fd)

    @staticmethod
    def _decode(block: bytes) -> dict[str, str | None]:
        from ._handshake_info import decode_notification

        try:
            return decode_notification(block)
        except (ValueError, UnicodeDecodeError):
            raise UcspiTLSError("TLS handshake failed") from None

    def start_tls(self, *, report: bool = True) -> dict[str, str | None]:
        """Start TLS and return the ``SSL_*`` variables (blocking).

        With ``report`` (the ``Y`` command) this waits for the handshake and
        raises :class:`UcspiTLSError` if it failed; without it (``y``) it
        returns ``{}`` at once and a failed handshake shows as EOF on
        :attr:`read_fd`. Either way, use :attr:`read_fd`/:attr:`write_fd`
        from now on.
        """
        with self._take() as control:
            control.sendall(START_AND_REPORT if report else START)
            if not report:
                return {}
            chunks: list[bytes] = []
            while sum(map(len, chunks)) <= _MAX_BLOCK:
                chunk = control.recv(_MAX_BLOCK)
                if not chunk:
                    break
                chunks.append(chunk)
        self.variables = self._decode(b"".join(chunks))
        return self.variables

    async def start_tls_async(self, *, report: bool = True) -> FdPairStream:
        """Trio flavour of :meth:`start_tls`: returns a half-closeable stream
        over :attr:`read_fd`/:attr:`write_fd` (it owns them); the variables
        are in :attr:`variables`."""
        import trio

        from ._fdstreams import FdPairStream

        sock = trio.socket.from_stdlib_socket(self._take())
        with sock:
            await sock.send(START_AND_REPORT if report else START)
            if report:
                chunks: list[bytes] = []
                while sum(map(len, chunks)) <= _MAX_BLOCK:
                    chunk = await sock.recv(_MAX_BLOCK)
                    if not chunk:
                        break
                    chunks.append(chunk)
                self.variables = self._decode(b"".join(chunks))
        return FdPairStream(self.read_fd, self.write_fd)

    def decline(self) -> None:
        """No TLS: close the control socket (the engine child exits 0) and
        both pipes; the session goes on in cleartext."""
        if self._used:
            raise UcspiTLSError("UCSPI-TLS was already started or declined")
        self._used = True
        close_fds([self.control_fd, self.read_fd, self.write_fd])
