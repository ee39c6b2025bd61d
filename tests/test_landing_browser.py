"""The landing page in a real browser (headless Chromium), as a person reads it.

One Chromium run for the page of an exporter polling two simulated controllers, one healthy
(the default federation, where the simulator plants every protection status) and one refusing
the exporter's password; the screenshot is kept in the test's temporary directory. The
helper's reading of a DOM is checked without a browser.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from exporter.landing import AT_RISK_ROWS
from exporter.protection import AT_RISK_STATUSES, PROTECTION_STATUSES
from exporter.simulator import DR_STOPPED_VM, NEVER_BACKED_UP_VM, NO_RULES_VM, FederationSpec
from tests.browser import Page, Table, load
from tests.conftest import wait_until
from tests.live_exporter import Lab, controller_config

# The landing page's colours for a good and a failed poll (its CSS: .ok and .failed).
GREEN, RED = "#1a7f37", "#cf222e"


def test_the_landing_page_shows_each_controller_and_how_its_polls_go(tmp_path: Path) -> None:
    with Lab() as lab:
        healthy = lab.controller("dc1", FederationSpec())
        refusing = lab.controller("dc2")
        exporter = lab.start_exporter(
            controllers=(
                controller_config("dc1", healthy),
                controller_config("dc2", refusing, password="not-the-password"),
            )
        )
        wait_until(
            lambda: (lambda s: s.up("dc1") == 1 and s.up("dc2") == 0)(exporter.scrape()),
            30,
            "a good poll of dc1 and a failed one of dc2",
        )
        page = load(exporter.url + "/", screenshot=tmp_path / "landing.png", window=(1280, 1600))
        scraped = exporter.scrape()
        statuses = {status.name: status for status in exporter.server.app.statuses()}
        planted = dict(healthy.planted)
        expected = Counter(healthy.expected_statuses.values())
        backups = healthy.backups()

    assert page.title == "SimpliVity exporter"
    assert "Metrics · Health · Readiness" in page.text
    good = page.row("Controller", "dc1")
    assert good["URL"] == healthy.url
    assert good["Result"] == "ok"
    assert good["Last poll"].endswith(" s ago")
    snapshot = statuses["dc1"].snapshot
    assert snapshot is not None
    assert good["Backups seen"] == str(snapshot.backups_seen)
    assert good["Last error"] == ""
    failed = page.row("Controller", "dc2")
    assert failed["Result"] == "failed"
    assert failed["Backups seen"] == ""
    # The time of the next login attempt moves on with each poll (one a second here).
    shown_error, published_error = (
        " ".join(text.split()).partition("; next attempt")[0]
        for text in (failed["Last error"], statuses["dc2"].last_error or "")
    )
    assert shown_error == published_error
    assert failed["Last error"] != ""
    assert "not-the-password" not in page.dom
    # Shown in colour: the good result in green, the failed one in red.
    assert page.pixels_near(GREEN) > 20
    assert page.pixels_near(RED) > 20

    # Protection: the live VMs by status (the simulator's own count of what it planted) ...
    assert set(planted.values()) >= AT_RISK_STATUSES, planted
    counts = _tables(page, "Cluster", "Live VMs")
    assert len(counts) == 1  # dc2 has no data yet, and says so
    assert "No data yet: no poll has succeeded so far" in page.text
    total = dict(zip(counts[0].headers, counts[0].rows[-1], strict=True))
    assert total["Cluster"] == "all clusters"
    assert total["Live VMs"] == str(sum(expected.values()))
    for status in PROTECTION_STATUSES:
        assert total[_words(status)] == str(expected[status]), status
    # ... and each planted at-risk VM with its status, worst first; the others not listed.
    at_risk = _tables(page, "Status", "VM")
    assert len(at_risk) == 1
    listed = at_risk[0].records()
    assert [row["VM"] for row in listed] == [p.vm.name for p in snapshot.at_risk[:AT_RISK_ROWS]]
    for name, status in planted.items():
        if status in AT_RISK_STATUSES:
            assert page.row("VM", name)["Status"] == _words(status), name
        else:
            assert name not in {row["VM"] for row in listed}, (name, status)
    # The DR copies stopped: overdue at another cluster than the VM's own.
    dr = page.row("VM", DR_STOPPED_VM)
    assert dr["Destination"] not in ("", "none", dr["Cluster"])
    assert page.row("VM", NEVER_BACKED_UP_VM)["Newest good backup"] == "never"
    assert page.row("VM", NO_RULES_VM)["Expected interval"] == "none"

    # One verdict: simplivity_vm_protection_status says for every live VM what the page says
    # (the at-risk table; every VM through the snapshot the page is rendered from), and its
    # counts by cluster and status are the page's.
    exported = {
        labels["vm_id"]: labels["status"]
        for labels, value in scraped.matching("simplivity_vm_protection_status", controller="dc1")
        if value == 1
    }
    assert exported == {judged.vm.vm_id: judged.status for judged in snapshot.protection}
    assert exported == healthy.expected_statuses
    for row, judged in zip(listed, snapshot.at_risk, strict=False):
        assert row["Status"] == _words(exported[judged.vm.vm_id]), row
    cluster_of = {judged.vm.vm_id: judged.vm.cluster for judged in snapshot.protection}
    for table in counts:
        for record in table.records():
            if record["Cluster"] == "all clusters":
                continue
            for status in PROTECTION_STATUSES:
                shown = sum(
                    1
                    for vm_id, s in exported.items()
                    if s == status and cluster_of[vm_id] == record["Cluster"]
                )
                assert record[_words(status)] == str(shown), (record, status)
    # Backups nobody owns, where they are held: counted from the simulator's own records.
    live = set(exported)
    orphaned: Counter[str] = Counter()
    never: Counter[str] = Counter()
    for backup in backups:
        where = str(backup["omnistack_cluster_name"] or backup["external_store_name"])
        orphaned[where] += backup["virtual_machine_id"] not in live
        never[where] += backup["expiration_time"] == "NA"
    rows = {r["Cluster"]: r for r in counts[0].records()}
    assert set(rows) == {*cluster_of.values(), *orphaned, "all clusters"}
    for where in orphaned:
        assert rows[where]["orphaned backups"] == str(orphaned[where]), where
        assert rows[where]["never-expiring backups"] == str(never[where]), where
    assert rows["all clusters"]["orphaned backups"] == str(sum(orphaned.values()))
    assert sum(orphaned.values()) > 0
    assert sum(never.values()) > 0

    # The README's series-per-VM figure is this federation's (the demo's): dc1's series that
    # carry a vm_id, over its live VMs.
    per_vm = [
        labels["vm_id"]
        for (name, key), _ in scraped.samples.items()
        for labels in [dict(key)]
        if labels.get("controller") == "dc1" and "vm_id" in labels
    ]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    # A range: the simulator's policies keep as many backups as their VMs hold at the hour
    # the federation is made (a London DR rule keeps 1 or 2, so it promises a recovery window
    # or none), which adds or takes three series.
    figure = re.search(
        r"([\d.]+) to ([\d.]+) per VM on average on the demo, (\d+) to (\d+) series for"
        r"\s+its (\d+) live",
        readme,
    )
    assert figure, "the README's series-per-VM figure"
    fewest, most, vms = int(figure.group(3)), int(figure.group(4)), int(figure.group(5))
    assert fewest <= len(per_vm) <= most
    assert vms == len(exported)
    average = f"{len(per_vm) / len(exported):.1f}"
    assert average in (figure.group(1), figure.group(2))
    assert (figure.group(1), figure.group(2)) == (f"{fewest / vms:.1f}", f"{most / vms:.1f}")


def _tables(page: Page, *first_headers: str) -> list[Table]:
    return [t for t in page.tables if t.headers[: len(first_headers)] == first_headers]


def _words(status: str) -> str:
    return status.replace("_", " ")


DOM = """<!DOCTYPE html><html><head><title>A  page</title><style>td { color: red }</style></head>
<body><h1>Title</h1><p>Some&nbsp;text &amp; more</p>
<table><tr><th>Name</th><th>State</th></tr>
<tr><td>a</td><td><span class="ok">ok</span></td></tr>
<tr><td>b</td><td>
  <b>failed</b> twice</td></tr></table>
<script>var hidden = 1;</script></body></html>"""


def test_a_page_reads_its_dom_as_a_person_would() -> None:
    page = Page("http://127.0.0.1/", DOM)
    assert page.title == "A page"
    assert page.text == "Title Some text & more Name State a ok b failed twice"
    assert [table.headers for table in page.tables] == [("Name", "State")]
    assert page.row("Name", "b") == {"Name": "b", "State": "failed twice"}
    assert page.row("State", "ok") == {"Name": "a", "State": "ok"}
    with pytest.raises(AssertionError, match="0 rows with Name = 'c'"):
        page.row("Name", "c")
    with pytest.raises(ValueError, match="without a screenshot"):
        page.pixels_near("#000000")
