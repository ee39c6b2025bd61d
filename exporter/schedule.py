"""A policy's rules as the API returns them: when they take backups, where they send them, and
how often each destination should therefore get one (its expected interval).

Pure functions of a policy's ``rules`` (no I/O), cached per distinct set of schedules: many VMs
share few policies. :mod:`exporter.protection` judges VMs against the intervals derived here;
:mod:`exporter.recovery` reads the same rules for what they keep.

Expected interval
-----------------
HPE publishes no formula for a policy's recovery point, so the exporter derives one. For each
destination a policy sends backups to, the **expected interval** is the longest time between
two consecutive scheduled backups at that destination, taking every usable rule aimed there
together (an hourly rule and a daily one to the same cluster are one schedule).

1. **Times of a scheduled day.** A rule schedules a backup at ``start_time`` and then every
   ``frequency`` minutes while the time stays within the window:

   - ``start_time`` before ``end_time``: the window ends at ``end_time``, which is included
     (hourly from 08:00 to 18:00 is 08:00, 09:00, ... 18:00). If the controller excludes it,
     the real gap is one ``frequency`` longer than ours; the overdue threshold's factor
     absorbs that.
   - ``start_time`` equal to ``end_time`` (``00:00``-``00:00`` above all): the whole day,
     24 hours from ``start_time``, the next day's start excluded.
   - ``end_time`` before ``start_time``: the window runs past midnight (22:00-06:00 is 22:00
     until 06:00 the next morning). Its backups belong to the day it starts on: ``Mon``
     with 22:00-06:00 also backs up early on Tuesday, never early on Monday.
   - a ``frequency`` longer than the window: one backup, at ``start_time``. A frequency of a
     day or more therefore means once on each scheduled day, never "every other day".

2. **Scheduled days.** ``days`` is a comma-separated list: ``All`` (any case) or an empty text
   is every day; weekdays (``Mon``, ``monday``, any case, any prefix of three letters or more);
   days of the month ``1``-``31``; ``last``, the last day of each month. A mixture is the union
   of its parts. A month without the given day (the 31st in April, the 29th of February in a
   common year) has no backup that month, as in cron.

3. **The longest gap.** Times are minutes on one continuous clock: every scheduled day
   contributes its times, offset by the day's position. The calendar repeats exactly every
   28 years (10,227 days, a whole number of weeks, leap years included; the Gregorian
   century years that are not leap years bring no month layout or weekday alignment that
   these 28 years lack), so the schedule is laid over one such cycle, from Monday
   2001-01-01, and read as a ring: the last backup of the cycle is followed by the first one
   of the next. A schedule without month days repeats every week (every day if it has no
   weekdays either) and uses that shorter ring, with the same result. The expected interval
   is the longest distance between two consecutive times on the ring, in seconds.

   So: hourly all day is 3,600 s; hourly from 08:00 to 18:00 is 14 hours (the night,
   18:00 to 08:00); daily at 00:00 on ``Mon,Wed,Fri`` is 3 days (Friday to Monday); ``1,15``
   is 17 days (the 15th to the 1st after a 31-day month); ``last`` is 31 days (the last of
   February to the last of March); ``31`` alone is 61 days (May 31 to July 31).

A rule the exporter cannot read (a ``frequency`` of 0, negative or ``NA``, a time that is not
``HH:MM``, a day it cannot place, no destination) is left out, and :func:`parse_rules` says
why; a policy without a usable rule has no expected interval anywhere.

Times are the hypervisor manager's local wall clock, which the API does not name; the
derivation ignores daylight saving time, so a gap that spans a change is an hour longer or
shorter than computed, which the overdue factor and grace absorb. The result is cached per
distinct set of schedules: many VMs share few policies.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cache, lru_cache
from itertools import pairwise
from types import MappingProxyType

from exporter.model import label_value

#: A rule's ``destination_name`` for the VM's own cluster (compared in any case).
LOCAL = "<Local>"

_DAY = 1440  # minutes
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"(\d{1,2}):(\d\d)")
_DAYS_SEPARATOR = re.compile(r"[\s,;]+")
#: 2001-01-01 was a Monday; 28 years later the calendar repeats, weekdays included.
_CYCLE_START = date(2001, 1, 1)
_CYCLE_DAYS = 28 * 365 + 7  # 1,461 weeks


class RuleError(ValueError):
    """A policy rule the exporter cannot schedule; the message says which and why."""


class RuleCostError(RuleError):
    """A policy's rules together take more work to evaluate than :data:`MAX_RULE_WORK`."""


