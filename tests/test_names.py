"""Name lookups as the C tools make them (``trio_s6tls._names``): the hosts
file read with s6-dns' grammar, PTR and A/AAAA answers from a DNS server,
and the same lookups by the C s6-dns tools (s6-dnsname, s6-dnsip*) and the C
s6-tcpserver-access / s6-tcpclient.

Rules: no network but loopback. The DNS server is a small UDP responder
run here, on 127.0.0.1 and a free port for our functions, and on
127.53.0.1 port 53 for the C tools (s6-dns only speaks to port 53; binding
it needs root). The C tools are always given ``DNSCACHEIP`` and, for
``-h``, run in a private mount namespace where a test hosts file and
resolv.conf are bind-mounted over ``/etc``: they never reach the machine's
configured resolver. Every socket, thread and process wait is bounded;
hypothesis runs derandomized with few examples. Tests that need the C tools
(or root for port 53 and the mount namespace) skip without them, and fail
under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from c_tools import MISSING_REASON, require_c_tools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import program

from trio_s6tls._names import (
    NameLookupError,
    default_nameservers,
    format_address,
    forward_addresses,
    normalize_name,
    parse_hosts,
    qualified_names,
    reverse_lookup,
    reverse_name,
    search_rules,
)

TIMEOUT = 20.0
C_DNS_HOST = "127.53.0.1"


# -- a DNS server -------------------------------------------------------------------------


class TinyDNS:
    """Answers A, AAAA and PTR questions from ``records`` (name → type →
    rdata texts): a known name without the type is NODATA, an unknown one
    NXDOMAIN; names in ``rcodes`` get that rcode, names in ``silent`` no
    answer at all."""

    def __init__(self, host: str, port: int) -> None:
        self.records: dict[str, dict[str, list[str]]] = {}
        self.rcodes: dict[str, int] = {}
        self.silent: set[str] = set()
        self.questions: list[tuple[str, str]] = []
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((host, port))
        self.address = self._socket.getsockname()
        # close() wakes the thread through this pipe: no timeout to re-check a flag.
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def add(self, name: str, rdtype: str, *texts: str) -> None:
        self.records.setdefault(name.lower(), {}).setdefault(rdtype, []).extend(texts)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(TIMEOUT)
        self._socket.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _serve(self) -> None:
        while True:
            ready, _, _ = select.select([self._socket, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data, peer = self._socket.recvfrom(4096)
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            question = query.question[0]
            name = question.name.to_text().lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            self.questions.append((name, rdtype))
            if name in self.silent:
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.RA
            if name in self.rcodes:
                response.set_rcode(self.rcodes[name])
            elif name in self.records:
                texts = self.records[name].get(rdtype)
                if texts:
                    response.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, *texts))
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            # In record order: dnspython shuffles by default.
            self._socket.sendto(response.to_wire(want_shuffle=False), peer)


def populate(server: TinyDNS) -> None:
    """The zone every test uses."""
    server.add("1.0.0.127.in-addr.arpa.", "PTR", "Loop.Example.COM.", "second.example.com.")
    server.add("2.0.0.127.in-addr.arpa.", "PTR")  # known name, no PTR: NODATA
    server.records["2.0.0.127.in-addr.arpa."] = {"TXT": ['"x"']}
    server.add(
        "3.0.0.127.in-addr.arpa.",
        "PTR",
        "x" * 60 + "." + "y" * 60 + "." + "z" * 60 + "." + "w" * 60 + ".",
    )  # 244 + dot
    server.add("4.0.0.127.in-addr.arpa.", "PTR", ".")
    server.rcodes["5.0.0.127.in-addr.arpa."] = dns.rcode.SERVFAIL
    server.silent.add("6.0.0.127.in-addr.arpa.")
    ip6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa."
    server.add(ip6, "PTR", "six.example.com.")
    server.add("both.example.com.", "A", "192.0.2.1", "192.0.2.2")
    server.add("both.example.com.", "AAAA", "2001:db8::1", "::ffff:10.0.0.1")
    server.add("four.example.com.", "A", "192.0.2.4")
    server.add("six.example.com.", "AAAA", "2001:db8::6")
    server.records["nodata.example.com."] = {"TXT": ['"x"']}
    server.rcodes["servfail.example.com."] = dns.rcode.SERVFAIL
    server.silent.add("silent.example.com.")
    server.add("hosted.example.com.", "A", "192.0.2.99")  # also in the test hosts file
    server.add("9.0.0.127.in-addr.arpa.", "PTR", "back.example.com.")  # resolves back
    server.add("back.example.com.", "A", "127.0.0.9")


@pytest.fixture(scope="module")
def dns_server() -> Iterator[TinyDNS]:
    server = TinyDNS("127.0.0.1", 0)
    populate(server)
    try:
        yield server
    finally:
        server.close()


def ask(server: TinyDNS) -> dict[str, object]:
    return {"nameservers": [server.address[0]], "port": server.address[1], "timeout": 2.0}


# -- pure -----------------------------------------------------------------------------------


def test_format_address_as_skalibs() -> None:
    assert format_address(bytes([10, 0, 0, 1])) == "10.0.0.1"
    cases = {
        "::": "::",
        "::1": "::1",
        "1::": "1::",
        "2001:db8::1": "2001:db8::1",
        "2001:db8:0:1:0:0:0:1": "2001:db8:0:1::1",
        "1:0:0:1:0:0:0:1": "1:0:0:1::1",  # the longest run
        "1:0:0:1:0:0:1:1": "1::1:0:0:1:1",  # the first of two as long
        "1:0:1:1:1:1:1:1": "1:0:1:1:1:1:1:1",  # one zero group: not shortened
        "::ffff:10.0.0.1": "::ffff:a00:1",  # no dotted quad
    }
    import ipaddress

    for text, formatted in cases.items():
        assert format_address(ipaddress.IPv6Address(text).packed) == formatted, text


def test_normalize_name() -> None:
    assert normalize_name("WWW.Example.com") == b"www.example.com."
    assert normalize_name("..a..b.") == b"a.b."
    assert normalize_name("") == b"."
    with pytest.raises(ValueError):
        normalize_name("x" * 64 + ".com")


def test_parse_hosts_names_and_aliases() -> None:
    hosts = parse_hosts(
        b"# comment\n"
        b"127.0.0.1 # a comment right after the address\n"
        b"127.0.0.1\tLocalHost localhost.localdomain lh\n"
        b"  10.0.0.1 first alias\n"
        b"10.0.0.1 again first\n"
        b"::1 localhost ip6-localhost\n"
        b"fe80::1%eth0 linklocal\n"
        b"010.000.000.002 zeros\n"
        b"192.0.2.9\n"
        b"10.9.9.9 fqdn.example. _underscore\n"
    )
    lo4, lo6 = bytes([127, 0, 0, 1]), bytes(15) + b"\x01"
    assert hosts.names_by_address[lo4] == [b"localhost.", b"localhost.localdomain", b"lh"]
    assert hosts.names_by_address[bytes([10, 0, 0, 1])] == [
        b"first.",
        b"alias",
        b"again.",
        b"first",
    ]
    assert hosts.names_by_address[lo6] == [b"localhost.", b"ip6-localhost"]
    assert hosts.names_by_address[bytes([10, 0, 0, 2])] == [b"zeros."]  # C reads leading zeros
    assert hosts.names_by_address[bytes([192, 0, 2, 9])] == []
    assert hosts.names_by_address[bytes([10, 9, 9, 9])] == [b"fqdn.example.", b"_underscore"]
    assert hosts.fqdn[b"localhost."] == [lo4, lo6]
    assert hosts.aliases[b"first"] == [bytes([10, 0, 0, 1])]  # an alias on one line...
    assert hosts.fqdn[b"first."] == [bytes([10, 0, 0, 1])]  # ...a first name on another
    assert not any(b"linklocal" in n for n in hosts.fqdn)  # a %zone line is ignored


def test_parse_hosts_c_quirks() -> None:
    # s6dns_hosts_compile's automaton goes back to its NAME state after a
    # blank: every further blank (a double space, a trailing tab or CR)
    # ends an empty alias.
    hosts = parse_hosts(b"127.0.0.1 a  b\t\r\n")
    assert hosts.names_by_address[bytes([127, 0, 0, 1])] == [b"a.", b"", b"b"]
    assert hosts.aliases[b""] == [bytes([127, 0, 0, 1])]
    # ...and a '#' after a name is an error: the whole file is refused.
    with pytest.raises(ValueError):
        parse_hosts(b"127.0.0.1 localhost # comment\n")


def test_parse_hosts_stops_at_a_nul() -> None:
    assert list(parse_hosts(b"10.0.0.1 a\n\0 garbage !!!").fqdn) == [b"a."]


@pytest.mark.parametrize(
    "content",
    [
        b"10.0.0.1 3com\n",  # a name starting with a digit
        b"10.0.0.1 a#b\n",  # '#' inside a name
        b"10.0.0.1 caf\xc3\xa9\n",  # not ASCII
        b"localhost 10.0.0.1\n",  # a name where the address goes
        b"10.0.0.1 -dash\n",
        b"10.0.0.300 x\n",
        b"fe80::zz%eth0 x\n",
    ],
)
def test_parse_hosts_refuses_what_s6_dns_refuses(content: bytes) -> None:
    with pytest.raises(ValueError):
        parse_hosts(content)


def test_default_nameservers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "search example.com\nnameserver 192.0.2.53\nnameserver\t2001:db8::53\n"
        "nameserver x\nnameserver 192.0.2.54 # comment\n"
    )
    assert default_nameservers(str(conf), {}) == ["192.0.2.53", "2001:db8::53", "192.0.2.54"]
    assert default_nameservers(str(conf), {"DNSCACHEIP": "127.0.0.9, ::1"}) == ["127.0.0.9", "::1"]
    assert default_nameservers(str(tmp_path / "none"), {}) == ["::1"]
    assert default_nameservers(str(conf), {"DNSCACHEIP": "junk"}) == [
        "192.0.2.53",
        "2001:db8::53",
        "192.0.2.54",
    ]


def test_lookups_need_no_dnspython() -> None:
    """dnspython is only the tests' (TinyDNS): a lookup neither imports it
    nor pays for it at start-up."""
    code = (
        "import sys\nfrom trio_s6tls import _names\n"
        "assert _names.reverse_name('127.0.0.1', use_hosts=False) is None\n"
        "assert not [m for m in sys.modules if m == 'dns' or m.startswith('dns.')]\n"
    )
    env = {**os.environ, "DNSCACHEIP": "127.0.0.2"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT, env=env)


# -- our lookups, against the DNS server and a hosts file ------------------------------------


HOSTS = (
    b"127.0.0.1 hostloop loop-alias\n"
    b"192.0.2.50 hosted.example.com hosted\n"
    b"192.0.2.51 onlyfour\n"
    b"2001:db8::51 onlyfour onlysix-alias\n"
    b"2001:db8::52 onlysix\n"
)


@pytest.fixture
def hosts_file(tmp_path: Path) -> str:
    path = tmp_path / "hosts"
    path.write_bytes(HOSTS)
    return str(path)


@pytest.mark.parametrize(
    ("ip", "name"),
    [
        ("127.0.0.1", "loop.example.com."),  # first PTR, lower-cased, final dot
        ("127.0.0.2", ""),  # answered, no PTR
        ("127.0.0.3", "x" * 60 + "." + "y" * 60 + "." + "z" * 60 + "." + "w" * 60 + "."),
        ("127.0.0.4", "."),
        ("127.0.0.5", None),  # SERVFAIL
        ("127.0.0.6", None),  # no answer: timeout
        ("127.0.0.7", None),  # NXDOMAIN
        ("::1", "six.example.com."),
    ],
)
def test_reverse_name_from_dns(
    dns_server: TinyDNS, ip: str, name: str | None, tmp_path: Path
) -> None:
    options = {**ask(dns_server), "timeout": 0.5 if ip == "127.0.0.6" else 2.0}
    assert reverse_name(ip, use_hosts=False, **options) == name
    # without the file, -h falls back to the DNS
    missing = str(tmp_path / "no-hosts")
    assert reverse_name(ip, use_hosts=True, hosts_path=missing, **options) == name


def test_reverse_name_too_long_for_c_is_empty(dns_server: TinyDNS) -> None:
    label = "a" * 63
    name = ".".join([label, label, label, "b" * 61]) + "."  # 253 characters and the dot
    dns_server.add("8.0.0.127.in-addr.arpa.", "PTR", name)
    assert reverse_name("127.0.0.8", use_hosts=False, **ask(dns_server)) == ""


def test_reverse_name_from_hosts(dns_server: TinyDNS, hosts_file: str) -> None:
    options = {**ask(dns_server), "hosts_path": hosts_file}
    assert reverse_name("127.0.0.1", use_hosts=True, **options) == "hostloop."
    assert reverse_name("127.0.0.1", use_hosts=False, **options) == "loop.example.com."
    assert reverse_name("2001:db8::51", use_hosts=True, **options) == "onlyfour."
    before = len(dns_server.questions)
    reverse_name("192.0.2.50", use_hosts=True, **options)
    assert len(dns_server.questions) == before  # found in the file: no query
    assert reverse_name("::1", use_hosts=True, **options) == "six.example.com."


def test_paranoid_reverse_name_must_resolve_back(dns_server: TinyDNS, hosts_file: str) -> None:
    """s6-tcpserver-access -p: a name from the DNS counts only if its A
    (AAAA) records include the address; one from the hosts file is trusted."""
    dns_server.add("9.0.0.127.in-addr.arpa.", "PTR", "Back.Example.COM.")
    dns_server.add("back.example.com.", "A", "192.0.2.9", "127.0.0.9")
    dns_server.add("10.0.0.127.in-addr.arpa.", "PTR", "four.example.com.")  # A: 192.0.2.4

    def paranoid(ip: str, **extra: Any) -> str | None:
        options = {"use_hosts": False, **ask(dns_server), **extra}
        return reverse_name(ip, paranoid=True, **options)

    assert paranoid("127.0.0.9") == "back.example.com."
    assert paranoid("127.0.0.10") is None
    assert reverse_name("127.0.0.10", use_hosts=False, **ask(dns_server)) == "four.example.com."
    assert paranoid("127.0.0.1") is None  # loop.example.com. has no A record
    assert paranoid("127.0.0.1", use_hosts=True, hosts_path=hosts_file) == "hostloop."
    assert paranoid("::1") is None  # six.example.com.'s AAAA is another address


def test_at_once_runs_side_by_side_and_joins() -> None:
    """Both lookups at once (each waits for the other here), results in
    order, no thread left behind, an error of either raised."""
    from trio_s6tls._dns import at_once

    both = threading.Barrier(2, timeout=TIMEOUT)
    before = threading.active_count()
    assert at_once([lambda: both.wait() * 0 + 1, lambda: both.wait() * 0 + 2]) == [1, 2]
    assert threading.active_count() == before

    def fails() -> int:
        raise NameLookupError("unable to read /etc/hosts: x")

    with pytest.raises(NameLookupError):
        at_once([fails, lambda: 2])
    assert threading.active_count() == before


def test_truncated_answer_is_asked_again_over_tcp() -> None:
    """A UDP answer with TC set: the question goes again over TCP (as s6-dns
    does), whose answer counts."""
    with contextlib.ExitStack() as stack:
        tcp = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        tcp.settimeout(TIMEOUT)
        udp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        udp.bind(("127.0.0.1", tcp.getsockname()[1]))
        udp.settimeout(TIMEOUT)

        def serve() -> None:
            data, peer = udp.recvfrom(4096)
            truncated = dns.message.make_response(dns.message.from_wire(data))
            truncated.flags |= dns.flags.TC
            udp.sendto(truncated.to_wire(), peer)
            connection, _ = tcp.accept()
            with connection:
                connection.settimeout(TIMEOUT)
                length = int.from_bytes(connection.recv(2), "big")
                query = dns.message.from_wire(connection.recv(length))
                response = dns.message.make_response(query)
                response.answer.append(
                    dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.77")
                )
                wire = response.to_wire()
                connection.sendall(len(wire).to_bytes(2, "big") + wire)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        options = {"nameservers": ["127.0.0.1"], "port": udp.getsockname()[1], "timeout": TIMEOUT}
        got = forward_addresses("big.example.com", use_hosts=False, families="4", **options)
        thread.join(TIMEOUT)
    assert got == ["192.0.2.77"]


def test_no_server_there_fails_at_once() -> None:
    """A server address where nothing listens: the ICMP error ends the
    lookup at once (s6-dns' connected UDP), not the timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options: dict[str, Any] = {"nameservers": ["127.0.0.1"], "port": port, "timeout": TIMEOUT}
    with pytest.raises(NameLookupError) as raised:
        forward_addresses("example.com", use_hosts=False, **options)
    assert raised.value.message == "unable to resolve example.com: no available DNS server"
    assert not raised.value.timed_out
    assert reverse_name("127.0.0.1", use_hosts=False, **options) is None


@pytest.mark.parametrize(
    ("name", "families", "addresses"),
    [
        ("both.example.com", "46", ["2001:db8::1", "::ffff:a00:1", "192.0.2.1", "192.0.2.2"]),
        ("BOTH.example.com.", "4", ["192.0.2.1", "192.0.2.2"]),
        ("both..example.com", "6", ["2001:db8::1", "::ffff:a00:1"]),
        ("four.example.com", "46", ["192.0.2.4"]),
        ("six.example.com", "46", ["2001:db8::6"]),
    ],
)
def test_forward_addresses_from_dns(
    dns_server: TinyDNS, name: str, families: str, addresses: list[str]
) -> None:
    got = forward_addresses(name, use_hosts=False, families=families, **ask(dns_server))
    assert got == addresses


@pytest.mark.parametrize(
    ("name", "families", "reason"),
    [
        ("missing.example.com", "46", "no such domain"),
        ("nodata.example.com", "4", "no address record"),
        ("servfail.example.com", "46", "server failure"),
        ("six.example.com", "4", "no address record"),
        ("silent.example.com", "4", "query timed out"),
    ],
)
def test_forward_addresses_failures(
    dns_server: TinyDNS, name: str, families: str, reason: str
) -> None:
    options = {**ask(dns_server), "timeout": 0.5}
    with pytest.raises(NameLookupError) as raised:
        forward_addresses(name, use_hosts=False, families=families, **options)
    assert raised.value.exit_code == 111
    assert raised.value.message == f"unable to resolve {name}: {reason}"
    assert raised.value.timed_out == (reason == "query timed out")


def test_forward_addresses_from_hosts(dns_server: TinyDNS, hosts_file: str) -> None:
    options = {**ask(dns_server), "hosts_path": hosts_file}

    def forward(name: str, families: str = "46", use_hosts: bool = True) -> list[str]:
        return forward_addresses(name, use_hosts=use_hosts, families=families, **options)

    assert forward("hosted.example.com") == ["192.0.2.50"]
    assert forward("hosted.example.com", use_hosts=False) == ["192.0.2.99"]
    assert forward("OnlyFour") == ["192.0.2.51", "2001:db8::51"]  # IPv4 first from the file
    assert forward("onlyfour", "6") == ["2001:db8::51"]
    assert forward("onlysix", "6") == ["2001:db8::52"]
    # Both families, no IPv4 line: s6-dns finds nothing in the file and asks the DNS.
    with pytest.raises(NameLookupError, match="no such domain"):
        forward("onlysix")
    # An alias is not looked up this way (only with C's -n): DNS again.
    with pytest.raises(NameLookupError, match="no such domain"):
        forward("loop-alias")


def test_unusable_hosts_file_is_an_error(tmp_path: Path, dns_server: TinyDNS) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"10.0.0.1 3com\n")
    with pytest.raises(NameLookupError, match="unable to parse"):
        reverse_name("10.0.0.1", use_hosts=True, hosts_path=str(path), **ask(dns_server))
    directory = tmp_path / "hosts.d"
    directory.mkdir()  # not readable as a file
    with pytest.raises(NameLookupError, match="unable to read"):
        forward_addresses("x", use_hosts=True, hosts_path=str(directory), **ask(dns_server))


