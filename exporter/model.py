"""The shared vocabulary: what a poll asks for, what it finds, how it fails, what it publishes.

Every layer imports this module and it imports no other part of the exporter: the REST client
raises its errors, the aggregation builds its snapshot types, the poller publishes a
:class:`ControllerStatus` per controller, and the scrape path (collector, exposition, web)
reads those statuses without importing the client or the poller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

#: Every value the ``reason`` label of ``simplivity_poll_errors_total`` can take, all exported
#: from the start: one per :class:`SimplivityError` subclass.
REASONS = ("auth", "timeout", "connection", "tls", "http", "decode")

#: The documented backup states, in the order the API reference lists them.
STATES = (
    "NEW",
    "SAVING",
    "FAILED",
    "PROTECTED",
    "UNKNOWN",
    "CANCELING",
    "CANCELED",
    "QUEUED",
    "REBUILDING",
    "DELETED",
    "DEGRADED",
)
#: Where a state outside :data:`STATES` is counted.
OTHER_STATE = "OTHER"


# -- how a poll fails ---------------------------------------------------------------------------


class SimplivityError(Exception):
    """A poll failed; ``reason`` says how, the message says what in plain words.

    Messages are written for operators and never hold a password or a token.
    """

    reason: ClassVar[str] = "http"


class AuthError(SimplivityError):
    reason = "auth"


class RequestTimeout(SimplivityError):
    reason = "timeout"


class ConnectError(SimplivityError):
    reason = "connection"


class TLSError(SimplivityError):
    reason = "tls"


class HTTPStatusError(SimplivityError):
    reason = "http"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DecodeError(SimplivityError):
    """An answer that cannot be read: bad JSON, a wrong envelope, a page that contradicts the
    listing, a record without what the metrics need; or the decoding worker lost the scan."""

    reason = "decode"


class Cancelled(Exception):
    """The exporter is shutting down; the scan was abandoned (not a controller failure)."""


class RecordError(ValueError):
    """A record of a listing that the exporter cannot read (a missing field, a wrong type)."""


def decode_json(path: str, body: bytes) -> Any:
    """``body`` as JSON, or :class:`DecodeError` saying where it broke (never quoting it)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:
        # ValueError covers bad UTF-8 and bad JSON, and also an integer of thousands of digits;
        # RecursionError: arrays nested thousands deep.
        if looks_like_html(body):
            raise DecodeError(
                f"{path} answered with an HTML page, not JSON ({len(body)} bytes): "
                "a proxy in front of the controller?"
            ) from None
        where = f" at byte {err.pos}" if isinstance(err, json.JSONDecodeError) else ""
        raise DecodeError(f"{path} answered with invalid JSON{where} ({len(body)} bytes)") from None


def looks_like_html(body: bytes) -> bool:
    """An HTML page (a reverse proxy's error page), to be named as such and never quoted."""
    start = body[:512].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<title"))


# -- what a poll asks for ----------------------------------------------------------------------


@dataclass(frozen=True)
class PageRequest:
    """One page of a paged collection: ``GET path?offset=&limit=&fields=&sort=&order=``."""

    path: str
    offset: int
    limit: int
    fields: tuple[str, ...] = ()
    sort: str | None = None
    order: str = "ascending"


# -- what a poll finds --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSummary:
    """The backups of one OmniStack cluster (or external store)."""

    name: str
    counts: Mapping[str, int]
    sizes: Mapping[str, int]
    newest_protected: float | None  # Unix seconds of the newest PROTECTED backup


@dataclass(frozen=True)
class VMSummary:
    """One live VM: when its newest PROTECTED backup was taken, if ever."""

    vm_id: str
    name: str
    newest_protected: float | None


@dataclass(frozen=True)
class BackupSnapshot:
    """One complete scan of a controller's backups."""

    clusters: tuple[ClusterSummary, ...]
    vms: tuple[VMSummary, ...]
    backups_seen: int


# -- what a poll publishes ----------------------------------------------------------------------


@dataclass(frozen=True)
class ControllerStatus:
    """Everything known about one controller at one moment; replaced, never changed."""

    name: str
    url: str
    polls: int = 0
    up: bool = False
    last_poll_finished: float | None = None
    last_duration: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    errors: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    logins: int = 0
    snapshot: BackupSnapshot | None = None
    #: How the poller asks the controller for pages now (it learns from 502s and 504s).
    concurrency: int = 0  # requests in flight at once, at most
    page_size: int = 0  # records per page asked for
    #: Records of the last successful poll that could not be placed (and were left out).
    unreadable_records: int = 0
