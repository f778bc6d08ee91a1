"""s6-tlsclient and s6-tcpclient end to end: resolve, connect, (handshake,)
exec prog with the connection on fds 6/7 and the UCSPI client variables.

Rules: loopback only, port 0; every wait bounded; no sleeps. A connect
timeout is provoked on loopback with a listener whose accept queue is full
(Linux drops further SYNs), not with an outside address.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from support import (
    TIMEOUT,
    ClientCert,
    MiB,
    finish,
    parse_env,
    program,
    read_line_matching,
    reaped,
    sh,
    spawn,
    tls_env,
)

from trio_s6tls.testing import LoopbackPKI

UCSPI_CLIENT_VARIABLES = {
    "PROTO", "TCPREMOTEIP", "TCPREMOTEPORT", "TCPLOCALIP", "TCPLOCALPORT", "TCPREMOTEHOST", "TCPLOCALHOST",
}  # fmt: skip
SSL_VARIABLES = {
    "SSL_PROTOCOL",
    "SSL_CIPHER",
    "SSL_TLS_SNI_SERVERNAME",
    "SSL_PEER_CERT_HASH",
    "SSL_PEER_CERT_SUBJECT",
}

ENV_DUMP = (
    "import os, socket, sys\n"
    "nodelay = socket.socket(fileno=os.dup(6)).getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) if sys.argv[2] == 'tcp' else -1\n"
    "open(sys.argv[1], 'w').write(''.join(f'{k}={v}\\n' for k, v in os.environ.items()) + f'nodelay={nodelay}\\n')\n"
    "os.write(7, b'hello\\n')\n"
    "data = b''\n"
    "while not data.endswith(b'\\n') and (chunk := os.read(6, 65536)):\n"
    "    data += chunk\n"
    "os.close(7)  # only now: an OpenSSL peer answers a bare half-close with an alert\n"
    "while chunk := os.read(6, 65536):\n"
    "    data += chunk\n"
    "open(sys.argv[1] + '.reply', 'wb').write(data)\n"
)


def env_dump(report: Path, kind: str) -> list[str]:
    return [sys.executable, "-c", ENV_DUMP, str(report), kind]


def stale_env(pki: LoopbackPKI) -> dict[str, str]:
    """Variables prog must not see as they are: each must be replaced or unset."""
    return tls_env(pki, TCPREMOTEINFO="stale", SSL_PEER_CERT_SUBJECT="stale", TCPREMOTEHOST="stale")


@pytest.fixture
def s_server(pki: LoopbackPKI) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """openssl s_server reversing lines, one connection, on 127.0.0.1."""
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-rev",
         "-cert", str(pki.server_file), "-key", str(pki.server_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    with reaped(server):
        line = read_line_matching(server.stdout, b"ACCEPT")
        yield server, int(line.rsplit(b":", 1)[1])


def test_tlsclient_against_openssl_s_server_env_complete(
    pki: LoopbackPKI, s_server: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    _, port = s_server
    report = tmp_path / "env"
    # -h: "localhost" from /etc/hosts (the DNS fails in tests, see conftest).
    client = subprocess.run(
        [program("s6-tlsclient"), "-h", "localhost", str(port), *env_dump(report, "tls")],
        env=stale_env(pki), capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert client.returncode == 0, client.stderr
    assert (tmp_path / "env.reply").read_bytes() == b"olleh\n"
    seen = parse_env(report.read_text())
    assert seen.keys() >= UCSPI_CLIENT_VARIABLES, UCSPI_CLIENT_VARIABLES - seen.keys()
    assert "TCPREMOTEINFO" not in seen
    assert seen["PROTO"] == "TCP"
    assert seen["TCPREMOTEIP"] == "127.0.0.1" and seen["TCPREMOTEPORT"] == str(port)
    assert seen["TCPLOCALIP"] == "127.0.0.1" and 0 < int(seen["TCPLOCALPORT"]) < 65536
    assert seen["TCPREMOTEHOST"] == "localhost."  # /etc/hosts' first name, a final dot
    assert {
        "SSL_PROTOCOL",
        "SSL_CIPHER",
        "SSL_TLS_SNI_SERVERNAME",
        "SSL_PEER_CERT_HASH",
    } <= seen.keys()
    assert seen["SSL_TLS_SNI_SERVERNAME"] == "localhost"  # SNI = host by default
    assert seen["SSL_PEER_CERT_SUBJECT"] != "stale"
    assert "CAFILE" not in seen and "CERTFILE" not in seen  # -z by default


def tlsd_behind_listener(
    pki: LoopbackPKI,
    client_argv: list[str],
    server_prog: list[str],
    client_env: dict[str, str] | None = None,
    server_flags: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], bytes, bytes]:
    """Run ``client_argv`` (``{port}`` filled in) against s6-tlsd + server_prog
    started on the one connection a Python listener accepts."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        client = spawn(
            [part.format(port=port) for part in client_argv],
            {},
            client_env or tls_env(pki),
            stdout=subprocess.PIPE,
        )
        with reaped(client):
            connection, _ = listener.accept()
            with connection:
                server = spawn(
                    ["s6-tlsd", *server_flags, "--", *server_prog],
                    {0: connection.fileno(), 1: connection.fileno()},
                    tls_env(pki),
                )
            with reaped(server):
                out, client_err = finish(client)
                _, server_err = finish(server)
    assert server.returncode == 0, server_err
    return client, server, out, client_err


