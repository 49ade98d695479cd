"""The ``csv`` parser and the legacy ``spreadsheet`` parser (CSV files only), on polars.

Both read delimited text into one row per record:

- ``separator``: ``,`` by default; when none is set and the first line holds no ``,``
  but ``;``, TAB or ``|``, the most frequent of those, with a warning;
- ``file_encoding``: utf-8 by default, with or without a BOM; any Python codec name is
  decoded. Unset, a line that is not utf-8 is read as cp1252 (the usual Windows export)
  and named in a warning; the other lines stay utf-8;
- a file holding NUL bytes or many control characters is refused as binary;
- ``header``: zero-based line of the column names (default 0; lines above it are
  skipped); ``null`` for files without one (columns ``column_1``, ``column_2``, ...);
- ``parse_timestamps: [{field_name, format}]`` parses those columns with a strftime
  format; other ISO-looking columns are recognised as datetimes automatically;
- ``bad_lines_action``: a line with more or fewer fields than the header is ``error``
  (the file is rejected, naming file and line), ``warn`` (every dropped line counted and
  named in one warning) or ``skip`` (dropped silently). A quoted field that spans lines
  with the wrong field count (an unbalanced quote) is taken apart into its lines, so
  only the broken line is dropped.

Warnings go to the ``warn`` callback the file receiver passes (they mark the stream).

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
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import polars as pl

from dataflows.sdk import (
    JsonPath,
    NonNegativeInt,
    ParseError,
    ParserConfig,
    SourceFile,
    Violation,
    chrono_format,
    describe,
    error,
    localize,
    parsers,
    timezone_violations,
)

__all__ = ["CsvParser", "CsvSettings", "ParseError", "SpreadsheetParser", "parse_csv"]

BadLinesAction = Literal["error", "warn", "skip"]
OneCharacter = Annotated[str, msgspec.Meta(min_length=1, max_length=1)]
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

    separator: str | None = None
    file_encoding: str | None = None
    header: int | None = 0
    parse_timestamps: tuple[TimestampField, ...] = ()
    parse_dates: tuple[str, ...] = ()
    dayfirst: bool = False
    localtz: str | None = None
    bad_lines_action: BadLinesAction = "error"
    max_columns: int = 10_000

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


Warn = Callable[[str], None]
#: Separators tried when the configured one (``,`` by default) is not in the header.
OTHER_SEPARATORS = (";", "\t", "|")
#: Most control characters (other than tab, CR, LF) a text chunk may hold, as a fraction.
BINARY_CONTROL_FRACTION = 0.01


def _decode(data: bytes, settings: CsvSettings, source: str, first_line: int, warn: Warn) -> str:
    """``data`` as text. Unset ``file_encoding``: UTF-8 (with or without a BOM), each line
    that is not UTF-8 read as cp1252 (the usual Windows export) with a warning naming it.

    :raises ParseError: ``file_encoding`` is set and the bytes are not in it.
    """
    try:
        return data.decode(settings.encoding)
    except UnicodeDecodeError as exc:
        if settings.file_encoding is not None:
            line = first_line + data[: exc.start].count(b"\n")
            raise ParseError(source, line, f"cannot decode as {settings.file_encoding}: {exc.reason}") from exc
    lines = data.split(b"\n")
    out, fallback = [], []
    for index, raw in enumerate(lines):
        try:
            out.append(raw.decode("utf-8-sig" if index == 0 else "utf-8"))
        except UnicodeDecodeError:
            out.append(raw.decode("cp1252", errors="replace"))
            fallback.append(first_line + index)
    if fallback:
        warn(f"{source}, {_line_list(fallback)}: not utf-8, read as cp1252")
    return "\n".join(out)


def _line_list(numbers: list[int], most: int = 100) -> str:
    """``line 3, lines 7-9, ...``: every number, runs as ranges, at most ``most`` entries."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    more = f" and {len(text) - most} more runs" if len(text) > most else ""
    return ("line " if len(numbers) == 1 else "lines ") + ", ".join(text[:most]) + more


#: Control characters other than TAB, CR and LF.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _refuse_binary(text: str, source: str, first_line: int) -> None:
    """:raises ParseError: ``text`` holds a NUL or more control characters than text does."""
    sample = text[:65536]
    nul = sample.find("\x00")
    controls = len(_CONTROL.findall(sample))
    if nul >= 0 or controls > BINARY_CONTROL_FRACTION * max(len(sample), 1):
        first = _CONTROL.search(sample)
        at = nul if nul >= 0 else (first.start() if first else 0)
        raise ParseError(source, first_line + sample[:at].count("\n"),
                         f"binary data, not CSV text ({controls} control characters in the first "
                         f"{len(sample)} characters{', a NUL byte' if nul >= 0 else ''})")


