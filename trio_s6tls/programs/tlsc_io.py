"""s6-tlsc-io: the client TLS engine. stdin/stdout are the local application
(cleartext); ``fdr``/``fdw`` are the network (ciphertext)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .._cli import Parsed, Program, fd_operand
from .._errors import UsageError
from . import _options

PROGRAM = Program(
    "s6-tlsc-io",
    "s6-tlsc-io [ -S | -s ] [ -J | -j ] [ -Y | -y ] [ -v verbosity ] [ -K timeout ] "
    "[ -k servername ] [ -d notif ] [ --no-verify-cert ] [ -- ] fdr fdw",
    "Client TLS engine: performs the handshake on the network fds fdr/fdw, writes the\n"
    "handshake information to notif (-d) if given, then tunnels cleartext on\n"
    "stdin/stdout through TLS until no more data can be transmitted.\n\n"
    + _options.CLIENT_TLS_HELP
    + "  -d, --notify-fd FD            write the SSL_* block to FD after the handshake\n\n"
    + _options.ENV_HELP_CLIENT
    + "\n"
    + _options.EXIT_HELP,
)
OPTIONS = _options.CLIENT_TLS + _options.NOTIFY


def run(parsed: Parsed) -> int:
    if len(parsed.operands) != 2:
        raise UsageError("expected fdr and fdw")
    fdr, fdw = (fd_operand(text) for text in parsed.operands)
    from .._iorun import FdPlan, run_io
    from .._log import Log
    from .._tlsconfig import TLSOptions

    options = TLSOptions(**_options.tls_option_values(parsed.values))
    plan = FdPlan(fdr, fdw, 0, 1, parsed.values.get("notify_fd"))
    log = Log(PROGRAM.name, options.verbosity)
    return run_io(plan, os.environ, options, server_side=False, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, OPTIONS, run)
