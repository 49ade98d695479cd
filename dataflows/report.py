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
from collections.abc import Iterable
from typing import TYPE_CHECKING

from dataflows.ledger import Ledger, Marker, marker_time
from dataflows.records import Batch, last_timestamp

if TYPE_CHECKING:
    from dataflows.outbox import Outbox

__all__ = ["OUTBOX_FULL", "TransmitReport"]

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
        """Close the ledger connection."""
        self.ledger.close()
