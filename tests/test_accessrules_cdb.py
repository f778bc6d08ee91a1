"""Access rules in CDB form (``-x``): records decoded as s6 decodes them, and
the same rules deciding alike as a directory (``trio_s6tls._rules``), as the
CDB that the C ``s6-accessrules-cdb-from-fs`` compiles from it, and as the
C ``s6-tcpserver-access -x`` on that CDB.

Rules: no network at all; every subprocess has a timeout; hypothesis runs
derandomized with a bounded number of examples and no database. Tests that
need the C tools skip without them, and fail under ``CI=true``.
"""

from __future__ import annotations

import io
import ipaddress
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cdblib
import pytest
from c_tools import MISSING_REASON, require_c_tools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_s6tls import _rules
from trio_s6tls._accessrules_cdb import (
    decode_env,
    decode_exec,
    decode_record,
    lookup,
    lookup_keys,
    reversedns_keys,
)
from trio_s6tls._errors import EXIT_SYSTEM, Fatal
from trio_s6tls._rules import Decision

TIMEOUT = 30


def c_program(name: str) -> str:
    """A C program beside the ones c_tools checks; skip or (CI) fail without it."""
    path = require_c_tools()(name)
    if not os.access(path, os.X_OK):
        detail = f"{MISSING_REASON} ({path} missing)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {detail}", pytrace=False)
        pytest.skip(detail)
    return path


