"""From parsed option values to the library's typed records: the
:class:`~trio_s6tls._tlsconfig.TLSOptions` of a command line, and what
the four exec'ing wrappers hand to the library. Loads ssl: imported once
the command line is known to be good."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from .._errors import EXIT_USAGE, Fatal, UsageError
from .._tlsconfig import TLSOptions
from ._cli import Parsed


def tls_options(values: Mapping[str, Any], **overrides: Any) -> TLSOptions:
    """The TLS options of a parsed command line (``overrides`` win: the
    verbosity of s6-tlsserver, the default servername of s6-tlsclient); a
    usage error if they cannot work together (every handshake would fail)."""
    merged = {**values, **overrides}
    lowest, highest = merged.get("min_version") or "1.2", merged.get("max_version") or "1.3"
    if lowest > highest:
        raise UsageError(f"--min-version {lowest} is above --max-version {highest}")
    defaults = TLSOptions()
    return TLSOptions(
        close_notify=merged.get("close_notify", defaults.close_notify),
        enforce_close_notify=merged.get("enforce_close_notify", defaults.enforce_close_notify),
        client_cert=merged.get("client_cert", defaults.client_cert),
        verbosity=merged.get("verbosity", defaults.verbosity),
        handshake_timeout_ms=merged.get("handshake_timeout_ms", defaults.handshake_timeout_ms),
        servername=merged.get("servername", defaults.servername),
        sni_level=merged.get("sni_level", merged.get("sni_flag", defaults.sni_level)),
        verify=merged.get("verify", defaults.verify),
        alpn=merged.get("alpn", defaults.alpn),
        ciphers=merged.get("ciphers", defaults.ciphers),
        min_version=merged.get("min_version", defaults.min_version),
        max_version=merged.get("max_version", defaults.max_version),
    )


class WrapperArguments(NamedTuple):
    """What s6-tlsc, s6-tlsd, s6-ucspitlsc and s6-ucspitlsd pass on."""

    prog: tuple[str, ...]
    options: TLSOptions
    network: tuple[int, int]  # -6 / -7, or the program's defaults
    keep_tls: bool  # -Z


def _network_fds(values: Mapping[str, Any], default: tuple[int, int]) -> tuple[int, int]:
    """``-6``/``-7`` as C checks them: 3 or more, and two different fds
    (else 100)."""
    fds = []
    for dest, name, fd in (
        ("network_read", "read-fd", default[0]),
        ("network_write", "write-fd", default[1]),
    ):
        if dest in values:
            fd = values[dest]
            if fd < 3:
                raise Fatal(EXIT_USAGE, f"{name} must be an unsigned integer (3 or more)")
        fds.append(fd)
    if fds[0] == fds[1]:
        raise Fatal(EXIT_USAGE, "read-fd and write-fd must be different")
    return fds[0], fds[1]


def wrapper_arguments(parsed: Parsed, network: tuple[int, int]) -> WrapperArguments:
    if not parsed.operands:
        raise UsageError("no program to run")
    values = parsed.values
    return WrapperArguments(
        prog=tuple(parsed.operands),
        options=tls_options(values),
        network=_network_fds(values, network),
        keep_tls=bool(values.get("keep_env", False)),
    )
