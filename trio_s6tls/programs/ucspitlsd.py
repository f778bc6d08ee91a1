"""s6-ucspitlsd: exec prog at once with the cleartext network on fds 0/1 and
the UCSPI-TLS fds in SSLCTLFD/SSLREADFD/SSLWRITEFD; a child waits for prog
to ask for TLS, then runs the server engine."""

from __future__ import annotations

from collections.abc import Sequence

from .._cli import Parsed, Program
from . import _options

PROGRAM = Program(
    "s6-ucspitlsd",
    "s6-ucspitlsd [ -S | -s ] [ -J | -j ] [ -Y | -y ] [ -v verbosity ] [ -K timeout ] "
    "[ -Z | -z ] [ -k sni_level ] [ -- ] prog...",
    "Opportunistic TLS, server side (UCSPI-TLS). Execs into prog at once, the\n"
    "cleartext network still on stdin/stdout, with SSLCTLFD, SSLREADFD and\n"
    "SSLWRITEFD in its environment. When prog writes 'y' (or 'Y': also send the\n"
    "SSL_* block back) on SSLCTLFD, a child answers the TLS handshake on the\n"
    "network and prog then talks cleartext to SSLREADFD/SSLWRITEFD. Closing\n"
    "SSLCTLFD declines TLS. -v 2 logs accepted/declined.\n\n"
    + _options.SERVER_TLS_HELP
    + _options.KEEP_ENV_HELP
    + "\n"
    + _options.ENV_HELP_SERVER
    + "\n"
    + _options.EXIT_HELP,
)
OPTIONS = _options.SERVER_TLS + _options.KEEP_ENV


def run(parsed: Parsed) -> int:
    arguments = _options.wrapper_arguments(parsed, network=(0, 1))
    from .._ucspitls import ucspitls_then_exec

    return ucspitls_then_exec(name=PROGRAM.name, server_side=True, **arguments)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, OPTIONS, run)
