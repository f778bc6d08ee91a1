"""Process identity: ``TLS_UID``/``TLS_GID`` for the TLS engines
(:func:`parse_identity`, :func:`drop_privileges`), and the identity a
super-server runs as: ``-u``/``-g``/``-G``/``-U``, and ``TLS_UID``/``TLS_GID``
for s6-tlsserver (:func:`server_identity`, :func:`assume`).

In the C chain every connection has its own processes: s6-tcpserver
applies ``-u``/``-g`` before s6-tcpserverd; s6-tlsserver hands them to
s6-applyuidgid just before prog, while s6-tlsd-io, the TLS engine, drops to
``TLS_UID``/``TLS_GID`` when it is still root. Ours runs the TLS of every
connection in the server process itself and prog inherits that process's
identity, so there is one identity, taken once the server has bound its
socket and loaded its keys:

* uid: ``-u`` (``-U``: ``UID``), else ``TLS_UID``; gid: ``-g`` (``GID``),
  else ``TLS_GID``; ``TLS_*`` count only when running as root, as in C.
* supplementary groups: ``-G`` (``GIDLIST``), else none at all once the uid
  or the gid changes (s6-applyuidgid would keep root's); untouched otherwise.
* ``TLS_UID`` and ``-u`` (or ``TLS_GID`` and ``-g``) both given and
  different: refused at start (100). The TLS engine and prog cannot be two
  users in one process — keeping a way back to root for prog would leave it
  to the TLS code as well.

:func:`parse_identity` and :func:`server_identity` are pure;
:func:`drop_privileges` and :func:`assume` make the system calls.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ._errors import EXIT_SYSTEM, EXIT_USAGE, Fatal, describe_os_error


class Identity(NamedTuple):
    """What to become; ``None`` (or ``groups=None``) keeps the current one."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None

    @property
    def changes(self) -> bool:
        return self.uid is not None or self.gid is not None or self.groups is not None


def server_identity(
    uid: int | None,
    gid: int | None,
    groups: Sequence[int] | None,
    tls_ids: tuple[int | None, int | None] = (None, None),
    *,
    as_root: bool,
) -> Identity:
    """The one identity of the server and its progs (see the module doc)."""
    tls_uid, tls_gid = tls_ids if as_root else (None, None)
    pairs = (("-u", uid, "TLS_UID", tls_uid), ("-g", gid, "TLS_GID", tls_gid))
    for option, value, name, tls_value in pairs:
        if value is not None and tls_value is not None and value != tls_value:
            raise Fatal(
                EXIT_USAGE,
                f"{name}={tls_value} differs from {option} {value}: the TLS engine and prog"
                " share one process, so they run as one identity",
            )
    uid = uid if uid is not None else tls_uid
    gid = gid if gid is not None else tls_gid
    if groups is not None:
        return Identity(uid, gid, tuple(groups))
    if uid is not None or gid is not None:
        return Identity(uid, gid, ())
    return Identity()


def _current(identity: Identity) -> bool:
    return (
        identity.uid in (None, os.getuid(), os.geteuid())
        and identity.gid in (None, os.getgid(), os.getegid())
        and (identity.groups is None or set(identity.groups) <= set(os.getgroups()))
    )


def assume(identity: Identity) -> None:
    """Become ``identity``: supplementary groups, then gid, then uid (real,
    effective and saved alike: there is no way back). Not root and already
    that identity: nothing to do. Raises :class:`Fatal` (111) on failure."""
    if not identity.changes or (os.geteuid() != 0 and _current(identity)):
        return
    try:
        if identity.groups is not None:
            os.setgroups(list(identity.groups))
        if identity.gid is not None:
            os.setgid(identity.gid)
        if identity.uid is not None:
            os.setuid(identity.uid)
    except (OSError, OverflowError) as error:
        detail = describe_os_error(error) if isinstance(error, OSError) else str(error)
        raise Fatal(EXIT_SYSTEM, f"unable to change identity: {detail}") from None


def parse_identity(env: Mapping[str, str]) -> tuple[int | None, int | None]:
    """``TLS_UID``/``TLS_GID`` as numbers (100 if set and not numeric)."""
    ids: list[int | None] = []
    for name in ("TLS_UID", "TLS_GID"):
        value = env.get(name)
        if value is None or value == "":
            ids.append(None)
        elif value.isascii() and value.isdigit() and int(value) < 2**32 - 1:
            ids.append(int(value))
        else:
            raise Fatal(EXIT_USAGE, f"invalid {name}: {value!r}")
    return ids[0], ids[1]


def drop_privileges(uid: int | None, gid: int | None) -> None:
    """As root only: no supplementary groups, then gid, then uid (after keys
    are loaded). C's engines leave the supplementary groups as they found
    them; ours clear them, so that no root group survives the drop."""
    if os.geteuid() != 0 or (uid is None and gid is None):
        return
    try:
        os.setgroups([])
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
    except OSError as error:
        raise Fatal(EXIT_SYSTEM, f"unable to drop privileges: {describe_os_error(error)}") from None
