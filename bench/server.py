"""s6-tlsserver against stunnel4 in exec mode, side by side in one run.

Both servers run the same trivial responder per connection (``head -n 1``:
echo one line, exit) and the same certificate (an EC P-256 chain, like
trustme's, but one the C tools on BearSSL accept too: ``bench/_pki.py``).
Neither issues session tickets (s6-tlsserver's default; ``sessionResume =
no`` and ``options = NO_TICKET`` for stunnel), so every connection is a
full handshake.

1. Full handshakes per second: CLIENTS client processes × THREADS threads,
   each looping connect → handshake → one line → reply → close for SECONDS.
   s6-tlsserver runs with ``--workers`` = the number of cores. ROUNDS
   rounds (default 3), each server once per round, interleaved (the first
   one alternating) while all of them listen: this machine's speed drifts
   by tens of per cent within minutes, and one run per server measured the
   minute more than the server. Printed: each round's rates, the medians,
   and the median of the rounds' ratios.
2. Resident memory per idle connection: N connections opened and held (the
   responder waits for its line); the server-side process tree (server,
   workers, every prog) is measured before and after, as the sum of RSS and
   of PSS (``/proc/PID/smaps_rollup``; PSS shares common pages fairly).
   Both servers in one process here (``--workers 1``, stunnel's threads).

With ``--c-tools DIR`` (a ``bin`` of the C s6-networking 2.8.0.1, e.g.
``.c-s6/bin``), the C s6-tlsserver is measured too, in both parts: it is
the chain s6-tcpserverd → per connection prog, with its s6-tlsd-io engine
as a child, so two processes per connection in its tree; TLS 1.2 only.
``--no-handshakes`` skips part 1.

Usage: python bench/server.py [--seconds 5] [--rounds 3] [--connections 300] [--c-tools DIR]
Prints each figure and the ratios s6-tlsserver / stunnel (and / C).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from _pki import Pki, make_pki

RESPONDER = ["/usr/bin/head", "-n", "1"]
LINE = b"ping\n"
READY_TIMEOUT = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def s6_tlsserver(
    pki: Pki, workers: int, program: str | None = None, *, c_tools: Path | None = None
) -> Iterator[tuple[int, int]]:
    """Ours (``program`` or from PATH), or the C one from ``c_tools``."""
    env = {**os.environ, **pki.server_env()}
    if c_tools is not None:
        options = ["-1", "-q", "-c", "16384", "-C", "16384"]  # no name lookups in C
        program = str(c_tools / "s6-tlsserver")
    else:
        options = ["-1", "-q", "-H", "-c", "16384", "-C", "16384", "--workers", str(workers)]
        program = (
            program
            or shutil.which("s6-tlsserver")
            or str(Path(sys.executable).parent / "s6-tlsserver")
        )
    process = subprocess.Popen(
        [program, *options, "127.0.0.1", "0", *RESPONDER], stdout=subprocess.PIPE, env=env
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGABRT)
        process.wait(READY_TIMEOUT)


@contextmanager
def stunnel(pki: Pki, directory: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    config = directory / "stunnel.conf"
    config.write_text(
        "foreground = yes\n"
        "pid =\n"
        "debug = 3\n"
        "[bench]\n"
        f"accept = 127.0.0.1:{port}\n"
        f"cert = {pki.pem}\n"
        f"key = {pki.pem}\n"
        "sessionResume = no\n"
        "options = NO_TICKET\n"
        f"exec = {RESPONDER[0]}\n"
        f"execArgs = {' '.join(['head', *RESPONDER[1:]])}\n"
    )
    process = subprocess.Popen(
        [shutil.which("stunnel4") or "stunnel", str(config)],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(READY_TIMEOUT)


# -- handshake rate ------------------------------------------------------------


def one_connection(port: int, context: ssl.SSLContext) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        # Nagle + delayed ACK would stall our ping behind the Finished
        # message for 40 ms and measure the TCP stack, not the servers.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(LINE)
            received = b""
            while not received.endswith(b"\n"):
                chunk = tls.recv(64)
                if not chunk:
                    break
                received += chunk
            if received != LINE:
                raise RuntimeError(f"bad reply {received!r}")


def client_process(port: int, cafile: str, seconds: float, threads: int) -> None:
    """Child mode: print how many exchanges completed in ``seconds``."""
    context = ssl.create_default_context(cafile=cafile)
    deadline = time.monotonic() + seconds
    counts = [0] * threads
    errors = [0] * threads

    def loop(index: int) -> None:
        while time.monotonic() < deadline:
            try:
                one_connection(port, context)
                counts[index] += 1
            except (OSError, RuntimeError):
                errors[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(sum(counts), sum(errors))


def handshake_rate(
    port: int, cafile: Path, seconds: float, clients: int, threads: int
) -> tuple[float, int]:
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                str(port),
                str(cafile),
                str(seconds),
                str(threads),
            ],
            stdout=subprocess.PIPE,
        )
        for _ in range(clients)
    ]
    total = errors = 0
    for process in processes:
        out, _ = process.communicate(timeout=seconds + 60)
        done, failed = (int(x) for x in out.split())
        total += done
        errors += failed
    return total / seconds, errors


def handshake_rounds(
    pki: Pki, directory: Path, args: argparse.Namespace
) -> tuple[dict[str, float], dict[str, float]]:
    """Part 1, interleaved: every server's median rate, and the median over
    the rounds of s6-tlsserver's rate over each other server's."""
    print(
        f"handshakes: {args.clients} client processes x {args.threads} threads,"
        f" {args.seconds:g} s per server per round, {args.rounds} round(s),"
        f" responder {' '.join(RESPONDER)}; s6-tlsserver --workers {args.workers}"
    )
    with ExitStack() as stack:
        ports = {
            "s6-tlsserver": stack.enter_context(s6_tlsserver(pki, args.workers, args.program))[0]
        }
        ports["stunnel4"] = stack.enter_context(stunnel(pki, directory))[0]
        if args.c_tools is not None:
            ports["C s6-tlsserver"] = stack.enter_context(
                s6_tlsserver(pki, 1, c_tools=args.c_tools)
            )[0]
        names = list(ports)
        per_round: list[dict[str, float]] = []
        for index in range(args.rounds):
            order = names if index % 2 == 0 else names[::-1]
            measured: dict[str, float] = {}
            for name in order:
                rate, errors = handshake_rate(
                    ports[name], pki.ca, args.seconds, args.clients, args.threads
                )
                measured[name] = rate
                print(
                    f"  round {index + 1} {name + ':':16} {rate:8.1f} handshakes/s ({errors} errors)"
                )
            per_round.append(measured)
    medians = {name: statistics.median(r[name] for r in per_round) for name in names}
    for name in names:
        print(f"  median {name + ':':16} {medians[name]:8.1f} handshakes/s")
    ratios = {
        name: statistics.median(r["s6-tlsserver"] / r[name] for r in per_round)
        for name in names[1:]
    }
    return medians, ratios


# -- memory --------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    result, stack = [], [pid]
    while stack:
        current = stack.pop()
        result.append(current)
        stack.extend(children.get(current, []))
    return result


def memory_kib(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in KiB over the process tree of ``pid``."""
    rss = pss = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup") as file:
                for line in file:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def own_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            if line.startswith("Rss:"):
                return int(line.split()[1])
    return 0


