"""Texts of times and ids, made fast: federations hold hundreds of thousands of them."""

from __future__ import annotations

import calendar
import random
import time
from typing import Final

DAY: Final = 86400


class Times:
    """Formats Unix seconds fast (federations hold hundreds of thousands of timestamps).

    Each text is made once per instance, so that backups of the same time share one string
    (a generated federation of 300,000 backups saves tens of megabytes by it).
    """

    def __init__(self) -> None:
        self._days: dict[int, str] = {}
        self._utc: dict[int, str] = {}
        self._local: dict[tuple[int, int], str] = {}

    def _day(self, day: int) -> str:
        text = self._days.get(day)
        if text is None:
            text = time.strftime("%Y-%m-%d", time.gmtime(day * DAY))
            self._days[day] = text
        return text

    def utc(self, t: int) -> str:
        """``2018-05-08T10:00:01Z``"""
        text = self._utc.get(t)
        if text is None:
            day, sec = divmod(t, DAY)
            hour, rest = divmod(sec, 3600)
            minute, second = divmod(rest, 60)
            text = f"{self._day(day)}T{hour:02d}:{minute:02d}:{second:02d}Z"
            self._utc[t] = text
        return text

    def local(self, t: int, offset: int) -> str:
        """``2018-05-08T06:00:01-04:00``: how policy backups are named."""
        text = self._local.get((t, offset))
        if text is None:
            text = self._local_text(t, offset)
            self._local[(t, offset)] = text
        return text

    def _local_text(self, t: int, offset: int) -> str:
        day, sec = divmod(t + offset, DAY)
        hour, rest = divmod(sec, 3600)
        minute, second = divmod(rest, 60)
        sign = "-" if offset < 0 else "+"
        oh, om = divmod(abs(offset) // 60, 60)
        return f"{self._day(day)}T{hour:02d}:{minute:02d}:{second:02d}{sign}{oh:02d}:{om:02d}"


def seeded_uuid4(rng: random.Random) -> str:
    """A version-4 UUID drawn from ``rng`` (deterministic, unlike uuid.uuid4)."""
    n = rng.getrandbits(128)
    n = (n & ~(0xF << 76)) | (4 << 76)
    n = (n & ~(0x3 << 62)) | (0x2 << 62)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def epoch(text: str) -> int:
    """The Unix seconds of ``2023-11-14T22:13:20Z`` (as :meth:`Times.utc` writes it)."""
    return calendar.timegm(
        (
            int(text[0:4]),
            int(text[5:7]),
            int(text[8:10]),
            int(text[11:13]),
            int(text[14:16]),
            int(text[17:19]),
            0,
            0,
            0,
        )
    )
