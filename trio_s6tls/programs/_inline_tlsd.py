"""Does s6-tcpserver's prog start with our own s6-tlsd? Then the chain
``s6-tcpserver … s6-tlsd [opts] prog…`` can be served in process
(:mod:`trio_s6tls._inline_server`; docs/programs/s6-tcpserver.rst).

Our s6-tlsd is a console script of this very installation: argv[0],
searched in ``PATH`` as the spawn would, is a script whose interpreter
lives in the directory of the one running now and which runs
``trio_s6tls.programs.tlsd``. Its options are parsed with s6-tlsd's own
table; anything that table refuses, ``--help``, ``--version``, or
``TLS_UID``/``TLS_GID`` (the engine would change identity) leaves the
real chain in place, which then says what is wrong itself. Opt-outs:
``--no-inline-tlsd``, ``TRIO_S6TLS_INLINE_TLSD=0``."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Mapping, Sequence

from .._errors import Fatal
from .._identity import parse_identity
from .._inline_server import InlineTlsd, steering_variables
from .._log import Log
from . import tlsd
from ._arguments import wrapper_arguments
from ._superserver import Launch

OPT_OUT = "TRIO_S6TLS_INLINE_TLSD"
_ENTRY_POINT = b"from trio_s6tls.programs.tlsd import main"
_HEAD = 4096  # a console script is a few hundred bytes


def is_our_tlsd(name: str, path: str) -> bool:
    """``name`` (as prog's argv[0], searched in ``path``) is the s6-tlsd
    console script of this installation."""
    found = name if "/" in name else shutil.which(name, path=path)
    if found is None:
        return False
    try:
        with open(found, "rb") as script:
            head = script.read(_HEAD)
    except OSError:
        return False
    first, _, rest = head.partition(b"\n")
    if not first.startswith(b"#!") or _ENTRY_POINT not in rest:
        return False
    interpreter = os.fsdecode(first[2:].strip())
    if not interpreter or " " in interpreter:  # "#!/usr/bin/env python", or options
        return False
    try:  # the same bin directory: the same venv or system installation
        return os.path.samefile(os.path.dirname(interpreter), os.path.dirname(sys.executable))
    except OSError:
        return False


def plan_inline_tlsd(argv: Sequence[str], env: Mapping[str, str]) -> InlineTlsd | None:
    """What to serve in process for s6-tcpserver's ``argv``, or None to run
    it as it is."""
    if env.get(OPT_OUT) == "0" or not argv:
        return None
    if not is_our_tlsd(argv[0], env.get("PATH", os.defpath)):
        return None
    try:
        parsed = tlsd.PROGRAM.parse(argv[1:])
        if parsed.help or parsed.version:
            return None
        arguments = wrapper_arguments(parsed, network=(0, 1))
        if parse_identity(env) != (None, None):
            return None
    except Fatal:
        return None
    return InlineTlsd(
        chain_argv=tuple(argv),
        prog=arguments.prog,
        options=arguments.options,
        keep_tls=arguments.keep_tls,
        steering=steering_variables(env),
        log=Log(tlsd.PROGRAM.name, arguments.options.verbosity),
    )


def with_inline_tlsd(plan: Launch, env: Mapping[str, str]) -> Launch:
    """``plan`` with its s6-tlsd served in process where it can be."""
    inline = plan_inline_tlsd(plan.server.argv, env)
    if inline is None:
        return plan
    return dataclasses.replace(
        plan, server=dataclasses.replace(plan.server, server_type=inline.server)
    )
