"""The benchmark's results as a text table, a Markdown page and a PNG plot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.config import PollConfig

if TYPE_CHECKING:
    from bench.run import PollRow, Results

MB = 1_000_000


@dataclass(frozen=True)
class Target:
    what: str
    measured: str
    met: bool | None  # None: not measured in this run


def _row(results: Results, side: str, backups: int) -> PollRow | None:
    for row in results.polls:
        if row.side == side and row.backups == backups:
            return row
    return None


def targets(results: Results) -> list[Target]:
    found: list[Target] = []
    exporter, baseline = _row(results, "exporter", 100_000), _row(results, "baseline", 100_000)
    if exporter and baseline:
        ratio = baseline.wall_seconds / exporter.wall_seconds
        found.append(
            Target(
                "poll at 100k backups ≤ 1/5 of the baseline's wall time",
                f"{exporter.wall_seconds:.2f} s vs {baseline.wall_seconds:.2f} s: 1/{ratio:.1f}",
                ratio >= 5,
            )
        )
    else:
        found.append(Target("poll at 100k backups ≤ 1/5 of the baseline's wall time", "", None))
    small, large = _row(results, "exporter", 10_000), _row(results, "exporter", 300_000)
    if small and large:
        growth = large.peak_rss_bytes - small.peak_rss_bytes
        found.append(
            Target(
                "peak RSS growth from 10k to 300k backups < 30 MB",
                f"{small.peak_rss_bytes / MB:.1f} → {large.peak_rss_bytes / MB:.1f} MB: "
                f"{growth / MB:+.1f} MB",
                growth < 30 * MB,
            )
        )
    else:
        found.append(Target("peak RSS growth from 10k to 300k backups < 30 MB", "", None))
    big = [r for r in results.polls if r.side == "exporter" and r.backups >= 100_000]
    if big:
        per = [r.cpu_seconds * 100_000 / r.backups for r in big]
        shown = ", ".join(f"{p:.2f} s ({_size(r.backups)})" for p, r in zip(per, big, strict=True))
        found.append(Target("CPU time per 100k backups < 2 s", shown, max(per) < 2))
    else:
        found.append(Target("CPU time per 100k backups < 2 s", "", None))
    s = results.settings
    where = f"{s.load_vms:,} VMs, polls back to back"
    paced = f"{s.scrapers} scrapers each every {s.pace_seconds:g} s"
    plain = next((r for r in results.load if r.phase == "polling" and not r.idle_connections), None)
    what = f"/metrics p99 < 50 ms, {where}, {paced}"
    found.append(
        Target(what, f"{plain.p99_ms:.1f} ms", plain.p99_ms < 50 and plain.errors == 0)
        if plain
        else Target(what, "", None)
    )
    churned = next((r for r in results.load if r.phase == "polling" and r.idle_connections), None)
    what = (
        f"worst scrape < 500 ms, the same while {s.idle_connections:,} idle connections come and go"
    )
    found.append(
        Target(what, f"{churned.max_ms:.1f} ms", churned.max_ms < 500 and churned.errors == 0)
        if churned
        else Target(what, "", None)
    )
    check = results.logins
    if check:
        found.append(
            Target(
                "one login per controller per token lifetime",
                f"{check.controller_logins} login(s) over ~{check.polls} polls in "
                f"{check.seconds:.0f} s (exporter says {check.exporter_logins:g})",
                check.controller_logins == 1 and check.exporter_logins == 1,
            )
        )
    else:
        found.append(Target("one login per controller per token lifetime", "", None))
    return found


def _size(backups: int) -> str:
    if backups % 1000 == 0 and backups >= 1000:
        return f"{backups // 1000}k"
    return str(backups)


def _poll_table(results: Results) -> tuple[list[str], list[list[str]]]:
    header = [
        "backups",
        "VMs",
        "side",
        "wall s",
        "CPU s",
        "peak RSS MB",
        "requests",
        "MB received",
        "logins",
        "baseline / exporter",
    ]
    rows = []
    for row in results.polls:
        ratio = ""
        if row.side == "exporter":
            other = _row(results, "baseline", row.backups)
            if other:
                ratio = f"{other.wall_seconds / row.wall_seconds:.1f}x"
        rows.append(
            [
                _size(row.backups),
                f"{row.vms:,}",
                row.side,
                f"{row.wall_seconds:.2f}",
                f"{row.cpu_seconds:.2f}",
                f"{row.peak_rss_bytes / MB:.1f}",
                str(row.requests),
                f"{row.bytes_received / MB:.1f}",
                str(row.logins),
                ratio,
            ]
        )
    return header, rows


def _worker_note(results: Results) -> list[str]:
    """A sentence on the decoding worker's share of the exporter's peak RSS, and a blank line;
    nothing if no poll had a worker."""
    rows = [r for r in results.polls if r.side == "exporter" and r.worker_peak_rss_bytes]
    if not rows:
        return []
    shares = ", ".join(
        f"{row.worker_peak_rss_bytes / MB:.1f} MB at {_size(row.backups)}" for row in rows
    )
    return [f"Of the exporter's peak RSS, the decoding worker's own peak: {shares}.", ""]


def _requests_note(results: Results) -> list[str]:
    """The exporter's requests of one poll by path, per size, and a blank line; nothing if
    the controller did not count them."""
    rows = [r for r in results.polls if r.side == "exporter" and r.requests_per_path]
    if not rows:
        return []
    sizes = "; ".join(
        f"{_size(row.backups)}: "
        + ", ".join(f"{path} {count}" for path, count in row.requests_per_path.items())
        for row in rows
    )
    return [f"The exporter's requests of one poll, by path. {sizes}.", ""]


def _load_table(results: Results) -> tuple[list[str], list[list[str]]]:
    header = [
        "/metrics",
        "load",
        "scrapes",
        "errors",
        "p50 ms",
        "p99 ms",
        "max ms",
        "each window's p99 ms",
        "body KB (gzip)",
        "idle rounds",
        "CPU s: exporter / scrapers / controller",
        "backup requests",
    ]
    rows = [
        [
            "while polling" if row.phase == "polling" else "no poll running",
            row.mode,
            str(row.requests),
            str(row.errors),
            f"{row.p50_ms:.2f}",
            f"{row.p99_ms:.2f}",
            f"{row.max_ms:.1f}",
            ", ".join(f"{value:.1f}" for value in row.window_p99_ms),
            f"{row.body_bytes / 1000:.0f}",
            str(row.idle_cycles) if row.idle_connections else "",
            f"{row.exporter_cpu_seconds:.1f} / {row.scrapers_cpu_seconds:.1f} / "
            f"{row.simulator_cpu_seconds:.1f}",
            str(row.backups_requests),
        ]
        for row in results.load
    ]
    return header, rows


def _sweep_table(results: Results) -> tuple[list[str], list[list[str]]]:
    header = ["poll.max_concurrency", "wall s", "CPU s", "in flight at most", "baseline / exporter"]
    rows = []
    for point in results.sweep:
        baseline = _row(results, "baseline", point.backups)
        ratio = f"{baseline.wall_seconds / point.wall_seconds:.1f}x" if baseline else ""
        rows.append(
            [
                str(point.max_concurrency),
                f"{point.wall_seconds:.2f}",
                f"{point.cpu_seconds:.2f}",
                str(point.max_in_flight),
                ratio,
            ]
        )
    return header, rows


def _targets_table(results: Results) -> tuple[list[str], list[list[str]]]:
    marks = {True: "met", False: "NOT met", None: "not measured"}
    return ["target", "measured", ""], [
        [t.what, t.measured, marks[t.met]] for t in targets(results)
    ]


def _plain(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _settings_line(results: Results) -> str:
    s = results.settings
    return (
        f"Simulated controller: {s.cost.describe()}. Exporter: poll.page_size {s.page_size}, "
        f"poll.max_concurrency {s.max_concurrency}. Baseline: every field, 500 per page, "
        f"one request at a time, a new login per run. Median of {s.repeat} polls per row, "
        f"each in a fresh process. The exporter as measured: {s.variant.describe()}."
    )


def text(results: Results) -> str:
    parts = [_settings_line(results), "", _plain(*_poll_table(results))]
    for note in (_worker_note(results), _requests_note(results)):
        if note:
            parts += ["", note[0]]
    if results.sweep:
        parts += ["", f"At {_size(results.sweep[0].backups)} backups:"]
        parts += [_plain(*_sweep_table(results))]
    if results.load:
        parts += ["", _plain(*_load_table(results))]
    parts += ["", _plain(*_targets_table(results))]
    m = results.machine
    parts += [
        "",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}; "
        f"the run took {results.duration_seconds / 60:.1f} min.",
    ]
    return "\n".join(parts)


def markdown(results: Results) -> str:
    m = results.machine
    s = results.settings
    parts = [
        "# Benchmark results",
        "",
        f"`{results.command}` on {m['cpu']} ({m['cores']} cores, {m['memory']}), "
        f"Python {m['python']}, {m['os']}; the run took "
        f"{results.duration_seconds / 60:.1f} minutes.",
        "",
        _settings_line(results),
        "",
        "## One full poll",
        "",
        f"Federations of up to {s.vms:,} VMs (at most one VM per backup): the VM count stays "
        "fixed while the backups grow, so memory growth with backups shows by itself. Each "
        "poll runs in a fresh process. Wall time; CPU time (user + system, all threads) of "
        "that process and, for the exporter, of its decoding worker (the child process that "
        "decodes and counts the pages); peak RSS of that process (interpreter and imports "
        "included), for the exporter plus the worker's own peak (a sum of two peaks: an upper "
        "bound of what both held at once); requests, bytes and logins as the simulated "
        "controller counted them.",
        "",
        _markdown_table(*_poll_table(results)),
        "",
        *_worker_note(results),
        *_requests_note(results),
        "![poll time and peak RSS against federation size](poll.png)",
    ]
    if results.sweep:
        parts += [
            "",
            f"### poll.max_concurrency at {_size(results.sweep[0].backups)} backups",
            "",
            "Requests in flight at once per controller after the first page (the exporter's "
            f"default is {PollConfig().max_concurrency}): more is faster and loads the "
            "controller more.",
            "",
            _markdown_table(*_sweep_table(results)),
        ]
    if results.load:
        parts += [
            "",
            "## /metrics under load",
            "",
            f"The exporter (`python -m exporter`) holding {s.load_vms:,} VMs "
            f"({s.load_backups:,} backups); {s.scrapers} scrapers, each with a keep-alive "
            "connection and `Accept-Encoding: gzip` as Prometheus scrapes, all together every "
            f"{s.pace_seconds:g} s; in the last row, beside them, rounds of "
            f"{s.idle_connections:,} connections that send nothing, opened, held "
            f"{s.idle_hold_seconds:g} s and closed. {s.load_repeat} windows of "
            f"{s.load_seconds:g} s per row, their scrapes taken together (each window's own "
            "p99 shows the noise). *While polling*: `interval_seconds: 1`, so that polls run "
            "back to back through the windows. The controller, the scrapers and the exporter "
            "share the machine's cores: their CPU time is shown (the exporter's includes its "
            "decoding worker's).",
            "",
            _markdown_table(*_load_table(results)),
        ]
    parts += ["", "## Targets (issues 5 and 19)", "", _markdown_table(*_targets_table(results)), ""]
    return "\n".join(parts)


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"exporter": ("tab:blue", "o", "exporter"), "baseline": ("tab:red", "s", "baseline")}
    for side, (colour, marker, label) in styles.items():
        rows = sorted((r for r in results.polls if r.side == side), key=lambda r: r.backups)
        if not rows:
            continue
        sizes = [r.backups for r in rows]
        time_axis.plot(
            sizes, [r.wall_seconds for r in rows], marker=marker, color=colour, label=label
        )
        memory_axis.plot(
            sizes, [r.peak_rss_bytes / MB for r in rows], marker=marker, color=colour, label=label
        )
    s = results.settings
    time_axis.set_title("One full poll: wall time")
    time_axis.set_ylabel("seconds")
    time_axis.set_yscale("log")
    memory_axis.set_title("One full poll: peak RSS (exporter: + its decoding worker's)")
    memory_axis.set_ylabel("MB")
    memory_axis.set_ylim(bottom=0)
    for axis in (time_axis, memory_axis):
        axis.set_xscale("log")
        axis.set_xlabel("backups in the federation")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(
        f"page_size {s.page_size}, max_concurrency {s.max_concurrency}; controller: "
        f"{s.cost.describe()}; {results.machine['cpu']}, {results.machine['cores']} cores",
        fontsize=8,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
