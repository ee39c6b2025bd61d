"""A policy's rules and the expected interval derived from them (exporter/schedule.py), with
no server at all."""

from __future__ import annotations

import doctest
from collections.abc import Sequence
from datetime import date, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import schedule as schedules
from exporter.schedule import (
    LOCAL,
    Days,
    PolicyRules,
    Rule,
    RuleError,
    Schedule,
    expected_intervals,
    interval_seconds,
    parse_rule,
    parse_rules,
)

HOUR = 3600
DAY = 86400
EVERY_DAY = Days(every_day=True)


def minutes(clock: str) -> int:
    hours, mins = clock.split(":")
    return int(hours) * 60 + int(mins)


def schedule(
    frequency: int, days: str = "All", start: str = "00:00", end: str = "00:00"
) -> Schedule:
    return Schedule(frequency, Days.parse(days), minutes(start), minutes(end))


def raw_rule(**fields: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "id": "r-1",
        "number": 1,
        "frequency": 60,
        "retention": 1440,
        "days": "All",
        "start_time": "00:00",
        "end_time": "00:00",
        "destination_id": "",
        "destination_name": "<Local>",
        "external_store_name": "",
        "max_backups": 1,
    }
    rule.update(fields)
    return rule


def test_the_docstring_examples_hold() -> None:
    results = doctest.testmod(schedules)
    assert results.attempted >= 20
    assert results.failed == 0


# --- rules ---------------------------------------------------------------------------------


def test_a_rule_as_the_api_returns_it() -> None:
    rule = parse_rule(
        raw_rule(frequency=30, days="Mon,Wed,Fri", start_time="08:00", end_time="18:30")
    )
    assert rule.schedule == Schedule(30, Days(weekdays=frozenset({0, 2, 4})), 480, 1110)
    assert (rule.destination_name, rule.external_store_name) == (LOCAL, "")


@pytest.mark.parametrize("text", ["All", "all", "ALL", "", "  ", "Mon,Tue,Wed,Thu,Fri,Sat,Sun"])
def test_every_day_is_written_many_ways(text: str) -> None:
    assert Days.parse(text) == Days(every_day=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mon,Wed,Fri", Days(weekdays=frozenset({0, 2, 4}))),
        ("monday, WEDNESDAY ,fri", Days(weekdays=frozenset({0, 2, 4}))),
        ("Tues,Thurs", Days(weekdays=frozenset({1, 3}))),
        ("1,15", Days(month_days=frozenset({1, 15}))),
        ("last", Days(last_day=True)),
        ("Last", Days(last_day=True)),
        ("Sun,1,last", Days(weekdays=frozenset({6}), month_days=frozenset({1}), last_day=True)),
    ],
)
def test_days(text: str, expected: Days) -> None:
    assert Days.parse(text) == expected


