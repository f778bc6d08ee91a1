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
  name is taken as fully qualified (C's default ``-N``), or with
  ``qualify`` (``-n``) tried with each suffix of the search list
  (:func:`search_rules`, :func:`qualified_names`); lower-cased, empty
  labels dropped. With ``use_hosts`` the addresses of
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

The DNS is asked as s6-dns' engine asks it (:mod:`~trio_s6tls._dns`: a
server that is not there fails at once). Every lookup is bounded by
``timeout`` seconds (C waits as long as ``-t`` says, forever by default).
When all servers fail: ``no available DNS server``, as s6-dns says. Where
``nameservers`` is not given they come from ``$DNSCACHEIP``, else the
``nameserver`` lines of ``/etc/resolv.conf``, else ``::1``, as s6-dns
finds them. All functions block: call them from a thread
(``trio.to_thread.run_sync``) or before the event loop starts.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import _dns
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


def _servers(nameservers: Sequence[str] | None) -> list[str]:
    return list(nameservers) if nameservers else default_nameservers()


@dataclass(frozen=True)
class ReverseName:
    """What a reverse lookup found: ``name`` as :func:`reverse_name` gives
    it, and for a paranoid one whose lookups failed (``failure``: C's
    warning) the status s6-tcpserver-access ``-w`` exits with
    (``exit_code``: 99 timed out, 1 no such domain, 111 otherwise)."""

    name: str | None
    failure: str | None = None
    exit_code: int = 0


def _failed(message: str, answer: _dns.Answer) -> ReverseName:
    code = 99 if answer.timed_out else 1 if answer.error == "no such domain" else EXIT_SYSTEM
    return ReverseName(None, f"{message}: {answer.error}", code)


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
    return reverse_lookup(
        ip,
        use_hosts=use_hosts,
        paranoid=paranoid,
        timeout=timeout,
        nameservers=nameservers,
        port=port,
        hosts_path=hosts_path,
    ).name


def reverse_lookup(
    ip: str,
    *,
    use_hosts: bool,
    paranoid: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    nameservers: Sequence[str] | None = None,
    port: int = 53,
    hosts_path: str = HOSTS_PATH,
) -> ReverseName:
    """:func:`reverse_name`, telling a paranoid lookup that *failed* (the
    PTR query, or the A/AAAA query of the name it gave, got no answer or a
    DNS error; or the PTR answer held no usable name) from one that found
    a name not resolving back (no failure: the name is just dropped).
    s6-tcpserver-access ``-w`` refuses the client for the first only; a
    lookup that is not paranoid never fails that way."""
    deadline = time.monotonic() + timeout
    packed = _packed(ip)
    if use_hosts:
        hosts = read_hosts(hosts_path)
        names = hosts.names_by_address.get(packed) if hosts is not None else None
        if names:
            return ReverseName(names[0].decode("utf-8", "surrogateescape"))
    servers = _servers(nameservers)
    answer = _dns.ask(servers, port, _arpa_name(packed), "PTR", deadline)
    if answer.error is not None:
        if paranoid:
            return _failed("unable to (paranoidly) resolve PTR for client address", answer)
        return ReverseName(None)
    name = _c_name_text(answer.names[0]) if answer.names else ""
    if not paranoid:
        return ReverseName(name)
    back = _dns.ask(servers, port, name, "AAAA" if len(packed) == 16 else "A", deadline)
    if back.error is not None:
        return _failed(f"unable to (paranoidly) resolve {name}", back)
    return ReverseName(name if name and packed in back.addresses else None)


def _arpa_name(packed: bytes) -> str:
    if len(packed) == 4:
        return ".".join(str(byte) for byte in reversed(packed)) + ".in-addr.arpa."
    return ".".join(reversed(packed.hex())) + ".ip6.arpa."


def search_rules(
    resolv_conf: str = RESOLV_CONF, environ: Mapping[str, str] | None = None
) -> list[bytes]:
    """The suffixes s6-dns qualifies a name with (``-n``): the words of
    ``$DNSQUALIFY``, else of ``resolv_conf``'s ``search`` lines and the
    first word of its ``domain`` lines, in file order; each ends with a
    dot, and the empty suffix (the name itself) comes last."""
    environ = os.environ if environ is None else environ
    rules: list[bytes] = []
    listed = environ.get("DNSQUALIFY")
    if listed is not None:
        rules = os.fsencode(listed).split()
    else:
        try:
            with open(resolv_conf, "rb") as file:
                lines = (file.read(4095) + b"\n").split(b"\n")[:-1]  # s6-dns ends it with a newline
        except FileNotFoundError:
            lines = []
        except OSError as error:
            raise NameLookupError(
                f"unable to read {resolv_conf}: {describe_os_error(error)}"
            ) from None
        for line in lines:
            if len(line) > 8 and line[:6] in (b"domain", b"search") and line[6:7] in b" \t\r":
                words = line[7:].replace(b"\r", b" ").split()
                rules.extend(words[:1] if line.startswith(b"domain") else words)
    return [rule if rule.endswith(b".") else rule + b"." for rule in rules] + [b""]


