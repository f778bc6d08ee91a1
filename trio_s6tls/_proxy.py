"""PROXY protocol v1 (text) and v2 (binary) headers, sans-IO.

A load balancer that speaks the PROXY protocol sends one header in cleartext
before anything else; it names the real client (source) and the address the
client connected to (destination). The reader must consume exactly the
header and not one byte more: what follows is the client's TLS ClientHello.
Hence :func:`bytes_wanted`, which says how many more bytes can be read
safely given what arrived so far, and :func:`parse`, which decodes a complete
header. The caller loops ``recv(bytes_wanted(buffer))`` until it returns 0.

v1: ``PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n``, at most 107 bytes.
v2: a 12-byte signature, version/command, family/transport, a big-endian
16-bit length, then the addresses and optional TLVs (ignored).

A header that carries no usable address (v1 ``UNKNOWN``, v2 ``LOCAL`` or a
family other than TCP over IPv4/IPv6) parses to ``source=None``: keep the
connection's real addresses.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest legal v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16
_PREFIX = 8  # enough to tell v1 from v2 without over-reading a short v1 line


class ProxyError(ValueError):
    """The bytes are not a valid PROXY header."""


@dataclass(frozen=True)
class ProxyHeader:
    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def bytes_wanted(data: bytes) -> int:
    """How many more bytes to read at most (0: the header is complete).
    Raises :class:`ProxyError` as soon as ``data`` cannot start a header."""
    if len(data) < _PREFIX:
        if not (V1_PREFIX.startswith(data[:6]) or V2_SIGNATURE.startswith(data)):
            raise ProxyError("not a PROXY protocol header")
        return _PREFIX - len(data)
    if data.startswith(V1_PREFIX):
        newline = data.find(b"\n")
        if newline == -1:
            if len(data) >= V1_MAX:
                raise ProxyError("PROXY v1 line too long")
            return 1  # one byte at a time: the line's end is unknown
        if newline != len(data) - 1 or not data.endswith(b"\r\n"):
            raise ProxyError("PROXY v1 line not terminated by CRLF")
        return 0
    if not data.startswith(V2_SIGNATURE[: min(len(data), len(V2_SIGNATURE))]):
        raise ProxyError("not a PROXY protocol header")
    if len(data) < V2_HEADER:
        return V2_HEADER - len(data)
    total = V2_HEADER + int(struct.unpack_from("!H", data, 14)[0])
    if len(data) > total:
        raise ProxyError("PROXY v2 header longer than announced")
    return total - len(data)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ProxyError(f"invalid port in PROXY header: {text!r}")
    return int(text)


def _parse_v1(data: bytes) -> ProxyHeader:
    try:
        line = data[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 line is not ASCII") from None
    fields = line.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(1)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"malformed PROXY v1 line: {line!r}")
    kind = ipaddress.IPv4Address if fields[1] == "TCP4" else ipaddress.IPv6Address
    try:
        source_ip, destination_ip = kind(fields[2]), kind(fields[3])
    except ValueError:
        raise ProxyError(f"invalid address in PROXY v1 line: {line!r}") from None
    return ProxyHeader(
        1, (str(source_ip), _port(fields[4])), (str(destination_ip), _port(fields[5]))
    )


def _parse_v2(data: bytes) -> ProxyHeader:
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyError(f"unsupported PROXY protocol version {version}")
    if command == 0:  # LOCAL: the proxy's own connection (health check)
        return ProxyHeader(2)
    if command != 1:
        raise ProxyError(f"unknown PROXY v2 command {command}")
    family = data[13]
    body = data[V2_HEADER:]
    if family == 0x11:  # TCP over IPv4
        if len(body) < 12:
            raise ProxyError("PROXY v2 IPv4 address block too short")
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        return ProxyHeader(
            2,
            (str(ipaddress.IPv4Address(src)), sport),
            (str(ipaddress.IPv4Address(dst)), dport),
        )
    if family == 0x21:  # TCP over IPv6
        if len(body) < 36:
            raise ProxyError("PROXY v2 IPv6 address block too short")
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        return ProxyHeader(
            2,
            (str(ipaddress.IPv6Address(src)), sport),
            (str(ipaddress.IPv6Address(dst)), dport),
        )
    return ProxyHeader(2)  # UNSPEC, UNIX, datagram: keep the real addresses


def parse(data: bytes) -> ProxyHeader:
    """Decode a complete header (``bytes_wanted(data) == 0``)."""
    if bytes_wanted(data):
        raise ProxyError("incomplete PROXY header")
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    return _parse_v2(data)
