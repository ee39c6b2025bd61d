"""The benchmark: one full poll at several federation sizes, exporter against baseline, and
``/metrics`` under load. ``python -m bench --help``; see bench/README.md.

Every measured party runs in its own process: the simulated controller
(:mod:`bench.controller`), each measured poll (:mod:`bench.probe`, a fresh process per poll),
the exporter under load (the real ``python -m exporter``) and the scrapers
(:mod:`bench.scrape`). The exporter's CPU time and peak RSS include its child, the decoding
worker (``python -m exporter.worker``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench import report, variant
from bench.probe import PASSWORD_VARIABLE, write_exporter_config
from bench.scrape import percentile
from bench.variant import Variant
from exporter.config import PollConfig

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every child: this checkout importable from any working directory,
    after whatever PYTHONPATH already names (so that ``PYTHONPATH=/other/tree python -m bench``
    measures that tree's exporter)."""
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


@functools.cache
def _child_directory() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="bench-cwd-")


def child_cwd() -> str:
    """An empty directory for the children to run in: ``python -m`` puts the working
    directory first on sys.path, where the checkout would shadow PYTHONPATH (and /tmp may
    hold anything)."""
    return _child_directory().name


DEFAULT_SIZES = (1_000, 10_000, 100_000, 300_000)
QUICK_SIZES = (1_000, 10_000)
RESULTS = Path(__file__).resolve().parent / "results"
EXPORTER_FIELDS = (
    "id,state,created_at,size,omnistack_cluster_name,external_store_name,"
    "virtual_machine_id,virtual_machine_name,virtual_machine_state"
)


#: What the load test may run, in this order: name -> (phase, idle connections or not).
#: "idle": one poll at start-up, none during the windows (for comparison); "polling":
#: interval_seconds 1, so that polls run back to back through every window.
LOAD_CASES = {"idle": ("idle", False), "polling": ("polling", False), "churn": ("polling", True)}


@dataclass(frozen=True)
class CostModel:
    request_seconds: float = 0.020
    object_seconds: float = 0.000020
    max_parallel: int = 8

    def describe(self) -> str:
        return (
            f"{self.request_seconds * 1000:g} ms per request + "
            f"{self.object_seconds * 1e6:g} µs per returned backup, "
            f"at most {self.max_parallel} requests served at once"
        )


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]
    vms: int
    repeat: int
    page_size: int
    max_concurrency: int
    cost: CostModel
    load_vms: int
    load_backups: int
    scrapers: int
    load_seconds: float
    pace_seconds: float
    load_repeat: int
    idle_connections: int = 2000
    idle_hold_seconds: float = 2.0
    load_cases: tuple[str, ...] = tuple(LOAD_CASES)
    sweep_size: int = 100_000
    sweep: tuple[int, ...] = (1, 2, 3, 4, 8)
    baseline: bool = True
    load: bool = True
    variant: Variant = field(default_factory=Variant)


@dataclass(frozen=True)
class PollRow:
    side: str  # "exporter" or "baseline"
    backups: int
    vms: int
    wall_seconds: float
    cpu_seconds: float  # the exporter's includes its decoding worker's
    peak_rss_bytes: int  # the exporter's: its own peak + its decoding worker's peak
    worker_peak_rss_bytes: int  # the decoding worker's peak, within peak_rss_bytes (0: none)
    requests: int
    bytes_received: int
    logins: int
    runs: int
    #: the requests of one poll by URL path (login, inventory, backups), as the controller saw
    requests_per_path: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepRow:
    """The exporter's poll at one size with one poll.max_concurrency."""

    max_concurrency: int
    backups: int
    wall_seconds: float
    cpu_seconds: float
    max_in_flight: int  # requests the controller saw at once


