"""Interoperability with skarnet's C s6-networking 2.8.0.1 (BearSSL: TLS 1.2 only).

Rules: real processes only, started with ``posix_spawn`` with their fds placed
exactly (no ``preexec_fn``, so starting one while application threads run is
safe); loopback 127.0.0.1 only; servers bind port 0 and announce the port with
``-1`` (the C s6-tcpserverd writes it too); a bound on every wait (``select``
on pipes and pidfds); no sleep standing in for a condition; no polling of
files (programs report back over a Unix socket).

1. Data exchanges in every mixed pair, byte-exact (sha256), a few hundred KB
   each way and 0 bytes: the engines, s6-tlsclient / s6-tlsserver, and the
   hand-built chains s6-tcpserver … s6-tlsd prog / s6-tcpclient … s6-tlsc prog;
   exit codes and the SSL_* variables prog sees.
2. The close matrix under TLS 1.2, computed live: each scenario runs C↔C first
   as the reference, then ours↔C, C↔ours and ours↔ours (client first; ours
   with ``--max-version 1.2``); ours must equal the C reference row by row:
   what each application received, what its writes did, every exit code. The
   applications are threads of this process on the engines' cleartext pipes.
   ``pytest -s`` prints the table; it is also written to
   ``<pytest basetemp>/c-interop-close-matrix.txt``.
3. Error exit codes side by side (wrong CA, missing CAFILE / CERTFILE, -K).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import os
import random
import select
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from c_tools import CPki, Tools, clean_environ, ours

#: Bound on one exchange, handshake to the last exit.
DEADLINE = 20.0
#: Forces TLS 1.2 on our side (the C tools speak nothing else).
OURS_TLS12 = ("--max-version", "1.2")

# --- processes -------------------------------------------------------------------------


class Proc:
    """A program started with ``posix_spawn``: ``fds`` maps child fd → our fd,
    stderr goes to a pipe we read at the end, SIGPIPE is back to its default."""

    def __init__(self, argv: Sequence[str], fds: Mapping[int, int], env: Mapping[str, str]):
        self.argv = list(argv)
        err_r, err_w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        mapping = {0: devnull, 1: devnull, **fds, 2: err_w}
        # Park every source above the targets (close-on-exec), so that a source
        # that is also a target is not clobbered by an earlier dup2.
        parked = {t: fcntl.fcntl(s, fcntl.F_DUPFD_CLOEXEC, 300) for t, s in mapping.items()}
        try:
            self.pid = os.posix_spawn(
                self.argv[0],
                self.argv,
                dict(env),
                file_actions=[(os.POSIX_SPAWN_DUP2, p, t) for t, p in parked.items()],
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        finally:
            for p in parked.values():
                os.close(p)
            os.close(err_w)
            os.close(devnull)
        self.pidfd = os.pidfd_open(self.pid)
        self._err = err_r
        os.set_blocking(err_r, False)
        self._stderr = bytearray()
        self.returncode: int | None = None

    def wait(self, timeout: float) -> int | None:
        """The exit code (negative: killed by that signal), or None on timeout."""
        if self.returncode is None:
            ready, _, _ = select.select([self.pidfd], [], [], max(timeout, 0))
            if not ready:
                return None
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self.pidfd)
        return self.returncode

    def finish(self, timeout: float) -> int | str:
        """Wait; kill it if it outlives ``timeout``. Returns the code or "hung"."""
        code = self.wait(timeout)
        if code is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait(DEADLINE)
            return "hung"
        return code

    def terminate(self) -> int | str:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.finish(5)

    def stderr(self) -> str:
        """What it (and its children) wrote to stderr so far."""
        while True:
            try:
                chunk = os.read(self._err, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._stderr += chunk
        return self._stderr.decode(errors="replace")

    def close(self) -> None:
        if self.returncode is None:
            self.finish(0)
        if self._err >= 0:
            self.stderr()
            os.close(self._err)
            self._err = -1


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (client side, server side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=5)
        server, _ = listener.accept()
    client.settimeout(None)
    return client, server


def pattern(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def tls_options(tools: Tools, *flags: str) -> list[str]:
    """Engine flags, plus ``--max-version 1.2`` for ours."""
    return [*flags, *(OURS_TLS12 if tools.name == "ours" else ())]


# --- applications on the cleartext side ------------------------------------------------


def error_name(e: OSError) -> str:
    """``EPIPE``, ``ECONNRESET``, ..."""
    return errno.errorcode.get(e.errno or 0, str(e))


@dataclass
class App:
    """One side's application: our ends of the engine's cleartext pipes, used
    without blocking and bounded by ``deadline`` (a time.monotonic() value)."""

    rfd: int
    wfd: int
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    #: (segment name, bytes accepted, "ok" | "EPIPE" | "timeout" | errno name | "unsent")
    writes: list[tuple[str, int, str]] = field(default_factory=list)
    read_end: str = ""  # "eof", "limit", "timeout"

    def __post_init__(self) -> None:
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def send(self, name: str, data: bytes) -> bool:
        if self.wfd < 0 or (self.writes and self.writes[-1][2] != "ok"):
            self.writes.append((name, 0, "unsent"))
            return False
        view, done = memoryview(data), 0
        while done < len(data):
            if self._left() <= 0:
                self.writes.append((name, done, "timeout"))
                return False
            _, ready, _ = select.select([], [self.wfd], [], self._left())
            if not ready:
                continue
            try:
                done += os.write(self.wfd, view[done : done + 65536])
            except BlockingIOError:
                continue
            except OSError as e:
                self.writes.append((name, done, error_name(e)))
                return False
        self.writes.append((name, done, "ok"))
        return True

    def close_write(self) -> None:
        if self.wfd >= 0:
            os.close(self.wfd)
            self.wfd = -1

    def recv(self, limit: int | None = None) -> None:
        """Read until EOF, or until ``limit`` bytes have come in all."""
        while limit is None or len(self.received) < limit:
            if self._left() <= 0:
                self.read_end = "timeout"
                return
            ready, _, _ = select.select([self.rfd], [], [], self._left())
            if not ready:
                continue
            try:
                chunk = os.read(self.rfd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.read_end = "eof"
                return
            self.received += chunk
        self.read_end = "limit"

    def pump(self, name: str, data: bytes) -> None:
        """Send ``data`` then EOF while reading to EOF, both at once."""
        view, done, reading = memoryview(data), 0, True
        if not data:
            self.writes.append((name, 0, "ok"))
            self.close_write()
        while reading or self.wfd >= 0:
            if self._left() <= 0:
                if self.wfd >= 0:
                    self.writes.append((name, done, "timeout"))
                self.read_end = self.read_end or "timeout"
                return
            r, w, _ = select.select(
                [self.rfd] if reading else [], [self.wfd] if self.wfd >= 0 else [], [], self._left()
            )
            if r:
                try:
                    chunk = os.read(self.rfd, 65536)
                except BlockingIOError:
                    chunk = None
                if chunk == b"":
                    reading, self.read_end = False, "eof"
                elif chunk:
                    self.received += chunk
            if w:
                try:
                    done += os.write(self.wfd, view[done : done + 65536])
                except BlockingIOError:
                    pass
                except OSError as e:
                    self.writes.append((name, done, error_name(e)))
                    self.close_write()
                    continue
                if done == len(data):
                    self.writes.append((name, done, "ok"))
                    self.close_write()

    def close(self) -> None:
        self.close_write()
        if self.rfd >= 0:
            os.close(self.rfd)
            self.rfd = -1


def describe_received(received: bytes | bytearray, segments: Sequence[tuple[str, bytes]]) -> str:
    """What came in, in terms of the segments the peer tried to send:
    ``REQ``, ``P1+P2[:16384]``, ``-`` (nothing), ``CORRUPT(n)``."""
    parts, position = [], 0
    for name, data in segments:
        chunk = received[position : position + len(data)]
        if chunk == data:
            parts.append(name)
            position += len(data)
            continue
        if chunk and data.startswith(chunk) and position + len(chunk) == len(received):
            parts.append(f"{name}[:{len(chunk)}]")
            position += len(chunk)
        break
    if position != len(received):
        return f"CORRUPT({len(received)} bytes)"
    return "+".join(parts) or "-"


def describe_writes(app: App, *, counts: bool) -> str:
    """``REPLY`` (all written), ``REPLY:EPIPE`` or with ``counts``
    ``REPLY:EPIPE@65536`` (the pipe took 65536 bytes, then EPIPE)."""
    return (
        " ".join(
            name if how == "ok" else f"{name}:{how}" + (f"@{done}" if counts else "")
            for name, done, how in app.writes
        )
        or "-"
    )


# --- the engines, back to back -----------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    client: Callable[[App, Mapping[str, bytes]], None]
    server: Callable[[App, Mapping[str, bytes]], None]
    #: the segments each side's application tries to send, in order
    client_sends: tuple[tuple[str, int], ...]
    server_sends: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Outcome:
    """What one run came to. Compared: what each application received, whether
    its writes went through or failed (EPIPE), the exit codes. Not compared:
    how many bytes a pipe took before EPIPE, which depends on the order in
    which the kernel releases a dead engine's pipe ends (the C engine's own
    reference runs vary there), and stderr."""

    client_got: str
    client_wrote: str
    server_got: str
    server_wrote: str
    client_exit: int | str
    server_exit: int | str
    client_wrote_bytes: str = field(default="", compare=False)
    server_wrote_bytes: str = field(default="", compare=False)
    client_sha256: str = field(default="", compare=False, repr=False)  # of what it received
    server_sha256: str = field(default="", compare=False, repr=False)
    stderr: str = field(default="", compare=False, repr=False)


def run_engines(
    client_tools: Tools,
    server_tools: Tools,
    client_flags: Sequence[str],
    server_flags: Sequence[str],
    scenario: Scenario,
    pki: CPki,
    *,
    client_env: Mapping[str, str] | None = None,
    server_env: Mapping[str, str] | None = None,
) -> Outcome:
    """s6-tlsc-io and s6-tlsd-io over loopback TCP, the scenario's two
    applications on their cleartext pipes."""
    data = {
        name: pattern(f"{scenario.name}/{name}", size)
        for name, size in scenario.client_sends + scenario.server_sends
    }
    client_sock, server_sock = tcp_pair()
    c_in_r, c_in_w = os.pipe()  # client app → s6-tlsc-io's stdin
    c_out_r, c_out_w = os.pipe()  # s6-tlsc-io's stdout → client app
    s_in_r, s_in_w = os.pipe()  # server app → s6-tlsd-io's fdr
    s_out_r, s_out_w = os.pipe()  # s6-tlsd-io's fdw → server app
    procs: list[Proc] = []
    try:
        server = Proc(
            [server_tools("s6-tlsd-io"), *tls_options(server_tools, *server_flags), "6", "7"],
            {0: server_sock.fileno(), 1: server_sock.fileno(), 6: s_in_r, 7: s_out_w},
            clean_environ(pki.server_env() if server_env is None else server_env),
        )
        procs.append(server)
        client = Proc(
            [client_tools("s6-tlsc-io"), *tls_options(client_tools, *client_flags), "6", "7"],
            {0: c_in_r, 1: c_out_w, 6: client_sock.fileno(), 7: client_sock.fileno()},
            clean_environ(pki.client_env() if client_env is None else client_env),
        )
        procs.append(client)
    finally:
        for fd in (c_in_r, c_out_w, s_in_r, s_out_w):
            os.close(fd)
        client_sock.close()
        server_sock.close()
        if len(procs) < 2:
            for fd in (c_in_w, c_out_r, s_in_w, s_out_r):
                os.close(fd)
            for p in procs:
                p.finish(0)
                p.close()
    deadline = time.monotonic() + DEADLINE
    apps = {"client": App(c_out_r, c_in_w, deadline), "server": App(s_out_r, s_in_w, deadline)}

    def play(side: str) -> None:
        app = apps[side]
        try:
            getattr(scenario, side)(app, data)
        finally:
            app.close()

    threads = [threading.Thread(target=play, args=(side,), daemon=True) for side in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE + 5)
    codes = [p.finish(deadline - time.monotonic() + 1) for p in (client, server)]
    stderr = "".join(
        f"[{side} {p.argv[0]}] {line}\n"
        for side, p in (("client", client), ("server", server))
        for line in p.stderr().splitlines()
    )
    for p in procs:
        p.close()
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"application threads still running after the deadline: {alive}"
    c_app, s_app = apps["client"], apps["server"]
    server_segments = [(n, data[n]) for n, _ in scenario.server_sends]
    client_segments = [(n, data[n]) for n, _ in scenario.client_sends]
    return Outcome(
        client_got=describe_received(c_app.received, server_segments)
        + ("" if c_app.read_end in ("eof", "limit") else f" ({c_app.read_end})"),
        client_wrote=describe_writes(c_app, counts=False),
        server_got=describe_received(s_app.received, client_segments)
        + ("" if s_app.read_end in ("eof", "limit") else f" ({s_app.read_end})"),
        server_wrote=describe_writes(s_app, counts=False),
        client_exit=codes[0],
        server_exit=codes[1],
        client_wrote_bytes=describe_writes(c_app, counts=True),
        server_wrote_bytes=describe_writes(s_app, counts=True),
        client_sha256=hashlib.sha256(c_app.received).hexdigest(),
        server_sha256=hashlib.sha256(s_app.received).hexdigest(),
        stderr=stderr,
    )


# --- scenarios ---------------------------------------------------------------------------


def _request_client(app: App, data: Mapping[str, bytes]) -> None:
    app.send("REQ", data["REQ"])
    app.close_write()
    app.recv()


def _request_server(app: App, data: Mapping[str, bytes]) -> None:
    app.recv()
    app.send("REPLY", data["REPLY"])
    app.close_write()


def _first_server(app: App, data: Mapping[str, bytes]) -> None:
    app.send("GREET", data["GREET"])
    app.close_write()
    app.recv()


def _first_client(app: App, data: Mapping[str, bytes]) -> None:
    app.recv()
    app.send("MORE", data["MORE"])
    app.close_write()


def _after_client(app: App, data: Mapping[str, bytes]) -> None:
    app.recv(limit=len(data["P1"]))
    app.close_write()
    app.recv()


def _after_server(app: App, data: Mapping[str, bytes]) -> None:
    app.send("P1", data["P1"])
    app.recv()
    app.send("P2", data["P2"])
    app.close_write()


KIB = 1024
#: What an application writes after its input ended: more than any pipe holds
#: (ours grows its pipes to 256 KiB), so that a dead engine means EPIPE.
AFTER = 512 * KIB
SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "i-request",
            "client sends REQ then local EOF; server reads to EOF, replies, EOF",
            _request_client,
            _request_server,
            client_sends=(("REQ", 100 * KIB),),
            server_sends=(("REPLY", AFTER),),
        ),
        Scenario(
            "ii-server-first",
            "server sends GREET and closes its local side; client reads to EOF, then sends MORE",
            _first_client,
            _first_server,
            client_sends=(("MORE", AFTER),),
            server_sends=(("GREET", 50 * KIB),),
        ),
        Scenario(
            "iii-write-after-close",
            "server sends P1; client reads it, closes its local side, reads on; "
            "server reads to EOF, then writes P2",
            _after_client,
            _after_server,
            client_sends=(),
            server_sends=(("P1", 64 * KIB), ("P2", AFTER)),
        ),
    )
}


def both_ways(up: int, down: int) -> Scenario:
    """Each side sends its data (client UP, server DOWN) and EOF while reading to EOF."""
    return Scenario(
        f"both-ways-{up}-{down}",
        "each side sends its data and EOF while reading to EOF",
        lambda app, data: app.pump("UP", data["UP"]),
        lambda app, data: app.pump("DOWN", data["DOWN"]),
        client_sends=(("UP", up),),
        server_sends=(("DOWN", down),),
    )


# --- the close matrix ---------------------------------------------------------------------

PAIRS = (("c", "c"), ("ours", "c"), ("c", "ours"), ("ours", "ours"))  # (client, server)
CLOSE_FLAGS = [(a, b) for a, b in itertools.product(("-s", "-S"), ("-j", "-J"))]
MATRIX = [
    (scenario, client, server)
    for scenario in ("i-request", "ii-server-first", "iii-write-after-close")
    for client in CLOSE_FLAGS
    for server in CLOSE_FLAGS
]
COLUMNS = (
    "scenario",
    "client",
    "server",
    "pair",
    "client app got",
    "client app wrote",
    "server app got",
    "server app wrote",
    "exit c/s",
    "",
)


def pair_name(client: str, server: str) -> str:
    return f"{'C' if client == 'c' else 'ours'}↔{'C' if server == 'c' else 'ours'}"


class Table:
    """The close matrix as it comes out, printed at the end of the module and
    written to a file beside the tests' temporary directories."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[tuple[str, ...]] = []

    def add(
        self, scenario: str, cflags: str, sflags: str, pair: str, o: Outcome, mark: str
    ) -> None:
        self.rows.append(
            (
                scenario,
                cflags,
                sflags,
                pair,
                o.client_got,
                o.client_wrote_bytes,
                o.server_got,
                o.server_wrote_bytes,
                f"{o.client_exit}/{o.server_exit}",
                mark,
            )
        )

    def render(self, rows: Sequence[tuple[str, ...]] | None = None) -> str:
        rows = self.rows if rows is None else rows
        widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
        lines = []
        for n, r in enumerate([COLUMNS, *rows]):
            lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths).rstrip())
        return "\n".join(lines) + "\n"

    def save(self) -> None:
        legend = (
            "Close matrix under TLS 1.2: C↔C is the reference; '!=' marks a row that differs.\n"
            "Pairs are client↔server. 'got' names the peer's segments received\n"
            "(X[:n] = the first n bytes of X); 'wrote' lists the app's writes\n"
            "(X:EPIPE@n = EPIPE after n bytes of X; unsent = not tried after a failure).\n"
            + "".join(f"  {s.name}: {s.summary}\n" for s in SCENARIOS.values())
            + "\n"
        )
        self.path.write_text(legend + self.render())


