"""The ``convert_timestamps`` transform: timestamp columns to timezone-aware UTC.

Keys: ``field_names`` (a list, or one name as a string; the older ``field_name`` is
accepted), ``timezone`` (IANA zone of naive values; UTC when absent), ``format``
(Python strftime for strings; guessed when absent), ``unit`` (``D``/``s``/``ms``/``us``/
``ns`` for epoch numbers; not with ``format``).

Naive values are wall-clock times in ``timezone``; aware values are converted; epoch
numbers are UTC. DST edges follow the one rule of :mod:`dataflows.timestamps`
(ambiguous: first occurrence; nonexistent: the offset before the change). Values that
do not parse become null and are reported as a warning with examples.

Implements ``convert_timestamps`` of ``shared/specs/factorytx-digest.md``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import polars as pl

from dataflows.registry import transforms
from dataflows.sdk import (
    JsonPath,
    TransformConfig,
    Violation,
    describe,
    error,
    timezone_violations,
)
from dataflows.timestamps import EpochUnit, TimestampError, to_utc


@transforms.register
class ConvertTimestamps(TransformConfig, tag="convert_timestamps", kw_only=True):
    """Converts timestamp columns to UTC."""

    example: ClassVar[dict[str, Any]] = {
        "transform_name": "plant time", "transform_type": "convert_timestamps",
        "field_names": ["timestamp"], "timezone": "America/Chicago"}

    field_names: Annotated[str | list[str] | None, describe("Columns to convert.")] = None
    field_name: Annotated[str | None, describe("Older single-column form of field_names.")] = None
    timezone: Annotated[str | None, describe("IANA zone of naive values, e.g. 'Europe/Paris'.")] = None
    format: Annotated[str | None, describe("strftime format of string values.")] = None
    unit: Annotated[EpochUnit | None, describe("Unit of epoch numbers.")] = None

    @property
    def columns(self) -> list[str]:
        """The columns to convert, whichever key named them."""
        names = self.field_names if self.field_names is not None else self.field_name
        return [names] if isinstance(names, str) else list(names or [])

    def violations(self, path: JsonPath) -> list[Violation]:
        out = timezone_violations(self.timezone, [*path, "timezone"])
        if not self.columns:
            out.append(error("missing required key `field_names`", path))
        if self.format is not None and self.unit is not None:
            out.append(error("give `format` or `unit`, not both", path))
        return out

    def apply(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
        warnings = []
        converted = []
        for name in self.columns:
            if name not in frame.columns:
                warnings.append(f"column {name!r} to convert is missing")
                continue
            try:
                result = to_utc(frame[name], self.timezone, format=self.format, unit=self.unit)
            except TimestampError as exc:
                warnings.append(str(exc))
                continue
            if result.failed:
                warnings.append(f"{result.failed} values of column {name!r} are not timestamps and "
                                f"became null (e.g. {', '.join(result.examples)})")
            converted.append(result.series)
        return (frame.with_columns(converted) if converted else frame), warnings
