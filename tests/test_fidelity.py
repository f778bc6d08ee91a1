"""Drop-in fidelity with C s6-networking 2.8.0.1, program by program.

Each case runs the same command line (the program's name swapped: C's from the
C build, ours from this venv) with the same inputs, and reduces what happened
to an observation: the exit code; stderr's first message, its category
(fatal, usage, warning: compared) and first words (program name stripped:
shown, not compared, except where the case is about wording: the -v logs);
the environment prog received (the interface's variables: PROTO, TCP*,
SSL_*, the rules' FID_* variables, and where the case is about them the TLS
variables' presence); what the peer and the application received. A case
passes when ours equals C, or when the fields that differ are listed for it
in DOCUMENTED_DIFFERENCES (what C does, what we do, why, and the page that
says so); any other difference fails that case, and its message shows both
sides' stderr.
A case in KNOWN_GAPS is a difference the issue asks us to remove and that is
still there: it is an expected failure (xfail, shown as KNOWN GAP in the table)
as long as it differs in those fields only, and fails once it matches C, so
that the list only shrinks.

The peers are in this process (tests/fidelity_util.py): a TLS client for the
server programs, a TLS server for the client programs, both capped at TLS 1.2
as BearSSL is; and for the mixed-pair exchanges the C counterpart itself. prog
is a small Python program (fidelity_util.PROG) that writes one JSON line
(environment, pid, identity) over the connection and then, as the case needs,
holds the connection until told to go, echoes, or drives UCSPI-TLS.

Every wait is bounded; nothing sleeps. Name lookups: every process gets
``DNSCACHEIP=127.0.0.2``, where no DNS server listens, so that C's own DNS
client fails at once and the same way on every machine (``/etc/hosts`` is
read with ``-h`` only).

C's wrappers spawn their engine and exec prog; when the application ends
first and the peer drops the connection right after, C's engine sometimes
dies "unable to read from remote: Bad file descriptor" (111). The cases let
the peer end first (close_notify), which C handles every time; the close
matrix of tests/test_c_interop.py covers the other orders.

``pytest -s`` prints the comparison table at the end of the session; it is
also written to ``<pytest basetemp>/fidelity-table.txt``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from c_tools import Tools, c_bin_dir, clean_environ, ours, require_c_tools
from fidelity_util import (
    IDS_PROG,
    NEGATIVE_WAIT,
    STEP,
    Documented,
    Observation,
    Pki,
    Proc,
    Row,
    Table,
    Timeout,
    TlsPeer,
    accept,
    client_context,
    connect,
    deadline,
    describe_block,
    describe_env,
    free_port,
    listener,
    load_report,
    make_pki,
    normalize_log,
    prog,
    read_until,
    sender,
    sender_data,
    server_context,
    stderr_head,
    tcp_pair,
    ucspi_echo,
    ucspi_sender,
)

# --- the deliberate differences ------------------------------------------------------------

_KEEP = Documented(
    fields=("tls vars",),
    c="2.8.0.1 keeps CAFILE/CERTFILE/KEYFILE in prog's environment by default and removes them with -Z",
    ours="removes them by default (-z) and keeps them with -Z",
    reason="the C documentation (and 2.7.x) say -Z keeps them; 2.8.0.1's code does the reverse (issue 11: follow the docs)",
    doc="docs/migration.rst#what-changes (-Z and -z)",
)
_EARLY = Documented(
    fields=("start", "handshake", "exit", "stderr"),
    c="the per-connection engine finds the broken key at the first handshake",
    ours="refuses to start, before any network I/O",
    reason="configuration is checked before any network I/O",
    doc="docs/migration.rst#what-changes (Earlier errors)",
)

_AT_START = Documented(
    fields=("start", "handshake"),
    c="s6-tlsserver starts and binds; each connection's s6-tlsd finds the missing CERTFILE or bad TLS_UID",
    ours="refuses to start (100), before any network I/O",
    reason="configuration is checked before any network I/O",
    doc="docs/migration.rst#what-changes (Earlier errors)",
)
_UCSPI_EARLY = Documented(
    fields=("exit",),
    c="runs prog; the broken configuration is found at STARTTLS (exit 3)",
    ours="refuses to run prog (96, 100 or 111): the configuration is checked before any network I/O",
    reason="configuration is checked before any network I/O",
    doc="docs/migration.rst#what-changes (Earlier errors)",
)

#: case id → the deliberate difference. Only what the issue calls deliberate or
#: docs/migration.rst already documents.
DOCUMENTED_DIFFERENCES: dict[str, Documented] = {
    "s6-tlsserver/env/tls-vars--Z": _KEEP,
    "s6-tlsserver/env/tls-vars-default": _KEEP,
    "s6-tlsd/env/tls-vars--Z": _KEEP,
    "s6-tlsd/env/tls-vars-default": _KEEP,
    "s6-tlsclient/env/tls-vars--Z": _KEEP,
    "s6-tlsclient/env/tls-vars-default": _KEEP,
    "s6-tlsc/env/tls-vars--Z": _KEEP,
    "s6-tlsc/env/tls-vars-default": _KEEP,
    "s6-ucspitlsd/env/tls-vars--Z": _KEEP,
    "s6-ucspitlsd/env/tls-vars-default": _KEEP,
    "s6-ucspitlsc/env/tls-vars--Z": _KEEP,
    "s6-ucspitlsc/env/tls-vars-default": _KEEP,
    "s6-tlsclient/ip-literal/cert-without-ip-san": Documented(
        fields=("exit", "stderr", "handshake"),
        c="no SNI and no name check for an IP literal: any certificate of a trusted CA is accepted",
        ours="no SNI, but the certificate is checked against the IP (98 without an IP SAN)",
        reason="checking the address keeps a client from being fooled; -k NAME checks a name instead (issue 11 row 5)",
        doc="docs/migration.rst#what-changes (An IP address as s6-tlsclient's host), docs/programs/s6-tlsclient.rst",
    ),
    "s6-tlsd-io/notify/-Y-untrusted-ca": Documented(
        fields=("exit", "stderr", "handshake", "block", "server cert", "data", "app then reads"),
        c="-Y accepts a client certificate from an unknown CA: hash exported, subject unset",
        ours="the handshake fails (98): Python's ssl cannot request a certificate without verifying it",
        reason="the standard library cannot request a certificate without verifying it (issue 11 row 9)",
        doc="docs/migration.rst#what-changes (Client certificates from an unknown CA), docs/programs/server-tls-options.inc",
    ),
    "s6-tlsserver/env/-Y-untrusted-ca": Documented(
        fields=("handshake", "server cert", "env", "after"),
        c="-Y accepts a client certificate from an unknown CA: hash exported, subject unset",
        ours="the handshake fails: Python's ssl cannot request a certificate without verifying it",
        reason="the standard library cannot request a certificate without verifying it (issue 11 row 9)",
        doc="docs/migration.rst#what-changes (Client certificates from an unknown CA), docs/programs/server-tls-options.inc",
    ),
    "s6-tlsd-io/notify/tls13-peer": Documented(
        fields=("block",),
        c="BearSSL: TLS 1.2 only",
        ours="TLS 1.3 with a peer that offers it",
        reason="OpenSSL instead of BearSSL",
        doc="docs/migration.rst#what-changes (TLS library)",
    ),
    "s6-tlsd-io/cipher-name": Documented(
        fields=("SSL_CIPHER",),
        c="BearSSL's choice and name of the suite",
        ours="OpenSSL's",
        reason="OpenSSL instead of BearSSL: SSL_CIPHER carries OpenSSL's suite names",
        doc="docs/migration.rst#what-changes (TLS library)",
    ),
    "s6-tlsserver/ours-only/--workers": Documented(
        fields=("start", "stderr", "handshake", "server cert", "env", "after"),
        c="no such option: usage, 100",
        ours="two processes share the port",
        reason="ours, beyond the C tools",
        doc="docs/migration.rst#what-is-new-all-opt-in",
    ),
    "s6-tlsserver/sigterm/prog-running": Documented(
        fields=("server after SIGTERM",),
        c="s6-tcpserverd exits at once; each connection's s6-tlsd-io and prog go on",
        ours="stops accepting, exits when the running progs have ended (their tunnels are in its process)",
        reason="one process for all connections",
        doc="docs/migration.rst#what-changes (Process model)",
    ),
    "s6-tlsserver/sigterm/handshake-pending": Documented(
        fields=("handshake", "prog", "prog after SIGTERM"),
        c="the connection's own processes finish the handshake and run prog",
        ours="closes the connections whose prog has not started",
        reason="one process for all connections",
        doc="docs/migration.rst#what-changes (Process model)",
    ),
    "s6-tlsserver/identity/TLS_UID": Documented(
        fields=("prog ids",),
        c="TLS_UID/TLS_GID drop the TLS engine only; prog stays root",
        ours="the whole server, prog included, runs as TLS_UID/TLS_GID",
        reason="the engine and prog share one process",
        doc="docs/migration.rst#what-changes (Identity of the super-servers)",
    ),
    "s6-tlsserver/error/garbage-KEYFILE": _EARLY,
    "s6-tlsserver/error/no-CERTFILE": _AT_START,
    "s6-tlsserver/error/bad-TLS_UID": _AT_START,
    "s6-ucspitlsd/error/no-CERTFILE": _UCSPI_EARLY,
    "s6-ucspitlsd/error/garbage-KEYFILE": _UCSPI_EARLY,
    "s6-ucspitlsd/error/-Y-CAFILE-missing-file": _UCSPI_EARLY,
    "s6-ucspitlsd/error/bad-TLS_UID": _UCSPI_EARLY,
    "s6-ucspitlsc/error/no-CAFILE": _UCSPI_EARLY,
    "s6-ucspitlsc/error/CAFILE-missing-file": _UCSPI_EARLY,
    "s6-tcpserver/options/-H-is-s6-tcpserver-access's": Documented(
        fields=("start", "stderr"),
        c="s6-tcpserver refuses -H and the other access options (usage, 100): they are s6-tcpserver-access's",
        ours="s6-tcpserver takes them itself",
        reason="ours, beyond the C tools: one program instead of the s6-tcpserver-access step",
        doc="docs/migration.rst#what-is-new-all-opt-in",
    ),
    "s6-tlsserver/error/missing-CAFILE-with-Y": _EARLY,
    "s6-tlsd-io/error/CERTFILE-empty": _EARLY,
    "s6-tlsserver/error/key-cert-mismatch": _EARLY,
    "s6-tlsd-io/error/key-cert-mismatch": _EARLY,
    "s6-tlsd/error/key-cert-mismatch": _EARLY,
}


@dataclass(frozen=True)
class Gap:
    """A difference from C that the issue asks us to remove and that is still
    there: the fields it changes, and which row of the issue it is."""

    fields: tuple[str, ...]
    reason: str


#: case id -> the issue-11 row still open. Such a case is expected to differ (xfail);
#: once it matches C it fails until removed from here. Listed 2026-12-02 from the
#: CI run of main: the fixes made for these rows were lost before they landed.

KNOWN_GAPS: dict[str, Gap] = {}


# --- the world the cases share -----------------------------------------------------------


@dataclass
class Rules:
    """Access rules for 127.0.0.1, each as a directory and as C's CDB of it."""

    allow_env: Path
    deny: Path
    empty: Path  # no entry for the client
    exec_: Path
    broken: Path  # the client's entry is a regular file, not a directory

    def cdb(self, directory: Path) -> Path:
        return directory.with_suffix(".cdb")


