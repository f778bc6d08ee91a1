"""s6-tcpserver: a plain TCP super-server; each connection runs prog with the
socket as stdin and stdout. Also the TCP option table and the step from a
parsed command line to a :class:`~trio_s6tls.programs._superserver.Launch`
that s6-tlsserver shares (it adds the TLS options)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._cli import Opt, Parsed, Program, id_number, port_number, uint

TYPE_CHECKING = False  # typing would slow down --version
if TYPE_CHECKING:
    from typing import Any

    from .._tlsconfig import TLSOptions
    from ._superserver import Launch

MAX_CONNECTIONS = 16384  # the C tool's cap on -c


def _gid_list(text: str) -> list[int]:
    if text == "":
        return []
    return [id_number(part) for part in text.split(",")]


# -i and -x set one value, so that the last of them wins, as in C.
def _rules_directory(path: str) -> tuple[str, str]:
    return ("directory", path)


def _rules_cdb(path: str) -> tuple[str, str]:
    return ("cdb", path)


def _connections(text: str) -> int:
    """``-c``/``-C``: as in C, 0 means 1."""
    return max(uint(text), 1)


TCP_SERVER = [
    Opt("q", "quiet", "verbosity", 0, group="verbosity", help="verbosity 0: fatal errors only"),
    Opt("Q", ("normally-verbose", "normal"), "verbosity", 1, group="verbosity", help="verbosity 1 (default)"),
    Opt("v", "verbose", "verbosity", 2, group="verbosity",
        help="verbosity 2: every connection and its end, as s6-tcpserverd logs them"),
    Opt("", "verbosity", "verbosity", parse=uint, metavar="N",
        help="any verbosity (3: debug, with handshake parameters)"),
    Opt("1", ("notify", "ready"), "readiness", True,
        help="print the bound port and a newline on stdout, then close it"),
    Opt("c", ("global-max-connections", "maxconn"), "max_conn", parse=_connections, metavar="maxconn",
        help="at most maxconn connections at once (default 40, cap 16384);\n"
             "new clients wait in the backlog meanwhile"),
    Opt("C", ("local-max-connections", "localmaxconn"), "max_per_ip", parse=_connections, metavar="localmaxconn",
        help="at most this many connections per client IP (default 40);\n"
             "one more is accepted and closed at once"),
    Opt("b", "backlog", "backlog", parse=uint, metavar="backlog", help="listen backlog"),
    Opt("G", "gidlist", "groups", parse=_gid_list, metavar="gidlist",
        help="supplementary groups of the server and prog (comma-separated)"),
    Opt("g", "gid", "gid", parse=id_number, metavar="gid",
        help="gid the server drops to once bound (prog inherits it)"),
    Opt("u", "uid", "uid", parse=id_number, metavar="uid",
        help="uid the server drops to once bound (prog inherits it;\n"
             "groups are cleared unless -G)"),
    Opt("U", ("envuidgid", "uid-from-env"), "ids_from_env", True, help="take uid, gid and groups from UID, GID, GIDLIST"),
    Opt("W", ("no-strict-resolution", "lookup-warning"), "strict_resolution", False, group="warn",
        help="a failed name lookup leaves the name unset (default)"),
    Opt("w", ("strict-resolution", "no-lookup-warning"), "strict_resolution", True, group="warn",
        help="refuse the client when a lookup it needs fails\n"
             "(-p's, an unusable hosts file or DNS configuration)"),
    Opt("d", "nagle", "nodelay", False, group="nagle", help="keep Nagle's algorithm (default)"),
    Opt("D", ("no-nagle", "nodelay"), "nodelay", True, group="nagle", help="set TCP_NODELAY"),
    Opt("r", "ident", "ident", True, group="ident", help="IDENT lookups (unsupported)"),
    Opt("R", "no-ident", "ident", False, group="ident", help="no IDENT lookups (default)"),
    Opt("p", "paranoid", "paranoid", True, group="paranoid",
        help="keep TCPREMOTEHOST only if it resolves back to the client"),
    Opt("P", "no-paranoid", "paranoid", False, group="paranoid",
        help="trust reverse names (default)"),
    Opt("h", "hosts", "use_hosts", True, group="hosts",
        help="look names up in /etc/hosts before the DNS"),
    Opt("", "no-hosts", "use_hosts", False, group="hosts", help="undo -h (default)"),
    Opt("", ("dns", "lookup"), "remote_lookup", True, group="lookup",
        help="look up TCPREMOTEHOST and TCPLOCALHOST (default)"),
    Opt("H", ("no-dns", "no-lookup"), "remote_lookup", False, group="lookup", help="do not"),
    Opt("l", ("local-name", "localname"), "local_name", parse=str, metavar="localname",
        help="TCPLOCALHOST=localname without a lookup"),
    Opt("B", "banner", "banner", parse=str, metavar="banner",
        help="send banner to each client before anything else"),
    Opt("t", "timeout", "access_timeout_ms", parse=uint, metavar="timeout",
        help="bound in ms on the rules, name lookups and the PROXY header\n"
             "(0 = none, default)"),
    Opt("i", ("rules-directory", "rules-dir"), "rules", parse=_rules_directory, metavar="rulesdir", group="rules",
        help="access rules directory (ip4/, ip6/ entries)"),
    Opt("x", "rules-file", "rules", parse=_rules_cdb, metavar="rulesfile", group="rules",
        help="access rules as a CDB (made by s6-accessrules-cdb-from-fs)"),
    Opt("L", ("proxy", "proxy-protocol"), "proxy", True,
        help="read a PROXY v1/v2 header before anything else"),
    Opt("", "workers", "workers", parse=uint, metavar="N",
        help="N processes sharing the port (limits are per process)"),
]  # fmt: skip

SIGNAL_HELP = """\
Signals: SIGTERM stop accepting and exit; SIGINT (Ctrl-C) the same, a second
one exits at once; SIGHUP send SIGTERM and SIGCONT to every prog; SIGQUIT the
same, then exit; SIGABRT SIGKILL every prog, then exit.
"""

#: ours only: s6-tcpserver … s6-tlsd prog is served in process unless told not to
INLINE_TLSD = Opt("", "no-inline-tlsd", "inline_tlsd", False,
                  help="run a prog that is our s6-tlsd as its own process")  # fmt: skip

PROGRAM = Program(
    "s6-tcpserver",
    [*TCP_SERVER, INLINE_TLSD],
    operands="ip port prog...",
    gol_errors=False,  # C's uses subgetopt: a bad option prints the usage line
    summary="Listens on ip:port (port 0: any free port) and, for every connection, runs prog\n"
    "with the socket as stdin and stdout and the UCSPI variables PROTO, TCPLOCALIP,\n"
    "TCPLOCALPORT, TCPREMOTEIP, TCPREMOTEPORT, TCPCONNNUM, TCPREMOTEHOST,\n"
    "TCPLOCALHOST in its environment.",
    epilog=SIGNAL_HELP + "\nExit codes: 0 normal end; 100 wrong usage; 111 system call failed.",
)


def _ids_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``-U``: the identity in ``UID``, ``GID``, ``GIDLIST``."""
    from .._errors import UsageError

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


