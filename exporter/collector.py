"""Renders the controllers' current statuses as Prometheus metric families.

Nothing here talks to a controller: a scrape only reads the snapshots the poller published,
so it is fast and never blocks on a slow controller. Series are built fresh from the snapshots
every time, so a VM or cluster that vanished from the federation vanishes from ``/metrics``.
"""

from __future__ import annotations

import gzip
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.model import REASONS, STATES, BackupSnapshot, ClusterSummary, ControllerStatus

log = logging.getLogger(__name__)

INF = math.inf


@dataclass(frozen=True)
class ExporterState:
    """The exporter's own settings and health, as the collector needs them."""

    interval_seconds: float
    stale_after_seconds: float
    per_vm: bool = True
    shard_index: int = 0
    shard_count: int = 1
    reload_successful: bool = True
    reload_success_timestamp: float = 0.0


class BackupCollector(Collector):
    """Yields every ``simplivity_*`` family from the statuses at the moment of the scrape.

    A sample of what it yields::

        # HELP simplivity_backups Backups by cluster and state. Refreshed by the exporter's ...
        # TYPE simplivity_backups gauge
        simplivity_backups{controller="boston",omnistack_cluster="Boston",state="PROTECTED"} 412.0
        # HELP simplivity_up 1 if the last poll of the controller succeeded, else 0.
        # TYPE simplivity_up gauge
        simplivity_up{controller="boston"} 1.0
    """

    def __init__(
        self,
        statuses: Callable[[], Sequence[ControllerStatus]],
        state: Callable[[], ExporterState],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._statuses = statuses
        self._state = state
        self._clock = clock
        # controller -> (its snapshot, that snapshot's series written out)
        self._written: dict[str, tuple[BackupSnapshot, _WrittenSnapshot]] = {}

    def collect(self) -> Iterator[Metric]:
        statuses = self._statuses()  # read once: one consistent picture per scrape
        state = self._state()
        now = self._clock()
        fresh = _fresh(statuses, state, now)
        counts, sizes, newest, newest_age = _cluster_families(state)
        for controller, snapshot in fresh:
            for cluster in snapshot.clusters:
                labels = [controller, cluster.name]
                for state_name in _state_names(cluster):
                    counts.add_metric([*labels, state_name], cluster.counts[state_name])
                    sizes.add_metric([*labels, state_name], cluster.sizes[state_name])
                newest.add_metric(labels, cluster.newest_protected or 0.0)
                newest_age.add_metric(labels, _age(now, cluster.newest_protected))
        yield from (counts, sizes, newest, newest_age)

        if state.per_vm:
            vm_newest, vm_age = _vm_families(state)
            for controller, snapshot in fresh:
                for vm in snapshot.vms:
                    labels = [controller, vm.name, vm.vm_id]
                    vm_newest.add_metric(labels, vm.newest_protected or 0.0)
                    vm_age.add_metric(labels, _age(now, vm.newest_protected))
            yield from (vm_newest, vm_age)

        yield from self._health(statuses)
        yield from self._exporter(state)

    def exposition_text(self) -> str:
        """Exactly what ``generate_latest`` writes for :meth:`collect`, written much faster.

        Going through a ``Sample`` per series and prometheus_client's formatting took about
        100 ms per render with 5,000 VMs, during which every scrape waited. Here the series of
        each snapshot are written once, when it first shows, and only the ages are written at
        each render. ``tests/test_collector.py`` holds it to ``generate_latest``'s bytes.
        """
        statuses = self._statuses()
        state = self._state()
        now = self._clock()
        fresh = _fresh(statuses, state, now)
        written = self._written_snapshots(fresh, {s.name: s.exposition for s in statuses})
        out: list[str] = []
        counts, sizes, newest, newest_age = _cluster_families(state)
        for family, part in ((counts, "counts"), (sizes, "sizes"), (newest, "newest")):
            out.append(_header(family))
            out += [getattr(w, part) for w in written]
        out.append(_header(newest_age))
        out += [_ages(w.cluster_ages, now) for w in written]
        if state.per_vm:
            vm_newest, vm_age = _vm_families(state)
            out.append(_header(vm_newest))
            out += [w.vm_newest for w in written]
            out.append(_header(vm_age))
            out += [_ages(w.vm_ages, now) for w in written]
        # The health and exporter series are few: prometheus_client writes them.
        rest = [*self._health(statuses), *self._exporter(state)]
        out.append(generate_latest(_Families(rest)).decode("utf-8"))
        return "".join(out)

    def _written_snapshots(
        self, fresh: Sequence[tuple[str, BackupSnapshot]], prepared: Mapping[str, object]
    ) -> list[_WrittenSnapshot]:
        cache = self._written
        written = []
        for controller, snapshot in fresh:
            entry = cache.get(controller)
            if entry is None or entry[0] is not snapshot:
                ready = prepared.get(controller)  # published with this very snapshot
                if not isinstance(ready, _WrittenSnapshot) or ready.controller != controller:
                    ready = _WrittenSnapshot.of(controller, snapshot)
                entry = (snapshot, ready)
            written.append(entry)
        # Replaced, never changed in place: concurrent scrapes each see a whole cache.
        self._written = {
            controller: entry for (controller, _), entry in zip(fresh, written, strict=True)
        }
        return [entry[1] for entry in written]

    def _health(self, statuses: Sequence[ControllerStatus]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "simplivity_up",
            "1 if the last poll of the controller succeeded, else 0.",
            labels=["controller"],
        )
        duration = GaugeMetricFamily(
            "simplivity_poll_duration_seconds",
            "Wall time of the last poll of the controller (all pages of /api/backups).",
            labels=["controller"],
        )
        last_success = GaugeMetricFamily(
            "simplivity_poll_last_success_timestamp_seconds",
            "When the last successful poll of the controller finished, 0 before the first.",
            labels=["controller"],
        )
        errors = CounterMetricFamily(
            "simplivity_poll_errors",
            "Failed polls of the controller, by reason: auth, timeout, connection, tls, http, "
            "decode.",
            labels=["controller", "reason"],
        )
        logins = CounterMetricFamily(
            "simplivity_logins",
            "Logins to the controller; each opens a session on the hypervisor manager, so this "
            "should grow only when a token expires.",
            labels=["controller"],
        )
        for status in statuses:
            up.add_metric([status.name], 1.0 if status.up else 0.0)
            duration.add_metric([status.name], status.last_duration or 0.0)
            last_success.add_metric([status.name], status.last_success or 0.0)
            for reason in REASONS:
                errors.add_metric([status.name, reason], status.errors.get(reason, 0))
            logins.add_metric([status.name], status.logins)
        yield from (up, duration, last_success, errors, logins)

    @staticmethod
    def _exporter(state: ExporterState) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "simplivity_exporter_build_info",
            "The exporter's version; constant 1.",
            labels=["version"],
        )
        build.add_metric([__version__], 1.0)
        yield build
        yield GaugeMetricFamily(
            "simplivity_exporter_shard_index",
            "Which shard of the controllers this exporter polls (--shard.index).",
            value=state.shard_index,
        )
        # Not "shard_count": promtool's lint reserves the _count suffix for histograms and
        # summaries, and users run promtool against /metrics.
        yield GaugeMetricFamily(
            "simplivity_exporter_shards",
            "How many shards the controllers are spread over (--shard.count).",
            value=state.shard_count,
        )
        yield GaugeMetricFamily(
            "simplivity_exporter_config_last_reload_successful",
            "1 if the last configuration reload succeeded, else 0.",
            value=1.0 if state.reload_successful else 0.0,
        )
        yield GaugeMetricFamily(
            "simplivity_exporter_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.",
            value=state.reload_success_timestamp,
        )


