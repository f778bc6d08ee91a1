"""Machinery of tests/test_fidelity.py: processes, in-process TLS peers, the
certificates, observations and the comparison table.

Everything here is bounded: a process wait, a pipe or socket read, a TLS step
each take a deadline (``time.monotonic()`` value) and raise :class:`Timeout`
past it. Processes are started with ``posix_spawn``, their fds placed exactly,
stderr on a pipe read without blocking (a C wrapper's children may keep it
open after the wrapper is gone).

The TLS peers run in this process on memory BIOs, stepped by the test itself
(no threads): a client for the server programs, a server for the client
programs, both capped at TLS 1.2 (BearSSL speaks nothing else), so that ours
and C meet the very same peer.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import select
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Bound on any one step that should succeed (a failure, not a measure).
STEP = 10.0
#: How long a case waits to see that something does *not* happen (a second
#: client served despite -c 1, a server still up after SIGTERM). The C tools
#: react within milliseconds; ours within tens.
NEGATIVE_WAIT = 0.75


class Timeout(Exception):
    pass


def deadline(seconds: float = STEP) -> float:
    return time.monotonic() + seconds


def _left(until: float) -> float:
    return max(until - time.monotonic(), 0.0)


# --- processes ---------------------------------------------------------------------------


class Proc:
    """A program started with ``posix_spawn``: ``fds`` maps child fd → our fd
    (0, 1 default to /dev/null), stderr goes to a pipe, SIGPIPE is back to its
    default. Close it (or use it as a context manager): it is killed if still
    running."""

    def __init__(self, argv: Sequence[str], fds: Mapping[int, int], env: Mapping[str, str]):
        self.argv = list(argv)
        err_r, err_w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        mapping = {0: devnull, 1: devnull, **fds, 2: err_w}
        # Park every source above the targets (close-on-exec) first, so that a
        # source that is also a target is not clobbered by an earlier dup2.
        parked = {t: fcntl.fcntl(s, fcntl.F_DUPFD_CLOEXEC, 300) for t, s in mapping.items()}
        try:
            self.pid = os.posix_spawn(
                self.argv[0],
                self.argv,
                dict(env),
                file_actions=[(os.POSIX_SPAWN_DUP2, p, t) for t, p in parked.items()],
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGHUP),
            )
        finally:
            for p in parked.values():
                os.close(p)
            os.close(err_w)
            os.close(devnull)
        self.pidfd = os.pidfd_open(self.pid)
        self._err = err_r
        os.set_blocking(err_r, False)
        self._stderr = bytearray()
        self.returncode: int | None = None

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self) -> int | None:
        return self.wait(0)

    def wait(self, timeout: float) -> int | None:
        """The exit code (negative: the signal that killed it), or None on timeout."""
        if self.returncode is None:
            ready, _, _ = select.select([self.pidfd], [], [], max(timeout, 0))
            if not ready:
                return None
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self.pidfd)
        return self.returncode

    def finish(self, timeout: float = STEP) -> int | str:
        """Wait; kill it if it outlives ``timeout``. The exit code, or "hung"."""
        code = self.wait(timeout)
        if code is None:
            self.kill()
            self.wait(STEP)
            return "hung"
        return code

    def signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stderr(self) -> str:
        """What it (and its children) wrote to stderr so far."""
        while self._err >= 0:
            try:
                chunk = os.read(self._err, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._stderr += chunk
        return self._stderr.decode(errors="replace")

    def wait_stderr(self, text: str, until: float) -> bool:
        """Read stderr until a line holds ``text`` (True) or ``until`` (False)."""
        while text not in self._stderr.decode(errors="replace"):
            ready, _, _ = select.select([self._err], [], [], _left(until))
            if not ready:
                return False
            try:
                chunk = os.read(self._err, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return False
            self._stderr += chunk
        return True

    def stderr_to_eof(self, until: float) -> str:
        """Read stderr until every writer (its children too) has closed it, or
        until ``until``: for logs written after the program itself is gone."""
        while self._err >= 0:
            ready, _, _ = select.select([self._err], [], [], _left(until))
            if not ready:
                break
            try:
                chunk = os.read(self._err, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            self._stderr += chunk
        return self._stderr.decode(errors="replace")

    def close(self) -> None:
        if self.returncode is None:
            self.kill()
            self.wait(STEP)
        if self._err >= 0:
            self.stderr()
            os.close(self._err)
            self._err = -1


def read_until(fd: int, until: float, *, end: bytes = b"", limit: int = 1 << 20) -> bytes:
    """Read ``fd`` until EOF, or until the data ends with ``end``."""
    data = b""
    while not (end and data.endswith(end)) and len(data) < limit:
        ready, _, _ = select.select([fd], [], [], _left(until))
        if not ready:
            raise Timeout(f"read fd {fd}: {data!r} so far")
        chunk = os.read(fd, 1 if end else 65536)
        if not chunk:
            break
        data += chunk
    return data


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (client end, server end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=STEP)
        server, _ = listener.accept()
    client.settimeout(None)
    return client, server


def free_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the program that runs as prog -----------------------------------------------------------

#: argv: MODE WFD RFD. Writes one JSON line on WFD (its environment, pid,
#: uid/gid/groups), then per MODE: "env" exits; "hold" reads a line on RFD and
#: answers "BYE <line>" before exiting; "linger" does the same, then reads RFD
#: to EOF before exiting (the peer ends first); "echo" copies RFD to WFD until EOF;
#: "ucspi-server" first writes "STARTTLS\n" in cleartext on WFD, "ucspi-client"
#: first reads a cleartext line on RFD, then both send "Y" on SSLCTLFD, read
#: the block to EOF and go on on SSLREADFD/SSLWRITEFD as "linger" (the block in
#: the JSON; no block, TLS failed: exit 3); "ucspi-decline" closes SSLCTLFD and
#: reports in cleartext.
#: SIGTERM makes it write "TERM\n" and exit 0.
PROG = r"""
import json, os, signal, sys
mode, wfd, rfd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def out(b):
    while b:
        b = b[os.write(wfd, b):]
