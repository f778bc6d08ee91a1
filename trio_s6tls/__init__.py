"""trio_s6tls: skarnet's s6-networking TLS tools, reimplemented on Trio, and
the same engine as an async library.

Public names are re-exported flat from private modules. They load lazily so
that the programs' ``--help``, ``--version`` and usage errors never pay for
importing trio or ssl.
"""

from __future__ import annotations

import importlib

from ._version import __version__ as __version__

TYPE_CHECKING = False  # not typing's: importing typing costs the programs' start-up

_EXPORTS = {
    "Fatal": "_errors",
    "UsageError": "_errors",
    "EXIT_OK": "_errors",
    "EXIT_CONFIG": "_errors",
    "EXIT_ENGINE": "_errors",
    "EXIT_TLS": "_errors",
    "EXIT_USAGE": "_errors",
    "EXIT_SYSTEM": "_errors",
    "Log": "_log",
    "TLSOptions": "_tlsconfig",
    "client_context": "_tlsconfig",
    "server_context": "_tlsconfig",
    "parse_identity": "_identity",
    "drop_privileges": "_identity",
    "is_tls_variable": "_env",
    "SSL_VARIABLES": "_handshake_info",
    "handshake_variables": "_handshake_info",
    "encode_notification": "_handshake_info",
    "decode_notification": "_handshake_info",
    "apply_variables": "_env",
    "FdPairStream": "_fdstreams",
    "fd_stream": "_fdstreams",
    "TLSTransport": "_engine",
    "run_engine": "_engine",
    "establish": "_engine",
    "tunnel": "_engine",
    "tls_over": "_engine",
    "network_from_fds": "_engine",
    "UcspiTLS": "_ucspitls",
    "UcspiTLSError": "_ucspitls",
    "ucspitls_then_exec": "_ucspitls",
    "handshake_then_exec": "_exec",
    "program_environment": "_env",
    "install_fds": "_fds",
    "TcpClientOptions": "_tcpclient",
    "open_connection": "_tcpclient",
    "serve": "_server",
    "Server": "_server",
    "ServerConfig": "_server",
    "ConnectionRecord": "_server",
    "bind": "_server",
    "listener_from": "_server",
}

if TYPE_CHECKING:
    from typing import Any

    from ._engine import TLSTransport as TLSTransport
    from ._engine import establish as establish
    from ._engine import network_from_fds as network_from_fds
    from ._engine import run_engine as run_engine
    from ._engine import tls_over as tls_over
    from ._engine import tunnel as tunnel
    from ._env import apply_variables as apply_variables
    from ._env import is_tls_variable as is_tls_variable
    from ._env import program_environment as program_environment
    from ._errors import EXIT_CONFIG as EXIT_CONFIG
    from ._errors import EXIT_ENGINE as EXIT_ENGINE
    from ._errors import EXIT_OK as EXIT_OK
    from ._errors import EXIT_SYSTEM as EXIT_SYSTEM
    from ._errors import EXIT_TLS as EXIT_TLS
    from ._errors import EXIT_USAGE as EXIT_USAGE
    from ._errors import Fatal as Fatal
    from ._errors import UsageError as UsageError
    from ._exec import handshake_then_exec as handshake_then_exec
    from ._fds import install_fds as install_fds
    from ._fdstreams import FdPairStream as FdPairStream
    from ._fdstreams import fd_stream as fd_stream
    from ._handshake_info import SSL_VARIABLES as SSL_VARIABLES
    from ._handshake_info import decode_notification as decode_notification
    from ._handshake_info import encode_notification as encode_notification
    from ._handshake_info import handshake_variables as handshake_variables
    from ._identity import drop_privileges as drop_privileges
    from ._identity import parse_identity as parse_identity
    from ._log import Log as Log
    from ._server import ConnectionRecord as ConnectionRecord
    from ._server import Server as Server
    from ._server import ServerConfig as ServerConfig
    from ._server import bind as bind
    from ._server import listener_from as listener_from
    from ._server import serve as serve
    from ._tcpclient import TcpClientOptions as TcpClientOptions
    from ._tcpclient import open_connection as open_connection
    from ._tlsconfig import TLSOptions as TLSOptions
    from ._tlsconfig import client_context as client_context
    from ._tlsconfig import server_context as server_context
    from ._ucspitls import UcspiTLS as UcspiTLS
    from ._ucspitls import UcspiTLSError as UcspiTLSError
    from ._ucspitls import ucspitls_then_exec as ucspitls_then_exec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trio_s6tls' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"trio_s6tls.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*_EXPORTS, "__version__"])


__all__ = sorted([*_EXPORTS, "__version__"])
