"""s6-ucspitlsc and s6-ucspitlsd end to end, with the example STARTTLS
server and client and the application-side helper (sync and Trio).

Rules: loopback only, port 0; every wait bounded (``finish`` kills what
overstays, sockets have timeouts); no sleeps; ``openssl s_client
-starttls smtp`` as the real peer we did not write.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from support import (
    EXAMPLES,
    TIMEOUT,
    ClientCert,
    finish,
    parse_env,
    program,
    reaped,
    receive_all,
    spawn,
    tls_client,
    tls_env,
)

from trio_s6tls.testing import LoopbackPKI

SERVER_EXAMPLE = [sys.executable, str(EXAMPLES / "smtp_starttls_server.py")]
CLIENT_EXAMPLE = [sys.executable, str(EXAMPLES / "smtp_starttls_client.py")]


def accept_from(argv: list[str]) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start a client ``argv`` ({port} filled in) and accept its connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        client = subprocess.Popen(
            [part.format(port=port) for part in argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        connection, _ = listener.accept()
    return client, connection


def test_example_server_with_openssl_starttls_smtp(pki: LoopbackPKI) -> None:
    client, connection = accept_from(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", "127.0.0.1:{port}", "-crlf", "-quiet",
         "-CAfile", str(pki.ca_file), "-verify_return_error", "-servername", "localhost"]
    )  # fmt: skip
    with connection, reaped(client):
        server = spawn(
            ["s6-ucspitlsd", "-S", "-v", "2", "--", *SERVER_EXAMPLE],
            {0: connection.fileno(), 1: connection.fileno()},
            tls_env(pki),
        )
        connection.close()
        with reaped(server):
            out, err = finish(client, input=b"EHLO after.tls\nXTLSINFO\nQUIT\n")
            _, server_err = finish(server)
    assert server.returncode == 0, server_err
    text = out.decode()
    # EHLO, XTLSINFO and QUIT went through TLS (s_client prints only what
    # follows the handshake with -quiet), and Y brought the variables back.
    assert "250-SSL_PROTOCOL=TLSv1." in text, (text, err)
    assert "250-SSL_TLS_SNI_SERVERNAME=localhost" in text
    assert "250 TLS on" in text
    assert text.rstrip().endswith("221 2.0.0 Bye")
    # prog's pid, as C logs it (s6-ucspitlsd execs prog: the pid we spawned)
    assert f"info: pid {server.pid} accepted opportunistic TLS".encode() in server_err


def plain_dialogue(sock: socket.socket, *commands: bytes) -> list[bytes]:
    """Send each command after reading a full reply; all replies, in order."""
    sock.settimeout(TIMEOUT)
    reader = sock.makefile("rb")
    replies = []

    def reply() -> bytes:
        lines = []
        while True:
            line = reader.readline()
            assert line, "EOF from server"
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    replies.append(reply())
    for command in commands:
        sock.sendall(command + b"\r\n")
        replies.append(reply())
    return replies


def test_declined_path_keeps_the_cleartext_session(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, connection = tcp_pair
    server = spawn(
        ["s6-ucspitlsd", "-v2", "--", *SERVER_EXAMPLE, "--decline"],
        {0: connection.fileno(), 1: connection.fileno()},
        tls_env(pki),
    )
    connection.close()
    with reaped(server):
        greeting, ehlo, noop, quit_ = plain_dialogue(client, b"EHLO plain", b"NOOP", b"QUIT")
        _, err = finish(server)
    assert greeting.startswith(b"220 ") and b"STARTTLS" not in ehlo
    assert noop.startswith(b"250 ") and quit_.startswith(b"221 ")
    assert server.returncode == 0
    assert f"info: pid {server.pid} declined opportunistic TLS".encode() in err, err


CONTROL_SCRIPT = """
import os, sys
report = open(sys.argv[1], "w")
report.write(f"pid={os.getpid()}\\n")
for name in ("SSLCTLFD", "SSLREADFD", "SSLWRITEFD"):
    fd = int(os.environ[name])
    os.fstat(fd)  # open in prog
    report.write(f"{name}-open=yes\\n")
control = int(os.environ["SSLCTLFD"])
if sys.argv[2]:
    os.write(control, sys.argv[2].encode())
