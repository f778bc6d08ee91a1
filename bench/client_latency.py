#!/usr/bin/env python3
"""One-shot client latency over a slow link and on loopback: ours against the C s6-networking.

Each figure is the median of N runs (default 20, after one unmeasured
warm-up) of the wall time from starting a tool to its exit, for one TLS
connection carrying one line each way. The tools run round-robin (run i of
every tool, then run i+1 ...), so that load from elsewhere on the machine
falls on all of them alike; the ratios are between figures of this run.

- ``s6-tlsclient -H -k localhost 127.0.0.1 PORT prog`` (resolve, connect,
  handshake, exec, exchange), ours and the C one;
- ``s6-tlsc -k localhost prog`` on a connected socket as fds 6/7 (the
  harness plays s6-tcpclient: it connects before the clock starts);
- ``s6-tlsd prog`` on an accepted socket as fds 0/1, against a TLS client
  in this process that connects before the clock starts and sends its line
  at once; the time runs until the client has its reply and the tool has
  exited.

Client progs: ``sh -c 'echo ping >&7; head -n 1 <&6'`` (one line out on
fd 7, one line in on fd 6); server prog: ``head -n 1``. Each on two links:
plain loopback, and through ``bench/relay.py`` (``--delay`` ms each way,
default 25 = 50 ms RTT; the relay's own RTT is measured and printed). The
relay does not charge the TCP handshake's round trip (see relay.py):
every tool gets that discount.

The server, for the clients: one TLS line-echo server in this process
(Python's ssl, OpenSSL), TLS 1.2 and 1.3, no session tickets (as
s6-tlsserver's default: every run is a full handshake and nothing else is
in flight), TCP_NODELAY on its side. It is the same server for every
client, it is not a program under test (our s6-tlsserver would put its own
per-connection cost, a fork and exec of prog, into every client's figure,
and the engineer changing the tools would move the yardstick), and it
speaks both versions: ours negotiates TLS 1.3 by default, the C tools
(BearSSL) TLS 1.2, which costs one more round trip in the handshake. So
ours also runs with ``--max-version 1.2``: the like-for-like row. The
negotiated version of every row is printed, as the server (or the
client, for s6-tlsd) saw it. The certificate is an EC P-256 chain that
BearSSL accepts (``bench/_pki.py``), the same for everyone.

Beside it, the import floor: ``python -c pass``, ``python -c "import
ssl"``, ``python -c "import trio"`` with this interpreter, and
``s6-tlsclient --version`` (median of N each).

Then the split (``--split-runs``, default 5 per link, 0 to skip): ours
``s6-tlsclient`` again, under a small wrapper (an audit hook and a timed
``builtins.__import__``, written to a pipe with timestamps on the shared
monotonic clock) and with the echo server's own timestamps, cut into:
interpreter start, imports and parsing before the connect, the connect,
the engine child from fork to its ClientHello (imports trio), the TLS
handshake on the wire until prog is exec'd, and prog's exchange until
exit; medians, plus the events of the median run and the largest
top-level imports in each process.

Usage: ``python bench/client_latency.py [-n RUNS] [--delay MS]
[--split-runs K] [--c-tools DIR]``. The C tools are looked for in
``--c-tools``, ``$TRIO_S6TLS_C_TOOLS``, else ``.c-s6/bin`` (built by
``interop/build-c-s6.sh .c-s6``); without them only our rows are printed.
Loopback only; every wait is bounded. Exits are seen through pidfds
(``bench/_procwait.py``): ``Popen.wait(timeout)`` polls on a ladder of
sleeps and would round every figure up by as much as 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import os
import queue
import select
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _pki import Pki, make_pki
from _procwait import wait_exit
from relay import Relay

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0
LINE = b"ping\n"
CLIENT_PROG = ["sh", "-c", "echo ping >&7; head -n 1 <&6"]
SERVER_PROG = ["head", "-n", "1"]
TLS_VARIABLES = ("CADIR", "CAFILE", "CERTFILE", "KEYFILE", "TLS_UID", "TLS_GID", "SSLKEYLOGFILE")
VERSIONS = {"TLSv1.2": "1.2", "TLSv1.3": "1.3"}


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in TLS_VARIABLES and not k.startswith(("CERTFILE:", "KEYFILE:", "SSL_", "TCP"))
    }
    return {**base, **extra}


def c_bin(option: str | None) -> Path | None:
    directory = Path(option or os.environ.get("TRIO_S6TLS_C_TOOLS") or REPO / ".c-s6" / "bin")
    wanted = ("s6-tlsclient", "s6-tlsc", "s6-tlsd", "s6-tcpclient", "s6-tlsc-io", "s6-tlsd-io")
    return directory if all(os.access(directory / p, os.X_OK) for p in wanted) else None


# -- the server ------------------------------------------------------------------


@dataclass
class Record:
    """One connection as the echo server saw it (time.monotonic())."""

    accepted: float
    hello: float = 0.0  # the first bytes (ClientHello) arrived
    handshake: float = 0.0  # handshake complete on the server side
    line: float = 0.0  # the client's line arrived
    replied: float = 0.0  # our reply written
    closed: float = 0.0  # the client's end seen
    version: str = "?"


class EchoServer:
    """A TLS line echo (thread per connection): read one line, write it
    back, read until the client's end, close. ``records`` gets one
    :class:`Record` per connection once it is over."""

    def __init__(self, pki: Pki) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(str(pki.cert), str(pki.key))
        self.context.num_tickets = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.records: queue.Queue[Record] = queue.Queue()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            record = Record(time.monotonic())
            threading.Thread(target=self._serve, args=(connection, record), daemon=True).start()

    def _serve(self, connection: socket.socket, record: Record) -> None:
        try:
            connection.settimeout(TIMEOUT)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.recv(1, socket.MSG_PEEK)
            record.hello = time.monotonic()
            with self.context.wrap_socket(connection, server_side=True) as tls:
                record.handshake = time.monotonic()
                record.version = VERSIONS.get(tls.version() or "", "?")
                buffer = b""
                while b"\n" not in buffer:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    buffer += chunk
                record.line = time.monotonic()
                tls.sendall(buffer)
                record.replied = time.monotonic()
                # Until the client's end (s6's default: a TCP half-close, no
                # close_notify, which OpenSSL may report as an error).
                with contextlib.suppress(ssl.SSLError, OSError):
                    while tls.recv(4096):
                        pass
        except (ssl.SSLError, OSError):
            pass
        finally:
            record.closed = time.monotonic()
            connection.close()
            self.records.put(record)

    def next_record(self) -> Record:
        """The record of the connection just made: waits for its end, so
        that runs never overlap (unmeasured)."""
        return self.records.get(timeout=TIMEOUT)


# -- runs ------------------------------------------------------------------------


@dataclass
class Outcome:
    seconds: float
    version: str
    record: Record | None = None
    started: float = 0.0  # time.monotonic() when the tool was started
    trace: list[tuple[int, float, str]] = field(default_factory=list)


def run_process(
    argv: Sequence[str],
    env: Mapping[str, str],
    fds: Mapping[int, int],
    directory: Path,
    expect: bytes | None,
) -> tuple[float, float]:
    """Start argv with ``fds`` placed (child fd → ours), stdout and stderr
    to files; returns (start, end) monotonic times, end = its exit."""
    out_path, err_path = directory / "out", directory / "err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # Parked above any target, close-on-exec: after the dup2s in the child,
        # prog has 0-2 and the targets, nothing else of ours (PEP 446).
        parked = {target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 300) for target, fd in fds.items()}
        try:
            started = time.monotonic()
            proc = subprocess.Popen(
                list(argv),
                stdin=None if 0 in parked else subprocess.DEVNULL,
                stdout=None if 1 in parked else out,
                stderr=err,
                env=dict(env),
                close_fds=False,
                preexec_fn=(lambda: place(parked)) if parked else None,
            )
        finally:
            for copy in parked.values():
                os.close(copy)
        code, ended = wait_exit(proc, TIMEOUT)
    output = out_path.read_bytes()
    if code != 0 or (expect is not None and output != expect):
        raise RuntimeError(
            f"{argv[0]} exited {code}, output {output!r}, stderr:\n{err_path.read_text()}"
        )
    return started, ended


def place(parked: Mapping[int, int]) -> None:
    """In the child: dup2 the parked copies onto their targets."""
    for target, copy in parked.items():
        os.dup2(copy, target)


def run_tlsclient(
    argv_prefix: Sequence[str],
    flags: Sequence[str],
    server: EchoServer,
    address: tuple[str, int],
    env: Mapping[str, str],
    directory: Path,
) -> Outcome:
    argv = [*argv_prefix, *flags, "-H", "-k", "localhost", address[0], str(address[1])]
    started, ended = run_process([*argv, *CLIENT_PROG], env, {}, directory, LINE)
    record = server.next_record()
    return Outcome(ended - started, record.version, record=record, started=started)


def run_tlsc(
    program: str,
    flags: Sequence[str],
    server: EchoServer,
    address: tuple[str, int],
    env: Mapping[str, str],
    directory: Path,
    *,
    nodelay: bool,
) -> Outcome:
    """The harness connects (as s6-tcpclient would, ``-D`` = ``nodelay``),
    then starts the clock and the tool on the socket."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.settimeout(None)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        argv = [program, *flags, "-k", "localhost", *CLIENT_PROG]
        started, ended = run_process(
            argv, env, {6: sock.fileno(), 7: sock.fileno()}, directory, LINE
        )
    record = server.next_record()
    return Outcome(ended - started, record.version, record=record, started=started)


