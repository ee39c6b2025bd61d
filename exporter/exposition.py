"""The ``/metrics`` text: the collector's families, written by prometheus_client, and cached.

The exposition owns everything it caches: the text of each controller's snapshot (written
once, when the snapshot first shows) and the whole text with its gzip (written at most once
per second and per change of the statuses). The poller knows nothing of it: the app subscribes
:meth:`Exposition.refresh` to the poller, so that each poll writes the text of its new
snapshot before a scrape asks for it.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.collector import (
    AGE_FAMILIES,
    BackupCollector,
    ExporterState,
    age_families,
    controller_families,
    exporter_families,
    health_families,
    snapshot_families,
)
from exporter.model import ControllerSnapshot

log = logging.getLogger(__name__)


def _write(families: Sequence[Metric]) -> str:
    """``families`` as prometheus_client writes them: the one writer of ``/metrics``."""
    return generate_latest(_Families(families)).decode("utf-8")


def _series(family: Metric) -> str:
    """A gauge family's series as prometheus_client writes them, without its HELP and TYPE
    lines: one line each, as the writer escapes a newline in the help text."""
    return _write([family]).split("\n", 2)[2]


@dataclass(frozen=True)
class _WrittenSnapshot:
    """One controller's snapshot, its series written out by family name (all but the ages)."""

    snapshot: ControllerSnapshot
    #: The state it was written under: whether its per-VM series are shown, say.
    state: ExporterState
    series: Mapping[str, str]

    @classmethod
    def of(
        cls, controller: str, snapshot: ControllerSnapshot, state: ExporterState
    ) -> _WrittenSnapshot:
        families = snapshot_families(controller, snapshot, state)
        return cls(snapshot, state, {family.name: _series(family) for family in families})


