"""Command lines a user can type: each one ends in a clean one-line error
with the right exit code (usage: 100), or does its job — never a traceback.

Two halves. First the specific command lines of issue 9, through the real
installed scripts. Then property-based tests with ``hypothesis``: random
argument vectors for every program, run in process through ``main([...])``
with the points where a program would touch the network, fork or run an
event loop replaced by a stub that stops it there (a command line that gets
that far was accepted); a handful of random vectors through the real
scripts; and the PROXY header parser and the rules-directory reader on
random input.

Rules: no network (the stubs stop before any I/O; the real scripts get no
TLS configuration, so they stop at the check that comes before it),
subprocesses with timeouts, bounded examples, ``deadline=None``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import ipaddress
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import (
    program,
    tls_env,
)

from trio_s6tls.programs import PROGRAMS
from trio_s6tls.testing import LoopbackPKI

TIMEOUT = 20
ONE_LINE = re.compile(r"^(?P<prog>[\w.-]+): (?P<kind>usage|fatal): \S")


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program(argv[0]), *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def one_line(stderr: str, prog: str) -> str:
    """The single ``PROG: usage|fatal: ...`` line of ``stderr``."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    found = ONE_LINE.match(lines[0])
    assert found and found["prog"] == prog, lines[0]
    return lines[0]


# -- the command lines of the issue ----------------------------------------------------

HUGE = "99999999999"

USAGE_ERRORS = [
    ["s6-tlsd-io", "2147483648", "1"],
    ["s6-tlsc-io", "0", HUGE],
    ["s6-tlsc", "-6", HUGE, "-7", "1", "true"],
    ["s6-ucspitlsc", "-6", HUGE, "true"],
    ["s6-ucspitlsc", "-7", "-1", "true"],
    ["s6-tlsd-io", "-d", HUGE, "3", "4"],
    ["s6-tlsserver", "-b", HUGE, "127.0.0.1", "0", "true"],
    ["s6-tcpserver", "-b", HUGE, "127.0.0.1", "0", "true"],
    ["s6-tcpserver", "-u", HUGE, "127.0.0.1", "0", "true"],
    ["s6-tcpserver", "-G", f"1,{HUGE}", "127.0.0.1", "0", "true"],
    ["s6-tlsd-io", "0", "1"],
    ["s6-tlsd-io", "3", "0"],
    ["s6-tlsc-io", "-d", "6", "6", "7"],
    ["s6-tcpclient", "127.0.0.1", "99999", "true"],
    ["s6-tlsclient", "127.0.0.1", "99999", "true"],
    ["s6-tcpclient", "127.0.0.1", "https", "true"],
    ["s6-tcpclient", "-p", "70000", "127.0.0.1", "1", "true"],
    ["s6-tcpclient", "-i", "not-an-ip", "127.0.0.1", "1", "true"],
    ["s6-tcpclient", "-T", "1e300", "127.0.0.1", "1", "true"],
    ["s6-tlsc-io", "--min-version", "1.3", "--max-version", "1.2", "6", "7"],
    ["s6-tlsserver", "--min-version", "1.3", "--max-version", "1.2", "127.0.0.1", "0", "cat"],
    ["s6-tlsd", "--alpn", "h\u00e9", "cat"],
    ["s6-tlsd", "--alpn", "x" * 256, "cat"],
    ["s6-tlsd-io", "-K", "\u0661\u0662", "3", "4"],  # Arabic-Indic digits are not digits here
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=lambda argv: " ".join(argv)[:60])
def test_bad_command_lines_are_usage_errors(pki: LoopbackPKI, argv: list[str]) -> None:
    """Usage errors come first: even with a complete TLS environment."""
    result = run(argv, tls_env(pki))
    assert "Traceback" not in result.stderr
    assert result.returncode == 100, result.stderr
    one_line(result.stderr, argv[0])