@pytest.mark.parametrize("text", ["NA", "0", "32", "Mo", "1.5", "Funday", "first", "-1", "\uff11"])
def test_days_that_name_no_day_are_refused_with_the_token(text: str) -> None:
    with pytest.raises(RuleError, match="is not a weekday, a day of the month"):
        Days.parse(text)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"frequency": "NA"}, "frequency 'NA' is not a whole number of minutes above 0"),
        ({"frequency": None}, "frequency missing is not a whole number of minutes above 0"),
        ({"frequency": 0}, "frequency 0 is not a whole number"),
        ({"frequency": -60}, "frequency -60 is not a whole number"),
        ({"frequency": True}, "frequency True is not a whole number"),
        ({"frequency": 1.5}, "frequency 1.5 is not a whole number"),
        ({"days": None}, "days is missing"),
        ({"days": 7}, "days is a int, not a string"),
        ({"days": "NA"}, "days 'NA': 'NA' is not a weekday"),
        ({"start_time": "NA"}, "start_time 'NA' is not a time of day"),
        ({"start_time": None}, "start_time is missing"),
        ({"end_time": "25:00"}, "end_time '25:00' is not a time of day"),
        ({"end_time": "12:60"}, "end_time '12:60' is not a time of day"),
        ({"end_time": "noon"}, "end_time 'noon' is not a time of day"),
        ({"destination_name": None}, "names neither a destination_name nor an external_store"),
        ({"destination_name": "  "}, "names neither a destination_name nor an external_store"),
        ({"destination_name": 3}, "destination_name is a int, not a string"),
    ],
)
def test_an_unusable_rule_says_why(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(RuleError, match=reason.replace(".", r"\.")):
        parse_rule(raw_rule(**fields))


def test_a_missing_field_is_as_unusable_as_a_null_one() -> None:
    for key in ("frequency", "days", "start_time", "end_time"):
        record = raw_rule()
        del record[key]
        with pytest.raises(RuleError, match=key):
            parse_rule(record)


def test_lenient_where_nothing_is_lost() -> None:
    lenient = parse_rule(raw_rule(frequency="60", start_time="8:00", end_time="24:00"))
    assert lenient.schedule == Schedule(60, EVERY_DAY, 480, 0)
    assert parse_rule(raw_rule(frequency=60.0)).schedule.frequency_minutes == 60


def test_destinations_of_rules() -> None:
    local = parse_rule(raw_rule(destination_name="<LOCAL>"))
    remote = parse_rule(raw_rule(destination_name="Chicago"))
    store = parse_rule(raw_rule(destination_name="<Local>", external_store_name="StoreOnce"))
    null_cluster = parse_rule(raw_rule(destination_name=None, external_store_name="Cloud Bank"))
    assert local.destination("Boston") == "Boston"
    assert remote.destination("Boston") == "Chicago"
    assert store.destination("Boston") == "StoreOnce"
    assert null_cluster.destination("Boston") == "Cloud Bank"


def test_a_policy_keeps_its_usable_rules_and_names_the_others() -> None:
    parsed = parse_rules(
        [
            raw_rule(number=1),
            raw_rule(number=2, frequency="NA"),
            "not a rule",
            raw_rule(number=None, days="Mo"),
        ]
    )
    assert parsed.rules == (
        Rule(Schedule(60, EVERY_DAY, 0, 0), LOCAL, retention_minutes=1440, max_backups=1),
    )
    assert parsed.problems == (
        "rule 2: frequency 'NA' is not a whole number of minutes above 0",
        "rule at position 3: is a str, not an object",
        "rule at position 4: days 'Mo': 'Mo' is not a weekday, "
        "a day of the month (1-31), 'last' or 'All'",
    )
    assert parsed.count == 4


def test_a_policy_without_rules() -> None:
    assert parse_rules([]) == parse_rules(None) == PolicyRules(())
    assert parse_rules({"rule": 1}).problems == ("rules is a dict, not a list",)


# --- expected interval ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedules", "expected"),
    [
        pytest.param([schedule(60)], HOUR, id="hourly all day"),
        pytest.param([schedule(60, start="08:00", end="18:00")], 14 * HOUR, id="office hours"),
        pytest.param([schedule(1440)], DAY, id="daily at midnight"),
        pytest.param([schedule(1440, start="23:30", end="23:30")], DAY, id="daily at 23:30"),
        pytest.param([schedule(1440, "Mon,Wed,Fri")], 3 * DAY, id="Mon,Wed,Fri: Fri to Mon"),
        pytest.param([schedule(1440, "1,15")], 17 * DAY, id="1,15: the 15th to the 1st"),
        pytest.param([schedule(1440, "last")], 31 * DAY, id="last: Feb to Mar"),
        pytest.param([schedule(1440, "31")], 61 * DAY, id="31: May 31 to Jul 31"),
        pytest.param([schedule(1440, "29")], 59 * DAY, id="29: Jan to Mar, common year"),
        pytest.param(
            [schedule(60, "31", start="22:00", end="06:00")],
            60 * DAY + 16 * HOUR,
            id="31 past midnight: Jun 1 06:00 to Jul 31 22:00",
        ),
        pytest.param(
            [
                schedule(60, "last", start="23:00", end="01:00"),
                schedule(1440, "1", "12:00", "12:00"),
            ],
            30 * DAY + 11 * HOUR,
            id="last past midnight, the 1st at noon: May 1 12:00 to May 31 23:00",
        ),
        pytest.param([schedule(1440, "28")], 31 * DAY, id="28: every month has one"),
        pytest.param([schedule(1440, "Sun")], 7 * DAY, id="weekly"),
        pytest.param([schedule(1440, "Mon,last")], 7 * DAY, id="weekdays and last"),
        pytest.param(
            [schedule(600, start="06:00", end="06:00")],
            10 * HOUR,
            id="whole day from 06:00: 06:00, 16:00, 02:00",
        ),
        pytest.param([schedule(60, start="22:00", end="06:00")], 16 * HOUR, id="past midnight"),
        pytest.param(
            [schedule(60, "Mon", start="22:00", end="02:00")],
            6 * DAY + 20 * HOUR,
            id="past midnight on Mondays: Tue 02:00 to Mon 22:00",
        ),
        pytest.param(
            [schedule(60, "Sat,Sun", start="22:00", end="02:00")],
            5 * DAY + 20 * HOUR,
            id="a Saturday window runs into Sunday's",
        ),
        pytest.param(
            [schedule(600, start="08:00", end="10:00")], DAY, id="frequency longer than window"
        ),
        pytest.param([schedule(2880)], DAY, id="two days is once on each scheduled day"),
        pytest.param([schedule(1)], 60, id="every minute"),
        pytest.param([schedule(50)], 50 * 60, id="50 min: 1440 is not a multiple"),
        pytest.param(
            [schedule(60, start="08:00", end="18:00"), schedule(1440)],
            8 * HOUR,
            id="two rules combine: midnight to 08:00",
        ),
        pytest.param(
            [schedule(60, start="00:00", end="00:00"), schedule(60, start="00:30", end="00:30")],
            30 * 60,
            id="interleaved rules halve the gap",
        ),
        pytest.param(
            [schedule(1440, "Mon,Wed,Fri"), schedule(1440, "Sun", start="12:00", end="12:00")],
            2 * DAY + 12 * HOUR,
            id="weekly patterns combine: Fri to Sun noon",
        ),
        pytest.param([schedule(1440, "1,15"), schedule(1440, "last")], 16 * DAY, id="1,15,last"),
    ],
)
def test_expected_interval(schedules: list[Schedule], expected: int) -> None:
    assert interval_seconds(schedules) == expected


