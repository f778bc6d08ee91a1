"""s6-ucspitlsc: exec prog at once with the cleartext network on fds 6/7 (or
``-6``/``-7``) and the UCSPI-TLS fds in SSLCTLFD/SSLREADFD/SSLWRITEFD; a
child waits for prog to ask for TLS, then runs the client engine."""

from __future__ import annotations

from collections.abc import Sequence

from . import _options
from ._cli import Parsed, Program

PROGRAM = Program(
    "s6-ucspitlsc",
    [*_options.CLIENT_TLS, *_options.KEEP_ENV, *_options.NETWORK_FDS],
    operands="prog...",
    summary="Opportunistic TLS, client side (UCSPI-TLS). Execs into prog at once, the\n"
    "cleartext network still on fds 6/7 (or rfd/wfd), with SSLCTLFD, SSLREADFD\n"
    "and SSLWRITEFD in its environment. When prog writes 'y' (or 'Y': also send\n"
    "the SSL_* block back) on SSLCTLFD, a child performs the TLS handshake on the\n"
    "network and prog then talks cleartext to SSLREADFD/SSLWRITEFD. Closing\n"
    "SSLCTLFD declines TLS. -v 2 logs accepted/declined.",
    epilog=_options.ENV_HELP_CLIENT + "\n" + _options.EXIT_HELP,
)


def run(parsed: Parsed) -> int:
    from .._ucspitls import ucspitls_then_exec
    from ._arguments import wrapper_arguments

    arguments = wrapper_arguments(parsed, network=(6, 7))
    return ucspitls_then_exec(
        arguments.prog,
        name=PROGRAM.name,
        options=arguments.options,
        server_side=False,
        network=arguments.network,
        keep_tls=arguments.keep_tls,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, run)
