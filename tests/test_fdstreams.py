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
