"""Starting programs: exec in place, fork a child that never returns into
our code, or ``posix_spawn`` one that we watch through a pidfd.

Theory of operation:

1. **Fork only outside an event loop.** :func:`fork_child` is called before
   any ``trio.run`` (or in a process that has none): the child inherits one
   thread and no loop. It runs its function and leaves with ``os._exit``
   whatever happens, after flushing stdio, so no ``finally`` or ``atexit``
   of the parent's runs twice.
2. **What survives exec is reset**: Python ignores SIGPIPE and SIGXFSZ, and
   an ignored signal stays ignored across exec, so both go back to their
   defaults (:data:`RESET_SIGNALS`), and the signal mask is emptied — for
   :func:`exec_program` and :func:`spawn_child` alike.
3. **Spawned programs are waited for through a pidfd**
   (:class:`SpawnedChild`): no thread, no SIGCHLD handler, and a signal
   reaches the right process even if its pid has been recycled.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NoReturn, Protocol

from ._errors import EXIT_SYSTEM, Fatal, describe_os_error
from ._fds import flush_stdio, set_blocking


class ChildProcess(Protocol):
    """What the server needs from a running prog (``trio.Process`` has it)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def send_signal(self, signum: int) -> None: ...
    def kill(self) -> None: ...
    async def wait(self) -> int: ...


# Dispositions Python changes (SIGPIPE, SIGXFSZ ignored) survive exec: prog
# gets the defaults back. Caught signals are reset by exec itself.
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class SpawnedChild:
    """A prog started by :func:`spawn_child`, waited for through a pidfd:
    no thread, no SIGCHLD handler, and signals go to the right process even
    if its pid has been recycled (``pidfd_send_signal``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # out of fds: do not leave an unwatched child behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise

    @property
    def pidfd(self) -> int | None:
        """The pidfd, readable once the process has ended (None once reaped)."""
        return self._pidfd if self.returncode is None else None

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        import trio  # not at import time: the exec'ing wrappers never need it

        if self.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)
        else:
            await trio.lowlevel.checkpoint()
        return self.returncode


def spawn_child(argv: list[str], env: dict[str, str], *, stdin: int, stdout: int) -> SpawnedChild:
    """``posix_spawn`` prog with ``stdin``/``stdout`` as its fds 0/1 (stderr
    shared), default SIGPIPE and an empty signal mask. The executable is
    searched in the PATH of prog's environment, as ``execvpe`` would.
    Blocks only until the exec (glibc uses a vfork-style clone)."""
    path = argv[0]
    if "/" not in path:
        import shutil  # here: it costs a one-shot client 3 ms at start

        found = shutil.which(path, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        path = found
    pid = os.posix_spawn(
        path,
        argv,
        env,
        file_actions=[(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1)],
        setsigdef=RESET_SIGNALS,
        setsigmask=(),
    )
    return SpawnedChild(pid)


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


def reset_signals_for_exec() -> None:
    """Undo what Python did to signal state that survives exec."""
    for number in RESET_SIGNALS:
        signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


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