#: The most work evaluating one set of schedules may take: the backup times of the days it
#: visits (a day's times are its own schedules' and the previous day's). Realistic policies
#: take a few hundred at most; 2 million is about a tenth of a second, where crafted rules
#: (hundreds of every-minute rules, each on its own weekdays and days of the month) took 30 s.
MAX_RULE_WORK = 2_000_000
#: The most work judging a poll's policies may take, over all of them (:func:`check_cost`):
#: about a second; thousands of real policies. Spread over many policies, crafted rules
#: would otherwise still cost a tenth of a second each.
MAX_POLICIES_WORK = 10 * MAX_RULE_WORK


@dataclass(frozen=True)
class Days:
    """The days a rule runs on: every day, or the union of weekdays, month days and ``last``.

    >>> Days.parse("Mon,wed,FRIDAY")
    Days(every_day=False, weekdays=frozenset({0, 2, 4}), month_days=frozenset(), last_day=False)
    >>> str(Days.parse("15, 1, last")), str(Days.parse("")), Days.parse("all").every_day
    ('1,15,last', 'all', True)
    """

    every_day: bool = False
    weekdays: frozenset[int] = frozenset()  # 0 is Monday
    month_days: frozenset[int] = frozenset()  # 1..31
    last_day: bool = False

    @classmethod
    def parse(cls, text: str) -> Days:
        """Read the API's ``days`` text; raise :class:`RuleError` on a token it cannot place."""
        weekdays: set[int] = set()
        month_days: set[int] = set()
        last_day = False
        tokens = [token for token in _DAYS_SEPARATOR.split(text.strip()) if token]
        if not tokens:
            return cls(every_day=True)
        for token in tokens:
            word = token.casefold()
            if word == "all":
                return cls(every_day=True)
            if word == "last":
                last_day = True
            elif word.isascii() and word.isdigit() and 1 <= int(word) <= 31:
                month_days.add(int(word))
            elif len(word) >= 3 and any(name.startswith(word) for name in _WEEKDAYS):
                weekdays.add(next(i for i, name in enumerate(_WEEKDAYS) if name.startswith(word)))
            else:
                raise RuleError(
                    f"days {text[:60]!r}: {token[:20]!r} is not a weekday, "
                    "a day of the month (1-31), 'last' or 'All'"
                )
        if len(weekdays) == 7 or len(month_days) == 31:
            return cls(every_day=True)
        return cls(False, frozenset(weekdays), frozenset(month_days), last_day)

    def __str__(self) -> str:
        if self.every_day:
            return "all"
        parts = [_WEEKDAYS[day][:3].title() for day in sorted(self.weekdays)]
        parts += [str(day) for day in sorted(self.month_days)]
        return ",".join([*parts, "last"] if self.last_day else parts)


@dataclass(frozen=True)
class Schedule:
    """When a rule takes backups: what the expected interval depends on, and nothing else.

    >>> Schedule(60, Days(every_day=True), start_minute=8 * 60, end_minute=10 * 60).times()
    (480, 540, 600)
    >>> Schedule(1440, Days(every_day=True), start_minute=0, end_minute=0).times()
    (0,)
    """

    frequency_minutes: int  # at least 1
    days: Days
    start_minute: int  # 0..1439, minutes after midnight
    end_minute: int  # 0..1439; see the module docstring for end <= start

    def times(self) -> tuple[int, ...]:
        """The backups of one scheduled day, in minutes after its midnight (0..2879)."""
        return _day_times(self.frequency_minutes, self.start_minute, self.end_minute)

    def __str__(self) -> str:
        return (
            f"every {self.frequency_minutes} min from {_clock(self.start_minute)} "
            f"to {_clock(self.end_minute)} on {self.days}"
        )


