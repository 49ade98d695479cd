"""Turning timestamp columns into timezone-aware UTC, with one rule for DST edges.

The rule (PEP 495, ``fold=0``), applied to naive local times in an IANA zone:

- an *ambiguous* local time (the repeated hour when clocks fall back) is its first
  occurrence, i.e. the offset in force before the change (``2021-11-07 01:30`` in
  America/New_York is EDT, ``05:30Z``);
- a *nonexistent* local time (the skipped hour when clocks spring forward) is read with
  the offset in force before the change (``2021-03-14 02:30`` in America/New_York is
  read as EST, ``07:30Z``): no value is dropped and order is kept within the gap.

Aware values are converted to UTC. Epoch numbers (with a ``unit``) are UTC by
definition. Strings that do not parse become null and are counted in the returned
:class:`Conversion` so callers can report them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from typing import Literal
from zoneinfo import ZoneInfo

import polars as pl

EpochUnit = Literal["D", "s", "ms", "us", "ns"]


class TimestampError(ValueError):
    """A column cannot be converted at all (e.g. numbers without a ``unit``)."""


@dataclass(frozen=True, slots=True)
class Conversion:
    """A converted column and how many non-null inputs did not convert (now null)."""

    series: pl.Series
    failed: int
    examples: list[str]


def chrono_format(fmt: str) -> str:
    """Translate a Python strftime format (FactoryTX's) to the chrono dialect polars parses with.

    Python's ``.%f`` (1 to 6 fraction digits after a dot) is chrono's ``%.f``; a bare
    ``%f`` is six digits. Everything else is the same in both.
    """
    return fmt.replace(".%f", "%.f").replace("%f", "%6f").replace("%.6f", "%.f")


def localize(naive: pl.Series, timezone: str) -> pl.Series:
    """Read naive datetimes as wall-clock times in ``timezone``; returns UTC-aware datetimes."""
    aware = naive.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
    aware = aware.dt.convert_time_zone("UTC")
    gaps = (aware.is_null() & naive.is_not_null()).arg_true()
    if gaps.len():
        zone = ZoneInfo(timezone)
        values = [naive[i].replace(tzinfo=zone, fold=0).astimezone(UTC) for i in gaps]
        aware = aware.scatter(gaps, pl.Series(values, dtype=aware.dtype))
    return aware


def to_utc(series: pl.Series, timezone: str | None, *, format: str | None = None,
           unit: EpochUnit | None = None) -> Conversion:
    """Convert a column of strings, epoch numbers, dates or datetimes to UTC-aware datetimes.

    :param timezone: IANA zone of naive values; ``None`` reads them as UTC.
    :param format: strftime format of strings; guessed when ``None``.
    :param unit: unit of epoch numbers (``D`` days, ``s``, ``ms``, ``us``, ``ns``).
    :raises TimestampError: numbers without ``unit``, or a column of another type.
    """
    dtype = series.dtype
    if dtype == pl.String:
        parsed = series.str.to_datetime(format=chrono_format(format) if format else None, strict=False, time_unit="us")
    elif dtype.is_numeric():
        if unit is None:
            raise TimestampError(f"column {series.name!r} holds numbers; set `unit` to read them "
                                 "as epoch times")
        if unit == "D":
            parsed = pl.from_epoch((series * 86_400_000).round(0).cast(pl.Int64), time_unit="ms")
        else:
            parsed = pl.from_epoch(series.cast(pl.Int64), time_unit=unit)
        parsed = parsed.dt.replace_time_zone("UTC")
    elif dtype == pl.Date:
        parsed = series.cast(pl.Datetime("us"))
    elif isinstance(dtype, pl.Datetime):
        parsed = series
    elif dtype == pl.Null:
        return Conversion(series.cast(pl.Datetime("us", "UTC")), 0, [])
    else:
        raise TimestampError(f"column {series.name!r} of type {dtype} cannot hold timestamps")

    if isinstance(parsed.dtype, pl.Datetime) and parsed.dtype.time_zone is None:
        parsed = localize(parsed, timezone or "UTC")
    else:
        parsed = parsed.dt.convert_time_zone("UTC")
    failed_mask = parsed.is_null() & series.is_not_null()
    failed = int(failed_mask.sum())
    examples = [str(v) for v in series.filter(failed_mask).head(3).to_list()] if failed else []
    return Conversion(parsed.alias(series.name), failed, examples)