@pytest.fixture(scope="module")
def close_table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    table = Table(tmp_path_factory.getbasetemp() / "c-interop-close-matrix.txt")
    try:
        yield table
    finally:
        if table.rows:
            table.save()
            print(f"\n\n{table.path}:\n{table.path.read_text()}")


@pytest.mark.parametrize(
    ("scenario", "client_flags", "server_flags"),
    MATRIX,
    ids=[f"{s}-client{''.join(c)}-server{''.join(v)}" for s, c, v in MATRIX],
)
def test_close_matrix(
    scenario: str,
    client_flags: tuple[str, str],
    server_flags: tuple[str, str],
    c_tools: Tools,
    c_pki: CPki,
    close_table: Table,
) -> None:
    tools = {"c": c_tools, "ours": ours()}
    results = {
        pair: run_engines(
            tools[pair[0]], tools[pair[1]], client_flags, server_flags, SCENARIOS[scenario], c_pki
        )
        for pair in PAIRS
    }
    reference = results[("c", "c")]
    rows, differences = [], []
    for pair, outcome in results.items():
        same = outcome == reference
        mark = "" if pair == ("c", "c") else ("ok" if same else "!=")
        close_table.add(
            scenario,
            " ".join(client_flags),
            " ".join(server_flags),
            pair_name(*pair),
            outcome,
            mark,
        )
        rows.append(close_table.rows[-1])
        if not same:
            differences.append(
                f"{pair_name(*pair)}: {outcome}\n  stderr:\n{outcome.stderr or '  (none)'}"
            )
    print("\n" + close_table.render(rows))
    assert not differences, (
        f"{scenario} client {' '.join(client_flags)} server {' '.join(server_flags)}: "
        f"ours differs from the C reference\nC↔C: {reference}\n"
        f"  stderr:\n{reference.stderr or '  (none)'}\n" + "\n".join(differences)
    )


