"""s6-tlsserver end to end: the installed program as a subprocess, against
curl, python ``ssl`` clients and openssl.

Rules: loopback only, port 0 and ``-1`` readiness (never a sleep to wait for
the server); every wait has a bound (TIMEOUT) and waits on the event: a line
on the server's stderr (a pipe drained as it comes, so its warnings can
never block it; ``-v`` where the event is only logged at verbosity 2), a
socket read, a process exit. Every server is stopped and reaped on the way
out, pass or fail; sockets a test holds are closed by ``resources``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import (
    TIMEOUT,
    ClientCert,
    KiB,
    MiB,
    client_context,
    closed_by_server,
    connect,
    exchange,
    half_close,
    hosts_name,
    parse_env,
    program,
    read_all,
    rules_options,
    running_server,
    tls_connect,
    tls_env,
)

from trio_s6tls.testing import LoopbackPKI

ENV_PROG = ["sh", "-c", "env; exec cat >/dev/null"]


# -- environment -----------------------------------------------------------


def test_environment_complete(pki: LoopbackPKI, client_cert: ClientCert) -> None:
    """The documented lists: UCSPI server variables + SSL_*; TLS variables gone."""
    env = tls_env(pki, TLS_UID="", SOMETHING="kept")
    with (
        running_server(
            ["s6-tlsserver", "-h", "-Y", "-l", "here.example", "127.0.0.1", "0", *ENV_PROG], env
        ) as srv,
        tls_connect(srv.port, client_context(pki, client_cert.file)) as tls,
    ):
        local_port = tls.getpeername()[1]
        remote_port = tls.getsockname()[1]
        half_close(tls)
        got = parse_env(read_all(tls))
    assert got["PROTO"] == "TCP"
    assert got["TCPLOCALIP"] == "127.0.0.1"
    assert got["TCPLOCALPORT"] == str(local_port)
    assert got["TCPREMOTEIP"] == "127.0.0.1"
    assert got["TCPREMOTEPORT"] == str(remote_port)
    assert got["TCPCONNNUM"] == "0"  # the client's other connections, as C counts
    assert got["TCPLOCALHOST"] == "here.example"
    assert got["TCPREMOTEHOST"] == hosts_name("127.0.0.1")  # -h: the file's name, a dot
    assert "TCPREMOTEINFO" not in got
    assert got["SSL_PROTOCOL"] == "TLSv1.3"
    assert got["SSL_CIPHER"].startswith("TLS_")
    assert got["SSL_TLS_SNI_SERVERNAME"] == "localhost"
    assert got["SSL_PEER_CERT_HASH"] == "SHA256:" + hashlib.sha256(client_cert.der).hexdigest()
    subject = got["SSL_PEER_CERT_SUBJECT"]
    assert subject.startswith("O=Clients\\, Inc., OU=") and subject.endswith(", CN=test client")
    for name in ("CERTFILE", "KEYFILE", "CAFILE", "TLS_UID"):
        assert name not in got
    assert got["SOMETHING"] == "kept"
    assert "SSL_ALPN_PROTOCOL" not in got and "SSL_SESSION_RESUMED" not in got


def test_keep_env_no_lookup_no_sni(pki: LoopbackPKI) -> None:
    """-Z keeps the TLS variables; -H: no host names; no SNI: variable unset."""
    with running_server(
        ["s6-tlsserver", "-Z", "-H", "127.0.0.1", "0", *ENV_PROG], tls_env(pki)
    ) as srv:
        context = client_context(pki)
        context.check_hostname = False
        with tls_connect(srv.port, context, server_hostname=None) as tls:
            half_close(tls)
            got = parse_env(read_all(tls))
    assert got["CERTFILE"] == str(pki.server_file) and got["CAFILE"] == str(pki.ca_file)
    assert "TCPREMOTEHOST" not in got and "TCPLOCALHOST" not in got
    assert "SSL_TLS_SNI_SERVERNAME" not in got and "SSL_PEER_CERT_HASH" not in got


# -- curl and an HTTP responder ----------------------------------------------

RESPONDER = r"""#!/bin/sh
# A tiny HTTP/1.0 responder on stdin/stdout, serving $DOCROOT.
read -r method path version
while read -r line; do
  [ "$(printf %s "$line" | tr -d '\r')" = "" ] && break
done
file="$DOCROOT$path"
if [ -f "$file" ]; then
  printf 'HTTP/1.0 200 OK\r\nContent-Length: %s\r\nConnection: close\r\n\r\n' "$(wc -c < "$file")"
  exec cat "$file"
