"""The Sparkplug B decode rate of the ``mqtt`` receiver, in metrics per second of one core,
beside pure protobuf parsing of the same payloads (the limit).

The payloads are DDATA of one device, :data:`METRICS` metrics each, by alias only (as edge
nodes send data), encoded with the Sparkplug B payload of ``connectors._sparkplug_proto``: the
NAB machine temperature series as Double metrics (each with its timestamp), plus Int32
metrics (negative values among them) and Boolean ones. Three figures, each CPU time of this process (``time.process_time``):

- **limit: protobuf parse**: ``Payload.FromString`` of each payload (upb, the protobuf C
  runtime), the floor any decoder on it pays;
- **Sparkplug B decode**: :meth:`connectors._sparkplug.Sparkplug.records` (aliases resolved,
  values checked against their datatypes, one record per metric timestamp);
- **Sparkplug B decode → frame**: the same and the receiver's typed polars frame per batch.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import Measure, nab

#: Metrics per DDATA: 40 Double (temperatures), 5 Int32, 5 Boolean.
METRICS = 50
TOPIC = "spBv1.0/bench/DDATA/edge/press"


def payloads(messages: int) -> tuple[list[bytes], list[tuple[str, bytes]]]:
    """``messages`` DDATA payloads, and the NBIRTH and DBIRTH (topic, payload) before them."""
    from connectors._sparkplug_proto import DataType, Payload, set_value

    values = nab()["value"].to_list()
    kinds = [DataType.Double] * 40 + [DataType.Int32] * 5 + [DataType.Boolean] * 5
    start = 1767225600000
    nbirth = Payload(timestamp=start, seq=0)
    nbirth.metrics.add(timestamp=start, name="bdSeq", datatype=DataType.Int64, long_value=0)
    dbirth = Payload(timestamp=start, seq=1)
    for i, kind in enumerate(kinds):
        dbirth.metrics.add(timestamp=start, name=f"tag{i}", alias=i + 1, datatype=kind, is_null=True)
    births = [("spBv1.0/bench/NBIRTH/edge", nbirth.SerializeToString()),
              ("spBv1.0/bench/DBIRTH/edge/press", dbirth.SerializeToString())]
    out = []
    for n in range(messages):
        at = start + n * 5000
        payload = Payload(timestamp=at, seq=(n + 2) % 256)
        for i, kind in enumerate(kinds):
            reading = values[(n * METRICS + i) % len(values)]
            value: Any = (reading if kind == DataType.Double else
                          int(reading * 100) - 5000 if kind == DataType.Int32 else reading > 80)
            set_value(payload.metrics.add(timestamp=at, alias=i + 1), kind, value)
        out.append(payload.SerializeToString())
    return out, births


def _cpu(work: Any) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


def limit_parse(data: list[bytes]) -> Measure:
    """Pure protobuf parsing of the payloads."""
    from connectors._sparkplug_proto import Payload

    cpu = _cpu(lambda: [Payload.FromString(p) for p in data])
    return Measure(len(data) * METRICS, cpu, cpu, note="upb FromString, one core")


def decode(data: list[bytes], births: list[tuple[str, bytes]], frames: bool = False, batch: int = 200) -> Measure:
    """The receiver's decoding of the payloads (and its frames, ``frames``), one core."""
    import polars as pl

    from connectors._sparkplug import Sparkplug

    decoder = Sparkplug()
    for topic, payload in births:
        decoder.records(topic, payload, print)
    warnings: list[str] = []

    def work() -> None:
        for first in range(0, len(data), batch):
            records: list[dict[str, Any]] = []
            for payload in data[first:first + batch]:
                records += decoder.records(TOPIC, payload, warnings.append)
            if frames:
                frame = pl.from_dicts(records, infer_schema_length=None)
                frame.cast(decoder.schema(frame.columns))  # type: ignore[arg-type]

    cpu = _cpu(work)
    if warnings:
        raise RuntimeError(f"the bench's payloads gave warnings: {warnings[:3]}")
    return Measure(len(data) * METRICS, cpu, cpu, note="one core" + (", polars frames of 200 messages" if frames
                                                                        else ""))
