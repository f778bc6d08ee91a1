"""Trio streams over a pair of file descriptors, with a real half-close.

:class:`FdPairStream` reads from one fd and writes to another — the same
socket twice, two pipes, a terminal, any mix. ``send_eof()`` is
``shutdown(SHUT_WR)`` when the write fd is a socket, else it closes the write
fd. The stream owns both fds and closes them in ``aclose()``.

O_NONBLOCK belongs to the open file description, not to the fd, so two
objects over dups of one description would fight over it (one restoring
blocking mode under the other's feet). We therefore build exactly one trio
object per description: when both fds name the same object, one
``SocketStream`` (sockets) or one ``FdStream`` (anything else) serves both
directions, and the second fd is only closed at the end.

:class:`Parking` is for many tasks that each wait for any of a few fds:
one epoll set for all of them, watched by one task, so that a task needs
no helper task per fd while it waits.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
from collections.abc import Sequence

import trio

from ._fds import same_object, stream_socket


def enlarge_pipe(fd: int, size: int) -> None:
    """Grow a pipe's buffer to ``size`` bytes (64 KiB by default, so a 256 KiB
    write takes four wake-ups). Harmless where not possible.

    .. warning:: Linux charges pipe capacity to the user: past
       ``fs.pipe-user-pages-soft`` (64 MiB) every new pipe of that user gets
       one page. Only a program with few pipes (an engine for one
       connection) should ask for this, never a server with many.
    """
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        return
    try:
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < size:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (OSError, AttributeError):
        pass  # over the system limit, or not Linux


Half = trio.SocketStream | trio.lowlevel.FdStream


def fd_stream(fd: int, pipe_size: int | None = None) -> Half:
    """One trio stream over ``fd``, owning it: ``SocketStream`` for a stream
    socket (so ``send_eof`` is a real TCP half-close), else ``FdStream``
    (a pipe grown to ``pipe_size`` if given, see ``enlarge_pipe``)."""
    sock = stream_socket(fd)
    if sock is not None:
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    if pipe_size:
        enlarge_pipe(fd, pipe_size)
    return trio.lowlevel.FdStream(fd)


class FdPairStream(trio.abc.HalfCloseableStream):
    """Receive from ``read_fd``, send to ``write_fd``; owns both. Pipes are
    grown to ``pipe_size`` bytes if given (see ``enlarge_pipe``)."""

    def __init__(self, read_fd: int, write_fd: int, *, pipe_size: int | None = None) -> None:
        self._spare_fds: list[int] = []
        self._send_closed = False
        self._sending = False
        if read_fd == write_fd or same_object(read_fd, write_fd):
            self._receiver: Half = fd_stream(read_fd, pipe_size)
            self._sender: Half = self._receiver
            if write_fd != read_fd:
                self._spare_fds.append(write_fd)
        else:
            self._receiver = fd_stream(read_fd, pipe_size)
            self._sender = fd_stream(write_fd, pipe_size)

    @property
    def shared(self) -> bool:
        return self._sender is self._receiver

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("send side closed")
        self._sending = True  # no send_nowait() may pass a waiting send_all()
        try:
            await self._sender.send_all(data)
        finally:
            self._sending = False

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what a pipe or terminal takes at once, without trio's trip
        through the scheduler (9 us here: once per TLS record for a bulk
        receiver, whose loop waits for the network anyway). Returns the
        count written, 0 for a socket, a full pipe, or a :meth:`send_all`
        in progress; send the rest with :meth:`send_all`. Raises as it does."""
        sender = self._sender
        if self._send_closed:
            raise trio.ClosedResourceError("send side closed")
        if self._sending or not isinstance(sender, trio.lowlevel.FdStream):
            return 0
        try:
            return os.write(sender.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError as error:
            if error.errno == errno.EBADF:
                raise trio.ClosedResourceError("file was already closed") from None
            raise trio.BrokenResourceError from error

    async def wait_send_all_might_not_block(self) -> None:
        if self._send_closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("send side closed")
        await self._sender.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._receiver.receive_some(max_bytes)

    async def send_eof(self) -> None:
        """Half-close: TCP ``shutdown(SHUT_WR)``, or close the write fd."""
        if self._send_closed:
            await trio.lowlevel.checkpoint()
            return
        self._send_closed = True
        if isinstance(self._sender, trio.SocketStream):
            try:
                await self._sender.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        elif self.shared:
            await trio.lowlevel.checkpoint()  # a terminal cannot be half-closed
        else:
            await self._sender.aclose()
        self._close_spares()

    def _close_spares(self) -> None:
        while self._spare_fds:
            os.close(self._spare_fds.pop())

    async def aclose(self) -> None:
        """Close both fds, the receiving one first: a program writing to us
        then gets EPIPE before it can see EOF on what we wrote to it."""
        self._send_closed = True
        self._close_spares()
        try:
            await self._receiver.aclose()
        finally:
            if not self.shared:
                await self._sender.aclose()


class Parking:
    """Tasks parked until one of their fds is readable (data, EOF, hang-up,
    an error; a pidfd: its process ended), all on one epoll set that one
    system task watches. A parked task costs a few dict entries, where
    waiting on each fd in a task of its own costs a task, its stack of
    coroutine frames and a nursery's cancel scope: for an idle server
    connection (network, prog's output, prog's end), about half of what
    it costs the server process."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._parked: dict[int, tuple[trio.lowlevel.Task, Sequence[int]]] = {}

    async def wait_any_readable(self, fds: Sequence[int]) -> None:
        """Return once one of ``fds`` is readable; a checkpoint. OSError
        (out of fds or epoll watches) before waiting, with nothing parked."""
        now = select.poll()  # one syscall; a park and its wake-up cost ten
        for fd in fds:
            now.register(fd, select.POLLIN)
        if any(events & ~select.POLLNVAL for _, events in now.poll(0)):
            await trio.lowlevel.checkpoint()
            return
        epoll = self._epoll
        if epoll is None:
            epoll = self._epoll = select.epoll()
            trio.lowlevel.spawn_system_task(self._watch, epoll, name="trio_s6tls parking")
        task = trio.lowlevel.current_task()
        registered: list[int] = []
        try:
            for fd in fds:
                epoll.register(fd, select.EPOLLIN)
                registered.append(fd)
                self._parked[fd] = (task, registered)
        except BaseException:
            self._unpark(registered)
            raise

        def abort(_: object) -> trio.lowlevel.Abort:
            self._unpark(registered)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _unpark(self, fds: Sequence[int]) -> None:
        for fd in fds:
            if self._parked.pop(fd, None) is not None and self._epoll is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass

    async def _watch(self, epoll: select.epoll) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    parked = self._parked.get(fd)
                    if parked is not None:
                        task, fds = parked
                        self._unpark(fds)
                        trio.lowlevel.reschedule(task)
        finally:
            self._epoll = None
            epoll.close()
