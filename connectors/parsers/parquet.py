"""The ``parquet`` parser: a Parquet file per file, read whole by polars.

Implements the ``parquet`` parser of issue 11 ("Parsers"). A file that is not Parquet,
or is cut short (still being written), is refused with the file name: the file receiver
marks the stream and reads it again once it changes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar

import polars as pl

from dataflows.sdk import (
    ParseError,
    ParserConfig,
    SourceFile,
    describe,
    parsers,
)


@parsers.register
class ParquetParser(ParserConfig, tag="parquet", kw_only=True):
    """Apache Parquet files."""

    title: ClassVar[str] = "Parquet"
    example: ClassVar[dict[str, Any]] = {"parser_name": "parquet", "parser_type": "parquet",
                                         "columns": ["timestamp", "value"]}

    columns: Annotated[list[str] | None, describe("Columns to read; all by default.")] = None

    def parse(self, prefix: bytes, body: bytes, *, source: str, first_line: int,
              warn: Callable[[str], None] | None = None,
              text_columns: Iterable[str] = (), file: SourceFile | None = None) -> pl.DataFrame:
        """Read the whole file.

        :raises ParseError: not a (complete) Parquet file, or a named column is missing.
        """
        if not body.startswith(b"PAR1") or not body.endswith(b"PAR1"):
            raise ParseError(source, None, f"not a complete Parquet file ({len(body)} bytes; Parquet "
                             "files start and end with PAR1)")
        try:
            frame = pl.read_parquet(io.BytesIO(body), columns=self.columns)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ParseError(source, None, f"cannot read Parquet: {str(exc).splitlines()[0]}") from exc
        return frame.with_columns(pl.col(c).cast(pl.String) for c in text_columns if c in frame.columns)
