"""s6-tlsd-io: the server TLS engine. stdin/stdout are the network
(ciphertext); ``fdr``/``fdw`` are the local application (cleartext)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .._cli import Parsed, Program, fd_operand
from .._errors import UsageError
from . import _options

PROGRAM = Program(
    "s6-tlsd-io",
    "s6-tlsd-io [ -S | -s ] [ -J | -j ] [ -Y | -y ] [ -v verbosity ] [ -K timeout ] "
    "[ -k sni_level ] [ -d notif ] [ -- ] fdr fdw",
    "Server TLS engine: answers the handshake on stdin/stdout (the network), writes\n"
    "the handshake information to notif (-d) if given, then tunnels cleartext on\n"
    "fdr/fdw through TLS until no more data can be transmitted. Accepts TLS 1.2\n"
    "and 1.3 only.\n\n"
    + _options.SERVER_TLS_HELP
    + "  -d, --notify-fd FD            write the SSL_* block to FD after the handshake\n\n"
    + _options.ENV_HELP_SERVER
    + "\n"
    + _options.EXIT_HELP,
)
OPTIONS = _options.SERVER_TLS + _options.NOTIFY


def run(parsed: Parsed) -> int:
    if len(parsed.operands) != 2:
        raise UsageError("expected fdr and fdw")
    fdr, fdw = (fd_operand(text) for text in parsed.operands)
    from .._iorun import FdPlan, run_io
    from .._log import Log
    from .._tlsconfig import TLSOptions

    options = TLSOptions(**_options.tls_option_values(parsed.values))
    plan = FdPlan(0, 1, fdr, fdw, parsed.values.get("notify_fd"))
    log = Log(PROGRAM.name, options.verbosity)
    return run_io(plan, os.environ, options, server_side=True, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, OPTIONS, run)
