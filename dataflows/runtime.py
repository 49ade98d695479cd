"""What every receiver shares at run time: the bytewax source and its partitions.

Each receiver is one :class:`ReceiverSource` (a bytewax ``FixedPartitionedSource``)
with one partition per stream, keyed ``asset:stream_type``. A connector supplies only a
:class:`~dataflows.sdk.StreamReader` for one stream; :class:`_ReceiverPartition` does
the rest:

- it never blocks in ``next_batch``: when the reader has nothing ready it sets
  ``next_awake`` to the next poll (``poll_interval`` seconds later, rounded up to
  :data:`WAKE_TICK`, or a tenth of a shorter ``poll_interval``, so streams that poll at
  nearly the same time wake together);
- a poll whose reader says it is ``quiet()`` (nothing new, known without I/O: a file
  stream whose share of the shared listing did not change) skips the read: an idle
  stream costs a few microseconds a poll, and its read thread ends after
  :data:`THREAD_IDLE_SECONDS` without a read;
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

The partitions of a worker share one ledger connection, and those of a process one
connection to the control store (:class:`~dataflows.control.SharedControl`), so 10,000
streams hold a few SQLite connections, not 20,000.

Partition state is a :class:`PartitionState`: what the reader's ``snapshot()`` returns
(small, picklable values: cursor values, seen-file metadata) and the id of the last
restream request applied, stored by bytewax in its recovery snapshots.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.backoff import stream_backoff
from dataflows.context import RunContext
from dataflows.control import SharedControl, control_path
from dataflows.diskspace import Shortage
from dataflows.ledger import Ledger, Marker, ledger_path, marker_time
from dataflows.records import Batch
from dataflows.sdk import StreamReader
from dataflows.storage import SharedStorage

if TYPE_CHECKING:
    from dataflows.sdk import ReceiverConfig, StreamConfig

__all__ = ["CONTROL_INTERVAL", "PartitionState", "ReceiverSource", "RunContext", "StreamReader"]

#: Longest time between two looks at the control store, in seconds.
CONTROL_INTERVAL = 1.0
_CONTROL_INTERVAL = timedelta(seconds=CONTROL_INTERVAL)
#: The marker category of input read with a problem (``StreamReader.report_warning``).
INPUT_WARNING = "input warning"
#: The marker category of a stream whose read has not returned for :data:`STALL_SECONDS`.
STALLED = "stalled"
#: The marker category of every stream and transmit while a volume is below its floor.
DISK_FULL = "disk full"
#: How long a read may run (seconds) before its stream is marked stalled.
STALL_SECONDS = 20.0
#: How often (seconds) a partition whose read runs on looks whether it returned.
READ_CHECK = 0.01
#: Idle streams wake on multiples of this many seconds, or of a tenth of a shorter
#: ``poll_interval`` (see :func:`_on_tick`).
WAKE_TICK = 0.1
#: Seconds a stream's read thread waits for its next read before it ends.
THREAD_IDLE_SECONDS = 30.0


@dataclass
class PartitionState:
    """The recoverable state of one stream's partition.

    :ivar reader: what the reader's ``snapshot()`` returned (cursor values, seen files).
    :ivar restream_id: the last restream request the stream applied (see
        :mod:`dataflows.control`).
    """

    reader: Any
    restream_id: int = 0


@dataclass
class _ReadOutcome:
    """What one read in the stream's thread gave: its batches, whether more are ready,
    the reader's state after them (``snapshot()``, taken in the same thread), the bad
    input and warnings it reported, and the retryable error it failed with (the reader
    then dropped its work in hand, and ``description`` is its state)."""

    batches: list[Batch]
    more: bool
    state: Any
    bad_input: list[str]
    warnings: list[str]
    failure: BaseException | None = None
    description: str = ""


class _ReaderThread:
    """The thread a stream's reader does its I/O in, one call at a time, so a read that
    blocks (a database that stopped answering, a share that hangs) holds this thread only,
    never the worker's other partitions. A daemon: a read that never returns does not keep
    the process from exiting."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        """Run ``job`` after the ones before it; its result (or exception) comes in the future."""
        future: Future[Any] = Future()
        with self._lock:
            self._jobs.put((future, job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        return future

    def stop(self) -> None:
        """End the thread after the jobs already submitted."""
        with self._lock:
            if self._thread is not None:
                self._jobs.put(None)

    def _next(self) -> tuple[Future[Any], Callable[[], Any]] | None:
        """The next job; None: stop. A thread with no job for :data:`THREAD_IDLE_SECONDS`
        ends (the next job starts another), so idle streams hold no threads."""
        while True:
            try:
                return self._jobs.get(timeout=THREAD_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return None

    def _run(self) -> None:
        while (item := self._next()) is not None:
            future, job = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:  # noqa: BLE001 - handed to the worker, which raises it
                    future.set_exception(exc)


def _on_tick(moment: datetime, tick: float) -> datetime:
    """``moment`` rounded up to a multiple of ``tick`` seconds (UTC): streams
    that poll at nearly the same time wake together, so bytewax, which looks over every
    partition of the source at each wake-up, wakes a few times a poll, not once a stream."""
    late = moment.timestamp() % tick if tick > 0 else 0.0
    return moment + timedelta(seconds=tick - late) if late else moment


class _ReceiverPartition(StatefulSourcePartition[Batch, Any]):
    def __init__(self, receiver: ReceiverConfig, stream: StreamConfig, resume_state: Any,
                 ctx: RunContext, worker: Any, control: SharedControl, ledgers: SharedStorage[Ledger]) -> None:
        self._receiver = receiver
        self._stream = stream
        self._ctx = ctx
        self._worker = worker
        self._name = receiver.data_receiver_name
        self._key = str(stream.key)
        self._log = logging.getLogger(f"receiver.{self._name}")
        # one ledger per worker thread (bytewax calls a partition only from its worker)
        self._ledgers, self._worker_thread = ledgers, threading.get_ident()
        self._ledger = ledgers.acquire(self._worker_thread)
        control.acquire()
        self._control = control
        if isinstance(resume_state, PartitionState):
            reader_state, self._restream_id = resume_state.reader, resume_state.restream_id
        else:  # first run (None), or the bare reader state of an earlier version
            reader_state, self._restream_id = resume_state, 0
        if resume_state is None:  # starting from scratch already does what any restream asks
            self._restream_id = self._control.pending(self._name, self._key, ctx.now())
            self._control.mark_applied(self._name, self._key, self._restream_id)
        try:
            self._reader = receiver.open_stream(stream, reader_state, ctx, worker)
        except BaseException:
            self._release_shared()
            raise
        self._state = self._reader.snapshot()  # after the last batch handed on
        for category in (self._category, "input", INPUT_WARNING, STALLED):  # a new run
            self._ledger.clear_marker(self._name, stream.asset, stream.stream_type, category)
        self._log.info("%s: %s from state %s", self._key,
                       "resuming" if resume_state is not None else "starting", self._reader.describe())
        self._failures = 0
        self._failure_text = ""  # the cause of the failure last logged
        self._failed_since = ctx.now()  # when the failures began
        self._backoff = self._reader.retry_policy or stream_backoff(receiver.poll_interval)
        self._poll_at: datetime | None = None
        self._poll_interval = timedelta(seconds=receiver.poll_interval)
        self._tick = min(WAKE_TICK, receiver.poll_interval / 10)  # a tenth of a short poll (0: none)
        self._control_checked: datetime | None = None
        self._thread = _ReaderThread("read-" + f"{self._name}-{self._key}".replace(" ", "_"))  # one word in logs
        self._read: Future[_ReadOutcome] | None = None  # the read in the stream's thread
        self._read_started = 0.0  # time.monotonic() when it started
        self._stalled = False  # whether the stream is marked for a read that does not return

    @property
    def _category(self) -> str:
        return self._reader.marker_category

    def next_batch(self) -> list[Batch]:
        if self._ctx.shutdown.is_set():
            self._log.info("%s: stopping, state %s", self._key,
                           self._reader.describe() if self._read is None else repr(self._state))
            raise StopIteration
        now = self._ctx.now()
        control_due = self._control_checked is None or now < self._control_checked \
            or now - self._control_checked >= _CONTROL_INTERVAL  # or the clock went back
        if self._read is None and self._ctx.disk is not None:
            shortage = self._ctx.disk.low()
            if shortage is not None:
                self._hold_for_space(shortage)
                return []
        if self._read is None:
            if control_due:
                self._apply_control(now)
                control_due = False
            if self._poll_at is not None and now < self._poll_at:
                return []  # woken early to look at the control store only
            if not self._failures and self._reader.quiet():
                self._poll_at = now + self._poll_interval
                return []  # nothing new: no read
            self._start_read()
        outcome = self._outcome(now)
        if outcome is None:
            return []
        if control_due and self._apply_control(now):  # the read was in flight when it came
            return []  # the read's batches belong to the state the restream dropped
        return self._handed_on(outcome, now)

    def _hold_for_space(self, shortage: Shortage) -> None:
        """Hold the worker while a volume the job writes is below its floor: no read, no
        epoch closed, no snapshot written; the outbox senders and spool forwarders, apart
        from the worker, go on delivering. Every stream and its transmits are marked
        (category ``disk full``) meanwhile; a stop ends the wait."""
        assert self._ctx.disk is not None
        waiting = "reading waits for space; what the job holds is delivered meanwhile"
        self._mark_everything(f"{shortage.describe()}: {waiting}")
        waited = self._ctx.disk.wait_while_low(self._ctx.shutdown, self._log, waiting)
        if not self._ctx.shutdown.is_set():
            self._log.info("disk space is back: reading goes on after %.0f s", waited)
        self._mark_everything(None)

    def _mark_everything(self, message: str | None) -> None:
        """Set (or clear, ``None``) the ``disk full`` marker of every stream and transmit."""
        now = self._ctx.now()
        for (receiver, key), transmits in self._ctx.expected_transmits.items():
            components = [(receiver, "Receiver")] + [(t.split("@")[0], "Transmit") for t in sorted(transmits)]
            for component, kind in components:
                try:
                    if message is None:
                        self._ledger.clear_marker(component, key.asset, key.stream_type, DISK_FULL)
                    else:
                        self._ledger.set_marker(Marker(
                            component=component, component_type=kind, asset=key.asset,
                            stream_type=key.stream_type, category=DISK_FULL, timestamp=marker_time(now),
                            level="error", message=message))
                except sqlite3.Error as exc:  # the ledger's own volume may be the full one
                    self._log.warning("the disk-full marker could not be written: %s", exc)
                    return

    def _start_read(self) -> None:
        self._read = self._thread.submit(self._read_once)
        self._read_started = time.monotonic()

    def _read_once(self) -> _ReadOutcome:
        """One read, in the stream's thread."""
        reader = self._reader
        try:
            batches, more = reader.read()
        except reader.retryable as exc:
            description = reader.describe()
            reader.abandon()
            return _ReadOutcome([], False, reader.snapshot(), reader.take_bad_input(), reader.take_warnings(),
                                exc, description)
        return _ReadOutcome(batches, more, reader.snapshot(), reader.take_bad_input(), reader.take_warnings())

    def _outcome(self, now: datetime) -> _ReadOutcome | None:
        """The read's outcome, once it returned: waited for up to the context's
        ``read_wait`` seconds after it started; None while it runs on (the stream is
        marked once it ran :data:`STALL_SECONDS`)."""
        assert self._read is not None
        wait = self._ctx.read_wait
        if wait is not None:
            wait = max(0.0, self._read_started + wait - time.monotonic())
        try:
            outcome = self._read.result(timeout=wait)
        except FutureTimeout:
            running = time.monotonic() - self._read_started
            if running >= STALL_SECONDS and not self._stalled:
                self._stalled = True
                message = (f"a read has not returned for {running:.0f} s (the source may have stopped "
                           f"answering); the other streams go on. State: {self._state!r}")
                self._log.warning("%s: %s", self._key, message)
                self._set_marker(STALLED, "warning", message, now)
            return None
        finally:
            if self._read.done():
                self._read = None
        if self._stalled:
            self._stalled = False
            self._log.info("%s: the read returned after %.0f s", self._key,
                           time.monotonic() - self._read_started)
            self._ledger.clear_marker(self._name, self._stream.asset, self._stream.stream_type, STALLED)
        return outcome

    def _handed_on(self, outcome: _ReadOutcome, now: datetime) -> list[Batch]:
        """The read's batches, for bytewax; logs and marks what the read reported."""
        self._state = outcome.state
        self._bad_input(outcome, now)
        if outcome.failure is not None:
            self._failed(outcome.failure, outcome.description, now)
            return []
        if self._failures:
            self._log.info("%s: recovered after %d failed attempts over %.1f s", self._key, self._failures,
                           (now - self._failed_since).total_seconds())
            self._failures = 0
            self._ledger.clear_marker(self._name, self._stream.asset, self._stream.stream_type,
                                      self._category)
        for batch in outcome.batches:
            if batch.frame.height:
                self._ledger.record_received(self._name, self._key, batch.frame.height)
        self._poll_at = None if outcome.more else now + self._poll_interval
        if outcome.more and self._ctx.read_wait is not None:
            self._start_read()  # read on while the worker hands these batches on
        if self._restream_id:  # positions count anew after a restream (dataflows.positions)
            return [b if b.position is None else
                    replace(b, position=replace(b.position, generation=self._restream_id))
                    for b in outcome.batches]
        return outcome.batches

    def _set_marker(self, category: str, level: str, message: str, now: datetime) -> None:
        self._ledger.set_marker(Marker(
            component=self._name, component_type="Receiver", asset=self._stream.asset,
            stream_type=self._stream.stream_type, category=category, timestamp=marker_time(now),
            level=level, message=message))

    def _bad_input(self, outcome: _ReadOutcome, now: datetime) -> None:
        reports = [("input", "error", m) for m in outcome.bad_input]
        reports += [(INPUT_WARNING, "warning", m) for m in outcome.warnings]
        for category, level, message in reports:
            self._log.log(logging.ERROR if level == "error" else logging.WARNING, "%s: %s", self._key,
                          message)
            self._set_marker(category, level, message, now)

    def _failed(self, exc: BaseException, state: str, now: datetime) -> None:
        self._failures += 1
        delay = self._backoff.delay(self._failures)
        # one line per outage, and one when its cause changes: not one per retry
        text = next(iter(str(exc).splitlines()), "")  # a first line stays; request ids below it do not
        level = logging.ERROR if self._failures == 1 or text != self._failure_text else logging.DEBUG
        self._failure_text = text
        if self._failures == 1:
            self._failed_since = now
        self._log.log(level, "%s: read failed (attempt %d, retrying in %.1f s): %s. Current state: %s",
                      self._key, self._failures, delay, exc, state)
        message = f"{self._reader.failure_text}: {exc}. Current state: {state}"
        self._set_marker(self._category, "error", message, now)
        self._poll_at = now + timedelta(seconds=delay)

    def _apply_control(self, now: datetime) -> bool:
        """Apply a pending restream request (no read in flight); whether there was one."""
        self._control_checked = now
        pending = self._control.pending(self._name, self._key, now)
        if pending <= self._restream_id:
            return False
        self._log.info("%s: restream request %d: state %s goes back to the start", self._key,
                       pending, self._reader.describe())
        self._reader.close()
        self._reader = self._receiver.open_stream(self._stream, None, self._ctx, self._worker)
        self._state = self._reader.snapshot()
        self._restream_id = pending
        self._poll_at = None  # read again now
        for category in ("input", INPUT_WARNING):
            self._ledger.clear_marker(self._name, self._stream.asset, self._stream.stream_type, category)
        self._control.mark_applied(self._name, self._key, pending)
        return True

    @property
    def next_poll(self) -> datetime | None:
        """When the stream reads next (UTC; None: at once)."""
        return self._poll_at

    def next_awake(self) -> datetime | None:
        if self._read is not None:  # look again soon whether it returned
            return self._ctx.now() + timedelta(seconds=READ_CHECK)
        if self._poll_at is None:
            return None
        return _on_tick(min(self._poll_at, self._ctx.now() + _CONTROL_INTERVAL), self._tick)

    def snapshot(self) -> PartitionState:
        return PartitionState(self._state, self._restream_id)

    def close(self) -> None:
        if self._read is None:
            self._reader.close()
        else:  # closed in its thread once the read returns; a read that never does is left to the exit
            self._thread.submit(self._reader.close)
        self._thread.stop()
        self._release_shared()

    def _release_shared(self) -> None:
        self._ledgers.release(self._worker_thread)
        self._control.release()


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
        self._control = SharedControl(control_path(ctx.home))  # the partitions' restream requests
        self._ledgers = SharedStorage(lambda: Ledger(ledger_path(ctx.home)))  # one per worker thread

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
                                  self.worker(), self._control, self._ledgers)
