"""One receiver stream run through the runtime's partition, on a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from dataflows.config import load
from dataflows.ledger import Ledger, ledger_path
from dataflows.runtime import _ReceiverPartition
from dataflows.sdk import RunContext

TRANSMIT = {"transmit_name": "t", "transmit_type": "localfile"}


class Clock:
    """The partition's clock (UTC-aware): moved by the test, never waited for."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Partition:
    """The one stream of the receiver ``entry``, resumed from ``state`` (None: a first run)."""

    def __init__(self, entry: dict[str, Any], home: Path, state: Any = None,
                 clock: Clock | None = None) -> None:
        config = load({"data_receiver": [entry], "transforms": [], "data_transmit": [TRANSMIT]})
        self.receiver = config.data_receiver[0]
        (self.stream,) = self.receiver.stream_list
        self.clock = clock or Clock()
        self.ctx = RunContext(home=home, now=self.clock)
        self.part = _ReceiverPartition(self.receiver, self.stream, state, self.ctx, {})

    def poll(self) -> list[pl.DataFrame]:
        """One ``next_batch``: the frames it gave; the clock then moves past the next poll."""
        frames = [b.frame for b in self.part.next_batch()]
        self.clock.now = max(self.clock.now, self.part.next_poll or self.clock.now) + timedelta(seconds=0.01)
        return frames

    def markers(self) -> list[Any]:
        """The markers in the installation's ledger."""
        return Ledger(ledger_path(self.ctx.home)).markers()

    def close(self) -> None:
        self.part.close()