def _separator(settings: CsvSettings, sample: str | None, source: str, warn: Warn) -> str:
    """The separator: the configured one, or (when none is set and the header, or the first
    line, holds none of the default ``,``) the most frequent of ``; TAB |`` in it, with a
    warning."""
    if settings.separator is not None or not sample or "," in sample:
        return settings.separator or ","
    counts = {sep: sample.count(sep) for sep in OTHER_SEPARATORS}
    best = max(counts, key=lambda sep: counts[sep])
    if not counts[best]:
        return ","
    warn(f"{source}: no ',' in the first line but {counts[best]} {best!r}: read with separator "
         f"{best!r} (set `separator` to choose)")
    return best


def _lines(text: str) -> list[str]:
    """The physical lines of ``text`` as the csv module sees them (endings kept)."""
    return list(io.StringIO(text, newline=""))


def _bad(numbers: list[int], counts: list[int], expected: int, settings: CsvSettings, source: str,
         report: Warn) -> None:
    """Act on the bad lines (1-based file ``numbers`` with their field ``counts``) as
    ``bad_lines_action`` says: raise, warn naming every one, or nothing."""
    if settings.bad_lines_action == "error":
        raise ParseError(source, numbers[0], f"expected {expected} fields, found {counts[0]}"
                         + (f" ({len(numbers)} bad lines in all)" if len(numbers) > 1 else ""))
    if settings.bad_lines_action == "warn":
        for number, count in list(zip(numbers, counts, strict=True))[:10]:
            report(f"{source}, line {number}: expected {expected} fields, found {count}; line dropped")
        if len(numbers) > 1:  # every dropped line named, runs as ranges
            report(f"{source}, {_line_list(numbers)}: {len(numbers)} lines dropped in all, not "
                   f"{expected} fields")


#: Texts shorter than this (characters) are checked line by line in Python.
SMALL_TEXT = 16 * 1024


def _drop_bad_lines(text: str, separator: str, columns: list[str] | None, settings: CsvSettings,
                    source: str, first_line: int, report: Warn) -> str:
    """``text`` (no quotes in it: one record per line) without its lines of the wrong field
    count, counted column-wise by polars (in Python for a small text, where polars' own
    overhead would be most of the cost: a folder of many small files)."""
    if len(text) < SMALL_TEXT:
        counted = [(n, line.removesuffix("\r").count(separator) + 1)
                   for n, line in enumerate(text.split("\n")) if line.removesuffix("\r")]
        expected = len(columns) if columns is not None else (counted[0][1] if counted else 0)
        bad_lines = [(n, count) for n, count in counted if count != expected]
    else:
        line = pl.col("line").str.strip_suffix("\r")
        counts = (pl.LazyFrame({"line": text.split("\n")}).with_row_index("n").filter(line != "")
                  .select("n", count=line.str.count_matches(separator, literal=True) + 1).collect())
        expected = len(columns) if columns is not None else (counts["count"][0] if counts.height else 0)
        bad = counts.filter(pl.col("count") != expected)
        bad_lines = list(zip(bad["n"].to_list(), bad["count"].to_list(), strict=True))
    if not bad_lines:
        return text
    _bad([first_line + n for n, _ in bad_lines], [count for _, count in bad_lines], expected, settings,
         source, report)
    dropped = {n for n, _ in bad_lines}
    return "\n".join(line for n, line in enumerate(text.split("\n")) if n not in dropped)


def _drop_bad_records(text: str, separator: str, columns: list[str] | None, settings: CsvSettings,
                      source: str, first_line: int, report: Warn) -> str:
    """``text`` without its records of the wrong field count. A record spanning several
    lines (a quoted field with newlines) whose count is wrong, e.g. after an unbalanced
    quote, is taken apart into its lines, each counted alone, so one bad quote costs its
    line, not the rest of the chunk."""
    lines = _lines(text)
    expected = len(columns) if columns is not None else None
    units: list[tuple[int, int, int]] = []  # (first line, last line, field count), 0-based
    for start, end, fields in _records(lines, separator, source, first_line):
        if not fields:
            continue
        if expected is None:
            expected = len(fields)
        if len(fields) != expected and end > start:
            for index in range(start, end + 1):
                alone = next((f for _, _, f in _records(lines[index:index + 1], separator, source,
                                                         first_line + index)), [])
                if alone:
                    units.append((index, index, len(alone)))
        else:
            units.append((start, end, len(fields)))
    bad = [(start, count) for start, _, count in units if count != expected]
    if not bad:
        return text
    _bad([first_line + start for start, _ in bad], [count for _, count in bad], expected or 0, settings,
         source, report)
    return "".join(line for start, end, count in units if count == expected for line in lines[start:end + 1])