fi
printf 'HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
"""


def test_curl_page_big_file_and_parallel(pki: LoopbackPKI, tmp_path: Path) -> None:
    docroot = tmp_path / "www"
    docroot.mkdir()
    (docroot / "index.html").write_bytes(b"<html><body>hello from s6-tlsserver</body></html>\n")
    big = os.urandom(5 * MiB + 123)
    (docroot / "big.bin").write_bytes(big)
    responder = tmp_path / "responder.sh"
    responder.write_text(RESPONDER)
    responder.chmod(0o755)
    env = tls_env(pki, DOCROOT=str(docroot))
    curl = shutil.which("curl")
    assert curl is not None
    with running_server(
        ["s6-tlsserver", "-H", "-c", "100", "127.0.0.1", "0", str(responder)], env
    ) as srv:
        base = f"https://127.0.0.1:{srv.port}"
        common = [curl, "-sS", "--fail", "--cacert", str(pki.ca_file)]
        page = subprocess.run([*common, f"{base}/index.html"], capture_output=True, timeout=TIMEOUT)
        assert page.returncode == 0, page.stderr
        assert page.stdout == (docroot / "index.html").read_bytes()
        result = subprocess.run(
            [*common, "-o", str(tmp_path / "got.bin"), f"{base}/big.bin"], timeout=TIMEOUT
        )
        assert result.returncode == 0
        assert (tmp_path / "got.bin").read_bytes() == big
        outputs = []
        args = [*common, "--parallel", "--parallel-max", "20"]
        for index in range(20):
            name = "big.bin" if index % 5 == 0 else "index.html"
            output = tmp_path / f"p{index}"
            outputs.append((output, docroot / name))
            args += ["-o", str(output), f"{base}/{name}"]
        parallel = subprocess.run(args, capture_output=True, timeout=TIMEOUT * 2)
        assert parallel.returncode == 0, parallel.stderr
        for output, expected in outputs:
            assert output.read_bytes() == expected.read_bytes()
        missing = subprocess.run([*common, f"{base}/nothing"], capture_output=True, timeout=TIMEOUT)
        assert missing.returncode == 22  # 404 with --fail


# -- data integrity under load and abuse ---------------------------------------


def _garbage(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
        read_all(sock)


def _stall(port: int) -> None:
    """Half a ClientHello, then nothing: -K must end it."""
    with connect(port) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        read_all(sock)


def _reset(port: int) -> None:
    sock = connect(port)
    sock.sendall(b"\x16\x03\x01")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_concurrent_clients_with_abusers(pki: LoopbackPKI) -> None:
    """100 clients x 64 KiB echo, while 10 others send garbage, stall in the
    handshake (-K 2000) or reset: every good client gets its bytes back."""
    argv = ["s6-tlsserver", "-H", "-K", "2000", "-c", "200", "-C", "200", "127.0.0.1", "0", "cat"]
    with running_server(argv, tls_env(pki)) as srv:
        context = client_context(pki)
        payloads = [os.urandom(64 * KiB) for _ in range(100)]
        with ThreadPoolExecutor(max_workers=110) as pool:
            bad = [pool.submit(fn, srv.port) for fn in (_garbage, _stall, _reset) * 3 + (_stall,)]
            good = [pool.submit(exchange, srv.port, context, data) for data in payloads]
            for future, data in zip(good, payloads, strict=True):
                assert future.result(timeout=TIMEOUT * 3) == data, srv.stderr
            for abuser in bad:
                abuser.result(timeout=TIMEOUT)
        assert srv.process.poll() is None
        assert "Traceback" not in srv.stderr


def test_handshake_failures_are_logged_not_fatal(pki: LoopbackPKI) -> None:
    argv = ["s6-tlsserver", "-q", "-Q", "-H", "-K", "300", "127.0.0.1", "0", "cat"]
    with running_server(argv, tls_env(pki)) as srv:  # -Q after -q: back to warnings
        _garbage(srv.port)
        _stall(srv.port)
        assert exchange(srv.port, client_context(pki), b"still fine") == b"still fine"
        lines = srv.wait_stderr("timed out").splitlines()
        assert all(line.startswith("s6-tlsserver: warning: ") for line in lines), lines


# -- limits ----------------------------------------------------------------


def test_per_ip_limit(pki: LoopbackPKI, resources: contextlib.ExitStack) -> None:
    """-C 2: a third connection from 127.0.0.1 is closed at once; another
    address still gets in; the count goes down when clients leave (-v: the
    end of a connection is logged once its slot is free). TCPCONNNUM: the
    client's other connections."""
    prog = ["sh", "-c", "echo $TCPCONNNUM $$; exec cat"]
    argv = ["s6-tlsserver", "-v", "-H", "-C", "2", "127.0.0.1", "0", *prog]
    with running_server(argv, tls_env(pki)) as srv:
        context = client_context(pki)
        first = resources.enter_context(tls_connect(srv.port, context))
        second = resources.enter_context(tls_connect(srv.port, context))
        first_num, first_pid = first.recv(64).split()  # one write of sh's echo
        assert first_num == b"0" and second.recv(64).startswith(b"1 ")
        with connect(srv.port) as third:
            third.sendall(b"\x16\x03\x01")
            assert read_all(third) == b""
        try:
            other = resources.enter_context(tls_connect(srv.port, context, source="127.0.0.2"))
        except OSError:
            raise AssertionError(srv.stderr) from None
        assert other.recv(64).startswith(b"0 ")
        first.close()
        srv.wait_stderr(": info: reject 127.0.0.1_")  # s6-tcpserverd's words
        # Logged in the same step that frees the slot, before the next accept.
        srv.wait_stderr(f": info: end pid {first_pid.decode()} exitcode 0 count 1/2\n")

        def served_again() -> bool:
            try:
                with tls_connect(srv.port, context) as again:
                    return again.recv(64).startswith(b"1 ")
            except OSError:  # still refused: the server has not seen the close yet
                return False

        assert served_again(), "slot freed"
        second.close()
        other.close()


