"""The ``checksum_record`` transform: a digest of each record in ``factorytx_checksum``.

``record_keys`` picks what the digest covers, from ``asset``, ``stream_type``,
``timestamp`` and ``fieldvalues`` (every other field); all four by default. The digest is
the SHA-256, in hex, of the record's canonical JSON: an object of the chosen parts with
its keys sorted (``fieldvalues`` an object of the fields, keys sorted), timestamps as
ISO-8601 UTC text ending in ``Z`` (as transmits write them), no spaces. Two records equal
in the chosen parts have the same checksum whichever file, query or run they came from,
so downstream can find duplicates. Recommended last, after the transforms that change
the record.

Implements ``checksum_record`` of ``shared/specs/factorytx-digest.md``.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import polars as pl

from dataflows.records import Batch, records_frame
from dataflows.registry import transforms
from dataflows.sdk import RunContext, TransformConfig, describe

#: The column the digest is written to.
CHECKSUM = "factorytx_checksum"
RecordKey = Literal["asset", "stream_type", "timestamp", "fieldvalues"]
RECORD_KEYS: tuple[RecordKey, ...] = ("asset", "stream_type", "timestamp", "fieldvalues")


@transforms.register
class ChecksumRecord(TransformConfig, tag="checksum_record", kw_only=True):
    """Writes the SHA-256 of each record's chosen parts to `factorytx_checksum`."""

    title: ClassVar[str] = "Checksum record"
    example: ClassVar[dict[str, Any]] = {"transform_name": "checksum", "transform_type": "checksum_record",
                                         "record_keys": ["asset", "timestamp", "fieldvalues"]}

    record_keys: Annotated[list[RecordKey], describe("What the digest covers.", min_length=1)] = (
        msgspec.field(default_factory=lambda: list(RECORD_KEYS)))

    def apply_to(self, batch: Batch, ctx: RunContext | None = None) -> tuple[pl.DataFrame, list[str]]:
        records = records_frame(batch.with_frame(batch.frame.drop(CHECKSUM, strict=False)))
        parts = []
        for key in sorted(set(self.record_keys)):
            if key == "fieldvalues":
                fields = sorted(c for c in records.columns if c not in ("asset", "stream_type", "timestamp"))
                parts.append(pl.struct(fields).alias("fieldvalues") if fields
                             else pl.lit(None).alias("fieldvalues"))
            elif key in records.columns:
                parts.append(pl.col(key))
            else:
                parts.append(pl.lit(None).alias(key))
        canonical = records.select(pl.struct(parts).struct.json_encode()).to_series()
        digests = [hashlib.sha256(text.encode()).hexdigest() for text in canonical.to_list()]
        return batch.frame.with_columns(pl.Series(CHECKSUM, digests, dtype=pl.String)), []
