"""The ``/metrics`` text: written from the collector's families, and cached.

The exposition owns everything it caches: the lines of each controller's snapshot (written
once, when the snapshot first shows) and the whole text with its gzip (written at most once
per second and per change of the statuses). The poller knows nothing of it: the app subscribes
:meth:`Exposition.refresh` to the poller, so that each poll writes the text of its new
snapshot before a scrape asks for it.
"""

from __future__ import annotations

import gzip
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.collector import (
    BackupCollector,
    cluster_families,
    exporter_families,
    health_families,
    state_names,
    vm_families,
)
from exporter.model import BackupSnapshot

log = logging.getLogger(__name__)

#: prometheus_client's own number format (untyped there).
_go_float = cast(Callable[[float], str], floatToGoString)


# -- the text, written directly -----------------------------------------------------------------
# The same text as prometheus_client's generate_latest: HELP with \ and newline escaped, label
# values with \, newline and " escaped (the label names here are already in sorted order),
# values as floatToGoString writes them.


def _header(family: Metric) -> str:
    documentation = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {family.name} {documentation}\n# TYPE {family.name} {family.type}\n"


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _age_text(now: float, created: float | None) -> str:
    """The age the collector yields, as ``floatToGoString`` writes it, in a fraction of its time."""
    if created is None:
        return "+Inf"
    seconds = max(0, math.floor(now - created))
    # A whole number of seconds below 10**6 is written "n.0"; Go switches to exponents above.
    return f"{seconds}.0" if seconds < 1_000_000 else _go_float(float(seconds))


def _ages(ages: Sequence[tuple[str, float | None]], now: float) -> str:
    return "".join([f"{prefix}{_age_text(now, created)}\n" for prefix, created in ages])


@dataclass(frozen=True)
class _WrittenSnapshot:
    """One controller's snapshot as exposition lines; ages as (line up to the value, created)."""

    controller: str
    counts: str
    sizes: str
    newest: str
    cluster_ages: tuple[tuple[str, float | None], ...]
    vm_newest: str
    vm_ages: tuple[tuple[str, float | None], ...]

    @classmethod
    def of(cls, controller: str, snapshot: BackupSnapshot) -> _WrittenSnapshot:
        c = _label(controller)
        counts, sizes, newest, cluster_ages = [], [], [], []
        for cluster in snapshot.clusters:
            labels = f'controller="{c}",omnistack_cluster="{_label(cluster.name)}"'
            for state in state_names(cluster):
                with_state = f'{{{labels},state="{_label(state)}"}} '
                counts.append(f"simplivity_backups{with_state}")
                counts.append(f"{_go_float(cluster.counts[state])}\n")
                sizes.append(f"simplivity_backup_size_bytes{with_state}")
                sizes.append(f"{_go_float(cluster.sizes[state])}\n")
            newest.append(f"simplivity_backup_newest_timestamp_seconds{{{labels}}} ")
            newest.append(f"{_go_float(cluster.newest_protected or 0.0)}\n")
            prefix = f"simplivity_backup_newest_age_seconds{{{labels}}} "
            cluster_ages.append((prefix, cluster.newest_protected))
        vm_newest, vm_ages = [], []
        for vm in snapshot.vms:
            labels = f'{{controller="{c}",vm="{_label(vm.name)}",vm_id="{_label(vm.vm_id)}"}} '
            vm_newest.append(f"simplivity_vm_backup_newest_timestamp_seconds{labels}")
            vm_newest.append(f"{_go_float(vm.newest_protected or 0.0)}\n")
            vm_ages.append(
                (f"simplivity_vm_backup_newest_age_seconds{labels}", vm.newest_protected)
            )
        return cls(
            controller,
            "".join(counts),
            "".join(sizes),
            "".join(newest),
            tuple(cluster_ages),
            "".join(vm_newest),
            tuple(vm_ages),
        )