# -- against the C tools ---------------------------------------------------------------------


def c_program(name: str) -> str:
    path = require_c_tools()(name)
    if not os.access(path, os.X_OK):
        _unavailable(f"{MISSING_REASON} ({path} missing)")
    return path


def _unavailable(detail: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {detail}", pytrace=False)
    pytest.skip(detail)


@pytest.fixture(scope="module")
def c_dns() -> Iterator[TinyDNS]:
    """The same zone on port 53, where s6-dns looks."""
    try:
        server = TinyDNS(C_DNS_HOST, 53)
    except OSError as error:
        _unavailable(f"cannot serve DNS on {C_DNS_HOST}:53 for the C tools: {error}")
    populate(server)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def etc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resolv.conf naming the test server, for the C tools' namespace."""
    directory = tmp_path_factory.mktemp("etc")
    (directory / "resolv.conf").write_text(f"nameserver {C_DNS_HOST}\n")
    (directory / "hosts").write_bytes(HOSTS)
    return directory


def run_c(
    argv: Sequence[str], etc: Path, hosts: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``argv`` with DNSCACHEIP on the test server, and in a private mount
    namespace where ``hosts`` (default: none at all) and the test
    resolv.conf replace the machine's."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        _unavailable("the C comparisons need root and unshare(1) for a private /etc/hosts")
    hosts_path = hosts if hosts is not None else etc / "empty-hosts"
    if hosts is None:
        hosts_path.write_bytes(b"")
    script = (
        'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"'
    )
    full_env = {"PATH": "/usr/bin:/bin", "DNSCACHEIP": C_DNS_HOST, **(env or {})}
    result = subprocess.run(
        [
            unshare,
            "--mount",
            "sh",
            "-c",
            script,
            "sh",
            str(hosts_path),
            str(etc / "resolv.conf"),
            *argv,
        ],
        env=full_env,
        capture_output=True,
        timeout=TIMEOUT,
    )
    if b"mount:" in result.stderr or b"unshare:" in result.stderr:
        _unavailable(f"no private mount namespace here: {result.stderr!r}")
    return result


def c_dnsname(
    ip: str, etc: Path, *, use_hosts: bool, hosts: Path | None = None
) -> tuple[int, list[str]]:
    argv = [c_program("s6-dnsname"), "-t", "1500", "-h" if use_hosts else "-H", ip]
    result = run_c(argv, etc, hosts)
    # one name a line (an empty alias is an empty line)
    return result.returncode, result.stdout.decode("utf-8", "surrogateescape").split("\n")[:-1]


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.0.7", "::1"])
def test_reverse_name_as_c_s6_dnsname(
    ip: str, c_dns: TinyDNS, dns_server: TinyDNS, etc: Path
) -> None:
    code, names = c_dnsname(ip, etc, use_hosts=False)
    ours = reverse_name(ip, use_hosts=False, **ask(dns_server))
    if ours is None:
        assert code == 2, (code, names)  # s6-dnsname: the query failed
    else:
        assert code == 0 and names[0] == ours, (code, names, ours)


def c_access_env(
    ip: str, etc: Path, *, flags: Sequence[str] = (), hosts: Path | None = None
) -> dict[str, str]:
    argv = [
        c_program("s6-tcpserver-access"),
        "-t",
        "1500",
        "-l",
        "local.name",
        *flags,
        "/usr/bin/env",
        "-0",
    ]
    env = {
        "PROTO": "TCP",
        "TCPLOCALIP": "127.0.0.1",
        "TCPLOCALPORT": "1",
        "TCPREMOTEIP": ip,
        "TCPREMOTEPORT": "2",
    }
    result = run_c(argv, etc, hosts, env)
    assert result.returncode == 0, result
    return dict(
        entry.decode("utf-8", "surrogateescape").partition("=")[::2]
        for entry in result.stdout.split(b"\0")
        if entry
    )


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
        "127.0.0.7",
        "::1",
    ],
)
def test_reverse_name_as_c_s6_tcpserver_access(
    ip: str, c_dns: TinyDNS, dns_server: TinyDNS, etc: Path
) -> None:
    env = c_access_env(ip, etc)
    ours = reverse_name(ip, use_hosts=False, **{**ask(dns_server), "timeout": 0.5})
    # s6-tcpserver-access exports no empty name
    assert env.get("TCPREMOTEHOST") == (ours or None), (env, ours)
    assert env["TCPLOCALHOST"] == "local.name"


