"""A clock that moves only when told, shared by a test (or the bench), the simulated controller
and the exporter, so that "now" is the same moment for all three."""

from __future__ import annotations

import threading

#: 2023-11-14T22:13:20Z: where a ManualClock starts unless told otherwise.
DEFAULT_START = 1_700_000_000.0


class ManualClock:
    """Unix seconds that change only by :meth:`advance` (or :meth:`set`); safe across threads.

    Pass the same instance as ``clock=`` to the simulated controller and to the exporter's
    poller; ``clock()`` and ``clock.now()`` read it::

        clock = ManualClock()
        controller = SimulatedController(FederationSpec(), clock=clock, churn=Churn())
        clock.advance(300)  # five minutes pass: the next request sees what they changed
    """

    def __init__(self, start: float = DEFAULT_START) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def __call__(self) -> float:
        return self.now()

    def advance(self, seconds: float) -> float:
        """Move ``seconds`` (>= 0) forward; returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} seconds)")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Move to ``now``, which must not be earlier than the current time."""
        with self._lock:
            if now < self._now:
                raise ValueError(f"a clock does not go back (from {self._now} to {now})")
            self._now = float(now)