class TextWriter:
    """Writes the text of the collector's families, each snapshot's series once.

    Writing a snapshot with thousands of VMs costs prometheus_client's writer far more than
    the ages that change every second (README, "Performance"), so the series of each snapshot
    are written once, by :meth:`write_snapshots` after its poll, and only the ages and the few
    health series at each render. A render never writes a newer snapshot itself: until the
    poll's thread has written it, the controller's last written snapshot is shown, ages and
    all, so that no scrape waits for it. Several controllers share each family's HELP and
    TYPE lines: their series follow one another under them.
    """

    def __init__(self, collector: BackupCollector) -> None:
        self._collector = collector
        # controller -> the last snapshot of it written out; replaced, never changed in place
        self._written: dict[str, _WrittenSnapshot] = {}
        self._writing = threading.Lock()  # held while snapshots are written

    def write_snapshots(self) -> None:
        """Write the series of every fresh snapshot not written yet."""
        reading = self._collector.read()
        self._shown(reading.fresh, reading.state, newest=True)

    def text(self) -> str:
        return "".join(self.parts())

    def parts(self) -> list[str]:
        """The text in pieces: each snapshot's series are the very string objects written
        once, so that what is made of them can be kept too."""
        reading = self._collector.read()
        state = reading.state
        written = self._shown(reading.fresh, state, newest=False)
        shown = [(controller, w.snapshot) for controller, w in written]
        ages = {family.name: family for family in age_families(shown, state, reading.now)}
        out: list[str] = []
        for family in controller_families(state):
            name = family.name
            if name in AGE_FAMILIES:
                out.append(_write([ages[name]]))
            else:
                out.append(_write([family]))  # no series: its HELP and TYPE lines
                out += [w.series.get(name, "") for _, w in written]
        out.append(_write([*health_families(reading.statuses), *exporter_families(state)]))
        return out

    def _shown(
        self, fresh: Sequence[tuple[str, ControllerSnapshot]], state: ExporterState, newest: bool
    ) -> list[tuple[str, _WrittenSnapshot]]:
        """The written snapshot to show of each fresh controller: written now if it has none
        under this state (its first, or after a reload), and, if ``newest``, if it is not
        the current snapshot."""

        def usable(controller: str, snapshot: ControllerSnapshot) -> _WrittenSnapshot | None:
            entry = self._written.get(controller)
            if entry is None or entry.state != state:
                return None
            return entry if entry.snapshot is snapshot or not newest else None

        shown = [
            (controller, entry)
            for controller, snapshot in fresh
            if (entry := usable(controller, snapshot)) is not None
        ]
        if len(shown) == len(fresh):
            return shown
        with self._writing, _no_cycle_collection():
            written = [
                usable(controller, snapshot) or _WrittenSnapshot.of(controller, snapshot, state)
                for controller, snapshot in fresh
            ]
            self._written = {
                controller: entry for (controller, _), entry in zip(fresh, written, strict=True)
            }
        return [(controller, entry) for (controller, _), entry in zip(fresh, written, strict=True)]


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cycle collector off while snapshots are written.

    A snapshot's families are a hundred thousand small containers (prometheus_client's
    samples and their labels), none in a cycle, all freed by their counts once written. Left
    on, the collector would run full collections of the whole heap meanwhile, stopping every
    thread, scrapes included, for tens of milliseconds each time. Snapshots are written one
    at a time (under the writer's lock), so no other writer turns it back on early.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class _Rendered:
    key: tuple[object, int]  # (generation, second)
    plain: bytes
    gzipped: bytes


class _Families(Collector):
    """Some already built families, for ``generate_latest``."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Sequence[Metric]:
        return self._families


class Exposition:
    """The ``/metrics`` text, rendered at most once per second and per change of the statuses.

    Ages are computed with one-second resolution; between two changes of the snapshots every
    scrape within the same second is served the same bytes (and the same gzip), so many
    concurrent scrapers cost little more than one. No scrape waits for a text while one at
    most a second old is at hand: it is served that one (its ages a second behind at most, or
    its snapshots one poll behind) and the new text, of a new second or new snapshots, is
    written in the background. Only a scrape that finds nothing that recent (the first, or
    one after a quiet spell) writes the text before answering, unless it is being written.

    ``backups`` is written first, by a :class:`TextWriter`; then ``registry`` (the process's
    own series).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        generation: Callable[[], object],
        *,
        backups: BackupCollector,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._generation = generation
        self._clock = clock
        self._text = TextWriter(backups)
        self._lock = threading.Lock()  # held while a text is written
        self._rendered: _Rendered | None = None  # replaced as a whole

    def render(self, *, gzipped: bool = False) -> bytes:
        generation, second = self._generation(), int(self._clock())
        rendered = self._rendered
        if rendered is None:
            with self._lock:
                rendered = self._write_locked(generation, second)
        elif rendered.key[1] >= second - 1:
            if rendered.key != (generation, second):
                self._write_in_background()
        elif self._lock.acquire(blocking=False):  # else: serve the last while it is written
            try:
                rendered = self._write_locked(generation, second)
            finally:
                self._lock.release()
        return rendered.gzipped if gzipped else rendered.plain

    def refresh(self) -> None:
        """Write the text now, if it has ever been asked for (after a poll, in its thread).

        So that the new snapshot's series are written in the poll's thread, once, before a
        scrape asks; a scrape meanwhile gets the last text.
        """
        if self._rendered is not None:
            # Outside the lock: the text of each new second is written meanwhile.
            self._text.write_snapshots()
            with self._lock:
                # Even if this second's text was written: it may show the last snapshot.
                self._write_locked(self._generation(), int(self._clock()), again=True)

    def _write_locked(self, generation: object, second: int, *, again: bool = False) -> _Rendered:
        rendered = self._rendered
        if again or rendered is None or rendered.key != (generation, second):
            plain = self._text.text().encode() + generate_latest(self._registry)
            # Level 1, the fastest: a higher level costs several times the CPU, every second,
            # for a body only slightly smaller. zlib lets other threads run meanwhile.
            gzipped = gzip.compress(plain, compresslevel=1, mtime=0)
            rendered = _Rendered((generation, second), plain, gzipped)
            self._rendered = rendered
        return rendered

    def _write_in_background(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # being written already

        def write() -> None:
            try:
                self._write_locked(self._generation(), int(self._clock()))
            except Exception:  # a bug; the next scrape that needs the text writes it itself
                log.exception("writing the /metrics text failed")
            finally:
                self._lock.release()

        try:
            threading.Thread(target=write, name="exposition", daemon=True).start()
        except BaseException:
            self._lock.release()
            raise