# -- rules, PROXY ------------------------------------------------------------


@pytest.mark.parametrize("form", ["directory", "cdb"])
def test_rules_allow_deny_env_exec(pki: LoopbackPKI, tmp_path: Path, form: str) -> None:
    """The same rules as a directory (-i) and as C's CDB of it (-x) decide
    alike. An exec rule replaces TLS and prog, as in the C chain (there
    s6-tcpserver-access runs before s6-tlsd): its program talks cleartext
    on the socket."""
    rules = tmp_path / "rules"
    allow = rules / "ip4/127.0.0.1_32"
    (allow / "env").mkdir(parents=True)
    (allow / "allow").touch()
    (allow / "env" / "GREETING").write_text("hello there\nsecond line ignored\n")
    (allow / "env" / "SOMETHING").write_text("")
    (rules / "ip4/127.0.0.2_32").mkdir(parents=True)
    (rules / "ip4/127.0.0.2_32/deny").touch()
    execd = rules / "ip4/127.0.0.0_8"
    execd.mkdir(parents=True)
    (execd / "allow").touch()
    (execd / "exec").write_text("sh -c 'echo from exec; exec cat >/dev/null'\n")
    env = tls_env(pki, SOMETHING="to be unset")
    with running_server(
        ["s6-tlsserver", "-v", "-H", *rules_options(rules, form), "127.0.0.1", "0", *ENV_PROG], env
    ) as srv:
        context = client_context(pki)
        with tls_connect(srv.port, context) as tls:
            half_close(tls)
            got = parse_env(read_all(tls))
        assert got["GREETING"] == "hello there" and "SOMETHING" not in got
        with connect(srv.port, source="127.0.0.2") as denied:
            denied.sendall(b"\x16\x03\x01")
            assert read_all(denied) == b""
        with connect(srv.port, source="127.0.0.3") as plain:
            plain.shutdown(socket.SHUT_WR)
            assert read_all(plain) == b"from exec\n"  # no handshake: cleartext
        assert "deny 127.0.0.2" in srv.stderr


def test_broken_rules_entry_is_fatal_for_that_connection(pki: LoopbackPKI, tmp_path: Path) -> None:
    """An entry that is a file (ENOTDIR): as C's s6-tcpserver-access, a
    fatal line (111 there); the connection is closed, the server goes on."""
    rules = tmp_path / "rules"
    (rules / "ip4").mkdir(parents=True)
    (rules / "ip4/127.0.0.1_32").write_text("not a directory\n")
    (rules / "ip4/127.0.0.2_32").mkdir()
    (rules / "ip4/127.0.0.2_32/allow").touch()
    argv = ["s6-tlsserver", "-H", "-i", str(rules), "127.0.0.1", "0", "echo", "served"]
    with running_server(argv, tls_env(pki)) as srv:
        with connect(srv.port) as sock:
            sock.sendall(b"\x16\x03\x01")
            assert read_all(sock) == b""
        srv.wait_stderr("s6-tlsserver: fatal: unable to check the rules for 127.0.0.1 port ")
        assert "ip4/127.0.0.1_32" in srv.stderr
        # 127.0.0.2's lookup stops at its own entry, before the broken one
        assert exchange(srv.port, client_context(pki), b"", source="127.0.0.2") == b"served\n"


def test_rules_no_match_is_deny(pki: LoopbackPKI, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "ip4/10.0.0.0_8").mkdir(parents=True)
    (rules / "ip4/10.0.0.0_8/allow").touch()
    with (
        running_server(
            ["s6-tlsserver", "-H", "-i", str(rules), "127.0.0.1", "0", "cat"], tls_env(pki)
        ) as srv,
        connect(srv.port) as sock,
    ):
        sock.sendall(b"\x16\x03\x01")
        assert read_all(sock) == b""