# --- 1. data exchanges in every mixed pair ------------------------------------------------

MIXED = (("ours", "c"), ("c", "ours"))  # (client, server)
SIZES = [(300 * KIB, 200 * KIB), (0, 0)]  # (client → server, server → client)


@pytest.mark.parametrize(("up", "down"), SIZES, ids=["300K-200K", "empty"])
@pytest.mark.parametrize("pair", MIXED, ids=[pair_name(*p) for p in MIXED])
def test_engines_exchange(
    pair: tuple[str, str],
    up: int,
    down: int,
    c_tools: Tools,
    c_pki: CPki,
) -> None:
    """s6-tlsc-io and s6-tlsd-io, one ours and one C, both directions at once."""
    tools = {"c": c_tools, "ours": ours()}
    scenario = both_ways(up, down)
    o = run_engines(tools[pair[0]], tools[pair[1]], (), (), scenario, c_pki)
    expected_up = pattern(f"{scenario.name}/UP", up)
    expected_down = pattern(f"{scenario.name}/DOWN", down)
    # With nothing to send, the server's FIN follows its Finished at once; the
    # C client, reading both in one go, calls that "closed during the
    # handshake" (sbearssl_run marks the handshake done only at the top of its
    # loop): C↔C ends 98/0 every time (40 runs in 40), C↔ours now and then.
    client_codes = {0, 98} if pair[0] == "c" and not down else {0}
    assert o.client_exit in client_codes and o.server_exit == 0, o.stderr
    assert (o.client_wrote, o.server_wrote) == ("UP", "DOWN"), o
    assert o.server_sha256 == hashlib.sha256(expected_up).hexdigest(), o
    assert o.client_sha256 == hashlib.sha256(expected_down).hexdigest(), o