def memory_per_connection(
    port: int, pid: int, cafile: Path, count: int, per_connection: int = 1
) -> tuple[float, float, float]:
    """Per idle connection, in KiB: tree RSS, tree PSS, the server process's
    own RSS (the part that does not depend on prog). ``per_connection``:
    how many processes each connection adds to the tree once set up."""
    context = ssl.create_default_context(cafile=str(cafile))
    settle = 0.5
    time.sleep(settle)  # let the server finish starting up (a measurement, not a synchronisation)
    rss0, pss0 = memory_kib(pid)
    own0 = own_rss_kib(pid)
    held = []
    try:
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(context.wrap_socket(raw, server_hostname="localhost"))
        expected = count * per_connection + 1  # the server, and per connection
        deadline = time.monotonic() + READY_TIMEOUT
        while len(tree(pid)) < expected and time.monotonic() < deadline:
            time.sleep(0.05)  # every responder started
        if len(tree(pid)) < expected:
            print(f"  (warning: {len(tree(pid))} processes in the tree, {expected} expected)")
        time.sleep(settle)
        rss1, pss1 = memory_kib(pid)
        own1 = own_rss_kib(pid)
    finally:
        for tls in held:
            tls.close()
    return (rss1 - rss0) / count, (pss1 - pss0) / count, (own1 - own0) / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5, help="per server per round (5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--install", action="store_true", help="apt-get install stunnel4 if missing"
    )
    parser.add_argument("--program", help="the s6-tlsserver to measure (default: from PATH)")
    parser.add_argument(
        "--c-tools",
        type=Path,
        help="bin directory of the C s6-networking: measure its s6-tlsserver",
    )
    parser.add_argument("--no-handshakes", action="store_true", help="memory only")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.seconds <= 0:
        parser.error("--seconds must be more than 0")
    c_tools = args.c_tools
    if c_tools is not None and not os.access(c_tools / "s6-tlsserver", os.X_OK):
        sys.exit(f"bench/server.py: no C s6-tlsserver in {c_tools}")
    if not (shutil.which("stunnel4") or shutil.which("stunnel")):
        if not args.install:
            sys.exit("bench/server.py: stunnel4 not found (--install to apt-get install it)")
        subprocess.run(["apt-get", "install", "-y", "stunnel4"], check=True)

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pki = make_pki(directory / "pki")
        cafile = pki.ca
        rates: dict[str, float] = {}
        ratios: dict[str, float] = {}
        if not args.no_handshakes:
            rates, ratios = handshake_rounds(pki, directory, args)
        print(f"memory: {args.connections} idle connections, server-side process tree")
        with s6_tlsserver(pki, 1, args.program) as (port, pid):
            our_rss, our_pss, our_own = memory_per_connection(port, pid, cafile, args.connections)
        print(
            f"  s6-tlsserver:   {our_rss:7.1f} KiB RSS, {our_pss:7.1f} KiB PSS per connection"
            f" (server process alone: {our_own:6.1f} KiB RSS)"
        )
        with stunnel(pki, directory) as (port, pid):
            their_rss, their_pss, their_own = memory_per_connection(
                port, pid, cafile, args.connections
            )
        print(
            f"  stunnel4:       {their_rss:7.1f} KiB RSS, {their_pss:7.1f} KiB PSS per connection"
            f" (server process alone: {their_own:6.1f} KiB RSS)"
        )
        if c_tools is not None:
            with s6_tlsserver(pki, 1, c_tools=c_tools) as (port, pid):
                c_rss, c_pss, c_own = memory_per_connection(
                    port, pid, cafile, args.connections, per_connection=2
                )
            print(
                f"  C s6-tlsserver: {c_rss:7.1f} KiB RSS, {c_pss:7.1f} KiB PSS per connection"
                f" (server process alone: {c_own:6.1f} KiB RSS; prog + s6-tlsd-io per connection)"
            )

        print("ratios (s6-tlsserver / stunnel4):")
        if not args.no_handshakes:
            print(
                f"  handshakes/s:            {ratios['stunnel4']:.2f}  (>= 1 is better;"
                f" median of the rounds' ratios; of the medians:"
                f" {rates['s6-tlsserver'] / rates['stunnel4']:.2f})"
            )
        print(f"  RSS per idle connection: {our_rss / their_rss:.2f}  (<= 1 is better)")
        print(f"  PSS per idle connection: {our_pss / their_pss:.2f}  (<= 1 is better)")
        print(f"  server process alone:    {our_own / their_own:.2f}  (<= 1 is better)")
        if c_tools is not None:
            print("ratios (s6-tlsserver / C s6-tlsserver):")
            if not args.no_handshakes:
                print(
                    f"  handshakes/s:            {ratios['C s6-tlsserver']:.2f}  (>= 1 is better;"
                    " median of the rounds' ratios)"
                )
            print(f"  RSS per idle connection: {our_rss / c_rss:.2f}  (<= 1 is better)")
            print(f"  PSS per idle connection: {our_pss / c_pss:.2f}  (<= 1 is better)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port_text, cafile_text, seconds_text, threads_text = sys.argv[2:6]
        client_process(int(port_text), cafile_text, float(seconds_text), int(threads_text))
    else:
        main()
