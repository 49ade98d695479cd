"""The ``csv`` parser and the legacy ``spreadsheet`` parser (CSV files only), on polars.

Both read delimited text into one row per record:

- ``separator`` (default ``,``), ``file_encoding`` (utf-8 by default, with or without a
  BOM; any Python codec name is decoded; unset and not utf-8, the file is read as
  cp1252, the usual Windows export, and a warning is logged);
- ``header``: zero-based line of the column names (default 0; lines above it are
  skipped); ``null`` for files without one (columns ``column_1``, ``column_2``, ...);
- ``parse_timestamps: [{field_name, format}]`` parses those columns with a strftime
  format; other ISO-looking columns are recognised as datetimes automatically;
- ``bad_lines_action``: a line with more or fewer fields than the header is ``error``
  (the file is rejected, naming file and line), ``warn`` (logged with file and line,
  then dropped) or ``skip`` (dropped silently).

The legacy ``spreadsheet`` parser takes the same settings under ``options.parse``, plus
``parse_dates`` (columns parsed by guessing the format; ``dayfirst`` for day-first
dates) and ``options.localtz`` (the zone of naive timestamps, converted to UTC by the
rule of :mod:`dataflows.timestamps`).

Parsers are pure: bytes in, frame out. The file receiver hands them the header lines
(``prefix``) and a chunk of complete lines (``body``), so an appended file is parsed
from where it was left. Implements the parsers of ``shared/specs/factorytx-digest.md``.
"""

from __future__ import annotations

import csv as pycsv
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import polars as pl

from dataflows.registry import parsers
from dataflows.sdk import (
    JsonPath,
    NonNegativeInt,
    ParseError,
    ParserConfig,
    Violation,
    describe,
    error,
    timezone_violations,
)
from dataflows.timestamps import chrono_format, localize

__all__ = ["CsvParser", "CsvSettings", "ParseError", "SpreadsheetParser", "parse_csv"]

BadLinesAction = Literal["error", "warn", "skip"]
DAYFIRST_FORMATS = ("%d/%m/%Y %H:%M:%S%.f", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d-%m-%Y %H:%M:%S",
                    "%d.%m.%Y %H:%M:%S", "%d/%m/%Y")
_log = logging.getLogger("parser.csv")


