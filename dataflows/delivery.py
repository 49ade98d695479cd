"""What every transmit shares at run time: the bytewax sink around a connector's writer,
and the transmit's accounting in the delivery ledger.

A connector supplies only a :class:`~dataflows.sdk.TransmitWriter` (``write`` returns
once the batches are durable). :class:`TransmitSink` builds one per worker and, after
each write:

- ``"delivered"``: counts the records per stream in the ledger's progress, stamps the
  transmit's last success, acknowledges the batches whose receiver waits for delivery
  (``delete_completed``) and logs a progress line per stream
  (``<stream>: +N records, M delivered, last timestamp T``);
- ``"stored"`` (a durable outbox): acknowledges the batches only; the outbox's sender
  reports what it delivers through the same :class:`TransmitReport`;
- a raised exception: records it as the transmit's last error (``/v1/status``) and
  re-raises, so the dataflow stops before its next snapshot and no receiver state runs
  ahead of delivery.

A transmit whose endpoint can be down for long (Kafka) declares a spool
(:meth:`~dataflows.sdk.TransmitConfig.spool_bytes`). Its sink is then store-and-forward,
so one transmit's outage never holds back the others beyond a bounded buffer:

- ``write_batch`` stores the batches in the transmit's spool
  (``$FACTORYFLOW_HOME/components/<transmit_name>/spool.sqlite``, one row per batch:
  its Arrow IPC frame and where it came from), commits, acknowledges them and returns;
  when the spool holds its budget of bytes, it waits (backpressure) unless the dataflow
  is stopping;
- one forwarder per dataflow worker (``-w`` times the processes), each a process of its
  own (so the writer's per-record work does not share the dataflow's GIL; its log lines
  come back to the dataflow's log) forwarding a shard of the streams (each stream with
  one forwarder, so its batches stay in order), hands the oldest batches to the
  connector's writer and deletes them only once the writer
  returned (the endpoint has them), then counts and logs them; a failed write is
  recorded as the transmit's last error and retried with the one backoff policy, the
  batches kept;
- at a stop, the forwarder drains what it can for up to :data:`DRAIN_SECONDS`; what is
  left is sent at the next start. Nothing is lost: at-least-once, as everywhere.

Implements the delivery guarantee of ``shared/specs/factorytx-digest.md`` ("Operation");
see ``docs/delivery.md``.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import polars as pl
import tenacity
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from dataflows.backoff import ENDPOINT_BACKOFF
from dataflows.ledger import Ledger, Marker, ledger_path, marker_time
from dataflows.outbox import Entry, Outbox, shard_of, start_drainer, take_drainer_lock
from dataflows.records import Batch, StreamKey, last_timestamp

if TYPE_CHECKING:
    from pathlib import Path

    from dataflows.sdk import RecoverableWriter, RunContext, TransmitConfig, TransmitWriter

__all__ = ["DRAIN_SECONDS", "OutboxSender", "OutboxWriter", "Refused", "SendFailed", "TransmitReport",
           "TransmitSink", "spooled_batches"]

#: The marker category of a stream held back by a full outbox or spool.
OUTBOX_FULL = "outbox full"
#: Longest time a stopping forwarder spends draining its spool, in seconds.
DRAIN_SECONDS = 20.0
#: Most bytes of spooled batches handed to the writer at once.
_FORWARD_BYTES = 64 * 1024 * 1024
#: About how many bytes of encoded records an outbox writer stores in one commit.
_STORE_BYTES = 8 * 1024 * 1024
#: A forwarder process that lived this long before it ended is restarted at once, in seconds.
_STEADY_SECONDS = 60.0


class _SpooledBatch(msgspec.Struct, array_like=True):
    receiver: str
    asset: str
    stream_type: str
    source: str
    ack_key: str | None
    frame: bytes  # Arrow IPC


def _encode(batch: Batch) -> bytes:
    buffer = io.BytesIO()
    batch.frame.write_ipc(buffer)
    return msgspec.msgpack.encode(_SpooledBatch(batch.receiver, batch.stream.asset, batch.stream.stream_type,
                                                batch.source, batch.ack_key, buffer.getvalue()))


def _decode(body: bytes) -> Batch:
    stored = msgspec.msgpack.decode(body, type=_SpooledBatch)
    return Batch(stored.receiver, StreamKey(stored.asset, stored.stream_type),
                 pl.read_ipc(io.BytesIO(stored.frame)), stored.source, stored.ack_key)


def spool_path(ctx: RunContext, transmit: str) -> Path:
    """Where the spool of ``transmit`` lives."""
    return ctx.component_dir(transmit) / "spool.sqlite"


def spooled_batches(path: Path) -> list[Batch]:
    """The batches waiting in the spool file at ``path``, oldest first (for tests and tools)."""
    if not path.exists():
        return []
    spool = Outbox(path)
    try:
        return [_decode(entry.body) for entry in spool.peek(1 << 62, 1 << 62)]
    finally:
        spool.close()


class TransmitReport:
    """One transmit's handle on the delivery ledger: deliveries, errors, outbox depth, pause.

    :param ledger: the connection it writes through (one per thread; it closes it).
    :param transmit: the ``transmit_name``.
    :param noun: what a record is called in progress lines.
    """

    def __init__(self, ledger: Ledger, transmit: str, noun: str = "records") -> None:
        self.ledger = ledger
        self.transmit = transmit
        self.noun = noun
        self.log = logging.getLogger(f"transmit.{transmit}")

    def delivered(self, parts: Iterable[tuple[str, int, str | None]]) -> None:
        """``(stream, records, latest timestamp)`` parts reached the endpoint in one delivery:
        count each in the ledger and log a progress line per part with records, then stamp
        the transmit's last success once (one ledger write, not one per part)."""
        success = False
        for stream, records, last in parts:
            total = self.ledger.record_delivery(self.transmit, stream, records, last)
            if records:
                success = True
                self.log.info("%s: +%d %s, %d delivered, last timestamp %s", stream, records, self.noun,
                              total, last or "-")
        if success:
            self.ledger.mark_success(self.transmit)

    def count(self, batches: list[Batch]) -> None:
        """Every record of ``batches`` reached the endpoint: count and log them, one part
        per stream (a write of many small files' batches is one line per stream)."""
        parts: dict[str, tuple[int, str | None]] = {}
        for batch in batches:
            stream = str(batch.stream)
            records, last = parts.get(stream, (0, None))
            latest = last_timestamp(batch.frame)
            parts[stream] = (records + batch.frame.height,
                             max(last, latest) if last is not None and latest is not None else last or latest)
        self.delivered((stream, records, last) for stream, (records, last) in parts.items())

    def batches_delivered(self, batches: list[Batch]) -> None:
        """Every record of ``batches`` reached the endpoint: count, acknowledge and log them."""
        self.count(batches)
        self.acknowledge(batches)

    def acknowledge(self, batches: list[Batch]) -> None:
        """``batches`` are durable: acknowledge those whose receiver waits for delivery."""
        for batch in batches:
            if batch.ack_key is not None:
                self.ledger.ack(batch.receiver, str(batch.ack_stream()), batch.ack_key,
                                batch.ack_name(self.transmit))

    def failed(self, message: str) -> None:
        """A delivery failed: record ``message`` as the transmit's last error."""
        self.ledger.mark_error(self.transmit, message)

    def outbox_full(self, batches: list[Batch], message: str | None) -> None:
        """Mark each stream of ``batches`` (category ``outbox full``, warning) while the
        transmit waits for room in its outbox or spool: the receivers are held back, nothing
        is dropped. ``None``: the wait is over, the markers go."""
        for key in {batch.stream for batch in batches}:
            if message is None:
                self.ledger.clear_marker(self.transmit, key.asset, key.stream_type, OUTBOX_FULL)
            else:
                self.ledger.set_marker(Marker(
                    component=self.transmit, component_type="Transmit", asset=key.asset,
                    stream_type=key.stream_type, category=OUTBOX_FULL, timestamp=marker_time(), level="warning",
                    message=f"{message}; the receivers wait, nothing is dropped"))

    def outbox(self, records: int, size: int) -> None:
        """The transmit's outbox holds ``records`` records of ``size`` bytes."""
        self.ledger.mark_outbox(self.transmit, records, size)

    def drained(self, outbox: Outbox) -> None:
        """After a delivery out of ``outbox``: record its depth, and once it is empty give
        its disk space back (:meth:`~dataflows.outbox.Outbox.reclaim`), saying how much."""
        depth = outbox.depth()
        self.outbox(*depth)
        if depth[0] == 0:
            reclaimed = outbox.reclaim()
            if reclaimed is not None:
                self.log.info("%s drained: %.1f MB on disk given back (%.1f MB now)", outbox.path.name,
                              reclaimed / 1e6, outbox.disk_bytes() / 1e6)

    def pause(self, fingerprint: str | None) -> None:
        """Pause delivery under the settings ``fingerprint`` (``None``: resume)."""
        self.ledger.pause(self.transmit, fingerprint)

    def paused_fingerprint(self) -> str | None:
        """The settings fingerprint the transmit is paused under, or None."""
        return self.ledger.paused_fingerprint(self.transmit)

    def close(self) -> None:
        """Close the ledger connection."""
        self.ledger.close()


