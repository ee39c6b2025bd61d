"""The ``/metrics`` text: each snapshot written once by prometheus_client's writer, several
controllers merged under one HELP and TYPE per family, the ages at each second, and the
caching that keeps scrapes from waiting for any of it.
"""

from __future__ import annotations

import gc
import gzip
import sys
import threading
import zlib
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter import exposition as exposition_module
from exporter.collector import BackupCollector, ExporterState, snapshot_families
from exporter.exposition import Deflated, Exposition, PlainText, TextWriter
from exporter.model import (
    BackupSnapshot,
    ControllerSnapshot,
    ControllerStatus,
    ScheduleReport,
    VMBackups,
)
from exporter.simulator import FederationSpec, generate_backups, generate_federation
from tests.conftest import wait_until
from tests.snapshots import (
    aggregate,
    host_record,
    judged,
    policy_record,
    polled,
    rendered,
    rule,
    vm_backups,
    vm_record,
)

NOW = 1_709_500_000.25
STATE = ExporterState(interval_seconds=300, stale_after_seconds=1800)


def status(name: str, snapshot: ControllerSnapshot | None, **changes: object) -> ControllerStatus:
    return polled(name, snapshot, NOW - 30, **changes)


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
    return vm_backups(vm_id, {} if newest is None else {"Boston DC": newest}, None, "PROTECTED",
                     newest or 0.0, "Boston DC")  # fmt: skip


def writer_of(statuses: Sequence[ControllerStatus], state: ExporterState = STATE) -> TextWriter:
    return TextWriter(BackupCollector(lambda: statuses, lambda: state, clock=lambda: NOW))


def headers(text: str) -> list[str]:
    return [line.split(" ", 3)[2] for line in text.splitlines() if line.startswith("# HELP ")]


def test_several_controllers_share_each_familys_help_and_type() -> None:
    """Each family's HELP and TYPE once in the whole text, every fresh controller's series
    under them: what Prometheus and promtool require of an exposition."""
    fresh = federation(vms=30, seed=2)
    statuses = [
        status("boston", federation(vms=20)),
        status("chicago", fresh),
        status("denver", fresh, last_success=NOW - 4000),  # stale: health series only
        status("edmonton", None, up=False, last_success=None),  # never polled successfully
    ]
    for state in (STATE, replace(STATE, per_vm=False), replace(STATE, once=True)):
        text = writer_of(statuses, state).text()
        names = headers(text)
        assert len(names) == len(set(names)), "a family's HELP written twice"
        families = list(text_string_to_metric_families(text))
        assert len(families) == len(names)
        controllers = {
            family.name: {sample.labels.get("controller") for sample in family.samples}
            for family in families
        }
        assert controllers["simplivity_backups"] == {"boston", "chicago"}
        assert controllers["simplivity_up"] == {"boston", "chicago", "denver", "edmonton"}
        assert ("simplivity_vm_info" in controllers) == state.per_vm
        if state.per_vm and not state.once:
            assert controllers["simplivity_vm_backup_newest_age_seconds"] == {"boston", "chicago"}
        assert not state.once or "_age_seconds" not in text  # --once: no ages
    excluded = frozenset(
        {"simplivity_vm_info", "simplivity_backups_orphaned", "simplivity_poll_errors_total"}
    )
    for state in (STATE, replace(STATE, once=True)):
        text = writer_of(statuses, replace(state, exclude=excluded)).text()
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
    assert "simplivity_vm_destination_restore_points" not in writer.text()
    assert writer.text() == writer_of(statuses, states[0]).text()


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The controllers whose snapshot's series are written, in order, from now on."""
    controllers: list[str] = []

    def counting(
        controller: str, snapshot: ControllerSnapshot, state: ExporterState, **batches: int
    ) -> object:
        controllers.append(controller)
        return snapshot_families(controller, snapshot, state, **batches)

    monkeypatch.setattr(exposition_module, "snapshot_families", counting)
    return controllers