@dataclass(frozen=True)
class Rule:
    """One usable rule of a policy: its schedule, where its backups go, how long and how many
    of them it keeps, and whether it asks for application-consistent ones."""

    schedule: Schedule
    destination_name: str  # a cluster's name or LOCAL; "" when external_store_name is set
    external_store_name: str = ""
    retention_minutes: int | None = None  # None when the API gives none (or an odd value)
    max_backups: int | None = None  # the same
    app_consistent: bool = False  # application_consistent: true

    def destination(self, own_cluster: str) -> str:
        """Where the rule's backups are held, for a VM of cluster ``own_cluster``.

        >>> rule = Rule(Schedule(60, Days(every_day=True), 0, 0), LOCAL)
        >>> rule.destination("Boston")
        'Boston'
        """
        if self.external_store_name:
            return self.external_store_name
        return own_cluster if self.destination_name == LOCAL else self.destination_name


@dataclass(frozen=True)
class PolicyRules:
    """A policy's rules as read: the usable ones, and why each other one is not."""

    rules: tuple[Rule, ...]
    problems: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """How many rules the policy has, usable or not."""
        return len(self.rules) + len(self.problems)


def parse_rule(raw: object) -> Rule:
    """One rule of ``GET /api/policies``; raise :class:`RuleError` if it cannot be scheduled.

    >>> rule = parse_rule({"frequency": 60, "days": "All", "start_time": "08:00",
    ...                    "end_time": "18:00", "destination_name": "<local>"})
    >>> str(rule.schedule), rule.destination("Boston")
    ('every 60 min from 08:00 to 18:00 on all', 'Boston')
    >>> try:
    ...     parse_rule({"frequency": "NA", "days": "All", "start_time": "00:00",
    ...                 "end_time": "00:00", "destination_name": "<Local>"})
    ... except RuleError as error:
    ...     print(error)
    frequency 'NA' is not a whole number of minutes above 0
    """
    if not isinstance(raw, Mapping):
        raise RuleError(f"is a {type(raw).__name__}, not an object")
    frequency = _frequency(raw.get("frequency"))
    days = raw.get("days")
    if not isinstance(days, str):
        raise RuleError(f"days is {_missing_or_type(days)}")
    schedule = Schedule(
        frequency_minutes=frequency,
        days=Days.parse(days),
        start_minute=_minute(raw, "start_time"),
        end_minute=_minute(raw, "end_time"),
    )
    store = _name(raw, "external_store_name")
    destination = LOCAL if store else _name(raw, "destination_name")
    if not destination:
        raise RuleError("names neither a destination_name nor an external_store_name")
    if destination.casefold() == LOCAL.casefold():
        destination = LOCAL
    # What a rule keeps, and whether it asks for application consistency, only matter to
    # judgements of their own: an odd value there leaves the schedule usable.
    return Rule(
        schedule,
        "" if store else destination,
        store,
        retention_minutes=_optional_count(raw.get("retention")),
        max_backups=_optional_count(raw.get("max_backups")),
        app_consistent=_true(raw.get("application_consistent")),
    )


def parse_rules(raw: object) -> PolicyRules:
    """A policy's ``rules`` list: the usable rules, and a reason for each one that is not.

    >>> parsed = parse_rules([
    ...     {"number": 1, "frequency": 1440, "days": "last", "start_time": "00:00",
    ...      "end_time": "00:00", "destination_name": "", "external_store_name": "StoreOnce"},
    ...     {"number": 2, "frequency": 0, "days": "All", "start_time": "00:00",
    ...      "end_time": "00:00", "destination_name": "<Local>"}])
    >>> len(parsed.rules), parsed.problems
    (1, ('rule 2: frequency 0 is not a whole number of minutes above 0',))
    """
    if raw is None:
        return PolicyRules(())
    if not isinstance(raw, list):
        return PolicyRules((), (f"rules is a {type(raw).__name__}, not a list",))
    rules: list[Rule] = []
    problems: list[str] = []
    for position, item in enumerate(raw, start=1):
        try:
            rules.append(parse_rule(item))
        except RuleError as error:
            number = item.get("number") if isinstance(item, Mapping) else None
            label = number if type(number) is int else f"at position {position}"
            problems.append(f"rule {label}: {error}")
    return PolicyRules(tuple(rules), tuple(problems))


