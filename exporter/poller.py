"""Polls every controller on the scheduler and publishes one immutable status per controller.

A poll scans the controller's backups and, alongside, reads its inventory (live VMs,
policies, hosts, the schedule report), then judges every live VM's protection: a complete
:class:`~exporter.model.ControllerSnapshot`, built on the side and swapped in by reference
only when every read succeeded. A scrape never sees half a poll, and a failed poll leaves the
last good result in place (the collector drops it once it is stale).

The inventory is read in a second thread while the backups are scanned, by a scanner of its own
over the same client (:meth:`~exporter.scan.Scanner.sibling`), one request at a time (so one
more request in flight than the scan's): read after the backups, its dozen requests would
lengthen every poll (by how much: docs/design.md, "How polling works, and why"). Both reads
span the same moments, so the picture is that of the poll's time: a VM created while the poll
runs may be listed without the backup it got meanwhile, and is then judged ``new``, as it is.
The schedule report alone is optional (REST API 1.11 and later): an error leaves it out, logged.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerThreadPool
from apscheduler.schedulers.background import BackgroundScheduler

from exporter import incremental
from exporter.backups import BACKUPS
from exporter.config import Config, ControllerConfig, PollConfig, ProtectionConfig
from exporter.inventory import (
    CLUSTERS,
    HOSTS,
    INVENTORY_LISTINGS,
    SCHEDULE_REPORT,
    VERSION,
    InventoryRead,
    parse_schedule_report,
    parse_versions,
)
from exporter.model import (
    FULL_SCAN_REASONS,
    MAX_LABEL_LENGTH,
    REASONS,
    BackupSnapshot,
    Cancelled,
    ControllerStatus,
    ControllerVersions,
    DecodeError,
    HTTPStatusError,
    Inventory,
    ScheduleReport,
    SimplivityError,
)
from exporter.pages import SORT_FIELD, Collection, PageCounter, PageOutcome, PageSink, RecordTally
from exporter.restapi import Version, documented, has_resource, parse_version
from exporter.scan import Pace, Scanner
from exporter.simplivity import SimplivityClient
from exporter.store import BackupScanFactory, BackupStore, StoreScan, count_elsewhere

log = logging.getLogger(__name__)

#: At most this many controllers are polled at the same moment (each in its own thread).
MAX_PARALLEL_POLLS = 128


class ControllerReader(Protocol):
    """What a poll needs of a controller: its collections, page by page, and single GETs (a
    :class:`~exporter.scan.Scanner` over a :class:`~exporter.simplivity.SimplivityClient`)."""

    @property
    def logins(self) -> int: ...

    @property
    def login_backoff_seconds(self) -> float: ...

    @property
    def pace(self) -> Pace: ...

    def begin_poll(self, deadline_seconds: float) -> None: ...

    def sibling(self, *, page_size: int, max_concurrency: int) -> ControllerReader:
        """A reader of the same controller through the same client (one login, one retry budget
        and one deadline per poll), for reads beside this one's, with a pace of its own."""
        ...

    def redact(self, text: str) -> str: ...

    def read(self, collection: Collection, pages: PageSink) -> None: ...

    def count(self, collection: Collection) -> int:
        """The ``count`` of a (filtered) listing."""
        ...

    def get(self, path: str) -> bytes: ...

    def close(self) -> None: ...


ClientFactory = Callable[[ControllerConfig, PollConfig, threading.Event], ControllerReader]


def connect(
    controller: ControllerConfig,
    poll: PollConfig,
    stop: threading.Event,
    *,
    backoff_seconds: float = 0.5,
) -> Scanner:
    """The real thing (the default :data:`ClientFactory`): the REST client, paged by a scanner.

    ``stop`` ends the client's retries and waits when set.
    """
    client = SimplivityClient(controller, poll, stop=stop, backoff_seconds=backoff_seconds)
    return Scanner(
        client,
        page_size=poll.page_size,
        max_concurrency=poll.max_concurrency,
        name=controller.name,
    )


