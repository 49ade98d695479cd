"""What every receiver shares at run time: the bytewax source, its partitions, the run context.

Each receiver is one :class:`ReceiverSource` (a bytewax ``FixedPartitionedSource``)
with one partition per stream, keyed ``asset:stream_type``. A connector supplies only a
:class:`StreamReader` for one stream; :class:`_ReceiverPartition` does the rest:

- it never blocks in ``next_batch``: when the reader has nothing ready it sets
  ``next_awake`` to the next poll (``poll_interval`` seconds later);
- when the reader fails with one of its retryable errors, it logs the error with the
  stream and the current state, asks the reader to drop the work in hand (the state
  stays at the last batch handed on) and retries with exponential backoff: the
  ``poll_interval`` doubled per consecutive failure, capped at :data:`MAX_BACKOFF`
  seconds, with up to 10 % jitter; the other streams keep running;
- when shutdown is requested (SIGTERM/SIGINT) it ends the stream after the batch in
  hand, so bytewax takes a final snapshot and the process exits 0.

Partition state is what the reader's ``snapshot()`` returns: small, picklable values
(cursor values, seen-file metadata) that bytewax stores in its recovery snapshots.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows.ledger import Ledger
from dataflows.records import Batch, StreamKey, last_timestamp

if TYPE_CHECKING:
    from dataflows.config import ReceiverConfig, StreamConfig

#: Longest wait between retries of a failing stream, in seconds.
MAX_BACKOFF = 300.0


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunContext:
    """What components need from the running installation.

    :ivar home: ``$FACTORYFLOW_HOME``: component data and state live below it.
    :ivar shutdown: set when the dataflow should stop gracefully.
    :ivar now: the clock (UTC-aware); tests inject their own.
    :ivar expected_transmits: for ``(receiver name, stream)``, the transmits its records
        reach; a receiver waiting for delivery needs an acknowledgement from each.
    """

    home: Path
    shutdown: threading.Event = field(default_factory=threading.Event)
    now: Callable[[], datetime] = utcnow
    expected_transmits: Mapping[tuple[str, StreamKey], frozenset[str]] = field(default_factory=dict)

    def component_dir(self, name: str) -> Path:
        """``$FACTORYFLOW_HOME/components/<name>``, the data directory of a component."""
        return self.home / "components" / name


class StreamReader(Protocol):
    """Reads one stream of a receiver; built by ``ReceiverConfig.open_stream``.

    Readers do no I/O in their constructor and never sleep.
    """

    #: Exceptions that mean "try again later" (connection refused, file busy, ...).
    retryable: tuple[type[BaseException], ...]

    def read(self) -> tuple[list[Batch], bool]:
        """The batches ready now, and whether more are ready without waiting for a poll."""
        ...

    def snapshot(self) -> Any:
        """The state after the last batch returned by :meth:`read` (picklable)."""
        ...

    def describe(self) -> str:
        """The state in a few words, for logs and markers (``{'id': 0}``, ``3 files seen``)."""
        ...

    def abandon(self) -> None:
        """Drop work in hand after a failure; the next :meth:`read` starts from the state."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


def backoff_seconds(poll_interval: float, failures: int, jitter: float) -> float:
    """Wait before retry number ``failures`` (1-based): doubling, capped, with ``jitter`` in [0, 1)."""
    base = min(poll_interval * 2 ** (failures - 1), MAX_BACKOFF)
    return base * (1 + 0.1 * jitter)


class _ReceiverPartition(StatefulSourcePartition[Batch, Any]):
    def __init__(self, receiver: ReceiverConfig, stream: StreamConfig, reader: StreamReader,
                 ctx: RunContext) -> None:
        self._receiver = receiver
        self._stream = stream
        self._reader = reader
        self._ctx = ctx
        self._log = logging.getLogger(f"receiver.{receiver.data_receiver_name}")
        self._failures = 0
        self._next_awake: datetime | None = None
        self._random = random.Random()

    def next_batch(self) -> list[Batch]:
        if self._ctx.shutdown.is_set():
            self._log.info("%s: stopping, state %s", self._stream.key, self._reader.describe())
            raise StopIteration
        try:
            batches, more = self._reader.read()
        except self._reader.retryable as exc:
            self._failures += 1
            delay = backoff_seconds(self._receiver.poll_interval, self._failures, self._random.random())
            self._log.error("%s: read failed (attempt %d, retrying in %.1f s): %s. Current state: %s",
                            self._stream.key, self._failures, delay, exc, self._reader.describe())
            self._reader.abandon()
            self._next_awake = self._ctx.now() + timedelta(seconds=delay)
            return []
        if self._failures:
            self._log.info("%s: recovered after %d failed attempts", self._stream.key, self._failures)
            self._failures = 0
        self._next_awake = None if more else self._ctx.now() + timedelta(
            seconds=self._receiver.poll_interval)
        return batches

    def next_awake(self) -> datetime | None:
        return self._next_awake

    def snapshot(self) -> Any:
        return self._reader.snapshot()

    def close(self) -> None:
        self._reader.close()


class ReceiverSource(FixedPartitionedSource[Batch, Any]):
    """A receiver as a bytewax source: one partition per stream, keyed ``asset:stream_type``."""

    def __init__(self, receiver: ReceiverConfig, ctx: RunContext) -> None:
        self._receiver = receiver
        self._ctx = ctx
        self._streams = {str(s.key): s for s in receiver.stream_list}
        self._shared: dict[str, Any] = {}  # engines, file systems: shared by this worker's partitions

    def list_parts(self) -> list[str]:
        return list(self._streams)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _ReceiverPartition:
        stream = self._streams[for_part]
        reader = self._receiver.open_stream(stream, resume_state, self._ctx, self._shared)
        logging.getLogger(f"receiver.{self._receiver.data_receiver_name}").info(
            "%s: %s from state %s", stream.key, "resuming" if resume_state is not None else "starting",
            reader.describe())
        return _ReceiverPartition(self._receiver, stream, reader, self._ctx)


class TransmitSink(DynamicSink[Batch]):
    """The bytewax sink of a transmit: one ``partition(config, ctx)`` per worker.

    :param partition: builds a worker's sink partition; its ``write_batch`` returns only
        once the write is durable.
    """

    def __init__(self, partition: Callable[[Any, RunContext], StatelessSinkPartition[Batch]],
                 config: Any, ctx: RunContext) -> None:
        self._partition = partition
        self._config = config
        self._ctx = ctx

    def build(self, step_id: str, worker_index: int,
              worker_count: int) -> StatelessSinkPartition[Batch]:
        return self._partition(self._config, self._ctx)


def record_delivered(ledger: Ledger, transmit: str, items: list[Batch], log: logging.Logger,
                     noun: str = "records") -> None:
    """After a durable write of ``items`` by ``transmit``: count each batch in the ledger's
    progress, acknowledge the batches whose receiver waits for delivery, and log a progress
    line per non-empty batch (``<stream>: +N <noun>, M delivered, last timestamp T``)."""
    for batch in items:
        stream = str(batch.stream)
        latest = last_timestamp(batch.frame)
        total = ledger.record_delivery(transmit, stream, batch.frame.height, latest)
        if batch.ack_key is not None:
            ledger.ack(batch.receiver, stream, batch.ack_key, transmit)
        if batch.frame.height:
            log.info("%s: +%d %s, %d delivered, last timestamp %s", stream, batch.frame.height,
                     noun, total, latest or "-")
