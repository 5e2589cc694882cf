"""`clock`: the current date and time in the operator's time zone, and date arithmetic.

Dates without a UTC offset are read in the operator's time zone (`CASCADE_TIMEZONE`).
Arithmetic is on wall-clock time in that zone, so "add 1 day" across a DST change keeps the
hour. `now` is injectable for tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import Field

from tools.registry import Tool, ToolArgs, ToolContext, ToolError, tool


class ClockArgs(ToolArgs):
    operation: Literal["now", "add", "diff", "weekday"] = Field(
        default="now",
        description=(
            "now: current date and time; add: `date` plus days/hours/minutes (negative to "
            "subtract); diff: time from `date` to `other_date`; weekday: the weekday of `date`."
        ),
    )
    date: str | None = Field(
        default=None,
        description="ISO date or date-time, e.g. 2025-03-14 or 2025-03-14T09:30. Default: now.",
    )
    other_date: str | None = Field(
        default=None, description="For diff: the second ISO date or date-time. Default: now."
    )
    days: float = Field(default=0, description="For add.")
    hours: float = Field(default=0, description="For add.")
    minutes: float = Field(default=0, description="For add.")


def make_clock_tool(timezone: str = "UTC", *, now: Callable[[], dt.datetime] | None = None) -> Tool:
    """The clock tool for `timezone` (an IANA name); `now` returns an aware datetime."""
    zone = ZoneInfo(timezone)
    current = now or (lambda: dt.datetime.now(dt.UTC))

    def parse(text: str | None, field: str) -> dt.datetime:
        if text is None or not text.strip():
            return current().astimezone(zone)
        raw = text.strip()
        if raw.endswith(("Z", "z")):
            raw = raw[:-1] + "+00:00"
        try:
            value = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise ToolError(f"{field} {text!r} is not an ISO date (YYYY-MM-DD[THH:MM])") from None
        return value.replace(tzinfo=zone) if value.tzinfo is None else value.astimezone(zone)

    @tool(name="clock", timeout=5.0)
    async def clock(args: ClockArgs, ctx: ToolContext) -> str:
        """Current date and time, and date arithmetic: add or subtract days/hours/minutes,
        the time between two dates, the weekday of a date."""
        if args.operation == "now":
            return f"Now: {_describe(current().astimezone(zone))} (time zone {timezone})"
        start = parse(args.date, "date")
        if args.operation == "weekday":
            return f"{start.date().isoformat()} is a {start.strftime('%A')}"
        if args.operation == "add":
            try:
                delta = dt.timedelta(days=args.days, hours=args.hours, minutes=args.minutes)
                # Wall-clock arithmetic in the zone, then re-resolve the offset (DST).
                naive = start.replace(tzinfo=None) + delta
            except (OverflowError, ValueError):
                raise ToolError("the resulting date is out of range") from None
            result = naive.replace(tzinfo=zone)
            return f"{_describe(start)} + {_describe_delta(delta)} = {_describe(result)}"
        other = parse(args.other_date, "other_date")
        return _describe_diff(start, other)

    return clock


def _describe(value: dt.datetime) -> str:
    return f"{value.isoformat(timespec='minutes')} ({value.strftime('%A')})"


def _describe_delta(delta: dt.timedelta) -> str:
    sign = "-" if delta < dt.timedelta(0) else ""
    delta = abs(delta)
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    return f"{sign}{days} days {hours} hours {mins} minutes"


def _describe_diff(start: dt.datetime, end: dt.datetime) -> str:
    # Exact elapsed time (UTC), plus calendar days between the two local dates.
    elapsed = end.astimezone(dt.UTC) - start.astimezone(dt.UTC)
    calendar_days = (end.date() - start.date()).days
    return (
        f"From {_describe(start)} to {_describe(end)}: {_describe_delta(elapsed)} "
        f"({elapsed.total_seconds() / 3600:.2f} hours; {calendar_days} calendar days)"
    )
