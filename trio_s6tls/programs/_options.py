"""Option tables shared by the programs: the TLS options of the engines and
wrappers (docs/programs/index.rst), ``-Z``/``-z``, ``-6``/``-7``, ``-d``,
and the help text they share. Import-light (read at ``--help``)."""

from __future__ import annotations

from ._cli import Opt, fd_number, uint


def _alpn(text: str) -> tuple[str, ...]:
    """Protocol names as OpenSSL takes them: ASCII, 1 to 255 bytes each."""
    names = tuple(text.split(","))
    if not all(name.isascii() and 0 < len(name) <= 255 for name in names):
        raise ValueError(text)
    return names


def _version(text: str) -> str:
    if text not in ("1.2", "1.3"):
        raise ValueError(text)
    return text


CLOSE = [
    Opt("S", "close-notify", "close_notify", True, group="close",
        help="on local EOF, send close_notify, then half-close TCP"),
    Opt("s", "no-close-notify", "close_notify", False, group="close",
        help="on local EOF, half-close TCP, keep reading (default)"),
    Opt("J", "enforce-close-notify", "enforce_close_notify", True, group="enforce",
        help="peer EOF without close_notify is fatal (exit 98)"),
    Opt("j", "no-enforce-close-notify", "enforce_close_notify", False, group="enforce",
        help="peer EOF without close_notify is a normal end (default)"),
]  # fmt: skip

VERBOSITY = Opt("v", "verbosity", "verbosity", parse=uint, metavar="verbosity",
                help="0 quiet, 1 default, 2 log handshake parameters")  # fmt: skip

HANDSHAKE_TIMEOUT = Opt("K", "handshake-timeout", "handshake_timeout_ms", parse=uint,
                        metavar="timeout",
                        help="abort if the handshake takes longer, in ms (0 = never, default)")  # fmt: skip

BEYOND_C = [
    Opt("", "ciphers", "ciphers", parse=str, metavar="LIST",
        help="OpenSSL cipher list for TLS 1.2"),
    Opt("", "min-version", "min_version", parse=_version, metavar="1.2|1.3",
        help="lowest TLS version accepted (default 1.2)"),
    Opt("", "max-version", "max_version", parse=_version, metavar="1.2|1.3",
        help="highest TLS version offered/accepted (default 1.3)"),
]  # fmt: skip

CLIENT_CERT = [
    Opt("Y", "no-client-cert", "client_cert", 0, group="cert",
        help="send no client certificate (default)"),
    Opt("y", "client-cert", "client_cert", 1, group="cert",
        help="send the client certificate from CERTFILE/KEYFILE"),
]  # fmt: skip

SERVERNAME = Opt("k", "servername", "servername", parse=str, metavar="servername",
                 help="send SNI servername and verify the server certificate against it")  # fmt: skip

CLIENT_EXTRA = [
    Opt("", "verify-cert", "verify", True, group="verify",
        help="verify the server certificate (default)"),
    Opt("", "no-verify-cert", "verify", False, group="verify",
        help="do not verify the server certificate at all (insecure)"),
    Opt("", "alpn", "alpn", parse=_alpn, metavar="LIST",
        help="offer ALPN protocols (comma-separated)"),
    *BEYOND_C,
]  # fmt: skip

SERVER_CERT = [
    Opt("Y", "client-cert", "client_cert", 1, group="cert",
        help="request an optional client certificate"),
    Opt("y", "mandatory-client-cert", "client_cert", 2, group="cert",
        help="require a client certificate"),
]  # fmt: skip

SNI_LEVEL = Opt("k", "sni-level", "sni_level", parse=uint, metavar="sni_level",
                help="0: KEYFILE/CERTFILE only (default); 1: also KEYFILE:NAME/\n"
                     "CERTFILE:NAME pairs; 2 and more: only those")  # fmt: skip

#: ``--sni``/``--mandatory-sni`` store apart from ``-k``: as in C, a ``-k``
#: anywhere on the line wins over them (see _arguments.tls_options).
SNI_FLAGS = [
    Opt("", "sni", "sni_flag", 1, group="sni", help="the same as -k 1 (a -k wins)"),
    Opt("", "mandatory-sni", "sni_flag", 2, group="sni", help="the same as -k 2 (a -k wins)"),
]  # fmt: skip

SERVER_EXTRA = [
    *SNI_FLAGS,
    Opt("", "alpn", "alpn", parse=_alpn, metavar="LIST",
        help="ALPN protocols to accept, in preference order"),
    *BEYOND_C,
]  # fmt: skip

#: The TLS options of the client side, without the verbosity (s6-tlsclient
#: spells it with -q/-Q/-v flags instead).
CLIENT_TLS_BASE = [*CLOSE, *CLIENT_CERT, HANDSHAKE_TIMEOUT, SERVERNAME, *CLIENT_EXTRA]
SERVER_TLS_BASE = [*CLOSE, *SERVER_CERT, HANDSHAKE_TIMEOUT, SNI_LEVEL, *SERVER_EXTRA]
CLIENT_TLS = [*CLOSE, *CLIENT_CERT, VERBOSITY, HANDSHAKE_TIMEOUT, SERVERNAME, *CLIENT_EXTRA]
SERVER_TLS = [*CLOSE, *SERVER_CERT, VERBOSITY, HANDSHAKE_TIMEOUT, SNI_LEVEL, *SERVER_EXTRA]

NOTIFY = [
    Opt("d", ("notification-fd", "notify-fd"), "notify_fd", parse=fd_number, metavar="notif",
        help="write the SSL_* block to this fd after the handshake"),
]  # fmt: skip

KEEP_ENV = [
    Opt("Z", "keep", "keep_env", True, group="keep",
        help="keep CADIR, CAFILE, CERTFILE, KEYFILE, ... in prog's env"),
    Opt("z", "no-keep", "keep_env", False, group="keep",
        help="remove them from prog's environment (default)"),
]  # fmt: skip

NETWORK_FDS = [
    Opt("6", "read-fd", "network_read", parse=fd_number, metavar="rfd",
        help="read network data from rfd (default 6; 3 or more)"),
    Opt("7", "write-fd", "network_write", parse=fd_number, metavar="wfd",
        help="write network data to wfd (default 7; 3 or more, not rfd)"),
]  # fmt: skip

ENV_HELP_CLIENT = """\
Environment: CADIR (one trust anchor per file) or CAFILE (PEM bundle); with -y,
CERTFILE and KEYFILE (PEM or DER); TLS_UID/TLS_GID (numeric) to drop root after
loading them; SSLKEYLOGFILE to log session keys (research only).
"""

ENV_HELP_SERVER = """\
Environment: CERTFILE and KEYFILE (PEM or DER); with SNI level >= 1, also
KEYFILE:NAME/CERTFILE:NAME pairs (NAME may start with "*."); with -Y/-y, CADIR
or CAFILE to verify client certificates; TLS_UID/TLS_GID (numeric) to drop root
after loading them; SSLKEYLOGFILE to log session keys (research only).
"""

EXIT_HELP = """\
Exit codes: 0 normal end; 96 TLS configuration error; 97 TLS engine setup error;
98 TLS error while running (handshake, timeout, -J ragged EOF); 100 wrong usage
or bad environment; 111 system call failed.
"""