def c_access_status(ip: str, etc: Path, flags: Sequence[str]) -> int:
    """s6-tcpserver-access's exit status for a client at ``ip``: 0 when it
    runs prog (``true``), else its own refusal."""
    argv = [c_program("s6-tcpserver-access"), "-t", "1500", "-l", "here", *flags, "/bin/true"]
    env = {
        "PROTO": "TCP",
        "TCPLOCALIP": "127.0.0.1",
        "TCPLOCALPORT": "1",
        "TCPREMOTEIP": ip,
        "TCPREMOTEPORT": "2",
    }
    return run_c(argv, etc, None, env).returncode


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.7",
        "127.0.0.9",
        "::1",
    ],
)
def test_strict_paranoid_lookup_fails_as_c(
    ip: str, c_dns: TinyDNS, dns_server: TinyDNS, etc: Path
) -> None:
    """-w -p: s6-tcpserver-access refuses the client (its exit status) when
    a lookup it needs fails, and only then; reverse_lookup tells the same
    cases apart, with the same status. (.6, the silent one, is the timeout:
    99, too slow to compare here; -w alone never refuses.)"""
    strict = c_access_status(ip, etc, ["-w", "-p"])
    found = reverse_lookup(
        ip, use_hosts=False, paranoid=True, **{**ask(dns_server), "timeout": 1.5}
    )
    assert found.exit_code == strict, (found, strict)
    assert (found.failure is None) == (strict == 0)
    assert c_access_status(ip, etc, ["-w"]) == 0
    if ip == "127.0.0.9":
        assert found.name == "back.example.com."


