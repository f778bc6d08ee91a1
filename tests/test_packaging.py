"""trustme is the ``testing`` extra, not a dependency: without it the
programs, the library and ``trio_s6tls.testing`` import, pytest runs (the
plugin loads in every environment that has trio_s6tls), and what does need
trustme says in one line which extra to install.

trustme's absence is simulated in a child interpreter by ``sys.modules
["trustme"] = None``, which makes ``import trustme`` fail as if it were not
installed.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trio_s6tls import _demo, pytest_plugin

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
WITHOUT_TRUSTME = "import sys; sys.modules['trustme'] = None; "


def run_without_trustme(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TRUSTME + code],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_trustme_is_an_extra_of_its_own_and_of_the_test_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("trustme")]
    extras = project["optional-dependencies"]
    assert [d for d in extras["testing"] if d.startswith("trustme")]
    assert [d for d in extras["test"] if d.startswith("trustme")]


def test_library_and_testing_import_without_trustme() -> None:
    result = run_without_trustme(
        "import trio_s6tls, trio_s6tls.testing, trio_s6tls.pytest_plugin; "
        "from trio_s6tls import *; print('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_demo_without_trustme_names_the_extra() -> None:
    result = run_without_trustme("from trio_s6tls.__main__ import main; sys.exit(main(['demo']))")
    assert result.returncode == 111
    assert result.stdout == ""
    assert result.stderr == _demo.MISSING_TRUSTME + "\n"
    assert "'testing' extra" in result.stderr


def test_pytest_without_trustme(pytester: pytest.Pytester) -> None:
    """The plugin loads; a test without its fixtures passes; a test that
    asks for one errors with the one-line message, no traceback."""
    pytester.makeconftest(WITHOUT_TRUSTME.replace("; ", "\n"))
    pytester.makepyfile(
        test_user="""
        def test_plain():
            assert True

        def test_wants_certificates(tls_server_env):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    output = result.stdout.str()
    assert f"\n{pytest_plugin.MISSING_TRUSTME}\n" in output
    assert "Traceback" not in output
    assert "halted" not in output  # the ImportError itself is not shown
