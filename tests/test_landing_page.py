"""The landing page in a real browser (headless Chromium), as a person reads it.

One Chromium run for the page of an exporter polling two simulated controllers, one healthy
and one refusing the exporter's password; the screenshot is kept in the test's temporary
directory. The helper's reading of a DOM is checked without a browser.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import Page, load
from tests.conftest import wait_until
from tests.live_exporter import Lab, controller_config

# The landing page's colours for a good and a failed poll (its CSS: .ok and .failed).
GREEN, RED = "#1a7f37", "#cf222e"


def test_the_landing_page_shows_each_controller_and_how_its_polls_go(tmp_path: Path) -> None:
    with Lab() as lab:
        healthy = lab.controller("dc1")
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
        page = load(exporter.url + "/", screenshot=tmp_path / "landing.png")
        statuses = {status.name: status for status in exporter.server.app.statuses()}

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
    assert failed["Last error"] == " ".join((statuses["dc2"].last_error or "").split())
    assert failed["Last error"] != ""
    assert "not-the-password" not in page.dom
    # Shown in colour: the good result in green, the failed one in red.
    assert page.pixels_near(GREEN) > 20
    assert page.pixels_near(RED) > 20


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