def _records(lines: list[str], separator: str, source: str,
             first_line: int) -> Iterator[tuple[int, int, list[str]]]:
    """``(first line, last line, fields)`` (0-based in ``lines``) of every record.

    :raises ParseError: the csv module refuses the text (a field over its size limit).
    """
    reader = pycsv.reader(iter(lines), delimiter=separator)
    start = 0
    try:
        for record in reader:
            yield start, reader.line_num - 1, record
            start = reader.line_num
    except pycsv.Error as exc:
        raise ParseError(source, first_line + start, f"not readable as CSV: {exc}") from exc


def parse_csv(prefix: bytes, body: bytes, settings: CsvSettings, *, source: str,
              first_line: int, warn: Warn | None = None, text_columns: Iterable[str] = ()) -> pl.DataFrame:
    """Parse ``body`` (complete lines starting at file line ``first_line``) under the header in ``prefix``.

    With an empty ``prefix`` the body starts the file and holds the header lines itself.
    Warnings (lines read as cp1252, a detected separator, dropped lines) go to ``warn``
    (logged when it is None). ``text_columns`` are read as text, as written.

    :returns: one row per record; columns named by the header.
    :raises ParseError: binary data, undecodable bytes in a set ``file_encoding``, text the
        csv module refuses, a bad line with ``bad_lines_action: error``, or more than
        ``max_columns`` columns.
    """
    def report(message: str) -> None:
        (warn or _log.warning)(message)

    nul = body.find(b"\x00", 0, 65536) if settings.splits_on_newline_byte else -1  # UTF-16 has NULs
    if nul >= 0:
        raise ParseError(source, first_line + body[:nul].count(b"\n"),
                         f"binary data, not CSV text (a NUL byte at byte {nul} of the chunk)")
    text = _decode(body, settings, source, first_line, report)
    _refuse_binary(text, source, first_line)
    if prefix:
        head = _decode(prefix, settings, source, 1, report).splitlines()
    else:  # the chunk starts the file: its first lines are the header lines
        parts = text.split("\n", settings.header_lines)
        head, text = parts[: settings.header_lines], (parts[settings.header_lines]
                                                     if len(parts) > settings.header_lines else "")
        head = [line.removesuffix("\r") for line in head]
        first_line += settings.header_lines
    header_line = head[settings.header] if settings.header is not None and len(head) > settings.header else None
    if settings.header is not None and header_line is None:
        raise ParseError(source, settings.header + 1, "the header line is missing")
    first_data = text[: text.find("\n")] if header_line is None and "\n" in text else (header_line or text)
    separator = _separator(settings, first_data, source, report if not prefix else (lambda _: None))
    width = first_data.count(separator) + 1  # at most: a quoted field may hold the separator
    if width > settings.max_columns:
        raise ParseError(source, settings.header + 1 if header_line is not None and settings.header is not None
                         else first_line, f"{width:,} columns, over max_columns ({settings.max_columns:,}): "
                         "refused (a guard against files that would take gigabytes)")
    columns = None
    if header_line is not None:
        assert settings.header is not None
        records = _records([header_line], separator, source, settings.header + 1)
        columns = next((fields for _, _, fields in records), [])

    if '"' in text:  # quoted fields may span lines: the csv module knows where records end
        text = _drop_bad_records(text, separator, columns, settings, source, first_line, report)
    else:
        text = _drop_bad_lines(text, separator, columns, settings, source, first_line, report)

    explicit = {t.field_name for t in settings.parse_timestamps} | set(settings.parse_dates) | set(text_columns)
    payload = ((header_line + "\n") if header_line is not None else "") + text
    try:
        frame = _read_csv(payload.encode("utf-8"), separator, header_line is not None,
                          {c: pl.String for c in explicit if columns and c in columns})
    except pl.exceptions.PolarsError as exc:
        raise ParseError(source, None, str(exc).splitlines()[0]) from exc
    frame = _temporal_columns(frame, explicit)
    if frame.width == 0 and columns:
        frame = pl.DataFrame(schema={c: pl.String for c in columns})
    if columns is None:
        frame = frame.rename({c: f"column_{i}" for i, c in enumerate(frame.columns, 1)})
    return _parse_timestamp_columns(frame, settings, source)


def _read_csv(data: bytes, separator: str, has_header: bool, text: dict[str, pl.DataType]) -> pl.DataFrame:
    """polars' reader, column types inferred from the first 100 rows and, when a later value
    does not fit them, from the first 10,000 (inferring over more rows costs on every file).

    :raises polars.exceptions.PolarsError: the text does not read even so.
    """
    def read(rows: int) -> pl.DataFrame:
        return pl.read_csv(data, separator=separator, has_header=has_header, infer_schema_length=rows,
                           schema_overrides=text or None, raise_if_empty=False)

    try:
        return read(100)
    except pl.exceptions.PolarsError:
        return read(10_000)


