"""Every long option name of C s6-networking 2.8.0.1, program by program, is
accepted by ours and means what C's does (issue 11, row 4).

The C names are written here, copied from each program's ``gol`` tables
(``src/tls/*.c``); s6-tcpclient and s6-tcpserver parse with ``subgetopt``
and have none. skalibs matches long names exactly and takes ``--name=value``
or ``--name value``.

Two checks: through the installed scripts, one command line per program
with every C long option (``--name=value`` for those that take one) then
``--help``, which the parser reaches only if it took them all; and in
process, on the option tables, that a C long name is the same option as
its C short letter, or, for the few without one, has the effect C gives it.
"""

from __future__ import annotations

import subprocess

import pytest
from support import program

from trio_s6tls.programs import PROGRAMS
from trio_s6tls.programs._arguments import tls_options
from trio_s6tls.programs._cli import Opt, parse_options

TIMEOUT = 30

#: long name -> (C's short letter or "", an argument that ours and C accept,
#: or None for a flag).
CLOSE = {
    "no-close-notify": ("s", None),
    "close-notify": ("S", None),
    "no-enforce-close-notify": ("j", None),
    "enforce-close-notify": ("J", None),
}
CLIENT_TLS = {
    **CLOSE,
    "no-client-cert": ("Y", None),
    "client-cert": ("y", None),
    "verify-cert": ("", None),
    "no-verify-cert": ("", None),
    "handshake-timeout": ("K", "5000"),
    "servername": ("k", "example.org"),
}
SERVER_TLS = {
    **CLOSE,
    "client-cert": ("Y", None),
    "mandatory-client-cert": ("y", None),
    "sni": ("", None),
    "mandatory-sni": ("", None),
    "handshake-timeout": ("K", "5000"),
    "sni-level": ("k", "1"),
}
KEEP = {"no-keep": ("z", None), "keep": ("Z", None)}
VERBOSITY = {"verbosity": ("v", "2")}
VERBOSITY_FLAGS = {
    "quiet": ("q", None),
    "normally-verbose": ("Q", None),
    "verbose": ("v", None),
}
LOOKUPS = {
    "nagle": ("d", None),
    "no-nagle": ("D", None),
    "dns": ("", None),
    "no-dns": ("H", None),
    "no-hosts": ("", None),
    "hosts": ("h", None),
    "no-ident": ("R", None),
    "ident": ("r", None),
}

C_LONG_OPTIONS: dict[str, dict[str, tuple[str, str | None]]] = {
    "s6-tlsc-io": {**CLIENT_TLS, **VERBOSITY, "notification-fd": ("d", "5")},
    "s6-tlsd-io": {**SERVER_TLS, **VERBOSITY, "notification-fd": ("d", "5")},
    "s6-tlsc": {**CLIENT_TLS, **KEEP, **VERBOSITY, "read-fd": ("6", "3"), "write-fd": ("7", "4")},
    "s6-ucspitlsc": {
        **CLIENT_TLS,
        **KEEP,
        **VERBOSITY,
        "read-fd": ("6", "3"),
        "write-fd": ("7", "4"),
    },
    "s6-tlsd": {**SERVER_TLS, **KEEP, **VERBOSITY},
    "s6-ucspitlsd": {**SERVER_TLS, **KEEP, **VERBOSITY},
    "s6-tlsclient": {
        **VERBOSITY_FLAGS,
        "ipv4": ("4", None),
        "ipv6": ("6", None),
        **LOOKUPS,
        "no-qualify": ("N", None),
        "qualify": ("n", None),
        **CLIENT_TLS,
        **KEEP,
        "timeout": ("t", "10"),
        "local-name": ("l", "client.example"),
        "connection-timeouts": ("T", "2+58"),
        "local-ip": ("i", "127.0.0.1"),
        "local-port": ("p", "0"),
    },
    "s6-tlsserver": {
        **VERBOSITY_FLAGS,
        "notify": ("1", None),
        "proxy": ("L", None),
        "envuidgid": ("U", None),
        "no-strict-resolution": ("W", None),
        "strict-resolution": ("w", None),
        **LOOKUPS,
        "no-paranoid": ("P", None),
        "paranoid": ("p", None),
        **{name: spec for name, spec in SERVER_TLS.items() if name not in ("sni", "mandatory-sni")},
        **KEEP,
        "global-max-connections": ("c", "10"),
        "local-max-connections": ("C", "5"),
        "backlog": ("b", "20"),
        "gidlist": ("G", "1,2"),
        "gid": ("g", "1"),
        "uid": ("u", "1"),
        "local-name": ("l", "server.example"),
        "banner": ("B", "hello"),
        "timeout": ("t", "1000"),
        "rules-directory": ("i", "/etc/rules"),
        "rules-file": ("x", "/etc/rules.cdb"),
    },
    "s6-tcpclient": {},
    "s6-tcpserver": {},
}


