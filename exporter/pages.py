"""One page of ``/api/backups`` in, its backups counted: decode, check, and stitch to the last.

A scan asks for pages sorted by ``id`` that overlap by a few backups (see
:meth:`exporter.simplivity.SimplivityClient.scan_pages`). A :class:`PageCounter` takes the
pages of one scan in order, as raw bodies, and hands each backup to its sink exactly once:
those at or below the last id counted are skipped. This is the CPU-heavy half of a poll, so it
is kept apart from the HTTP stack and imports nothing heavy: the decoding worker
(:mod:`exporter.worker`) runs it in a process of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.backups import Aggregator, BackupRecordError
from exporter.model import BackupSnapshot


class PageError(ValueError):
    """A page that cannot be read; the message says why, in an operator's words."""


@dataclass(frozen=True)
class PageOutcome:
    """What one page told the scan."""

    count: int  # the size of the whole listing, as this page gave it
    received: int  # backups on the page
    counted: int  # of those, how many were new (not in the overlap with the page before)
    #: The page starts after the last backup counted: the listing shifted under the scan, and
    #: nothing was counted; the scan must step back to find the overlap again.
    overlap_lost: bool = False


class PageSink(Protocol):
    """Where a scan's pages go, in order (a :class:`PageCounter`, or a worker's scan)."""

    def count(self, offset: int, body: bytes) -> PageOutcome: ...


class Scan(PageSink, Protocol):
    """A page sink that sums up to a snapshot; closed once the scan is over, whatever happened."""

    def snapshot(self) -> BackupSnapshot: ...

    def close(self) -> None: ...


#: Opens the :class:`Scan` of one poll.
ScanFactory = Callable[[], Scan]


class PageCounter:
    """Counts the pages of one scan, each backup once, in the order of the listing."""

    def __init__(self, sink: Callable[[dict[str, Any]], None]) -> None:
        self._sink = sink
        self._last_id: str | None = None

    def count(self, offset: int, body: bytes) -> PageOutcome:
        """Decode one page and feed its new backups to the sink; :class:`PageError` if unreadable.

        ``offset`` is where the page was asked for: the first page (offset 0) needs no overlap.
        """
        total, backups = _parse_page(body)
        last_id = self._last_id
        if offset > 0 and last_id is not None and (not backups or backups[0]["id"] > last_id):
            return PageOutcome(total, len(backups), 0, overlap_lost=True)
        counted = 0
        sink = self._sink
        for backup in backups:
            backup_id = backup["id"]  # checked by _parse_page
            if last_id is not None and backup_id <= last_id:
                continue
            try:
                sink(backup)
            except BackupRecordError as err:
                raise PageError(str(err)) from None
            last_id = backup_id
            counted += 1
        self._last_id = last_id
        return PageOutcome(total, len(backups), counted)


class LocalScan:
    """A :class:`Scan` counted in this process, into an :class:`~exporter.backups.Aggregator`."""

    def __init__(self) -> None:
        self._aggregator = Aggregator()
        self._counter = PageCounter(self._aggregator.add)

    def count(self, offset: int, body: bytes) -> PageOutcome:
        return self._counter.count(offset, body)

    def snapshot(self) -> BackupSnapshot:
        return self._aggregator.snapshot()

    def close(self) -> None:
        pass


def decode_json(path: str, body: bytes) -> Any:
    """``body`` as JSON, or :class:`PageError` saying where it broke (never quoting it)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:
        # ValueError covers bad UTF-8 and bad JSON, and also an integer of thousands of digits;
        # RecursionError: arrays nested thousands deep.
        where = f" at byte {err.pos}" if isinstance(err, json.JSONDecodeError) else ""
        raise PageError(f"{path} answered with invalid JSON{where} ({len(body)} bytes)") from None


def _parse_page(body: bytes) -> tuple[int, list[dict[str, Any]]]:
    document = decode_json("/api/backups", body)
    count = document.get("count") if isinstance(document, dict) else None
    backups = document.get("backups") if isinstance(document, dict) else None
    if type(count) is not int or count < 0 or not isinstance(backups, list):
        raise PageError("/api/backups answered without a numeric 'count' and a 'backups' list")
    previous = ""
    for backup in backups:
        if not isinstance(backup, dict):
            raise PageError("/api/backups listed something that is not a backup object")
        backup_id = _backup_id(backup)
        if backup_id <= previous:
            raise PageError("/api/backups did not return backups sorted by id")
        previous = backup_id
    return count, backups


def _backup_id(backup: dict[str, Any]) -> str:
    value = backup.get("id")
    if not isinstance(value, str) or not value:
        raise PageError("/api/backups listed a backup without an id")
    return value