#: The application run as prog: sends SIZE bytes of the SEED pattern on WFD then
#: closes it, reads RFD to EOF at the same time, then reports over the abstract
#: Unix socket REPORT: the sha256 of what it read and its environment.
PROG = r"""
import hashlib, json, os, random, socket, sys, threading
rfd, wfd, size, seed, report, role = sys.argv[1:7]
rfd, wfd, size = int(rfd), int(wfd), int(size)
data = random.Random(seed).randbytes(size)
result = {"role": role, "write_error": None}
def send():
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view[:65536]):]
    except OSError as e:
        result["write_error"] = e.strerror
    finally:
        os.close(wfd)
sender = threading.Thread(target=send)
sender.start()
digest, count = hashlib.sha256(), 0
while chunk := os.read(rfd, 65536):
    digest.update(chunk)
    count += len(chunk)
sender.join()
result.update(
    received=count,
    received_sha256=digest.hexdigest(),
    env={k: v for k, v in os.environ.items() if k.startswith("SSL_")},
)
with socket.socket(socket.AF_UNIX) as s:
    s.connect("\0" + report)
    s.sendall(json.dumps(result).encode())
"""


class Reports:
    """Where the progs report (an abstract Unix socket: no file to poll)."""

    def __init__(self) -> None:
        self.name = f"trio_s6tls-interop-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind("\0" + self.name)
        self.sock.listen(8)

    def prog(self, rfd: int, wfd: int, size: int, seed: str, role: str) -> list[str]:
        return [sys.executable, "-c", PROG, str(rfd), str(wfd), str(size), seed, self.name, role]

    def collect(self, count: int, deadline: float) -> dict[str, dict[str, object]]:
        reports: dict[str, dict[str, object]] = {}
        while len(reports) < count:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.sock], [], [], max(left, 0))
            if not ready:
                break
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(max(deadline - time.monotonic(), 0.1))
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
            report = json.loads(b"".join(chunks))
            reports[report["role"]] = report
        return reports

    def close(self) -> None:
        self.sock.close()


