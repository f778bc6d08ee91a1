"""docs/certificates.rst, run as written.

The openssl recipe is the file the page includes
(``docs/examples/make-certificates.sh``), and the trustme command is the
page's code block named ``trustme-command``: the tests run those very
commands, then ``s6-tlsserver`` and ``s6-tlsclient`` with what they made, as
the page says to set them up. The C tools (BearSSL) take part where the page
makes a claim about them; without their build the C cases skip, except under
``CI=true`` (see c_tools.py). openssl is required the same way.

Every wait is bounded; every process is reaped, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from c_tools import Tools, clean_environ, ours, require_c_tools

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "certificates.rst"
RECIPE = REPO / "docs" / "examples" / "make-certificates.sh"
TIMEOUT = 30.0  # per wait, for a loaded 2-core machine

#: prog on the server side: what the client certificate and the connection
#: looked like, sent to the client.
SERVER_PROG = [
    "sh",
    "-c",
    'printf "subject=%s\\nprotocol=%s\\nremote=%s\\n"'
    ' "$SSL_PEER_CERT_SUBJECT" "$SSL_PROTOCOL" "$TCPREMOTEIP"',
]
#: prog on the client side: print what the server sent (fd 6).
CLIENT_PROG = ["sh", "-c", "cat <&6"]


def require_program(name: str) -> str:
    """``name`` on PATH; skips without it, fails under ``CI=true``."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def tools(name: str) -> Tools:
    return require_c_tools() if name == "c" else ours()


def named_code_block(page: Path, name: str) -> str:
    """The body of the ``.. code-block::`` whose ``:name:`` is ``name``."""
    lines = page.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.strip() == f":name: {name}" and lines[index - 1].startswith(".. code-block::"):
            body = []
            for text in lines[index + 1 :]:
                if text and not text.startswith(" "):
                    break
                body.append(text.strip())
            return "\n".join(body).strip() + "\n"
    raise AssertionError(f"no code block named {name!r} in {page}")


