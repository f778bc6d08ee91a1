"""s6-tcpserver: a plain TCP super-server; each connection runs prog with the
socket as stdin and stdout. Also the option table and the run function that
s6-tlsserver shares (it adds the TLS options)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .._cli import Opt, Parsed, Program, id_number, uint
from .._errors import UsageError

MAX_CONNECTIONS = 16384  # the C tool's cap on -c


def _gid_list(text: str) -> list[int]:
    if text == "":
        return []
    return [id_number(part) for part in text.split(",")]


TCP_SERVER = [
    Opt("q", "quiet", "verbosity", 0),
    Opt("Q", "normal", "verbosity", 1),
    Opt("v", "verbose", "verbosity", 2),
    Opt("", "verbosity", "verbosity", parse=uint),
    Opt("1", "ready", "readiness", True),
    Opt("c", "maxconn", "max_conn", parse=uint),
    Opt("C", "localmaxconn", "max_per_ip", parse=uint),
    Opt("b", "backlog", "backlog", parse=uint),
    Opt("u", "uid", "uid", parse=id_number),
    Opt("g", "gid", "gid", parse=id_number),
    Opt("G", "gidlist", "groups", parse=_gid_list),
    Opt("U", "uid-from-env", "ids_from_env", True),
    Opt("w", "no-lookup-warning", "warn_lookup_failure", False),
    Opt("W", "lookup-warning", "warn_lookup_failure", True),
    Opt("d", "nagle", "nodelay", False),
    Opt("D", "nodelay", "nodelay", True),
    Opt("r", "ident", "ident", True),
    Opt("R", "no-ident", "ident", False),
    Opt("p", "paranoid", "paranoid", True),
    Opt("P", "no-paranoid", "paranoid", False),
    Opt("h", "lookup", "remote_lookup", True),
    Opt("H", "no-lookup", "remote_lookup", False),
    Opt("l", "localname", "local_name", parse=str),
    Opt("B", "banner", "banner", parse=str),
    Opt("t", "timeout", "access_timeout_ms", parse=uint),
    Opt("i", "rules-dir", "rules_dir", parse=str),
    Opt("x", "rules-file", "rules_file", parse=str),
    Opt("L", "proxy-protocol", "proxy", True),
    Opt("", "workers", "workers", parse=uint),
]

TCP_SERVER_HELP = """\
  -q, -Q, -v                    verbosity 0 (quiet), 1 (default), 2 (verbose)
      --verbosity N             any verbosity (3: debug)
  -1, --ready                   print the bound port and a newline on stdout, then close it
  -c, --maxconn N               at most N connections at once (default 40, cap 16384);
                                new clients wait in the backlog meanwhile
  -C, --localmaxconn N          at most N connections per client IP (default 40);
                                one more is accepted and closed at once
  -b, --backlog N               listen backlog
  -u UID, -g GID, -G GID,GID... identity the server drops to once bound (prog inherits
                                it; groups cleared unless -G); -U: from UID, GID, GIDLIST
  -W / -w                       log failed name lookups at -v (default) / never
  -d / -D                       keep Nagle's algorithm (default) / set TCP_NODELAY
  -R / -r                       no IDENT lookup (default) / IDENT (unsupported)
  -P / -p                       trust reverse names (default) / require them to resolve back
  -h / -H                       look up TCPREMOTEHOST and TCPLOCALHOST (default) / do not
  -l, --localname NAME          TCPLOCALHOST=NAME without a lookup
  -B, --banner TEXT             send TEXT to each client before anything else
  -t, --timeout MS              bound on name lookups and the PROXY header (0 = none)
  -i, --rules-dir DIR           access rules directory (ip4/, ip6/ entries)
  -x, --rules-file FILE         access rules CDB (unsupported: no maintained CDB reader)
  -L, --proxy-protocol          read a PROXY v1/v2 header before anything else
      --workers N               N processes sharing the port (limits are per process)
