"""The super-servers under faults of their surroundings: a broken stderr, a
hostile rules directory, clients that never start, a stop request, and the
identity the server runs as.

Rules: the installed programs as subprocesses, loopback only, port 0 and
the ``-1`` readiness line; every wait is bounded and waits on the event (a
socket read with a timeout, a line on the server's stderr, a process exit
with a timeout), never a sleep; the bounds are generous ("within 5 s") for
a loaded 2-core machine. Sockets a test holds are closed by ``resources``. The
identity tests need root (as in CI) and read ``/proc/PID/status`` of the
server and of prog.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    client_context,
    closed_by_server,
    half_close,
    program,
    read_all,
    running_server,
    tls_env,
)

from trio_s6tls.testing import LoopbackPKI

BOUND = 5.0  # "within 5 s": what a stopped or refused client may wait, at most
STARTUP = 20.0  # a program's start, on a loaded machine
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="identity changes need root")


def connect(port: int, source: str | None = None) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", port), timeout=BOUND, source_address=(source, 0) if source else None
    )


def garbage(port: int) -> None:
    """A client that sends no TLS at all: one handshake failure, logged."""
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert closed_by_server(sock, BOUND)


def echo(tls: ssl.SSLSocket, data: bytes) -> bytes:
    tls.settimeout(BOUND)
    tls.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = tls.recv(len(data) - len(got))
        if not chunk:
            break
        got += chunk
    return got


def tls_connect(port: int, pki: LoopbackPKI, preamble: bytes = b"") -> ssl.SSLSocket:
    sock = connect(port)
    if preamble:
        sock.sendall(preamble)
    return client_context(pki).wrap_socket(sock, server_hostname="localhost")


def exchange(port: int, pki: LoopbackPKI, data: bytes) -> bytes:
    with tls_connect(port, pki) as tls:
        tls.sendall(data)
        half_close(tls)
        return read_all(tls)


# -- 1. a broken stderr is never fatal -------------------------------------------


@pytest.mark.parametrize("broken", ["closed", "reader gone"])
def test_broken_stderr_never_ends_the_tls_server(pki: LoopbackPKI, broken: str) -> None:
    """Every failed handshake is a warning; with stderr closed or a pipe
    nobody reads, the warnings are lost, not the server."""
    argv = ["s6-tlsserver", "-H", "127.0.0.1", "0", "cat"]
    with running_server(argv, tls_env(pki), stderr=broken) as srv:
        for _ in range(3):
            garbage(srv.port)
        assert exchange(srv.port, pki, b"still serving") == b"still serving"
        assert srv.process.poll() is None
        srv.process.send_signal(signal.SIGTERM)
        assert srv.exits_within(BOUND) == 0


def test_broken_stderr_never_ends_the_tcp_server(pki: LoopbackPKI) -> None:
    """s6-tcpserver -v logs every prog it starts; the lines are lost, the
    connections are served."""
    argv = ["s6-tcpserver", "-v", "-H", "127.0.0.1", "0", "sh", "-c", "echo served"]
    with running_server(argv, tls_env(pki), stderr="reader gone") as srv:
        for _ in range(3):
            with connect(srv.port) as sock:
                sock.settimeout(BOUND)
                assert read_all(sock) == b"served\n"
        assert srv.process.poll() is None


def test_log_drops_lines_it_cannot_write_and_says_so() -> None:
    from trio_s6tls._log import Log

    class Flaky:
        def __init__(self) -> None:
            self.failures = 2
            self.lines: list[str] = []

        def write(self, text: str) -> int:
            if self.failures:
                self.failures -= 1
                raise BrokenPipeError(32, "Broken pipe")
            self.lines.extend(text.splitlines())
            return len(text)

        def flush(self) -> None:
            pass

    stream = Flaky()
    log = Log("prog", 1, stream)  # type: ignore[arg-type]
    log.warn("one")
    log.warn("two")
    log.warn("three")
    assert stream.lines == [
        "prog: warning: 2 earlier log lines lost: stderr was not writable",
        "prog: warning: three",
    ]
    log.warn("four")
    assert stream.lines[-1] == "prog: warning: four" and len(stream.lines) == 3


def test_log_without_any_stderr_is_silent() -> None:
    """With fd 2 closed (sys.stderr is then None) nothing raises."""
    code = (
        "import os, sys; os.close(2); sys.stderr = None\n"
        "from trio_s6tls._log import Log\n"
        "Log('prog').warn('nobody reads this'); Log('prog').fatal('nor this')\n"
        "print('survived')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=STARTUP)
    assert result.stdout == b"survived\n" and result.returncode == 0


# -- 2. the rules directory --------------------------------------------------------


MiB = 1 << 20


def _rules(tmp_path: Path, bad: str) -> Path:
    """A rules directory: 127.0.0.1 allowed with WHO=good, 127.0.0.2 allowed
    with one ``bad`` entry."""
    rules = tmp_path / "rules"
    good = rules / "ip4/127.0.0.1_32"
    (good / "env").mkdir(parents=True)
    (good / "allow").touch()
    (good / "env/WHO").write_text("good\n")
    entry = rules / "ip4/127.0.0.2_32"
    (entry / "env").mkdir(parents=True)
    (entry / "allow").touch()
    if bad == "fifo env":
        os.mkfifo(entry / "env/WHO")
    elif bad == "fifo exec":
        os.mkfifo(entry / "exec")
    elif bad == "huge env":  # sparse: 512 MiB of NULs, no newline
        with open(entry / "env/WHO", "wb") as file:
            file.truncate(512 * MiB)
    elif bad == "huge exec":
        (entry / "exec").write_bytes(b"true " * (8 * MiB // 5))
    elif bad == "directory env":
        (entry / "env/WHO").mkdir()
    else:  # pragma: no cover
        raise AssertionError(bad)
    return rules


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("bad", ["fifo env", "fifo exec", "huge env", "huge exec", "directory env"])
def test_bad_rules_entry_costs_its_own_connection_only(
    pki: LoopbackPKI, tmp_path: Path, bad: str
) -> None:
    """While a client with a bad entry is looked up, an established tunnel
    keeps echoing and a new good client is served; the bad client is closed
    at once with a fatal: line (C's s6-tcpserver-access dies of such an
    entry); the server's memory stays small."""
    rules = _rules(tmp_path, bad)
    prog = ["sh", "-c", 'echo "$WHO"; exec cat']
    argv = ["s6-tlsserver", "-H", "-i", str(rules), "127.0.0.1", "0", *prog]
    with (
        running_server(argv, tls_env(pki)) as srv,
        tls_connect(srv.port, pki) as established,
    ):
        established.settimeout(BOUND)
        assert established.recv(5) == b"good\n"
        begun = time.monotonic()
        with connect(srv.port, "127.0.0.2") as victim:
            assert echo(established, b"ping") == b"ping"
            assert exchange(srv.port, pki, b"new") == b"good\nnew"
            assert closed_by_server(victim, BOUND)
        assert time.monotonic() - begun < BOUND
        line = srv.line(b"s6-tlsserver: fatal: unable to check the rules for 127.0.0.2 ", BOUND)
        assert b"ip4/127.0.0.2_32" in line
        assert _peak_rss_kib(srv.process.pid) < 128 * 1024
        assert echo(established, b"pong") == b"pong"


