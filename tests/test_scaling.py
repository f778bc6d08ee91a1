"""docs/scaling.rst, run as written: HAProxy in TCP mode with
``send-proxy-v2`` (the page's own ``docs/examples/haproxy.cfg``, only its
ports changed) in front of two ``s6-tlsserver -L``; TLS clients through
HAProxy reach both, and each ``prog`` sees the client's real address.

HAProxy is the distribution's package (``.ci/run`` installs it): without it
the test skips, except under ``CI=true``, where it fails. HAProxy runs in the
foreground (``-db``) in master-worker mode (``-Ws``), which says READY=1 on
``$NOTIFY_SOCKET`` once it listens: the test waits for that datagram, with a
bound, and for nothing else. Every wait is bounded; every process is reaped.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import trustme

from trio_s6tls import is_tls_variable
from trio_s6tls.testing import LoopbackPKI

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "docs" / "examples" / "haproxy.cfg"
PAGE = REPO / "docs" / "scaling.rst"
TLSSERVER = Path(sys.executable).parent / "s6-tlsserver"
TIMEOUT = 30.0  # per wait, for a loaded 2-core machine
CLIENTS = 4  # round robin over two backends: each serves two

#: The addresses in the shown configuration, which the test replaces.
FRONTEND = "127.0.0.1:8443"
BACKENDS = ("127.0.0.1:4431", "127.0.0.1:4432")

#: prog: which backend served, and the client address it was given.
PROG = [
    "sh",
    "-c",
    'echo "backend=$1 ip=$TCPREMOTEIP port=$TCPREMOTEPORT local=$TCPLOCALIP:$TCPLOCALPORT"',
    "sh",
]


def require_haproxy() -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    path = shutil.which("haproxy", path=search)
    if path is None:
        reason = "haproxy is not installed (apt-get install haproxy)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def finish(proc: subprocess.Popen[bytes], *, stop: bool = True) -> bytes:
    """Stop ``proc`` (SIGTERM, then SIGKILL after the bound), reap it, and
    return its stderr."""
    if stop and proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=TIMEOUT)
    return err or b""


def read_port(proc: subprocess.Popen[bytes]) -> int:
    """The port ``s6-tlsserver -1`` prints once it listens (bounded)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + TIMEOUT
    data = b""
    while b"\n" not in data:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"s6-tlsserver not listening after {TIMEOUT}s"
        chunk = os.read(fd, 64)
        assert chunk, "s6-tlsserver exited before listening"
        data += chunk
    return int(data.split(b"\n", 1)[0])


@contextlib.contextmanager
def backend(number: int, env: Mapping[str, str]) -> Iterator[int]:
    """``s6-tlsserver -1 -L 127.0.0.1 0 prog``; yields its port."""
    proc = subprocess.Popen(
        [str(TLSSERVER), "-1", "-L", "127.0.0.1", "0", *PROG, str(number)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield read_port(proc)
    finally:
        sys.stderr.write(finish(proc).decode(errors="replace"))  # shown on failure


@contextlib.contextmanager
def haproxy(config: Path, notify: Path) -> Iterator[None]:
    """HAProxy in the foreground, once it said READY=1 (bounded)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ready:
        ready.bind(str(notify))
        proc = subprocess.Popen(
            [require_haproxy(), "-Ws", "-db", "-f", str(config)],
            env={**os.environ, "NOTIFY_SOCKET": str(notify)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        exited = os.pidfd_open(proc.pid)
        try:
            deadline = time.monotonic() + TIMEOUT
            said = b""
            while b"READY=1" not in said.split(b"\n"):
                remaining = max(deadline - time.monotonic(), 0)
                readable, _, _ = select.select([ready, exited], [], [], remaining)
                assert readable, f"haproxy not ready after {TIMEOUT}s"
                if ready in readable:
                    said = ready.recv(4096)
                else:
                    err = finish(proc, stop=False).decode(errors="replace")
                    raise AssertionError(f"haproxy exited ({proc.returncode}): {err}")
            yield
        finally:
            os.close(exited)
            sys.stderr.write(finish(proc).decode(errors="replace"))


def tls_exchange(context: ssl.SSLContext, port: int) -> tuple[int, str]:
    """One client through HAProxy: its own source port, and what prog sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        source_port: int = sock.getsockname()[1]
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    return source_port, data.decode()


def test_the_page_includes_the_config() -> None:
    assert ".. literalinclude:: examples/haproxy.cfg" in PAGE.read_text()


def test_haproxy_with_send_proxy_v2_in_front_of_two_servers(tmp_path: Path) -> None:
    pki = LoopbackPKI(trustme.CA(), tmp_path / "pki")
    env = {k: v for k, v in os.environ.items() if not is_tls_variable(k)}
    env.update(pki.server_env)
    text = CONFIG.read_text()
    for address in (FRONTEND, *BACKENDS):
        assert text.count(address) == 1, f"{CONFIG.name}: {address} not there exactly once"
    client_context = ssl.create_default_context(cafile=str(pki.ca_file))
    frontend = free_port()
    with backend(1, env) as port1, backend(2, env) as port2:
        for shown, port in zip((FRONTEND, *BACKENDS), (frontend, port1, port2), strict=True):
            text = text.replace(shown, f"127.0.0.1:{port}")
        config = tmp_path / "haproxy.cfg"
        config.write_text(text)
        with haproxy(config, tmp_path / "notify"):
            seen = [tls_exchange(client_context, frontend) for _ in range(CLIENTS)]
    served = set()
    for source_port, line in seen:
        fields = dict(field.split("=", 1) for field in line.split())
        served.add(fields["backend"])
        assert fields["ip"] == "127.0.0.1", line
        assert fields["port"] == str(source_port), f"not the client's port {source_port}: {line}"
        assert fields["local"] == f"127.0.0.1:{frontend}", line
    assert served == {"1", "2"}, seen
