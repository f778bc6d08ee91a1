"""File-descriptor plumbing, below any event loop: place fds for a
program, make pipes and socketpairs out of its way, check what an
interface names.

Theory of operation:

* **fds are placed with :func:`install_fds`**: every source is first parked
  above every target (so a source that is also a target is not clobbered),
  then ``dup2``'d into place, then the parked copies and the originals are
  closed. Everything else we open is close-on-exec (PEP 446), so a program
  gets exactly the fds its interface names, plus whatever we inherited.
* **Our own fds live high** (:func:`lift_fd`, from :data:`_PARK_FLOOR` up),
  so that placing a program's fds, or pointing 0/1 at /dev/null, cannot
  overwrite them — even when we were started with 0 or 1 closed.
* O_NONBLOCK belongs to the open file description, not to the fd: a
  program is handed its fds back in blocking mode (:func:`set_blocking`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import sys
from collections.abc import Iterable, Mapping

from ._errors import EXIT_SYSTEM, Fatal, describe_os_error

#: Where parked fds go: above any fd number an interface names.
_PARK_FLOOR = 64


def flush_stdio() -> None:
    """Flush Python's stdout/stderr buffers (either may be None when the
    fd was closed at start-up, or broken: neither is our failure here)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


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


def prog_pipes() -> tuple[int, int, int, int]:
    """Pipes to and from prog; out of fds is a system failure (111), not
    the client's doing."""
    try:
        to_prog = os.pipe()
    except OSError as error:
        raise Fatal(EXIT_SYSTEM, f"unable to create pipes: {describe_os_error(error)}") from None
    try:
        from_prog = os.pipe()
    except OSError as error:
        os.close(to_prog[0])
        os.close(to_prog[1])
        raise Fatal(EXIT_SYSTEM, f"unable to create pipes: {describe_os_error(error)}") from None
    return to_prog[0], to_prog[1], from_prog[0], from_prog[1]


def _identity(fd: int) -> tuple[tuple[int, int], bool]:
    info = os.fstat(fd)
    return (info.st_dev, info.st_ino), stat.S_ISSOCK(info.st_mode)


def is_socket(fd: int) -> bool:
    return _identity(fd)[1]


def same_object(fd1: int, fd2: int) -> bool:
    """Both fds name one file, pipe or socket (for sockets: one description)."""
    return _identity(fd1)[0] == _identity(fd2)[0]


def stream_socket(fd: int) -> socket.socket | None:
    """A ``socket.socket`` owning ``fd`` if it is a stream socket, else None
    (and ``fd`` untouched)."""
    if not is_socket(fd):
        return None
    sock = socket.socket(fileno=fd)
    if sock.type == socket.SOCK_STREAM:
        return sock
    sock.detach()
    return None
