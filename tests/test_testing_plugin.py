"""The pytest plugin, met the way a user meets it: a separate test project
(pytester) with no conftest, whose tests only use the fixtures that
installing trio_s6tls provides.

Covered: every fixture (``tls_ca``, ``tls_pki``, ``tls_server_env``,
``tls_client_env``, ``ucspi_tls_server``, ``ucspi_tls_client``); the
connection options (SNI, ALPN, client certificate, TLS version, faults,
transcript); STARTTLS both ways with the SMTP examples; and cleanup of
servers, programs and handlers when a test fails or times out.

Rules: loopback only, port 0, a bound on every wait (inside the project's
tests too), no sleeps standing in for a condition.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

HELPERS = """
import os
import sys

import pytest
import trio

from trio_s6tls.testing import Faults, Transcript

PYTHON = sys.executable
EXAMPLES = {examples!r}
PIDS = {pids!r}


_unread = {{}}  # bytes received after a line, per stream


async def read_line(stream):
    data = _unread.pop(id(stream), b"")
    with trio.fail_after(10):
        while b"\\n" not in data:
            chunk = await stream.receive_some()
            assert chunk, f"EOF after {{data!r}}"
            data += chunk
    line, _, rest = data.partition(b"\\n")
    _unread[id(stream)] = rest
    return line + b"\\n"


async def read_reply(stream):
    lines = []
    while True:
        line = await read_line(stream)
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def remember_pid(name, pid):
    with open(os.path.join(PIDS, name), "w") as file:
        file.write(str(int(pid)))
"""

PASSING = """
def test_certificate_fixtures(tls_ca, tls_pki, tls_server_env, tls_client_env):
    assert set(tls_server_env) == {"KEYFILE", "CERTFILE"}
    assert set(tls_client_env) == {"CAFILE"}
    assert all(os.path.exists(path) for path in (*tls_server_env.values(), tls_client_env["CAFILE"]))
    assert tls_pki.ca is tls_ca
    tls_server_env["KEYFILE"] = "changed"  # a fresh dict per test: harmless


def test_environment_dicts_are_fresh(tls_server_env):
    assert tls_server_env["KEYFILE"] != "changed"


async def test_echo_server_and_its_environment(ucspi_tls_server):
    server = await ucspi_tls_server(["sh", "-c", 'echo "$SSL_PROTOCOL $PROTO $TCPREMOTEIP"; exec cat'])
    transcript = Transcript()
    async with server.connect(transcript=transcript) as stream:
        assert await read_line(stream) == b"TLSv1.3 TCP 127.0.0.1\\n"
        await stream.send_all(b"hello\\n")
        assert await read_line(stream) == b"hello\\n"
        await stream.send_eof()
        assert await stream.receive_some() == b""
    [record] = await server.wait_finished(1)
    assert record.prog_status == 0 and record.engine_status == 0
    assert record.env["SSL_PROTOCOL"] == "TLSv1.3"
    assert "KEYFILE" not in record.env and "CERTFILE" not in record.env
    assert transcript.sent() == b"hello\\n"
    assert transcript.ended("sent") and transcript.ended("received")


async def test_connection_options(ucspi_tls_server):
    server = await ucspi_tls_server(["true"], ["-Y", "--alpn", "h2,http/1.1"])
    async with server.connect(
        servername="localhost", alpn=["http/1.1"], client_cert=True, tls_version="1.2"
    ) as stream:
        assert stream.variables["SSL_PROTOCOL"] == "TLSv1.2"
        assert stream.variables["SSL_ALPN_PROTOCOL"] == "http/1.1"
        assert await stream.receive_some() == b""
    [record] = await server.wait_finished(1)
    assert record.env["SSL_PROTOCOL"] == "TLSv1.2"
    assert record.env["SSL_TLS_SNI_SERVERNAME"] == "localhost"
    assert record.env["SSL_ALPN_PROTOCOL"] == "http/1.1"
    assert "CN=trio_s6tls test client" in record.env["SSL_PEER_CERT_SUBJECT"]


async def test_sni_certificates(ucspi_tls_server, tls_pki):
    env = tls_pki.sni_env("mail.test", "*.web.test")
    server = await ucspi_tls_server(["sh", "-c", 'echo "$SSL_TLS_SNI_SERVERNAME"'], ["-k", "2"], env)
    for name in ("mail.test", "www.web.test"):
        async with server.connect(servername=name) as stream:
            assert await read_line(stream) == name.encode() + b"\\n"


