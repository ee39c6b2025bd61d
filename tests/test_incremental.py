"""Incremental polls against the churning simulator, over real sockets: after every poll, every
series equals a full scan's at the same moment (a second poller, ``full_scan_interval_seconds``
0, the same simulator, the same manual clock); each kind of change alone and mixed; each
fallback to a full scan; random sequences of changes (hypothesis)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.backups import seconds_of
from exporter.collector import ExporterState, snapshot_families
from exporter.config import PollConfig
from exporter.incremental import MAX_REPAIRS, timestamp, window_start
from exporter.model import ControllerStatus
from exporter.pages import Collection
from exporter.poller import ControllerPoller, ControllerReader
from exporter.simulator import Churn, FederationSpec, ManualClock, SimulatedController
from exporter.store import BackupScanFactory, BackupStore, StoreScan, read_record
from exporter.worker import DecodingWorker
from tests.live_exporter import controller_config, fast_retries
from tests.snapshots import ReaderWrapper

STATE = ExporterState(interval_seconds=300, stale_after_seconds=10**9)
FIVE_MINUTES = 300
#: The generated federation's first backups expire a day after it was generated: a test that
#: needs expiries starts its polls shortly before.
EXPIRING = 24 * 3600 - 1800


#: Every rate of the simulator's churn at 0: one kind at a time is turned on.
STILL = Churn(scheduled=False).with_rates(dict.fromkeys(Churn.RATES, 0.0))
Series = set[tuple[str, tuple[tuple[str, str], ...], float]]


def series(status: ControllerStatus) -> Series:
    """Every series of the poll's snapshot but the ages (they follow the scrape's clock)."""
    assert status.snapshot is not None
    return {
        (family.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in snapshot_families("c", status.snapshot, STATE)
        for sample in family.samples
    } | {("unreadable", (), status.unreadable_records), ("cut", (), status.labels_truncated)}


Wrap = Callable[[ControllerReader], ControllerReader]


class Pair:
    """An incremental poller and a full one, on one simulator and one clock."""

    def __init__(
        self,
        simulator: SimulatedController,
        clock: ManualClock,
        wrap: Wrap = lambda reader: reader,
        full_scan_interval: float = 3600,
        scans: BackupScanFactory = StoreScan,
    ) -> None:
        config = controller_config("c", simulator)
        poll = PollConfig(
            timeout_seconds=10, page_size=500, full_scan_interval_seconds=full_scan_interval
        )
        self.simulator = simulator
        self.clock = clock
        self.incremental = ControllerPoller(
            config,
            poll,
            client_factory=lambda *a: wrap(fast_retries(*a)),
            clock=clock,
            scans=scans,
        )
        self.full = ControllerPoller(
            config,
            replace(poll, full_scan_interval_seconds=0),
            client_factory=fast_retries,
            clock=clock,
        )
        self.kinds: list[str] = []

    def poll(self) -> ControllerStatus:
        """One poll of each, compared."""
        status = self.incremental.poll_once()
        truth = self.full.poll_once()
        assert status.up, status.last_error
        assert truth.up, truth.last_error
        assert status.poll_kind in ("full", "incremental")
        assert series(status) == series(truth), f"poll {len(self.kinds)} ({status.poll_kind})"
        self.kinds.append(status.poll_kind)
        return status

    def run(self, polls: int, every: float = FIVE_MINUTES) -> ControllerStatus:
        status = self.poll()
        for _ in range(polls - 1):
            self.clock.advance(every)
            status = self.poll()
        return status

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.incremental.close()
        self.full.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def start(clock: ManualClock) -> Iterator[Callable[..., SimulatedController]]:
    started: list[SimulatedController] = []

    def start(churn: Churn | None = None, vms: int = 120, **kwargs: Any) -> SimulatedController:
        # Tokens live as long as the test: the clock moves hours at a time.
        simulator = SimulatedController(
            FederationSpec(vms=vms, **kwargs),
            clock=clock,
            churn=churn,
            idle_timeout_seconds=10**9,
            absolute_timeout_seconds=10**9,
        ).start()
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        simulator.stop()


def test_a_day_of_default_churn_stays_exact_at_every_poll_and_reads_a_fraction(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    simulator = start(Churn.for_vms(2000), vms=300)
    clock.advance(EXPIRING)
    with Pair(simulator, clock) as pair:
        last = pair.run(48)
    assert pair.kinds[0] == "full"
    assert pair.kinds.count("incremental") >= 40  # a full scan an hour (and fallbacks)
    changes = simulator.changes()
    for kind in ("scheduled", "protected", "expired", "replicated"):
        assert changes.get(kind, 0) > 0, changes
    full = pair.full.status.poll_objects["backups"]
    assert last.poll_kind == "incremental"
    assert last.poll_objects["backups"] < full / 4


def test_full_scans_in_the_decoding_worker_hand_their_store_to_the_next_polls(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    worker = DecodingWorker()
    with Pair(
        start(Churn.for_vms(1000)), clock, full_scan_interval=1200, scans=worker.open_scan
    ) as pair:
        pair.run(10)
        # The full scans were decoded there, each by a child stopped once it was over (its
        # memory given back); the incremental polls' counts share the next one.
        assert pair.kinds.count("full") == 3
        assert pair.kinds.count("incremental") == 7
        assert pair.kinds[-1] == "incremental"
        assert worker.starts == 4
        assert worker.pid is not None
        worker.close()


@pytest.mark.parametrize("rate", sorted(Churn.RATES))
def test_each_kind_of_change_alone_stays_exact(
    start: Callable[..., SimulatedController], clock: ManualClock, rate: str
) -> None:
    simulator = start(STILL.with_rates({rate: 40.0}))
    with Pair(simulator, clock) as pair:
        pair.run(14)
    assert simulator.changes().get(Churn.RATES[rate], 0) > 0


def test_scheduled_backups_and_their_states_alone_are_read_incrementally(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    simulator = start(Churn.quiet(), vms=200)
    with Pair(simulator, clock) as pair:
        last = pair.run(11)
    # No event the counts would notice: no full scan after the first.
    assert pair.kinds == ["full"] + ["incremental"] * 10
    assert last.full_scans["start"] == 1
    assert sum(last.full_scans.values()) == 1


def test_a_full_scan_runs_every_interval_and_says_why(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    with Pair(start(Churn.quiet()), clock, full_scan_interval=1200) as pair:
        last = pair.run(9)
    assert pair.kinds == ["full", "incremental", "incremental", "incremental"] * 2 + ["full"]
    assert last.full_scans["schedule"] == 2


def test_a_failed_poll_and_a_reload_are_followed_by_a_full_scan_that_says_why(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    simulator = start(Churn.quiet())
    with Pair(simulator, clock) as pair:
        pair.run(2)
        simulator.faults.fail_next(20, status=400)  # no retry: the poll fails
        clock.advance(FIVE_MINUTES)
        failed = pair.incremental.poll_once()
        assert not failed.up
        simulator.faults.clear()
        after_failure = pair.poll()
        clock.advance(FIVE_MINUTES)
        replaced = pair.incremental
        pair.incremental = ControllerPoller(  # a reload that changed the settings
            replaced.controller,
            replace(replaced.poll_config, page_size=400),
            client_factory=fast_retries,
            clock=clock,
            previous=replaced.status,
        )
        replaced.close()
        after_reload = pair.poll()
        clock.advance(FIVE_MINUTES)
        last = pair.poll()
    assert after_failure.poll_kind == after_reload.poll_kind == "full"
    assert last.poll_kind == "incremental"
    assert {reason: n for reason, n in last.full_scans.items() if n} == {
        "start": 1,
        "failure": 1,
        "reload": 1,
    }


# -- what the counts must catch: changes planted behind the exporter's back ----------------------


def frozen(simulator: SimulatedController) -> list[dict[str, object]]:
    """The simulator's federation, served as plain records from now on (they no longer live),
    its inventory kept."""
    backups = simulator.backups()
    inventory = {
        "virtual_machines": simulator.virtual_machines(),
        "policies": simulator.policies(),
        "hosts": simulator.hosts(),
        "omnistack_clusters": simulator.clusters(),
    }
    report = simulator.schedule_report()
    simulator.set_backups(backups)
    simulator.set_inventory(schedule_report=report, **inventory)
    return backups


def oldest(backups: list[dict[str, object]], **fields: object) -> dict[str, object]:
    """The oldest backup with these values."""
    matching = [b for b in backups if all(b.get(k) == v for k, v in fields.items())]
    return min(matching, key=lambda b: str(b["created_at"]))


def plant(
    simulator: SimulatedController,
    backups: list[dict[str, object]],
    change: Callable[[list[dict[str, object]]], None],
) -> None:
    change(backups)
    simulator.set_backups(backups)  # the inventory stays (set_inventory's)


def repaired(
    pair: Pair,
    backups: list[dict[str, object]],
    change: Callable[[list[dict[str, object]]], None],
    caplog: pytest.LogCaptureFixture,
) -> ControllerStatus:
    """Two polls, then ``change`` behind the exporter's back: the next poll stays incremental,
    finds the change by its counts and reads its span again (the pair compares it)."""
    with pair:
        pair.run(2)
        plant(pair.simulator, backups, change)
        pair.clock.advance(FIVE_MINUTES)
        with caplog.at_level(logging.DEBUG, logger="exporter.incremental"):
            status = pair.poll()
    assert status.poll_kind == "incremental"
    assert any("read the backups created between" in r.getMessage() for r in caplog.records)
    return status


PLANTED: dict[str, Callable[[list[dict[str, object]]], None]] = {
    "an old backup's state": lambda b: oldest(b, state="PROTECTED").update(state="DELETED"),
    "an old backup deleted": lambda b: b.remove(oldest(b, state="PROTECTED")),
    "an old backup locked to NA": lambda b: oldest(b, state="PROTECTED").update(
        expiration_time="NA"
    ),
    "an old backup on another cluster": lambda b: oldest(b, state="PROTECTED").update(
        omnistack_cluster_name="elsewhere"
    ),
    "a backup added with an old time": lambda b: b.append(
        {**oldest(b, state="PROTECTED"), "id": "0e4f2d5c-0000-4000-8000-00000000beef"}
    ),
}


@pytest.mark.parametrize("what", sorted(PLANTED))
def test_a_change_the_counts_see_is_found_and_read_again(
    start: Callable[..., SimulatedController],
    clock: ManualClock,
    what: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    simulator = start()
    backups = frozen(simulator)
    status = repaired(Pair(simulator, clock), backups, PLANTED[what], caplog)
    assert status.full_scans["mismatch"] == 0


def test_a_change_among_seconds_that_are_all_held_is_found_too(
    start: Callable[..., SimulatedController],
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A large federation fills every second for minutes: the halving splits at seconds the
    store holds backups of (the simulator's bounds are inclusive, as the split assumes)."""
    simulator = start(vms=200)
    backups = frozen(simulator)
    old = sorted(backups, key=lambda b: str(b["created_at"]))[: len(backups) // 2]
    base = _seconds(str(old[0]["created_at"]))
    for position, backup in enumerate(old):  # three a second, for as long as they last
        backup["created_at"] = timestamp(base + position // 3)
    plant(simulator, backups, lambda b: None)
    repaired(Pair(simulator, clock), backups, lambda b: b.remove(old[len(old) // 3]), caplog)


def test_changes_that_cannot_be_found_fall_back_to_a_full_scan_logged_once(
    start: Callable[..., SimulatedController],
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    simulator = start()
    backups = frozen(simulator)
    undated = {**oldest(backups, state="PROTECTED"), "id": "0e4f2d5c-0000-4000-8000-0000000000aa"}
    plant(simulator, backups, lambda b: b.append({**undated, "created_at": "NA"}))
    with Pair(simulator, clock) as pair:
        pair.run(2)
        # Gone: among the backups without a creation time, where no time bound looks.
        plant(simulator, backups, lambda b: b.remove(b[-1]))
        clock.advance(FIVE_MINUTES)
        with caplog.at_level(logging.WARNING, logger="exporter.poller"):
            status = pair.poll()
        clock.advance(FIVE_MINUTES)
        after = pair.poll()
    assert status.poll_kind == "full"
    assert status.full_scans["mismatch"] == 1
    said = [r.getMessage() for r in caplog.records if "does not add up" in r.getMessage()]
    assert len(said) == 1
    assert "without a creation time" in said[0]
    assert after.poll_kind == "incremental"


def test_more_changes_than_repairs_fall_back_to_a_full_scan(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    simulator = start()
    backups = frozen(simulator)
    with Pair(simulator, clock) as pair:
        pair.run(2)
        protected = sorted(
            (b for b in backups if b["state"] == "PROTECTED"), key=lambda b: str(b["created_at"])
        )
        step = len(protected) // (MAX_REPAIRS + 2)
        for gone in protected[: step * (MAX_REPAIRS + 1) : step]:
            backups.remove(gone)  # one in each part of the span: a repair each
        plant(simulator, backups, lambda b: None)
        clock.advance(FIVE_MINUTES)
        status = pair.poll()
    assert status.poll_kind == "full"
    assert status.full_scans["mismatch"] == 1


def test_the_residual_two_changes_that_cancel_out_live_until_the_next_full_scan(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    """The documented limit (docs/design.md): one old backup deleted and another added with an
    old creation time, same state and destination, between two polls. The counts cannot see
    it; the scheduled full scan puts it right."""
    simulator = start()
    backups = frozen(simulator)
    with Pair(simulator, clock, full_scan_interval=900) as pair:
        pair.run(2)
        gone = oldest(backups, state="PROTECTED")
        twin = {**gone, "id": "0e4f2d5c-0000-4000-8000-00000000beef", "size": 1}
        plant(simulator, backups, lambda b: b[b.index(gone)].update(twin))
        clock.advance(FIVE_MINUTES)
        missed = pair.incremental.poll_once()
        truth = pair.full.poll_once()
        assert missed.poll_kind == "incremental"
        assert series(missed) != series(truth)  # the size differs; no count does
        clock.advance(FIVE_MINUTES)
        assert pair.poll().poll_kind == "full"  # 900 s after the last one


def test_a_backup_listed_past_its_expiration_stays_until_it_is_gone(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    simulator = start()
    backups = frozen(simulator)
    with Pair(simulator, clock) as pair:
        pair.run(1)
        late = oldest(backups, state="PROTECTED")
        # Expired an hour ago, still listed: read again at every poll, never dropped.
        late["expiration_time"] = timestamp(clock() - 3600)
        plant(simulator, backups, lambda b: None)
        pair.full.poll_once()
        for _ in range(2):
            clock.advance(FIVE_MINUTES)
            assert pair.poll().poll_kind in ("full", "incremental")
        clock.advance(FIVE_MINUTES)
        plant(simulator, backups, lambda b: b.remove(late))
        status = pair.poll()
    assert status.poll_kind == "incremental"
    assert pair.kinds[-3:] == ["incremental"] * 3


# -- what the API does not document: each way it may go, exact either way ------------------------


class Exclusive(ReaderWrapper):
    """A controller whose time bounds exclude their own second (the simulator includes it)."""

    def read(self, collection: Collection, pages: Any) -> None:
        self.inner.read(shifted(collection), pages)

    def count(self, collection: Collection) -> int:
        return self.inner.count(shifted(collection))


def shifted(collection: Collection) -> Collection:
    filters = []
    for name, value in collection.filters:
        if name in ("created_after", "expires_after"):
            value = timestamp(_seconds(value) + 1)
        elif name in ("created_before", "expires_before"):
            value = timestamp(_seconds(value) - 1)
        filters.append((name, value))
    return replace(collection, filters=tuple(filters))


def _seconds(value: str) -> float:
    seconds = seconds_of(value)
    assert seconds is not None
    return seconds


class CountsNeverExpiring(ReaderWrapper):
    """A controller whose ``expires_after`` also counts the "NA" expirations."""

    def count(self, collection: Collection) -> int:
        if any(name == "expires_after" for name, _ in collection.filters):
            return self.inner.count(replace(collection, filters=()))
        return self.inner.count(collection)


def test_exclusive_time_bounds_stay_exact(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    with Pair(start(Churn.for_vms(2000), vms=120), clock, wrap=Exclusive) as pair:
        pair.run(14)
    assert pair.kinds.count("incremental") >= 8


def test_never_expiring_backups_in_the_expiry_count_fall_back_every_poll(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    with Pair(
        start(Churn.quiet(), vms=120, manual_share=0.2), clock, wrap=CountsNeverExpiring
    ) as pair:
        last = pair.run(4)
    assert pair.kinds == ["full"] * 4
    assert last.full_scans["mismatch"] == 3


def test_a_late_expiry_is_read_again_until_the_backup_is_gone(
    start: Callable[..., SimulatedController], clock: ManualClock
) -> None:
    simulator = start(replace(Churn.quiet(), expiry_lag_seconds=3 * 3600), vms=200)
    clock.advance(EXPIRING)
    with Pair(simulator, clock) as pair:
        pair.run(24)
    assert simulator.changes().get("expired", 0) > 0
    assert pair.kinds.count("incremental") >= 20


# -- random sequences of changes -----------------------------------------------------------------

RATES = st.fixed_dictionaries({name: st.sampled_from([0.0, 5.0, 60.0]) for name in Churn.RATES})


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rates=RATES,
    steps=st.lists(st.integers(min_value=0, max_value=3 * 3600), min_size=2, max_size=6),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_random_sequences_of_changes_stay_exact(
    start: Callable[..., SimulatedController],
    clock: ManualClock,
    rates: dict[str, float],
    steps: list[int],
    seed: int,
) -> None:
    simulator = start(Churn().with_rates(rates), vms=60, seed=seed)
    with Pair(simulator, clock) as pair:
        pair.poll()
        for step in steps:
            clock.advance(step)
            pair.poll()
        simulator.stop()


def test_the_window_starts_at_a_second_without_a_backup_held() -> None:
    store = BackupStore()
    now = 1_700_000_000.0
    # The newest held less the margin (300 s) is 1200 s back, then past the seconds held there.
    for offset in (900, 1200, 1201, 1202, 1800):
        store.append(
            read_record(
                {
                    "id": f"b{offset}",
                    "state": "PROTECTED",
                    "created_at": timestamp(now - offset),
                }
            )
        )
    assert window_start(store, now) == now - 1203
