"""s6-tcpclient: connect to host:port, then exec prog with the socket on
fds 6 (read) and 7 (write) and the UCSPI client variables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._cli import Opt, Parsed, Program, port_number
from .._errors import UsageError


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
    Opt("q", "quiet", "verbosity", 0),
    Opt("Q", None, "verbosity", 1),
    Opt("v", "verbose", "verbosity", 2),
    Opt("4", "ipv4", "family", 4),
    Opt("6", "ipv6", "family", 6),
    Opt("d", None, "nodelay", False),
    Opt("D", "nodelay", "nodelay", True),
    Opt("r", None, "ident", True),
    Opt("R", None, "ident", False),
    Opt("h", None, "lookup_names", True),
    Opt("H", "no-lookup", "lookup_names", False),
    Opt("n", None, "paranoid", True),
    Opt("N", None, "paranoid", False),
    Opt("t", "timeout", "total_timeout", parse=_seconds),
    Opt("T", "connect-timeouts", "rounds", parse=_rounds),
    Opt("i", "local-ip", "local_ip", parse=_ip_literal),
    Opt("p", "local-port", "local_port", parse=port_number),
    Opt("l", "local-name", "local_name", parse=str),
]

TCP_USAGE = (
    "[ -q | -Q | -v ] [ -4 | -6 ] [ -d | -D ] [ -r | -R ] [ -h ] [ -H ] [ -n | -N ] "
    "[ -t timeout ] [ -T x+y ] [ -i localip ] [ -p localport ] [ -l localname ]"
)

TCP_HELP = """\
  -q, -Q, -v                    quiet, normal (default), verbose
  -4, -6                        IPv4 only, IPv6 only (default: every address)
  -d, -D                        Nagle on (default), TCP_NODELAY
  -r, -R                        IDENT lookup (unsupported), no IDENT lookup (default)
  -h, -H                        look up host names (default), do not
  -n, -N                        keep TCPREMOTEHOST only if it resolves back, always (default)
  -t SECONDS                    give up connecting after SECONDS (0 = never, default)
  -T X+Y                        per-address connect timeouts: X, then Y for the
                                addresses that timed out (default 2+58)
  -i LOCALIP, -p LOCALPORT      bind the local end of the connection
  -l LOCALNAME                  TCPLOCALHOST=LOCALNAME, no local lookup
"""

PROGRAM = Program(
    "s6-tcpclient",
    f"s6-tcpclient {TCP_USAGE} [ -- ] host port prog...",
    "Connects to host:port (an IP address, or a name tried over all its\n"
    "addresses), then execs into prog with fd 6 reading from and fd 7 writing to\n"
    "the connection, and PROTO, TCPREMOTEIP, TCPREMOTEPORT, TCPLOCALIP,\n"
    "TCPLOCALPORT, TCPREMOTEHOST, TCPLOCALHOST in its environment.\n\n"
    + TCP_HELP
    + "\nExit codes: 100 wrong usage; 111 system call failed (resolution, connection, exec).\n",
)
OPTIONS = TCP_OPTIONS


def tcp_options(values: dict[str, Any]) -> Any:
    """:class:`TcpClientOptions` from parsed values; refuses ``-r``."""
    import socket

    from .._tcpclient import TcpClientOptions

    if values.get("ident"):
        raise UsageError("IDENT lookups (-r) are not supported; use -R")
    family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(values.get("family", 0), socket.AF_UNSPEC)
    fields = (
        "nodelay",
        "lookup_names",
        "paranoid",
        "local_name",
        "total_timeout",
        "rounds",
        "local_ip",
        "local_port",
        "verbosity",
    )
    return TcpClientOptions(
        family=family, **{name: values[name] for name in fields if name in values}
    )


def split_operands(operands: Sequence[str]) -> tuple[str, str, list[str]]:
    """host, port (numeric, 0 to 65535, as the C tools want it) and prog."""
    if len(operands) < 3:
        raise UsageError("expected host, port and prog")
    host, port, *prog = operands
    try:
        port_number(port)
    except ValueError:
        raise UsageError(f"invalid port number: {port!r}") from None
    return host, port, prog


def run(parsed: Parsed) -> int:
    host, port, prog = split_operands(parsed.operands)
    options = tcp_options(parsed.values)
    import os

    from .._exec import program_environment
    from .._fds import install_fds
    from .._log import Log
    from .._spawn import exec_program
    from .._tcpclient import open_connection

    fd, tcp_env = open_connection(host, port, options, Log(PROGRAM.name, options.verbosity))
    install_fds({6: fd, 7: fd})
    env = program_environment(os.environ, keep_tls=True, updates=tcp_env)
    exec_program(prog, env, blocking_fds=(6, 7))


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, OPTIONS, run)