def qualified_names(name: str, rules: Sequence[bytes]) -> list[bytes]:
    """``name`` qualified as s6-dns does: as it is if it ends with a dot,
    else with each suffix of ``rules`` in turn (:func:`search_rules`)."""
    text = os.fsencode(name).lower()
    if text.endswith(b"."):
        return [normalize_name(name)]
    return [normalize_name(os.fsdecode(text + b"." + rule)) for rule in rules]


def forward_addresses(
    name: str,
    *,
    use_hosts: bool,
    families: str = "46",
    timeout: float = DEFAULT_TIMEOUT,
    nameservers: Sequence[str] | None = None,
    port: int = 53,
    hosts_path: str = HOSTS_PATH,
    qualify: bool = False,
    rules: Sequence[bytes] | None = None,
) -> list[str]:
    """The addresses of ``name`` as s6-tcpclient finds them (see the
    module's docstring), formatted as C does. ``families``: ``"46"`` (both,
    the default), ``"4"`` (``-4``) or ``"6"`` (``-6``). ``qualify``
    (s6-tcpclient ``-n``): a name without a final dot is tried with each
    suffix of ``rules`` (default: :func:`search_rules`) in turn, as s6-dns
    does: the first one the DNS answers (even without records) counts, one
    with no such domain or a server failure passes to the next; in the
    hosts file, the aliases, then the first qualified name it has. Never
    empty: no address is a :class:`NameLookupError`."""
    if families not in ("4", "6", "46"):
        raise ValueError(f"families must be '4', '6' or '46', not {families!r}")
    try:
        qname = normalize_name(name)
        if qualify:
            candidates = qualified_names(name, search_rules() if rules is None else rules)
        else:
            candidates = [qname]
    except ValueError as error:
        raise NameLookupError(f"unable to resolve {name}: {error}") from None
    if use_hosts:
        hosts = read_hosts(hosts_path)
        if hosts is not None:
            chosen: list[bytes] = []
            if qualify and len(candidates) > 1:  # s6dns_hosts_*_q: the aliases first
                chosen = _hosts_choice(hosts.aliases.get(qname[:-1], []), families)
            for candidate in candidates:
                found = _hosts_choice(hosts.fqdn.get(candidate, []), families)
                if found:
                    chosen += found
                    break
            if chosen:
                return [format_address(a) for a in chosen]
    deadline = time.monotonic() + timeout
    servers = _servers(nameservers)
    rdtypes = {"4": ["A"], "6": ["AAAA"], "46": ["AAAA", "A"]}[families]
    first_error: _dns.Answer | None = None
    for candidate in candidates:
        text = candidate.decode("utf-8", "surrogateescape")
        # Both families at once, as s6-dns asks them.
        answers = _dns.at_once(
            [
                functools.partial(_dns.ask, servers, port, text, rdtype, deadline)
                for rdtype in rdtypes
            ]
        )
        if not qualify:
            addresses = [format_address(a) for answer in answers for a in answer.addresses]
            if addresses:
                return addresses
            # s6-dns reports the A query's error first, then the AAAA one's.
            failed = [answer for answer in reversed(answers) if answer.error is not None]
            first_error = failed[0] if failed else None
            break
        answered, addresses, gave_up = False, [], None
        for answer in answers:  # AAAA then A, as s6dns_resolveq_aaaaa reads them
            if answer.error is None:
                answered = True
                addresses += [format_address(a) for a in answer.addresses]
            elif answer.error in _NEXT_NAME_ERRORS:
                first_error = first_error or answer  # the next name may have it
            else:  # no answer at all: s6-dns gives up
                gave_up = answer
                break
        if gave_up is not None:
            first_error = gave_up
            break
        if answered:  # this name counts, records or not
            if addresses:
                return addresses
            first_error = None
            break
    reason = first_error.error if first_error is not None else "no address record"
    raise NameLookupError(
        f"unable to resolve {name}: {reason}",
        timed_out=first_error is not None and first_error.timed_out,
    )


#: The DNS errors after which s6-dns tries the next qualified name.
_NEXT_NAME_ERRORS = ("no such domain", "server failure")


def _hosts_choice(found: Sequence[bytes], families: str) -> list[bytes]:
    v4 = [a for a in found if len(a) == 4]
    v6 = [a for a in found if len(a) == 16]
    # s6dns_hosts_aaaaa: nothing at all when the IPv4 part is empty.
    return {"4": v4, "6": v6, "46": v4 + v6 if v4 else []}[families]
