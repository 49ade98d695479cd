"""The sender side of a durable outbox (:mod:`dataflows.outbox`): the writer that stores a
transmit's encoded records (:class:`OutboxWriter`) and the sender thread that drains them
to the endpoint (:class:`OutboxSender`), with the two ways a send can fail
(:class:`SendFailed`, retried; :class:`Refused`, paused until the settings change).

Implements "Operation" (store-and-forward) of ``shared/specs/factorytx-digest.md``: the
Sight Machine (``remotedatapost``) and Authentise transmits implement only
:meth:`OutboxSender.send`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import tenacity

from dataflows.backoff import ENDPOINT_BACKOFF
from dataflows.diskspace import wait_for_space
from dataflows.ledger import Ledger, ledger_path
from dataflows.outbox import Entry, Outbox, start_drainer
from dataflows.positions import Update
from dataflows.records import Batch
from dataflows.report import TransmitReport

if TYPE_CHECKING:
    from dataflows.context import RunContext

__all__ = ["OutboxSender", "OutboxWriter", "Refused", "SendFailed"]

#: About how many bytes of encoded records an outbox writer stores in one commit.
_STORE_BYTES = 2 * 1024 * 1024


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

    :param outbox: the outbox connection this sender (thread) owns.
    :param report: the transmit's ledger handle this sender (thread) owns (its own
        connection; it names the transmit and what a record is called).
    :param fingerprint: the settings digest a pause is kept under.
    :param settings: the settings' names, for the paused message ("base_url, API_key or ...").
    :param max_records: most entries per :meth:`send`.
    :param max_bytes: most bytes of bodies per :meth:`send` (one larger entry goes alone).
    :param sleep: waits the given seconds or until stopped; tests inject their own.
    :param clock: monotonic seconds.
    """

    def __init__(self, outbox: Outbox, report: TransmitReport, fingerprint: str, settings: str, *,
                 max_records: int = 1, max_bytes: int = 1 << 62,
                 stop: threading.Event | None = None, wake: threading.Event | None = None,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.report = report
        self.fingerprint = fingerprint
        self.settings = settings
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.stop = stop or threading.Event()
        self.wake = wake or threading.Event()
        self._sleep = sleep or self.stop.wait
        self._clock = clock
        self.log = report.log
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
        """Release the endpoint's client (the outbox and report are the caller's)."""


class OutboxWriter:
    """The writer of a store-and-forward transmit: ``write`` stores the encoded records in
    the transmit's outbox (``$FACTORYFLOW_HOME/components/<transmit_name>/outbox.sqlite``)
    and returns ``"stored"``; one sender thread per outbox (across workers and processes,
    held by ``sender.lock``) drains it.

    :param encode: a batch's records as ``(timestamp or None, body)`` pairs.
    :param make_sender: the sender over an outbox connection and a report (ledger
        connection) of its own, with the writer's stop and wake events.
    :param budget: the outbox's disk budget in bytes; when full, ``write`` waits.
    :param join_seconds: how long ``close`` waits for the sender thread.
    :param where: the endpoint, for the start-up log line.
    """

    def __init__(self, transmit: str, ctx: RunContext, report: TransmitReport,
                 encode: Callable[[Batch], list[tuple[str | None, bytes]]],
                 make_sender: Callable[[Outbox, TransmitReport, threading.Event, threading.Event], OutboxSender],
                 budget: int, join_seconds: float, where: str) -> None:
        self._ctx = ctx
        self._report = report
        self._encode = encode
        self._make_sender = make_sender
        self._budget = budget
        self._join_seconds = join_seconds
        directory = ctx.component_dir(transmit)
        self._outbox = Outbox(directory / "outbox.sqlite")
        self._outbox.keep_positions(ctx.recovery_generation())
        self._log = logging.getLogger(f"transmit.{transmit}")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock, self._thread = start_drainer(directory / "sender.lock", self._send, f"sender-{transmit}")
        if self._thread is not None:
            self._log.info("sending to %s (outbox: %d %s)", where, self._outbox.depth()[0], report.noun)

    def _send(self) -> None:
        report = TransmitReport(Ledger(ledger_path(self._ctx.home)), self._report.transmit, self._report.noun)
        sender = self._make_sender(Outbox(self._outbox.path), report, self._stop, self._wake)
        try:
            sender.run()
        finally:
            sender.close()
            sender.outbox.close()
            report.close()

    def write(self, batches: list[Batch]) -> Literal["stored"]:
        """Store the batches' records durably; the sender delivers them later. They are
        encoded and stored about :data:`_STORE_BYTES` at a time, so the encoded records of
        a big epoch never sit in memory all at once; each piece with the source positions
        its records reach, so records read again after a crash are not stored twice."""
        rows: list[tuple[str, str | None, bytes]] = []
        updates: list[Update] = []
        size = 0
        for batch, update in self._outbox.fresh(batches):
            updates.append(update)
            if batch.frame.height:
                stream = str(batch.stream)
                encoded = [(stream, timestamp, body) for timestamp, body in self._encode(batch)]
                rows.extend(encoded)
                size += sum(len(body) for _, _, body in encoded)
            if size >= _STORE_BYTES:
                self._store(rows, Update.merge(updates), size, batches)
                rows, updates, size = [], [], 0
        self._store(rows, Update.merge(updates), size, batches)
        return "stored"  # durably in the outbox: the receiver may act on it

    def _store(self, rows: list[tuple[str, str | None, bytes]], update: Update, size: int,
               batches: list[Batch]) -> None:
        if not rows and update.empty:
            return
        def full(message: str | None) -> None:
            self._report.outbox_full(batches, message)

        self._outbox.wait_for_room(size, self._budget, self._ctx.shutdown, self._log, full)
        wait_for_space(lambda: self._outbox.append(rows, update), self._outbox.path.parent, self._ctx.shutdown,
                       self._log, full)
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
