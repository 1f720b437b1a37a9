"""Clocks. Business logic takes `now` from a clock object; nothing else reads the time.

Policies change at exact instants (2019-08-01 06:00 KST), so tests pin the clock and
`eum switch --clock-start` runs a clock that starts at a chosen instant and then ticks.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Protocol

from switch.domain import KST


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(KST)


class OffsetClock:
    """Starts at `start` and advances with the monotonic clock."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("clock start must carry a UTC offset, e.g. 2019-07-20T12:00:00+09:00")
        self._start = start.astimezone(KST)
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._t0)


class FixedClock:
    """A clock that moves only when told (tests)."""

    def __init__(self, at: datetime) -> None:
        self.at = at.astimezone(KST)

    def now(self) -> datetime:
        return self.at

    def advance(self, **kwargs: float) -> None:
        self.at = self.at + timedelta(**kwargs)


def parse_instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; write e.g. 2019-07-20T12:00:00+09:00")
    return value