def server_launch(
    parsed: Parsed,
    *,
    name: str,
    tls_options: TLSOptions | None = None,
    keep_env: bool = False,
    resumption: bool = False,
) -> Launch:
    """Check the operands and TCP options of a parsed command line, and say
    what to launch (``tls_options``: s6-tlsserver's, None for plain TCP)."""
    import os

    from .._errors import EXIT_USAGE, Fatal, UsageError
    from .._log import Log
    from .._server import ServerConfig
    from .._tlsconfig import TLSOptions
    from ._superserver import Launch, Listen

    values = dict(parsed.values)
    if len(parsed.operands) < 3:
        raise UsageError("expected ip, port and prog")
    ip, port_text, *argv = parsed.operands
    import ipaddress

    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"not an IP address: {ip!r}") from None
    try:
        port = port_number(port_text)
    except ValueError:
        raise UsageError(f"invalid port: {port_text!r}") from None
    if values.get("ident"):
        raise Fatal(EXIT_USAGE, "IDENT lookups (-r) are not supported; use -R")
    rules_kind, rules = values.get("rules", (None, None))
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
    verbosity = values.get("verbosity", 1)
    groups = values.get("groups")
    return Launch(
        listen=Listen(
            ip=ip,
            port=port,
            backlog=values.get("backlog"),
            readiness=bool(values.get("readiness", False)),
            workers=workers,
        ),
        server=ServerConfig(
            argv=tuple(argv),
            tls_options=tls_options or TLSOptions(verbosity=verbosity),
            max_conn=max_conn,
            max_per_ip=max_per_ip,
            rules_dir=rules if rules_kind == "directory" else None,
            rules_file=rules if rules_kind == "cdb" else None,
            access_timeout_ms=values.get("access_timeout_ms", 0),
            proxy=bool(values.get("proxy", False)),
            banner=values.get("banner", "").encode("utf-8", "surrogateescape"),
            remote_lookup=values.get("remote_lookup", True),
            use_hosts=values.get("use_hosts", False),
            paranoid=values.get("paranoid", False),
            local_name=values.get("local_name"),
            strict_resolution=values.get("strict_resolution", False),
            nodelay=values.get("nodelay", False),
            keep_env=keep_env,
            report_resumption=resumption,
            log=Log(name, verbosity),
        ),
        tls=tls_options is not None,
        resumption=resumption,
        uid=values.get("uid"),
        gid=values.get("gid"),
        groups=None if groups is None else tuple(groups),
    )


def run(parsed: Parsed) -> int:
    import os

    from ._superserver import launch

    plan = server_launch(parsed, name=PROGRAM.name)
    if parsed.values.get("inline_tlsd", True):
        from ._inline_tlsd import with_inline_tlsd

        plan = with_inline_tlsd(plan, os.environ)
    return launch(plan)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, run)
