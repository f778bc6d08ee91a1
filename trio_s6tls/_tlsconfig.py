"""TLS settings: an environment mapping and options → a configured
``ssl.SSLContext``, or a :class:`Fatal` carrying the exit code it means.

Sans-IO apart from reading the files the environment names. Everything is
checked here, before any network I/O: a bad trust anchor, a bad key or a
key that does not match its certificate fails at once (96), a trust anchor
file or a client keypair that cannot be read at all is a system error (111;
a server's keypair 96, as C's), a missing or invalid variable is a usage
error (100).
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator, Mapping
from typing import NamedTuple

from . import _der
from ._errors import EXIT_CONFIG, EXIT_SYSTEM, EXIT_USAGE, Fatal, describe_os_error
from ._identity import parse_identity
from ._records import watch_records

# TLS 1.2 suites for the server: forward secrecy and AEAD only, no CBC.
SERVER_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

_VERSIONS = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class TLSOptions(NamedTuple):
    """The TLS options (docs/programs/index.rst), shared by engines and wrappers.

    ``client_cert`` is, for a client, 0 (``-Y``) or 1 (``-y``: send one); for
    a server, 0 (none), 1 (``-Y``: request one) or 2 (``-y``: require one).
    ``servername`` is the client's ``-k NAME``; ``sni_level`` the server's
    ``-k LEVEL``. An immutable ``NamedTuple``: build it with keywords,
    change a field with ``options._replace(servername="example.org")``.
    """

    close_notify: bool = False
    enforce_close_notify: bool = False
    client_cert: int = 0
    verbosity: int = 1
    handshake_timeout_ms: int = 0
    servername: str | None = None
    sni_level: int = 0
    verify: bool = True
    alpn: tuple[str, ...] = ()
    ciphers: str | None = None
    min_version: str | None = None
    max_version: str | None = None


def _require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise Fatal(EXIT_USAGE, f"{name} not set")
    return value


def _read(path: str, what: str, unreadable: int = EXIT_SYSTEM) -> bytes:
    """A file the environment names. One that cannot be read (missing,
    unreadable, a directory) is a system error (111) as in C, except a
    server's keypair, which C's SNI policy reports as 96 (``unreadable``)."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise Fatal(
            unreadable, f"unable to read {what} {path}: {describe_os_error(error)}"
        ) from None


def _pem(label: str, der: bytes) -> str:
    return ssl.DER_cert_to_PEM_cert(der).replace("CERTIFICATE", label)


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


@contextlib.contextmanager
def _as_pem_path(path: str, data: bytes, label: str | None) -> Iterator[str]:
    """A path OpenSSL can load: ``path`` itself when it is PEM already, else a
    PEM rendering of the DER in an anonymous memory file (keys never touch
    the disk)."""
    if _is_pem(data):
        yield path
        return
    try:
        if label is None:
            label = _der.private_key_pem_label(data)
        text = _pem(label, data)
    except ValueError:
        raise Fatal(EXIT_CONFIG, f"{path}: neither PEM nor DER") from None
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("trio_s6tls-pem")
        try:
            os.write(fd, text.encode("ascii"))
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
    else:  # pragma: no cover - non-Linux
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".pem") as file:
            file.write(text)
            file.flush()
            yield file.name


def _no_password() -> bytes:
    return b""  # never prompt on a terminal: an encrypted key simply fails


def load_keypair(
    context: ssl.SSLContext, certfile: str, keyfile: str, *, unreadable: int = EXIT_SYSTEM
) -> None:
    """A keypair; a file that cannot be read exits ``unreadable`` (see :func:`_read`)."""
    cert_data = _read(certfile, "certificate file", unreadable)
    key_data = _read(keyfile, "private key file", unreadable)
    with (
        _as_pem_path(certfile, cert_data, "CERTIFICATE") as cert_path,
        _as_pem_path(keyfile, key_data, None) as key_path,
    ):
        try:
            context.load_cert_chain(cert_path, key_path, password=_no_password)
        except ssl.SSLError as error:
            if error.reason == "KEY_VALUES_MISMATCH":
                raise Fatal(
                    EXIT_CONFIG, f"private key {keyfile} does not match certificate {certfile}"
                ) from None
            raise Fatal(
                EXIT_CONFIG,
                f"unable to load keypair {certfile} / {keyfile}: {error.reason or error}",
            ) from None


