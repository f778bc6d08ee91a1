"""s6-tlsclient: connect to host:port, perform the client TLS handshake,
then exec prog with fd 6 reading from and fd 7 writing to the TLS tunnel,
the SSL_* variables and the UCSPI client variables."""

from __future__ import annotations

from collections.abc import Sequence

from . import _options
from ._cli import Opt, Parsed, Program
from .tcpclient import TCP_OPTIONS, split_operands, tcp_options

TYPE_CHECKING = False  # typing would slow down --version
if TYPE_CHECKING:
    from typing import Any

    from .._tcpclient import TcpClientOptions

# C's s6-tlsclient keeps -4 and -6 as two flags and hands both to
# s6-tcpclient, -4 first: -6 wins whenever it is given.
_FAMILY_FLAGS = [
    Opt("4", "ipv4", "ipv4", True, help="IPv4 only (default: every address)"),
    Opt("6", "ipv6", "ipv6", True, help="IPv6 only (wins over -4)"),
]
# ... and passes -N for -n: both are accepted and change nothing.
_QUALIFY_FLAGS = [
    Opt("n", "qualify", "qualify", True, group="qualify", help="no effect (as C's s6-tlsclient)"),
    Opt("N", "no-qualify", "qualify", False, group="qualify", help="no effect (default)"),
]
_REPLACED = {"4": _FAMILY_FLAGS, "6": [], "n": _QUALIFY_FLAGS, "N": []}
_TCP_OPTIONS = [new for opt in TCP_OPTIONS for new in _REPLACED.get(opt.short, [opt])]

# s6-tlsclient spells the verbosity -q/-Q/-v (flags): no -v N here.
PROGRAM = Program(
    "s6-tlsclient",
    [*_TCP_OPTIONS, *_options.KEEP_ENV, *_options.CLIENT_TLS_BASE],
    operands="host port prog...",
    summary="Connects to host:port, performs a client TLS handshake (SNI and verified\n"
    "name: host, unless -k; with -H and no -k, no SNI), then execs into prog in\n"
    "the same process with fd 6 reading from and fd 7 writing to the TLS tunnel,\n"
    "the SSL_* variables and the UCSPI client variables. prog never starts if\n"
    "the connection or the handshake fails.",
    epilog=_options.ENV_HELP_CLIENT + "\n" + _options.EXIT_HELP,
)


def tlsclient_tcp_options(values: dict[str, Any]) -> TcpClientOptions:
    """The TCP options as C's s6-tlsclient hands them to s6-tcpclient:
    ``-6`` wins over ``-4`` (both are passed, ``-4`` first), and ``-n``
    becomes ``-N`` (C's code does so: ``-n``/``--qualify`` change nothing)."""
    ipv4, ipv6 = values.pop("ipv4", False), values.pop("ipv6", False)
    if ipv4 or ipv6:
        values["family"] = 6 if ipv6 else 4
    values.pop("qualify", None)
    return tcp_options(values)


def run(parsed: Parsed) -> int:
    from .._early_handshake import handshake_now, may_handshake_here, start_engine_import

    host, port, prog = split_operands(parsed.operands)
    values = dict(parsed.values)
    tcp = tlsclient_tcp_options(values)
    import os

    from .._exec import handshake_then_exec
    from .._log import Log
    from .._tcpclient import ip_list, open_connection
    from .._tlsconfig import context_from_environment
    from ._arguments import tls_options

    servername = values.get("servername", host if tcp.lookup_names else None)
    options = tls_options(values, verbosity=tcp.verbosity, servername=servername)
    context, identity = context_from_environment(os.environ, options, server_side=False)
    # The handshake runs here, and then the engine child imports trio behind
    # the tunnel's first bytes; where it may not, trio is imported behind the
    # connect, in a thread.
    may = may_handshake_here(context, identity, server_side=False)
    importing = None if may else start_engine_import()
    fd, tcp_env = open_connection(host, port, tcp, Log(PROGRAM.name, tcp.verbosity))
    if servername is not None and "servername" not in values and ip_list(host) is not None:
        # An address list (a,b): C sends no SNI for it, as for one address;
        # the certificate is checked against the address connected to.

        options = options._replace(servername=tcp_env["TCPREMOTEIP"])
    established = handshake_now(fd, context, options) if may else None
    if importing is not None:
        importing.join()  # no thread alive at the fork
    return handshake_then_exec(
        prog,
        name=PROGRAM.name,
        options=options,
        server_side=False,
        network=(fd, fd),
        prog_fds=(6, 7),
        keep_tls=bool(values.get("keep_env", False)),
        extra_env=tcp_env,
        established=established,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, run)