@dataclass
class World:
    c: Tools
    ours: Tools
    pki: Pki
    tmp: Path
    rules: Rules
    pool: ThreadPoolExecutor

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {
            k: v
            for k, v in clean_environ().items()
            if not k.startswith("FID_") and k not in ("UID", "GID", "GIDLIST")
        }
        return {**base, "DNSCACHEIP": "127.0.0.2", **(extra or {})}

    def server_env(self, extra: dict[str, str] | None = None, **kw: bool) -> dict[str, str]:
        env = {"CERTFILE": str(self.pki.server.cert), "KEYFILE": str(self.pki.server.key)}
        if kw.get("ca"):
            env["CAFILE"] = str(self.pki.ca)
        return self.env({**env, **(extra or {})})

    def client_env(
        self, extra: dict[str, str] | None = None, *, cert: bool = False
    ) -> dict[str, str]:
        env = {"CAFILE": str(self.pki.ca)}
        if cert:
            env.update(CERTFILE=str(self.pki.client.cert), KEYFILE=str(self.pki.client.key))
        return self.env({**env, **(extra or {})})


def _make_rules(root: Path, c: Tools) -> Rules:
    def entry(base: Path, files: dict[str, str]) -> Path:
        where = base / "ip4" / "127.0.0.1_32"
        for name, content in files.items():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            (where / name).write_text(content)
        return base

    rules = Rules(
        allow_env=entry(root / "allow-env", {"allow": "", "env/FID_A": "a\n", "env/FID_UNSET": ""}),
        deny=entry(root / "deny", {"deny": ""}),
        empty=root / "empty",
        exec_=entry(root / "exec", {"allow": "", "exec": "/bin/echo EXEC-RULE\n"}),
        broken=root / "broken",
    )
    (rules.empty / "ip4" / "10.0.0.1_32").mkdir(parents=True)
    (rules.empty / "ip4" / "10.0.0.1_32" / "allow").write_text("")
    (rules.broken / "ip4").mkdir(parents=True)
    (rules.broken / "ip4" / "127.0.0.1_32").write_text("not a directory\n")
    compiler = c("s6-accessrules-cdb-from-fs")
    assert os.access(compiler, os.X_OK), f"{compiler} missing from the C build"
    for d in (rules.allow_env, rules.deny, rules.empty, rules.exec_):
        subprocess.run([compiler, str(rules.cdb(d)), str(d)], check=True, timeout=STEP)
    return rules


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    c = require_c_tools()
    for name in ("s6-ucspitlsc", "s6-ucspitlsd", "s6-tcpserver-access", "execlineb"):
        assert os.access(c(name), os.X_OK), f"{name} missing from the C build in {c_bin_dir()}"
    tmp = tmp_path_factory.mktemp("fidelity")
    pki = make_pki(tmp / "pki")
    with ThreadPoolExecutor(1, thread_name_prefix="fidelity-c") as pool:
        yield World(
            c=c, ours=ours(), pki=pki, tmp=tmp, rules=_make_rules(tmp / "rules", c), pool=pool
        )


@pytest.fixture(scope="session")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    t = Table(tmp_path_factory.getbasetemp() / "fidelity-table.txt")
    try:
        yield t
    finally:
        if t.rows:
            t.save()
            print(f"\n\n{t.path}:\n{t.path.read_text()}")


# --- cases -----------------------------------------------------------------------------------

Run = Callable[[Tools, World], Observation]


@dataclass(frozen=True)
class Case:
    id: str
    run: Run
    root: bool = False  # needs root (TLS_UID)


def compare(case: Case, world: World, table: Table) -> None:
    if case.root and os.getuid() != 0:
        pytest.skip("needs root (TLS_UID/TLS_GID are ignored otherwise)")
    # The two sides are independent (their own ports, peers, processes): run
    # them at once, which halves the wait on C's peers and progs.
    c_future = world.pool.submit(case.run, world.c, world)
    try:
        o = case.run(world.ours, world)
    finally:
        c = c_future.result()
    cf, of = c.compared(), o.compared()
    keys = list(dict.fromkeys([*cf, *of]))
    differing = tuple(k for k in keys if cf.get(k) != of.get(k))
    documented = DOCUMENTED_DIFFERENCES.get(case.id)
    if not differing:
        verdict = "same"
    elif documented and set(differing) <= set(documented.fields):
        verdict = "documented"
    else:
        verdict = "DIFFERENT"
    gap = KNOWN_GAPS.get(case.id)
    if gap is not None:
        # Strict both ways: a gap that closed must leave KNOWN_GAPS, and one
        # that grew (other fields differ) is a new difference.
        assert differing, f"{case.id}: now the same as C; remove it from KNOWN_GAPS"
        if set(differing) <= set(gap.fields):
            table.add(Row(case.id, c, o, "KNOWN GAP", differing))
            pytest.xfail(f"open: {gap.reason}")
    table.add(Row(case.id, c, o, verdict, differing))
    assert verdict != "DIFFERENT", (
        f"{case.id}: ours differs from C in {', '.join(differing)}\n"
        f"  C:    {c.render()}\n  ours: {o.render(differing)}\n"
        + "\n".join(f"  [C] {d}" for d in c.detail)
        + "\n"
        + "\n".join(f"  [ours] {d}" for d in o.detail)
    )


def outcome(handshake: str) -> str:
    """ok, cleartext or failed: how a handshake failed (an alert or a bare
    close) is the TLS library's business, not the interface's."""
    return "failed" if handshake.startswith("failed") else handshake


def note_stderr(obs: Observation, text: str) -> None:
    """The category of the first message (compared) and its first words (shown)."""
    obs["stderr"] = stderr_head(text, 0)
    if obs["stderr"] not in ("-", "usage"):
        obs["~stderr words"] = stderr_head(text, 3)


def ids(cases: Sequence[Case]) -> list[str]:
    return [c.id.split("/", 1)[1] for c in cases]


def usage_case(
    program: str, args: Sequence[str], env: Callable[[World], dict[str, str]] | None = None
) -> Run:
    """The program with these arguments and nothing else: exit code, stderr."""

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        with Proc([tools(program), *args], {}, env(world) if env else world.env()) as p:
            obs["exit"] = p.finish()
            err = p.stderr()
            note_stderr(obs, err)
            obs.note("stderr", err)
        return obs

    return run


# --- servers: s6-tlsserver, s6-tcpserver ------------------------------------------------------


class Server:
    """A server program started with ``-1`` on 127.0.0.1 port 0: ``port`` once
    it is listening, else ``start`` holds its exit code."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        ready_r, ready_w = os.pipe()
        try:
            self.proc = Proc(argv, {1: ready_w}, env)
        finally:
            os.close(ready_w)
        self.port: int | None = None
        self.start: str = "listening"
        self.ready_line = b""
        self.stdout_closed = False
        try:
            self.ready_line = read_until(ready_r, deadline(), end=b"\n")
            if self.ready_line.endswith(b"\n") and self.ready_line[:-1].isdigit():
                self.port = int(self.ready_line)
                self.stdout_closed = read_until(ready_r, deadline(), limit=1) == b""
            else:
                self.start = f"exit {self.proc.finish()}"
        except Timeout:
            self.start = "no readiness line"
        finally:
            os.close(ready_r)

    def stop(self) -> int | str:
        self.proc.signal(signal.SIGTERM)
        return self.proc.finish()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        # SIGTERM first: a SIGKILLed parent would leave ours' --workers behind
        if self.proc.returncode is None:
            self.stop()
        self.proc.close()


def server_argv(tools: Tools, program: str, opts: Sequence[str], mode: str = "env") -> list[str]:
    return [tools(program), "-1", *opts, "127.0.0.1", "0", *prog(mode, 1, 0)]


def tls_connect(
    world: World, port: int, *, cert: str | None = None, sni: str | None = None, tls13: bool = False
) -> TlsPeer:
    ctx = client_context(world.pki, cert=getattr(world.pki, cert) if cert else None, tls13=tls13)
    return TlsPeer(connect(port), ctx, server_side=False, server_hostname=sni)


def observe_report(
    obs: Observation,
    world: World,
    line: bytes,
    *,
    ports: dict[str, str],
    tls_vars: bool = False,
) -> dict[str, object] | None:
    report = load_report(line)
    if report is None:
        obs["prog"] = f"no report ({line[:60]!r})"
        return None
    env = report["env"]
    assert isinstance(env, dict)
    if not tls_vars:
        env = {
            k: v
            for k, v in env.items()
            if not k.startswith(("CADIR", "CAFILE", "CERTFILE", "KEYFILE", "TLS_"))
        }
    obs["env"] = describe_env(env, world.pki, ports=ports)
    return report


def tls_vars_of(report: dict[str, object] | None) -> str:
    if report is None:
        return "-"
    env = report["env"]
    assert isinstance(env, dict)
    names = sorted(
        k for k in env if k.startswith(("CADIR", "CAFILE", "CERTFILE", "KEYFILE", "TLS_"))
    )
    return " ".join(names) or "(none)"


def tlsserver_env_case(
    opts: Sequence[str],
    *,
    cert: str | None = None,
    sni: str | None = None,
    env: Callable[[World], dict[str, str]] | None = None,
    tls_vars: bool = False,
    program: str = "s6-tlsserver",
    raw: bool = False,
) -> Run:
    """One connection; prog writes its report over the TLS tunnel (raw: over
    the socket itself), answers a line, and the client ends first."""

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        server_env = env(world) if env else world.server_env(ca=True)
        with Server(server_argv(tools, program, opts, "linger"), server_env) as srv:
            obs["start"] = srv.start
            if srv.port is None:
                note_stderr(obs, srv.proc.stderr())
                obs.note("stderr", srv.proc.stderr())
                return obs
            until = deadline()
            if raw:
                conn = Conn(world, srv.port, tls=False)
                try:
                    local = str(conn.sock.getsockname()[1])
                    line = conn.line(until)
                    conn.send(b"go\n", until)
                    obs["after"] = repr(conn.line(until))
                finally:
                    conn.close()
                observe_report(obs, world, line, ports={str(srv.port): "PORT", local: "CLIENT"})
            else:
                peer = tls_connect(world, srv.port, cert=cert, sni=sni)
                local = str(peer.sock.getsockname()[1])
                try:
                    obs["handshake"] = outcome(peer.handshake(until))
                    if obs["handshake"] == "ok":
                        obs["server cert"] = world.pki.name_of_der(peer.peer_der())
                        report = observe_report(
                            obs,
                            world,
                            peer.recv_line(until),
                            ports={str(srv.port): "PORT", local: "CLIENT"},
                        )
                        if tls_vars:
                            obs["tls vars"] = tls_vars_of(report)
                        if report:
                            peer.send(b"go\n", until)
                            obs["after"] = repr(peer.recv_line(until))
                            # the client ends first (C's engine has a race
                            # when the application does)
                            peer.close_notify(until)
                    elif obs["handshake"] == "cleartext":
                        obs["cleartext"] = repr(peer.cleartext)
                finally:
                    peer.close()
            obs.note("stderr", srv.proc.stderr())
        return obs

    return run


def rules_case(kind: str, form: str) -> Run:
    """-i DIR or -x CDB: what the client meets."""

    def run(tools: Tools, world: World) -> Observation:
        directory = {
            "allow-env": world.rules.allow_env,
            "deny": world.rules.deny,
            "no-entry": world.rules.empty,
            "exec": world.rules.exec_,
            "broken": world.rules.broken,
        }[kind]
        where = str(directory) if form == "-i" else str(world.rules.cdb(directory))
        opts = ["-H", form, where]
        obs = Observation()
        env = world.server_env({"FID_UNSET": "set in the server's environment"}, ca=True)
        with Server(server_argv(tools, "s6-tlsserver", opts), env) as srv:
            obs["start"] = srv.start
            if srv.port is None:
                note_stderr(obs, srv.proc.stderr())
                obs.note("stderr", srv.proc.stderr())
                return obs
            until = deadline()
            peer = tls_connect(world, srv.port)
            local = str(peer.sock.getsockname()[1])
            try:
                hs = peer.handshake(until)
                obs["handshake"] = outcome(hs)
                if hs == "ok":
                    line = peer.recv_line(until)
                    if line.startswith(b"{"):
                        observe_report(
                            obs, world, line, ports={str(srv.port): "PORT", local: "CLIENT"}
                        )
                    else:
                        obs["over TLS"] = repr(line + peer.recv_all(until))
                elif hs == "cleartext":
                    obs["cleartext"] = repr(peer.cleartext)
            finally:
                peer.close()
            # the server goes on after a refused client
            obs["server"] = "running" if srv.proc.poll() is None else f"exit {srv.proc.poll()}"
            srv.stop()
            err = srv.proc.stderr_to_eof(deadline(2.0))
            if kind == "broken":
                note_stderr(obs, err)
            obs.note("stderr", err)
        return obs

    return run


def tcpserver_env_case(opts: Sequence[str]) -> Run:
    return tlsserver_env_case(
        opts, program="s6-tcpserver", raw=True, env=lambda w: w.env({"FID_KEEP": "x"})
    )


def readiness_case(program: str, opts: Sequence[str]) -> Run:
    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        argv = [tools(program), *opts, "127.0.0.1", "0", *prog("env", 1, 0)]
        with Server(argv, world.server_env()) as srv:
            obs["start"] = srv.start
            obs["stdout"] = (
                repr(srv.ready_line.replace(str(srv.port).encode(), b"PORT")) if srv.port else "-"
            )
            obs["stdout closed after"] = srv.stdout_closed
            obs["SIGTERM"] = f"exit {srv.stop()}" if srv.port else "-"
            obs.note("stderr", srv.proc.stderr())
        return obs

    return run


class Conn:
    """One client of a server case, TLS or raw, reading prog's report."""

    def __init__(self, world: World, port: int, *, tls: bool) -> None:
        self.tls = tls
        if tls:
            self.peer: TlsPeer | None = tls_connect(world, port)
            self.sock = self.peer.sock
        else:
            self.peer = None
            self.sock = connect(port)
        self.buf = b""

    def start(self, until: float) -> str:
        return self.peer.handshake(until) if self.peer else "ok"

    def line(self, until: float) -> bytes:
        if self.peer:
            return self.peer.recv_line(until)
        self.sock.settimeout(max(until - time.monotonic(), 0.01))
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise Timeout("raw read") from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            self.buf += chunk
        line, sep, self.buf = self.buf.partition(b"\n")
        return line + sep

    def report(self, until: float) -> dict[str, object] | None:
        return load_report(self.line(until))

    def send(self, data: bytes, until: float) -> None:
        if self.peer:
            self.peer.send(data, until)
        else:
            self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def connnum_case(program: str, opts: Sequence[str]) -> Run:
    """Three clients from 127.0.0.1, each connecting while the others' progs run."""

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        tls = program == "s6-tlsserver"
        with Server(server_argv(tools, program, opts, "hold"), world.server_env()) as srv:
            assert srv.port, srv.proc.stderr()
            conns, nums = [], []
            try:
                for _ in range(3):
                    conn = Conn(world, srv.port, tls=tls)
                    conns.append(conn)
                    until = deadline()
                    conn.start(until)
                    report = conn.report(until)
                    env = report["env"] if report else {}
                    assert isinstance(env, dict)
                    nums.append(env.get("TCPCONNNUM", "unset"))
            finally:
                for conn in conns:
                    conn.close()
            obs["TCPCONNNUM"] = ",".join(nums)
            obs.note("stderr", srv.proc.stderr())
        return obs

    return run


