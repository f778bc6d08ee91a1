"""``python -m trio_s6tls PROGRAM ARGS...`` runs any program; ``demo`` runs
the built-in demonstration."""

from __future__ import annotations

import importlib
import sys

from .programs import PROGRAMS


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = ", ".join(["demo", *PROGRAMS])
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: python -m trio_s6tls PROGRAM [ARGS...]\nprograms: {names}")
        return 0 if args else 100
    name, rest = args[0], args[1:]
    if name == "demo":
        from ._demo import main as demo_main

        return demo_main(rest)
    module = PROGRAMS.get(name)
    if module is None:
        print(f"trio_s6tls: usage: unknown program {name!r} (one of: {names})", file=sys.stderr)
        return 100
    program = importlib.import_module(f"trio_s6tls.programs.{module}")
    status: int = program.main(rest)
    return status


if __name__ == "__main__":
    sys.exit(main())
