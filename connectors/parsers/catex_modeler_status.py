"""The ``catex_modeler_status`` parser: Stratasys printer status captures, as Authentise
3DIAX takes them (capture type ``catex.modeler.status``).

Implements the capture format of ``shared/specs/authentise-3diax-capture-api.txt``: a file
of Tcl statements ``set machineStatus(<section>) { ... };``, one per section (``general``,
``cassette``, ``currentJob``, ``queue``, ``previousJob``, ...). A section holds ``-key value``
options, or brace groups of them (one per cassette, one per queued job). A value is a
quoted string (``"Building"``, with backslash escapes), a brace-quoted string (``{T16}``,
``{-1}``, ``{}``; nested braces kept as written) or a bare word (``355``, ``25.209132``,
``T16``).

**One record per capture** (per file): each option becomes the field
``<section>.<key>`` (``general.modelerStatus``, ``currentJob.jobName``), each option of a
group ``<section>.<n>.<key>`` (``cassette.0.name``, 0-based in file order). Bare words
that are integers become Int64, decimals Float64, anything else text; quoted and braced
strings stay text as written (``-startTime "1457952053"`` is the text ``1457952053``).
``timestamp`` is ``general.serverTime`` (Unix seconds) in UTC when the capture has it,
else the file's modification time.

Bad input is refused with the file, line and column of the first problem; a key given
twice in a section keeps its last value and is reported as a warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar

import polars as pl

from dataflows.sdk import (
    ParseError,
    ParserConfig,
    SourceFile,
    parsers,
)

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


class _Reader:
    """A cursor over the capture's text that knows its line and column."""

    def __init__(self, text: str, source: str) -> None:
        self.text, self.source, self.at = text, source, 0

    def where(self, at: int | None = None) -> tuple[int, int]:
        at = self.at if at is None else at
        line = self.text.count("\n", 0, at) + 1
        return line, at - (self.text.rfind("\n", 0, at) + 1) + 1

    def fail(self, reason: str, at: int | None = None) -> ParseError:
        line, column = self.where(at)
        return ParseError(self.source, line, f"column {column}: {reason}")

    def skip(self) -> None:
        """Past whitespace and ``#`` comments."""
        while self.at < len(self.text):
            char = self.text[self.at]
            if char.isspace():
                self.at += 1
            elif char == "#" and (self.at == 0 or self.text[self.at - 1] == "\n"):
                end = self.text.find("\n", self.at)
                self.at = len(self.text) if end < 0 else end
            else:
                return

    def peek(self) -> str:
        self.skip()
        return self.text[self.at] if self.at < len(self.text) else ""

    def expect(self, literal: str, what: str) -> None:
        self.skip()
        if not self.text.startswith(literal, self.at):
            found = self.text[self.at:self.at + 12].split("\n")[0] or "the end of the file"
            raise self.fail(f"expected {what}, found {found!r}")
        self.at += len(literal)

    def word(self) -> str:
        """A bare word: up to whitespace, ``;`` or a brace."""
        start = self.at
        while self.at < len(self.text) and not self.text[self.at].isspace() and self.text[self.at] not in "{};":
            self.at += 1
        return self.text[start:self.at]

    def quoted(self) -> str:
        """A ``"..."`` string (the cursor on its opening quote), escapes resolved."""
        start = self.at
        self.at += 1
        out = []
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "\\" and self.at + 1 < len(self.text):
                out.append(_ESCAPES.get(self.text[self.at + 1], self.text[self.at + 1]))
                self.at += 2
                continue
            self.at += 1
            if char == '"':
                return "".join(out)
            out.append(char)
        raise self.fail("this quoted string is never closed", start)

    def braced(self) -> str:
        """A ``{...}`` string (the cursor on its opening brace): its text as written."""
        start, depth = self.at, 0
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "\\":
                self.at += 2
                continue
            self.at += 1
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return self.text[start + 1:self.at - 1]
        raise self.fail("this brace is never closed", start)


def _bare(word: str) -> Any:
    if _INT.fullmatch(word):
        return int(word)
    if _FLOAT.fullmatch(word):
        return float(word)
    return word