def line(fd):
    got = b""
    while not got.endswith(b"\n"):
        c = os.read(fd, 1)
        if not c:
            break
        got += c
    return got
def term(*_):
    out(b"TERM\n")
    os._exit(0)
signal.signal(signal.SIGTERM, term)
ids = {}
with open("/proc/self/status") as f:
    for row in f:
        k, _, v = row.partition(":")
        if k in ("Uid", "Gid", "Groups"):
            ids[k] = v.split()
report = {"env": dict(os.environ), "pid": os.getpid(), "ids": ids}
if mode.startswith("ucspi"):
    ctl = int(os.environ["SSLCTLFD"])
    if mode == "ucspi-decline":
        os.close(ctl)
        out(json.dumps(report).encode() + b"\n")
        sys.exit(0)
    if mode == "ucspi-server":
        out(b"STARTTLS\n")
    else:
        report["clear"] = line(rfd).decode(errors="replace")
    os.write(ctl, b"Y")
    block = b""
    while chunk := os.read(ctl, 4096):
        block += chunk
    report["block"] = block.decode(errors="replace")
    if not block:
        sys.exit(3)
    wfd, rfd = int(os.environ["SSLWRITEFD"]), int(os.environ["SSLREADFD"])
out(json.dumps(report).encode() + b"\n")
if mode in ("hold", "linger", "ucspi-server", "ucspi-client"):
    got = line(rfd)
    if got:
        out(b"BYE " + got)
    if mode != "hold":
        while os.read(rfd, 65536):
            pass
elif mode == "echo":
    while chunk := os.read(rfd, 65536):
        out(chunk)
"""


#: prog for the identity cases, runnable by any user (the venv's interpreter
#: may not be): one JSON line with uid, gid and groups on stdout, then it
#: reads to EOF, so that the peer ends first: C's engine has a race when the
#: application ends first (a stray "unable to read from remote: Bad file
#: descriptor" on stderr, seen in one CI run).
IDS_PROG = [
    "/bin/sh",
    "-c",
    """set -- $(grep -E '^(Uid|Gid|Groups):' /proc/self/status | tr '\\t' ' ' | tr '\\n' ' ')
    shift; uid=$1; while [ "$1" != Gid: ]; do shift; done; shift; gid=$1
    while [ "$1" != Groups: ]; do shift; done; shift
    printf '{"ids": {"Uid": ["%s"], "Gid": ["%s"], "Groups": [%s]}, "env": {}, "pid": 0}\\n' \\
      "$uid" "$gid" "$(for g in "$@"; do printf '"%s",' "$g"; done | sed 's/,$//')"
    exec cat >/dev/null
    """,
]


def prog(mode: str, wfd: int, rfd: int) -> list[str]:
    return [sys.executable, "-S", "-c", PROG, mode, str(wfd), str(rfd)]


#: A client application: sends SIZE bytes of a pattern on fd 7, closes it, reads
#: fd 6 to EOF, prints one JSON line on fd 1 (sha256 and size of what it read).
SENDER = r"""
import hashlib, json, os, random, sys, threading
size = int(sys.argv[1])
data = random.Random(size).randbytes(size)
def send():
    view = memoryview(data)
    while view:
        view = view[os.write(7, view[:65536]):]
    os.close(7)
t = threading.Thread(target=send)
t.start()
d, n = hashlib.sha256(), 0
while chunk := os.read(6, 65536):
    d.update(chunk)
    n += len(chunk)
t.join()
os.write(1, (json.dumps({"received": n, "sha256": d.hexdigest()}) + "\n").encode())
"""


#: UCSPI-TLS client application: reads the server's cleartext line on fd 6,
#: sends "Y", reads the block, then works as SENDER over SSLREADFD/SSLWRITEFD
#: (and says whether the block came).
UCSPI_SENDER = r"""
import hashlib, json, os, random, sys, threading
size = int(sys.argv[1])
got = b""
while not got.endswith(b"\n"):
    c = os.read(6, 1)
    if not c:
        break
    got += c
ctl = int(os.environ["SSLCTLFD"])
os.write(ctl, b"Y")
block = b""
while chunk := os.read(ctl, 4096):
    block += chunk
rfd, wfd = int(os.environ["SSLREADFD"]), int(os.environ["SSLWRITEFD"])
data = random.Random(size).randbytes(size)
def send():
    view = memoryview(data)
    while view:
        view = view[os.write(wfd, view[:65536]):]
    os.close(wfd)
t = threading.Thread(target=send)
t.start()
d, n = hashlib.sha256(), 0
while chunk := os.read(rfd, 65536):
    d.update(chunk)
    n += len(chunk)
t.join()
report = {"received": n, "sha256": d.hexdigest(), "block": block.endswith(b"\0\0")}
os.write(1, (json.dumps(report) + "\n").encode())
"""

#: UCSPI-TLS server application: "STARTTLS\n" in cleartext on fd 1, "Y", the
#: block, then copies SSLREADFD to SSLWRITEFD until EOF.
UCSPI_ECHO = r"""
import os
os.write(1, b"STARTTLS\n")
ctl = int(os.environ["SSLCTLFD"])
os.write(ctl, b"Y")
while os.read(ctl, 4096):
    pass
rfd, wfd = int(os.environ["SSLREADFD"]), int(os.environ["SSLWRITEFD"])
while chunk := os.read(rfd, 65536):
    while chunk:
        chunk = chunk[os.write(wfd, chunk):]
"""


def ucspi_sender(size: int) -> list[str]:
    return [sys.executable, "-S", "-c", UCSPI_SENDER, str(size)]


def ucspi_echo() -> list[str]:
    return [sys.executable, "-S", "-c", UCSPI_ECHO]


def sender(size: int) -> list[str]:
    return [sys.executable, "-S", "-c", SENDER, str(size)]


def sender_data(size: int) -> bytes:
    import random

    return random.Random(size).randbytes(size)


# --- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    name: str  # what the observations call it
    cert: Path
    key: Path
    der: bytes

    @property
    def hash(self) -> str:
        return "SHA256:" + hashlib.sha256(self.der).hexdigest()


@dataclass(frozen=True)
class Pki:
    """Certificates BearSSL and OpenSSL both accept: EC P-256, extendedKeyUsage
    not critical (BearSSL refuses a critical one)."""

    dir: Path
    ca: Path
    other_ca: Path
    server: Cert  # localhost, 127.0.0.1, ::1
    server_no_ip: Cert  # localhost only: no IP SAN
    alpha: Cert  # alpha.test, for KEYFILE:alpha.test
    client: Cert  # CN=fidelity client
    spaced: Cert  # O=" Lead, Trail ": leading and trailing spaces
    untrusted: Cert  # a client certificate from other_ca
    garbage_key: Path  # PEM armour around no key
    empty: Path  # an empty file
    missing: Path  # no such file

    def certs(self) -> tuple[Cert, ...]:
        return (
            self.server,
            self.server_no_ip,
            self.alpha,
            self.client,
            self.spaced,
            self.untrusted,
        )

    def name_of_hash(self, value: str) -> str:
        for c in self.certs():
            if value == c.hash:
                return f"<{c.name}>"
        if re.fullmatch(r"SHA256:0{64}", value):
            return "SHA256:<zeros>"
        return value

    def name_of_der(self, der: bytes | None) -> str:
        if der is None:
            return "-"
        for c in self.certs():
            if der == c.der:
                return c.name
        return "<unknown>"


def _x509_name(cn: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _Ca:
    def __init__(self, directory: Path, stem: str, cn: str) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = _x509_name(cn, "trio_s6tls fidelity")
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{stem}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        stem: str,
        cn: str,
        *,
        server: bool,
        names: Sequence[str] = (),
        organization: str = "trio_s6tls fidelity",
    ) -> Cert:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_x509_name(cn, organization))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.dir / f"{stem}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = self.dir / f"{stem}-key.pem"
        key_path.write_bytes(_pem_key(key))
        return Cert(stem, cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _Ca(directory, "ca", "fidelity CA")
    other = _Ca(directory, "other-ca", "some other CA")
    garbage = directory / "garbage-key.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    empty = directory / "empty.pem"
    empty.write_bytes(b"")
    return Pki(
        dir=directory,
        ca=ca.path,
        other_ca=other.path,
        server=ca.issue(
            "server", "localhost", server=True, names=("localhost", "127.0.0.1", "::1")
        ),
        server_no_ip=ca.issue("server-no-ip", "localhost", server=True, names=("localhost",)),
        alpha=ca.issue("alpha", "alpha.test", server=True, names=("alpha.test",)),
        client=ca.issue("client", "fidelity client", server=False),
        spaced=ca.issue("spaced", "spaced client", server=False, organization=" Lead, Trail "),
        untrusted=other.issue("untrusted", "untrusted client", server=False),
        garbage_key=garbage,
        empty=empty,
        missing=directory / "no-such-file.pem",
    )


# --- in-process TLS peers ------------------------------------------------------------------

TLS_RECORD_TYPES = (0x14, 0x15, 0x16, 0x17)


def client_context(pki: Pki, *, cert: Cert | None = None, tls13: bool = False) -> ssl.SSLContext:
    """What the peer client of a server program uses: the CA, no name check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki.ca)
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def server_context(
    pki: Pki, *, cert: Cert | None = None, request_client_cert: bool = False
) -> ssl.SSLContext:
    """What the peer server of a client program uses (TLS 1.2 at most)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    served = cert or pki.server
    ctx.load_cert_chain(served.cert, served.key)
    if request_client_cert:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(pki.ca)
    return ctx


class TlsPeer:
    """A TLS endpoint on ``sock`` over memory BIOs, stepped by the caller.

    A cleartext phase may come first (:meth:`send_clear`, :meth:`read_clear_line`).
    As a client, if the first bytes the server sends are not a TLS record the
    peer stops there and keeps them as :attr:`cleartext` (an ``exec`` rule's
    program talking on the raw socket)."""

    def __init__(
        self,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.sni_received: str | None = None
        if server_side:
            ctx.sni_callback = self._sni
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.server_side = server_side
        self.raw = bytearray()  # received, not yet given to TLS
        self.got_eof = False
        self.first_tls_byte_seen = False
        self.cleartext: bytes | None = None
        self.handshake_error: str | None = None
        self.end = ""  # how the data ended: close_notify, eof, reset, error ...

    def _sni(self, obj: object, name: str | None, ctx: ssl.SSLContext) -> None:
        self.sni_received = name

    # raw socket

    def _send_raw(self, data: bytes, until: float) -> None:
        view = memoryview(data)
        while view:
            _, ready, _ = select.select([], [self.sock], [], _left(until))
            if not ready:
                raise Timeout("send")
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                continue

    def _recv_raw(self, until: float) -> bytes:
        """One chunk, b"" on EOF (ECONNRESET counts as EOF, and is noted)."""
        while True:
            ready, _, _ = select.select([self.sock], [], [], _left(until))
            if not ready:
                raise Timeout("recv")
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                self.end = self.end or "reset"
                chunk = b""
            if not chunk:
                self.got_eof = True
            return chunk

    def send_clear(self, data: bytes, until: float) -> None:
        self._send_raw(data, until)

    def read_clear_line(self, until: float) -> bytes:
        while b"\n" not in self.raw:
            chunk = self._recv_raw(until)
            if not chunk:
                break
            self.raw += chunk
        line, sep, rest = bytes(self.raw).partition(b"\n")
        self.raw = bytearray(rest)
        return line + sep

    # TLS plumbing

    def _flush(self, until: float) -> None:
        data = self.outgoing.read()
        if data:
            try:
                self._send_raw(data, until)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def _fill(self, until: float) -> bool:
        """Feed more received bytes to TLS; False at EOF (after write_eof)."""
        if not self.raw and not self.got_eof:
            chunk = self._recv_raw(until)
            self.raw += chunk
        if self.raw:
            if not self.first_tls_byte_seen and not self.server_side:
                self.first_tls_byte_seen = True
                if self.raw[0] not in TLS_RECORD_TYPES:
                    self.cleartext = bytes(self.raw) + self._recv_rest(until)
                    self.raw.clear()
                    return False
            self.incoming.write(bytes(self.raw))
            self.raw.clear()
            return True
        self.incoming.write_eof()
        return False

    def _recv_rest(self, until: float) -> bytes:
        rest = b""
        while chunk := self._recv_raw(until):
            rest += chunk
        return rest

    def handshake(self, until: float) -> str:
        """ "ok", "cleartext" (see :attr:`cleartext`), or "failed: REASON"."""
        while True:
            try:
                self.obj.do_handshake()
                self._flush(until)
                return "ok"
            except ssl.SSLWantReadError:
                self._flush(until)
                if not self._fill(until) and self.cleartext is not None:
                    return "cleartext"
            except ssl.SSLError as e:
                self._flush(until)
                self.handshake_error = f"{type(e).__name__}: {e.reason or e}"
                if isinstance(e, ssl.SSLEOFError) or (self.got_eof and not self.first_byte()):
                    return "failed: eof"
                return "failed: alert" if "ALERT" in str(e.reason) else f"failed: {e.reason}"
            except (BrokenPipeError, ConnectionResetError):
                return "failed: reset"

    def first_byte(self) -> bool:
        return self.first_tls_byte_seen or self.server_side

    def _read(self, until: float) -> bytes:
        while True:
            try:
                return self.obj.read(65536)
            except ssl.SSLWantReadError:
                self._flush(until)
                self._fill(until)
            except ssl.SSLZeroReturnError:
                self.end = "close_notify"
                return b""
            except ssl.SSLEOFError:
                self.end = self.end or "eof"
                return b""
            except ssl.SSLError as e:
                self.end = f"tls error: {e.reason}"
                return b""

    def recv_line(self, until: float) -> bytes:
        """One line of application data (b"" at the end)."""
        buf = getattr(self, "_app", b"")
        while b"\n" not in buf:
            chunk = self._read(until)
            if not chunk:
                self._app = b""
                return buf
            buf += chunk
        line, _, rest = buf.partition(b"\n")
        self._app = rest
        return line + b"\n"

    def recv_all(self, until: float) -> bytes:
        buf = getattr(self, "_app", b"")
        self._app = b""
        while chunk := self._read(until):
            buf += chunk
        return buf

    def send(self, data: bytes, until: float) -> None:
        self.obj.write(data)
        self._flush(until)

    def close_notify(self, until: float) -> None:
        try:
            self.obj.unwrap()
        except ssl.SSLError:
            pass
        self._flush(until)

    def peer_der(self) -> bytes | None:
        try:
            return self.obj.getpeercert(binary_form=True)
        except ValueError:
            return None

    def close(self) -> None:
        self.sock.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=STEP)


@contextmanager
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s


def accept(sock: socket.socket, until: float) -> socket.socket:
    ready, _, _ = select.select([sock], [], [], _left(until))
    if not ready:
        raise Timeout("accept")
    conn, _ = sock.accept()
    return conn


# --- observations --------------------------------------------------------------------------

_CATEGORY = re.compile(r"\b(fatal|usage|warning|info): ?(.*)")


def stderr_head(text: str, words: int = 2) -> str:
    """The first fatal/usage line (else the first warning) of ``text``, its
    program name stripped, cut to the category and ``words`` words:
    ``fatal: unable to``. For a usage message the category alone."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = _CATEGORY.search(line)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    for category in ("fatal", "usage", "warning"):
        if category in found:
            if category == "usage" or not words:
                return category
            head = " ".join(found[category].split()[:words])
            return f"{category}: {head}"
    return "-"