def prepare_exposition(controller: str, snapshot: BackupSnapshot) -> object:
    """``snapshot``'s series written out, for the poll to publish with it (``Poller(prepare=)``).

    Writing 5,000 VMs takes about 9 ms: done by the poll, it delays no scrape.
    """
    return _WrittenSnapshot.of(controller, snapshot)


def _age(now: float, created: float | None) -> float:
    # Whole seconds: the exposition is rendered at most once a second anyway.
    return INF if created is None else float(max(0, math.floor(now - created)))


def _fresh(
    statuses: Sequence[ControllerStatus], state: ExporterState, now: float
) -> list[tuple[str, BackupSnapshot]]:
    """The snapshots to show: those of controllers whose last success is not stale."""
    return [
        (status.name, status.snapshot)
        for status in statuses
        if status.snapshot is not None
        and status.last_success is not None
        and now - status.last_success <= state.stale_after_seconds
    ]


def _refreshed(state: ExporterState) -> str:
    return (
        f"Refreshed by the exporter's own poll of /api/backups every "
        f"{state.interval_seconds:g} s (poll.interval_seconds), not at scrape time."
    )


def _cluster_families(
    state: ExporterState,
) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    refreshed = _refreshed(state)
    cluster_labels = ["controller", "omnistack_cluster"]
    counts = GaugeMetricFamily(
        "simplivity_backups",
        f"Backups by cluster and state. {refreshed}",
        labels=[*cluster_labels, "state"],
    )
    sizes = GaugeMetricFamily(
        "simplivity_backup_size_bytes",
        f"Sum of the logical size of the backups, by cluster and state. {refreshed}",
        labels=[*cluster_labels, "state"],
    )
    newest = GaugeMetricFamily(
        "simplivity_backup_newest_timestamp_seconds",
        f"Creation time of the cluster's newest PROTECTED backup, 0 if none. {refreshed}",
        labels=cluster_labels,
    )
    newest_age = GaugeMetricFamily(
        "simplivity_backup_newest_age_seconds",
        "Seconds since the cluster's newest PROTECTED backup was created, at scrape time; "
        f"+Inf if none. {refreshed}",
        labels=cluster_labels,
    )
    return counts, sizes, newest, newest_age