class TimestampField(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A column parsed with an explicit format."""

    field_name: Annotated[str, describe("Column to parse.")]
    format: Annotated[str, describe("strftime format, e.g. '%Y-%m-%d %H:%M:%S.%f'.")]


@dataclass(frozen=True, slots=True)
class CsvSettings:
    """Everything :func:`parse_csv` needs, whichever parser config it came from."""

    separator: str = ","
    file_encoding: str | None = None
    header: int | None = 0
    parse_timestamps: tuple[TimestampField, ...] = ()
    parse_dates: tuple[str, ...] = ()
    dayfirst: bool = False
    localtz: str | None = None
    bad_lines_action: BadLinesAction = "error"

    @property
    def header_lines(self) -> int:
        """Lines at the top of a file that every chunk is parsed with (header and above)."""
        return 0 if self.header is None else self.header + 1

    @property
    def encoding(self) -> str:
        """The codec the file is decoded with."""
        return self.file_encoding or "utf-8-sig"

    @property
    def splits_on_newline_byte(self) -> bool:
        """Whether the encoded file can be cut into lines at ``b"\\n"`` (ASCII-compatible)."""
        try:  # encode past any byte-order mark, then see how a newline comes out
            return "x\n".encode(self.encoding)[len("x".encode(self.encoding)):] == b"\n"
        except LookupError:
            return False


def _decode(data: bytes, settings: CsvSettings, source: str, first_line: int) -> str:
    try:
        return data.decode(settings.encoding)
    except UnicodeDecodeError as exc:
        line = first_line + data[: exc.start].count(b"\n")
        if settings.file_encoding is None:
            _log.warning("%s, line %d: not utf-8, read as cp1252", source, line)
            return data.decode("cp1252", errors="replace")
        raise ParseError(source, line, f"cannot decode as {settings.file_encoding}: {exc.reason}") from exc


def _records(body: str, separator: str, source: str, first_line: int) -> Iterator[tuple[int, list[str]]]:
    """``(1-based line in body, fields)`` of every record of ``body`` (quoted fields may span
    lines: the csv module knows where records end).

    :raises ParseError: the csv module refuses the text (a field over its size limit).
    """
    reader = pycsv.reader(io.StringIO(body, newline=""), delimiter=separator)
    start = 1
    try:
        for record in reader:
            yield start, record
            start = reader.line_num + 1
    except pycsv.Error as exc:
        raise ParseError(source, first_line + start - 1, f"not readable as CSV: {exc}") from exc


def _field_counts(body: str, separator: str, source: str,
                  first_line: int) -> tuple[list[int], list[int]]:
    """Field count of every non-blank record of ``body`` and its 1-based line in ``body``."""
    if '"' not in body:
        lines = pl.Series(body.split("\n")).str.strip_suffix("\r")
        frame = pl.DataFrame({"line": lines}).with_row_index("n", offset=1).filter(pl.col("line") != "")
        counts = frame["line"].str.count_matches(separator, literal=True) + 1
        return counts.to_list(), frame["n"].to_list()
    counts, numbers = [], []
    for start, record in _records(body, separator, source, first_line):
        if record:
            counts.append(len(record))
            numbers.append(start)
    return counts, numbers


def _drop_lines(body: str, separator: str, bad: set[int], source: str, first_line: int) -> str:
    if '"' not in body:
        return "\n".join(line for n, line in enumerate(body.split("\n"), 1) if n not in bad)
    out = io.StringIO()
    writer = pycsv.writer(out, delimiter=separator, lineterminator="\n")
    for start, record in _records(body, separator, source, first_line):
        if record and start not in bad:
            writer.writerow(record)
    return out.getvalue()


def parse_csv(prefix: bytes, body: bytes, settings: CsvSettings, *, source: str,
              first_line: int) -> pl.DataFrame:
    """Parse ``body`` (complete lines starting at file line ``first_line``) under the header in ``prefix``.

    With an empty ``prefix`` the body starts the file and holds the header lines itself.

    :returns: one row per record; columns named by the header.
    :raises ParseError: undecodable bytes, or a bad line with ``bad_lines_action: error``.
    """
    text = _decode(body, settings, source, first_line)
    if prefix:
        head = _decode(prefix, settings, source, 1).splitlines()
    else:  # the chunk starts the file: its first lines are the header lines
        parts = text.split("\n", settings.header_lines)
        head, text = parts[: settings.header_lines], (parts[settings.header_lines]
                                                     if len(parts) > settings.header_lines else "")
        head = [line.removesuffix("\r") for line in head]
        first_line += settings.header_lines
    header_line = head[settings.header] if settings.header is not None and len(head) > settings.header else None
    if settings.header is not None and header_line is None:
        raise ParseError(source, settings.header + 1, "the header line is missing")
    columns = None
    if header_line is not None:
        assert settings.header is not None
        records = _records(header_line, settings.separator, source, settings.header + 1)
        columns = next((fields for _, fields in records), [])

    counts, numbers = _field_counts(text, settings.separator, source, first_line)
    expected = len(columns) if columns is not None else (counts[0] if counts else 0)
    bad = [(n, c) for n, c in zip(numbers, counts, strict=True) if c != expected]
    if bad:
        line, count = first_line + bad[0][0] - 1, bad[0][1]
        if settings.bad_lines_action == "error":
            raise ParseError(source, line, f"expected {expected} fields, found {count}"
                             + (f" ({len(bad)} bad lines in all)" if len(bad) > 1 else ""))
        if settings.bad_lines_action == "warn":
            for n, c in bad[:10]:
                _log.warning("%s, line %d: expected %d fields, found %d; line dropped",
                             source, first_line + n - 1, expected, c)
            if len(bad) > 10:
                _log.warning("%s: %d more bad lines dropped", source, len(bad) - 10)
        text = _drop_lines(text, settings.separator, {n for n, _ in bad}, source, first_line)

    explicit = {t.field_name for t in settings.parse_timestamps} | set(settings.parse_dates)
    payload = ((header_line + "\n") if header_line is not None else "") + text
    try:
        frame = pl.read_csv(
            io.BytesIO(payload.encode("utf-8")), separator=settings.separator,
            has_header=header_line is not None, try_parse_dates=True, infer_schema_length=10_000,
            schema_overrides={c: pl.String for c in explicit if columns and c in columns} or None,
            raise_if_empty=False)
    except pl.exceptions.PolarsError as exc:
        raise ParseError(source, None, str(exc).splitlines()[0]) from exc
    if frame.width == 0 and columns:
        frame = pl.DataFrame(schema={c: pl.String for c in columns})
    if columns is None:
        frame = frame.rename({c: f"column_{i}" for i, c in enumerate(frame.columns, 1)})
    return _parse_timestamp_columns(frame, settings, source)


def _parse_timestamp_columns(frame: pl.DataFrame, settings: CsvSettings, source: str) -> pl.DataFrame:
    parsed: list[str] = []
    for spec in settings.parse_timestamps:
        if spec.field_name in frame.columns:
            frame = _strict(frame, spec.field_name, [chrono_format(spec.format)], source)
            parsed.append(spec.field_name)
    for name in settings.parse_dates:
        if name in frame.columns:
            frame = _strict(frame, name, list(DAYFIRST_FORMATS) if settings.dayfirst else [None], source)
            parsed.append(name)
    if settings.localtz:
        naive = [c for c, t in frame.schema.items()
                 if isinstance(t, pl.Datetime) and t.time_zone is None]
        frame = frame.with_columns(localize(frame[c], settings.localtz).alias(c) for c in naive)
    return frame


def _strict(frame: pl.DataFrame, name: str, formats: list[str | None], source: str) -> pl.DataFrame:
    column = frame[name]
    if column.dtype != pl.String:
        return frame
    for fmt in formats:
        converted = column.str.to_datetime(format=fmt, strict=False, time_unit="us")
        failed = converted.is_null() & column.is_not_null()
        if not failed.any():
            return frame.with_columns(converted.alias(name))
    example = column.filter(failed).head(1).to_list()
    raise ParseError(source, None, f"column {name!r}: {example[0]!r} does not match "
                                   f"{formats[-1] or 'a recognised timestamp format'}")


class _CsvLike:
    """The parser contract (:class:`~dataflows.sdk.ParserConfig`) for CSV-family parsers."""

    def settings(self) -> CsvSettings:
        raise NotImplementedError

    def chunk_header_lines(self) -> int | None:
        """The header lines, or None for encodings that cannot be cut at ``b"\n"`` (UTF-16)."""
        settings = self.settings()
        return settings.header_lines if settings.splits_on_newline_byte else None

    def parse(self, prefix: bytes, body: bytes, *, source: str, first_line: int) -> pl.DataFrame:
        """Parse a chunk of a file; see :func:`parse_csv`."""
        return parse_csv(prefix, body, self.settings(), source=source, first_line=first_line)


@parsers.register
class CsvParser(_CsvLike, ParserConfig, tag="csv", kw_only=True):
    """Delimited text, one record per line."""

    title: ClassVar[str] = "CSV"
    example: ClassVar[dict[str, Any]] = {
        "parser_name": "csv", "parser_type": "csv", "separator": ";", "bad_lines_action": "warn",
        "parse_timestamps": [{"field_name": "timestamp", "format": "%d.%m.%Y %H:%M:%S"}]}

    file_format: Annotated[str, describe("Only 'csv'.", choices=["csv"])] = "csv"
    file_encoding: Annotated[str | None, describe("Python codec name; utf-8 by default.")] = None
    separator: Annotated[str, describe("Field separator.", min_length=1, max_length=1)] = ","
    header: Annotated[NonNegativeInt | None, describe("Zero-based line of the column names; null: none.")] = 0
    parse_timestamps: Annotated[list[TimestampField], describe("Columns with explicit formats.")] = (
        msgspec.field(default_factory=list))
    bad_lines_action: Annotated[BadLinesAction, describe("error, warn or skip.")] = "error"

    def settings(self) -> CsvSettings:
        return CsvSettings(self.separator, self.file_encoding, self.header, tuple(self.parse_timestamps),
                           bad_lines_action=self.bad_lines_action)

    def violations(self, path: JsonPath) -> list[Violation]:
        out: list[Violation] = []
        if self.file_encoding is not None and not self.settings().splits_on_newline_byte:
            try:
                "".encode(self.file_encoding)
            except LookupError:
                out.append(error(f"unknown file_encoding {self.file_encoding!r}", [*path, "file_encoding"]))
        return out


class SpreadsheetParse(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``options.parse`` of the legacy spreadsheet parser."""

    separator: Annotated[str, describe("Field separator.", min_length=1, max_length=1)] = ","
    header: Annotated[NonNegativeInt | None, describe("Zero-based line of the column names.")] = 0
    dayfirst: Annotated[bool, describe("Dates in parse_dates are day-first.")] = False
    parse_dates: Annotated[list[str], describe("Columns parsed as dates, format guessed.")] = (
        msgspec.field(default_factory=list))
    parse_timestamps: Annotated[list[TimestampField], describe("Columns with explicit formats.")] = (
        msgspec.field(default_factory=list))
    bad_lines_action: Annotated[BadLinesAction, describe("error, warn or skip.")] = "error"
    file_encoding: Annotated[str | None, describe("Python codec name; utf-8 by default.")] = None


class SpreadsheetOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``options`` of the legacy spreadsheet parser."""

    localtz: Annotated[str | None, describe("IANA zone of naive timestamps.")] = None
    counter: Annotated[bool, describe("Legacy counter column (only false is supported).")] = False
    parse: SpreadsheetParse = msgspec.field(default_factory=SpreadsheetParse)


@parsers.register
class SpreadsheetParser(_CsvLike, ParserConfig, tag="spreadsheet", kw_only=True):
    """FactoryTX's legacy spreadsheet parser, for CSV files."""

    example: ClassVar[dict[str, Any]] = {
        "parser_name": "spreadsheet", "parser_type": "spreadsheet", "file_format": "csv",
        "options": {"localtz": "America/Chicago", "parse": {"parse_dates": ["timestamp"]}}}

    file_format: Annotated[str, describe("Only 'csv'.", choices=["csv"])] = "csv"
    options: SpreadsheetOptions = msgspec.field(default_factory=SpreadsheetOptions)

    def settings(self) -> CsvSettings:
        p = self.options.parse
        return CsvSettings(p.separator, p.file_encoding, p.header, tuple(p.parse_timestamps),
                           tuple(p.parse_dates), p.dayfirst, self.options.localtz, p.bad_lines_action)

    def violations(self, path: JsonPath) -> list[Violation]:
        out = timezone_violations(self.options.localtz, [*path, "options", "localtz"])
        if self.options.counter:
            out.append(error("options.counter=true is not supported", [*path, "options", "counter"]))
        return out