os.close(control)
_, status = os.wait()  # the engine child is ours: its exit code is the answer
report.write(f"child={os.waitstatus_to_exitcode(status)}\\n")
report.write("".join(f"{k}={v}\\n" for k, v in os.environ.items()))
"""


@pytest.mark.parametrize(
    ("command", "code"),
    [("", 0), ("x", 100), ("y", 98)],
    ids=["EOF", "unknown", "y-then-silent-peer"],  # -K 300: the handshake times out
)
@pytest.mark.parametrize("keep", [False, True], ids=["z", "Z"])
def test_control_socket_commands(
    pki: LoopbackPKI,
    tcp_pair: tuple[socket.socket, socket.socket],
    tmp_path: Path,
    command: str,
    code: int,
    keep: bool,
) -> None:
    _, connection = tcp_pair
    report = tmp_path / "report"
    flags = ["-Z", "-K", "300"] if keep else ["-K", "300"]
    server = spawn(
        ["s6-ucspitlsd", *flags, "--", sys.executable, "-c", CONTROL_SCRIPT, str(report), command],
        {0: connection.fileno(), 1: connection.fileno()},
        tls_env(pki),
    )
    connection.close()
    with reaped(server):
        _, err = finish(server)
    assert server.returncode == 0, err
    seen = parse_env(report.read_text())
    assert seen["pid"] == str(server.pid)  # prog was exec'd in place
    assert seen["child"] == str(code)
    assert all(seen[f"{name}-open"] == "yes" for name in ("SSLCTLFD", "SSLREADFD", "SSLWRITEFD"))
    assert ("CERTFILE" in seen) == keep and ("CAFILE" in seen) == keep
    if code == 100:
        assert err == b"s6-ucspitlsd: fatal: unrecognized command on control socket\n"
    elif code == 98:
        assert err.startswith(b"s6-ucspitlsd: fatal: handshake timed out"), err
    else:
        assert err == b""


def run_example_pair(
    pki: LoopbackPKI,
    tcp_pair: tuple[socket.socket, socket.socket],
    client_env: dict[str, str],
    server_args: tuple[str, ...] = (),
    client_args: tuple[str, ...] = ("-k", "localhost"),
) -> tuple[subprocess.Popen[bytes], bytes, bytes, bytes]:
    client_sock, server_sock = tcp_pair
    server = spawn(
        ["s6-ucspitlsd", "-v2", *server_args, "--", *SERVER_EXAMPLE],
        {0: server_sock.fileno(), 1: server_sock.fileno()},
        tls_env(pki),
    )
    client = spawn(
        ["s6-ucspitlsc", "-v2", *client_args, "--", *CLIENT_EXAMPLE],
        {6: client_sock.fileno(), 7: client_sock.fileno()},
        client_env,
        stdout=subprocess.PIPE,
    )
    client_sock.close()
    server_sock.close()
    with reaped(server, client):
        out, client_err = finish(client)
        _, server_err = finish(server)
    return client, out, client_err, server_err


def test_example_client_against_example_server(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, out, client_err, server_err = run_example_pair(pki, tcp_pair, tls_env(pki))
    assert client.returncode == 0, (client_err, server_err)
    text = out.decode()
    assert "S: 250-STARTTLS" in text and "S: 220 2.0.0 Ready to start TLS" in text
    after = text.split("S: 220 2.0.0 Ready to start TLS", 1)[1]
    assert "S: 250-SSL_PROTOCOL=TLSv1." in after and "S: 250 TLS on" in after
    assert "STARTTLS" not in after  # not offered again once TLS is on
    mine = parse_env(after)
    assert mine["SSL_TLS_SNI_SERVERNAME"] == "localhost"
    assert mine["SSL_PEER_CERT_HASH"].startswith("SHA256:")
    assert (
        b"accepted opportunistic TLS" in client_err and b"accepted opportunistic TLS" in server_err
    )


def server_reported(text: str) -> dict[str, str]:
    """The SSL_* variables the example server listed (``S: 250-NAME=VALUE``)."""
    return parse_env(
        "\n".join(line[7:] for line in text.splitlines() if line.startswith("S: 250-"))
    )


@pytest.mark.parametrize(
    ("server_args", "client_args", "send_cert"),
    [
        (("-y", "-k", "1"), ("-y", "-s", "-k", "localhost"), True),
        (
            ("--mandatory-client-cert", "--sni-level", "1"),
            ("--client-cert", "--servername", "localhost"),
            True,
        ),
        (("-Y", "-J", "-S"), ("-Y", "-S", "-J", "-K", "5000", "-k", "localhost"), False),
        (("-j", "-s", "-K", "5000"), ("-j", "-S", "-k", "localhost"), False),
    ],
    ids=["y-k", "long-forms", "Y-J-S", "j-s-K"],
)
def test_example_pair_tls_options(
    pki: LoopbackPKI,
    client_cert: ClientCert,
    tcp_pair: tuple[socket.socket, socket.socket],
    server_args: tuple[str, ...],
    client_args: tuple[str, ...],
    send_cert: bool,
) -> None:
    """The shared TLS options, on both UCSPI-TLS programs: client
    certificates (-y/-Y both sides), SNI (-k), close modes (-S/-s, -J/-j)
    and -K, seen from what the example server reports."""
    env = tls_env(pki, **client_cert.env) if send_cert else tls_env(pki)
    client, out, client_err, server_err = run_example_pair(
        pki, tcp_pair, env, server_args, client_args
    )
    assert client.returncode == 0, (client_err, server_err)
    assert b"fatal" not in client_err + server_err  # each -J saw the other's -S
    seen = server_reported(out.decode())
    assert seen["SSL_TLS_SNI_SERVERNAME"] == "localhost"
    if send_cert:
        assert seen["SSL_PEER_CERT_SUBJECT"] == "O=Clients\\, Inc., OU=QA, CN=test client"
    elif "-Y" in server_args:  # asked for one, got none: all zeros, as C
        assert seen["SSL_PEER_CERT_HASH"] == "SHA256:" + "0" * 64
    else:
        assert "SSL_PEER_CERT_HASH" not in seen


def test_ucspitlsd_mandatory_client_cert_refuses_a_client_without_one(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, _, _, server_err = run_example_pair(pki, tcp_pair, tls_env(pki), ("-y",))
    assert client.returncode == 1
    assert (
        b"s6-ucspitlsd: fatal: unable to complete TLS handshake: peer did not return a certificate"
        in server_err
    )


@pytest.mark.parametrize("keep", ["-Z", "-z"])
def test_ucspitlsc_keep_env(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path, keep: str
) -> None:
    """prog declines TLS at once (exits): only its environment matters."""
    client_sock, _server_sock = tcp_pair
    seen = tmp_path / "env"
    client = spawn(
        ["s6-ucspitlsc", keep, "--", "sh", "-c", f'env > "{seen}"'],
        {6: client_sock.fileno(), 7: client_sock.fileno()},
        tls_env(pki),
    )
    client_sock.close()
    with reaped(client):
        finish(client)
    assert client.returncode == 0
    env = parse_env(seen.read_text())
    assert ("CAFILE" in env) is (keep == "-Z")
    assert {"SSLCTLFD", "SSLREADFD", "SSLWRITEFD"} <= set(env)


def test_ucspitlsc_handshake_timeout(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    """The server side never answers: -K ends the engine, prog sees EOF."""
    client_sock, _silent = tcp_pair
    prog = 'printf y >&"$SSLCTLFD"; cat <&"$SSLREADFD"; echo "eof after timeout"'
    client = spawn(
        ["s6-ucspitlsc", "-K", "300", "--", "bash", "-c", prog],  # dash: no fds > 9
        {6: client_sock.fileno(), 7: client_sock.fileno()},
        tls_env(pki),
        stdout=subprocess.PIPE,
    )
    client_sock.close()
    with reaped(client):
        out, err = finish(client)
    assert out == b"eof after timeout\n"
    assert b"s6-ucspitlsc: fatal: handshake timed out after 300 ms" in err


def test_example_client_sees_a_failed_handshake(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    client, _, client_err, _ = run_example_pair(pki, tcp_pair, tls_env(pki, CAFILE=str(stranger)))
    assert client.returncode == 1
    assert b"smtp_starttls_client: fatal: TLS handshake failed" in client_err
    assert b"s6-ucspitlsc: fatal: " in client_err  # the engine says why
    assert b"Traceback" not in client_err


TRIO_SERVER = """
import os, sys, trio
from trio_s6tls._ucspitls import UcspiTLS