def test_reverse_name_from_hosts_as_c(
    c_dns: TinyDNS, dns_server: TinyDNS, etc: Path, hosts_file: str
) -> None:
    for ip in ("127.0.0.1", "2001:db8::51", "192.0.2.51", "::1"):
        ours = reverse_name(ip, use_hosts=True, hosts_path=hosts_file, **ask(dns_server))
        assert (
            c_access_env(ip, etc, flags=["-h"], hosts=Path(hosts_file)).get("TCPREMOTEHOST") == ours
        ), ip
        code, names = c_dnsname(ip, etc, use_hosts=True, hosts=Path(hosts_file))
        assert code == 0 and names[0] == ours, (ip, names)


def test_s6_tcpclient_exports_an_empty_name_for_nodata(c_dns: TinyDNS, etc: Path) -> None:
    # The "" of reverse_name: s6-tcpclient sets TCPREMOTEHOST to it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.2", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        result = run_c(
            [
                c_program("s6-tcpclient"),
                "-t",
                "3",
                "-l",
                "here",
                "127.0.0.2",
                str(port),
                "/usr/bin/env",
                "-0",
            ],
            etc,
        )
    assert result.returncode == 0, result
    env = dict(e.decode().partition("=")[::2] for e in result.stdout.split(b"\0") if e)
    assert env["TCPREMOTEHOST"] == ""