def maxconn_case(program: str, flag: str) -> Run:
    """``-c 1``: a second client waits until the first is done. ``-C 1``: a
    second client from the same IP is closed at once, and that is logged."""

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        tls = program == "s6-tlsserver"
        argv = server_argv(tools, program, [flag, "1", *(["-H"] if tls else [])], "hold")
        with Server(argv, world.server_env()) as srv:
            assert srv.port, srv.proc.stderr()
            first = Conn(world, srv.port, tls=tls)
            second = Conn(world, srv.port, tls=tls)
            try:
                until = deadline()
                first.start(until)
                assert first.report(until) is not None

                def try_second(seconds: float) -> str:
                    try:
                        hs = second.start(deadline(seconds))
                        report = second.report(deadline(seconds)) if hs == "ok" else None
                    except Timeout:
                        return "waiting"
                    if report is None:
                        return f"closed ({outcome(hs)})" if tls else "closed"
                    env = report["env"]
                    assert isinstance(env, dict)
                    return f"served, TCPCONNNUM={env.get('TCPCONNNUM')}"

                obs["second, while first's prog runs"] = state = try_second(NEGATIVE_WAIT)
                first.send(b"go\n", until)
                obs["first"] = repr(first.line(until))
                if state == "waiting":
                    # first's prog has exited; its client has not closed yet
                    obs["second, after first's prog exited"] = state = try_second(NEGATIVE_WAIT)
                first.close()
                if state == "waiting":
                    obs["second, after first closed"] = try_second(STEP)
            finally:
                first.close()
                second.close()
            if flag == "-C":
                err = srv.proc.stderr()
                lines = [normalize_log(x) for x in err.splitlines() if x.strip()]
                line = next((x for x in lines if "reject" in x), lines[0] if lines else "-")
                obs["log"] = line.split(":")[0]
                obs["~log"] = line
            obs.note("stderr", srv.proc.stderr())
        return obs

    return run


def signal_case(program: str, signame: str, *, pending: bool = False) -> Run:
    """SIGTERM or SIGHUP to the server while one prog runs (``pending``: while
    a client is connected, has read the ``-B`` banner, and has not started
    its handshake)."""

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        tls = program == "s6-tlsserver"
        opts = ["-H", *(["-B", "banner\n"] if pending else [])] if tls else []
        with Server(server_argv(tools, program, opts, "hold"), world.server_env()) as srv:
            assert srv.port, srv.proc.stderr()
            conn = Conn(world, srv.port, tls=tls)
            try:
                until = deadline()
                if pending:
                    assert conn.peer is not None
                    obs["banner"] = repr(conn.peer.read_clear_line(until))
                else:
                    conn.start(until)
                    assert conn.report(until) is not None
                srv.proc.signal(getattr(signal, signame))
                code = srv.proc.wait(NEGATIVE_WAIT)
                obs["server after " + signame] = "running" if code is None else f"exit {code}"
                if pending:
                    try:
                        until = deadline()
                        hs = conn.start(until)
                        obs["handshake"] = outcome(hs)
                        obs["prog"] = "runs" if hs == "ok" and conn.report(until) else "never"
                    except Timeout:
                        obs["handshake"] = "timeout"
                if signame == "SIGHUP":
                    obs["prog got"] = repr(conn.line(until))
                    # and the server still serves
                    other = Conn(world, srv.port, tls=tls)
                    try:
                        until = deadline()
                        other.start(until)
                        obs["new client"] = "served" if other.report(until) else "not served"
                    finally:
                        other.close()
                elif obs.fields.get("prog", "runs") == "runs":
                    try:
                        conn.send(b"go\n", until)
                        obs["prog after " + signame] = repr(conn.line(until))
                    except OSError as e:
                        obs["prog after " + signame] = type(e).__name__
            finally:
                conn.close()
            if signame != "SIGTERM":
                srv.proc.signal(signal.SIGTERM)
            obs["server at the end"] = f"exit {srv.proc.finish()}"
            obs.note("stderr", srv.proc.stderr())
        return obs

    return run


def verbose_log_case(program: str, opts: Sequence[str]) -> Run:
    """The log of ``-v`` for one connection: every line, program name stripped,
    numbers as N (prog's pid as PROGPID), in order, duplicates dropped, each
    cut at 100 characters. The server is stopped once it has logged the end
    of the connection (or after a short wait, if it never does)."""

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        tls = program == "s6-tlsserver"
        with Server(server_argv(tools, program, opts, "linger"), world.server_env()) as srv:
            assert srv.port, srv.proc.stderr()
            conn = Conn(world, srv.port, tls=tls)
            until = deadline()
            try:
                conn.start(until)
                report = conn.report(until)
                conn.send(b"go\n", until)
                conn.line(until)
                if conn.peer:  # the client ends first (see the module's docstring)
                    conn.peer.close_notify(until)
            finally:
                conn.close()
            srv.proc.wait_stderr("end pid", deadline(NEGATIVE_WAIT))
            srv.stop()
            err = srv.proc.stderr_to_eof(deadline(NEGATIVE_WAIT))
            pid = str(report["pid"]) if report else "?"
            lines = [
                normalize_log(line.replace(f" {pid} ", " PROGPID "))[:100]
                for line in err.splitlines()
            ]
            obs["log"] = " | ".join(dict.fromkeys(lines))
            obs.note("stderr", err)
        return obs

    return run


def identity_case(program: str) -> Run:
    """TLS_UID/TLS_GID as root: prog's uid/gid/groups."""

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        env = world.server_env({"TLS_UID": "65534", "TLS_GID": "65533"})
        argv = [tools(program), "-1", "-H", "127.0.0.1", "0", *IDS_PROG]
        with Server(argv, env) as srv:
            obs["start"] = srv.start
            if srv.port is None:
                note_stderr(obs, srv.proc.stderr())
                return obs
            conn = Conn(world, srv.port, tls=True)
            try:
                until = deadline()
                conn.start(until)
                report = conn.report(until)
            finally:
                conn.close()
            obs["prog ids"] = _ids(report)
            obs.note("stderr", srv.proc.stderr())
        return obs

    return run


def _ids(report: dict[str, object] | None) -> str:
    if not report:
        return "-"
    ids_ = report["ids"]
    assert isinstance(ids_, dict)
    return (
        f"uid {ids_['Uid'][0]} gid {ids_['Gid'][0]} groups {','.join(ids_['Groups']) or '(none)'}"
    )


def server_error_case(
    program: str, opts: Sequence[str], env: Callable[[World], dict[str, str]] | None = None
) -> Run:
    """A server that should refuse to start (usage, bind) or, C's way, start
    and fail each connection: what a client meets."""

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = str(taken.getsockname()[1])
            argv = [tools(program), *(port if o == "PORT_IN_USE" else o for o in opts)]
            srv = Server(argv, env(world) if env else world.server_env())
        with srv:
            obs["start"] = srv.start
            if srv.port is not None and program == "s6-tlsserver":
                peer = tls_connect(world, srv.port)
                try:
                    obs["handshake"] = outcome(peer.handshake(deadline()))
                finally:
                    peer.close()
            if srv.port is not None:
                # C's per-connection processes may still be writing
                srv.stop()
            err = srv.proc.stderr_to_eof(deadline(2.0))
            note_stderr(obs, err)
            obs.note("stderr", err)
        return obs

    return run


