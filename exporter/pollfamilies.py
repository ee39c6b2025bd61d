"""The families that say how each controller was last polled: a full scan of its backups or an
incremental poll (:mod:`exporter.incremental`), how many records it read, and why full scans
ran."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.model import FULL_SCAN_REASONS, ControllerStatus

#: The values of ``simplivity_poll_kind``'s ``kind`` label.
POLL_KINDS = ("full", "incremental")
#: The listings a poll reads, as ``simplivity_poll_objects`` names them (their envelope keys).
COLLECTIONS = ("backups", "virtual_machines", "policies", "hosts", "omnistack_clusters")


def poll_families(statuses: Sequence[ControllerStatus]) -> Iterator[Metric]:
    kind = GaugeMetricFamily(
        "simplivity_poll_kind",
        "How the last successful poll read the controller's backups: 1 for its kind, 0 for the "
        "other (full: every backup; incremental: only what can have changed, checked with "
        "exact counts).",
        labels=["controller", "kind"],
    )
    objects = GaugeMetricFamily(
        "simplivity_poll_objects",
        "Records the last successful poll read from the controller, by listing (the one record "
        "of each count it asked for included).",
        labels=["controller", "collection"],
    )
    full_scans = CounterMetricFamily(
        "simplivity_poll_full_scans",
        "Polls that read every backup of the controller, by why: start, reload (its settings "
        "changed), schedule (poll.full_scan_interval_seconds), failure (the poll before "
        "failed), mismatch (an incremental poll's counts did not add up), unreadable (the "
        "last scan had records it could not read).",
        labels=["controller", "reason"],
    )
    for status in statuses:
        if status.poll_kind:
            for name in POLL_KINDS:
                kind.add_metric([status.name, name], 1.0 if status.poll_kind == name else 0.0)
            read = status.poll_objects
            for collection in COLLECTIONS:
                objects.add_metric([status.name, collection], read.get(collection, 0))
        for reason in FULL_SCAN_REASONS:
            full_scans.add_metric([status.name, reason], status.full_scans.get(reason, 0))
    yield from (kind, objects, full_scans)