def test_a_snapshot_is_written_once_not_at_every_render(written: list[str]) -> None:
    interval = sys.getswitchinterval()
    now = [NOW]
    statuses = [status("boston", federation(vms=10)), status("chicago", federation(vms=5))]
    state = [STATE]
    writer = TextWriter(BackupCollector(lambda: statuses, lambda: state[0], clock=lambda: now[0]))
    first = writer.text()
    now[0] += 60  # a minute later: only the ages differ
    later = writer.text()
    assert sorted(written) == ["boston", "chicago"]
    assert later != first
    assert without_ages(later) == without_ages(first)
    statuses[1] = status("chicago", federation(vms=12, seed=7))  # chicago's next poll
    assert writer.text() == later  # no render writes it: until its poll has, the last shows
    writer.write_snapshots()  # what its poll's thread does
    assert sorted(written) == ["boston", "chicago", "chicago"]
    assert without_ages(writer.text()) != without_ages(later)
    state[0] = replace(STATE, per_vm=False)  # a reload that changes what is shown
    assert "simplivity_vm_info" not in writer.text()
    assert len(written) == 5
    assert gc.isenabled()  # off only while snapshots were written
    assert sys.getswitchinterval() == interval  # shortened only meanwhile too


def without_ages(text: str) -> list[str]:
    return [line for line in text.splitlines() if "_age_seconds{" not in line]


def test_a_new_snapshot_replaces_the_written_one() -> None:
    statuses = [status("boston", federation(vms=10))]
    writer = writer_of(statuses)
    first = writer.text()
    statuses[0] = status("boston", federation(vms=12, seed=7))
    writer.write_snapshots()
    again = writer_of(statuses).text()
    assert writer.text() == again != first


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
    first = rendered(exposition, gzipped=True)
    assert one_gzip_member(first) == rendered(exposition)
    first_bytes = sum(compressed)
    compressed.clear()
    now[0] += 90  # a later second: the ages change, the other lines are those of the snapshot
    later = rendered(exposition, gzipped=True)
    # Only the ages and the few series written at every render were compressed again.
    assert 0 < sum(compressed) < first_bytes / 3
    assert one_gzip_member(later) == rendered(exposition) != one_gzip_member(first)
    assert gzip.decompress(later) == rendered(exposition)


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_the_crc_of_a_text_followed_by_a_compressed_piece(before: bytes, piece: bytes) -> None:
    """The gzip trailer's CRC-32 is made of each compressed piece's own, never of its text."""
    combined = exposition_module._crc_of_both(zlib.crc32(before), Deflated.of(piece))
    assert combined == zlib.crc32(before + piece)


@given(st.lists(st.sampled_from([b"simplivity_up 1\n", b"x", b'{vm="a"} 2\n']), max_size=400))
def test_a_compressed_piece_inflates_to_its_text_in_slices_of_any_size(parts: list[bytes]) -> None:
    text = b"".join(parts)
    piece = Deflated.of(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exposition_module, "_INFLATED_BYTES", 7)
        slices = list(piece.inflated())
    assert b"".join(slices) == text
    assert max(map(len, slices)) <= 7
    assert (piece.size, piece.crc) == (len(text), zlib.crc32(text))


def test_a_plain_scrape_inflates_the_series_a_slice_at_a_time() -> None:
    """A snapshot's series are held compressed: a plain answer inflates them as it is sent, so
    that no scrape holds the whole text; it is the text the gzip holds, byte for byte."""
    statuses = [status("boston", federation(vms=2000))]
    collector = BackupCollector(lambda: statuses, lambda: STATE, clock=lambda: NOW)
    exposition = Exposition(
        CollectorRegistry(auto_describe=False), lambda: 0, clock=lambda: NOW, backups=collector
    )
    plain = exposition.render()
    assert isinstance(plain, PlainText)
    compressed = [piece for piece in plain.pieces if isinstance(piece, Deflated)]
    assert sum(piece.size for piece in compressed) > len(plain) / 2  # most of the text
    assert max(piece.size for piece in compressed) > exposition_module._INFLATED_BYTES
    for piece in compressed:
        slices = list(piece.inflated())
        assert max(map(len, slices)) <= exposition_module._INFLATED_BYTES
        assert len(b"".join(slices)) == piece.size
    text = b"".join(plain)
    assert len(text) == len(plain)
    assert one_gzip_member(rendered(exposition, gzipped=True)) == text
    # Each time it is sent, made anew.
    assert b"".join(plain) == text


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
        self.first = rendered(self.exposition)

    def _read_statuses(self) -> list[ControllerStatus]:
        if self.now > NOW or self.generation:
            self.writing.set()
            self.go_on.wait(10)
        return self.statuses