class _TransmitPartition(StatelessSinkPartition[Batch]):
    def __init__(self, config: TransmitConfig, ctx: RunContext) -> None:
        self._report = TransmitReport(Ledger(ledger_path(ctx.home)), config.transmit_name,
                                      config.record_noun)
        try:
            self._writer: TransmitWriter = config.open_writer(ctx, self._report)
        except BaseException:
            self._report.close()
            raise

    def write_batch(self, items: list[Batch]) -> None:
        try:
            written = self._writer.write(items)
        except Exception as exc:
            self._report.failed(str(exc))
            raise
        if written == "delivered":
            self._report.batches_delivered(items)
        else:
            self._report.acknowledge(items)

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._report.close()


class _RecoverableTransmitPartition(StatefulSinkPartition[Batch, Any]):
    """A :class:`_TransmitPartition` whose writer's state is snapshotted with the epoch."""

    def __init__(self, config: TransmitConfig, ctx: RunContext, resume_state: Any) -> None:
        self._inner = _TransmitPartition(config, ctx)
        self._writer: RecoverableWriter = self._inner._writer  # type: ignore[assignment]
        try:
            self._writer.resume(resume_state)
        except BaseException:
            self._inner.close()
            raise

    def write_batch(self, values: list[Batch]) -> None:
        self._inner.write_batch(values)

    def snapshot(self) -> Any:
        return self._writer.snapshot()

    def close(self) -> None:
        self._inner.close()