@dataclass(frozen=True)
class LoadRow:
    """The scrapes of ``load_repeat`` windows together (p50, p99 and max of all of them);
    the other figures are sums over the windows."""

    phase: str  # "idle" or "polling"
    mode: str  # "every N ms" (+ idle connections)
    idle_connections: int  # in each round of idle connections; 0: none
    requests: int
    errors: int
    throughput: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    window_p99_ms: list[float]  # each window's own p99: the run-to-run noise
    window_max_ms: list[float]
    body_bytes: int
    backups_requests: int  # /api/backups requests the exporter made during the windows
    idle_cycles: int  # rounds of idle connections opened and closed during the windows
    idle_failed: int  # idle connections that could not be opened
    exporter_cpu_seconds: float
    simulator_cpu_seconds: float
    scrapers_cpu_seconds: float


@dataclass(frozen=True)
class LoginCheck:
    polls: int
    exporter_logins: float  # simplivity_logins_total as the exporter reports it
    controller_logins: int  # tokens the simulated controller issued
    seconds: float


@dataclass
class Results:
    settings: Settings
    machine: dict[str, str]
    polls: list[PollRow] = field(default_factory=list)
    sweep: list[SweepRow] = field(default_factory=list)
    load: list[LoadRow] = field(default_factory=list)
    logins: LoginCheck | None = None
    duration_seconds: float = 0.0
    command: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# --- the simulated controller ---------------------------------------------------------------