RESOLV_CONFS = [
    b"search Example.com b.test.\ndomain d.test e.test\nnameserver 127.0.0.2\nsearch  x.y\r\n",
    b"domain only.test\n",
    b"search a.test\tb.test  c.test\nsearch last.test",  # no newline at the end
    b"searchx.test\nsearch\n#search c.test\ndomain\tz.test\n",
    b"nameserver 127.0.0.2\n",
]


@pytest.mark.parametrize("content", RESOLV_CONFS)
@pytest.mark.parametrize("dnsqualify", [None, "a.b  c.", ""])
def test_qualified_names_as_c_s6_dnsqualify(
    content: bytes, dnsqualify: str | None, tmp_path: Path
) -> None:
    (tmp_path / "resolv.conf").write_bytes(content)
    env = {} if dnsqualify is None else {"DNSQUALIFY": dnsqualify}
    for name in ("foo", "Foo.Bar", "foo."):
        result = run_c([c_program("s6-dnsqualify"), name], tmp_path, env=env)
        assert result.returncode == 0, result
        rules = search_rules(str(tmp_path / "resolv.conf"), env)
        ours = [candidate.decode() for candidate in qualified_names(name, rules)]
        assert result.stdout.decode().lower().split() == ours, (name, rules)


def c_dnsip(
    name: str,
    families: str,
    etc: Path,
    *,
    use_hosts: bool,
    hosts: Path | None = None,
    qualify: str | None = None,
) -> tuple[int, list[str]]:
    """s6-dnsip*'s answer; ``qualify``: with -q, that $DNSQUALIFY."""
    program = {"46": "s6-dnsip", "4": "s6-dnsip4", "6": "s6-dnsip6"}[families]
    flags = ["-t", "1500", "-h" if use_hosts else "-H", *(["-q"] if qualify is not None else [])]
    env = {"DNSQUALIFY": qualify} if qualify is not None else None
    result = run_c([c_program(program), *flags, name], etc, hosts, env)
    return result.returncode, result.stdout.decode().split()


