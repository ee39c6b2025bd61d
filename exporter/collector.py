"""The metric definitions: the controllers' current statuses as Prometheus metric families.

Each family is defined here once. Nothing here talks to a controller: a scrape only reads
the snapshots the poller published, so it is fast and never blocks on a slow controller.
Series are built fresh from each snapshot, so a VM or cluster that vanished from the
federation vanishes from ``/metrics``. :mod:`exporter.exposition` writes them as text, as
prometheus_client does: a snapshot's families once per poll, the ages once a second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from exporter import __version__
from exporter.model import REASONS, STATES, ClusterSummary, ControllerSnapshot, ControllerStatus
from exporter.model import VMProtection as Judged
from exporter.pollfamilies import poll_families
from exporter.textformat import LabelSet

INF = math.inf
_F = TypeVar("_F", bound=Metric)


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
    #: ``metrics.exclude``: families left out of /metrics and --once (judgements unchanged).
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Reading:
    """What one scrape shows, read once: one consistent picture per scrape."""

    statuses: Sequence[ControllerStatus]
    state: ExporterState
    now: float
    #: The snapshots to show, by controller: those whose last success is not stale.
    fresh: Sequence[tuple[str, ControllerSnapshot]]


class BackupCollector:
    """Reads what one scrape shows: the statuses, the exporter's state and the time.

    :mod:`exporter.exposition` writes the families of this module from it; a sample of the
    text::

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


def controller_families(state: ExporterState) -> list[GaugeMetricFamily]:
    """Every family of the controllers' snapshots, empty, in the order ``/metrics`` writes
    them; the ages (:func:`age_series`) among them."""
    return shown(
        [
            *cluster_families(state),
            *unowned_families(state),
            *(vm_families(state) if state.per_vm else ()),
            *inventory_families(state),
        ],
        state,
    )


def snapshot_families(
    controller: str,
    snapshot: ControllerSnapshot,
    state: ExporterState,
    *,
    vms_at_once: int | None = None,
) -> Iterator[GaugeMetricFamily]:
    """One controller's snapshot as families: every series of it but the ages, which change
    with the clock (:func:`age_series`). Written once per poll. ``vms_at_once``: the per-VM
    families made for so many VMs at a time, each batch's under the same names again, so that
    a writer never holds every VM's samples at once (some 70 MB with 20,000 VMs)."""
    counts, sizes, newest, _ = cluster_families(state)
    for cluster in snapshot.backups.clusters:
        labels = [controller, cluster.name]
        for state_name in state_names(cluster):
            counts.add_metric([*labels, state_name], cluster.counts[state_name])
            sizes.add_metric([*labels, state_name], cluster.sizes[state_name])
        newest.add_metric(labels, cluster.newest_protected or 0.0)
    unowned = unowned_families(state)
    for cluster_name, figures in snapshot.unowned():
        for family, value in zip(unowned, figures, strict=True):
            family.add_metric([controller, cluster_name], value)
    yield from _without_ages([counts, sizes, newest, *unowned], state)
    if state.per_vm:
        protection = snapshot.protection
        batch = vms_at_once or max(len(protection), 1)
        for start in range(0, max(len(protection), 1), batch):
            vm = vm_families(state)
            _add_vms(vm, controller, protection[start : start + batch])
            yield from _without_ages(vm, state)
    inventory = inventory_families(state)
    _add_inventory(inventory, controller, snapshot)
    yield from _without_ages(inventory, state)


def _without_ages(families: Iterable[_F], state: ExporterState) -> list[_F]:
    return [family for family in shown(families, state) if family.name not in AGE_FAMILIES]


@dataclass(frozen=True)
class AgeSeries:
    """An age family of one snapshot: its series, valued 0, and the creation time each one's
    age counts from (see :func:`age`), in the order of its samples."""

    family: GaugeMetricFamily
    created: tuple[float | None, ...]


def age_series(
    controller: str, snapshot: ControllerSnapshot, state: ExporterState
) -> list[AgeSeries]:
    """The ages of one snapshot's newest backups: the only series whose values change with
    the clock, written again each second (none for ``--once``)."""
    newest_age = cluster_families(state)[3]
    for cluster in snapshot.backups.clusters:
        newest_age.add_metric([controller, cluster.name], 0.0)
    ages = [AgeSeries(newest_age, tuple(c.newest_protected for c in snapshot.backups.clusters))]
    if state.per_vm:
        vm_age = vm_families(state).age
        for judged in snapshot.protection:
            vm_age.add_metric([controller, judged.vm.name, judged.vm.vm_id], 0.0)
        created = tuple(judged.newest_protected_anywhere for judged in snapshot.protection)
        ages.append(AgeSeries(vm_age, created))
    names = {family.name for family in shown([age.family for age in ages], state)}
    return [age for age in ages if age.family.name in names]


