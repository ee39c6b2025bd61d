"""Controller snapshots for tests, built the way a poll builds them: records in, judged out.

The inventory's records go through :class:`~exporter.inventory.InventoryRead` and the
protection is judged by it, so a test's snapshot is what a poll of the same records publishes.
Fake clients answer the inventory's listings with :func:`answer_inventory`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Self

from exporter.backups import BACKUPS, Aggregator
from exporter.exposition import Exposition
from exporter.inventory import INVENTORY_LISTINGS, VERSION, InventoryRead
from exporter.model import (
    REASONS,
    BackupSnapshot,
    ControllerSnapshot,
    ControllerStatus,
    HeldBackups,
    PageRequest,
    ScheduleReport,
    VMBackups,
)
from exporter.pages import Collection, PageSink
from exporter.poller import ControllerReader
from exporter.scan import Pace

#: The clock of the tests that judge snapshots, and the units their ages are written in.
NOW = 1_709_500_000.0  # 2024-03-03T21:06:40Z
HOUR, DAY = 3600, 86400


def rendered(exposition: Exposition, *, gzipped: bool = False) -> bytes:
    """The text (or its gzip) a scrape gets: the exposition's chunks, joined."""
    return b"".join(exposition.render(gzipped=gzipped))


class NoPollLimits:
    """What a fake client needs of a poll's limits and secrets, as no-ops: logins never back
    off, deadlines are not kept, nothing is redacted."""

    login_backoff_seconds = 0.0

    def begin_poll(self, deadline_seconds: float) -> None:
        pass

    def redact(self, text: str) -> str:
        return text

    def sibling(self, *, page_size: int, max_concurrency: int) -> Self:
        """One fake serves every reader of a poll."""
        return self

    def count(self, collection: Collection) -> int:
        """A fake serves whole listings: its pollers scan every backup at every poll
        (``full_scan_interval_seconds=0``), and never count."""
        raise AssertionError(f"a fake asked for the count of {collection.path}")


class ReaderWrapper:
    """A :class:`~exporter.poller.ControllerReader` that hands everything to ``inner``: a test's
    wrapper of the real client overrides what it watches or changes."""

    def __init__(self, inner: ControllerReader) -> None:
        self.inner = inner

    @property
    def logins(self) -> int:
        return self.inner.logins

    @property
    def pace(self) -> Pace:
        return self.inner.pace

    @property
    def login_backoff_seconds(self) -> float:
        return self.inner.login_backoff_seconds

    def begin_poll(self, deadline_seconds: float) -> None:
        self.inner.begin_poll(deadline_seconds)

    def sibling(self, *, page_size: int, max_concurrency: int) -> ControllerReader:
        return self.inner.sibling(page_size=page_size, max_concurrency=max_concurrency)

    def redact(self, text: str) -> str:
        return self.inner.redact(text)

    def get(self, path: str) -> bytes:
        return self.inner.get(path)

    def count(self, collection: Collection) -> int:
        return self.inner.count(collection)

    def read(self, collection: Collection, pages: PageSink) -> None:
        self.inner.read(collection, pages)

    def close(self) -> None:
        self.inner.close()


def aggregate(backups: Iterable[Mapping[str, Any]]) -> BackupSnapshot:
    tally = Aggregator()
    for backup in backups:
        tally.add(backup)
    return tally.snapshot()


def vm_backups(
    vm_id: str,
    newest: Mapping[str, float],
    failed: float | None,
    state: str,
    created: float | None,
    destination: str,
) -> VMBackups:
    """A VM's backups with one PROTECTED backup at each destination of ``newest``, at its time
    (as an :class:`Aggregator` counts them, of unknown size and consistency)."""
    held = {where: HeldBackups(1, 0, 1, at, at, None, False) for where, at in newest.items()}
    return VMBackups(vm_id, failed, state, created, destination, held)


def read_of(
    vms: Iterable[Mapping[str, Any]] = (),
    policies: Iterable[Mapping[str, Any]] = (),
    hosts: Iterable[Mapping[str, Any]] = (),
    clusters: Iterable[Mapping[str, Any]] | None = None,
) -> InventoryRead:
    """The inventory's records, read as a poll reads them; ``clusters`` defaults to the
    listing that names every cluster :func:`host_record` gave an id."""
    read = InventoryRead()
    for vm in vms:
        read.add_vm(vm)
    for policy in policies:
        read.add_policy(policy)
    hosts = list(hosts)
    for host in hosts:
        read.add_host(host)
    if clusters is None:
        ids = {h.get("omnistack_cluster_id") for h in hosts}
        clusters = [
            cluster_record(i.removeprefix(CLUSTER_ID_PREFIX))
            for i in sorted(x for x in ids if isinstance(x, str))
            if i.startswith(CLUSTER_ID_PREFIX)
        ]
    for cluster in clusters:
        read.add_cluster(cluster)
    return read


