"""Access rules in CDB form (``-x rulesfile``), as ``s6-accessrules-cdb-from-fs`` makes them.

Theory of operation. ``s6-accessrules-cdb-from-fs CDB DIR`` walks the rules
directory and stores one record per entry that has ``allow`` or ``deny``,
under the key ``SUBDIR/ENTRY`` (``ip4/127.0.0.0_8``, ``ip6/::1_128``,
``reversedns/example.com``...); an entry with neither is left out, and
``allow`` wins when both files exist. A record is

- ``D``: deny;
- ``A``, a 16-bit big-endian length and the ``env/`` modifications, a 16-bit
  length and the raw bytes of ``exec``: allow. The modifications are
  skalibs' envdir output: ``NAME=VALUE\\0`` per non-empty file (the first
  line, trailing blanks cut, NULs made newlines), ``NAME\\0`` per empty one
  (unset). Each length is at most 4096, and the whole record is exactly
  ``5 + envlen + execlen`` bytes.

A lookup tries the same keys as the directory form
(:func:`trio_s6tls._rules.candidate_keys`, most specific first); the first
record that decides wins, a record whose first byte is neither ``A`` nor
``D`` is skipped (as s6's CDB backend does), no decision means deny. So the
same rules, as a directory or compiled, decide alike.

The file is read whole for every lookup, as the C tool opens it for every
connection: a CDB replaced by ``s6-accessrules-cdb-from-fs`` (it renames a
new file into place) takes effect at the next connection. It is read rather
than mapped, because a file truncated under a mapping raises SIGBUS, which
would end the whole server, not one connection; :data:`CDB_MAX` bounds it.
The CDB structure is checked before pure-cdb walks it (pure-cdb trusts its
input: an out-of-range offset raises from deep inside it, and a hash table
without an empty slot makes it loop forever on a missing key).

Every failure is a :class:`~trio_s6tls._errors.Fatal` with exit code 111,
as s6-tcpserver-access exits 111 both when ``cdb_init`` fails and when a
record is invalid.
"""

from __future__ import annotations

import importlib
import os
import shlex
import stat
import struct
from collections.abc import Iterable
from typing import Any

from ._errors import EXIT_SYSTEM, Fatal, describe_os_error
from ._rules import Decision, candidate_keys

#: Read no more than this: a rules CDB holds a few records per client
#: network; anything near this size is not one.
CDB_MAX = 64 * 1024 * 1024

#: s6_accessrules_backend_cdb's bounds: each of env and exec at most 4096
#: bytes, a record at most ``5 + 4096 + 4096`` bytes.
PART_MAX = 4096
RECORD_MAX = 5 + 2 * PART_MAX

_HEADER_SIZE = 2048  # 256 (position, slot count) pairs
_PAIR = struct.Struct("<LL")


class _Invalid(Exception):
    """A malformed CDB or record; turned into a Fatal naming the file."""


def decode_record(record: bytes) -> Decision | None:
    """The decision stored in one record, ``None`` for a record that does not
    decide (its first byte is neither ``A`` nor ``D``). Pure. Raises
    ``ValueError`` where s6's backend fails with EINVAL. ``key`` is left
    ``None``: the caller knows it."""
    if not record or len(record) > RECORD_MAX:
        raise ValueError(f"record of {len(record)} bytes")
    kind = record[:1]
    if kind == b"D":
        return Decision(False)
    if kind != b"A":
        return None
    if len(record) < 5:
        raise ValueError("allow record shorter than 5 bytes")
    env_len = int.from_bytes(record[1:3], "big")
    if env_len > PART_MAX or len(record) - 5 < env_len:
        raise ValueError(f"env length {env_len} out of range")
    exec_len = int.from_bytes(record[3 + env_len : 5 + env_len], "big")
    if exec_len > PART_MAX or 5 + env_len + exec_len != len(record):
        raise ValueError(f"exec length {exec_len} out of range")
    env = decode_env(record[3 : 3 + env_len])
    argv = decode_exec(record[5 + env_len :]) if exec_len else None
    return Decision(True, None, env, argv)


def decode_env(modifications: bytes) -> dict[str, str | None]:
    """skalibs env modifications: ``NAME=VALUE\\0`` sets, ``NAME\\0`` unsets;
    a later entry for the same name wins (as ``env_merge`` applies them).
    Pure; ``ValueError`` for an unterminated entry or an empty name, which
    envdir never writes."""
    env: dict[str, str | None] = {}
    if not modifications:
        return env
    if not modifications.endswith(b"\0"):
        raise ValueError("env modifications not NUL-terminated")
    for entry in modifications[:-1].split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if not name:
            raise ValueError("env modification with an empty name")
        env[name.decode("utf-8", "surrogateescape")] = (
            value.decode("utf-8", "surrogateescape") if eq else None
        )
    return env


