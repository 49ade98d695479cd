"""The parquet parser on files written by polars, and on broken ones."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import msgspec
import polars as pl
import pytest

from dataflows import registry
from dataflows.sdk import ParseError
from tests.connectors.conformance import ParserHarness, parser_harness


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def parser(**keys: Any) -> Any:
    return msgspec.convert({"parser_name": "p", "parser_type": "parquet", **keys}, registry.parsers.union())


def test_a_polars_parquet_file_round_trips_with_its_types() -> None:
    frame = pl.DataFrame({"ts": [datetime(2024, 1, 1, tzinfo=UTC)], "value": [1.5], "n": [3], "s": ["a"]})
    assert parser().parse(b"", parquet_bytes(frame), source="f.parquet", first_line=1).equals(frame)
    assert parser(columns=["value"]).parse(b"", parquet_bytes(frame), source="f.parquet",
                                           first_line=1).columns == ["value"]


def test_a_cut_or_foreign_file_is_refused_naming_it() -> None:
    whole = parquet_bytes(pl.DataFrame({"a": list(range(100))}))
    with pytest.raises(ParseError, match=r"^f\.parquet: not a complete Parquet file \(500 bytes"):
        parser().parse(b"", whole[:500], source="f.parquet", first_line=1)
    with pytest.raises(ParseError, match=r"^f\.parquet: cannot read Parquet"):
        parser(columns=["nope"]).parse(b"", whole, source="f.parquet", first_line=1)


@parser_harness
class ParquetHarness(ParserHarness):
    """Parquet written by polars; bad input is a file cut short, as one still being written."""

    parser_type = "parquet"

    def good(self, seqs: range) -> bytes:
        return parquet_bytes(pl.DataFrame({"seq": list(seqs), "value": [s / 2 for s in seqs]}))

    def bad(self) -> bytes:
        return self.good(range(50))[:-20]
