"""Store-and-forward for a transmit whose endpoint can be down for long (Kafka, MQTT): the
spool, its sink partition and the forwarder processes that drain it.

A transmit declares a spool with :meth:`~dataflows.sdk.TransmitConfig.spool_bytes`; its
sink (:mod:`dataflows.delivery`) then builds a :class:`SpooledTransmitPartition`, so one
transmit's outage never holds back the others beyond a bounded buffer:

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

Implements "Operation" (store-and-forward) of ``shared/specs/factorytx-digest.md``; see
``docs/delivery.md``.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec
import polars as pl
from bytewax.outputs import StatelessSinkPartition

from dataflows.backoff import ENDPOINT_BACKOFF
from dataflows.context import RunContext
from dataflows.diskspace import wait_for_space
from dataflows.ledger import Ledger, ledger_path
from dataflows.outbox import Entry, Outbox, shard_of, take_drainer_lock
from dataflows.positions import Update
from dataflows.records import Batch, StreamKey, last_timestamp
from dataflows.report import TransmitReport
from dataflows.sdk import TransactionalWriter

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dataflows.sdk import TransmitConfig, TransmitWriter

__all__ = ["DRAIN_SECONDS", "SpooledTransmitPartition", "spool_path", "spooled_batches"]

#: Longest time a stopping forwarder spends draining its spool, in seconds.
DRAIN_SECONDS = 20.0
#: Most bytes of spooled batches handed to the writer at once.
_FORWARD_BYTES = 64 * 1024 * 1024
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


class SpooledTransmitPartition(StatelessSinkPartition[Batch]):
    """Store-and-forward for a transmit with a spool, on one worker; see the module
    docstring. The forwarders start here, one per worker (``forwarders``), in the worker
    that holds the spool's ``forwarder.lock``."""

    def __init__(self, config: TransmitConfig, ctx: RunContext, budget: int, forwarders: int = 1) -> None:
        self._config = config
        self._ctx = ctx
        self._budget = budget
        self._name = config.transmit_name
        self._log = logging.getLogger(f"transmit.{self._name}")
        path = spool_path(ctx, self._name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._spool = Outbox(path)
        self._spool.keep_positions(ctx.recovery_generation())
        self._report = TransmitReport(Ledger(ledger_path(ctx.home)), self._name, config.record_noun)
        self._forwarders: list[_ForwarderProcess] = []
        self._lock = take_drainer_lock(path.with_name("forwarder.lock"))
        if self._lock is not None:
            streams = sorted({str(key) for (_, key), transmits in ctx.expected_transmits.items()
                              if self._name in transmits})
            self._forwarders = [_ForwarderProcess(config, ctx.home, path, _Shard(k, forwarders, streams))
                                for k in range(forwarders)]

    def write_batch(self, items: list[Batch]) -> None:
        fresh = self._spool.fresh(items)  # what the spool stored before a crash is not stored again
        rows = [(str(b.stream), last_timestamp(b.frame), _encode(b)) for b, _ in fresh if b.frame.height]
        update = Update.merge([u for _, u in fresh])
        def full(message: str | None) -> None:
            self._report.outbox_full(items, message)

        self._spool.wait_for_room(sum(len(body) for _, _, body in rows), self._budget, self._ctx.shutdown,
                                  self._log, full)
        wait_for_space(lambda: self._spool.append(rows, update), self._spool.path.parent, self._ctx.shutdown,
                       self._log, full)
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
        self._ctx = RunContext(home=self._home, shard=self._shard.index)
        self._closing = closing
        self._wake = wake
        threading.Thread(target=self._relay_stop, name=f"{self.thread_name}-stop", daemon=True).start()
        self._forward()

    def _relay_stop(self) -> None:
        """Set the writer's ``ctx.shutdown`` once the dataflow stops: a writer waiting on a
        dead endpoint then gives up (:class:`~dataflows.report.AckWait`), the spool keeps
        the batches, and the stop is not held for the whole drain."""
        while not self._closing.wait(1.0):
            pass
        self._ctx.shutdown.set()

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
                        writer = self._open(spool, report)
                    entries = spool.peek(1000, _FORWARD_BYTES, self._mine)
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
                if isinstance(writer, TransactionalWriter):  # a new one learns what was committed
                    writer, closing_writer = None, writer
                    closing_writer.close()
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

    @property
    def _mine(self) -> Callable[[str], bool] | None:
        return self._shard.mine if self._shard.of > 1 else None

    def _open(self, spool: Outbox, report: TransmitReport) -> TransmitWriter:
        """The transmit's writer; a transactional one (exactly once) first learns what the
        endpoint committed, and what of that the spool still holds is deleted."""
        writer = self._config.open_writer(self._ctx, report)
        if not isinstance(writer, TransactionalWriter):
            return writer
        self._spool_id = spool.identity()
        try:
            marks = writer.committed(self._spool_id)
        except BaseException:
            writer.close()
            raise
        mine = self._mine
        committed = spool.through({s: m for s, m in marks.items() if mine is None or mine(s)})
        if committed:
            self._log.info("%d batches in the spool were committed before the last stop: deleted, not sent "
                           "again", len(committed))
            self._delivered(spool, report, committed)
        return writer

    def _send(self, writer: TransmitWriter, spool: Outbox, report: TransmitReport,
              entries: list[Entry]) -> bool:
        batches = [_decode(entry.body) for entry in entries]
        try:
            if isinstance(writer, TransactionalWriter):
                marks: dict[str, int] = {}
                for entry in entries:
                    marks[entry.stream] = entry.id
                writer.write_marked(batches, self._spool_id, marks)
            else:
                writer.write(batches)
        except Exception as exc:  # the endpoint failed: keep the batches, say why, retry
            report.failed(str(exc))
            self._log.error("%s", exc)
            return False
        self._delivered(spool, report, entries, batches)
        return True

    def _delivered(self, spool: Outbox, report: TransmitReport, entries: list[Entry],
                   batches: list[Batch] | None = None) -> None:
        """Delete delivered ``entries`` (decoded: ``batches``) from the spool and count them."""
        spool.delete(entries)
        report.count(batches if batches is not None else [_decode(entry.body) for entry in entries])
        report.drained(spool)  # acknowledged already, when they were spooled


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
        self._path = path
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

    def _waiting(self) -> int:
        """The batches left in the spool (-1: it cannot be read)."""
        try:
            spool = Outbox(self._path)
        except Exception:  # noqa: BLE001 - only for the stop's log line
            return -1
        try:
            return spool.depth()[0]
        finally:
            spool.close()

    def stop(self, timeout: float = DRAIN_SECONDS + 5) -> None:
        """Ask the forwarder to drain and stop; wait for it (``timeout`` seconds), then end
        it, with a warning only when records are left in the spool."""
        self.ask_to_stop()
        self._process.join(timeout)
        if self._process.is_alive():
            waiting = self._waiting()
            if waiting:
                self._log.warning("the forwarder is still waiting for the endpoint; %s in the spool are sent "
                                  "at the next start", f"{waiting} batches" if waiting > 0 else "the batches")
            else:  # everything was acknowledged: nothing to worry an operator about
                self._log.info("the forwarder had not ended %.0f s after the stop, with nothing left in the "
                               "spool; ended it", timeout)
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