def judged(
    backups: BackupSnapshot,
    *,
    now: float,
    vms: Iterable[Mapping[str, Any]] = (),
    policies: Iterable[Mapping[str, Any]] = (),
    hosts: Iterable[Mapping[str, Any]] = (),
    report: ScheduleReport | None = None,
    overdue_factor: float = 1.5,
    grace_seconds: float = 3600,
) -> ControllerSnapshot:
    read = read_of(vms, policies, hosts)
    inventory = read.inventory(report)
    return read.judge(
        inventory, backups, now=now, overdue_factor=overdue_factor, grace_seconds=grace_seconds
    )


def vm_record(vm_id: str, name: Any, policy_id: str, **fields: Any) -> dict[str, Any]:
    """A VM as ``/api/virtual_machines?fields=...`` lists it."""
    return {
        "id": vm_id,
        "name": name,
        "created_at": "2023-01-01T00:00:00Z",
        "policy_id": policy_id,
        "policy_name": fields.pop("policy_name", ""),
        "omnistack_cluster_name": "Boston DC",
        "datastore_name": "BOS-DS-01",
        "host_id": "h-bos-1",
        **fields,
    }


def rule(
    frequency: Any = 60,
    days: str = "All",
    start: str = "00:00",
    end: str = "00:00",
    destination: str = "<Local>",
    store: str = "",
    number: int = 1,
) -> dict[str, Any]:
    """A policy rule as ``/api/policies`` lists it."""
    return {
        "id": f"r-{number}",
        "number": number,
        "frequency": frequency,
        "retention": 10080,
        "days": days,
        "start_time": start,
        "end_time": end,
        "destination_id": "",
        "destination_name": "" if store else destination,
        "external_store_name": store,
    }


def policy_record(policy_id: str, name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"id": policy_id, "name": name, "rules": list(rules)}


#: How :func:`host_record` makes up a cluster's id from its name.
CLUSTER_ID_PREFIX = "cluster-id-"


def host_record(host_id: str, name: str, cluster: str, enabled: Any = True) -> dict[str, Any]:
    """A host as ``/api/hosts?fields=...`` lists it: its cluster by id only (HPE's schema has
    no ``omnistack_cluster_name`` on hosts)."""
    return {
        "id": host_id,
        "name": name,
        "omnistack_cluster_id": CLUSTER_ID_PREFIX + cluster,
        "policy_enabled": enabled,
    }


def cluster_record(name: str) -> dict[str, Any]:
    """An OmniStack cluster as ``/api/omnistack_clusters?fields=id,name`` lists it."""
    return {"id": CLUSTER_ID_PREFIX + name, "name": name}


def listing_body(collection: Collection, records: Sequence[Mapping[str, Any]]) -> bytes:
    """One page holding the whole of a listing, as the controller sends it."""
    document = {"offset": 0, "count": len(records), "limit": 3000, collection.key: list(records)}
    return json.dumps(document).encode()


def answer_inventory(
    collection: Collection,
    pages: PageSink,
    inventory: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> bool:
    """For a fake client: answer a read of an inventory listing with ``inventory[path]`` (an
    empty listing by default) and say True; False for the backups, left to the fake."""
    if collection.path == BACKUPS.path:
        return False
    records = (inventory or {}).get(collection.path, ())
    pages.count(0, listing_body(collection, records))
    return True


class RecordingSource(NoPollLimits):
    """A controller for a :class:`~exporter.scan.Scanner`, recording every request a poll sends.

    Each listing holds ``records[path]`` (none by default), paged as asked; ``GET /api/version``
    answers ``version`` (with no version, ``{}``, as every other ``GET``).
    """

    def __init__(
        self, records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None, version: str = ""
    ) -> None:
        self.records = records or {}
        self.version = version
        self.pages: list[PageRequest] = []
        self.gets: list[str] = []
        self.logins = 1
        self.throttled = 0

    def get_page(self, page: PageRequest, *, retry_too_slow: bool = True) -> bytes:
        self.pages.append(page)
        collection = {c.path: c for c in (BACKUPS, *INVENTORY_LISTINGS)}[page.path]
        records = self.records.get(page.path, ())
        window = records[page.offset : page.offset + page.limit]
        document = {
            "offset": page.offset,
            "count": len(records),
            "limit": page.limit,
            collection.key: list(window),
        }
        return json.dumps(document).encode()

    def get_body(self, path: str) -> bytes:
        self.gets.append(path)
        if path == VERSION and self.version:
            return json.dumps({"REST_API_Version": self.version}).encode()
        return b"{}"

    def close(self) -> None:
        pass


def polled(
    name: str, snapshot: ControllerSnapshot | None, finished: float, **fields: Any
) -> ControllerStatus:
    """A controller whose last poll (its first) succeeded at ``finished`` with ``snapshot``;
    ``fields`` replace the others."""
    status = ControllerStatus(
        name=name,
        url="https://10.0.0.10",
        polls=1,
        up=True,
        last_poll_finished=finished,
        last_duration=1.0,
        last_success=finished,
        errors=dict.fromkeys(REASONS, 0),
        logins=1,
        snapshot=snapshot,
        concurrency=3,
        page_size=3000,
    )
    return replace(status, **fields)