def for_version(collection: Collection, version: Version | None) -> Collection:
    """``collection`` asking only for the fields that REST API ``version`` documents (None:
    the newest the exporter knows).

    >>> hosts = Collection("/api/hosts", "hosts", "host", ("id", "omnistack_cluster_id"))
    >>> for_version(hosts, (1, 8)).fields
    ('id',)
    """
    fields = tuple(f for f in collection.fields if documented(collection.path, f, version))
    return collection if fields == collection.fields else replace(collection, fields=fields)


def as_asked(collection: Collection, version: Version | None) -> Collection | None:
    """``collection`` as a poll asks a controller of REST API ``version`` for it
    (:func:`for_version`); None where it is not asked for: the clusters, whose names serve the
    hosts, before REST API 1.9 (hosts name no cluster there).

    >>> as_asked(CLUSTERS, (1, 8)), as_asked(CLUSTERS, (1, 9)) is CLUSTERS
    (None, True)
    """
    if collection.path == CLUSTERS.path and not documented(
        HOSTS.path, "omnistack_cluster_id", version
    ):
        return None
    return for_version(collection, version)


class PollTurn:
    """Whose turn it is to poll a controller: one poll at a time, across reloads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holder: object = None


class ControllerPoller:
    """Polls one controller; :attr:`status` is always a complete, consistent picture."""

    def __init__(
        self,
        controller: ControllerConfig,
        poll: PollConfig,
        *,
        client_factory: ClientFactory = connect,
        scans: BackupScanFactory = StoreScan,
        protection: ProtectionConfig | None = None,
        clock: Callable[[], float] = time.time,
        on_publish: Callable[[], None] = lambda: None,
        previous: ControllerStatus | None = None,
        turn: PollTurn | None = None,
    ) -> None:
        """``turn`` is shared by the pollers that replace one another for a controller."""
        self.controller = controller
        self.poll_config = poll
        self.protection = protection or ProtectionConfig()
        self._scans = scans
        # The listings as this config bounds them: a controller saying it holds more fails.
        self._backups = _capped(BACKUPS, poll.max_backups, "poll.max_backups")
        self._inventory = tuple(
            _capped(collection, poll.max_vms, "poll.max_vms") for collection in INVENTORY_LISTINGS
        )
        self._stop = threading.Event()
        self._client = client_factory(controller, poll, self._stop)
        # The inventory's reader, beside the backups' scan: one request at a time, so that the
        # controller gets one more than the scan's pace; its own page size (a 504 on the VMs
        # does not shrink the backups' pages).
        self._inventory_reader = self._client.sibling(page_size=poll.page_size, max_concurrency=1)
        self._clock = clock
        self._on_publish = on_publish
        self._turn = turn or PollTurn()
        # Counters go on from where the replaced poller left them (a reload is no reset).
        self._logins_before = previous.logins if previous else 0
        pace = self._client.pace
        if previous is not None and previous.url == controller.url:
            # The same controller under new settings: its data, health and readiness stay
            # until the next poll says otherwise, so users see no blink at a reload.
            self.status = replace(previous, concurrency=pace.concurrency, page_size=pace.page_size)
        else:
            errors = dict(previous.errors) if previous else dict.fromkeys(REASONS, 0)
            self.status = ControllerStatus(
                name=controller.name,
                url=controller.url,
                errors=errors,
                logins=self._logins_before,
                concurrency=pace.concurrency,
                page_size=pace.page_size,
            )
        # Said once per controller, not at every poll: set when the published snapshot (kept
        # across a reload) already lacks the report.
        snapshot = self.status.snapshot
        self._said_no_report = snapshot is not None and snapshot.inventory.schedule is None
        self._said_no_version = False
        # The backups of the last successful poll, for the next one to start from
        # (:mod:`exporter.incremental`); None: the next poll scans them all, for this reason.
        self._store: BackupStore | None = None
        self._no_store = "start" if previous is None else "reload"
        self._last_full_scan = -math.inf
        self._full_scans = dict(previous.full_scans if previous else {})
        for reason in FULL_SCAN_REASONS:
            self._full_scans.setdefault(reason, 0)

    def poll_once(self) -> ControllerStatus:
        """Read the controller's backups and inventory and publish the outcome. Never raises.

        A controller is never polled twice at once: a poll due while this poller's last one
        still runs is skipped; one due while the poller this one replaced (at a reload) is
        still finishing its last waits for it, which was told to stop.
        """
        turn = self._turn
        acquired = turn.lock.acquire(blocking=False)
        if not acquired and turn.holder is not self:
            # The poller this one replaced is finishing its last poll, told to stop.
            acquired = turn.lock.acquire(timeout=self.poll_config.timeout_seconds + 5)
        if not acquired:
            name = self.controller.name
            log.warning(
                "controller %s: previous poll still running, skipped",
                name,
                extra={"controller": name},
            )
            return self.status
        turn.holder = self
        try:
            return self._poll()
        finally:
            turn.holder = None
            turn.lock.release()

    def _poll(self) -> ControllerStatus:
        name = self.controller.name
        started = time.monotonic()
        self._client.begin_poll(self.poll_config.deadline)
        unreadable, unreadable_inventory = RecordTally(), RecordTally()
        objects: Counter[str] = Counter()
        inventory_objects: Counter[str] = Counter()
        try:
            versions = self._read_versions()
            version = parse_version(versions.rest_api)
            # Leaving the block waits for the inventory's read, whatever the scan's outcome.
            with ThreadPoolExecutor(1, thread_name_prefix=f"inventory-{name}") as side:
                inventory_read = side.submit(
                    self._read_inventory, unreadable_inventory, version, inventory_objects
                )
                backups, store, kind = self._read_backups(
                    for_version(self._backups, version), unreadable, objects
                )
            read, inventory = inventory_read.result()
            unreadable.merge(unreadable_inventory)
            objects.update(inventory_objects)
            now = self._clock()
            snapshot = read.judge(
                inventory,
                backups,
                now=now,
                overdue_factor=self.protection.overdue_factor,
                grace_seconds=self.protection.grace_seconds,
            )
            truncated = len(backups.cut_labels | read.cut_labels)
            duration = time.monotonic() - started
        except Cancelled:
            log.debug("controller %s: poll abandoned at shutdown", name, extra={"controller": name})
            return self.status
        except SimplivityError as err:
            return self._publish_failure(err, time.monotonic() - started)
        except Exception as err:
            # A bug, not a controller fault: keep the exporter alive, say so loudly, count it.
            log.exception(
                "controller %s: unexpected error during poll", name, extra={"controller": name}
            )
            failure = DecodeError(f"internal error: {type(err).__name__}")
            return self._publish_failure(failure, time.monotonic() - started)
        pace = self._client.pace
        self._store = store
        self.status = replace(
            self.status,
            poll_kind=kind,
            poll_objects=dict(objects),
            full_scans=dict(self._full_scans),
            polls=self.status.polls + 1,
            up=True,
            last_poll_finished=now,
            last_duration=duration,
            last_success=now,
            last_error=None,
            logins=self._logins_before + self._client.logins,
            login_backoff_seconds=self._client.login_backoff_seconds,
            snapshot=snapshot,
            concurrency=pace.concurrency,
            page_size=pace.page_size,
            unreadable_records=unreadable.records,
            versions=versions,
            labels_truncated=truncated,
        )
        if unreadable.records:
            # Once per poll, with the first few only: never a record's whole body.
            log.warning(
                "controller %s: %d records could not be read and were left out: %s",
                name,
                unreadable.records,
                self._client.redact("; ".join(unreadable.problems)),
                extra={"controller": name, "records": unreadable.records},
            )
        if truncated:
            log.warning(
                "controller %s: %d names longer than %d characters were cut (they end in ~ "
                "and a hash)",
                name,
                truncated,
                MAX_LABEL_LENGTH,
                extra={"controller": name, "labels": truncated},
            )
        log.info(
            "controller %s: %d backups, %d clusters, %d live VMs (%d at risk) in %.2f s, "
            "%s poll: %d records read",
            name,
            backups.backups_seen,
            len(backups.clusters),
            len(inventory.vms),
            len(snapshot.at_risk),
            duration,
            kind,
            sum(objects.values()),
            extra={
                "controller": name,
                "duration_seconds": round(duration, 3),
                "kind": kind,
                "records": sum(objects.values()),
                "backups": backups.backups_seen,
                "clusters": len(backups.clusters),
                "vms": len(inventory.vms),
                "at_risk": len(snapshot.at_risk),
            },
        )
        self._on_publish()
        return self.status

    def _read_versions(self) -> ControllerVersions:
        """``GET /api/version``, which says what fields to ask for; a controller that does not
        answer it is asked for the newest version's (and any it refuses are dropped)."""
        try:
            versions = parse_versions(self._client.get(VERSION))
        except (HTTPStatusError, DecodeError) as err:
            versions = ControllerVersions("", "")
            if not self._said_no_version:
                log.info(
                    "controller %s: no REST API version (%s); asking for the newest version's "
                    "fields",
                    self.controller.name,
                    err,
                    extra={"controller": self.controller.name, "error": str(err)},
                )
                self._said_no_version = True
        return versions

    def _read_backups(
        self, listing: Collection, unreadable: RecordTally, objects: Counter[str]
    ) -> tuple[BackupSnapshot, BackupStore | None, str]:
        """The backups' snapshot, the store to keep for the next poll, and the kind of read:
        incremental from the last poll's store when it may be (:mod:`exporter.incremental`),
        else (or when something does not add up) a full scan."""
        # Kept for the next poll only if this one succeeds (a failed poll's next is full),
        # and held nowhere else meanwhile: a full scan frees it before building the next.
        store, self._store = self._store, None
        name = self.controller.name
        # A new snapshot shares the published one's VMs that did not change (SharedWith).
        published = self.status.snapshot.backups.vms if self.status.snapshot else ()
        now = self._clock()
        reason = self._full_scan_reason(store, now)
        if reason is None and store is not None:
            tally = RecordTally()

            def read(collection: Collection, pages: PageSink) -> None:
                self._client.read(collection, tally.around(_Objects(objects, pages)))

            try:
                incremental.update(store, listing, now, read, tally)
                incremental.cross_check(store, listing, now, self._client.count, read, objects)
                if tally.records:
                    raise incremental.Mismatch(f"{tally.records} backups could not be read")
            except incremental.Mismatch as err:
                log.warning(
                    "controller %s: incremental poll does not add up (%s); scanning every backup",
                    name,
                    err,
                    extra={"controller": name, "reason": "mismatch", "error": str(err)},
                )
                reason = "mismatch"
            else:
                return count_elsewhere(store, self._scans, published), store, "incremental"
        store = None  # freed before the scan that replaces it
        reason = reason or "schedule"
        self._full_scans[reason] = self._full_scans.get(reason, 0) + 1
        log.debug(
            "controller %s: full scan (%s)",
            name,
            reason,
            extra={"controller": name, "reason": reason},
        )
        scan = self._scans(keep=self.poll_config.full_scan_interval_seconds > 0)
        try:
            self._client.read(listing, unreadable.around(_Objects(objects, scan)))
            snapshot = scan.snapshot(published)
            if unreadable.records:
                self._no_store = "unreadable"  # a store without them would never add up
            else:
                store = scan.take_store()  # None if the scan was opened not to keep one
        finally:
            scan.close()
        self._last_full_scan = now
        return snapshot, store, "full"

    def _full_scan_reason(self, store: BackupStore | None, now: float) -> str | None:
        """Why this poll must scan every backup; None if it need not."""
        interval = self.poll_config.full_scan_interval_seconds
        if store is None and interval > 0:
            return self._no_store
        if interval <= 0 or now - self._last_full_scan >= interval:
            return "schedule"
        return None

    def _read_inventory(
        self, unreadable: RecordTally, version: Version | None, objects: Counter[str]
    ) -> tuple[InventoryRead, Inventory]:
        """The live VMs first, then the policies and hosts they name, the clusters' names (for
        the hosts: before REST API 1.9 they name none), then the report."""
        read = InventoryRead()
        for collection, sink in zip(
            self._inventory,
            (read.add_vm, read.add_policy, read.add_host, read.add_cluster),
            strict=True,
        ):
            asked = as_asked(collection, version)
            if asked is not None:
                pages = _Objects(objects, PageCounter(asked, sink), asked.key)
                self._inventory_reader.read(asked, unreadable.around(pages))
        return read, read.inventory(self._read_schedule_report(version))

    def _read_schedule_report(self, version: Version | None) -> ScheduleReport | None:
        """REST API before 1.11 has no such report (it is not asked for): not a failure."""
        if not has_resource(SCHEDULE_REPORT, version):
            self._no_report("REST API 1.11 and later only")
            return None
        try:
            body = self._inventory_reader.get(SCHEDULE_REPORT)
        except HTTPStatusError as err:
            self._no_report(str(err))
            return None
        self._said_no_report = False
        return parse_schedule_report(body)

    def _no_report(self, why: str) -> None:
        if not self._said_no_report:
            log.info(
                "controller %s: no schedule report (%s); the federation's backup limits "
                "are not exported",
                self.controller.name,
                why,
                extra={"controller": self.controller.name, "error": why},
            )
            self._said_no_report = True

    def _publish_failure(self, err: SimplivityError, duration: float) -> ControllerStatus:
        message = str(err)  # what the controller wrote in it is redacted already
        self._no_store = "failure"
        errors = dict(self.status.errors)
        errors[err.reason] = errors.get(err.reason, 0) + 1
        pace = self._client.pace
        self.status = replace(
            self.status,
            polls=self.status.polls + 1,
            up=False,
            last_poll_finished=self._clock(),
            last_duration=duration,
            last_error=message,
            errors=errors,
            full_scans=dict(self._full_scans),
            logins=self._logins_before + self._client.logins,
            login_backoff_seconds=self._client.login_backoff_seconds,
            concurrency=pace.concurrency,
            page_size=pace.page_size,
        )
        log.warning(
            "controller %s: poll failed (%s): %s",
            self.controller.name,
            err.reason,
            message,
            extra={
                "controller": self.controller.name,
                "reason": err.reason,
                "duration_seconds": round(duration, 3),
                "error": message,
            },
        )
        self._on_publish()
        return self.status

    def close(self) -> None:
        self._stop.set()
        self._client.close()
        self._inventory_reader.close()