async def main(report: bool) -> None:
    os.write(1, b"go\\n")  # the protocol's "go ahead", in cleartext
    tls = UcspiTLS.from_environ()
    stream = await tls.start_tls_async(report=report)
    async with stream:
        request = b""
        while chunk := await stream.receive_some(65536):
            request += chunk
        protocol = tls.variables.get("SSL_PROTOCOL") or "-"
        await stream.send_all(protocol.encode() + b" " + request.upper())
        await stream.send_eof()

trio.run(main, sys.argv[1] == "Y")
"""


@pytest.mark.parametrize("command", ["Y", "y"])
def test_trio_helper_under_ucspitlsd(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], command: str
) -> None:
    client, connection = tcp_pair
    server = spawn(
        ["s6-ucspitlsd", "--", sys.executable, "-c", TRIO_SERVER, command],
        {0: connection.fileno(), 1: connection.fileno()},
        tls_env(pki),
    )
    connection.close()
    with reaped(server):
        client.settimeout(TIMEOUT)
        assert client.recv(3) == b"go\n"
        with tls_client(client, pki.ca_file) as tls:
            version = tls.version()
            tls.sendall(b"hello through tls")
            # Half-close: TLS has none, so shut the TCP write side down under it.
            socket.socket.shutdown(tls, socket.SHUT_WR)
            answer = receive_all(tls)
        _, err = finish(server)
    assert server.returncode == 0, err
    protocol = version if command == "Y" else "-"
    assert answer == f"{protocol} HELLO THROUGH TLS".encode()


def test_helper_outside_ucspitls_is_none() -> None:
    from trio_s6tls._ucspitls import UcspiTLS

    assert UcspiTLS.from_environ({}) is None
    env = {"SSLCTLFD": "x", "SSLREADFD": "4", "SSLWRITEFD": "5"}
    with pytest.raises(Exception, match="SSLCTLFD is not set to a file descriptor"):
        UcspiTLS.from_environ(env)


def test_bad_configuration_fails_before_prog_runs(
    tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    _, connection = tcp_pair
    env = {
        k: v for k, v in os.environ.items() if k not in ("CAFILE", "CADIR", "CERTFILE", "KEYFILE")
    }
    marker = tmp_path / "ran"
    proc = spawn(
        ["s6-ucspitlsc", "--", "touch", str(marker)],
        {6: connection.fileno(), 7: connection.fileno()},
        env,
    )
    with reaped(proc):
        _, err = finish(proc)
    assert proc.returncode == 100, err
    assert err.startswith(b"s6-ucspitlsc: fatal: ") and err.count(b"\n") == 1
    assert not marker.exists()


MOVED_FDS_CLIENT = """
import os, sys
from trio_s6tls._ucspitls import UcspiTLS

