"""Handshake information: the ``SSL_*`` variables and the NUL-separated
notification block (``-d FD`` and UCSPI-TLS's ``Y``; docs/programs/index.rst).

Block format: entries each followed by one NUL, then one extra NUL.
``NAME=VALUE`` sets a variable, a bare ``NAME`` unsets it. Pure functions
apart from :func:`handshake_variables`, which reads a finished connection.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
from collections.abc import Mapping

from . import _der

#: Variables every notification mentions (set or unset), in this order.
SSL_VARIABLES = (
    "SSL_PROTOCOL",
    "SSL_CIPHER",
    "SSL_TLS_SNI_SERVERNAME",
    "SSL_PEER_CERT_HASH",
    "SSL_PEER_CERT_SUBJECT",
)

MAX_NOTIFICATION = 4096

Variables = dict[str, str | None]


#: ``SSL_PEER_CERT_HASH`` when a server asked for a client certificate and
#: got none: the C tools on BearSSL export the hash whenever they ask for a
#: certificate, and it stays all zeros when none came.
NO_CERT_HASH = "SHA256:" + "0" * 64


def _sni_sent(server_hostname: str | None) -> str | None:
    # ssl checks an IP address against the certificate but sends no SNI
    # for it (RFC 6066): nothing to export then.
    if server_hostname is None:
        return None
    try:
        ipaddress.ip_address(server_hostname)
    except ValueError:
        return server_hostname
    return None


def handshake_variables(
    conn: ssl.SSLSocket | ssl.SSLObject,
    *,
    server_side: bool,
    resumed_flag: bool = False,
    peer_cert_requested: bool = False,
) -> Variables:
    """``SSL_*`` for a connection whose handshake is complete.

    ``None`` means "unset". ``SSL_ALPN_PROTOCOL`` appears only when ALPN was
    negotiated; ``SSL_SESSION_RESUMED`` only when ``resumed_flag``.

    ``peer_cert_requested``: the server asked for a client certificate
    (``-Y`` or ``-y``). Then, as the C tools do, a client that sent none
    gets ``SSL_PEER_CERT_HASH`` = ``SHA256:`` and 64 zeros (and
    ``SSL_PEER_CERT_SUBJECT`` unset); without it the hash is unset too.
    """
    cipher = conn.cipher()
    sni = getattr(conn, "s6_sni_name", None) if server_side else _sni_sent(conn.server_hostname)
    peer = conn.getpeercert(binary_form=True)
    variables: Variables = {
        "SSL_PROTOCOL": conn.version(),
        "SSL_CIPHER": cipher[0] if cipher else None,
        "SSL_TLS_SNI_SERVERNAME": sni or None,
        "SSL_PEER_CERT_HASH": None,
        "SSL_PEER_CERT_SUBJECT": None,
    }
    if peer:
        variables["SSL_PEER_CERT_HASH"] = "SHA256:" + hashlib.sha256(peer).hexdigest()
        try:
            variables["SSL_PEER_CERT_SUBJECT"] = _der.certificate_subject(peer)
        except ValueError:  # OpenSSL took what BearSSL would refuse: no subject
            pass
    elif peer_cert_requested:
        variables["SSL_PEER_CERT_HASH"] = NO_CERT_HASH
    alpn = conn.selected_alpn_protocol()
    if alpn:
        variables["SSL_ALPN_PROTOCOL"] = alpn
    if resumed_flag:
        variables["SSL_SESSION_RESUMED"] = "1" if conn.session_reused else "0"
    return variables


def describe_variables(variables: Mapping[str, str | None], separator: str = " ") -> str:
    """The variables that are set, as ``NAME=VALUE`` (the ``-v 2`` log line)."""
    return separator.join(
        f"{name}={value}" for name, value in variables.items() if value is not None
    )


def encode_notification(variables: Mapping[str, str | None]) -> bytes:
    """The block: ``NAME=VALUE\\0`` or ``NAME\\0`` per entry, then ``\\0``."""
    parts = []
    for name, value in variables.items():
        if not name or "=" in name or "\0" in name or (value is not None and "\0" in value):
            raise ValueError(f"cannot encode variable {name!r}")
        parts.append(name if value is None else f"{name}={value}")
    block = "".join(part + "\0" for part in parts).encode() + b"\0"
    if len(block) > MAX_NOTIFICATION:
        raise ValueError("notification block too large")
    return block


def decode_notification(block: bytes) -> Variables:
    """Inverse of :func:`encode_notification`; ValueError if ``block`` is not
    a complete block (a reader that got EOF first knows the handshake failed)."""
    if not block.endswith(b"\0\0") and block != b"\0":
        raise ValueError("incomplete notification block")
    body = block[:-1]
    variables: Variables = {}
    for entry in body.split(b"\0")[:-1]:
        if not entry:
            raise ValueError("empty entry in notification block")
        name, eq, value = entry.decode().partition("=")
        variables[name] = value if eq else None
    return variables


def write_notification(fd: int, block: bytes) -> None:
    """Write the block to ``fd`` and close it; a reader that went away is
    not our failure (it will not start the application)."""
    try:
        view = memoryview(block)
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)
