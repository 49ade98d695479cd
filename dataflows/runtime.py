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
  hand, so bytewax takes a final snapshot and the process exits 0;
- at least every :data:`CONTROL_INTERVAL` seconds it looks in the control store
  (:mod:`dataflows.control`) for a restream request and applies it;
- it writes an error marker (``GET /v1/streams``) while the stream fails, and counts
  the records it reads, in the ledger.

Partition state is a :class:`PartitionState`: what the reader's ``snapshot()`` returns
(small, picklable values: cursor values, seen-file metadata) and the id of the last
restream request applied, stored by bytewax in its recovery snapshots.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows.control import ControlStore, control_path
from dataflows.ledger import Ledger, Marker, ledger_path, marker_time
from dataflows.records import Batch, StreamKey, last_timestamp

if TYPE_CHECKING:
    from dataflows.config import ReceiverConfig, StreamConfig

#: Longest wait between retries of a failing stream, in seconds.
MAX_BACKOFF = 300.0
#: Longest time between two looks at the control store, in seconds.
CONTROL_INTERVAL = 1.0


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

    Readers do no I/O in their constructor and never sleep. They may set
    ``marker_category`` (e.g. ``"query"``) and ``failure_text`` (e.g. ``"Query failed"``)
    for the error markers of their failures.
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


@dataclass
class PartitionState:
    """The recoverable state of one stream's partition.

    :ivar reader: what the reader's ``snapshot()`` returned (cursor values, seen files).
    :ivar restream_id: the last restream request the stream applied (see
        :mod:`dataflows.control`).
    """

    reader: Any
    restream_id: int = 0


class _ReceiverPartition(StatefulSourcePartition[Batch, Any]):
    def __init__(self, receiver: ReceiverConfig, stream: StreamConfig, resume_state: Any,
                 ctx: RunContext, shared: dict[str, Any]) -> None:
        self._receiver = receiver
        self._stream = stream
        self._ctx = ctx
        self._shared = shared
        self._name = receiver.data_receiver_name
        self._key = str(stream.key)
        self._log = logging.getLogger(f"receiver.{self._name}")
        self._ledger = Ledger(ledger_path(ctx.home))
        self._control = ControlStore(control_path(ctx.home))
        if isinstance(resume_state, PartitionState):
            reader_state, self._restream_id = resume_state.reader, resume_state.restream_id
        else:  # first run (None), or the bare reader state of an earlier version
            reader_state, self._restream_id = resume_state, 0
        if resume_state is None:  # starting from scratch already does what any restream asks
            self._restream_id = self._control.pending(self._name, self._key)
            self._control.mark_applied(self._name, self._key, self._restream_id)
        self._reader = receiver.open_stream(stream, reader_state, ctx, shared)
        self._ledger.clear_marker(self._name, stream.asset, stream.stream_type, self._category)  # a new run
        self._log.info("%s: %s from state %s", self._key,
                       "resuming" if resume_state is not None else "starting", self._reader.describe())
        self._failures = 0
        self._poll_at: datetime | None = None
        self._control_checked = 0.0
        self._random = random.Random()

    @property
    def _category(self) -> str:
        return getattr(self._reader, "marker_category", "read")

    def next_batch(self) -> list[Batch]:
        if self._ctx.shutdown.is_set():
            self._log.info("%s: stopping, state %s", self._key, self._reader.describe())
            raise StopIteration
        now = self._ctx.now()
        if time.monotonic() - self._control_checked >= CONTROL_INTERVAL:
            self._apply_control()
        if self._poll_at is not None and now < self._poll_at:
            return []  # woken early to look at the control store only
        try:
            batches, more = self._reader.read()
        except self._reader.retryable as exc:
            self._failed(exc, now)
            return []
        if self._failures:
            self._log.info("%s: recovered after %d failed attempts", self._key, self._failures)
            self._failures = 0
            self._ledger.clear_marker(self._name, self._stream.asset, self._stream.stream_type,
                                      self._category)
        for batch in batches:
            if batch.frame.height:
                self._ledger.record_received(self._name, self._key, batch.frame.height)
        self._poll_at = None if more else now + timedelta(seconds=self._receiver.poll_interval)
        return batches

    def _failed(self, exc: BaseException, now: datetime) -> None:
        self._failures += 1
        delay = backoff_seconds(self._receiver.poll_interval, self._failures, self._random.random())
        state = self._reader.describe()
        self._log.error("%s: read failed (attempt %d, retrying in %.1f s): %s. Current state: %s",
                        self._key, self._failures, delay, exc, state)
        failure = getattr(self._reader, "failure_text", "Read failed")
        self._ledger.set_marker(Marker(
            component=self._name, component_type="Receiver", asset=self._stream.asset,
            stream_type=self._stream.stream_type, category=self._category,
            timestamp=marker_time(now), level="error",
            message=f"{failure}: {exc}. Current state: {state}"))
        self._reader.abandon()
        self._poll_at = now + timedelta(seconds=delay)

    def _apply_control(self) -> None:
        self._control_checked = time.monotonic()
        pending = self._control.pending(self._name, self._key)
        if pending <= self._restream_id:
            return
        self._log.info("%s: restream request %d: state %s goes back to the start", self._key,
                       pending, self._reader.describe())
        self._reader.close()
        self._reader = self._receiver.open_stream(self._stream, None, self._ctx, self._shared)
        self._restream_id = pending
        self._poll_at = None  # read again now
        self._control.mark_applied(self._name, self._key, pending)

    @property
    def next_poll(self) -> datetime | None:
        """When the stream reads next (UTC; None: at once)."""
        return self._poll_at

    def next_awake(self) -> datetime | None:
        if self._poll_at is None:
            return None
        return min(self._poll_at, self._ctx.now() + timedelta(seconds=CONTROL_INTERVAL))

    def snapshot(self) -> PartitionState:
        return PartitionState(self._reader.snapshot(), self._restream_id)

    def close(self) -> None:
        self._reader.close()
        self._ledger.close()
        self._control.close()


class ReceiverSource(FixedPartitionedSource[Batch, Any]):
    """A receiver as a bytewax source: one partition per stream, keyed ``asset:stream_type``.

    Partition state is a :class:`PartitionState`.
    """

    def __init__(self, receiver: ReceiverConfig, ctx: RunContext) -> None:
        self._receiver = receiver
        self._ctx = ctx
        self._streams = {str(s.key): s for s in receiver.stream_list}
        self._shared: dict[str, Any] = {}  # engines, file systems: shared by this worker's partitions

    def list_parts(self) -> list[str]:
        return list(self._streams)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _ReceiverPartition:
        return _ReceiverPartition(self._receiver, self._streams[for_part], resume_state, self._ctx,
                                  self._shared)


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
    progress, acknowledge the batches whose receiver waits for delivery, stamp the
    transmit's last success, and log a progress line per non-empty batch
    (``<stream>: +N <noun>, M delivered, last timestamp T``)."""
    if any(batch.frame.height for batch in items):
        ledger.mark_success(transmit)
    for batch in items:
        stream = str(batch.stream)
        latest = last_timestamp(batch.frame)
        total = ledger.record_delivery(transmit, stream, batch.frame.height, latest)
        if batch.ack_key is not None:
            ledger.ack(batch.receiver, stream, batch.ack_key, transmit)
        if batch.frame.height:
            log.info("%s: +%d %s, %d delivered, last timestamp %s", stream, batch.frame.height,
                     noun, total, latest or "-")
