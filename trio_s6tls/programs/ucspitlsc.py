"""s6-ucspitlsc: exec prog at once with the cleartext network on fds 6/7 (or
``-6``/``-7``) and the UCSPI-TLS fds in SSLCTLFD/SSLREADFD/SSLWRITEFD; a
child waits for prog to ask for TLS, then runs the client engine."""

from __future__ import annotations

from collections.abc import Sequence

from .._cli import Parsed, Program
from . import _options

PROGRAM = Program(
    "s6-ucspitlsc",
    "s6-ucspitlsc [ -S | -s ] [ -J | -j ] [ -Y | -y ] [ -v verbosity ] [ -K timeout ] "
    "[ -Z | -z ] [ -k servername ] [ -6 rfd ] [ -7 wfd ] [ -- ] prog...",
    "Opportunistic TLS, client side (UCSPI-TLS). Execs into prog at once, the\n"
    "cleartext network still on fds 6/7 (or rfd/wfd), with SSLCTLFD, SSLREADFD\n"
    "and SSLWRITEFD in its environment. When prog writes 'y' (or 'Y': also send\n"
    "the SSL_* block back) on SSLCTLFD, a child performs the TLS handshake on the\n"
    "network and prog then talks cleartext to SSLREADFD/SSLWRITEFD. Closing\n"
    "SSLCTLFD declines TLS. -v 2 logs accepted/declined.\n\n"
    + _options.CLIENT_TLS_HELP
    + _options.KEEP_ENV_HELP
    + _options.NETWORK_FDS_HELP
    + "\n"
    + _options.ENV_HELP_CLIENT
    + "\n"
    + _options.EXIT_HELP,
)
OPTIONS = _options.CLIENT_TLS + _options.KEEP_ENV + _options.NETWORK_FDS


def run(parsed: Parsed) -> int:
    arguments = _options.wrapper_arguments(parsed, network=(6, 7))
    from .._ucspitls import ucspitls_then_exec

    return ucspitls_then_exec(name=PROGRAM.name, server_side=False, **arguments)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, OPTIONS, run)
