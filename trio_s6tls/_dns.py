"""Asking a DNS server, as s6-dns' engine asks: the question of one name
lookup (:mod:`~trio_s6tls._names` decides which) and its answer.

Theory of operation. :func:`ask` sends one recursive question to the
servers in turn, round after round (:data:`UDP_WAITS`), over a connected
UDP socket: a server that is not there is an ICMP error, so the next one
is tried at once rather than after the wait (``DNSCACHEIP=127.0.0.2``,
where nothing listens, fails in a millisecond, as with C). A server that
refuses the question (FORMERR, NOTIMP, REFUSED) is not asked again; a
truncated answer is asked again over TCP. Everything is bounded by a
deadline. The messages are built and read here — only the bits of RFC 1035
a lookup needs (the question, name compression, the answer section, s6-dns'
check that an answer is to this question): no dependency, nothing slow to
import. Blocking: call it from a thread or before the event loop; :func:`at_once`
runs lookups side by side in threads it joins before returning.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

TYPE_CHECKING = False  # typing costs start-up time; only the checker needs it
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")


def at_once(calls: Sequence[Callable[[], T]]) -> list[T]:
    """The results of ``calls``, run at the same time (the last one in this
    thread); every thread is joined before returning, so none outlives the
    call (safe to fork). An exception of any call is raised here."""
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as error:  # handed to the caller
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls) - 1)]
    for thread in threads:
        thread.start()
    try:
        if calls:
            run(len(calls) - 1)
    finally:
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]  # every slot filled: no error


#: s6-dns' waits for a UDP answer, one round over the servers each: 1, 3,
#: 11 and 45 seconds, the first skipped when recursion is asked (always here).
UDP_WAITS = (3.0, 11.0, 45.0)
#: ... and for a TCP answer (after a truncated UDP one), one round.
TCP_WAIT = 10.0

_RDTYPES = {"A": 1, "PTR": 12, "AAAA": 28}
_CLASS_IN = 1
_NOERROR, _FORMERR, _SERVFAIL, _NXDOMAIN, _NOTIMP, _REFUSED = range(6)


class Answer(NamedTuple):
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


class _Response(NamedTuple):
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


def ask(servers: Sequence[str], port: int, qname: str, rdtype: str, deadline: float) -> Answer:
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
                return Answer([], [], "query timed out", timed_out=True)
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
                return Answer([], [], "no such domain")
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
        return Answer([], [], "query timed out", timed_out=True)
    return Answer([], [], "server failure" if server_failure else "no available DNS server")


def _records(response: _Response, message: bytes, rdtype: str) -> Answer:
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
    return Answer(names, addresses, None)