async def test_ragged_cut_fails_an_enforcing_server(ucspi_tls_server):
    server = await ucspi_tls_server(["cat"], ["-J"])
    async with server.connect(faults=Faults(cut_after=0, after_handshake=True)) as stream:
        await stream.send_all(b"lost")  # dropped; the transport is half-closed
        [record] = await server.wait_finished(1)
    assert record.engine_status == 98


async def test_ipv6_server_and_key_log(ucspi_tls_server, tmp_path):
    keylog = tmp_path / "keys.log"
    server = await ucspi_tls_server(["sh", "-c", 'echo "$TCPREMOTEIP"'], host="::1")
    async with server.connect(keylog_file=keylog) as stream:
        assert await read_line(stream) == b"::1\\n"
    assert "CLIENT_TRAFFIC_SECRET_0" in keylog.read_text()


async def test_bad_server_options_are_a_value_error(ucspi_tls_server):
    with pytest.raises(ValueError, match="no-such-option"):
        await ucspi_tls_server(["true"], ["--no-such-option"])
    with pytest.raises(ValueError, match="workers"):
        await ucspi_tls_server(["true"], ["--workers", "2"])


async def test_tcp_options_of_s6_tlsserver(ucspi_tls_server):
    server = await ucspi_tls_server(["true"], ["-H", "-l", "here.test", "-c", "3"])
    async with server.connect() as stream:
        assert await stream.receive_some() == b""
    [record] = await server.wait_finished(1)
    assert record.env["TCPLOCALHOST"] == "here.test"
    assert "TCPREMOTEHOST" not in record.env


