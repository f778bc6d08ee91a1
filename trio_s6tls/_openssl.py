"""What the standard library does not expose of OpenSSL, through ctypes:
our close_notify with exactly one call of ``SSL_shutdown`` (below),
``SSL_MODE_RELEASE_BUFFERS``, and the record layer's state at the end of
the peer's stream (:class:`RecordProbe`). Each returns "not allowed" when
the layout check below fails, and the caller does without.

The standard library offers only ``unwrap()``, which calls ``SSL_shutdown``
a second time once the first has sent the alert. That second call reads the
peer's records in search of its close_notify, and fails on application data
(``APPLICATION_DATA_AFTER_CLOSE_NOTIFY``), throwing the data away. Under
TLS 1.3 a close_notify closes one direction only (RFC 8446, section 6.1):
after ours the peer may go on sending, and we must go on reading
(``SSL_read`` allows that). So we make the one call ourselves, through
:mod:`ctypes`, on the ``SSL *`` that Python's ``_ssl`` object wraps.

Finding that pointer relies on the layout of CPython's ``PySSLSocket``
(the object header, then ``Socket``, ``ssl``, ``ctx``, two small fields,
then ``owner``), unchanged from 3.7 to 3.13. It is checked before use: the
``owner`` slot must hold a weak reference to the very ``SSLSocket`` or
``SSLObject`` we hold. If the check fails (another interpreter, a changed
layout), :func:`send_close_notify_once` returns ``False`` and the caller
falls back to ``unwrap()`` with a memory BIO, hiding the BIO's contents
during the call; a socket's ``unwrap()`` would read the kernel's, so sockets
are then given memory BIOs too (:func:`reaches_openssl`).
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl
import weakref

_POINTER = ctypes.sizeof(ctypes.c_void_p)
_HEADER = object.__basicsize__
_SSL_OFFSET = _HEADER + _POINTER  # after the ``Socket`` weak reference
_OWNER_OFFSET = _HEADER + 4 * _POINTER  # after Socket, ssl, ctx and two small fields

_SSL_ERROR_WANT_READ = 2
_SSL_ERROR_WANT_WRITE = 3


def _load() -> ctypes.CDLL | None:
    try:
        # The _ssl extension's handle resolves the symbols of the libssl it
        # is linked with: the very library that made our SSL objects.
        library = ctypes.CDLL(_ssl.__file__)
        library.SSL_shutdown.argtypes = [ctypes.c_void_p]
        library.SSL_shutdown.restype = ctypes.c_int
        library.SSL_get_error.argtypes = [ctypes.c_void_p, ctypes.c_int]
        library.SSL_get_error.restype = ctypes.c_int
        library.ERR_clear_error.argtypes = []
        library.ERR_clear_error.restype = None
        library.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        library.SSL_ctrl.restype = ctypes.c_long
        library.SSL_set_msg_callback.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        library.SSL_set_msg_callback.restype = None
        library.SSL_get_shutdown.argtypes = [ctypes.c_void_p]
        library.SSL_get_shutdown.restype = ctypes.c_int
        library.SSL_get_rbio.argtypes = [ctypes.c_void_p]
        library.SSL_get_rbio.restype = ctypes.c_void_p
        library.BIO_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        library.BIO_ctrl.restype = ctypes.c_long
        library.SSL_rstate_string.argtypes = [ctypes.c_void_p]
        library.SSL_rstate_string.restype = ctypes.c_char_p
        library.SSL_has_pending.argtypes = [ctypes.c_void_p]
        library.SSL_has_pending.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    if _ssl._SSLSocket.__basicsize__ < _OWNER_OFFSET + _POINTER:  # type: ignore[attr-defined]
        return None
    return library


_LIBRARY = _load()


def _ssl_pointer(connection: ssl.SSLSocket | ssl.SSLObject) -> int | None:
    """The ``SSL *`` behind ``connection``, or None if the layout check fails."""
    inner = getattr(connection, "_sslobj", None)
    if inner is None or type(inner) is not _ssl._SSLSocket:  # type: ignore[attr-defined]
        return None
    base = id(inner)
    owner = ctypes.c_void_p.from_address(base + _OWNER_OFFSET).value
    if owner is None or owner not in {id(ref) for ref in weakref.getweakrefs(connection)}:
        return None
    return ctypes.c_void_p.from_address(base + _SSL_OFFSET).value


def reaches_openssl(context: ssl.SSLContext, *, server_side: bool) -> bool:
    """Whether this interpreter passes the layout check, tried on a
    throwaway connection of ``context``. Where it fails, a socket takes the
    memory-BIO transport (:func:`~trio_s6tls._engine.tls_over`): only that
    one can send close_notify without ``unwrap()`` dropping data."""
    if _LIBRARY is None:
        return False
    trial = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=server_side)
    return _ssl_pointer(trial) is not None


def send_close_notify_once(connection: ssl.SSLSocket | ssl.SSLObject) -> bool:
    """Queue our close_notify and write it (one ``SSL_shutdown``); reading
    stays possible. Returns False if this interpreter does not allow it.
    Raises ``ssl.SSLWantWriteError`` when the socket is full (call again
    once writable: OpenSSL then only finishes writing the alert), and
    ``ssl.SSLError`` for any other failure."""
    pointer = _ssl_pointer(connection) if _LIBRARY is not None else None
    if pointer is None or _LIBRARY is None:
        return False
    result = _LIBRARY.SSL_shutdown(pointer)
    if result >= 0:
        return True
    error = _LIBRARY.SSL_get_error(pointer, result)
    _LIBRARY.ERR_clear_error()  # leave no stale entry for Python's next call
    if error == _SSL_ERROR_WANT_WRITE:
        raise ssl.SSLWantWriteError(error, "close_notify not yet written")
    if error == _SSL_ERROR_WANT_READ:  # nothing left to send: the alert is out
        return True
    raise ssl.SSLError(error, "unable to send close_notify")


_SSL_CTRL_MODE = 33
_SSL_MODE_RELEASE_BUFFERS = 0x10


def release_idle_buffers(connection: ssl.SSLSocket | ssl.SSLObject) -> bool:
    """Let OpenSSL free the connection's record buffers (some 34 KiB)
    whenever they are empty (``SSL_MODE_RELEASE_BUFFERS``): an idle
    connection then holds none. False if this interpreter does not allow
    it (the buffers then stay, which is only memory)."""
    pointer = _ssl_pointer(connection) if _LIBRARY is not None else None
    if pointer is None or _LIBRARY is None:
        return False
    _LIBRARY.SSL_ctrl(pointer, _SSL_CTRL_MODE, _SSL_MODE_RELEASE_BUFFERS, None)
    return True


_SSL_RECEIVED_SHUTDOWN = 2
_BIO_CTRL_EOF = 2


class RecordProbe:
    """What OpenSSL's record layer knows of the peer's stream, for telling
    how it ended once a read returned 0 (see _records.py)."""

    __slots__ = ("_inner", "_pointer")

    def __init__(self, inner: object, pointer: int) -> None:
        self._inner = inner  # keeps the SSL * alive as long as we may ask
        self._pointer = pointer

    def shutdown_received(self) -> bool:
        """A close_notify was read — or, with ``OP_IGNORE_UNEXPECTED_EOF``,
        a bare EOF: OpenSSL marks both the same way."""
        assert _LIBRARY is not None
        return bool(_LIBRARY.SSL_get_shutdown(self._pointer) & _SSL_RECEIVED_SHUTDOWN)

    def eof_read(self) -> bool:
        """The socket BIO met EOF. OpenSSL reads one record at a time, so
        after a close_notify it has not read the FIN behind it."""
        assert _LIBRARY is not None
        bio = _LIBRARY.SSL_get_rbio(self._pointer)
        return bio is not None and _LIBRARY.BIO_ctrl(bio, _BIO_CTRL_EOF, 0, None) != 0

    def inside_record(self) -> bool:
        """A record is begun: its header read (record state ``RB``) or some
        of its header buffered."""
        assert _LIBRARY is not None
        state: bytes | None = _LIBRARY.SSL_rstate_string(self._pointer)
        return state == b"RB" or _LIBRARY.SSL_has_pending(self._pointer) == 1


def record_probe(
    connection: ssl.SSLSocket | ssl.SSLObject, *, silence_callback: bool = False
) -> RecordProbe | None:
    """A :class:`RecordProbe` for ``connection``, or None if this
    interpreter does not allow it. ``silence_callback`` turns the
    connection's message callback off (a Python call per record header
    read or written: some 10 % of a bulk transfer's CPU) for a caller that
    asks the probe instead."""
    pointer = _ssl_pointer(connection) if _LIBRARY is not None else None
    if pointer is None or _LIBRARY is None:
        return None
    if silence_callback:
        _LIBRARY.SSL_set_msg_callback(pointer, None)
    return RecordProbe(connection._sslobj, pointer)  # type: ignore[union-attr]