def parse_capture(text: str, source: str,
                  warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The fields of one status capture (see the module docstring), in file order.

    :raises ParseError: the text is not a status capture, naming line and column.
    """
    reader = _Reader(text, source)
    fields: dict[str, Any] = {}
    statements = 0

    def options(prefix: str, closing_at: int) -> None:
        while True:
            char = reader.peek()
            if char == "}":
                return
            if char == "":
                raise reader.fail("this brace is never closed", closing_at)
            if char != "-":
                raise reader.fail(f"expected an option (-key value) or '}}', found {char!r}")
            key_at = reader.at
            reader.at += 1
            key = reader.word()
            if not key:
                raise reader.fail("an option needs a name after '-'", key_at)
            reader.skip()
            if reader.at >= len(text) or text[reader.at] == "}":
                raise reader.fail(f"option -{key} has no value")
            char = text[reader.at]
            value = reader.quoted() if char == '"' else reader.braced() if char == "{" else _bare(reader.word())
            name = f"{prefix}.{key}"
            if name in fields and warn is not None:
                line, _ = reader.where(key_at)
                warn(f"{source}, line {line}: -{key} given twice in {prefix}: the last value is kept")
            fields[name] = value

    while reader.peek():
        statement_at = reader.at
        reader.expect("set", "'set machineStatus(<section>) {'")
        if not text[reader.at:reader.at + 1].isspace():
            raise reader.fail("expected 'set machineStatus(<section>) {'", statement_at)
        reader.expect("machineStatus(", "'machineStatus(<section>)'")
        section_at = reader.at
        close = text.find(")", reader.at)
        section = text[reader.at:close] if close >= 0 else ""
        if not re.fullmatch(r"\w+", section):
            raise reader.fail("expected a section name and ')' after 'machineStatus('", section_at)
        reader.at = close + 1
        reader.skip()
        open_at = reader.at
        reader.expect("{", f"'{{' to open section {section}")
        groups = 0
        while reader.peek() == "{":  # a list of groups: cassettes, queued jobs
            group_at = reader.at
            reader.at += 1
            options(f"{section}.{groups}", group_at)
            reader.at += 1
            groups += 1
        if not groups:
            options(section, open_at)
        reader.expect("}", f"'}}' to close section {section}")
        if reader.peek() == ";":
            reader.at += 1
        statements += 1
    if not statements:
        raise ParseError(source, None, "no 'set machineStatus(<section>) { ... }' statement")
    return fields


@parsers.register
class CatexModelerStatusParser(ParserConfig, tag="catex_modeler_status", kw_only=True):
    """Stratasys status captures (catex.modeler.status): one record per capture."""

    title: ClassVar[str] = "Authentise catex.modeler.status"
    example: ClassVar[dict[str, Any]] = {"parser_name": "printer_status",
                                         "parser_type": "catex_modeler_status"}

    def parse(self, prefix: bytes, body: bytes, *, source: str, first_line: int,
              warn: Callable[[str], None] | None = None,
              text_columns: Iterable[str] = (), file: SourceFile | None = None) -> pl.DataFrame:
        """One record for the whole capture (the file receiver hands it over whole).

        :raises ParseError: not UTF-8 or Latin-1 text, or not a status capture, naming the
            line and column.
        """
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = body.decode("latin-1")  # printers write their own code page; every byte decodes
        fields = parse_capture(text, source, warn)
        stamp = fields.get("general.serverTime")
        timestamp = (datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int)
                     else file.modified if file is not None else None)
        text_set = set(text_columns)
        record = {**({"timestamp": timestamp} if timestamp is not None else {}),
                  **{name: str(value) if name in text_set else value for name, value in fields.items()}}
        return pl.DataFrame([record], schema={name: _dtype(value) for name, value in record.items()},
                            orient="row")


def _dtype(value: Any) -> Any:
    if isinstance(value, datetime):
        return pl.Datetime("us", "UTC")
    if isinstance(value, bool):
        return pl.Boolean
    return {int: pl.Int64, float: pl.Float64}.get(type(value), pl.String)
