"""Bulk throughput of a TLS tunnel, ours against stunnel4 and socat, in one run.

Every tool gets the same shape, timed from the first process started to the
last one exited (interpreter start-up included):

    head -c SIZE /dev/zero | TLS client == loopback TCP == TLS server | cat >/dev/null

once client → server ("up") and once server → client ("down"). For
reference, stunnel4 is also run as two daemons with its applications on
plain TCP (``stunnel4-daemon``: socat at both ends), the set-up behind the
figures usually quoted for it; that line is not the same shape as the others. TLS 1.3 with
TLS_AES_256_GCM_SHA384 everywhere (our and OpenSSL's default first choice).
Prints MB/s per tool and direction, our ratio to each peer, and the ceiling:
``openssl speed -evp aes-256-gcm`` at 16 KiB blocks.

    python bench/throughput.py [--size 1G] [--rounds 3] [--install]

Each round runs every tool once per direction, interleaved, so that a drift
in the machine's speed (a shared VM's varies by 30 % within minutes) hits
them all; the figures are medians over the rounds, the ratios the median of
each round's ratio. CPU seconds (all the processes of a run, user + system)
are printed beside: they say what the tunnel costs, whatever the machine's
hour.

``--install`` runs ``apt-get install -y stunnel4 socat`` when they are missing.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import trustme
from _procwait import wait_exit

from trio_s6tls import install_fds

BIN = Path(sys.executable).parent
CIPHER = "TLS_AES_256_GCM_SHA384"
TIMEOUT = 300


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1:].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


class Pki:
    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        self.ca = directory / "ca.pem"
        self.server = directory / "server.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(self.server)
        )

    def env(self) -> dict[str, str]:
        return dict(
            os.environ, CERTFILE=str(self.server), KEYFILE=str(self.server), CAFILE=str(self.ca)
        )


def spawn(
    argv: list[str], fds: dict[int, int], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``argv`` with child fds ``{target: ours}``; our other fds are CLOEXEC."""
    return subprocess.Popen(argv, preexec_fn=lambda: install_fds(fds), close_fds=False, env=env)


def writer(size: int) -> list[str]:
    return ["head", "-c", str(size), "/dev/zero"]


READER = ["sh", "-c", "exec cat >/dev/null"]


def finish(processes: list[subprocess.Popen[bytes]], started: float) -> float:
    """Seconds from ``started`` (time.monotonic) to the last exit, seen
    through pidfds (``Popen.wait(timeout)`` polls up to 50 ms apart)."""
    ended = started
    for process in processes:
        code, seen = wait_exit(process, TIMEOUT)
        if code != 0:
            raise RuntimeError(f"{process.args!r} exited {code}")
        ended = max(ended, seen)
    return ended - started


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    return client, server


def run_ours(pki: Pki, size: int, up: bool) -> float:
    env = pki.env()
    null = os.open(os.devnull, os.O_RDWR)
    started = time.monotonic()
    client_sock, server_sock = loopback_pair()
    app_out_r, app_out_w = os.pipe()  # the sending application's output
    app_in_r, app_in_w = os.pipe()  # the receiving application's input
    sending = spawn(writer(size), {1: app_out_w, 0: null})
    receiving = spawn(READER, {0: app_in_r})
    if up:
        client_fds = {0: app_out_r, 1: null, 6: client_sock.fileno(), 7: client_sock.fileno()}
        server_fds = {0: server_sock.fileno(), 1: server_sock.fileno(), 3: null, 4: app_in_w}
    else:
        client_fds = {0: null, 1: app_in_w, 6: client_sock.fileno(), 7: client_sock.fileno()}
        server_fds = {0: server_sock.fileno(), 1: server_sock.fileno(), 3: app_out_r, 4: null}
    server = spawn([str(BIN / "s6-tlsd-io"), "3", "4"], server_fds, env)
    client = spawn([str(BIN / "s6-tlsc-io"), "-k", "localhost", "6", "7"], client_fds, env)
    for fd in (app_out_r, app_out_w, app_in_r, app_in_w, null):
        os.close(fd)
    client_sock.close()
    server_sock.close()
    return finish([sending, receiving, server, client], started)


