"""The module map is the test: CONTRIBUTING.md's table says what each module of the exporter
may import, and this fails on any import of the exporter it does not list.

Imports are read from the source with ``ast``, the ones inside functions included, so a rule
cannot be dodged by importing late; a package's row (``simulator/``) holds for every file in it,
its relative imports resolved.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "exporter"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
#: Entry points with no code of their own: ``python -m exporter`` and the version.
ENTRY_POINTS = {"__init__", "__main__"}


def module_map() -> list[tuple[str, str, str]]:
    """(module, "may import" cell, tests cell) of each row of the map, in order."""
    text = CONTRIBUTING.read_text(encoding="utf-8")
    start = text.index("\n## Module map\n")
    rows: list[tuple[str, str, str]] = []
    header: list[str] | None = None
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            if header is not None:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-: "):
            row = dict(zip(header, cells, strict=True))
            may = row["may import (of the exporter)"]
            rows.append((row["module"].strip("`"), may, row["tests"]))
    assert header is not None, "no module map in CONTRIBUTING.md"
    return rows


def names(cell: str) -> set[str]:
    """The module names of a cell, leaving out what its parentheses say about them."""
    return set(re.findall(r"`([\w/]+)`", re.sub(r"\([^)]*\)", "", cell)))


def allowed() -> dict[str, set[str]]:
    """module (``simulator`` for the package) -> the modules its row lets it import."""
    rows = module_map()
    found: dict[str, set[str]] = {}
    for index, (module, cell, _) in enumerate(rows):
        if cell in ("—", "-", "nothing of the exporter"):
            may: set[str] = set()
        elif cell == "any module below":
            may = {below.rstrip("/") for below, _, _ in rows[index + 1 :]}
        else:
            may = {name.rstrip("/") for name in names(cell)}
            assert may, f"{module}: cannot read its 'may import' cell {cell!r}"
        found[module.rstrip("/")] = may
    return found


def sources(module: str) -> list[Path]:
    package = PACKAGE / module
    return sorted(package.glob("*.py")) if package.is_dir() else [PACKAGE / f"{module}.py"]


def exporter_imports(path: Path) -> set[str]:
    """The exporter modules a file imports: ``exporter.x.y`` counts as ``x``, and so does a
    relative import that resolves to it; a package's own modules are left out."""
    inside = path.parent.relative_to(ROOT).parts  # ("exporter",) or ("exporter", "simulator")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        full: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = list(inside[: len(inside) - node.level + 1]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            full = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            full = [alias.name for alias in node.names]
        for name in full:
            parts = name.split(".")
            if parts[0] == "exporter" and len(parts) > 1 and parts[1] != "__version__":
                found.add(parts[1])
    own = inside[1] if len(inside) > 1 else path.stem
    return found - {own}


def every_module() -> set[str]:
    files = {path.stem for path in PACKAGE.glob("*.py")} - ENTRY_POINTS
    return files | {path.parent.name for path in PACKAGE.glob("*/__init__.py")}


def test_every_module_has_one_row_and_every_row_a_module() -> None:
    rows = [module.rstrip("/") for module, _, _ in module_map()]
    assert sorted(rows) == sorted(set(rows)), "a module with two rows"
    assert set(rows) == every_module()


@pytest.mark.parametrize("module", sorted(every_module()))
def test_imports_are_the_ones_the_map_allows(module: str) -> None:
    may = allowed()[module]
    for path in sources(module):
        wrong = exporter_imports(path) - may
        assert wrong == set(), (
            f"{path.relative_to(ROOT)} imports {sorted(wrong)}, which CONTRIBUTING.md's module "
            f"map does not allow {module} (it allows {sorted(may) or 'nothing'})"
        )


def test_the_map_names_only_modules_that_exist() -> None:
    modules = every_module()
    for module, may in allowed().items():
        assert may <= modules, f"{module} may import {sorted(may - modules)}: no such module"


def test_the_tests_column_names_test_modules_that_exist() -> None:
    for module, _, tests in module_map():
        named = names(tests)
        assert named or tests == "all of the above", f"{module}: no tests named"
        missing = [t for t in sorted(named) if not (ROOT / "tests" / f"test_{t}.py").exists()]
        assert missing == [], f"{module}: no tests/test_<name>.py for {missing}"


def test_the_checker_reads_what_it_must() -> None:
    """The reading itself: relative imports in a package, late imports, allowed cells."""
    assert exporter_imports(PACKAGE / "simulator" / "controller.py") <= {"restapi"}
    assert "restapi" in set().union(*(exporter_imports(p) for p in sources("simulator")))
    assert exporter_imports(PACKAGE / "httpserver.py") == {"httprequest", "httpresponse"}
    assert "simulator" in exporter_imports(PACKAGE / "cli.py")  # --demo imports it late
    assert allowed()["simulator"] == {"restapi"}
    assert allowed()["model"] == set()
    assert "cli" not in allowed()["app"]
    assert "model" in allowed()["app"]
    assert names("`poller` (`for_version`), `pages`") == {"poller", "pages"}
