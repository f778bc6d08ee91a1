"""s6-tlsc-io: the client TLS engine. stdin/stdout are the local application
(cleartext); ``fdr``/``fdw`` are the network (ciphertext)."""

from __future__ import annotations

from collections.abc import Sequence

from . import _options
from ._cli import Parsed, Program, fd_operand

PROGRAM = Program(
    "s6-tlsc-io",
    [*_options.CLIENT_TLS, *_options.NOTIFY],
    operands="fdr fdw",
    summary="Client TLS engine: performs the handshake on the network fds fdr/fdw, writes the\n"
    "handshake information to notif (-d) if given, then tunnels cleartext on\n"
    "stdin/stdout through TLS until no more data can be transmitted.",
    epilog=_options.ENV_HELP_CLIENT + "\n" + _options.EXIT_HELP,
)


def run(parsed: Parsed) -> int:
    from .._errors import UsageError

    if len(parsed.operands) != 2:
        raise UsageError("expected fdr and fdw")
    fdr, fdw = (fd_operand(text) for text in parsed.operands)
    import os

    from .._iorun import FdPlan, run_io
    from .._log import Log
    from ._arguments import tls_options

    options = tls_options(parsed.values)
    notify_fd = parsed.values.get("notify_fd") or None  # -d 0: none, as in C
    plan = FdPlan(fdr, fdw, 0, 1, notify_fd)
    log = Log(PROGRAM.name, options.verbosity)
    return run_io(plan, os.environ, options, server_side=False, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, run)