#: Formats a datetime column's first value is tried in before polars infers one: given
#: the format (and no cache of repeated values), polars converts a column about 6× faster
#: (0.05 against 0.32 CPU s per 1M values, ``python -m bench --only csv_kafka``).
_DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f",
                     "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M")


def _datetimes(column: pl.Series, first: pl.Series) -> pl.Series:
    """``column`` (text) as datetimes (µs, no zone unless the text has one), ``first`` its
    first value: in the first of :data:`_DATETIME_FORMATS` that value takes, when every
    value fits it; else as polars infers the format from that value (zones, other forms,
    a column whose later values take another format).

    :raises polars.exceptions.PolarsError: a value does not convert.
    """
    for form in _DATETIME_FORMATS:
        try:
            first.str.to_datetime(form, strict=True, time_unit="us")
        except pl.exceptions.PolarsError:
            continue
        try:
            return column.str.to_datetime(form, strict=True, time_unit="us", cache=False)
        except pl.exceptions.PolarsError:
            break  # polars' inference may still read every value
    return column.str.to_datetime(strict=True, time_unit="us")


#: Conversions a text column is tried with, in order, each given the column and its first
#: value: the first its first value takes is applied to the whole column (the same formats
#: polars' CSV date inference knows).
_TEMPORAL: tuple[Callable[[pl.Series, pl.Series], pl.Series], ...] = (
    lambda column, _: column.str.to_date(strict=True),
    _datetimes,
    lambda column, _: column.str.to_time(strict=True),
)


def _temporal_columns(frame: pl.DataFrame, keep: set[str]) -> pl.DataFrame:
    """Text columns (but ``keep``) whose values are all dates, datetimes or times, as such.

    What polars' CSV inference (``try_parse_dates``) does, without its cost of about
    13 µs a row inferred: the kind (date, datetime with or without its zone, time) and the
    format come from the column's first value, then the whole column is converted
    strictly. A value that does not parse in that format leaves the column as text (a
    column of datetimes holding a bare date, which polars keeps as text, becomes datetimes).
    """
    converted = []
    for name, dtype in frame.schema.items():
        if dtype != pl.String or name in keep:
            continue
        first = frame[name].drop_nulls().head(1)
        for convert in _TEMPORAL:
            try:
                convert(first, first)
            except pl.exceptions.PolarsError:
                continue
            try:
                converted.append(convert(frame[name], first))
            except pl.exceptions.PolarsError:
                pass  # a value further down is of another kind: the column stays text
            break
    return frame.with_columns(converted) if converted else frame


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

    def parse(self, prefix: bytes, body: bytes, *, source: str, first_line: int,
              warn: Callable[[str], None] | None = None,
              text_columns: Iterable[str] = (), file: SourceFile | None = None) -> pl.DataFrame:
        """Parse a chunk of a file; see :func:`parse_csv`."""
        return parse_csv(prefix, body, self.settings(), source=source, first_line=first_line, warn=warn,
                         text_columns=text_columns)


@parsers.register
class CsvParser(_CsvLike, ParserConfig, tag="csv", kw_only=True):
    """Delimited text, one record per line."""

    title: ClassVar[str] = "CSV"
    example: ClassVar[dict[str, Any]] = {
        "parser_name": "csv", "parser_type": "csv", "separator": ";", "bad_lines_action": "warn",
        "parse_timestamps": [{"field_name": "timestamp", "format": "%d.%m.%Y %H:%M:%S"}]}

    file_format: Annotated[str, describe("Only 'csv'.", choices=["csv"])] = "csv"
    file_encoding: Annotated[str | None, describe("Python codec name; utf-8 by default.")] = None
    separator: Annotated[OneCharacter | None, describe(
        "Field separator; by default ',', or ';', TAB or '|' when the first line holds no ',' "
        "but one of them (with a warning).")] = None
    header: Annotated[NonNegativeInt | None, describe("Zero-based line of the column names; null: none.")] = 0
    parse_timestamps: Annotated[list[TimestampField], describe("Columns with explicit formats.")] = (
        msgspec.field(default_factory=list))
    bad_lines_action: Annotated[BadLinesAction, describe("error, warn or skip.")] = "error"
    max_columns: Annotated[int, describe(
        "Most columns a file may have; a wider one is refused (each column costs memory).", ge=1)] = 10_000

    def settings(self) -> CsvSettings:
        return CsvSettings(self.separator, self.file_encoding, self.header, tuple(self.parse_timestamps),
                           bad_lines_action=self.bad_lines_action, max_columns=self.max_columns)

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

    separator: Annotated[OneCharacter | None, describe(
        "Field separator; by default ',', or ';', TAB or '|' when the first line holds no ',' "
        "but one of them (with a warning).")] = None
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
