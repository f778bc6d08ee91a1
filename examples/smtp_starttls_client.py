#!/usr/bin/env python3
"""A minimal SMTP-style client that upgrades to TLS through UCSPI-TLS.

Run it as a UCSPI client program, the connection on fds 6 (read) and 7
(write), under s6-ucspitlsc (and a TCP client), for example::

    s6-tcpclient 127.0.0.1 2525 s6-ucspitlsc -k localhost -- python smtp_starttls_client.py

It reads the greeting, says EHLO, asks for STARTTLS, requests TLS with the
``Y`` command (so it learns the SSL_* variables), says EHLO again through
TLS, asks the example server for XTLSINFO, and QUITs. The dialogue goes to
stdout (``C:`` and ``S:`` lines), then the client's own SSL_* variables.
Exit 0 if everything went as planned, 1 otherwise.
"""

from __future__ import annotations

import os
import sys

from trio_s6tls import UcspiTLS, UcspiTLSError


class Conversation:
    """Commands and multi-line SMTP replies over a read fd and a write fd."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = b""

    def _line(self) -> str:
        while b"\n" not in self._buffer:
            chunk = os.read(self.read_fd, 4096)
            if not chunk:
                raise EOFError("server closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        print(f"S: {text}")
        return text

    def reply(self) -> tuple[int, list[str]]:
        """One reply: its code and its lines (the text after the code)."""
        lines = []
        while True:
            text = self._line()
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), lines

    def command(self, text: str) -> tuple[int, list[str]]:
        print(f"C: {text}")
        data = memoryview(text.encode() + b"\r\n")
        while data:
            data = data[os.write(self.write_fd, data) :]
        return self.reply()


def main() -> int:
    tls = UcspiTLS.from_environ()
    if tls is None:
        print("smtp_starttls_client: fatal: not run under s6-ucspitlsc", file=sys.stderr)
        return 1
    talk = Conversation(6, 7)
    try:
        code, _ = talk.reply()
        if code != 220:
            return 1
        code, capabilities = talk.command("EHLO client.example")
        if code != 250 or "STARTTLS" not in capabilities:
            tls.decline()
            talk.command("QUIT")
            return 1
        code, _ = talk.command("STARTTLS")
        if code != 220:
            return 1
        variables = tls.start_tls(report=True)
        talk = Conversation(tls.read_fd, tls.write_fd)
        talk.command("EHLO client.example")
        talk.command("XTLSINFO")
        code, _ = talk.command("QUIT")
    except (EOFError, UcspiTLSError, OSError) as error:
        print(f"smtp_starttls_client: fatal: {error}", file=sys.stderr)
        return 1
    for name, value in sorted(variables.items()):
        if value is not None:
            print(f"{name}={value}")
    return 0 if code == 221 else 1


if __name__ == "__main__":
    sys.exit(main())
