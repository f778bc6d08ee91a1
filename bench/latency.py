#!/usr/bin/env python3
"""One-connection latency: process start + handshake + exec + one exchange.

Measures, as the median of N runs (default 20), the wall time from starting
the tool to its exit, for one TLS connection carrying one line each way:

- ``s6-tlsd`` + prog (``head -n 1``) on an accepted loopback socket, against
  an in-process Python TLS client — beside stunnel4 in inetd mode with
  ``exec = head -n 1`` (its "exec mode"), on the same kind of socket;
- ``s6-tlsc`` + prog on a connected socket (fds 6/7), against an in-process
  Python TLS server — beside stunnel4 as an inetd-mode client (stunnel
  cannot take a connected ciphertext fd and exec a prog at once, so it
  ``connect``s itself and the harness plays prog on its stdin/stdout);
- ``s6-tlsclient host port prog`` (resolve + connect + handshake + exec +
  exchange) against the same server, beside the same stunnel client.

Usage: ``python bench/latency.py [-n RUNS] [--install]``. Needs the
installed console scripts next to this interpreter and ``stunnel4``
(skipped if absent; ``--install``, which ``nox -s bench -- --install``
passes to every script, apt-get installs it). Loopback only. Prints one
line per tool and the ratios. Exits are seen through pidfds
(``bench/_procwait.py``): ``Popen.wait(timeout)`` polls on a ladder of
sleeps and rounded every figure up by as much as 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import trustme
from _procwait import wait_exit

BIN = Path(sys.executable).parent
TIMEOUT = 30.0


class Pki:
    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.server_pem = directory / "server.pem"
        ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(self.server_pem)
        )
        self.client_context = ssl.create_default_context(cafile=str(self.ca_file))
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_context.load_cert_chain(str(self.server_pem))

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CAFILE": str(self.ca_file),
            "CERTFILE": str(self.server_pem),
            "KEYFILE": str(self.server_pem),
        }


def spawn(
    argv: list[str], fds: Mapping[int, int], env: Mapping[str, str], **kwargs: object
) -> subprocess.Popen[bytes]:
    """Start argv with child fd → our fd placed (parked high first)."""

    def place() -> None:
        parked = {target: fcntl.fcntl(source, fcntl.F_DUPFD, 300) for target, source in fds.items()}
        for target, copy in parked.items():
            os.dup2(copy, target)
            os.close(copy)

    return subprocess.Popen(argv, preexec_fn=place, close_fds=False, env=dict(env), **kwargs)  # type: ignore[call-overload, no-any-return]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    return client, server


def tls_echo_server(pki: Pki) -> tuple[socket.socket, threading.Thread]:
    """A listener whose one connection gets one line echoed through TLS."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)

    def serve() -> None:
        connection, _ = listener.accept()
        connection.settimeout(TIMEOUT)
        with pki.server_context.wrap_socket(connection, server_side=True) as tls:
            buffer = b""
            while b"\n" not in buffer:
                chunk = tls.recv(4096)
                if not chunk:
                    return
                buffer += chunk
            tls.sendall(buffer)
            # Until the client's end. Its half-close carries no close_notify
            # (s6's -s default), so OpenSSL 3 answers with a decode_error alert:
            # the engine then logs one fatal line after prog has finished.
            with contextlib.suppress(ssl.SSLError, OSError):
                tls.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def tls_line_client(pki: Pki, sock: socket.socket) -> None:
    sock.settimeout(TIMEOUT)
    with pki.client_context.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"ping\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            reply += chunk
        assert reply == b"ping\n", reply


PROG_CLIENT = ["sh", "-c", "echo ping >&7; head -n 1 <&6"]


def run_server_tool(pki: Pki, argv: list[str]) -> float:
    client, server = tcp_pair()
    started = time.monotonic()
    proc = spawn(
        argv, {0: server.fileno(), 1: server.fileno()}, pki.env(), stderr=subprocess.DEVNULL
    )
    server.close()
    tls_line_client(pki, client)
    code, ended = wait_exit(proc, TIMEOUT)
    assert code == 0, (argv, code)
    return ended - started


def run_tlsc(pki: Pki) -> float:
    listener, thread = tls_echo_server(pki)
    with listener:
        sock = socket.create_connection(listener.getsockname()[:2])
        argv = [str(BIN / "s6-tlsc"), "-k", "localhost", "--", *PROG_CLIENT]
        with tempfile.TemporaryFile() as stdout:
            started = time.monotonic()
            proc = spawn(
                argv,
                {6: sock.fileno(), 7: sock.fileno()},
                pki.env(),
                stdout=stdout,
                stderr=subprocess.DEVNULL,
            )
            sock.close()
            code, ended = wait_exit(proc, TIMEOUT)
            stdout.seek(0)
            out = stdout.read()
    thread.join(TIMEOUT)
    assert out == b"ping\n" and code == 0, (out, code)
    return ended - started


