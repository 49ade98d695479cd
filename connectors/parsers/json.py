"""The ``json`` and ``jsonl`` parsers: records from JSON documents and JSON lines.

- ``json``: one document per file. The records are the document itself when it is an
  array of objects, a single object otherwise; ``record_path`` (a list of keys, e.g.
  ``["data", "items"]``) picks the array inside a nested document first. A file over
  ``max_document_bytes`` (64 MiB) is refused before it is fetched.
- ``jsonl``: one object per line. Files are read in chunks cut at line ends, so an
  appended file is read on from where it was left, as CSV files are.

Nested objects become struct columns and arrays list columns; transmits write them back
as JSON. Bad input is refused with the file name and the line and column (``json``) or
the line (``jsonl``) of the first problem: the file receiver marks the stream and skips
the file until it changes.

Implements the ``json``/``jsonl`` parsers of issue 11 ("Parsers").
"""

from __future__ import annotations

import io
import json as pyjson
from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar

import msgspec
import polars as pl

from dataflows.sdk import (
    ParseError,
    ParserConfig,
    SourceFile,
    describe,
    parsers,
)


def _frame(records: list[Any], source: str, where: str) -> pl.DataFrame:
    """One row per record; every record must be a JSON object.

    :raises ParseError: a record is not an object.
    """
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ParseError(source, None, f"{where}record {index + 1} is a JSON "
                             f"{type(record).__name__}, not an object")
    try:
        return pl.from_dicts(records, infer_schema_length=None) if records else pl.DataFrame()
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise ParseError(source, None, f"{where}records do not form a table: {exc}") from exc


@parsers.register
class JsonParser(ParserConfig, tag="json", kw_only=True):
    """A JSON document per file: an array of records, or one record."""

    title: ClassVar[str] = "JSON"
    example: ClassVar[dict[str, Any]] = {
        "parser_name": "json", "parser_type": "json", "record_path": ["data", "readings"]}

    record_path: Annotated[list[str], describe(
        "Keys leading to the array of records in a nested document; [] for the document "
        "itself.")] = msgspec.field(default_factory=list)
    max_document_bytes: Annotated[int, describe(
        "Most bytes a JSON document may have; a larger file is refused before it is fetched "
        "(parsing takes several times its size in memory).", ge=1024)] = 64 * 1024 * 1024

    def whole_file_limit(self) -> tuple[int, str]:
        """Documents are parsed whole: ``max_document_bytes``."""
        return self.max_document_bytes, "max_document_bytes"

    def parse(self, prefix: bytes, body: bytes, *, source: str, first_line: int,
              warn: Callable[[str], None] | None = None,
              text_columns: Iterable[str] = (), file: SourceFile | None = None) -> pl.DataFrame:
        """Parse a whole JSON document (the file receiver hands it over whole).

        :raises ParseError: not JSON (with line and column), a missing ``record_path``
            key, or records that are not objects.
        """
        try:
            document = pyjson.loads(body.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise ParseError(source, body[: exc.start].count(b"\n") + 1,
                             f"not UTF-8 at byte {exc.start}") from exc
        except pyjson.JSONDecodeError as exc:
            raise ParseError(source, exc.lineno, f"not JSON at column {exc.colno}: {exc.msg}") from exc
        for depth, key in enumerate(self.record_path):
            if not isinstance(document, dict) or key not in document:
                path = "/".join(self.record_path[: depth + 1])
                raise ParseError(source, None, f"record_path {path!r} is not in the document")
            document = document[key]
        records = document if isinstance(document, list) else [document]
        where = f"at {'/'.join(self.record_path)}: " if self.record_path else ""
        frame = _frame(records, source, where)
        return frame.with_columns(pl.col(c).cast(pl.String) for c in text_columns if c in frame.columns)


@parsers.register
class JsonLinesParser(ParserConfig, tag="jsonl", kw_only=True):
    """JSON lines: one record (an object) per line."""

    title: ClassVar[str] = "JSON lines"
    example: ClassVar[dict[str, Any]] = {"parser_name": "jsonl", "parser_type": "jsonl"}

    def chunk_header_lines(self) -> int:
        """Files may be cut at any line end; no header."""
        return 0

    def parse(self, prefix: bytes, body: bytes, *, source: str, first_line: int,
              warn: Callable[[str], None] | None = None,
              text_columns: Iterable[str] = (), file: SourceFile | None = None) -> pl.DataFrame:
        """Parse complete lines starting at file line ``first_line``; blank lines are skipped.

        :raises ParseError: a line that is not a JSON object, naming it.
        """
        try:
            frame = pl.read_ndjson(io.BytesIO(body), infer_schema_length=None) if body.strip() \
                else pl.DataFrame()
        except pl.exceptions.PolarsError:
            frame = None
        if frame is None or frame.columns == []:  # find the line to name, then refuse the file
            records = []
            for number, line in enumerate(body.split(b"\n"), first_line):
                if not line.strip():
                    continue
                try:
                    record = msgspec.json.decode(line)
                except msgspec.DecodeError as exc:
                    raise ParseError(source, number, f"not JSON: {exc}") from exc
                if not isinstance(record, dict):
                    raise ParseError(source, number, f"a JSON {type(record).__name__}, not an object")
                records.append(record)
            frame = _frame(records, source, "")
        return frame.with_columns(pl.col(c).cast(pl.String) for c in text_columns if c in frame.columns)
