"""What every receiver shares at run time: the bytewax source and its partitions.

Each receiver is one :class:`ReceiverSource` (a bytewax ``FixedPartitionedSource``)
with one partition per stream, keyed ``asset:stream_type``. A connector supplies only a
:class:`~dataflows.sdk.StreamReader` for one stream; :class:`_ReceiverPartition` does
the rest:

- it never blocks in ``next_batch``: when the reader has nothing ready it sets
  ``next_awake`` to the next poll (``poll_interval`` seconds later);
- when the reader fails with one of its retryable errors, it logs the error with the
  stream and the current state, asks the reader to drop the work in hand (the state
  stays at the last batch handed on) and retries with the one backoff policy
  (:func:`dataflows.backoff.stream_backoff`: the ``poll_interval`` doubled per
  consecutive failure, capped at 30 s, with up to 10 % jitter; a reader may bring its
  own, ``StreamReader.retry_policy``); the other streams keep running;
- when the reader reports bad input it skipped (a malformed file), it logs it and marks
  the stream (category ``input``), and reading goes on;
- when shutdown is requested (SIGTERM/SIGINT) it ends the stream after the batch in
  hand, so bytewax takes a final snapshot and the process exits 0;
- at least every :data:`CONTROL_INTERVAL` seconds (by the run context's clock, like
  every time the runtime keeps) it looks in the control store
  (:mod:`dataflows.control`) for a restream request and applies it: the reader is
  closed and opened again with no state, as on a first run;
- it writes an error marker (``GET /v1/streams``) while the stream fails, and counts
  the records it reads, in the ledger.

Partition state is a :class:`PartitionState`: what the reader's ``snapshot()`` returns
(small, picklable values: cursor values, seen-file metadata) and the id of the last
restream request applied, stored by bytewax in its recovery snapshots.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.backoff import stream_backoff
from dataflows.context import RunContext
from dataflows.control import ControlStore, control_path
from dataflows.ledger import Ledger, Marker, ledger_path, marker_time
from dataflows.records import Batch
from dataflows.sdk import StreamReader

if TYPE_CHECKING:
    from dataflows.sdk import ReceiverConfig, StreamConfig

__all__ = ["CONTROL_INTERVAL", "PartitionState", "ReceiverSource", "RunContext", "StreamReader"]

#: Longest time between two looks at the control store, in seconds.
CONTROL_INTERVAL = 1.0
#: The marker category of input read with a problem (``StreamReader.report_warning``).
INPUT_WARNING = "input warning"


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
                 ctx: RunContext, worker: Any) -> None:
        self._receiver = receiver
        self._stream = stream
        self._ctx = ctx
        self._worker = worker
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
        self._reader = receiver.open_stream(stream, reader_state, ctx, worker)
        for category in (self._category, "input", INPUT_WARNING):  # a new run
            self._ledger.clear_marker(self._name, stream.asset, stream.stream_type, category)
        self._log.info("%s: %s from state %s", self._key,
                       "resuming" if resume_state is not None else "starting", self._reader.describe())
        self._failures = 0
        self._backoff = self._reader.retry_policy or stream_backoff(receiver.poll_interval)
        self._poll_at: datetime | None = None
        self._control_checked: datetime | None = None

    @property
    def _category(self) -> str:
        return self._reader.marker_category

    def next_batch(self) -> list[Batch]:
        if self._ctx.shutdown.is_set():
            self._log.info("%s: stopping, state %s", self._key, self._reader.describe())
            raise StopIteration
        now = self._ctx.now()
        if self._control_checked is None or now - self._control_checked >= timedelta(seconds=CONTROL_INTERVAL) \
                or now < self._control_checked:  # the clock went back
            self._apply_control(now)
        if self._poll_at is not None and now < self._poll_at:
            return []  # woken early to look at the control store only
        try:
            batches, more = self._reader.read()
        except self._reader.retryable as exc:
            self._bad_input(now)
            self._failed(exc, now)
            return []
        self._bad_input(now)
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

    def _bad_input(self, now: datetime) -> None:
        reports = [("input", "error", m) for m in self._reader.take_bad_input()]
        reports += [(INPUT_WARNING, "warning", m) for m in self._reader.take_warnings()]
        for category, level, message in reports:
            self._log.log(logging.ERROR if level == "error" else logging.WARNING, "%s: %s", self._key,
                          message)
            self._ledger.set_marker(Marker(
                component=self._name, component_type="Receiver", asset=self._stream.asset,
                stream_type=self._stream.stream_type, category=category, timestamp=marker_time(now),
                level=level, message=message))

    def _failed(self, exc: BaseException, now: datetime) -> None:
        self._failures += 1
        delay = self._backoff.delay(self._failures)
        state = self._reader.describe()
        self._log.error("%s: read failed (attempt %d, retrying in %.1f s): %s. Current state: %s",
                        self._key, self._failures, delay, exc, state)
        failure = self._reader.failure_text
        self._ledger.set_marker(Marker(
            component=self._name, component_type="Receiver", asset=self._stream.asset,
            stream_type=self._stream.stream_type, category=self._category,
            timestamp=marker_time(now), level="error",
            message=f"{failure}: {exc}. Current state: {state}"))
        self._reader.abandon()
        self._poll_at = now + timedelta(seconds=delay)

    def _apply_control(self, now: datetime) -> None:
        self._control_checked = now
        pending = self._control.pending(self._name, self._key)
        if pending <= self._restream_id:
            return
        self._log.info("%s: restream request %d: state %s goes back to the start", self._key,
                       pending, self._reader.describe())
        self._reader.close()
        self._reader = self._receiver.open_stream(self._stream, None, self._ctx, self._worker)
        self._restream_id = pending
        self._poll_at = None  # read again now
        for category in ("input", INPUT_WARNING):
            self._ledger.clear_marker(self._name, self._stream.asset, self._stream.stream_type, category)
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
        self._worker_lock = threading.Lock()
        self._worker: tuple[Any] | None = None  # what open_worker returned, once asked

    def list_parts(self) -> list[str]:
        return list(self._streams)

    def worker(self) -> Any:
        """What the receiver's streams in this process share (``open_worker``, called once)."""
        with self._worker_lock:
            if self._worker is None:
                self._worker = (self._receiver.open_worker(self._ctx),)
            return self._worker[0]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _ReceiverPartition:
        return _ReceiverPartition(self._receiver, self._streams[for_part], resume_state, self._ctx,
                                  self.worker())
