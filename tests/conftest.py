"""Shared fixtures: simulated controllers that always stop, and a deadline-based wait."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from exporter.simulator import SimulatedController


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