def expected_intervals(rules: Sequence[Rule], own_cluster: str) -> Mapping[str, int]:
    """The expected interval in seconds per destination of these rules, for a VM of ``own_cluster``.

    Empty when there is no rule: the policy schedules nothing. :class:`RuleCostError` when the
    rules of a destination are too costly to evaluate (see :func:`check_cost`).

    >>> every = Days(every_day=True)
    >>> hourly = Rule(Schedule(60, every, 0, 0), LOCAL)
    >>> nightly = Rule(Schedule(1440, every, 22 * 60, 22 * 60), "DR")
    >>> dict(expected_intervals([hourly, nightly], "Boston"))
    {'Boston': 3600, 'DR': 86400}
    """
    return _expected_intervals(tuple(rules), own_cluster)


def app_consistent_intervals(rules: Sequence[Rule], own_cluster: str) -> Mapping[str, int]:
    """:func:`expected_intervals` of the rules that ask for application-consistent backups: the
    destinations a VM is judged on consistency at, and how often it should get such a backup.

    >>> every = Days(every_day=True)
    >>> hourly = Rule(Schedule(60, every, 0, 0), LOCAL)
    >>> nightly_vss = Rule(Schedule(1440, every, 22 * 60, 22 * 60), LOCAL, app_consistent=True)
    >>> dict(app_consistent_intervals([hourly, nightly_vss], "Boston"))
    {'Boston': 86400}
    """
    return _expected_intervals(tuple(rule for rule in rules if rule.app_consistent), own_cluster)


def check_cost(rules: Sequence[Rule]) -> int:
    """The work that judging VMs of a policy with these rules may take, at most (what
    :data:`MAX_POLICIES_WORK` counts); :class:`RuleCostError` when all its schedules together
    take more than :data:`MAX_RULE_WORK`. Cached, the refusal too.

    All the schedules together bound any subset of them; a VM's destinations group the rules
    one way per cluster the rules name (and one for every other cluster).

    >>> every_minute = [Rule(Schedule(1, Days.parse(f"{day},Mon"), day, day), LOCAL)
    ...                 for day in range(1, 29)]
    >>> check_cost(every_minute[:2])
    23040
    >>> try:
    ...     check_cost(every_minute)
    ... except RuleCostError as error:
    ...     print(error)
    its 28 rules take too much work to evaluate (over 2000000 backup times to visit)
    """
    gap, work = _bounded_longest_gap(frozenset(rule.schedule for rule in rules))
    if isinstance(gap, str):
        raise RuleCostError(gap)
    named = {rule.destination_name for rule in rules if rule.destination_name not in ("", LOCAL)}
    return work * (1 + len(named))


def interval_seconds(schedules: Iterable[Schedule]) -> int | None:
    """The longest time between consecutive backups of these schedules together, in seconds.

    ``None`` when they schedule nothing at all; :class:`RuleCostError` when that takes more than
    :data:`MAX_RULE_WORK`. Cached per distinct set of schedules.

    >>> every = Days(every_day=True)
    >>> interval_seconds([Schedule(60, every, 8 * 60, 18 * 60)])
    50400
    >>> interval_seconds([Schedule(1440, Days.parse("Mon,Wed,Fri"), 0, 0)]) // 86400
    3
    """
    minutes = _longest_gap_minutes(frozenset(schedules))
    return None if minutes is None else minutes * 60


# --- rules ---------------------------------------------------------------------------------


