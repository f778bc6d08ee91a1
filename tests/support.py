"""Helpers shared by the test modules (the fixtures are in conftest.py).

Built on the package's public pieces: certificates come from
:class:`trio_s6tls.testing.LoopbackPKI`, child fds are placed with
:func:`trio_s6tls.install_fds`.

Every wait here has a bound and waits on the event itself — a pipe read
under ``select``, a process exit with a timeout, a socket read with a
timeout, a condition another thread signals — never a sleep and a check.

Sections: bounds; programs and processes; a child's output as it comes
(:class:`PipeLog`, :class:`Sink`, :class:`Source`); certificates and
environments; plain TLS clients over sockets; the super-servers as
subprocesses (:func:`running_server`); the one-connection engines as
subprocesses (:func:`start_engine`); a TLS peer driven by hand
(:class:`BioPeer`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from trio_s6tls import install_fds
from trio_s6tls.testing import LoopbackPKI

# -- bounds ---------------------------------------------------------------------------

#: Bound on one wait that should succeed: generous for a loaded 2-core machine.
TIMEOUT = 30.0

KiB = 1 << 10
MiB = 1 << 20

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent

# -- programs and processes --------------------------------------------------------------

#: Processes started by :func:`spawn`; conftest.py kills and reaps what a test left.
SPAWNED: list[subprocess.Popen[bytes]] = []


def program(name: str) -> str:
    """Path of one of our installed console scripts; fails loudly if missing."""
    path = BIN / name
    assert path.exists(), f"{name} is not installed next to {sys.executable}"
    return str(path)


def spawn(
    argv: list[str],
    fds: Mapping[int, int],
    env: Mapping[str, str] | None = None,
    **kwargs: object,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with ``fds`` mapping child fd → our fd (e.g. ``{0: sock,
    1: sock, 6: pipe}``), placed by :func:`trio_s6tls.install_fds`. Our other
    fds are close-on-exec (PEP 446), so the child gets exactly these plus
    stderr (a pipe unless ``stderr=`` says otherwise). Our console scripts
    are found by name."""
    placement = dict(fds)
    if "/" not in argv[0] and (BIN / argv[0]).exists():
        argv = [program(argv[0]), *argv[1:]]
    proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
        argv,
        preexec_fn=functools.partial(install_fds, placement),
        close_fds=False,
        env=dict(os.environ if env is None else env),
        stderr=kwargs.pop("stderr", subprocess.PIPE),
        **kwargs,
    )
    SPAWNED.append(proc)
    return proc


def reap_spawned() -> None:
    """Kill and reap every process :func:`spawn` started that is still there."""
    while SPAWNED:
        proc = SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            proc.communicate(timeout=10)


def finish(
    proc: subprocess.Popen[bytes], timeout: float = TIMEOUT, input: bytes | None = None
) -> tuple[bytes, bytes]:
    """Wait for ``proc`` and for EOF on its pipes (so every process that
    inherited them — an engine child too — is gone). Kills on timeout."""
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:  # an engine child may still hold the pipes: bounded again
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            err = b"(pipes still held open by a descendant)"
        raise AssertionError(f"{proc.args!r} did not finish; stderr: {err!r}") from None
    return out or b"", err or b""