def test_a_new_snapshot_is_written_by_its_poll_no_scrape_waits_for_it() -> None:
    """Writing a snapshot of thousands of VMs takes prometheus_client's writer a good part of
    a second: the poll's thread writes it, and the scrapes meanwhile get the last text."""
    held = HeldExposition()
    held.statuses[0] = status("boston", federation(vms=11))
    held.generation = 1
    assert rendered(held.exposition) == held.first  # served at once, not after a writer
    poll = threading.Thread(target=held.exposition.refresh)
    poll.start()
    assert held.writing.wait(10)
    assert rendered(held.exposition) == held.first
    held.go_on.set()
    poll.join(10)
    newer = rendered(held.exposition)
    snapshot = held.statuses[0].snapshot
    assert snapshot is not None
    assert vm_info_lines(newer) == len(snapshot.protection) != vm_info_lines(held.first)


def vm_info_lines(text: bytes) -> int:
    return sum(line.startswith("simplivity_vm_info{") for line in text.decode().splitlines())


def test_the_next_second_is_written_in_the_background_no_scrape_waits_for_it() -> None:
    held = HeldExposition()
    held.now = NOW + 1
    # The text of the second before is served at once, while the new one is being written.
    assert rendered(held.exposition) == held.first
    assert held.writing.wait(10)
    assert rendered(held.exposition) == held.first
    held.go_on.set()
    newer = wait_until(lambda: (text := rendered(held.exposition)) != held.first and text)
    assert b"simplivity_backup_newest_age_seconds" in newer


def test_a_text_more_than_a_second_behind_is_never_served() -> None:
    held = HeldExposition()
    held.go_on.set()
    held.now = NOW + 2
    later = rendered(held.exposition)  # written before answering
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


def test_the_first_poll_writes_the_text_before_any_scrape(written: list[str]) -> None:
    statuses = [status("boston", federation(vms=10))]
    collector = BackupCollector(lambda: statuses, lambda: STATE, clock=lambda: NOW)
    exposition = Exposition(
        CollectorRegistry(auto_describe=False), lambda: 1, clock=lambda: NOW, backups=collector
    )
    exposition.refresh()  # what the first poll does, in its thread
    assert written == ["boston"]
    assert b"simplivity_vm_info{" in rendered(exposition)
    assert written == ["boston"]  # the scrape found it written


def test_a_closed_exposition_serves_its_last_text_and_keeps_no_thread() -> None:
    """The background writer is one kept thread: ``close()`` (the exporter's shutdown) ends
    it, and a scrape after that is still served the last text, never an error."""
    held = HeldExposition()
    held.go_on.set()
    before = set(threading.enumerate())
    held.now = NOW + 1  # a new second: its text is written in the background
    rendered(held.exposition)
    second = wait_until(lambda: (text := rendered(held.exposition)) != held.first and text)
    started = set(threading.enumerate()) - before
    assert started
    assert all(thread.name.startswith("exposition") for thread in started)
    held.exposition.close()
    wait_until(lambda: not any(thread.is_alive() for thread in started))
    held.now = NOW + 2
    assert rendered(held.exposition) == second  # nothing to write it now: the last text


def test_vms_written_a_batch_at_a_time_give_the_same_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The samples of one batch of VMs live at once, not those of every VM: same text.
    statuses = [status("boston", federation(vms=10))]
    whole = TextWriter(BackupCollector(lambda: statuses, lambda: STATE, clock=lambda: NOW)).text()
    monkeypatch.setattr(exposition_module, "VMS_AT_ONCE", 3)
    batched = TextWriter(BackupCollector(lambda: statuses, lambda: STATE, clock=lambda: NOW))
    assert batched.text() == whole
    assert whole.count("simplivity_vm_info{") > 3  # more than one batch