def _frequency(value: object) -> int:
    minutes: int | None = None
    if type(value) is int:
        minutes = value
    elif type(value) is float and value.is_integer():
        minutes = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        minutes = int(value.strip())
    if minutes is None or minutes < 1:
        shown = "missing" if value is None else repr(value)[:40]
        raise RuleError(f"frequency {shown} is not a whole number of minutes above 0")
    return minutes


def _optional_count(value: object) -> int | None:
    """A whole number above 0 (``retention``, ``max_backups``), or None for anything else."""
    try:
        return _frequency(value)
    except RuleError:
        return None


def _true(value: object) -> bool:
    """A boolean the API may also write as a text."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _minute(raw: Mapping[str, object], key: str) -> int:
    """``HH:MM`` as minutes after midnight; ``24:00`` is midnight."""
    value = raw.get(key)
    if not isinstance(value, str):
        raise RuleError(f"{key} is {_missing_or_type(value)}")
    match = _TIME.fullmatch(value.strip())
    if match is not None:
        hours, minutes = int(match[1]), int(match[2])
        if (hours < 24 and minutes < 60) or (hours, minutes) == (24, 0):
            return (hours * 60 + minutes) % _DAY
    raise RuleError(f"{key} {value[:40]!r} is not a time of day (HH:MM)")


def _name(raw: Mapping[str, object], key: str) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RuleError(f"{key} is {_missing_or_type(value)}")
    return label_value(value.strip())


def _missing_or_type(value: object) -> str:
    return "missing" if value is None else f"a {type(value).__name__}, not a string"


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# --- expected interval ---------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _day_times(frequency: int, start: int, end: int) -> tuple[int, ...]:
    # end == start is the whole day, the next day's start excluded; else end is included.
    last = start + _DAY - 1 if end == start else end if end > start else end + _DAY
    return tuple(range(start, last + 1, frequency))


@lru_cache(maxsize=4096)
def _expected_intervals(rules: tuple[Rule, ...], own_cluster: str) -> Mapping[str, int]:
    by_destination: dict[str, set[Schedule]] = {}
    for rule in rules:
        by_destination.setdefault(rule.destination(own_cluster), set()).add(rule.schedule)
    intervals: dict[str, int] = {}
    for destination, schedules in sorted(by_destination.items()):
        minutes = _longest_gap_minutes(frozenset(schedules))
        if minutes is not None:
            intervals[destination] = minutes * 60
    return MappingProxyType(intervals)


#: (first minute, last minute, longest gap between them) of a stretch of time, from its start.
_Span = tuple[int, int, int]


@dataclass(frozen=True)
class _Month:
    """A month of the 28-year cycle: all a schedule's backups in it depend on."""

    offset: int  # days from 2001-01-01, day 0 of the cycle
    weekday: int  # of its first day; 0 is Monday
    length: int
    previous_length: int  # the day before the 1st is the previous month's last day


@cache
def _months() -> tuple[_Month, ...]:
    months: list[_Month] = []
    offset = 0
    previous_length = 31  # December 2028, before the ring returns to January 2001
    for year in range(_CYCLE_START.year, _CYCLE_START.year + 28):
        for month in range(1, 13):
            length = calendar.monthrange(year, month)[1]
            months.append(_Month(offset, offset % 7, length, previous_length))
            offset += length
            previous_length = length
    return tuple(months)


def _join(parts: Iterable[tuple[int, _Span | None]]) -> _Span | None:
    """Consecutive stretches (each at its offset in minutes) as one, or None if all are empty."""
    first: int | None = None
    last = longest = 0
    for offset, span in parts:
        if span is None:
            continue
        if first is None:
            first = offset + span[0]
        elif offset + span[0] - last > longest:
            longest = offset + span[0] - last
        if span[2] > longest:
            longest = span[2]
        last = offset + span[1]
    return None if first is None else (first, last, longest)


def _longest_gap_minutes(schedules: frozenset[Schedule]) -> int | None:
    gap, _ = _bounded_longest_gap(schedules)
    if isinstance(gap, str):
        raise RuleCostError(gap)
    return gap


