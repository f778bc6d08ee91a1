"""``s6-tcpserver … s6-tlsd prog`` served in process (issue 12): prog sees
what the real chain gives it, and the chain runs for real whenever the
inline one could not be exact, or when told so.

Which way a connection went is read from prog itself: the real chain's
s6-tlsd forks its engine before it execs prog, so prog (a shell) starts
with a child; served in process, it starts with none.

Rules as in test_tcpserver.py: loopback, port 0 and ``-1`` readiness,
bounded waits on events, no sleeps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import client_context, exchange, parse_env, program, running_server, tls_env

from trio_s6tls.testing import LoopbackPKI

#: prog: whether it has a child (the real chain's engine), then its environment
REPORT = [
    "sh",
    "-c",
    'read kids < /proc/$$/task/$$/children; echo "ENGINE_CHILD=${kids:+yes}"; env;'
    " exec cat >/dev/null",
]

#: differs from one connection (or server) to the next whichever way it runs
PER_CONNECTION = ("TCPREMOTEPORT", "TCPLOCALPORT", "ENGINE_CHILD")


def report(argv: list[str], env: dict[str, str], pki: LoopbackPKI) -> tuple[bool, dict[str, str]]:
    """One connection to ``s6-tcpserver argv``: (was the real chain run, prog's env)."""
    with running_server(argv, env) as srv:
        got = parse_env(exchange(srv.port, client_context(pki), b""))
    chained = got["ENGINE_CHILD"] == "yes"
    return chained, {k: v for k, v in got.items() if k not in PER_CONNECTION}


def chain(*server: str, tlsd: tuple[str, ...] = ()) -> list[str]:
    return ["s6-tcpserver", *server, "-H", "127.0.0.1", "0", program("s6-tlsd"), *tlsd, *REPORT]


@pytest.mark.parametrize("tlsd", [(), ("-Z",), ("-v", "0", "--")], ids=["default", "-Z", "-v0"])
def test_prog_environment_is_the_chains(pki: LoopbackPKI, tlsd: tuple[str, ...]) -> None:
    env = tls_env(pki, FID_KEEP="kept")
    inline_chained, inline_env = report(chain(tlsd=tlsd), env, pki)
    real_chained, real_env = report(chain("--no-inline-tlsd", tlsd=tlsd), env, pki)
    assert (inline_chained, real_chained) == (False, True)
    assert inline_env == real_env
    assert inline_env["SSL_PROTOCOL"] == "TLSv1.3" and inline_env["FID_KEEP"] == "kept"
    assert ("CERTFILE" in inline_env) == ("-Z" in tlsd)


def test_opt_out_by_environment(pki: LoopbackPKI) -> None:
    chained, _ = report(chain(), tls_env(pki, TRIO_S6TLS_INLINE_TLSD="0"), pki)
    assert chained


def test_rules_env_with_tls_variables_runs_the_real_chain(pki: LoopbackPKI, tmp_path: Path) -> None:
    """An access rule that sets CERTFILE changes what s6-tlsd would load:
    that connection goes through the real chain; a rule that sets
    anything else does not."""
    rules = tmp_path / "rules"
    entry = rules / "ip4/127.0.0.0_8"
    (entry / "env").mkdir(parents=True)
    (entry / "allow").touch()
    (entry / "env/WHO").write_text("loopback\n")
    chained, env = report(chain("-i", str(rules)), tls_env(pki), pki)
    assert not chained and env["WHO"] == "loopback"
    (entry / "env/CERTFILE").write_text(f"{pki.server_file}\n")  # the same: still in process
    chained, env = report(chain("-i", str(rules)), tls_env(pki), pki)
    assert not chained and "CERTFILE" not in env
    copy = tmp_path / "copy.pem"
    copy.write_bytes(Path(pki.server_file).read_bytes())
    (entry / "env/CERTFILE").write_text(f"{copy}\n")
    chained, env = report(chain("-i", str(rules)), tls_env(pki), pki)
    assert chained and env["WHO"] == "loopback" and "CERTFILE" not in env


def test_unsupported_tlsd_arguments_run_the_real_chain(pki: LoopbackPKI) -> None:
    """s6-tlsd's own option error, from s6-tlsd itself, for every connection."""
    argv = ["s6-tcpserver", "-H", "127.0.0.1", "0", program("s6-tlsd"), "--bogus", "cat"]
    with running_server(argv, tls_env(pki)) as srv:
        with pytest.raises(OSError):
            exchange(srv.port, client_context(pki), b"")
        assert srv.log is not None
        srv.wait_stderr("s6-tlsd: fatal: unrecognized option: --bogus")


def test_failed_handshake_is_reported_as_s6_tlsd_does(pki: LoopbackPKI) -> None:
    """-y without a client certificate: s6-tlsd's fatal line, in process
    as from the real chain, and prog never runs."""
    for extra in ([], ["--no-inline-tlsd"]):
        argv = ["s6-tcpserver", *extra, "-H", "127.0.0.1", "0", program("s6-tlsd"), "-y", "true"]
        with running_server(argv, tls_env(pki)) as srv:
            with pytest.raises(OSError):
                exchange(srv.port, client_context(pki), b"x")
            srv.wait_stderr("s6-tlsd: fatal: ")
