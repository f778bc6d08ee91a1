"""Helpers for the end-to-end tests of the exec'ing wrappers (s6-tlsc,
s6-tlsd, s6-ucspitls[cd], s6-tlsclient, s6-tcpclient).

Every helper is bounded: a ``timeout`` on every wait, ``select`` on every
read from a child's pipe. Processes started here are killed on failure.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

TIMEOUT = 15.0  # generous per-wait bound for a 2-core machine under load

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PYTHON = sys.executable


def finish(
    proc: subprocess.Popen[bytes], timeout: float = TIMEOUT, input: bytes | None = None
) -> tuple[bytes, bytes]:
    """Wait for ``proc`` and for EOF on its pipes (so every process that
    inherited them — an engine child too — is gone). Kills on timeout."""
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:  # an engine child may still hold the pipes: bounded again
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            err = b"(pipes still held open by a descendant)"
        raise AssertionError(f"{proc.args!r} did not finish; stderr: {err!r}") from None
    return out or b"", err or b""


@contextlib.contextmanager
def reaped(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kill whatever is still running when the block is left."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.communicate(timeout=TIMEOUT)


def read_line_matching(stream: object, prefix: bytes, timeout: float = TIMEOUT) -> bytes:
    """Read lines of a child's pipe until one starts with ``prefix``."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            if line.startswith(prefix):
                return line
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            raise AssertionError(f"no line starting with {prefix!r} in {timeout}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"EOF before a line starting with {prefix!r}; got {buffer!r}")
        buffer += chunk


def parse_env(text: str) -> dict[str, str]:
    """``env`` output (one NAME=VALUE per line) as a dict."""
    env = {}
    for line in text.splitlines():
        name, eq, value = line.partition("=")
        if eq:
            env[name] = value
    return env


def sh(script: str, *args: str) -> list[str]:
    """A prog: ``sh -c script`` with positional args."""
    return ["sh", "-c", script, "sh", *args]


def tls_client(sock: socket.socket, cafile: Path, servername: str = "localhost") -> ssl.SSLSocket:
    """A blocking Python TLS client on a connected socket, bounded."""
    context = ssl.create_default_context(cafile=str(cafile))
    sock.settimeout(TIMEOUT)
    return context.wrap_socket(sock, server_hostname=servername)


def receive_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """Everything until EOF (a ragged EOF included)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ssl.SSLEOFError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def first_certificate_der(pem_path: Path) -> bytes:
    """DER of the first certificate in a PEM file."""
    text = pem_path.read_text()
    start = text.index("-----BEGIN CERTIFICATE-----")
    end = text.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[start:end])
