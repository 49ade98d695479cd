"""replicate: one copy of each batch per asset, acknowledged to the receiver once every copy
is delivered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from dataflows.config import load, validate
from dataflows.flow import expected_acknowledgements
from dataflows.records import Batch, StreamKey


def document(transforms: list[dict[str, Any]], transmits: list[dict[str, Any]] | None = None,
             inbox: str = "/data/in") -> dict[str, Any]:
    return {"data_receiver": [{
        "data_receiver_name": "files", "protocol": "localfile", "poll_interval": 1, "delete_completed": True,
        "connections": [{"data_directory": inbox}], "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
        "streams": [{"asset": "plant", "stream_type": "weather", "file_filter": ["*.csv"]}]}],
        "transforms": transforms,
        "data_transmit": transmits or [{"transmit_name": "local", "transmit_type": "localfile"}]}


REPLICATE = {"transform_name": "to presses", "transform_type": "replicate", "filter_stream": ["plant:*"],
             "asset_list": ["press_1", "press_2"]}


def test_each_asset_gets_a_copy_on_its_own_stream() -> None:
    transform = load(document([REPLICATE])).transforms[0]
    frame = pl.DataFrame({"temp": [20.5, 21.0]})
    batch = Batch("files", StreamKey("plant", "weather"), frame, "/in/a.csv", ack_key="k")
    copies, warnings = transform.apply_batches(batch)
    assert warnings == []
    assert [c.stream for c in copies] == [StreamKey("press_1", "weather"), StreamKey("press_2", "weather")]
    assert [c.frame["asset"].to_list() for c in copies] == [["press_1"] * 2, ["press_2"] * 2]
    assert all(c.frame["temp"].to_list() == [20.5, 21.0] and c.ack_key == "k" for c in copies)
    assert [c.ack_stream() for c in copies] == [StreamKey("plant", "weather")] * 2
    assert [c.ack_name("local") for c in copies] == ["local@press_1:weather", "local@press_2:weather"]


def test_the_receiver_waits_for_every_copy_at_every_transmit_it_reaches() -> None:
    transmits = [{"transmit_name": "local", "transmit_type": "localfile"},
                 {"transmit_name": "press_1 only", "transmit_type": "localfile", "filter_stream": ["press_1:*"]}]
    config = load(document([REPLICATE], transmits))
    assert expected_acknowledgements(config, StreamKey("plant", "weather")) == {
        "local@press_1:weather", "local@press_2:weather", "press_1 only@press_1:weather"}
    assert expected_acknowledgements(load(document([], transmits)), StreamKey("plant", "weather")) == {"local"}


def test_asset_list_is_checked() -> None:
    bad = {**REPLICATE, "asset_list": ["a", "b:c", "a"]}
    errors = [(v.json_path, v.description) for v in validate(document([bad]))]
    colon = "asset 'b:c' has a colon, which separates asset and stream_type"
    assert (["transforms", 0, "asset_list", 1], colon) in errors
    assert (["transforms", 0, "asset_list", 2], "asset 'a' is listed twice") in errors


def test_replicated_files_are_deleted_once_every_copy_is_delivered(tmp_path: Path, flows: Any) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"w{i}.csv").write_text(f"timestamp,temp\n2024-01-01 00:00:0{i},{20 + i}\n")
    (inbox / "empty.csv").write_bytes(b"")  # no records: only its acknowledgement travels
    flow = flows(tmp_path / "home", document([REPLICATE], inbox=str(inbox)))
    flow.start()
    flow.wait_for(lambda: not list(inbox.iterdir()), what="every file deleted once its copies were delivered")
    assert flow.stop() == 0
    for asset in ("press_1", "press_2"):
        records = flow.output("local", f"{asset}__weather.jsonl")
        assert sorted(r["temp"] for r in records) == [20, 21, 22]
        assert {r["asset"] for r in records} == {asset}
    assert flow.output("local", "plant__weather.jsonl") == []