def chain_exchange_case(
    server: Callable[[Tools, World], list[str]],
    client: Callable[[Tools, World, int], list[str]],
    *,
    side: str,
) -> Run:
    """A mixed pair built from chains: ``server(tools, world)`` is a server
    command line (with -1, port 0; its prog echoes), ``client(tools, world,
    port)`` a client one whose application sends 200 KB and prints one JSON
    report on stdout. ``side`` says which one takes the tools under test; the
    other is C's."""

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        size = EXCHANGE_SIZE
        server_tools, client_tools = (tools, world.c) if side == "server" else (world.c, tools)
        with Server(server(server_tools, world), world.server_env()) as srv:
            assert srv.port, srv.proc.stderr()
            out_r, out_w = os.pipe()
            try:
                proc = Proc(client(client_tools, world, srv.port), {1: out_w}, world.client_env())
            finally:
                os.close(out_w)
            with proc:
                try:
                    report = load_report(read_until(out_r, deadline(), end=b"\n")) or {}
                except Timeout:
                    report = {}
                finally:
                    os.close(out_r)
                obs["client exit"] = proc.finish()
                obs.note("client stderr", proc.stderr())
            expected = hashlib.sha256(sender_data(size)).hexdigest()
            obs["echo"] = (
                "intact" if report.get("sha256") == expected else f"{report.get('received')} bytes"
            )
            if "block" in report:
                obs["block back"] = report["block"]
            obs.note("server stderr", srv.proc.stderr())
        return obs

    return run


EXCHANGE_SIZE = 200 * 1024


def _server_chain(program: str, tools: Tools, world: World) -> list[str]:
    """The server side of an exchange, ``program`` from ``tools``, the rest C's."""
    t = {p: (tools if p == program else world.c) for p in SERVER_PROGRAMS}
    if program == "s6-tlsserver" or program not in SERVER_PROGRAMS:
        return [t["s6-tlsserver"]("s6-tlsserver"), "-1", "-H", "127.0.0.1", "0", "/bin/cat"]
    head = [t["s6-tcpserver"]("s6-tcpserver"), "-1", "127.0.0.1", "0"]
    if program == "s6-ucspitlsd":
        return [*head, t["s6-ucspitlsd"]("s6-ucspitlsd"), "--", *ucspi_echo()]
    return [*head, t["s6-tlsd"]("s6-tlsd"), "--", "/bin/cat"]


def _client_chain(program: str, tools: Tools, world: World, port: int) -> list[str]:
    """The client side of an exchange, ``program`` from ``tools``, the rest C's;
    its application sends EXCHANGE_SIZE bytes and reports on stdout."""
    t = {p: (tools if p == program else world.c) for p in CLIENT_PROGRAMS}
    if program == "s6-tlsclient" or program not in CLIENT_PROGRAMS:
        head = [t["s6-tlsclient"]("s6-tlsclient"), "-H", "-k", "localhost", "127.0.0.1"]
        return [*head, str(port), *sender(EXCHANGE_SIZE)]
    head = [t["s6-tcpclient"]("s6-tcpclient"), "-H", "127.0.0.1", str(port)]
    if program == "s6-ucspitlsc":
        return [
            *head,
            t["s6-ucspitlsc"]("s6-ucspitlsc"),
            "-k",
            "localhost",
            "--",
            *ucspi_sender(EXCHANGE_SIZE),
        ]
    return [*head, t["s6-tlsc"]("s6-tlsc"), "-k", "localhost", "--", *sender(EXCHANGE_SIZE)]


SERVER_PROGRAMS = ("s6-tlsserver", "s6-tcpserver", "s6-tlsd", "s6-ucspitlsd")
CLIENT_PROGRAMS = ("s6-tlsclient", "s6-tcpclient", "s6-tlsc", "s6-ucspitlsc")
#: the C side an exchange meets: UCSPI-TLS talks to UCSPI-TLS
_COUNTERPART = {"s6-ucspitlsd": "s6-ucspitlsc", "s6-ucspitlsc": "s6-ucspitlsd"}


def mixed_exchange(program: str) -> Run:
    """The program under test in an otherwise C pair: 200 KB up, echoed back."""
    other = _COUNTERPART.get(program, "")
    if program in SERVER_PROGRAMS:
        return chain_exchange_case(
            lambda t, w: _server_chain(program, t, w),
            lambda t, w, port: _client_chain(other, w.c, w, port),
            side="server",
        )
    return chain_exchange_case(
        lambda t, w: _server_chain(other, w.c, w),
        lambda t, w, port: _client_chain(program, t, w, port),
        side="client",
    )


TLSSERVER_CASES = [
    Case("s6-tlsserver/env/-H", tlsserver_env_case(["-H"])),
    Case("s6-tlsserver/env/default", tlsserver_env_case([])),
    Case("s6-tlsserver/env/tls-vars-default", tlsserver_env_case(["-H"], tls_vars=True)),
    Case("s6-tlsserver/env/tls-vars--Z", tlsserver_env_case(["-H", "-Z"], tls_vars=True)),
    Case("s6-tlsserver/env/-h", tlsserver_env_case(["-h"])),
    # -w refuses the client when a lookup it needs fails (-p's: the DNS is down)
    Case("s6-tlsserver/env/-w-p", tlsserver_env_case(["-w", "-p"])),
    Case("s6-tlsserver/env/-W-p", tlsserver_env_case(["-W", "-p"])),
    Case("s6-tlsserver/env/-w", tlsserver_env_case(["-w"])),
    Case("s6-tlsserver/env/-H-l", tlsserver_env_case(["-H", "-l", "fid.local"])),
    Case("s6-tlsserver/env/sni-sent", tlsserver_env_case(["-H"], sni="localhost")),
    Case("s6-tlsserver/env/-Y-no-cert", tlsserver_env_case(["-H", "-Y"])),
    Case("s6-tlsserver/env/-Y-cert", tlsserver_env_case(["-H", "-Y"], cert="client")),
    Case("s6-tlsserver/env/-y-cert", tlsserver_env_case(["-H", "-y"], cert="client")),
    Case("s6-tlsserver/env/-y-no-cert", tlsserver_env_case(["-H", "-y"])),
    Case("s6-tlsserver/env/-Y-spaced-subject", tlsserver_env_case(["-H", "-Y"], cert="spaced")),
    Case("s6-tlsserver/env/-Y-untrusted-ca", tlsserver_env_case(["-H", "-Y"], cert="untrusted")),
    Case(
        "s6-tlsserver/sni/-k1-name",
        tlsserver_env_case(["-H", "-k", "1"], sni="alpha.test", env=lambda w: _sni_env(w)),
    ),
    Case(
        "s6-tlsserver/sni/-k1-no-name",
        tlsserver_env_case(["-H", "-k", "1"], env=lambda w: _sni_env(w)),
    ),
    Case(
        "s6-tlsserver/sni/-k2-name",
        tlsserver_env_case(["-H", "-k", "2"], sni="alpha.test", env=lambda w: _sni_env(w)),
    ),
    Case(
        "s6-tlsserver/sni/-k2-unknown-name",
        tlsserver_env_case(["-H", "-k", "2"], sni="localhost", env=lambda w: _sni_env(w)),
    ),
    Case("s6-tlsserver/long-options/--no-dns", tlsserver_env_case(["--no-dns"])),
    Case(
        "s6-tlsserver/long-options/--client-cert",
        tlsserver_env_case(["--no-dns", "--client-cert"], cert="client"),
    ),
    Case("s6-tlsserver/-1/readiness", readiness_case("s6-tlsserver", ["-1", "-H"])),
    Case(
        "s6-tlsserver/long-options/--notify--normally-verbose",
        readiness_case("s6-tlsserver", ["--notify", "--normally-verbose", "-H"]),
    ),
    Case("s6-tlsserver/tcpconnnum/3-concurrent", connnum_case("s6-tlsserver", ["-H"])),
    Case("s6-tlsserver/-c/1", maxconn_case("s6-tlsserver", "-c")),
    Case("s6-tlsserver/-C/1", maxconn_case("s6-tlsserver", "-C")),
    Case("s6-tlsserver/sigterm/prog-running", signal_case("s6-tlsserver", "SIGTERM")),
    Case(
        "s6-tlsserver/sigterm/handshake-pending",
        signal_case("s6-tlsserver", "SIGTERM", pending=True),
    ),
    Case("s6-tlsserver/sighup/prog-running", signal_case("s6-tlsserver", "SIGHUP")),
    *(
        Case(f"s6-tlsserver/rules/{form}-{kind}", rules_case(kind, form))
        for form in ("-i", "-x")
        for kind in ("allow-env", "deny", "no-entry", "exec")
    ),
    Case("s6-tlsserver/rules/-i-broken-entry", rules_case("broken", "-i")),
    Case("s6-tlsserver/-v/log", verbose_log_case("s6-tlsserver", ["-v", "-H"])),
    Case("s6-tlsserver/identity/TLS_UID", identity_case("s6-tlsserver"), root=True),
    Case("s6-tlsserver/exchange/with-C-s6-tlsclient", mixed_exchange("s6-tlsserver")),
    Case("s6-tlsserver/error/no-arguments", server_error_case("s6-tlsserver", [])),
    Case(
        "s6-tlsserver/error/unknown-option",
        server_error_case("s6-tlsserver", ["-1", "-@", "127.0.0.1", "0", "true"]),
    ),
    Case(
        "s6-tlsserver/error/-c-not-a-number",
        server_error_case("s6-tlsserver", ["-1", "-c", "x", "127.0.0.1", "0", "true"]),
    ),
    Case(
        "s6-tlsserver/error/bad-ip",
        server_error_case("s6-tlsserver", ["-1", "127.0.0.300", "0", "true"]),
    ),
    Case(
        "s6-tlsserver/error/port-in-use",
        server_error_case("s6-tlsserver", ["-1", "127.0.0.1", "PORT_IN_USE", "true"]),
    ),
    Case(
        "s6-tlsserver/error/no-CERTFILE",
        server_error_case(
            "s6-tlsserver",
            ["-1", "-H", "127.0.0.1", "0", "true"],
            env=lambda w: w.env({"KEYFILE": str(w.pki.server.key)}),
        ),
    ),
    Case(
        "s6-tlsserver/error/garbage-KEYFILE",
        server_error_case(
            "s6-tlsserver",
            ["-1", "-H", "127.0.0.1", "0", "true"],
            env=lambda w: w.server_env({"KEYFILE": str(w.pki.garbage_key)}),
        ),
    ),
    Case(
        "s6-tlsserver/error/key-cert-mismatch",
        server_error_case(
            "s6-tlsserver",
            ["-1", "-H", "127.0.0.1", "0", "true"],
            env=lambda w: w.server_env({"KEYFILE": str(w.pki.client.key)}),
        ),
    ),
    Case(
        "s6-tlsserver/error/missing-CAFILE-with-Y",
        server_error_case(
            "s6-tlsserver",
            ["-1", "-H", "-Y", "127.0.0.1", "0", "true"],
            env=lambda w: w.server_env({"CAFILE": str(w.pki.missing)}),
        ),
    ),
    Case(
        "s6-tlsserver/error/bad-TLS_UID",
        server_error_case(
            "s6-tlsserver",
            ["-1", "-H", "127.0.0.1", "0", "true"],
            env=lambda w: w.server_env({"TLS_UID": "nobody"}),
        ),
        root=True,
    ),
    Case("s6-tlsserver/ours-only/--workers", tlsserver_env_case(["-H", "--workers", "2"])),
]