def _proxy_v2(src: str, dst: str, sport: int, dport: int) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def test_proxy_protocol(pki: LoopbackPKI) -> None:
    argv = ["s6-tlsserver", "-H", "-L", "-t", "500", "127.0.0.1", "0", *ENV_PROG]
    with running_server(argv, tls_env(pki)) as srv:
        context = client_context(pki)
        v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
        with tls_connect(srv.port, context, preamble=v1) as tls:
            half_close(tls)
            got = parse_env(read_all(tls))
        assert (got["TCPREMOTEIP"], got["TCPREMOTEPORT"]) == ("192.0.2.1", "56324")
        assert (got["TCPLOCALIP"], got["TCPLOCALPORT"]) == ("198.51.100.2", "443")
        v2 = _proxy_v2("203.0.113.7", "198.51.100.9", 40000, 8443)
        with tls_connect(srv.port, context, preamble=v2) as tls:
            half_close(tls)
            got = parse_env(read_all(tls))
        assert (got["TCPREMOTEIP"], got["TCPREMOTEPORT"]) == ("203.0.113.7", "40000")
        assert (got["TCPLOCALIP"], got["TCPLOCALPORT"]) == ("198.51.100.9", "8443")
        with connect(srv.port) as bad:
            bad.sendall(b"PROXY TCP4 nonsense\r\n")
            assert read_all(bad) == b""
        with connect(srv.port) as silent:  # -t bounds the wait for the header
            assert read_all(silent) == b""
        with tls_connect(srv.port, context, preamble=v1) as tls:
            half_close(tls)
            assert parse_env(read_all(tls))["TCPREMOTEIP"] == "192.0.2.1"
        assert "bad PROXY header" in srv.stderr


# -- signals, readiness --------------------------------------------------------


def test_readiness_then_sigterm(pki: LoopbackPKI) -> None:
    with running_server(["s6-tlsserver", "-H", "127.0.0.1", "0", "cat"], tls_env(pki)) as srv:
        assert srv.process.stdout is not None
        assert srv.process.stdout.read() == b""  # stdout closed after the line
        assert exchange(srv.port, client_context(pki), b"x") == b"x"
        assert srv.stop(signal.SIGTERM) == 0
        with pytest.raises(ConnectionRefusedError):
            connect(srv.port)


def test_sighup_terminates_children_server_goes_on(pki: LoopbackPKI) -> None:
    prog = ["sh", "-c", "echo ready; exec cat"]
    with running_server(["s6-tlsserver", "-H", "127.0.0.1", "0", *prog], tls_env(pki)) as srv:
        context = client_context(pki)
        with tls_connect(srv.port, context) as tls:
            assert tls.recv(10) == b"ready\n"
            srv.process.send_signal(signal.SIGHUP)
            assert read_all(tls) == b""  # cat got SIGTERM: the tunnel ends
        with tls_connect(srv.port, context) as tls:
            assert tls.recv(10) == b"ready\n"
            srv.process.send_signal(signal.SIGQUIT)
            assert srv.process.wait(TIMEOUT) == 0
            assert read_all(tls) == b""


def test_sigabrt_kills_children(pki: LoopbackPKI) -> None:
    prog = ["sh", "-c", "trap '' TERM; echo ready; exec cat"]
    with (
        running_server(["s6-tlsserver", "-H", "127.0.0.1", "0", *prog], tls_env(pki)) as srv,
        tls_connect(srv.port, client_context(pki)) as tls,
    ):
        assert tls.recv(10) == b"ready\n"
        srv.process.send_signal(signal.SIGABRT)
        assert srv.process.wait(TIMEOUT) == 0
        assert read_all(tls) == b""


# -- beyond the C tool -----------------------------------------------------------


def test_workers_serve_from_two_processes(pki: LoopbackPKI) -> None:
    prog = ["sh", "-c", "echo $PPID"]
    with running_server(
        ["s6-tlsserver", "-H", "--workers", "2", "127.0.0.1", "0", *prog], tls_env(pki)
    ) as srv:
        context = client_context(pki)
        seen: set[bytes] = set()
        for _ in range(200):
            seen.add(exchange(srv.port, context, b""))
            if len(seen) == 2:
                break
        assert len(seen) == 2, seen
        assert str(srv.process.pid).encode() + b"\n" not in seen
        assert srv.stop(signal.SIGTERM) == 0


def test_reload_on_sigusr1(
    pki: LoopbackPKI, tmp_path: Path, resources: contextlib.ExitStack
) -> None:
    """New connections get the new certificate; an open one keeps working."""
    certfile = tmp_path / "server.pem"
    shutil.copy(pki.server_file, certfile)
    env = tls_env(pki, CERTFILE=str(certfile), KEYFILE=str(certfile))
    context = client_context(pki)

    def served_certificate() -> bytes:
        with tls_connect(srv.port, context) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

    with running_server(["s6-tlsserver", "-v", "-H", "127.0.0.1", "0", "cat"], env) as srv:
        before = served_certificate()
        old = resources.enter_context(tls_connect(srv.port, context))
        old.sendall(b"one ")
        assert old.recv(10) == b"one "
        renewed = pki.ca.issue_cert("localhost", "127.0.0.1", common_name="renewed")
        renewed.private_key_and_cert_chain_pem.write_to_path(str(certfile))
        srv.process.send_signal(signal.SIGUSR1)
        srv.wait_stderr("certificates reloaded")
        assert served_certificate() != before, "new certificate served"
        old.sendall(b"two")
        half_close(old)
        assert read_all(old) == b"two"
        old.close()
        certfile.write_text("garbage")
        srv.process.send_signal(signal.SIGUSR1)
        srv.wait_stderr("reload failed")
        assert served_certificate() != before


