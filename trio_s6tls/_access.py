"""The access step of a connection, before any TLS: the rules (``-i``),
the PROXY header (``-L``), and the host names of both ends (``-h``/``-H``,
``-p``, ``-l``) — for the super-servers. The lookups themselves are
:mod:`~trio_s6tls._names`' (s6-dns' way, as the clients make them too).

Theory of operation:

* Everything here may wait on something slow that is not the client: a
  file system (rules), the client itself (a PROXY header), DNS. So the
  blocking parts run in threads with limiters of their own (slow DNS must
  never hold up the reading of rules, nor the spawning of progs), and every
  wait of a connection is bounded by ``-t`` (:attr:`Access.timeout_ms`,
  0 = no bound). A thread that does not come back in time is abandoned:
  it holds a thread, never the event loop nor another connection.
* A refusal is a :class:`Refused` carrying the reason; it has been logged
  already, and ends that connection only.
* The PROXY header is read exactly: what follows it is the TLS
  ClientHello, so :func:`~trio_s6tls._proxy.bytes_wanted` says how much may
  be read at each step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import trio

from . import _names, _proxy, _rules
from ._errors import EXIT_SYSTEM, Fatal, describe_os_error
from ._log import Log


class Refused(Exception):
    """The connection ends before prog, for the reason given (already logged)."""


class Access:
    """The access step of one server's connections (see the module doc)."""

    def __init__(
        self,
        *,
        log: Log,
        timeout_ms: int,
        threads: int,
        rules_dir: str | None = None,
        rules_file: str | None = None,
        remote_lookup: bool = True,
        use_hosts: bool = False,
        paranoid: bool = False,
        local_name: str | None = None,
        strict_resolution: bool = False,
    ) -> None:
        self.log = log
        self.timeout_ms = timeout_ms
        self.rules_dir = rules_dir
        self.rules_file = rules_file
        self.remote_lookup = remote_lookup
        self.use_hosts = use_hosts
        self.paranoid = paranoid
        self.local_name = local_name
        self.strict_resolution = strict_resolution
        self._lookup_threads = trio.CapacityLimiter(max(threads, 1))
        self._rules_threads = trio.CapacityLimiter(max(threads, 1))

    def bounded(self) -> trio.CancelScope:
        """The ``-t`` bound (none if 0)."""
        return trio.move_on_after(self.timeout_ms / 1000) if self.timeout_ms else trio.CancelScope()

    async def rules(self, remote: tuple[str, int]) -> _rules.Decision:
        """``-i`` (a directory) or ``-x`` (its CDB): allowed (with what
        ``allow`` adds), or :class:`Refused`. A rules set that cannot be
        read or holds a broken entry is what s6-tcpserver-access dies of
        (``fatal``, 111): logged with that category, it ends this
        connection only."""
        if self.rules_file is not None:
            from . import _accessrules_cdb  # only -x pays for the CDB reader

            lookup: Callable[[str, str], _rules.Decision] = _accessrules_cdb.lookup
            source = self.rules_file
        else:
            assert self.rules_dir is not None
            lookup, source = _rules.lookup, self.rules_dir
        with self.bounded():
            try:
                decision = await trio.to_thread.run_sync(
                    lookup,
                    source,
                    remote[0],
                    limiter=self._rules_threads,
                    abandon_on_cancel=True,  # a stuck file system keeps the thread, not us
                )
            except Fatal as error:
                where = f"{remote[0]} port {remote[1]}"
                self.log.fatal(f"unable to check the rules for {where}: {error.message}")
                raise Refused("rules unusable") from None
            if not decision.allowed:
                self.log.info(f"deny {remote[0]} port {remote[1]}", level=2)
                raise Refused("denied by rules")
            self.log.info(f"allow {remote[0]} port {remote[1]} by {decision.key}", level=2)
            return decision
        self.log.warn(f"rules lookup for {remote[0]} port {remote[1]} timed out")
        raise Refused("rules lookup timed out")

    async def proxy_header(
        self, sock: trio.socket.SocketType, remote: tuple[str, int]
    ) -> _proxy.ProxyHeader:
        """``-L``: read exactly the header (the TLS ClientHello follows it)."""
        buffer = b""
        try:
            with self.bounded():
                while wanted := _proxy.bytes_wanted(buffer):
                    chunk = await sock.recv(wanted)
                    if not chunk:
                        raise _proxy.ProxyError("connection closed inside the PROXY header")
                    buffer += chunk
                return _proxy.parse(buffer)
            raise _proxy.ProxyError("timed out waiting for the PROXY header")
        except (_proxy.ProxyError, OSError) as error:
            detail = describe_os_error(error) if isinstance(error, OSError) else str(error)
            self.log.warn(f"bad PROXY header from {remote[0]} port {remote[1]}: {detail}")
            raise Refused("bad PROXY header") from None

    async def names(
        self, local: tuple[str, int], remote: tuple[str, int]
    ) -> tuple[str | None, str | None]:
        """``TCPREMOTEHOST`` and ``TCPLOCALHOST``, as s6-tcpserver-access
        finds them: reverse lookups (both at once) unless ``-H`` (``-p``
        looks up even then); ``/etc/hosts`` first with ``-h``, else the DNS
        only; names from the DNS end with a dot. ``-l`` names the local
        host; ``-p`` drops a remote name from the DNS that does not resolve
        back to the address. A remote host the DNS knows no name for is
        unset; a local one is empty.

        ``-w`` (:attr:`strict_resolution`) refuses the client, as C's
        s6-tcpserver-access does, when a lookup it needs *fails*: the hosts
        file or the DNS configuration cannot be used, or ``-p``'s lookups
        got no answer or a DNS error. Otherwise a failed lookup only leaves
        the name unset."""
        local_host = self.local_name
        if not (self.remote_lookup or self.paranoid):
            return None, local_host
        found = _names.ReverseName(None)
        unusable: list[str] = []  # why the DNS could not be used at all
        with self.bounded() as scope:
            async with trio.open_nursery() as nursery:

                async def look_up_local() -> None:
                    nonlocal local_host
                    local_host = (await self._reverse_name(local[0], unusable)).name

                if local_host is None:
                    nursery.start_soon(look_up_local)
                found = await self._reverse_name(remote[0], unusable, paranoid=self.paranoid)
        if scope.cancelled_caught and self.paranoid:  # -t ran out: C's query timed out
            found = _names.ReverseName(
                None, "unable to (paranoidly) resolve PTR for client address: query timed out", 99
            )
        if found.failure is not None:
            self.log.warn(found.failure, level=3)
        if self.strict_resolution and (unusable or found.failure is not None):
            status = EXIT_SYSTEM if unusable else found.exit_code
            self.log.info(f"deny {remote[0]} port {remote[1]}: a name lookup failed", level=2)
            raise Refused(f"strict resolution: lookup failed ({status})")
        remote_host = found.name or None
        if remote_host is None:
            self.log.info(f"no name for {remote[0]}", level=3)  # -v: C's lines only
        return remote_host, local_host

    async def _reverse_name(
        self, ip: str, unusable: list[str], *, paranoid: bool = False
    ) -> _names.ReverseName:
        timeout = self.timeout_ms / 1000 if self.timeout_ms else _names.DEFAULT_TIMEOUT
        lookup = functools.partial(
            _names.reverse_lookup, ip, use_hosts=self.use_hosts, paranoid=paranoid, timeout=timeout
        )
        try:
            return await trio.to_thread.run_sync(
                lookup, limiter=self._lookup_threads, abandon_on_cancel=True
            )
        except _names.NameLookupError as error:  # an unusable /etc/hosts or resolv.conf
            # C: "unable to init DNS", a warning at -v 2
            self.log.warn(f"unable to look up {ip}: {error.message}", level=2)
            unusable.append(error.message)
            return _names.ReverseName(None)