@contextlib.contextmanager
def reaped(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kill whatever is still running when the block is left."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.communicate(timeout=TIMEOUT)


def read_line_matching(stream: object, prefix: bytes, timeout: float = TIMEOUT) -> bytes:
    """Read lines of a child's pipe until one starts with ``prefix``."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            if line.startswith(prefix):
                return line
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            raise AssertionError(f"no line starting with {prefix!r} in {timeout}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"EOF before a line starting with {prefix!r}; got {buffer!r}")
        buffer += chunk


def read_exactly(fd: int, count: int, timeout: float = TIMEOUT) -> bytes:
    """``count`` bytes from ``fd`` (an application's pipe), each read bounded."""
    data = b""
    while len(data) < count:
        readable, _, _ = select.select([fd], [], [], timeout)
        assert readable, f"only {len(data)} of {count} bytes arrived"
        chunk = os.read(fd, count - len(data))
        assert chunk, f"EOF after {len(data)} of {count} bytes"
        data += chunk
    return data


def read_to_eof(fd: int, timeout: float = TIMEOUT) -> bytes:
    """Everything from ``fd`` up to EOF, each read bounded; closes ``fd``."""
    chunks = []
    try:
        while True:
            readable, _, _ = select.select([fd], [], [], timeout)
            assert readable, f"no EOF in {timeout} s; got {b''.join(chunks)!r}"
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def one_line(stderr: bytes, prog: str, kind: str = "fatal") -> str:
    """stderr must be exactly one ``PROG: kind: ...`` line, no traceback."""
    text = stderr.decode()
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith(f"{prog}: {kind}: "), text
    return lines[0]


def parse_env(text: str | bytes) -> dict[str, str]:
    """``env`` output (one NAME=VALUE per line) as a dict."""
    if isinstance(text, bytes):
        text = text.decode()
    env = {}
    for line in text.splitlines():
        name, eq, value = line.partition("=")
        if eq:
            env[name] = value
    return env


def hosts_name(ip: str, path: str = "/etc/hosts") -> str | None:
    """The name ``-h`` finds for ``ip``: the first name of its first line in
    the hosts file, with the final dot of the C tools (s6-dns)."""
    with open(path) as hosts:
        for line in hosts:
            words = line.split("#", 1)[0].split()
            if len(words) > 1 and words[0] == ip:
                return words[1].lower() + "."
    return None


def sh(script: str, *args: str) -> list[str]:
    """A prog: ``sh -c script`` with positional args."""
    return ["sh", "-c", script, "sh", *args]


# -- a child's output, as it comes -------------------------------------------------


class PipeLog:
    """A child's stderr (or any pipe), drained by a thread as it comes, so
    the child never blocks on it; the waits wake on each new chunk (a
    condition the thread signals), each with a bound."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe()
        self._data = bytearray()
        self._eof = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                chunk = b""
            with self._changed:
                if chunk:
                    self._data += chunk
                else:
                    self._eof = True
                self._changed.notify_all()
            if not chunk:
                return

    @property
    def text(self) -> str:
        """Everything so far."""
        with self._changed:
            return self._data.decode(errors="replace")

    def _wait(self, found: Callable[[], object], what: str, timeout: float) -> object:
        """``found()`` once it is true (re-checked on each chunk), or fail at
        EOF or after ``timeout`` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: found() or self._eof, timeout)
            result = found()
            if not result:
                state = "EOF" if self._eof else f"nothing in {timeout} s"
                raise AssertionError(
                    f"{what}: {state}; got {self._data.decode(errors='replace')!r}"
                )
            return result

    def wait_for(self, needle: str, timeout: float = TIMEOUT) -> str:
        """Wait until ``needle`` has appeared; return everything so far."""
        self._wait(lambda: needle.encode() in self._data, repr(needle), timeout)
        return self.text

    def line(self, prefix: bytes, timeout: float = TIMEOUT) -> bytes:
        """The first complete line starting with ``prefix`` (waiting for it)."""

        def first() -> bytes | None:
            for line in bytes(self._data).split(b"\n")[:-1]:
                if line.startswith(prefix):
                    return line
            return None

        return self._wait(first, f"a line starting with {prefix!r}", timeout)  # type: ignore[return-value]

    def lines_until(self, pattern: bytes, timeout: float = TIMEOUT) -> list[bytes]:
        """The complete lines up to and including the first one matching
        ``pattern`` (a regex), waiting for it."""

        def upto() -> list[bytes] | None:
            lines = bytes(self._data).split(b"\n")[:-1]
            for index, line in enumerate(lines):
                if re.search(pattern, line):
                    return lines[: index + 1]
            return None

        return self._wait(upto, f"a line matching {pattern!r}", timeout)  # type: ignore[return-value]

    def wait_eof(self, timeout: float = TIMEOUT) -> bool:
        """Whether EOF came within ``timeout`` (every writer has closed)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._eof, timeout)

    def close(self) -> None:
        """Stop the thread and close the pipe (writers may still hold theirs)."""
        os.write(self._stop_w, b"x")
        self._thread.join(TIMEOUT)
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)


class Sink(threading.Thread):
    """Read an fd to EOF in the background, hashing (or keeping) the bytes;
    :meth:`wait_for` wakes on every chunk."""

    def __init__(self, fd: int, keep: bool = False) -> None:
        super().__init__(daemon=True)
        self.fd, self.keep = fd, keep
        self.hash, self.count, self.data = hashlib.sha256(), 0, bytearray()
        self._changed = threading.Condition()
        self.start()

    def run(self) -> None:
        with open(self.fd, "rb", buffering=0) as file:
            while chunk := file.read(MiB):
                with self._changed:
                    self.hash.update(chunk)
                    self.count += len(chunk)
                    if self.keep:
                        self.data += chunk
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[bytes], bool], timeout: float = TIMEOUT) -> None:
        """Wait until ``condition(data so far)`` holds (needs ``keep``)."""
        assert self.keep
        with self._changed:
            reached = self._changed.wait_for(
                lambda: condition(bytes(self.data)) or not self.is_alive(), timeout
            )
            assert reached and condition(bytes(self.data)), (
                f"not received; got {bytes(self.data)!r}"
            )

    def result(self) -> tuple[int, str]:
        self.join(TIMEOUT)
        assert not self.is_alive(), "reader did not see EOF"
        return self.count, self.hash.hexdigest()


class Source(threading.Thread):
    """Write bytes to an fd in the background, then close it (EOF)."""

    def __init__(self, fd: int, data: bytes) -> None:
        super().__init__(daemon=True)
        self.fd, self.data = fd, data
        self.start()

    def run(self) -> None:
        with open(self.fd, "wb", buffering=0) as file, contextlib.suppress(BrokenPipeError):
            file.write(self.data)


# -- certificates and environments ---------------------------------------------------

#: What a test environment drops from ours before adding its own.
TLS_CONFIGURATION = ("CADIR", "CAFILE", "CERTFILE", "KEYFILE", "TLS_UID", "TLS_GID")


def tls_env(pki: LoopbackPKI, **extra: str) -> dict[str, str]:
    """Our environment without its TLS variables, plus the PKI's server
    (KEYFILE, CERTFILE) and client (CAFILE) variables and ``extra``."""
    base = {k: v for k, v in os.environ.items() if k not in TLS_CONFIGURATION}
    return {**base, **pki.server_env, **pki.client_env, **extra}


def first_certificate_der(pem_path: Path) -> bytes:
    """DER of the first certificate in a PEM file."""
    text = pem_path.read_text()
    start = text.index("-----BEGIN CERTIFICATE-----")
    end = text.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[start:end])


@dataclass(frozen=True)
class ClientCert:
    """A client certificate issued by the test CA, key and chain in ``file``."""

    file: Path
    der: bytes  # the end-entity certificate

    @property
    def env(self) -> dict[str, str]:
        """CERTFILE/KEYFILE for a client that sends it (-y)."""
        return {"CERTFILE": str(self.file), "KEYFILE": str(self.file)}


def issue_client_cert(
    ca: trustme.CA, path: Path, common_name: str, *, organization: str, unit: str
) -> ClientCert:
    """A client certificate from ``ca`` with the subject ``O=organization,
    OU=unit, CN=common_name``, written (key and chain) to ``path``."""
    issued = ca.issue_cert(
        "client.example",
        common_name=common_name,
        organization_name=organization,
        organization_unit_name=unit,
    )
    issued.private_key_and_cert_chain_pem.write_to_path(str(path))
    return ClientCert(path, ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode()))


def sni_pem(pki: LoopbackPKI, name: str) -> Path:
    """The key-and-chain file of the PKI's certificate for ``name``."""
    return Path(pki.sni_env(name)[f"CERTFILE:{name}"])


# -- plain TLS clients over sockets ----------------------------------------------------

#: (client read, client write), (server read, server write): see conftest.network.
Network = tuple[tuple[int, int], tuple[int, int]]


def connect(port: int, source: str | None = None, timeout: float = TIMEOUT) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port``, reads and writes bounded."""
    return socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
    )


def client_context(pki: LoopbackPKI, cert: Path | None = None) -> ssl.SSLContext:
    """Python's default client context trusting the PKI, sending ``cert``."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert))
    return context


def tls_client(sock: socket.socket, cafile: Path, servername: str = "localhost") -> ssl.SSLSocket:
    """A blocking Python TLS client on a connected socket, bounded."""
    context = ssl.create_default_context(cafile=str(cafile))
    sock.settimeout(TIMEOUT)
    return context.wrap_socket(sock, server_hostname=servername)


def tls_connect(
    port: int,
    context: ssl.SSLContext,
    *,
    server_hostname: str | None = "localhost",
    session: ssl.SSLSession | None = None,
    preamble: bytes = b"",
    source: str | None = None,
) -> ssl.SSLSocket:
    """Connect, send ``preamble`` in cleartext, then the TLS handshake."""
    sock = connect(port, source)
    try:
        if preamble:
            sock.sendall(preamble)
        return context.wrap_socket(sock, server_hostname=server_hostname, session=session)
    except BaseException:
        sock.close()
        raise


def half_close(tls: ssl.SSLSocket) -> None:
    """TCP FIN without close_notify and without dropping our TLS read side
    (``SSLSocket.shutdown`` would): s6's default ``-s`` close mode."""
    socket.socket.shutdown(tls, socket.SHUT_WR)


def read_all(sock: socket.socket) -> bytes:
    """Everything until EOF or a reset (reads bounded by the socket's timeout)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(256 * KiB)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def receive_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """Everything until EOF (a ragged EOF included)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ssl.SSLEOFError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(port: int, context: ssl.SSLContext, data: bytes, **kwargs: object) -> bytes:
    """Send ``data``, half-close, return everything received until EOF.
    Sequential on purpose: one ``SSLSocket`` must not be used from two
    threads at once. Fine for payloads that fit in the socket and pipe
    buffers on the way (the echo tests stay at 64 KiB)."""
    with tls_connect(port, context, **kwargs) as tls:  # type: ignore[arg-type]
        tls.sendall(data)
        half_close(tls)
        return read_all(tls)


def closed_by_server(sock: socket.socket, timeout: float = TIMEOUT) -> bool:
    """Whether the other side closes ``sock`` within ``timeout`` (reading
    and discarding whatever it sends first)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


# -- the super-servers as subprocesses -------------------------------------------------


@dataclass
class ServerProcess:
    """A running s6-tlsserver or s6-tcpserver (started with ``-1``)."""

    process: subprocess.Popen[bytes]
    port: int
    log: PipeLog | None  # its stderr, unless closed or unread on purpose

    @property
    def stderr(self) -> str:
        """What it (and its progs) wrote to stderr so far."""
        assert self.log is not None
        return self.log.text

    def wait_stderr(self, needle: str, timeout: float = TIMEOUT) -> str:
        """Wait until ``needle`` is in its stderr; the text so far."""
        assert self.log is not None
        return self.log.wait_for(needle, timeout)

    def line(self, prefix: bytes, timeout: float = TIMEOUT) -> bytes:
        """The first stderr line starting with ``prefix`` (waiting for it)."""
        assert self.log is not None
        return self.log.line(prefix, timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout)

    def exits_within(self, seconds: float = TIMEOUT) -> int:
        return self.process.wait(seconds)


@contextlib.contextmanager
def running_server(
    argv: list[str],
    env: Mapping[str, str],
    *,
    stderr: str = "pipe",
    extra_groups: list[int] | None = None,
    process_group: bool = False,
    startup: float = TIMEOUT,
) -> Iterator[ServerProcess]:
    """``argv[0] -1 argv[1:]`` (our console script), ready once it has
    written its port. Its stderr is a pipe drained as it comes ("pipe",
    see :class:`PipeLog`), closed ("closed"), or a pipe whose reader is
    gone ("reader gone", closed once the server is ready). Stopped on the
    way out, pass or fail: SIGABRT (which kills its progs), then SIGKILL."""
    read_end, write_end = os.pipe()

    def arrange() -> None:
        if stderr == "closed":
            os.close(2)

    try:
        process = subprocess.Popen(
            [program(argv[0]), "-1", *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=write_end,
            env=dict(env),
            preexec_fn=arrange,
            extra_groups=extra_groups,
            process_group=0 if process_group else None,
        )
    finally:
        os.close(write_end)
    log = PipeLog(read_end) if stderr == "pipe" else None
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], startup)
        assert ready, "no readiness line in time"
        line = process.stdout.readline()
        if not line.endswith(b"\n"):
            process.wait(startup)
            said = log.text if log is not None else os.read(read_end, 65536).decode()
            raise AssertionError(f"no readiness: {line!r}, {said!r}")
        if stderr == "reader gone":
            os.close(read_end)
            read_end = -1
        yield ServerProcess(process, int(line), log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGABRT)
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:  # e.g. its loop is blocked in a syscall
                process.kill()
                process.wait(TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()
        if log is not None:
            log.close()
        elif read_end >= 0:
            os.close(read_end)


# -- the one-connection engines as subprocesses ------------------------------------------


@dataclass
class Engine:
    """A running s6-tlsc-io / s6-tlsd-io and our ends of its local side."""

    proc: subprocess.Popen[bytes]
    to_app: int  # we write here: what the engine sends to the network
    from_app: int  # we read here: what the engine received from the network

    def finish(self) -> tuple[int, bytes]:
        _, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, err


def start_engine(
    prog: str,
    args: list[str],
    net_read: int,
    net_write: int,
    env: dict[str, str],
    extra: dict[int, int] | None = None,
) -> Engine:
    """s6-tlsd-io (network on 0/1, local on 3/4) or s6-tlsc-io (local on 0/1,
    network on 6/7), with our pipes as its local side."""
    local_in_r, local_in_w = os.pipe()
    local_out_r, local_out_w = os.pipe()
    if prog == "s6-tlsd-io":
        operands, fds = ["3", "4"], {0: net_read, 1: net_write, 3: local_in_r, 4: local_out_w}
    else:
        operands, fds = ["6", "7"], {0: local_in_r, 1: local_out_w, 6: net_read, 7: net_write}
    proc = spawn([prog, *args, *operands], {**fds, **(extra or {})}, env)
    os.close(local_in_r)
    os.close(local_out_w)
    return Engine(proc, local_in_w, local_out_r)


start_server = functools.partial(start_engine, "s6-tlsd-io")
start_client = functools.partial(start_engine, "s6-tlsc-io")


def start_pair(
    pki: LoopbackPKI,
    network: Network,
    client_args: list[str],
    server_args: list[str],
    env: dict[str, str] | None = None,
) -> tuple[Engine, Engine]:
    """s6-tlsc-io and s6-tlsd-io on the two sides of ``network`` (whose fds
    are theirs then: ours are closed, an EOF on a pipe needs it)."""
    env = env or tls_env(pki)
    (cr, cw), (sr, sw) = network
    server = start_server(server_args, sr, sw, env)
    client = start_client(client_args, cr, cw, env)
    for fd in {cr, cw, sr, sw}:
        os.close(fd)
    return client, server


def accept_one(listener: socket.socket) -> socket.socket:
    listener.settimeout(TIMEOUT)
    accepted, _ = listener.accept()
    return accepted


def strict_tls_client(
    pki: LoopbackPKI, port: int, *, cert: Path | None = None, servername: str | None = "localhost"
) -> ssl.SSLSocket:
    """A Python TLS client that reports a ragged EOF (``SSLEOFError``)."""
    context = client_context(pki, cert)
    if servername is None:
        context.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=servername, suppress_ragged_eofs=False)
    except BaseException:
        raw.close()
        raise


def serve_one(
    listener: socket.socket,
    args: list[str],
    env: dict[str, str],
    extra: dict[int, int] | None = None,
) -> Engine:
    """s6-tlsd-io on the next connection to ``listener``."""
    accepted = accept_one(listener)
    try:
        return start_server(args, accepted.fileno(), accepted.fileno(), env, extra)
    finally:
        accepted.close()


def connect_and_serve(
    pki: LoopbackPKI,
    listener: socket.socket,
    args: list[str],
    env: dict[str, str] | None = None,
    extra: dict[int, int] | None = None,
    *,
    cert: Path | None = None,
) -> tuple[ssl.SSLSocket, Engine]:
    """A Python TLS client and an s6-tlsd-io for it (handshake completed)."""
    port = listener.getsockname()[1]
    result: list[ssl.SSLSocket] = []
    thread = threading.Thread(
        target=lambda: result.append(strict_tls_client(pki, port, cert=cert)), daemon=True
    )
    thread.start()
    engine = serve_one(listener, args, env or tls_env(pki), extra)
    thread.join(TIMEOUT)
    assert result, "the client's handshake did not complete"
    return result[0], engine


def openssl_port(s_server: subprocess.Popen[bytes]) -> int:
    """The port from s_server's ``ACCEPT 127.0.0.1:PORT`` line (bounded)."""
    line = read_line_matching(s_server.stdout, b"ACCEPT")
    return int(line.rsplit(b":", 1)[1])


# -- a TLS peer driven by hand ---------------------------------------------------------

#: An application-data record whose body cannot decrypt: bad_record_mac.
CORRUPT_RECORD = b"\x17\x03\x03\x00\x20" + bytes(range(32))


@dataclass
class Received:
    data: bytes
    ending: str  # "close_notify" or "eof" (a bare FIN, no close_notify)


class BioPeer:
    """One TLS endpoint over ``read_fd``/``write_fd`` (the same socket twice,
    or two pipes): Python's ``ssl.SSLObject`` over memory BIOs, blocking I/O
    under ``select``. Call :meth:`handshake` first.

    Unlike an ``SSLSocket`` it can do what TLS 1.3 allows and the close-model
    tests need: read after sending close_notify, send after receiving one,
    put application data and a corrupt record into one write, and say
    exactly how the other side's stream ended (close_notify, or a bare EOF).
    """

    def __init__(
        self,
        read_fd: int,
        write_fd: int,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = "localhost",
    ) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=None if server_side else server_hostname,
        )
        self.eof_seen = False

    # -- the transport ----------------------------------------------------

    def flush(self) -> None:
        data = self.outgoing.read()
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self.write_fd], [], TIMEOUT)
            assert writable, "the other side stopped reading"
            view = view[os.write(self.write_fd, view) :]

    def feed(self, timeout: float = TIMEOUT) -> bool:
        """Move what the transport has into the BIO; False at EOF."""
        readable, _, _ = select.select([self.read_fd], [], [], timeout)
        assert readable, f"nothing arrived in {timeout} s"
        try:
            data = os.read(self.read_fd, 1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            self.incoming.write_eof()
            self.eof_seen = True
            return False
        self.incoming.write(data)
        return True

    # -- TLS ----------------------------------------------------------------

    def handshake(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                assert self.feed(deadline - time.monotonic()), "EOF during the handshake"
        self.flush()

    def encrypt(self, data: bytes) -> bytes:
        """The records for ``data``, not yet sent."""
        self.tls.write(data)
        return self.outgoing.read()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.flush()

    def send_raw(self, wire: bytes) -> None:
        self.outgoing.write(wire)
        self.flush()

    def send_close_notify(self) -> None:
        """Our close_notify, and nothing else: the incoming BIO is empty
        here (we feed it only while reading), so ``unwrap`` cannot eat the
        peer's data while it looks for the peer's close_notify."""
        assert not self.incoming.pending
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self.flush()

    def receive_all(self) -> Received:
        """Everything until the peer's close_notify or EOF."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                self.flush()  # a KeyUpdate reply, a ticket ack...
                self.feed()
                continue
            except ssl.SSLZeroReturnError:
                return Received(b"".join(chunks), "close_notify")
            except ssl.SSLEOFError:
                return Received(b"".join(chunks), "eof")
            if not chunk:
                return Received(b"".join(chunks), "close_notify")
            chunks.append(chunk)

    def shutdown_write(self) -> None:
        """A bare FIN (the TCP write side), no close_notify."""
        if self.read_fd == self.write_fd:
            with socket.socket(fileno=os.dup(self.write_fd)) as sock:
                sock.shutdown(socket.SHUT_WR)
        else:
            os.close(self.write_fd)


def _only_version(context: ssl.SSLContext, version: str | None) -> ssl.SSLContext:
    if version is not None:
        context.minimum_version = context.maximum_version = getattr(
            ssl.TLSVersion, "TLSv" + version.replace(".", "_")
        )
    return context


def python_client_context(cafile: str | Path, version: str | None = None) -> ssl.SSLContext:
    """Python's default client context (for :class:`BioPeer`), one version if asked."""
    return _only_version(ssl.create_default_context(cafile=str(cafile)), version)


def python_server_context(certfile: str | Path, version: str | None = None) -> ssl.SSLContext:
    """A plain Python server context (key and chain in ``certfile``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certfile))
    return _only_version(context, version)


def rules_options(rules: Path, form: str) -> list[str]:
    """The server options for the access rules in ``rules``: ``-i DIR``
    (``form`` "directory"), or ``-x CDB`` ("cdb") with the CDB that C's
    s6-accessrules-cdb-from-fs compiles from DIR (skipped without the C
    build, a failure under CI=true)."""
    if form == "directory":
        return ["-i", str(rules)]
    from c_tools import MISSING_REASON, require_c_tools

    compiler = require_c_tools()("s6-accessrules-cdb-from-fs")
    if not os.access(compiler, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {MISSING_REASON}", pytrace=False)
        pytest.skip(MISSING_REASON)
    cdb = rules.with_suffix(".cdb")
    subprocess.run([compiler, str(cdb), str(rules)], check=True, capture_output=True, timeout=30)
    return ["-x", str(cdb)]


_RECORD_HEADER = struct.pack("!BHH", 23, 0x0303, 1000)  # application data, 1000 bytes
#: Where a stream may end inside a TLS record, for parametrize("cut", ...):
#: its 5-byte header cut short, the header alone, part of the body.
RECORD_CUTS = [
    pytest.param(_RECORD_HEADER[:3], id="header"),
    pytest.param(_RECORD_HEADER, id="after-header"),
    pytest.param(_RECORD_HEADER + b"\0" * 10, id="body"),
]