def line(fd):
    data = b""
    while not data.endswith(b"\\n"):  # byte by byte: nothing read beyond the reply
        chunk = os.read(fd, 1)
        if not chunk:
            raise SystemExit("EOF")
        data += chunk
    return data

network = int(sys.argv[1])
assert line(network).startswith(b"220 ")
os.write(network, b"STARTTLS\\r\\n")
assert line(network).startswith(b"220 ")
tls = UcspiTLS.from_environ()
variables = tls.start_tls()
os.write(tls.write_fd, b"XTLSINFO\\r\\nQUIT\\r\\n")
replies = b""
while not replies.endswith(b"221 2.0.0 Bye\\r\\n"):
    replies += line(tls.read_fd)
print(variables["SSL_PROTOCOL"], b"250 TLS on" in replies)
"""


def test_ucspitlsc_with_moved_network_fds(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client_sock, server_sock = tcp_pair
    server = spawn(
        ["s6-ucspitlsd", "--", *SERVER_EXAMPLE],
        {0: server_sock.fileno(), 1: server_sock.fileno()},
        tls_env(pki),
    )
    client = spawn(
        [
            "s6-ucspitlsc",
            "-k",
            "localhost",
            "-6",
            "3",
            "-7",
            "4",
            "--",
            sys.executable,
            "-c",
            MOVED_FDS_CLIENT,
            "3",
        ],
        {3: client_sock.fileno(), 4: client_sock.fileno()},
        tls_env(pki),
        stdout=subprocess.PIPE,
    )
    client_sock.close()
    server_sock.close()
    with reaped(server, client):
        out, err = finish(client)
        finish(server)
    assert client.returncode == 0, err
    protocol, info_ok = out.decode().split()
    assert protocol.startswith("TLSv1.") and info_ok == "True"


def test_ucspitlsc_started_with_stdin_and_stdout_closed(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client_sock, server_sock = tcp_pair
    server = spawn(
        ["s6-ucspitlsd", "--", *SERVER_EXAMPLE],
        {0: server_sock.fileno(), 1: server_sock.fileno()},
        tls_env(pki),
    )
    client = spawn(
        ["sh", "-c", 'exec 0<&- 1>&- "$0" -k localhost -- "$@"', program("s6-ucspitlsc"),
         sys.executable, "-c", MOVED_FDS_CLIENT + "\nprint('done', file=sys.stderr)\n", "6"],
        {6: client_sock.fileno(), 7: client_sock.fileno()},
        tls_env(pki),
    )  # fmt: skip
    client_sock.close()
    server_sock.close()
    with reaped(server, client):
        _, err = finish(client)
        finish(server)
    assert client.returncode == 0, err
    assert err.endswith(b"done\n"), err
