"""HTTP basic auth against bcrypt hashes, cheap for the right password and for repeated guesses.

The web server asks :meth:`BasicAuth.verdict` first, on its workers: it answers from memory
(a SHA-256 of the credentials), so a scrape whose password was checked once costs no bcrypt,
and neither does a guess already known to be wrong. What memory cannot decide goes to
:meth:`BasicAuth.check` (bcrypt, tens of milliseconds), which the server runs in a thread of
its own; each client address may have only a few such checks at a time (its budget of
guesses), so guessers cannot make the server spend its CPU on bcrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from exporter.httpserver import Verdict

#: Sent with a 401 so that browsers and curl know to offer basic auth.
BASIC_AUTH_CHALLENGE = 'Basic realm="simplivity-exporter", charset="UTF-8"'

#: How many verified user/password pairs are remembered, so that a scrape costs a SHA-256
#: instead of a bcrypt check (about 100 ms at cost 10).
AUTH_CACHE_SIZE = 256

#: Wrong user/password pairs remembered, so that a repeated guess costs no bcrypt check.
AUTH_FAILURES_REMEMBERED = 1024
#: Unverified guesses a client address may make at once; one more is given back every
#: AUTH_FAILURE_REFILL_SECONDS. Beyond it, a guess gets 401 after AUTH_FAILURE_PENALTY_SECONDS,
#: unchecked. Client addresses remembered: AUTH_CLIENTS (the least recent forgotten).
AUTH_FAILURE_BUDGET = 5
AUTH_FAILURE_REFILL_SECONDS = 10.0
AUTH_FAILURE_PENALTY_SECONDS = 1.0
AUTH_CLIENTS = 4096

#: bcrypt reads at most 72 bytes of a password; Go's and htpasswd's implementations ignore the
#: rest, and so do we, so that any hash made by them verifies here too.
_BCRYPT_MAX_PASSWORD_BYTES = 72

PasswordChecker = Callable[[bytes, bytes], bool]
"""``checkpw(password, hashed) -> bool``, as :func:`bcrypt.checkpw`."""


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, remembering outcomes.

    :meth:`verdict` answers at once from what is remembered (the web server's workers call
    it); :meth:`check` runs bcrypt (the server calls it in a thread of its own), and
    :meth:`authenticate` does both. Successes are remembered, so a scrape costs a SHA-256; so
    are recent failures, so a repeated wrong guess costs nothing. Each client address has a
    budget of :data:`AUTH_FAILURE_BUDGET` unverified guesses, one given back every
    :data:`AUTH_FAILURE_REFILL_SECONDS` (and one for each guess that was right): beyond it, and
    for a known wrong guess, the verdict is a refusal sent after ``penalty_seconds``, unchecked.

    An unknown user costs as much as a wrong password (the password is still checked, against
    the most expensive configured hash), so response times do not tell which users exist.
    """

    def __init__(
        self,
        hashes: Mapping[str, str],
        checkpw: PasswordChecker,
        cache_size: int = AUTH_CACHE_SIZE,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not hashes:
            raise ValueError("BasicAuth needs at least one user")
        self._hashes = {user.encode(): hashed.encode() for user, hashed in hashes.items()}
        self._decoy = max(self._hashes.values(), key=lambda hashed: hashed[4:6])
        self._checkpw = checkpw
        self._cache_size = cache_size
        self._clock = clock
        self.penalty_seconds = AUTH_FAILURE_PENALTY_SECONDS
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._failed: OrderedDict[bytes, None] = OrderedDict()
        # Client address -> (guesses left, when that was counted).
        self._budgets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def usernames(self) -> tuple[str, ...]:
        return tuple(sorted(user.decode() for user in self._hashes))

    def __repr__(self) -> str:
        return f"BasicAuth(users={list(self.usernames)!r})"

    def verdict(self, authorization: str | None, client: str) -> Verdict:
        """What is known without bcrypt; ``CHECK`` takes one guess of the client's budget."""
        key = _key(authorization)
        if key is None:
            return Verdict.DENY
        with self._lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return Verdict.ALLOW
            if key in self._failed:
                return Verdict.DENY_LATER
            left = self._guesses_left(client)
            if left < 1:
                return Verdict.DENY_LATER
            self._remember(self._budgets, client, (left - 1, self._clock()), AUTH_CLIENTS)
        return Verdict.CHECK

    def check(self, authorization: str | None, client: str = "") -> bool:
        """Run bcrypt on credentials :meth:`verdict` could not decide, and remember the outcome."""
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        key = _pair_key(user, password)
        hashed = self._hashes.get(user)
        matches = self._check(password, hashed if hashed is not None else self._decoy)
        ok = hashed is not None and matches
        with self._lock:
            if ok:
                self._remember(self._verified, key, None, self._cache_size)
                if client in self._budgets:  # a right guess is not held against its client
                    left, counted = self._budgets[client]
                    self._budgets[client] = (min(AUTH_FAILURE_BUDGET, left + 1), counted)
            else:
                self._remember(self._failed, key, None, AUTH_FAILURES_REMEMBERED)
        return ok

    def authenticate(self, authorization: str | None) -> bool:
        """Whether these credentials are right, checking them now if need be (no budget)."""
        key = _key(authorization)
        if key is None:
            return False
        with self._lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return True
            if key in self._failed:
                return False
        return self.check(authorization)

    def _guesses_left(self, client: str) -> float:
        left, counted = self._budgets.get(client, (AUTH_FAILURE_BUDGET, self._clock()))
        refilled = (self._clock() - counted) / AUTH_FAILURE_REFILL_SECONDS
        return min(float(AUTH_FAILURE_BUDGET), left + refilled)

    @staticmethod
    def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)

    def _check(self, password: bytes, hashed: bytes) -> bool:
        try:
            return self._checkpw(password[:_BCRYPT_MAX_PASSWORD_BYTES], hashed)
        except ValueError:  # a NUL byte, or a hash the library refuses: no match either way
            return False


def _key(authorization: str | None) -> bytes | None:
    credentials = _parse_basic(authorization)
    return None if credentials is None else _pair_key(*credentials)


def _pair_key(user: bytes, password: bytes) -> bytes:
    # The user name holds no ':', so "user:password" names exactly one pair.
    return hashlib.sha256(user + b":" + password).digest()


def _parse_basic(authorization: str | None) -> tuple[bytes, bytes] | None:
    """``"Basic dXNlcjpwdw=="`` -> ``(b"user", b"pw")``; None for anything else."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password
