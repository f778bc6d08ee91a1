"""s6-tlsclient: connect to host:port, perform the client TLS handshake,
then exec prog with fd 6 reading from and fd 7 writing to the TLS tunnel,
the SSL_* variables and the UCSPI client variables."""

from __future__ import annotations

from collections.abc import Sequence

from .._cli import Parsed, Program
from . import _options
from .tcpclient import TCP_HELP, TCP_OPTIONS, TCP_USAGE, split_operands, tcp_options

# s6-tlsclient spells TLS verbosity -q/-Q/-v (flags), so the engine's -v N goes.
TLS_OPTIONS = [opt for opt in _options.CLIENT_TLS if opt.short != "v"]

PROGRAM = Program(
    "s6-tlsclient",
    f"s6-tlsclient {TCP_USAGE} [ -Z | -z ] [ -S | -s ] [ -J | -j ] [ -Y | -y ] "
    "[ -k servername ] [ -K timeout ] [ -- ] host port prog...",
    "Connects to host:port, performs a client TLS handshake (SNI and verified\n"
    "name: host, unless -k; with -H and no -k, no SNI), then execs into prog in\n"
    "the same process with fd 6 reading from and fd 7 writing to the TLS tunnel,\n"
    "the SSL_* variables and the UCSPI client variables. prog never starts if\n"
    "the connection or the handshake fails.\n\n"
    + TCP_HELP
    + "\n"
    + "\n".join(
        line
        for line in _options.CLIENT_TLS_HELP.splitlines()
        if not line.lstrip().startswith("-v,")
    )
    + "\n"
    + _options.KEEP_ENV_HELP
    + "\n"
    + _options.ENV_HELP_CLIENT
    + "\n"
    + _options.EXIT_HELP,
)
OPTIONS = TCP_OPTIONS + TLS_OPTIONS + _options.KEEP_ENV


def run(parsed: Parsed) -> int:
    host, port, prog = split_operands(parsed.operands)
    tcp = tcp_options(parsed.values)
    import os

    from .._exec import handshake_then_exec
    from .._log import Log
    from .._tcpclient import open_connection
    from .._tlsconfig import TLSOptions, check_configuration

    values = _options.tls_option_values(parsed.values)
    if "servername" not in values:
        values["servername"] = host if tcp.lookup_names else None
    options = TLSOptions(**values)
    check_configuration(os.environ, options, server_side=False)  # all of it before the network
    fd, tcp_env = open_connection(host, port, tcp, Log(PROGRAM.name, tcp.verbosity))
    return handshake_then_exec(
        prog,
        name=PROGRAM.name,
        options=options,
        server_side=False,
        network=(fd, fd),
        prog_fds=(6, 7),
        keep_tls=bool(parsed.values.get("keep_env", False)),
        extra_env=tcp_env,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, OPTIONS, run)
