#!/usr/bin/env python3
"""A minimal SMTP-style server offering STARTTLS through UCSPI-TLS.

Run it as a UCSPI server program, the connection on stdin/stdout, under
s6-ucspitlsd (and a TCP server), for example::

    s6-tcpserver 127.0.0.1 2525 s6-ucspitlsd -- python smtp_starttls_server.py

It speaks just enough SMTP for ``openssl s_client -starttls smtp``: HELO,
EHLO (announcing STARTTLS while it is available), STARTTLS, NOOP, RSET, QUIT,
and XTLSINFO, ours, which lists the SSL_* variables the handshake reported.
With ``--decline`` it declines TLS at once (closes SSLCTLFD) and stays in
cleartext. It delivers no mail.
"""

from __future__ import annotations

import os
import socket
import sys

from trio_s6tls import UcspiTLS, UcspiTLSError


class LineChannel:
    """CRLF lines over a read fd and a write fd, with a private buffer."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = b""

    def readline(self) -> bytes | None:
        while b"\n" not in self._buffer:
            chunk = os.read(self.read_fd, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def reply(self, *lines: str) -> None:
        data = b"".join(line.encode() + b"\r\n" for line in lines)
        view = memoryview(data)
        while view:
            view = view[os.write(self.write_fd, view) :]

    def pending(self) -> bool:
        return bool(self._buffer)


def main() -> int:
    hostname = socket.gethostname()
    channel = LineChannel(0, 1)
    tls = UcspiTLS.from_environ()
    if tls is not None and "--decline" in sys.argv[1:]:
        tls.decline()
        tls = None
    variables: dict[str, str | None] | None = None  # set once TLS is on
    channel.reply(f"220 {hostname} ESMTP trio_s6tls example")
    while True:
        line = channel.readline()
        if line is None:
            return 0
        verb, _, argument = line.decode("utf-8", "replace").partition(" ")
        verb = verb.upper()
        if verb == "EHLO":
            offer = ["250-STARTTLS"] if tls is not None and variables is None else []
            channel.reply(f"250-{hostname} hello {argument}", *offer, "250 8BITMIME")
        elif verb == "HELO":
            channel.reply(f"250 {hostname} hello {argument}")
        elif verb == "STARTTLS":
            if tls is None or variables is not None:
                channel.reply("454 4.7.0 TLS not available")
                continue
            if channel.pending():  # RFC 3207: nothing may follow STARTTLS
                channel.reply("501 5.5.2 no pipelining after STARTTLS")
                continue
            channel.reply("220 2.0.0 Ready to start TLS")
            try:
                variables = tls.start_tls(report=True)
            except UcspiTLSError as error:
                print(f"smtp_starttls_server: fatal: {error.message}", file=sys.stderr)
                return 1
            channel = LineChannel(tls.read_fd, tls.write_fd)
        elif verb == "XTLSINFO":
            lines = [
                f"{name}={value}"
                for name, value in sorted((variables or {}).items())
                if value is not None
            ]
            body = ["250-" + text for text in lines] + [
                "250 " + ("TLS on" if variables else "TLS off")
            ]
            channel.reply(*body)
        elif verb in ("NOOP", "RSET"):
            channel.reply("250 2.0.0 OK")
        elif verb == "QUIT":
            channel.reply("221 2.0.0 Bye")
            return 0
        else:
            channel.reply("502 5.5.1 command not implemented")


if __name__ == "__main__":
    sys.exit(main())
