"""Shared fixtures and helpers.

Rules for every test module: loopback only (127.0.0.1 / ::1), port 0, a
bound on every wait, no sleep standing in for a condition. End-to-end tests
run the installed console scripts (next to ``sys.executable``).
"""

from __future__ import annotations

import fcntl
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

BIN = Path(sys.executable).parent

_spawned: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """A failing test must not leave its programs (and their pipes) behind
    to turn the next test red with a ResourceWarning."""
    yield
    while _spawned:
        proc = _spawned.pop()
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass


def program(name: str) -> str:
    """Path of an installed console script; fails loudly if missing."""
    path = BIN / name
    assert path.exists(), f"{name} is not installed next to {sys.executable}"
    return str(path)


def spawn(
    argv: list[str],
    fds: Mapping[int, int],
    env: Mapping[str, str] | None = None,
    **kwargs: object,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with ``fds`` mapping child fd → our fd (e.g. ``{0: sock,
    1: sock, 6: pipe}``). Our other fds are close-on-exec (PEP 446), so the
    child gets exactly these plus stderr."""
    mapping = dict(fds)

    def arrange() -> None:
        # Park every source above the targets first, so that a source number
        # that is also a target is not clobbered by an earlier dup2.
        parked = {target: fcntl.fcntl(src, fcntl.F_DUPFD, 300) for target, src in mapping.items()}
        for target, temporary in parked.items():
            os.dup2(temporary, target)
        for temporary in parked.values():
            os.close(temporary)

    argv = [
        program(argv[0]) if "/" not in argv[0] and (BIN / argv[0]).exists() else argv[0],
        *argv[1:],
    ]
    proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
        argv,
        preexec_fn=arrange,
        close_fds=False,
        env=dict(os.environ if env is None else env),
        stderr=kwargs.pop("stderr", subprocess.PIPE),
        **kwargs,
    )
    _spawned.append(proc)
    return proc


@dataclass(frozen=True)
class Pki:
    """Certificates on disk for the programs' environment variables."""

    dir: Path
    ca: trustme.CA
    ca_file: Path  # PEM of the CA
    server_pem: Path  # chain + key for localhost, 127.0.0.1, ::1
    client_pem: Path  # chain + key, a client certificate from the same CA
    client_der: bytes  # the client's end-entity certificate

    @property
    def client_cert_env(self) -> dict[str, str]:
        """CERTFILE/KEYFILE for a client that sends its certificate (-y)."""
        return {"CERTFILE": str(self.client_pem), "KEYFILE": str(self.client_pem)}

    @property
    def server_env(self) -> dict[str, str]:
        return {"CERTFILE": str(self.server_pem), "KEYFILE": str(self.server_pem)}

    @property
    def client_env(self) -> dict[str, str]:
        return {"CAFILE": str(self.ca_file)}

    def env(self, **extra: str) -> dict[str, str]:
        """The current environment plus server and client TLS variables."""
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in ("CADIR", "CAFILE", "CERTFILE", "KEYFILE", "TLS_UID", "TLS_GID")
        }
        return {**base, **self.server_env, **self.client_env, **extra}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(organization_name="trio_s6tls tests")
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ca.issue_cert("localhost", "127.0.0.1", "::1", common_name="localhost")
    server_pem = directory / "server.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    client = ca.issue_cert(
        "client.example",
        common_name="test client",
        organization_name="Clients, Inc.",
        organization_unit_name="QA",
    )
    client_pem = directory / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    client_der = ssl.PEM_cert_to_DER_cert(client.cert_chain_pems[0].bytes().decode())
    return Pki(directory, ca, ca_file, server_pem, client_pem, client_der)


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair (client side, server side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


#: (client read, client write), (server read, server write)
Network = tuple[tuple[int, int], tuple[int, int]]


@pytest.fixture(params=["tcp", "pipes"])
def network(request: pytest.FixtureRequest) -> Iterator[Network]:
    """(client read, client write), (server read, server write); the fds are
    handed over to the engines (start_pair closes our copies: an EOF on a
    pipe needs every write end closed)."""
    if request.param == "tcp":
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname()[:2])
            server, _ = listener.accept()
        yield (client.detach(),) * 2, (server.detach(),) * 2  # type: ignore[misc]
    else:
        c2s_r, c2s_w = os.pipe()
        s2c_r, s2c_w = os.pipe()
        yield (s2c_r, c2s_w), (c2s_r, s2c_w)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(30)
        yield sock
