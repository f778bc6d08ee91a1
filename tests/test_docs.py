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
import zlib
from pathlib import Path

import pytest

from trio_s6tls.programs import PROGRAMS

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def built_docs(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One HTML build for every test here that reads it: the result and its
    output directory."""
    html = tmp_path_factory.mktemp("docs") / "html"
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(html)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "DOCS_OFFLINE": "1"},  # the result must not depend on the network
    )
    return build, html


def test_sphinx_build_has_no_warnings(
    built_docs: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    build, html = built_docs
    assert build.returncode == 0, build.stdout + build.stderr
    assert (html / "index.html").exists()


def python_objects(inventory: Path) -> set[str]:
    """The Python objects a Sphinx ``objects.inv`` names (inventory format 2:
    four header lines, then zlib-compressed ``name domain:role priority uri
    dispname`` lines)."""
    lines = inventory.read_bytes().split(b"\n", 4)
    assert lines[0] == b"# Sphinx inventory version 2", lines[0]
    entries = zlib.decompress(lines[4]).decode().splitlines()
    return {m[1] for line in entries if (m := re.match(r"(\S+) py:\w+ ", line))}


@pytest.mark.parametrize("module", ["trio_s6tls", "trio_s6tls.testing"])
def test_every_exported_name_is_documented(
    built_docs: tuple[subprocess.CompletedProcess[str], Path], module: str
) -> None:
    """Each name of ``__all__`` has its entry in the docs (an autodoc or
    ``py:`` directive under that very module path)."""
    build, html = built_docs
    if build.returncode != 0:
        pytest.fail("the docs did not build (see test_sphinx_build_has_no_warnings)")
    documented = python_objects(html / "objects.inv")
    exported = importlib.import_module(module).__all__
    missing = sorted(name for name in exported if f"{module}.{name}" not in documented)
    assert not missing, f"in {module}.__all__ but not in the docs: {missing}"


def test_home_page_links_every_program() -> None:
    index = (DOCS / "index.rst").read_text()
    missing = sorted(p for p in PROGRAMS if f":doc:`programs/{p}`" not in index)
    assert not missing, f"docs/index.rst does not link {missing}"


#: The team's working notes, which the repository does not carry.
NOT_IN_THE_REPOSITORY = ("SPEC.md", "DESIGN.md", "STYLE.md")


def test_docs_cite_no_file_the_repository_lacks() -> None:
    """README, the docs' sources and the examples cite only what is here."""
    repo = DOCS.parent
    sources = [repo / "README.md", *sorted((repo / "examples").rglob("*.py"))]
    sources += sorted(p for p in DOCS.rglob("*") if p.is_file() and "_build" not in p.parts)
    cited = [
        f"{path.relative_to(repo)}: {name}"
        for path in sources
        if path.suffix in {".md", ".rst", ".inc", ".py", ".sh", ".cfg", ".ini", ".txt"}
        for name in NOT_IN_THE_REPOSITORY
        if name in path.read_text()
    ]
    assert not cited, cited


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