class Simulator:
    """A :mod:`bench.controller` process; :meth:`stats` and :meth:`reset` talk to its control
    endpoint."""

    def __init__(self, process: subprocess.Popen[str], info: dict[str, Any]) -> None:
        self.process = process
        self.url: str = info["url"]
        self.control: str = info["control"]
        self.username: str = info["username"]
        self.password: str = info["password"]
        self.session = requests.Session()

    def stats(self) -> dict[str, int]:
        document: dict[str, int] = self.session.get(self.control + "/stats", timeout=10).json()
        return document

    def reset(self) -> None:
        self.session.post(self.control + "/reset", timeout=10).raise_for_status()

    def warm_up(self) -> None:
        """Let the simulator sort its backups both ways before anything is measured."""
        token = self.session.post(
            self.url + "/api/oauth/token",
            auth=("simplivity", ""),
            data={"grant_type": "password", "username": self.username, "password": self.password},
            timeout=60,
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        for params in (
            {"limit": "1", "sort": "id", "order": "ascending", "fields": EXPORTER_FIELDS},
            {"limit": "1"},
        ):
            answer = self.session.get(
                self.url + "/api/backups", params=params, headers=headers, timeout=120
            )
            answer.raise_for_status()
        self.reset()


@contextlib.contextmanager
def simulator(backups: int, vms: int, cost: CostModel) -> Iterator[Simulator]:
    command = [
        PYTHON,
        "-m",
        "bench.controller",
        f"--backups={backups}",
        f"--vms={vms}",
        f"--request-cost={cost.request_seconds}",
        f"--object-cost={cost.object_seconds}",
        f"--max-parallel={cost.max_parallel}",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=child_env(), cwd=child_cwd()
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the simulated controller did not start")
        sim = Simulator(process, json.loads(line))
        sim.warm_up()
        yield sim
    finally:
        stop(process)


def stop(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- one poll -------------------------------------------------------------------------------


def measure_poll(
    sim: Simulator, side: str, settings: Settings, max_concurrency: int | None = None
) -> dict[str, Any]:
    command = [
        PYTHON,
        "-m",
        "bench.probe",
        side,
        f"--url={sim.url}",
        f"--username={sim.username}",
        f"--password={sim.password}",
        f"--page-size={settings.page_size}",
        f"--max-concurrency={max_concurrency or settings.max_concurrency}",
        *(settings.variant.arguments() if side == "exporter" else []),
    ]
    sim.reset()
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, env=child_env(), cwd=child_cwd()
    )
    if done.returncode != 0:
        raise RuntimeError(f"{side} probe failed:\n{done.stderr}")
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    measured.update(sim.stats())
    return measured


def measure_polls(settings: Settings, say: Any) -> tuple[list[PollRow], list[SweepRow]]:
    sides = ("exporter", "baseline") if settings.baseline else ("exporter",)
    rows: list[PollRow] = []
    sweep: list[SweepRow] = []
    for size in settings.sizes:
        vms = min(settings.vms, size)
        say(f"federation of {size:,} backups on {vms:,} VMs")
        with simulator(size, vms, settings.cost) as sim:
            for side in sides:
                runs = [measure_poll(sim, side, settings) for _ in range(settings.repeat)]
                for run in runs:
                    if run["backups"] != size:
                        raise RuntimeError(f"{side} saw {run['backups']} of {size} backups")
                peak = max(runs, key=lambda r: int(r["peak_rss_bytes"]))
                row = PollRow(
                    side=side,
                    backups=size,
                    vms=vms,
                    wall_seconds=statistics.median(r["wall_seconds"] for r in runs),
                    cpu_seconds=statistics.median(r["cpu_seconds"] for r in runs),
                    peak_rss_bytes=peak["peak_rss_bytes"],
                    worker_peak_rss_bytes=peak.get("worker_peak_rss_bytes", 0),
                    requests=max(r["requests"] for r in runs),
                    bytes_received=max(r["bytes"] for r in runs),
                    logins=max(r["logins"] for r in runs),
                    runs=len(runs),
                    requests_per_path=max(runs, key=lambda r: int(r["requests"]))[
                        "requests_per_path"
                    ],
                )
                say(
                    f"  {side:8} {row.wall_seconds:7.2f} s wall  {row.cpu_seconds:6.2f} s CPU  "
                    f"{row.peak_rss_bytes / 1e6:6.1f} MB  {row.requests} requests"
                    + (
                        f"  (worker {row.worker_peak_rss_bytes / 1e6:.1f} MB of the peak)"
                        if row.worker_peak_rss_bytes
                        else ""
                    )
                )
                rows.append(row)
            if size == settings.sweep_size:
                for width in settings.sweep:
                    runs = [
                        measure_poll(sim, "exporter", settings, width)
                        for _ in range(settings.repeat)
                    ]
                    point = SweepRow(
                        max_concurrency=width,
                        backups=size,
                        wall_seconds=statistics.median(r["wall_seconds"] for r in runs),
                        cpu_seconds=statistics.median(r["cpu_seconds"] for r in runs),
                        max_in_flight=max(r["max_in_flight"] for r in runs),
                    )
                    say(
                        f"  max_concurrency {width}: {point.wall_seconds:.2f} s wall, "
                        f"{point.max_in_flight} in flight at most"
                    )
                    sweep.append(point)
    return rows, sweep


# --- /metrics under load --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def exporter_process(
    sim: Simulator, settings: Settings, interval_seconds: float, workdir: Path
) -> Iterator[tuple[str, int]]:
    """Run ``python -m exporter`` on the simulator until ready; yields its URL and pid."""
    config = write_exporter_config(
        workdir / f"exporter-{interval_seconds:g}.yaml",
        sim.url,
        sim.username,
        page_size=settings.page_size,
        max_concurrency=settings.max_concurrency,
        timeout_seconds=60,
        interval_seconds=interval_seconds,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / f"exporter-{interval_seconds:g}.log").open("w")
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "bench.variant",
            *settings.variant.arguments(),
            "--",
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env(**{PASSWORD_VARIABLE: sim.password}),
        cwd=child_cwd(),
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the exporter exited with {process.returncode}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/-/ready", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the exporter did not become ready within 300 s")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        stop(process)
        log.close()