def test_tlsclient_checks_its_configuration_before_connecting() -> None:
    """No trust anchors: 100 at once, and the server sees no connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result = run(["s6-tlsclient", "127.0.0.1", str(port), "true"], tls_free_env())
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing in the accept queue
            listener.accept()
    assert result.returncode == 100
    assert "CADIR or CAFILE not set" in one_line(result.stderr, "s6-tlsclient")


def test_tlsclient_against_a_closed_port_reports_the_configuration(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed once we leave: "connection refused"
    (tmp_path / "empty.pem").write_bytes(b"")
    for env, code, needle in [
        (tls_free_env(), 100, "CADIR or CAFILE not set"),
        (tls_free_env(CADIR=str(tmp_path)), 96, "no trust anchor found"),
        (tls_free_env(CAFILE=str(tmp_path / "empty.pem")), 96, "no trust anchor found"),
    ]:
        result = run(["s6-tlsclient", "127.0.0.1", str(port), "true"], env)
        assert result.returncode == code, result.stderr
        assert needle in one_line(result.stderr, "s6-tlsclient")


def test_empty_files_in_cadir_are_skipped(pki: LoopbackPKI, tmp_path: Path) -> None:
    from trio_s6tls._tlsconfig import TLSOptions, client_context

    (tmp_path / "0-empty").write_bytes(b"")
    (tmp_path / "ca.pem").write_bytes(pki.ca_file.read_bytes())
    (tmp_path / "z-empty.der").write_bytes(b"")
    context = client_context({"CADIR": str(tmp_path)}, TLSOptions())
    assert context.cert_store_stats()["x509"] == 1


def test_sni_level_above_two_means_mandatory_as_in_c(pki: LoopbackPKI) -> None:
    """C's s6-tlsd-io takes any level; 2 and above mean --mandatory-sni."""
    with open(os.devnull, "rb") as local_read, open(os.devnull, "wb") as local_write:
        fds = (local_read.fileno(), local_write.fileno())
        results = [
            subprocess.run(
                [program("s6-tlsd-io"), "-k", level, *map(str, fds)],
                env=tls_env(pki),
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                pass_fds=fds,
            )
            for level in ("2", "7")
        ]
    assert [r.returncode for r in results] == [96, 96]
    assert results[0].stderr == results[1].stderr
    assert "no keypair found" in one_line(results[1].stderr, "s6-tlsd-io")


