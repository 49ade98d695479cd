"""The ``rename`` transform: ``renames: [{from, to}]`` applied in order.

A column that is missing is a warning, not a failure: the frame passes on unchanged
for that rename. Implements ``rename`` of ``shared/specs/factorytx-digest.md`` (and the
quickstart's "Rename 1" / "Rename 2").
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec
import polars as pl

from dataflows.registry import transforms
from dataflows.sdk import TransformConfig, describe


class Rename(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One column rename."""

    from_: Annotated[str, describe("Current column name.")] = msgspec.field(name="from")
    to: Annotated[str, describe("New column name.")]


@transforms.register
class RenameTransform(TransformConfig, tag="rename", kw_only=True):
    """Renames columns."""

    example: ClassVar[dict[str, Any]] = {
        "transform_name": "Rename 1", "transform_type": "rename",
        "renames": [{"from": "machine", "to": "machine_name"}]}

    renames: Annotated[list[Rename], describe("Renames, applied in order.", min_length=1)]

    def apply(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
        warnings = []
        for rename in self.renames:
            if rename.from_ not in frame.columns:
                warnings.append(f"column {rename.from_!r} to rename to {rename.to!r} is missing "
                                f"(columns: {', '.join(frame.columns)})")
            elif rename.from_ != rename.to:
                frame = frame.drop(rename.to, strict=False).rename({rename.from_: rename.to})
        return frame, warnings
