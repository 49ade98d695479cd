"""What every transmit shares at run time: the bytewax sink around a connector's writer.

A connector supplies only a :class:`~dataflows.sdk.TransmitWriter` (``write`` returns
once the batches are durable). :func:`transmit_sink` builds the transmit's sink, which
opens one writer per worker and, after each write, reports through the transmit's
:class:`~dataflows.report.TransmitReport`:

- ``"delivered"``: counts the records per stream in the ledger's progress, stamps the
  transmit's last success, acknowledges the batches whose receiver waits for delivery
  (``delete_completed``) and logs a progress line per stream
  (``<stream>: +N records, M delivered, last timestamp T``);
- ``"stored"`` (a durable outbox, :mod:`dataflows.outbox_sender`): acknowledges the
  batches only; the outbox's sender reports what it delivers through the same report;
- a raised exception: records it as the transmit's last error (``/v1/status``) and
  re-raises, so the dataflow stops before its next snapshot and no receiver state runs
  ahead of delivery.

A transmit whose endpoint can be down for long (Kafka) declares a spool
(:meth:`~dataflows.sdk.TransmitConfig.spool_bytes`); its sink is then store-and-forward
(:mod:`dataflows.spool`). A recoverable transmit
(:attr:`~dataflows.sdk.TransmitConfig.recoverable`) gets a
:class:`RecoverableTransmitSink`, snapshotted with the receivers' state.

Implements the delivery guarantee of ``shared/specs/factorytx-digest.md`` ("Operation");
see ``docs/delivery.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from dataflows.ledger import Ledger, ledger_path
from dataflows.records import Batch
from dataflows.report import TransmitReport
from dataflows.spool import SpooledTransmitPartition

if TYPE_CHECKING:
    from dataflows.context import RunContext
    from dataflows.sdk import RecoverableWriter, TransmitConfig, TransmitWriter

__all__ = ["RecoverableTransmitSink", "TransmitSink", "transmit_sink"]


def transmit_sink(config: TransmitConfig, ctx: RunContext) -> TransmitSink | RecoverableTransmitSink:
    """The bytewax sink of ``config``: its ``write_batch`` returns only once the write is
    durable, then counts, acknowledges and logs the batches. A recoverable transmit gets a
    :class:`RecoverableTransmitSink` (one keyed partition), every other a
    :class:`TransmitSink`. No I/O here."""
    return RecoverableTransmitSink(config, ctx) if config.recoverable else TransmitSink(config, ctx)


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
            return SpooledTransmitPartition(self._config, self._ctx, budget, worker_count)
        return _TransmitPartition(self._config, self._ctx)