def run_tlsd(
    program: str,
    flags: Sequence[str],
    listener: socket.socket,
    address: tuple[str, int],
    client_context: ssl.SSLContext,
    env: Mapping[str, str],
    directory: Path,
    *,
    nodelay: bool,
) -> Outcome:
    """s6-tlsd on an accepted socket (TCP_NODELAY on it if ``nodelay``, as
    s6-tcpserver -D does); ``address`` leads to ``listener`` (directly or
    through the relay)."""
    client = socket.create_connection(address, timeout=TIMEOUT)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    accepted, _ = listener.accept()
    if nodelay:
        accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    result: dict[str, object] = {}

    def talk() -> None:
        try:
            with client_context.wrap_socket(client, server_hostname="localhost") as tls:
                result["version"] = VERSIONS.get(tls.version() or "", "?")
                tls.sendall(LINE)
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                result["reply"] = reply
                result["at"] = time.monotonic()
        except (OSError, ssl.SSLError) as error:
            result["error"] = error

    with accepted:
        talker = threading.Thread(target=talk, daemon=True)
        argv = [program, *flags, *SERVER_PROG]
        fds = {0: accepted.fileno(), 1: accepted.fileno()}
        # The client starts with the clock: its ClientHello waits in the socket
        # buffer while the tool starts, as with a real super-server.
        talker.start()
        started, ended = run_process(argv, env, fds, directory, None)
    talker.join(TIMEOUT)
    client.close()
    if result.get("reply") != LINE:
        raise RuntimeError(f"{program}: the client got {result!r}")
    at = result["at"]
    assert isinstance(at, float)
    version = result["version"]
    assert isinstance(version, str)
    return Outcome(max(ended, at) - started, version, started=started)


