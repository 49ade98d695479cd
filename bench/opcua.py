"""OPC UA subscribe and browse rows: the ``opcua`` receiver against node-opcua's plant
server (``tests/services/node_opcua/plant_server.cjs``, its own process) beside a plain
asyncua client subscribed to the same server (the limit).

- **subscribe, N tags every P ms**: N Double variables each changing every P ms (N / P
  values offered per ms), one subscription (publishing 100 ms, sampling 0, queue 10);
  after a 3-second warm-up, :data:`SECONDS` seconds counted. Values are the tag values
  delivered (records hold the tags changed at one source timestamp). Lost: per tag, the
  ticks missing between its first and last value counted (the server skips whole ticks
  when it falls behind; both clients miss the same ones). Lag: the receiver's, per batch
  handed on, its hand-over time minus its newest source timestamp; the plain client's,
  per tenth value, its arrival minus its source timestamp; p50 and p99. CPU is this
  process's (asyncua's decoding, the engine's thread and the reader).
- **browse, 100,000 nodes**: :func:`connectors._opcua_browse.browse` of folders of 1,000
  variables (``--static``), to depth 4 (target ≤ 10 s).
"""

from __future__ import annotations

import asyncio
import io
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from bench.common import Measure
from connectors.receivers.opcua import RECORD_FIELDS

#: Seconds counted per subscribe row, after a 3-second warm-up.
SECONDS = 10.0


def _lost(values: dict[int, list[float]]) -> int:
    """Ticks missing per tag between its first and last value, summed."""
    return sum(int(max(v) - min(v) + 1) - len(set(v)) for v in values.values() if v)


def plain_client(url: str, tags: int, period: float = 0.1) -> Measure:
    """A plain asyncua client subscribed to ``tags`` variables: the limit."""
    from asyncua import Client

    values: dict[int, list[float]] = {}
    lags: list[float] = []
    counting = [False]

    class Handler:
        def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
            if counting[0]:
                values.setdefault(node.nodeid.Identifier, []).append(value)
                if len(values[node.nodeid.Identifier]) % 10 == 0:
                    source = data.monitored_item.Value.SourceTimestamp
                    lags.append((datetime.now(UTC) - source.replace(tzinfo=UTC)).total_seconds())

    async def run() -> Measure:
        async with Client(url, timeout=30) as client:
            subscription = await client.create_subscription(100, Handler())
            nodes = [client.get_node(f"ns=1;s=Plant.Tag{i}") for i in range(tags)]
            for start in range(0, tags, 1000):
                await subscription.subscribe_data_change(nodes[start:start + 1000], queuesize=10, sampling_interval=0)
            await asyncio.sleep(3)
            counting[0], cpu, began = True, time.process_time(), time.monotonic()
            await asyncio.sleep(SECONDS)
            counting[0] = False
            seconds, cpu = time.monotonic() - began, time.process_time() - cpu
        count = sum(len(v) for v in values.values())
        cut = sorted(lags)
        return Measure(count, seconds, cpu, p50_ms=1000 * statistics.median(cut) if cut else None,
                       p99_ms=1000 * cut[int(0.99 * (len(cut) - 1))] if cut else None,
                       note=f"offered {round(tags / period):,}/s, lost {_lost(values):,}")

    return asyncio.run(run())


def receiver(url: str, tags: int, period: float = 0.1) -> Measure:
    """The ``opcua`` receiver (subscribe mode) through the runtime's partition, on the
    wall clock, as a job runs it."""
    from dataflows.sdk import RunContext
    from dataflows.testing import StreamDriver, load_receiver

    entry = {"data_receiver_name": "plc", "protocol": "opcua", "poll_interval": 0.2, "mode": "subscribe",
             "publishing_interval": 0.1, "sampling_interval": 0, "queue_size": 10, "history_backfill": False,
             "connections": [{"endpoint": url, "timeout": 30}],
             "streams": [{"asset": "plant", "stream_type": "tags", "opcua_tags": [
                 {"name": f"ns=1;s=Plant.Tag{i}", "exportname": f"t{i}"} for i in range(tags)]}]}
    with tempfile.TemporaryDirectory() as home:
        driver = StreamDriver(load_receiver(entry), RunContext(home=Path(home)))
        try:
            warm = time.monotonic() + 3
            while time.monotonic() < warm:
                driver.sleep_until_awake()
                driver.next_batch()
            frames: list[pl.DataFrame] = []
            lags: list[float] = []
            cpu, began = time.process_time(), time.monotonic()
            while time.monotonic() < began + SECONDS:
                driver.sleep_until_awake()
                for batch in driver.next_batch():
                    frames.append(batch.frame)
                    lags.append((datetime.now(UTC) - batch.frame["timestamp"].max()).total_seconds())
            seconds, cpu = time.monotonic() - began, time.process_time() - cpu
        finally:
            driver.close()
    values: dict[int, list[float]] = {}
    for frame in frames:
        for column in frame.columns:
            if column not in RECORD_FIELDS:
                values.setdefault(int(column[1:]), []).extend(frame[column].drop_nulls().to_list())
    count = sum(len(v) for v in values.values())
    cut = sorted(lags)
    return Measure(count, seconds, cpu, p50_ms=1000 * statistics.median(cut) if cut else None,
                   p99_ms=1000 * cut[int(0.99 * (len(cut) - 1))] if cut else None,
                   note=f"offered {round(tags / period):,}/s, lost {_lost(values):,}")


def subscribe_rows(tags: int, period: float = 0.1) -> list[tuple[str, Measure]]:
    """The limit and the receiver against one node-opcua server of ``tags`` variables,
    each changing every ``period`` seconds."""
    from tests.services.opcua import node_opcua_plant

    what = f"{tags:,} tags every {round(period * 1000)} ms"
    with node_opcua_plant(tags=tags, period=period) as plant:
        return [(f"limit: plain asyncua client, {what}", plain_client(plant.url, tags, period)),
                (f"OPC UA subscribe, {what}", receiver(plant.url, tags, period))]


def browse_row(nodes: int = 100_000) -> Measure:
    """Browse ``nodes`` static variables in folders of 1,000 (and what holds them)."""
    from connectors._opcua_browse import browse
    from tests.services.opcua import node_opcua_plant

    with node_opcua_plant(tags=1, static=nodes) as plant:
        began = time.monotonic()
        cpu = time.process_time()
        count = asyncio.run(browse(plant.url, depth=4, out=io.StringIO(), timeout=60))
        return Measure(count, time.monotonic() - began, time.process_time() - cpu, note="node-opcua, depth 4")
