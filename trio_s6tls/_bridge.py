"""The first bytes of a tunnel, moved before trio is imported.

A one-shot client's engine child starts on a connection whose handshake is
done (:mod:`._early_handshake`), but importing trio takes it 100-250 ms:
longer than a request and its reply over most networks. So a thread imports
trio while this module's loop, on ``poll`` and the standard library alone,
carries data both ways; once the import is done, the trio engine takes over
(:func:`~._engine.run_engine` with the :class:`Carried` state) and applies
the whole close model of docs/close-semantics.rst.

The loop carries data only, and hands over at the first thing that is not:

- prog's EOF ends the carrying up, not down (a pipe's EOF stays: the
  engine reads it again and closes as the model says);
- the network's end or a read error stops it at once; the engine sees that
  end on its first read (:meth:`~._socket_tls.SocketTLS.adopt`), after
  delivering what the loop decrypted before it;
- a refused write is the connection's death (111), as in the engine;
- bytes a full pipe or socket did not take yet are handed over, to be
  written first. Nothing is read in between, so the order holds.
"""

from __future__ import annotations

import os
import select
import ssl
import sys

CHUNK = 64 * 1024  # four records: the loop's reads are never a bottleneck
_SWITCH_INTERVAL = 0.0005  # s: how long the importing thread keeps the GIL from us


class Carried:
    """Where the carrying stopped: what the trio engine must do first.
    (A plain class: the engine child must not wait for ``dataclasses``.)"""

    def __init__(self) -> None:
        self.up = b""  # read from prog, not yet taken by OpenSSL: sent first
        self.down = b""  # decrypted, not yet taken by prog's pipe: delivered first
        self.network_ended = False  # reading the network is over ...
        self.network_error: Exception | None = None  # ... with this error (None: an EOF)
        self.refused: Exception | None = None  # the network refused our data (111)


def carry_first_bytes(
    connection: ssl.SSLSocket, local_read: int, local_write: int, ready_fd: int
) -> Carried:
    """Move data between prog's pipes and ``connection`` until ``ready_fd``
    is readable (trio is imported) or something other than data happens;
    returns what the engine must do first."""
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(_SWITCH_INTERVAL)
    try:
        return _Bridge(connection, local_read, local_write).run(ready_fd)
    finally:
        sys.setswitchinterval(previous_interval)


class _Bridge:
    def __init__(self, connection: ssl.SSLSocket, local_read: int, local_write: int) -> None:
        for fd in (local_read, local_write):
            os.set_blocking(fd, False)
        connection.setblocking(False)
        self.connection = connection
        self.local_read, self.local_write = local_read, local_write
        self.carried = Carried()
        self.buffer = bytearray(CHUNK)
        self.down = memoryview(b"")
        self.reading_local = True
        self.stopped = False
        self.poller = select.poll()

    def run(self, ready_fd: int) -> Carried:
        while True:
            moved = self._step_down()
            if not self.stopped:
                moved |= self._step_up()
            if self.stopped or self._wait(ready_fd, block=not moved):
                break
        self.carried.down = bytes(self.down)
        return self.carried

    def _step_down(self) -> bool:
        """Network → prog: write what is held, else read a record."""
        if self.down:
            try:
                self.down = self.down[os.write(self.local_write, self.down) :]
                return True
            except BlockingIOError:
                return False
            except OSError:
                self.stopped = True  # prog's side is gone: the engine meets it again
                return False
        try:
            count = self.connection.recv_into(self.buffer)
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLWantWriteError:
            self.stopped = True  # a read that must write (renegotiation): the engine's
            return False
        except (ssl.SSLError, OSError) as error:
            count, self.carried.network_error = 0, error
        if not count:
            self.carried.network_ended = self.stopped = True
            return False
        self.down = memoryview(bytes(self.buffer[:count]))
        return True

    def _step_up(self) -> bool:
        """Prog → network: send what is held, else read prog's pipe."""
        carried = self.carried
        if carried.up:
            try:
                sent = self.connection.send(carried.up)
            except ssl.SSLWantWriteError:
                return False
            except ssl.SSLWantReadError:
                self.stopped = True
                return False
            except (ssl.SSLError, OSError) as error:
                carried.refused, self.stopped = error, True
                return False
            carried.up = carried.up[sent:]
            return True
        if not self.reading_local:
            return False
        try:
            carried.up = os.read(self.local_read, CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            pass
        # EOF (or an error) stays: the engine reads it again.
        self.reading_local = bool(carried.up)
        return True

    def _wait(self, ready_fd: int, *, block: bool) -> bool:
        """Wait until an operation may move (only look, if one just did);
        whether ``ready_fd`` says to stop."""
        network = select.POLLOUT if self.carried.up else 0
        if not self.down:
            network |= select.POLLIN
        watched = {ready_fd: select.POLLIN}
        if network:  # a socket watched for nothing would still wake us on a hangup
            watched[self.connection.fileno()] = network
        if self.down:
            watched[self.local_write] = select.POLLOUT
        if self.reading_local and not self.carried.up:
            watched[self.local_read] = select.POLLIN
        for fd, events in watched.items():
            self.poller.register(fd, events)
        try:
            ready = self.poller.poll(-1 if block else 0)
        finally:
            for fd in watched:
                self.poller.unregister(fd)
        return any(fd == ready_fd for fd, _ in ready)
