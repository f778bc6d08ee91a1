"""Helpers for the end-to-end engine tests: the installed s6-tlsc-io /
s6-tlsd-io as subprocesses with our pipes as their local side, and threads
that move bulk data so that nothing depends on pipe buffer sizes.

Every wait is bounded by TIMEOUT.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from conftest import Network, Pki, spawn

TIMEOUT = 30
MiB = 1 << 20


def one_line(stderr: bytes, prog: str, kind: str = "fatal") -> str:
    """stderr must be exactly one ``PROG: kind: ...`` line, no traceback."""
    text = stderr.decode()
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith(f"{prog}: {kind}: "), text
    return lines[0]


def wait_for(condition: Callable[[], bool]) -> None:
    """Poll a condition another thread makes true, within TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


class Sink(threading.Thread):
    """Read an fd to EOF in the background, hashing (or keeping) the bytes."""

    def __init__(self, fd: int, keep: bool = False) -> None:
        super().__init__(daemon=True)
        self.fd, self.keep = fd, keep
        self.hash, self.count, self.data = hashlib.sha256(), 0, bytearray()
        self.start()

    def run(self) -> None:
        with open(self.fd, "rb", buffering=0) as file:
            while chunk := file.read(MiB):
                self.hash.update(chunk)
                self.count += len(chunk)
                if self.keep:
                    self.data += chunk

    def result(self) -> tuple[int, str]:
        self.join(TIMEOUT)
        assert not self.is_alive(), "reader did not see EOF"
        return self.count, self.hash.hexdigest()


class Source(threading.Thread):
    """Write bytes to an fd in the background, then close it (EOF)."""

    def __init__(self, fd: int, data: bytes) -> None:
        super().__init__(daemon=True)
        self.fd, self.data = fd, data
        self.start()

    def run(self) -> None:
        with open(self.fd, "wb", buffering=0) as file:
            try:
                file.write(self.data)
            except BrokenPipeError:
                pass


@dataclass
class Engine:
    """A running engine and our ends of its local (cleartext) side."""

    proc: subprocess.Popen[bytes]
    to_app: int  # we write here: what the engine sends to the network
    from_app: int  # we read here: what the engine received from the network

    def finish(self) -> tuple[int, bytes]:
        _, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, err


def start_engine(
    prog: str,
    args: list[str],
    net_read: int,
    net_write: int,
    env: dict[str, str],
    extra: dict[int, int] | None = None,
) -> Engine:
    """s6-tlsd-io (network on 0/1, local on 3/4) or s6-tlsc-io (local on 0/1,
    network on 6/7), with our pipes as its local side."""
    local_in_r, local_in_w = os.pipe()
    local_out_r, local_out_w = os.pipe()
    if prog == "s6-tlsd-io":
        operands, fds = ["3", "4"], {0: net_read, 1: net_write, 3: local_in_r, 4: local_out_w}
    else:
        operands, fds = ["6", "7"], {0: local_in_r, 1: local_out_w, 6: net_read, 7: net_write}
    proc = spawn([prog, *args, *operands], {**fds, **(extra or {})}, env)
    os.close(local_in_r)
    os.close(local_out_w)
    return Engine(proc, local_in_w, local_out_r)


start_server = functools.partial(start_engine, "s6-tlsd-io")
start_client = functools.partial(start_engine, "s6-tlsc-io")


def start_pair(
    pki: Pki,
    network: Network,
    client_args: list[str],
    server_args: list[str],
    env: dict[str, str] | None = None,
) -> tuple[Engine, Engine]:
    env = env or pki.env()
    (cr, cw), (sr, sw) = network
    server = start_server(server_args, sr, sw, env)
    client = start_client(client_args, cr, cw, env)
    for fd in {cr, cw, sr, sw}:
        os.close(fd)
    return client, server


def accept_one(listener: socket.socket) -> socket.socket:
    listener.settimeout(TIMEOUT)
    accepted, _ = listener.accept()
    return accepted


def read_all(fd: int) -> bytes:
    with open(fd, "rb", buffering=0) as file:
        return file.read()


# -- close semantics seen by a peer -----------------------------------------------


def tls_client(
    pki: Pki, port: int, *, cert: bool = False, servername: str | None = "localhost"
) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if servername is None:
        context.check_hostname = False
    if cert:
        context.load_cert_chain(str(pki.client_pem))
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return context.wrap_socket(raw, server_hostname=servername, suppress_ragged_eofs=False)


def serve_one(
    listener: socket.socket,
    args: list[str],
    env: dict[str, str],
    extra: dict[int, int] | None = None,
) -> Engine:
    """s6-tlsd-io on the next connection to ``listener``."""
    accepted = accept_one(listener)
    try:
        return start_server(args, accepted.fileno(), accepted.fileno(), env, extra)
    finally:
        accepted.close()


def connect_and_serve(
    pki: Pki,
    listener: socket.socket,
    args: list[str],
    env: dict[str, str] | None = None,
    extra: dict[int, int] | None = None,
    **client: object,
) -> tuple[ssl.SSLSocket, Engine]:
    """A Python TLS client and an s6-tlsd-io for it (handshake completed)."""
    port = listener.getsockname()[1]
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.update(sock=tls_client(pki, port, **client)))  # type: ignore[arg-type]
    thread.start()
    engine = serve_one(listener, args, env or pki.env(), extra)
    thread.join(TIMEOUT)
    return result["sock"], engine  # type: ignore[return-value]


def openssl_port(s_server: subprocess.Popen[bytes]) -> int:
    """The port from s_server's ``ACCEPT 127.0.0.1:PORT`` line."""
    assert s_server.stdout is not None
    for _ in range(5):
        found = re.match(rb"ACCEPT .*:(\d+)$", s_server.stdout.readline().strip())
        if found:
            return int(found.group(1))
    raise AssertionError("openssl s_server did not say where it listens")
