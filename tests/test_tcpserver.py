"""s6-tcpserver end to end: the installed program as a subprocess.

Rules as in test_tlsserver.py: loopback only, port 0 and ``-1`` readiness,
a bound on every wait, which waits on the event (a socket read, a line on
the server's stderr), no sleeps. The only timed wait is the negative check
of ``-c`` (a client that must *not* be served within a short bound).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import (
    TIMEOUT,
    client_context,
    connect,
    exchange,
    hosts_name,
    parse_env,
    program,
    read_all,
    rules_options,
    running_server,
    tls_env,
)

from trio_s6tls.testing import LoopbackPKI

ENV_PROG = ["sh", "-c", "env; exec cat >/dev/null"]


def ask(port: int, data: bytes = b"", source: str | None = None) -> bytes:
    """Send ``data``, half-close, read to EOF. A server that refuses us may
    have closed (even reset) the connection before we are done sending."""
    with connect(port, source) as sock:
        try:
            if data:
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        return read_all(sock)


def test_socket_is_stdin_stdout_and_environment(pki: LoopbackPKI) -> None:
    env = tls_env(pki, KEEPME="yes")
    with running_server(
        ["s6-tcpserver", "-h", "-l", "me.example", "127.0.0.1", "0", *ENV_PROG], env
    ) as srv:
        with connect(srv.port) as sock:
            client_port = sock.getsockname()[1]
            sock.shutdown(socket.SHUT_WR)
            got = parse_env(read_all(sock))
        assert got["PROTO"] == "TCP"
        assert (got["TCPLOCALIP"], got["TCPLOCALPORT"]) == ("127.0.0.1", str(srv.port))
        assert (got["TCPREMOTEIP"], got["TCPREMOTEPORT"]) == ("127.0.0.1", str(client_port))
        assert got["TCPCONNNUM"] == "0"  # the client's other connections, as C counts
        assert got["TCPLOCALHOST"] == "me.example"
        assert got["TCPREMOTEHOST"] == hosts_name("127.0.0.1")  # -h: the file's name, a dot
        assert "TCPREMOTEINFO" not in got
        # plain TCP touches no TLS variable
        assert got["CERTFILE"] == str(pki.server_file) and got["KEYFILE"] == str(pki.server_file)
        assert got["KEEPME"] == "yes"
        assert not any(name.startswith("SSL_P") for name in got)
    data = os.urandom(1 << 16)
    with running_server(["s6-tcpserver", "-H", "127.0.0.1", "0", "cat"], env) as echo:
        assert ask(echo.port, data) == data


def test_banner_nodelay_paranoid(pki: LoopbackPKI) -> None:
    prog = [
        sys.executable,
        "-c",
        "import os, socket; s = socket.socket(fileno=0);"
        "print(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,"
        " os.environ.get('TCPREMOTEHOST'), os.get_blocking(0)); s.detach()",
    ]
    argv = [
        "s6-tcpserver",
        "-B",
        "hello\r\n",
        "-D",
        "-p",
        "-W",
        "-R",
        "-b",
        "16",
        "127.0.0.1",
        "0",
        *prog,
    ]
    with running_server(argv, tls_env(pki)) as srv:
        answer = ask(srv.port).decode()
    # -p looks up even without a name to check; the DNS fails in tests (conftest)
    assert answer == "hello\r\nTrue None True\n"
    argv = ["s6-tcpserver", "-d", "-w", "-H", "127.0.0.1", "0", *prog]
    with running_server(argv, tls_env(pki)) as srv:
        assert ask(srv.port).decode() == "False None True\n"


def test_strict_resolution_refuses_when_a_needed_lookup_fails(pki: LoopbackPKI) -> None:
    """-w, as s6-tcpserver-access's: the client is refused, prog never runs,
    when a lookup it needs fails: -p's here, where the DNS is down
    (conftest), -H or not. Without -p a failed lookup only leaves the names
    unset, -w or not; -W, the default, never refuses."""
    prog = ["sh", "-c", "echo ran"]
    for opts, ran in (
        (["-w", "-p"], False),
        (["-w", "-H", "-p"], False),
        (["-W", "-p"], True),
        (["-p"], True),
        (["-w"], True),
    ):
        argv = ["s6-tcpserver", "--verbosity", "3", *opts, "127.0.0.1", "0", *prog]
        with running_server(argv, tls_env(pki)) as srv:
            assert ask(srv.port) == (b"ran\n" if ran else b""), opts
            srv.wait_stderr("end pid" if ran else "deny 127.0.0.1")
            warning = "unable to (paranoidly) resolve PTR for client address"
            assert (warning in srv.stderr) == ("-p" in opts), srv.stderr
            assert srv.process.poll() is None  # a refusal ends that connection only


def test_max_connections_queue(pki: LoopbackPKI, resources: contextlib.ExitStack) -> None:
    """-c 2: a third client waits in the backlog until one of the two leaves."""
    prog = ["sh", "-c", "echo in; exec cat"]
    with running_server(
        ["s6-tcpserver", "-H", "-c", "2", "127.0.0.1", "0", *prog], tls_env(pki)
    ) as srv:
        first = resources.enter_context(connect(srv.port))
        second = resources.enter_context(connect(srv.port))
        assert first.recv(10) == b"in\n" and second.recv(10) == b"in\n"
        third = resources.enter_context(connect(srv.port))  # the kernel completes it
        third.settimeout(0.5)
        with pytest.raises(TimeoutError):
            third.recv(10)  # not served while two are open
        third.settimeout(TIMEOUT)
        first.close()
        assert third.recv(10) == b"in\n"
        for sock in (second, third):
            sock.close()


def test_zero_limits_mean_one(pki: LoopbackPKI) -> None:
    """-c 0 and -C 0 are 1, as in C."""
    prog = ["sh", "-c", "echo $TCPCONNNUM"]
    argv = ["s6-tcpserver", "-H", "-c", "0", "-C", "0", "127.0.0.1", "0", *prog]
    with running_server(argv, tls_env(pki)) as srv:
        assert ask(srv.port) == b"0\n"


def test_per_ip_limit(pki: LoopbackPKI, resources: contextlib.ExitStack) -> None:
    """-C 1; -v logs the end of a connection (s6-tcpserverd's words), once
    its slot is free."""
    prog = ["sh", "-c", "echo $TCPCONNNUM $$; exec cat"]
    argv = ["s6-tcpserver", "-v", "-H", "-C", "1", "127.0.0.1", "0", *prog]
    with running_server(argv, tls_env(pki)) as srv:
        first = resources.enter_context(connect(srv.port))
        connnum, pid = first.recv(64).split()  # one write of sh's echo
        assert connnum == b"0"
        assert ask(srv.port) == b""  # closed at once
        assert ask(srv.port, source="127.0.0.2").startswith(b"0 ")
        first.close()
        srv.wait_stderr(f": info: end pid {pid.decode()} exitcode 0 count 0/1\n")

        def served() -> bool:
            return ask(srv.port).startswith(b"0 ")

        assert served(), "per-ip slot freed"
        assert "s6-tcpserver: info: reject 127.0.0.1_" in srv.stderr
        assert " count 1/1\n" in srv.stderr


def test_prog_identity(pki: LoopbackPKI, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing prog's identity needs root")
    prog = ["sh", "-c", "id -u; id -g; id -G"]
    argv = [
        "s6-tcpserver",
        "-H",
        "-u",
        "65534",
        "-g",
        "65534",
        "-G",
        "65534,100",
        "127.0.0.1",
        "0",
        *prog,
    ]
    with running_server(argv, tls_env(pki)) as srv:
        assert ask(srv.port).split() == [b"65534", b"65534", b"65534", b"100"]
    env = tls_env(pki, UID="1", GID="2", GIDLIST="3")
    with running_server(["s6-tcpserver", "-H", "-U", "127.0.0.1", "0", *prog], env) as srv:
        assert ask(srv.port).split() == [b"1", b"2", b"2", b"3"]


@pytest.mark.parametrize("form", ["directory", "cdb"])
def test_rules_and_proxy(pki: LoopbackPKI, tmp_path: Path, form: str) -> None:
    """-i, and -x with C's CDB of the same rules: the same decisions."""
    rules = tmp_path / "rules"
    (rules / "ip4/127.0.0.0_8/env").mkdir(parents=True)
    (rules / "ip4/127.0.0.0_8/allow").touch()
    (rules / "ip4/127.0.0.0_8/env/WHO").write_text("loopback\n")
    (rules / "ip4/127.0.0.9_32").mkdir(parents=True)
    (rules / "ip4/127.0.0.9_32/deny").touch()
    argv = ["s6-tcpserver", "-H", "-L", *rules_options(rules, form), "127.0.0.1", "0", *ENV_PROG]
    with running_server(argv, tls_env(pki)) as srv:
        got = parse_env(ask(srv.port, b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n"))
        assert got["WHO"] == "loopback"
        assert (got["TCPREMOTEIP"], got["TCPREMOTEPORT"]) == ("2001:db8::1", "1234")
        assert (got["TCPLOCALIP"], got["TCPLOCALPORT"]) == ("2001:db8::2", "80")
        assert ask(srv.port, b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n", "127.0.0.9") == b""
        assert ask(srv.port, b"GET / HTTP/1.0\r\n\r\n") == b""  # not a PROXY header
        got = parse_env(ask(srv.port, b"PROXY UNKNOWN\r\n"))
        assert got["TCPREMOTEIP"] == "127.0.0.1"


def test_sigterm_leaves_children_running(pki: LoopbackPKI) -> None:
    """The C tool's behaviour: the server exits, running progs keep their
    sockets and finish their work."""
    prog = ["sh", "-c", "echo in; exec cat"]
    with (
        running_server(["s6-tcpserver", "-H", "127.0.0.1", "0", *prog], tls_env(pki)) as srv,
        connect(srv.port) as sock,
    ):
        assert sock.recv(10) == b"in\n"
        assert srv.stop(signal.SIGTERM) == 0
        with pytest.raises(ConnectionRefusedError):
            connect(srv.port)
        sock.sendall(b"still here")
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b"still here"


def test_sighup_and_workers(pki: LoopbackPKI) -> None:
    prog = ["sh", "-c", "echo $PPID; exec cat"]
    with running_server(
        ["s6-tcpserver", "-H", "--workers", "2", "127.0.0.1", "0", *prog], tls_env(pki)
    ) as srv:
        with connect(srv.port) as sock:
            assert sock.recv(100).strip().isdigit()
            srv.process.send_signal(signal.SIGHUP)  # forwarded to the workers, then to cat
            assert read_all(sock) == b""
        parents = set()
        for _ in range(200):
            parents.add(ask(srv.port))
            if len(parents) == 2:
                break
        assert len(parents) == 2
        assert srv.stop(signal.SIGTERM) == 0


def test_chain_with_tlsd(pki: LoopbackPKI) -> None:
    """s6-tcpserver ... s6-tlsd -Z prog: UCSPI variables from the server,
    SSL_* from s6-tlsd, TLS variables kept by -Z."""

    argv = ["s6-tcpserver", "-H", "127.0.0.1", "0", program("s6-tlsd"), "-Z", *ENV_PROG]
    with running_server(argv, tls_env(pki)) as srv:
        got = parse_env(exchange(srv.port, client_context(pki), b""))
    assert got["SSL_PROTOCOL"] == "TLSv1.3" and got["CERTFILE"] == str(pki.server_file)
    assert got["TCPREMOTEIP"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["127.0.0.1", "0"], 100, "usage"),
        (["-c", "x", "127.0.0.1", "0", "cat"], 100, "usage"),
        (["-x", "/nonexistent.cdb", "127.0.0.1", "0", "cat"], 111, "unable to read rules file"),
        (["-U", "127.0.0.1", "0", "cat"], 100, "UID"),
        (["256.0.0.1", "0", "cat"], 100, "not an IP address"),
        (["localhost", "0", "cat"], 100, "not an IP address"),
    ],
)
def test_bad_input(pki: LoopbackPKI, args: list[str], code: int, needle: str) -> None:
    result = subprocess.run(
        [program("s6-tcpserver"), *args],
        env=tls_env(pki, UID="nobody"),
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == code
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s6-tcpserver: ") and needle in lines[0], lines


@pytest.mark.parametrize("identity", [[], ["-g", "0"]], ids=["posix_spawn", "popen"])
def test_prog_gets_default_signals(pki: LoopbackPKI, identity: list[str]) -> None:
    """SIGPIPE and SIGXFSZ are ignored in the server; prog gets them back at
    their default, with no signal blocked (both spawn paths: the -g one goes
    through Popen). glibc's posix_spawn leaves its two internal real-time
    signals ignored, as it does for the C tools that use it."""
    if identity and os.geteuid() != 0:
        pytest.skip("-g needs root")
    prog = ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]
    with running_server(
        ["s6-tcpserver", "-H", *identity, "127.0.0.1", "0", *prog], tls_env(pki)
    ) as srv:
        lines = ask(srv.port).decode().split("\n")
    assert lines[0] == "SigBlk:\t0000000000000000"
    ignored = int(lines[1].split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1))
    assert ignored & ((1 << 31) - 1) == 0  # nothing below the real-time range
