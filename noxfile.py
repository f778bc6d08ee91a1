"""nox sessions: tests, lint (ruff + mypy --strict), bench, docs."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".[test]", "ruff", "mypy")
    targets = [
        "trio_s6tls",
        "tests",
        "bench",
        "examples",
        "docs/conf.py",
        "docs/tutorial_project",
        "noxfile.py",
    ]
    session.run("ruff", "check", *targets)
    session.run("ruff", "format", "--check", *targets)
    session.run("mypy", "--strict", "trio_s6tls")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks of bench/, side by side with stunnel4 and socat
    (``--install`` lets them apt-get install the peers). trustme, and the
    cryptography it brings (bench/_pki.py), come with the testing extra."""
    session.install(".[testing]")
    session.run("python", "bench/relay.py", "--self-test")
    for script in ("throughput.py", "latency.py", "client_latency.py", "chain.py", "server.py"):
        session.run("python", f"bench/{script}", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run(
        "python", "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )
