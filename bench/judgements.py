"""What issue 20's judgements cost in one poll: ``python -m bench.judgements [--vms 5000]``.

Issue 20 added application consistency, recovery depth and the backups nobody owns. Its target:
under 10% of a poll's CPU. A simulated federation (100,000 backups on 5,000 VMs by default) is
made in this process; its backups become the pages a scan gets (3,000 a page, as the simulator
writes them), and every step of a poll is timed in CPU seconds, the best of ``--repeat``, with
the cycle collector off (as the decoding worker and the snapshot's writer run), each with
issue 20's part and without it:

- **decode**: the pages decoded and each backup read into the store, as the decoding worker
  does, with the exporter's fields, without ``consistency_type``, and without
  ``expiration_time`` too (issue 20 asked for both; the incremental store reads
  ``expiration_time`` since issue 21, so its row is shown, and its share given, apart);
- **tally**: the store counted into the snapshot, by the :class:`~exporter.backups.Aggregator`
  and by :class:`_Before20`, the same count without issue 20's tallies;
- **hand over**: the snapshot pickled by the worker and read by the exporter, with each VM's
  tallies per destination (:class:`~exporter.model.HeldBackups`) and without;
- **judge**: every VM judged, and again with no rule asking for consistency, no recovery window
  and no orphan count;
- **families**: the snapshot's families built and written (1,000 VMs at a time, as the
  exporter does), and again without issue 20's series (``metrics.exclude`` of its families,
  and its per-VM series not built).

The whole poll's CPU is measured as ``./dev bench`` does (``--probes``: a ``--once`` poll in a
fresh process, :mod:`bench.probe`, its decoding worker's CPU included, against a
:mod:`bench.controller` of the same size; the median), and issue 20's share of it printed;
with the memory its tallies take in the snapshot (tracemalloc) and its share of the text.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import pickle
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from unittest import mock

from exporter import collector, inventory, model, textformat
from exporter.backups import FIELDS, NO_TIME, Aggregator, _ClusterTally, _optional, _VMTally
from exporter.collector import ExporterState, snapshot_families
from exporter.inventory import InventoryRead
from exporter.model import (
    BackupSnapshot,
    ClusterSummary,
    ControllerSnapshot,
)
from exporter.simulator import FederationSpec, SimulatedController
from exporter.store import StoreScan

#: Issue 20's families (``metrics.exclude`` takes them out of /metrics).
FAMILIES_20 = frozenset(
    name
    for name in model.FAMILY_NAMES
    for word in ("app_consistent", "restore_point", "recovery_window", "orphaned", "never_expir")
    if word in name
)
assert len(FAMILIES_20) == 8, sorted(FAMILIES_20)
#: The fields issue 20 added to a scan's ``fields=``.
FIELDS_20 = ("consistency_type", "expiration_time")
EXPIRATION = "decode: expiration_time (store's too)"
PAGE_SIZE = 3000
#: The exporter writes the per-VM families so many VMs at a time (exporter.app).
VMS_AT_ONCE = 1000


class _Before20(Aggregator):
    """The count as it is without issue 20: per VM and destination only the newest PROTECTED
    backup (no restore points, oldest, consistency, size), no never-expiring or VM-less tally.
    For this benchmark only: the reference that issue 20's tallies are measured against."""

    def count(
        self,
        state: str,
        created: float,
        size: int,
        cluster_name: str,
        vm_id: str,
        consistency: int,
        never_expires: bool,
        cut: bool = False,
    ) -> None:
        tally = self._clusters.get(cluster_name)
        if tally is None:
            tally = self._clusters[cluster_name] = _ClusterTally(cluster_name)
        if cut:
            self._cut.add(cluster_name)
        tally.counts[state] = tally.counts.get(state, 0) + 1
        tally.sizes[state] = tally.sizes.get(state, 0) + size
        protected = state == "PROTECTED"
        if protected and created > tally.newest_protected:
            tally.newest_protected = created
        self._seen += 1
        if not vm_id:
            return
        destination = tally.name
        vm = self._vms.get(vm_id)
        if vm is None:
            vm = self._vms[vm_id] = _VMTally()
        if created > vm.newest_created or (
            created == vm.newest_created
            and created != NO_TIME
            and (state, destination) < (vm.newest_state, vm.newest_destination)
        ):
            vm.newest_created = created
            vm.newest_state = state
            vm.newest_destination = destination
        newest: dict[str, Any] = vm.held
        if protected:
            if created > newest.get(destination, NO_TIME):
                newest[destination] = created
        elif state == "FAILED" and created > vm.newest_failed:
            vm.newest_failed = created

    def snapshot(self, *, free: bool = False) -> BackupSnapshot:
        clusters = tuple(
            ClusterSummary(name, dict(t.counts), dict(t.sizes), _optional(t.newest_protected))
            for name, t in sorted(self._clusters.items())
        )
        vms = tuple(
            _VMBefore20(
                vm_id,
                dict[str, float](vm.held),  # type: ignore[arg-type]  # floats here
                _optional(vm.newest_failed),
                vm.newest_state,
                _optional(vm.newest_created),
                vm.newest_destination,
            )
            for vm_id, vm in sorted(self._vms.items())
        )
        return BackupSnapshot(clusters, vms, self._seen, frozenset(self._cut))  # type: ignore[arg-type]


