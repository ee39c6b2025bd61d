"""Misbehaviour injected into a simulated controller while it serves."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, get_args

Malformed = Literal[
    "truncated",
    "not_json",
    "size_as_string",
    "missing_created_at",
    "count_too_large",
    "short_page",
    "empty_page",
    "endless",
    "endless_listing",
    "oversized_page",
]
MALFORMED_KINDS: Final[tuple[str, ...]] = get_args(Malformed)

Oddity = Literal[
    "created_at_na",
    "created_at_null",
    "size_null",
    "size_na",
    "no_state",
    "no_id",
    "string_record",
    "number_record",
]
#: What an odd record looks like: ``created_at`` "NA" or null, ``size`` null or "NA", no
#: ``state``, no ``id``, or not an object at all (the record's id as a bare string, or a bare
#: number). Values only change in the fields the request selected.
ODD_KINDS: Final[tuple[str, ...]] = get_args(Oddity)

Drip = Literal["headers", "body"]
#: An access token that cannot be sent in a header: one with a line break in it, or one of
#: 10,000 characters.
BadToken = Literal["crlf", "oversized"]

#: The paths that per-request faults aim at unless told otherwise.
DEFAULT_FAULT_PATHS: Final = frozenset({"/api/backups"})


@dataclass(frozen=True)
class ErrorBody:
    """How the controller writes its error bodies; versions of the API differ.

    ``timestamp`` as an ISO text (``2023-11-14T22:13:20Z``) or epoch milliseconds;
    ``error_code`` as a string (``"500"``) or a number (``500``); ``extended_response`` adds an
    ``extendedResponse`` object (the message again, with a list of causes).
    """

    timestamp: Literal["iso", "epoch_ms"] = "iso"
    error_code: Literal["string", "number"] = "string"
    extended_response: bool = False


class Faults:
    """Misbehaviour to inject, changeable from any thread while the controller serves.

    All default to off; :meth:`clear` turns everything off again.

    Per-request faults apply to the data requests whose path is in ``paths`` (default
    ``{"/api/backups"}``; ``None``: every paged collection and the schedule report), after the
    token check and parameter validation:

    - :meth:`fail_next`: the next ``count`` such requests answer ``status`` (500: the JDBC
      timeout body; 401: an expired token; others the generic error body).
    - :meth:`disconnect_next`: the next ``count`` such requests get the connection closed
      without an answer.
    - ``hang_seconds``: wait this long before answering (ends at once on stop()).
    - ``drip``: answer a byte every ``drip_seconds``: ``headers`` (headers that never end) or
      ``body`` (the whole answer, its Content-Length said at once, its body a byte at a time).
    - ``malformed``: one of :data:`MALFORMED_KINDS`:
      ``truncated`` (half the JSON, with a matching Content-Length), ``not_json`` (an HTML
      page with status 200), ``size_as_string`` (``"size": "1234"``), ``missing_created_at``
      (no record of the page has ``created_at``), ``count_too_large`` (``count`` 1000 more than
      exist: the pages past the real end are empty), ``short_page`` (half of the page; ``count``
      is right), ``empty_page`` (an empty list whatever the offset), ``endless`` (200 without
      Content-Length, a body that streams until the client leaves or stop()),
      ``endless_listing`` (``count`` 10^18, and every page full: the listing's records again
      under new ids, in order), ``oversized_page`` (twice the records the ``limit`` asked for,
      the envelope's ``limit`` saying the one asked).

    The controller's own limits, on every paged collection:

    - ``limit_cap``: serve at most this many records per page whatever ``limit`` asks (0: no
      cap); the envelope's ``limit`` says the limit applied, as real controllers do.
    - ``max_in_flight``: a data request (any endpoint that needs a token) arriving while more
      than this many requests are in progress answers 502 "too many simultaneous requests"
      (0: no limit), the way HPE documents 502.
    - ``timeout_above_limit``: a page whose applied limit is above this answers 504 "the request
      took more than 60 seconds" (0: never), so that a client can learn smaller pages.
    - ``refused_sorts``: sort fields answered with 400 ``InvalidSortCriteriaException``, as by a
      controller that does not know them; ``ignored_sorts``: sort fields served in the default
      order (``name``, descending) instead, as by one that ignores them.
    - :meth:`make_odd`: records with the given ids are served odd (see :data:`ODD_KINDS`).
    - cost model: ``request_cost_seconds`` + ``object_cost_seconds`` per returned record, at
      most ``max_parallel`` requests (0: unlimited) served at once, the others wait their turn.
    - churn: before each backups request, ``churn_expire_per_request`` random backups are deleted
      and ``churn_create_per_request`` new PROTECTED ones (created_at = clock(), random ids) added.

    Error answers, on every path:

    - ``error_body``: an :class:`ErrorBody` (timestamp and error_code types, extendedResponse).
    - ``html_error_statuses``: error statuses (e.g. ``{502, 503, 504}``) that a reverse proxy in
      front of the controller answers with its own ``text/html`` page instead of the JSON body.

    Logins: :meth:`fail_next_logins` fails the next ``POST /api/oauth/token`` like
    :meth:`fail_next`; ``bad_credentials_status``: 401 (default) or 400 (``invalid_grant``) for
    wrong user credentials; :meth:`bad_tokens_next` hands out tokens that cannot be sent in a
    header (see :data:`BadToken`).

    ``echo_secrets``: error answers repeat the secrets of the request, as careless servers do: a
    refused login the password it was sent, an injected failure the ``Authorization`` header.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail: list[int] = []
        self._fail_logins: list[int] = []
        self._disconnect = 0
        self._bad_tokens: list[BadToken] = []
        self._odd: dict[str, Oddity] = {}
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._fail.clear()
            self._fail_logins.clear()
            self._disconnect = 0
            self._bad_tokens.clear()
            self._odd = {}
        self._malformed: Malformed | None = None
        self.paths: frozenset[str] | None = DEFAULT_FAULT_PATHS
        self.hang_seconds = 0.0
        self.drip: Drip | None = None
        self.drip_seconds = 1.0
        self.echo_secrets = False
        self.request_cost_seconds = 0.0
        self.object_cost_seconds = 0.0
        self.max_parallel = 0
        self.churn_create_per_request = 0
        self.churn_expire_per_request = 0
        self.bad_credentials_status = 401
        self.limit_cap = 0
        self.max_in_flight = 0
        self.timeout_above_limit = 0
        self.refused_sorts: frozenset[str] = frozenset()
        self.ignored_sorts: frozenset[str] = frozenset()
        self.error_body = ErrorBody()
        self.html_error_statuses: frozenset[int] = frozenset()

    @property
    def malformed(self) -> Malformed | None:
        return self._malformed

    @malformed.setter
    def malformed(self, kind: Malformed | None) -> None:
        if kind is not None and kind not in MALFORMED_KINDS:
            raise ValueError(f"unknown malformed kind {kind!r}; one of {MALFORMED_KINDS}")
        self._malformed = kind

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._lock:
            self._fail.extend([status] * count)

    def fail_next_logins(self, count: int, status: int = 500) -> None:
        with self._lock:
            self._fail_logins.extend([status] * count)

    def bad_tokens_next(self, count: int, kind: BadToken = "crlf") -> None:
        with self._lock:
            self._bad_tokens.extend([kind] * count)

    def take_bad_token(self) -> BadToken | None:
        with self._lock:
            return self._bad_tokens.pop(0) if self._bad_tokens else None

    def disconnect_next(self, count: int) -> None:
        with self._lock:
            self._disconnect += count

    def pending_failures(self) -> int:
        with self._lock:
            return len(self._fail)

    def make_odd(self, kind: Oddity, ids: Iterable[str]) -> None:
        """Serve the records with these ids (in any collection) odd in this way, from now on."""
        if kind not in ODD_KINDS:
            raise ValueError(f"unknown odd kind {kind!r}; one of {ODD_KINDS}")
        with self._lock:
            odd = dict(self._odd)
            odd.update(dict.fromkeys(ids, kind))
            self._odd = odd  # replaced, never changed: readers hold a consistent mapping

    # -- the controller's side

    def applies_to(self, path: str) -> bool:
        """Whether the per-request faults aim at this path."""
        paths = self.paths
        return paths is None or path in paths

    def odd_records(self) -> Mapping[str, Oddity]:
        """id -> how that record is served odd."""
        return self._odd

    def take_failure(self) -> int | None:
        with self._lock:
            return self._fail.pop(0) if self._fail else None

    def take_login_failure(self) -> int | None:
        with self._lock:
            return self._fail_logins.pop(0) if self._fail_logins else None

    def take_disconnect(self) -> bool:
        with self._lock:
            if self._disconnect > 0:
                self._disconnect -= 1
                return True
            return False
