"""Name lookups as the C tools make them with s6-dns (``-h``, the default, ``-H``).

Theory of operation. The C s6-tcpclient and s6-tcpserver-access do not use
the C library's resolver: they ask the DNS servers themselves (s6-dns), and
read ``/etc/hosts`` only when given ``-h``. ``-H`` means no lookup at all,
so it never reaches this module. What they get, and so what this module
returns:

- **Reverse** (:func:`reverse_name`, for ``TCPREMOTEHOST``/``TCPLOCALHOST``):
  with ``use_hosts``, the first name ``/etc/hosts`` gives the address, and
  no DNS query when there is one; else the first PTR record of the answer.
  A name from the DNS is lower-cased and ends with a dot
  (``host.example.com.``); so does the first name of an ``/etc/hosts``
  line (s6-dns takes it as fully qualified), an alias does not. A server
  that answers without a PTR record, or a name too long for C's 255-byte
  buffer, gives ``""`` (s6-tcpclient then exports it empty,
  s6-tcpserver-access unsets it); no answer at all (no such domain, a
  server failure, a timeout) gives ``None``.
- **Forward** (:func:`forward_addresses`, for s6-tcpclient's host): the
  name is taken as fully qualified (no search list: C's default ``-N``),
  lower-cased, empty labels dropped. With ``use_hosts`` the addresses of
  the *first name* of ``/etc/hosts`` lines (aliases are not looked up this
  way) in file order, IPv4 before IPv6, and only when the name has an IPv4
  entry if both families are wanted (s6-dns returns nothing there when the
  IPv4 part is empty, so the DNS is asked instead). From the DNS: the AAAA
  records, then the A records, both asked at once. No address at all is a
  :class:`NameLookupError` (exit 111, as s6-tcpclient's ``unable to
  resolve``).

``/etc/hosts`` is read with s6-dns' own grammar (:func:`parse_hosts`, the
automaton of s6dns_hosts_compile.c transcribed): a line is an address and
names; a name starts with a letter or ``_``; an address with a ``%zone``
makes the line ignored; ``#`` starts a comment at the start of a line or
right after the address, but *after a name it is an error*; each blank
after a name but the first adds an empty alias. (The C code does this;
the grammar notes beside it describe a state it never enters.) Any error
makes the whole file unusable: a :class:`NameLookupError`, as C's ``init
DNS`` failure.

The DNS is asked as s6-dns' engine asks it (:func:`_ask`): over a
connected UDP socket, so that a server that is not there fails at once
(ICMP) and the next one is tried; each server in turn, in rounds of 3, 11
and 45 seconds; TCP after a truncated answer. The messages are built and
read here (the bits of RFC 1035 a lookup needs): no dependency, and
nothing slow to import on the way. Every lookup is bounded by
``timeout`` seconds (C waits as long as ``-t`` says, forever by default).
When all servers fail: ``no available DNS server``, as s6-dns says. Where
``nameservers`` is not given they come from ``$DNSCACHEIP``, else the
``nameserver`` lines of ``/etc/resolv.conf``, else ``::1``, as s6-dns
finds them. All functions block: call them from a thread
(``trio.to_thread.run_sync``) or before the event loop starts.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ._errors import EXIT_SYSTEM, Fatal, describe_os_error

HOSTS_PATH = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"
DEFAULT_TIMEOUT = 10.0
#: s6-tcpclient tries at most this many of the addresses it gets.
MAX_ADDRESSES = 16
#: s6-dns asks at most this many servers.
MAX_SERVERS = 16


class NameLookupError(Fatal):
    """A lookup that gave nothing usable. ``timed_out`` tells a timeout
    apart (s6-tcpserver-access ``-w`` exits 99 for it, 111 otherwise)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(EXIT_SYSTEM, message)
        self.timed_out = timed_out


# -- /etc/hosts, with s6-dns' grammar ----------------------------------------------------

