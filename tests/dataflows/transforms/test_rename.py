"""rename: columns renamed in order; a missing column is a warning."""

from __future__ import annotations

import polars as pl

from dataflows.config import load


def rename(*pairs: tuple[str, str]):
    doc = {"data_receiver": [], "data_transmit": [], "transforms": [
        {"transform_name": "r", "transform_type": "rename", "renames": [{"from": a, "to": b} for a, b in pairs]}]}
    return load(doc, runnable=False).transforms[0]


def test_renames_in_order() -> None:
    out, warnings = rename(("TIMESTAMP", "timestamp"), ("timestamp", "ts")).apply(
        pl.DataFrame({"TIMESTAMP": [1], "v": [2]}))
    assert out.columns == ["ts", "v"]
    assert warnings == []


def test_missing_column_is_a_warning_not_a_crash() -> None:
    frame = pl.DataFrame({"Timestamp": [1]})
    out, warnings = rename(("TIMESTAMP", "timestamp")).apply(frame)
    assert out.equals(frame)
    assert warnings == ["column 'TIMESTAMP' to rename to 'timestamp' is missing (columns: Timestamp)"]


def test_rename_onto_an_existing_column_replaces_it() -> None:
    out, _ = rename(("Timestamp", "timestamp")).apply(pl.DataFrame({"Timestamp": [1], "timestamp": [0]}))
    assert out.to_dict(as_series=False) == {"timestamp": [1]}
