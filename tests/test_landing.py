"""The landing page's protection sections, read from constructed snapshots (no server).

The HTML is read the way a person reads it, with the DOM reader of the browser tests
(:class:`tests.browser.Page`, no Chromium needed): tables as rows of cells, text as it shows.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import replace

import pytest

from exporter.landing import AT_RISK_ROWS, _duration, landing_page
from exporter.model import (
    BackupSnapshot,
    ClusterSummary,
    ControllerSnapshot,
    ControllerStatus,
    Inventory,
    VirtualMachine,
    VMProtection,
)
from exporter.protection import PROTECTION_STATUSES
from tests.browser import Page, Table
from tests.snapshots import vm_backups

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
HOUR, DAY = 3600, 86400
AT_RISK_HEADERS = (
    "Status",
    "VM",
    "Cluster",
    "Policy",
    "Destination",
    "Newest good backup",
    "Expected interval",
)


def judged(
    name: str,
    status: str,
    *,
    cluster: str = "dc1-cluster",
    policy: str = "hourly",
    destination: str | None = "dc1-cluster",
    newest: float | None = NOW - 5 * HOUR,
    interval: int | None = HOUR,
    elsewhere: float | None = None,
) -> VMProtection:
    """A live VM with the given judgement; ``elsewhere``: a good backup at another place."""
    vm = VirtualMachine(
        vm_id=f"id-{name}",
        name=name,
        cluster=cluster,
        policy_id=f"pid-{policy}",
        policy=policy,
        datastore="ds1",
        host_id="h1",
        host="host-1",
        created_at=NOW - 30 * DAY,
    )
    held = {d: t for d, t in ((destination, newest), ("dr-site", elsewhere)) if d and t}
    backups = None
    if held:
        newest_at = max(held.values())
        backups = vm_backups(f"id-{name}", held, None, "PROTECTED", newest_at, "dr-site")
    intervals = {destination: interval} if destination and interval else {}
    return VMProtection(
        vm=vm,
        backups=backups,
        intervals=intervals,
        status=status,
        destination=destination,
        newest_protected=newest if destination else None,
        expected_interval=interval,
    )


def cluster(name: str, never_expiring: int = 0, without_vm: int = 0) -> ClusterSummary:
    return ClusterSummary(
        name, {}, {}, None, never_expiring, never_expiring * 100, without_vm, without_vm * 100
    )


def snapshot(
    at_risk: Sequence[VMProtection],
    by_status: dict[str, dict[str, int]] | None = None,
    judged_at: float = NOW - 40,
) -> ControllerSnapshot:
    if by_status is None:
        by_status = {"dc1-cluster": {s: 0 for s in PROTECTION_STATUSES}}
        for vm in at_risk:
            by_status["dc1-cluster"][vm.status] += 1
    return ControllerSnapshot(
        backups=BackupSnapshot(clusters=(), vms=(), backups_seen=1234),
        inventory=Inventory(
            vms=tuple(vm.vm for vm in at_risk), policies=(), hosts=(), schedule=None
        ),
        protection=tuple(at_risk),
        at_risk=tuple(at_risk),
        vms_by_status=by_status,
        policy_vms={},
        judged_at=judged_at,
        overdue_factor=1.5,
        grace_seconds=3600.0,
    )


def status(name: str, snap: ControllerSnapshot | None, *, up: bool = True) -> ControllerStatus:
    return ControllerStatus(
        name=name,
        url=f"https://{name}.example:443",
        polls=3 if snap or not up else 0,
        up=up,
        last_poll_finished=NOW - 10,
        last_duration=1.5,
        last_success=NOW - 40 if snap else None,
        last_error=None if up else "the controller refused the exporter's password (401)",
        snapshot=snap,
    )


def page(*statuses: ControllerStatus) -> Page:
    return Page("http://127.0.0.1/", landing_page(statuses, "HPE SimpliVity backups", NOW))


def at_risk_table(shown: Page, index: int = 0) -> Table:
    tables = [t for t in shown.tables if t.headers == AT_RISK_HEADERS]
    return tables[index]


def counts_table(shown: Page, index: int = 0) -> Table:
    tables = [t for t in shown.tables if t.headers[:2] == ("Cluster", "Live VMs")]
    return tables[index]


def test_vm_counts_per_cluster_with_a_total_and_the_at_risk_ones_highlighted() -> None:
    counts = {
        "dc1-cluster": {"ok": 40, "not_scheduled": 2, "new": 1, "never_backed_up": 0,
                        "overdue": 3, "last_failed": 0, "app_inconsistent": 2},
        "dr-cluster": {"ok": 7, "not_scheduled": 0, "new": 0, "never_backed_up": 1,
                       "overdue": 0, "last_failed": 4, "app_inconsistent": 0},
    }  # fmt: skip
    # Backups nobody owns, counted where the backups are held: a store holds backups but no VM.
    held = (
        cluster("dc1-cluster", never_expiring=5, without_vm=1),
        cluster("StoreOnce-1", never_expiring=2),
    )
    orphaned = {"dc1-cluster": (3, 300), "StoreOnce-1": (1, 100)}
    snap = replace(
        snapshot([], counts),
        backups=BackupSnapshot(clusters=held, vms=(), backups_seen=1234),
        orphaned=orphaned,
    )
    text = landing_page([status("dc1", snap)], "HPE SimpliVity backups", NOW)
    table = counts_table(Page("http://127.0.0.1/", text))
    assert table.headers == (
        "Cluster",
        "Live VMs",
        "never backed up",
        "overdue",
        "not scheduled",
        "last failed",
        "app inconsistent",
        "new",
        "ok",
        "orphaned backups",
        "never-expiring backups",
    )
    assert table.rows == (
        ("StoreOnce-1", "0", "0", "0", "0", "0", "0", "0", "0", "1", "2"),
        ("dc1-cluster", "48", "0", "3", "2", "0", "2", "1", "40", "3", "5"),
        ("dr-cluster", "12", "1", "0", "0", "4", "0", "0", "7", "0", "0"),
        ("all clusters", "60", "1", "3", "2", "4", "2", "1", "47", "4", "7"),
    )
    # Highlighted: exactly the at-risk statuses above 0 (not ok, not new, not a zero).
    risky = re.findall(r'<td class="n risk">(\d+)</td>', text)
    assert risky == ["3", "2", "2", "1", "4", "1", "3", "2", "4", "2"]
    assert re.findall(r'<tr class="total"><td>([^<]*)</td>', text) == ["all clusters"]


def test_one_cluster_needs_no_total_and_no_vms_reads_as_zeros() -> None:
    one = counts_table(page(status("dc1", snapshot([judged("a", "overdue")]))))
    assert one.rows == (("dc1-cluster", "1", "0", "1", "0", "0", "0", "0", "0", "0", "0"),)
    empty = page(status("dc1", snapshot([], {})))
    assert counts_table(empty).rows == (("all clusters",) + ("0",) * 10,)
    assert "No VM at risk." in empty.text
    assert not [t for t in empty.tables if t.headers == AT_RISK_HEADERS]


def test_an_app_inconsistent_vm_is_at_risk_with_its_newest_app_consistent_backup() -> None:
    sql = judged("sql", "app_inconsistent", destination="dr-cluster", newest=None, interval=DAY)
    shown = page(status("dc1", snapshot([sql])))
    assert at_risk_table(shown).records() == [
        {
            "Status": "app inconsistent",
            "VM": "sql",
            "Cluster": "dc1-cluster",
            "Policy": "hourly",
            "Destination": "dr-cluster",
            "Newest good backup": "never",
            "Expected interval": "1 d",
        }
    ]
    assert '<span class="status app_inconsistent">' in shown.dom


def test_at_risk_vms_keep_the_snapshots_order_with_every_column_readable() -> None:
    vms = [
        judged("zeta", "never_backed_up", newest=None, policy="daily", interval=DAY),
        judged("alpha", "overdue", newest=NOW - (3 * DAY + 2 * HOUR + 59), interval=HOUR),
        judged("mid", "overdue", destination="StoreOnce-1", newest=None, interval=7 * DAY,
               elsewhere=NOW - HOUR, policy="weekly-to-store"),
        judged("beta", "not_scheduled", destination=None, interval=None, policy="no-rules",
               elsewhere=NOW - 90 * 60),
        judged("gamma", "last_failed", cluster="dr-cluster", destination="dr-cluster",
               newest=NOW - 30 * 60, interval=90 * 60),
    ]  # fmt: skip
    table = at_risk_table(page(status("dc1", snapshot(vms))))
    assert table.records() == [
        {
            "Status": "never backed up",
            "VM": "zeta",
            "Cluster": "dc1-cluster",
            "Policy": "daily",
            "Destination": "dc1-cluster",
            "Newest good backup": "never",
            "Expected interval": "1 d",
        },
        {
            "Status": "overdue",
            "VM": "alpha",
            "Cluster": "dc1-cluster",
            "Policy": "hourly",
            "Destination": "dc1-cluster",
            "Newest good backup": "3 d 2 h ago (2023-11-11 20:12 UTC)",
            "Expected interval": "1 h",
        },
        {
            # Never at the destination that is overdue, although held elsewhere.
            "Status": "overdue",
            "VM": "mid",
            "Cluster": "dc1-cluster",
            "Policy": "weekly-to-store",
            "Destination": "StoreOnce-1",
            "Newest good backup": "never",
            "Expected interval": "7 d",
        },
        {
            # Not scheduled: no destination to judge; its newest good backup anywhere.
            "Status": "not scheduled",
            "VM": "beta",
            "Cluster": "dc1-cluster",
            "Policy": "no-rules",
            "Destination": "none",
            "Newest good backup": "1 h 30 min ago (2023-11-14 20:43 UTC)",
            "Expected interval": "none",
        },
        {
            "Status": "last failed",
            "VM": "gamma",
            "Cluster": "dr-cluster",
            "Policy": "hourly",
            "Destination": "dr-cluster",
            "Newest good backup": "30 min ago (2023-11-14 21:43 UTC)",
            "Expected interval": "1 h 30 min",
        },
    ]


@pytest.mark.parametrize(
    ("at_risk", "listed", "title"),
    [
        (1, 1, "At-risk VMs, worst first: 1"),
        (AT_RISK_ROWS, AT_RISK_ROWS, f"At-risk VMs, worst first: {AT_RISK_ROWS}"),
        (
            AT_RISK_ROWS + 1,
            AT_RISK_ROWS,
            f"At-risk VMs, worst first: {AT_RISK_ROWS + 1} "
            f"(the first {AT_RISK_ROWS} shown, 1 more not listed)",
        ),
        (
            523,
            AT_RISK_ROWS,
            f"At-risk VMs, worst first: 523 (the first {AT_RISK_ROWS} shown, "
            f"{523 - AT_RISK_ROWS} more not listed)",
        ),
    ],
)
def test_at_most_a_hundred_at_risk_vms_and_how_many_more(
    at_risk: int, listed: int, title: str
) -> None:
    assert AT_RISK_ROWS == 100
    vms = [judged(f"vm-{n:04d}", "overdue") for n in range(at_risk)]
    shown = page(status("dc1", snapshot(vms)))
    rows = at_risk_table(shown).records()
    assert [row["VM"] for row in rows] == [f"vm-{n:04d}" for n in range(listed)]
    assert title in shown.text
    assert ("more not listed" in shown.text) == (at_risk > listed)


def test_user_data_is_escaped_and_non_ascii_names_read_as_written() -> None:
    script = "<script>alert(1)</script>"
    names = [script, "Überwachung-東京-01", 'quote"and&amp', "<b>bold</b>"]
    vms = [
        judged(name, "overdue", cluster=f"{name}-cl", policy=f"{name}-pol", destination=f"{name}-d")
        for name in names
    ]
    counts = {f"{name}-cl": {"overdue": 1} for name in names}
    controller = status("<img src=x onerror=alert(2)>", snapshot(vms, counts))
    text = landing_page([controller], "<i>backups</i>", NOW)
    for raw in (script, "<b>bold</b>", "<img src", "<i>backups</i>"):
        assert raw not in text
    assert html.escape(script) in text
    shown = Page("http://127.0.0.1/", text)
    assert "<script" not in text  # the page itself has no script at all
    for name in names:
        row = shown.row("VM", name)
        assert row["Cluster"] == f"{name}-cl"
        assert row["Policy"] == f"{name}-pol"
        assert row["Destination"] == f"{name}-d"
    assert "Prometheus exporter for <i>backups</i>" in shown.text
    assert {row[0] for row in counts_table(shown).rows} == {*counts, "all clusters"}
    assert "Überwachung-東京-01" in text.encode().decode("utf-8")


def test_no_snapshot_yet_and_stale_data_are_said_plainly() -> None:
    fresh = snapshot([judged("a", "overdue")], judged_at=NOW - 40)
    shown = page(
        status("waiting", None),
        status("refused", None, up=False),
        status("stale", snapshot([judged("old-vm", "never_backed_up", newest=None)],
                                 judged_at=NOW - 2 * HOUR), up=False),
        status("fresh", fresh),
    )  # fmt: skip
    sections = dict(re.findall(r"<h3>(.*?)</h3>\n(.*?)</section>", shown.dom, re.S))
    assert set(sections) == {"waiting", "refused", "stale", "fresh"}
    read = {name: Page("", body).text for name, body in sections.items()}
    assert read["waiting"] == "No data yet: waiting for the first poll."
    assert read["refused"] == "No data yet: no poll has succeeded so far (its last error is above)."
    assert read["stale"].startswith(
        "Stale data: the latest poll failed. What follows is from the last good poll: "
        "2 h ago (2023-11-14 20:13 UTC) "
    )
    # Stale data is still shown, with its date: the last known at-risk VMs.
    assert shown.row("VM", "old-vm")["Status"] == "never backed up"
    assert read["fresh"].startswith(
        "Judged at the end of the latest poll: 40 s ago (2023-11-14 22:12 UTC) "
    )
    assert "Stale" not in read["fresh"]
    assert len([t for t in shown.tables if t.headers[:2] == ("Cluster", "Live VMs")]) == 2


def test_the_controllers_table_is_unchanged_by_the_protection_sections() -> None:
    shown = page(status("dc1", snapshot([judged("a", "overdue")])), status("dc2", None, up=False))
    assert shown.row("Controller", "dc1")["Backups seen"] == "1234"
    assert shown.row("Controller", "dc2")["Result"] == "failed"
    empty = page()
    assert "No controllers configured for this shard." in empty.text


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "0 s"),
        (42.9, "42 s"),
        (60, "1 min"),
        (90 * 60, "1 h 30 min"),
        (HOUR, "1 h"),
        (14 * HOUR, "14 h"),
        (DAY, "1 d"),
        (DAY + 30 * 60, "1 d"),  # two units at most, the largest ones
        (25 * HOUR, "1 d 1 h"),
        (7 * DAY, "7 d"),
        (61 * DAY + 59, "61 d"),
        (float("inf"), "forever"),
    ],
)
def test_durations_read_in_their_two_largest_units(seconds: float, words: str) -> None:
    assert _duration(seconds) == words