def _load_anchor_bytes(context: ssl.SSLContext, data: bytes) -> None:
    """Raises ssl.SSLError, or ValueError for an empty or undecodable file."""
    if _is_pem(data):
        context.load_verify_locations(cadata=data.decode("ascii", "replace"))
    else:
        context.load_verify_locations(cadata=data)


def load_trust_anchors(context: ssl.SSLContext, env: Mapping[str, str]) -> None:
    """``CADIR`` (any file names, PEM or DER, unparsable files skipped) or,
    if unset, ``CAFILE``. Neither set: 100. No anchor found: 96. The
    directory or the file cannot be read: 111."""
    cadir = env.get("CADIR")
    if cadir:
        try:
            names = sorted(os.listdir(cadir))
        except OSError as error:
            raise Fatal(
                EXIT_SYSTEM, f"unable to read CADIR {cadir}: {describe_os_error(error)}"
            ) from None
        for name in names:
            path = os.path.join(cadir, name)
            if not os.path.isfile(path):
                continue
            try:
                _load_anchor_bytes(context, _read(path, "trust anchor"))
            except (ssl.SSLError, ValueError, Fatal):
                continue  # not a certificate: an empty file, a README, a CRL, a backup
        if not context.cert_store_stats()["x509"]:
            raise Fatal(EXIT_CONFIG, f"no trust anchor found in CADIR {cadir}")
        return
    cafile = env.get("CAFILE")
    if not cafile:
        raise Fatal(EXIT_USAGE, "CADIR or CAFILE not set")
    try:
        _load_anchor_bytes(context, _read(cafile, "CAFILE"))
    except ssl.SSLError as error:
        raise Fatal(
            EXIT_CONFIG, f"unable to load trust anchors from {cafile}: {error.reason or error}"
        ) from None
    except ValueError:  # an empty file
        raise Fatal(EXIT_CONFIG, f"no trust anchor found in CAFILE {cafile}") from None
    if not context.cert_store_stats()["x509"]:
        raise Fatal(EXIT_CONFIG, f"no trust anchor found in CAFILE {cafile}")


def _check_versions(options: TLSOptions) -> None:
    lowest, highest = options.min_version or "1.2", options.max_version or "1.3"
    for version in (lowest, highest):
        if version not in _VERSIONS:
            raise Fatal(EXIT_USAGE, f"unsupported TLS version: {version!r} (1.2 or 1.3)")
    if lowest > highest:  # every handshake would fail
        raise Fatal(EXIT_USAGE, f"--min-version {lowest} is above --max-version {highest}")


def _base_context(purpose: int, options: TLSOptions, env: Mapping[str, str]) -> ssl.SSLContext:
    _check_versions(options)
    context = ssl.SSLContext(purpose)
    context.minimum_version = _VERSIONS[options.min_version or "1.2"]
    if options.max_version:
        context.maximum_version = _VERSIONS[options.max_version]
    # Ragged EOFs are classified by the engine (see _records.py); OpenSSL must
    # not turn one into a fatal state that also forbids our reply.
    context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF | ssl.OP_NO_RENEGOTIATION
    if options.ciphers:
        try:
            context.set_ciphers(options.ciphers)
        except (ssl.SSLError, ValueError):  # ValueError: not encodable
            raise Fatal(EXIT_USAGE, f"invalid cipher list: {options.ciphers!r}") from None
    if options.alpn:
        try:
            context.set_alpn_protocols(list(options.alpn))
        except (ssl.SSLError, ValueError):  # empty, over 255 bytes, not ASCII
            raise Fatal(EXIT_USAGE, f"invalid ALPN protocol list: {options.alpn!r}") from None
    keylog = env.get("SSLKEYLOGFILE")
    if keylog:
        try:
            context.keylog_filename = keylog
        except OSError as error:
            raise Fatal(
                EXIT_SYSTEM, f"unable to open SSLKEYLOGFILE {keylog}: {describe_os_error(error)}"
            ) from None
    watch_records(context)
    return context


