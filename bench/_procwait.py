"""Waiting for a child's exit precisely, with a bound (Linux: pidfds).

``subprocess.Popen.wait(timeout)`` polls: between ``waitpid(WNOHANG)`` calls
it sleeps 0.5 ms, then 1, 2, 4 ... up to 50 ms, so an exit is seen up to
50 ms late and a latency snaps to the rungs of that ladder (about 31.5,
63.5, 113.5, 163.5 ms after the wait began). ``communicate(timeout)`` and
``run(timeout=...)`` end with the same wait. A pidfd becomes readable at the
exit itself. Not a benchmark: a helper for those that time processes.
"""

from __future__ import annotations

import os
import select
import subprocess
import time


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Wait at most ``timeout`` seconds for ``process`` to exit; returns its
    exit code and the ``time.monotonic()`` at which the exit was seen.
    Raises :class:`subprocess.TimeoutExpired` past the bound."""
    fd = os.pidfd_open(process.pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    seen = time.monotonic()
    if not ready:
        raise subprocess.TimeoutExpired(process.args, timeout)
    return process.wait(), seen
