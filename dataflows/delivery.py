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

Implements the delivery guarantee of ``shared/specs/factorytx-digest.md`` ("Operation");
see ``docs/delivery.md``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows.ledger import Ledger, ledger_path
from dataflows.records import Batch, last_timestamp

if TYPE_CHECKING:
    from dataflows.sdk import RunContext, TransmitConfig, TransmitWriter

__all__ = ["TransmitReport", "TransmitSink"]


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

    def delivered(self, stream: str, records: int, last: str | None) -> int:
        """``records`` of ``stream`` (latest timestamp ``last``, ISO UTC) reached the endpoint:
        count them, stamp the last success and log a progress line.

        :returns: the records of ``stream`` delivered in all.
        """
        total = self.ledger.record_delivery(self.transmit, stream, records, last)
        if records:
            self.ledger.mark_success(self.transmit)
            self.log.info("%s: +%d %s, %d delivered, last timestamp %s", stream, records, self.noun,
                          total, last or "-")
        return total

    def batches_delivered(self, batches: list[Batch]) -> None:
        """Every record of ``batches`` reached the endpoint: count, acknowledge and log them."""
        for batch in batches:
            self.delivered(str(batch.stream), batch.frame.height, last_timestamp(batch.frame))
        self.acknowledge(batches)

    def acknowledge(self, batches: list[Batch]) -> None:
        """``batches`` are durable: acknowledge those whose receiver waits for delivery."""
        for batch in batches:
            if batch.ack_key is not None:
                self.ledger.ack(batch.receiver, str(batch.stream), batch.ack_key, self.transmit)

    def failed(self, message: str) -> None:
        """A delivery failed: record ``message`` as the transmit's last error."""
        self.ledger.mark_error(self.transmit, message)

    def outbox(self, records: int, size: int) -> None:
        """The transmit's outbox holds ``records`` records of ``size`` bytes."""
        self.ledger.mark_outbox(self.transmit, records, size)

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


class TransmitSink(DynamicSink[Batch]):
    """The bytewax sink of a transmit: one writer per worker, wrapped with the accounting
    above. Building it does no I/O; each worker's partition opens its writer."""

    def __init__(self, config: TransmitConfig, ctx: RunContext) -> None:
        self._config = config
        self._ctx = ctx

    def build(self, step_id: str, worker_index: int,
              worker_count: int) -> StatelessSinkPartition[Batch]:
        return _TransmitPartition(self._config, self._ctx)
