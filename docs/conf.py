"""Sphinx configuration for trio_s6tls.

Built with warnings as errors (``python -m sphinx -W -b html docs
docs/_build/html``) and ``nitpicky``: every reference to a trio_s6tls name
must resolve. References to other projects (trio, the standard library,
trustme) resolve through intersphinx when their inventories can be fetched;
offline they are left as plain text rather than failing the build, since an
unreachable inventory is a fact about the network, not about these docs.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trio_s6tls import __version__

project = "trio_s6tls"
author = "trio_s6tls developers"
copyright = "trio_s6tls developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]

exclude_patterns = ["_build"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
html_theme = "alabaster"
html_static_path: list[str] = []

nitpicky = True

autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # trio.abc's docstrings name trio-internal targets
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

_INVENTORIES = {
    "python": ("https://docs.python.org/3", None),
    "trio": ("https://trio.readthedocs.io/en/stable", None),
    "trustme": ("https://trustme.readthedocs.io/en/stable", None),
    "pytest": ("https://docs.pytest.org/en/stable", None),
}


def _online(host: str = "docs.python.org", timeout: float = 3.0) -> bool:
    """Whether the inventories can be fetched (``DOCS_OFFLINE=1`` forces no).
    The probe runs in a daemon thread so that a hanging resolver cannot
    hold up the build for longer than ``timeout``."""
    if os.environ.get("DOCS_OFFLINE"):
        return False
    reachable: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                reachable.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reachable)


intersphinx_mapping = _INVENTORIES if _online() else {}
intersphinx_timeout = 10

# Names from other projects, and the private modules our public objects are
# defined in: fine as plain text when they cannot be linked. Every public
# trio_s6tls name must still resolve.
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(trio|ssl|socket|os|trustme|pytest|collections|typing|contextlib|pathlib|_ssl)(\..*)?",
    ),
    (
        r"py:.*",
        r"(int|str|bytes|bytearray|memoryview|float|bool|object|None|list|dict|tuple|set|type)",
    ),
    (r"py:.*", r"(Exception|BaseException|BaseExceptionGroup|OSError|TimeoutError|ValueError)"),
    (
        r"py:.*",
        r"(Any|Callable|Awaitable|Mapping|MutableMapping|Sequence|Iterator|AsyncIterator|Literal)",
    ),
    (r"py:.*", r"(AbstractAsyncContextManager|PathLike|TextIO|TypeAlias|Protocol)"),
    (r"py:.*", r"trio_s6tls\._[a-z_]+\..*"),
    (
        r"py:.*",
        r"(Variables|Direction|Handler|ConnectionRecord|RecordState|TLSTransport|Half|Pump|ServerFactory|ClientRunner)",
    ),
]
