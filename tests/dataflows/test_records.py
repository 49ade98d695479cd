"""filter_stream patterns: globs on each side of the colon."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import polars as pl
import pytest

from dataflows.records import StreamKey, json_values, pattern_problem, stream_matches

LASER = StreamKey("lasercut", "mssql")


@pytest.mark.parametrize(("pattern", "matches"), [
    ("*", True), ("lasercut:mssql", True), ("*:mssql", True), ("lasercut:*", True), ("lase*:*", True),
    ("laser?ut:ms*", True), ("[lm]asercut:*", True), ("diecast:*", False), ("*:azure_lake", False),
    ("Lasercut:mssql", False),
])
def test_stream_matches(pattern: str, matches: bool) -> None:
    assert stream_matches([pattern], LASER) is matches


@pytest.mark.parametrize("pattern", ["lasercut", "a:b:c", ":mssql", "lasercut:", "[a:b"])
def test_malformed_patterns_match_nothing(pattern: str) -> None:
    assert pattern_problem(pattern) is not None
    assert stream_matches([pattern], LASER) is False


def test_stream_key_text() -> None:
    assert str(LASER) == "lasercut:mssql"
    assert StreamKey.parse("plant:a:cycle") == StreamKey("plant:a", "cycle")
    with pytest.raises(ValueError, match="asset:stream_type"):
        StreamKey.parse("nocolon")


def test_json_values_of_native_columns_are_what_msgspec_writes_row_by_row() -> None:
    frame = pl.DataFrame({
        "text": ['say "hi"', "é\u2028", None, "\n"],
        "float": [1.0, float("nan"), None, float("inf")],
        "int": [1, None, 3, -(2**63)],
        "uint": pl.Series([1, 2, 3, 2**64 - 1], dtype=pl.UInt64),
        "bool": [True, False, None, True],
        "list": [[1.5, 2.0], None, [], [float("nan")]],
        "struct": [{"a": 1, "b": "x"}, None, {"a": None, "b": None}, {"a": 2, "b": "\n"}],
        "decimal": [Decimal("1.5"), None, Decimal(2), Decimal("-0.01")],
        "category": pl.Series(["a", "b", None, "a"], dtype=pl.Categorical),
    })
    names = frame.columns
    row = msgspec.defstruct("Row", [(f"f{i}", Any) for i in range(len(names))],
                            rename={f"f{i}": name for i, name in enumerate(names)})
    by_msgspec = [msgspec.json.encode(row(*values)) for values in zip(*(frame[n].to_list() for n in names))]
    by_polars = json_values(frame)
    assert [msgspec.json.decode(v) for v in by_polars] == [msgspec.json.decode(v) for v in by_msgspec]
    assert by_polars[0].startswith(b'{"text":"say \\"hi\\"","float":1.0,')  # keys in column order
    assert b'"float":null' in by_polars[1] and b'"float":null' in by_polars[3]  # NaN, infinity


def test_json_values_of_other_columns_and_of_nothing() -> None:
    frame = pl.DataFrame({"blob": [b"x"], "float32": pl.Series([0.1], dtype=pl.Float32)})
    assert json_values(frame) == [b'{"blob":"eA==","float32":0.10000000149011612}']  # msgspec: base64
    assert json_values(frame.drop("blob")) == [b'{"float32":0.1}']  # polars: the shortest form
    assert json_values(pl.DataFrame({"a": []})) == []


def test_binary_values_are_base64_text_in_the_records_transmits_write() -> None:
    """polars' JSON writer panics on Binary columns (Sparkplug B Bytes and File metrics):
    ``records_frame`` gives them as base64 text."""
    from dataflows.records import Batch, records_frame

    batch = Batch("r", StreamKey("a", "s"), pl.DataFrame({"blob": [b"\x00\xff", None]}), "src")
    assert json_values(records_frame(batch)) == [b'{"asset":"a","stream_type":"s","blob":"AP8="}',
                                                 b'{"asset":"a","stream_type":"s","blob":null}']
