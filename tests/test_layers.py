"""Imports flow one way (README, "Module map"): each rule here is an import that must not exist.

Imports are read from the source with ``ast``, the ones inside functions included, so a rule
cannot be dodged by importing late.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"
EVERY_MODULE = {path.stem for path in PACKAGE.glob("*.py")} | {"simulator"}

#: module -> the exporter modules it must never import.
FORBIDDEN = {
    # The shared vocabulary sits below everything.
    "model": {"*"},
    # HPE's contract, the simulator's too: nothing of the exporter's reading of it.
    "restapi": {"*"},
    # Logging is set up by the exporter and its worker alike, from nothing of theirs.
    "logs": {"*"},
    # Deadlines for any HTTP exchange: plain requests and urllib3, nothing of the exporter.
    "deadlines": {"*"},
    # The client speaks HTTP only: nothing from the layers that page, count or poll.
    "simplivity": {"scan", "backups", "worker", "poller", "collector", "exposition", "web"},
    # The paging algorithm works for any collection and any client.
    "scan": {"simplivity", "backups", "worker", "poller", "collector", "exposition", "web"},
    # Counting a listing's pages runs in the worker too: only the vocabulary below it.
    "pages": {"simplivity", "scan", "backups", "worker", "poller", "collector", "web", "app"},
    # The scrape path reads published statuses: never the client or the poller.
    "collector": {"simplivity", "scan", "poller", "worker", "web", "app"},
    "exposition": {"simplivity", "scan", "poller", "worker", "web", "app"},
    "web": {"simplivity", "scan", "poller", "worker", "collector", "exposition", "app"},
    "poller": {"collector", "exposition", "web", "app", "cli"},
    # Who should be protected, and how: records in, judgements out; no HTTP, no scheduler.
    "inventory": {"simplivity", "poller", "worker", "collector", "exposition", "web", "app"},
    "protection": {"simplivity", "scan", "poller", "worker", "collector", "exposition", "web"},
    "recovery": {"simplivity", "scan", "poller", "worker", "collector", "exposition", "web"},
    "worker": {"simplivity", "poller", "web", "app", "cli"},
    "app": {"cli"},
    # The controller check asks as a poll asks (the poller's for_version), through the client;
    # it neither serves nor runs a poll.
    "check": {"worker", "collector", "exposition", "web", "app", "cli"},
    # The HTTP server serves any callable: of the exporter it knows only its request parser.
    "httpserver": EVERY_MODULE - {"httprequest"},
    "httprequest": {"*"},
    # Password checks know HTTP's verdicts (httpserver), nothing else of the exporter.
    "basicauth": EVERY_MODULE - {"httpserver"},
}


def exporter_imports(module: str | Path) -> set[str]:
    """The exporter modules ``module`` (a name, or a file) imports (``exporter.x.y`` counts as
    ``x``)."""
    path = module if isinstance(module, Path) else PACKAGE / f"{module}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "exporter" and len(parts) > 1 and parts[1] != "__version__":
                found.add(parts[1])
    return found


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_no_import_runs_against_the_layers(module: str) -> None:
    imported = exporter_imports(module)
    forbidden = FORBIDDEN[module]
    wrong = imported if "*" in forbidden else imported & forbidden
    assert wrong == set(), f"exporter/{module}.py imports {sorted(wrong)}"


def test_nothing_below_the_web_imports_it() -> None:
    modules = [path.stem for path in PACKAGE.glob("*.py") if path.stem not in ("app", "cli")]
    importers = [module for module in modules if "web" in exporter_imports(module)]
    assert importers == []


@pytest.mark.parametrize(
    "source", sorted((PACKAGE / "simulator").glob("*.py")), ids=lambda path: path.name
)
def test_the_simulator_imports_nothing_of_the_exporter_but_hpes_table(source: Path) -> None:
    """An independent oracle: of the exporter it may read HPE's contract (``restapi``) only."""
    wrong = exporter_imports(source) - {"simulator", "restapi"}
    assert wrong == set(), f"exporter/simulator/{source.name} imports {sorted(wrong)}"
