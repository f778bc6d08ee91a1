import sys

import trio

from trio_s6tls.testing import Faults, Transcript

GREET = [sys.executable, "greet.py"]


async def read_line(stream):
    """Bytes up to and including a newline (this test reads one line only)."""
    data = b""
    with trio.fail_after(10):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some()
            assert chunk, "connection closed early"
            data += chunk
    return data


async def test_greeting(ucspi_tls_server):
    server = await ucspi_tls_server(GREET)
    async with server.connect() as stream:
        await stream.send_all(b"world\n")
        assert await read_line(stream) == b"hello world, you came from 127.0.0.1 over TLSv1.3\n"
    [record] = await server.wait_finished()
    assert record.prog_status == 0
    assert "KEYFILE" not in record.env  # s6-tlsserver removes the TLS variables


async def test_greeting_over_tls12_with_a_client_certificate(ucspi_tls_server):
    server = await ucspi_tls_server(GREET, ["-y"])  # -y: client certificate required
    async with server.connect(tls_version="1.2", client_cert=True) as stream:
        await stream.send_all(b"you\n")
        assert (await read_line(stream)).endswith(b"over TLSv1.2\n")
    [record] = await server.wait_finished()
    assert "CN=trio_s6tls test client" in record.env["SSL_PEER_CERT_SUBJECT"]


async def test_a_ragged_close_is_an_error_with_J(ucspi_tls_server):
    server = await ucspi_tls_server(GREET, ["-J"])
    transcript = Transcript()
    faults = Faults(cut_after=0, after_handshake=True)  # cut the TCP stream at once
    async with server.connect(faults=faults, transcript=transcript) as stream:
        await stream.send_all(b"lost\n")
        [record] = await server.wait_finished()
    assert record.engine_status == 98
    print(transcript.format())


async def test_fetch(ucspi_tls_client):
    async def handler(stream):
        assert await read_line(stream) == b"GET status\n"
        await stream.send_all(b"200 all good\n")

    result = await ucspi_tls_client([sys.executable, "fetch.py"], handler)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"200 all good\n"
