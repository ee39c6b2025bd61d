"""``exposition.TextWriter`` writes exactly what prometheus_client would write.

The fast writer exists for speed only (bench/): every case here compares its bytes with
``generate_latest`` over the same collector, so the two can never drift apart silently.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from exporter import exposition as exposition_module
from exporter.collector import BackupCollector, ExporterState
from exporter.exposition import Exposition, TextWriter
from exporter.model import (
    REASONS,
    STATES,
    BackupSnapshot,
    ClusterSummary,
    ControllerSnapshot,
    ControllerStatus,
    ScheduleReport,
    VMBackups,
)
from exporter.simulator import FederationSpec, generate_backups, generate_federation
from tests.conftest import wait_until
from tests.snapshots import aggregate, host_record, judged, policy_record, rule, vm_record

NOW = 1_709_500_000.25
STATE = ExporterState(interval_seconds=300, stale_after_seconds=1800)


def status(name: str, snapshot: ControllerSnapshot | None, **changes: object) -> ControllerStatus:
    base = ControllerStatus(
        name=name,
        url="https://10.0.0.10",
        polls=2,
        up=True,
        last_poll_finished=NOW - 30,
        last_duration=1.25,
        last_success=NOW - 30,
        errors={**dict.fromkeys(REASONS, 0), "http": 4},
        logins=1,
        snapshot=snapshot,
        concurrency=3,
        page_size=3000,
        unreadable_records=1,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


POLICIES = [policy_record("p1", "Hourly local", rule(60))]
HOSTS = [host_record("h1", "esx-01", "Boston DC")]


def federation(report: ScheduleReport | None = None, **spec: object) -> ControllerSnapshot:
    """A generated federation as the simulator serves it: its backups, live VMs, policies
    and hosts; ``report`` as its schedule report."""
    generated = generate_federation(FederationSpec(**spec), NOW - 600)  # type: ignore[arg-type]
    backups = generate_backups(FederationSpec(**spec), NOW - 600)  # type: ignore[arg-type]
    return judged(
        aggregate(backups),
        now=NOW - 30,
        vms=[vm for vm in generated.virtual_machines if vm["state"] == "ALIVE"],
        policies=generated.policies,
        hosts=generated.hosts,
        report=report,
    )


def snapshot_of(backups: BackupSnapshot, vm_names: dict[str, str]) -> ControllerSnapshot:
    """``backups``, with a live VM of that name on an hourly policy for each id."""
    vms = [vm_record(vm_id, name, "p1") for vm_id, name in vm_names.items()]
    return judged(backups, now=NOW - 30, vms=vms, policies=POLICIES, hosts=HOSTS)


def held(vm_id: str, newest: float | None) -> VMBackups:
    return VMBackups(vm_id, {} if newest is None else {"Boston DC": newest}, None, "PROTECTED",
                     newest or 0.0, "Boston DC")  # fmt: skip


def assert_same_text(
    statuses: Sequence[ControllerStatus], state: ExporterState = STATE, now: float = NOW
) -> str:
    collector = BackupCollector(lambda: statuses, lambda: state, clock=lambda: now)
    expected = generate_latest(collector).decode()
    writer = TextWriter(collector)
    written = writer.text()
    assert written == expected
    assert writer.text() == expected  # and again, from the cache
    return written


def test_a_generated_federation_is_written_as_prometheus_client_writes_it() -> None:
    # Non-ASCII names, a quote and a backslash in a VM name, external stores, removed VMs,
    # VMs without a PROTECTED backup, every state.
    report = ScheduleReport(9120, 24000.5, None, 5e5)
    snapshot = federation(report)
    assert {p.status for p in snapshot.protection} >= {"ok", "overdue", "new", "not_scheduled"}
    text = assert_same_text([status("boston", snapshot)])
    assert 'vm="quote\\"back\\\\slash-vm"' in text
    assert "simplivity_federation_daily_backups_limit{" in text
    assert "simplivity_federation_retained_backups_projected{" not in text


def test_several_controllers_stale_ones_missing_ones_and_no_per_vm() -> None:
    fresh = federation(vms=30, seed=2)
    statuses = [
        status("boston", federation(vms=20)),
        status("chicago", fresh),
        status("denver", fresh, last_success=NOW - 4000),  # stale: health series only
        status("edmonton", None, up=False, last_success=None),  # never polled successfully
    ]
    assert_same_text(statuses)
    assert_same_text(statuses, replace(STATE, per_vm=False, shard_count=3, shard_index=2))
    assert_same_text([])
    once = assert_same_text(statuses, replace(STATE, once=True))
    assert "_age_seconds" not in once  # --once: no ages (its output is read later)
    excluded = frozenset(
        {"simplivity_vm_info", "simplivity_backups_orphaned", "simplivity_poll_errors_total"}
    )
    for state in (STATE, replace(STATE, once=True)):
        text = assert_same_text(statuses, replace(state, exclude=excluded))
        assert "simplivity_vm_info" not in text
        assert "simplivity_backups_orphaned{" not in text
        assert "simplivity_poll_errors" not in text
        assert "simplivity_backups_orphaned_size_bytes{" in text


def test_a_changed_metrics_exclude_rewrites_the_written_snapshot() -> None:
    """A reload may change metrics.exclude while the snapshot stays: the next text follows."""
    statuses = [status("boston", federation(vms=20))]
    states = [
        STATE,
        replace(STATE, exclude=frozenset({"simplivity_vm_destination_restore_points"})),
    ]
    collector = BackupCollector(lambda: statuses, lambda: states[0], clock=lambda: NOW)
    writer = TextWriter(collector)
    assert "simplivity_vm_destination_restore_points{" in writer.text()
    states.reverse()
    assert writer.text() == generate_latest(collector).decode()
    assert "simplivity_vm_destination_restore_points" not in writer.text()


def test_numbers_that_prometheus_writes_with_exponents() -> None:
    counts = {**dict.fromkeys(STATES, 0), "PROTECTED": 12_345_678, "OTHER": 1}
    sizes = {**dict.fromkeys(STATES, 0), "PROTECTED": 2**62, "OTHER": 5}
    times = {"v1": NOW - 0.5, "v2": NOW + 30, "v3": NOW - 1_000_000, "v4": NOW - 999_999.75,
             "v5": None, "v6": 1.5}  # fmt: skip
    backups = BackupSnapshot(
        clusters=(ClusterSummary('Zürich "Ost"\\2\nx', counts, sizes, NOW - 2_000_000.5),),
        vms=tuple(held(vm_id, newest) for vm_id, newest in times.items()),
        backups_seen=12_345_679,
    )
    names = {"v1": "just-now", "v2": "in-the-future", "v3": "a-million-seconds",
             "v4": "almost-a-million", "v5": "never", "v6": "old"}  # fmt: skip
    assert_same_text([status('quote"controller', snapshot_of(backups, names))])


def test_a_new_snapshot_replaces_the_written_one() -> None:
    statuses = [status("boston", federation(vms=10))]
    collector = BackupCollector(lambda: statuses, lambda: STATE, clock=lambda: NOW)
    writer = TextWriter(collector)
    first = writer.text()
    statuses[0] = status("boston", federation(vms=12, seed=7))
    assert writer.text() == generate_latest(collector).decode() != first


text_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
times = st.one_of(st.none(), st.floats(min_value=0, max_value=NOW + 10**7))


@settings(max_examples=60, deadline=None)
@given(
    controller=text_values,
    clusters=st.lists(st.tuples(text_values, st.integers(0, 2**63 - 1), times), max_size=3),
    vms=st.lists(st.tuples(text_values, text_values, times), max_size=6),
    now=st.floats(min_value=NOW - 10**6, max_value=NOW + 10**8),
)
def test_any_names_and_numbers(
    controller: str,
    clusters: list[tuple[str, int, float | None]],
    vms: list[tuple[str, str, float | None]],
    now: float,
) -> None:
    backups = BackupSnapshot(
        clusters=tuple(
            ClusterSummary(
                name,
                {**dict.fromkeys(STATES, 0), "PROTECTED": size % 1000},
                {**dict.fromkeys(STATES, 0), "PROTECTED": size},
                newest,
            )
            for name, size, newest in clusters
        ),
        vms=tuple(held(vm_id, newest) for vm_id, _, newest in vms),
        backups_seen=len(clusters),
    )
    snapshot = snapshot_of(backups, {vm_id: name for vm_id, name, _ in vms})
    assert_same_text([status(controller, snapshot, last_success=now)], now=now)


def test_the_exposition_with_the_fast_writer_serves_the_same_bytes() -> None:
    statuses = [status("boston", federation())]
    collector = BackupCollector(lambda: statuses, lambda: STATE, clock=lambda: NOW)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    slow = Exposition(registry, lambda: 0, clock=lambda: NOW)
    fast = Exposition(
        CollectorRegistry(auto_describe=False), lambda: 0, clock=lambda: NOW, backups=collector
    )
    assert fast.render() == slow.render()
    assert one_gzip_member(fast.render(gzipped=True)) == slow.render()


def one_gzip_member(body: bytes) -> bytes:
    """What ``body`` holds, read as a single gzip member (as strict clients read it), checked
    against its CRC-32 and length (zlib checks the trailer)."""
    reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = reader.decompress(body)
    assert reader.eof, "the gzip member does not end"
    assert reader.unused_data == b"", "more than one gzip member"
    return data


def test_the_gzip_is_one_member_whose_unchanged_parts_are_compressed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compressed: list[int] = []
    deflate = exposition_module._deflate

    def counting(data: bytes) -> bytes:
        compressed.append(len(data))
        return deflate(data)

    monkeypatch.setattr(exposition_module, "_deflate", counting)
    now = [NOW]
    statuses = [status("boston", federation(vms=2000))]
    collector = BackupCollector(lambda: statuses, lambda: STATE, clock=lambda: now[0])
    exposition = Exposition(
        CollectorRegistry(auto_describe=False), lambda: 0, clock=lambda: now[0], backups=collector
    )
    first = exposition.render(gzipped=True)
    assert one_gzip_member(first) == exposition.render()
    first_bytes = sum(compressed)
    compressed.clear()
    now[0] += 90  # a later second: the ages change, the other lines are those of the snapshot
    later = exposition.render(gzipped=True)
    # Only the ages and the few series written at every render were compressed again.
    assert 0 < sum(compressed) < first_bytes / 3
    assert one_gzip_member(later) == exposition.render() != one_gzip_member(first)
    assert gzip.decompress(later) == exposition.render()


class HeldExposition:
    """An exposition whose writing of any text after the first waits until ``go_on`` is set."""

    def __init__(self) -> None:
        self.now = NOW
        self.generation = 0
        self.writing = threading.Event()
        self.go_on = threading.Event()
        self.statuses = [status("boston", federation(vms=10))]
        collector = BackupCollector(self._read_statuses, lambda: STATE, clock=lambda: self.now)
        self.exposition = Exposition(
            CollectorRegistry(auto_describe=False),
            lambda: self.generation,
            clock=lambda: self.now,
            backups=collector,
        )
        self.first = self.exposition.render()

    def _read_statuses(self) -> list[ControllerStatus]:
        if self.now > NOW or self.generation:
            self.writing.set()
            self.go_on.wait(10)
        return self.statuses


def test_while_one_scrape_writes_new_snapshots_the_others_get_the_last_text() -> None:
    held = HeldExposition()
    held.statuses[0] = status("boston", federation(vms=11))
    held.generation = 1
    results: list[bytes] = []
    writer = threading.Thread(target=lambda: results.append(held.exposition.render()))
    writer.start()
    assert held.writing.wait(10)
    assert held.exposition.render() == held.first  # served at once, not after the writer
    held.go_on.set()
    writer.join(10)
    assert results
    assert results[0] != held.first
    assert held.exposition.render() == results[0]


def test_the_next_second_is_written_in_the_background_no_scrape_waits_for_it() -> None:
    held = HeldExposition()
    held.now = NOW + 1
    # The text of the second before is served at once, while the new one is being written.
    assert held.exposition.render() == held.first
    assert held.writing.wait(10)
    assert held.exposition.render() == held.first
    held.go_on.set()
    newer = wait_until(lambda: (text := held.exposition.render()) != held.first and text)
    assert b"simplivity_backup_newest_age_seconds" in newer


def test_a_text_more_than_a_second_behind_is_never_served() -> None:
    held = HeldExposition()
    held.go_on.set()
    held.now = NOW + 2
    later = held.exposition.render()  # written before answering
    assert later != held.first
    ages = [
        [
            float(line.rsplit(" ", 1)[1])
            for line in text.decode().splitlines()
            if line.startswith("simplivity_backup_newest_age_seconds{")
        ]
        for text in (held.first, later)
    ]
    assert ages[0]
    assert [b - a for a, b in zip(*ages, strict=True)] == [2.0] * len(ages[0])
