"""Command lines: option tables, the POSIX parser, the usage line and
``--help`` text generated from the tables, and the one place where a
:class:`~trio_s6tls._errors.Fatal` becomes ``PROG: fatal: ...`` and an
exit code.

Theory of operation:

* An :class:`Opt` says everything about one option: its short and long
  names, where its value goes (``dest``), how its argument is read
  (``parse``), and how it is shown (``help``, ``metavar``, ``group``).
  The usage line and ``--help`` are made from the same tables, so they
  cannot drift from what the parser accepts.
* Parsing is getopt's, as skalibs does it: options stop at the first
  operand or at ``--``; short options bundle (``-SJy``); an argument is
  attached (``-v2``) or separate (``-v 2``); later options win. Long
  names match exactly (``--no-v`` is not ``--no-verify-cert``), with
  ``--name=value`` or ``--name value``.
* A bad option (unknown, a missing or an unexpected argument, a value that
  does not parse) is an :class:`OptionError`. The programs whose C
  counterparts read options with skalibs' ``gol`` report it as C does,
  one ``fatal:`` line; s6-tcpclient and s6-tcpserver, whose C counterparts
  use ``subgetopt``, print their usage line with it (``gol_errors``).
* Import-light on purpose (no trio, no ssl, no typing, no dataclasses):
  ``--help``, ``--version`` and usage errors must answer fast.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence

from .._errors import EXIT_SYSTEM, Fatal, UsageError
from .._log import Log
from .._version import __version__

TYPE_CHECKING = False  # typing would cost --version several ms
if TYPE_CHECKING:
    from typing import Any

#: Where the help text of an option starts.
_HELP_COLUMN = 32


class Opt:
    """One option: ``-x`` and/or ``--long`` (more long names are aliases),
    stored in ``dest``.

    Without ``parse`` the option is a flag that stores ``value``; with it
    the option takes an argument (shown as ``metavar``), converted by
    ``parse`` (ValueError → usage error). Adjacent options with the same
    ``group`` are alternatives in the usage line (``[ -S | -s ]``).
    """

    __slots__ = ("dest", "group", "help", "longs", "metavar", "parse", "short", "value")

    def __init__(
        self,
        short: str,
        long: str | tuple[str, ...] | None,
        dest: str,
        value: Any = True,
        parse: Callable[[str], Any] | None = None,
        *,
        help: str,
        metavar: str = "",
        group: str = "",
    ) -> None:
        self.short = short
        self.longs: tuple[str, ...] = (long,) if isinstance(long, str) else (long or ())
        self.dest = dest
        self.value = value
        self.parse = parse
        self.help = help
        self.metavar = metavar or ("ARG" if parse else "")
        self.group = group

    def flags(self) -> str:
        """``-k, --servername NAME`` (the first long name only)."""
        names = [f"-{self.short}"] if self.short else ["   "]
        if self.longs:
            names.append(f"--{self.longs[0]}")
        text = ", ".join(names) if self.short and self.longs else " ".join(names)
        return f"{text} {self.metavar}" if self.parse else text

    def usage(self) -> str:
        """``-c maxconn``, ``-S``, ``--alpn LIST``."""
        name = f"-{self.short}" if self.short else f"--{self.longs[0]}"
        return f"{name} {self.metavar}" if self.parse else name


def usage_line(name: str, options: Sequence[Opt], operands: str) -> str:
    """``NAME [ -q | -Q | -v ] [ -c maxconn ] ... [ -- ] OPERANDS``."""
    chunks: list[str] = []
    index = 0
    while index < len(options):
        group = [options[index]]
        while (
            group[0].group
            and index + 1 < len(options)
            and options[index + 1].group == group[0].group
        ):
            index += 1
            group.append(options[index])
        chunks.append("[ " + " | ".join(opt.usage() for opt in group) + " ]")
        index += 1
    return " ".join([name, *chunks, "[ -- ]", operands])


def option_help(options: Sequence[Opt]) -> str:
    """One entry per option: its flags, then its help in a column."""
    lines: list[str] = []
    for opt in options:
        flags = f"  {opt.flags()}"
        first, *rest = opt.help.split("\n")
        if len(flags) < _HELP_COLUMN:
            lines.append(f"{flags:<{_HELP_COLUMN}}{first}")
        else:
            lines += [flags, " " * _HELP_COLUMN + first]
        lines += [" " * _HELP_COLUMN + more for more in rest]
    return "\n".join(lines) + "\n"


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


def fd_operand(text: str) -> int:
    try:
        return fd_number(text)
    except ValueError:
        raise UsageError(f"not a file descriptor: {text!r}") from None


class OptionError(UsageError):
    """A bad option, as opposed to missing operands."""


class Parsed:
    """Option values by ``dest``, the operands, and the two built-in flags."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.operands: list[str] = []
        self.help = False
        self.version = False

    def store(self, opt: Opt, flag: str, argument: str | None) -> None:
        if opt.parse is None:
            self.values[opt.dest] = opt.value
            return
        assert argument is not None
        try:
            self.values[opt.dest] = opt.parse(argument)
        except ValueError:
            raise OptionError(f"invalid argument for {flag}: {argument!r}") from None


