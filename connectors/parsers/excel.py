"""The ``excel`` parser: one sheet of an Excel workbook (xlsx, xlsm, xlsb, xls, ods) per
file, read by polars with the calamine engine (fastexcel).

Keys: ``sheet`` (a sheet name, or its zero-based index; the first sheet by default),
``header_row`` (zero-based row of the column names, after ``skip_rows``; ``null`` for
none: columns ``column_1``, ...), ``skip_rows`` (rows above the table),
``max_inflated_bytes`` (a zip bomb guard: the most bytes an xlsx, xlsm, xlsb or ods, which are
zip archives, may declare its members inflate to; checked before anything is inflated),
``max_cells`` (the most cells the sheet may span by the ``<dimension>`` an xlsx or xlsm
declares, checked from the head of the sheet's XML before the sheet is read).
A file that is not a workbook, lacks the sheet or is over the cap is refused with the file
name: the file receiver marks the stream and reads it again once it changes.

Implements the ``excel`` parser of issue 11 ("Parsers").
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar

import polars as pl

from dataflows.sdk import (
    NonNegativeInt,
    ParseError,
    ParserConfig,
    SourceFile,
    describe,
    parsers,
)


@parsers.register
class ExcelParser(ParserConfig, tag="excel", kw_only=True):
    """One sheet of an Excel workbook per file."""

    title: ClassVar[str] = "Excel"
    example: ClassVar[dict[str, Any]] = {"parser_name": "excel", "parser_type": "excel",
                                         "sheet": "Readings", "skip_rows": 2}

    sheet: Annotated[str | NonNegativeInt, describe("Sheet name, or zero-based index.")] = 0
    header_row: Annotated[NonNegativeInt | None, describe(
        "Zero-based row of the column names below skip_rows; null: no header.")] = 0
    skip_rows: Annotated[NonNegativeInt, describe("Rows above the table.")] = 0
    max_inflated_bytes: Annotated[int, describe(
        "Most bytes a zipped workbook (xlsx, xlsm, xlsb, ods) may inflate to, by the sizes its members "
        "declare; a larger one is refused (a zip bomb guard).", ge=1024 * 1024)] = 512 * 1024 * 1024
    max_cells: Annotated[int, describe(
        "Most cells the sheet may span (rows times columns, by the dimension an xlsx or xlsm "
        "declares); a larger one is refused before it is read.", ge=1)] = 10_000_000

    def whole_file_limit(self) -> tuple[int, str]:
        """A workbook larger than ``max_inflated_bytes`` is over it however it is packed."""
        return self.max_inflated_bytes, "max_inflated_bytes"

    def parse(self, prefix: bytes, body: bytes, *, source: str, first_line: int,
              warn: Callable[[str], None] | None = None,
              text_columns: Iterable[str] = (), file: SourceFile | None = None) -> pl.DataFrame:
        """Read the sheet of a whole workbook.

        :raises ParseError: not a workbook, no such sheet, or over ``max_inflated_bytes`` or
            ``max_cells``.
        """
        self._check_inflated_size(body, source)
        where = {"sheet_name": self.sheet} if isinstance(self.sheet, str) else {"sheet_id": self.sheet + 1}
        skip = self.skip_rows + (self.header_row or 0)
        try:
            frame = pl.read_excel(io.BytesIO(body), engine="calamine", has_header=self.header_row is not None,
                                  read_options={"header_row": None if self.header_row is None else skip,
                                                **({"skip_rows": skip} if self.header_row is None else {})},
                                  raise_if_empty=False, **where)  # type: ignore[arg-type]
        except Exception as exc:  # fastexcel raises its own error types; name the file either way
            raise ParseError(source, None, f"cannot read the Excel sheet {self.sheet!r}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        assert isinstance(frame, pl.DataFrame)
        if self.header_row is None:
            frame = frame.rename({c: f"column_{i}" for i, c in enumerate(frame.columns, 1)})
        return frame.with_columns(pl.col(c).cast(pl.String) for c in text_columns if c in frame.columns)

    def _check_inflated_size(self, body: bytes, source: str) -> None:
        """Refuse a zipped workbook whose members declare more than ``max_inflated_bytes``,
        before anything is inflated.

        :raises ParseError: over the cap.
        """
        if not body.startswith(b"PK\x03\x04"):
            return  # an xls is no zip archive
        try:
            members = zipfile.ZipFile(io.BytesIO(body)).infolist()
        except zipfile.BadZipFile:
            return  # calamine names what is wrong with it
        declared = sum(member.file_size for member in members)
        if declared > self.max_inflated_bytes:
            raise ParseError(source, None, f"the workbook inflates to {declared:,} bytes, over max_inflated_bytes "
                                           f"({self.max_inflated_bytes:,}): refused (a zip bomb guard)")
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            spans = self._sheet_span(archive)
        if spans is not None and spans[0] > self.max_cells:
            raise ParseError(source, None, f"sheet {self.sheet!r} spans {spans[1]}, {spans[0]:,} cells, over "
                                           f"max_cells ({self.max_cells:,}): refused before it is read")

    def _sheet_span(self, archive: zipfile.ZipFile) -> tuple[int, str] | None:
        """The cells the selected sheet of an xlsx or xlsm spans by its ``<dimension>``
        (read from the head of its XML alone) and that range; None where the workbook does
        not say (ods, xlsb, a sheet without a dimension, no such sheet: calamine names it)."""
        from xml.etree import ElementTree

        names = set(archive.namelist())
        if not {"xl/workbook.xml", "xl/_rels/workbook.xml.rels"} <= names:
            return None
        try:
            book = ElementTree.fromstring(archive.read("xl/workbook.xml"))
            rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
        except ElementTree.ParseError:
            return None
        sheets = [(e.get("name"), next((v for k, v in e.attrib.items() if k.endswith("}id")), None))
                  for e in book.iter() if e.tag.endswith("}sheet")]
        targets = {e.get("Id"): e.get("Target", "") for e in rels.iter() if e.tag.endswith("}Relationship")}
        chosen = [rid for name, rid in sheets if name == self.sheet] if isinstance(self.sheet, str) \
            else [rid for _, rid in sheets[self.sheet:self.sheet + 1]]
        if not chosen or chosen[0] not in targets:
            return None
        target = targets[chosen[0]].lstrip("/")
        member = target if target.startswith("xl/") else f"xl/{target}"
        if member not in names:
            return None
        with archive.open(member) as xml:
            head = xml.read(64 * 1024).decode("utf-8", "replace")
        found = re.search(r'<(?:\w+:)?dimension\s+ref="([A-Z]+)(\d+)(?::([A-Z]+)(\d+))?"', head)
        if found is None:
            return None
        first_col, first_row, last_col, last_row = found.groups()
        columns = _column_number(last_col or first_col) - _column_number(first_col) + 1
        rows = int(last_row or first_row) - int(first_row) + 1
        return columns * rows, found.group(0).split('"')[1]


def _column_number(letters: str) -> int:
    """``A`` is 1, ``Z`` 26, ``AA`` 27."""
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - ord("A") + 1
    return number