@dataclass(frozen=True)
class _VMBefore20:
    """A VM's backups as the snapshot held them before issue 20: per destination, only the
    newest PROTECTED one's time (the reference the hand-over is measured against)."""

    vm_id: str
    newest_protected: Mapping[str, float]
    newest_failed: float | None
    newest_state: str
    newest_created: float | None
    newest_destination: str


def pages(backups: Sequence[Mapping[str, object]], fields: Sequence[str]) -> list[bytes]:
    """The pages of a scan by id, as the simulator writes them: each overlaps the one before
    by a record, as the scanner asks for them."""
    ordered = sorted(backups, key=lambda backup: str(backup["id"]))
    bodies = []
    for start in range(0, len(ordered), PAGE_SIZE):
        first = max(0, start - 1)
        page = [{k: b[k] for k in fields if k in b} for b in ordered[first : start + PAGE_SIZE]]
        document = {"offset": first, "limit": PAGE_SIZE, "count": len(ordered), "backups": page}
        bodies.append(json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode())
    return bodies


def decode(bodies: Sequence[bytes]) -> StoreScan:
    """The pages decoded and read into a store, as the decoding worker does before it counts
    them (:func:`tally`)."""
    scan = StoreScan(keep=True)
    for number, body in enumerate(bodies):
        scan.count(max(0, number * PAGE_SIZE - 1), body)
    return scan


def decode_side_by_side(versions: Sequence[Sequence[bytes]], repeat: int) -> list[float]:
    """The CPU seconds each version of the same pages takes to decode (:func:`decode`): page
    by page, the versions one after the other, the best of ``repeat`` for each page. The
    difference of two such sums is a few percent of either: timed whole, one after the
    other, the machine's other work moved it by as much."""
    best = [[float("inf")] * len(pages) for pages in versions]
    for _ in range(repeat):
        scans = [StoreScan(keep=True) for _ in versions]
        for number in range(len(versions[0])):
            for scan, pages, times in zip(scans, versions, best, strict=True):
                started = time.process_time()
                scan.count(max(0, number * PAGE_SIZE - 1), pages[number])
                times[number] = min(times[number], time.process_time() - started)
    return [sum(times) for times in best]


def _side_by_side(
    repeat: int, with_20: Callable[[], object], without_20: Callable[[], object]
) -> tuple[float, float]:
    """The best CPU seconds of each, over ``repeat`` rounds of one then the other."""
    cost = base = float("inf")
    for _ in range(repeat):
        cost, base = min(cost, _seconds(with_20)), min(base, _seconds(without_20))
    return cost, base


def _seconds(work: Callable[[], object]) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


def tally(scan: StoreScan, aggregator: Aggregator) -> BackupSnapshot:
    """What the worker's scan counts its rows into, and its snapshot."""
    assert scan.store is not None
    scan.store.count_into(aggregator)
    return aggregator.snapshot()


def _nothing(*_: object) -> dict[str, int]:
    return {}


@contextlib.contextmanager
def without_20_judgements() -> Iterator[None]:
    """No rule asks for consistency, no recovery window, no orphan count."""
    with (
        mock.patch.object(inventory, "app_consistent_intervals", _nothing),
        mock.patch.object(inventory, "recovery_windows", _nothing),
        mock.patch.object(inventory, "orphaned", _nothing),
    ):
        yield


@contextlib.contextmanager
def without_20_series() -> Iterator[None]:
    """Issue 20's per-VM series not built."""
    with mock.patch.object(collector, "_add_depth", _nothing):
        yield


def write(snapshot: ControllerSnapshot, state: ExporterState) -> str:
    """The snapshot's families written as the exporter writes them: a family at a time, as
    at its first poll (the label values it keeps escaped from one poll to the next, forgotten:
    a ``--once`` poll starts without them)."""
    textformat._ESCAPED.clear()
    families = snapshot_families("bench", snapshot, state, vms_at_once=VMS_AT_ONCE)
    return "".join([textformat.write([family]) for family in families])


