"""The TCP half of s6-tcpclient and s6-tlsclient: resolve, connect, describe.

Theory of operation — everything here is blocking and runs **before** any
event loop and before any fork; the name lookups run in threads that are
joined before the call returns (no thread outlives it: safe to fork):

1. The host is an IP address, or a list of them (``a,b``, as C's
   ``ip46_scanlist``), or ``0``/empty (``::1`` then ``127.0.0.1``), or a
   name, which :mod:`~trio_s6tls._names` resolves as s6-dns does: the DNS
   only, ``/etc/hosts`` first with ``-h``; AAAA then A records (``-4``/
   ``-6``: one family); with ``-n``, qualified with the search list first.
   ``-H`` means no lookups at all: a name is then a
   usage error, as in C.
2. Connection attempts go through the addresses one by one, like
   ucspi-tcp's tcpclient: a first round with ``X`` seconds per address, then
   a second round with ``Y`` seconds for the addresses that timed out (not
   for those that refused) — ``-T X+Y``, default 2+58. ``-t`` bounds the
   whole thing. ``-i``/``-p`` bind the local end first.
3. The connected socket is described with the UCSPI client variables
   (``PROTO``, ``TCPLOCALIP``, ... ``TCPREMOTEINFO`` unset); host names come
   from reverse lookups (both at once) unless ``-H``: ``name.`` from the
   DNS, empty when the server knows no name, unset when it did not answer;
   ``-l`` names the local host.

Lookups are bounded by ``-t``, or :data:`~trio_s6tls._names.DEFAULT_TIMEOUT`
seconds without it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import time
from collections.abc import Sequence
from typing import NamedTuple

from ._errors import EXIT_SYSTEM, EXIT_USAGE, Fatal, UsageError, describe_os_error
from ._log import Log
from ._ucspi import tcp_environment

AddressInfo = tuple[int, str, tuple[str, int] | tuple[str, int, int, int]]


class TcpClientOptions(NamedTuple):
    """The TCP options of s6-tcpclient and s6-tlsclient."""

    family: int = socket.AF_UNSPEC  # -4 / -6
    nodelay: bool = False  # -D
    lookup_names: bool = True  # -H turns it off: no lookup at all
    use_hosts: bool = False  # -h: /etc/hosts before the DNS
    qualify: bool = False  # -n: host qualified with the search list; -N (default)
    local_name: str | None = None  # -l
    total_timeout: float = 0.0  # -t, 0 = none
    rounds: tuple[float, float] = (2.0, 58.0)  # -T X+Y
    local_ip: str | None = None  # -i
    local_port: int | None = None  # -p
    verbosity: int = 1  # -q 0, -Q 1, -v 2


#: The C tools take seconds as an ``unsigned int``; socket timeouts must fit a time_t too.
MAX_SECONDS = 2**32 - 1


def parse_seconds(text: str) -> float:
    """A number of seconds from 0 to :data:`MAX_SECONDS` (decimals allowed)."""
    value = float(text)
    if not 0 <= value <= MAX_SECONDS:  # also refuses nan and inf
        raise ValueError(text)
    return value


def parse_rounds(text: str) -> tuple[float, float]:
    """``-T X+Y`` (or just ``X``: no second round)."""
    first, plus, second = text.partition("+")
    return parse_seconds(first), parse_seconds(second) if plus else 0.0


#: s6-tcpclient tries at most this many addresses.
MAX_ADDRESSES = 16
_LIST_SEPARATORS = re.compile(r"[,; \t\r\n]+")


def ip_list(host: str) -> list[str] | None:
    """``host`` as a list of IP addresses (``a,b c;d``), or None if it is
    not one (a name)."""
    words = [word for word in _LIST_SEPARATORS.split(host) if word]
    try:
        return [str(ipaddress.ip_address(word)) for word in words[:MAX_ADDRESSES]] or None
    except ValueError:
        return None


def lookup_timeout(options: TcpClientOptions) -> float:
    """The bound on each name lookup: ``-t``, else the library's default."""
    from ._names import DEFAULT_TIMEOUT

    return options.total_timeout or DEFAULT_TIMEOUT


