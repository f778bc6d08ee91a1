"""Access rules for the super-servers (``-i rulesdir``), as s6 lays them out.

For a client IP the candidates are its networks from the most specific to
the least: ``ip4/A.B.C.D_32``, ``ip4/A.B.C.0_24``, … ``ip4/0.0.0.0_0``
(IPv6: ``ip6/ADDR_128`` … ``ip6/::_0``, ADDR written in full form first,
then in the compressed form). The first candidate directory that holds an
``allow`` or a ``deny`` file decides; one holding neither is skipped. No
decision at all means deny.

``allow`` may come with ``env/`` (one file per variable: its first line is
the value, an empty file unsets the variable) and ``exec`` (a command line
that replaces prog, split like a shell would, without a shell).

:func:`candidate_keys` and :func:`parse_env_file` are pure; :func:`lookup`
reads the directory. The CDB form (``-x``) is not supported: no maintained
Python CDB reader exists (``python-cdb`` and ``cdblib`` were last released in
2013 and 2009).
"""

from __future__ import annotations

import ipaddress
import os
import shlex
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


def parse_env_file(content: bytes) -> str | None:
    """An ``env/`` file's value: its first line without trailing blanks,
    NULs read as newlines (envdir rules); empty file → ``None`` (unset)."""
    if not content:
        return None
    first = content.split(b"\n", 1)[0].rstrip(b" \t").replace(b"\0", b"\n")
    return first.decode("utf-8", "surrogateescape")


def _read_env_dir(path: str) -> dict[str, str | None]:
    variables: dict[str, str | None] = {}
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return variables
    for name in names:
        if name.startswith(".") or "=" in name:
            continue
        with open(os.path.join(path, name), "rb") as file:
            variables[name] = parse_env_file(file.read())
    return variables


def _decide(entry: str, key: str) -> Decision | None:
    if os.path.exists(os.path.join(entry, "deny")):
        return Decision(False, key)
    if not os.path.exists(os.path.join(entry, "allow")):
        return None
    argv = None
    try:
        with open(os.path.join(entry, "exec"), encoding="utf-8", errors="surrogateescape") as file:
            argv = shlex.split(file.read()) or None
    except FileNotFoundError:
        pass
    return Decision(True, key, _read_env_dir(os.path.join(entry, "env")), argv)


def lookup(rules_dir: str, address: str) -> Decision:
    """The decision of ``rules_dir`` for the client ``address``. An I/O
    error (other than a missing entry) is a :class:`Fatal` (111)."""
    try:
        for key in candidate_keys(address):
            entry = os.path.join(rules_dir, key)
            if os.path.isdir(entry):
                decision = _decide(entry, key)
                if decision is not None:
                    return decision
    except OSError as error:
        raise Fatal(
            EXIT_SYSTEM, f"unable to read rules in {rules_dir}: {describe_os_error(error)}"
        ) from None
    except ValueError as error:  # a malformed exec line
        raise Fatal(EXIT_SYSTEM, f"invalid rule for {address}: {error}") from None
    return Decision(False)