def test_demo_help_exits_zero() -> None:
    for flag in ("--help", "-h"):
        result = subprocess.run(
            [sys.executable, "-m", "trio_s6tls", "demo", flag],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0 and result.stdout.startswith("usage: python -m trio_s6tls")
    wrong = subprocess.run(
        [sys.executable, "-m", "trio_s6tls", "demo", "extra"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert wrong.returncode == 100 and wrong.stderr.startswith("trio_s6tls: usage: ")


# -- random command lines ------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=70000),
    st.sampled_from([2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 10**30]),
    st.integers(max_value=-1, min_value=-(2**40)),
).map(str)
WORDS = st.sampled_from(
    ["", "-", "--", "1.2", "1.3", "2+58", "0.5", "1e300", "nan", "x+y", "h2,http/1.1", ",",
     "127.0.0.1", "::1", "0.0.0.0", "localhost", "true", "cat", "0", "1", "6", "7", "65535",
     "65536", "0x10", "\u0661", "\u00b2", "ALL", "\udcff", "*.example.com", "a=b"]
)  # fmt: skip
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
VALUES = st.one_of(NUMBERS, WORDS, TEXT)


PLAUSIBLE = ["0", "1", "2", "3", "7", "100", "5000", "65534", "1,2", "2+58", "0.5", "h2",
             "h2,http/1.1", "1.2", "1.3", "127.0.0.1", "localhost", "name", "ECDHE+AESGCM"]  # fmt: skip


def _values_for(opt: Any) -> st.SearchStrategy[str]:
    """Mostly values the option accepts (so that examples get past the
    parser and further), sometimes anything."""
    accepted = []
    for candidate in PLAUSIBLE:
        try:
            opt.parse(candidate)
        except (ValueError, TypeError):
            continue
        accepted.append(candidate)
    if opt.parse is None or not accepted:
        return VALUES
    return st.one_of(st.sampled_from(accepted), st.sampled_from(accepted), VALUES)


def _flag_forms(opt: Any) -> list[str]:
    forms = []
    if opt.short:
        forms.append(f"-{opt.short}")
    forms += [f"--{name}" for name in opt.longs]
    return forms


PROGS = st.lists(st.sampled_from(["true", "cat", "/nonexistent", "-x"]), min_size=1, max_size=3)
LOOPBACK = st.sampled_from(["127.0.0.1", "::1"])
#: Operands that make sense, per kind of program (random ones nearly always
#: stop at "expected ip, port and prog"; those come from the junk branch).
OPERANDS = {
    "engine": st.sampled_from([["3", "4"], ["3", "3"], ["5", "4"], ["2", "5"]]),
    "wrapper": PROGS,
    "client": st.tuples(LOOPBACK, st.sampled_from(["0", "1", "65535"]), PROGS).map(
        lambda t: [t[0], t[1], *t[2]]
    ),
    "server": st.tuples(LOOPBACK, st.just("0"), PROGS).map(lambda t: [t[0], t[1], *t[2]]),
}
KIND = {
    "s6-tlsc-io": "engine",
    "s6-tlsd-io": "engine",
    "s6-tlsc": "wrapper",
    "s6-tlsd": "wrapper",
    "s6-ucspitlsc": "wrapper",
    "s6-ucspitlsd": "wrapper",
    "s6-tlsclient": "client",
    "s6-tcpclient": "client",
    "s6-tlsserver": "server",
    "s6-tcpserver": "server",
}


@st.composite
def argvs(draw: st.DrawFn, options: list[Any], name: str) -> list[str]:
    """Options of the program (separate, attached or bundled arguments),
    then operands, mostly plausible ones; sometimes junk anywhere."""
    argv: list[str] = []
    for _ in range(draw(st.integers(0, 5))):
        opt = draw(st.sampled_from(options))
        flag = draw(st.sampled_from(_flag_forms(opt)))
        value = draw(_values_for(opt))
        if opt.parse is None:
            if opt.short and draw(st.booleans()):
                others = [o.short for o in options if o.short and o.parse is None]
                flag = (
                    "-" + opt.short + "".join(draw(st.lists(st.sampled_from(others), max_size=2)))
                )
            argv.append(flag)
        elif flag.startswith("--") and draw(st.booleans()):
            argv.append(f"{flag}={value}")
        elif not flag.startswith("--") and draw(st.booleans()):
            argv.append(flag + value)
        else:
            argv += [flag, value]
    if draw(st.booleans()):
        argv.append("--")
    if draw(st.integers(0, 3)):
        argv += draw(OPERANDS[KIND[name]])
    else:
        argv += draw(st.lists(VALUES, max_size=4))
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(TEXT))
    return argv


class Reached(Exception):
    """The command line was accepted: the program got to real work."""


def _stop(*_args: object, **_kwargs: object) -> Any:
    raise Reached


TLS_AND_IDENTITY = ("CADIR", "CAFILE", "CERTFILE", "KEYFILE", "TLS_UID", "TLS_GID", "UID", "GID")


def tls_free_env(**extra: str) -> dict[str, str]:
    """The environment without any TLS or identity variable, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(TLS_AND_IDENTITY) and k not in ("GIDLIST", "SSLKEYLOGFILE")
    }
    return {**env, **extra}


@contextlib.contextmanager
def stopped_before_work(patch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[None]:
    """Replace what would fork, bind, resolve, connect or run a loop; make
    ``env`` the environment."""
    from trio_s6tls import _exec, _iorun, _server, _tcpclient, _ucspitls

    class NoTrio:
        run = staticmethod(_stop)

    patch.setattr(_iorun, "trio", NoTrio)
    patch.setattr(_exec, "high_pipe", _stop)
    patch.setattr(_ucspitls, "high_pipe", _stop)
    patch.setattr(_tcpclient, "resolve", _stop)
    real_bind = _server.bind

    def bind_on_loopback(ip: str, port: int, backlog: int, *, reuse_port: bool = False) -> Any:
        """The real bind (the backlog reaches listen), on loopback port 0."""
        real_bind("::1" if ":" in ip else "127.0.0.1", 0, backlog, reuse_port=reuse_port).close()
        raise Reached

    patch.setattr(_server, "bind", bind_on_loopback)
    for name in list(os.environ):
        if name not in env:
            patch.delenv(name)
    for name, value in env.items():
        patch.setenv(name, value)
    yield


def _check_outcome(name: str, status: object, out: str, err: str, argv: list[str]) -> None:
    assert "Traceback" not in err, (argv, err)
    assert isinstance(status, int), (argv, status)
    if status == 0:
        assert out.startswith((f"usage: {name}", f"{name} (trio_s6tls)")), (argv, out)
        return
    line = one_line(err, name)
    kind, _, detail = line.partition(": ")[2].partition(": ")
    if kind == "usage":
        detail = detail[detail.rfind(" (") + 1 :]
    event(f"exit {status} {kind}: {detail[:60]}")
    if " usage: " in line:
        assert status == 100, (argv, line)
    else:
        assert status in (96, 100, 111), (argv, status, line)


def _tls_env(pki: LoopbackPKI) -> dict[str, str]:
    return tls_free_env(
        CERTFILE=str(pki.server_file), KEYFILE=str(pki.server_file), CAFILE=str(pki.ca_file)
    )


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_random_command_lines_in_process(
    name: str, pki: LoopbackPKI, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Never a traceback: help (0), a one-line rejection (usage → 100), or
    the program reaches its real work (stopped there by a stub)."""
    module = importlib.import_module(f"trio_s6tls.programs.{PROGRAMS[name]}")
    options = list(module.PROGRAM.options)

    @settings(
        max_examples=120,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(argv=argvs(options, name), with_tls=st.booleans())
    def check(argv: list[str], with_tls: bool) -> None:
        capfd.readouterr()
        env = _tls_env(pki) if with_tls else tls_free_env()
        with monkeypatch.context() as patch, stopped_before_work(patch, env):
            try:
                status: object = module.main(argv)
            except Reached:
                event("accepted: reached the real work")
                return
            except SystemExit as leave:  # pragma: no cover - a program must return
                status = leave.code
        out, err = capfd.readouterr()
        _check_outcome(name, status, out, err, argv)

    check()


@pytest.mark.parametrize(
    "name", ["s6-tlsc-io", "s6-tlsd-io", "s6-tlsd", "s6-ucspitlsd", "s6-tlsserver", "s6-tlsclient"]
)
def test_random_command_lines_through_the_scripts(name: str) -> None:
    """The real scripts, without any TLS configuration: whatever the
    command line, they end before any network I/O, in one line."""
    module = importlib.import_module(f"trio_s6tls.programs.{PROGRAMS[name]}")
    options = [o for o in module.PROGRAM.options if "no-verify-cert" not in o.longs]

    @settings(max_examples=3, deadline=None, derandomize=True, database=None)
    @given(argv=argvs(options, name))
    def check(argv: list[str]) -> None:
        argv = [a for a in argv if "\udcff" not in a]
        result = subprocess.run(
            [program(name), *argv],
            env=tls_free_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        _check_outcome(name, result.returncode, result.stdout, result.stderr, argv)

    check()


def test_random_demo_arguments() -> None:
    from trio_s6tls._demo import main

    @settings(max_examples=50, deadline=None, derandomize=True, database=None)
    @given(argv=st.lists(VALUES, min_size=1, max_size=3))
    def check(argv: list[str]) -> None:
        if argv[0] in ("-h", "--help"):
            return
        with contextlib.redirect_stderr(io.StringIO()) as sink:
            assert main(argv) == 100
        assert sink.getvalue().startswith("trio_s6tls: usage: ")

    check()


# -- the PROXY header parser on random input ------------------------------------------------


def _v2(command: int, family: int, body: bytes) -> bytes:
    from trio_s6tls._proxy import V2_SIGNATURE

    return V2_SIGNATURE + bytes([0x20 | command, family]) + len(body).to_bytes(2, "big") + body


PROXY_INPUTS = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda kind, src, dst, sport, dport, tail: (
            f"PROXY {kind} {src} {dst} {sport} {dport}\r\n".encode() + tail
        ),
        st.sampled_from(["TCP4", "TCP6", "UNKNOWN", "UDP4", ""]),
        st.one_of(st.ip_addresses().map(str), TEXT),
        st.one_of(st.ip_addresses().map(str), TEXT),
        NUMBERS,
        NUMBERS,
        st.binary(max_size=20),
    ),
    st.builds(
        lambda command, family, body, tail: _v2(command, family, body) + tail,
        st.integers(0, 15),
        st.integers(0, 255),
        st.binary(max_size=80),
        st.binary(max_size=20),
    ),
)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(data=PROXY_INPUTS, cut=st.integers(0, 400))
def test_proxy_parser_on_random_input(data: bytes, cut: int) -> None:
    """Read as the server does (only what bytes_wanted allows): a header and
    the untouched rest, or ProxyError — nothing else, never over-reading."""
    from trio_s6tls._proxy import ProxyError, ProxyHeader, bytes_wanted, parse

    stream = data[: cut if cut < len(data) else len(data)]
    buffer = b""
    try:
        while wanted := bytes_wanted(buffer):
            assert wanted > 0
            chunk, stream = stream[:wanted], stream[wanted:]
            if not chunk:
                return  # the client closed inside the header
            buffer += chunk
        header = parse(buffer)
    except ProxyError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert isinstance(header, ProxyHeader)
    assert data.startswith(buffer)
    for address in (header.source, header.destination):
        if address is not None:
            ipaddress.ip_address(address[0])
            assert 0 <= address[1] <= 65535


# -- the rules-directory reader on random input ----------------------------------------------

NAMES = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"),
    min_size=1,
    max_size=8,
).filter(lambda name: name not in (".", ".."))
CONTENT = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda n, b: b * n, st.integers(4000, 9000), st.sampled_from([b"a", b"\n", b"\0"])),
    st.sampled_from([b"sh -c 'unterminated", b"a\0b", b"\xff\xfe", b"true\n", b" \t\r\n"]),
)
KINDS = st.sampled_from(["file", "file", "file", "dir", "fifo", "symlink-loop"])


