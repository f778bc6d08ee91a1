"""The engine over file descriptors, as s6-tlsc-io and s6-tlsd-io run it:
check the fds, build the context from the environment, drop privileges,
then ``trio.run`` the engine. Also what the forking wrappers run in their
engine child."""

from __future__ import annotations

import os
import signal
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from ._engine import CHUNK, network_from_fds, run_engine, tls_over
from ._errors import EXIT_ENGINE, EXIT_SYSTEM, Fatal, UsageError, describe_os_error
from ._fds import check_open
from ._fdstreams import FdPairStream
from ._handshake_info import Variables, encode_notification, write_notification
from ._identity import drop_privileges
from ._log import Log
from ._tlsconfig import TLSOptions, context_from_environment


@dataclass(frozen=True)
class FdPlan:
    """Which fds are the network and which the local application."""

    network_read: int
    network_write: int
    local_read: int
    local_write: int
    notify_fd: int | None = None

    def check_distinct(self) -> None:
        """The network, the local side and the notification fd are three
        different things: sharing an fd would tunnel TLS into itself."""
        network = {self.network_read, self.network_write}
        local = {self.local_read, self.local_write}
        if network & local:
            raise UsageError("the network and the local fds must differ")
        if self.notify_fd is not None and self.notify_fd in network | local:
            raise UsageError("the notification fd must differ from the other fds")


def run_io(
    plan: FdPlan,
    env: Mapping[str, str],
    options: TLSOptions,
    *,
    server_side: bool,
    log: Log,
) -> int:
    """Everything s6-tls[cd]-io does after parsing its command line."""
    plan.check_distinct()
    check_open([plan.network_read, plan.network_write, plan.local_read, plan.local_write])
    if plan.notify_fd is not None:
        check_open([plan.notify_fd])
    context, (uid, gid) = context_from_environment(env, options, server_side=server_side)
    drop_privileges(uid, gid)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    server_hostname = None if server_side else options.servername

    def notify(variables: Variables) -> None:
        if plan.notify_fd is not None:
            write_notification(plan.notify_fd, encode_notification(variables))

    async def main() -> int:
        # One connection per process: its few pipes may be as large as a read.
        network, spare_fds = network_from_fds(
            plan.network_read, plan.network_write, pipe_size=CHUNK
        )
        local = FdPairStream(plan.local_read, plan.local_write, pipe_size=CHUNK)
        try:
            try:
                tls = tls_over(
                    network, context, server_side=server_side, server_hostname=server_hostname
                )
            except (ssl.SSLError, ValueError, OSError) as error:
                await local.aclose()
                log.fatal(f"unable to set up the TLS engine: {error}")
                return EXIT_ENGINE
            return await run_engine(
                tls, local, options, server_side=server_side, notify=notify, log=log
            )
        finally:
            for fd in spare_fds:
                os.close(fd)

    return trio.run(main)


def run_engine_child(
    *,
    name: str,
    options: TLSOptions,
    server_side: bool,
    network: tuple[int, int],
    local: tuple[int, int],
    notify_fd: int | None,
) -> int:
    """What a forked engine child does: the engine of s6-tls[cd]-io on these
    fds (``local`` = (read, write) of the cleartext side), as an exit code."""
    log = Log(name, options.verbosity)
    plan = FdPlan(network[0], network[1], local[0], local[1], notify_fd)
    try:
        return run_io(plan, os.environ, options, server_side=server_side, log=log)
    except Fatal as error:
        log.fatal(error.message)
        return error.exit_code
    except OSError as error:
        log.fatal(describe_os_error(error))
        return EXIT_SYSTEM