def _vm_families(state: ExporterState) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    refreshed = _refreshed(state)
    vm_labels = ["controller", "vm", "vm_id"]
    vm_newest = GaugeMetricFamily(
        "simplivity_vm_backup_newest_timestamp_seconds",
        "Creation time of the newest PROTECTED backup of each live VM, 0 if it has "
        f"backups but none PROTECTED. {refreshed}",
        labels=vm_labels,
    )
    vm_age = GaugeMetricFamily(
        "simplivity_vm_backup_newest_age_seconds",
        "Seconds since the newest PROTECTED backup of each live VM was created, at "
        f"scrape time; +Inf if none. {refreshed}",
        labels=vm_labels,
    )
    return vm_newest, vm_age


def _state_names(cluster: ClusterSummary) -> tuple[str, ...]:
    """Every documented state, then any other (``OTHER``) the cluster has."""
    return (*STATES, *sorted(set(cluster.counts) - set(STATES)))


#: prometheus_client's own number format (untyped there).
_go_float = cast(Callable[[float], str], floatToGoString)


# -- the exposition text, written directly (see BackupCollector.exposition_text) ---------------
# The same text as prometheus_client's generate_latest: HELP with \ and newline escaped, label
# values with \, newline and " escaped (the label names here are already in sorted order),
# values as floatToGoString writes them.


def _header(family: Metric) -> str:
    documentation = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {family.name} {documentation}\n# TYPE {family.name} {family.type}\n"


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _age_text(now: float, created: float | None) -> str:
    """``floatToGoString(_age(now, created))``, in a fraction of its time."""
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
            for state in _state_names(cluster):
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

    ``backups``, if given, is written first, by :meth:`BackupCollector.exposition_text`
    (register it in ``registry`` only when not given here).
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
        self._backups = backups
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

        So the first scrape after a poll does not write the new snapshots' text itself: it
        finds it written, or, while it is being written, gets the last one.
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
        text = self._backups.exposition_text().encode() if self._backups is not None else b""
        return text + generate_latest(self._registry)