TCPSERVER_CASES = [
    Case("s6-tcpserver/exchange/with-C-s6-tlsd-and-s6-tlsclient", mixed_exchange("s6-tcpserver")),
    Case("s6-tcpserver/env/default", tcpserver_env_case([])),
    Case("s6-tcpserver/-1/readiness", readiness_case("s6-tcpserver", ["-1"])),
    Case("s6-tcpserver/tcpconnnum/3-concurrent", connnum_case("s6-tcpserver", [])),
    Case("s6-tcpserver/-c/1", maxconn_case("s6-tcpserver", "-c")),
    Case("s6-tcpserver/-C/1", maxconn_case("s6-tcpserver", "-C")),
    Case("s6-tcpserver/sigterm/prog-running", signal_case("s6-tcpserver", "SIGTERM")),
    Case("s6-tcpserver/sighup/prog-running", signal_case("s6-tcpserver", "SIGHUP")),
    Case("s6-tcpserver/-v/log", verbose_log_case("s6-tcpserver", ["-v"])),
    Case("s6-tcpserver/error/no-arguments", server_error_case("s6-tcpserver", [])),
    Case(
        "s6-tcpserver/options/-H-is-s6-tcpserver-access's",
        server_error_case("s6-tcpserver", ["-1", "-H", "127.0.0.1", "0", "true"]),
    ),
    Case(
        "s6-tcpserver/error/port-in-use",
        server_error_case("s6-tcpserver", ["-1", "127.0.0.1", "PORT_IN_USE", "true"]),
    ),
]


def _sni_env(world: World) -> dict[str, str]:
    return world.server_env(
        {
            "CERTFILE:alpha.test": str(world.pki.alpha.cert),
            "KEYFILE:alpha.test": str(world.pki.alpha.key),
        }
    )


# --- clients: s6-tlsclient, s6-tcpclient ------------------------------------------------------


def _accept_or_exit(ls: socket.socket, proc: Proc, until: float) -> socket.socket | None:
    """The program's connection, or None if it exited without connecting."""
    import select

    while True:
        ready, _, _ = select.select([ls, proc.pidfd], [], [], max(until - time.monotonic(), 0))
        if ls in ready:
            return accept(ls, until)
        if ready:
            # exited: a connection may still be in the backlog
            ready, _, _ = select.select([ls], [], [], 0)
            return accept(ls, until) if ready else None
        raise Timeout("the client neither connected nor exited")


def client_case(
    program: str,
    opts: Sequence[str],
    *,
    env: Callable[[World], dict[str, str]] | None = None,
    host: str = "127.0.0.1",
    port: str | None = None,
    served: str | None = None,  # the certificate the peer server presents
    request_client_cert: bool = False,
    tls_vars: bool = False,
    silent: bool = False,
) -> Run:
    """The program connects to a peer server here; prog writes its report
    over the connection."""

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        with listener() as ls:
            lport = str(ls.getsockname()[1])
            target = str(free_port()) if port == "FREE" else port or lport
            argv = [tools(program), *opts, host, target, *prog("linger", 7, 6)]
            with Proc(argv, {}, env(world) if env else world.client_env()) as p:
                until = deadline()
                conn = _accept_or_exit(ls, p, until)
                if conn is not None and silent:
                    with conn:
                        obs["exit"] = p.finish()
                elif conn is not None and program == "s6-tcpclient":
                    with conn:
                        local = str(conn.getpeername()[1])
                        conn.settimeout(STEP)
                        stream = conn.makefile("rb")
                        line = stream.readline()
                        conn.sendall(b"go\n")
                        obs["after"] = repr(stream.readline())
                        stream.close()
                    observe_report(obs, world, line, ports={lport: "PORT", local: "CLIENT"})
                elif conn is not None:
                    local = str(conn.getpeername()[1])
                    ctx = server_context(
                        world.pki,
                        cert=getattr(world.pki, served) if served else None,
                        request_client_cert=request_client_cert,
                    )
                    peer = TlsPeer(conn, ctx, server_side=True)
                    try:
                        hs = peer.handshake(until)
                        obs["handshake"] = "ok" if hs == "ok" else "failed"
                        obs.note("peer handshake", f"{hs} {peer.handshake_error or ''}")
                        obs["SNI received"] = peer.sni_received or "(none)"
                        if hs == "ok":
                            if request_client_cert:
                                obs["client cert"] = world.pki.name_of_der(peer.peer_der())
                            report = observe_report(
                                obs,
                                world,
                                peer.recv_line(until),
                                ports={lport: "PORT", local: "CLIENT"},
                            )
                            if tls_vars:
                                obs["tls vars"] = tls_vars_of(report)
                            if report:
                                peer.send(b"go\n", until)
                                obs["after"] = repr(peer.recv_line(until))
                                peer.close_notify(until)
                    finally:
                        peer.close()
                obs["exit"] = p.finish()
                err = p.stderr()
                note_stderr(obs, err)
                obs.note("stderr", err)
        return obs

    return run


def narrow(run: Run, fields: Sequence[str]) -> Run:
    """The same case, observed through these fields only."""

    def narrowed(tools: Tools, world: World) -> Observation:
        full = run(tools, world)
        return Observation({k: v for k, v in full.fields.items() if k in fields}, full.detail)

    return narrowed


def client_error_case(program: str, opts: Sequence[str], **kw: object) -> Run:
    """Exit code and stderr only (C connects before it reads its trust anchors;
    ours checks them first: that is documented, not compared)."""
    inner = client_case(program, opts, **kw)  # type: ignore[arg-type]

    def run(tools: Tools, world: World) -> Observation:
        full = inner(tools, world)
        obs = Observation({k: full.fields[k] for k in ("exit", "stderr")}, full.detail)
        return obs

    return run


def _env_with(**extra: Callable[[World], str]) -> Callable[[World], dict[str, str]]:
    return lambda w: w.client_env({k.replace("__", ":"): f(w) for k, f in extra.items()})


LONG_NAME = ".".join(["a" * 60] * 5)  # 304 bytes: over BearSSL's 255 for a server name

TLSCLIENT_CASES = [
    Case("s6-tlsclient/env/-H-k", client_case("s6-tlsclient", ["-H", "-k", "localhost"])),
    Case("s6-tlsclient/env/-H-ip-literal", client_case("s6-tlsclient", ["-H"])),
    Case("s6-tlsclient/env/ip-literal-lookups", client_case("s6-tlsclient", [])),
    Case("s6-tlsclient/env/ip-list", client_case("s6-tlsclient", [], host="127.0.0.1,::1")),
    Case("s6-tlsclient/env/-H-ip-list", client_case("s6-tlsclient", ["-H"], host="127.0.0.1 ::1")),
    Case("s6-tlsclient/env/-h", client_case("s6-tlsclient", ["-h"])),
    Case("s6-tlsclient/env/-H-l", client_case("s6-tlsclient", ["-H", "-l", "fid.local"])),
    Case(
        "s6-tlsclient/env/-y",
        client_case(
            "s6-tlsclient",
            ["-H", "-y", "-k", "localhost"],
            env=lambda w: w.client_env(cert=True),
            request_client_cert=True,
        ),
    ),
    Case(
        "s6-tlsclient/env/-Y",
        client_case(
            "s6-tlsclient",
            ["-H", "-Y", "-k", "localhost"],
            env=lambda w: w.client_env(cert=True),
            request_client_cert=True,
        ),
    ),
    Case(
        "s6-tlsclient/env/tls-vars-default",
        client_case("s6-tlsclient", ["-H", "-k", "localhost"], tls_vars=True),
    ),
    Case(
        "s6-tlsclient/env/tls-vars--Z",
        client_case("s6-tlsclient", ["-H", "-Z", "-k", "localhost"], tls_vars=True),
    ),
    Case(
        "s6-tlsclient/ip-literal/cert-without-ip-san",
        narrow(
            client_case("s6-tlsclient", [], served="server_no_ip"),
            ("handshake", "SNI received", "exit", "stderr"),
        ),
    ),
    Case(
        "s6-tlsclient/ip-literal/-k-cert-without-ip-san",
        client_case("s6-tlsclient", ["-H", "-k", "localhost"], served="server_no_ip"),
    ),
    Case("s6-tlsclient/name/-h-localhost", client_case("s6-tlsclient", ["-h"], host="localhost")),
    Case("s6-tlsclient/name/localhost-no-hosts", client_case("s6-tlsclient", [], host="localhost")),
    Case(
        "s6-tlsclient/long-options/--no-dns--servername=",
        client_case("s6-tlsclient", ["--no-dns", "--servername=localhost"]),
    ),
    Case(
        "s6-tlsclient/long-options/--verify-cert",
        client_case("s6-tlsclient", ["--no-dns", "--verify-cert", "-k", "localhost"]),
    ),
    Case(
        "s6-tlsclient/long-options/--no-verify-cert",
        client_case(
            "s6-tlsclient",
            ["-H", "--no-verify-cert"],
            env=lambda w: w.client_env({"CAFILE": str(w.pki.other_ca)}),
        ),
    ),
    Case("s6-tlsclient/exchange/with-C-s6-tlsserver", mixed_exchange("s6-tlsclient")),
    Case(
        "s6-tlsclient/error/wrong-CA",
        client_error_case(
            "s6-tlsclient",
            ["-H", "-k", "localhost"],
            env=lambda w: w.client_env({"CAFILE": str(w.pki.other_ca)}),
        ),
    ),
    Case(
        "s6-tlsclient/error/name-mismatch",
        client_error_case("s6-tlsclient", ["-H", "-k", "other.test"]),
    ),
    Case(
        "s6-tlsclient/error/no-CAFILE",
        client_error_case("s6-tlsclient", ["-H"], env=lambda w: w.env()),
    ),
    Case(
        "s6-tlsclient/error/CAFILE-missing-file",
        client_error_case(
            "s6-tlsclient", ["-H"], env=_env_with(CAFILE=lambda w: str(w.pki.missing))
        ),
    ),
    Case(
        "s6-tlsclient/error/CAFILE-empty",
        client_error_case("s6-tlsclient", ["-H"], env=_env_with(CAFILE=lambda w: str(w.pki.empty))),
    ),
    Case(
        "s6-tlsclient/error/CADIR-empty",
        client_error_case(
            "s6-tlsclient", ["-H"], env=_env_with(CADIR=lambda w: str(_empty_dir(w)))
        ),
    ),
    Case(
        "s6-tlsclient/error/-y-no-CERTFILE",
        client_error_case(
            "s6-tlsclient",
            ["-H", "-y", "-k", "localhost"],
            env=_env_with(KEYFILE=lambda w: str(w.pki.client.key)),
        ),
    ),
    Case(
        "s6-tlsclient/error/-y-CERTFILE-missing-file",
        client_error_case(
            "s6-tlsclient",
            ["-H", "-y", "-k", "localhost"],
            env=_env_with(
                CERTFILE=lambda w: str(w.pki.missing), KEYFILE=lambda w: str(w.pki.client.key)
            ),
        ),
    ),
    Case(
        "s6-tlsclient/error/-y-garbage-KEYFILE",
        client_error_case(
            "s6-tlsclient",
            ["-H", "-y", "-k", "localhost"],
            env=_env_with(
                CERTFILE=lambda w: str(w.pki.client.cert), KEYFILE=lambda w: str(w.pki.garbage_key)
            ),
        ),
    ),
    Case(
        "s6-tlsclient/error/connection-refused",
        client_error_case("s6-tlsclient", ["-H"], port="FREE"),
    ),
    Case("s6-tlsclient/error/no-arguments", usage_case("s6-tlsclient", [])),
    # C's s6-tlsclient hands -4 and -6 both to s6-tcpclient: -6 wins
    Case("s6-tlsclient/error/-6-then--4", client_error_case("s6-tlsclient", ["-H", "-6", "-4"])),
    Case("s6-tlsclient/error/-4-then--6", client_error_case("s6-tlsclient", ["-H", "-4", "-6"])),
    Case(
        "s6-tlsclient/error/-K-not-a-number",
        client_error_case("s6-tlsclient", ["-H", "-K", "x"]),
    ),
    Case(
        "s6-tlsclient/error/-K-silent-server",
        client_case("s6-tlsclient", ["-H", "-K", "200"], silent=True),
    ),
    Case(
        "s6-tlsclient/error/bad-TLS_UID",
        client_error_case("s6-tlsclient", ["-H"], env=_env_with(TLS_UID=lambda w: "nobody")),
        root=True,
    ),
    Case(
        "s6-tlsclient/error/servername-too-long",
        client_error_case("s6-tlsclient", ["-H", "-k", LONG_NAME]),
    ),
]

