"""The excel parser on workbooks written by xlsxwriter (through polars), and on broken ones."""

from __future__ import annotations

import io
from typing import Any

import msgspec
import polars as pl
import pytest
import xlsxwriter

from dataflows import registry
from dataflows.sdk import ParseError
from tests.connectors.conformance import ParserHarness, parser_harness


def parser(**keys: Any) -> Any:
    return msgspec.convert({"parser_name": "p", "parser_type": "excel", **keys}, registry.parsers.union())


def workbook(sheets: dict[str, list[list[Any]]]) -> bytes:
    """A workbook written by xlsxwriter: each sheet's rows from A1."""
    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    for name, rows in sheets.items():
        sheet = book.add_worksheet(name)
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                if value is not None:
                    sheet.write(r, c, value)
    book.close()
    return buffer.getvalue()


BOOK = workbook({"Summary": [["nothing here"]],
                 "Readings": [["Line 4 export", None], [None, None], ["seq", "temp"], [1, 20.5], [2, 21.0]]})


def test_a_sheet_by_name_or_index_below_skipped_rows() -> None:
    by_name = parser(sheet="Readings", skip_rows=2).parse(b"", BOOK, source="w.xlsx", first_line=1)
    assert by_name.to_dict(as_series=False) == {"seq": [1, 2], "temp": [20.5, 21.0]}
    by_index = parser(sheet=1, skip_rows=2).parse(b"", BOOK, source="w.xlsx", first_line=1)
    assert by_index.equals(by_name)
    headless = parser(sheet="Readings", skip_rows=3, header_row=None).parse(b"", BOOK, source="w.xlsx",
                                                                             first_line=1)
    assert headless.columns == ["column_1", "column_2"] and headless.height == 2


@pytest.mark.parametrize(("keys", "data"), [({}, b"PK\x03\x04 not really a zip"),
                                            ({"sheet": "Nope"}, BOOK)])
def test_a_broken_workbook_or_a_missing_sheet_is_refused_naming_the_file(keys: dict[str, Any],
                                                                         data: bytes) -> None:
    with pytest.raises(ParseError, match=r"^w\.xlsx: cannot read the Excel sheet"):
        parser(**keys).parse(b"", data, source="w.xlsx", first_line=1)


@parser_harness
class ExcelHarness(ParserHarness):
    """A workbook of one sheet; bad input is a workbook cut short."""

    parser_type = "excel"

    def good(self, seqs: range) -> bytes:
        return workbook({"Sheet1": [["seq", "value"], *([s, s / 2] for s in seqs)]})

    def bad(self) -> bytes:
        return self.good(range(5))[:300]


def test_frames_from_excel_keep_numbers_numbers() -> None:
    frame = parser().parse(b"", ExcelHarness().good(range(3)), source="w.xlsx", first_line=1)
    assert frame.schema == {"seq": pl.Int64, "value": pl.Float64}


def test_a_workbook_that_would_inflate_past_the_cap_is_refused_before_inflating() -> None:
    """A zip bomb: a small xlsx whose members declare far more than ``max_inflated_bytes``."""
    import time
    import zipfile

    buffer = io.BytesIO(BOOK)
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as book:
        book.writestr("xl/media/padding.bin", b"\0" * (48 * 1024 * 1024))  # 48 MiB in about 50 KiB
    bomb = buffer.getvalue()
    assert len(bomb) < 200_000
    started = time.monotonic()
    with pytest.raises(ParseError) as refused:
        parser(sheet="Readings", skip_rows=2, max_inflated_bytes=16 * 1024 * 1024).parse(
            b"", bomb, source="bomb.xlsx", first_line=1)
    assert time.monotonic() - started < 1.0  # nothing was inflated
    assert str(refused.value).startswith("bomb.xlsx: the workbook inflates to 50,3")
    assert str(refused.value).endswith("over max_inflated_bytes (16,777,216): refused (a zip bomb guard)")
    frame = parser(sheet="Readings", skip_rows=2).parse(b"", bomb, source="bomb.xlsx", first_line=1)
    assert frame["seq"].to_list() == [1, 2]  # under the default cap it is read


def test_a_sheet_spanning_more_than_max_cells_is_refused_before_it_is_read() -> None:
    """Two cells at opposite corners: a tiny file whose sheet spans all of Excel's grid."""
    import time

    sparse = io.BytesIO()
    book = xlsxwriter.Workbook(sparse, {"in_memory": True})
    sheet = book.add_worksheet("Readings")
    sheet.write(0, 0, "seq")
    sheet.write(1_048_575, 16_383, 1)
    book.close()
    started = time.monotonic()
    with pytest.raises(ParseError) as refused:
        parser(sheet="Readings").parse(b"", sparse.getvalue(), source="grid.xlsx", first_line=1)
    assert time.monotonic() - started < 1.0
    assert str(refused.value) == ("grid.xlsx: sheet 'Readings' spans A1:XFD1048576, 17,179,869,184 cells, over "
                                  "max_cells (10,000,000): refused before it is read")
    frame = parser(sheet=1, skip_rows=2, max_cells=10).parse(b"", BOOK, source="book.xlsx", first_line=1)
    assert frame["seq"].to_list() == [1, 2]  # A1:B5, 10 cells: read
