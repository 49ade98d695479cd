"""tap: each batch's frame written to a file under the transform's directory, passed on."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from dataflows.config import load, validate
from dataflows.records import Batch, StreamKey
from dataflows.sdk import RunContext


def tap(**keys: Any) -> Any:
    entry = {"transform_name": "looking glass", "transform_type": "tap", **keys}
    return load({"data_receiver": [], "transforms": [entry], "data_transmit": []}, runnable=False).transforms[0]


FRAME = pl.DataFrame({"timestamp": [datetime(2024, 1, 1, tzinfo=UTC)], "temp": [20.5], "zone": ["A"]})


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_each_batch_becomes_a_file_and_passes_on_unchanged(tmp_path: Path, fmt: str) -> None:
    ctx = RunContext(home=tmp_path)
    transform = tap(format=fmt)
    for _ in range(2):
        out, warnings = transform.apply_to(Batch("r", StreamKey("press 1", "cycle"), FRAME, "q"), ctx)
        assert out.equals(FRAME) and warnings == []
    files = sorted((tmp_path / "components" / "looking glass" / "press 1__cycle").glob(f"*.{fmt}"))
    assert len(files) == 2
    read = pl.read_parquet(files[0]) if fmt == "parquet" else pl.read_csv(files[0], try_parse_dates=True)
    assert read.columns == FRAME.columns and read["temp"].to_list() == [20.5]
    if fmt == "parquet":
        assert read.equals(FRAME)  # types kept


def test_pickle_is_refused() -> None:
    document = {"data_receiver": [], "data_transmit": [], "transforms": [
        {"transform_name": "t", "transform_type": "tap", "format": "pickle"}]}
    (violation,) = validate(document)
    assert violation.json_path == ["transforms", 0, "format"]
    assert violation.description.startswith("Invalid enum value 'pickle'")
