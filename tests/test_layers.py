"""The package's layers (docs/design.rst): a module imports only from its
own layer or the ones below, at module level or inside a function alike.
The facade (``trio_s6tls/__init__.py``) re-exports from every layer and
is exempt. And no module grows past 600 lines. The tests have a layering
of their own: helpers in support.py, fixtures in conftest.py, and no test
module imports another.

Pure: reads the sources, imports nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trio_s6tls"

DESIGN = PACKAGE.parent / "docs" / "design.rst"


def design_layers() -> list[tuple[str, set[str]]]:
    """The layers, bottom up, as docs/design.rst's table lists them (so the
    page and the check cannot drift): each row's name and its modules."""
    text = DESIGN.read_text()
    table = text[text.index("\nLayers\n") : text.index("\nHand-offs between layers")]
    rows = re.findall(r"^   \* - (.+)\n     - (.+)$", table, re.MULTILINE)
    return [
        (name, {module.rstrip("/") for module in re.findall(r"``([\w/]+)``", modules)})
        for name, modules in rows[1:]  # the header row first
    ]


LAYERS = design_layers()
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}
MAX_LINES = 600


def top_module(path: Path) -> str:
    """``_engine`` for trio_s6tls/_engine.py, ``programs`` for anything in
    trio_s6tls/programs/."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """The package's top modules that ``path`` (or ``source``, as if it
    were there) imports, wherever the import statement is (relative
    imports resolved)."""
    package = ["trio_s6tls", *path.parent.relative_to(PACKAGE).parts]
    found: set[str] = set()
    tree = ast.parse(path.read_text() if source is None else source)
    for node in ast.walk(tree):
        targets: list[list[str]] = []
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            full = base + (node.module.split(".") if node.module else [])
            targets = [full + [alias.name] for alias in node.names] if len(full) == 1 else [full]
        for parts in targets:
            if parts[0] == "trio_s6tls" and len(parts) > 1:
                found.add(parts[1])
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({top_module(p) for p in SOURCES} - set(LAYER_OF))
    assert not unplaced, f"modules missing from the layers of docs/design.rst: {unplaced}"
    assert [name for name, _ in LAYERS][:2] == ["base", "system"]


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    own = LAYER_OF[top_module(path)]
    return sorted(
        f"{name} ({LAYERS[LAYER_OF[name]][0]})"
        for name in imported_modules(path, source)
        if name in LAYER_OF and LAYER_OF[name] > own
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_only(path: Path) -> None:
    upward = upward_imports(path)
    layer = LAYERS[LAYER_OF[top_module(path)]][0]
    assert not upward, f"{path.relative_to(PACKAGE)} ({layer}) imports from above: {upward}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_600_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_checker_sees_upward_imports() -> None:
    """The checker itself, on sources placed where modules live."""
    engine = PACKAGE / "_engine.py"
    assert upward_imports(engine, "def f():\n    from ._server import serve\n") == [
        "_server (server)"
    ]
    assert upward_imports(engine, "from . import testing\n") == ["testing (testing)"]
    assert upward_imports(engine, "import trio_s6tls._iorun\n") == ["_iorun (one connection)"]
    cli = PACKAGE / "programs" / "_cli.py"
    assert upward_imports(cli, "from ..testing import LoopbackPKI\n") == ["testing (testing)"]
    assert upward_imports(cli, "from ._options import CLOSE\n") == []  # its own layer
    assert upward_imports(engine, "from ._records import RECORD_SIZE\n") == []


TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda path: path.name)
def test_test_modules_import_no_other_test_module(path: Path) -> None:
    """The tests' own layering: shared helpers live in tests/support.py,
    fixtures in tests/conftest.py; a test module imports neither conftest
    nor another test module."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    wrong = sorted(name for name in imported if name == "conftest" or name.startswith("test_"))
    assert not wrong, f"{path.name} imports {wrong}"
