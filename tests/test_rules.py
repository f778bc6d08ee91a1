"""Access rules: candidate keys (pure) and decisions read from a rules
directory laid out as s6 lays it out. No sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_s6tls._errors import Fatal
from trio_s6tls._rules import Decision, candidate_keys, lookup, parse_env_file


def test_candidate_keys_ipv4_most_specific_first() -> None:
    keys = candidate_keys("192.168.10.77")
    assert len(keys) == 33
    assert keys[:3] == ["ip4/192.168.10.77_32", "ip4/192.168.10.76_31", "ip4/192.168.10.76_30"]
    assert "ip4/192.168.10.0_24" in keys and "ip4/192.168.0.0_16" in keys
    assert keys[-1] == "ip4/0.0.0.0_0"


def test_candidate_keys_ipv6_and_mapped() -> None:
    keys = candidate_keys("2001:db8::1")
    assert keys[0] == "ip6/2001:0db8:0000:0000:0000:0000:0000:0001_128"
    assert keys[1] == "ip6/2001:db8::1_128"
    assert "ip6/2001:db8::_32" in keys
    assert keys[-1] == "ip6/::_0"
    assert candidate_keys("::ffff:10.1.2.3")[0] == "ip4/10.1.2.3_32"


def test_parse_env_file() -> None:
    assert parse_env_file(b"") is None
    assert parse_env_file(b"value \t\nignored\n") == "value"
    assert parse_env_file(b"a\0b") == "a\nb"
    assert parse_env_file(b"\n") == ""


def entry(root: Path, key: str, *files: str) -> Path:
    path = root / key
    path.mkdir(parents=True, exist_ok=True)
    for name in files:
        (path / name).touch()
    return path


def test_most_specific_entry_decides(tmp_path: Path) -> None:
    entry(tmp_path, "ip4/10.0.0.0_8", "allow")
    entry(tmp_path, "ip4/10.1.0.0_16", "deny")
    entry(tmp_path, "ip4/10.1.2.3_32")  # neither allow nor deny: skipped
    assert lookup(str(tmp_path), "10.9.9.9") == Decision(True, "ip4/10.0.0.0_8", {}, None)
    assert lookup(str(tmp_path), "10.1.2.3") == Decision(False, "ip4/10.1.0.0_16")
    assert lookup(str(tmp_path), "192.0.2.1") == Decision(False)  # no match: deny


def test_allow_wins_over_deny_in_one_entry_as_in_s6(tmp_path: Path) -> None:
    # s6's directory backend tests allow first, and s6-accessrules-cdb-from-fs
    # compiles such an entry to allow: the directory and its CDB agree.
    entry(tmp_path, "ip4/0.0.0.0_0", "allow", "deny")
    assert lookup(str(tmp_path), "127.0.0.1").allowed


def test_entry_that_is_a_file_makes_the_rules_unusable(tmp_path: Path) -> None:
    # s6: any error but a missing or unreadable file (here ENOTDIR) is an
    # error, not "no entry"; the C s6-tcpserver-access dies of it (111).
    (tmp_path / "ip4").mkdir()
    (tmp_path / "ip4" / "127.0.0.1_32").write_text("not a directory\n")
    with pytest.raises(Fatal) as raised:
        lookup(str(tmp_path), "127.0.0.1")
    assert raised.value.exit_code == 111
    assert "ip4/127.0.0.1_32" in raised.value.message
    assert lookup(str(tmp_path), "10.0.0.1") == Decision(False)  # other clients: no entry


def test_allow_with_env_and_exec(tmp_path: Path) -> None:
    path = entry(tmp_path, "ip6/::1_128", "allow")
    (path / "env").mkdir()
    (path / "env" / "GREETING").write_bytes(b"hi there\nmore\n")
    (path / "env" / "GONE").write_bytes(b"")
    (path / "env" / ".hidden").write_bytes(b"x")
    (path / "exec").write_text("sh -c 'echo \"a b\"'\n")
    decision = lookup(str(tmp_path), "::1")
    assert decision.allowed and decision.key == "ip6/::1_128"
    assert decision.env == {"GREETING": "hi there", "GONE": None}
    assert decision.argv == ["sh", "-c", 'echo "a b"']


def test_malformed_exec_is_fatal(tmp_path: Path) -> None:
    path = entry(tmp_path, "ip4/127.0.0.1_32", "allow")
    (path / "exec").write_text("sh -c 'unterminated\n")
    with pytest.raises(Fatal):
        lookup(str(tmp_path), "127.0.0.1")
