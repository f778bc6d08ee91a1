"""Handshake, then exec (s6-tlsc, s6-tlsd, s6-tlsclient): a forked engine
child does the TLS, this process becomes prog once the handshake is done.

Theory of operation:

1. **Fork first, outside any event loop** (:func:`~trio_s6tls._spawn.fork_child`).
   The parent never runs ``trio.run`` and never imports trio; the child
   runs :func:`trio_s6tls._iorun.run_engine_child`, which does, or, on a
   connection whose handshake the parent did (``established``),
   :func:`trio_s6tls._early_handshake.run_established_child`, which moves
   the first bytes before trio is imported. At fork time the process has
   one thread and no loop, so the child inherits a sane state.
2. **prog's fds replace the network** (:func:`~trio_s6tls._fds.install_fds`):
   two pipes to the engine take the network fds' numbers (``prog_fds``);
   the network belongs to the engine alone.
3. **The notification decides**: the engine writes the ``SSL_*`` block on a
   pipe once the handshake is complete. A complete block: exec prog with
   those variables (:func:`~trio_s6tls._spawn.exec_program`). EOF without
   one: the handshake failed; wait for the engine and exit with its code
   (prog never runs).
4. **Who reaps the engine.** Once the wrapper has become prog, the engine
   stays prog's child, as with the C tools: prog may reap it, and when prog
   exits first the engine is re-parented to init (or the nearest
   subreaper), which reaps it. The engine exits once neither direction can
   carry data, so it never outlives the connection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ._env import program_environment
from ._errors import EXIT_SYSTEM, Fatal
from ._fds import check_open, close_fds, high_pipe, install_fds, null_fds, read_until_eof
from ._spawn import exec_program, fork_child, wait_exit_code

if TYPE_CHECKING:
    import ssl

    from ._tlsconfig import TLSOptions


def handshake_then_exec(
    prog: Sequence[str],
    *,
    name: str,
    options: TLSOptions,
    server_side: bool,
    network: tuple[int, int],
    prog_fds: tuple[int, int],
    keep_tls: bool,
    extra_env: Mapping[str, str | None] | None = None,
    established: ssl.SSLSocket | None = None,
) -> int:
    """s6-tlsc / s6-tlsd: fork an engine child on the ``network`` fds, wait
    for its handshake notification, then exec ``prog`` in this process with
    ``prog_fds`` (read, write) as pipes to the engine. Returns only on
    failure: the engine's exit code (prog never started), or raises
    :class:`Fatal`."""
    check_open(network)
    to_prog_read, to_prog_write = high_pipe()  # engine → prog (cleartext)
    from_prog_read, from_prog_write = high_pipe()  # prog → engine (cleartext)
    notify_read, notify_write = high_pipe()
    own_stdio = [fd for fd in (0, 1) if fd not in network]

    def engine() -> int:
        close_fds([to_prog_read, from_prog_write, notify_read])
        # Do not hold the caller's stdin/stdout open past prog's lifetime.
        null_fds(own_stdio)
        if established is not None:  # the handshake is done (_early_handshake)
            from ._early_handshake import run_established_child

            local = (from_prog_read, to_prog_write)
            spare = [fd for fd in set(network) if fd != established.fileno()]
            return run_established_child(
                name=name,
                options=options,
                connection=established,
                local=local,
                notify_fd=notify_write,
                server_side=server_side,
                spare=spare,
            )
        from ._iorun import run_engine_child  # trio: in the child only

        return run_engine_child(
            name=name,
            options=options,
            server_side=server_side,
            network=network,
            local=(from_prog_read, to_prog_write),
            notify_fd=notify_write,
        )

    pid = fork_child(engine)
    if established is not None:
        established.detach()  # the fd is closed below, with the network's
    close_fds([from_prog_read, to_prog_write, notify_write])
    # The network now belongs to the engine alone: prog's fds replace it.
    install_fds({prog_fds[0]: to_prog_read, prog_fds[1]: from_prog_write})
    leftovers = [fd for fd in set(network) if fd not in prog_fds]
    null_fds([fd for fd in leftovers if fd <= 2])
    close_fds([fd for fd in leftovers if fd > 2])

    from ._handshake_info import MAX_NOTIFICATION, decode_notification

    block = read_until_eof(notify_read, MAX_NOTIFICATION)
    try:
        variables = decode_notification(block)
    except (ValueError, UnicodeDecodeError):
        code = wait_exit_code(pid)  # the engine said why on stderr
        if code == 0:
            raise Fatal(EXIT_SYSTEM, "TLS engine exited without completing the handshake") from None
        return code
    updates: dict[str, str | None] = dict(variables)
    updates.update(extra_env or {})
    env = program_environment(os.environ, keep_tls=keep_tls, updates=updates)
    exec_program(prog, env, blocking_fds=prog_fds)
