"""s6-style messages on stderr: ``PROG: fatal: ...``, ``PROG: warning: ...``,
``PROG: info: ...``, one line each. Import-light.

Logging is never fatal. stderr may be closed, or a pipe whose reader has
gone (a log daemon restarting): a line that cannot be written is dropped
and counted, and the next line that can be written is preceded by a
warning saying how many were lost. Lines go to fd 2 in one ``write`` each
(no Python buffer that could keep a failed line, or fail again at exit),
unless a ``stream`` is given, or ``sys.stderr`` has been redirected (tests,
the library).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # importing typing would slow down --version
if TYPE_CHECKING:
    from typing import TextIO

STDERR = 2


def _encode(text: str) -> bytes:
    try:  # file names with undecodable bytes come back as they were
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def _write_fd(text: str) -> None:
    data = memoryview(_encode(text))
    while data:  # a signal can cut a write short
        data = data[os.write(STDERR, data) :]


class Log:
    """One program's messages at a verbosity: ``fatal`` and ``usage``
    always, ``warn`` from 1, ``info`` from its level. A line that cannot be
    written is dropped and counted in ``lost``, and reported before the
    next line that can be."""

    def __init__(self, prog: str, verbosity: int = 1, stream: TextIO | None = None) -> None:
        self.prog = prog
        self.verbosity = verbosity
        self._stream = stream
        self.lost = 0  # lines dropped since the last one written

    def _emit(self, text: str) -> None:
        stream = self._stream
        if stream is None and sys.stderr is not None and sys.stderr is not sys.__stderr__:
            stream = sys.stderr  # redirected: contextlib.redirect_stderr, pytest's capture
        if stream is None:
            _write_fd(text)
        else:
            stream.write(text)
            stream.flush()

    def _write(self, kind: str, message: str) -> None:
        line = " ".join(message.splitlines())  # one line, whatever the cause said
        text = f"{self.prog}: {kind}: {line}\n"
        if self.lost:
            plural = "s" if self.lost > 1 else ""
            text = (
                f"{self.prog}: warning: {self.lost} earlier log line{plural} lost:"
                f" stderr was not writable\n{text}"
            )
        try:
            self._emit(text)
        except (OSError, ValueError):  # closed, EPIPE, EAGAIN, a closed stream...
            self.lost += 1
        else:
            self.lost = 0

    def fatal(self, message: str) -> None:
        self._write("fatal", message)

    def usage(self, usage: str) -> None:
        self._write("usage", usage)

    def warn(self, message: str, level: int = 1) -> None:
        """A warning, written from verbosity ``level`` up (the C tools keep
        some for -v 2 or 3)."""
        if self.verbosity >= level:
            self._write("warning", message)

    def info(self, message: str, level: int = 2) -> None:
        if self.verbosity >= level:
            self._write("info", message)
