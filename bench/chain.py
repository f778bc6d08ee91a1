#!/usr/bin/env python3
"""Per-connection latency of TLS super-servers: the s6-tcpserver … s6-tlsd chain, s6-tlsserver, stunnel4.

Every server runs the same prog per connection, ``head -n 1`` (echo one
line, exit), with the same certificate (EC P-256, ``bench/_pki.py``, which
the C tools on BearSSL accept too). One client thread in this process
makes N sequential connections (default 20, after 3 unmeasured warm-ups)
to each server in turn, round-robin, so that load from elsewhere falls on
all servers alike: connect, full handshake (TLS 1.2 or 1.3, whatever the
server picks; no session tickets, no resumption), one line out, its echo
back; then it reads until the server's end and closes. Two figures per
connection: until the reply (the latency a client sees) and until the
server's end of the connection (EOF).

Servers (each present only if its programs are):

- ``ours s6-tcpserver -H … s6-tlsd prog``: our chain, an interpreter start
  for s6-tlsd per connection (the figure of issue 12);
- ``ours s6-tlsserver -H … prog``: one Trio process for every connection;
- ``C s6-tcpserver … s6-tlsd prog`` and ``C s6-tlsserver … prog`` (the C
  s6-networking 2.8.0.1 on BearSSL, TLS 1.2 only; its s6-tcpserver does no
  name lookup, hence -H on ours);
- the mixed chains, ``C s6-tcpserver … ours s6-tlsd`` and ``ours
  s6-tcpserver … C s6-tlsd``: which half costs what;
- ``stunnel4`` as a daemon with ``exec = /usr/bin/head`` (inetd-like: one
  fork and exec of prog per connection; TLS in stunnel's own process),
  ``sessionResume = no`` and ``options = NO_TICKET``.

Nagle: stunnel sets TCP_NODELAY on its sockets by default; the s6 servers
keep Nagle's algorithm unless told, which can cost a delayed ACK (~40 ms)
per connection. So every s6 server runs twice, as is and with TCP_NODELAY:
``-D`` for ours and for the C s6-tlsserver; the C s6-tcpserver has no such
switch (its ``-D`` means no SO_REUSEADDR), so its chains get the C
``s6-tcpserver-access -D`` inserted, as the C s6-tlsserver does itself. Two
tables, stunnel4's figures in both. The client always sets TCP_NODELAY.

Usage: ``python bench/chain.py [-n CONNECTIONS] [--c-tools DIR] [--install]``
(``--install``: apt-get install stunnel4 if it is missing).
The C tools are looked for in ``--c-tools``, ``$TRIO_S6TLS_C_TOOLS``, else
``.c-s6/bin``. Prints the median and quartiles per server, the TLS version
it negotiated, and the ratios to stunnel4. Loopback only; every wait is
bounded.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from _pki import Pki, make_pki

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
PROG = ["/usr/bin/head", "-n", "1"]
LINE = b"ping\n"
TIMEOUT = 20.0
TLS_VARIABLES = ("CADIR", "CAFILE", "CERTFILE", "KEYFILE", "TLS_UID", "TLS_GID", "SSLKEYLOGFILE")


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in TLS_VARIABLES and not k.startswith(("CERTFILE:", "KEYFILE:", "SSL_", "TCP"))
    }
    return {**base, **extra}


def c_bin(option: str | None) -> Path | None:
    directory = Path(option or os.environ.get("TRIO_S6TLS_C_TOOLS") or REPO / ".c-s6" / "bin")
    wanted = ("s6-tcpserver", "s6-tcpserverd", "s6-tcpserver-access", "s6-tlsd", "s6-tlsd-io")
    wanted += ("s6-tlsserver",)
    return directory if all(os.access(directory / p, os.X_OK) for p in wanted) else None


def read_port(fd: int) -> int:
    """The port a server prints with -1 (a number and a newline)."""
    line = b""
    deadline = time.monotonic() + TIMEOUT
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(fd, 64) if ready else b""
        if not chunk:
            raise RuntimeError(f"no port from the server (got {line!r})")
        line += chunk
    return int(line)


@contextmanager
def s6_server(argv: Sequence[str], env: Mapping[str, str], log: Path) -> Iterator[int]:
    """An s6-style server started with -1: yields its port; SIGTERM at the end."""
    ready_r, ready_w = os.pipe()
    with open(log, "ab") as err:
        process = subprocess.Popen(list(argv), stdout=ready_w, stderr=err, env=dict(env))
    os.close(ready_w)
    try:
        try:
            port = read_port(ready_r)
        finally:
            os.close(ready_r)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int) -> None:
    """Until something listens on 127.0.0.1:port (from /proc/net/tcp, so
    that no connection is made to find out)."""
    needle = f"0100007F:{port:04X} 00000000:0000 0A"
    deadline = time.monotonic() + TIMEOUT
    while needle not in Path("/proc/net/tcp").read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port}")
        time.sleep(0.01)


@contextmanager
def stunnel(pki: Pki, directory: Path, log: Path) -> Iterator[int]:
    port = free_port()
    config = directory / "stunnel-chain.conf"
    config.write_text(
        "foreground = yes\npid =\nsyslog = no\ndebug = 3\n"
        f"output = {log}\n"
        "[bench]\n"
        f"accept = 127.0.0.1:{port}\n"
        f"cert = {pki.pem}\n"
        "sessionResume = no\n"
        "options = NO_TICKET\n"
        f"exec = {PROG[0]}\n"
        f"execArgs = head {' '.join(PROG[1:])}\n"
    )
    program = shutil.which("stunnel4") or shutil.which("stunnel") or "stunnel4"
    process = subprocess.Popen([program, str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield port
    finally:
        process.terminate()
        process.wait(TIMEOUT)


@dataclass
class Sample:
    reply: float  # connect → reply received (s)
    end: float  # connect → the server's end of the connection (s)
    version: str


def one_connection(port: int, context: ssl.SSLContext) -> Sample:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            version = {"TLSv1.2": "1.2", "TLSv1.3": "1.3"}.get(tls.version() or "", "?")
            tls.sendall(LINE)
            received = b""
            while not received.endswith(b"\n"):
                chunk = tls.recv(64)
                if not chunk:
                    break
                received += chunk
            replied = time.monotonic()
            if received != LINE:
                raise RuntimeError(f"bad reply {received!r}")
            try:
                while tls.recv(64):
                    pass
            except (ssl.SSLError, OSError):
                pass  # a TCP end without close_notify is the end too
            ended = time.monotonic()
    return Sample(replied - started, ended - started, version)


STUNNEL = "stunnel4 exec="
MODES = ("as is (Nagle on in the s6 servers)", "TCP_NODELAY in the s6 servers")


def servers(c_dir: Path | None, nodelay: bool) -> dict[str, Sequence[str]]:
    """Name → argv of each s6 server."""
    d = ["-D"] if nodelay else []
    ours_tcp = [str(BIN / "s6-tcpserver"), "-1", "-H", *d, "127.0.0.1", "0"]
    ours_tlsd = [str(BIN / "s6-tlsd")]
    table: dict[str, Sequence[str]] = {
        "ours s6-tcpserver … s6-tlsd": [*ours_tcp, *ours_tlsd, *PROG],
        "ours s6-tlsserver": [
            str(BIN / "s6-tlsserver"), "-1", "-H", *d, "127.0.0.1", "0", *PROG,
        ],
    }  # fmt: skip
    if c_dir:
        c_tcp = [str(c_dir / "s6-tcpserver"), "-1", "127.0.0.1", "0"]
        if nodelay:
            c_tcp += [str(c_dir / "s6-tcpserver-access"), "-D"]
        c_tlsd = [str(c_dir / "s6-tlsd")]
        table["C s6-tcpserver … s6-tlsd"] = [*c_tcp, *c_tlsd, *PROG]
        table["C s6-tlsserver"] = [str(c_dir / "s6-tlsserver"), "-1", *d, "127.0.0.1", "0", *PROG]
        table["C s6-tcpserver … ours s6-tlsd"] = [*c_tcp, *ours_tlsd, *PROG]
        table["ours s6-tcpserver … C s6-tlsd"] = [*ours_tcp, *c_tlsd, *PROG]
    return table


def quartiles(values: Sequence[float]) -> str:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"({q1 * 1000:5.1f}-{q3 * 1000:6.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="See the module docstring for what is measured and why.",
    )
    parser.add_argument("-n", "--connections", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--c-tools", help="bin directory of the C s6-networking")
    parser.add_argument(
        "--install", action="store_true", help="apt-get install stunnel4 if missing"
    )
    args = parser.parse_args()
    if args.install and not (shutil.which("stunnel4") or shutil.which("stunnel")):
        subprocess.run(["apt-get", "install", "-y", "-qq", "stunnel4"], check=True, timeout=600)
    c_dir = c_bin(args.c_tools)
    if not c_dir:
        print("C s6-networking not found (--c-tools, $TRIO_S6TLS_C_TOOLS, .c-s6/bin): no C rows")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        directory = Path(tmp)
        pki = make_pki(directory / "pki")
        env = clean_env(pki.server_env())
        context = ssl.create_default_context(cafile=str(pki.ca))
        log = directory / "servers.log"
        ports: dict[tuple[str, str], int] = {}
        for mode, nodelay in zip(MODES, (False, True), strict=True):
            for name, argv in servers(c_dir, nodelay).items():
                ports[mode, name] = stack.enter_context(s6_server(argv, env, log))
        have_stunnel = bool(shutil.which("stunnel4") or shutil.which("stunnel"))
        if have_stunnel:
            ports["", STUNNEL] = stack.enter_context(stunnel(pki, directory, log))
        samples: dict[tuple[str, str], list[Sample]] = {key: [] for key in ports}
        try:
            for _ in range(args.warmup):
                for port in ports.values():
                    one_connection(port, context)
            for _ in range(args.connections):
                for key, port in ports.items():
                    samples[key].append(one_connection(port, context))
        except Exception:
            print(f"servers' stderr:\n{log.read_text(errors='replace')}", file=sys.stderr)
            raise

    print(
        f"per-connection latency, prog {' '.join(PROG)}, median of {args.connections} sequential"
        f" connections each, round-robin after {args.warmup} warm-ups (ms, q1-q3)"
    )
    if not have_stunnel:
        print("stunnel4 not found: no ratios (apt-get install -y stunnel4)")
    width = max(len(name) for _, name in samples) + 2
    for mode in MODES:
        print(f"{mode}:")
        print(f"  {'server':{width}s} TLS {'until the reply':>25s} {'until the end':>25s}")
        rows = [key for key in samples if key[0] in (mode, "")]
        for key in rows:
            values = samples[key]
            replies = [s.reply for s in values]
            ends = [s.end for s in values]
            tls = "/".join(sorted({s.version for s in values}))
            print(
                f"  {key[1]:{width}s} {tls:3s} {statistics.median(replies) * 1000:9.1f}"
                f" {quartiles(replies):15s} {statistics.median(ends) * 1000:9.1f} {quartiles(ends):15s}"
            )
        if have_stunnel:
            reference = statistics.median(s.reply for s in samples["", STUNNEL])
            print(f"  ratios to {STUNNEL} (until the reply, same run):")
            for key in rows:
                if key[1] != STUNNEL:
                    median = statistics.median(s.reply for s in samples[key])
                    print(f"    {key[1]:{width}s} {median / reference:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
