"""s6-tlsserver: a TLS super-server; each connection runs prog with stdin and
stdout on the cleartext side of a TLS tunnel. One process (or ``--workers``)
serves every connection: the handshake and the tunnel run in process, only
prog is spawned (DESIGN.md, "Process model")."""

from __future__ import annotations

from collections.abc import Sequence

from .._cli import Opt, Parsed, Program
from . import _options, tcpserver

TYPE_CHECKING = False  # importing typing would slow down --version
if TYPE_CHECKING:
    from typing import Any

# s6-tlsserver's -v is the TCP verbosity flag, not -v N: keep the engines'
# meaning under --verbosity only.
_TLS = [o for o in _options.SERVER_TLS if o.short != "v"]

TLS_EXTRA = [
    Opt("", "resumption", "resumption", True),
    Opt("", "no-resumption", "resumption", False),
]

OPTIONS = tcpserver.TCP_SERVER + _TLS + _options.KEEP_ENV + TLS_EXTRA

TLS_HELP = (
    "\n".join(
        line for line in _options.SERVER_TLS_HELP.splitlines() if not line.lstrip().startswith("-v")
    )
    + "\n"
)

EXTRA_HELP = """\
  -Z, --keep                    keep CADIR, CAFILE, CERTFILE, KEYFILE, ... in prog's env
  -z, --no-keep                 remove them from prog's environment (default)
      --resumption              issue session tickets; resumed sessions skip the full
                                handshake; export SSL_SESSION_RESUMED=1|0 (default: off)
"""

PROGRAM = Program(
    "s6-tlsserver",
    "s6-tlsserver [ -q | -Q | -v ] [ -1 ] [ -c maxconn ] [ -C localmaxconn ] [ -b backlog ] "
    "[ -G gidlist ] [ -g gid ] [ -u uid ] [ -U ] [ -W | -w ] [ -d | -D ] [ -r | -R ] "
    "[ -p | -P ] [ -h | -H ] [ -l localname ] [ -B banner ] [ -t timeout ] "
    "[ -i rulesdir | -x rulesfile ] [ -L ] [ -Z | -z ] [ -S | -s ] [ -J | -j ] [ -Y | -y ] "
    "[ -K timeout ] [ -k sni_level ] [ --alpn LIST ] [ --resumption ] [ --workers N ] "
    "[ -- ] ip port prog...",
    "Listens on ip:port (port 0: any free port) and, for every connection, answers the\n"
    "TLS handshake, then runs prog with stdin reading from and stdout writing to the\n"
    "TLS tunnel, with the SSL_* variables and the UCSPI variables (PROTO, TCPLOCALIP,\n"
    "TCPLOCALPORT, TCPREMOTEIP, TCPREMOTEPORT, TCPCONNNUM, TCPREMOTEHOST,\n"
    "TCPLOCALHOST) in its environment. prog never starts if the handshake fails.\n\n"
    + tcpserver.TCP_SERVER_HELP
    + TLS_HELP
    + EXTRA_HELP
    + "\n"
    + _options.ENV_HELP_SERVER
    + "\n"
    + tcpserver.SIGNAL_HELP
    + "The TLS tunnels live in this process: after SIGTERM it closes the connections\n"
    + "whose prog has not started and exits once the others have ended. SIGUSR1\n"
    + "reloads CERTFILE/KEYFILE (and the :NAME pairs) for new connections.\n"
    + "TLS_UID/TLS_GID and -u/-g name the one identity of the server and prog: if\n"
    + "both are given they must agree (else exit 100).\n\n"
    + _options.EXIT_HELP,
)


def tls_server_settings(parsed: Parsed) -> dict[str, Any]:
    """:func:`tcpserver.server_settings` plus the TLS parts: the options,
    ``-Z`` and ``--resumption``."""
    settings = tcpserver.server_settings(parsed, tls=True)
    from .._tlsconfig import TLSOptions

    tls_values = _options.tls_option_values(parsed.values)
    tls_values["verbosity"] = settings["verbosity"]
    settings["tls_options"] = TLSOptions(**tls_values)
    settings["keep_env"] = bool(parsed.values.get("keep_env", False))
    settings["resumption"] = bool(parsed.values.get("resumption", False))
    return settings


def run(parsed: Parsed) -> int:
    settings = tls_server_settings(parsed)
    from .._server import launch_program

    return launch_program(PROGRAM.name, settings)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, OPTIONS, run)