def run_tlsclient(pki: Pki) -> float:
    listener, thread = tls_echo_server(pki)
    with listener:
        port = listener.getsockname()[1]
        argv = [
            str(BIN / "s6-tlsclient"),
            "-H",
            "-k",
            "localhost",
            "127.0.0.1",
            str(port),
            *PROG_CLIENT,
        ]
        # stderr stays with the engine child until its end: not part of prog's latency.
        with tempfile.TemporaryFile() as stdout:
            started = time.monotonic()
            proc = subprocess.Popen(argv, env=pki.env(), stdout=stdout, stderr=subprocess.DEVNULL)
            code, ended = wait_exit(proc, TIMEOUT)
            stdout.seek(0)
            out = stdout.read()
    thread.join(TIMEOUT)
    assert out == b"ping\n" and code == 0, (out, code)
    return ended - started


def stunnel_config(directory: Path, name: str, lines: list[str]) -> Path:
    path = directory / name
    path.write_text("\n".join(["foreground = yes", "pid =", "debug = 0", *lines]) + "\n")
    return path


def run_stunnel_client(pki: Pki, stunnel: str, directory: Path) -> float:
    listener, thread = tls_echo_server(pki)
    with listener:
        port = listener.getsockname()[1]
        config = stunnel_config(
            directory,
            "client.conf",
            ["client = yes", f"CAfile = {pki.ca_file}", "verifyChain = yes", "checkHost = localhost",
             "sni = localhost", f"connect = 127.0.0.1:{port}"],
        )  # fmt: skip
        started = time.monotonic()
        proc = subprocess.Popen(
            [stunnel, str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        line = proc.stdout.readline()  # the harness plays prog: one line each way
        proc.stdin.close()
        _, ended = wait_exit(proc, TIMEOUT)
        proc.stdout.close()
    thread.join(TIMEOUT)
    assert line == b"ping\n", line
    return ended - started


def median_ms(function: Callable[[], float], runs: int) -> float:
    function()  # warm caches (page cache, pyc) once, unmeasured
    return statistics.median(function() for _ in range(runs)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument(
        "--install", action="store_true", help="apt-get install stunnel4 if missing"
    )
    args = parser.parse_args()
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if args.install and not stunnel:
        subprocess.run(["apt-get", "install", "-y", "-qq", "stunnel4"], check=True, timeout=600)
        stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pki = Pki(directory)
        results: dict[str, float] = {}
        results["s6-tlsd + prog"] = median_ms(
            lambda: run_server_tool(pki, [str(BIN / "s6-tlsd"), "head", "-n", "1"]), args.runs
        )
        results["s6-tlsc + prog"] = median_ms(lambda: run_tlsc(pki), args.runs)
        results["s6-tlsclient host port prog"] = median_ms(lambda: run_tlsclient(pki), args.runs)
        if stunnel:
            server_config = stunnel_config(
                directory, "server.conf",
                [f"cert = {pki.server_pem}", f"key = {pki.server_pem}", "exec = /usr/bin/head", "execArgs = head -n 1"],
            )  # fmt: skip
            results["stunnel4 server, inetd + exec"] = median_ms(
                lambda: run_server_tool(pki, [stunnel, str(server_config)]), args.runs
            )
            results["stunnel4 client, inetd + connect"] = median_ms(
                lambda: run_stunnel_client(pki, stunnel, directory), args.runs
            )
    print(f"one-connection latency, median of {args.runs} runs (ms):")
    for name, value in results.items():
        print(f"  {name:36s} {value:8.1f}")
    if stunnel:
        server_ratio = results["s6-tlsd + prog"] / results["stunnel4 server, inetd + exec"]
        client_ratio = results["s6-tlsc + prog"] / results["stunnel4 client, inetd + connect"]
        oneshot_ratio = (
            results["s6-tlsclient host port prog"] / results["stunnel4 client, inetd + connect"]
        )
        print(f"ratio s6-tlsd / stunnel4 server:       {server_ratio:5.1f}x")
        print(f"ratio s6-tlsc / stunnel4 client:       {client_ratio:5.1f}x")
        print(f"ratio s6-tlsclient / stunnel4 client:  {oneshot_ratio:5.1f}x")
    else:
        print("stunnel4 not found: no ratio (apt-get install -y stunnel4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
