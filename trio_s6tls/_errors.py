"""Exit codes and the one exception type that carries them.

Every expected failure in the package is a :class:`Fatal` with the exit code
of docs/programs/index.rst; program entry points catch it once and print ``PROG: fatal: ...``.
This module must stay import-light: programs load it before deciding whether
they need trio or ssl at all.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 96  # configuring the TLS context: CA, key, certificate
EXIT_ENGINE = 97  # setting up the TLS engine
EXIT_TLS = 98  # TLS error while running (handshake, timeout, -J ragged EOF)
EXIT_USAGE = 100  # wrong usage, missing or invalid environment variable
EXIT_SYSTEM = 111  # a system call failed


class Fatal(Exception):
    """An expected failure: a one-line message and the exit code it means."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


class UsageError(Fatal):
    """Bad command line: the program prints its usage string and exits 100."""

    def __init__(self, message: str = "") -> None:
        super().__init__(EXIT_USAGE, message)


def describe_os_error(error: OSError) -> str:
    """``strerror`` of an OSError, the way s6 tools print a failed call."""
    return error.strerror or str(error)
