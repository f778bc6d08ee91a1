"""UCSPI TCP environment variables (PROTO=TCP, TCPLOCALIP, ...), pure.

Shared by the TCP clients (s6-tcpclient, s6-tlsclient) and servers
(s6-tcpserver, s6-tlsserver). Hostnames are looked up by the caller (or not,
with ``-H``) and passed in; ``None`` means "unset".
"""

from __future__ import annotations

import ipaddress


def canonical_ip(address: str) -> str:
    """IPv4-mapped IPv6 addresses as plain IPv4, as s6 reports them."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def tcp_environment(
    *,
    local: tuple[str, int],
    remote: tuple[str, int],
    local_host: str | None = None,
    remote_host: str | None = None,
    other_connections: int | None = None,
) -> dict[str, str | None]:
    """The UCSPI variables for one connection; ``TCPCONNNUM`` only for a
    server: the client IP's *other* connections open now
    (``other_connections``, 0 for its first, as s6-tcpserverd counts);
    ``TCPREMOTEINFO`` always unset."""
    variables: dict[str, str | None] = {
        "PROTO": "TCP",
        "TCPLOCALIP": canonical_ip(local[0]),
        "TCPLOCALPORT": str(local[1]),
        "TCPREMOTEIP": canonical_ip(remote[0]),
        "TCPREMOTEPORT": str(remote[1]),
        "TCPLOCALHOST": local_host,
        "TCPREMOTEHOST": remote_host,
        "TCPREMOTEINFO": None,
    }
    if other_connections is not None:
        variables["TCPCONNNUM"] = str(other_connections)
    return variables
