"""One transmit's handle on the delivery ledger (:class:`TransmitReport`): what the sinks,
the spool's forwarders and the outbox senders record after a delivery, a failure or a
wait for room.

Implements the delivery accounting of ``shared/specs/factorytx-digest.md`` ("Operation"):
progress counts and lines per stream, the transmit's last success and last error
(``/v1/status``), acknowledgements for receivers that wait for delivery
(``delete_completed``), the outbox depth and the pause on refused credentials.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from dataflows.ledger import Ledger, Marker, marker_time
from dataflows.records import Batch, last_timestamp

if TYPE_CHECKING:
    from dataflows.outbox import Outbox

__all__ = ["OUTBOX_FULL", "AckWait", "TransmitReport", "WriteInterrupted"]

#: Shortest time between a transmit's progress lines, in seconds: each stream's deliveries in
#: between are summed into its next line.
PROGRESS_SECONDS = 10.0
#: More streams than this delivered since the last progress lines get one line summing them up.
PROGRESS_STREAMS = 10
#: The marker category of a stream held back by a full outbox or spool.
OUTBOX_FULL = "outbox full"


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
        self._progress_lock = threading.RLock()
        self._pending: dict[str, tuple[int, str | None, int]] = {}  # stream -> (records, last, total)
        self._logged_at = -math.inf
        self._seen: set[str] = set()  # streams with a progress line
        self._timer: threading.Timer | None = None

    def delivered(self, parts: Iterable[tuple[str, int, str | None]]) -> None:
        """``(stream, records, latest timestamp)`` parts reached the endpoint in one delivery:
        count each in the ledger, then stamp the transmit's last success once (one ledger
        write, not one per part). Progress lines are logged at a stream's first delivery,
        then at most every :data:`PROGRESS_SECONDS` (:meth:`_log_progress`)."""
        success = False
        with self._progress_lock:
            for stream, records, last in parts:
                total = self.ledger.record_delivery(self.transmit, stream, records, last)
                if records:
                    success = True
                    if stream not in self._seen:  # a stream's first delivery is logged at once
                        self._seen.add(stream)
                        self._logged_at = -math.inf
                    pending, latest, _ = self._pending.get(stream, (0, None, 0))
                    self._pending[stream] = (pending + records, max(filter(None, (latest, last)), default=None),
                                             total)
            if success:
                self._schedule_progress()
        if success:
            self.ledger.mark_success(self.transmit)

    def _schedule_progress(self) -> None:
        wait = self._logged_at + PROGRESS_SECONDS - time.monotonic()
        if wait <= 0:
            self._log_progress()
        elif self._timer is None:  # the lines of a stream that then goes quiet are not held back
            self._timer = threading.Timer(wait, self._log_progress)
            self._timer.daemon = True
            self._timer.start()

    def _log_progress(self) -> None:
        """Log what was delivered since the last progress lines: a line per stream
        (``<stream>: +N records, M delivered, last timestamp T``), or, for more than
        :data:`PROGRESS_STREAMS` streams, one line summing them up."""
        with self._progress_lock:
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()
            self._timer = None
            pending, self._pending = self._pending, {}
            self._logged_at = time.monotonic()
        if len(pending) > PROGRESS_STREAMS:
            busiest = sorted(pending.items(), key=lambda item: -item[1][0])[:3]
            latest = max(filter(None, (last for _, last, _ in pending.values())), default=None)
            self.log.info("+%d %s on %d streams since the last progress line%s; most: %s",
                          sum(n for n, _, _ in pending.values()), self.noun, len(pending),
                          f", last timestamp {latest}" if latest else "",
                          ", ".join(f"{stream} +{n}" for stream, (n, _, _) in busiest))
            return
        for stream, (records, last, total) in pending.items():
            self.log.info("%s: +%d %s, %d delivered%s", stream, records, self.noun, total,
                          f", last timestamp {last}" if last else "")

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

    def take_back(self, stream: str, records: int) -> None:
        """``records`` counted as delivered on ``stream`` were taken back (a recoverable
        writer dropping what it wrote after the last snapshot): uncount them."""
        self.ledger.record_delivery(self.transmit, stream, -records, None)

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
        """Log the progress not logged yet, and close the ledger connection."""
        if self._pending:
            self._log_progress()
        self.ledger.close()


class WriteInterrupted(RuntimeError):
    """A write gave up waiting on its endpoint because the dataflow is stopping; its batches
    stay in the spool and are sent at the next start."""


class AckWait:
    """A writer's wait on its endpoint's acknowledgements, made visible and interruptible.

    Call :meth:`check` with the count still unacknowledged every half second or so while
    waiting. When none was acknowledged for ``report_after`` seconds, the transmit's last
    error (``/v1/status``) says so, once per wait, with the client's own last error; when
    the dataflow is stopping (``shutdown`` set) and none was acknowledged for ``grace``
    seconds, :meth:`check` raises :class:`WriteInterrupted`, so a dead endpoint never holds
    a stop for long (a live one still drains).

    :param what: the endpoint, for the messages (``broker 127.0.0.1:9092``).
    """

    def __init__(self, report: TransmitReport, shutdown: threading.Event, what: str, *,
                 report_after: float = 10.0, grace: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self._report, self._shutdown, self._what = report, shutdown, what
        self._report_after, self._grace, self._clock = report_after, grace, clock
        self._least: int | None = None
        self._since = clock()
        self._reported = False

    def check(self, left: int, client_error: str | None = None) -> None:
        """``left`` of the write's messages are not acknowledged yet.

        :raises WriteInterrupted: the dataflow is stopping and nothing moved for ``grace`` s.
        """
        now = self._clock()
        if self._least is None or left < self._least:
            self._least, self._since = left, now
        stalled = now - self._since
        if self._shutdown.is_set() and stalled >= self._grace:
            raise WriteInterrupted(f"transmit {self._report.transmit!r}: stopping with {left} {self._report.noun} "
                                   f"not acknowledged by the {self._what}; the spool keeps them for the next start")
        if stalled >= self._report_after and not self._reported:
            self._reported = True
            cause = f" ({client_error})" if client_error else ""
            self._report.failed(f"the {self._what} has acknowledged none of {left} {self._report.noun} for "
                                f"{stalled:.0f} s{cause}; waiting, nothing is dropped")