def _make(path: Path, kind: str, content: bytes) -> None:
    if kind == "file":
        path.write_bytes(content)
    elif kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(path)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    marker=st.sampled_from(["allow", "deny", "both", "none"]),
    exec_file=st.one_of(st.none(), st.tuples(KINDS, CONTENT)),
    env_files=st.lists(st.tuples(NAMES, KINDS, CONTENT), max_size=4, unique_by=lambda e: e[0]),
    env_kind=st.sampled_from(["dir", "dir", "dir", "file", "none"]),
    address=st.one_of(st.just("127.0.0.1"), st.ip_addresses().map(str)),
)
def test_rules_reader_on_random_input(
    marker: str,
    exec_file: tuple[str, bytes] | None,
    env_files: list[tuple[str, str, bytes]],
    env_kind: str,
    address: str,
) -> None:
    """A Decision, or a Fatal with one line; never another exception, never
    a hang (FIFOs included), values bounded."""
    from trio_s6tls._errors import Fatal
    from trio_s6tls._rules import ENV_VALUE_MAX, Decision, lookup

    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp, "ip4/127.0.0.1_32")
        entry.mkdir(parents=True)
        if marker in ("allow", "both"):
            (entry / "allow").touch()
        if marker in ("deny", "both"):
            (entry / "deny").touch()
        if exec_file is not None:
            _make(entry / "exec", *exec_file)
        if env_kind == "dir":
            (entry / "env").mkdir()
            for name, kind, content in env_files:
                _make(entry / "env" / name, kind, content)
        elif env_kind == "file":
            (entry / "env").write_bytes(b"x")
        try:
            decision = lookup(tmp, address)
        except Fatal as error:
            assert error.exit_code == 111 and error.message and "\n" not in error.message
            return
    assert isinstance(decision, Decision)
    if address != "127.0.0.1":
        assert decision == Decision(False)
        return
    assert decision.allowed == (marker in ("allow", "both"))  # allow first, as s6
    for value in decision.env.values():
        assert value is None or (len(os.fsencode(value)) <= ENV_VALUE_MAX and "\0" not in value)
    if decision.argv is not None:
        assert decision.argv and all("\0" not in arg for arg in decision.argv)


def test_rules_reader_opens_without_blocking(tmp_path: Path) -> None:
    """The mode check comes from fstat on what was opened (O_NONBLOCK), so a
    FIFO is refused without waiting for a writer."""
    from trio_s6tls._errors import Fatal
    from trio_s6tls._rules import lookup

    entry = tmp_path / "ip4/127.0.0.1_32"
    (entry / "env").mkdir(parents=True)
    (entry / "allow").touch()
    os.mkfifo(entry / "env" / "WAIT")
    assert stat.S_ISFIFO(os.stat(entry / "env" / "WAIT").st_mode)
    with pytest.raises(Fatal, match="not a regular file"):
        lookup(str(tmp_path), "127.0.0.1")
