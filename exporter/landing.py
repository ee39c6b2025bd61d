"""The landing page (``/``): what this exporter is, how each controller's polls go, and its VMs
by protection status, the at-risk ones listed worst first.

A pure function of the published statuses and the clock: :mod:`exporter.web` serves it.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence

from exporter import __version__
from exporter.model import ControllerSnapshot, ControllerStatus
from exporter.protection import AT_RISK_STATUSES, SEVERITY

#: The at-risk VMs listed per controller; the page says how many more there are.
AT_RISK_ROWS = 100

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; line-height: 1.35; }
h2 { margin-top: 1.6em; } h3 { margin: 1.4em 0 0.3em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; }
td.risk { background: #ffebe9; color: #a40e26; font-weight: 600; }
.ok { color: #1a7f37; font-weight: 600; } .failed { color: #cf222e; font-weight: 600; }
.pending { color: #9a6700; }
.status { font-weight: 600; white-space: nowrap; }
.status.overdue, .status.never_backed_up, .status.last_failed { color: #cf222e; }
.status.not_scheduled { color: #9a6700; } .status.app_inconsistent { color: #bc4c00; }
.utc { color: #666; font-size: 0.9em; white-space: nowrap; }
@media (max-width: 40em) { body { margin: 0.7em; } th, td { padding: 0.25em 0.4em; } }
"""


def landing_page(statuses: Sequence[ControllerStatus], description: str, now: float) -> str:
    """The ``/`` page: what this is, how each controller is doing, and where to go next.

    Per controller, its live VMs by protection status (per cluster) and its at-risk VMs, worst
    first, as the last good poll judged them. Everything that comes from a controller or the
    configuration is escaped; nothing secret is shown.
    """
    rows = "\n".join(_landing_row(status, now) for status in statuses)
    if not rows:
        rows = '<tr><td colspan="7">No controllers configured for this shard.</td></tr>'
    sections = "\n".join(_protection_section(status, now) for status in statuses)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SimpliVity exporter</title>
<style>{_STYLE}</style></head>
<body>
<h1>SimpliVity exporter</h1>
<p>Prometheus exporter for {html.escape(description)}, version {html.escape(__version__)}.</p>
<p><a href="/metrics">Metrics</a> · <a href="/-/healthy">Health</a> ·
<a href="/-/ready">Readiness</a></p>
<div class="scroll"><table>
<tr><th>Controller</th><th>URL</th><th>Last poll</th><th>Result</th><th>Duration</th>
<th>Backups seen</th><th>Last error</th></tr>
{rows}
</table></div>
<h2>Protection</h2>
<p>Each live VM is judged against its own policy at the end of each good poll. At risk:
never backed up, overdue at a destination of its policy, not scheduled (a policy without
rules, or policy backups disabled on its host), last backup failed, no recent
application-consistent backup where its policy asks for one. Orphaned backups are those of
no live VM; never-expiring ones have no expiration time (manual backups).</p>
{sections}
</body>
</html>
"""


def _landing_row(status: ControllerStatus, now: float) -> str:
    if status.polls == 0:
        when, result = "not yet", '<span class="pending">pending</span>'
    else:
        finished = status.last_poll_finished or now
        when = f"{max(0.0, now - finished):.0f} s ago"
        result = '<span class="ok">ok</span>' if status.up else '<span class="failed">failed</span>'
    duration = f"{status.last_duration:.2f} s" if status.last_duration is not None else ""
    seen = str(status.snapshot.backups_seen) if status.snapshot else ""
    error = status.last_error if status.last_error and not status.up else ""
    cells = (status.name, status.url)
    escaped = "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
    tail = "".join(f"<td>{html.escape(cell)}</td>" for cell in (duration, seen, error))
    return f"<tr>{escaped}<td>{html.escape(when)}</td><td>{result}</td>{tail}</tr>"


def _protection_section(status: ControllerStatus, now: float) -> str:
    """A controller's VMs by protection status, and its at-risk VMs: or why there are none."""
    heading = f"<h3>{html.escape(status.name)}</h3>"
    snapshot = status.snapshot
    if snapshot is None:
        if status.polls == 0:
            note = "No data yet: waiting for the first poll."
        else:
            note = "No data yet: no poll has succeeded so far (its last error is above)."
        return f'<section>{heading}\n<p class="pending">{note}</p></section>'
    judged = _moment(snapshot.judged_at, now)
    if status.up:
        note = f"<p>Judged at the end of the latest poll: {judged}</p>"
    else:
        note = (
            '<p><span class="failed">Stale data:</span> the latest poll failed. What follows '
            f"is from the last good poll: {judged}</p>"
        )
    return f"<section>{heading}\n{note}\n{_counts(snapshot)}\n{_at_risk(snapshot, now)}</section>"