def test_no_schedule_no_interval() -> None:
    assert interval_seconds([]) is None
    assert expected_intervals([], "Boston") == {}


def test_rules_to_different_destinations_are_kept_apart() -> None:
    rules = [
        Rule(schedule(60), LOCAL),
        Rule(schedule(60, start="08:00", end="18:00"), "Boston"),
        Rule(schedule(1440, "Sun"), "Chicago"),
        Rule(schedule(1440, "last"), "", "StoreOnce"),
    ]
    assert expected_intervals(rules, "Boston") == {
        "Boston": HOUR,  # <Local> and "Boston" are one destination for a VM of Boston
        "Chicago": 7 * DAY,
        "StoreOnce": 31 * DAY,
    }
    assert expected_intervals(rules, "Denver") == {
        "Denver": HOUR,
        "Boston": 14 * HOUR,
        "Chicago": 7 * DAY,
        "StoreOnce": 31 * DAY,
    }


def naive_interval(schedules: Sequence[Schedule], first: date, last: date) -> int | None:
    """The same rules read directly, day by day on the real calendar: the test's oracle.

    From the day before ``first``, whose window may run past midnight into ``first``; only
    the times of the calendar days from ``first`` to ``last`` count.
    """
    day_times = []
    for item in schedules:
        start, end = item.start_minute, item.end_minute
        stop = start + 1440 if end == start else start + (end - start) % 1440 + 1
        day_times.append(range(start, stop, item.frequency_minutes))
    times: set[int] = set()
    day, index = first - timedelta(days=1), 0
    while day <= last:
        is_last = (day + timedelta(days=1)).month != day.month
        for item, minutes_of_day in zip(schedules, day_times, strict=True):
            days = item.days
            if (
                days.every_day
                or day.weekday() in days.weekdays
                or day.day in days.month_days
                or (days.last_day and is_last)
            ):
                offset = index * 1440
                times.update(offset + minute for minute in minutes_of_day)
        day += timedelta(days=1)
        index += 1
    ordered = sorted(t for t in times if 1440 <= t < index * 1440)
    if len(ordered) < 2:
        return None
    return max(b - a for a, b in pairwise(ordered)) * 60


