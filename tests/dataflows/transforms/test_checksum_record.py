"""checksum_record: the SHA-256 of each record's canonical JSON, stable across batches."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from dataflows.config import load, validate
from dataflows.records import Batch, StreamKey


def checksum(**keys: Any) -> Any:
    entry = {"transform_name": "c", "transform_type": "checksum_record", **keys}
    return load({"data_receiver": [], "transforms": [entry], "data_transmit": []}, runnable=False).transforms[0]


def batch(frame: pl.DataFrame, asset: str = "press") -> Batch:
    return Batch("r", StreamKey(asset, "cycle"), frame, "q")


def test_the_digest_is_the_sha256_of_the_canonical_json() -> None:
    frame = pl.DataFrame({"timestamp": [datetime(2024, 3, 10, 1, 30, tzinfo=ZoneInfo("America/Chicago"))],
                          "temp": [20.5], "Zone": ["A"], "count": [None]},
                         schema_overrides={"count": pl.Int64})
    out, warnings = checksum().apply_to(batch(frame))
    canonical = ('{"asset":"press","fieldvalues":{"Zone":"A","count":null,"temp":20.5},'
                 '"stream_type":"cycle","timestamp":"2024-03-10T07:30:00Z"}')
    assert out["factorytx_checksum"].to_list() == [hashlib.sha256(canonical.encode()).hexdigest()]
    assert out.columns == ["timestamp", "temp", "Zone", "count", "factorytx_checksum"] and warnings == []


def test_equal_records_get_equal_checksums_whichever_batch_and_only_the_chosen_parts_count() -> None:
    one = pl.DataFrame({"timestamp": [datetime(2024, 1, 1, tzinfo=UTC)], "v": [1.0], "w": ["x"]})
    reordered = one.select("w", "timestamp", "v")
    both = checksum().apply_to(batch(one))[0]["factorytx_checksum"]
    assert both.to_list() == checksum().apply_to(batch(reordered))[0]["factorytx_checksum"].to_list()
    other_asset = checksum().apply_to(batch(one, asset="oven"))[0]["factorytx_checksum"]
    assert other_asset.to_list() != both.to_list()
    values_only = checksum(record_keys=["fieldvalues"])
    assert values_only.apply_to(batch(one))[0]["factorytx_checksum"].to_list() == \
        values_only.apply_to(batch(one, asset="oven"))[0]["factorytx_checksum"].to_list()
    again = checksum().apply_to(batch(checksum().apply_to(batch(one))[0]))[0]  # its own column is left out
    assert again["factorytx_checksum"].to_list() == both.to_list()


def test_record_keys_are_checked() -> None:
    document = {"data_receiver": [], "data_transmit": [], "transforms": [
        {"transform_name": "c", "transform_type": "checksum_record", "record_keys": ["asset", "source"]}]}
    (violation,) = validate(document)
    assert violation.json_path == ["transforms", 0, "record_keys"]
    assert violation.description.startswith("Invalid enum value 'source'")