def age(now: float, created: float | None) -> float:
    """Seconds since ``created`` at ``now``, in whole seconds (the text is written at most
    once a second anyway); +Inf if there is no such backup."""
    return INF if created is None else float(max(0, math.floor(now - created)))


def _add_vms(vm: VMFamilies, controller: str, protection: Sequence[Judged]) -> None:
    """Each VM's series; those of a VM, and of a VM and destination, share one
    :class:`~exporter.textformat.LabelSet`, written out once for all of them."""
    for judged in protection:
        machine = judged.vm
        names = (controller, machine.name, machine.vm_id)
        labels = LabelSet(dict(zip(VM_LABELS, names, strict=True)))
        _add(vm.newest, labels, judged.newest_protected_anywhere or 0.0)
        about = (machine.cluster, machine.policy, machine.datastore, machine.host)
        vm.info.add_metric([*labels.values(), *about, machine.app_aware_status], 1.0)
        if machine.created_at is not None:
            _add(vm.created, labels, machine.created_at)
        _add(vm.scheduled, labels, 1.0 if judged.scheduled else 0.0)
        places = {*judged.restore_destinations, *judged.app_intervals, *judged.recovery_windows}
        at = {where: LabelSet({**labels, "destination": where}) for where in places}
        for where, interval in judged.intervals.items():
            _add(vm.interval, at[where], interval)
            _add(vm.destination_newest, at[where], judged.newest_protected_at(where) or 0.0)
        _add(vm.failed, labels, judged.newest_failed or 0.0)
        vm.status.add_metric([*labels.values(), judged.status], 1.0)
        _add_depth(vm, at, judged)


def _add(family: GaugeMetricFamily, labels: LabelSet, value: float) -> None:
    family.samples.append(Sample(family.name, labels, value))  # as add_metric, labels shared


def _add_depth(vm: VMFamilies, at: dict[str, LabelSet], judged: Judged) -> None:
    held = judged.held  # a VM's series of issue 20, per destination
    for where in judged.app_intervals:
        newest = found.newest_app_consistent if (found := held.get(where)) else None
        _add(vm.app_consistent_newest, at[where], newest or 0.0)
    for where in judged.restore_destinations:
        found = held.get(where)
        _add(vm.restore_points, at[where], found.restore_points if found else 0)
        _add(vm.oldest_restore_point, at[where], (found.oldest_protected if found else None) or 0.0)
    for where, seconds in judged.recovery_windows.items():
        _add(vm.recovery_window, at[where], seconds)


def _add_inventory(
    inventory: InventoryFamilies, controller: str, snapshot: ControllerSnapshot
) -> None:
    for cluster_name, statuses in snapshot.vms_by_status.items():
        for status, number in statuses.items():
            inventory.vms.add_metric([controller, cluster_name, status], number)
    for policy in snapshot.inventory.policies:
        inventory.policy_rules.add_metric([controller, policy.name], policy.rules)
        inventory.policy_vms.add_metric(
            [controller, policy.name], snapshot.policy_vms.get(policy.name, 0)
        )
    for host in snapshot.inventory.hosts:
        inventory.host_enabled.add_metric(
            [controller, host.name, host.cluster], 1.0 if host.policy_enabled else 0.0
        )
    inventory.overdue_factor.add_metric([controller], snapshot.overdue_factor)
    inventory.grace.add_metric([controller], snapshot.grace_seconds)
    for family, value in zip(inventory.federation, federation_figures(snapshot), strict=True):
        if value is not None:
            family.add_metric([controller], value)