def normalize_log(line: str) -> str:
    """A log line, program name (and C's ``pid N:`` tag) stripped, numbers as N."""
    m = _CATEGORY.search(line)
    text = f"{m.group(1)}: {m.group(2)}" if m else line
    return re.sub(r"\d+", "N", text)


#: The variables of the interface whose values are compared (others: presence).
_VALUE_VARS = re.compile(
    r"^(PROTO|TCP\w*|SSL_(PROTOCOL|TLS_SNI_SERVERNAME|PEER_CERT_\w+)|FID_\w+)$"
)
_PRESENCE_VARS = re.compile(
    r"^(CADIR|CAFILE|CERTFILE|KEYFILE|CERTFILE:.*|KEYFILE:.*|TLS_UID|TLS_GID|SSL_CIPHER"
    r"|SSLCTLFD|SSLREADFD|SSLWRITEFD|SSL_\w+)$"
)


def describe_env(env: Mapping[str, str], pki: Pki, *, ports: Mapping[str, str] = {}) -> str:
    """prog's environment as the interface defines it, sorted: values for
    PROTO, TCP*, SSL_PROTOCOL, SSL_TLS_SNI_SERVERNAME, SSL_PEER_CERT_*, the
    rules' FID_* variables; presence (NAME) for the TLS variables, SSL_CIPHER
    and the UCSPI-TLS fds. Ports become PORT (the server's) or EPHEMERAL,
    certificate hashes the certificate's name."""
    items = []
    for k in sorted(env):
        v = env[k]
        if k in ("TCPLOCALPORT", "TCPREMOTEPORT"):
            v = ports.get(v, "EPHEMERAL" if v.isdigit() else v)
        if k == "SSL_PEER_CERT_HASH":
            v = pki.name_of_hash(v)
        if _VALUE_VARS.match(k):
            items.append(f"{k}={v}")
        elif _PRESENCE_VARS.match(k):
            items.append(k)
    return " ".join(items) or "-"


