"""s6-tcpclient: connect to host:port, then exec prog with the socket on
fds 6 (read) and 7 (write) and the UCSPI client variables. Also the TCP
option table and the steps that s6-tlsclient shares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._cli import Opt, Parsed, Program, port_number

TYPE_CHECKING = False  # typing would slow down --version
if TYPE_CHECKING:
    from typing import Any

    from .._tcpclient import TcpClientOptions


def _seconds(text: str) -> float:
    from .._tcpclient import parse_seconds

    return parse_seconds(text)


def _rounds(text: str) -> tuple[float, float]:
    from .._tcpclient import parse_rounds

    return parse_rounds(text)


def _ip_literal(text: str) -> str:
    """``-i``: an IPv4 or IPv6 address, as the C tool's ``ip46_scan``."""
    import ipaddress

    ipaddress.ip_address(text)
    return text


TCP_OPTIONS = [
    Opt("q", "quiet", "verbosity", 0, group="verbosity", help="quiet: no messages but fatal ones"),
    Opt("Q", "normally-verbose", "verbosity", 1, group="verbosity", help="normal verbosity (default)"),
    Opt("v", "verbose", "verbosity", 2, group="verbosity", help="verbose: log every connection attempt"),
    Opt("4", "ipv4", "family", 4, group="family", help="IPv4 only (default: every address)"),
    Opt("6", "ipv6", "family", 6, group="family", help="IPv6 only"),
    Opt("d", "nagle", "nodelay", False, group="nagle", help="keep Nagle's algorithm (default)"),
    Opt("D", ("no-nagle", "nodelay"), "nodelay", True, group="nagle", help="set TCP_NODELAY"),
    Opt("r", "ident", "ident", True, group="ident", help="IDENT lookup (unsupported)"),
    Opt("R", "no-ident", "ident", False, group="ident", help="no IDENT lookup (default)"),
    Opt("", "no-hosts", "use_hosts", False, help="undo -h (default)"),
    Opt("h", "hosts", "use_hosts", True,
        help="look names up in /etc/hosts before the DNS (default: the DNS only)"),
    Opt("", "dns", "lookup_names", True, help="undo -H (default)"),
    Opt("H", ("no-dns", "no-lookup"), "lookup_names", False,
        help="no name lookups at all: host must be an IP address"),
    Opt("n", "qualify", "qualify", True, group="qualify",
        help="qualify host with the search list ($DNSQUALIFY, else\n"
             "search/domain in /etc/resolv.conf)"),
    Opt("N", "no-qualify", "qualify", False, group="qualify",
        help="take host as fully qualified (default)"),
    Opt("t", "timeout", "total_timeout", parse=_seconds, metavar="timeout",
        help="give up connecting after this many seconds (0 = never, default)"),
    Opt("T", ("connection-timeouts", "connect-timeouts"), "rounds", parse=_rounds, metavar="x+y",
        help="per-address connect timeouts: x, then y for the\n"
             "addresses that timed out (default 2+58)"),
    Opt("i", "local-ip", "local_ip", parse=_ip_literal, metavar="localip",
        help="bind the local end of the connection to this address"),
    Opt("p", "local-port", "local_port", parse=port_number, metavar="localport",
        help="bind the local end of the connection to this port"),
    Opt("l", "local-name", "local_name", parse=str, metavar="localname",
        help="TCPLOCALHOST=localname, no local lookup"),
]  # fmt: skip

PROGRAM = Program(
    "s6-tcpclient",
    TCP_OPTIONS,
    operands="host port prog...",
    gol_errors=False,  # C's uses subgetopt: a bad option prints the usage line
    summary="Connects to host:port (an IP address, or a name tried over all its\n"
    "addresses; names are asked to the DNS servers of $DNSCACHEIP or\n"
    "/etc/resolv.conf), then execs into prog with fd 6 reading from and fd 7\n"
    "writing to the connection, and PROTO, TCPREMOTEIP, TCPREMOTEPORT,\n"
    "TCPLOCALIP, TCPLOCALPORT, TCPREMOTEHOST, TCPLOCALHOST in its environment.",
    epilog="Exit codes: 100 wrong usage; 111 system call failed (resolution, connection, exec).",
)


def tcp_options(values: Mapping[str, Any]) -> TcpClientOptions:
    """:class:`~trio_s6tls._tcpclient.TcpClientOptions` from parsed values;
    refuses ``-r``."""
    import socket

    from .._errors import UsageError
    from .._tcpclient import TcpClientOptions

    if values.get("ident"):
        raise UsageError("IDENT lookups (-r) are not supported; use -R")
    defaults = TcpClientOptions()
    families = {4: socket.AF_INET, 6: socket.AF_INET6}
    return TcpClientOptions(
        family=families.get(values.get("family", 0), socket.AF_UNSPEC),
        nodelay=values.get("nodelay", defaults.nodelay),
        lookup_names=values.get("lookup_names", defaults.lookup_names),
        use_hosts=values.get("use_hosts", defaults.use_hosts),
        qualify=values.get("qualify", defaults.qualify),
        local_name=values.get("local_name", defaults.local_name),
        total_timeout=values.get("total_timeout", defaults.total_timeout),
        rounds=values.get("rounds", defaults.rounds),
        local_ip=values.get("local_ip", defaults.local_ip),
        local_port=values.get("local_port", defaults.local_port),
        verbosity=values.get("verbosity", defaults.verbosity),
    )


def split_operands(operands: Sequence[str]) -> tuple[str, str, list[str]]:
    """host, port (numeric, 0 to 65535, as the C tools want it) and prog."""
    from .._errors import EXIT_USAGE, Fatal, UsageError

    if len(operands) < 3:
        raise UsageError("expected host, port and prog")
    host, port, *prog = operands
    try:
        port_number(port)
    except ValueError:
        # C's s6-tcpclient: a fatal line (100), not its usage.
        raise Fatal(EXIT_USAGE, f"invalid port number: {port!r}") from None
    return host, port, prog


def run(parsed: Parsed) -> int:
    host, port, prog = split_operands(parsed.operands)
    options = tcp_options(parsed.values)
    import os

    from .._env import program_environment
    from .._fds import install_fds
    from .._log import Log
    from .._spawn import exec_program
    from .._tcpclient import open_connection

    fd, tcp_env = open_connection(host, port, options, Log(PROGRAM.name, options.verbosity))
    install_fds({6: fd, 7: fd})
    env = program_environment(os.environ, keep_tls=True, updates=tcp_env)
    exec_program(prog, env, blocking_fds=(6, 7))


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, run)
