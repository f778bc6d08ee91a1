"""The TCP half of s6-tcpclient and s6-tlsclient: resolve, connect, describe.

Theory of operation — everything here is blocking and runs **before** any
event loop and before any fork, in a process with one thread:

1. ``getaddrinfo`` resolves the host (an IP literal or a name) into every
   address of the allowed families (``-4``/``-6``), in the resolver's order.
2. Connection attempts go through the addresses one by one, like
   ucspi-tcp's tcpclient: a first round with ``X`` seconds per address, then
   a second round with ``Y`` seconds for the addresses that timed out (not
   for those that refused) — ``-T X+Y``, default 2+58. ``-t`` bounds the
   whole thing. ``-i``/``-p`` bind the local end first.
3. The connected socket is described with the UCSPI client variables
   (``PROTO``, ``TCPLOCALIP``, ... ``TCPREMOTEINFO`` unset); host names come
   from reverse lookups unless ``-H`` (``-l`` names the local host; ``-n``
   keeps a remote name only if it resolves back to the address).

Blocking calls here are deliberate: trio's ``getaddrinfo`` runs in a worker
thread, and a live thread at fork time is a trap (docs/design.rst, "Process model").
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ._access import reverse_name
from ._errors import EXIT_SYSTEM, EXIT_USAGE, Fatal, describe_os_error
from ._log import Log
from ._ucspi import tcp_environment

AddressInfo = tuple[int, str, tuple[str, int] | tuple[str, int, int, int]]


@dataclass(frozen=True)
class TcpClientOptions:
    """The TCP options of s6-tcpclient and s6-tlsclient."""

    family: int = socket.AF_UNSPEC  # -4 / -6
    nodelay: bool = False  # -D
    lookup_names: bool = True  # -h (default) / -H
    paranoid: bool = False  # -n / -N (default)
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


def resolve(host: str, port: str, family: int) -> list[AddressInfo]:
    """Every (family, ip, sockaddr) for host:port, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except socket.gaierror as error:
        code = EXIT_USAGE if error.errno == socket.EAI_SERVICE else EXIT_SYSTEM
        raise Fatal(code, f"unable to resolve {host} port {port}: {error.strerror}") from None
    except UnicodeError:
        raise Fatal(EXIT_USAGE, f"invalid host name: {host!r}") from None
    seen: set[tuple[object, ...]] = set()
    addresses: list[AddressInfo] = []
    for fam, _, _, _, sockaddr in infos:
        if (fam, *sockaddr) not in seen:
            seen.add((fam, *sockaddr))
            addresses.append((fam, str(sockaddr[0]), sockaddr))  # type: ignore[arg-type]
    if not addresses:
        raise Fatal(EXIT_SYSTEM, f"unable to resolve {host}: no address of the requested family")
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
    """The UCSPI client variables for a connected socket."""
    local = sock.getsockname()
    remote = sock.getpeername()
    local_host = options.local_name
    remote_host = None
    if options.lookup_names:
        remote_host = reverse_name(remote[0], paranoid=options.paranoid)
        if local_host is None:
            local_host = reverse_name(local[0])
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
    addresses = resolve(host, port, options.family)
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