def parse_block(block: str | bytes) -> dict[str, str | None]:
    """The notification block: NAME=VALUE sets, NAME alone unsets."""
    if isinstance(block, bytes):
        block = block.decode(errors="replace")
    out: dict[str, str | None] = {}
    for entry in block.split("\0"):
        if not entry:
            continue
        name, eq, value = entry.partition("=")
        out[name] = value if eq else None
    return out


def describe_block(block: str | bytes, pki: Pki) -> str:
    """A notification block as ``NAME=VALUE`` / ``-NAME`` (unset), SSL_CIPHER's
    value hidden."""
    if not block:
        return "(none)"
    parts = []
    for name, value in parse_block(block).items():
        if value is None:
            parts.append(f"-{name}")
        elif name == "SSL_CIPHER":
            parts.append(name)
        elif name == "SSL_PEER_CERT_HASH":
            parts.append(f"{name}={pki.name_of_hash(value)}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)


def load_report(line: bytes) -> dict[str, object] | None:
    try:
        report = json.loads(line)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


@dataclass
class Observation:
    """What one implementation did in one case: compared fields (ordered), and
    the raw details for the failure message."""

    fields: dict[str, str] = field(default_factory=dict)
    detail: list[str] = field(default_factory=list)

    def __setitem__(self, key: str, value: object) -> None:
        self.fields[key] = str(value)

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def note(self, label: str, text: str) -> None:
        if text.strip():
            self.detail.append(f"{label}:\n" + "\n".join("    " + t for t in text.splitlines()))

    def compared(self) -> dict[str, str]:
        """The fields that count; those named ``~...`` are shown, not compared."""
        return {k: v for k, v in self.fields.items() if not k.startswith("~")}

    def render(self, keys: Sequence[str] | None = None) -> str:
        keys = self.fields if keys is None else keys
        return "; ".join(f"{k}: {self.fields.get(k, '(absent)')}" for k in keys)


# --- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Documented:
    """A deliberate difference: what C does, what we do, why, where it is written."""

    fields: tuple[str, ...]  # the observation fields allowed to differ
    c: str
    ours: str
    reason: str
    doc: str


@dataclass
class Row:
    case: str
    c: Observation
    ours: Observation
    verdict: str  # same, documented, KNOWN GAP (an open issue row), DIFFERENT
    differing: tuple[str, ...]


class Table:
    """The comparison table: every case appends its row; printed and saved at
    the end of the session."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def render(self, rows: Sequence[Row] | None = None) -> str:
        rows = self.rows if rows is None else rows
        header = ("case", "C", "ours (only where it differs)", "verdict")
        cells = []
        for r in rows:
            shown = [
                *r.differing,
                *(
                    k
                    for k in r.ours.fields
                    if k.startswith("~") and r.c.fields.get(k) != r.ours.fields[k]
                ),
            ]
            cells.append((r.case, r.c.render(), r.ours.render(shown) if shown else "=", r.verdict))
        widths = [max(len(x[i]) for x in [header, *cells]) for i in (0, 3)]
        lines = [f"{'case':<{widths[0]}}  {'verdict':<{widths[1]}}  observations"]
        for case, c, ours, verdict in cells:
            lines.append(f"{case:<{widths[0]}}  {verdict:<{widths[1]}}  C:    {c}")
            if ours != "=":
                lines.append(f"{'':<{widths[0]}}  {'':<{widths[1]}}  ours: {ours}")
        counts = {
            v: sum(r.verdict == v for r in rows)
            for v in ("same", "documented", "KNOWN GAP", "DIFFERENT")
        }
        summary = ", ".join(f"{n} {v}" for v, n in counts.items())
        return "\n".join(lines) + f"\n\n{len(rows)} cases: {summary}\n"

    def save(self) -> None:
        legend = (
            "Fidelity with C s6-networking 2.8.0.1: each case runs the same command line\n"
            "and inputs through C and through ours. 'C:' is C's observation; 'ours:' lists\n"
            "only the fields where ours differs. documented = a deliberate difference\n"
            "listed in DOCUMENTED_DIFFERENCES (tests/test_fidelity.py).\n\n"
        )
        self.path.write_text(legend + self.render())
