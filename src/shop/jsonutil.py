"""JSON encoding shared by responses and events: orjson, decimals as exact JSON numbers."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Written as the decimal's own digits (19.90, not 19.9 or 19.899999...), still a number.
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """Encode to JSON bytes; datetimes as RFC 3339 UTC, UUIDs as strings, decimals as numbers.

    Naive datetimes are UTC (the database stores them so): written with a `Z`, with no
    per-value conversion in Python.
    """
    return orjson.dumps(value, default=_default, option=_OPTIONS)


loads = orjson.loads


def utcnow() -> dt.datetime:
    """The current time, naive UTC with microseconds, as MySQL DATETIME(6) stores it."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