class TextWriter:
    """Writes exactly what ``generate_latest`` writes for a :class:`BackupCollector`, faster.

    Going through a ``Sample`` per series and prometheus_client's formatting took about 100 ms
    per render with 5,000 VMs, during which every scrape waited. Here the series of each
    snapshot are written once, when it first shows, and only the ages are written at each
    render. ``tests/test_exposition_text.py`` holds it to ``generate_latest``'s bytes.
    """

    def __init__(self, collector: BackupCollector) -> None:
        self._collector = collector
        # controller -> (its snapshot, that snapshot's series written out)
        self._written: dict[str, tuple[BackupSnapshot, _WrittenSnapshot]] = {}

    def text(self) -> str:
        reading = self._collector.read()
        state, now = reading.state, reading.now
        written = self._written_snapshots(reading.fresh)
        out: list[str] = []
        counts, sizes, newest, newest_age = cluster_families(state)
        for family, part in ((counts, "counts"), (sizes, "sizes"), (newest, "newest")):
            out.append(_header(family))
            out += [getattr(w, part) for w in written]
        out.append(_header(newest_age))
        out += [_ages(w.cluster_ages, now) for w in written]
        if state.per_vm:
            vm_newest, vm_age = vm_families(state)
            out.append(_header(vm_newest))
            out += [w.vm_newest for w in written]
            out.append(_header(vm_age))
            out += [_ages(w.vm_ages, now) for w in written]
        # The health and exporter series are few: prometheus_client writes them.
        rest = [*health_families(reading.statuses), *exporter_families(state)]
        out.append(generate_latest(_Families(rest)).decode("utf-8"))
        return "".join(out)

    def _written_snapshots(
        self, fresh: Sequence[tuple[str, BackupSnapshot]]
    ) -> list[_WrittenSnapshot]:
        cache = self._written
        written = []
        for controller, snapshot in fresh:
            entry = cache.get(controller)
            if entry is None or entry[0] is not snapshot:
                entry = (snapshot, _WrittenSnapshot.of(controller, snapshot))
            written.append(entry)
        # Replaced, never changed in place: concurrent renders each see a whole cache.
        self._written = {
            controller: entry for (controller, _), entry in zip(fresh, written, strict=True)
        }
        return [entry[1] for entry in written]


@dataclass(frozen=True)
class _Rendered:
    key: tuple[object, int]  # (generation, second)
    plain: bytes
    gzipped: bytes


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


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
    concurrent scrapers cost little more than one. No scrape waits for the text of a new
    second while the last second's is at hand: it is served that one (ages one second behind
    at most) and the new text is written in the background. While one scrape writes the text
    of new snapshots, the others are served the last text rather than wait. Only a scrape
    that finds nothing recent enough (the first, or one after a quiet spell) writes the text
    before answering.

    ``backups``, if given, is written first, by a :class:`TextWriter` (register it in
    ``registry`` only when not given here).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        generation: Callable[[], object],
        *,
        clock: Callable[[], float] = time.time,
        backups: BackupCollector | None = None,
    ) -> None:
        self._registry = registry
        self._generation = generation
        self._clock = clock
        self._text = TextWriter(backups) if backups is not None else None
        self._lock = threading.Lock()  # held while a text is written
        self._rendered: _Rendered | None = None  # replaced as a whole

    def render(self, *, gzipped: bool = False) -> bytes:
        generation, second = self._generation(), int(self._clock())
        rendered = self._rendered
        if rendered is None:
            with self._lock:
                rendered = self._write_locked(generation, second)
        elif rendered.key != (generation, second):
            if rendered.key == (generation, second - 1):
                self._write_in_background()
            elif self._lock.acquire(blocking=False):  # else: serve the last while it is written
                try:
                    rendered = self._write_locked(generation, second)
                finally:
                    self._lock.release()
        return rendered.gzipped if gzipped else rendered.plain

    def refresh(self) -> None:
        """Write the text now, if it has ever been asked for (after a poll, in its thread).

        So the first scrape after a poll does not write the new snapshot's series itself: it
        finds the text written, or, while it is being written, gets the last one.
        """
        if self._rendered is not None:
            with self._lock:
                self._write_locked(self._generation(), int(self._clock()))

    def _write_locked(self, generation: object, second: int) -> _Rendered:
        rendered = self._rendered
        if rendered is None or rendered.key != (generation, second):
            plain = self._write()
            # Level 1: written every second, 7 ms for 1.3 MB instead of 20 ms at level 6, for
            # a body 12% larger.
            rendered = _Rendered((generation, second), plain, _gzip(plain))
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

    def _write(self) -> bytes:
        text = self._text.text().encode() if self._text is not None else b""
        return text + generate_latest(self._registry)
