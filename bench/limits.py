"""The limits the bench compares factoryflow with, each run in a fresh interpreter by
:func:`bench.common.run_script` so its CPU and peak RSS are its own:

- ``produce BOOTSTRAP TOPIC FILE WAY``: raw confluent-kafka produce of pre-encoded records
  (``FILE``: one ``key<TAB>value`` line per record) with the ``kafka`` transmit's producer
  settings, ``WAY`` ``headers`` (its two headers), ``plain`` (none) or ``batch``
  (``produce_batch``), timed from the first ``produce`` to the end of ``flush``;
- ``read URL QUERY METHOD``: a plain read of a query's whole result into polars:
  ``sqlalchemy`` (``polars.read_database`` in 10,000-row chunks, as a SQLAlchemy user
  would), ``connectorx`` or ``adbc`` (``polars.read_database_uri``);
- ``encode DIRECTORY``: the ``remotedatapost`` transmit's encoding alone of the CSV files in
  ``DIRECTORY`` (read by polars, untimed): BSON sslogs, then gzip per request of
  ``max_request_records``.

Each prints one JSON object: ``records``, ``seconds``, ``busy`` (the machine's busy share
over those seconds), its peak RSS ``peak_mb`` and what else it measured.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench.common import MachineBusy


def produce(bootstrap: str, topic: str, path: str, way: str = "headers") -> dict[str, object]:
    """Raw produce of the records in ``path`` one of three ``way`` s, the candidates for the
    ``kafka`` transmit's produce loop: ``headers``, ``produce()`` with both the transmit's
    headers (:data:`~connectors.transmits.kafka.HEADERS`); ``plain``,
    ``produce()`` without headers; ``batch``, ``produce_batch()`` of 10,000 messages at a
    time (confluent-kafka's batch API, which takes no headers)."""
    from confluent_kafka import Producer

    from connectors.transmits.kafka import HEADERS, PRODUCER_DEFAULTS

    records = [line.split(b"\t", 1) for line in Path(path).read_bytes().splitlines()]
    headers = [(name, {"receiver": b"files", "source": b"bench"}[name]) for name in HEADERS]
    failed = []

    def report(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(err)

    producer = Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap, "on_delivery": report})

    busy = MachineBusy()
    start = time.perf_counter()
    if way == "batch":
        for first in range(0, len(records), 10_000):
            messages = [{"key": key, "value": value} for key, value in records[first:first + 10_000]]
            while messages:  # a full queue refuses the rest of a batch: each refused one has "_error"
                queued = producer.produce_batch(topic, messages)
                messages = [m for m in messages if "_error" in m] if queued < len(messages) else []
                for message in messages:
                    del message["_error"]
                if messages:
                    producer.poll(0.05)
    elif way == "headers":  # the loops as the transmit writes them: no call per record but produce()
        for key, value in records:
            while True:
                try:
                    producer.produce(topic, value, key, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)
    else:
        for key, value in records:
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
    producer.flush()
    seconds = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"{len(failed)} messages failed: {failed[0]}")
    return {"records": len(records), "seconds": seconds, "busy": busy.share()}


def read(url: str, query: str, method: str) -> dict[str, object]:
    """Read ``query``'s result into polars with ``method``; see the module docstring."""
    import polars as pl

    busy = MachineBusy()
    start = time.perf_counter()
    if method == "sqlalchemy":
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.connect().execution_options(stream_results=True, max_row_buffer=10_000) as conn:
            rows = sum(frame.height for frame in pl.read_database(sa.text(query), conn, iter_batches=True,
                                                                   batch_size=10_000))
    else:
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        rows = pl.read_database_uri(query, plain, engine=method).height
    return {"records": rows, "seconds": time.perf_counter() - start, "busy": busy.share()}


def encode(directory: str) -> dict[str, object]:
    """The ``remotedatapost`` transmit's encoding of the CSV files in ``directory``."""
    from datetime import UTC, datetime

    import polars as pl

    from connectors.transmits.remotedatapost import RemoteDataPost, post_payload, sslogs
    from dataflows.outbox import Entry
    from dataflows.records import Batch, StreamKey

    config = RemoteDataPost(transmit_name="sm", base_url="http://127.0.0.1:9", API_key_ID="k", API_key="s")
    batches = [Batch("files", StreamKey(path.stem.rsplit("_", 1)[0], "temperature"),
                     pl.read_csv(path, try_parse_dates=True).with_columns(
                         pl.col("timestamp").dt.replace_time_zone("America/Chicago", ambiguous="earliest",
                                                                  non_existent="null")), str(path))
               for path in sorted(Path(directory).glob("*.csv"))]
    now = datetime.now(UTC)
    busy = MachineBusy()
    start = time.perf_counter()
    records = compressed = 0
    pending: list[Entry] = []
    for batch in batches:
        for timestamp, body in sslogs(batch, now):
            pending.append(Entry(0, str(batch.stream), timestamp, body))
            if len(pending) == config.max_request_records:
                compressed += len(post_payload(pending, "bson"))
                records += len(pending)
                pending = []
    if pending:
        compressed += len(post_payload(pending, "bson"))
        records += len(pending)
    return {"records": records, "seconds": time.perf_counter() - start, "compressed_bytes": compressed,
            "busy": busy.share()}


def main() -> None:
    """``python -c 'from bench.limits import main; main()' NAME ARGS...``"""
    from bench.common import high_water_mb

    name, *args = sys.argv[1:]
    result = {"produce": produce, "read": read, "encode": encode}[name](*args)
    print(json.dumps({**result, "peak_mb": high_water_mb()}))


if __name__ == "__main__":
    main()