def parse_options(argv: Sequence[str], options: Sequence[Opt]) -> Parsed:
    """POSIX getopt with exact long names (see the module doc)."""
    by_short = {opt.short: opt for opt in options if opt.short}
    by_long = {name: opt for opt in options for name in opt.longs}
    parsed = Parsed()
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            name, equals, attached = arg[2:].partition("=")
            if name in ("help", "version"):
                if equals:
                    raise OptionError(f"option --{name} must not have an argument")
                setattr(parsed, name, True)
                continue
            opt = by_long.get(name)
            if opt is None:
                raise OptionError(f"unrecognized option: --{name}")
            argument: str | None = None
            if opt.parse is None:
                if equals:
                    raise OptionError(f"option --{name} must not have an argument")
            elif equals:
                argument = attached
            elif index < len(args):
                argument = args[index]
                index += 1
            else:
                raise OptionError(f"option --{name} requires an argument")
            parsed.store(opt, f"--{name}", argument)
            continue
        if not arg.startswith("-") or arg == "-":
            index -= 1
            break
        position = 1
        while position < len(arg):
            letter = arg[position]
            position += 1
            opt = by_short.get(letter)
            if opt is None:
                raise OptionError(f"unrecognized option: -{letter}")
            if opt.parse is None:
                parsed.store(opt, f"-{letter}", None)
                continue
            if position < len(arg):
                argument = arg[position:]
            elif index < len(args):
                argument = args[index]
                index += 1
            else:
                raise OptionError(f"option -{letter} requires an argument")
            parsed.store(opt, f"-{letter}", argument)
            break
    parsed.operands = args[index:]
    return parsed


class Program:
    """A program's identity: its name, its option table, and the usage line
    and ``--help`` text made from them.

    ``operands`` ends the usage line (``fdr fdw``, ``prog...``);
    ``summary`` comes before the options in ``--help``, ``epilog`` after
    them (environment, signals, exit codes). ``gol_errors``: a bad option
    is one ``fatal:`` line, as skalibs' ``gol`` says it (see the module doc).
    """

    def __init__(
        self,
        name: str,
        options: Sequence[Opt],
        *,
        operands: str,
        summary: str,
        epilog: str,
        gol_errors: bool = True,
    ) -> None:
        self.name = name
        self.gol_errors = gol_errors
        self.options = options
        self.usage = usage_line(name, options, operands)
        self.summary = summary.strip("\n")
        self.epilog = epilog.strip("\n")

    def help_text(self) -> str:
        return (
            f"usage: {self.usage}\n\n{self.summary}\n\n{option_help(self.options)}\n{self.epilog}\n"
        )

    def report(self, error: Fatal, log: Log | None = None) -> int:
        log = log or Log(self.name)
        if isinstance(error, UsageError) and not (
            self.gol_errors and isinstance(error, OptionError)
        ):
            detail = f" ({error.message})" if error.message else ""
            log.usage(f"{self.usage}{detail}")
        else:
            log.fatal(error.message)
        return error.exit_code

    def parse(self, argv: Sequence[str]) -> Parsed:
        return parse_options(argv, self.options)

    def main(self, argv: Sequence[str] | None, run: Callable[[Parsed], int]) -> int:
        """Parse ``argv`` and call ``run``; turn every expected failure into
        its one-line message and exit code."""
        args = sys.argv[1:] if argv is None else list(argv)
        _reserve_stderr()
        try:
            parsed = self.parse(args)
            if parsed.help:
                sys.stdout.write(self.help_text())
                return 0
            if parsed.version:
                sys.stdout.write(f"{self.name} (trio_s6tls) {__version__}\n")
                return 0
            status = run(parsed)
            # Leave the objects of the imports out of the interpreter's last
            # collection at exit: 25 ms of CPU per process, measured.
            gc.freeze()
            return status
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