# -- the split --------------------------------------------------------------------

#: The trace pipe's fd in the traced tool.
TRACE_FD = 200

#: Runs the console script given as argv[1] with an audit hook and a timed
#: ``__import__`` reporting to the fd in $BENCH_TRACE_FD, on the clock of
#: $BENCH_TRACE_T0 (time.monotonic is one clock for every process here).
TRACER = r"""
import builtins, os, sys, time
_fd = int(os.environ.pop("BENCH_TRACE_FD"))
_t0 = float(os.environ.pop("BENCH_TRACE_T0"))
os.set_inheritable(_fd, False)  # the engine child keeps it through fork; prog does not
def _log(what):
    os.write(_fd, f"{os.getpid()} {(time.monotonic() - _t0) * 1000:.3f} {what}\n".encode())
_log("python up")
_depth = [0]
_real_import = builtins.__import__
def _import(name, globals=None, locals=None, fromlist=(), level=0):
    if _depth[0]:
        return _real_import(name, globals, locals, fromlist, level)
    _depth[0] += 1
    started = time.monotonic()
    try:
        return _real_import(name, globals, locals, fromlist, level)
    finally:
        _depth[0] -= 1
        took = time.monotonic() - started
        if took > 0.001:
            if level and globals:
                package = (globals.get("__package__") or "").rsplit(".", level - 1)[0]
                name = f"{package}.{name}"
            os.write(_fd, f"{os.getpid()} {(started - _t0) * 1000:.3f} import {name} "
                          f"{took * 1000:.1f}\n".encode())
builtins.__import__ = _import
_EVENTS = {"socket.getaddrinfo", "socket.connect", "os.fork", "os.exec", "os.posix_spawn"}
def _audit(event, args):
    if event in _EVENTS:
        _log(event)
        if event == "os.exec":  # execvpe tries each PATH entry: the first is enough
            _EVENTS.discard(event)
sys.addaudithook(_audit)
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(sys.argv[0])  # as when the script runs itself, not -c's cwd
with open(sys.argv[0]) as _script:  # not runpy: it would import pkgutil the tool never does
    _code = compile(_script.read(), sys.argv[0], "exec")
exec(_code, {"__name__": "__main__", "__file__": sys.argv[0], "__builtins__": builtins})
"""