def compile_rules(rules_dir: Path, cdb_path: Path) -> None:
    subprocess.run(
        [c_program("s6-accessrules-cdb-from-fs"), str(cdb_path), str(rules_dir)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )


def write_cdb(path: Path, records: Mapping[bytes, bytes]) -> None:
    """A well-formed CDB holding ``records``, made without the C tools."""
    buffer = io.BytesIO()
    writer = cdblib.Writer(buffer)
    for key, value in records.items():
        writer.put(key, value)
    writer.finalize()
    path.write_bytes(buffer.getvalue())


def allow_record(env: bytes = b"", exec_: bytes = b"") -> bytes:
    return b"A" + len(env).to_bytes(2, "big") + env + len(exec_).to_bytes(2, "big") + exec_


# -- records, pure ---------------------------------------------------------------------


def test_decode_deny_allow_and_skipped_records() -> None:
    assert decode_record(b"D") == Decision(False)
    assert decode_record(b"Dwhatever") == Decision(False)  # s6 looks at the first byte only
    assert decode_record(allow_record()) == Decision(True, None, {}, None)
    assert decode_record(allow_record(b"A=1\0GONE\0", b"prog 'a b'\n")) == Decision(
        True, None, {"A": "1", "GONE": None}, ["prog", "a b"]
    )
    assert decode_record(b"X\0\0\0\0") is None  # neither A nor D: not a decision


@pytest.mark.parametrize(
    "record",
    [
        b"",  # empty
        b"A\0\0\0",  # shorter than 5
        b"A\0\x05ab\0\0",  # env length past the end
        b"A\x10\x01" + b"x" * 4097 + b"\0\0",  # env longer than 4096
        b"A\0\0\0\x03ab",  # exec length past the end
        b"A\0\0\0\x01ab",  # trailing bytes
        b"A" + b"\0" * (5 + 2 * 4096),  # longer than the largest record
    ],
)
def test_invalid_records(record: bytes) -> None:
    with pytest.raises(ValueError):
        decode_record(record)


def test_decode_env() -> None:
    assert decode_env(b"") == {}
    assert decode_env(b"A=x=y\0B=\0C\0A=later\0") == {"A": "later", "B": "", "C": None}
    assert decode_env(b"V=a\nb\0") == {"V": "a\nb"}  # envdir's NULs, made newlines
    assert decode_env(b"V=\xff\0") == {"V": "\udcff"}  # bytes kept, as the directory form
    for bad in (b"A=1", b"=1\0", b"\0"):
        with pytest.raises(ValueError):
            decode_env(bad)


def test_decode_exec() -> None:
    assert decode_exec(b"  \n") is None
    assert decode_exec(b'sh -c "echo hi"') == ["sh", "-c", "echo hi"]
    for bad in (b"a\0b", b"sh -c 'open"):
        with pytest.raises(ValueError):
            decode_exec(bad)


def test_reversedns_keys() -> None:
    assert reversedns_keys("a.example.com.") == [
        "reversedns/a.example.com",
        "reversedns/example.com",
        "reversedns/com",
        "reversedns/@",
    ]
    assert reversedns_keys("host") == ["reversedns/host", "reversedns/@"]
    assert reversedns_keys(".") == ["reversedns/@"]
    assert reversedns_keys("a..b") == [
        "reversedns/a..b",
        "reversedns/.b",
        "reversedns/b",
        "reversedns/@",
    ]
    with pytest.raises(ValueError):
        reversedns_keys("")


# -- files -----------------------------------------------------------------------------


def test_lookup_most_specific_first(tmp_path: Path) -> None:
    path = tmp_path / "rules.cdb"
    write_cdb(
        path,
        {
            b"ip4/10.0.0.0_8": allow_record(b"NET=ten\0"),
            b"ip4/10.1.0.0_16": b"D",
            b"ip4/10.1.2.0_24": b"?",  # not a decision: skipped
            b"ip6/::1_128": allow_record(b"", b"/bin/true"),
            b"reversedns/example.com": b"D",
        },
    )
    assert lookup(str(path), "10.9.9.9") == Decision(True, "ip4/10.0.0.0_8", {"NET": "ten"})
    assert lookup(str(path), "10.1.2.3") == Decision(False, "ip4/10.1.0.0_16")
    assert lookup(str(path), "::1") == Decision(True, "ip6/::1_128", {}, ["/bin/true"])
    assert lookup(str(path), "192.0.2.1") == Decision(False)
    assert lookup_keys(str(path), ["ip4/192.0.2.1_32"]) is None
    assert lookup_keys(str(path), reversedns_keys("www.example.com.")) == Decision(
        False, "reversedns/example.com"
    )


def _no_empty_slot(path: Path) -> None:
    # One record, and the hash table it is in has one slot, full: a probe for
    # any other key in that table never meets an empty slot.
    key, value = b"ip4/127.0.0.1_32", b"D"
    record = struct.pack("<LL", len(key), len(value)) + key + value
    table_position = 2048 + len(record)
    table_number = cdblib.djb_hash(key) % 256
    header = b"".join(
        struct.pack("<LL", table_position, 1 if n == table_number else 0) for n in range(256)
    )
    slot = struct.pack("<LL", cdblib.djb_hash(key), 2048)
    path.write_bytes(header + record + slot)


def _pointer_out_of_file(path: Path) -> None:
    write_cdb(path, {b"ip4/127.0.0.1_32": b"D"})
    data = bytearray(path.read_bytes())
    for n in range(256):  # point every table past the end of the file
        struct.pack_into("<LL", data, 8 * n, len(data) + 8, 4)
    path.write_bytes(bytes(data))


MALFORMED = {
    "missing": lambda path: None,
    "empty": lambda path: path.write_bytes(b""),
    "short": lambda path: path.write_bytes(b"\x01" * 100),
    "directory": lambda path: path.mkdir(),
    "tables outside the file": _pointer_out_of_file,
    "record too short": lambda path: write_cdb(path, {b"ip4/127.0.0.1_32": b"A\0"}),
    "empty record": lambda path: write_cdb(path, {b"ip4/127.0.0.0_8": b""}),
    "bad exec length": lambda path: write_cdb(path, {b"ip4/0.0.0.0_0": b"A\0\0\0\x09x"}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_is_fatal_111(tmp_path: Path, case: str) -> None:
    path = tmp_path / "rules.cdb"
    MALFORMED[case](path)
    with pytest.raises(Fatal) as raised:
        lookup(str(path), "127.0.0.1")
    assert raised.value.exit_code == EXIT_SYSTEM
    assert str(path) in raised.value.message


def test_table_without_empty_slot_is_refused_not_probed_forever(tmp_path: Path) -> None:
    # pure-cdb's probe loop stops only at an empty slot; no cdbmake writes a
    # full table, so such a file is refused (C's bounded probe finds nothing).
    path = tmp_path / "rules.cdb"
    _no_empty_slot(path)
    with pytest.raises(Fatal) as raised:
        lookup(str(path), "127.0.0.2")
    assert raised.value.exit_code == EXIT_SYSTEM
    assert "empty slot" in raised.value.message


def test_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "rules.cdb"
    os.mkfifo(path)
    with pytest.raises(Fatal) as raised:
        lookup(str(path), "127.0.0.1")  # would block in open() without O_NONBLOCK
    assert "not a regular file" in raised.value.message


def test_reader_is_imported_lazily() -> None:
    code = (
        "import sys, trio_s6tls._accessrules_cdb\n"
        "assert 'cdblib' not in sys.modules, 'pure-cdb imported at start-up'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)


# -- against C: the exit code of s6-tcpserver-access for malformed files --------------


def run_c_access(
    cdb_path: Path, address: str, extra_env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """C s6-tcpserver-access -H -x CDB for a client at ``address``; prog prints its
    environment NUL-separated."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PROTO": "TCP",
        "TCPLOCALIP": "127.0.0.1",
        "TCPLOCALPORT": "4000",
        "TCPREMOTEIP": address,
        "TCPREMOTEPORT": "5000",
        **(extra_env or {}),
    }
    return subprocess.run(
        [c_program("s6-tcpserver-access"), "-H", "-x", str(cdb_path), "/usr/bin/env", "-0"],
        env=env,
        capture_output=True,
        timeout=TIMEOUT,
    )


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_c_exits_111_too(tmp_path: Path, case: str) -> None:
    path = tmp_path / "rules.cdb"
    MALFORMED[case](path)
    assert run_c_access(path, "127.0.0.1").returncode == 111


def test_unknown_record_kind_skipped_like_c(tmp_path: Path) -> None:
    path = tmp_path / "rules.cdb"
    write_cdb(path, {b"ip4/127.0.0.1_32": b"?", b"ip4/127.0.0.0_8": b"D"})
    assert lookup(str(path), "127.0.0.1") == Decision(False, "ip4/127.0.0.0_8")
    write_cdb(path, {b"ip4/127.0.0.1_32": b"?", b"ip4/127.0.0.0_8": allow_record()})
    assert lookup(str(path), "127.0.0.1").allowed
    assert run_c_access(path, "127.0.0.1").returncode == 0


# -- the same rules as a directory, compiled by C, and read by C ------------------------


@dataclass(frozen=True)
class Entry:
    key: str
    kind: str  # "allow", "deny", or "none" (a directory with neither)
    env: dict[str, bytes] = field(default_factory=dict)
    exec_: bytes | None = None


def write_rules(root: Path, entries: list[Entry]) -> None:
    for entry in entries:
        path = root / entry.key
        path.mkdir(parents=True, exist_ok=True)
        if entry.kind != "none":
            (path / entry.kind).touch()
        if entry.env:
            (path / "env").mkdir(exist_ok=True)
            for name, content in entry.env.items():
                (path / "env" / name).write_bytes(content)
        if entry.exec_ is not None:
            (path / "exec").write_bytes(entry.exec_)


V4_SEEDS = ["10.1.2.3", "127.0.0.1", "192.0.2.77"]
V6_SEEDS = ["2001:db8:1:2::5", "::1", "fe80::1:2", "2001:db8::1:0:0:1"]
SEEDS = [ipaddress.ip_address(seed) for seed in V4_SEEDS + V6_SEEDS]


def key_for(address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int) -> str:
    # The directory names a user writes: the compressed form (the C key's form).
    network = ipaddress.ip_network((address, prefix), strict=False)
    family = "ip4" if network.version == 4 else "ip6"
    return f"{family}/{network.network_address.compressed}_{prefix}"


@st.composite
def keys(draw: st.DrawFn) -> str:
    seed = draw(st.sampled_from(SEEDS))
    return key_for(seed, draw(st.integers(0, seed.max_prefixlen)))


@st.composite
def addresses(draw: st.DrawFn) -> str:
    """Near a seed (so entries match at various prefixes), sometimes anywhere."""
    if draw(st.integers(0, 9)) == 0:
        family = draw(st.sampled_from([ipaddress.IPv4Address, ipaddress.IPv6Address]))
        value = draw(st.integers(0, 2 ** (32 if family is ipaddress.IPv4Address else 128) - 1))
        address = family(value)
    else:
        seed = draw(st.sampled_from(SEEDS))
        low = draw(st.integers(0, seed.max_prefixlen))
        address = type(seed)(int(seed) ^ draw(st.integers(0, 2**low - 1)))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = ipaddress.IPv6Address(int(address) ^ (1 << 100))  # C reads these as ip6
    return str(address)


ENV_BYTES = st.lists(
    st.sampled_from([b"a", b"b", b" ", b"\t", b"\r", b"\n", b"\0", b"=", b"\xc3\xa9", b"\xff"]),
    max_size=8,
).map(b"".join)
ENV_NAMES = st.sampled_from(["A", "B", "UNSET_ME", "EMPTY", ".hidden", "X=Y"])
WEIRD_EXEC = st.text(alphabet="ab '\"\\\n\t#{}", max_size=12).map(str.encode)


@st.composite
def rulesets(draw: st.DrawFn, *, runnable_exec: bool) -> list[Entry]:
    """Entries at distinct keys. With ``runnable_exec`` an ``exec`` is a
    command C can run (it prints its environment and a marker), else any
    short text a shell lexer may choke on."""
    chosen = draw(st.lists(keys(), min_size=1, max_size=8, unique=True))
    entries = []
    for index, key in enumerate(chosen):
        kind = draw(st.sampled_from(["allow", "allow", "deny", "none"]))
        env = draw(st.dictionaries(ENV_NAMES, ENV_BYTES, max_size=4))
        exec_ = None
        if draw(st.booleans()):
            exec_ = (
                f"/usr/bin/env -0 S6_EXEC_MARK={index}\n".encode()
                if runnable_exec
                else draw(WEIRD_EXEC)
            )
        entries.append(Entry(key, kind, env, exec_))
    return entries


def outcome(
    read: Callable[[str, str], Decision], path: str, address: str
) -> Decision | tuple[str, int]:
    try:
        return read(path, address)
    except Fatal as error:
        return ("fatal", error.exit_code)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(entries=rulesets(runnable_exec=False), probes=st.lists(addresses(), min_size=1, max_size=8))
def test_cdb_decides_as_the_directory(entries: list[Entry], probes: list[str]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "rules"
        root.mkdir()
        write_rules(root, entries)
        cdb_path = Path(scratch) / "rules.cdb"
        compile_rules(root, cdb_path)
        for address in probes + [
            str(ipaddress.ip_address(e.key[4:].split("_")[0])) for e in entries
        ]:
            assert outcome(lookup, str(cdb_path), address) == outcome(
                _rules.lookup, str(root), address
            ), address


def c_decision(
    cdb_path: Path, address: str, base: Mapping[str, str]
) -> tuple[bool, dict[str, str], str | None]:
    """What C s6-tcpserver-access decides: allowed, prog's environment (the
    variables of ``base`` and the rules' names), and the exec marker."""
    result = run_c_access(cdb_path, address, base)
    assert result.returncode in (0, 1), result
    if result.returncode == 1:
        return False, {}, None
    env = dict(
        entry.decode("utf-8", "surrogateescape").partition("=")[::2]
        for entry in result.stdout.split(b"\0")
        if entry
    )
    marker = env.pop("S6_EXEC_MARK", None)
    return True, env, marker


BASE_ENV = {"A": "base-a", "B": "base-b", "UNSET_ME": "base-unset", "EMPTY": "base-empty"}
RULE_NAMES = {"A", "B", "UNSET_ME", "EMPTY"}


def expected_from(decision: Decision) -> tuple[bool, dict[str, str], str | None]:
    if not decision.allowed:
        return False, {}, None
    env = dict(BASE_ENV)
    _apply(env, decision.env)
    marker = None
    if decision.argv is not None:
        assert decision.argv[:2] == ["/usr/bin/env", "-0"], decision.argv
        marker = decision.argv[2].partition("=")[2]
    return True, env, marker


def _apply(env: dict[str, str], changes: Mapping[str, str | None]) -> None:
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(entries=rulesets(runnable_exec=True), probes=st.lists(addresses(), min_size=1, max_size=5))
def test_cdb_decides_as_c_s6_tcpserver_access(entries: list[Entry], probes: list[str]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "rules"
        root.mkdir()
        write_rules(root, entries)
        cdb_path = Path(scratch) / "rules.cdb"
        compile_rules(root, cdb_path)
        for address in probes:
            allowed, env, marker = c_decision(cdb_path, address, BASE_ENV)
            c_view = (allowed, {k: v for k, v in env.items() if k in RULE_NAMES}, marker)
            assert expected_from(lookup(str(cdb_path), address)) == c_view, address


def test_fixed_ruleset_against_c_and_directory(tmp_path: Path) -> None:
    """A hand-written ruleset with every feature, checked three ways."""
    root = tmp_path / "rules"
    root.mkdir()
    write_rules(
        root,
        [
            Entry(
                "ip4/127.0.0.1_32",
                "allow",
                {
                    "A": b"one  \t\nsecond line",  # first line, trailing blanks cut
                    "B": b"x\0y",  # NUL read as a newline
                    "UNSET_ME": b"",  # empty file: unset
                    "EMPTY": b"\n",  # empty first line: set, empty
                    ".hidden": b"never",
                },
            ),
            Entry("ip4/127.0.0.0_8", "allow", {}, b"/usr/bin/env -0 S6_EXEC_MARK=lo\n"),
            Entry("ip4/10.0.0.0_8", "deny"),
            Entry("ip4/10.1.0.0_16", "allow", {"A": b"ten-one"}),
            Entry("ip4/10.1.2.0_24", "none"),  # neither: skipped
            Entry("ip6/::1_128", "allow", {"B": b"six"}),
            Entry("ip6/2001:db8::_32", "deny"),
            Entry("ip6/2001:db8:1::_48", "allow", {}, b"/usr/bin/env -0 S6_EXEC_MARK=db8\n"),
            Entry("ip6/fe80::_10", "allow"),
        ],
    )
    cdb_path = tmp_path / "rules.cdb"
    compile_rules(root, cdb_path)
    expectations = {
        "127.0.0.1": ("ip4/127.0.0.1_32", True),
        "127.1.2.3": ("ip4/127.0.0.0_8", True),
        "10.9.9.9": ("ip4/10.0.0.0_8", False),
        "10.1.2.3": ("ip4/10.1.0.0_16", True),
        "::1": ("ip6/::1_128", True),
        "2001:db8:5::1": ("ip6/2001:db8::_32", False),
        "2001:db8:1:ffff::9": ("ip6/2001:db8:1::_48", True),
        "fe80::1234": ("ip6/fe80::_10", True),
        "192.0.2.1": (None, False),
        "2001:db9::1": (None, False),
    }
    for address, (key, allowed) in expectations.items():
        decision = lookup(str(cdb_path), address)
        assert (decision.key, decision.allowed) == (key, allowed), address
        assert decision == _rules.lookup(str(root), address), address
        c_allowed, env, marker = c_decision(cdb_path, address, BASE_ENV)
        assert expected_from(decision) == (
            c_allowed,
            {k: v for k, v in env.items() if k in RULE_NAMES},
            marker,
        ), address
    decision = lookup(str(cdb_path), "127.0.0.1")
    assert decision.env == {"A": "one", "B": "x\ny", "UNSET_ME": None, "EMPTY": ""}


def test_allow_and_deny_in_one_entry_compile_to_allow(tmp_path: Path) -> None:
    # s6-accessrules-cdb-from-fs (and s6's directory backend) test allow
    # first: an entry with both files allows. The CDB holds an A record.
    root = tmp_path / "rules"
    (root / "ip4" / "127.0.0.1_32").mkdir(parents=True)
    (root / "ip4" / "127.0.0.1_32" / "allow").touch()
    (root / "ip4" / "127.0.0.1_32" / "deny").touch()
    cdb_path = tmp_path / "rules.cdb"
    compile_rules(root, cdb_path)
    assert lookup(str(cdb_path), "127.0.0.1") == Decision(True, "ip4/127.0.0.1_32")
    assert run_c_access(cdb_path, "127.0.0.1").returncode == 0


def test_exploded_ipv6_names_match_here_not_in_c(tmp_path: Path) -> None:
    # The directory form also tries the fully written IPv6 form; C formats
    # keys compressed only. Ours decides alike as directory and as CDB.
    root = tmp_path / "rules"
    key = "ip6/0000:0000:0000:0000:0000:0000:0000:0001_128"
    (root / key).mkdir(parents=True)
    (root / key / "allow").touch()
    cdb_path = tmp_path / "rules.cdb"
    compile_rules(root, cdb_path)
    assert lookup(str(cdb_path), "::1") == _rules.lookup(str(root), "::1") == Decision(True, key)
    assert run_c_access(cdb_path, "::1").returncode == 1
