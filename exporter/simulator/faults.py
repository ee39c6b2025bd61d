"""Misbehaviour injected into a simulated controller while it serves."""

from __future__ import annotations

import threading
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
]
MALFORMED_KINDS: Final[tuple[str, ...]] = get_args(Malformed)


class Faults:
    """Misbehaviour to inject, changeable from any thread while the controller serves.

    Unless said otherwise a fault applies to ``GET /api/backups`` (after the token check and
    parameter validation). All default to off; :meth:`clear` turns everything off again.

    - :meth:`fail_next`: the next ``count`` backups requests answer ``status`` (500: the JDBC
      timeout body; 401: an expired token; others the generic error body).
    - :meth:`fail_next_logins`: the same for ``POST /api/oauth/token``.
    - :meth:`disconnect_next`: the next ``count`` backups requests get the connection closed
      without an answer.
    - ``hang_seconds``: wait this long before answering (ends at once on stop()).
    - ``malformed``: one of :data:`MALFORMED_KINDS`:
      ``truncated`` (half the JSON, with a matching Content-Length), ``not_json`` (an HTML
      page with status 200), ``size_as_string`` (``"size": "1234"``), ``missing_created_at``
      (no backup of the page has ``created_at``), ``count_too_large`` (``count`` 1000 more than
      exist: the pages past the real end are empty), ``short_page`` (half of the page; ``count``
      is right), ``empty_page`` (``backups: []`` whatever the offset), ``endless`` (200 without
      Content-Length, a body that streams until the client leaves or stop()).
    - cost model: ``request_cost_seconds`` + ``object_cost_seconds`` per returned backup, at most
      ``max_parallel`` requests (0: unlimited) served at once, the others wait their turn.
    - churn: before each backups request, ``churn_expire_per_request`` random backups are deleted
      and ``churn_create_per_request`` new PROTECTED ones (created_at = clock(), random ids) added.
    - ``bad_credentials_status``: 401 (default) or 400 (``invalid_grant``) for wrong user
      credentials at the token endpoint.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail: list[int] = []
        self._fail_logins: list[int] = []
        self._disconnect = 0
        self._malformed: Malformed | None = None
        self.hang_seconds = 0.0
        self.request_cost_seconds = 0.0
        self.object_cost_seconds = 0.0
        self.max_parallel = 0
        self.churn_create_per_request = 0
        self.churn_expire_per_request = 0
        self.bad_credentials_status = 401

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

    def disconnect_next(self, count: int) -> None:
        with self._lock:
            self._disconnect += count

    def pending_failures(self) -> int:
        with self._lock:
            return len(self._fail)

    def clear(self) -> None:
        with self._lock:
            self._fail.clear()
            self._fail_logins.clear()
            self._disconnect = 0
        self._malformed = None
        self.hang_seconds = 0.0
        self.request_cost_seconds = 0.0
        self.object_cost_seconds = 0.0
        self.max_parallel = 0
        self.churn_create_per_request = 0
        self.churn_expire_per_request = 0
        self.bad_credentials_status = 401

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