def run_traced_tlsclient(
    server: EchoServer, address: tuple[str, int], env: Mapping[str, str], directory: Path
) -> Outcome:
    read_end, write_end = os.pipe()
    lines: list[bytes] = []

    def drain() -> None:
        while True:
            ready, _, _ = select.select([read_end], [], [], TIMEOUT)
            chunk = os.read(read_end, 65536) if ready else b""
            if not chunk:
                return
            lines.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        t0 = time.monotonic()
        trace_env = {**env, "BENCH_TRACE_FD": str(TRACE_FD), "BENCH_TRACE_T0": repr(t0)}
        argv = [
            sys.executable, "-c", TRACER, str(BIN / "s6-tlsclient"),
            "-H", "-k", "localhost", address[0], str(address[1]), *CLIENT_PROG,
        ]  # fmt: skip
        try:
            started, ended = run_process(argv, trace_env, {TRACE_FD: write_end}, directory, LINE)
        finally:
            os.close(write_end)
        reader.join(TIMEOUT)  # until the engine child is gone too (it holds the pipe)
    finally:
        os.close(read_end)
    record = server.next_record()
    trace = []
    for raw in b"".join(lines).decode().splitlines():
        pid, ms, what = raw.split(" ", 2)
        trace.append((int(pid), float(ms) + (t0 - started) * 1000, what))
    return Outcome(ended - started, record.version, record=record, trace=trace, started=started)


PHASES = (
    "interpreter start",
    "imports + parsing until connect",
    "resolve + connect, until fork",
    "engine child: fork to ClientHello sent",
    "handshake on the wire, until prog exec",
    "prog's exchange, until exit",
)
#: Sums of top-level import times, reported beside the phases.
IMPORT_SUMS = ("of which imports in the tool, before fork", "of which imports in the engine child")


def phases(outcome: Outcome, delay: float) -> dict[str, float] | None:
    """The six phases of one traced run, in ms (None if an event is missing)."""
    record = outcome.record
    assert record is not None
    parent = outcome.trace[0][0] if outcome.trace else None
    events = {(pid == parent, what.split()[0]): ms for pid, ms, what in reversed(outcome.trace)}
    try:
        up = events[True, "python"]
        connect = events[True, "socket.connect"]
        fork = events[True, "os.fork"]
        execd = events[True, "os.exec"]
    except KeyError:
        return None
    hello_sent = (record.hello - outcome.started) * 1000 - delay
    total = outcome.seconds * 1000
    marks = [0.0, up, connect, fork, hello_sent, execd, total]
    result = {name: marks[i + 1] - marks[i] for i, name in enumerate(PHASES)}
    imports = [(pid, ms, float(what.split()[-1])) for pid, ms, what in outcome.trace
               if what.startswith("import ")]  # fmt: skip
    result[IMPORT_SUMS[0]] = sum(took for pid, ms, took in imports if pid == parent and ms < fork)
    result[IMPORT_SUMS[1]] = sum(took for pid, _, took in imports if pid != parent)
    return result