def ours_forward(name: str, families: str, server: TinyDNS, **options: object) -> list[str] | None:
    try:
        return forward_addresses(
            name, families=families, **{**ask(server), "timeout": 0.5, **options}
        )
    except NameLookupError:
        return None


@pytest.mark.parametrize(
    "name",
    [
        "both.example.com",
        "BOTH.example.com.",
        "four.example.com",
        "six.example.com",
        "missing.example.com",
        "nodata.example.com",
    ],
)
@pytest.mark.parametrize("families", ["46", "4", "6"])
def test_forward_addresses_as_c_s6_dnsip(
    name: str, families: str, c_dns: TinyDNS, dns_server: TinyDNS, etc: Path
) -> None:
    code, addresses = c_dnsip(name, families, etc, use_hosts=False)
    ours = ours_forward(name, families, dns_server, use_hosts=False)
    if ours is None:
        assert code in (1, 2, 111) and not addresses, (code, addresses)
    else:
        assert (code, addresses) == (0, ours)


@pytest.mark.parametrize(
    "name", ["hosted.example.com", "onlyfour", "onlysix", "loop-alias", "hostloop"]
)
@pytest.mark.parametrize("families", ["46", "4", "6"])
def test_forward_addresses_from_hosts_as_c(
    name: str, families: str, c_dns: TinyDNS, dns_server: TinyDNS, etc: Path, hosts_file: str
) -> None:
    code, addresses = c_dnsip(name, families, etc, use_hosts=True, hosts=Path(hosts_file))
    ours = ours_forward(name, families, dns_server, use_hosts=True, hosts_path=hosts_file)
    assert (addresses if code == 0 else None) == ours, (code, addresses, ours)


