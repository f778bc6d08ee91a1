"""``python -m trio_s6tls demo``: throwaway certificates, the installed
s6-tlsd-io and s6-tlsc-io back to back over loopback TCP, one message each
way, and what each side negotiated."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from ._fds import install_fds, read_until_eof
from ._handshake_info import decode_notification, describe_variables

MESSAGE = b"hello through TLS\n"
REPLY = b"and hello back\n"
READ_LIMIT = 1 << 16  # far above anything the demo sends


def _engine(argv: list[str], env: dict[str, str], fds: dict[int, int]) -> subprocess.Popen[bytes]:
    """Run ``python -m trio_s6tls PROG ...`` with child fds ``{target: ours}``
    (our other fds are close-on-exec, so the child gets exactly these)."""
    return subprocess.Popen(
        [sys.executable, "-m", "trio_s6tls", *argv],
        env=env,
        preexec_fn=lambda: install_fds(fds),
        close_fds=False,
    )


USAGE = "python -m trio_s6tls demo"

#: The one line the demo prints when trustme (the ``testing`` extra) is missing.
MISSING_TRUSTME = (
    "trio_s6tls: fatal: the demo needs trustme, which is not installed: install trio_s6tls "
    "with its 'testing' extra (in a checkout: pip install '.[testing]'), or pip install trustme"
)


def main(argv: list[str]) -> int:
    if argv in (["--help"], ["-h"]):
        print(f"usage: {USAGE}\n\nRuns s6-tlsd-io and s6-tlsc-io back to back over loopback TCP.")
        return 0
    if argv:
        print(f"trio_s6tls: usage: {USAGE} (it takes no arguments)", file=sys.stderr)
        return 100
    try:
        import trustme
    except ImportError:
        print(MISSING_TRUSTME, file=sys.stderr)
        return 111

    with tempfile.TemporaryDirectory(prefix="trio_s6tls-demo-") as tmp:
        directory = Path(tmp)
        ca = trustme.CA(organization_name="trio_s6tls demo")
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
        env = dict(
            os.environ,
            CERTFILE=str(directory / "server.pem"),
            KEYFILE=str(directory / "server.pem"),
            CAFILE=str(directory / "ca.pem"),
        )
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            client_sock = socket.create_connection(("127.0.0.1", port))
            server_sock, _ = listener.accept()
        print(f"demo: throwaway CA and certificate for localhost in {directory}")
        print(f"demo: s6-tlsd-io and s6-tlsc-io over 127.0.0.1:{port}")

        # local pipes: server app <-> s6-tlsd-io (fds 3/4), client app <-> s6-tlsc-io (0/1)
        s_in_r, s_in_w = os.pipe()
        s_out_r, s_out_w = os.pipe()
        c_in_r, c_in_w = os.pipe()
        c_out_r, c_out_w = os.pipe()
        s_note_r, s_note_w = os.pipe()
        c_note_r, c_note_w = os.pipe()
        sfd, cfd = server_sock.fileno(), client_sock.fileno()
        server = _engine(
            ["s6-tlsd-io", "-d", "5", "3", "4"],
            env,
            {0: sfd, 1: sfd, 3: s_in_r, 4: s_out_w, 5: s_note_w},
        )
        client = _engine(
            ["s6-tlsc-io", "-k", "localhost", "-d", "5", "6", "7"],
            env,
            {0: c_in_r, 1: c_out_w, 5: c_note_w, 6: cfd, 7: cfd},
        )
        for fd in (s_in_r, s_out_w, c_in_r, c_out_w, s_note_w, c_note_w):
            os.close(fd)
        server_sock.close()
        client_sock.close()

        os.write(c_in_w, MESSAGE)
        os.close(c_in_w)  # client app done: s6-tlsc-io half-closes (-s)
        received = read_until_eof(s_out_r, READ_LIMIT)
        os.write(s_in_w, REPLY)
        os.close(s_in_w)
        answered = read_until_eof(c_out_r, READ_LIMIT)
        statuses = client.wait(30), server.wait(30)
        for side, fd in (("server", s_note_r), ("client", c_note_r)):
            variables = decode_notification(read_until_eof(fd, READ_LIMIT))
            shown = describe_variables(variables, ", ")
            print(f"demo: {side} negotiated {shown}")
        print(f"demo: server application received {received!r}")
        print(f"demo: client application received {answered!r}")
        print(f"demo: exit codes s6-tlsc-io={statuses[0]} s6-tlsd-io={statuses[1]}")
        ok = received == MESSAGE and answered == REPLY and statuses == (0, 0)
        print("demo: OK" if ok else "demo: FAILED")
        return 0 if ok else 1