async def test_client_program_with_a_client_certificate(ucspi_tls_client, tls_pki):
    seen = []

    async def handler(stream):
        seen.append(stream.variables["SSL_PEER_CERT_SUBJECT"])
        await stream.send_all(b"ok\\n")

    result = await ucspi_tls_client(
        ["sh", "-c", "head -n 1 <&6"], handler, ["-y"], tls_pki.client_cert_env,
        request_client_cert=2,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok\\n"
    assert "CN=trio_s6tls test client" in seen[0]


async def test_client_program(ucspi_tls_client):
    async def handler(stream):
        await stream.send_all(b"ping\\n")
        assert await read_line(stream) == b"pong TLSv1.3\\n"

    script = 'read line <&6; echo "$line $TCPREMOTEIP"; echo "pong $SSL_PROTOCOL" >&7'
    result = await ucspi_tls_client(["sh", "-c", script], handler)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ping 127.0.0.1\\n"
    assert len(result.connections) == 1


async def test_client_program_with_faults_transcripts_and_key_log(ucspi_tls_client, tmp_path):
    async def handler(stream):
        await stream.send_all(b"x" * 3000 + b"\\n")
        assert await read_line(stream) == b"3001\\n"

    text, wire = Transcript(), Transcript()
    keylog = tmp_path / "keys.log"
    script = "head -n 1 <&6 | wc -c | tr -d ' ' >&7"
    result = await ucspi_tls_client(
        ["sh", "-c", script], handler, faults=Faults(split=100),
        transcript=text, wire_transcript=wire, keylog_file=keylog,
    )
    assert result.returncode == 0, result.stderr
    assert text.sent() == b"x" * 3000 + b"\\n" and text.received() == b"3001\\n"
    assert all(len(e.data) <= 100 for e in wire.entries if e.direction == "sent")
    assert "SERVER_TRAFFIC_SECRET_0" in keylog.read_text()


async def test_starttls_example_server(ucspi_tls_server):
    server = await ucspi_tls_server(
        [PYTHON, os.path.join(EXAMPLES, "smtp_starttls_server.py")], starttls=True
    )
    async with server.connect(starttls=True) as stream:
        assert (await read_reply(stream))[0].startswith(b"220 ")
        await stream.send_all(b"EHLO test\\r\\n")
        assert b"250-STARTTLS\\r\\n" in await read_reply(stream)
        await stream.send_all(b"STARTTLS\\r\\n")
        assert (await read_reply(stream))[0].startswith(b"220 ")
        await stream.start_tls()
        await stream.send_all(b"XTLSINFO\\r\\n")
        assert b"250-SSL_PROTOCOL=TLSv1.3\\r\\n" in await read_reply(stream)
        await stream.send_all(b"QUIT\\r\\n")
        assert (await read_reply(stream))[0].startswith(b"221 ")
    [record] = await server.wait_finished(1)
    assert record.prog_status == 0


async def test_starttls_example_client(ucspi_tls_client):
    async def handler(stream):
        await stream.send_all(b"220 test ESMTP\\r\\n")
        while True:
            line = await read_line(stream)
            verb = line.split()[0].upper()
            if verb == b"EHLO":
                extra = b"" if stream.tls_active else b"250-STARTTLS\\r\\n"
                await stream.send_all(b"250-test\\r\\n" + extra + b"250 8BITMIME\\r\\n")
            elif verb == b"STARTTLS":
                await stream.send_all(b"220 go ahead\\r\\n")
                await stream.start_tls()
            elif verb == b"QUIT":
                await stream.send_all(b"221 bye\\r\\n")
                return
            else:
                await stream.send_all(b"250 ok\\r\\n")

    result = await ucspi_tls_client(
        [PYTHON, os.path.join(EXAMPLES, "smtp_starttls_client.py")], handler, starttls=True
    )
    assert result.returncode == 0, result.stderr
    assert b"SSL_PROTOCOL=TLSv1.3" in result.stdout
"""

FAILING = """
async def test_fails_while_serving(ucspi_tls_server):
    server = await ucspi_tls_server(["sh", "-c", "echo $$; exec sleep 600"])
    async with server.connect() as stream:
        remember_pid("server_prog", await read_line(stream))
        assert False, "deliberate failure with a program running"


async def test_times_out_while_serving(ucspi_tls_server):
    server = await ucspi_tls_server(["sh", "-c", "echo $$; exec sleep 600"])
    async with server.connect() as stream:
        remember_pid("timed_out_prog", await read_line(stream))
        with trio.fail_after(0.2):
            await stream.receive_some()  # never comes


async def test_handler_fails(ucspi_tls_client):
    async def handler(stream):
        remember_pid("client_prog", await read_line(stream))
        assert False, "deliberate failure in the handler"

    await ucspi_tls_client(["sh", "-c", "echo $$ >&7; exec sleep 600"], handler)
"""


def project(pytester: pytest.Pytester, tests: str) -> Path:
    pids = pytester.mkdir("pids")
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    header = HELPERS.format(examples=str(EXAMPLES), pids=str(pids))
    pytester.makepyfile(test_app=header + textwrap.dedent(tests))
    return pids


def test_fixtures_in_a_user_project(pytester: pytest.Pytester) -> None:
    project(pytester, PASSING)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=14)


def test_failing_tests_still_clean_up(pytester: pytest.Pytester) -> None:
    pids = project(pytester, FAILING)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*deliberate failure with a program running*"])
    result.stdout.fnmatch_lines(["*deliberate failure in the handler*"])
    result.stdout.fnmatch_lines(["*TooSlowError*"])
    for name in ("server_prog", "timed_out_prog", "client_prog"):
        pid = int((pids / name).read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped: the pid is gone


def test_plugin_loads_from_the_entry_point(pytester: pytest.Pytester) -> None:
    """In a fresh interpreter, with nothing but the installed package."""
    pytester.makepyfile(
        test_env="""
        import os

        def test_server_env(tls_server_env):
            assert os.path.exists(tls_server_env["CERTFILE"])
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    listing = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures")
    listing.stdout.fnmatch_lines_random(
        [
            "tls_ca* -- *pytest_plugin.py*",
            "tls_pki* -- *pytest_plugin.py*",
            "tls_server_env -- *pytest_plugin.py*",
            "tls_client_env -- *pytest_plugin.py*",
            "ucspi_tls_server -- *pytest_plugin.py*",
            "ucspi_tls_client -- *pytest_plugin.py*",
        ]
    )


def test_plugin_import_is_light() -> None:
    """Loaded by every pytest run: it must not pull in trio or ssl."""
    code = (
        "import sys, trio_s6tls.pytest_plugin as p; "
        "heavy = {'trio', 'ssl', 'trustme'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    import subprocess

    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert output.strip() == "[]"
