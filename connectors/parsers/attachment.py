"""The ``attachment`` parser: one record per file, describing it, with its bytes kept.

FactoryTX's file attachment records (``shared/specs/factorytx-digest.md``, Parsers): a
camera image, a PDF report or a program file becomes one record, not rows of data. Each
record has

- ``timestamp``: the file's modification time (UTC);
- ``file_path``: where it was read (``s3://bucket/key``, ``smb://host:445/share/...``, a
  local path), and ``file_name``, its last part;
- ``file_size``: its size in bytes;
- ``mime_type``: guessed from the name (``application/octet-stream`` when unknown);
- ``sha256``: the SHA-256 of its bytes, in hex;
- ``stored_path``: where its bytes are kept, content-addressed below the parser's data
  directory: ``$FACTORYFLOW_HOME/components/<parser_name>/<first 2 hex digits>/<sha256><suffix>``
  (written to a temporary name, synced and renamed, so a crash never leaves half a copy;
  the same bytes are kept once). ``null`` with ``store: false``.

A file over ``max_bytes`` is refused (a :class:`~dataflows.sdk.ParseError` naming it and
its size): the stream is marked and the other files go on.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import posixpath
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar

import polars as pl

from dataflows.sdk import (
    ParseError,
    ParserConfig,
    SourceFile,
    describe,
    parsers,
)


def keep_bytes(store: Path, digest: str, suffix: str, body: bytes) -> Path:
    """Write ``body`` to ``store/<digest[:2]>/<digest><suffix>`` unless it is there already:
    to a temporary name first, synced, then renamed. Returns the path."""
    target = store / digest[:2] / f"{digest}{suffix}"
    if target.exists() and target.stat().st_size == len(body):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(target)
    return target


@parsers.register
class AttachmentParser(ParserConfig, tag="attachment", kw_only=True):
    """One record per file (path, size, time, MIME type, SHA-256), its bytes kept."""

    title: ClassVar[str] = "Attachment"
    example: ClassVar[dict[str, Any]] = {"parser_name": "images", "parser_type": "attachment",
                                         "max_bytes": 50 * 1024 * 1024}

    max_bytes: Annotated[int, describe("Largest file taken, in bytes; bigger ones are refused.",
                                       ge=1)] = 100 * 1024 * 1024
    store: Annotated[bool, describe("Keep a copy of each file's bytes below the parser's data "
                                    "directory (stored_path).")] = True

    def whole_file_limit(self) -> tuple[int, str]:
        """``max_bytes``: a bigger file is refused before it is fetched."""
        return self.max_bytes, "max_bytes"

    def parse(self, prefix: bytes, body: bytes, *, source: str, first_line: int,
              warn: Callable[[str], None] | None = None,
              text_columns: Iterable[str] = (), file: SourceFile | None = None) -> pl.DataFrame:
        """One row describing the whole file ``body``.

        :param file: needed to keep the bytes (``store``) and for the modification time;
            without it the time is now and nothing is kept.
        :raises ParseError: the file is bigger than ``max_bytes``.
        :raises OSError: the copy could not be written (the stream retries).
        """
        if len(body) > self.max_bytes:
            raise ParseError(source, None, f"{len(body)} bytes, more than max_bytes ({self.max_bytes})")
        digest = hashlib.sha256(body).hexdigest()
        name = posixpath.basename(source.replace("\\", "/"))
        suffix = posixpath.splitext(name)[1][:16]
        stored = keep_bytes(file.store, digest, suffix, body) if self.store and file is not None else None
        modified = file.modified if file is not None else datetime.now(UTC)
        return pl.DataFrame({
            "timestamp": [modified.astimezone(UTC)], "file_path": [source], "file_name": [name],
            "file_size": [len(body)], "mime_type": [mimetypes.guess_type(name)[0] or "application/octet-stream"],
            "sha256": [digest], "stored_path": [str(stored) if stored is not None else None],
        }, schema={"timestamp": pl.Datetime("us", "UTC"), "file_path": pl.String, "file_name": pl.String,
                   "file_size": pl.Int64, "mime_type": pl.String, "sha256": pl.String, "stored_path": pl.String})