DAY_TOKENS = [
    *["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "friday"],
    *[str(day) for day in range(1, 32)],
    "last",
]
days_texts = st.one_of(
    st.sampled_from(["All", ""]),
    st.lists(st.sampled_from(DAY_TOKENS), min_size=1, max_size=4).map(",".join),
)
clock_minutes = st.one_of(st.just(0), st.integers(0, 1439))


def schedules_of(frequencies: st.SearchStrategy[int]) -> st.SearchStrategy[Schedule]:
    return st.builds(
        Schedule, frequencies, days_texts.map(Days.parse), clock_minutes, clock_minutes
    )


any_schedules = schedules_of(st.one_of(st.integers(1, 3000), st.sampled_from([60, 720, 1440])))
# The oracle walks every minute it schedules over 30 years: keep frequencies coarse for it.
coarse_schedules = schedules_of(st.integers(180, 3000))


@settings(max_examples=80, deadline=None)
@given(st.lists(coarse_schedules, min_size=1, max_size=3))
def test_the_ring_of_the_28_year_cycle_gives_the_real_calendars_longest_gap(
    schedules: list[Schedule],
) -> None:
    weekdays = any(item.days.weekdays for item in schedules if not item.days.every_day)
    month_days = any(
        item.days.month_days or item.days.last_day for item in schedules if not item.days.every_day
    )
    # Weekdays against month days need the whole 28-year cycle and its wrap into 2029; the
    # others repeat within 4 years, which 2001-2006 holds with its wrap (and the test is
    # 5 times faster).
    last = date(2030, 12, 31) if weekdays and month_days else date(2006, 12, 31)
    assert interval_seconds(schedules) == naive_interval(schedules, date(2001, 1, 1), last)


@pytest.mark.parametrize(
    "days", ["29", "Mon,29", "Sat,29,last", "Thu,28,last", "31,Sun", "Sat,15", "Tue,10"]
)
def test_a_century_without_leap_day_brings_no_longer_gap(days: str) -> None:
    # 2100 is a common year although 2100 % 4 == 0: the cycle's derivation says it changes nothing.
    schedules = [schedule(1440, days, "06:00", "06:00"), schedule(720, "Wed,15", "20:00", "04:00")]
    assert interval_seconds(schedules) == naive_interval(
        schedules, date(2085, 1, 1), date(2115, 12, 31)
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(any_schedules, min_size=1, max_size=3), any_schedules)
def test_adding_a_rule_never_lengthens_the_interval(
    schedules: list[Schedule], extra: Schedule
) -> None:
    before = interval_seconds(schedules)
    after = interval_seconds([*schedules, extra])
    assert before is not None
    assert after is not None
    assert after <= before


def bound_days(item: Schedule) -> int:
    """How many days a single rule's gap can span at most: its worst case over the calendar."""
    if item.days.every_day:
        return 1
    return 7 if item.days.weekdays else 61  # "31" alone: May 31 to July 31


@settings(max_examples=60, deadline=None)
@given(st.lists(any_schedules, min_size=1, max_size=4))
def test_the_interval_is_between_the_average_gap_and_the_loosest_rules_bound(
    schedules: list[Schedule],
) -> None:
    interval = interval_seconds(schedules)
    assert interval is not None
    assert interval <= min(bound_days(item) for item in schedules) * DAY
    # The longest gap is at least the average one: a day's 1,440 minutes over its backups.
    if all(item.days.every_day for item in schedules):
        backups_per_day = len({t % 1440 for item in schedules for t in item.times()})
        assert interval >= DAY // backups_per_day // 60 * 60


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), clock_minutes)
def test_every_day_over_the_whole_day_is_the_frequency_up_to_a_day(
    frequency: int, start: int
) -> None:
    assert (
        interval_seconds([Schedule(frequency, EVERY_DAY, start, start)])
        == min(frequency, 1440) * 60
    )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(any_schedules, st.sampled_from([LOCAL, "Boston", "Chicago"])),
        min_size=1,
        max_size=4,
    ),
    st.randoms(use_true_random=False),
)
def test_the_order_and_repetition_of_rules_do_not_matter(
    rules_spec: list[tuple[Schedule, str]], shuffler: Any
) -> None:
    rules = [Rule(item, destination) for item, destination in rules_spec]
    first = dict(expected_intervals(rules, "Boston"))
    shuffled = [*rules, *rules[:1]]
    shuffler.shuffle(shuffled)
    schedules._bounded_longest_gap.cache_clear()  # recompute, with the bits in another order
    assert dict(expected_intervals(shuffled, "Boston")) == first
    assert set(first) <= {"Boston", "Chicago"}
