"""s6-tlsc: client handshake on the network fds 6/7 (or ``-6``/``-7``), then
exec prog with fds 6/7 reading from and writing to the cleartext tunnel."""

from __future__ import annotations

from collections.abc import Sequence

from . import _options
from ._cli import Parsed, Program

PROGRAM = Program(
    "s6-tlsc",
    [*_options.CLIENT_TLS, *_options.KEEP_ENV, *_options.NETWORK_FDS],
    operands="prog...",
    summary="Performs a client TLS handshake on the network fds (6 and 7 by default), then\n"
    "execs into prog in the same process with fd 6 reading from and fd 7 writing\n"
    "to the TLS tunnel, and the SSL_* variables of the handshake in its\n"
    "environment. prog never starts if the handshake fails.",
    epilog=_options.ENV_HELP_CLIENT + "\n" + _options.EXIT_HELP,
)


def run(parsed: Parsed) -> int:
    from .._early_handshake import early_handshake
    from .._exec import handshake_then_exec
    from ._arguments import wrapper_arguments

    arguments = wrapper_arguments(parsed, network=(6, 7))
    established = early_handshake(arguments.network, arguments.options, server_side=False)
    return handshake_then_exec(
        arguments.prog,
        name=PROGRAM.name,
        options=arguments.options,
        server_side=False,
        network=arguments.network,
        prog_fds=(6, 7),
        keep_tls=arguments.keep_tls,
        established=established,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, run)
