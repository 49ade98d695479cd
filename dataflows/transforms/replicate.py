"""The ``replicate`` transform: one copy of each batch per asset of ``asset_list``.

Each copy is a batch of the stream ``<asset>:<stream_type>`` (the original stream type),
its ``asset`` column set to that asset, so later transforms and transmits select and
name it by its asset. The original batch is replaced by the copies. A receiver waiting
for delivery (``delete_completed``) waits for every copy: each transmit acknowledges each
copy it writes (:meth:`dataflows.records.Batch.ack_name`).

Implements ``replicate`` of ``shared/specs/factorytx-digest.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, ClassVar

import polars as pl

from dataflows.records import Batch, StreamKey
from dataflows.registry import transforms
from dataflows.sdk import (
    JsonPath,
    NonEmptyStr,
    RunContext,
    TransformConfig,
    Violation,
    describe,
    error,
)


@transforms.register
class Replicate(TransformConfig, tag="replicate", kw_only=True):
    """Copies each batch to every asset of `asset_list`."""

    title: ClassVar[str] = "Replicate"
    example: ClassVar[dict[str, Any]] = {"transform_name": "to every press", "transform_type": "replicate",
                                         "asset_list": ["press_1", "press_2", "press_3"]}

    asset_list: Annotated[list[NonEmptyStr], describe("Assets each batch is copied to.", min_length=1)]

    def violations(self, path: JsonPath) -> list[Violation]:
        out = list(super().violations(path))
        for index, asset in enumerate(self.asset_list):
            if ":" in asset:
                out.append(error(f"asset {asset!r} has a colon, which separates asset and stream_type",
                                 [*path, "asset_list", index]))
            elif self.asset_list.index(asset) != index:
                out.append(error(f"asset {asset!r} is listed twice", [*path, "asset_list", index]))
        return out

    def streams_out(self, stream: StreamKey) -> list[StreamKey]:
        return [StreamKey(asset, stream.stream_type) for asset in self.asset_list]

    def apply_batches(self, batch: Batch, ctx: RunContext | None = None) -> tuple[list[Batch], list[str]]:
        origin = batch.ack_stream()
        copies = []
        for stream in self.streams_out(batch.stream):
            frame = batch.frame.with_columns(pl.lit(stream.asset).alias("asset")) if batch.frame.width \
                else batch.frame
            copies.append(replace(batch, stream=stream, frame=frame, origin=origin))
        return copies, []