def health_families(statuses: Sequence[ControllerStatus]) -> Iterator[Metric]:
    """The health of each controller's polls: up, duration, last success, errors, logins, the
    pace the poller learned, the records it could not read, and its versions."""
    up = GaugeMetricFamily(
        "simplivity_up",
        "1 if the last poll of the controller succeeded, else 0.",
        labels=["controller"],
    )
    duration = GaugeMetricFamily(
        "simplivity_poll_duration_seconds",
        "Wall time of the last poll of the controller (its inventory and all pages of "
        "/api/backups).",
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
    backoff = GaugeMetricFamily(
        "simplivity_login_backoff_seconds",
        "How long the exporter waits before logging in again after the controller refused the "
        "credentials (no retry before it, or a reload); 0 when it did not refuse them.",
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
    truncated = GaugeMetricFamily(
        "simplivity_label_values_truncated",
        "Names and ids of the last successful poll longer than 256 characters, cut to 256 (the "
        "last 9 a ~ and a hash of the whole) so that the controller cannot bloat /metrics.",
        labels=["controller"],
    )
    info = GaugeMetricFamily(
        "simplivity_controller_info",
        "The controller's REST API version and, on a virtual controller, its OmniStack (SVTFS) "
        "version, as GET /api/version said at the last successful poll. Always 1.",
        labels=["controller", "rest_api_version", "svtfs_version"],
    )
    for status in statuses:
        versions = status.versions
        if versions.rest_api or versions.svtfs:
            info.add_metric([status.name, versions.rest_api, versions.svtfs], 1.0)
        up.add_metric([status.name], 1.0 if status.up else 0.0)
        duration.add_metric([status.name], status.last_duration or 0.0)
        last_success.add_metric([status.name], status.last_success or 0.0)
        for reason in REASONS:
            errors.add_metric([status.name, reason], status.errors.get(reason, 0))
        logins.add_metric([status.name], status.logins)
        backoff.add_metric([status.name], status.login_backoff_seconds)
        concurrency.add_metric([status.name], status.concurrency)
        page_size.add_metric([status.name], status.page_size)
        unreadable.add_metric([status.name], status.unreadable_records)
        truncated.add_metric([status.name], status.labels_truncated)
    yield from (
        up,
        duration,
        last_success,
        errors,
        logins,
        backoff,
        concurrency,
        page_size,
        unreadable,
        truncated,
        info,
        *poll_families(statuses),
    )


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


#: The families whose values change with the clock, not with the poll.
AGE_FAMILIES = frozenset(
    {"simplivity_backup_newest_age_seconds", "simplivity_vm_backup_newest_age_seconds"}
)


def shown(families: Iterable[_F], state: ExporterState) -> list[_F]:
    """The families to write: all but those ``metrics.exclude`` names, and but the ages for
    ``--once``, whose output is read later (a textfile read for minutes would show an age
    frozen at the run); the timestamps say the same and stay true."""
    return [
        family
        for family in families
        if _exposed_name(family) not in state.exclude
        and not (state.once and family.name in AGE_FAMILIES)
    ]


def _exposed_name(family: Metric) -> str:
    """A family's name as /metrics shows it (and users write it): a counter's with ``_total``."""
    return f"{family.name}_total" if family.type == "counter" else family.name


def fresh_snapshots(
    statuses: Sequence[ControllerStatus], state: ExporterState, now: float
) -> list[tuple[str, ControllerSnapshot]]:
    """The snapshots to show: those of controllers whose last success is not stale."""
    return [
        (status.name, status.snapshot)
        for status in statuses
        if status.snapshot is not None
        and status.last_success is not None
        and now - status.last_success <= state.stale_after_seconds
    ]


def _refreshed(state: ExporterState, source: str = "/api/backups") -> str:
    if state.once:
        return "Read by simplivity-exporter --once when it wrote its output."
    return (
        f"Refreshed by the exporter's own poll of {source} every "
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


class VMFamilies(NamedTuple):
    """The per-VM families (``metrics.per_vm``), in the order they are written."""

    newest: GaugeMetricFamily
    age: GaugeMetricFamily
    info: GaugeMetricFamily
    created: GaugeMetricFamily
    scheduled: GaugeMetricFamily
    interval: GaugeMetricFamily
    destination_newest: GaugeMetricFamily
    failed: GaugeMetricFamily
    status: GaugeMetricFamily
    app_consistent_newest: GaugeMetricFamily
    restore_points: GaugeMetricFamily
    oldest_restore_point: GaugeMetricFamily
    recovery_window: GaugeMetricFamily


#: The labels of every per-VM series; then ``destination`` for some, more for ``vm_info``.
VM_LABELS = ["controller", "vm", "vm_id"]
VM_INFO_LABELS = [
    *VM_LABELS,
    "omnistack_cluster",
    "policy",
    "datastore",
    "host",
    "app_aware_status",
]


def vm_families(state: ExporterState) -> VMFamilies:
    judged = _refreshed(state, "the inventory and /api/backups")
    listed = _refreshed(state, "/api/virtual_machines")
    by_destination = [*VM_LABELS, "destination"]
    return VMFamilies(
        GaugeMetricFamily(
            "simplivity_vm_backup_newest_timestamp_seconds",
            "Creation time of the newest PROTECTED backup of each live VM, 0 if it has none. "
            f"{judged}",
            labels=VM_LABELS,
        ),
        GaugeMetricFamily(
            "simplivity_vm_backup_newest_age_seconds",
            "Seconds since the newest PROTECTED backup of each live VM was created, at "
            f"scrape time; +Inf if none. {judged}",
            labels=VM_LABELS,
        ),
        GaugeMetricFamily(
            "simplivity_vm_info",
            "Each live VM: its cluster, policy, datastore, host and app_aware_vm_status "
            f"(whether it can take VSS backups; empty when not said); constant 1. {listed}",
            labels=VM_INFO_LABELS,
        ),
        GaugeMetricFamily(
            "simplivity_vm_created_timestamp_seconds",
            f"When each live VM was created (absent when the controller does not say). {listed}",
            labels=VM_LABELS,
        ),
        GaugeMetricFamily(
            "simplivity_vm_policy_scheduled",
            "1 if the live VM's policy has rules and policy backups are enabled on its host, "
            f"else 0. {judged}",
            labels=VM_LABELS,
        ),
        GaugeMetricFamily(
            "simplivity_vm_backup_expected_interval_seconds",
            "Longest time between two consecutive backups the live VM's policy schedules at "
            f"each destination; none when the policy has no rules. {judged}",
            labels=by_destination,
        ),
        GaugeMetricFamily(
            "simplivity_vm_destination_backup_newest_timestamp_seconds",
            "Creation time of the newest PROTECTED backup of the live VM held at each "
            f"destination of its policy, 0 if none. {judged}",
            labels=by_destination,
        ),
        GaugeMetricFamily(
            "simplivity_vm_backup_newest_failed_timestamp_seconds",
            f"Creation time of the newest FAILED backup of each live VM, 0 if none. {judged}",
            labels=VM_LABELS,
        ),
        GaugeMetricFamily(
            "simplivity_vm_protection_status",
            "The exporter's verdict on each live VM, as its landing page shows it: one series "
            "per VM, value 1, the status in its label (ok, not_scheduled, new, "
            f"never_backed_up, overdue, last_failed, app_inconsistent), judged at the poll. "
            f"{judged}",
            labels=[*VM_LABELS, "status"],
        ),
        GaugeMetricFamily(
            "simplivity_vm_destination_app_consistent_backup_newest_timestamp_seconds",
            "Creation time of the newest application-consistent (VSS or DEFAULT) PROTECTED "
            "backup of the live VM at each destination where a rule of its policy asks for "
            f"one, 0 if none. {judged}",
            labels=by_destination,
        ),
        GaugeMetricFamily(
            "simplivity_vm_destination_restore_points",
            "PROTECTED backups of the live VM held at each destination of its policy and each "
            f"destination holding any. {judged}",
            labels=by_destination,
        ),
        GaugeMetricFamily(
            "simplivity_vm_destination_oldest_restore_point_timestamp_seconds",
            "Creation time of the oldest PROTECTED backup of the live VM at each destination "
            f"of its policy and each destination holding any, 0 if none. {judged}",
            labels=by_destination,
        ),
        GaugeMetricFamily(
            "simplivity_vm_destination_recovery_window_seconds",
            "How far back the live VM's policy promises restore points at each destination, "
            f"from its rules' retention, max_backups and schedule. {judged}",
            labels=by_destination,
        ),
    )


def unowned_families(state: ExporterState) -> tuple[GaugeMetricFamily, ...]:
    """The backups nobody owns, per cluster, in the order of
    :meth:`~exporter.model.ControllerSnapshot.unowned`."""
    judged = _refreshed(state, "the inventory and /api/backups")
    listed = _refreshed(state)
    labels = ["controller", "omnistack_cluster"]
    return (
        GaugeMetricFamily(
            "simplivity_backups_orphaned",
            "Backups in any state whose VM is not a live VM of the inventory (removed, "
            f"deleted, or none named), by cluster. {judged}",
            labels=labels,
        ),
        GaugeMetricFamily(
            "simplivity_backups_orphaned_size_bytes",
            f"Sum of the logical size of those orphaned backups, by cluster. {judged}",
            labels=labels,
        ),
        GaugeMetricFamily(
            "simplivity_backups_never_expiring",
            f"Backups in any state whose expiration_time is NA, by cluster. {listed}",
            labels=labels,
        ),
        GaugeMetricFamily(
            "simplivity_backups_never_expiring_size_bytes",
            f"Sum of the logical size of those never-expiring backups, by cluster. {listed}",
            labels=labels,
        ),
    )


class InventoryFamilies(NamedTuple):
    """The families of the inventory that are not per VM, in the order they are written."""

    vms: GaugeMetricFamily
    policy_rules: GaugeMetricFamily
    policy_vms: GaugeMetricFamily
    host_enabled: GaugeMetricFamily
    overdue_factor: GaugeMetricFamily
    grace: GaugeMetricFamily
    daily_backups: GaugeMetricFamily
    daily_backups_limit: GaugeMetricFamily
    retained_backups_projected: GaugeMetricFamily
    retained_backups_limit: GaugeMetricFamily

    @property
    def federation(self) -> tuple[GaugeMetricFamily, ...]:
        """The schedule report's families, in the order of :func:`federation_figures`."""
        return self[6:]


#: The schedule report's families (name, help text), in the order of :func:`federation_figures`.
FEDERATION_FAMILIES = (
    ("simplivity_federation_daily_backups", "Backups per day the current policies and "
     "VMs will create (daily_backup_rate)"),
    ("simplivity_federation_daily_backups_limit", "The most backups the federation may "
     "create per day (daily_backup_rate_limit); past it, policy backups stop"),
    ("simplivity_federation_retained_backups_projected", "Backups the federation will "
     "retain under the current policies (projected_retained_backups)"),
    ("simplivity_federation_retained_backups_limit", "The most backups the federation may "
     "retain (retained_backups_limit); past it, policy backups stop"),
)  # fmt: skip


def inventory_families(state: ExporterState) -> InventoryFamilies:
    judged = _refreshed(state, "the inventory and /api/backups")
    listed = _refreshed(state, "/api/policies and /api/virtual_machines")
    report = _refreshed(state, "/api/policies/policy_schedule_report")
    return InventoryFamilies(
        GaugeMetricFamily(
            "simplivity_vms",
            "Live VMs by cluster and protection status (ok, not_scheduled, new, "
            f"never_backed_up, overdue, last_failed, app_inconsistent), judged at the poll. "
            f"{judged}",
            labels=["controller", "omnistack_cluster", "protection"],
        ),
        GaugeMetricFamily(
            "simplivity_policy_rules",
            "Rules of each backup policy. " + _refreshed(state, "/api/policies"),
            labels=["controller", "policy"],
        ),
        GaugeMetricFamily(
            "simplivity_policy_vms",
            f"Live VMs using each backup policy. {listed}",
            labels=["controller", "policy"],
        ),
        GaugeMetricFamily(
            "simplivity_host_policy_enabled",
            "1 if policy backups are enabled on the host, 0 while they are suspended. "
            + _refreshed(state, "/api/hosts"),
            labels=["controller", "host", "omnistack_cluster"],
        ),
        GaugeMetricFamily(
            "simplivity_protection_overdue_factor",
            "The protection.overdue_factor the VMs' status was judged with: a destination is "
            "overdue once its newest PROTECTED backup is older than its expected interval "
            f"times this, plus the grace. {judged}",
            labels=["controller"],
        ),
        GaugeMetricFamily(
            "simplivity_protection_grace_seconds",
            "The protection.grace_seconds the VMs' status was judged with (see "
            f"simplivity_protection_overdue_factor). {judged}",
            labels=["controller"],
        ),
        *(
            GaugeMetricFamily(
                name,
                f"{text}; absent before REST API 1.11. {report}",
                labels=["controller"],
            )
            for name, text in FEDERATION_FAMILIES
        ),
    )


def federation_figures(snapshot: ControllerSnapshot) -> tuple[float | None, ...]:
    """The schedule report's figures, in the order of :data:`FEDERATION_FAMILIES`."""
    report = snapshot.inventory.schedule
    if report is None:
        return (None, None, None, None)
    return (
        report.daily_backups,
        report.daily_backups_limit,
        report.retained_backups_projected,
        report.retained_backups_limit,
    )


def state_names(cluster: ClusterSummary) -> tuple[str, ...]:
    """Every documented state, then any other (``OTHER``) the cluster has."""
    return (*STATES, *sorted(set(cluster.counts) - set(STATES)))
