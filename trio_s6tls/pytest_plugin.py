"""pytest plugin (``pytest11`` entry point ``trio_s6tls``): fixtures to test
UCSPI applications under TLS, from :mod:`trio_s6tls.testing`.

Loaded by every pytest run in an environment where trio_s6tls is
installed, so this module imports nothing heavy at import time: trio,
trustme and the library load only when a test asks for a fixture. trustme
comes with the ``testing`` extra; without it, pytest runs as usual and only
a test that requests one of these fixtures errors, with a one-line message
saying what to install.

Fixtures:

``tls_ca``
    A :class:`trustme.CA` (one per session).
``tls_pki``
    The :class:`~trio_s6tls.testing.LoopbackPKI` issued by ``tls_ca``.
``tls_server_env``
    ``KEYFILE``/``CERTFILE`` for ``localhost``, ``127.0.0.1`` and ``::1``.
``tls_client_env``
    ``CAFILE`` trusting ``tls_ca``.
``ucspi_tls_server``
    ``server = await ucspi_tls_server(argv, tls_options=(), env=None)``
    (async tests only; pytest-trio).
``ucspi_tls_client``
    ``result = await ucspi_tls_client(argv, handler, tls_options=(), env=None)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import trio
    import trustme

    from trio_s6tls.testing import ClientResult, LoopbackPKI, TLSPeerStream, UcspiTLSServer

    ServerFactory = Callable[..., Awaitable[UcspiTLSServer]]
    ClientRunner = Callable[..., Awaitable[ClientResult]]

#: Why a fixture cannot run without trustme, and the fix.
MISSING_TRUSTME = (
    "trio_s6tls fixtures need trustme, which is not installed: install trio_s6tls "
    "with its 'testing' extra (in a checkout: pip install '.[testing]'), or pip install trustme"
)


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A certificate authority for the whole test session."""
    try:
        import trustme
    except ImportError:  # one line, without the ImportError as its context
        raise pytest.fail.Exception(MISSING_TRUSTME, pytrace=False) from None

    return trustme.CA(organization_name="trio_s6tls testing")


@pytest.fixture(scope="session")
def tls_pki(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> LoopbackPKI:
    """Server and client certificates from ``tls_ca``, on disk."""
    from trio_s6tls.testing import LoopbackPKI

    return LoopbackPKI(tls_ca, tmp_path_factory.mktemp("trio_s6tls_pki"))


@pytest.fixture
def tls_server_env(tls_pki: LoopbackPKI) -> dict[str, str]:
    """``KEYFILE`` and ``CERTFILE`` for localhost, 127.0.0.1 and ::1 (a new
    dict per test: change it freely)."""
    return tls_pki.server_env


@pytest.fixture
def tls_client_env(tls_pki: LoopbackPKI) -> dict[str, str]:
    """``CAFILE`` trusting ``tls_ca`` (a new dict per test)."""
    return tls_pki.client_env


@pytest.fixture
async def ucspi_tls_server(tls_pki: LoopbackPKI) -> AsyncIterator[ServerFactory]:
    """Async factory: ``await ucspi_tls_server(argv, tls_options=(),
    env=None, *, starttls=False, server_options=(), host="127.0.0.1")``
    serves ``argv`` as
    s6-tlsserver would and returns a
    :class:`~trio_s6tls.testing.UcspiTLSServer` (see
    :func:`~trio_s6tls.testing.open_ucspi_tls_server`; ``host="::1"`` for
    IPv6). Every server is stopped and its programs reaped when the test
    ends, pass or fail."""
    import trio

    from trio_s6tls.testing import open_ucspi_tls_server

    async def keep_serving(
        argv: Sequence[str],
        tls_options: Sequence[str],
        env: Mapping[str, str] | None,
        starttls: bool,
        server_options: Sequence[str],
        host: str,
        *,
        task_status: trio.TaskStatus[UcspiTLSServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with open_ucspi_tls_server(
            argv,
            tls_pki,
            tls_options,
            env,
            starttls=starttls,
            server_options=server_options,
            host=host,
        ) as server:
            task_status.started(server)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def factory(
            argv: Sequence[str],
            tls_options: Sequence[str] = (),
            env: Mapping[str, str] | None = None,
            *,
            starttls: bool = False,
            server_options: Sequence[str] = (),
            host: str = "127.0.0.1",
        ) -> UcspiTLSServer:
            server: UcspiTLSServer = await nursery.start(
                keep_serving, argv, tls_options, env, starttls, server_options, host
            )
            return server

        try:
            yield factory
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture
def ucspi_tls_client(tls_pki: LoopbackPKI) -> ClientRunner:
    """Async runner: ``await ucspi_tls_client(argv, handler, tls_options=(),
    env=None, **options)`` runs ``argv`` as s6-tlsclient would against an
    in-process TLS server calling ``await handler(stream)`` per connection;
    returns a :class:`~trio_s6tls.testing.ClientResult`. Options as for
    :func:`~trio_s6tls.testing.run_ucspi_tls_client`."""

    async def run(
        argv: Sequence[str],
        handler: Callable[[TLSPeerStream], Awaitable[object]],
        tls_options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> ClientResult:
        from trio_s6tls.testing import run_ucspi_tls_client

        return await run_ucspi_tls_client(argv, handler, tls_pki, tls_options, env, **options)

    return run