def scrape(url: str, settings: Settings, idle_connections: int) -> dict[str, Any]:
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "bench.scrape",
            url + "/metrics",
            f"--clients={settings.scrapers}",
            f"--seconds={settings.load_seconds}",
            f"--interval={settings.pace_seconds}",
            f"--idle-connections={idle_connections}",
            f"--idle-hold={settings.idle_hold_seconds}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=child_env(),
        cwd=child_cwd(),
    )
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: [0] is the state, [1] the parent,
    [11] and [12] utime and stime, [13] and [14] those of the children it has waited for."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    """The pids of a process's children: from /proc/PID/task/*/children, or where the kernel
    has no such file (CONFIG_PROC_CHILDREN), from the parent field of every /proc/*/stat."""
    files = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if files:
        found: list[int] = []
        for path in files:
            with contextlib.suppress(OSError):  # the thread ended
                found += [int(child) for child in path.read_text().split()]
        return found
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):  # the process ended
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (every thread) and of its children, the
    exporter's decoding worker among them, from /proc.

    Each process counts its own time, that of the children it has waited for, and that of its
    living children (the same, recursively). A child that ends moves its time into its parent's
    waited-for children's once the parent reaps it, so the difference of two readings keeps it
    (only a child reaped at the very moment of a reading may be missed or counted twice there).
    A child that is gone before its /proc is read counts 0.
    """
    ticks = os.sysconf("SC_CLK_TCK")

    def ticks_of(process: int, *, top: bool) -> int:
        try:
            fields = _stat(process)
            children = _children(process)
        except OSError:
            if top:
                raise
            return 0
        own = sum(int(fields[index]) for index in (11, 12, 13, 14))
        return own + sum(ticks_of(child, top=False) for child in children)

    return ticks_of(pid, top=True) / ticks


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def load_rows(settings: Settings, say: Any) -> tuple[list[LoadRow], LoginCheck]:
    rows: list[LoadRow] = []
    say(
        f"/metrics under load: {settings.load_vms:,} VMs ({settings.load_backups:,} backups), "
        f"{settings.scrapers} scrapers every {settings.pace_seconds:g} s, "
        f"{settings.load_repeat} windows of {settings.load_seconds:g} s per case; "
        f"{settings.variant.describe()}"
    )
    check: LoginCheck | None = None
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as temporary,
        simulator(settings.load_backups, settings.load_vms, settings.cost) as sim,
    ):
        workdir = Path(temporary)
        for phase, poll_interval in (("idle", 1200.0), ("polling", 1.0)):
            cases = [
                idle
                for name, (case_phase, idle) in LOAD_CASES.items()
                if case_phase == phase and name in settings.load_cases
            ]
            if not cases:
                continue
            sim.reset()
            with exporter_process(sim, settings, poll_interval, workdir) as (url, pid):
                started = time.monotonic()
                # The first scrape of a process writes every snapshot's lines (later ones are
                # written by each poll, in its thread): once per process, not measured.
                requests.get(url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=60)
                for idle in cases:
                    row = load_row(sim, url, pid, settings, phase, idle)
                    rows.append(row)
                    say(
                        f"  {phase:8} {row.mode:40} p50 {row.p50_ms:6.2f} ms  "
                        f"p99 {row.p99_ms:6.2f} ms  max {row.max_ms:7.2f} ms  "
                        f"(windows' p99 {_spread(row.window_p99_ms)} ms)  "
                        f"{row.backups_requests} backup requests"
                    )
                if phase == "polling":
                    text = requests.get(url + "/metrics", timeout=10).text
                    total = sim.stats()
                    check = LoginCheck(
                        polls=total["first_pages"],
                        exporter_logins=metric_value(text, "simplivity_logins_total"),
                        controller_logins=total["logins"],
                        seconds=time.monotonic() - started,
                    )
    assert check is not None
    return rows, check


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else ""


def load_row(
    sim: Simulator, url: str, pid: int, settings: Settings, phase: str, idle: bool
) -> LoadRow:
    """``settings.load_repeat`` windows, their scrapes taken together.

    The machine may be shared: each window's own p99 is kept too, and their spread is the
    run-to-run noise of the figure.
    """
    connections = settings.idle_connections if idle else 0
    windows = [
        _load_window(sim, url, pid, settings, connections) for _ in range(settings.load_repeat)
    ]
    every = [value for window in windows for value in window["latencies_ms"]]
    seconds = settings.load_seconds * len(windows)
    mode = f"{settings.scrapers} scrapers every {settings.pace_seconds * 1000:g} ms"
    if connections:
        mode += f" + {connections:,} idle connections"
    return LoadRow(
        phase=phase,
        mode=mode,
        idle_connections=connections,
        requests=len(every),
        errors=sum(int(w["errors"]) for w in windows),
        throughput=len(every) / seconds,
        p50_ms=percentile(every, 0.50),
        p99_ms=percentile(every, 0.99),
        max_ms=max(every, default=0.0),
        window_p99_ms=[float(w["p99_ms"]) for w in windows],
        window_max_ms=[float(w["max_ms"]) for w in windows],
        body_bytes=max(int(w["body_bytes"]) for w in windows),
        backups_requests=sum(int(w["backups_requests"]) for w in windows),
        idle_cycles=sum(int(w["idle_cycles"]) for w in windows),
        idle_failed=sum(int(w["idle_failed"]) for w in windows),
        exporter_cpu_seconds=sum(float(w["exporter_cpu_seconds"]) for w in windows),
        simulator_cpu_seconds=sum(float(w["simulator_cpu_seconds"]) for w in windows),
        scrapers_cpu_seconds=sum(float(w["cpu_seconds"]) for w in windows),
    )


def _load_window(
    sim: Simulator, url: str, pid: int, settings: Settings, idle_connections: int
) -> dict[str, Any]:
    before = sim.stats()
    cpu_before = process_cpu(pid)
    simulator_before = process_cpu(sim.process.pid)
    measured = scrape(url, settings, idle_connections)
    measured["exporter_cpu_seconds"] = process_cpu(pid) - cpu_before
    measured["simulator_cpu_seconds"] = process_cpu(sim.process.pid) - simulator_before
    measured["backups_requests"] = sim.stats()["backups_requests"] - before["backups_requests"]
    return measured


# --- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count() or 0),
        "memory": memory,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


# --- command line ---------------------------------------------------------------------------


def parse_sizes(value: str) -> tuple[int, ...]:
    sizes = []
    for part in value.split(","):
        text = part.strip().lower().replace("_", "")
        scale = 1
        if text.endswith("k"):
            text, scale = text[:-1], 1000
        sizes.append(int(float(text) * scale))
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes are positive numbers, e.g. 1k,10k,100k")
    return tuple(sizes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark one poll (exporter vs an SDK-style baseline) and /metrics "
        "under load, against the simulated controller with a cost model.",
    )
    add = parser.add_argument
    add("--sizes", type=parse_sizes, help="federation sizes in backups (default 1k,10k,100k,300k)")
    add("--quick", action="store_true", help="a small, fast run (1k,10k; short load test)")
    add("--vms", type=int, default=5000, help="VMs per federation, at most one per backup")
    add("--repeat", type=int, default=None, help="polls per size and side (median; default 3)")
    add(
        "--page-size",
        type=int,
        default=PollConfig().page_size,
        help="the exporter's poll.page_size (default: the exporter's own)",
    )
    add(
        "--max-concurrency",
        type=int,
        default=PollConfig().max_concurrency,
        help="the exporter's poll.max_concurrency (default: the exporter's own)",
    )
    add(
        "--sweep",
        default="1,2,3,4,8",
        help="poll.max_concurrency values to try at --sweep-at backups ('' for none)",
    )
    add("--sweep-at", type=parse_sizes, default=(100_000,), help="default 100k")
    add("--request-cost", type=float, default=0.020, help="seconds per request")
    add("--object-cost", type=float, default=0.000020, help="seconds per returned backup")
    add("--max-parallel", type=int, default=8, help="requests the controller serves at once")
    add("--load-vms", type=int, default=5000)
    add("--load-backups", type=int, default=100_000)
    add("--scrapers", type=int, default=4)
    add("--pace", type=float, default=1.0, help="seconds between scrapes (default 1)")
    add("--idle-connections", type=int, default=2000, help="idle clients that come and go")
    add("--idle-hold", type=float, default=2.0, help="seconds each round of them is held")
    add("--load-seconds", type=float, default=None, help="default 20 (5 with --quick)")
    add(
        "--load-repeat",
        type=int,
        default=None,
        help="windows per load case, their scrapes taken together (default 3, 1 with --quick)",
    )
    add(
        "--load-cases",
        default=",".join(LOAD_CASES),
        help="which of the load test's cases to run (default: all: idle,polling,churn)",
    )
    variant.add_arguments(parser)
    add("--no-baseline", action="store_true")
    add("--no-load", action="store_true")
    add(
        "--steady",
        default="100k/5000,1000k/20000",
        help="the steady-state run (bench/steady.py): backups/VMs of each federation, polled 5 "
        "simulated minutes apart ('' for none; 10k/500 with --quick)",
    )
    add(
        "--steady-polls",
        type=int,
        default=14,
        help="polls per steady-state federation: 14, 65 simulated minutes (the hourly full scan)",
    )
    add(
        "--output",
        type=Path,
        default=None,
        help=f"where latest.md, latest.json and poll.png go (default {RESULTS}; "
        "--quick runs write nothing unless this is given)",
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    quick = bool(args.quick)
    unknown = set(args.load_cases.split(",")) - set(LOAD_CASES)
    if unknown:
        raise SystemExit(f"--load-cases: no such case {', '.join(sorted(unknown))}")
    sizes = args.sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)
    return Settings(
        sizes=tuple(sizes),
        vms=args.vms,
        repeat=args.repeat or (1 if quick else 3),
        page_size=args.page_size,
        max_concurrency=args.max_concurrency,
        cost=CostModel(args.request_cost, args.object_cost, args.max_parallel),
        load_vms=args.load_vms,
        load_backups=(min(args.load_backups, 20_000) if quick else args.load_backups),
        scrapers=args.scrapers,
        load_seconds=args.load_seconds or (5.0 if quick else 20.0),
        pace_seconds=args.pace,
        load_repeat=args.load_repeat or (1 if quick else 3),
        idle_connections=args.idle_connections,
        idle_hold_seconds=args.idle_hold,
        load_cases=tuple(name for name in LOAD_CASES if name in args.load_cases.split(",")),
        sweep=tuple(int(v) for v in args.sweep.split(",") if v.strip()),
        sweep_size=args.sweep_at[0],
        baseline=not args.no_baseline,
        load=not args.no_load,
        variant=variant.from_arguments(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    began = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    results = Results(settings=settings, machine=machine())
    results.command = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    say(f"cost model: {settings.cost.describe()}")
    results.polls, results.sweep = measure_polls(settings, say)
    if settings.load:
        results.load, results.logins = load_rows(settings, say)
    from bench import steady

    sizes = (
        "10k/500"
        if args.quick and args.steady == build_parser().get_default("steady")
        else args.steady
    )
    steady_rows = [
        row
        for size in filter(None, sizes.split(","))
        for row in steady.run(*steady.parse_size(size), args.steady_polls, say)
    ]
    results.duration_seconds = time.monotonic() - began
    print(report.text(results))
    if steady_rows:
        print(steady.markdown(steady_rows))
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "latest.md").write_text(report.markdown(results), encoding="utf-8")
        (output / "latest.json").write_text(results.to_json() + "\n", encoding="utf-8")
        report.plot(results, output / "poll.png")
        say(f"wrote {output}/latest.md, latest.json and poll.png")
        if steady_rows:
            (output / "steady.md").write_text(steady.markdown(steady_rows), encoding="utf-8")
            (output / "steady.json").write_text(json.dumps(steady_rows, indent=1), encoding="utf-8")
            say(f"wrote {output}/steady.md and steady.json")
    return 0