def _counts(snapshot: ControllerSnapshot) -> str:
    """Live VMs per cluster and status; a total row when there is not exactly one cluster.

    The statuses are columns worst first, so the at-risk ones stay in view in a narrow window.
    """
    # Clusters of live VMs or hosts, and clusters and stores holding backups.
    unowned = {name: (orphans, never) for name, (orphans, _, never, _) in snapshot.unowned()}
    names = sorted({*snapshot.vms_by_status, *unowned})
    clusters = [(name, snapshot.vms_by_status.get(name, {}), unowned.get(name, (0, 0)))
                for name in names]  # fmt: skip
    rows = [(html.escape(name), counts, extra, "") for name, counts, extra in clusters]
    if len(rows) != 1:
        total = {s: sum(counts.get(s, 0) for _, counts, _ in clusters) for s in SEVERITY}
        extra = (sum(e[0] for _, _, e in clusters), sum(e[1] for _, _, e in clusters))
        rows.append(("all clusters", total, extra, ' class="total"'))
    header = "".join(f"<th>{_words(s)}</th>" for s in SEVERITY)
    lines = [
        f"<tr><th>Cluster</th><th>Live VMs</th>{header}"
        "<th>orphaned backups</th><th>never-expiring backups</th></tr>"
    ]
    for cluster, counts, (orphans, never), total_class in rows:
        cells = []
        for status in SEVERITY:
            count = counts.get(status, 0)
            risky = " risk" if count and status in AT_RISK_STATUSES else ""
            cells.append(f'<td class="n{risky}">{count}</td>')
        cells += [f'<td class="n">{orphans}</td>', f'<td class="n">{never}</td>']
        live = sum(counts.get(s, 0) for s in SEVERITY)
        lines.append(
            f'<tr{total_class}><td>{cluster}</td><td class="n">{live}</td>{"".join(cells)}</tr>'
        )
    return '<div class="scroll"><table class="counts">\n' + "\n".join(lines) + "\n</table></div>"


def _at_risk(snapshot: ControllerSnapshot, now: float) -> str:
    """The first :data:`AT_RISK_ROWS` at-risk VMs in the snapshot's order (worst first)."""
    at_risk = snapshot.at_risk
    if not at_risk:
        return '<p class="ok">No VM at risk.</p>'
    shown = at_risk[:AT_RISK_ROWS]
    lines = [
        "<tr><th>Status</th><th>VM</th><th>Cluster</th><th>Policy</th><th>Destination</th>"
        "<th>Newest good backup</th><th>Expected interval</th></tr>"
    ]
    for vm in shown:
        if vm.destination is None:  # not scheduled: there is no destination to judge
            destination, newest = "none", vm.newest_protected_anywhere
        else:
            destination, newest = vm.destination, vm.newest_protected
        interval = "none" if vm.expected_interval is None else _duration(vm.expected_interval)
        status = html.escape(vm.status)
        cells = (vm.vm.name, vm.vm.cluster, vm.vm.policy, destination)
        lines.append(
            f'<tr><td><span class="status {status}">{_words(vm.status)}</span></td>'
            + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
            + f"<td>{_moment(newest, now, ' <br>')}</td><td>{html.escape(interval)}</td></tr>"
        )
    title = f"At-risk VMs, worst first: {len(at_risk)}"
    if len(at_risk) > len(shown):
        more = len(at_risk) - len(shown)
        title += f" (the first {len(shown)} shown, {more} more not listed)"
    table = '<div class="scroll"><table class="at-risk">\n' + "\n".join(lines) + "\n</table></div>"
    return f"<p><strong>{title}</strong></p>\n{table}"


def _words(status: str) -> str:
    """A protection status as words: ``never_backed_up`` reads "never backed up"."""
    return html.escape(status.replace("_", " "))


def _moment(when: float | None, now: float, separator: str = " ") -> str:
    """``3 h 5 min ago`` and its UTC time, as escaped HTML; ``never`` for None."""
    if when is None:
        return "never"
    try:
        utc = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    except (OverflowError, OSError, ValueError):  # a timestamp no calendar holds
        return html.escape(f"{when:g} (not a time)")
    age = now - when
    ago = f"{_duration(age)} ago" if age >= 0 else f"in {_duration(-age)}"
    return f'{ago}{separator}<span class="utc">({utc})</span>'


def _duration(seconds: float) -> str:
    """Seconds as its two largest units: ``1 h``, ``7 d``, ``1 h 30 min``, ``2 d 3 h``, ``42 s``.

    >>> _duration(3600), _duration(86400 * 7), _duration(5400), _duration(183_900), _duration(42.7)
    ('1 h', '7 d', '1 h 30 min', '2 d 3 h', '42 s')
    """
    if not math.isfinite(seconds):
        return "forever"
    left = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        amount, left = divmod(left, size)
        if amount or parts:
            parts.append(f"{amount} {unit}")
        if len(parts) == 2:
            break
    parts = [part for part in parts if not part.startswith("0 ")]
    return " ".join(parts) or "0 s"
