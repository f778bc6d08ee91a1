"""Command-line plumbing shared by every program: getopt-style parsing,
``--help``/``--version``, and the single place where a :class:`Fatal`
becomes ``PROG: fatal: ...`` and an exit code.

Import-light on purpose (no trio, no ssl): ``--help``, ``--version`` and
usage errors must answer fast.
"""

from __future__ import annotations

import getopt
import sys
from collections.abc import Callable, Sequence

from ._errors import EXIT_SYSTEM, Fatal, UsageError
from ._log import Log
from ._version import __version__

TYPE_CHECKING = False  # typing and dataclasses would cost --version ~20 ms
if TYPE_CHECKING:
    from typing import Any


class Opt:
    """One option: ``-x``/``--long``, stored in ``dest``.

    Without ``parse`` the option is a flag that stores ``value``; with it the
    option takes an argument, converted by ``parse`` (ValueError → usage).
    """

    __slots__ = ("dest", "long", "parse", "short", "value")

    def __init__(
        self,
        short: str,
        long: str | None,
        dest: str,
        value: Any = True,
        parse: Callable[[str], Any] | None = None,
    ) -> None:
        self.short = short
        self.long = long
        self.dest = dest
        self.value = value
        self.parse = parse


#: The C tools read numbers into an ``unsigned int``; larger is a usage error.
UINT_MAX = 2**32 - 1
#: File descriptor numbers are C ints.
FD_MAX = 2**31 - 1
#: ``(uid_t)-1`` and ``(gid_t)-1`` mean "no change" to the system calls.
ID_MAX = 2**32 - 2


def uint(text: str, maximum: int = UINT_MAX) -> int:
    """A non-negative decimal integer (ASCII digits) up to ``maximum``, as
    s6 tools accept it."""
    if not (text.isascii() and text.isdigit()) or int(text) > maximum:
        raise ValueError(f"not an integer from 0 to {maximum}: {text!r}")
    return int(text)


def fd_number(text: str) -> int:
    """A file descriptor number (``-6``, ``-7``, ``-d``, fd operands)."""
    return uint(text, FD_MAX)


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535, as the C tools' ``uint16_scan``."""
    return uint(text, 65535)


def id_number(text: str) -> int:
    """A uid or gid."""
    return uint(text, ID_MAX)


class Parsed:
    """Option values by ``dest``, the operands, and the two built-in flags."""

    def __init__(self, operands: list[str]) -> None:
        self.values: dict[str, Any] = {}
        self.operands = operands
        self.help = False
        self.version = False


def parse_options(argv: Sequence[str], options: Sequence[Opt]) -> Parsed:
    """POSIX getopt: stop at the first operand or ``--``; later options win."""
    shortspec = "".join(o.short + (":" if o.parse else "") for o in options if o.short)
    longspec = ["help", "version"] + [o.long + ("=" if o.parse else "") for o in options if o.long]
    try:
        pairs, operands = getopt.getopt(list(argv), shortspec, longspec)
    except getopt.GetoptError as error:
        raise UsageError(str(error)) from None
    by_flag = {f"-{o.short}": o for o in options if o.short}
    by_flag.update({f"--{o.long}": o for o in options if o.long})
    parsed = Parsed(operands=operands)
    for flag, argument in pairs:
        if flag == "--help":
            parsed.help = True
            continue
        if flag == "--version":
            parsed.version = True
            continue
        opt = by_flag[flag]
        if opt.parse is None:
            parsed.values[opt.dest] = opt.value
            continue
        try:
            parsed.values[opt.dest] = opt.parse(argument)
        except ValueError:
            raise UsageError(f"invalid argument for {flag}: {argument!r}") from None
    return parsed


class Program:
    """A program's identity: its name, usage line and ``--help`` text."""

    def __init__(self, name: str, usage: str, description: str) -> None:
        self.name = name
        self.usage = usage
        self.description = description.strip("\n")

    def help_text(self) -> str:
        return f"usage: {self.usage}\n\n{self.description}\n"

    def report(self, error: Fatal, log: Log | None = None) -> int:
        log = log or Log(self.name)
        if isinstance(error, UsageError):
            detail = f" ({error.message})" if error.message else ""
            log.usage(f"{self.usage}{detail}")
        else:
            log.fatal(error.message)
        return error.exit_code

    def main(
        self,
        argv: Sequence[str] | None,
        options: Sequence[Opt],
        run: Callable[[Parsed], int],
    ) -> int:
        """Parse ``argv`` and call ``run``; turn every expected failure into
        the one-line message and exit code of SPEC.md."""
        args = sys.argv[1:] if argv is None else list(argv)
        _reserve_stderr()
        try:
            parsed = parse_options(args, options)
            if parsed.help:
                sys.stdout.write(self.help_text())
                return 0
            if parsed.version:
                sys.stdout.write(f"{self.name} (trio_s6tls) {__version__}\n")
                return 0
            return run(parsed)
        except Fatal as error:
            return self.report(error)
        except KeyboardInterrupt:
            return 130
        except OSError as error:
            return self.report(Fatal(EXIT_SYSTEM, str(error)))


def _reserve_stderr() -> None:
    """Started with fd 2 closed: put /dev/null there, so that no socket or
    pipe we open later takes fd 2 and receives our log lines."""
    import os

    try:
        os.fstat(2)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
        if fd != 2:
            os.dup2(fd, 2)
            os.close(fd)
        os.set_inheritable(2, True)  # prog's stderr too


def fd_operand(text: str) -> int:
    try:
        return fd_number(text)
    except ValueError:
        raise UsageError(f"not a file descriptor: {text!r}") from None


__all__ = [
    "Opt",
    "Parsed",
    "Program",
    "fd_number",
    "fd_operand",
    "id_number",
    "parse_options",
    "port_number",
    "uint",
]
