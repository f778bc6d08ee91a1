"""Access rules for the super-servers (``-i rulesdir``), as s6 lays them out.

For a client IP the candidates are its networks from the most specific to
the least: ``ip4/A.B.C.D_32``, ``ip4/A.B.C.0_24``, … ``ip4/0.0.0.0_0``
(IPv6: ``ip6/ADDR_128`` … ``ip6/::_0``, ADDR written in full form first,
then in the compressed form). The first candidate directory that holds an
``allow`` or a ``deny`` file decides (``allow`` first, as s6's directory
backend and ``s6-accessrules-cdb-from-fs`` test them: an entry with both
allows); one holding neither is skipped. No decision at all means deny.
As in s6, a candidate that is missing or unreadable is no decision, but
any other error looking at it (an entry that is a file, not a directory:
``ENOTDIR``) makes the rules unusable.

``allow`` may come with ``env/`` (one file per variable: its first line is
the value, an empty file unsets the variable) and ``exec`` (a command line
that replaces prog, split like a shell would, without a shell).

Every file is a regular file, opened non-blocking and read with a bound
(:data:`EXEC_MAX`, :data:`ENV_VALUE_MAX`, the C backend's sizes): a FIFO, a
device or a huge file in the rules directory costs the connection it
decides on, never a stall or the memory of the whole server.

:func:`candidate_keys`, :func:`parse_env_file` and :func:`parse_exec_file` are pure; :func:`lookup`
reads the directory. The CDB form (``-x``) is
:mod:`trio_s6tls._accessrules_cdb`.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import stat
from dataclasses import dataclass, field

from ._errors import EXIT_SYSTEM, Fatal, describe_os_error


@dataclass(frozen=True)
class Decision:
    """The outcome for one client: allowed or not, and what ``allow`` adds."""

    allowed: bool
    key: str | None = None  # the deciding entry, e.g. "ip4/127.0.0.0_8"
    env: dict[str, str | None] = field(default_factory=dict)
    argv: list[str] | None = None  # from ``exec``: replaces prog


def candidate_keys(address: str) -> list[str]:
    """Entry names to try for ``address``, most specific first."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    keys: list[str] = []
    if isinstance(ip, ipaddress.IPv4Address):
        for prefix in range(32, -1, -1):
            network = ipaddress.IPv4Network((ip, prefix), strict=False)
            keys.append(f"ip4/{network.network_address}_{prefix}")
        return keys
    for prefix in range(128, -1, -1):
        network_address = ipaddress.IPv6Network((ip, prefix), strict=False).network_address
        keys.append(f"ip6/{network_address.exploded}_{prefix}")
        if network_address.compressed != network_address.exploded:
            keys.append(f"ip6/{network_address.compressed}_{prefix}")
    return keys


#: ``exec`` is read into 4096 bytes, as the C backend does (it truncates
#: silently; a longer file is refused here, a cut command line being worse).
EXEC_MAX = 4096
#: An ``env/`` value is the first line of the file's first 4095 bytes, as
#: skalibs' envdir reads it (``MAXVARSIZE``); a longer first line is refused.
ENV_VALUE_MAX = 4095


class RuleError(Exception):
    """An entry that cannot be used: it costs its own connection only."""


def parse_env_file(content: bytes) -> str | None:
    """An ``env/`` file's value: its first line without trailing blanks
    (space, tab, CR), NULs read as newlines (envdir rules); empty file →
    ``None`` (unset). A first line over :data:`ENV_VALUE_MAX` bytes is a
    :class:`RuleError`."""
    if not content:
        return None
    first = content.split(b"\n", 1)[0]
    if len(first) > ENV_VALUE_MAX:
        raise RuleError(f"first line longer than {ENV_VALUE_MAX} bytes")
    first = first.rstrip(b" \t\r").replace(b"\0", b"\n")
    return first.decode("utf-8", "surrogateescape")


def parse_exec_file(content: bytes) -> list[str] | None:
    """``exec``: a command line split like a shell would (no shell);
    ``None`` if it holds no word."""
    if len(content) > EXEC_MAX:
        raise RuleError(f"longer than {EXEC_MAX} bytes")
    if b"\0" in content:
        raise RuleError("holds a NUL byte")
    try:
        return shlex.split(content.decode("utf-8", "surrogateescape")) or None
    except ValueError as error:  # an unterminated quote...
        raise RuleError(str(error)) from None


def read_regular(path: str, limit: int) -> bytes | None:
    """At most ``limit + 1`` bytes of the regular file ``path`` (so that the
    caller sees it is too long), ``None`` if it does not exist. Opened
    non-blocking and checked with ``fstat``: a FIFO or a device is refused
    without waiting for a writer, and nothing else gets read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RuleError("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_env_dir(path: str) -> dict[str, str | None]:
    variables: dict[str, str | None] = {}
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return variables
    for name in names:
        if name.startswith(".") or "=" in name:
            continue
        try:
            content = read_regular(os.path.join(path, name), ENV_VALUE_MAX)
            if content is None:  # gone since listdir: as envdir, an error
                raise RuleError("vanished while reading")
            variables[name] = parse_env_file(content)
        except RuleError as error:
            raise RuleError(f"env/{name}: {error}") from None
    return variables


def _readable(path: str) -> bool:
    """``access(path, R_OK)`` as s6's directory backend reads it: a missing
    or unreadable file is False; any other error (``ENOTDIR``, ``ELOOP``…)
    is raised."""
    try:
        os.stat(path)
    except (FileNotFoundError, PermissionError):
        return False
    return os.access(path, os.R_OK)


def _decide(entry: str, key: str) -> Decision | None:
    if not _readable(os.path.join(entry, "allow")):
        return Decision(False, key) if _readable(os.path.join(entry, "deny")) else None
    argv = None
    content = read_regular(os.path.join(entry, "exec"), EXEC_MAX)
    if content is not None:
        try:
            argv = parse_exec_file(content)
        except RuleError as error:
            raise RuleError(f"exec: {error}") from None
    return Decision(True, key, _read_env_dir(os.path.join(entry, "env")), argv)


def lookup(rules_dir: str, address: str) -> Decision:
    """The decision of ``rules_dir`` for the client ``address``. Blocking
    (file system calls): the server runs it in a thread. An unusable entry
    or an I/O error (other than a missing entry) is a :class:`Fatal`
    (111) that names the entry."""
    key = None
    try:
        for key in candidate_keys(address):
            decision = _decide(os.path.join(rules_dir, key), key)
            if decision is not None:
                return decision
    except OSError as error:
        raise Fatal(
            EXIT_SYSTEM,
            f"unable to read rule {key} in {rules_dir}: {describe_os_error(error)}",
        ) from None
    except RuleError as error:
        raise Fatal(EXIT_SYSTEM, f"invalid rule {key} in {rules_dir}: {error}") from None
    return Decision(False)
