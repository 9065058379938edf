"""Times given on the command line and to search: ISO 8601 instants, bare dates and intervals.

A bare date (``2020-05-18``) means that whole day in UTC, from its first to its last microsecond;
``START/END`` is an interval whose sides are instants, dates (a date as END means its end) or ``..``
(open). A time without a zone is UTC.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from ._errors import TimeFormatError

_BARE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _instant(text: str, *, end: bool) -> datetime | None:
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TimeFormatError(f"time {text!r} is not ISO 8601: give e.g. 2020-05-18, 2020-05-18T13:30:00Z "
                              "or START/END") from None
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if end and _BARE_DATE.match(text):
        value += timedelta(days=1, microseconds=-1)
    return value


def parse_instant(text: str) -> datetime:
    """One ISO 8601 instant in UTC (a time without a zone is UTC, a bare date its first instant)."""
    value = _instant(text, end=False)
    if value is None:
        raise TimeFormatError(f"time {text!r} is empty: give e.g. 2020-05-18T13:30:00Z")
    return value


def parse_interval(text: str) -> tuple[datetime | None, datetime | None]:
    """``text`` as (start, end) in UTC; an instant gives start == end, a bare date its whole day."""
    start, _, stop = text.partition("/") if "/" in text else (text, "", text)
    interval = (_instant(start, end=False), _instant(stop, end=True))
    if interval[0] is not None and interval[1] is not None and interval[0] > interval[1]:
        raise TimeFormatError(f"time {text!r} starts after it ends")
    return interval