def print_split(label: str, outcomes: list[Outcome], delay: float, top: int = 4) -> None:
    table = [p for o in outcomes if (p := phases(o, delay)) is not None]
    totals = sorted(o.seconds * 1000 for o in outcomes)
    print(f"  {label}: ours s6-tlsclient, {len(outcomes)} traced runs, total median "
          f"{statistics.median(totals):.1f} ms")  # fmt: skip
    if not table:
        print("    (events missing from the trace: no split)")
        return
    for name in PHASES + IMPORT_SUMS:
        print(f"    {name:42s} {statistics.median(p[name] for p in table):7.1f} ms")
    median_run = sorted(outcomes, key=lambda o: o.seconds)[len(outcomes) // 2]
    record = median_run.record
    assert record is not None
    parent = median_run.trace[0][0] if median_run.trace else 0
    print(f"    events of the median run ({median_run.seconds * 1000:.1f} ms; P = tool, E = engine"
          f" child, S = echo server{f', its times include the {delay:g} ms relay delay' if delay else ''}):")  # fmt: skip
    rows = [(ms, "P" if pid == parent else "E", what) for pid, ms, what in median_run.trace]
    imports = [r for r in rows if r[2].startswith("import ")]
    rows = [r for r in rows if not r[2].startswith("import ")]
    for who in ("P", "E"):
        biggest = sorted(
            (r for r in imports if r[1] == who), key=lambda r: -float(r[2].split()[-1])
        )[:top]
        rows += [(ms, who, f"{what} ms (top-level import, start)") for ms, _, what in biggest]
    for name, stamp in (
        ("ClientHello arrived", record.hello),
        ("handshake done", record.handshake),
        ("line arrived", record.line),
        ("reply written", record.replied),
    ):
        rows.append(((stamp - median_run.started) * 1000, "S", name))
    rows.append((median_run.seconds * 1000, "P", "prog exited (clock stops)"))
    for ms, who, what in sorted(rows):
        print(f"      {ms:8.1f}  {who}  {what}")


# -- the import floor ---------------------------------------------------------------


def floor_commands() -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import ssl'": [sys.executable, "-c", "import ssl"],
        "python -c 'import trio'": [sys.executable, "-c", "import trio"],
        # As our tools leave a process (exec, os._exit): no interpreter finalisation.
        "python -c 'import trio, os; os._exit(0)'": [
            sys.executable,
            "-c",
            "import trio, os; os._exit(0)",
        ],
        "s6-tlsclient --version": [str(BIN / "s6-tlsclient"), "--version"],
    }


def timed(argv: Sequence[str]) -> float:
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    code, ended = wait_exit(process, TIMEOUT)
    if code != 0:
        raise RuntimeError(f"{argv} exited {code}")
    return ended - started