QUALIFY = "nothing.test example.com"


@pytest.mark.parametrize(
    "name",
    ["both", "four", "six", "nodata", "servfail", "nothing", "both.example.com.", "hosted"],
)
@pytest.mark.parametrize("families", ["46", "4", "6"])
def test_qualified_forward_addresses_as_c_s6_dnsip(
    name: str, families: str, c_dns: TinyDNS, dns_server: TinyDNS, etc: Path
) -> None:
    """-n (s6-dnsip -q): each suffix of the search list in turn."""
    code, addresses = c_dnsip(name, families, etc, use_hosts=False, qualify=QUALIFY)
    rules = search_rules(environ={"DNSQUALIFY": QUALIFY})
    ours = ours_forward(name, families, dns_server, use_hosts=False, qualify=True, rules=rules)
    assert (addresses if code == 0 else None) == ours, (code, addresses, ours)


@pytest.mark.parametrize("name", ["hosted", "onlyfour", "onlysix", "loop-alias", "hostloop"])
@pytest.mark.parametrize("families", ["46", "4", "6"])
def test_qualified_forward_addresses_from_hosts_as_c(
    name: str, families: str, c_dns: TinyDNS, dns_server: TinyDNS, etc: Path, hosts_file: str
) -> None:
    qualify = "example.com"
    code, addresses = c_dnsip(
        name, families, etc, use_hosts=True, hosts=Path(hosts_file), qualify=qualify
    )
    rules = search_rules(environ={"DNSQUALIFY": qualify})
    ours = ours_forward(
        name, families, dns_server, use_hosts=True, hosts_path=hosts_file, qualify=True, rules=rules
    )
    assert (addresses if code == 0 else None) == ours, (code, addresses, ours)


