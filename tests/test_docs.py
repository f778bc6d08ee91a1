"""The documentation builds with warnings as errors, covers every program,
and its tutorial project passes as written.

Nothing here is skipped: without Sphinx (part of the test extras) the
build test fails, as it should.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trio_s6tls.programs import PROGRAMS

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_sphinx_build_has_no_warnings(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DOCS_OFFLINE": "1"},  # the result must not depend on the network
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / "html" / "index.html").exists()


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_program_has_a_page(program: str) -> None:
    page = (DOCS / "programs" / f"{program}.rst").read_text()
    for section in ("Interface", "Options", "Environment", "Exit codes", "Examples"):
        assert f"\n{section}\n" in page, f"{program}: no {section} section"
    assert "Differences from the C tool" in page
    assert program in (DOCS / "programs" / "index.rst").read_text()


def _with_includes(path: Path) -> str:
    """The page's text with its ``.. include::`` files spliced in."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith(".. include:: "):
            lines.append(_with_includes(path.parent / line.split(":: ", 1)[1].strip()))
        else:
            lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_option_in_the_usage_line_is_documented(program: str) -> None:
    module = importlib.import_module(f"trio_s6tls.programs.{PROGRAMS[program]}")
    page = _with_includes(DOCS / "programs" / f"{program}.rst")
    options = set(re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", module.PROGRAM.usage))
    options.discard("--")
    missing = sorted(option for option in options if f"``{option}" not in page)
    assert not missing, f"{program}: undocumented {missing}"


def test_tutorial_project_passes(pytester: pytest.Pytester) -> None:
    """The files the tutorial shows, run as a user would run them."""
    for source in (DOCS / "tutorial_project").iterdir():
        if source.is_file():
            shutil.copy(source, pytester.path / source.name)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