def test_the_c_lists_are_complete() -> None:
    """Every program has a list, as long as C's tables (gol_bool + gol_arg
    entries: 39 for s6-tlsserver, 32 for s6-tlsclient, as the issue
    measured)."""
    assert {name: len(longs) for name, longs in C_LONG_OPTIONS.items()} == {
        "s6-tlsc-io": 8 + 4,
        "s6-tlsd-io": 8 + 4,
        "s6-tlsc": 10 + 5,
        "s6-ucspitlsc": 10 + 5,
        "s6-tlsd": 10 + 3,
        "s6-ucspitlsd": 10 + 3,
        "s6-tlsclient": 25 + 7,
        "s6-tlsserver": 26 + 13,
        "s6-tcpclient": 0,
        "s6-tcpserver": 0,
    }
    assert set(C_LONG_OPTIONS) == set(PROGRAMS)
    assert "sni" not in C_LONG_OPTIONS["s6-tlsserver"]  # C's s6-tlsserver has none


def _options(name: str) -> list[Opt]:
    import importlib

    module = importlib.import_module(f"trio_s6tls.programs.{PROGRAMS[name]}")
    return list(module.PROGRAM.options)


@pytest.mark.parametrize("name", sorted(C_LONG_OPTIONS))
def test_every_c_long_option_is_accepted(name: str) -> None:
    argv = [
        f"--{long}" if argument is None else f"--{long}={argument}"
        for long, (_, argument) in C_LONG_OPTIONS[name].items()
    ]
    result = subprocess.run(
        [program(name), *argv, "--help"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {name} ")


@pytest.mark.parametrize("name", sorted(C_LONG_OPTIONS))
def test_a_c_long_name_is_its_short_option(name: str) -> None:
    options = _options(name)
    by_long = {long: opt for opt in options for long in opt.longs}
    by_short = {opt.short: opt for opt in options if opt.short}
    for long, (short, _) in C_LONG_OPTIONS[name].items():
        assert long in by_long, f"{name}: --{long} missing"
        if short:
            assert by_long[long] is by_short[short], f"{name}: --{long} is not -{short}"


#: C options without a short letter: the option they undo.
OPPOSITES = {"verify-cert": "no-verify-cert", "dns": "no-dns", "no-hosts": "hosts"}


@pytest.mark.parametrize("name", sorted(C_LONG_OPTIONS))
def test_a_c_long_name_without_a_letter_undoes_its_opposite(name: str) -> None:
    by_long = {long: opt for opt in _options(name) for long in opt.longs}
    for long, opposite in OPPOSITES.items():
        if long in C_LONG_OPTIONS[name]:
            mine, theirs = by_long[long], by_long[opposite]
            assert mine.dest == theirs.dest and mine.value != theirs.value, (name, long)


@pytest.mark.parametrize("name", ["s6-tlsd-io", "s6-tlsd", "s6-ucspitlsd"])
@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["--sni"], 1),
        (["--mandatory-sni"], 2),
        (["--mandatory-sni", "--sni"], 1),
        (["--sni", "--mandatory-sni"], 2),
        (["-k", "0", "--sni"], 0),  # C applies -k after the flags, whatever the order
        (["--mandatory-sni", "-k", "1"], 1),
        (["--sni-level", "2", "--sni"], 2),
    ],
)
def test_sni_flags_and_level_combine_as_in_c(name: str, argv: list[str], level: int) -> None:
    parsed = parse_options(argv, _options(name))
    assert tls_options(parsed.values).sni_level == level


@pytest.mark.parametrize("name", ["s6-tlsc", "s6-ucspitlsc", "s6-tlsc-io", "s6-tlsclient"])
def test_verify_cert_undoes_no_verify_cert(name: str) -> None:
    parsed = parse_options(["--no-verify-cert", "--verify-cert"], _options(name))
    assert tls_options(parsed.values).verify
    parsed = parse_options(["--verify-cert", "--no-verify-cert"], _options(name))
    assert not tls_options(parsed.values).verify


@pytest.mark.parametrize("name", ["s6-tlsc", "s6-ucspitlsc"])
def test_read_fd_and_write_fd_are_the_network_fds(name: str) -> None:
    parsed = parse_options(["--read-fd", "8", "--write-fd=9", "true"], _options(name))
    assert (parsed.values["network_read"], parsed.values["network_write"]) == (8, 9)
