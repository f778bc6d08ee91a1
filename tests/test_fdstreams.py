"""The fd streams against trio's own conformance checkers, in the two shapes
the engine meets: one socket for both directions (one side with the same fd
twice, the other with a second fd for it), and a pair of pipes.

Rules: socketpairs and pipes only; trio's checkers bound their own waits.
"""

from __future__ import annotations

import fcntl
import os
import socket

import pytest
import trio
import trio.testing

from trio_s6tls import FdPairStream, fd_stream
from trio_s6tls._fdstreams import Parking


def over_socket(sock: socket.socket, second_fd: bool) -> FdPairStream:
    fd = sock.detach()
    return FdPairStream(fd, os.dup(fd) if second_fd else fd)


async def socket_pair_shape() -> tuple[FdPairStream, FdPairStream]:
    left, right = socket.socketpair()
    return over_socket(left, second_fd=False), over_socket(right, second_fd=True)


async def pipe_shape() -> tuple[FdPairStream, FdPairStream]:
    a_to_b_read, a_to_b_write = os.pipe()
    b_to_a_read, b_to_a_write = os.pipe()
    return FdPairStream(b_to_a_read, a_to_b_write), FdPairStream(a_to_b_read, b_to_a_write)


async def test_socket_shape_is_half_closeable() -> None:
    await trio.testing.check_half_closeable_stream(socket_pair_shape, None)


async def test_pipe_shape_is_half_closeable() -> None:
    await trio.testing.check_half_closeable_stream(pipe_shape, None)


async def one_way_pipe() -> tuple[trio.abc.SendStream, trio.abc.ReceiveStream]:
    read_fd, write_fd = os.pipe()
    return fd_stream(write_fd), fd_stream(read_fd)


async def test_pipe_is_a_one_way_stream() -> None:
    await trio.testing.check_one_way_stream(one_way_pipe, None)


async def test_send_eof_on_a_socket_with_a_second_fd_still_sends_fin() -> None:
    left, right = socket.socketpair()
    ours = over_socket(left, second_fd=True)
    with trio.fail_after(5):
        await ours.send_all(b"request")
        await ours.send_eof()
        assert right.recv(100) == b"request"
        assert right.recv(100) == b""  # FIN, although a second fd is open
        right.sendall(b"reply")
        assert await ours.receive_some(100) == b"reply"
    await ours.aclose()
    right.close()


@pytest.mark.parametrize("pipe_size", [None, 256 * 1024])
async def test_pipes_grow_only_when_asked(pipe_size: int | None) -> None:
    """Pipe capacity is charged per user: only one-connection engines ask."""
    read_fd, write_fd = os.pipe()
    default = fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)
    stream = FdPairStream(read_fd, write_fd, pipe_size=pipe_size)
    assert fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ) == (pipe_size or default)
    await stream.aclose()


async def park_until_written(parking: Parking, fds: list[int], write_fd: int) -> None:
    """Park on ``fds`` (none of them readable), then write to ``write_fd``'s
    pipe: returns once the park has woken."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(parking.wait_any_readable, fds)
        await trio.testing.wait_all_tasks_blocked()
        os.write(write_fd, b"x")


async def test_parked_tasks_wake_on_any_of_their_own_fds() -> None:
    """Each task parked on a few fds wakes once one of them is readable
    (data or EOF), not for another task's; its fds are let go then, so it
    can park on them again."""
    parking = Parking()
    pipes = [os.pipe() for _ in range(4)]
    woken: list[int] = []
    first_woken = trio.Event()

    async def park(index: int, fds: list[int]) -> None:
        await parking.wait_any_readable(fds)
        woken.append(index)
        first_woken.set()

    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(park, 0, [pipes[0][0], pipes[1][0]])
                nursery.start_soon(park, 1, [pipes[2][0], pipes[3][0]])
                await trio.testing.wait_all_tasks_blocked()
                assert woken == []
                os.write(pipes[1][1], b"x")  # task 0's second fd
                await first_woken.wait()
                await trio.testing.wait_all_tasks_blocked()
                assert woken == [0]
                os.close(pipes[2][1])  # EOF on task 1's first fd
            assert woken == [0, 1]
            os.read(pipes[1][0], 1)
            await park_until_written(parking, [pipes[0][0], pipes[1][0]], pipes[0][1])
            await parking.wait_any_readable([pipes[0][0]])  # readable already: at once
    finally:
        for read_fd, write_fd in pipes:
            os.close(read_fd)
            if write_fd != pipes[2][1]:
                os.close(write_fd)


async def test_a_cancelled_park_lets_its_fds_go() -> None:
    parking = Parking()
    read_fd, write_fd = os.pipe()
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(parking.wait_any_readable, [read_fd])
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            await park_until_written(parking, [read_fd], write_fd)  # registered anew
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_a_park_that_cannot_register_parks_nothing() -> None:
    """OSError (here a closed fd) before any wait; the fds it registered
    first are let go."""
    parking = Parking()
    read_fd, write_fd = os.pipe()
    closed_read, closed_write = os.pipe()
    os.close(closed_read)
    os.close(closed_write)
    try:
        with pytest.raises(OSError):
            await parking.wait_any_readable([read_fd, closed_read])
        with trio.fail_after(5):
            await park_until_written(parking, [read_fd], write_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_send_nowait_writes_what_the_pipe_takes_and_never_passes_send_all() -> None:
    a, b = await pipe_shape()
    pipe_bytes = fcntl.fcntl(a._sender.fileno(), fcntl.F_GETPIPE_SZ)  # type: ignore[union-attr]
    async with a, b:
        assert a.send_nowait(b"first") == 5
        assert await b.receive_some(100) == b"first"
        # a full pipe takes part, then nothing
        assert a.send_nowait(b"x" * (pipe_bytes + 10)) == pipe_bytes
        assert a.send_nowait(b"y") == 0
        got = bytearray()
        async with trio.open_nursery() as nursery:
            # send_all waits for room: send_nowait must not slip in before it
            nursery.start_soon(a.send_all, b"z" * 10)
            await trio.testing.wait_all_tasks_blocked()
            got += os.read(b._receiver.fileno(), 65536)  # type: ignore[union-attr]  # room now
            assert a.send_nowait(b"!") == 0  # before send_all's task had its turn
            with trio.fail_after(5):
                while len(got) < pipe_bytes + 10:
                    got += await b.receive_some(65536)
        assert got == b"x" * pipe_bytes + b"z" * 10
        await a.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            a.send_nowait(b"late")


async def test_send_nowait_to_a_closed_reader_is_a_broken_stream() -> None:
    read_fd, write_fd = os.pipe()
    stream = FdPairStream(os.open(os.devnull, os.O_RDONLY), write_fd)
    os.close(read_fd)
    async with stream:
        with pytest.raises(trio.BrokenResourceError):
            stream.send_nowait(b"nobody reads")


async def test_send_nowait_leaves_sockets_to_send_all() -> None:
    left, right = await socket_pair_shape()
    async with left, right:
        assert left.send_nowait(b"to a socket") == 0
