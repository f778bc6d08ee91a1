"""TLS failures in words and exit codes, the same for both transports
(:mod:`._socket_tls`, :mod:`._memory_tls`): the handshake fails with 98,
a TLS error while reading is 98, a system error (a reset) 111, and a
network that refuses our data 111."""

from __future__ import annotations

import ssl

from ._errors import EXIT_SYSTEM, EXIT_TLS, Fatal, describe_os_error


def describe_ssl_error(error: ssl.SSLError) -> str:
    """OpenSSL's reason code in words: ``PEER_DID_NOT_RETURN_A_CERTIFICATE``
    becomes ``peer did not return a certificate``."""
    if error.reason:
        return error.reason.replace("_", " ").lower()
    return error.strerror or str(error)


def handshake_failure(error: Exception) -> Fatal:
    if isinstance(error, ssl.SSLError):
        reason = describe_ssl_error(error)
        if isinstance(error, ssl.SSLCertVerificationError):
            reason = f"certificate verification failed: {error.verify_message}"
        elif isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            reason = "peer closed the connection during the handshake"
        return Fatal(EXIT_TLS, f"unable to complete TLS handshake: {reason}")
    if isinstance(error, OSError):
        return Fatal(EXIT_TLS, f"unable to complete TLS handshake: {describe_os_error(error)}")
    return Fatal(EXIT_TLS, f"unable to complete TLS handshake: {error}")


def read_failure(error: Exception) -> Fatal:
    if isinstance(error, ssl.SSLError):
        return Fatal(EXIT_TLS, f"TLS error reading from network: {describe_ssl_error(error)}")
    if isinstance(error, OSError):
        return Fatal(EXIT_SYSTEM, f"unable to read from network: {describe_os_error(error)}")
    return Fatal(EXIT_SYSTEM, f"unable to read from network: {error}")


def write_failure(error: BaseException | None) -> Fatal:
    """The network refused our data: the connection is dead (111)."""
    if isinstance(error, ssl.SSLError):
        detail = describe_ssl_error(error)
    elif isinstance(error, OSError):
        detail = describe_os_error(error)
    else:
        detail = str(error) or "connection closed"
    return Fatal(EXIT_SYSTEM, f"unable to write to network: {detail}")


def reset_failure() -> Fatal:
    return Fatal(EXIT_SYSTEM, "unable to read from network: connection reset by peer")