TCPCLIENT_CASES = [
    Case("s6-tcpclient/exchange/with-C-s6-tlsc-to-s6-tlsserver", mixed_exchange("s6-tcpclient")),
    Case("s6-tcpclient/env/-H", client_case("s6-tcpclient", ["-H"])),
    Case("s6-tcpclient/env/-6-then--4", client_case("s6-tcpclient", ["-H", "-6", "-4"])),
    Case("s6-tcpclient/env/default", client_case("s6-tcpclient", [])),
    Case("s6-tcpclient/env/-h", client_case("s6-tcpclient", ["-h"])),
    Case("s6-tcpclient/env/-H-l", client_case("s6-tcpclient", ["-H", "-l", "fid.local"])),
    Case(
        "s6-tcpclient/error/connection-refused",
        client_error_case("s6-tcpclient", ["-H"], port="FREE"),
    ),
    Case("s6-tcpclient/error/no-arguments", usage_case("s6-tcpclient", [])),
    Case("s6-tcpclient/error/bad-port", client_error_case("s6-tcpclient", ["-H"], port="http")),
]


def _empty_dir(world: World) -> Path:
    d = world.tmp / "empty-cadir"
    d.mkdir(exist_ok=True)
    return d


# --- over a socket: s6-tlsd, s6-tlsc, s6-ucspitlsd, s6-ucspitlsc --------------------------------

SERVER_SIDE = ("s6-tlsd", "s6-ucspitlsd", "s6-tlsd-io")


def wrapper_case(
    program: str,
    opts: Sequence[str],
    *,
    env: Callable[[World], dict[str, str]] | None = None,
    cert: str | None = None,  # the peer client's certificate
    sni: str | None = None,  # what the peer client sends
    served: str | None = None,  # the peer server's certificate
    request_client_cert: bool = False,
    tls_vars: bool = False,
    silent: bool = False,
    mode: str | None = None,
    errors_only: bool = False,
    log: bool = False,
    identity: bool = False,
) -> Run:
    """The program on one end of a loopback TCP connection, the peer on the
    other; prog reports over the tunnel (UCSPI-TLS: after a cleartext
    STARTTLS line and the Y command, with the block it got back)."""
    server_side = program in SERVER_SIDE

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        ucspi = program.startswith("s6-ucspi")
        m = mode or (("ucspi-server" if server_side else "ucspi-client") if ucspi else "linger")
        pid = "?"
        ours_end, peer_end = tcp_pair()
        fds = [0, 1] if server_side else [6, 7]
        argv = [tools(program), *opts, *(IDS_PROG if identity else prog(m, fds[1], fds[0]))]
        default_env = world.server_env(ca=True) if server_side else world.client_env()
        try:
            p = Proc(
                argv, dict.fromkeys(fds, ours_end.fileno()), env(world) if env else default_env
            )
        finally:
            ours_end.close()
        with p:
            until = deadline()
            if server_side:
                ctx = client_context(world.pki, cert=getattr(world.pki, cert) if cert else None)
                peer = TlsPeer(peer_end, ctx, server_side=False, server_hostname=sni)
            else:
                ctx = server_context(
                    world.pki,
                    cert=getattr(world.pki, served) if served else None,
                    request_client_cert=request_client_cert,
                )
                peer = TlsPeer(peer_end, ctx, server_side=True)
            try:
                if m == "ucspi-decline":
                    report = load_report(peer.read_clear_line(until))
                    obs["declined, prog"] = "reported" if report else "no report"
                    pid = str(report["pid"]) if report else "?"
                elif silent:
                    obs["exit"] = p.finish()
                else:
                    if ucspi and server_side:
                        obs["cleartext"] = repr(peer.read_clear_line(until))
                    elif ucspi:
                        peer.send_clear(b"STARTTLS\n", until)
                    hs = peer.handshake(until)
                    obs["handshake"] = "ok" if hs == "ok" else "failed"
                    obs.note("peer handshake", f"{hs} {peer.handshake_error or ''}")
                    if not server_side:
                        obs["SNI received"] = peer.sni_received or "(none)"
                    if hs == "ok":
                        if server_side:
                            obs["server cert"] = world.pki.name_of_der(peer.peer_der())
                        elif request_client_cert:
                            obs["client cert"] = world.pki.name_of_der(peer.peer_der())
                        report = observe_report(obs, world, peer.recv_line(until), ports={})
                        if identity:
                            obs["prog ids"] = _ids(report)
                            peer.close_notify(until)  # the peer ends first (IDS_PROG)
                        if tls_vars:
                            obs["tls vars"] = tls_vars_of(report)
                        if report and ucspi:
                            obs["block"] = describe_block(str(report.get("block", "")), world.pki)
                        if report and not identity:
                            peer.send(b"go\n", until)
                            obs["after"] = repr(peer.recv_line(until))
                            # the peer ends first: C's engine has a race when
                            # the application does (exit 111, "Bad file descriptor")
                            peer.close_notify(until)
                        if report and log:
                            pid = str(report["pid"])
            finally:
                peer.close()
            if "exit" not in obs.fields:
                obs["exit"] = p.finish()
            err = p.stderr_to_eof(deadline(2.0))
            note_stderr(obs, err)
            if log:
                lines = [
                    normalize_log(line.replace(f" {pid} ", " PROGPID "))
                    for line in err.splitlines()
                    if "opportunistic" in line or "pid" in line
                ]
                obs["log"] = " | ".join(lines) or "-"
            obs.note("stderr", err)
        if errors_only:
            return Observation({k: obs.fields[k] for k in ("exit", "stderr")}, obs.detail)
        return obs

    return run


def _server_env_with(**extra: Callable[[World], str]) -> Callable[[World], dict[str, str]]:
    return lambda w: w.server_env({k.replace("__", ":"): f(w) for k, f in extra.items()})


def _alpha(world: World) -> dict[str, str]:
    return {
        "CERTFILE:alpha.test": str(world.pki.alpha.cert),
        "KEYFILE:alpha.test": str(world.pki.alpha.key),
    }


def server_side_cases(program: str) -> list[Case]:
    """The cases every server-side wrapper shares."""
    w = program
    err = {"errors_only": True}
    return [
        Case(f"{w}/env/no-Y", wrapper_case(w, [])),
        Case(f"{w}/env/-Y-no-cert", wrapper_case(w, ["-Y"])),
        Case(f"{w}/env/-Y-cert", wrapper_case(w, ["-Y"], cert="client")),
        Case(f"{w}/env/-y-cert", wrapper_case(w, ["-y"], cert="client")),
        Case(f"{w}/env/sni-sent", wrapper_case(w, [], sni="localhost")),
        Case(
            f"{w}/env/-k1-name",
            wrapper_case(w, ["-k", "1"], sni="alpha.test", env=lambda x: x.server_env(_alpha(x))),
        ),
        Case(f"{w}/env/tls-vars-default", wrapper_case(w, [], tls_vars=True)),
        Case(f"{w}/env/tls-vars--Z", wrapper_case(w, ["-Z"], tls_vars=True)),
        Case(f"{w}/error/-y-no-cert", wrapper_case(w, ["-y"], **err)),
        Case(
            f"{w}/error/no-CERTFILE",
            wrapper_case(w, [], env=lambda x: x.env({"KEYFILE": str(x.pki.server.key)}), **err),
        ),
        Case(
            f"{w}/error/no-KEYFILE",
            wrapper_case(w, [], env=lambda x: x.env({"CERTFILE": str(x.pki.server.cert)}), **err),
        ),
        Case(
            f"{w}/error/KEYFILE-missing-file",
            wrapper_case(w, [], env=_server_env_with(KEYFILE=lambda x: str(x.pki.missing)), **err),
        ),
        Case(
            f"{w}/error/garbage-KEYFILE",
            wrapper_case(
                w, [], env=_server_env_with(KEYFILE=lambda x: str(x.pki.garbage_key)), **err
            ),
        ),
        Case(
            f"{w}/error/key-cert-mismatch",
            wrapper_case(
                w, [], env=_server_env_with(KEYFILE=lambda x: str(x.pki.client.key)), **err
            ),
        ),
        Case(
            f"{w}/error/-k2-no-pairs",
            wrapper_case(w, ["-k", "2"], sni="alpha.test", **err),
        ),
        Case(
            f"{w}/error/KEYFILE:NAME-unpaired",
            wrapper_case(
                w,
                ["-k", "1"],
                env=lambda x: x.server_env({"KEYFILE:alpha.test": str(x.pki.alpha.key)}),
                **err,
            ),
        ),
        Case(
            f"{w}/error/-Y-CAFILE-missing-file",
            wrapper_case(
                w, ["-Y"], env=_server_env_with(CAFILE=lambda x: str(x.pki.missing)), **err
            ),
        ),
        Case(
            f"{w}/error/bad-TLS_UID",
            wrapper_case(w, [], env=_server_env_with(TLS_UID=lambda x: "nobody"), **err),
            root=True,
        ),
        Case(f"{w}/error/-K-silent-client", wrapper_case(w, ["-K", "200"], silent=True)),
        Case(f"{w}/error/-K-not-a-number", usage_case(w, ["-K", "x", "true"])),
        Case(f"{w}/error/no-arguments", usage_case(w, [])),
    ]


def client_side_cases(program: str) -> list[Case]:
    w = program
    err = {"errors_only": True}
    return [
        Case(f"{w}/env/-k", wrapper_case(w, ["-k", "localhost"])),
        Case(f"{w}/env/no-k", wrapper_case(w, [])),
        Case(
            f"{w}/env/-y",
            wrapper_case(
                w,
                ["-y", "-k", "localhost"],
                env=lambda x: x.client_env(cert=True),
                request_client_cert=True,
            ),
        ),
        Case(f"{w}/env/tls-vars-default", wrapper_case(w, ["-k", "localhost"], tls_vars=True)),
        Case(f"{w}/env/tls-vars--Z", wrapper_case(w, ["-Z", "-k", "localhost"], tls_vars=True)),
        Case(
            f"{w}/error/wrong-CA",
            wrapper_case(w, [], env=_env_with(CAFILE=lambda x: str(x.pki.other_ca)), **err),
        ),
        Case(f"{w}/error/name-mismatch", wrapper_case(w, ["-k", "other.test"], **err)),
        Case(f"{w}/error/no-CAFILE", wrapper_case(w, [], env=lambda x: x.env(), **err)),
        Case(
            f"{w}/error/CAFILE-missing-file",
            wrapper_case(w, [], env=_env_with(CAFILE=lambda x: str(x.pki.missing)), **err),
        ),
        Case(
            f"{w}/error/-y-CERTFILE-missing-file",
            wrapper_case(
                w,
                ["-y"],
                env=_env_with(
                    CERTFILE=lambda x: str(x.pki.missing), KEYFILE=lambda x: str(x.pki.client.key)
                ),
                **err,
            ),
        ),
        Case(f"{w}/error/-K-silent-server", wrapper_case(w, ["-K", "200"], silent=True)),
        Case(f"{w}/error/-6-equals--7", usage_case(w, ["-6", "6", "-7", "6", "true"])),
        Case(f"{w}/error/no-arguments", usage_case(w, [])),
    ]