def run_stunnel(pki: Pki, size: int, up: bool, directory: Path) -> float:
    """stunnel4 in inetd mode on both ends: the client's stdin/stdout are the
    application, the server's the accepted socket, with ``exec`` for its
    application."""
    app = directory / "app.sh"  # execArgs splits on spaces, quotes or not
    app.write_text(
        "#!/bin/sh\n" + ("exec cat >/dev/null\n" if up else f"exec head -c {size} /dev/zero\n")
    )
    app.chmod(0o755)
    common = f"foreground = yes\npid =\nsyslog = no\ndebug = 0\nciphersuites = {CIPHER}\n"
    (directory / "server.conf").write_text(
        common + f"cert = {pki.server}\nexec = {app}\nexecArgs = app.sh\n"
    )
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        (directory / "client.conf").write_text(
            common + f"client = yes\nconnect = 127.0.0.1:{port}\nCAfile = {pki.ca}\n"
            "verifyChain = yes\ncheckHost = localhost\n"
        )
        null = os.open(os.devnull, os.O_RDWR)
        app_r, app_w = os.pipe()
        started = time.monotonic()
        if up:
            sending = spawn(writer(size), {1: app_w, 0: null})
            client = spawn(["stunnel4", str(directory / "client.conf")], {0: app_r, 1: null})
        else:
            sending = spawn(READER, {0: app_r})
            keep_open_r, keep_open_w = os.pipe()  # stdin held open: no early EOF
            client = spawn(["stunnel4", str(directory / "client.conf")], {0: keep_open_r, 1: app_w})
            os.close(keep_open_r)
        listener.settimeout(TIMEOUT)
        accepted, _ = listener.accept()
    server = spawn(
        ["stunnel4", str(directory / "server.conf")],
        {0: accepted.fileno(), 1: accepted.fileno(), 2: null},
    )
    accepted.close()
    for fd in (app_r, app_w, null):
        os.close(fd)
    try:
        return finish([sending, server, client], started)
    finally:
        if not up:
            os.close(keep_open_w)


def run_stunnel_daemon(pki: Pki, size: int, up: bool, directory: Path) -> float:
    """stunnel4 as most people run it: two daemons, the applications on plain
    TCP at both ends (socat moving the bytes). A reference for the figures
    quoted for stunnel elsewhere; not the same shape as the other runs."""
    entry, middle, exit_port = free_port(), free_port(), free_port()
    common = f"foreground = yes\npid =\nsyslog = no\ndebug = 0\nciphersuites = {CIPHER}\n"
    (directory / "dserver.conf").write_text(
        common
        + f"cert = {pki.server}\n[s]\naccept = 127.0.0.1:{middle}\nconnect = 127.0.0.1:{exit_port}\n"
    )
    (directory / "dclient.conf").write_text(
        common + f"client = yes\nCAfile = {pki.ca}\nverifyChain = yes\ncheckHost = localhost\n"
        f"[c]\naccept = 127.0.0.1:{entry}\nconnect = 127.0.0.1:{middle}\n"
    )
    zeros = f"OPEN:/dev/zero,readbytes={size}"
    started = time.monotonic()
    daemons = [
        spawn(["stunnel4", str(directory / name)], {}) for name in ("dserver.conf", "dclient.conf")
    ]
    try:
        if up:
            far_end = spawn(
                [
                    "socat",
                    "-u",
                    f"TCP-LISTEN:{exit_port},bind=127.0.0.1,reuseaddr",
                    "OPEN:/dev/null",
                ],
                {},
            )
            for port in (exit_port, middle, entry):
                wait_listening(port)
            near_end = spawn(["socat", "-u", zeros, f"TCP:127.0.0.1:{entry}"], {})
        else:
            far_end = spawn(
                ["socat", "-u", zeros, f"TCP-LISTEN:{exit_port},bind=127.0.0.1,reuseaddr"], {}
            )
            for port in (exit_port, middle, entry):
                wait_listening(port)
            near_end = spawn(["socat", "-u", f"TCP:127.0.0.1:{entry}", "OPEN:/dev/null"], {})
        return finish([near_end, far_end], started)
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(TIMEOUT)


def wait_listening(port: int) -> None:
    """Until something listens on 127.0.0.1:port (from /proc, so that we do
    not steal the single connection the peer will accept)."""
    needle = f"0100007F:{port:04X} 00000000:0000 0A"
    deadline = time.monotonic() + 10
    while needle not in Path("/proc/net/tcp").read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port}")
        time.sleep(0.002)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


