"""s6-tlsc: client handshake on the network fds 6/7 (or ``-6``/``-7``), then
exec prog with fds 6/7 reading from and writing to the cleartext tunnel."""

from __future__ import annotations

from collections.abc import Sequence

from .._cli import Parsed, Program
from . import _options

PROGRAM = Program(
    "s6-tlsc",
    "s6-tlsc [ -S | -s ] [ -J | -j ] [ -Y | -y ] [ -v verbosity ] [ -K timeout ] "
    "[ -Z | -z ] [ -k servername ] [ -6 rfd ] [ -7 wfd ] [ -- ] prog...",
    "Performs a client TLS handshake on the network fds (6 and 7 by default), then\n"
    "execs into prog in the same process with fd 6 reading from and fd 7 writing\n"
    "to the TLS tunnel, and the SSL_* variables of the handshake in its\n"
    "environment. prog never starts if the handshake fails.\n\n"
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
    from .._exec import handshake_then_exec

    return handshake_then_exec(name=PROGRAM.name, server_side=False, prog_fds=(6, 7), **arguments)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, OPTIONS, run)