def whole_poll(backups: int, vms: int, probes: int) -> tuple[float, float]:
    """The median CPU seconds and peak RSS (MB) of ``probes`` ``--once`` polls, each in a
    fresh process, against a simulated controller in its own (as ``./dev bench`` measures)."""
    from bench.run import CostModel, Settings, measure_poll, simulator

    settings = Settings(
        sizes=(backups,), vms=vms, repeat=probes, page_size=PAGE_SIZE, max_concurrency=3,
        cost=CostModel(), load_vms=vms, load_backups=backups, scrapers=0, load_seconds=0,
        pace_seconds=0, load_repeat=0,
    )  # fmt: skip
    with simulator(backups, vms, settings.cost) as sim:
        polls = [measure_poll(sim, "exporter", settings) for _ in range(probes)]
    return (
        statistics.median(poll["cpu_seconds"] for poll in polls),
        statistics.median(poll["peak_rss_bytes"] for poll in polls) / 1e6,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.judgements")
    parser.add_argument("--vms", type=int, default=5000)
    parser.add_argument("--backups", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--probes", type=int, default=3, help="whole polls (0: none)")
    args = parser.parse_args(argv)
    # First, while this process is small: Linux counts in a child's peak RSS (ru_maxrss) the
    # parent's RSS when it forked, and this one grows to hundreds of MB below.
    cpu, rss = whole_poll(args.backups, args.vms, args.probes) if args.probes else (0.0, 0.0)
    spec = FederationSpec(vms=args.vms, total_backups=args.backups, roles=False)
    with SimulatedController(spec) as controller:
        backups = controller.backups()
        read = InventoryRead()
        for record in controller.virtual_machines():
            if record.get("state") == "ALIVE":
                read.add_vm(record)
        for record in controller.policies():
            read.add_policy(record)
        for record in controller.hosts():
            read.add_host(record)
        for record in controller.clusters():
            read.add_cluster(record)
        listed = read.inventory(None)
    gc.collect()
    gc.disable()  # as in the decoding worker, and while the exporter writes a snapshot
    gc.freeze()
    with_fields = pages(backups, FIELDS)
    no_consistency = pages(backups, [field for field in FIELDS if field != "consistency_type"])
    without_fields = pages(backups, [field for field in FIELDS if field not in FIELDS_20])
    scan = decode(with_fields)
    if scan.store is None or len(scan.store) != len(backups):
        raise SystemExit("the pages did not count every backup")
    state = ExporterState(interval_seconds=60, stale_after_seconds=300)
    state_without = replace(state, exclude=FAMILIES_20)
    now = time.time()

    def judge() -> ControllerSnapshot:
        return read.judge(listed, snapshot, now=now, overdue_factor=1.5, grace_seconds=3600)

    tracemalloc.start()
    snapshot = tally(scan, Aggregator())
    held = tracemalloc.get_traced_memory()[0]
    del snapshot
    tracemalloc.reset_peak()
    snapshot = tally(scan, _Before20())
    held -= tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    snapshot = tally(scan, Aggregator())
    judged = judge()
    with without_20_judgements():
        judged_without = judge()
    # What the worker would hand over without issue 20 (the same snapshot, but for its VMs).
    snapshot_without = (
        snapshot.clusters,
        tuple(
            _VMBefore20(
                vm.vm_id,
                vm.newest_protected,
                vm.newest_failed,
                vm.newest_state,
                vm.newest_created,
                vm.newest_destination,
            )
            for vm in snapshot.vms
        ),
        snapshot.backups_seen,
        snapshot.cut_labels,
    )

    def handover(of: object) -> Callable[[], object]:
        return lambda: pickle.loads(pickle.dumps(of, pickle.HIGHEST_PROTOCOL))  # noqa: S301

    def judged_without_20() -> ControllerSnapshot:
        with without_20_judgements():
            return judge()

    def families_without_20() -> str:
        with without_20_series():
            return write(judged_without, state_without)

    text, text_without = write(judged, state), families_without_20()
    steps: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("tally", lambda: tally(scan, Aggregator()), lambda: tally(scan, _Before20())),
        ("hand over the snapshot", handover(snapshot), handover(snapshot_without)),
        ("judge", judge, judged_without_20),
        ("build and write the families", lambda: write(judged, state), families_without_20),
    ]
    print(
        f"{len(backups)} backups, {len(listed.vms)} live VMs: pages of {sum(map(len, with_fields))}"
        f" bytes, {sum(map(len, without_fields))} without {' and '.join(FIELDS_20)}; /metrics "
        f"{len(text)} bytes, {len(text_without)} without issue 20's series; the snapshot's "
        f"tallies {held / 1e6:+.1f} MB with issue 20's (tracemalloc)"
    )
    print(f"CPU seconds, best of {args.repeat} | with | without | issue 20's part")
    parts: dict[str, float] = {}
    every, typed, untyped = decode_side_by_side(
        [with_fields, no_consistency, without_fields], args.repeat
    )
    rows: list[tuple[str, float, float]] = [
        ("decode: consistency_type", every, typed),
        (EXPIRATION, typed, untyped),
    ]
    for name, with_20, without_20 in steps:
        rows.append((name, *_side_by_side(args.repeat, with_20, without_20)))
    for name, cost, base in rows:
        parts[name] = cost - base
        print(f"{name:36} | {cost:.3f} | {base:.3f} | {cost - base:+.3f}")
    total_20 = sum(parts.values())
    alone = total_20 - parts[EXPIRATION]
    print(f"issue 20's part: {total_20:.3f} s ({alone:.3f} s without expiration_time)")
    if args.probes:
        print(
            f"the whole --once poll (median of {args.probes}, its worker's CPU and peak RSS "
            f"included): {cpu:.2f} s CPU, peak RSS {rss:.1f} MB; issue 20's share "
            f"{total_20 / cpu:.1%} ({alone / cpu:.1%} without expiration_time)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
