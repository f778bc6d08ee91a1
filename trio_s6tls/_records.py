"""Tell how the peer's TLS stream ended.

Theory of operation. With ``OP_IGNORE_UNEXPECTED_EOF`` set (which we need:
without it a ragged EOF leaves OpenSSL unable to *send*, so a half-closing
peer never gets its reply), OpenSSL reports a peer's close_notify, a TCP EOF
at a record boundary and a TCP EOF in the middle of a record all the same
way: a read of zero bytes. The close model (docs/close-semantics.rst) tells
them apart (close_notify: clean; boundary EOF: "ragged", fatal only with
``-J``; mid-record EOF, its 5-byte header included: always fatal).

Two ways to know, one per transport:

* **On a socket** (:class:`SocketRecordState`) OpenSSL is asked once the
  read returned 0 (:class:`~._openssl.RecordProbe`): a close_notify is a
  received shutdown without an EOF read by the socket BIO (OpenSSL reads
  one record at a time, so it has not read the FIN behind the alert); a
  truncation is an EOF with a record begun. Nothing runs per record: the
  message callback below is turned off for the connection (it cost some
  10 % of a bulk transfer's CPU).
* **On memory BIOs**, whose EOF flag only means "empty" (also the
  transport of a socket where ctypes cannot reach the ``SSL *``: see
  :func:`~._engine.tls_over`), OpenSSL's message callback
  watches every record header read and every non-application-data message
  after decryption (alerts included). Per connection, :class:`RecordState`
  keeps ``close_notify`` (the alert has been read) and ``partial`` (a
  header read, its body not yet consumed; a decrypted message or a read
  that returned application data, :meth:`RecordState.data`, clears it). At
  a zero-byte read: ``close_notify`` → clean; ``partial``, or a header cut
  short that the probe sees buffered → truncated; else ragged.
"""

from __future__ import annotations

import _ssl
import ssl
from typing import Any

from ._openssl import RecordProbe, record_probe

RECORD_SIZE = 16384 + 256  # one TLS record's worth of plaintext, with slack

_HEADER = 256  # SSL3_RT_HEADER: a record header was read/written
_ALERT = 21
_CLOSE_NOTIFY = 0


class RecordState:
    __slots__ = ("_probe", "close_notify", "partial")

    def __init__(self, probe: RecordProbe | None = None) -> None:
        self.close_notify = False
        self.partial = False
        self._probe = probe  # sees a header cut short, which the callback never does

    def data(self) -> None:
        """A read returned application data: its record was complete."""
        self.partial = False

    def ending(self) -> str:
        """How the stream ended: ``close_notify``, ``ragged`` or ``truncated``."""
        if self.close_notify:
            return "close_notify"
        if self.partial or (self._probe is not None and self._probe.inside_record()):
            return "truncated"
        return "ragged"


def _observe(
    conn: Any, direction: str, _version: int, content_type: int, _msg_type: int, data: bytes
) -> None:
    if direction != "read":
        return
    state = getattr(conn, "s6_records", None)
    if not isinstance(state, RecordState):
        return
    if content_type == _HEADER:
        state.partial = True
        return
    state.partial = False
    if content_type == _ALERT and len(data) >= 2 and data[1] == _CLOSE_NOTIFY:
        state.close_notify = True


def watch_records(context: ssl.SSLContext) -> None:
    """Install the observer on ``context`` (idempotent).

    Set on the C-level attribute: ``SSLContext._msg_callback``'s Python
    wrapper converts every argument to an enum, which costs several times
    more per record.
    """
    _ssl._SSLContext._msg_callback.__set__(context, _observe)  # type: ignore[attr-defined]


class SocketRecordState:
    """The same answers as :class:`RecordState` for a connection reading a
    socket itself, asked of OpenSSL at the end instead of watched record by
    record: a close_notify is a received shutdown with no EOF read; a
    truncation an EOF read inside a record."""

    __slots__ = ("_probe",)

    def __init__(self, probe: RecordProbe) -> None:
        self._probe = probe

    @property
    def close_notify(self) -> bool:
        return self._probe.shutdown_received() and not self._probe.eof_read()

    def data(self) -> None:
        """Nothing to note: OpenSSL is asked at the end."""

    def ending(self) -> str:
        if self.close_notify:
            return "close_notify"
        return "truncated" if self._probe.inside_record() else "ragged"


Records = RecordState | SocketRecordState


def attach(conn: ssl.SSLSocket | ssl.SSLObject) -> Records:
    """The record state of a new connection, kept on it as ``s6_records``:
    asked of OpenSSL for a socket (SocketTLS exists only where ctypes
    allows it), fed by the message callback for memory BIOs."""
    state: Records
    probe = record_probe(conn, silence_callback=isinstance(conn, ssl.SSLSocket))
    if isinstance(conn, ssl.SSLSocket) and probe is not None:
        state = SocketRecordState(probe)
    else:  # a memory BIO's EOF flag means "empty": watch, and ask only about a header
        state = RecordState(probe)
    conn.s6_records = state  # type: ignore[union-attr]
    return state