def test_tlsclient_multi_mib_echo_against_tlsd(pki: LoopbackPKI, tmp_path: Path) -> None:
    payload = os.urandom(3 * MiB + 7)
    (tmp_path / "payload").write_bytes(payload)
    client_prog = sh(
        'cat "$1" >&7 & exec 7>&-; cat <&6 > "$2"; wait',
        str(tmp_path / "payload"),
        str(tmp_path / "echo"),
    )
    client, _, _, err = tlsd_behind_listener(
        pki, ["s6-tlsclient", "-k", "localhost", "127.0.0.1", "{port}", *client_prog], ["cat"]
    )
    assert client.returncode == 0, err
    assert (
        hashlib.sha256((tmp_path / "echo").read_bytes()).digest()
        == hashlib.sha256(payload).digest()
    )


SNI_REPORT = sh('printf "%s\\n" "${SSL_TLS_SNI_SERVERNAME-none}"')


@pytest.mark.parametrize(
    ("flags", "host", "sni"),
    [
        (["-h"], "localhost", "localhost"),
        (["-k", "localhost"], "127.0.0.1", "localhost"),
        (["-H"], "127.0.0.1", "none"),
        (["-H", "-k", "localhost"], "127.0.0.1", "localhost"),
        ([], "127.0.0.1", "none"),  # an IP address: no SNI sent, none exported
        ([], "127.0.0.1,::1", "none"),  # an address list: no SNI either, as C
        (["-H"], "127.0.0.1 ::1", "none"),
    ],
    ids=["default-host", "-k", "-H-no-sni", "-H-k", "ip-literal-no-sni", "ip-list", "-H-ip-list"],
)
def test_sni_follows_host_k_and_H(pki: LoopbackPKI, flags: list[str], host: str, sni: str) -> None:
    """The server gets the SNI, and the client's prog sees in
    SSL_TLS_SNI_SERVERNAME exactly what was sent (nothing for an IP)."""
    client_prog = sh('printf "%s\\n" "${{SSL_TLS_SNI_SERVERNAME-none}}"; cat <&6')  # .format
    client, _, out, err = tlsd_behind_listener(
        pki, ["s6-tlsclient", "-4", *flags, host, "{port}", *client_prog], SNI_REPORT
    )
    assert client.returncode == 0, err
    assert out.decode().split() == [sni, sni]  # exported by the client, received by the server