TLSD_CASES = [
    Case("s6-tlsd/exchange/under-C-s6-tcpserver", mixed_exchange("s6-tlsd")),
    *server_side_cases("s6-tlsd"),
    Case(
        "s6-tlsd/env/-Y-spaced-subject",
        wrapper_case("s6-tlsd", ["-Y"], cert="spaced"),
    ),
    Case(
        "s6-tlsd/identity/TLS_UID",
        wrapper_case(
            "s6-tlsd",
            [],
            env=_server_env_with(TLS_UID=lambda x: "65534", TLS_GID=lambda x: "65533"),
            identity=True,
        ),
        root=True,
    ),
    Case(
        "s6-tlsd/long-options/--mandatory-client-cert",
        wrapper_case("s6-tlsd", ["--mandatory-client-cert", "--sni-level=0"], cert="client"),
    ),
]

TLSC_CASES = [
    Case("s6-tlsc/exchange/under-C-s6-tcpclient", mixed_exchange("s6-tlsc")),
    *client_side_cases("s6-tlsc"),
    Case(
        "s6-tlsc/long-options/--read-fd=--write-fd=",
        wrapper_case("s6-tlsc", ["--read-fd=6", "--write-fd=7", "--servername=localhost"]),
    ),
]

#: The UCSPI-TLS wrappers share the TLS wrappers' configuration code: one error
#: case per exit code is enough there (-K needs the handshake's peer, which
#: the UCSPI cases only start after the STARTTLS line).
_UCSPI_ERRORS = (
    "no-CERTFILE",
    "garbage-KEYFILE",
    "-y-no-cert",
    "-Y-CAFILE-missing-file",
    "bad-TLS_UID",
    "wrong-CA",
    "no-CAFILE",
    "CAFILE-missing-file",
    "-6-equals--7",
    "no-arguments",
)


def _ucspi(cases: list[Case]) -> list[Case]:
    return [c for c in cases if "/error/" not in c.id or c.id.split("/error/")[1] in _UCSPI_ERRORS]


UCSPITLSD_CASES = [
    Case("s6-ucspitlsd/exchange/with-C-s6-ucspitlsc", mixed_exchange("s6-ucspitlsd")),
    *(c for c in _ucspi(server_side_cases("s6-ucspitlsd")) if "no-arguments" not in c.id),
    Case("s6-ucspitlsd/-v2/accepted", wrapper_case("s6-ucspitlsd", ["-v", "2"], log=True)),
    Case(
        "s6-ucspitlsd/-v2/declined",
        wrapper_case("s6-ucspitlsd", ["-v", "2"], mode="ucspi-decline", log=True),
    ),
    Case("s6-ucspitlsd/error/no-arguments", usage_case("s6-ucspitlsd", [])),
]

UCSPITLSC_CASES = [
    Case("s6-ucspitlsc/exchange/with-C-s6-ucspitlsd", mixed_exchange("s6-ucspitlsc")),
    *_ucspi(client_side_cases("s6-ucspitlsc")),
    Case(
        "s6-ucspitlsc/-v2/accepted",
        wrapper_case("s6-ucspitlsc", ["-v", "2", "-k", "localhost"], log=True),
    ),
]


# --- the engines: s6-tlsd-io, s6-tlsc-io ----------------------------------------------------------


def engine_case(
    program: str,
    opts: Sequence[str],
    *,
    env: Callable[[World], dict[str, str]] | None = None,
    notify: bool = True,
    cert: str | None = None,
    sni: str | None = None,
    served: str | None = None,
    request_client_cert: bool = False,
    tls13: bool = False,
    peer_end: str = "close",  # close: close_notify; ragged: the peer drops TCP; silent
    identity: bool = False,
    cipher: bool = False,
    errors_only: bool = False,
) -> Run:
    """The engine between a loopback TCP connection (the peer here) and the
    application's pipes (this test): the -d block, a line each way, the end."""
    server_side = program == "s6-tlsd-io"

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        net, peer_sock = tcp_pair()
        app_in_r, app_in_w = os.pipe()  # application → engine
        app_out_r, app_out_w = os.pipe()  # engine → application
        notif_r, notif_w = os.pipe()
        if server_side:
            argv = [tools(program), *(["-d", "5"] if notify else []), *opts, "3", "4"]
            fds = {0: net.fileno(), 1: net.fileno(), 3: app_in_r, 4: app_out_w, 5: notif_w}
        else:
            argv = [tools(program), *(["-d", "3"] if notify else []), *opts, "6", "7"]
            fds = {0: app_in_r, 1: app_out_w, 3: notif_w, 6: net.fileno(), 7: net.fileno()}
        default_env = world.server_env(ca=True) if server_side else world.client_env()
        try:
            p = Proc(argv, fds, env(world) if env else default_env)
        finally:
            for fd in (app_in_r, app_out_w, notif_w):
                os.close(fd)
            net.close()
        with p:
            until = deadline()
            if server_side:
                ctx = client_context(
                    world.pki, cert=getattr(world.pki, cert) if cert else None, tls13=tls13
                )
                peer = TlsPeer(peer_sock, ctx, server_side=False, server_hostname=sni)
            else:
                ctx = server_context(
                    world.pki,
                    cert=getattr(world.pki, served) if served else None,
                    request_client_cert=request_client_cert,
                )
                peer = TlsPeer(peer_sock, ctx, server_side=True)
            try:
                if peer_end == "silent":
                    obs["exit"] = p.finish()
                else:
                    hs = peer.handshake(until)
                    obs["handshake"] = "ok" if hs == "ok" else "failed"
                    obs.note("peer handshake", f"{hs} {peer.handshake_error or ''}")
                    if not server_side:
                        obs["SNI received"] = peer.sni_received or "(none)"
                    if hs == "ok":
                        block = read_until(notif_r, until) if notify else b""
                        if notify:
                            obs["block"] = describe_block(block, world.pki)
                        if cipher:
                            got = {
                                k: v
                                for k, v in (
                                    e.partition("=")[::2] for e in block.decode().split("\0")
                                )
                            }
                            obs["SSL_CIPHER"] = got.get("SSL_CIPHER", "-")
                        if server_side:
                            obs["server cert"] = world.pki.name_of_der(peer.peer_der())
                        elif request_client_cert:
                            obs["client cert"] = world.pki.name_of_der(peer.peer_der())
                        if identity:
                            obs["engine ids"] = _proc_ids(p.pid)
                        peer.send(b"ping\n", until)
                        got_app = read_until(app_out_r, until, end=b"\n")
                        os.write(app_in_w, b"pong\n")
                        obs["data"] = f"app got {got_app!r}, peer got {peer.recv_line(until)!r}"
                        # The peer ends: with a close_notify, or (ragged) by
                        # dropping TCP; then the application closes its side.
                        if peer_end == "ragged":
                            peer.close()
                        else:
                            peer.close_notify(until)
                        obs["app then reads"] = repr(read_until(app_out_r, until))
                        os.close(app_in_w)
                        app_in_w = -1
            finally:
                peer.close()
                for fd in (app_in_w, app_out_r, notif_r):
                    if fd >= 0:
                        os.close(fd)
            if "exit" not in obs.fields:
                obs["exit"] = p.finish()
            err = p.stderr()
            note_stderr(obs, err)
            obs.note("stderr", err)
        if errors_only:
            return Observation({k: obs.fields[k] for k in ("exit", "stderr")}, obs.detail)
        return obs

    return run


def _proc_ids(pid: int) -> str:
    ids_: dict[str, list[str]] = {}
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            k, _, v = row.partition(":")
            if k in ("Uid", "Gid", "Groups"):
                ids_[k] = v.split()
    return (
        f"uid {ids_['Uid'][0]} gid {ids_['Gid'][0]} groups {','.join(ids_['Groups']) or '(none)'}"
    )


def engine_exchange_case(program: str) -> Run:
    """The mixed pair: the engine under test against the C engine of the other
    side, 200 KB each way through both, byte-exact."""
    server_side = program == "s6-tlsd-io"

    def run(tools: Tools, world: World) -> Observation:
        obs = Observation()
        size = 200 * 1024
        data = {"up": sender_data(size), "down": sender_data(size + 1)}
        client_tools, server_tools = (world.c, tools) if server_side else (tools, world.c)
        c_sock, s_sock = tcp_pair()
        pipes = [os.pipe() for _ in range(4)]
        (c_in_r, c_in_w), (c_out_r, c_out_w), (s_in_r, s_in_w), (s_out_r, s_out_w) = pipes
        try:
            server = Proc(
                [server_tools("s6-tlsd-io"), "3", "4"],
                {0: s_sock.fileno(), 1: s_sock.fileno(), 3: s_in_r, 4: s_out_w},
                world.server_env(),
            )
            client = Proc(
                [client_tools("s6-tlsc-io"), "-k", "localhost", "6", "7"],
                {0: c_in_r, 1: c_out_w, 6: c_sock.fileno(), 7: c_sock.fileno()},
                world.client_env(),
            )
        finally:
            for fd in (c_in_r, c_out_w, s_in_r, s_out_w):
                os.close(fd)
            c_sock.close()
            s_sock.close()
        with server, client:
            got = _pump_both(
                [(c_in_w, data["up"], c_out_r), (s_in_w, data["down"], s_out_r)], deadline()
            )
            obs["client got"] = "intact" if got[0] == data["down"] else f"{len(got[0])} bytes"
            obs["server got"] = "intact" if got[1] == data["up"] else f"{len(got[1])} bytes"
            obs["exit client/server"] = f"{client.finish()}/{server.finish()}"
            obs.note("stderr", client.stderr() + server.stderr())
        return obs

    return run


def _pump_both(sides: list[tuple[int, bytes, int]], until: float) -> list[bytes]:
    """Write each side's data then close its write end, while reading every
    side to EOF; all fds are ours and closed here."""
    import select

    received = [b"" for _ in sides]
    pending = {w: (i, memoryview(d)) for i, (w, d, _) in enumerate(sides)}
    reading = {r: i for i, (_, _, r) in enumerate(sides)}
    for w, _, r in sides:
        os.set_blocking(w, False)
        os.set_blocking(r, False)
    try:
        while pending or reading:
            for w in [w for w, (_, v) in pending.items() if not v]:
                os.close(w)
                del pending[w]
            rs, ws, _ = select.select(
                list(reading), list(pending), [], max(until - time.monotonic(), 0)
            )
            if not rs and not ws:
                raise Timeout("exchange")
            for w in ws:
                i, view = pending[w]
                try:
                    n = os.write(w, view[:65536])
                except BlockingIOError:
                    continue
                pending[w] = (i, view[n:])
            for r in rs:
                chunk = os.read(r, 65536)
                if chunk:
                    received[reading[r]] += chunk
                else:
                    os.close(r)
                    del reading[r]
    finally:
        for fd in [*pending, *reading]:
            os.close(fd)
    return received


