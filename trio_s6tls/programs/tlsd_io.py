"""s6-tlsd-io: the server TLS engine. stdin/stdout are the network
(ciphertext); ``fdr``/``fdw`` are the local application (cleartext)."""

from __future__ import annotations

from collections.abc import Sequence

from . import _options
from ._cli import Parsed, Program, fd_operand

PROGRAM = Program(
    "s6-tlsd-io",
    [*_options.SERVER_TLS, *_options.NOTIFY],
    operands="fdr fdw",
    summary="Server TLS engine: answers the handshake on stdin/stdout (the network), writes\n"
    "the handshake information to notif (-d) if given, then tunnels cleartext on\n"
    "fdr/fdw through TLS until no more data can be transmitted. Accepts TLS 1.2\n"
    "and 1.3 only.",
    epilog=_options.ENV_HELP_SERVER + "\n" + _options.EXIT_HELP,
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
    plan = FdPlan(0, 1, fdr, fdw, notify_fd)
    log = Log(PROGRAM.name, options.verbosity)
    return run_io(plan, os.environ, options, server_side=True, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv, run)
