"""A real browser for the tests: Debian's Chromium, headless, loading a page from an exporter.

``./dev setup`` installs it (the ``chromium`` package). Each :func:`load` starts a fresh
Chromium, which costs a second or two (more on a busy machine): load a page once, with its
screenshot, and ask the returned :class:`Page` everything the test needs::

    page = load(exporter.url + "/", screenshot=tmp_path / "landing.png")
    row = page.row("Controller", "dc1")          # {"Controller": "dc1", "Result": "ok", ...}
    assert row["Result"] == "ok"
    assert page.pixels_near("#1a7f37") > 0       # and it is shown in green

The DOM is the document as Chromium built it (``--dump-dom``: parsed, scripts run), and its
text is taken the way it reads on screen: no markup, no ``<style>`` or ``<script>``, runs of
white space as one space. Chromium is kept off the network: no proxy, no background services,
and every host but ``localhost``, 127.0.0.1 and ::1 fails to resolve, so only a test's own server
is asked.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
QUIET_FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in containers, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a container's small /dev/shm would crash the renderer
    "--hide-scrollbars",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--no-pings",
)


class BrowserError(AssertionError):
    """Chromium is missing, failed, or did not finish in time (with the end of its output)."""


def chromium() -> str:
    """The Chromium command on PATH; a clear failure when there is none."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError(
        "no Chromium on PATH: Debian's chromium package, which `./dev setup` installs "
        "(or: apt-get install chromium)"
    )


@dataclass(frozen=True)
class Table:
    """A ``<table>`` as it reads: header cells (the first row's), then each row's cells."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def records(self) -> list[dict[str, str]]:
        return [dict(zip(self.headers, row, strict=False)) for row in self.rows]


@dataclass(frozen=True)
class Page:
    """A page as Chromium showed it: ``dom`` from ``--dump-dom``, and the screenshot's path."""

    url: str
    dom: str
    screenshot: Path | None = None

    @property
    def text(self) -> str:
        """The body's text as it reads, white space collapsed."""
        return _collapse(" ".join(self._document().text))

    @property
    def title(self) -> str:
        return _collapse(" ".join(self._document().title))

    @property
    def tables(self) -> list[Table]:
        return [
            Table(tuple(rows[0]), tuple(tuple(row) for row in rows[1:]))
            for rows in self._document().tables
            if rows
        ]

    def _document(self) -> _Document:
        document = _Document()
        document.feed(self.dom)
        document.close()
        return document

    def row(self, header: str, value: str) -> dict[str, str]:
        """The one row, of any table, whose cell under ``header`` reads ``value``."""
        found = [
            record
            for table in self.tables
            for record in table.records()
            if record.get(header) == value
        ]
        if len(found) != 1:
            shown = "\n".join(f"{t.headers}\n" + "\n".join(map(str, t.rows)) for t in self.tables)
            raise AssertionError(
                f"{len(found)} rows with {header} = {value!r} in {self.url}; its tables:\n{shown}"
            )
        return found[0]

    def pixels_near(self, color: str, tolerance: float = 0.08) -> int:
        """How many pixels of the screenshot have this colour (``#rrggbb``), give or take."""
        if self.screenshot is None:
            raise ValueError("this page was loaded without a screenshot")
        image = np.asarray(matplotlib.image.imread(self.screenshot))[..., :3]
        wanted = np.array([int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        return int((np.abs(image - wanted).max(axis=-1) < tolerance).sum())


def load(
    url: str,
    *,
    screenshot: Path | None = None,
    window: tuple[int, int] = (1280, 900),
    timeout: float = 90.0,
) -> Page:
    """``url`` in a fresh headless Chromium: its DOM, and a PNG screenshot if asked for."""
    command = [chromium(), *QUIET_FLAGS, f"--window-size={window[0]},{window[1]}"]
    if screenshot is not None:
        command.append(f"--screenshot={screenshot}")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command += [f"--user-data-dir={profile}", "--dump-dom", url]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise BrowserError(f"Chromium did not load {url} in {timeout:g} s") from err
    if done.returncode != 0 or not done.stdout.strip() or "Page load failed" in done.stderr:
        raise BrowserError(
            f"Chromium exited with {done.returncode} loading {url}:\n{done.stderr[-3000:]}"
        )
    if screenshot is not None and not screenshot.is_file():
        raise BrowserError(f"Chromium wrote no screenshot of {url}:\n{done.stderr[-3000:]}")
    return Page(url, done.stdout, screenshot)


def _collapse(text: str) -> str:
    return " ".join(text.split())


class _Document(HTMLParser):
    """The text, title and tables of a DOM, as they read."""

    HIDDEN = frozenset({"head", "style", "script", "template", "noscript"})
    # Elements that start a new line or box on screen: their text does not run into the next.
    BREAKS = frozenset(
        {"p", "div", "br", "li", "tr", "td", "th", "h1", "h2", "h3", "h4", "table", "section"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.title: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._open: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BREAKS:
            self.text.append(" ")
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables and self.tables[-1]:
            self._cell = []
        if tag not in ("br", "meta", "link", "img", "input", "hr"):
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(_collapse("".join(self._cell)))
            self._cell = None
        if tag in self.BREAKS:
            self.text.append(" ")
        if tag in self._open:
            while self._open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if "title" in self._open:
            self.title.append(data)
        if self.HIDDEN.intersection(self._open):
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
