"""One measured poll, in a fresh process: ``python -m bench.probe exporter|baseline ...``.

The process does nothing else, so its peak RSS and CPU time are the poll's (plus the
interpreter and the imports, the same for every size). ``exporter`` runs
``simplivity-exporter --once --output FILE`` in this process (one poll, the exposition written
once); ``baseline`` runs :mod:`bench.baseline`. Only the chosen side is imported, and the clock
starts once it is.

The exporter decodes and counts pages in a child process (``python -m exporter.worker``), and
``--once`` closes that child and waits for it before it returns (``exporter.app.run_once``), so
once the poll is over the child is reaped and :data:`resource.RUSAGE_CHILDREN` holds its
figures. The poll's CPU time is this process's plus its reaped children's. Its peak RSS is this
process's peak plus the worker's own (its ``VmHWM``, read just before the exporter closes it):
a sum of two peaks that need not have come at the same moment, so an upper bound of what the
two held at once. Not RUSAGE_CHILDREN's peak: Linux counts there the RSS of the parent the
child was spawned from, before it ran the worker's program. The baseline starts no child, and
its figures are its own process's alone.

It prints one JSON line: ``{"wall_seconds", "cpu_seconds", "peak_rss_bytes",
"probe_peak_rss_bytes", "worker_peak_rss_bytes", "backups"}``, where ``peak_rss_bytes`` is the
sum of the other two (``worker_peak_rss_bytes`` is 0 for the baseline).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import variant


def _cpu() -> float:
    """User + system CPU seconds of every thread of this process and of its reaped children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _check_no_child_left() -> None:
    """Fail if a child of the poll still runs: RUSAGE_CHILDREN would be missing its share."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)  # reaps a child that ended but was not waited for
        except ChildProcessError:
            return  # no child at all
        if pid == 0:
            raise SystemExit("a child of the poll still runs: its CPU and RSS would be missed")


def _peak_rss_bytes(who: int) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # KiB on Linux


def high_water_bytes(pid: int | None) -> int:
    """The peak RSS of a running process (``VmHWM``), 0 if it is gone (or None)."""
    if pid is None:
        return 0
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return 0


#: The peak RSS of each decoding worker, taken as it is stopped.
WORKER_PEAKS: list[int] = []


def _measure_workers() -> None:
    """Read each decoding worker's peak RSS just before it is stopped: after a full scan, or
    as the exporter closes it."""
    from exporter.worker import DecodingWorker

    stop = DecodingWorker._stop_process

    def stop_measured(worker: DecodingWorker) -> None:
        if worker.pid is not None:
            WORKER_PEAKS.append(high_water_bytes(worker.pid))
        stop(worker)

    setattr(DecodingWorker, "_stop_process", stop_measured)  # noqa: B010 (mypy refuses a plain =)


#: The environment variable the benchmark's exporter configs read the password from.
PASSWORD_VARIABLE = "BENCH_SVT_PASSWORD"


def write_exporter_config(
    path: Path,
    url: str,
    username: str,
    *,
    page_size: int,
    max_concurrency: int,
    timeout_seconds: float,
    interval_seconds: float | None = None,
) -> Path:
    """Write the exporter's config for the benchmark's one controller (its password from the
    environment, :data:`PASSWORD_VARIABLE`) to ``path``."""
    # Polls back to back (interval 1 s) are not cut short by the default deadline (the interval).
    interval = (
        f"  interval_seconds: {interval_seconds:g}\n  deadline_seconds: 3600\n"
        if interval_seconds
        else ""
    )
    path.write_text(
        f"poll:\n{interval}  timeout_seconds: {timeout_seconds:g}\n"
        f"  page_size: {page_size}\n  max_concurrency: {max_concurrency}\n"
        f"controllers:\n  - name: bench\n    url: {url}\n    username: {username}\n"
        f"    password: ${{{PASSWORD_VARIABLE}}}\n",
        encoding="utf-8",
    )
    return path


def _exporter(args: argparse.Namespace) -> Callable[[], int]:
    """The exporter's ``--once``, as a user runs it: config file in, exposition file out."""
    from exporter.cli import main as exporter_main

    _measure_workers()

    workdir = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    config = write_exporter_config(
        workdir / "config.yaml",
        args.url,
        args.username,
        page_size=args.page_size,
        max_concurrency=args.max_concurrency,
        timeout_seconds=120,
    )
    output = workdir / "metrics.prom"
    os.environ[PASSWORD_VARIABLE] = args.password

    def run() -> int:
        argv = ["--once", f"--config.file={config}", f"--output={output}", "--log.level=warning"]
        try:
            if exporter_main(argv) != 0:
                raise SystemExit("the poll failed")
            text = output.read_text(encoding="utf-8")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return round(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("simplivity_backups{")
            )
        )

    return run


def _baseline(args: argparse.Namespace) -> Callable[[], int]:
    from bench import baseline

    return lambda: baseline.run(args.url, args.username, args.password).backups


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe")
    parser.add_argument("side", choices=("exporter", "baseline"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--page-size", type=int, default=3000)
    parser.add_argument("--max-concurrency", type=int, default=2)
    variant.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.side == "exporter":
        variant.from_arguments(args).apply()
    run = _exporter(args) if args.side == "exporter" else _baseline(args)
    cpu_before = _cpu()
    started = time.perf_counter()
    backups = run()
    wall = time.perf_counter() - started
    _check_no_child_left()
    cpu = _cpu() - cpu_before
    own_peak = _peak_rss_bytes(resource.RUSAGE_SELF)
    worker_peak = max(WORKER_PEAKS, default=0)  # 0 for the baseline
    document = {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "peak_rss_bytes": own_peak + worker_peak,  # a sum of two peaks: an upper bound
        "probe_peak_rss_bytes": own_peak,
        "worker_peak_rss_bytes": worker_peak,
        "backups": backups,
    }
    print(json.dumps(document), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