def read_port(proc: subprocess.Popen[bytes]) -> str:
    """The port ``-1`` prints once the server listens (bounded)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + TIMEOUT
    data = b""
    while b"\n" not in data:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"{proc.args[0]}: not listening after {TIMEOUT}s")
        chunk = os.read(fd, 64)
        if not chunk:
            raise AssertionError(
                f"{proc.args[0]}: exited before listening (status {proc.wait(TIMEOUT)})"
            )
        data += chunk
    return data.split(b"\n", 1)[0].decode()


@contextlib.contextmanager
def serving(argv: Sequence[str], env: Mapping[str, str]) -> Iterator[str]:
    """Run a super-server with ``-1`` on 127.0.0.1 port 0; yield its port.
    On the way out it is stopped, reaped, and its stderr shown on failure."""
    server = subprocess.Popen(
        [*argv, "127.0.0.1", "0", *SERVER_PROG],
        env=clean_environ(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield read_port(server)
    finally:
        server.terminate()
        try:
            _, err = server.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate(timeout=TIMEOUT)
        sys.stderr.write(err.decode(errors="replace"))  # shown when the test fails


def connect(
    argv: Sequence[str], port: str, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv, "127.0.0.1", port, *CLIENT_PROG],
        env=clean_environ(env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where the page's openssl recipe ran."""
    require_program("openssl")
    directory = tmp_path_factory.mktemp("recipe")
    made = subprocess.run(
        ["sh", str(RECIPE)], cwd=directory, capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return directory


def test_the_page_includes_the_recipe() -> None:
    assert ".. literalinclude:: examples/make-certificates.sh" in PAGE.read_text()


def test_recipe_makes_the_files_the_page_lists(recipe: Path) -> None:
    page = PAGE.read_text()
    made = sorted(p.relative_to(recipe).as_posix() for p in recipe.rglob("*") if p.is_file())
    [anchor] = [name for name in made if name.startswith("cadir/")]
    assert anchor.endswith(".0") and len(anchor) == len("cadir/01234567.0")
    for name in made:
        shown = "cadir/HASH.0" if name == anchor else name
        assert f"``{shown}``" in page, f"the recipe makes {name}, the page does not say what for"
    for key in ("ca.key", "server.key", "client.key"):
        assert stat.S_IMODE((recipe / key).stat().st_mode) == 0o600, key


@pytest.mark.parametrize("client", ["ours", "c"])
@pytest.mark.parametrize("server", ["ours", "c"])
def test_recipe_certificates_end_to_end(recipe: Path, server: str, client: str) -> None:
    """Server certificate and client certificate both verified, with the
    anchors as ``CAFILE`` on the server and as ``CADIR`` (``HASH.0``) on
    the client, the C tools' reading of both included."""
    server_tools, client_tools = tools(server), tools(client)
    server_env = {
        "CERTFILE": str(recipe / "server.pem"),
        "KEYFILE": str(recipe / "server.key"),
        "CAFILE": str(recipe / "ca.pem"),
    }
    client_env = {
        "CADIR": str(recipe / "cadir"),
        "CERTFILE": str(recipe / "client.pem"),
        "KEYFILE": str(recipe / "client.key"),
    }
    with serving([server_tools("s6-tlsserver"), "-1", "-y"], server_env) as port:
        result = connect([client_tools("s6-tlsclient"), "-y", "-k", "localhost"], port, client_env)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert lines["subject"] == "O=Example, CN=client one"
    assert lines["protocol"] in ("TLSv1.2", "TLSv1.3")
    assert lines["remote"] == "127.0.0.1"


@pytest.mark.parametrize("server", ["ours", "c"])
def test_recipe_certificate_as_an_sni_pair(recipe: Path, server: str) -> None:
    """The page's ``env CERTFILE:localhost=... KEYFILE:localhost=...
    s6-tlsserver -k 2`` (only the pairs, no CERTFILE/KEYFILE)."""
    pair = [
        "env",
        f"CERTFILE:localhost={recipe / 'server.pem'}",
        f"KEYFILE:localhost={recipe / 'server.key'}",
    ]
    with serving([*pair, tools(server)("s6-tlsserver"), "-1", "-k", "2"], {}) as port:
        result = connect(
            [ours()("s6-tlsclient"), "-k", "localhost"], port, {"CAFILE": str(recipe / "ca.pem")}
        )
    assert result.returncode == 0, result.stderr
    assert "remote=127.0.0.1\n" in result.stdout


@pytest.fixture(scope="module")
def trustme_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where the page's trustme command ran."""
    directory = tmp_path_factory.mktemp("trustme")
    command = named_code_block(PAGE, "trustme-command")
    assert command.startswith("python -m trustme"), command
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    made = subprocess.run(
        ["sh", "-c", command],
        cwd=directory,
        env={**os.environ, "PATH": path},  # `python` is the one running the tests
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return directory


def test_trustme_certificates_work_with_ours(trustme_dir: Path) -> None:
    """``client.pem`` is the CA certificate, the client's ``CAFILE``."""
    server_env = {
        "CERTFILE": str(trustme_dir / "server.pem"),
        "KEYFILE": str(trustme_dir / "server.key"),
    }
    with serving([ours()("s6-tlsserver"), "-1"], server_env) as port:
        result = connect(
            [ours()("s6-tlsclient"), "-k", "localhost"],
            port,
            {"CAFILE": str(trustme_dir / "client.pem")},
        )
    assert result.returncode == 0, result.stderr
    assert "remote=127.0.0.1\n" in result.stdout


def test_c_client_refuses_trustme_certificate(trustme_dir: Path) -> None:
    """The page's warning: BearSSL refuses trustme's critical extendedKeyUsage."""
    c = require_c_tools()
    server_env = {
        "CERTFILE": str(trustme_dir / "server.pem"),
        "KEYFILE": str(trustme_dir / "server.key"),
    }
    with serving([ours()("s6-tlsserver"), "-1"], server_env) as port:
        result = connect(
            [c("s6-tlsclient"), "-k", "localhost"],
            port,
            {"CAFILE": str(trustme_dir / "client.pem")},
        )
    assert result.returncode == 98, result.stderr
    assert "BR_ERR_X509_CRITICAL_EXTENSION" in result.stderr
    assert "BR_ERR_X509_CRITICAL_EXTENSION" in PAGE.read_text()
