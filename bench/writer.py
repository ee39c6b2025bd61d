"""The cost of writing one snapshot's families: ``python -m bench.writer [--vms 5000]``.

A simulated federation (5,000 VMs, 100,000 backups by default) is polled once in this process;
then its snapshot's families are built and written, each step timed in CPU seconds (the best
of ``--repeat``), by :mod:`exporter.textformat` and by prometheus_client's ``generate_latest``,
its reference (the two texts are checked equal). It prints one line per measure, the last
the memory a serving exposition holds for the snapshot's text and its gzip (tracemalloc).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, generate_latest

from exporter import textformat
from exporter.collector import BackupCollector, ExporterState, snapshot_families
from exporter.config import ControllerConfig, PollConfig, Secret
from exporter.exposition import Exposition
from exporter.model import ControllerStatus
from exporter.poller import ControllerPoller
from exporter.simulator import FederationSpec, SimulatedController
from exporter.textformat import _Families


def _best(repeat: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writer")
    parser.add_argument("--vms", type=int, default=5000)
    parser.add_argument("--backups", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    spec = FederationSpec(vms=args.vms, total_backups=args.backups, roles=False)
    with SimulatedController(spec) as controller:
        config = ControllerConfig(
            name="bench",
            url=controller.url,
            username=controller.username,
            password=Secret(controller.password),
        )
        poller = ControllerPoller(config, PollConfig(page_size=5000))
        try:
            status = poller.poll_once()
        finally:
            poller.close()
    snapshot = status.snapshot
    if snapshot is None:
        raise SystemExit(f"the poll failed: {status.last_error}")
    state = ExporterState(interval_seconds=60, stale_after_seconds=300)
    families = list(snapshot_families("bench", snapshot, state))
    text = textformat.write(families)
    if text != generate_latest(_Families(families)).decode("utf-8"):
        raise SystemExit("textformat and generate_latest disagree")
    samples = sum(len(family.samples) for family in families)
    print(f"snapshot of {len(snapshot.protection)} VMs: {samples} samples, {len(text)} bytes")
    build = _best(args.repeat, lambda: list(snapshot_families("bench", snapshot, state)))
    print(f"build the families: {build:.3f} s CPU")
    ours = _best(args.repeat, lambda: textformat.write(families))
    print(f"write them, exporter.textformat: {ours:.3f} s CPU")
    reference = _best(args.repeat, lambda: generate_latest(_Families(families)))
    print(f"write them, prometheus_client generate_latest: {reference:.3f} s CPU")
    print(f"held by a serving exposition: {_held_by_exposition(status, state):.1f} MiB")
    return 0


def _held_by_exposition(status: ControllerStatus, state: ExporterState) -> float:
    """MiB a serving :class:`Exposition` holds once it has written the snapshot's text and
    served it plain and gzipped."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    collector = BackupCollector(lambda: [status], lambda: state)
    exposition = Exposition(CollectorRegistry(auto_describe=False), lambda: 0, backups=collector)
    exposition.refresh()
    exposition.render()
    exposition.render(gzipped=True)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held / 2**20


if __name__ == "__main__":
    raise SystemExit(main())