def read_port(fd: int, deadline: float) -> int:
    """The port a server writes with -1 (a number and a newline)."""
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"no readiness line within {DEADLINE}s (got {line!r})"
        chunk = os.read(fd, 64)
        assert chunk, f"the server closed its stdout without a port (got {line!r})"
        line += chunk
    return int(line)


class Server:
    """A server program (s6-tlsserver, s6-tcpserver ...) on 127.0.0.1 port 0."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        ready_r, ready_w = os.pipe()
        try:
            self.proc = Proc(argv, {1: ready_w}, env)
        finally:
            os.close(ready_w)
        try:
            self.port = read_port(ready_r, time.monotonic() + DEADLINE)
        except AssertionError as e:
            raise AssertionError(f"{e}; {argv[0]} said:\n{self.stop()}") from None
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(ready_r)

    def stop(self) -> str:
        self.proc.terminate()
        stderr = self.proc.stderr()
        self.proc.close()
        return stderr


def exchange(
    server_argv: Callable[[Reports], list[str]],
    server_env: Mapping[str, str],
    client_argv: Callable[[Reports, int], list[str]],
    client_env: Mapping[str, str],
) -> tuple[int | str, dict[str, dict[str, object]], str]:
    """One connection: a server, a client, both progs' reports; returns the
    client's exit code, the reports by role and everyone's stderr."""
    reports = Reports()
    try:
        server = Server(server_argv(reports), server_env)
        try:
            client = Proc(client_argv(reports, server.port), {}, client_env)
            deadline = time.monotonic() + DEADLINE
            code = client.finish(DEADLINE)
            got = reports.collect(2, deadline)
            client_err = client.stderr()
            client.close()
        finally:
            server_err = server.stop()
    finally:
        reports.close()
    return code, got, f"[client]\n{client_err}[server]\n{server_err}"


def check_reports(
    reports: Mapping[str, Mapping[str, object]],
    pki: CPki,
    seeds: Mapping[str, tuple[str, int]],
    *,
    client_cert: bool,
    stderr: str,
) -> None:
    """Byte-exact data both ways, and the SSL_* variables each prog sees."""
    assert set(reports) == {"client", "server"}, f"reports: {sorted(reports)}\n{stderr}"
    for role, peer in (("client", "server"), ("server", "client")):
        seed, size = seeds[peer]
        report = reports[role]
        assert report["write_error"] is None, (role, report, stderr)
        assert report["received"] == size, (role, report, stderr)
        assert report["received_sha256"] == hashlib.sha256(pattern(seed, size)).hexdigest()
    client_env = reports["client"]["env"]
    server_env = reports["server"]["env"]
    assert isinstance(client_env, dict) and isinstance(server_env, dict)
    assert client_env["SSL_PROTOCOL"] == server_env["SSL_PROTOCOL"] == "TLSv1.2"
    # The same connection: one implementation names the suite as the other does.
    assert client_env["SSL_CIPHER"] == server_env["SSL_CIPHER"], (client_env, server_env)
    assert client_env["SSL_CIPHER"].startswith("ECDHE-ECDSA-"), client_env
    assert client_env.get("SSL_TLS_SNI_SERVERNAME") == "localhost", client_env
    assert server_env.get("SSL_TLS_SNI_SERVERNAME") == "localhost", server_env
    assert client_env.get("SSL_PEER_CERT_HASH") == pki.server.sha256_hash, client_env
    assert client_env.get("SSL_PEER_CERT_SUBJECT") == "O=trio_s6tls interop, CN=localhost"
    if client_cert:
        assert server_env.get("SSL_PEER_CERT_HASH") == pki.client.sha256_hash, server_env
        assert server_env.get("SSL_PEER_CERT_SUBJECT") == "O=trio_s6tls interop, CN=test client"
    else:
        assert "SSL_PEER_CERT_HASH" not in server_env, server_env
        assert "SSL_PEER_CERT_SUBJECT" not in server_env, server_env


@pytest.mark.parametrize(("up", "down"), SIZES, ids=["300K-200K", "empty"])
@pytest.mark.parametrize("client_cert", [False, True], ids=["no-client-cert", "client-cert"])
@pytest.mark.parametrize("pair", MIXED, ids=[pair_name(*p) for p in MIXED])
def test_tlsclient_tlsserver(
    pair: tuple[str, str],
    client_cert: bool,
    up: int,
    down: int,
    c_tools: Tools,
    c_pki: CPki,
) -> None:
    """s6-tlsclient against s6-tlsserver, one ours and one C."""
    tools = {"c": c_tools, "ours": ours()}
    client, server = tools[pair[0]], tools[pair[1]]
    seeds = {"client": (f"tlsclient/{up}", up), "server": (f"tlsserver/{down}", down)}
    code, reports, stderr = exchange(
        lambda r: [
            server("s6-tlsserver"),
            "-1",
            "-H",
            *(["-Y"] if client_cert else []),
            "127.0.0.1",
            "0",
            *r.prog(0, 1, down, seeds["server"][0], "server"),
        ],
        clean_environ(c_pki.server_env(verify_clients=client_cert)),
        lambda r, port: [
            client("s6-tlsclient"),
            "-H",
            "-k",
            "localhost",
            *(["-y"] if client_cert else []),
            "127.0.0.1",
            str(port),
            *r.prog(6, 7, up, seeds["client"][0], "client"),
        ],
        clean_environ(c_pki.client_env(cert=client_cert)),
    )
    assert code == 0, stderr
    check_reports(reports, c_pki, seeds, client_cert=client_cert, stderr=stderr)


#: (s6-tcpserver, s6-tlsd) on one side, (s6-tcpclient, s6-tlsc) on the other
CHAINS = [
    (("ours", "ours"), ("c", "c")),
    (("c", "c"), ("ours", "ours")),
    (("c", "ours"), ("ours", "c")),
    (("ours", "c"), ("c", "ours")),
]


def chain_name(tcp: str, tls: str) -> str:
    return f"{tcp}-tcp+{tls}-tls"


@pytest.mark.parametrize(
    ("server_chain", "client_chain"),
    CHAINS,
    ids=[f"server:{chain_name(*s)}-client:{chain_name(*c)}" for s, c in CHAINS],
)
def test_tcp_chains(
    server_chain: tuple[str, str],
    client_chain: tuple[str, str],
    c_tools: Tools,
    c_pki: CPki,
) -> None:
    """``s6-tcpserver … s6-tlsd -Y prog`` against ``s6-tcpclient … s6-tlsc -y -k localhost prog``,
    the TLS halves from different implementations, and the TCP halves mixed in too."""
    tools = {"c": c_tools, "ours": ours()}
    up, down = 300 * KIB, 200 * KIB
    seeds = {"client": ("chain/up", up), "server": ("chain/down", down)}
    tcpserver, tlsd = (tools[x] for x in server_chain)
    tcpclient, tlsc = (tools[x] for x in client_chain)
    code, reports, stderr = exchange(
        lambda r: [
            tcpserver("s6-tcpserver"),  # the C one has no -H (that is s6-tcpserver-access)
            "-1",
            "127.0.0.1",
            "0",
            tlsd("s6-tlsd"),
            "-Y",
            *r.prog(0, 1, down, seeds["server"][0], "server"),
        ],
        clean_environ(c_pki.server_env(verify_clients=True)),
        lambda r, port: [
            tcpclient("s6-tcpclient"),
            "-H",
            "127.0.0.1",
            str(port),
            tlsc("s6-tlsc"),
            "-y",
            "-k",
            "localhost",
            *r.prog(6, 7, up, seeds["client"][0], "client"),
        ],
        clean_environ(c_pki.client_env(cert=True)),
    )
    assert code == 0, stderr
    check_reports(reports, c_pki, seeds, client_cert=True, stderr=stderr)


# --- 3. error exit codes side by side -----------------------------------------------------


@dataclass(frozen=True)
class ErrorCase:
    """Flags and environments for run_engines (None: the usual environment)."""

    client_flags: tuple[str, ...] = ()
    server_flags: tuple[str, ...] = ()
    client_env: Callable[[CPki], dict[str, str]] | None = None
    server_env: Callable[[CPki], dict[str, str]] | None = None
    #: False where the client's code is a race in C↔C too (98 or 111)
    compare_client: bool = True


def _garbage_key(pki: CPki) -> dict[str, str]:
    garbage = pki.dir / "garbage-key.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    return {"CERTFILE": str(pki.server.cert), "KEYFILE": str(garbage)}


ERROR_CASES = {
    "wrong CA": ErrorCase(client_env=lambda pki: {"CAFILE": str(pki.other_ca)}),
    "missing CAFILE": ErrorCase(client_env=lambda pki: {}),
    # Where the server gives up first, the client's end is a race even in C↔C:
    # EOF (98), or a reset or EPIPE (111) when its ClientHello or certificate
    # was already on the way (measured C↔C: 5 to 14 runs in 30 end 111).
    "missing CERTFILE": ErrorCase(
        server_env=lambda pki: {"KEYFILE": str(pki.server.key)}, compare_client=False
    ),
    "unparsable KEYFILE": ErrorCase(server_env=_garbage_key, compare_client=False),
    "mandatory client cert, none sent": ErrorCase(
        server_flags=("-y",),
        server_env=lambda pki: pki.server_env(verify_clients=True),
        compare_client=False,
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_exit_codes(case: str, c_tools: Tools, c_pki: CPki) -> None:
    """A failing handshake or configuration: both exit codes equal the C↔C
    ones, and no application gets a byte. (Whether an application's first
    write fits in the pipe before its engine dies is timing, not compared.)"""
    tools = {"c": c_tools, "ours": ours()}
    error = ERROR_CASES[case]
    scenario = both_ways(16 * KIB, 16 * KIB)
    results = {
        pair: run_engines(
            tools[pair[0]],
            tools[pair[1]],
            error.client_flags,
            error.server_flags,
            scenario,
            c_pki,
            client_env=error.client_env(c_pki) if error.client_env else None,
            server_env=error.server_env(c_pki) if error.server_env else None,
        )
        for pair in PAIRS
    }
    reference = results[("c", "c")]
    lines = [f"{case}:"] + [
        f"  {pair_name(*pair):10} exit client/server {o.client_exit}/{o.server_exit}"
        f"  client got {o.client_got}, server got {o.server_got}"
        for pair, o in results.items()
    ]
    print("\n".join(lines))
    for pair, o in results.items():
        assert o.client_got == o.server_got == "-", (pair_name(*pair), o)
        if not error.compare_client:
            assert o.client_exit in (98, 111), (pair_name(*pair), o)

    def codes(o: Outcome) -> tuple[int | str, ...]:
        return (o.client_exit, o.server_exit) if error.compare_client else (o.server_exit,)

    differing = {
        pair_name(*pair): (o, o.stderr)
        for pair, o in results.items()
        if codes(o) != codes(reference)
    }
    assert not differing, (
        "\n".join(lines)
        + f"\nC↔C stderr:\n{reference.stderr}\n"
        + "\n".join(f"{name} stderr:\n{err}" for name, (_, err) in differing.items())
    )


def lonely_engine(
    tools: Tools, side: str, flags: Sequence[str], pki: CPki
) -> tuple[int | str, float]:
    """An engine whose network peer accepts the connection and says nothing."""
    ours_side, silent = tcp_pair() if side == "client" else tcp_pair()[::-1]
    app_in_r, app_in_w = os.pipe()
    app_out_r, app_out_w = os.pipe()
    try:
        if side == "client":
            argv = [tools("s6-tlsc-io"), *tls_options(tools, *flags), "6", "7"]
            fds = {0: app_in_r, 1: app_out_w, 6: ours_side.fileno(), 7: ours_side.fileno()}
            env = clean_environ(pki.client_env())
        else:
            argv = [tools("s6-tlsd-io"), *tls_options(tools, *flags), "6", "7"]
            fds = {0: ours_side.fileno(), 1: ours_side.fileno(), 6: app_in_r, 7: app_out_w}
            env = clean_environ(pki.server_env())
        started = time.monotonic()
        proc = Proc(argv, fds, env)
        for fd in (app_in_r, app_out_w):
            os.close(fd)
        ours_side.close()
        code = proc.finish(DEADLINE)
        elapsed = time.monotonic() - started
        proc.close()
    finally:
        silent.close()
        for fd in (app_in_w, app_out_r):
            os.close(fd)
    return code, elapsed


@pytest.mark.parametrize("side", ["client", "server"])
def test_handshake_timeout(side: str, c_tools: Tools, c_pki: CPki) -> None:
    """-K 300 against a silent peer: the same exit code, after about the same time."""
    c_code, c_time = lonely_engine(c_tools, side, ("-K", "300"), c_pki)
    our_code, our_time = lonely_engine(ours(), side, ("-K", "300"), c_pki)
    print(
        f"\n-K 300, silent peer, {side}: C exit {c_code} in {c_time:.2f}s, ours {our_code} in {our_time:.2f}s"
    )
    assert our_code == c_code
    assert our_time >= 0.3
