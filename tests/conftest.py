"""The fixtures every test module may use; the helpers are in support.py.

Rules for every test module: loopback only (127.0.0.1 / ::1), port 0, a
bound on every wait, which waits on the event itself (never a sleep and a
check). End-to-end tests run the installed console scripts (next to
``sys.executable``). Whatever a fixture opens, it closes in ``finally``:
a failing test must not leave a socket or a process behind to turn the
next one red (a ResourceWarning is an error here).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import pytest
import trustme
from c_tools import CPki, Tools, make_pki, require_c_tools
from support import ClientCert, Network, issue_client_cert, reap_spawned

from trio_s6tls.testing import LoopbackPKI

# Name lookups go to the DNS as C's do (s6-dns: $DNSCACHEIP, else
# /etc/resolv.conf): no server listens on 127.0.0.2, so every lookup a
# test's programs make fails at once, the same way on every machine.
os.environ["DNSCACHEIP"] = "127.0.0.2"


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """A failing test must not leave its programs (and their pipes) behind
    to turn the next test red with a ResourceWarning."""
    try:
        yield
    finally:
        reap_spawned()


@pytest.fixture
def resources() -> Iterator[contextlib.ExitStack]:
    """``resources.enter_context(sock)``: closed when the test ends, even when
    it fails (the traceback would otherwise keep the socket alive into the
    next test, where its ResourceWarning would fail that one)."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LoopbackPKI:
    """A CA, a server certificate for localhost, 127.0.0.1 and ::1, and a
    client certificate, on disk (see :class:`trio_s6tls.testing.LoopbackPKI`)."""
    ca = trustme.CA(organization_name="trio_s6tls tests")
    return LoopbackPKI(ca, tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def client_cert(pki: LoopbackPKI, tmp_path_factory: pytest.TempPathFactory) -> ClientCert:
    """A client certificate from ``pki.ca`` with a subject the tests spell
    out: ``O=Clients, Inc., OU=QA, CN=test client``."""
    path = tmp_path_factory.mktemp("client-cert") / "client.pem"
    return issue_client_cert(pki.ca, path, "test client", organization="Clients, Inc.", unit="QA")


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair (client side, server side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        try:
            server, _ = listener.accept()
        except BaseException:
            client.close()
            raise
    try:
        yield client, server
    finally:
        client.close()
        server.close()


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


# -- the C tools (tests/c_tools.py) -----------------------------------------------------


@pytest.fixture(scope="session")
def c_tools() -> Tools:
    """skarnet's C s6-networking: skips without them (fails under CI=true)."""
    return require_c_tools()


@pytest.fixture(scope="session")
def c_pki(tmp_path_factory: pytest.TempPathFactory) -> CPki:
    """Certificates that BearSSL and OpenSSL both accept."""
    return make_pki(tmp_path_factory.mktemp("c-pki"))