class RecoverableTransmitSink(FixedPartitionedSink[Batch, Any]):
    """The sink of a recoverable transmit (:class:`~dataflows.sdk.RecoverableWriter`): one
    partition, ``"0"``, on one worker, whose writer's state bytewax snapshots with the
    receivers' so a crash replays nothing twice into it. The flow keys its batches on
    ``"0"``. Building it does no I/O."""

    PART = "0"

    def __init__(self, config: TransmitConfig, ctx: RunContext) -> None:
        self._config = config
        self._ctx = ctx

    def list_parts(self) -> list[str]:
        return [self.PART]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _RecoverableTransmitPartition:
        return _RecoverableTransmitPartition(self._config, self._ctx, resume_state)


class _SpooledTransmitPartition(StatelessSinkPartition[Batch]):
    """Store-and-forward for a transmit with a spool; see the module docstring."""

    def __init__(self, config: TransmitConfig, ctx: RunContext, budget: int, forwarders: int = 1) -> None:
        self._config = config
        self._ctx = ctx
        self._budget = budget
        self._name = config.transmit_name
        self._log = logging.getLogger(f"transmit.{self._name}")
        path = spool_path(ctx, self._name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._spool = Outbox(path)
        self._report = TransmitReport(Ledger(ledger_path(ctx.home)), self._name, config.record_noun)
        self._forwarders: list[_ForwarderProcess] = []
        self._lock = take_drainer_lock(path.with_name("forwarder.lock"))
        if self._lock is not None:
            streams = sorted({str(key) for (_, key), transmits in ctx.expected_transmits.items()
                              if self._name in transmits})
            self._forwarders = [_ForwarderProcess(config, ctx.home, path, _Shard(k, forwarders, streams))
                                for k in range(forwarders)]

    def write_batch(self, items: list[Batch]) -> None:
        rows = [(str(b.stream), last_timestamp(b.frame), _encode(b)) for b in items if b.frame.height]
        self._spool.wait_for_room(sum(len(body) for _, _, body in rows), self._budget, self._ctx.shutdown,
                                  self._log, lambda message: self._report.outbox_full(items, message))
        self._spool.append(rows)
        self._report.outbox(*self._spool.depth())
        self._report.acknowledge(items)  # durable in the spool: the receiver may act on it
        if rows:
            for forwarder in self._forwarders:
                forwarder.wake()

    def close(self) -> None:
        for forwarder in self._forwarders:
            forwarder.ask_to_stop()
        for forwarder in self._forwarders:
            forwarder.stop()
        if self._lock is not None:
            self._lock.close()
        self._spool.close()
        self._report.close()


class _Forwarder:
    """The loop that drains one spool into the transmit's writer (see the module
    docstring). It runs in a process of its own (:class:`_ForwarderProcess`), so the
    writer's per-record work (Kafka's ``produce()``) does not share the dataflow's GIL.

    :param shard: the streams it forwards: one forwarder per dataflow worker, each stream
        with one of them, so a stream's batches stay in order.
    """

    def __init__(self, config: TransmitConfig, home: Path, path: Path, shard: _Shard) -> None:
        self._config = config
        self._home = home
        self._path = path
        self._shard = shard
        self._name = config.transmit_name
        self._log = logging.getLogger(f"transmit.{self._name}")
        self.thread_name = f"forwarder-{self._name}" if shard.of == 1 else f"forwarder-{self._name}-{shard.index}"

    def run(self, closing: Any, wake: Any) -> None:
        """Drain until closed.

        :param closing: a :class:`_Signal` set when the dataflow stops: drain for up to
            :data:`DRAIN_SECONDS`, then return.
        :param wake: a :class:`_Signal` set when a batch was spooled.
        """
        from dataflows.sdk import RunContext

        self._ctx = RunContext(home=self._home)
        self._closing = closing
        self._wake = wake
        self._forward()

    def _forward(self) -> None:
        spool = Outbox(self._path)
        report = TransmitReport(Ledger(ledger_path(self._ctx.home)), self._name, self._config.record_noun)
        writer: TransmitWriter | None = None
        failures = 0
        drain_until: float | None = None
        try:
            while True:
                if self._closing.is_set() and drain_until is None:
                    drain_until = time.monotonic() + DRAIN_SECONDS
                try:
                    if writer is None:
                        writer = self._config.open_writer(self._ctx, report)
                    entries = spool.peek(1000, _FORWARD_BYTES, self._shard.mine if self._shard.of > 1 else None)
                    if not entries:
                        if drain_until is not None:
                            return
                        self._wake.wait(1.0)
                        continue
                    if drain_until is not None and time.monotonic() > drain_until:
                        self._log.info("stopping with %d batches in the spool: they are sent at the "
                                       "next start", spool.depth()[0])
                        return
                    sent = self._send(writer, spool, report, entries)
                except Exception as exc:  # a dead forwarder would stall the transmit silently
                    self._log.exception("the forwarder failed")
                    report.failed(f"forwarder failed: {exc!r}")
                    sent = False
                if sent:
                    failures = 0
                    continue
                failures += 1
                if drain_until is not None:
                    return  # stopping: the endpoint is down, the spool keeps the batches
                delay = ENDPOINT_BACKOFF.delay(failures)
                self._log.warning("retry %d in %.1f s (%d batches wait in the spool)", failures, delay,
                                  spool.depth()[0])
                self._closing.wait(delay)
        finally:
            if writer is not None:
                writer.close()
            spool.close()
            report.close()

    def _send(self, writer: TransmitWriter, spool: Outbox, report: TransmitReport,
              entries: list[Entry]) -> bool:
        batches = [_decode(entry.body) for entry in entries]
        try:
            writer.write(batches)
        except Exception as exc:  # the endpoint failed: keep the batches, say why, retry
            report.failed(str(exc))
            self._log.error("%s", exc)
            return False
        spool.delete(entries)
        report.count(batches)  # acknowledged already, when they were spooled
        report.drained(spool)
        return True


class _Shard:
    """Shard ``index`` of ``of``, over the ``streams`` the transmit is sent
    (:func:`~dataflows.outbox.shard_of`)."""

    def __init__(self, index: int, of: int, streams: list[str]) -> None:
        self.index = index
        self.of = of
        self.streams = streams
        self._mine: dict[str, bool] = {}

    def mine(self, stream: str) -> bool:
        """Whether ``stream`` (``asset:stream_type``) is in this shard."""
        if stream not in self._mine:
            self._mine[stream] = shard_of(stream, self.streams, self.of) == self.index
        return self._mine[stream]


class _ForwarderProcess:
    """A :class:`_Forwarder` in a spawned process of its own, kept running.

    - its log records come back through a pipe and are handled by this process's loggers
      (the same handlers, files and secret redaction as every other line);
    - it ignores SIGINT and SIGTERM: :meth:`stop` ends it, after it drained the spool for
      up to :data:`DRAIN_SECONDS`;
    - on Linux it dies with the thread that started it (``PR_SET_PDEATHSIG``), so a
      SIGKILLed dataflow leaves no forwarder behind (the spool keeps what it held);
    - one that ends on its own (killed by the kernel's OOM killer, a crash in the client
      library) is logged and replaced by a new one, after the endpoint backoff when it
      lived less than :data:`_STEADY_SECONDS`; the spool kept what it had not sent.

    Each process gets its own signals and log pipe, so nothing a killed one held is
    reused.
    """

    def __init__(self, config: TransmitConfig, home: Path, path: Path, shard: _Shard) -> None:
        import multiprocessing

        self._mp = multiprocessing.get_context("spawn")
        self._forwarder = _Forwarder(config, home, path, shard)
        self._name = self._forwarder.thread_name
        self._log = logging.getLogger(f"transmit.{config.transmit_name}")
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._start()
        self._keeper = threading.Thread(target=self._keep_running, name=f"{self._name}-keeper", daemon=True)
        self._keeper.start()

    def _start(self) -> None:
        self._wake, self._closing = _Signal(self._mp, sticky=False), _Signal(self._mp, sticky=True)
        self._records, sender = self._mp.Pipe(duplex=False)
        self._process = self._mp.Process(
            target=_forwarder_main, name=self._name, daemon=True,
            args=(self._forwarder, self._closing, self._wake, sender, logging.getLogger().getEffectiveLevel(),
                  os.getpid()))
        self._process.start()
        sender.close()  # the child holds the only writing end: its exit ends the relay
        self._started = time.monotonic()

    def wake(self) -> None:
        """Tell the forwarder a batch was spooled."""
        self._wake.set()

    def _keep_running(self) -> None:
        deaths = 0
        while True:
            while True:
                try:
                    record = self._records.recv()
                except (EOFError, OSError):  # the forwarder exited (or was killed mid-record)
                    break
                except Exception:  # noqa: BLE001 - one unreadable line; the pipe's framing holds
                    self._log.exception("a log line of the forwarder could not be read")
                    continue
                logging.getLogger(record.name).handle(record)
            self._process.join(5)
            with self._lock:
                if self._stopping.is_set():
                    return
                lived = time.monotonic() - self._started
                deaths = deaths + 1 if lived < _STEADY_SECONDS else 1
                delay = ENDPOINT_BACKOFF.delay(deaths) if deaths > 1 else 0.0
                self._log.error("the forwarder process ended on its own (exit code %s) after %.0f s; "
                                "starting a new one in %.1f s (the spool kept what it had not sent)",
                                self._process.exitcode, lived, delay)
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._records.close()
                self._start()

    def ask_to_stop(self) -> None:
        """Ask the forwarder to drain and stop, without waiting."""
        with self._lock:
            self._stopping.set()
            self._closing.set()
            self._wake.set()

    def stop(self) -> None:
        """Ask the forwarder to drain and stop; wait for it (``DRAIN_SECONDS`` + 5 s)."""
        self.ask_to_stop()
        self._process.join(DRAIN_SECONDS + 5)
        if self._process.is_alive():
            self._log.warning("the forwarder is still waiting for the endpoint; what it holds is "
                              "sent again at the next start")
            self._process.kill()
            self._process.join()
        self._keeper.join(5)
        self._records.close()


class _Signal:
    """A one-way signal from the job to its forwarder process, on a semaphore: setting it
    never blocks, even when the process was killed while waiting for it
    (``multiprocessing.Event.set`` waits for every waiter to wake, forever for a killed one).

    :param sticky: once seen set, it stays set (``closing``); otherwise each :meth:`wait`
        consumes what was set before it (``wake``).
    """

    def __init__(self, mp: Any, sticky: bool) -> None:
        self._semaphore = mp.Semaphore(0)
        self._sticky = sticky
        self._seen = False

    def set(self) -> None:
        """Signal the process (never blocks)."""
        self._semaphore.release()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`set`; whether it was set."""
        if self._seen:
            return True
        acquired = self._semaphore.acquire(timeout=timeout) if timeout > 0 else self._semaphore.acquire(False)
        if not acquired:
            return False
        while self._semaphore.acquire(False):  # every set() so far is seen
            pass
        self._seen = self._sticky
        return True

    def is_set(self) -> bool:
        """Whether it was set, without waiting."""
        return self.wait(0)


class _PipeQueue:
    """What :class:`logging.handlers.QueueHandler` needs of a queue, over a pipe's end."""

    def __init__(self, connection: Any) -> None:
        self.put_nowait = connection.send


def _forwarder_main(forwarder: _Forwarder, closing: Any, wake: Any, records: Any, level: int,
                    parent: int) -> None:
    """The forwarder process: logs to the pipe ``records``, dies with its parent, runs the loop."""
    import logging.handlers
    import signal

    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    threading.current_thread().name = forwarder.thread_name
    root = logging.getLogger()
    root.handlers = [logging.handlers.QueueHandler(_PipeQueue(records))]  # type: ignore[arg-type]
    root.setLevel(level)
    forwarder.run(closing, wake)


class TransmitSink(DynamicSink[Batch]):
    """The bytewax sink of a transmit: one writer per worker, wrapped with the accounting
    above (store-and-forward through a spool when the transmit declares one). Building it
    does no I/O; each worker's partition opens its writer."""

    def __init__(self, config: TransmitConfig, ctx: RunContext) -> None:
        self._config = config
        self._ctx = ctx

    def build(self, step_id: str, worker_index: int,
              worker_count: int) -> StatelessSinkPartition[Batch]:
        budget = self._config.spool_bytes()
        if budget is not None:
            return _SpooledTransmitPartition(self._config, self._ctx, budget, worker_count)
        return _TransmitPartition(self._config, self._ctx)


# --------------------------------------------------------------------------- durable outboxes


class Refused(Exception):
    """The endpoint refused the transmit's credentials (HTTP 401 or 403 at login or post):
    the sender pauses until the settings they came from change."""


class SendFailed(Exception):
    """A send failed in a way worth retrying: a non-2xx answer, a timeout, a transport error."""


class OutboxSender:
    """Drains a transmit's durable outbox (:class:`~dataflows.outbox.Outbox`) to its endpoint,
    oldest first: the sender thread's loop of every store-and-forward transmit (Sight
    Machine, Authentise), usable on its own in tests.

    A subclass implements :meth:`send` (one request, or the requests one delivery takes)
    and may override :meth:`due` (whether a partial request should wait). Entries are
    deleted only after :meth:`send` returned; :class:`SendFailed` is retried with the
    endpoint backoff (:data:`~dataflows.backoff.ENDPOINT_BACKOFF`: 1 s doubling, capped,
    with jitter) until it succeeds or the sender is stopped; :class:`Refused` pauses the
    transmit with an error marker until ``fingerprint`` (a digest of the settings the
    endpoint judges) changes, across restarts.

    :param transmit: the ``transmit_name``.
    :param noun: what a record is called in progress lines.
    :param outbox: the outbox connection this sender (thread) owns.
    :param ledger: the ledger connection this sender (thread) owns.
    :param fingerprint: the settings digest a pause is kept under.
    :param settings: the settings' names, for the paused message ("base_url, API_key or ...").
    :param max_records: most entries per :meth:`send`.
    :param max_bytes: most bytes of bodies per :meth:`send` (one larger entry goes alone).
    :param sleep: waits the given seconds or until stopped; tests inject their own.
    :param clock: monotonic seconds.
    """

    def __init__(self, transmit: str, noun: str, outbox: Outbox, ledger: Ledger, fingerprint: str,
                 settings: str, *, max_records: int = 1, max_bytes: int = 1 << 62,
                 stop: threading.Event | None = None, wake: threading.Event | None = None,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.ledger = ledger
        self.report = TransmitReport(ledger, transmit, noun)
        self.fingerprint = fingerprint
        self.settings = settings
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.stop = stop or threading.Event()
        self.wake = wake or threading.Event()
        self._sleep = sleep or self.stop.wait
        self._clock = clock
        self.log = logging.getLogger(f"transmit.{transmit}")
        self.paused = False

    def send(self, entries: list[Entry]) -> None:
        """Deliver ``entries`` to the endpoint.

        :raises Refused: the endpoint refused the credentials.
        :raises SendFailed: anything worth retrying.
        """
        raise NotImplementedError

    def due(self, entries: list[Entry]) -> bool:
        """Whether ``entries`` (fewer than a full request, or all there is) go now (default: yes)."""
        return True

    def wait_seconds(self) -> float:
        """How long an idle sender waits for new entries before looking again."""
        return 1.0

    def resume_or_stay_paused(self) -> None:
        """At start: stay paused if paused under the same settings, else clear the pause."""
        paused_under = self.report.paused_fingerprint()
        if paused_under == self.fingerprint:
            self.paused = True
            self.log.error("paused: the endpoint refused these credentials before; change %s to "
                           "resume (%d %s wait in the outbox)", self.settings, self.outbox.depth()[0],
                           self.report.noun)
        elif paused_under is not None:
            self.report.pause(None)
            self.log.info("settings changed since the endpoint refused them: resuming")

    def run(self) -> None:
        """Send until stopped."""
        self.resume_or_stay_paused()
        while not self.stop.is_set():
            if self.paused:
                self.stop.wait(1.0)
                continue
            try:
                if not self.send_once():
                    self.wake.wait(self.wait_seconds())
                    self.wake.clear()
            except tenacity.RetryError:
                break  # stopped while retrying; the outbox keeps the records
            except Exception as exc:  # a dead sender would stall delivery silently: log, go on
                self.log.exception("sender failed; trying again in 10 s")
                self.report.failed(f"sender failed: {exc!r}")
                self.stop.wait(10.0)

    def send_once(self, force: bool = False) -> bool:
        """Send the next entries if due (``force``: whatever is stored, now).

        :returns: whether a send was made (or the transmit paused).
        :raises tenacity.RetryError: stopped while retrying a failing endpoint.
        """
        entries = self.outbox.peek(self.max_records, self.max_bytes)
        if not entries:
            return False
        full = len(entries) == self.max_records or self.outbox.depth()[0] > len(entries)
        if not (force or full or self.due(entries)):
            return False
        try:
            tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(SendFailed), wait=ENDPOINT_BACKOFF.wait(),
                stop=lambda _state: self.stop.is_set(), sleep=self._sleep,
                before_sleep=self._before_retry)(self.send, entries)
        except Refused as refused:
            self.paused = True
            self.report.pause(self.fingerprint)
            self.report.failed(str(refused))
            self.log.error("%s; the transmit is paused until %s change (%d %s wait in the outbox)",
                           refused, self.settings, self.outbox.depth()[0], self.report.noun)
            return True
        self.outbox.delete(entries)
        per_stream: dict[str, list[Entry]] = {}
        for entry in entries:
            per_stream.setdefault(entry.stream, []).append(entry)
        self.report.delivered((stream, len(part), max((e.timestamp for e in part if e.timestamp), default=None))
                              for stream, part in per_stream.items())
        self.report.drained(self.outbox)
        return True

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        self.report.failed(str(failure))
        self.log.warning("%s; retry %d in %.1f s (%d %s wait in the outbox)", failure,
                         state.attempt_number, wait, self.outbox.depth()[0], self.report.noun)

    def close(self) -> None:
        """Release the endpoint's client (the outbox and ledger are the caller's)."""


class OutboxWriter:
    """The writer of a store-and-forward transmit: ``write`` stores the encoded records in
    the transmit's outbox (``$FACTORYFLOW_HOME/components/<transmit_name>/outbox.sqlite``)
    and returns ``"stored"``; one sender thread per outbox (across workers and processes,
    held by ``sender.lock``) drains it.

    :param encode: a batch's records as ``(timestamp or None, body)`` pairs.
    :param make_sender: the sender over an outbox and ledger connection of its own, with
        the writer's stop and wake events.
    :param budget: the outbox's disk budget in bytes; when full, ``write`` waits.
    :param join_seconds: how long ``close`` waits for the sender thread.
    :param where: the endpoint, for the start-up log line.
    """

    def __init__(self, transmit: str, ctx: RunContext, report: TransmitReport,
                 encode: Callable[[Batch], list[tuple[str | None, bytes]]],
                 make_sender: Callable[[Outbox, Ledger, threading.Event, threading.Event], OutboxSender],
                 budget: int, join_seconds: float, where: str) -> None:
        self._ctx = ctx
        self._report = report
        self._encode = encode
        self._make_sender = make_sender
        self._budget = budget
        self._join_seconds = join_seconds
        directory = ctx.component_dir(transmit)
        self._outbox = Outbox(directory / "outbox.sqlite")
        self._log = logging.getLogger(f"transmit.{transmit}")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock, self._thread = start_drainer(directory / "sender.lock", self._send, f"sender-{transmit}")
        if self._thread is not None:
            self._log.info("sending to %s (outbox: %d %s)", where, self._outbox.depth()[0], report.noun)

    def _send(self) -> None:
        sender = self._make_sender(Outbox(self._outbox.path), Ledger(ledger_path(self._ctx.home)),
                                   self._stop, self._wake)
        try:
            sender.run()
        finally:
            sender.close()
            sender.outbox.close()
            sender.ledger.close()

    def write(self, batches: list[Batch]) -> Literal["stored"]:
        """Store the batches' records durably; the sender delivers them later. They are
        encoded and stored about :data:`_STORE_BYTES` at a time, so the encoded records of
        a big epoch never sit in memory all at once."""
        rows: list[tuple[str, str | None, bytes]] = []
        size = 0
        for batch in batches:
            if batch.frame.height:
                stream = str(batch.stream)
                encoded = [(stream, timestamp, body) for timestamp, body in self._encode(batch)]
                rows.extend(encoded)
                size += sum(len(body) for _, _, body in encoded)
            if size >= _STORE_BYTES:
                self._store(rows, size, batches)
                rows, size = [], 0
        self._store(rows, size, batches)
        return "stored"  # durably in the outbox: the receiver may act on it

    def _store(self, rows: list[tuple[str, str | None, bytes]], size: int, batches: list[Batch]) -> None:
        if not rows:
            return
        self._outbox.wait_for_room(size, self._budget, self._ctx.shutdown, self._log,
                                   lambda message: self._report.outbox_full(batches, message))
        self._outbox.append(rows)
        self._report.outbox(*self._outbox.depth())
        self._wake.set()

    def close(self) -> None:
        """Stop the sender (it finishes the request in hand, up to ``join_seconds``)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self._join_seconds)
        if self._lock is not None:
            self._lock.close()
        self._outbox.close()
