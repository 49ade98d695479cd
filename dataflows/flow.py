"""Building the bytewax dataflow from a validated :class:`~dataflows.config.Config`.

Shape::

    receiver (one bytewax input per data_receiver, one partition per stream:
              dataflows.runtime.ReceiverSource)
      -> merge -> transform 1 -> ... -> transform n   (list order; each on the batches
                                                       its filter_stream matches)
      -> for each data_transmit: filter (its filter_stream) -> sink
                                 (dataflows.delivery.transmit_sink)

Step ids derive from the component names (plus a hash of the exact name), so recovery
state follows the name: renaming a receiver starts its streams from scratch, as in
FactoryTX; reordering components changes nothing.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import replace

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from dataflows.config import Config
from dataflows.context import RunContext
from dataflows.delivery import RecoverableTransmitSink, transmit_sink
from dataflows.ledger import Ledger, Marker, ledger_path, marker_time
from dataflows.records import Batch, StreamKey, ack_name, stream_matches
from dataflows.runtime import ReceiverSource
from dataflows.sdk import TransformConfig


def step_id(kind: str, name: str) -> str:
    """A bytewax step id for a component: readable, stable and unique per exact name."""
    slug = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return f"{kind}_{slug}_{zlib.crc32(name.encode()):08x}"


class _TransformStep:
    """Applies one transform to the batches its ``filter_stream`` matches, logging its warnings
    and keeping the latest as the stream's ``transform`` warning marker."""

    def __init__(self, transform: TransformConfig, ctx: RunContext) -> None:
        self._transform = transform
        self._ctx = ctx
        self._log = logging.getLogger(f"transform.{transform.transform_name}")
        self._warned: set[tuple[str, str]] = set()
        self._ledger: Ledger | None = None

    def __call__(self, batch: Batch) -> list[Batch]:
        if not stream_matches(self._transform.filter_stream, batch.stream):
            return [batch]
        if batch.frame.width == 0 and self._transform.streams_out(batch.stream) == [batch.stream]:
            return [batch]  # an empty file's batch: it only carries its acknowledgement
        out, warnings = self._transform.apply_batches(batch, self._ctx)
        for message in warnings:
            key = (str(batch.stream), message)
            level = logging.DEBUG if key in self._warned else logging.WARNING
            self._log.log(level, "%s (%s): %s", batch.stream, batch.source, message)
            if key not in self._warned:
                self._warned.add(key)
                if self._ledger is None:
                    self._ledger = Ledger(ledger_path(self._ctx.home))
                self._ledger.set_marker(Marker(
                    component=self._transform.transform_name, component_type="Transform",
                    asset=batch.stream.asset, stream_type=batch.stream.stream_type,
                    category="transform", timestamp=marker_time(self._ctx.now()), level="warning",
                    message=f"{batch.source}: {message}"))
        return out


def expected_acknowledgements(config: Config, stream: StreamKey) -> frozenset[str]:
    """Who acknowledges a batch the receiver read on ``stream`` once every copy of it is
    durable: each transmit its records reach, followed through the transforms (a copy moved
    to another stream by ``replicate`` is signed ``<transmit>@<stream>``: see
    :meth:`~dataflows.records.Batch.ack_name`)."""
    streams = [stream]
    for transform in config.transforms:
        streams = [out for s in streams
                   for out in (transform.streams_out(s) if stream_matches(transform.filter_stream, s) else [s])]
    return frozenset(ack_name(t.transmit_name, s, stream) for s in dict.fromkeys(streams)
                     for t in config.data_transmit if stream_matches(t.filter_stream, s))


def build_flow(config: Config, ctx: RunContext, flow_id: str = "factoryflow") -> Dataflow:
    """The dataflow running ``config``.

    :param ctx: the run context; its ``expected_transmits`` is filled in here.
    :raises ValueError: the config has no receiver or no transmit.
    """
    if not config.data_receiver or not config.data_transmit:
        raise ValueError("a dataflow needs at least one data_receiver and one data_transmit")
    expected = {(receiver.data_receiver_name, stream.key): expected_acknowledgements(config, stream.key)
                for receiver, stream in config.streams()}
    ctx = replace(ctx, expected_transmits=expected)
    flow = Dataflow(flow_id)
    inputs = [op.input(step_id("receive", r.data_receiver_name), flow, ReceiverSource(r, ctx))
              for r in config.data_receiver]
    batches = op.merge("merge_receivers", *inputs) if len(inputs) > 1 else inputs[0]
    for transform in config.transforms:
        batches = op.flat_map(step_id("transform", transform.transform_name), batches,
                              _TransformStep(transform, ctx))
    for transmit in config.data_transmit:
        patterns = list(transmit.filter_stream)
        selected = op.filter(step_id("select", transmit.transmit_name), batches,
                             lambda batch, patterns=patterns: stream_matches(patterns, batch.stream))
        sink = transmit_sink(transmit, ctx)
        if isinstance(sink, RecoverableTransmitSink):  # a recoverable transmit: one keyed partition
            keyed = op.key_on(step_id("partition", transmit.transmit_name), selected,
                              lambda _: RecoverableTransmitSink.PART)
            op.output(step_id("transmit", transmit.transmit_name), keyed, sink)
        else:
            op.output(step_id("transmit", transmit.transmit_name), selected, sink)
    return flow
