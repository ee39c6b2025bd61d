"""When a policy rule takes its backups: the times the simulated federation's backups follow.

A rule takes a backup every ``frequency`` minutes from ``start_time`` while the time of day is
before ``end_time`` (``00:00`` as an end is midnight, so ``00:00``-``00:00`` is the whole day),
on the days its ``days`` names: ``All``, weekdays (``Mon,Wed,Fri``), days of the month
(``1,15``) and ``last`` (the last day of each month), in the local time of the VM's cluster.
For example ``Rule(60, "Mon,Tue,Wed,Thu,Fri", "08:00", "18:00").times(before, -4 * 3600)``
on Tuesday 2023-11-14 at 22:13 UTC (18:13 in Boston) gives 21:00, 20:00, 19:00... UTC (17:00,
16:00, 15:00 in Boston), then Monday's from 17:00 local down to 08:00, then Friday's.

This is the simulator's own reading of the rules (it is the oracle the exporter is tested
against, so it does not share the exporter's code).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Final

from exporter.simulator.values import DAY

WEEKDAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_EPOCH_WEEKDAY: Final = 3  # 1970-01-01 was a Thursday


@dataclass(frozen=True)
class Destination:
    """Where a rule sends its backups: the VM's own cluster, another cluster, or a store."""

    kind: str  # "local", "cluster" or "store"
    name: str = ""  # the cluster's or the store's name ("" for local)
    id: str = ""  # the cluster's id

    @property
    def is_local(self) -> bool:
        return self.kind == "local"


LOCAL: Final = Destination("local")


