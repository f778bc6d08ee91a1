"""s6-style messages on stderr: ``PROG: fatal: ...``, ``PROG: warning: ...``,
``PROG: info: ...``, one line each. Import-light."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # importing typing would slow down --version
if TYPE_CHECKING:
    from typing import TextIO


class Log:
    def __init__(self, prog: str, verbosity: int = 1, stream: TextIO | None = None) -> None:
        self.prog = prog
        self.verbosity = verbosity
        self._stream = stream

    def _write(self, kind: str, message: str) -> None:
        stream = self._stream or sys.stderr
        line = " ".join(message.splitlines())  # one line, whatever the cause said
        stream.write(f"{self.prog}: {kind}: {line}\n")
        stream.flush()

    def fatal(self, message: str) -> None:
        self._write("fatal", message)

    def usage(self, usage: str) -> None:
        self._write("usage", usage)

    def warn(self, message: str) -> None:
        if self.verbosity >= 1:
            self._write("warning", message)

    def info(self, message: str, level: int = 2) -> None:
        if self.verbosity >= level:
            self._write("info", message)