# s6dns_hosts_compile's character classes and automaton, transcribed:
# classes 0 NUL, 1 blank, 2 '#', 3 newline, 4 '-', 5 '.', 6 ':', 7 digit,
# 8 letter or '_', 9 other, 10 '%'. States 0 START, 1 COMMENT, 2 IP,
# 3 IPDONE, 4 NAME, 5 NAMES; 0x0a END, 0x0b error. Actions: 0x10 keep the
# character, 0x20 the address is complete, 0x40 a name is complete, 0x80
# the next names are aliases.
_CLASSES = bytes(
    ord(c) - 0x30  # the C table's digits, ':' standing for 10
    for c in "0999999991311199999999999999999919929:99999994597777777777699999988888888888"
    "8888888888888889999898888888888888888888888888899999"
)
_TABLE = (
    (0x0A, 0x00, 0x01, 0x00, 0x0B, 0x0B, 0x12, 0x12, 0x12, 0x0B, 0x0B),
    (0x0A, 0x01, 0x01, 0x00, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01),
    (0x2A, 0x23, 0x0B, 0x20, 0x0B, 0x12, 0x12, 0x12, 0x12, 0x0B, 0x21),
    (0x0A, 0x03, 0x01, 0x00, 0x0B, 0x0B, 0x0B, 0x0B, 0x14, 0x0B, 0x0B),
    (0x4A, 0xC4, 0x0B, 0x40, 0x14, 0x14, 0x0B, 0x14, 0x14, 0x0B, 0x0B),
    (0x0A, 0x05, 0x01, 0x00, 0x0B, 0x0B, 0x0B, 0x0B, 0x14, 0x0B, 0x0B),
)


@dataclass
class Hosts:
    """``/etc/hosts`` as s6-dns compiles it. Names are lower-cased bytes;
    a line's first name gets a final dot (``fqdn``), the others not
    (``aliases``). Addresses are packed (4 or 16 bytes)."""

    names_by_address: dict[bytes, list[bytes]] = field(default_factory=dict)
    fqdn: dict[bytes, list[bytes]] = field(default_factory=dict)
    aliases: dict[bytes, list[bytes]] = field(default_factory=dict)


def _ip4_scan(text: bytes) -> bytes | None:
    # skalibs' ip4_scan: four decimal numbers up to 255 (leading zeros
    # allowed), trailing characters ignored.
    parts = []
    position = 0
    for index in range(4):
        start = position
        while position < len(text) and 0x30 <= text[position] <= 0x39:
            position += 1
        if position == start or int(text[start:position]) > 255:
            return None
        parts.append(int(text[start:position]))
        if index < 3:
            if position >= len(text) or text[position] != 0x2E:
                return None
            position += 1
    return bytes(parts)


def _ip6_scan(text: bytes) -> bytes | None:
    try:
        return ipaddress.IPv6Address(text.decode("ascii")).packed
    except ValueError:
        return None


def parse_hosts(content: bytes) -> Hosts:
    """``content`` read as s6-dns reads ``/etc/hosts``, quirks included
    (see the module's docstring). Pure. ValueError where s6-dns gives up on
    the whole file (EILSEQ)."""
    hosts = Hosts()
    state = 0
    token = bytearray()
    aliases_now = False
    address: bytes | None = None
    for byte in content + b"\0":  # s6-dns stops at a NUL as at the end
        kind = _CLASSES[byte] if byte < 0x80 else 9
        action = _TABLE[state][kind]
        state = action & 0x0F
        if action & 0x10:
            token.append(byte)
        if action & 0x20:
            text = bytes(token)
            token.clear()
            if state == 0x01:  # an address with a %zone: the line is ignored
                if _ip6_scan(text) is None:
                    raise ValueError(f"invalid address {text!r} in hosts file")
                continue
            address = _ip6_scan(text) or _ip4_scan(text)
            if address is None:
                raise ValueError(f"invalid address {text!r} in hosts file")
            hosts.names_by_address.setdefault(address, [])
            aliases_now = False
        if action & 0x40:
            name = bytes(token).lower()
            token.clear()
            assert address is not None  # the automaton reads an address first
            table = hosts.aliases if aliases_now else hosts.fqdn
            if not aliases_now and not name.endswith(b"."):
                name += b"."
            names = hosts.names_by_address[address]
            if name not in names:
                names.append(name)
            addresses = table.setdefault(name, [])
            if address not in addresses:
                addresses.append(address)
        if action & 0x80:
            aliases_now = True
        if state >= 0x0A:
            break
    if state > 0x0A:
        raise ValueError("syntax error in hosts file")
    return hosts