TLSD_IO_CASES = [
    Case("s6-tlsd-io/notify/no-Y", engine_case("s6-tlsd-io", [])),
    Case("s6-tlsd-io/notify/sni-sent", engine_case("s6-tlsd-io", [], sni="localhost")),
    Case("s6-tlsd-io/notify/-Y-no-cert", engine_case("s6-tlsd-io", ["-Y"])),
    Case("s6-tlsd-io/notify/-Y-cert", engine_case("s6-tlsd-io", ["-Y"], cert="client")),
    Case("s6-tlsd-io/notify/-y-cert", engine_case("s6-tlsd-io", ["-y"], cert="client")),
    Case("s6-tlsd-io/notify/-Y-spaced-subject", engine_case("s6-tlsd-io", ["-Y"], cert="spaced")),
    Case("s6-tlsd-io/notify/-Y-untrusted-ca", engine_case("s6-tlsd-io", ["-Y"], cert="untrusted")),
    Case(
        "s6-tlsd-io/notify/-k1-name",
        engine_case(
            "s6-tlsd-io", ["-k", "1"], sni="alpha.test", env=lambda x: x.server_env(_alpha(x))
        ),
    ),
    Case(
        "s6-tlsd-io/notify/-k1-no-name",
        engine_case("s6-tlsd-io", ["-k", "1"], env=lambda x: x.server_env(_alpha(x))),
    ),
    Case(
        "s6-tlsd-io/notify/-k2-unknown-name",
        engine_case(
            "s6-tlsd-io", ["-k", "2"], sni="localhost", env=lambda x: x.server_env(_alpha(x))
        ),
    ),
    Case("s6-tlsd-io/notify/tls13-peer", engine_case("s6-tlsd-io", [], tls13=True)),
    Case("s6-tlsd-io/cipher-name", engine_case("s6-tlsd-io", [], cipher=True)),
    Case("s6-tlsd-io/end/-j-ragged-eof", engine_case("s6-tlsd-io", [], peer_end="ragged")),
    Case("s6-tlsd-io/error/-J-ragged-eof", engine_case("s6-tlsd-io", ["-J"], peer_end="ragged")),
    Case(
        "s6-tlsd-io/error/-K-silent-client",
        engine_case("s6-tlsd-io", ["-K", "200"], peer_end="silent"),
    ),
    Case(
        "s6-tlsd-io/long-options/--notification-fd=",
        engine_case("s6-tlsd-io", ["--notification-fd=5"], notify=False),
    ),
    Case(
        "s6-tlsd-io/identity/TLS_UID",
        engine_case(
            "s6-tlsd-io",
            [],
            env=_server_env_with(TLS_UID=lambda x: "65534", TLS_GID=lambda x: "65533"),
            identity=True,
        ),
        root=True,
    ),
    Case("s6-tlsd-io/exchange/with-C-s6-tlsc-io", engine_exchange_case("s6-tlsd-io")),
    *(
        c
        for c in [
            Case(
                "s6-tlsd-io/error/no-CERTFILE",
                engine_case(
                    "s6-tlsd-io",
                    [],
                    env=lambda x: x.env({"KEYFILE": str(x.pki.server.key)}),
                    errors_only=True,
                ),
            ),
            Case(
                "s6-tlsd-io/error/garbage-KEYFILE",
                engine_case(
                    "s6-tlsd-io",
                    [],
                    env=_server_env_with(KEYFILE=lambda x: str(x.pki.garbage_key)),
                    errors_only=True,
                ),
            ),
            Case(
                "s6-tlsd-io/error/KEYFILE-missing-file",
                engine_case(
                    "s6-tlsd-io",
                    [],
                    env=_server_env_with(KEYFILE=lambda x: str(x.pki.missing)),
                    errors_only=True,
                ),
            ),
            Case(
                "s6-tlsd-io/error/CERTFILE-empty",
                engine_case(
                    "s6-tlsd-io",
                    [],
                    env=_server_env_with(CERTFILE=lambda x: str(x.pki.empty)),
                    errors_only=True,
                ),
            ),
            Case(
                "s6-tlsd-io/error/key-cert-mismatch",
                engine_case(
                    "s6-tlsd-io",
                    [],
                    env=_server_env_with(KEYFILE=lambda x: str(x.pki.client.key)),
                    errors_only=True,
                ),
            ),
            Case(
                "s6-tlsd-io/error/-k2-no-pairs",
                engine_case("s6-tlsd-io", ["-k", "2"], sni="alpha.test", errors_only=True),
            ),
            Case(
                "s6-tlsd-io/error/-y-no-cert",
                engine_case("s6-tlsd-io", ["-y"], errors_only=True),
            ),
            Case(
                "s6-tlsd-io/error/bad-TLS_UID",
                engine_case(
                    "s6-tlsd-io",
                    [],
                    env=_server_env_with(TLS_UID=lambda x: "nobody"),
                    errors_only=True,
                ),
                root=True,
            ),
        ]
    ),
    Case("s6-tlsd-io/error/no-arguments", usage_case("s6-tlsd-io", [])),
    Case("s6-tlsd-io/error/fd-not-a-number", usage_case("s6-tlsd-io", ["x", "4"])),
]

TLSC_IO_CASES = [
    Case("s6-tlsc-io/notify/-k", engine_case("s6-tlsc-io", ["-k", "localhost"])),
    Case("s6-tlsc-io/notify/no-k", engine_case("s6-tlsc-io", [])),
    Case(
        "s6-tlsc-io/notify/-y",
        engine_case(
            "s6-tlsc-io",
            ["-y", "-k", "localhost"],
            env=lambda x: x.client_env(cert=True),
            request_client_cert=True,
        ),
    ),
    Case("s6-tlsc-io/end/-j-ragged-eof", engine_case("s6-tlsc-io", [], peer_end="ragged")),
    Case("s6-tlsc-io/error/-J-ragged-eof", engine_case("s6-tlsc-io", ["-J"], peer_end="ragged")),
    Case(
        "s6-tlsc-io/error/-K-silent-server",
        engine_case("s6-tlsc-io", ["-K", "200"], peer_end="silent"),
    ),
    Case("s6-tlsc-io/exchange/with-C-s6-tlsd-io", engine_exchange_case("s6-tlsc-io")),
    Case(
        "s6-tlsc-io/error/wrong-CA",
        engine_case(
            "s6-tlsc-io", [], env=_env_with(CAFILE=lambda x: str(x.pki.other_ca)), errors_only=True
        ),
    ),
    Case(
        "s6-tlsc-io/error/name-mismatch",
        engine_case("s6-tlsc-io", ["-k", "other.test"], errors_only=True),
    ),
    Case(
        "s6-tlsc-io/error/no-CAFILE",
        engine_case("s6-tlsc-io", [], env=lambda x: x.env(), errors_only=True),
    ),
    Case(
        "s6-tlsc-io/error/CAFILE-missing-file",
        engine_case(
            "s6-tlsc-io", [], env=_env_with(CAFILE=lambda x: str(x.pki.missing)), errors_only=True
        ),
    ),
    Case(
        "s6-tlsc-io/error/CADIR-missing-dir",
        engine_case(
            "s6-tlsc-io", [], env=lambda x: x.env({"CADIR": str(x.pki.missing)}), errors_only=True
        ),
    ),
    Case(
        "s6-tlsc-io/error/CAFILE-garbage",
        engine_case(
            "s6-tlsc-io",
            [],
            env=_env_with(CAFILE=lambda x: str(x.pki.garbage_key)),
            errors_only=True,
        ),
    ),
    Case(
        "s6-tlsc-io/error/CADIR-empty",
        engine_case(
            "s6-tlsc-io", [], env=lambda x: x.env({"CADIR": str(_empty_dir(x))}), errors_only=True
        ),
    ),
    Case(
        "s6-tlsc-io/error/-y-no-KEYFILE",
        engine_case(
            "s6-tlsc-io",
            ["-y"],
            env=_env_with(CERTFILE=lambda x: str(x.pki.client.cert)),
            errors_only=True,
        ),
    ),
    Case(
        "s6-tlsc-io/error/-y-garbage-KEYFILE",
        engine_case(
            "s6-tlsc-io",
            ["-y"],
            env=_env_with(
                CERTFILE=lambda x: str(x.pki.client.cert), KEYFILE=lambda x: str(x.pki.garbage_key)
            ),
            errors_only=True,
        ),
    ),
    Case(
        "s6-tlsc-io/error/servername-too-long",
        engine_case("s6-tlsc-io", ["-k", LONG_NAME], errors_only=True),
    ),
    Case("s6-tlsc-io/error/no-arguments", usage_case("s6-tlsc-io", [])),
    Case("s6-tlsc-io/error/-K-not-a-number", usage_case("s6-tlsc-io", ["-K", "x", "6", "7"])),
]


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", TLSSERVER_CASES, ids=ids(TLSSERVER_CASES))
def test_tlsserver(case: Case, world: World, table: Table) -> None:
    compare(case, world, table)


@pytest.mark.parametrize("case", TCPSERVER_CASES, ids=ids(TCPSERVER_CASES))
def test_tcpserver(case: Case, world: World, table: Table) -> None:
    compare(case, world, table)


@pytest.mark.parametrize("case", TLSCLIENT_CASES, ids=ids(TLSCLIENT_CASES))
def test_tlsclient(case: Case, world: World, table: Table) -> None:
    compare(case, world, table)


@pytest.mark.parametrize("case", TCPCLIENT_CASES, ids=ids(TCPCLIENT_CASES))
def test_tcpclient(case: Case, world: World, table: Table) -> None:
    compare(case, world, table)


@pytest.mark.parametrize("case", TLSD_CASES, ids=ids(TLSD_CASES))
def test_tlsd(case: Case, world: World, table: Table) -> None:
    compare(case, world, table)


@pytest.mark.parametrize("case", TLSC_CASES, ids=ids(TLSC_CASES))
def test_tlsc(case: Case, world: World, table: Table) -> None:
    compare(case, world, table)


@pytest.mark.parametrize("case", UCSPITLSD_CASES, ids=ids(UCSPITLSD_CASES))
def test_ucspitlsd(case: Case, world: World, table: Table) -> None:
    compare(case, world, table)


@pytest.mark.parametrize("case", UCSPITLSC_CASES, ids=ids(UCSPITLSC_CASES))
def test_ucspitlsc(case: Case, world: World, table: Table) -> None:
    compare(case, world, table)


@pytest.mark.parametrize("case", TLSD_IO_CASES, ids=ids(TLSD_IO_CASES))
def test_tlsd_io(case: Case, world: World, table: Table) -> None:
    compare(case, world, table)


@pytest.mark.parametrize("case", TLSC_IO_CASES, ids=ids(TLSC_IO_CASES))
def test_tlsc_io(case: Case, world: World, table: Table) -> None:
    compare(case, world, table)


def test_case_ids_are_unique_and_documented_ones_exist() -> None:
    every = [
        c.id
        for group in (
            TLSSERVER_CASES,
            TCPSERVER_CASES,
            TLSCLIENT_CASES,
            TCPCLIENT_CASES,
            TLSD_CASES,
            TLSC_CASES,
            UCSPITLSD_CASES,
            UCSPITLSC_CASES,
            TLSD_IO_CASES,
            TLSC_IO_CASES,
        )
        for c in group
    ]
    assert len(every) == len(set(every)), sorted(i for i in every if every.count(i) > 1)
    assert not set(DOCUMENTED_DIFFERENCES) - set(every), set(DOCUMENTED_DIFFERENCES) - set(every)
    assert not set(KNOWN_GAPS) - set(every), set(KNOWN_GAPS) - set(every)
