"""Option tables shared by the programs (SPEC.md, "Shared TLS options")."""

from __future__ import annotations

from .._cli import Opt, Parsed, fd_number, uint
from .._errors import UsageError

TYPE_CHECKING = False  # importing typing would slow down --version
if TYPE_CHECKING:
    from typing import Any


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


COMMON = [
    Opt("S", "close-notify", "close_notify", True),
    Opt("s", "no-close-notify", "close_notify", False),
    Opt("J", "enforce-close-notify", "enforce_close_notify", True),
    Opt("j", "no-enforce-close-notify", "enforce_close_notify", False),
    Opt("v", "verbosity", "verbosity", parse=uint),
    Opt("K", "handshake-timeout", "handshake_timeout_ms", parse=uint),
    Opt("", "alpn", "alpn", parse=_alpn),
    Opt("", "ciphers", "ciphers", parse=str),
    Opt("", "min-version", "min_version", parse=_version),
    Opt("", "max-version", "max_version", parse=_version),
]

CLIENT_TLS = COMMON + [
    Opt("Y", "no-client-cert", "client_cert", 0),
    Opt("y", "client-cert", "client_cert", 1),
    Opt("k", "servername", "servername", parse=str),
    Opt("", "no-verify-cert", "verify", False),
]

SERVER_TLS = COMMON + [
    Opt("Y", "client-cert", "client_cert", 1),
    Opt("y", "mandatory-client-cert", "client_cert", 2),
    Opt("k", "sni-level", "sni_level", parse=uint),
    Opt("", "sni", "sni_level", 1),
    Opt("", "mandatory-sni", "sni_level", 2),
]

NOTIFY = [Opt("d", "notify-fd", "notify_fd", parse=fd_number)]

KEEP_ENV_HELP = """\
  -Z, --keep                    keep CADIR, CAFILE, CERTFILE, KEYFILE, ... in prog's env
  -z, --no-keep                 remove them from prog's environment (default)
"""

NETWORK_FDS_HELP = """\
  -6 FD                         read network data from FD (default 6)
  -7 FD                         write network data to FD (default 7)
"""

NETWORK_FDS = [
    Opt("6", None, "network_read", parse=fd_number),
    Opt("7", None, "network_write", parse=fd_number),
]

KEEP_ENV = [
    Opt("Z", "keep", "keep_env", True),
    Opt("z", "no-keep", "keep_env", False),
]

CLIENT_TLS_HELP = """\
  -S, --close-notify            on local EOF, send close_notify and stop
  -s, --no-close-notify         on local EOF, half-close TCP, keep reading (default)
  -J, --enforce-close-notify    peer EOF without close_notify is fatal (exit 98)
  -j, --no-enforce-close-notify peer EOF without close_notify is a normal end (default)
  -Y, --no-client-cert          send no client certificate (default)
  -y, --client-cert             send the client certificate from CERTFILE/KEYFILE
  -k, --servername NAME         send SNI NAME and verify the server certificate against it
      --no-verify-cert          do not verify the server certificate at all (insecure)
  -v, --verbosity N             0 quiet, 1 default, 2 log handshake parameters
  -K, --handshake-timeout MS    abort if the handshake takes longer (0 = never, default)
      --alpn LIST               offer ALPN protocols (comma-separated)
      --ciphers LIST            OpenSSL cipher list for TLS 1.2
      --min-version 1.2|1.3     lowest TLS version accepted (default 1.2)
      --max-version 1.2|1.3     highest TLS version offered/accepted (default 1.3)
"""

SERVER_TLS_HELP = """\
  -S, --close-notify            on local EOF, send close_notify and stop
  -s, --no-close-notify         on local EOF, half-close TCP, keep reading (default)
  -J, --enforce-close-notify    peer EOF without close_notify is fatal (exit 98)
  -j, --no-enforce-close-notify peer EOF without close_notify is a normal end (default)
  -Y, --client-cert             request an optional client certificate
  -y, --mandatory-client-cert   require a client certificate
  -k, --sni-level LEVEL         0: KEYFILE/CERTFILE only (default); 1 (--sni): also
                                KEYFILE:NAME/CERTFILE:NAME; 2 (--mandatory-sni): only those
  -v, --verbosity N             0 quiet, 1 default, 2 log handshake parameters
  -K, --handshake-timeout MS    abort if the handshake takes longer (0 = never, default)
      --alpn LIST               ALPN protocols to accept, in preference order
      --ciphers LIST            OpenSSL cipher list for TLS 1.2
      --min-version 1.2|1.3     lowest TLS version accepted (default 1.2)
      --max-version 1.2|1.3     highest TLS version offered/accepted (default 1.3)
"""

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


def tls_option_values(values: dict[str, Any]) -> dict[str, Any]:
    """The subset of parsed values that are :class:`TLSOptions` fields; a
    usage error if they cannot work together (every handshake would fail)."""
    lowest, highest = values.get("min_version", "1.2"), values.get("max_version", "1.3")
    if lowest > highest:
        raise UsageError(f"--min-version {lowest} is above --max-version {highest}")
    fields = {
        "close_notify",
        "enforce_close_notify",
        "client_cert",
        "verbosity",
        "handshake_timeout_ms",
        "servername",
        "sni_level",
        "verify",
        "alpn",
        "ciphers",
        "min_version",
        "max_version",
    }
    return {k: v for k, v in values.items() if k in fields}


def wrapper_arguments(parsed: Parsed, network: tuple[int, int]) -> dict[str, Any]:
    """What the four wrappers (s6-tls[cd], s6-ucspitls[cd]) pass to the
    library: the prog, the TLS options, the network fds (``-6``/``-7`` or
    ``network``) and ``-Z``. Loads ssl: call once the command line is known
    to be good."""
    if not parsed.operands:
        raise UsageError("no program to run")
    from .._tlsconfig import TLSOptions

    values = parsed.values
    return {
        "prog": parsed.operands,
        "options": TLSOptions(**tls_option_values(values)),
        "network": (
            values.get("network_read", network[0]),
            values.get("network_write", network[1]),
        ),
        "keep_tls": bool(values.get("keep_env", False)),
    }