def run_socat(pki: Pki, size: int, up: bool) -> float:
    port = free_port()
    tls = f"cert={pki.server},verify=0,reuseaddr,bind=127.0.0.1"
    client_tls = f"127.0.0.1:{port},cafile={pki.ca},verify=1,commonname=localhost"
    null = os.open(os.devnull, os.O_RDWR)
    started = time.monotonic()
    if up:
        server = spawn(
            ["socat", "-u", f"OPENSSL-LISTEN:{port},{tls}", "SYSTEM:exec cat >/dev/null"], {}
        )
        wait_listening(port)
        pipeline = spawn(
            ["sh", "-c", f"head -c {size} /dev/zero | socat -u - OPENSSL:{client_tls}"], {0: null}
        )
    else:
        server = spawn(
            [
                "socat",
                "-u",
                f"SYSTEM:exec head -c {size} /dev/zero",
                f"OPENSSL-LISTEN:{port},{tls}",
            ],
            {},
        )
        wait_listening(port)
        pipeline = spawn(
            ["sh", "-c", f"socat -u OPENSSL:{client_tls} - | cat >/dev/null"], {0: null}
        )
    os.close(null)
    return finish([server, pipeline], started)


def children_cpu() -> float:
    """User + system seconds of every child waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def openssl_ceiling() -> float:
    """MB/s of ``openssl speed -evp aes-256-gcm`` at 16 KiB (one core)."""
    out = subprocess.run(
        ["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.lower().startswith("aes-256-gcm"))
    kilobytes = float(re.findall(r"([\d.]+)k", line)[-1])
    return kilobytes * 1000 / 1e6


def ensure_peers(install: bool) -> list[str]:
    missing = [tool for tool in ("stunnel4", "socat") if shutil.which(tool) is None]
    if missing and install:
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, timeout=600)
        missing = [tool for tool in missing if shutil.which(tool) is None]
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1G", help="bytes per run (suffix K, M, G)")
    parser.add_argument("--install", action="store_true", help="apt-get install missing peers")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of every tool, interleaved (default 3)"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    size = parse_size(args.size)
    missing = ensure_peers(args.install)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pki = Pki(directory)
        tools: dict[str, Callable[[bool], float]] = {
            "trio_s6tls": lambda up: run_ours(pki, size, up),
            "stunnel4": lambda up: run_stunnel(pki, size, up, directory),
            "socat": lambda up: run_socat(pki, size, up),
            "stunnel4-daemon": lambda up: run_stunnel_daemon(pki, size, up, directory),
        }
        for tool in missing:
            print(f"{tool}: not installed, skipped (use --install)")
            tools = {name: run for name, run in tools.items() if not name.startswith(tool)}
        rates: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):  # interleaved: a drift of the machine hits every tool
            for direction, up in (("up", True), ("down", False)):
                for name, run in tools.items():
                    before = children_cpu()
                    rates.setdefault((name, direction), []).append(size / run(up) / 1e6)
                    cpu.setdefault((name, direction), []).append(children_cpu() - before)
        print(
            f"{size / (1 << 20):.0f} MiB one way, TLS 1.3 {CIPHER}, start-up included,"
            f" {args.rounds} round(s): medians; CPU is every process's user + sys"
        )
        print(f"{'tool':16} {'up MB/s':>9} {'CPU s':>6} {'down MB/s':>10} {'CPU s':>6}")
        for name in tools:
            up_rate, down_rate = (median(rates[name, d]) for d in ("up", "down"))
            up_cpu, down_cpu = (median(cpu[name, d]) for d in ("up", "down"))
            print(f"{name:16} {up_rate:9.0f} {up_cpu:6.2f} {down_rate:10.0f} {down_cpu:6.2f}")
        for peer in tools:
            if peer != "trio_s6tls":
                ratios = [
                    median(
                        o / p for o, p in zip(rates["trio_s6tls", d], rates[peer, d], strict=True)
                    )
                    for d in ("up", "down")
                ]
                print(
                    f"ratio trio_s6tls/{peer} (median of the rounds' ratios):"
                    f" up {ratios[0]:.2f}x, down {ratios[1]:.2f}x"
                )
        print(
            f"ceiling: openssl speed -evp aes-256-gcm, 16 KiB blocks: {openssl_ceiling():.0f} MB/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
