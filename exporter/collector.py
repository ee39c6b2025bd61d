"""The metric definitions: the controllers' current statuses as Prometheus metric families.

Nothing here talks to a controller: a scrape only reads the snapshots the poller published,
so it is fast and never blocks on a slow controller. Series are built fresh from the snapshots
every time, so a VM or cluster that vanished from the federation vanishes from ``/metrics``.
:mod:`exporter.exposition` writes the same families as text, faster, and caches it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.model import REASONS, STATES, BackupSnapshot, ClusterSummary, ControllerStatus

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
    #: ``--once``: per-controller series only, their help texts the same whatever the config,
    #: so that the files of several runs can be read together: node_exporter's textfile
    #: collector merges families by name, and drops a series that two files hold and a
    #: family whose help text differs between them.
    once: bool = False


@dataclass(frozen=True)
class Reading:
    """What one scrape shows, read once: one consistent picture per scrape."""

    statuses: Sequence[ControllerStatus]
    state: ExporterState
    now: float
    #: The snapshots to show, by controller: those whose last success is not stale.
    fresh: Sequence[tuple[str, BackupSnapshot]]


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

    def read(self) -> Reading:
        """The statuses, the exporter's state and the time, as one scrape shows them."""
        statuses = self._statuses()
        state = self._state()
        now = self._clock()
        return Reading(statuses, state, now, fresh_snapshots(statuses, state, now))

    def collect(self) -> Iterator[Metric]:
        reading = self.read()
        state, now, fresh = reading.state, reading.now, reading.fresh
        counts, sizes, newest, newest_age = cluster_families(state)
        for controller, snapshot in fresh:
            for cluster in snapshot.clusters:
                labels = [controller, cluster.name]
                for state_name in state_names(cluster):
                    counts.add_metric([*labels, state_name], cluster.counts[state_name])
                    sizes.add_metric([*labels, state_name], cluster.sizes[state_name])
                newest.add_metric(labels, cluster.newest_protected or 0.0)
                newest_age.add_metric(labels, _age(now, cluster.newest_protected))
        yield from (counts, sizes, newest, newest_age)

        if state.per_vm:
            vm_newest, vm_age = vm_families(state)
            for controller, snapshot in fresh:
                for vm in snapshot.vms:
                    labels = [controller, vm.name, vm.vm_id]
                    vm_newest.add_metric(labels, vm.newest_protected or 0.0)
                    vm_age.add_metric(labels, _age(now, vm.newest_protected))
            yield from (vm_newest, vm_age)

        yield from health_families(reading.statuses)
        yield from exporter_families(state)


def health_families(statuses: Sequence[ControllerStatus]) -> Iterator[Metric]:
    """The health of each controller's polls: up, duration, last success, errors, logins, the
    pace the poller learned, and the records it could not read."""
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
        "Failed polls of the controller, by reason: auth, timeout, connection, tls, http, decode.",
        labels=["controller", "reason"],
    )
    logins = CounterMetricFamily(
        "simplivity_logins",
        "Logins to the controller; each opens a session on the hypervisor manager, so this "
        "should grow only when a token expires.",
        labels=["controller"],
    )
    concurrency = GaugeMetricFamily(
        "simplivity_poll_concurrency",
        "Requests the exporter keeps in flight at once to the controller, at most: halved when "
        "it answers 502/503/429 (too many requests), one more after a poll without.",
        labels=["controller"],
    )
    page_size = GaugeMetricFamily(
        "simplivity_poll_page_size",
        "Records the exporter asks for per page: halved when the controller answers 504 (the "
        "page took too long), growing back after polls without.",
        labels=["controller"],
    )
    unreadable = GaugeMetricFamily(
        "simplivity_unreadable_records",
        "Records of the last successful poll that could not be placed (not an object, no id, "
        "no state) and were left out of every other series.",
        labels=["controller"],
    )
    for status in statuses:
        up.add_metric([status.name], 1.0 if status.up else 0.0)
        duration.add_metric([status.name], status.last_duration or 0.0)
        last_success.add_metric([status.name], status.last_success or 0.0)
        for reason in REASONS:
            errors.add_metric([status.name, reason], status.errors.get(reason, 0))
        logins.add_metric([status.name], status.logins)
        concurrency.add_metric([status.name], status.concurrency)
        page_size.add_metric([status.name], status.page_size)
        unreadable.add_metric([status.name], status.unreadable_records)
    yield from (up, duration, last_success, errors, logins, concurrency, page_size, unreadable)


def exporter_families(state: ExporterState) -> Iterator[Metric]:
    """The exporter's own build, shard and reload series (none for ``--once``: each run's
    file would hold them again)."""
    if state.once:
        return
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


def _age(now: float, created: float | None) -> float:
    # Whole seconds: the exposition is rendered at most once a second anyway.
    return INF if created is None else float(max(0, math.floor(now - created)))


def fresh_snapshots(
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
    if state.once:
        return "Read by simplivity-exporter --once when it wrote its output."
    return (
        f"Refreshed by the exporter's own poll of /api/backups every "
        f"{state.interval_seconds:g} s (poll.interval_seconds), not at scrape time."
    )


def cluster_families(
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


def vm_families(state: ExporterState) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
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


def state_names(cluster: ClusterSummary) -> tuple[str, ...]:
    """Every documented state, then any other (``OTHER``) the cluster has."""
    return (*STATES, *sorted(set(cluster.counts) - set(STATES)))
