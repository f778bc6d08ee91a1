"""The command-line surface: ``python -m trio_s6tls``, the demo, ``--help``
and ``--version`` for every program, and the promise that those and usage
errors never import trio or ssl (start-up time).

Rules: subprocesses with timeouts; the demo uses loopback only.
"""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest
from support import (
    program,
)

from trio_s6tls.programs import PROGRAMS

TIMEOUT = 60


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_demo_runs_end_to_end() -> None:
    result = run(sys.executable, "-m", "trio_s6tls", "demo")
    assert result.returncode == 0, result.stderr
    assert "demo: server application received b'hello through TLS\\n'" in result.stdout
    assert "SSL_PROTOCOL=TLSv1.3" in result.stdout
    assert result.stdout.rstrip().endswith("demo: OK")


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_help_and_version(name: str) -> None:
    helped = run(program(name), "--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith(f"usage: {name} ")
    versioned = run(program(name), "--version")
    assert versioned.returncode == 0
    assert versioned.stdout.startswith(f"{name} (trio_s6tls) ")


def test_python_dash_m_dispatches_and_rejects_unknown_programs() -> None:
    assert run(sys.executable, "-m", "trio_s6tls", "s6-tlsd-io", "--version").stdout.startswith(
        "s6-tlsd-io "
    )
    unknown = run(sys.executable, "-m", "trio_s6tls", "s6-nothing")
    assert unknown.returncode == 100
    assert unknown.stderr.startswith("trio_s6tls: usage: unknown program")


CHECK_IMPORTS = """
import sys
from trio_s6tls.programs import {module} as prog
try:
    status = prog.main({argv!r})
finally:
    sys.stdout.flush()
print("IMPORTED", "trio" in sys.modules, "ssl" in sys.modules)
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["-X"], ["-K", "x", "6", "7"]])
@pytest.mark.parametrize("module", sorted(PROGRAMS.values()))
def test_fast_paths_do_not_import_trio_or_ssl(module: str, argv: list[str]) -> None:
    result = run(sys.executable, "-c", CHECK_IMPORTS.format(module=module, argv=argv))
    assert result.stdout.splitlines()[-1] == "IMPORTED False False", result.stderr


#: The programs whose C counterparts parse options with skalibs' gol: a bad
#: option is a one-line ``fatal:`` (100). C's s6-tcpclient and s6-tcpserver
#: use subgetopt and print their usage line instead.
GOL_PROGRAMS = sorted(set(PROGRAMS) - {"s6-tcpclient", "s6-tcpserver"})


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["-%"], "unrecognized option: -%"),
        (["--bogus"], "unrecognized option: --bogus"),
        (["--version=1"], "option --version must not have an argument"),
    ],
)
def test_option_errors_in_cs_category(name: str, argv: list[str], words: str) -> None:
    result = run(program(name), *argv, "127.0.0.1", "1", "true")
    assert result.returncode == 100
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    if name in GOL_PROGRAMS:
        assert lines[0] == f"{name}: fatal: {words}"
    else:
        assert lines[0].startswith(f"{name}: usage: {name} ")
        assert lines[0].endswith(f"({words})")


@pytest.mark.parametrize(
    ("name", "argv", "line"),
    [
        ("s6-tlsclient", ["-K", "x", "h", "1", "true"], "invalid argument for -K: 'x'"),
        (
            "s6-tlsd",
            ["--handshake-timeout=-1", "true"],
            "invalid argument for --handshake-timeout: '-1'",
        ),
        ("s6-tcpclient", ["127.0.0.1", "xyz", "true"], "invalid port number: 'xyz'"),
        ("s6-tlsclient", ["127.0.0.1", "99999", "true"], "invalid port number: '99999'"),
    ],
)
def test_bad_values_are_one_fatal_line(name: str, argv: list[str], line: str) -> None:
    result = run(program(name), *argv)
    assert result.returncode == 100
    assert result.stderr.splitlines() == [f"{name}: fatal: {line}"], result.stderr


def test_a_program_leaves_its_heap_out_of_the_last_collection() -> None:
    """After its work, Program.main freezes the heap, so that the
    interpreter's collection at exit does not walk every object of the
    imports (some 40 ms of CPU per engine process, measured)."""
    from trio_s6tls.programs._cli import Program

    program = Program("s6-test", [], operands="", summary="", epilog="")
    before = gc.get_freeze_count()
    try:
        assert program.main([], lambda parsed: 7) == 7
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
