"""The csv and spreadsheet parsers on real and generated files."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from connectors.parsers.csv import CsvParser, ParseError, SpreadsheetParser
from dataflows.config import load
from tests.connectors.conformance import ParserHarness, parser_harness


def parser(parser_type: str = "csv", **keys: object):
    doc = {"data_transmit": [], "transforms": [], "data_receiver": [{
        "data_receiver_name": "r", "protocol": "localfile", "connections": [{"data_directory": "/x"}],
        "parsers": [{"parser_name": "p", "parser_type": parser_type, **keys}],
        "streams": [{"asset": "a", "stream_type": "s"}]}]}
    return load(doc, runnable=False).data_receiver[0].parsers[0]


def parse(data: bytes, p=None, first_line: int = 1, prefix: bytes = b"") -> pl.DataFrame:
    return (p or parser()).parse(prefix, data, source="f.csv", first_line=first_line)


def test_nab_file(nab_machine_csv: Path) -> None:
    frame = parse(nab_machine_csv.read_bytes())
    assert frame.height == 22_695
    assert frame.schema == {"timestamp": pl.Datetime("us"), "value": pl.Float64}
    assert frame.row(0) == (datetime(2013, 12, 2, 21, 15), 73.96732207)


def test_separator_and_header_offset() -> None:
    frame = parse(b"exported by PLC\nline two\nts;v\n1;2\n3;4\n", parser(separator=";", header=2))
    assert frame.to_dict(as_series=False) == {"ts": [1, 3], "v": [2, 4]}


def test_no_header() -> None:
    frame = parse(b"1,2\n3,4\n", parser(header=None))
    assert frame.columns == ["column_1", "column_2"]
    assert frame.height == 2


@pytest.mark.parametrize(("encoding", "bom"), [("utf-8", b"\xef\xbb\xbf"), ("cp1252", b""), ("utf-16", b"")])
def test_encodings(encoding: str, bom: bytes) -> None:
    text = "Température,Zone\n21.5,Süd\n"
    data = bom + text.encode(encoding)
    frame = parse(data, parser(file_encoding=encoding if encoding != "utf-8" else None))
    assert frame.to_dict(as_series=False) == {"Température": [21.5], "Zone": ["Süd"]}


def test_unset_encoding_falls_back_to_cp1252_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        frame = parse("Température\n20\n".encode("cp1252"))
    assert frame.columns == ["Température"]
    assert "f.csv, line 1: not utf-8, read as cp1252" in caplog.text


def test_wrong_explicit_encoding_is_an_error_with_line() -> None:
    with pytest.raises(ParseError, match=r"f.csv, line 3: cannot decode as ascii"):
        parse("a\n1\n\u00e9\n".encode(), parser(file_encoding="ascii"))


BAD = b"a,b,c\n1,2,3\n4,5\n6,7,8\n9,10,11,12\n13,14,15\n"


def test_bad_lines_error_names_file_and_line() -> None:
    with pytest.raises(ParseError) as info:
        parse(BAD)
    assert (info.value.source, info.value.line) == ("f.csv", 3)
    assert str(info.value) == "f.csv, line 3: expected 3 fields, found 2 (2 bad lines in all)"


def test_bad_lines_warn_drops_and_logs_each(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        frame = parse(BAD, parser(bad_lines_action="warn"))
    assert frame["a"].to_list() == [1, 6, 13]
    assert "f.csv, line 3: expected 3 fields, found 2; line dropped" in caplog.text
    assert "f.csv, line 5: expected 3 fields, found 4; line dropped" in caplog.text


def test_bad_lines_skip_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        frame = parse(BAD, parser(bad_lines_action="skip"))
    assert frame["a"].to_list() == [1, 6, 13]
    assert caplog.text == ""


def test_quoted_fields_spanning_lines_keep_line_numbers() -> None:
    data = b'id,note\n1,"hello, world"\n2,"two\nlines"\n3,x,extra\n'
    with pytest.raises(ParseError) as info:
        parse(data)
    assert info.value.line == 5
    frame = parse(data, parser(bad_lines_action="skip"))
    assert frame["note"].to_list() == ["hello, world", "two\nlines"]


def test_appended_chunk_reports_file_lines() -> None:
    with pytest.raises(ParseError) as info:
        parse(b"7,8\n9\n", first_line=40, prefix=b"a,b\n")
    assert info.value.line == 41


def test_crlf_line_ends() -> None:
    frame = parse(b"a,b\r\n1,2\r\n3,4\r\n")
    assert frame.to_dict(as_series=False) == {"a": [1, 3], "b": [2, 4]}


def test_header_only_file_is_empty_frame_with_columns() -> None:
    frame = parse(b"a,b\n")
    assert frame.columns == ["a", "b"]
    assert frame.height == 0


def test_parse_timestamps_with_python_format() -> None:
    p = parser(parse_timestamps=[{"field_name": "when", "format": "%d/%m/%Y %H:%M:%S.%f"}])
    frame = parse(b"when,v\n02/01/2020 10:00:00.5,1\n", p)
    assert frame["when"].to_list() == [datetime(2020, 1, 2, 10, 0, 0, 500000)]


def test_parse_timestamps_mismatch_is_an_error() -> None:
    p = parser(parse_timestamps=[{"field_name": "when", "format": "%Y-%m-%d"}])
    with pytest.raises(ParseError, match="'02/01/2020' does not match"):
        parse(b"when\n02/01/2020\n", p)


def test_spreadsheet_legacy_options() -> None:
    p = parser("spreadsheet", options={
        "localtz": "Asia/Ho_Chi_Minh", "counter": False,
        "parse": {"separator": ";", "header": 0, "dayfirst": True, "parse_dates": ["day"],
                  "parse_timestamps": [{"field_name": "timestamp", "format": "%Y-%m-%d %H:%M:%S.%f"}],
                  "bad_lines_action": "warn"}})
    assert isinstance(p, SpreadsheetParser)
    frame = parse(b"timestamp;day;v\n2020-01-01 07:00:00.000000;03/02/2020 00:00:00;1\n", p)
    assert frame["timestamp"].to_list() == [datetime(2020, 1, 1, 0, 0, tzinfo=UTC)]
    assert frame["day"].to_list() == [datetime(2020, 2, 2, 17, 0, tzinfo=UTC)]


def test_parser_types_are_registered() -> None:
    assert isinstance(parser(), CsvParser)


@parser_harness
class CsvHarness(ParserHarness):
    """Comma-separated text with a header; bad input has a line with too few fields."""

    parser_type = "csv"

    def good(self, seqs: range) -> bytes:
        return ("seq,value\n" + "".join(f"{s},{s / 2}\n" for s in seqs)).encode()

    def bad(self) -> bytes:
        return b"seq,value\n1,0.5\n2\n"


@parser_harness
class SpreadsheetHarness(CsvHarness):
    """The legacy spreadsheet parser on the same files."""

    parser_type = "spreadsheet"


def test_an_unbalanced_quote_costs_its_line_not_the_rest_of_the_file() -> None:
    lines = [f"{i},{i * 10},ok" for i in range(1, 11)]
    lines.insert(3, '99,"broken quote,x')  # line 5 of the file (the header is line 1)
    warnings: list[str] = []
    frame = parser(bad_lines_action="warn").parse(
        b"", ("a,b,c\n" + "\n".join(lines) + "\n").encode(), source="f.csv", first_line=1,
        warn=warnings.append)
    assert frame["a"].to_list() == list(range(1, 11))  # the 10 good rows
    assert warnings == ["f.csv, line 5: expected 3 fields, found 2; line dropped"]


def test_one_cp1252_line_leaves_the_utf8_lines_alone() -> None:
    data = "name,t\ncafé,1\n".encode() + "Température,2\n".encode("cp1252") + "naïve,3\n".encode()
    warnings: list[str] = []
    frame = parser().parse(b"", data, source="f.csv", first_line=1, warn=warnings.append)
    assert frame["name"].to_list() == ["café", "Température", "naïve"]
    assert warnings == ["f.csv, line 3: not utf-8, read as cp1252"]


def test_a_binary_file_is_refused_not_delivered_as_garbage() -> None:
    data = bytes(range(256)) * 40  # NUL and control bytes, a few newlines
    with pytest.raises(ParseError, match=r"^f\.bin, line 1: binary data, not CSV text"):
        parser().parse(b"", data, source="f.bin", first_line=1)
    png = b"\x89PNG\r\n\x1a\n" + bytes(1000)
    with pytest.raises(ParseError, match="binary data"):
        parser().parse(b"", png, source="f.png", first_line=1)


def test_a_semicolon_file_is_read_with_a_warning_unless_a_separator_is_set() -> None:
    data = b"ts;temp;zone\n1;20.5;A\n2;21.0;B\n"
    warnings: list[str] = []
    frame = parser().parse(b"", data, source="f.csv", first_line=1, warn=warnings.append)
    assert frame.columns == ["ts", "temp", "zone"] and frame["temp"].to_list() == [20.5, 21.0]
    assert warnings == [("f.csv: no ',' in the first line but 2 ';': read with separator ';' "
                         "(set `separator` to choose)")]
    explicit = parser(separator=",").parse(b"", data, source="f.csv", first_line=1, warn=warnings.append)
    assert explicit.columns == ["ts;temp;zone"] and len(warnings) == 1


def test_column_types_hold_for_values_past_the_first_hundred_rows() -> None:
    rows = "".join(f"{i},2024-01-01 00:{i % 60:02d}:00,2024-01-02,10:00:00\n" for i in range(150))
    late = "1.5,not a time,2024-01-03,11:30:00\n"
    frame = parse(b"count,when,day,at\n" + rows.encode() + late.encode())
    assert frame.schema == pl.Schema({"count": pl.Float64, "when": pl.String, "day": pl.Date, "at": pl.Time})
    assert frame.row(-1) == (1.5, "not a time", datetime(2024, 1, 3).date(), datetime(2024, 1, 1, 11, 30).time())


@pytest.mark.parametrize(("values", "dtype"), [
    (["2024-01-01T00:00:00Z", "2024-01-02T01:02:03+02:00"], pl.Datetime("us", "UTC")),
    (["2024-01-01 00:00:00", "2024-01-02 01:02:03.5"], pl.Datetime("us")),
    (["31/12/2024", "01/02/2024"], pl.Date),
    (["2024-01-01", "2024-01-02 01:02:03"], pl.String),  # a date, then a datetime: text
    (["2024-01-01T00:00:00Z", "2024-01-02T01:02:03"], pl.String),  # zoned, then naive: text
    (["", "2024-01-01 00:00:00"], pl.Datetime("us")),  # an empty first value
])
def test_dates_and_times_are_inferred_as_polars_infers_them(values: list[str], dtype: pl.DataType) -> None:
    text = ("v,n\n" + "".join(f"{v},1\n" for v in values)).encode()
    polars_own = pl.read_csv(text, try_parse_dates=True, infer_schema_length=10_000).schema["v"]
    assert parse(text).schema["v"] == dtype == polars_own


@pytest.mark.parametrize("values", [
    ["2024-01-01 00:00:00", "2024-01-02 01:02:03"],  # each in a format given to polars ...
    ["2024-01-01T00:00:00", "2024-01-02T01:02:03"],
    ["2024-01-01 00:00:00.5", "2024-01-02 01:02:03"],
    ["2024-01-01T00:00:00.123456", "2024-01-02T01:02:03.123456789"],
    ["2024-01-01 00:00", "2024-01-02 01:02"],
    ["2024-01-01T00:00", "", "2024-01-02T01:02"],
    ["2024-01-01 00:00", "2024-01-02 01:02:03"],  # ... or not, when a later value takes another
    ["2024-01-01 00:00:00", "2024-01-02 01:02:03.5"],
    ["2024-01-01 00:00:00", "2024-01-02"],
    ["2024-01-01T00:00:00Z", "2024-01-02T01:02:03+02:00"],  # zones: polars infers the format
])
def test_datetimes_read_in_a_known_format_are_those_polars_infers(values: list[str]) -> None:
    text = ("v,n\n" + "".join(f"{v},1\n" for v in values)).encode()
    inferred = pl.Series([v or None for v in values]).str.to_datetime(strict=True, time_unit="us")
    assert parse(text)["v"].to_list() == inferred.to_list()


@pytest.mark.parametrize("header", [0, None])
def test_bad_lines_of_a_big_text_are_found_by_number(header: int | None) -> None:
    good = "".join(f"{i},{i * 2},x\r\n" for i in range(3000))  # over 16 KiB: counted by polars
    data = ("a,b,c\r\n" if header == 0 else "") + good + "7,8\r\n" + "9,10,y,z\r\n" + good
    with pytest.raises(ParseError) as info:
        parse(data.encode(), parser(header=header))
    first_bad = 3002 if header == 0 else 3001
    assert (info.value.line, str(info.value)) == (
        first_bad, f"f.csv, line {first_bad}: expected 3 fields, found 2 (2 bad lines in all)")
    assert parse(data.encode(), parser(header=header, bad_lines_action="skip")).height == 6000


def test_a_file_wider_than_max_columns_is_refused_before_it_is_read() -> None:
    """1,000,000 columns took 2.5 GB and three minutes: now a ParseError (the stream's marker)
    at once, naming the cap; a file within it is read."""
    import time

    wide = (",".join(f"c{n}" for n in range(1_000_000)) + "\n" + ",".join("1" * 1_000_000) + "\n").encode()
    started = time.monotonic()
    with pytest.raises(ParseError) as refused:
        parse(wide)
    assert time.monotonic() - started < 5
    assert str(refused.value) == ("f.csv, line 1: 1,000,000 columns, over max_columns (10,000): refused (a guard "
                                  "against files that would take gigabytes)")
    frame = parse(b"a,b,c\n1,2,3\n", parser(max_columns=3))
    assert frame.columns == ["a", "b", "c"]
    with pytest.raises(ParseError, match="line 1: 3 columns, over max_columns \\(2\\)"):
        parse(b"1,2,3\n", parser(header=None, max_columns=2))
