"""The steady state: polls every 5 simulated minutes of a churning federation, incremental
against full.

The simulated controller runs in this process, on a manual clock, with the simulator's default
churn for its size (:meth:`~exporter.simulator.Churn.for_vms`). Two exporters poll it, each in
a process of its own (so that CPU and peak RSS are each one's own), each with its decoding
worker, as ``python -m exporter`` runs: one with the default ``full_scan_interval_seconds``
(the first poll full, then incremental), one with 0 (every poll a full scan, the reference).
At each step the clock moves 5 minutes, then each polls at that same moment, and the two
exports must be equal, series for series (a digest of every series but the ages)::

    python -m bench.steady --sizes 100k/5000,1000k/20000 --polls 4

The table: per poll, its kind, the records it read and the requests it sent (the simulator
counts them), its CPU (the exporter's and its worker's, and the exporter's own: what holds
the interpreter lock scrapes wait for) and the peak RSS so far, beside the full poll of the
same moment. Peak RSS is the exporter's own (``VmHWM``), the most a decoding worker held, and
the most both held at once: the figure a host must have room for. A worker is stopped after
each full scan (:mod:`exporter.worker`), so the worker's and the exporter's peaks are not
reached at the same moment; both are sampled every 5 ms from this process (:class:`Resident`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bench.probe import high_water_bytes
from bench.run import PYTHON, child_cwd, child_env, parse_sizes, process_cpu

FIVE_MINUTES = 300.0


def child(argv: Sequence[str]) -> int:
    """One exporter: a poll at each moment read from stdin (a JSON number per line), a JSON
    line of figures per poll on stdout."""
    from prometheus_client import CollectorRegistry

    from exporter.collector import BackupCollector, ExporterState
    from exporter.config import ControllerConfig, PollConfig, Secret
    from exporter.exposition import Exposition, utf8
    from exporter.memory import keep_large_buffers_off_the_heap
    from exporter.model import ControllerStatus
    from exporter.poller import ControllerPoller
    from exporter.worker import DecodingWorker

    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--full-scan-interval", type=float, required=True)
    args = parser.parse_args(argv)
    keep_large_buffers_off_the_heap()  # as python -m exporter does at start-up
    now = [0.0]
    worker = DecodingWorker()
    poller = ControllerPoller(
        ControllerConfig("bench", args.url, args.username, Secret(os.environ["BENCH_PASSWORD"])),
        PollConfig(
            timeout_seconds=120,
            deadline_seconds=3600,
            full_scan_interval_seconds=args.full_scan_interval,
        ),
        scans=worker.open_scan,
        clock=lambda: now[0],
    )
    state = ExporterState(interval_seconds=300, stale_after_seconds=10**9)
    # The web side as the exporter runs it: the text written after each poll and kept (the
    # last beside the new while it is written), and served to a scrape plain and gzipped.
    shown: list[ControllerStatus] = []
    exposition = Exposition(
        CollectorRegistry(auto_describe=False),
        lambda: len(shown),
        backups=BackupCollector(lambda: shown, lambda: state, clock=lambda: now[0]),
        clock=lambda: now[0],
    )
    try:
        for line in sys.stdin:
            now[0] = float(json.loads(line))
            cpu, own = process_cpu(os.getpid()), time.process_time()
            started = time.monotonic()
            status = poller.poll_once()
            wall = time.monotonic() - started
            cpu, own = process_cpu(os.getpid()) - cpu, time.process_time() - own
            shown[:] = [status]
            exposition.refresh()
            exposition.render()
            exposition.render(gzipped=True)
            # The snapshot's series as the exposition wrote and keeps them (its /metrics text
            # but for the ages and the poll's own figures), family by family: their digest
            # must be the full-scan exporter's, byte for byte.
            digest = hashlib.sha256()
            series = 0
            if status.snapshot is not None:
                written = exposition._text._written["bench"].series
                for name in sorted(written):
                    digest.update(f"{name}\n".encode())
                    for text in utf8([written[name]]):  # as a plain scrape gets it
                        digest.update(text)
                        series += text.count(b"\n")
                # Not kept until the next poll has written its own: the exporter does not.
                del written
            figures = {
                "up": status.up,
                "error": status.last_error,
                "kind": status.poll_kind,
                "full_scans": dict(status.full_scans),
                "objects": sum(status.poll_objects.values()),
                "by_collection": dict(status.poll_objects),
                "cpu": cpu,
                # The exporter's own (every thread, not its worker's): what holds the
                # interpreter lock that scrapes wait for.
                "own_cpu": own,
                "wall": wall,
                # VmHWM, not ru_maxrss: Linux carries the latter across exec from the forking
                # process (here the bench, which holds the simulated federation).
                "rss": high_water_bytes(os.getpid()),
                "worker_rss": high_water_bytes(worker.pid),
                "series": series,
                "digest": digest.hexdigest(),
            }
            print(json.dumps(figures), flush=True)
    finally:
        poller.close()
        worker.close()
    return 0


class Resident:
    """The most a process and its children held at once, and the most a child held (RSS,
    sampled every 5 ms): its children come and go (a decoding worker lives until the next
    full scan), so their own high-water marks do not add up to a moment's."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.together = 0
        self.together_parts = (0, 0)  # the process's and its children's at that moment
        self.child = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            own = _resident(self._pid)
            children = [_resident(pid) for pid in _children(self._pid)]
            if own and own + sum(children) > self.together:
                self.together = own + sum(children)
                self.together_parts = (own, sum(children))
            self.child = max(self.child, *children, 0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _resident(pid: int) -> int:
    """A process's RSS in bytes; 0 if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _children(pid: int) -> list[int]:
    """The child processes of every thread of ``pid``, but those not yet running a program of
    their own: between fork and exec a child shares its parent's memory, and its RSS is the
    parent's (counted twice, a sample made at that moment said a worker of 115 MiB)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        parent = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return found
    for task in tasks:
        try:
            found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            continue
    return [child for child in found if _cmdline(child) not in (parent, b"")]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Exporter:
    def __init__(self, url: str, username: str, password: str, interval: float) -> None:
        self.process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "bench.steady",
                "--child",
                f"--url={url}",
                f"--username={username}",
                f"--full-scan-interval={interval:g}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(BENCH_PASSWORD=password),
            cwd=child_cwd(),
        )
        self.resident = Resident(self.process.pid)

    def poll(self, now: float) -> dict[str, Any]:
        stdin: IO[str] | None = self.process.stdin
        stdout: IO[str] | None = self.process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps(now) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError("a steady-state exporter ended")
        figures: dict[str, Any] = json.loads(line)
        if not figures["up"]:
            raise RuntimeError(f"a steady-state poll failed: {figures['error']}")
        figures["worker_rss"] = max(figures["worker_rss"], self.resident.child)
        figures["together_rss"] = max(self.resident.together, figures["rss"])
        figures["together_parts"] = self.resident.together_parts
        return figures

    def close(self) -> None:
        self.resident.close()
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def run(backups: int, vms: int, polls: int, say: Any) -> list[dict[str, Any]]:
    """One federation: ``polls`` polls 5 simulated minutes apart; a row per poll."""
    from exporter.simulator import Churn, FederationSpec, ManualClock, SimulatedController

    clock = ManualClock()
    # steady: backups expire as they are replaced, so the federation keeps its size and every
    # 5 minutes sees expiries as well as new backups.
    spec = FederationSpec(clusters=3, vms=vms, total_backups=backups, roles=False, steady=True)
    say(f"steady state: generating {backups} backups on {vms} VMs")
    simulator = SimulatedController(
        spec,
        clock=clock,
        churn=Churn.for_vms(vms),
        idle_timeout_seconds=10**9,
        absolute_timeout_seconds=10**9,
    ).start()
    rows: list[dict[str, Any]] = []
    exporters = {
        kind: Exporter(simulator.url, simulator.username, simulator.password, interval)
        for kind, interval in (("incremental", 3600.0), ("full", 0.0))
    }
    try:
        before: dict[str, int] = {}
        for index in range(polls):
            if index:
                clock.advance(FIVE_MINUTES)
            simulator.advance_to()  # the churn of these 5 minutes, outside either poll
            after = simulator.changes()
            row: dict[str, Any] = {
                "backups": backups,
                "vms": vms,
                "poll": index,
                "changes": {k: v - before.get(k, 0) for k, v in after.items()},
            }
            before = after
            for side, exporter in exporters.items():
                simulator.stats.reset()
                figures = exporter.poll(clock())
                stats = simulator.stats.snapshot()
                figures["requests"] = sum(stats.requests_per_path.values())
                row[side] = figures
            row["equal"] = row["incremental"]["digest"] == row["full"]["digest"]
            if not row["equal"]:
                raise RuntimeError(f"poll {index}: the incremental poll differs from a full scan")
            rows.append(row)
            say(_line(row))
    finally:
        for exporter in exporters.values():
            exporter.close()
        simulator.stop()
    return rows


