"""Process plumbing (layer 5): fork an engine child, move fds, exec prog.

Theory of operation — the wrappers (s6-tlsc, s6-tlsd, s6-ucspitlsc,
s6-ucspitlsd, s6-tlsclient) all follow one shape:

1. **Fork first, outside any event loop.** The parent never runs
   ``trio.run``; the child calls :func:`trio_s6tls._iorun.run_io`, which
   does. At fork time the process has one thread and no loop, so the child
   inherits a sane state (STYLE.md, "fork and Trio").
2. **The child never returns into the parent's code.** :func:`fork_child`
   runs the child's function and leaves with ``os._exit`` whatever happens,
   after flushing stdio, so no ``finally`` or ``atexit`` of the parent runs
   twice.
3. **fds are placed with :func:`install_fds`**: every source is first parked
   above every target (so a source that is also a target is not clobbered),
   then ``dup2``'d into place, then the parked copies and the originals are
   closed. Everything else we open is close-on-exec (PEP 446), so prog gets
   exactly the fds its interface names, plus whatever we inherited.
4. **Before exec** (:func:`exec_program`): the fds prog gets are made
   blocking (O_NONBLOCK belongs to the open file description), SIGPIPE and
   SIGXFSZ go back to SIG_DFL (Python ignores them, and an ignored signal
   stays ignored across exec), the signal mask is emptied, and the
   environment is the one :func:`program_environment` built.
5. **Who reaps the engine.** If the handshake fails, the wrapper waits for
   its engine child and exits with that child's code (prog never runs). If
   it succeeds, the wrapper becomes prog and the engine stays prog's child,
   as with the C tools: prog may reap it, and when prog exits first the
   engine is re-parented to init (or the nearest subreaper), which reaps
   it. The engine exits once neither direction can carry data, so it never
   outlives the connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn

from ._errors import EXIT_SYSTEM, Fatal, describe_os_error

if TYPE_CHECKING:
    from ._tlsconfig import TLSOptions

#: Where parked fds go: above any fd number an interface names.
_PARK_FLOOR = 64


def flush_stdio() -> None:
    """Flush Python's stdout/stderr buffers (either may be None when the
    fd was closed at start-up, or broken: neither is our failure here)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


def fork_child(child: Callable[[], int]) -> int:
    """Fork; in the child run ``child()`` and ``os._exit`` with its result
    (111 on any unexpected exception, after printing it). Returns the
    child's pid in the parent."""
    flush_stdio()
    try:
        pid = os.fork()
    except OSError as error:
        raise Fatal(EXIT_SYSTEM, f"unable to fork: {describe_os_error(error)}") from None
    if pid:
        return pid
    code = EXIT_SYSTEM
    try:
        code = child()
    except BaseException:  # the child must never unwind into the parent's code
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            flush_stdio()
        os._exit(code)


def wait_exit_code(pid: int) -> int:
    """Reap ``pid`` and return its exit code, the shell's way for a signal
    (128 + signal number)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:  # pragma: no cover — PEP 475 retries already
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def lift_fd(fd: int) -> int:
    """Move ``fd`` above every fd number an interface names (close-on-exec),
    so that placing prog's fds, or pointing 0/1 at /dev/null, cannot
    overwrite it — even when we were started with 0 or 1 closed."""
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _PARK_FLOOR)
    finally:
        os.close(fd)


def high_pipe() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are lifted (:func:`lift_fd`)."""
    read_end, write_end = os.pipe()
    return lift_fd(read_end), lift_fd(write_end)


def high_socketpair() -> tuple[socket.socket, socket.socket]:
    """A Unix stream socketpair whose ends are lifted (:func:`lift_fd`)."""

    def lifted(end: socket.socket) -> socket.socket:
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=lift_fd(end.detach()))

    first, second = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return lifted(first), lifted(second)


def install_fds(placement: Mapping[int, int]) -> None:
    """Make each ``target`` fd a copy of its ``source`` (``{target: source}``),
    inheritable, and close the sources that are not targets themselves."""
    floor = max([_PARK_FLOOR, *(t + 1 for t in placement)])
    parked = {
        target: fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, floor)
        for target, source in placement.items()
    }
    for source in set(placement.values()) - set(placement):
        with contextlib.suppress(OSError):
            os.close(source)
    for target, copy in parked.items():
        os.dup2(copy, target, inheritable=True)
        os.close(copy)


def close_fds(fds: Iterable[int], *, keep: Iterable[int] = ()) -> None:
    """Close each fd not in ``keep``, ignoring those already closed."""
    kept = set(keep)
    for fd in set(fds) - kept:
        with contextlib.suppress(OSError):
            os.close(fd)


def null_fds(fds: Iterable[int]) -> None:
    """Point each fd at /dev/null: a process that must not hold a caller's
    pipe open (which would delay its EOF) but may still write there."""
    fds = list(fds)
    if not fds:
        return
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in fds:
            if fd != null:
                os.dup2(null, fd, inheritable=True)
    finally:
        if null not in fds:
            os.close(null)