def decode_exec(content: bytes) -> list[str] | None:
    """``exec``'s command line, split as the directory form splits it (like a
    shell would, without a shell); ``None`` if it holds no word. Pure.
    ``ValueError`` for a NUL byte or an unterminated quote."""
    if b"\0" in content:
        raise ValueError("exec holds a NUL byte")
    try:
        return shlex.split(content.decode("utf-8", "surrogateescape")) or None
    except ValueError as error:
        raise ValueError(f"exec: {error}") from None


def reversedns_keys(name: str) -> list[str]:
    """The keys s6 tries for a client's host name once its IP decided
    nothing (``s6_accessrules_keycheck_reversedns``): the name without a
    final dot, then each of its suffixes after a dot, then ``reversedns/@``.
    ``a.example.com.`` gives ``reversedns/a.example.com``,
    ``reversedns/example.com``, ``reversedns/com``, ``reversedns/@``. Pure;
    ``ValueError`` for an empty name."""
    if not name:
        raise ValueError("empty host name")
    if name.endswith("."):
        name = name[:-1]
    keys = []
    i = 0
    while i < len(name):
        keys.append("reversedns/" + name[i:])
        dot = name.find(".", i)
        i = len(name) if dot < 0 else dot + 1
    keys.append("reversedns/@")
    return keys


def _read_file(path: str) -> bytes:
    # Non-blocking open and fstat first: a FIFO or a device named as the
    # rules file must not stall a server thread waiting for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Invalid("not a regular file")
        if info.st_size > CDB_MAX:
            raise _Invalid(f"larger than {CDB_MAX} bytes")
        chunks = []
        size = 0
        while size <= CDB_MAX:
            chunk = os.read(fd, min(1 << 20, CDB_MAX + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > CDB_MAX:
            raise _Invalid(f"larger than {CDB_MAX} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_structure(data: bytes) -> None:
    """What pure-cdb assumes of its input: every hash table inside the file
    and holding an empty slot (so a probe ends), every record it points at
    inside the file."""
    if len(data) < _HEADER_SIZE:
        raise _Invalid(f"{len(data)} bytes, shorter than a CDB header")
    for position, slots in _PAIR.iter_unpack(data[:_HEADER_SIZE]):
        if not slots:
            continue
        end = position + 8 * slots
        if position < _HEADER_SIZE or end > len(data):
            raise _Invalid("hash table out of the file")
        empty = False
        for _, record in _PAIR.iter_unpack(data[position:end]):
            if not record:
                empty = True
            elif record < _HEADER_SIZE or record + 8 > position:
                raise _Invalid("record pointer out of range")
            else:
                key_len, value_len = _PAIR.unpack_from(data, record)
                if record + 8 + key_len + value_len > position:
                    raise _Invalid("record out of range")
        if not empty:
            raise _Invalid("hash table without an empty slot")


def _reader(data: bytes) -> Any:
    _check_structure(data)
    # Imported here, not at the top: most programs never read a CDB, and
    # their start-up should not pay for it. (pure-cdb ships no type hints.)
    cdblib = importlib.import_module("cdblib")
    return cdblib.Reader(data, strict=True)


def _decide(reader: Any, keys: Iterable[str]) -> Decision | None:
    for key in keys:
        record = reader.get(key.encode("utf-8", "surrogateescape"))
        if record is None:
            continue
        try:
            decision = decode_record(bytes(record))
        except ValueError as error:
            raise _Invalid(f"record {key}: {error}") from None
        if decision is not None:
            return Decision(decision.allowed, key, decision.env, decision.argv)
    return None


def lookup_keys(path: str, keys: Iterable[str]) -> Decision | None:
    """The first decision among ``keys`` in the CDB ``path``, ``None`` if
    none decides (the caller goes on, e.g. with :func:`reversedns_keys`, or
    denies). Blocking: run it in a thread. Raises :class:`Fatal` (111)."""
    try:
        return _decide(_reader(_read_file(path)), keys)
    except OSError as error:
        raise Fatal(
            EXIT_SYSTEM, f"unable to read rules file {path}: {describe_os_error(error)}"
        ) from None
    except _Invalid as error:
        raise Fatal(EXIT_SYSTEM, f"invalid rules file {path}: {error}") from None


def lookup(path: str, address: str) -> Decision:
    """The decision of the rules CDB ``path`` for the client ``address``,
    the counterpart of :func:`trio_s6tls._rules.lookup` for ``-x``: the
    deciding record's ``key``, and for ``allow`` its ``env`` (``None``:
    unset) and ``exec`` (``argv``, replacing prog). No decision: deny.
    Blocking: run it in a thread. An unreadable or malformed file is a
    :class:`Fatal` (111)."""
    decision = lookup_keys(path, candidate_keys(address))
    return decision if decision is not None else Decision(False)
