"""s6-tlsc and s6-tlsd end to end: handshake first, then exec prog in the
same process with the tunnel on its fds and the SSL_* variables.

Rules: loopback only, port 0; every wait is bounded (``finish`` kills what
overstays); no sleeps; peers we did not write (openssl s_client/s_server)
where the issue asks for them. ``finish`` also waits for EOF on stderr,
which every engine child holds: a test that finishes proves the engine
child did not outlive the session.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from support import (
    TIMEOUT,
    TLS_CONFIGURATION,
    ClientCert,
    MiB,
    finish,
    first_certificate_der,
    parse_env,
    program,
    read_line_matching,
    reaped,
    sh,
    sni_pem,
    spawn,
    tls_client,
    tls_env,
)

from trio_s6tls.testing import LoopbackPKI


def server_env(pki: LoopbackPKI, **extra: str) -> dict[str, str]:
    """Every TLS variable set (so we can see which ones prog gets), a stale
    SSL_PEER_CERT_HASH (it must be unset for prog), a UCSPI variable that
    must pass through."""
    identity = str(os.getuid()), str(os.getgid())
    return tls_env(
        pki,
        CADIR=str(pki.ca_file.parent),
        TLS_UID=identity[0],
        TLS_GID=identity[1],
        **{
            "KEYFILE:other.example": str(pki.server_file),
            "CERTFILE:other.example": str(pki.server_file),
        },
        SSL_PEER_CERT_HASH="stale",
        PROTO="TCP",
        TCPREMOTEIP="127.0.0.1",
        **extra,
    )


REPORT_SCRIPT = (
    "import os, sys\n"
    "open(sys.argv[1] + '.pid', 'w').write(str(os.getpid()))\n"
    "open(sys.argv[1] + '.env', 'w').write(''.join(f'{k}={v}\\n' for k, v in os.environ.items()))\n"
    "print('ready')\n"
)


def tlsd_prog_report(report: Path) -> list[str]:
    """A server prog that records its pid and its whole environment (sh
    would drop names like ``KEYFILE:x``), then answers."""
    return [sys.executable, "-c", REPORT_SCRIPT, str(report)]


def run_tlsd_under_listener(
    pki: LoopbackPKI, prog: list[str], flags: list[str], env: dict[str, str], client_argv: list[str]
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], bytes, bytes, bytes]:
    """Accept one connection from ``client_argv`` (which gets ``{port}``
    filled in) and run s6-tlsd + prog on it. Returns both processes and the
    client's output, the client's stderr and s6-tlsd's stderr."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        client = subprocess.Popen(
            [part.format(port=port) for part in client_argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        listener.settimeout(TIMEOUT)
        connection, _ = listener.accept()
    with connection, reaped(client):
        tlsd = spawn(
            ["s6-tlsd", *flags, "--", *prog], {0: connection.fileno(), 1: connection.fileno()}, env
        )
        connection.close()
        with reaped(tlsd):
            _, tlsd_err = finish(tlsd)
            out, err = finish(client)
    return tlsd, client, out, err, tlsd_err


def s_client(pki: LoopbackPKI, *extra: str) -> list[str]:
    return [
        "openssl", "s_client", "-connect", "127.0.0.1:{port}", "-CAfile", str(pki.ca_file),
        "-verify_return_error", "-ign_eof", "-quiet", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("keep", [False, True], ids=["default-z", "Z"])
def test_tlsd_with_openssl_s_client_env_and_pid(
    pki: LoopbackPKI, tmp_path: Path, keep: bool
) -> None:
    report = tmp_path / "report"
    flags = ["-Z"] if keep else ["-z"]
    env = server_env(pki)
    tlsd, _, out, err, tlsd_err = run_tlsd_under_listener(
        pki, tlsd_prog_report(report), flags, env, s_client(pki, "-servername", "localhost")
    )
    assert tlsd.returncode == 0, tlsd_err
    assert out == b"ready\n", err
    assert int((tmp_path / "report.pid").read_text()) == tlsd.pid  # exec'd in place
    seen = parse_env((tmp_path / "report.env").read_text())
    assert seen["SSL_PROTOCOL"] in ("TLSv1.2", "TLSv1.3")
    assert seen["SSL_CIPHER"]
    assert seen["SSL_TLS_SNI_SERVERNAME"] == "localhost"
    assert "SSL_PEER_CERT_HASH" not in seen  # unset by the notification
    assert "SSL_PEER_CERT_SUBJECT" not in seen
    assert seen["PROTO"] == "TCP" and seen["TCPREMOTEIP"] == "127.0.0.1"
    tls_names = [*TLS_CONFIGURATION, "KEYFILE:other.example", "CERTFILE:other.example"]
    for name in tls_names:
        if keep:
            assert seen[name] == env[name], name
        else:
            assert name not in seen, name


def test_tlsd_without_sni_unsets_the_variable(pki: LoopbackPKI, tmp_path: Path) -> None:
    report = tmp_path / "report"
    env = server_env(pki, SSL_TLS_SNI_SERVERNAME="stale")
    tlsd, _, out, err, tlsd_err = run_tlsd_under_listener(
        pki, tlsd_prog_report(report), [], env, s_client(pki, "-noservername")
    )
    assert tlsd.returncode == 0 and out == b"ready\n", (err, tlsd_err)
    assert "SSL_TLS_SNI_SERVERNAME" not in parse_env((tmp_path / "report.env").read_text())


def start_pair(
    pki: LoopbackPKI,
    tcp_pair: tuple[socket.socket, socket.socket],
    client_prog: list[str],
    server_prog: list[str],
    *,
    client_flags: tuple[str, ...] = ("-k", "localhost"),
    server_flags: tuple[str, ...] = (),
    client_env: dict[str, str] | None = None,
    server_env_: dict[str, str] | None = None,
    client_fds: tuple[int, int] = (3, 4),
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """s6-tlsc + client_prog against s6-tlsd + server_prog over loopback TCP,
    the client's network on ``client_fds`` (moved with -6/-7)."""
    client, server = tcp_pair
    moved = ["-6", str(client_fds[0]), "-7", str(client_fds[1])] if client_fds != (6, 7) else []
    tlsd = spawn(
        ["s6-tlsd", *server_flags, "--", *server_prog],
        {0: server.fileno(), 1: server.fileno()},
        server_env_ or tls_env(pki),
    )
    tlsc = spawn(
        ["s6-tlsc", *client_flags, *moved, "--", *client_prog],
        {client_fds[0]: client.fileno(), client_fds[1]: client.fileno()},
        client_env or tls_env(pki),
        stdout=subprocess.PIPE,
    )
    client.close()
    server.close()
    return tlsc, tlsd


def test_multi_mib_echo_is_byte_exact_with_moved_fds(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    payload = os.urandom(4 * MiB + 123)
    (tmp_path / "payload").write_bytes(payload)
    # The client prog writes in the background, closes its own fd 7, and
    # reads the echo from fd 6 until the server's EOF.
    client_prog = sh(
        'cat "$1" >&7 & exec 7>&-; cat <&6 > "$2"; wait',
        str(tmp_path / "payload"),
        str(tmp_path / "echo"),
    )
    tlsc, tlsd = start_pair(pki, tcp_pair, client_prog, ["cat"], client_fds=(3, 4))
    with reaped(tlsc, tlsd):
        _, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert tlsc.returncode == 0 and tlsd.returncode == 0, (client_err, server_err)
    echo = (tmp_path / "echo").read_bytes()
    assert len(echo) == len(payload)
    assert hashlib.sha256(echo).digest() == hashlib.sha256(payload).digest()


def test_half_close_full_reply_arrives(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    # The server prog answers only after EOF on its stdin: the request's end.
    server_prog = sh('n=$(wc -c); echo "got $n bytes"; head -c 2000000 /dev/zero')
    client_prog = sh("printf 'request' >&7; exec 7>&-; cat <&6")
    tlsc, tlsd = start_pair(pki, tcp_pair, client_prog, server_prog, client_fds=(6, 7))
    with reaped(tlsc, tlsd):
        out, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert tlsc.returncode == 0 and tlsd.returncode == 0, (client_err, server_err)
    first, _, rest = out.partition(b"\n")
    assert first.split() == [b"got", b"7", b"bytes"]
    assert rest == bytes(2000000)


LAYOUT_CHECK_FAILS = (
    "import sys\n"
    "from trio_s6tls import _openssl\n"
    "_openssl._ssl_pointer = lambda connection: None\n"
    "sys.stderr.write('test: ctypes cannot reach OpenSSL here\\n')\n"
)


def test_close_notify_keeps_the_data_behind_it_where_ctypes_cannot_reach_openssl(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """On an interpreter where _openssl's layout check fails, prog closing
    its output (close_notify, -S) while the server's data waits in the kernel loses none of it
    (SSLSocket's unwrap() would read a record and drop it)."""
    (tmp_path / "sitecustomize.py").write_text(LAYOUT_CHECK_FAILS)
    sent = tmp_path / "sent"
    os.mkfifo(sent)
    # The server says when 3 MB are written: more than the client's pipe
    # and engine hold, so some wait in its socket when it closes fd 7.
    server_prog = sh(
        'read -r line; head -c 3000000 /dev/zero; echo >"$1"; head -c 5000000 /dev/zero',
        str(sent),
    )
    client_prog = sh('echo go >&7; read -r x <"$1"; exec 7>&-; wc -c <&6', str(sent))
    tlsc, tlsd = start_pair(
        pki,
        tcp_pair,
        client_prog,
        server_prog,
        client_flags=("-S", "-k", "localhost"),  # close_notify at prog's EOF
        client_env=tls_env(pki, PYTHONPATH=str(tmp_path)),
        client_fds=(6, 7),
    )
    with reaped(tlsc, tlsd):
        out, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert b"ctypes cannot reach OpenSSL here" in client_err
    assert tlsc.returncode == 0 and tlsd.returncode == 0, (client_err, server_err)
    assert out.split() == [b"8000000"]


def test_client_certificate_seen_by_server_prog(
    pki: LoopbackPKI,
    client_cert: ClientCert,
    tcp_pair: tuple[socket.socket, socket.socket],
    tmp_path: Path,
) -> None:
    client_env = tls_env(pki, **client_cert.env)
    server_prog = sh('env > "$1"', str(tmp_path / "server.env"))
    client_prog = sh("cat <&6; env | grep -E '^(SSL_|CERTFILE=)'")
    tlsc, tlsd = start_pair(
        pki, tcp_pair, client_prog, server_prog,
        client_flags=("-y", "-Z", "-k", "localhost"), server_flags=("-y",), client_env=client_env,
    )  # fmt: skip
    with reaped(tlsc, tlsd):
        out, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert tlsc.returncode == 0 and tlsd.returncode == 0, (client_err, server_err)
    seen = parse_env((tmp_path / "server.env").read_text())
    expected_hash = "SHA256:" + hashlib.sha256(first_certificate_der(client_cert.file)).hexdigest()
    assert seen["SSL_PEER_CERT_HASH"] == expected_hash
    subject = seen["SSL_PEER_CERT_SUBJECT"]  # the OU is the fixture's business; "," escaped
    assert subject.startswith("O=Clients\\, Inc., OU="), subject
    assert subject.endswith(", CN=test client"), subject
    client_seen = parse_env(out.decode())
    assert client_seen["CERTFILE"] == str(client_cert.file)  # -Z
    assert client_seen["SSL_TLS_SNI_SERVERNAME"] == "localhost"
    server_hash = "SHA256:" + hashlib.sha256(first_certificate_der(pki.server_file)).hexdigest()
    assert client_seen["SSL_PEER_CERT_HASH"] == server_hash


def test_handshake_failure_prog_never_starts(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    client_marker, server_marker = tmp_path / "client-ran", tmp_path / "server-ran"
    tlsc, tlsd = start_pair(
        pki, tcp_pair, sh('touch "$1"', str(client_marker)), sh('touch "$1"', str(server_marker)),
        client_env=tls_env(pki, CAFILE=str(stranger)),
    )  # fmt: skip
    with reaped(tlsc, tlsd):
        _, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert tlsc.returncode == 98, client_err  # the engine's code
    assert tlsd.returncode == 98, server_err
    assert not client_marker.exists() and not server_marker.exists()
    assert b"Traceback" not in client_err + server_err
    assert client_err.decode().startswith("s6-tlsc: fatal: ")


def test_configuration_error_is_the_engines_code(
    tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    _, server = tcp_pair
    env = {k: v for k, v in os.environ.items() if k not in TLS_CONFIGURATION}
    env["CERTFILE"] = env["KEYFILE"] = str(tmp_path / "missing.pem")
    tlsd = spawn(["s6-tlsd", "true"], {0: server.fileno(), 1: server.fileno()}, env)
    with reaped(tlsd):
        _, err = finish(tlsd)
    assert tlsd.returncode == 96, err
    assert err.decode().count("\n") == 1 and err.startswith(b"s6-tlsd: fatal: ")


def openssl_s_server(pki: LoopbackPKI, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1",
         "-cert", str(pki.server_file), "-key", str(pki.server_file), *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    line = read_line_matching(server.stdout, b"ACCEPT")
    return server, int(line.rsplit(b":", 1)[1])


@pytest.mark.parametrize("fds", [(6, 7), (3, 4), (5, 9)], ids=["6-7", "-6 3 -7 4", "-6 5 -7 9"])
def test_tlsc_against_openssl_s_server(
    pki: LoopbackPKI, fds: tuple[int, int], tmp_path: Path
) -> None:
    server, port = openssl_s_server(pki, "-rev")
    with reaped(server):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        moved = [] if fds == (6, 7) else ["-6", str(fds[0]), "-7", str(fds[1])]
        output = tmp_path / "output"
        prog = sh(
            "printf 'hello world\\n' >&7; (head -n 1 <&6; env | grep '^SSL_PROTOCOL=') > \"$1\"",
            str(output),
        )
        tlsc = spawn(
            ["s6-tlsc", "-k", "localhost", *moved, "--", *prog],
            {fds[0]: sock.fileno(), fds[1]: sock.fileno()},
            tls_env(pki),
            stdout=subprocess.PIPE,
        )
        sock.close()
        with reaped(tlsc):
            _, err = finish(tlsc)
    assert tlsc.returncode == 0, err
    lines = output.read_text().splitlines()
    assert lines[0] == "dlrow olleh"
    assert lines[1].startswith("SSL_PROTOCOL=TLSv1.")


def test_wrong_servername_fails_the_handshake(pki: LoopbackPKI) -> None:
    server, port = openssl_s_server(pki)
    with reaped(server):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        tlsc = spawn(
            ["s6-tlsc", "-k", "wrong.example", "true"],
            {6: sock.fileno(), 7: sock.fileno()},
            tls_env(pki),
        )
        sock.close()
        with reaped(tlsc):
            _, err = finish(tlsc)
    assert tlsc.returncode == 98, err


def test_prog_exiting_early_does_not_hang(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    (tmp_path / "big").write_bytes(os.urandom(3 * MiB))
    # The server prog reads 10 bytes, answers them and leaves; the client
    # keeps sending megabytes nobody reads.
    server_prog = sh("head -c 10")
    client_prog = sh('cat "$1" >&7 2>/dev/null & exec 7>&-; cat <&6; wait', str(tmp_path / "big"))
    tlsc, tlsd = start_pair(pki, tcp_pair, client_prog, server_prog, client_fds=(6, 7))
    with reaped(tlsc, tlsd):
        out, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert tlsd.returncode == 0, server_err
    assert b"Traceback" not in client_err + server_err
    assert tlsc.returncode in (0, 141), client_err  # cat may die of SIGPIPE: default disposition
    assert out == (tmp_path / "big").read_bytes()[:10], out


def test_prog_closing_only_its_output(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    payload = os.urandom(MiB)
    (tmp_path / "payload").write_bytes(payload)
    # The server closes stdout at once (the client sees EOF), yet still
    # reads the whole request.
    server_prog = sh('exec 1>&-; cat > "$1"', str(tmp_path / "received"))
    client_prog = sh('cat <&6; cat "$1" >&7', str(tmp_path / "payload"))
    tlsc, tlsd = start_pair(pki, tcp_pair, client_prog, server_prog, client_fds=(6, 7))
    with reaped(tlsc, tlsd):
        out, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert tlsc.returncode == 0 and tlsd.returncode == 0, (client_err, server_err)
    assert out == b""
    assert (tmp_path / "received").read_bytes() == payload


def test_peer_reset_mid_stream(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """A reset ends the tunnel at once (111, said on stderr): prog's input
    ends, and what it writes afterwards fails with EPIPE — here sh dies of
    the SIGPIPE, as it would writing to any dead connection."""
    client, server = tcp_pair
    prog = sh('cat >/dev/null; echo "stdin ended" >&2; echo more')
    tlsd = spawn(["s6-tlsd", *prog], {0: server.fileno(), 1: server.fileno()}, tls_env(pki))
    server.close()
    with reaped(tlsd):
        with tls_client(client, pki.ca_file) as tls:
            tls.sendall(b"ping\n")
            # RST: linger 0, then close with the tunnel in full swing.
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            tls.sendall(b"x" * 100000)
        _, err = finish(tlsd)
    assert tlsd.returncode == -signal.SIGPIPE, err
    lines = err.decode().splitlines()
    assert "stdin ended" in lines
    [engine] = [line for line in lines if line.startswith("s6-tlsd: fatal: ")]
    assert engine.lower() == "s6-tlsd: fatal: unable to read from network: connection reset by peer"


def test_prog_gets_blocking_fds_and_default_sigpipe(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    script = tmp_path / "check.py"
    script.write_text(
        "import os\n"
        "print(all(os.get_blocking(fd) for fd in (0, 1)))\n"
        "print(sorted(int(n) for n in os.listdir('/proc/self/fd')))\n"
    )
    # sh reports the signal state it was exec'd with, then python checks fds.
    server_prog = sh(
        'grep -E "^(SigBlk|SigIgn)" /proc/self/status; exec "$1" "$2"', sys.executable, str(script)
    )
    client_prog = sh("exec 7>&-; cat <&6")
    tlsc, tlsd = start_pair(pki, tcp_pair, client_prog, server_prog, client_fds=(6, 7))
    with reaped(tlsc, tlsd):
        out, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert tlsc.returncode == 0 and tlsd.returncode == 0, (client_err, server_err)
    lines = out.decode().splitlines()
    status = dict(line.split(":\t") for line in lines[:2])
    assert int(status["SigBlk"], 16) == 0
    assert int(status["SigIgn"], 16) & (1 << (13 - 1)) == 0  # SIGPIPE not ignored
    assert lines[2] == "True"
    # 0, 1, 2, the fd listdir itself opens, and whatever inheritable fds
    # the test runner was started with (spawn passes them on): nothing of ours.
    assert set(eval(lines[3])) - {0, 1, 2, 3} <= inheritable_fds_of_this_process(), lines[3]


def inheritable_fds_of_this_process() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.get_inheritable(int(name)):
                fds.add(int(name))
        except OSError:
            pass  # the directory's own fd, closed by now
    return fds


@pytest.mark.parametrize(
    ("argv", "category"),
    [
        (["s6-tlsd"], "usage"),  # no prog: the usage line
        (["s6-tlsc", "-6", "x", "true"], "fatal"),  # a bad option: one fatal line, as C's gol
        (["s6-tlsc", "--bogus", "true"], "fatal"),
        (["s6-tlsd", "-k"], "fatal"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], category: str) -> None:
    proc = subprocess.run([program(argv[0]), *argv[1:]], capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 100
    assert proc.stderr.decode().count("\n") == 1
    assert proc.stderr.startswith(f"{argv[0]}: {category}: ".encode())


def test_unopened_network_fd_is_a_clear_error(pki: LoopbackPKI) -> None:
    proc = subprocess.run(
        [program("s6-tlsc"), "-6", "42", "-7", "43", "true"],
        capture_output=True,
        env=tls_env(pki),
        timeout=TIMEOUT,
    )
    assert proc.returncode == 111
    assert proc.stderr == b"s6-tlsc: fatal: file descriptor 42: Bad file descriptor\n"


@pytest.mark.parametrize("name", ["s6-tlsc", "s6-ucspitlsc"])
@pytest.mark.parametrize(
    ("fds", "message"),
    [
        (["-6", "3", "-7", "3"], "read-fd and write-fd must be different"),
        (["--read-fd=9", "--write-fd", "9"], "read-fd and write-fd must be different"),
        (["-7", "6"], "read-fd and write-fd must be different"),
        (["-6", "2"], "read-fd must be an unsigned integer (3 or more)"),
        (["-7", "1"], "write-fd must be an unsigned integer (3 or more)"),
    ],
)
def test_network_fds_are_checked_as_c_does(name: str, fds: list[str], message: str) -> None:
    """C's rules for -6/-7: 3 or more, and different (else 100, before any fd is used)."""
    proc = subprocess.run([program(name), *fds, "true"], capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 100
    assert proc.stderr == f"{name}: fatal: {message}\n".encode()


def test_unexecutable_prog_is_a_clear_error(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    tlsc, tlsd = start_pair(pki, tcp_pair, ["/nonexistent/prog"], ["cat"], client_fds=(6, 7))
    with reaped(tlsc, tlsd):
        _, client_err = finish(tlsc)
        finish(tlsd)
    assert tlsc.returncode == 111
    assert (
        client_err.decode().splitlines()[-1]
        == "s6-tlsc: fatal: unable to exec /nonexistent/prog: No such file or directory"
    )


LAZY_CHECK = """
import contextlib, io, sys
from trio_s6tls.programs import {module} as program
with contextlib.redirect_stdout(io.StringIO()) as out:
    assert program.main(["--help"]) == 0 and out.getvalue().startswith("usage: ")
    assert program.main(["--version"]) == 0
with contextlib.redirect_stderr(io.StringIO()) as err:
    assert program.main(["--bogus-option"]) == 100
assert err.getvalue().count("\\n") == 1
print("ssl" in sys.modules, "trio" in sys.modules)
"""


@pytest.mark.parametrize(
    "module", ["tlsc", "tlsd", "ucspitlsc", "ucspitlsd", "tlsclient", "tcpclient"]
)
def test_help_version_and_usage_import_neither_trio_nor_ssl(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LAZY_CHECK.format(module=module)],
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"False False\n"


# --- every TLS option passes through to the engine -------------------------


@pytest.fixture(scope="module")
def other_pem(pki: LoopbackPKI) -> Path:
    """A second server identity, for SNI: other.example."""
    return sni_pem(pki, "other.example")


def run_reporting_pair(
    pki: LoopbackPKI,
    tcp_pair: tuple[socket.socket, socket.socket],
    client_flags: list[str],
    server_flags: list[str],
    *,
    client_env: dict[str, str] | None = None,
    server_env_: dict[str, str] | None = None,
) -> tuple[int, int, dict[str, str], dict[str, str], str, str]:
    """Both progs report their environment: the server's goes through the
    tunnel to the client, which half-closes at once and then adds its own.
    Returns both exit codes, the server's and the client's variables, and
    both stderrs."""
    server_prog = sh("env | sed 's/^/server:/'; cat > /dev/null")
    client_prog = sh("exec 7>&-; cat <&6; env | sed 's/^/client:/'")
    tlsc, tlsd = start_pair(
        pki, tcp_pair, client_prog, server_prog, client_flags=tuple(client_flags),
        server_flags=tuple(server_flags), client_env=client_env, server_env_=server_env_, client_fds=(6, 7),
    )  # fmt: skip
    with reaped(tlsc, tlsd):
        out, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    text = out.decode()
    server_vars = parse_env(
        "\n".join(line[7:] for line in text.splitlines() if line.startswith("server:"))
    )
    client_vars = parse_env(
        "\n".join(line[7:] for line in text.splitlines() if line.startswith("client:"))
    )
    return (
        tlsc.returncode,
        tlsd.returncode,
        server_vars,
        client_vars,
        client_err.decode(),
        server_err.decode(),
    )


def test_alpn_both_sides(pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    c, d, server, client, _, _ = run_reporting_pair(
        pki, tcp_pair, ["-k", "localhost", "--alpn", "h2,http/1.1"], ["--alpn", "http/1.1"]
    )
    assert (c, d) == (0, 0)
    assert server["SSL_ALPN_PROTOCOL"] == client["SSL_ALPN_PROTOCOL"] == "http/1.1"


@pytest.mark.parametrize(
    ("client_flags", "server_flags", "protocol", "cipher_prefix"),
    [
        (["--min-version", "1.3"], [], "TLSv1.3", "TLS_"),
        (["--max-version", "1.2", "--ciphers", "ECDHE+CHACHA20"], [], "TLSv1.2", "ECDHE-"),
        ([], ["--max-version", "1.2"], "TLSv1.2", "ECDHE-"),
    ],
    ids=["client-min-1.3", "client-max-1.2-ciphers", "server-max-1.2"],
)
def test_versions_and_ciphers(
    pki: LoopbackPKI,
    tcp_pair: tuple[socket.socket, socket.socket],
    client_flags: list[str],
    server_flags: list[str],
    protocol: str,
    cipher_prefix: str,
) -> None:
    c, d, server, client, cerr, serr = run_reporting_pair(
        pki, tcp_pair, ["-k", "localhost", *client_flags], server_flags
    )
    assert (c, d) == (0, 0), (cerr, serr)
    assert server["SSL_PROTOCOL"] == client["SSL_PROTOCOL"] == protocol
    assert client["SSL_CIPHER"].startswith(cipher_prefix)
    if "--ciphers" in client_flags:
        assert "CHACHA20" in client["SSL_CIPHER"]


def test_version_mismatch_fails_both(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    c, d, server, client, _, serr = run_reporting_pair(
        pki, tcp_pair, ["-k", "localhost", "--max-version", "1.2"], ["--min-version", "1.3"]
    )
    assert (c, d) == (98, 98) and not server and not client, serr


def test_no_verify_cert(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    c, d, _, client, cerr, _ = run_reporting_pair(
        pki, tcp_pair, ["--no-verify-cert"], [], client_env=tls_env(pki, CAFILE=str(stranger))
    )
    assert (c, d) == (0, 0), cerr
    assert client["SSL_PEER_CERT_HASH"].startswith("SHA256:")


@pytest.mark.parametrize(
    ("client_flags", "server_flags", "server_code", "peer_cert"),
    [
        (["-Y"], ["-Y"], 0, False),  # optional: none sent, the all-zero hash (as C)
        (["-y"], ["-Y"], 0, True),
        (["-Y"], ["-y"], 98, False),  # mandatory and none sent: the server refuses
        (["--client-cert"], ["--mandatory-client-cert"], 0, True),
    ],
    ids=["Y-Y", "y-Y", "Y-y", "long-forms"],
)
def test_client_certificate_policies(
    pki: LoopbackPKI,
    client_cert: ClientCert,
    tcp_pair: tuple[socket.socket, socket.socket],
    client_flags: list[str],
    server_flags: list[str],
    server_code: int,
    peer_cert: bool,
) -> None:
    client_env = tls_env(pki, **client_cert.env)
    _, d, server, _, _, serr = run_reporting_pair(
        pki, tcp_pair, ["-k", "localhost", *client_flags], server_flags, client_env=client_env
    )
    assert d == server_code, serr
    if server_code == 0:
        no_cert = server["SSL_PEER_CERT_HASH"] == "SHA256:" + "0" * 64
        assert no_cert != peer_cert, server
        assert ("SSL_PEER_CERT_SUBJECT" in server) == peer_cert
    else:
        assert not server  # prog never ran


@pytest.mark.parametrize(
    ("server_flags", "servername", "ok"),
    [
        ([], "other.example", False),  # level 0: only KEYFILE/CERTFILE, wrong name for the client
        (["-k", "1"], "other.example", True),
        (["--sni"], "localhost", True),  # level 1: the default pair for other names
        (["--mandatory-sni"], "localhost", False),  # level 2: only :NAME pairs
        (["-k2"], "other.example", True),
    ],
    ids=["k0", "k1", "sni-default", "mandatory-unknown", "k2-known"],
)
def test_sni_levels(
    pki: LoopbackPKI,
    tcp_pair: tuple[socket.socket, socket.socket],
    other_pem: Path,
    server_flags: list[str],
    servername: str,
    ok: bool,
) -> None:
    env = tls_env(
        pki, **{"KEYFILE:other.example": str(other_pem), "CERTFILE:other.example": str(other_pem)}
    )
    c, d, server, _, cerr, serr = run_reporting_pair(
        pki, tcp_pair, ["-k", servername], server_flags, client_env=env, server_env_=env
    )
    if ok:
        assert (c, d) == (0, 0), (cerr, serr)
        assert server["SSL_TLS_SNI_SERVERNAME"] == servername
    else:
        assert c == 98 and d == 98, (cerr, serr)


@pytest.mark.parametrize(
    ("server_flags", "client_flags", "client_complains"),
    [
        ([], ["-J"], True),  # -s: the server half-closes without close_notify
        (["-S"], ["-J"], False),
        (["--close-notify"], ["--enforce-close-notify"], False),
        ([], ["-j"], False),
    ],
    ids=["s-J", "S-J", "long-forms", "s-j"],
)
def test_close_notify_modes(
    pki: LoopbackPKI,
    tcp_pair: tuple[socket.socket, socket.socket],
    server_flags: list[str],
    client_flags: list[str],
    client_complains: bool,
) -> None:
    c, d, server, _, cerr, serr = run_reporting_pair(
        pki, tcp_pair, ["-k", "localhost", *client_flags], server_flags
    )
    assert (c, d) == (0, 0), (cerr, serr)  # progs' codes: the engine logs after the exec
    assert server["SSL_PROTOCOL"]
    complaint = "s6-tlsc: fatal: peer closed the connection without a close_notify"
    assert (complaint in cerr) == client_complains, cerr


def test_client_close_notify_is_seen_by_enforcing_server(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    # The client's -S: its prog's early EOF becomes a close_notify, so the
    # server's -J has nothing to complain about (the client then discards
    # what arrives, so its prog sees no server report).
    *_, serr = run_reporting_pair(pki, tcp_pair, ["-k", "localhost", "-S"], ["-J"])
    assert "fatal" not in serr, serr
    *_, serr = run_reporting_pair_plain(pki)
    assert "s6-tlsd: fatal: peer closed the connection without a close_notify" in serr, serr


def run_reporting_pair_plain(
    pki: LoopbackPKI,
) -> tuple[int, int, dict[str, str], dict[str, str], str, str]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    with client, server:
        return run_reporting_pair(pki, (client, server), ["-k", "localhost"], ["-J"])


def test_verbosity_2_logs_the_handshake(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    _, d, _, _, _, serr = run_reporting_pair(pki, tcp_pair, ["-k", "localhost"], ["-v", "2"])
    assert d == 0
    assert "s6-tlsd: info: SSL_PROTOCOL=TLSv1." in serr


def test_handshake_timeout(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    client, server = tcp_pair  # the client never says a word
    marker = tmp_path / "ran"
    tlsd = spawn(
        ["s6-tlsd", "-K", "300", "touch", str(marker)],
        {0: server.fileno(), 1: server.fileno()},
        tls_env(pki),
    )
    server.close()
    with reaped(tlsd):
        _, err = finish(tlsd)
    assert tlsd.returncode == 98, err
    assert b"handshake timed out" in err and not marker.exists()
    del client


def test_prog_closing_only_its_input(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    (tmp_path / "request").write_bytes(os.urandom(MiB))
    # The server stops reading at once but answers 2 MB; the client sends a
    # request nobody reads. The whole answer must still arrive.
    server_prog = sh("exec 0<&-; head -c 2000000 /dev/zero")
    client_prog = sh(
        'cat "$1" >&7 2>/dev/null & exec 7>&-; cat <&6 | wc -c; wait', str(tmp_path / "request")
    )
    tlsc, tlsd = start_pair(pki, tcp_pair, client_prog, server_prog, client_fds=(6, 7))
    with reaped(tlsc, tlsd):
        out, client_err = finish(tlsc)
        _, server_err = finish(tlsd)
    assert tlsd.returncode == 0, server_err
    assert out.split()[0] == b"2000000", (out, client_err, server_err)


def test_tlsc_started_with_stdin_and_stdout_closed(
    pki: LoopbackPKI, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair
    tlsd = spawn(
        ["s6-tlsd", *sh("head -n 1")], {0: server.fileno(), 1: server.fileno()}, tls_env(pki)
    )
    server.close()
    prog = "echo hi >&7; head -n 1 <&6 >&2"
    tlsc = spawn(
        [
            "sh",
            "-c",
            'exec 0<&- 1>&- "$0" -k localhost -6 3 -7 4 sh -c "$1"',
            program("s6-tlsc"),
            prog,
        ],
        {3: client.fileno(), 4: client.fileno()},
        tls_env(pki),
    )
    client.close()
    with reaped(tlsc, tlsd):
        _, err = finish(tlsc)
        finish(tlsd)
    assert tlsc.returncode == 0 and err == b"hi\n", err


# --- sans-IO and in-process units of _exec ---------------------------------


def test_program_environment_cleans_and_applies() -> None:
    from trio_s6tls import program_environment

    base = {
        "CAFILE": "a",
        "KEYFILE:x.example": "k",
        "TLS_UID": "1",
        "PROTO": "TCP",
        "SSL_CIPHER": "old",
        "KEEP": "1",
    }
    updates = {"SSL_CIPHER": "new", "SSL_PEER_CERT_HASH": None, "KEEP": None}
    assert program_environment(base, keep_tls=False, updates=updates) == {
        "PROTO": "TCP",
        "SSL_CIPHER": "new",
    }
    kept = program_environment(base, keep_tls=True)
    assert kept == base and kept is not base


def test_install_fds_swaps_without_clobbering() -> None:
    from trio_s6tls import install_fds

    first_read, first_write = os.pipe()
    second_read, second_write = os.pipe()
    # Targets 200/201 get the read ends crossed: a swap through parking.
    install_fds({200: first_read, 201: second_read})
    try:
        os.write(first_write, b"1")
        os.write(second_write, b"2")
        assert os.read(200, 1) == b"1" and os.read(201, 1) == b"2"
        assert os.get_inheritable(200) and os.get_inheritable(201)
        for gone in (first_read, second_read):
            with pytest.raises(OSError):
                os.fstat(gone)
        install_fds({200: 201, 201: 200})  # a real swap of two targets
        os.write(first_write, b"3")
        assert os.read(201, 1) == b"3"
    finally:
        for fd in (200, 201, first_write, second_write):
            with contextlib.suppress(OSError):
                os.close(fd)