@pytest.mark.parametrize("flags", [["-n"], ["-N"], ["-n", "-h"]])
def test_tcpclient_qualify_as_c(flags: list[str], c_dns: TinyDNS, etc: Path) -> None:
    """s6-tcpclient -n: host is qualified with the search list ($DNSQUALIFY
    here), C's and ours alike; -N (the default) takes it as it is."""
    results = []
    with socket.create_server(("127.0.0.9", 0)) as listener:  # back.example.com
        port = str(listener.getsockname()[1])
        for tool in (c_program("s6-tcpclient"), program("s6-tcpclient")):
            argv = [tool, "-t", "3", "-l", "here", *flags, "back", port]
            result = run_c(
                [*argv, "/bin/sh", "-c", 'echo "$TCPREMOTEIP"'], etc, env={"DNSQUALIFY": QUALIFY}
            )
            results.append((result.returncode, result.stdout))
    expected = (0, b"127.0.0.9\n") if "-n" in flags else (111, b"")
    assert results == [expected, expected], results


# Hosts files made of lines the grammar cares about (mostly well formed,
# sometimes not), read by both.
_ADDRESSES = [b"10.0.0.1", b"127.0.0.1", b"::1", b"2001:db8::7", b"fe80::1%lo", b"010.0.0.1"]
_NAMES = [b"alpha", b"Beta", b"g.example", b"h.example.", b"_u", b"ALPHA", b"3com", b"-x", b"a#b"]
_LINE = st.tuples(
    st.sampled_from([b"", b"", b" ", b"\t"]),
    st.sampled_from(_ADDRESSES),
    st.lists(
        st.tuples(st.sampled_from([b" ", b" ", b"\t", b"  "]), st.sampled_from(_NAMES)),
        max_size=3,
    ),
    st.sampled_from([b"", b"", b"", b" ", b"\t", b"\r", b" # c", b"#c"]),
).map(lambda p: p[0] + p[1] + b"".join(blank + name for blank, name in p[2]) + p[3] + b"\n")
HOSTS_CONTENT = st.lists(
    st.one_of(_LINE, _LINE, _LINE, st.sampled_from([b"# comment\n", b"\n", b"  \n"])),
    max_size=5,
).map(b"".join)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(content=HOSTS_CONTENT)
def test_hosts_grammar_as_c(content: bytes, c_dns: TinyDNS) -> None:
    """Random hosts files: where ours refuses the file C does too, and what
    ours finds (the names of 10.0.0.1, the IPv4 addresses of a few names)
    C finds too."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "resolv.conf").write_text(f"nameserver {C_DNS_HOST}\n")
        hosts = root / "hosts"
        hosts.write_bytes(content)
        try:
            parsed = parse_hosts(content)
        except ValueError:
            parsed = None
        code, names = c_dnsname("10.0.0.1", root, use_hosts=True, hosts=hosts)
        if parsed is None:
            assert code == 111, (content, code, names)
            return
        expected = [n.decode() for n in parsed.names_by_address.get(bytes([10, 0, 0, 1]), [])]
        if expected:
            assert (code, names) == (0, expected), content
        for name in ("alpha", "beta", "g.example", "h.example"):
            ours = [
                format_address(a) for a in parsed.fqdn.get(normalize_name(name), []) if len(a) == 4
            ]
            if ours:
                assert c_dnsip(name, "4", root, use_hosts=True, hosts=hosts) == (0, ours), (
                    content,
                    name,
                )
