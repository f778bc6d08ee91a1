"""The PROXY protocol parser, sans-IO: bytes in, header or ProxyError out.
No sockets; the end-to-end checks are in test_tlsserver.py/test_tcpserver.py."""

from __future__ import annotations

import socket
import struct

import pytest

from trio_s6tls._proxy import V2_SIGNATURE, ProxyError, ProxyHeader, bytes_wanted, parse


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def read_exactly(stream: bytes) -> tuple[ProxyHeader, bytes]:
    """What the server does: read only what bytes_wanted allows, one chunk at
    a time; return the header and the untouched rest."""
    buffer = b""
    while wanted := bytes_wanted(buffer):
        chunk, stream = stream[:wanted], stream[wanted:]
        assert chunk, "ran out of input"
        buffer += chunk
    return parse(buffer), stream


TLS_HELLO = b"\x16\x03\x01\x00\x05hello"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
            ProxyHeader(1, ("192.0.2.1", 56324), ("198.51.100.2", 443)),
        ),
        (
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
            ProxyHeader(1, ("2001:db8::1", 1), ("2001:db8::2", 65535)),
        ),
        (b"PROXY UNKNOWN\r\n", ProxyHeader(1)),
        (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", ProxyHeader(1)),
        (
            v2(
                1,
                0x11,
                socket.inet_aton("203.0.113.7")
                + socket.inet_aton("10.0.0.1")
                + struct.pack("!HH", 4000, 443),
            ),
            ProxyHeader(2, ("203.0.113.7", 4000), ("10.0.0.1", 443)),
        ),
        (
            v2(
                1,
                0x21,
                socket.inet_pton(socket.AF_INET6, "2001:db8::7")
                + socket.inet_pton(socket.AF_INET6, "2001:db8::8")
                + struct.pack("!HH", 1, 2)
                + b"\x04\x00\x01x",  # a TLV, ignored
            ),
            ProxyHeader(2, ("2001:db8::7", 1), ("2001:db8::8", 2)),
        ),
        (v2(0, 0x00, b""), ProxyHeader(2)),  # LOCAL: keep the real addresses
        (v2(1, 0x31, b"\0" * 216), ProxyHeader(2)),  # UNIX: likewise
    ],
)
def test_valid_headers_and_nothing_more_is_read(header: bytes, expected: ProxyHeader) -> None:
    parsed, rest = read_exactly(header + TLS_HELLO)
    assert parsed == expected
    assert rest == TLS_HELLO


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.0\r\n",
        b"\x16\x03\x01\x02\x00",  # a ClientHello: the client does not speak PROXY
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 99999\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
        b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY " + b"A" * 120,
        V2_SIGNATURE + bytes([0x10, 0x11]) + struct.pack("!H", 12) + b"\0" * 12,  # version 1
        V2_SIGNATURE + bytes([0x22, 0x11]) + struct.pack("!H", 12) + b"\0" * 12,  # command 2
        v2(1, 0x11, b"\0" * 4),  # address block too short
        v2(1, 0x21, b"\0" * 12),
    ],
)
def test_invalid_headers(data: bytes) -> None:
    with pytest.raises(ProxyError):
        read_exactly(data + b"\0" * 200)


def test_partial_input_asks_for_more() -> None:
    assert bytes_wanted(b"") == 8
    assert bytes_wanted(b"PRO") == 5
    assert bytes_wanted(b"PROXY TC") == 1
    assert bytes_wanted(V2_SIGNATURE[:10]) == 6
    assert bytes_wanted(V2_SIGNATURE + b"\x21\x11\x00\x0c") == 12
    with pytest.raises(ProxyError):
        parse(b"PROXY TCP4")
