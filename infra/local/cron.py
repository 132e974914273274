"""EventBridge's `cron(...)` schedules: the six fields as its documentation writes them, and when one fires.

    cron(Minutes Hours Day-of-month Month Day-of-week Year)      all in UTC

Minutes 0-59, Hours 0-23, Month 1-12 or JAN-DEC and Year 1970-2199 take `,` `-` `*` `/`;
Day-of-month 1-31 also `?`, `L` (the month's last day) and `NW` (the weekday nearest day N);
Day-of-week 1-7 or SUN-SAT (1 is Sunday) also `?`, `L` (the week's last day, Saturday) and `N#K`
(the K-th weekday N of the month, alone in its field). One of Day-of-month and Day-of-week is `?`,
never both. Beyond the documentation's table, what its examples and AWS's support use, with the
meaning of the Quartz syntax EventBridge's is: `6L` (the month's last Friday), `L-2` (two days
before the month's last), `LW` (its last weekday). What none of them defines (a range that wraps,
`L` in a list, a step past the field's largest value) is refused by name rather than given a
meaning it may not have on AWS. https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-cron-expressions.html
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

_MONTHS = {name.upper(): number for number, name in enumerate(calendar.month_abbr) if name}
_DAYS = {name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), 1)}
_FIELDS = (
    ("Minutes", 0, 59, {}),
    ("Hours", 0, 23, {}),
    ("Day-of-month", 1, 31, {}),
    ("Month", 1, 12, _MONTHS),
    ("Day-of-week", 1, 7, _DAYS),
    ("Year", 1970, 2199, {}),
)
_CRON = re.compile(r"^cron\((.*)\)$", re.DOTALL)


class CronError(ValueError):
    """A cron expression EventBridge refuses, or one whose meaning its documentation leaves open."""


@dataclass(frozen=True)
class Cron:
    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    years: tuple[int, ...]
    day: Callable[[date], bool]  # Day-of-month and Day-of-week together: whether it fires that day

    def next_after(self, moment: datetime) -> datetime | None:
        """The first time after `moment` (aware, or naive UTC) it fires; None if it never does again."""
        start = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        start = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for year in (y for y in self.years if y >= start.year):
            for month in (m for m in sorted(self.months) if (year, m) >= (start.year, start.month)):
                first = start.day if (year, month) == (start.year, start.month) else 1
                for day in range(first, calendar.monthrange(year, month)[1] + 1):
                    if not self.day(date(year, month, day)):
                        continue
                    for hour in self.hours:
                        for minute in self.minutes:
                            fires = datetime(year, month, day, hour, minute, tzinfo=UTC)
                            if fires >= start:
                                return fires
        return None


def parse(expression: str) -> Cron:
    """The schedule of `cron(...)`, or CronError saying what EventBridge refuses or what is left open."""
    match = _CRON.match(expression)
    fields = match[1].upper().split() if match else []  # JAN, jan and Jan alike
    if len(fields) != 6:
        raise CronError("a cron expression has six fields: cron(Minutes Hours Day-of-month Month Day-of-week Year)")
    minutes, hours, day_of_month, month, day_of_week, year = fields
    if (day_of_month == "?") == (day_of_week == "?"):
        raise CronError("one of Day-of-month and Day-of-week must be ?, and only one")
    return Cron(
        expression=expression,
        minutes=tuple(sorted(_values(minutes, *_FIELDS[0]))),
        hours=tuple(sorted(_values(hours, *_FIELDS[1]))),
        months=frozenset(_values(month, *_FIELDS[3])),
        years=tuple(sorted(_values(year, *_FIELDS[5]))),
        day=_day_of_month(day_of_month) if day_of_week == "?" else _day_of_week(day_of_week),
    )


def _number(text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    value = (
        names.get(text.upper())
        if names and text.isalpha()
        else int(text)
        if text.isascii() and text.isdigit()
        else None
    )
    if value is None or not low <= value <= high:
        spelled = f" or {min(names, key=names.get)}-{max(names, key=names.get)}" if names else ""
        raise CronError(f"{name}: {text!r} is not {low}-{high}{spelled}")
    return value


def _values(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    """A field of `,` `-` `*` `/` items, as a set of its values."""
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or not 1 <= int(step_text) <= high:
                raise CronError(f"{name}: the step of {item!r} is not 1-{high}")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first_text, _, last_text = base.partition("-")
            first, last = (_number(t, name, low, high, names) for t in (first_text, last_text))
            if first > last:
                raise CronError(f"{name}: the range {base!r} runs backwards (EventBridge does not define a wrap)")
        else:
            first = _number(base, name, low, high, names)
            last = high if slash else first  # `5/15`: from 5 on, every 15
        values |= set(range(first, last + 1, step))
    return values


def _day_of_month(text: str) -> Callable[[date], bool]:
    if text == "LW":  # the month's last weekday
        return lambda day: day.day == _nearest_weekday(day.year, day.month, _last(day))
    if text == "L" or text.startswith("L-"):  # the month's last day, or `L-3`: three days before it
        before = _number(text[2:], "Day-of-month", 0, 30, {}) if text != "L" else 0
        return lambda day: day.day == _last(day) - before
    if text.endswith("W") and text[:-1].isascii() and text[:-1].isdigit():
        target = _number(text[:-1], "Day-of-month", 1, 31, {})
        return lambda day: day.day == _nearest_weekday(day.year, day.month, target)
    if set(text) & set("LW?#"):
        raise CronError(f"Day-of-month: {text!r} is not emulated (L, L-N, LW or NW alone, or values with , - * /)")
    days = _values(text, *_FIELDS[2])
    return lambda day: day.day in days


def _day_of_week(text: str) -> Callable[[date], bool]:
    if text == "L":
        return lambda day: _weekday(day) == 7  # the week's last day: Saturday
    if "#" in text:
        if "," in text:  # as EventBridge's documentation says: `3#1,6#3` is two expressions
            raise CronError(f"Day-of-week: {text!r}: an N#K stands alone in its field")
        weekday_text, _, nth_text = text.partition("#")
        weekday = _number(weekday_text, "Day-of-week", 1, 7, _DAYS)
        nth = _number(nth_text, "Day-of-week", 1, 5, {})  # a month has at most five of a weekday
        return lambda day: _weekday(day) == weekday and (day.day - 1) // 7 + 1 == nth
    if text.endswith("L"):  # `6L`: the month's last Friday
        weekday = _number(text[:-1], "Day-of-week", 1, 7, _DAYS)
        return lambda day: _weekday(day) == weekday and day.day + 7 > _last(day)
    if set(text) & set("L?#"):
        raise CronError(f"Day-of-week: {text!r} is not emulated (L, NL or N#K alone, or values with , - * /)")
    weekdays = _values(text, *_FIELDS[4])
    return lambda day: _weekday(day) in weekdays


def _last(day: date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


def _weekday(day: date) -> int:
    """EventBridge's number of the day: 1 Sunday ... 7 Saturday."""
    return (day.weekday() + 1) % 7 + 1


def _nearest_weekday(year: int, month: int, target: int) -> int | None:
    """The weekday (Monday-Friday) of the month nearest its day `target`, never in another month;
    None when the month is shorter than `target`."""
    last = calendar.monthrange(year, month)[1]
    if target > last:
        return None
    weekday = date(year, month, target).weekday()  # 5 Saturday, 6 Sunday
    if weekday == 5:
        return target - 1 if target > 1 else target + 2
    if weekday == 6:
        return target + 1 if target < last else target - 2
    return target
