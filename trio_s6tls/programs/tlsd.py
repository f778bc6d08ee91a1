"""s6-tlsd: server handshake on fds 0/1, then exec prog with stdin/stdout
as the cleartext tunnel (same pid)."""

from __future__ import annotations

from collections.abc import Sequence

from . import _options
from ._cli import Parsed, Program

PROGRAM = Program(
    "s6-tlsd",
    [*_options.SERVER_TLS, *_options.KEEP_ENV],
    operands="prog...",
    summary="Answers a TLS handshake on stdin/stdout (the network), then execs into prog\n"
    "in the same process with stdin/stdout reading from and writing to the TLS\n"
    "tunnel, and the SSL_* variables of the handshake in its environment. prog\n"
    "never starts if the handshake fails.",
    epilog=_options.ENV_HELP_SERVER + "\n" + _options.EXIT_HELP,
)


def run(parsed: Parsed) -> int:
    from .._early_handshake import early_handshake
    from .._exec import handshake_then_exec
    from ._arguments import wrapper_arguments

    arguments = wrapper_arguments(parsed, network=(0, 1))
    established = early_handshake(arguments.network, arguments.options, server_side=True)
    return handshake_then_exec(
        arguments.prog,
        name=PROGRAM.name,
        options=arguments.options,
        server_side=True,
        network=arguments.network,
        prog_fds=(0, 1),
        keep_tls=arguments.keep_tls,
        established=established,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, run)
