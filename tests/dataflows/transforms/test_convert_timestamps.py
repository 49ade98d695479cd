"""convert_timestamps: naive local times to UTC across DST edges, aware values, epochs."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from dataflows.config import load
from dataflows.transforms.convert_timestamps import ConvertTimestamps


def transform(**keys: object) -> ConvertTimestamps:
    doc = {"data_receiver": [], "data_transmit": [],
           "transforms": [{"transform_name": "t", "transform_type": "convert_timestamps", **keys}]}
    return load(doc, runnable=False).transforms[0]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def convert(values: list[str], timezone: str) -> list[datetime | None]:
    frame, warnings = transform(field_names=["timestamp"], timezone=timezone).apply(
        pl.DataFrame({"timestamp": values}))
    assert warnings == []
    assert frame.schema["timestamp"] == pl.Datetime("us", "UTC")
    return frame["timestamp"].to_list()


@pytest.mark.parametrize(("zone", "local", "expected"), [
    # America/New_York, spring forward 2021-03-14 02:00 EST -> 03:00 EDT
    ("America/New_York", "2021-03-14 01:59:59", utc(2021, 3, 14, 6, 59, 59)),
    ("America/New_York", "2021-03-14 02:30:00", utc(2021, 3, 14, 7, 30)),  # gap: EST offset
    ("America/New_York", "2021-03-14 03:00:00", utc(2021, 3, 14, 7, 0)),
    # America/New_York, fall back 2021-11-07 02:00 EDT -> 01:00 EST
    ("America/New_York", "2021-11-07 00:59:00", utc(2021, 11, 7, 4, 59)),
    ("America/New_York", "2021-11-07 01:30:00", utc(2021, 11, 7, 5, 30)),  # ambiguous: first (EDT)
    ("America/New_York", "2021-11-07 02:00:00", utc(2021, 11, 7, 7, 0)),
    # Europe/Paris, spring forward 2021-03-28 02:00 CET -> 03:00 CEST
    ("Europe/Paris", "2021-03-28 01:59:00", utc(2021, 3, 28, 0, 59)),
    ("Europe/Paris", "2021-03-28 02:30:00", utc(2021, 3, 28, 1, 30)),  # gap: CET offset
    ("Europe/Paris", "2021-03-28 03:00:00", utc(2021, 3, 28, 1, 0)),
    # Europe/Paris, fall back 2021-10-31 03:00 CEST -> 02:00 CET
    ("Europe/Paris", "2021-10-31 01:59:00", utc(2021, 10, 30, 23, 59)),
    ("Europe/Paris", "2021-10-31 02:30:00", utc(2021, 10, 31, 0, 30)),  # ambiguous: first (CEST)
    ("Europe/Paris", "2021-10-31 03:00:00", utc(2021, 10, 31, 2, 0)),
])
def test_dst_edges(zone: str, local: str, expected: datetime) -> None:
    assert convert([local], zone) == [expected]


def test_a_whole_fall_back_night_keeps_every_row() -> None:
    night = pl.datetime_range(datetime(2021, 11, 7, 0, 0), datetime(2021, 11, 7, 3, 0), "15m",
                              eager=True).dt.strftime("%Y-%m-%d %H:%M:%S").to_list()
    converted = convert(night, "America/New_York")
    assert len(converted) == len(night) == 13
    assert None not in converted


def test_aware_values_are_converted_not_relocalized() -> None:
    assert convert(["2021-03-14T02:30:00-05:00", "2021-06-01T12:00:00+09:00"], "Europe/Paris") == [
        utc(2021, 3, 14, 7, 30), utc(2021, 6, 1, 3, 0)]


def test_naive_datetime_column_and_no_timezone_means_utc() -> None:
    frame = pl.DataFrame({"ts": [datetime(2020, 1, 1, 12)]})
    out, _ = transform(field_names="ts").apply(frame)
    assert out["ts"].to_list() == [utc(2020, 1, 1, 12)]


def test_python_strftime_format_with_fraction() -> None:
    out, warnings = transform(field_names=["t"], timezone="Asia/Tokyo",
                              format="%d/%m/%Y %H:%M:%S.%f").apply(pl.DataFrame({"t": ["02/01/2020 09:00:00.250"]}))
    assert warnings == []
    assert out["t"].to_list() == [datetime(2020, 1, 2, 0, 0, 0, 250000, tzinfo=UTC)]


@pytest.mark.parametrize(("unit", "value", "expected"), [
    ("s", 1_600_000_000, utc(2020, 9, 13, 12, 26, 40)),
    ("ms", 1_600_000_000_123, datetime(2020, 9, 13, 12, 26, 40, 123000, tzinfo=UTC)),
    ("D", 18_000, utc(2019, 4, 14)),
])
def test_epoch_numbers(unit: str, value: int, expected: datetime) -> None:
    out, _ = transform(field_names=["t"], unit=unit, timezone="Asia/Tokyo").apply(pl.DataFrame({"t": [value]}))
    assert out["t"].to_list() == [expected]


def test_problems_are_warnings_and_the_batch_goes_on() -> None:
    frame = pl.DataFrame({"t": ["2020-01-01 00:00:00", "not a time"], "n": [1, 2]})
    out, warnings = transform(field_names=["t", "n", "missing"], timezone="UTC").apply(frame)
    assert out["t"].to_list() == [utc(2020, 1, 1), None]
    assert out["n"].to_list() == [1, 2]
    assert warnings == ["1 values of column 't' are not timestamps and became null (e.g. not a time)",
                        "column 'n' holds numbers; set `unit` to read them as epoch times",
                        "column 'missing' to convert is missing"]


def test_legacy_field_name_key() -> None:
    out, _ = transform(field_name="t", timezone="Europe/Paris").apply(pl.DataFrame({"t": ["2021-01-01 01:00:00"]}))
    assert out["t"].to_list() == [utc(2021, 1, 1, 0, 0)]
