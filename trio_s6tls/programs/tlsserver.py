"""s6-tlsserver: a TLS super-server; each connection runs prog with stdin and
stdout on the cleartext side of a TLS tunnel. One process (or ``--workers``)
serves every connection: the handshake and the tunnel run in process, only
prog is spawned (docs/design.rst, "Process model")."""

from __future__ import annotations

from collections.abc import Sequence

from . import _options, tcpserver
from ._cli import Opt, Parsed, Program

TYPE_CHECKING = False  # typing would slow down --version
if TYPE_CHECKING:
    from ._superserver import Launch

RESUMPTION = [
    Opt("", "resumption", "resumption", True,
        help="issue session tickets; resumed sessions skip the full\n"
             "handshake; export SSL_SESSION_RESUMED=1|0 (default: off)"),
    Opt("", "no-resumption", "resumption", False, help="no session tickets (default)"),
]  # fmt: skip

# s6-tlsserver spells the verbosity -q/-Q/-v (flags): no -v N here.
PROGRAM = Program(
    "s6-tlsserver",
    [*tcpserver.TCP_SERVER, *_options.KEEP_ENV, *_options.SERVER_TLS_BASE, *RESUMPTION],
    operands="ip port prog...",
    summary="Listens on ip:port (port 0: any free port) and, for every connection, answers the\n"
    "TLS handshake, then runs prog with stdin reading from and stdout writing to the\n"
    "TLS tunnel, with the SSL_* variables and the UCSPI variables (PROTO, TCPLOCALIP,\n"
    "TCPLOCALPORT, TCPREMOTEIP, TCPREMOTEPORT, TCPCONNNUM, TCPREMOTEHOST,\n"
    "TCPLOCALHOST) in its environment. prog never starts if the handshake fails.",
    epilog=_options.ENV_HELP_SERVER
    + "\n"
    + tcpserver.SIGNAL_HELP
    + "The TLS tunnels live in this process: after SIGTERM it closes the connections\n"
    + "whose prog has not started and exits once the others have ended. SIGUSR1\n"
    + "reloads CERTFILE/KEYFILE (and the :NAME pairs) for new connections.\n"
    + "TLS_UID/TLS_GID and -u/-g name the one identity of the server and prog: if\n"
    + "both are given they must agree (else exit 100).\n\n"
    + _options.EXIT_HELP,
)


def tls_server_launch(parsed: Parsed) -> Launch:
    """:func:`tcpserver.server_launch` with the TLS options, ``-Z`` and
    ``--resumption``."""
    from ._arguments import tls_options

    values = parsed.values
    return tcpserver.server_launch(
        parsed,
        name=PROGRAM.name,
        tls_options=tls_options(values, verbosity=values.get("verbosity", 1)),
        keep_env=bool(values.get("keep_env", False)),
        resumption=bool(values.get("resumption", False)),
    )


def run(parsed: Parsed) -> int:
    from ._superserver import launch

    return launch(tls_server_launch(parsed))


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, run)
