"""The json and jsonl parsers on generated files, nested documents and malformed input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pytest

from dataflows import registry
from dataflows.sdk import ParseError
from tests.connectors.conformance import ParserHarness, parser_harness
from tests.connectors.receivers.test_localfile import open_reader
from tests.flowrun import drain


def parser(**keys: Any) -> Any:
    return msgspec.convert({"parser_name": "p", **keys}, registry.parsers.union())


def test_a_nested_document_through_its_record_path() -> None:
    document = {"site": "plant 1", "data": {"readings": [
        {"ts": "2024-01-01T00:00:00", "temp": 20.5, "tags": ["a", "b"], "machine": {"id": 7, "line": "L1"}},
        {"ts": "2024-01-01T00:05:00", "temp": None, "tags": [], "machine": {"id": 8, "line": "L2"}}]}}
    frame = parser(parser_type="json", record_path=["data", "readings"]).parse(
        b"", json.dumps(document).encode(), source="d.json", first_line=1)
    assert frame.columns == ["ts", "temp", "tags", "machine"]
    assert frame["temp"].to_list() == [20.5, None] and frame["tags"].to_list() == [["a", "b"], []]
    assert frame["machine"].struct.field("line").to_list() == ["L1", "L2"]
    one = parser(parser_type="json").parse(b"", b'{"a": 1}', source="o.json", first_line=1)
    assert one.to_dicts() == [{"a": 1}]


@pytest.mark.parametrize(("keys", "data", "message"), [
    ({}, b'[{"a": 1},\n {"a": 2,,}]', "d.json, line 2: not JSON at column 10: Expecting property name"),
    ({"record_path": ["data", "rows"]}, b'{"data": {}}', "d.json: record_path 'data/rows' is not in the document"),
    ({}, b"[1, 2]", "d.json: record 1 is a JSON int, not an object"),
    ({}, b"\xff\xfe[]", "d.json, line 1: not UTF-8 at byte 0"),
])
def test_bad_json_is_refused_naming_where(keys: dict[str, Any], data: bytes, message: str) -> None:
    with pytest.raises(ParseError) as raised:
        parser(parser_type="json", **keys).parse(b"", data, source="d.json", first_line=1)
    assert str(raised.value).startswith(message), str(raised.value)


def test_jsonl_lines_and_a_bad_line_named_by_its_file_line() -> None:
    jsonl = parser(parser_type="jsonl")
    frame = jsonl.parse(b"", b'{"seq": 1, "v": "a"}\n\n{"seq": 2, "v": "b"}\n', source="l.jsonl", first_line=1)
    assert frame.to_dicts() == [{"seq": 1, "v": "a"}, {"seq": 2, "v": "b"}]
    with pytest.raises(ParseError, match=r"^l\.jsonl, line 12: not JSON"):
        jsonl.parse(b"", b'{"seq": 1}\n{"seq": 2\n', source="l.jsonl", first_line=11)
    with pytest.raises(ParseError, match=r"^l\.jsonl, line 2: a JSON list, not an object"):
        jsonl.parse(b"", b'{"seq": 1}\n[1]\n', source="l.jsonl", first_line=1)


def test_an_appended_jsonl_file_is_read_on_from_where_it_was_left(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    path = inbox / "events.csv"  # the stream's file_filter is *.csv
    path.write_bytes(b'{"seq": 1}\n{"seq": 2}\n')
    os.utime(path, (1, 1))
    reader = open_reader(tmp_path, parser={"parser_name": "csv", "parser_type": "jsonl"})
    assert [b.frame["seq"].to_list() for b in drain(reader)] == [[1, 2]]
    with path.open("ab") as out:
        out.write(b'{"seq": 3}\n')
    os.utime(path, (2, 2))
    assert [b.frame["seq"].to_list() for b in drain(reader)] == [[3]]


def test_a_document_over_max_document_bytes_is_refused_before_it_is_fetched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fsspec.implementations.local import LocalFileSystem

    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "small.csv").write_bytes(b'[{"seq": 1}]')
    with (inbox / "huge.csv").open("wb") as out:  # 200 MiB, sparse: a dump nobody should parse whole
        out.truncate(200 * 1024 * 1024)
    for path in inbox.iterdir():
        os.utime(path, (1, 1))
    fetched = []
    cat_file = LocalFileSystem.cat_file
    monkeypatch.setattr(LocalFileSystem, "cat_file",
                        lambda fs, path, **kw: fetched.append(Path(path).name) or cat_file(fs, path, **kw))
    reader = open_reader(tmp_path, parser={"parser_name": "csv", "parser_type": "json"})
    assert [b.frame["seq"].to_list() for b in drain(reader)] == [[1]]
    assert fetched == ["small.csv"]
    (refused,) = reader.take_bad_input()
    assert refused.endswith("huge.csv: 209715200 bytes, more than max_document_bytes (67108864); the file is "
                            "skipped until it changes"), refused
    assert drain(reader) == [] and reader.take_bad_input() == []  # once, until it changes


@parser_harness
class JsonHarness(ParserHarness):
    """A nested JSON document; bad input is a truncated one."""

    parser_type = "json"

    def parser(self) -> dict[str, Any]:
        return {"parser_name": "conformance", "parser_type": "json", "record_path": ["rows"]}

    def good(self, seqs: range) -> bytes:
        return json.dumps({"rows": [{"seq": s, "value": s / 2} for s in seqs]}).encode()

    def bad(self) -> bytes:
        return b'{"rows": [{"seq": 1},'


@parser_harness
class JsonLinesHarness(ParserHarness):
    """One object per line; bad input has a line that is not JSON."""

    parser_type = "jsonl"

    def good(self, seqs: range) -> bytes:
        return b"".join(json.dumps({"seq": s, "value": s / 2}).encode() + b"\n" for s in seqs)

    def bad(self) -> bytes:
        return b'{"seq": 1}\nnot json\n'


def test_frames_keep_polars_types() -> None:
    frame = parser(parser_type="jsonl").parse(b"", b'{"n": 1, "x": 1.5, "b": true, "s": "t"}\n',
                                              source="t", first_line=1)
    assert frame.schema == {"n": pl.Int64, "x": pl.Float64, "b": pl.Boolean, "s": pl.String}