def resolve(host: str, port: str, options: TcpClientOptions) -> list[AddressInfo]:
    """Every (family, ip, sockaddr) for host:port (see the module doc)."""
    port_number = int(port)
    ips: list[str] | None
    if host in ("", "0"):
        ips = ["::1", "127.0.0.1"]
    else:
        ips = ip_list(host)
        if ips is not None and options.family != socket.AF_UNSPEC:
            # -4/-6: C scans addresses of that family only, else takes a name.
            version = 6 if options.family == socket.AF_INET6 else 4
            ips = [ip for ip in ips if ipaddress.ip_address(ip).version == version] or None
        if ips is None and not options.lookup_names:
            raise UsageError(f"with -H, host must be an IP address, not {host!r}")
        if ips is None:
            from ._names import forward_addresses

            families = {int(socket.AF_INET): "4", int(socket.AF_INET6): "6"}.get(
                options.family, "46"
            )
            ips = forward_addresses(
                host,
                use_hosts=options.use_hosts,
                families=families,
                timeout=lookup_timeout(options),
                qualify=options.qualify,
            )[:MAX_ADDRESSES]
    if not ips:
        raise Fatal(EXIT_USAGE, f"no IP address for {host}")
    addresses: list[AddressInfo] = []
    for ip in ips:
        if ":" in ip:
            addresses.append((socket.AF_INET6, ip, (ip, port_number, 0, 0)))
        else:
            addresses.append((socket.AF_INET, ip, (ip, port_number)))
    return addresses


def _attempt(address: AddressInfo, options: TcpClientOptions, timeout: float) -> socket.socket:
    family, _, sockaddr = address
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if options.local_ip is not None or options.local_port is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(
                (
                    options.local_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0"),
                    options.local_port or 0,
                )
            )
        sock.settimeout(timeout)
        sock.connect(sockaddr)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(
    target: str,
    addresses: Sequence[AddressInfo],
    options: TcpClientOptions,
    log: Log | None = None,
) -> socket.socket:
    """Try every address, round one then round two (see the module doc);
    ``target`` names the destination in the error message. Each attempt is
    logged at verbosity 2 (``-v``)."""
    log = log or Log("trio_s6tls", options.verbosity)
    deadline = time.monotonic() + options.total_timeout if options.total_timeout else None
    last_error: OSError = OSError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
    pending = list(addresses)
    for round_timeout in options.rounds:
        if round_timeout <= 0 or not pending:
            continue
        timed_out: list[AddressInfo] = []
        for address in pending:
            timeout = round_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    last_error = TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
                    break
            where = f"{address[1]} port {address[2][1]}"
            try:
                sock = _attempt(address, options, timeout)
            except TimeoutError:
                last_error = TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
                log.info(f"connecting to {where}: timed out after {timeout:g} s")
                timed_out.append(address)
                continue
            except OSError as error:
                log.info(f"connecting to {where}: {describe_os_error(error)}")
                if error.errno == errno.EADDRNOTAVAIL and options.local_ip:
                    raise Fatal(
                        EXIT_SYSTEM,
                        f"unable to bind to {options.local_ip}: {describe_os_error(error)}",
                    ) from None
                last_error = error
                continue
            log.info(f"connected to {where}")
            return sock
        pending = timed_out
    raise Fatal(EXIT_SYSTEM, f"unable to connect to {target}: {describe_os_error(last_error)}")


def client_environment(sock: socket.socket, options: TcpClientOptions) -> dict[str, str | None]:
    """The UCSPI client variables for a connected socket (host names: see
    the module doc)."""
    local = sock.getsockname()
    remote = sock.getpeername()
    local_host = options.local_name
    remote_host = None
    if options.lookup_names:
        from ._dns import at_once
        from ._names import reverse_name

        def lookup(ip: str) -> str | None:
            return reverse_name(ip, use_hosts=options.use_hosts, timeout=lookup_timeout(options))

        # Both at once, as s6-tcpclient asks them.
        remote_ip, local_ip = str(remote[0]), str(local[0])
        if local_host is None:
            remote_host, local_host = at_once([lambda: lookup(remote_ip), lambda: lookup(local_ip)])
        else:
            remote_host = lookup(remote_ip)
    return tcp_environment(
        local=(local[0], local[1]),
        remote=(remote[0], remote[1]),
        local_host=local_host,
        remote_host=remote_host,
    )


def open_connection(
    host: str, port: str, options: TcpClientOptions, log: Log | None = None
) -> tuple[int, dict[str, str | None]]:
    """Resolve, connect and describe: the socket's fd (close-on-exec, above
    the fds an interface names) and its UCSPI variables."""
    addresses = resolve(host, port, options)
    sock = connect(f"{host} port {port}", addresses, options, log)
    if options.nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        env = client_environment(sock, options)
    except OSError as error:  # the peer may already be gone
        sock.close()
        raise Fatal(
            EXIT_SYSTEM, f"unable to describe the connection: {describe_os_error(error)}"
        ) from None
    import fcntl

    fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 64)
    sock.close()
    return fd, env
