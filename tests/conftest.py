"""Shared fixtures: simulated controllers that always stop, and a deadline-based wait.

Also the ``slow`` tier: every test of the modules below is marked ``slow``, so that
``pytest -m "not slow"`` (``./dev test-fast``) is the quick loop and ``./dev test`` runs all.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.simulator import SimulatedController

#: Modules that run real processes or servers end to end: a real Prometheus, Helm, the
#: exporter or the benchmark as a subprocess, a soak, a scrape of a running exporter under
#: faults. A module is named here rather than marked in its file, so the tiers read in one place.
SLOW_MODULES = frozenset(
    {
        "test_bench",
        "test_cli",
        "test_deploy",
        "test_dockerfile",
        "test_faults",
        "test_helm",
        "test_hostile_clients",
        "test_incremental_daemon",
        "test_landing_browser",
        "test_monitoring_rules",
        "test_prometheus_e2e",
        "test_reload",
        "test_secrets",
        "test_soak",
        "test_web_serving",
        "test_worker",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    missing = sorted(m for m in SLOW_MODULES if not (Path(__file__).parent / f"{m}.py").exists())
    if missing:  # a renamed module would silently move to the fast tier
        raise pytest.UsageError(f"tests/conftest.py SLOW_MODULES names no such file: {missing}")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(delay)  # a poll interval of the wait, not a wait for something to happen
        delay = min(delay * 2, 0.1)


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., SimulatedController]]:
    """``start_simulator(backups_or_spec, **options)`` returns a running, self-stopping one."""
    started: list[SimulatedController] = []

    def start(*args: Any, **kwargs: Any) -> SimulatedController:
        controller = SimulatedController(*args, **kwargs).start()
        started.append(controller)
        return controller

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port on 127.0.0.1 that drops every new connection's SYN, as a firewall does.

    A listener that never accepts, its accept queue (backlog 0: one connection) filled: Linux
    then drops the SYNs of further connections instead of refusing them, so a client's connect
    hangs until its own timeout.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            while len(fillers) < 64:
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                filler.connect_ex(("127.0.0.1", port))
                if not select.select([], [filler], [], 0.5)[1]:
                    break  # this one's SYN was dropped: the queue is full
            else:
                pytest.fail("the listener's accept queue never filled")
            yield port
        finally:
            for filler in fillers:
                filler.close()