class _Objects:
    """A :class:`~exporter.pages.PageSink` that counts the records its pages held, by listing."""

    def __init__(self, objects: Counter[str], pages: PageSink, key: str = BACKUPS.key) -> None:
        self._objects = objects
        self._pages = pages
        self._key = key

    def count(self, offset: int, body: bytes, order: str = SORT_FIELD) -> PageOutcome:
        outcome = self._pages.count(offset, body, order)
        self._objects[self._key] += outcome.received
        return outcome


def _capped(collection: Collection, most: int, setting: str) -> Collection:
    return replace(collection, max_records=most, max_records_setting=setting)


class Poller:
    """Schedules :class:`ControllerPoller` jobs and keeps them in step with the config."""

    def __init__(
        self,
        config: Config,
        *,
        client_factory: ClientFactory = connect,
        scans: BackupScanFactory = StoreScan,
        clock: Callable[[], float] = time.time,
        scheduler: BackgroundScheduler | None = None,
    ) -> None:
        """``scans`` opens where each poll's pages are counted (this process by default, or
        :class:`~exporter.worker.DecodingWorker`)."""
        self._client_factory = client_factory
        self._scans = scans
        self._clock = clock
        self._scheduler = scheduler or BackgroundScheduler(
            executors={"default": SchedulerThreadPool(MAX_PARALLEL_POLLS)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._lock = threading.Lock()
        self._pollers: dict[str, ControllerPoller] = {}
        self._generations = itertools.count(1)
        self._generation = 0
        self._listeners: tuple[Callable[[], None], ...] = ()
        self._turns: dict[str, PollTurn] = {}  # by controller name, kept across reloads
        self.config = config
        self._started = False
        self._apply(config)

    @property
    def generation(self) -> int:
        """Changes whenever any status changes: what the exposition cache keys on."""
        return self._generation

    def statuses(self) -> tuple[ControllerStatus, ...]:
        pollers = self._pollers  # one read of the reference: a consistent set of controllers
        return tuple(pollers[name].status for name in sorted(pollers))

    def ready(self) -> bool:
        """Every controller has finished its first poll, successful or not."""
        return all(status.polls > 0 for status in self.statuses())

    def start(self) -> None:
        with self._lock:
            self._started = True
            for poller in self._pollers.values():
                self._schedule(poller)
            self._scheduler.start()

    def apply(self, config: Config) -> None:
        """Take a new config: add, replace and remove controllers; untouched ones keep going."""
        with self._lock:
            self._apply(config)

    def _apply(self, config: Config) -> None:
        old = self._pollers
        new: dict[str, ControllerPoller] = {}
        for controller in config.controllers:
            current = old.get(controller.name)
            if (
                current is not None
                and current.controller == controller
                and current.poll_config == config.poll
                and current.protection == config.protection
            ):
                new[controller.name] = current
                continue
            new[controller.name] = ControllerPoller(
                controller,
                config.poll,
                client_factory=self._client_factory,
                scans=self._scans,
                protection=config.protection,
                clock=self._clock,
                on_publish=self._published,
                previous=current.status if current else None,
                turn=self._turns.setdefault(controller.name, PollTurn()),
            )
        self._pollers = new
        self.config = config
        for name, poller in old.items():
            if new.get(name) is not poller:
                self._unschedule(poller)
                poller.close()
        if self._started:
            for name, poller in new.items():
                if old.get(name) is not poller:
                    self._schedule(poller)
        self._bump()

    def _schedule(self, poller: ControllerPoller) -> None:
        interval = poller.poll_config.interval_seconds
        # A little jitter, so that many controllers (or many exporters) do not fire together.
        spread = min(interval * 0.1, 10.0)
        first = datetime.now(UTC) + timedelta(seconds=random.uniform(0, min(spread, 1.0)))
        self._scheduler.add_job(
            poller.poll_once,
            "interval",
            seconds=interval,
            jitter=spread if spread >= 1 else None,
            next_run_time=first,
            id=self._job_id(poller),
            name=f"poll {poller.controller.name}",
            replace_existing=True,
        )

    def _unschedule(self, poller: ControllerPoller) -> None:
        job_id = self._job_id(poller)
        if self._started and self._scheduler.get_job(job_id) is not None:
            self._scheduler.remove_job(job_id)

    @staticmethod
    def _job_id(poller: ControllerPoller) -> str:
        # One id per poller, not per controller name: APScheduler counts running instances by
        # job id, so a poller replaced by a reload while it polls would make the new one's
        # first runs "skipped: maximum number of running instances reached".
        return f"{poller.controller.name}#{id(poller):x}"

    def _bump(self) -> None:
        self._generation = next(self._generations)  # atomic, unlike += from several threads

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each poll has published its outcome, in the poll's thread."""
        self._listeners = (*self._listeners, listener)

    def _published(self) -> None:
        self._bump()
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not fail the poll that published
                log.exception("a listener of the published polls failed")

    def poll_all_once(self) -> tuple[ControllerStatus, ...]:
        """Poll every controller once, all at the same time (``--once``)."""
        pollers = list(self._pollers.values())
        with ThreadPoolExecutor(max_workers=min(len(pollers), MAX_PARALLEL_POLLS) or 1) as pool:
            list(pool.map(ControllerPoller.poll_once, pollers))
        return self.statuses()

    def shutdown(self) -> None:
        with self._lock:
            for poller in self._pollers.values():
                poller.close()
            if self._started:
                self._scheduler.shutdown(wait=False)
                self._started = False