def import_profile(top: int = 6) -> str:
    """The largest self times of ``python -X importtime -c 'import trio'``."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import trio"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    ).stderr  # fmt: skip
    entries = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line and "self" not in line:
            self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
            entries.append((int(self_us), int(cumulative_us), name.strip()))
    total = max((c for _, c, n in entries if n == "trio"), default=0)
    biggest = sorted(entries, reverse=True)[:top]
    return f"import trio {total / 1000:.0f} ms cumulative; largest self times: " + ", ".join(
        f"{name} {self_us / 1000:.0f}" for self_us, _, name in biggest
    )


# -- main ---------------------------------------------------------------------------


def median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000


def ratio(times: Mapping[tuple[str, str], list[float]], link: str, ours: str, theirs: str) -> float:
    return statistics.median(times[link, ours]) / statistics.median(times[link, theirs])


def spread(values: Sequence[float]) -> str:
    if len(values) < 2:
        return ""
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"({q1 * 1000:.0f}-{q3 * 1000:.0f})"


@dataclass(frozen=True)
class Tool:
    """One row: which kind of run, which program, which flags."""

    name: str
    kind: str  # "tlsclient", "tlsc" or "tlsd"
    program: str
    flags: tuple[str, ...] = ()
    nodelay: bool = False  # s6-tlsc / s6-tlsd: TCP_NODELAY on the socket handed over


def tools(c_dir: Path | None) -> list[Tool]:
    """Per program: ours, ours at TLS 1.2, ours without Nagle, then the C
    tool and the C tool without Nagle (both sides' default keeps Nagle's
    algorithm: ``-d``)."""
    rows = []
    implementations = [("ours", BIN)] + ([("C", c_dir)] if c_dir else [])
    for program in ("s6-tlsclient", "s6-tlsc", "s6-tlsd"):
        nagle_off = "-D" if program == "s6-tlsclient" else "TCP_NODELAY socket"
        kind = program.removeprefix("s6-")
        for who, directory in implementations:
            path = str(directory / program)
            rows.append(Tool(f"{who} {program}", kind, path))
            if who == "ours":
                rows.append(Tool(f"{who} {program} --max-version 1.2", kind, path, TO_TLS12))
            if program == "s6-tlsclient":
                rows.append(Tool(f"{who} {program} -D", kind, path, ("-D",)))
            else:
                rows.append(Tool(f"{who} {program}, {nagle_off}", kind, path, nodelay=True))
    return rows


TO_TLS12 = ("--max-version", "1.2")

#: Ratio lines: (label, our row, the C row).
RATIOS = [
    (f"{program}{label}", f"ours {program}{ours}", f"C {program}{theirs}")
    for program in ("s6-tlsclient", "s6-tlsc", "s6-tlsd")
    for label, ours, theirs in (
        ("", "", ""),
        (", ours at TLS 1.2", " --max-version 1.2", ""),
        (" -D", " -D", " -D")
        if program == "s6-tlsclient"
        else (", TCP_NODELAY socket", ", TCP_NODELAY socket", ", TCP_NODELAY socket"),
    )
]


def environment_line() -> str:
    """What is being measured: the package's place, editable or not, and
    whether its bytecode is cached (PYTHONDONTWRITEBYTECODE=1 with an
    editable install means every start compiles our modules again)."""
    spec = importlib.util.find_spec("trio_s6tls")
    origin = Path(spec.origin).parent if spec and spec.origin else None
    editable = any(any(Path(p).glob("__editable__*trio_s6tls*.pth")) for p in sys.path if p)
    cached = bool(origin and list(origin.glob("__pycache__/_engine.*.pyc")))
    return (
        f"python {sys.version.split()[0]} ({sys.executable}); trio_s6tls from {origin}"
        f"{' (editable install: its finder is imported at every start)' if editable else ''};"
        f" bytecode of trio_s6tls {'cached' if cached else 'NOT cached (compiled at every start)'}"
        f"{'; PYTHONDONTWRITEBYTECODE set' if sys.flags.dont_write_bytecode else ''}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="See the module docstring for what is measured and why.",
    )
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--delay", type=float, default=25.0, help="relay ms each way (25)")
    parser.add_argument("--split-runs", type=int, default=5, help="traced runs per link (5)")
    parser.add_argument("--c-tools", help="bin directory of the C s6-networking")
    parser.add_argument(
        "--install",
        action="store_true",
        help="accepted for nox -s bench; no peer here comes from apt (the C tools: interop/)",
    )
    args = parser.parse_args()
    c_dir = c_bin(args.c_tools)
    if not c_dir:
        print("C s6-networking not found (--c-tools, $TRIO_S6TLS_C_TOOLS, .c-s6/bin):"
              " our rows only")  # fmt: skip
    rows = tools(c_dir)
    links = {"loopback": 0.0, f"relay {2 * args.delay:g} ms RTT": args.delay}
    times: dict[tuple[str, str], list[float]] = {}
    versions: dict[tuple[str, str], set[str]] = {}
    records: dict[tuple[str, str], list[Outcome]] = {}
    splits: dict[str, list[Outcome]] = {}
    floor: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pki = make_pki(directory / "pki")
        client_env = clean_env(pki.client_env())
        server_env = clean_env(pki.server_env())
        client_context = ssl.create_default_context(cafile=str(pki.ca))
        server = EchoServer(pki)
        tlsd_listener = socket.create_server(("127.0.0.1", 0))
        tlsd_listener.settimeout(TIMEOUT)
        tlsd_address: tuple[str, int] = tlsd_listener.getsockname()[:2]

        def run(tool: Tool, to_server: tuple[str, int], to_tlsd: tuple[str, int]) -> Outcome:
            if tool.kind == "tlsclient":
                prefix = [tool.program]
                return run_tlsclient(prefix, tool.flags, server, to_server, client_env, directory)
            if tool.kind == "tlsc":
                return run_tlsc(
                    tool.program, tool.flags, server, to_server, client_env, directory,
                    nodelay=tool.nodelay,
                )  # fmt: skip
            return run_tlsd(
                tool.program, tool.flags, tlsd_listener, to_tlsd, client_context, server_env,
                directory, nodelay=tool.nodelay,
            )  # fmt: skip

        try:
            with (
                Relay(server.address, args.delay) as relay,
                Relay(tlsd_address, args.delay) as tlsd_relay,
            ):
                relay_rtt = measure_rtt(tlsd_relay.address, tlsd_listener)
                for link, delay in links.items():
                    to_server = relay.address if delay else server.address
                    to_tlsd = tlsd_relay.address if delay else tlsd_address
                    for tool in rows:
                        run(tool, to_server, to_tlsd)  # warm-up, unmeasured
                    for _ in range(args.runs):
                        for tool in rows:
                            outcome = run(tool, to_server, to_tlsd)
                            times.setdefault((link, tool.name), []).append(outcome.seconds)
                            versions.setdefault((link, tool.name), set()).add(outcome.version)
                            if outcome.record is not None:
                                records.setdefault((link, tool.name), []).append(outcome)
                    for _ in range(args.split_runs):
                        outcome = run_traced_tlsclient(server, to_server, client_env, directory)
                        splits.setdefault(link, []).append(outcome)
        finally:
            server.close()
            tlsd_listener.close()
    commands = floor_commands()
    for argv in commands.values():
        timed(argv)  # warm-up
    for _ in range(args.runs):
        for name, argv in commands.items():
            floor.setdefault(name, []).append(timed(argv))
    profile = import_profile()

    print(environment_line())
    print(f"one-connection latency, median of {args.runs} runs each, round-robin (ms, q1-q3, TLS)")
    print(f"relay: {args.delay:g} ms each way, its measured RTT {relay_rtt:.1f} ms;"
          " connect() through it costs no round trip")  # fmt: skip
    labels = [tool.name for tool in rows] + [label for label, _, _ in RATIOS] + list(floor)
    width = max(len(label) for label in labels) + 2
    print(f"  {'':{width}s}" + "".join(f"{link:>27s}" for link in links))
    for tool in rows:
        cells = ""
        for link in links:
            values = times[link, tool.name]
            tls = "/".join(sorted(versions[link, tool.name]))
            cells += f"{median_ms(values):10.1f} {spread(values):11s} {tls:>4s} "
        print(f"  {tool.name:{width}s}{cells}")
    if c_dir:
        print("ratios ours / C, same run:")
        for label, ours, theirs in RATIOS:
            cells = "".join(f"{ratio(times, link, ours, theirs):26.2f}x" for link in links)
            print(f"  {label:{width}s}{cells}")
    print_server_view(rows, links, records, width)
    print(f"import floor, median of {args.runs} (ms, q1-q3):")
    for name, values in floor.items():
        print(f"  {name:{width}s}{median_ms(values):10.1f} {spread(values)}")
    print(f"  ({profile})")
    if splits:
        print("where the time goes in ours s6-tlsclient (ms from its start):")
        for link, delay in links.items():
            print_split(link, splits[link], delay)
    return 0


def print_server_view(
    rows: Sequence[Tool],
    links: Mapping[str, float],
    records: Mapping[tuple[str, str], list[Outcome]],
    width: int,
) -> None:
    """For the client rows: when the echo server saw each step, as medians
    in ms from the tool's start (through the relay these include its delay
    one way; the exit, its way back)."""
    print("the echo server's view of the client rows (median ms from the tool's start):")
    steps = ("ClientHello", "handshake done", "line", "tool exited")
    for link in links:
        print(f"  {link:{width}s}" + "".join(f"{step:>15s}" for step in steps))
        for tool in rows:
            outcomes = records.get((link, tool.name))
            if not outcomes:
                continue
            columns = []
            for outcome in outcomes:
                record = outcome.record
                assert record is not None
                stamps = (record.hello, record.handshake, record.line)
                columns.append(
                    [(t - outcome.started) * 1000 for t in stamps] + [outcome.seconds * 1000]
                )
            medians = [statistics.median(column) for column in zip(*columns, strict=True)]
            print(f"  {tool.name:{width}s}" + "".join(f"{m:15.1f}" for m in medians))


def measure_rtt(address: tuple[str, int], listener: socket.socket, rounds: int = 10) -> float:
    """The relay's RTT (ms, median) on a plain connection through it."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        far, _ = listener.accept()
        with far:
            far.settimeout(TIMEOUT)
            far.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rtts = []
            for _ in range(rounds):
                started = time.monotonic()
                sock.sendall(b"x")
                far.recv(1)
                far.sendall(b"y")
                sock.recv(1)
                rtts.append(time.monotonic() - started)
    return median_ms(rtts)


if __name__ == "__main__":
    sys.exit(main())