def test_alpn_and_resumption(pki: LoopbackPKI) -> None:
    argv = [
        "s6-tlsserver",
        "-H",
        "--alpn",
        "h2,http/1.1",
        "--resumption",
        "127.0.0.1",
        "0",
        *ENV_PROG,
    ]
    with running_server(argv, tls_env(pki)) as srv:
        context = client_context(pki)
        context.set_alpn_protocols(["http/1.1", "h2"])
        with tls_connect(srv.port, context) as tls:
            half_close(tls)
            got = parse_env(read_all(tls))
            session = tls.session
        assert got["SSL_ALPN_PROTOCOL"] == "h2"
        assert got["SSL_SESSION_RESUMED"] == "0"
        with tls_connect(srv.port, context, session=session) as tls:
            half_close(tls)
            got = parse_env(read_all(tls))
            assert tls.session_reused
        assert got["SSL_SESSION_RESUMED"] == "1"


def test_sni_level_and_mandatory_client_cert(
    pki: LoopbackPKI, client_cert: ClientCert, tmp_path: Path
) -> None:
    named = pki.ca.issue_cert("app.example", common_name="app.example")
    named_pem = tmp_path / "app.pem"
    named.private_key_and_cert_chain_pem.write_to_path(str(named_pem))
    env = tls_env(
        pki, **{"CERTFILE:app.example": str(named_pem), "KEYFILE:app.example": str(named_pem)}
    )
    argv = ["s6-tlsserver", "-H", "-k", "1", "-y", "127.0.0.1", "0", *ENV_PROG]
    with running_server(argv, env) as srv:
        context = client_context(pki, client_cert.file)
        with tls_connect(srv.port, context, server_hostname="app.example") as tls:
            half_close(tls)
            got = parse_env(read_all(tls))
        assert got["SSL_TLS_SNI_SERVERNAME"] == "app.example"
        assert got["SSL_PEER_CERT_SUBJECT"].endswith("CN=test client")
        # the alert reaches the client: the server lingers instead of resetting
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            exchange(srv.port, client_context(pki), b"no client certificate")
    argv = ["s6-tlsserver", "-H", "--mandatory-sni", "127.0.0.1", "0", *ENV_PROG]
    with running_server(argv, env) as srv:
        context = client_context(pki)
        with tls_connect(srv.port, context, server_hostname="app.example") as tls:
            half_close(tls)
            assert parse_env(read_all(tls))["SSL_TLS_SNI_SERVERNAME"] == "app.example"
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            exchange(srv.port, context, b"")  # SNI localhost: no :NAME pair for it


def test_enforce_close_notify_and_verbose_log(pki: LoopbackPKI) -> None:
    argv = ["s6-tlsserver", "--verbosity", "3", "-H", "-J", "127.0.0.1", "0", "cat"]
    with running_server(argv, tls_env(pki)) as srv:
        exchange(srv.port, client_context(pki), b"ragged")
        srv.wait_stderr("close_notify")  # -J: the ragged EOF is logged
        assert "SSL_PROTOCOL=TLSv1.3" in srv.stderr  # debug (3): handshake parameters
    argv = ["s6-tlsserver", "--verbosity", "2", "-H", "-J", "-j", "127.0.0.1", "0", "cat"]
    with running_server(argv, tls_env(pki)) as srv:
        assert exchange(srv.port, client_context(pki), b"ragged") == b"ragged"
        # the end of the connection is logged after the tunnel's own messages
        srv.wait_stderr(": info: end pid ")
        assert "close_notify" not in srv.stderr