@lru_cache(maxsize=4096)
def _bounded_longest_gap(schedules: frozenset[Schedule]) -> tuple[int | str | None, int]:
    """:func:`_longest_gap` and its work, or why not (a text, cached like a result: a hostile
    policy costs :data:`MAX_RULE_WORK` once, not at every poll)."""
    try:
        return _longest_gap(schedules)
    except RuleCostError as error:
        return str(error), MAX_RULE_WORK


def _longest_gap(schedules: frozenset[Schedule]) -> tuple[int | None, int]:
    """The heart of the expected interval (see the module docstring), and the work it took:
    the backup times of the day pairs it summed up.

    Each schedule is a bit; a day's mask holds the bits of the schedules that run on it. A
    calendar day's backups come from that day's schedules (times before 24:00) and the
    previous day's (times past midnight, shifted back a day), so they depend only on the two
    masks, and each pair is summed up once. Days join into months, and a month depends only on
    the weekday of its 1st, its length and the previous month's length, so each kind of month
    is summed up once too; the cycle's 336 months then join into the ring.
    """
    ordered = list(schedules)
    if not ordered:
        return None, 0
    times = [schedule.times() for schedule in ordered]
    every_day = last_day = 0
    weekdays = [0] * 7
    month_days = [0] * 32
    for bit, schedule in enumerate(ordered):
        flag, days = 1 << bit, schedule.days
        if days.every_day:
            every_day |= flag
            continue
        for weekday in days.weekdays:
            weekdays[weekday] |= flag
        for month_day in days.month_days:
            month_days[month_day] |= flag
        if days.last_day:
            last_day |= flag

    day_spans: dict[tuple[int, int], _Span | None] = {}
    work = 0

    def day(previous: int, mask: int) -> _Span | None:
        nonlocal work
        key = (previous, mask)
        if key not in day_spans:
            work += sum(len(ts) for bit, ts in enumerate(times) if (previous | mask) >> bit & 1)
            if work > MAX_RULE_WORK:
                raise RuleCostError(
                    f"its {len(times)} rules take too much work to evaluate "
                    f"(over {MAX_RULE_WORK} backup times to visit)"
                )
            spilled = {t - _DAY for bit, ts in enumerate(times) if previous >> bit & 1 for t in ts}
            own = {t for bit, ts in enumerate(times) if mask >> bit & 1 for t in ts}
            minutes = sorted(t for t in spilled | own if 0 <= t < _DAY)
            inner = max((b - a for a, b in pairwise(minutes)), default=0)
            day_spans[key] = (minutes[0], minutes[-1], inner) if minutes else None
        return day_spans[key]

    if not any(month_days) and not last_day:
        cycle = 7 if any(weekdays) else 1
        masks = [every_day | weekdays[index] for index in range(cycle)]  # day 0 is a Monday
        ring = _join((index * _DAY, day(masks[index - 1], masks[index])) for index in range(cycle))
    else:
        cycle = _CYCLE_DAYS
        by_weekday = any(weekdays)
        month_spans: dict[tuple[int, int, int], _Span | None] = {}
        parts: list[tuple[int, _Span | None]] = []
        for month in _months():
            weekday = month.weekday if by_weekday else 0
            key = (weekday, month.length, month.previous_length)
            if key not in month_spans:
                masks = [every_day | weekdays[(weekday - 1) % 7] | month_days[key[2]] | last_day]
                masks += [
                    every_day | weekdays[(weekday + index) % 7] | month_days[index + 1]
                    for index in range(month.length)
                ]
                masks[-1] |= last_day
                month_spans[key] = _join(
                    (index * _DAY, day(masks[index], masks[index + 1]))
                    for index in range(month.length)
                )
            parts.append((month.offset * _DAY, month_spans[key]))
        ring = _join(parts)
    if ring is None:
        return None, work
    first, last, longest = ring
    return max(longest, cycle * _DAY + first - last), work