def read_hosts(path: str) -> Hosts | None:
    """The hosts file at ``path``, ``None`` if there is none. Raises
    :class:`NameLookupError` when it cannot be read or parsed."""
    try:
        with open(path, "rb") as file:
            content = file.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise NameLookupError(f"unable to read {path}: {describe_os_error(error)}") from None
    try:
        return parse_hosts(content)
    except ValueError as error:
        raise NameLookupError(f"unable to parse {path}: {error}") from None


# -- names and addresses as C writes them ------------------------------------------------


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip.split("%", 1)[0]).packed


def format_address(packed: bytes) -> str:
    """An address as skalibs writes it: IPv4 dotted, IPv6 in hexadecimal
    groups with the longest run of two or more zero groups as ``::`` (an
    IPv4-mapped address too: ``::ffff:a00:1``)."""
    if len(packed) == 4:
        return ".".join(map(str, packed))
    groups = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    best_start, best_length, start = -1, 0, -1
    for index, group in enumerate([*groups, 1]):
        if group == 0 and start < 0:
            start = index
        elif group != 0 and start >= 0:
            if index - start > best_length:
                best_start, best_length = start, index - start
            start = -1
    if best_length < 2:
        return ":".join(f"{group:x}" for group in groups)
    head = ":".join(f"{group:x}" for group in groups[:best_start])
    tail = ":".join(f"{group:x}" for group in groups[best_start + best_length :])
    return f"{head}::{tail}"


def normalize_name(name: str) -> bytes:
    """A name as s6-dns reads it for a query: lower-cased (ASCII), empty
    labels dropped, a final dot added. ValueError for a label over 63 bytes
    or a name over 255."""
    labels = [label for label in os.fsencode(name).split(b".") if label]
    if any(len(label) > 63 for label in labels):
        raise ValueError("label longer than 63 bytes")
    text = b".".join(labels).lower() + b"."
    if len(text) > 254:
        raise ValueError("name longer than 255 bytes")
    return text


def _c_name_text(labels: Sequence[bytes]) -> str:
    # s6dns_domain_tostring: the labels as they are, lower-cased, a final
    # dot; longer than its 255-byte buffer allows gives an empty string.
    text = b"".join(label.lower() + b"." for label in labels) or b"."
    if len(text) > 253:
        return ""
    return text.decode("utf-8", "surrogateescape")


# -- DNS -------------------------------------------------------------------------------------