def test_wrong_servername_fails_and_prog_never_runs(pki: LoopbackPKI, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        client = spawn(
            ["s6-tlsclient", "-k", "wrong.example", "127.0.0.1", str(port), "touch", str(marker)],
            {},
            tls_env(pki),
        )
        with reaped(client):
            connection, _ = listener.accept()
            with connection:
                server = spawn(
                    ["s6-tlsd", "cat"],
                    {0: connection.fileno(), 1: connection.fileno()},
                    tls_env(pki),
                )
            with reaped(server):
                _, err = finish(client)
                finish(server)
    assert client.returncode == 98, err
    assert not marker.exists()


def test_untrusted_server_is_98(
    pki: LoopbackPKI, s_server: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    _, port = s_server
    stranger = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    client = subprocess.run(
        [program("s6-tlsclient"), "127.0.0.1", str(port), "true"],
        env=tls_env(pki, CAFILE=str(stranger)), capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert client.returncode == 98
    assert client.stderr.startswith(b"s6-tlsclient: fatal: ")


def test_tcpclient_env_fds_and_options(pki: LoopbackPKI, tmp_path: Path) -> None:
    report = tmp_path / "env"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        argv = ["s6-tcpclient", "-D", "-H", "-l", "me.example", "-i", "127.0.0.1", "-R", "-N",
                "127.0.0.1", str(port), *env_dump(report, "tcp")]  # fmt: skip
        client = spawn(argv, {}, stale_env(pki))
        with reaped(client):
            connection, peer = listener.accept()
            with connection:
                connection.settimeout(TIMEOUT)
                assert connection.recv(6) == b"hello\n"
                connection.sendall(b"world\n")
            _, err = finish(client)
    assert client.returncode == 0, err
    seen = parse_env(report.read_text())
    assert seen["nodelay"] != "0"  # -D
    assert seen["TCPLOCALHOST"] == "me.example"  # -l, even with -H
    assert "TCPREMOTEHOST" not in seen  # -H: no lookup, and the stale value is unset
    assert "TCPREMOTEINFO" not in seen
    assert seen["TCPLOCALPORT"] == str(peer[1]) and seen["TCPREMOTEPORT"] == str(port)
    assert seen["CAFILE"]  # s6-tcpclient has nothing to do with TLS variables
    assert (tmp_path / "env.reply").read_bytes() == b"world\n"


def test_tcpclient_local_port(pki: LoopbackPKI, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        with socket.socket() as probe:  # a free port for -p (SO_REUSEADDR on both sides)
            probe.bind(("127.0.0.1", 0))
            local_port = probe.getsockname()[1]
        argv = [
            "s6-tcpclient",
            "-p",
            str(local_port),
            "127.0.0.1",
            str(listener.getsockname()[1]),
            *sh("exit 0"),
        ]
        client = spawn(argv, {}, tls_env(pki))
        with reaped(client):
            connection, peer = listener.accept()
            connection.close()
            _, err = finish(client)
    assert client.returncode == 0, err
    assert peer[1] == local_port


def test_refused_connection_is_a_clear_error(pki: LoopbackPKI) -> None:
    with socket.socket() as probe:  # bound but not listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        for name in ("s6-tcpclient", "s6-tlsclient"):
            proc = subprocess.run(  # trust anchors set: s6-tlsclient checks them first
                [program(name), "127.0.0.1", str(port), "true"],
                env=tls_env(pki),
                capture_output=True,
                timeout=TIMEOUT,
            )
            assert proc.returncode == 111
            assert (
                proc.stderr
                == f"{name}: fatal: unable to connect to 127.0.0.1 port {port}: Connection refused\n".encode()
            )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening port whose accept queue is full: further SYNs are dropped,
    so a connect attempt times out — on loopback."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # in progress; it stays so
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("flags", [["-T", "0.5+0"], ["-t", "0.5"], ["-T", "0.2+0.3"]])
def test_connect_timeout(silent_port: int, flags: list[str]) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [program("s6-tcpclient"), *flags, "127.0.0.1", str(silent_port), "true"],
        capture_output=True,
        timeout=TIMEOUT,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 111
    assert (
        proc.stderr
        == f"s6-tcpclient: fatal: unable to connect to 127.0.0.1 port {silent_port}: Connection timed out\n".encode()
    )
    assert 0.4 < elapsed < 5


@pytest.mark.parametrize(
    "argv",
    [
        ["s6-tcpclient", "127.0.0.1", "80"],
        ["s6-tcpclient", "-r", "127.0.0.1", "80", "true"],
        ["s6-tcpclient", "-T", "x+1", "127.0.0.1", "80", "true"],
        ["s6-tlsclient", "-t", "-1", "127.0.0.1", "80", "true"],
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    proc = subprocess.run([program(argv[0]), *argv[1:]], capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 100, proc.stderr
    # C's s6-tcpclient prints its usage; s6-tlsclient (gol) one fatal line.
    category = "usage" if argv[0] == "s6-tcpclient" else "fatal"
    assert proc.stderr.count(b"\n") == 1
    assert proc.stderr.startswith(f"{argv[0]}: {category}: ".encode())


@pytest.mark.parametrize(
    ("host", "remote"),
    [("127.0.0.2,127.0.0.1", "127.0.0.1"), ("0", "127.0.0.1"), ("::2 127.0.0.1", "127.0.0.1")],
    ids=["list", "zero", "blank-separated"],
)
def test_host_as_an_address_list(host: str, remote: str) -> None:
    """As C's ip46_scanlist: a list of addresses, tried in turn (the first
    refuses: nothing listens there); 0 is ::1 then 127.0.0.1. No lookup."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        proc = subprocess.run(
            [program("s6-tcpclient"), "-H", host, str(port), *sh('echo "$TCPREMOTEIP"')],
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == remote


def test_no_lookup_takes_addresses_only() -> None:
    """-H: no lookup at all, so a name is a usage error, as in C."""
    proc = subprocess.run(
        [program("s6-tcpclient"), "-H", "localhost", "1", "true"],
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 100
    assert b"with -H, host must be an IP address" in proc.stderr


def test_ipv4_only_flag(pki: LoopbackPKI, tmp_path: Path) -> None:
    report = tmp_path / "env"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        client = spawn(
            ["s6-tcpclient", "-4", "-h", "localhost", str(port), *sh('env > "$1"', str(report))],
            {},
            tls_env(pki),
        )
        with reaped(client):
            connection, _ = listener.accept()
            connection.close()
            _, err = finish(client)
    assert client.returncode == 0, err
    assert parse_env(report.read_text())["TCPREMOTEIP"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("name", "flags", "connects"),
    [
        ("s6-tcpclient", ["-6", "-4"], True),
        ("s6-tcpclient", ["-4", "-6"], False),
        ("s6-tlsclient", ["-4", "-6"], False),
        ("s6-tlsclient", ["-6", "-4"], False),
        ("s6-tlsclient", ["--ipv6", "--ipv4"], False),
        ("s6-tlsclient", ["-4"], True),
    ],
)
def test_family_flags_as_c(pki: LoopbackPKI, name: str, flags: list[str], connects: bool) -> None:
    """Both -4 and -6: s6-tcpclient takes the later, as C's; C's
    s6-tlsclient hands both to s6-tcpclient, -4 first, so -6 wins there
    whatever the order. With -6, an IPv4 address is a usage error (100)."""
    handshake_bound = ["-K", "300"] if name == "s6-tlsclient" else []  # nobody answers it
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        proc = subprocess.run(
            [program(name), "-H", *flags, *handshake_bound, "127.0.0.1", str(port), "true"],
            capture_output=True,
            timeout=TIMEOUT,
            env=tls_env(pki),
        )
    if connects:
        # s6-tlsclient connects, then its handshake finds no TLS server: not 100
        assert proc.returncode != 100, proc.stderr
    else:
        assert proc.returncode == 100, proc.stderr


def test_tlsclient_qualify_is_a_no_op_as_c() -> None:
    """C's s6-tlsclient hands -N to s6-tcpclient for -n (so -n/--qualify
    change nothing there); ours keeps that. s6-tcpclient's -n qualifies
    host (test_names: test_tcpclient_qualify_as_c)."""
    from trio_s6tls.programs import tcpclient, tlsclient

    for argv in (["-n"], ["--qualify"], ["-N", "-n"], []):
        values = tlsclient.PROGRAM.parse([*argv, "127.0.0.1", "1", "true"]).values
        assert not tlsclient.tlsclient_tcp_options(values).qualify, argv
    values = tcpclient.PROGRAM.parse(["-n", "127.0.0.1", "1", "true"]).values
    assert tcpclient.tcp_options(values).qualify


def test_tlsclient_tls_options(pki: LoopbackPKI, client_cert: ClientCert, tmp_path: Path) -> None:
    """-y sends the client certificate, -Z keeps the TLS variables, -v logs
    the connection and the handshake, -n/-h/-d/-R/-K/-S/-J parse and run."""
    client_env = tls_env(pki, **client_cert.env)
    report = tmp_path / "env"
    client_prog = sh('env > "$1"; cat <&6', str(report))
    server_prog = sh('printf "%s\\n" "${SSL_PEER_CERT_HASH-none}"')
    argv = ["s6-tlsclient", "-v", "-n", "-h", "-d", "-R", "-Z", "-y", "-K", "5000", "-s", "-j",
            "-k", "localhost", "127.0.0.1", "{port}", *client_prog]  # fmt: skip
    client, _, out, err = tlsd_behind_listener(pki, argv, server_prog, client_env, ("-Y",))
    assert client.returncode == 0, err
    assert out.decode().strip().startswith("SHA256:")  # the server saw our certificate
    seen = parse_env(report.read_text())
    assert seen["CERTFILE"] == str(client_cert.file) and seen["CAFILE"]  # -Z
    text = err.decode()
    assert "s6-tlsclient: info: connected to 127.0.0.1 port " in text
    assert "s6-tlsclient: info: SSL_PROTOCOL=" in text


def test_tlsclient_quiet_connects_silently(pki: LoopbackPKI) -> None:
    client, _, out, err = tlsd_behind_listener(
        pki,
        ["s6-tlsclient", "-q", "-k", "localhost", "127.0.0.1", "{port}", *sh("cat <&6")],
        sh("echo hi"),
    )
    assert client.returncode == 0 and out == b"hi\n"
    assert err == b"", err


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_only_flag_and_ipv6_literal(pki: LoopbackPKI, tmp_path: Path) -> None:
    report = tmp_path / "env"
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        client = spawn(
            [
                "s6-tlsclient",
                "-6",
                "-H",
                "-k",
                "localhost",
                "::1",
                str(port),
                *sh('env > "$1"', str(report)),
            ],
            {},
            tls_env(pki),
        )
        with reaped(client):
            connection, _ = listener.accept()
            with connection:
                server = spawn(
                    ["s6-tlsd", "true"],
                    {0: connection.fileno(), 1: connection.fileno()},
                    tls_env(pki),
                )
            with reaped(server):
                _, err = finish(client)
                finish(server)
    assert client.returncode == 0, err
    seen = parse_env(report.read_text())
    assert seen["TCPREMOTEIP"] == "::1" and seen["TCPLOCALIP"] == "::1"
    assert seen["SSL_TLS_SNI_SERVERNAME"] == "localhost"


def test_timeout_parsing() -> None:
    from trio_s6tls._tcpclient import parse_rounds, parse_seconds

    assert parse_rounds("2+58") == (2.0, 58.0)
    assert parse_rounds("0.5") == (0.5, 0.0)
    assert parse_seconds("1.5") == 1.5
    for bad in ("-1", "x", "nan", "inf", ""):
        with pytest.raises(ValueError):
            parse_seconds(bad)


@pytest.mark.parametrize(
    ("flags", "logged"), [(["-v"], True), (["-v", "-Q"], False), (["-Q", "-v"], True)]
)
def test_tcpclient_verbosity_later_flag_wins(flags: list[str], logged: bool) -> None:
    """-v logs each connection attempt, -Q (normal) does not; the later wins."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        proc = subprocess.run(
            [program("s6-tcpclient"), *flags, "127.0.0.1", str(port), "true"],
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert proc.returncode == 0
    expected = f"s6-tcpclient: info: connected to 127.0.0.1 port {port}\n".encode()
    assert (expected in proc.stderr) is logged, proc.stderr