"""

SIGNAL_HELP = """\
Signals: SIGTERM stop accepting and exit; SIGINT (Ctrl-C) the same, a second
one exits at once; SIGHUP send SIGTERM and SIGCONT to every prog; SIGQUIT the
same, then exit; SIGABRT SIGKILL every prog, then exit.
"""

PROGRAM = Program(
    "s6-tcpserver",
    "s6-tcpserver [ -q | -Q | -v ] [ -1 ] [ -c maxconn ] [ -C localmaxconn ] [ -b backlog ] "
    "[ -G gidlist ] [ -g gid ] [ -u uid ] [ -U ] [ -W | -w ] [ -d | -D ] [ -r | -R ] "
    "[ -p | -P ] [ -h | -H ] [ -l localname ] [ -B banner ] [ -t timeout ] "
    "[ -i rulesdir | -x rulesfile ] [ -L ] [ --workers N ] [ -- ] ip port prog...",
    "Listens on ip:port (port 0: any free port) and, for every connection, runs prog\n"
    "with the socket as stdin and stdout and the UCSPI variables PROTO, TCPLOCALIP,\n"
    "TCPLOCALPORT, TCPREMOTEIP, TCPREMOTEPORT, TCPCONNNUM, TCPREMOTEHOST,\n"
    "TCPLOCALHOST in its environment.\n\n"
    + TCP_SERVER_HELP
    + "\n"
    + SIGNAL_HELP
    + "\nExit codes: 0 normal end; 100 wrong usage; 111 system call failed.\n",
)
OPTIONS = TCP_SERVER


def _ids_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``-U``: the identity in ``UID``, ``GID``, ``GIDLIST``."""
    values: dict[str, Any] = {}
    try:
        if env.get("UID"):
            values["uid"] = id_number(env["UID"])
        if env.get("GID"):
            values["gid"] = id_number(env["GID"])
        if "GIDLIST" in env:
            values["groups"] = _gid_list(env["GIDLIST"])
    except ValueError:
        raise UsageError("invalid UID, GID or GIDLIST in the environment") from None
    return values


def server_settings(parsed: Parsed, *, tls: bool) -> dict[str, Any]:
    """Check the operands and TCP options; the keyword arguments of
    :class:`~trio_s6tls._server.Launch` (minus the TLS parts)."""
    from .._errors import EXIT_USAGE, Fatal

    values = dict(parsed.values)
    if len(parsed.operands) < 3:
        raise UsageError("expected ip, port and prog")
    ip, port_text, *argv = parsed.operands
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"not an IP address: {ip!r}") from None
    try:
        port = uint(port_text)
        if port > 65535:
            raise ValueError(port_text)
    except ValueError:
        raise UsageError(f"invalid port: {port_text!r}") from None
    if values.get("ident"):
        raise Fatal(EXIT_USAGE, "IDENT lookups (-r) are not supported; use -R")
    if "rules_file" in values:
        raise Fatal(
            EXIT_USAGE,
            "rules files (-x) are not supported: no maintained CDB reader is available; "
            "use a rules directory with -i",
        )
    if values.get("ids_from_env"):
        values.update(_ids_from_env(os.environ))
    max_conn = min(values.get("max_conn", 40), MAX_CONNECTIONS)
    if max_conn < 1:
        raise UsageError("maxconn must be at least 1")
    max_per_ip = min(values.get("max_per_ip", 40), max_conn)
    if max_per_ip < 1:
        raise UsageError("localmaxconn must be at least 1")
    workers = values.get("workers", 1)
    if workers < 1:
        raise UsageError("workers must be at least 1")
    return {
        "ip": ip,
        "port": port,
        "argv": argv,
        "backlog": values.get("backlog"),  # None: the system maximum
        "readiness": bool(values.get("readiness", False)),
        "workers": workers,
        "max_conn": max_conn,
        "max_per_ip": max_per_ip,
        "verbosity": values.get("verbosity", 1),
        "uid": values.get("uid"),
        "gid": values.get("gid"),
        "groups": values.get("groups"),
        "warn_lookup_failure": values.get("warn_lookup_failure", True),
        "nodelay": values.get("nodelay", False),
        "paranoid": values.get("paranoid", False),
        "remote_lookup": values.get("remote_lookup", True),
        "local_name": values.get("local_name"),
        "banner": values.get("banner", "").encode("utf-8", "surrogateescape"),
        "access_timeout_ms": values.get("access_timeout_ms", 0),
        "rules_dir": values.get("rules_dir"),
        "proxy": bool(values.get("proxy", False)),
    }


def run(parsed: Parsed) -> int:
    settings = server_settings(parsed, tls=False)
    from .._server import launch_program

    return launch_program(PROGRAM.name, settings)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, OPTIONS, run)