def client_context(env: Mapping[str, str], options: TLSOptions) -> ssl.SSLContext:
    """The client's context: trust anchors (unless ``--no-verify-cert``),
    hostname checking only with ``-k``, a client keypair with ``-y``."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, options, env)
    if options.verify:
        load_trust_anchors(context, env)
        context.check_hostname = options.servername is not None
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.client_cert:
        load_keypair(context, _require(env, "CERTFILE"), _require(env, "KEYFILE"))
    return context


_SERVER_VERIFY = {0: ssl.CERT_NONE, 1: ssl.CERT_OPTIONAL, 2: ssl.CERT_REQUIRED}


def _server_context(env: Mapping[str, str], options: TLSOptions) -> ssl.SSLContext:
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, options, env)
    if not options.ciphers:
        context.set_ciphers(SERVER_TLS12_CIPHERS)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.verify_mode = _SERVER_VERIFY[min(options.client_cert, 2)]
    if options.client_cert:
        load_trust_anchors(context, env)
    return context


def valid_sni_name(name: str) -> bool:
    """A host name, or ``*.`` + a name of at least two labels."""
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return False
    return all(label and "*" not in label for label in labels)


class SniTable:
    """Certificates by SNI name: exact names win over ``*.suffix`` ones."""

    def __init__(self) -> None:
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}

    def add(self, name: str, context: ssl.SSLContext) -> None:
        name = name.lower()
        if name.startswith("*."):
            self.wildcard[name[2:]] = context
        else:
            self.exact[name] = context

    def lookup(self, name: str) -> ssl.SSLContext | None:
        name = name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is None:
            first, _, rest = name.partition(".")
            if first and rest:
                found = self.wildcard.get(rest)
        return found

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcard)


def sni_names(env: Mapping[str, str]) -> list[str]:
    """Names of the ``KEYFILE:NAME``/``CERTFILE:NAME`` pairs; 96 if one half
    of a pair is missing or a name is not valid."""
    keys = {k.partition(":")[2] for k in env if k.startswith("KEYFILE:")}
    certs = {k.partition(":")[2] for k in env if k.startswith("CERTFILE:")}
    for name in sorted(keys ^ certs):
        missing = "CERTFILE" if name in keys else "KEYFILE"
        raise Fatal(EXIT_CONFIG, f"{missing}:{name} not set to pair with its counterpart")
    for name in sorted(keys):
        if not valid_sni_name(name):
            raise Fatal(EXIT_CONFIG, f"invalid SNI name: {name!r}")
    return sorted(keys)


def server_context(env: Mapping[str, str], options: TLSOptions) -> ssl.SSLContext:
    """The server's context: TLS 1.2+ with forward-secret AEAD suites, the
    default keypair (SNI level 0–1) and the ``:NAME`` keypairs (level ≥ 1)
    chosen by an SNI callback, client certificate policy from ``-Y``/``-y``."""
    context = _server_context(env, options)
    table = SniTable()
    if options.sni_level >= 1:
        for name in sni_names(env):
            named = _server_context(env, options)
            load_keypair(
                named, env[f"CERTFILE:{name}"], env[f"KEYFILE:{name}"], unreadable=EXIT_CONFIG
            )
            table.add(name, named)
    level = options.sni_level
    wants_default = level == 0 or (
        level == 1 and (not table or "CERTFILE" in env or "KEYFILE" in env)
    )
    if wants_default:
        load_keypair(
            context, _require(env, "CERTFILE"), _require(env, "KEYFILE"), unreadable=EXIT_CONFIG
        )
    elif not table:
        raise Fatal(EXIT_CONFIG, "no keypair found: no KEYFILE:NAME/CERTFILE:NAME pair")

    def choose_certificate(
        conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        conn.s6_sni_name = name  # type: ignore[union-attr]
        chosen = table.lookup(name) if name and level >= 1 else None
        if chosen is not None:
            conn.context = chosen
        elif level >= 2:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    context.sni_callback = choose_certificate
    return context


def configure_resumption(context: ssl.SSLContext, enabled: bool) -> ssl.SSLContext:
    """Session tickets only with ``--resumption``: the C tools resume nothing,
    and a full handshake without tickets is cheaper."""
    if not enabled:
        context.num_tickets = 0
        context.options |= ssl.OP_NO_TICKET
    return context


def context_from_environment(
    env: Mapping[str, str], options: TLSOptions, *, server_side: bool
) -> tuple[ssl.SSLContext, tuple[int | None, int | None]]:
    """A program's whole TLS configuration from its environment, checked
    before any network I/O: ``TLS_UID``/``TLS_GID`` first (a usage error
    beats a file error), then the context. Returns both."""
    identity = parse_identity(env)
    context = server_context(env, options) if server_side else client_context(env, options)
    return context, identity
