"""The ``tap`` transform: writes each frame it sees to files, and passes it on unchanged.

For looking at what flows at one point of the dataflow. Each batch becomes one file,
``$FACTORYFLOW_HOME/components/<transform_name>/<asset>__<stream_type>/<UTC time>-<n>.<format>``,
in ``format`` ``csv`` (a header line, timestamps ISO-8601) or ``parquet`` (types kept).
FactoryTX's ``pickle`` is refused: a pickle runs code when it is read. Taps are not part
of delivery: after a crash, a batch read again is tapped again.

Implements ``tap`` of ``shared/specs/factorytx-digest.md``.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

import polars as pl

from dataflows.records import Batch
from dataflows.registry import transforms
from dataflows.sdk import RunContext, TransformConfig, describe

_UNSAFE = re.compile(r"[^\w.\- ]")
_counter = itertools.count(1)


@transforms.register
class Tap(TransformConfig, tag="tap", kw_only=True):
    """Writes each frame it sees to a file, then passes it on unchanged."""

    title: ClassVar[str] = "Tap"
    example: ClassVar[dict[str, Any]] = {"transform_name": "after renames", "transform_type": "tap",
                                         "format": "parquet"}

    format: Annotated[Literal["csv", "parquet"], describe("File format of the tapped frames.")] = "csv"

    def apply_to(self, batch: Batch, ctx: RunContext | None = None) -> tuple[pl.DataFrame, list[str]]:
        """Write ``batch``'s frame to its file, and pass the frame on.

        :raises ValueError: no run context (the tap needs the installation's home).
        """
        if ctx is None:
            raise ValueError("the tap transform needs the run context to know where to write")
        directory = ctx.component_dir(self.transform_name) / (
            f"{_UNSAFE.sub('_', batch.stream.asset)}__{_UNSAFE.sub('_', batch.stream.stream_type)}")
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = directory / f"{stamp}-{next(_counter)}.{self.format}"
        if self.format == "csv":
            batch.frame.write_csv(path)
        else:
            batch.frame.write_parquet(path)
        return batch.frame, []