def default_nameservers(
    resolv_conf: str = RESOLV_CONF, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The servers s6-dns asks: ``$DNSCACHEIP`` (addresses separated by
    ``,;`` or blanks), else the ``nameserver`` lines of ``resolv_conf``,
    else ``::1``; at most :data:`MAX_SERVERS`."""
    environ = os.environ if environ is None else environ
    servers: list[str] = []
    listed = environ.get("DNSCACHEIP")
    if listed is not None:
        for word in listed.replace(",", " ").replace(";", " ").split():
            try:
                servers.append(format_address(_packed(word)))
            except ValueError:
                break  # ip46_scanlist stops at the first unreadable address
    if not servers:
        try:
            with open(resolv_conf, "rb") as file:
                lines = file.read(4095).split(b"\n")
        except FileNotFoundError:
            lines = []
        except OSError as error:
            raise NameLookupError(
                f"unable to read {resolv_conf}: {describe_os_error(error)}"
            ) from None
        for line in lines:
            if len(line) > 13 and line.startswith(b"nameserver") and line[10:11] in (b" ", b"\t"):
                words = line[10:].split()
                try:
                    servers.append(format_address(_packed(words[0].decode("ascii"))))
                except (ValueError, UnicodeDecodeError):
                    pass
    return servers[:MAX_SERVERS] or ["::1"]


#: s6-dns' waits for a UDP answer, one round over the servers each: 1, 3,
#: 11 and 45 seconds, the first skipped when recursion is asked (always here).
UDP_WAITS = (3.0, 11.0, 45.0)
#: ... and for a TCP answer (after a truncated UDP one), one round.
TCP_WAIT = 10.0

_RDTYPES = {"A": 1, "PTR": 12, "AAAA": 28}
_CLASS_IN = 1
_NOERROR, _FORMERR, _SERVFAIL, _NXDOMAIN, _NOTIMP, _REFUSED = range(6)


@dataclass(frozen=True)
class _Answer:
    names: list[tuple[bytes, ...]]  # PTR targets, as labels
    addresses: list[bytes]  # A or AAAA records, packed
    error: str | None  # s6-dns' wording, None when the server answered
    timed_out: bool = False


# -- the DNS wire format (RFC 1035), just what the lookups need ------------------------


def _query(qid: int, qname: str, rdtype: str) -> bytes:
    """A recursive query (RD set, as S6DNS_O_RECURSIVE) for one question."""
    labels = [label for label in os.fsencode(qname).split(b".") if label]
    encoded = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return header + encoded + struct.pack("!HH", _RDTYPES[rdtype], _CLASS_IN)


def _read_name(message: bytes, position: int) -> tuple[tuple[bytes, ...], int]:
    """The labels of the name at ``position`` (compression followed) and
    where the record goes on. ValueError for a malformed name."""
    labels: list[bytes] = []
    after: int | None = None
    for _ in range(128):  # bounds a loop of compression pointers
        if position >= len(message):
            raise ValueError("name beyond the message")
        length = message[position]
        if length >= 0xC0:
            if position + 1 >= len(message):
                raise ValueError("cut compression pointer")
            after = position + 2 if after is None else after
            position = (length & 0x3F) << 8 | message[position + 1]
            continue
        if length > 63:
            raise ValueError("bad label length")
        if length == 0:
            return tuple(labels), position + 1 if after is None else after
        label = message[position + 1 : position + 1 + length]
        if len(label) != length:
            raise ValueError("cut label")
        labels.append(label)
        position += 1 + length
    raise ValueError("compression loop")


@dataclass(frozen=True)
class _Response:
    rcode: int
    truncated: bool
    answers: list[tuple[int, int, bytes, int]]  # type, class, rdata, rdata's offset


def _parse(message: bytes, query: bytes) -> _Response | None:
    """``message`` as the answer to ``query``, or None if it is not one (an
    answer to another question: s6-dns waits on then). ValueError when it
    is malformed."""
    if len(message) < 12:
        return None
    qid, flags, qdcount, ancount = struct.unpack("!HHHH", message[:8])
    opcode = flags >> 11 & 0xF
    if not flags & 0x8000 or opcode or qdcount != 1 or qid != struct.unpack("!H", query[:2])[0]:
        return None
    question, position = _read_name(message, 12)
    asked, asked_end = _read_name(query, 12)
    if [label.lower() for label in question] != [label.lower() for label in asked]:
        return None
    if message[position : position + 4] != query[asked_end : asked_end + 4]:
        return None
    position += 4
    answers: list[tuple[int, int, bytes, int]] = []
    for _ in range(ancount):
        _, position = _read_name(message, position)
        if position + 10 > len(message):
            raise ValueError("cut record")
        rtype, rclass, _ttl, length = struct.unpack("!HHIH", message[position : position + 10])
        position += 10
        if position + length > len(message):
            raise ValueError("cut record data")
        answers.append((rtype, rclass, message[position : position + length], position))
        position += length
    return _Response(flags & 0xF, bool(flags & 0x0200), answers)


def _udp_exchange(query: bytes, server: str, port: int, wait: float) -> bytes | None:
    # A connected socket, as s6-dns uses: a server that is not there is an
    # ICMP error, ConnectionRefusedError here, and the next server is tried
    # at once instead of after the wait. None: no answer within ``wait``.
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((server, port))
        sock.send(query)
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except TimeoutError:
                return None
            try:
                if _parse(data, query) is not None:
                    return data
            except ValueError:
                pass  # malformed: wait on for a good answer
    return None


def _tcp_exchange(query: bytes, server: str, port: int, wait: float) -> bytes | None:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    end = time.monotonic() + wait
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(wait)
        try:
            sock.connect((server, port))
            sock.sendall(struct.pack("!H", len(query)) + query)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                sock.settimeout(max(end - time.monotonic(), 0.001))
                chunk = sock.recv(65537)
                if not chunk:
                    raise OSError("connection closed before the answer")
                data += chunk
        except TimeoutError:
            return None
    return data[2 : 2 + struct.unpack("!H", data[:2])[0]]


def _ask(servers: Sequence[str], port: int, qname: str, rdtype: str, deadline: float) -> _Answer:
    """One question, asked as s6-dns' engine asks it: the servers in turn,
    round after round (:data:`UDP_WAITS`), a server that refuses the query
    (FORMERR, NOTIMP, REFUSED) dropped, a truncated answer asked again over
    TCP; all of it by ``deadline`` (``time.monotonic()``)."""
    query = _query(int.from_bytes(os.urandom(2), "big"), qname, rdtype)
    alive = list(servers)
    rounds: list[tuple[float, bool]] = [(wait, False) for wait in UDP_WAITS]
    server_failure = False
    while rounds:
        wait, tcp = rounds.pop(0)
        for server in list(alive):
            left = deadline - time.monotonic()
            if left <= 0:
                return _Answer([], [], "query timed out", timed_out=True)
            exchange = _tcp_exchange if tcp else _udp_exchange
            try:
                data = exchange(query, server, port, min(wait, left))
                response = _parse(data, query) if data is not None else None
            except (OSError, ValueError):
                continue  # refused, unreachable, malformed...: the next server
            if response is None:
                continue
            if response.truncated and not tcp:
                rounds = [(TCP_WAIT, True)]
                break
            if response.rcode == _NXDOMAIN:
                return _Answer([], [], "no such domain")
            if response.rcode in (_FORMERR, _NOTIMP, _REFUSED):
                alive.remove(server)  # s6-dns does not ask it again
                continue
            if response.rcode != _NOERROR:
                server_failure = True
                continue
            try:
                return _records(response, data or b"", rdtype)
            except ValueError:
                continue
    if time.monotonic() >= deadline:
        return _Answer([], [], "query timed out", timed_out=True)
    return _Answer([], [], "server failure" if server_failure else "no available DNS server")


def _records(response: _Response, message: bytes, rdtype: str) -> _Answer:
    # The answer section's records of the type asked, class IN, in order
    # (s6dns_message_parse_answer_domain and its A/AAAA siblings).
    names: list[tuple[bytes, ...]] = []
    addresses: list[bytes] = []
    for rtype, rclass, rdata, offset in response.answers:
        if rtype != _RDTYPES[rdtype] or rclass != _CLASS_IN:
            continue
        if rdtype == "PTR":
            labels, end = _read_name(message, offset)
            if end != offset + len(rdata):
                raise ValueError("PTR data of the wrong length")
            names.append(labels)
        elif len(rdata) == (4 if rdtype == "A" else 16):
            addresses.append(rdata)
        else:
            raise ValueError("address of the wrong length")
    return _Answer(names, addresses, None)


def _servers(nameservers: Sequence[str] | None) -> list[str]:
    return list(nameservers) if nameservers else default_nameservers()


def reverse_name(
    ip: str,
    *,
    use_hosts: bool,
    paranoid: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    nameservers: Sequence[str] | None = None,
    port: int = 53,
    hosts_path: str = HOSTS_PATH,
) -> str | None:
    """The name of ``ip`` as s6-tcpclient and s6-tcpserver-access find it
    (see the module's docstring): ``"name."``, an ``/etc/hosts`` alias,
    ``""`` (answered, no name) or ``None`` (no answer). ``paranoid``
    (s6-tcpserver-access ``-p``): a name from the DNS counts only if its A
    (or AAAA) records include ``ip``, else ``None``; one from the hosts
    file is taken as it is, as C does. Raises :class:`NameLookupError`
    only for an unusable hosts file."""
    deadline = time.monotonic() + timeout
    packed = _packed(ip)
    if use_hosts:
        hosts = read_hosts(hosts_path)
        names = hosts.names_by_address.get(packed) if hosts is not None else None
        if names:
            return names[0].decode("utf-8", "surrogateescape")
    servers = _servers(nameservers)
    answer = _ask(servers, port, _arpa_name(packed), "PTR", deadline)
    if answer.error is not None:
        return None
    if not answer.names:
        return ""
    name = _c_name_text(answer.names[0])
    if paranoid and name:
        back = _ask(servers, port, name, "AAAA" if len(packed) == 16 else "A", deadline)
        if packed not in back.addresses:
            return None
    return name


def _arpa_name(packed: bytes) -> str:
    if len(packed) == 4:
        return ".".join(str(byte) for byte in reversed(packed)) + ".in-addr.arpa."
    return ".".join(reversed(packed.hex())) + ".ip6.arpa."


def forward_addresses(
    name: str,
    *,
    use_hosts: bool,
    families: str = "46",
    timeout: float = DEFAULT_TIMEOUT,
    nameservers: Sequence[str] | None = None,
    port: int = 53,
    hosts_path: str = HOSTS_PATH,
) -> list[str]:
    """The addresses of ``name`` as s6-tcpclient finds them (see the
    module's docstring), formatted as C does. ``families``: ``"46"`` (both,
    the default), ``"4"`` (``-4``) or ``"6"`` (``-6``). Never empty: no
    address is a :class:`NameLookupError`."""
    if families not in ("4", "6", "46"):
        raise ValueError(f"families must be '4', '6' or '46', not {families!r}")
    try:
        qname = normalize_name(name)
    except ValueError as error:
        raise NameLookupError(f"unable to resolve {name}: {error}") from None
    if use_hosts:
        hosts = read_hosts(hosts_path)
        if hosts is not None:
            found = hosts.fqdn.get(qname, [])
            v4 = [a for a in found if len(a) == 4]
            v6 = [a for a in found if len(a) == 16]
            # s6dns_hosts_aaaaa: nothing at all when the IPv4 part is empty.
            chosen = {"4": v4, "6": v6, "46": v4 + v6 if v4 else []}[families]
            if chosen:
                return [format_address(a) for a in chosen]
    deadline = time.monotonic() + timeout
    servers = _servers(nameservers)
    text = qname.decode("utf-8", "surrogateescape")
    rdtypes = {"4": ["A"], "6": ["AAAA"], "46": ["AAAA", "A"]}[families]
    from concurrent.futures import ThreadPoolExecutor  # only for a name: -H needs none

    # Both families at once, as s6-dns asks them; the pool's threads are
    # joined before returning (no thread outlives the call: safe to fork).
    with ThreadPoolExecutor(max_workers=len(rdtypes)) as pool:
        answers = list(
            pool.map(lambda rdtype: _ask(servers, port, text, rdtype, deadline), rdtypes)
        )
    addresses = [format_address(a) for answer in answers for a in answer.addresses]
    if addresses:
        return addresses
    # s6-dns reports the A query's error first, then the AAAA one's.
    failed = [answer for answer in reversed(answers) if answer.error is not None]
    reason = failed[0].error if failed else "no address record"
    raise NameLookupError(
        f"unable to resolve {name}: {reason}",
        timed_out=bool(failed) and failed[0].timed_out,
    )