@dataclass(frozen=True)
class Rule:
    """One rule of a policy, as the simulator generates backups for it."""

    frequency: int  # minutes between backups
    days: str = "All"
    start: str = "00:00"
    end: str = "00:00"
    destination: Destination = LOCAL
    retention: int = 7 * 24 * 60  # minutes
    #: The most backups the rule keeps; None: as many as its policy's VMs hold (the simulator
    #: keeps what a controller with this rule would, see inventory.max_backups).
    max_backups: int | None = None
    #: Whether it asks for application-consistent (VSS) backups.
    app_consistent: bool = False

    def __post_init__(self) -> None:
        if self.frequency <= 0:
            raise ValueError(f"frequency must be positive, not {self.frequency}")
        if self._end_minute() <= self._start_minute():
            raise ValueError(f"window {self.start}-{self.end} ends before it starts")
        _day_test(self.days)  # refuses what it cannot read

    def _start_minute(self) -> int:
        return _minutes(self.start)

    def _end_minute(self) -> int:
        end = _minutes(self.end)
        return end or 24 * 60

    def every_day(self) -> bool:
        """Whether the rule runs the whole day, every day."""
        return self.days.lower() == "all" and self.start == "00:00" and self.end == "00:00"

    def by_month_day(self) -> bool:
        """Whether the rule's days are days of the month (``1,15``, ``last``)."""
        test = _day_test(self.days)
        return bool(test.month_days) or test.last

    def minutes_of_day(self) -> tuple[int, ...]:
        """The times of day (minutes after midnight) of this rule's backups."""
        return tuple(range(self._start_minute(), self._end_minute(), self.frequency))

    def per_day(self) -> float:
        """Backups per day, on average over a year."""
        return _per_day(self)

    def retained(self) -> int:
        """The backups its retention holds, on average (at least 1)."""
        return max(1, round(self.per_day() * self.retention / 1440))

    def window(self, max_backups: int) -> int | None:
        """The recovery window (seconds) this rule promises keeping ``max_backups`` backups, as
        the exporter's docs/design.md defines it: the shorter of its retention and
        ``max_backups`` x the shortest time it leaves between two backups (its frequency when it
        takes several a day, else a day); none when it keeps a single backup."""
        if max_backups <= 1:
            return None
        minutes = self.minutes_of_day()
        shortest = DAY // 60
        if len(minutes) > 1:
            shortest = min(self.frequency, minutes[0] + DAY // 60 - minutes[-1])
        return min(self.retention, max_backups * shortest) * 60

    def times(self, before: int, offset: int) -> Iterator[int]:
        """Scheduled times (Unix seconds), newest first, at or before ``before``; endless.

        ``offset`` is the cluster's UTC offset in seconds (local = UTC + offset).
        """
        step = self.frequency * 60
        if self.every_day() and DAY % step == 0:  # the same times every day: arithmetic
            return itertools.count((before + offset) // step * step - offset, -step)
        return self._window_times(before, offset)

    def next_after(self, after: int, offset: int) -> int:
        """The first scheduled time (Unix seconds) after ``after``."""
        step = self.frequency * 60
        if self.every_day() and DAY % step == 0:
            return ((after + offset) // step + 1) * step - offset
        minutes = self.minutes_of_day()
        matches = _day_test(self.days)
        first = (after + offset) // DAY
        for day in range(first, first + 800):  # every rule runs within a few months
            if matches(day):
                midnight = day * DAY - offset
                for minute in minutes:
                    t = midnight + minute * 60
                    if t > after:
                        return t
        raise ValueError(f"rule {self} never runs")

    def _window_times(self, before: int, offset: int) -> Iterator[int]:
        minutes = self.minutes_of_day()[::-1]
        matches = _day_test(self.days)
        day = (before + offset) // DAY
        while True:
            if matches(day):
                midnight = day * DAY - offset
                for minute in minutes:
                    t = midnight + minute * 60
                    if t <= before:
                        yield t
            day -= 1


@lru_cache(maxsize=1024)
def _per_day(rule: Rule) -> float:
    return len(rule.minutes_of_day()) * _day_share(rule.days)


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    try:
        value = int(hours) * 60 + int(minutes)
    except ValueError:
        raise ValueError(f"not a time of day (HH:MM): {text!r}") from None
    if not 0 <= value < 24 * 60:
        raise ValueError(f"not a time of day (HH:MM): {text!r}")
    return value


@cache
def _calendar(day: int) -> tuple[int, bool]:
    """(day of the month, whether it is the month's last day) of a day since 1970-01-01."""
    today = time.gmtime(day * DAY)
    return today.tm_mday, time.gmtime((day + 1) * DAY).tm_mday == 1


@lru_cache(maxsize=256)
def _day_test(days: str) -> _DayTest:
    parts = [p.strip() for p in days.split(",") if p.strip()]
    if not parts:
        raise ValueError("days is empty")
    if len(parts) == 1 and parts[0].lower() == "all":
        return _DayTest(all_days=True)
    weekdays: set[int] = set()
    month_days: set[int] = set()
    last = False
    for part in parts:
        if part.title() in WEEKDAYS:
            weekdays.add(WEEKDAYS.index(part.title()))
        elif part.lower() == "last":
            last = True
        elif part.isdigit() and 1 <= int(part) <= 31:
            month_days.add(int(part))
        else:
            raise ValueError(f"not a day: {part!r} (in {days!r})")
    return _DayTest(frozenset(weekdays), frozenset(month_days), last)


@dataclass(frozen=True)
class _DayTest:
    weekdays: frozenset[int] = frozenset()
    month_days: frozenset[int] = frozenset()
    last: bool = False
    all_days: bool = False

    def __call__(self, day: int) -> bool:
        if self.all_days:
            return True
        if (day + _EPOCH_WEEKDAY) % 7 in self.weekdays:
            return True
        if self.month_days or self.last:
            month_day, is_last = _calendar(day)
            return month_day in self.month_days or (self.last and is_last)
        return False


def _day_share(days: str) -> float:
    """The share of days a ``days`` text selects, on average over a year."""
    test = _day_test(days)
    if test.all_days:
        return 1.0
    if not test.month_days and not test.last:
        return len(test.weekdays) / 7
    return sum(test(day) for day in range(19_358, 19_358 + 1461)) / 1461  # 2023-2026