def set_blocking(fds: Iterable[int]) -> None:
    """Clear O_NONBLOCK on each open fd (prog expects blocking I/O)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.set_blocking(fd, True)


def reset_signals_for_exec() -> None:
    """Undo what Python did to signal state that survives exec."""
    for name in ("SIGPIPE", "SIGXFSZ"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def program_environment(
    base: Mapping[str, str],
    *,
    keep_tls: bool,
    updates: Mapping[str, str | None] = {},
) -> dict[str, str]:
    """prog's environment: ``base`` without the TLS configuration variables
    (unless ``keep_tls``, ``-Z``), then ``updates`` applied (``None`` unsets)."""
    from ._tlsconfig import is_tls_variable

    env = {name: value for name, value in base.items() if keep_tls or not is_tls_variable(name)}
    for name, value in updates.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def exec_program(
    argv: Sequence[str], env: Mapping[str, str], *, blocking_fds: Iterable[int] = (0, 1, 2)
) -> NoReturn:
    """Replace this process with ``argv`` (searched in ``PATH`` of ``env``).
    Raises :class:`Fatal` (111) with a one-line message if it cannot."""
    set_blocking(blocking_fds)
    reset_signals_for_exec()
    flush_stdio()
    try:
        os.execvpe(argv[0], list(argv), dict(env))
    except OSError as error:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        raise Fatal(EXIT_SYSTEM, f"unable to exec {argv[0]}: {describe_os_error(error)}") from None


def read_until_eof(fd: int, limit: int) -> bytes:
    """Blocking read of ``fd`` until EOF or ``limit`` bytes, then close it."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def check_open(fds: Iterable[int]) -> None:
    """Fail with 111 and a clear line if an fd the interface needs is closed."""
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError as error:
            raise Fatal(EXIT_SYSTEM, f"file descriptor {fd}: {describe_os_error(error)}") from None


def run_engine_child(
    *,
    name: str,
    options: TLSOptions,
    server_side: bool,
    network: tuple[int, int],
    local: tuple[int, int],
    notify_fd: int | None,
) -> int:
    """What a forked engine child does: the engine of s6-tls[cd]-io on these
    fds (``local`` = (read, write) of the cleartext side), as an exit code."""
    from ._iorun import FdPlan, run_io
    from ._log import Log

    log = Log(name, options.verbosity)
    plan = FdPlan(network[0], network[1], local[0], local[1], notify_fd)
    try:
        return run_io(plan, os.environ, options, server_side=server_side, log=log)
    except Fatal as error:
        log.fatal(error.message)
        return error.exit_code
    except OSError as error:
        log.fatal(describe_os_error(error))
        return EXIT_SYSTEM


def handshake_then_exec(
    prog: Sequence[str],
    *,
    name: str,
    options: TLSOptions,
    server_side: bool,
    network: tuple[int, int],
    prog_fds: tuple[int, int],
    keep_tls: bool,
    extra_env: Mapping[str, str | None] | None = None,
) -> int:
    """s6-tlsc / s6-tlsd: fork an engine child on the ``network`` fds, wait
    for its handshake notification, then exec ``prog`` in this process with
    ``prog_fds`` (read, write) as pipes to the engine. Returns only on
    failure: the engine's exit code (prog never started), or raises
    :class:`Fatal`."""
    check_open(network)
    to_prog_read, to_prog_write = high_pipe()  # engine → prog (cleartext)
    from_prog_read, from_prog_write = high_pipe()  # prog → engine (cleartext)
    notify_read, notify_write = high_pipe()
    own_stdio = [fd for fd in (0, 1) if fd not in network]

    def engine() -> int:
        close_fds([to_prog_read, from_prog_write, notify_read])
        # Do not hold the caller's stdin/stdout open past prog's lifetime.
        null_fds(own_stdio)
        return run_engine_child(
            name=name,
            options=options,
            server_side=server_side,
            network=network,
            local=(from_prog_read, to_prog_write),
            notify_fd=notify_write,
        )

    pid = fork_child(engine)
    close_fds([from_prog_read, to_prog_write, notify_write])
    # The network now belongs to the engine alone: prog's fds replace it.
    install_fds({prog_fds[0]: to_prog_read, prog_fds[1]: from_prog_write})
    leftovers = [fd for fd in set(network) if fd not in prog_fds]
    null_fds([fd for fd in leftovers if fd <= 2])
    close_fds([fd for fd in leftovers if fd > 2])

    from ._handshake_info import MAX_NOTIFICATION, decode_notification

    block = read_until_eof(notify_read, MAX_NOTIFICATION)
    try:
        variables = decode_notification(block)
    except (ValueError, UnicodeDecodeError):
        code = wait_exit_code(pid)  # the engine said why on stderr
        if code == 0:
            raise Fatal(EXIT_SYSTEM, "TLS engine exited without completing the handshake") from None
        return code
    updates: dict[str, str | None] = dict(variables)
    updates.update(extra_env or {})
    env = program_environment(os.environ, keep_tls=keep_tls, updates=updates)
    exec_program(prog, env, blocking_fds=prog_fds)
