"""s6-tlsd: server handshake on fds 0/1, then exec prog with stdin/stdout
as the cleartext tunnel (same pid)."""

from __future__ import annotations

from collections.abc import Sequence

from .._cli import Parsed, Program
from . import _options

PROGRAM = Program(
    "s6-tlsd",
    "s6-tlsd [ -S | -s ] [ -J | -j ] [ -Y | -y ] [ -v verbosity ] [ -K timeout ] "
    "[ -Z | -z ] [ -k sni_level ] [ -- ] prog...",
    "Answers a TLS handshake on stdin/stdout (the network), then execs into prog\n"
    "in the same process with stdin/stdout reading from and writing to the TLS\n"
    "tunnel, and the SSL_* variables of the handshake in its environment. prog\n"
    "never starts if the handshake fails.\n\n"
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
    from .._exec import handshake_then_exec

    return handshake_then_exec(name=PROGRAM.name, server_side=True, prog_fds=(0, 1), **arguments)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, OPTIONS, run)