async def test_rules_lookup_runs_off_the_loop_under_the_timeout(
    pki: LoopbackPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-t bounds the rules lookup too: a lookup stuck in the file system
    (simulated here) refuses its client after the timeout, and the loop
    keeps running meanwhile."""
    import functools

    import trio

    from trio_s6tls import _rules
    from trio_s6tls._log import Log
    from trio_s6tls._server import ConnectionRecord, ServerConfig, bind, listener_from, serve

    release = threading.Event()

    def stuck_lookup(rules_dir: str, address: str) -> _rules.Decision:
        release.wait(BOUND)
        return _rules.Decision(True, "ip4/0.0.0.0_0")

    monkeypatch.setattr(_rules, "lookup", stuck_lookup)
    records: list[ConnectionRecord] = []
    config = ServerConfig(
        argv=["true"],
        rules_dir="/nonexistent",
        access_timeout_ms=300,
        remote_lookup=False,
        log=Log("test", 0),
    )
    sock = bind("127.0.0.1", 0, 5)
    port = sock.getsockname()[1]
    ticks = 0
    try:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(serve, on_finished=records.append), [listener_from(sock)], config
            )

            async def tick() -> None:
                # A heartbeat, not a wait: it counts how often the loop got
                # to run while the lookup was stuck in its thread.
                nonlocal ticks
                while True:
                    await trio.sleep(0.05)
                    ticks += 1

            nursery.start_soon(tick)
            started_at = trio.current_time()
            with trio.fail_after(BOUND):
                client = await trio.open_tcp_stream("127.0.0.1", port)
                assert await client.receive_some() == b""
            elapsed = trio.current_time() - started_at
            await client.aclose()
            server.stop_accepting()
            nursery.cancel_scope.cancel()
    finally:
        release.set()
    assert records and records[0].refused is not None and "timed out" in records[0].refused
    assert records[0].prog_status is None
    assert elapsed < 3 and ticks >= 3  # the loop ran while the lookup was stuck


# -- 3. SIGTERM and SIGINT -------------------------------------------------------------


def _half_client_hello(port: int) -> socket.socket:
    """A client that sends the first bytes of a TLS record and stops."""
    sock = connect(port)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    return sock


def test_sigterm_closes_connections_that_have_not_started_prog(
    pki: LoopbackPKI, resources: contextlib.ExitStack
) -> None:
    """Defaults -K 0, -t 0: an idle TCP client and half a ClientHello are
    closed at once on SIGTERM; the tunnel with a running prog goes on, and
    the server exits when it has ended."""
    with running_server(["s6-tlsserver", "-H", "127.0.0.1", "0", "cat"], tls_env(pki)) as srv:
        tunnel = resources.enter_context(tls_connect(srv.port, pki))
        assert echo(tunnel, b"before") == b"before"
        idle = resources.enter_context(connect(srv.port))
        half = resources.enter_context(_half_client_hello(srv.port))
        srv.process.send_signal(signal.SIGTERM)
        assert closed_by_server(idle, BOUND) and closed_by_server(half, BOUND)
        assert srv.process.poll() is None
        assert echo(tunnel, b"after") == b"after"
        half_close(tunnel)
        assert read_all(tunnel) == b""
        tunnel.close()
        assert srv.exits_within(BOUND) == 0
        idle.close()
        half.close()


@pytest.mark.parametrize("prog_running", [False, True], ids=["alone", "beside a tunnel"])
def test_sigterm_with_a_client_missing_its_proxy_header(
    pki: LoopbackPKI, prog_running: bool, resources: contextlib.ExitStack
) -> None:
    argv = ["s6-tlsserver", "-H", "-L", "127.0.0.1", "0", "cat"]
    with running_server(argv, tls_env(pki)) as srv, connect(srv.port) as waiting:
        header = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 443\r\n"
        tunnel = (
            resources.enter_context(tls_connect(srv.port, pki, preamble=header))
            if prog_running
            else None
        )
        if tunnel is not None:
            assert echo(tunnel, b"in") == b"in"
        srv.process.send_signal(signal.SIGTERM)
        assert closed_by_server(waiting, BOUND)
        if tunnel is not None:
            assert srv.process.poll() is None and echo(tunnel, b"on") == b"on"
            tunnel.close()
        assert srv.exits_within(BOUND) == 0


def test_sigint_is_a_clean_stop(pki: LoopbackPKI, resources: contextlib.ExitStack) -> None:
    """Ctrl-C: the same as SIGTERM, with no traceback."""
    with running_server(["s6-tlsserver", "-H", "127.0.0.1", "0", "cat"], tls_env(pki)) as srv:
        idle = resources.enter_context(connect(srv.port))
        srv.process.send_signal(signal.SIGINT)
        assert closed_by_server(idle, BOUND)
        assert srv.exits_within(BOUND) == 0
        idle.close()
        assert srv.stderr == ""


def test_second_sigint_stops_at_once(pki: LoopbackPKI, resources: contextlib.ExitStack) -> None:
    with running_server(["s6-tlsserver", "-v", "-H", "127.0.0.1", "0", "cat"], tls_env(pki)) as srv:
        tunnel = resources.enter_context(tls_connect(srv.port, pki))
        assert echo(tunnel, b"x") == b"x"
        srv.process.send_signal(signal.SIGINT)
        srv.line(b"s6-tlsserver: info: received SIGINT", BOUND)
        assert echo(tunnel, b"still open") == b"still open"  # waiting for prog to end
        srv.process.send_signal(signal.SIGINT)
        assert srv.exits_within(BOUND) == 0
        assert closed_by_server(tunnel, BOUND)
        tunnel.close()
        assert "Traceback" not in srv.stderr


@pytest.mark.parametrize("to_group", [True, False], ids=["Ctrl-C to the group", "kill -INT"])
def test_sigint_twice_with_workers(
    pki: LoopbackPKI, to_group: bool, resources: contextlib.ExitStack
) -> None:
    """Ctrl-C reaches the supervisor and the workers alike: the first is
    still a clean stop (the tunnel goes on), the second stops at once."""
    prog = ["sh", "-c", "trap '' INT; exec cat"]  # a prog that outlives Ctrl-C
    argv = ["s6-tlsserver", "-H", "--workers", "2", "127.0.0.1", "0", *prog]
    with running_server(argv, tls_env(pki), process_group=True) as srv:
        tunnel = resources.enter_context(tls_connect(srv.port, pki))
        assert echo(tunnel, b"x") == b"x"
        idle = resources.enter_context(connect(srv.port))

        def interrupt() -> None:
            if to_group:
                os.killpg(srv.process.pid, signal.SIGINT)
            else:
                srv.process.send_signal(signal.SIGINT)

        interrupt()
        assert closed_by_server(idle, BOUND)
        assert echo(tunnel, b"still open") == b"still open"
        interrupt()
        assert srv.exits_within(BOUND) == 0
        assert closed_by_server(tunnel, BOUND)
        tunnel.close()
        idle.close()
        assert "Traceback" not in srv.stderr


def test_sigint_on_the_tcp_server(pki: LoopbackPKI) -> None:
    with running_server(["s6-tcpserver", "-H", "127.0.0.1", "0", "cat"], tls_env(pki)) as srv:
        srv.process.send_signal(signal.SIGINT)
        assert srv.exits_within(BOUND) == 0
        assert srv.stderr == ""


@pytest.mark.parametrize("name", ["s6-tcpserver", "s6-tlsserver"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ignored_at_start_and_sent_at_readiness_is_not_lost(
    pki: LoopbackPKI, name: str, signum: signal.Signals
) -> None:
    """A server started in the background (nohup, a CI runner, ``cmd &`` in a
    script) inherits SIGINT ignored. It handles SIGINT anyway, so one sent
    right after the readiness line, before its handlers are in place, must
    still stop it: the kernel discards an ignored signal even while blocked."""

    def ignore() -> None:
        signal.signal(signum, signal.SIG_IGN)

    process = subprocess.Popen(
        [program(name), "-1", "-H", "127.0.0.1", "0", "cat"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=tls_env(pki),
        preexec_fn=ignore,
    )
    with process:
        assert process.stdout is not None
        assert process.stdout.readline().strip().isdigit()  # ready
        process.send_signal(signum)
        try:
            assert process.wait(BOUND) == 0
        finally:
            process.kill()


# -- 4. the identity the server runs as -------------------------------------------------


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Identity:
        fields = {}
        for line in text.splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.split()
        return cls(
            int(fields["Uid"][0]),
            int(fields["Gid"][0]),
            tuple(sorted(int(g) for g in fields["Groups"])),
        )


def _server_identity(pid: int) -> Identity:
    return Identity.parse(Path(f"/proc/{pid}/status").read_text())


def _check_real_and_effective(pid: int) -> None:
    """Real, effective, saved and file-system ids all alike: no way back."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("Uid:", "Gid:")):
            assert len(set(line.split()[1:])) == 1, line


PROG_STATUS = ["sh", "-c", "grep -E '^(Uid|Gid|Groups):' /proc/self/status"]
START_GROUPS = [10, 20]  # the server is started with these: are they cleared?

IDENTITY_CASES = {
    # name: (options, environment, server and prog identity)
    "none": ([], {}, Identity(0, 0, (10, 20))),
    "TLS_UID/TLS_GID": ([], {"TLS_UID": "1", "TLS_GID": "2"}, Identity(1, 2, ())),
    "-u/-g": (["-u", "65534", "-g", "65533"], {}, Identity(65534, 65533, ())),
    "-U": (["-U"], {"UID": "3", "GID": "4", "GIDLIST": "5,6"}, Identity(3, 4, (5, 6))),
    "-G": (["-G", "7,8"], {}, Identity(0, 0, (7, 8))),
    "-u/-g/-G": (["-u", "65534", "-g", "65533", "-G", "9"], {}, Identity(65534, 65533, (9,))),
    "TLS ids equal to -u/-g": (
        ["-u", "65534", "-g", "65533"],
        {"TLS_UID": "65534", "TLS_GID": "65533"},
        Identity(65534, 65533, ()),
    ),
}


@needs_root
@pytest.mark.parametrize("program_name", ["s6-tlsserver", "s6-tcpserver"])
@pytest.mark.parametrize("case", sorted(IDENTITY_CASES))
def test_server_and_prog_identity(
    pki: LoopbackPKI, tmp_path: Path, program_name: str, case: str
) -> None:
    """The server drops to the -u/-g/-G/-U identity (or TLS_UID/TLS_GID)
    once bound and its key loaded (a key only root can read), clearing the
    supplementary groups unless -G; prog inherits it."""
    options, extra_env, expected = IDENTITY_CASES[case]
    if program_name == "s6-tcpserver" and "TLS_UID" in extra_env:
        expected = IDENTITY_CASES["none" if not options else "-u/-g"][2]
    key = tmp_path / "root-only.pem"
    key.write_bytes(pki.server_file.read_bytes())
    key.chmod(0o600)
    env = tls_env(pki, CERTFILE=str(key), KEYFILE=str(key), **extra_env)
    argv = [program_name, "-H", *options, "127.0.0.1", "0", *PROG_STATUS]
    with running_server(argv, env, extra_groups=START_GROUPS) as srv:
        server = _server_identity(srv.process.pid)
        if program_name == "s6-tlsserver":
            prog = Identity.parse(exchange(srv.port, pki, b"").decode())
        else:
            with connect(srv.port) as sock:
                prog = Identity.parse(read_all(sock).decode())
        _check_real_and_effective(srv.process.pid)
    assert (server, prog) == (expected, expected)


@needs_root
@pytest.mark.parametrize(
    ("options", "extra_env"),
    [
        (["-u", "65534"], {"TLS_UID": "1"}),
        (["-g", "65533"], {"TLS_GID": "2"}),
        (["-u", "65534", "-g", "65533"], {"TLS_UID": "65534", "TLS_GID": "2"}),
        (["-U"], {"UID": "3", "GID": "4", "GIDLIST": "", "TLS_UID": "1"}),
    ],
)
def test_tls_ids_different_from_the_server_identity_are_refused(
    pki: LoopbackPKI, options: list[str], extra_env: dict[str, str]
) -> None:
    result = subprocess.run(
        [program("s6-tlsserver"), *options, "127.0.0.1", "0", "cat"],
        env=tls_env(pki, **extra_env),
        capture_output=True,
        timeout=STARTUP,
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 100, lines
    assert len(lines) == 1 and lines[0].startswith("s6-tlsserver: fatal: "), lines
    assert "TLS_UID" in lines[0] or "TLS_GID" in lines[0]