def _line(row: dict[str, Any]) -> str:
    inc, full = row["incremental"], row["full"]
    mib = 1024 * 1024
    return (
        f"{row['backups']:>8} backups, poll {row['poll']}: {inc['kind']:<11} "
        f"{inc['objects']:>8} objects ({100 * inc['objects'] / full['objects']:5.1f}% of full "
        f"{full['objects']}), {inc['requests']:>4} requests (full {full['requests']}), "
        f"CPU {inc['cpu']:.2f} s, exporter's own {inc['own_cpu']:.2f} "
        f"(full {full['cpu']:.2f} s, {full['own_cpu']:.2f}), peak RSS "
        f"{inc['rss'] / mib:.0f} + worker {inc['worker_rss'] / mib:.0f}, "
        f"{inc['together_rss'] / mib:.0f} at once MiB "
        f"({inc['together_parts'][0] / mib:.0f} + {inc['together_parts'][1] / mib:.0f}) "
        f"(full {full['rss'] / mib:.0f} + {full['worker_rss'] / mib:.0f}, "
        f"{full['together_rss'] / mib:.0f}), equal {row['equal']}"
    )


def parse_size(size: str) -> tuple[int, int]:
    """``100k/5000``: backups and VMs."""
    text, _, vms = size.partition("/")
    (backups,) = parse_sizes(text)
    return backups, int(vms or max(1, backups // 20))


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The steady-state table: each poll beside the full poll of the same moment."""
    mib = 1024 * 1024
    lines = [
        "| backups / VMs | poll | kind | objects | % of full | requests (full) | CPU s (full) "
        "| exporter's own CPU s (full) | peak RSS MiB, exporter + worker (full) "
        "| peak RSS MiB, both at once (full) | equal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        inc, full = row["incremental"], row["full"]
        lines.append(
            f"| {row['backups']:,} / {row['vms']:,} | {row['poll']} | {inc['kind']} "
            f"| {inc['objects']:,} | {100 * inc['objects'] / full['objects']:.1f} "
            f"| {inc['requests']} ({full['requests']}) | {inc['cpu']:.2f} ({full['cpu']:.2f}) "
            f"| {inc['own_cpu']:.2f} ({full['own_cpu']:.2f}) "
            f"| {inc['rss'] / mib:.0f} + {inc['worker_rss'] / mib:.0f} "
            f"({full['rss'] / mib:.0f} + {full['worker_rss'] / mib:.0f}) "
            f"| {inc['together_rss'] / mib:.0f} ({full['together_rss'] / mib:.0f}) "
            f"| {row['equal']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--child"]:
        return child(arguments[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="100k/5000,1000k/20000",
        help="backups/VMs of each federation, comma-separated",
    )
    parser.add_argument(
        "--polls", type=int, default=14, help="polls per federation, 5 minutes apart (first full)"
    )
    parser.add_argument("--output", type=Path, help="write the rows here as JSON")
    args = parser.parse_args(arguments)
    rows = []
    for size in args.sizes.split(","):
        rows += run(*parse_size(size), args.polls, say)
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    # The full scans the schedule runs (every full_scan_interval_seconds) are full polls by
    # design: the target is for the polls between.
    steady = [row for row in rows if row["poll"] > 0 and row["incremental"]["kind"] != "full"]
    worst = max((r["incremental"]["objects"] / r["full"]["objects"] for r in steady), default=0)
    more = [row for row in steady if row["incremental"]["requests"] > row["full"]["requests"]]
    full = [row for row in rows if row["poll"] > 0 and row["incremental"]["kind"] == "full"]
    say(
        f"steady state: {len(steady)} incremental polls, at most {100 * worst:.1f}% of a full "
        f"poll's objects; {len(more)} with more requests than a full poll; {len(full)} full "
        f"polls after the first; every poll exact"
    )
    return 0 if worst <= 0.10 and not more else 1


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