def test_chain_tcpserver_tlsd(pki: LoopbackPKI) -> None:
    """s6-tcpserver ... s6-tlsd prog: the same service built from parts."""
    argv = [
        "s6-tcpserver",
        "-H",
        "127.0.0.1",
        "0",
        program("s6-tlsd"),
        "sh",
        "-c",
        "echo $SSL_PROTOCOL; exec cat",
    ]
    with running_server(argv, tls_env(pki)) as srv:
        assert (
            exchange(srv.port, client_context(pki), b"through the chain")
            == b"TLSv1.3\nthrough the chain"
        )


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env_extra", "code", "kind", "needle"),
    [
        (["127.0.0.1"], {}, 100, "usage", "expected ip, port and prog"),
        (["127.0.0.1", "99999", "cat"], {}, 100, "usage", "invalid port"),
        (["-x", "/nonexistent.cdb", "127.0.0.1", "0", "cat"], {}, 111, "fatal", "rules file"),
        (["-r", "127.0.0.1", "0", "cat"], {}, 100, "fatal", "IDENT"),
        (["-c", "x", "127.0.0.1", "0", "cat"], {}, 100, "fatal", "invalid argument"),
        (["127.0.0.1", "0", "cat"], {"CERTFILE": "/nonexistent"}, 96, "fatal", "/nonexistent"),
        (["127.0.0.1", "0", "cat"], {"TLS_UID": "root"}, 100, "fatal", "TLS_UID"),
        (["192.0.2.1", "0", "cat"], {}, 111, "fatal", "unable to bind"),
        (["-i", "/nonexistent", "127.0.0.1", "0", "cat"], {}, 111, "fatal", "rules"),
    ],
)
def test_bad_input(
    pki: LoopbackPKI, args: list[str], env_extra: dict[str, str], code: int, kind: str, needle: str
) -> None:
    result = subprocess.run(
        [program("s6-tlsserver"), *args],
        env=tls_env(pki, **env_extra),
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == code
    text = result.stderr.decode()
    assert len(text.splitlines()) == 1 and f"s6-tlsserver: {kind}: " in text and needle in text, (
        text
    )


def test_help_and_version() -> None:
    for flag in ("--help", "--version"):
        result = subprocess.run(
            [program("s6-tlsserver"), flag], capture_output=True, timeout=TIMEOUT
        )
        assert result.returncode == 0 and b"s6-tlsserver" in result.stdout


def test_close_notify_modes(pki: LoopbackPKI) -> None:
    """prog ends: with -S the client reads a close_notify, with -s (default)
    a TCP FIN alone, which a strict client reports as a ragged EOF."""
    context = client_context(pki)
    prog = ["sh", "-c", "echo bye"]
    for flags, clean in ((["-S"], True), (["-S", "-s"], False), ([], False)):
        with (
            running_server(
                ["s6-tlsserver", *flags, "-H", "127.0.0.1", "0", *prog], tls_env(pki)
            ) as srv,
            connect(srv.port) as sock,
            context.wrap_socket(
                sock, server_hostname="localhost", suppress_ragged_eofs=False
            ) as tls,
        ):
            assert tls.recv(10) == b"bye\n"
            if clean:
                assert tls.recv(10) == b""
            else:
                with pytest.raises(ssl.SSLEOFError):
                    tls.recv(10)


def test_banner_before_handshake_quiet_and_identity(pki: LoopbackPKI) -> None:
    """-B is sent in cleartext first; -q silences per-connection warnings;
    -u/-g/-G set prog's identity (as root); -P, -z are accepted defaults."""
    prog = ["sh", "-c", "id -u; id -G"]
    argv = ["s6-tlsserver", "-q", "-P", "-z", "-B", "220 ready\r\n", "-H"]
    if os.geteuid() == 0:
        argv += ["-u", "65534", "-g", "65534", "-G", "65534"]
    with running_server([*argv, "127.0.0.1", "0", *prog], tls_env(pki)) as srv:
        with connect(srv.port) as sock:
            banner = b""
            while not banner.endswith(b"\r\n"):
                byte = sock.recv(1)  # bounded by the socket's timeout
                assert byte, f"EOF after {banner!r}"
                banner += byte
            assert banner == b"220 ready\r\n"
            with client_context(pki).wrap_socket(sock, server_hostname="localhost") as tls:
                half_close(tls)
                ids = read_all(tls).split()
        if os.geteuid() == 0:
            assert ids == [b"65534", b"65534"]
        _garbage(srv.port)  # logged before the close, if it were logged at all
        assert srv.stderr == ""


def test_sigterm_lets_open_connections_finish(
    pki: LoopbackPKI, resources: contextlib.ExitStack
) -> None:
    """Our TLS tunnels live in the server process: SIGTERM stops accepting at
    once, and the server exits when the last open connection has ended (the
    C tool's per-connection processes would likewise outlive it). -c 1
    keeps a second client in the kernel's backlog, unaccepted: closing the
    listener resets it, which is how we see that the listener is closed."""
    with running_server(
        ["s6-tlsserver", "-H", "-c", "1", "127.0.0.1", "0", "cat"], tls_env(pki)
    ) as srv:
        tls = resources.enter_context(tls_connect(srv.port, client_context(pki)))
        tls.sendall(b"before ")
        assert tls.recv(10) == b"before "
        queued = resources.enter_context(connect(srv.port))  # the kernel completes it
        srv.process.send_signal(signal.SIGTERM)
        assert closed_by_server(queued), "listener closed"
        assert _refused(srv.port)
        assert srv.process.poll() is None
        tls.sendall(b"after")
        half_close(tls)
        assert read_all(tls) == b"after"
        tls.close()
        assert srv.process.wait(TIMEOUT) == 0


def _refused(port: int) -> bool:
    try:
        connect(port).close()
    except ConnectionRefusedError:
        return True
    return False


def test_missing_prog_costs_one_connection(pki: LoopbackPKI) -> None:
    with running_server(
        ["s6-tlsserver", "-H", "127.0.0.1", "0", "/nonexistent/prog"], tls_env(pki)
    ) as srv:
        for _ in range(2):
            assert exchange(srv.port, client_context(pki), b"x") == b""
        assert srv.process.poll() is None
        assert "unable to spawn /nonexistent/prog" in srv.stderr


def test_ipv6_loopback(pki: LoopbackPKI) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with (
        running_server(["s6-tlsserver", "-H", "::1", "0", *ENV_PROG], tls_env(pki)) as srv,
        socket.create_connection(("::1", srv.port), timeout=TIMEOUT) as raw,
        client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        half_close(tls)
        got = parse_env(read_all(tls))
    assert got["TCPLOCALIP"] == "::1" and got["TCPREMOTEIP"] == "::1"


# -- the library under the programs ---------------------------------------------


async def test_serve_reports_each_connection(pki: LoopbackPKI) -> None:
    """serve() in process: a ConnectionRecord per ended connection, refused
    and failed ones included; stop_accepting() returns once all have ended."""
    import functools

    import trio

    from trio_s6tls._server import ConnectionRecord, ServerConfig, bind, listener_from, serve
    from trio_s6tls._tlsconfig import TLSOptions, server_context

    records: list[ConnectionRecord] = []
    options = TLSOptions(verbosity=0, handshake_timeout_ms=2000)
    config = ServerConfig(
        argv=["sh", "-c", "cat; exit 3"],
        context=server_context(tls_env(pki), options),
        tls_options=options,
        base_env=tls_env(pki),
        max_per_ip=1,
        remote_lookup=False,
    )
    config.log.verbosity = 0
    sock = bind("127.0.0.1", 0, 16)
    port = sock.getsockname()[1]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(serve, on_finished=records.append), [listener_from(sock)], config
            )
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            tls = trio.SSLStream(stream, client_context(pki), server_hostname="localhost")
            await tls.send_all(b"hello")
            assert await tls.receive_some(5) == b"hello"
            extra = await trio.open_tcp_stream("127.0.0.1", port)  # over -C 1
            assert await extra.receive_some(10) == b""
            await extra.aclose()
            await tls.aclose()  # close_notify: cat sees EOF, exits 3
            garbage = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
            await garbage.send_all(b"not TLS at all\r\n\r\n")
            with contextlib.suppress(trio.BrokenResourceError):  # reset: our bytes unread
                while await garbage.receive_some(100):
                    pass
            await garbage.aclose()
            server.stop_accepting()
    assert server.active == 0
    by_outcome = sorted(records, key=lambda r: (r.refused or "", r.engine_status))
    ok, failed, refused = by_outcome
    assert refused.refused == "per-ip limit" and refused.env == {}
    assert ok.prog_status == 3 and ok.engine_status == 0 and ok.env["SSL_PROTOCOL"] == "TLSv1.3"
    assert failed.engine_status == 98 and failed.prog_status is None and failed.env == {}


IDLE_PROG = """
import os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: (os.write(1, b"term\\n"), sys.exit(5)))
os.write(int(sys.argv[1]), b"ready\\n")  # to the test, not the client
for line in sys.stdin.buffer:
    os.write(1, b"got " + line)  # one write: one read for the tunnel
"""


async def test_an_idle_connection_waits_in_one_task(
    pki: LoopbackPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve() in process: once prog runs, a connection with nothing to do
    waits in its own task alone (no reaper, pump or nursery: memory per
    idle connection), and wakes for each of its events — the client's
    data, prog's output, prog's end — into the whole tunnel."""
    import functools
    import sys

    import trio

    from trio_s6tls._fdstreams import Parking
    from trio_s6tls._server import ConnectionRecord, ServerConfig, bind, listener_from, serve
    from trio_s6tls._tlsconfig import TLSOptions, server_context

    parked = [trio.Event()]
    park = Parking.wait_any_readable

    async def noting_parks(self: Parking, fds: list[int]) -> None:
        parked[-1].set()
        await park(self, fds)

    monkeypatch.setattr(Parking, "wait_any_readable", noting_parks)

    def tasks_below(task: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
        children = [child for nursery in task.child_nurseries for child in nursery.child_tasks]
        return children + [below for child in children for below in tasks_below(child)]

    def connection_tasks() -> list[trio.lowlevel.Task]:
        return [
            task
            for task in tasks_below(trio.lowlevel.current_root_task())
            if task.coro.__qualname__ == "Server.connection"
        ]

    ended, records = trio.open_memory_channel[ConnectionRecord](3)
    options = TLSOptions(verbosity=0, close_notify=True)
    ready_read, ready_write = os.pipe()
    os.set_inheritable(ready_write, True)
    config = ServerConfig(
        argv=[sys.executable, "-c", IDLE_PROG, str(ready_write)],
        context=server_context(tls_env(pki), options),
        tls_options=options,
        base_env=tls_env(pki),
        remote_lookup=False,
    )
    config.log.verbosity = 0
    sock = bind("127.0.0.1", 0, 16)
    port = sock.getsockname()[1]

    async def idle_client() -> tuple[trio.SSLStream[trio.SocketStream], trio.lowlevel.Task]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(stream, client_context(pki), server_hostname="localhost")
        await tls.do_handshake()
        await parked[-1].wait()  # prog runs, the connection parks
        parked.append(trio.Event())
        await trio.lowlevel.wait_readable(ready_read)  # prog is set up
        assert os.read(ready_read, 100) == b"ready\n"
        await trio.testing.wait_all_tasks_blocked()
        (task,) = connection_tasks()
        assert tasks_below(task) == []
        return tls, task

    with trio.fail_after(TIMEOUT), os.fdopen(ready_read, "rb"), os.fdopen(ready_write, "wb"):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(serve, on_finished=ended.send_nowait),
                [listener_from(sock)],
                config,
            )
            tls, task = await idle_client()
            await tls.send_all(b"hello\n")  # the client speaks
            assert await tls.receive_some(100) == b"got hello\n"
            assert len(tasks_below(task)) == 3  # prog's reaper, and a pump each way
            await tls.aclose()
            statuses = [(await records.receive()).prog_status]
            tls, _ = await idle_client()
            (process,) = server.processes
            process.send_signal(signal.SIGTERM)  # prog speaks, then ends
            assert await tls.receive_some(100) == b"term\n"
            assert await tls.receive_some(100) == b""
            await tls.aclose()
            statuses.append((await records.receive()).prog_status)
            tls, _ = await idle_client()
            (process,) = server.processes
            process.kill()  # prog ends, silent
            assert await tls.receive_some(100) == b""
            await tls.aclose()
            statuses.append((await records.receive()).prog_status)
            server.stop_accepting()
    assert statuses == [0, 5, -signal.SIGKILL]


# -- our own clients ---------------------------------------------------------------


@pytest.mark.parametrize("chain", [False, True], ids=["s6-tlsclient", "s6-tcpclient+s6-tlsc"])
def test_our_clients_against_us(pki: LoopbackPKI, chain: bool) -> None:
    """Echo through s6-tlsclient (or s6-tcpclient ... s6-tlsc), both
    environments as the program page lists them."""
    server_prog = ["sh", "-c", 'env > "$OUT"; exec cat']
    client_prog = ["sh", "-c", "echo ping >&7; exec 7>&-; cat <&6; env"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "server-env"
        env = tls_env(pki, OUT=str(out))
        with running_server(["s6-tlsserver", "-H", "127.0.0.1", "0", *server_prog], env) as srv:
            if chain:
                argv = [program("s6-tcpclient"), "-H", "127.0.0.1", str(srv.port)]
                argv += [program("s6-tlsc"), "-k", "localhost", *client_prog]
            else:
                argv = [
                    program("s6-tlsclient"),
                    "-H",
                    "-k",
                    "localhost",
                    "127.0.0.1",
                    str(srv.port),
                ]
                argv += client_prog
            result = subprocess.run(argv, env=env, capture_output=True, timeout=TIMEOUT)
            assert result.returncode == 0, result.stderr
            lines = result.stdout.decode().splitlines()
            assert lines[0] == "ping"
            client_env = parse_env("\n".join(lines[1:]).encode())
            # prog wrote it before its cat echoed our ping: no wait
            assert out.exists() and out.stat().st_size > 0, "server env written"
            server_env = parse_env(out.read_bytes())
    assert client_env["SSL_PROTOCOL"] == server_env["SSL_PROTOCOL"] == "TLSv1.3"
    assert client_env["SSL_CIPHER"] == server_env["SSL_CIPHER"]
    assert (
        client_env["SSL_TLS_SNI_SERVERNAME"] == server_env["SSL_TLS_SNI_SERVERNAME"] == "localhost"
    )
    assert client_env["SSL_PEER_CERT_HASH"].startswith("SHA256:")
    assert client_env["TCPREMOTEPORT"] == server_env["TCPLOCALPORT"] == str(srv.port)
    assert client_env["TCPLOCALPORT"] == server_env["TCPREMOTEPORT"]
    assert server_env["TCPCONNNUM"] == "0" and "TCPCONNNUM" not in client_env


def test_keylog_and_min_version(pki: LoopbackPKI, tmp_path: Path) -> None:
    """SSLKEYLOGFILE (research) gets the session secrets; --min-version 1.3
    refuses a TLS 1.2-only client."""
    keylog = tmp_path / "keys.log"
    env = tls_env(pki, SSLKEYLOGFILE=str(keylog))
    argv = ["s6-tlsserver", "-H", "--min-version", "1.3", "127.0.0.1", "0", "cat"]
    with running_server(argv, env) as srv:
        assert exchange(srv.port, client_context(pki), b"secret") == b"secret"
        assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in keylog.read_text()
        old_client = client_context(pki)
        old_client.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            exchange(srv.port, old_client, b"")
