"""``python -m bench``: every scenario of the main job, each beside its limit measured in the
same run on the same data, in one table.

Scenarios (``--rows`` records, 2,000,000 by default, of the NAB machine temperature series
replicated over four machines, each machine a stream and so a bytewax partition):

- **CSV → Kafka**: ``--files`` CSV files (500) through the ``localfile`` receiver,
  ``convert_timestamps`` and the ``kafka`` transmit, with its default ``headers`` and with
  the other choice. Limits, the candidates for the transmit's produce loop: raw
  confluent-kafka ``produce()`` of the same records pre-encoded, with the transmit's
  producer settings, with its two headers and with none; ``produce_batch()`` (no headers);
  ``kcat -P`` (Debian's package) producing the same JSON lines with the same settings and
  the default headers.
- **PostgreSQL → Kafka**: the same records in a table, one ``sql`` stream per machine with
  a timestamp cursor. Limit: the fastest plain read of the table into polars (SQLAlchemy
  chunks, connectorx, ADBC).
- **exactly_once**: both Kafka scenarios again with ``delivery_guarantee: exactly_once``
  (a Kafka transaction per forwarder write), beside ``at_least_once`` in the same run.
- **CSV → Sight Machine**: the CSV files into the ``remotedatapost`` transmit (outbox, gzip
  of BSON sslogs) and the Sight Machine simulator in a process of its own. Limit: the
  transmit's BSON + gzip encoding alone.
- **latency**: rows inserted into PostgreSQL at ``--rate`` rows/s, a ``sql`` receiver
  polling every second into Kafka; insert (``clock_timestamp()``) to the broker's append
  time (``LogAppendTime``), p50 and p99.
- **scale-out**: the CSV files into the ``localfile`` transmit (no broker on the cores),
  then the CSV and SQL scenarios into Kafka, each on one worker, on 2 workers in one
  process (``-w 2``) and on 2 processes of one cluster (``-i``/``-a`` on loopback).
- **memory**: the SQL scenario at 20,000 rows beside the full one: peak RSS.
- **start-up**: the fixed start-up of ``bench/startup.py`` (first record minus the floor of
  importing bytewax and polars).
- **sparkplug**: the Sparkplug B decode rate in metrics per second of one core, beside
  pure protobuf parsing of the same payloads (``bench/sparkplug.py``).
- **mqtt**: the ``mqtt`` receiver's session draining ``--rows`` / 40 QoS 1 messages (at least
  10,000) queued at Mosquitto into its buffer (group commits, each PUBACK after its commit),
  beside a plain paho subscriber and paho with one SQLite commit per message
  (``bench/mqtt.py``).
- **opcua**: OPC UA subscribe with 2,000 and 10,000 variables changing every 100 ms, and
  10,000 every 400 ms (25,000 values/s, what node-opcua sustains here), beside a plain
  asyncua client on the same server, and a browse of 100,000 nodes (``bench/opcua.py``).
- **idle**: 1 (the limit: what bytewax's worker loop costs at rest), 1,000 and 10,000
  (not with ``--quick``: it starts in about 130 s) ``localfile`` streams with nothing
  new, polled every second: the job's CPU at rest, its RSS, how long one new row then
  takes, and each stream's cost above one (``bench/idle.py``).
- **api**: ``GET /v1/status`` and ``GET /v1/streams`` of an installation of 1,000 streams
  from 200 concurrent clients (``bench/api.py``): requests/s and p50/p99 latency. Limit: the
  same server sending a static file of the UI.

The throughput scenarios and their limits run in turn three times (``--repeat``), and
each one's median run is shown. Every figure of the job is measured from the start of its
process(es) to the ledger counting the last record delivered (acknowledged by the broker
or the endpoint); CPU seconds and peak RSS are the kernel's for the job's processes. MB/s
is of the records as delivered (their JSON). "machine busy" is the share of every core's
time spent busy meanwhile, by any process (the broker and PostgreSQL run on the same
cores): near 100%, the figure is held by the machine's CPU, not by a wait. "CPU s per 1M"
is the CPU seconds per million records; "load before" the 1-minute load average as the
run began.

    .venv/bin/python -m bench              # the full table (about 15 minutes)
    .venv/bin/python -m bench --quick      # 100,000 records, under 2 minutes
    .venv/bin/python -m bench --only csv_kafka,sql_kafka --markdown table.md

Needs ``scripts/setup.sh --test --services --bench`` (kcat, connectorx).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from bench import idle, mqtt, opcua, sparkplug
from bench.api import api_under_load
from bench.common import (
    LINES,
    PLANT_TIME,
    REPO,
    MachineBusy,
    Measure,
    PeakSampler,
    csv_receiver,
    finish,
    lines_frame,
    run_job,
    run_script,
    write_csv_files,
)
from bench.startup import TARGET as STARTUP_TARGET
from bench.startup import first_record, floor
from connectors.transmits.kafka import DEFAULT_HEADERS
from connectors.transmits.kafka import HEADERS as KAFKA_HEADERS

LIMITS = "from bench.limits import main; main()"
KCAT_FLAGS = ("acks", "enable.idempotence", "compression.type", "linger.ms", "batch.size",
              "queue.buffering.max.messages", "queue.buffering.max.kbytes", "partitioner")


@dataclass
class Row:
    """One line of the table: a scenario or a limit, and what its ratio is taken against."""

    name: str
    measure: Measure
    versus: str | None = None
    target: str = ""


@dataclass
class Bench:
    """The services and data one run shares (see the module docstring)."""

    rows: int
    files: int
    work: Path
    bootstrap: str = ""
    pg_url: str = ""
    pg_connection: dict[str, Any] = field(default_factory=dict)
    csv_dir: Path | None = None
    csv_bytes: int = 0
    lines_file: Path | None = None
    json_bytes: int = 0
    table: list[Row] = field(default_factory=list)
    load: float = field(default_factory=lambda: os.getloadavg()[0])  # when the last row was done

    def add(self, row: Row) -> Row:
        """Add ``row`` and print it; a measure with no load of its own ran since the last row."""
        if row.measure.load is None:
            row.measure.load = self.load
        self.load = os.getloadavg()[0]
        self.table.append(row)
        print(format_row(row, self.table), flush=True)
        return row

    def topic(self, name: str, partitions: int = LINES, config: dict[str, str] | None = None) -> str:
        """A fresh topic ``<name>-<random>``."""
        from confluent_kafka.admin import AdminClient, NewTopic

        topic = f"{name}-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(topic, partitions, 1, config=config or {})]).values():
            future.result(30)
        return topic

    def home(self) -> Path:
        """A fresh ``FACTORYFLOW_HOME``."""
        return Path(tempfile.mkdtemp(prefix="home-", dir=self.work))

    def kafka(self, topic: str, guarantee: str = "at_least_once", **more: Any) -> dict[str, Any]:
        return {"transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": self.bootstrap,
                "topic": topic, "delivery_guarantee": guarantee, **more}


# --- data --------------------------------------------------------------------------------

def prepare_csv(bench: Bench) -> None:
    """The CSV files, and the same records pre-encoded as the ``kafka`` transmit writes them
    (``key<TAB>JSON`` lines) for the produce limits."""
    from dataflows.records import Batch, StreamKey, json_values, records_frame

    bench.csv_dir = bench.work / "csv"
    bench.csv_bytes = write_csv_files(bench.csv_dir, bench.rows, bench.files)
    frame = lines_frame(bench.rows).with_columns(
        pl.col("timestamp").dt.replace_time_zone("America/Chicago", ambiguous="earliest", non_existent="null"))
    bench.lines_file = bench.work / "records.tsv"
    with bench.lines_file.open("wb") as out:
        for line in range(1, LINES + 1):
            stream = StreamKey(f"machine_{line}", "temperature")
            batch = Batch("files", stream, frame.filter(pl.col("line") == line).drop("line"), "bench")
            values = json_values(records_frame(batch))
            bench.json_bytes += sum(map(len, values))
            key = str(stream).encode() + b"\t"
            out.write(b"".join(key + value + b"\n" for value in values))


def prepare_sql(bench: Bench, table: str, rows: int) -> None:
    """Table ``table`` of ``rows`` records (``line``, ``timestamp``, ``value``), indexed for the
    streams' cursors."""
    import psycopg

    buffer = io.BytesIO()
    lines_frame(rows).write_csv(buffer, datetime_format="%Y-%m-%d %H:%M:%S")
    with psycopg.connect(bench.pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as db:
        db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute(f"CREATE TABLE {table} (line INTEGER, timestamp TIMESTAMP, value DOUBLE PRECISION)")
        with db.cursor().copy(f"COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)") as copy:
            copy.write(buffer.getvalue())
        db.execute(f"CREATE INDEX ON {table} (line, timestamp)")
        db.execute(f"VACUUM ANALYZE {table}")


def sql_receiver(bench: Bench, table: str) -> dict[str, Any]:
    """One ``sql`` stream per machine over ``table``, cursor on ``timestamp``."""
    return {"data_receiver_name": "db", "protocol": "sql", "poll_interval": 1,
            "connections": [bench.pg_connection],
            "streams": [{"asset": f"machine_{line}", "stream_type": "temperature",
                         "query": f"SELECT timestamp, value FROM {table} WHERE line = {line} "
                                  "AND timestamp > :timestamp ORDER BY timestamp",
                         "state_fields": [{"column_name": "timestamp", "data_type": "timestamp"}]}
                        for line in range(1, LINES + 1)]}


# --- scenarios ---------------------------------------------------------------------------

def csv_kafka(bench: Bench, workers: int = 1, processes: int = 1, guarantee: str = "at_least_once",
              **transmit: Any) -> Measure:
    """The CSV files into Kafka (``delivery_guarantee``: ``guarantee``; ``transmit``: more
    settings of the ``kafka`` transmit)."""
    assert bench.csv_dir is not None
    config = {"data_receiver": [csv_receiver(bench.csv_dir)], "transforms": [PLANT_TIME],
              "data_transmit": [bench.kafka(bench.topic("csv"), guarantee, **transmit)]}
    return run_job(bench.home(), config, "kafka", bench.rows, workers=workers, processes=processes)


def csv_local(bench: Bench, workers: int = 1, processes: int = 1) -> Measure:
    """The CSV files into the ``localfile`` transmit: the scale-out scenario without a broker
    on the job's cores."""
    assert bench.csv_dir is not None
    config = {"data_receiver": [csv_receiver(bench.csv_dir)], "transforms": [PLANT_TIME],
              "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}]}
    return run_job(bench.home(), config, "local", bench.rows, workers=workers, processes=processes)


def sql_kafka(bench: Bench, workers: int = 1, processes: int = 1, table: str = "nab",
              rows: int | None = None, guarantee: str = "at_least_once") -> Measure:
    """The table into Kafka (``delivery_guarantee``: ``guarantee``)."""
    config = {"data_receiver": [sql_receiver(bench, table)], "transforms": [],
              "data_transmit": [bench.kafka(bench.topic("sql"), guarantee)]}
    return run_job(bench.home(), config, "kafka", rows or bench.rows, workers=workers, processes=processes)


def csv_sight_machine(bench: Bench) -> Measure:
    """The CSV files into the Sight Machine simulator (a process of its own)."""
    from tests.services.process import free_port

    assert bench.csv_dir is not None
    port = free_port()
    simulator = subprocess.Popen([sys.executable, "-m", "tests.simulators.sightmachine", "--port", str(port)],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert simulator.stdout is not None
        simulator.stdout.readline()  # "sight-machine simulator on http://..."
        _wait_for_port(port)
        transmit = {"transmit_name": "sight_machine", "transmit_type": "remotedatapost",
                    "base_url": f"http://127.0.0.1:{port}", "API_key_ID": "factory-edge", "API_key": "s3cret",
                    "poll_interval": 0.2}
        config = {"data_receiver": [csv_receiver(bench.csv_dir)], "transforms": [PLANT_TIME],
                  "data_transmit": [transmit]}
        return run_job(bench.home(), config, "sight_machine", bench.rows)
    finally:
        simulator.terminate()
        simulator.wait(30)


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def latency(bench: Bench, seconds: float, rate: int) -> Measure:
    """Rows inserted at ``rate`` rows/s for ``seconds``; insert to broker append time."""
    import psycopg
    from confluent_kafka import Consumer, TopicPartition

    plain = bench.pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS live")
        db.execute("CREATE TABLE live (id BIGSERIAL PRIMARY KEY, inserted_at TIMESTAMPTZ NOT NULL, "
                   "value DOUBLE PRECISION)")
    topic = bench.topic("latency", 1, {"message.timestamp.type": "LogAppendTime"})
    receiver = {"data_receiver_name": "db", "protocol": "sql", "poll_interval": 1,
                "connections": [bench.pg_connection],
                "streams": [{"asset": "machine_1", "stream_type": "temperature",
                             "query": "SELECT id, inserted_at AS timestamp, value FROM live WHERE id > :id "
                                      "ORDER BY id",
                             "state_fields": [{"column_name": "id", "data_type": "integer"}]}]}
    config = {"data_receiver": [receiver], "transforms": [], "data_transmit": [bench.kafka(topic)]}
    warmup = 3.0
    total = int(rate * (seconds + warmup))
    stop = threading.Event()

    def insert() -> None:  # a tenth of the rate every 0.1 s, each row stamped as it is written
        with psycopg.connect(plain, autocommit=True) as db:
            step, due = rate // 10, time.monotonic()
            for _ in range(total // step):
                if stop.is_set():
                    return
                db.execute("INSERT INTO live (inserted_at, value) SELECT clock_timestamp(), g * 0.5 "
                           "FROM generate_series(1, %s) g", (step,))
                due += 0.1
                time.sleep(max(0.0, due - time.monotonic()))

    inserter = threading.Thread(target=insert, daemon=True)
    inserter.start()
    try:
        measure = run_job(bench.home(), config, "kafka", total)
    finally:
        stop.set()
        inserter.join()
    consumer = Consumer({"bootstrap.servers": bench.bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    delays = []
    try:
        while len(delays) < total:
            for message in consumer.consume(10_000, timeout=5):
                if message.error():
                    raise RuntimeError(message.error())
                record = json.loads(message.value())
                inserted = datetime.fromisoformat(record["timestamp"])
                appended = datetime.fromtimestamp(message.timestamp()[1] / 1000, UTC)
                delays.append((record["id"], (appended - inserted).total_seconds() * 1000))
    finally:
        consumer.close()
    first = int(rate * warmup)
    steady = sorted(ms for row_id, ms in delays if row_id > first)
    quantiles = statistics.quantiles(steady, n=100)
    measure.p50_ms, measure.p99_ms = quantiles[49], quantiles[98]
    measure.records = len(steady)
    measure.seconds = seconds
    measure.note = f"{rate} rows/s, poll_interval 1 s"
    return measure


# --- limits ------------------------------------------------------------------------------

def limit_produce(bench: Bench, way: str = "headers") -> Measure:
    """Raw confluent-kafka produce of the pre-encoded records, ``way`` as
    :func:`bench.limits.produce` takes it."""
    result, cpu, peak = run_script(LIMITS, "produce", bench.bootstrap, bench.topic("raw"), str(bench.lines_file),
                                   way)
    return Measure(int(result["records"]), float(result["seconds"]), cpu, peak, bench.json_bytes,
                   busy=result.get("busy"))


def limit_kcat(bench: Bench) -> Measure:
    """``kcat -P`` of the same ``key<TAB>JSON`` lines, the transmit's producer settings and
    default headers."""
    from connectors.transmits.kafka import PRODUCER_DEFAULTS

    assert bench.lines_file is not None
    settings = [f"-X{name}={str(PRODUCER_DEFAULTS[name]).lower()}" for name in KCAT_FLAGS]
    headers = [f"{name}={value}" for name, value in (("receiver", "files"), ("source", "bench"))
               if name in DEFAULT_HEADERS]  # what the transmit sends by default
    command = ["kcat", "-P", "-b", bench.bootstrap, "-t", bench.topic("kcat"), "-K", "\t",
               *(arg for header in headers for arg in ("-H", header)), *settings]
    with bench.lines_file.open("rb") as lines:
        busy = MachineBusy()
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdin=lines, stderr=subprocess.DEVNULL)
        sampler = PeakSampler([proc.pid])
        cpu = finish(proc.pid)
        seconds = time.perf_counter() - start
        share = busy.share()
        sampler.stop()
    proc.returncode = 0
    return Measure(bench.rows, seconds, cpu, sampler.peak(proc.pid), bench.json_bytes, busy=share)


def limit_read(bench: Bench) -> Measure:
    """The fastest plain read of the table into polars."""
    best: Measure | None = None
    for method in ("sqlalchemy", "connectorx", "adbc"):
        try:
            result, cpu, peak = run_script(LIMITS, "read", bench.pg_url, "SELECT * FROM nab", method)
        except RuntimeError as exc:
            print(f"  (plain read with {method} failed: {str(exc).splitlines()[-1]})", flush=True)
            continue
        measure = Measure(int(result["records"]), float(result["seconds"]), cpu, peak, bench.json_bytes,
                          note=method, busy=result.get("busy"))
        print(f"  plain read with {method}: {measure.rate:,.0f} records/s", flush=True)
        if best is None or measure.rate > best.rate:
            best = measure
    if best is None:
        raise RuntimeError("no plain read of the table worked")
    return best


def limit_encode(bench: Bench) -> Measure:
    """The ``remotedatapost`` transmit's BSON + gzip encoding alone."""
    result, cpu, peak = run_script(LIMITS, "encode", str(bench.csv_dir))
    return Measure(int(result["records"]), float(result["seconds"]), cpu, peak, busy=result.get("busy"))


def startup() -> Measure:
    """Fixed start-up: median first record minus median floor, 3 runs each."""
    with tempfile.TemporaryDirectory() as tmp:
        firsts = [first_record(REPO, Path(tmp) / str(i)) for i in range(3)]
    floors = [floor() for _ in range(3)]
    fixed = statistics.median(firsts) - statistics.median(floors)
    return Measure(1, fixed, note=f"first record {statistics.median(firsts):.3f} s, floor "
                                  f"{statistics.median(floors):.3f} s")


# --- the table ---------------------------------------------------------------------------

HEADER = ("| scenario | records | records/s | MB/s | peak RSS MB | CPU s | CPU s per 1M | machine busy | load before "
          "| p50 / p99 ms | vs | ratio |\n"
          "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|")


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None or math.isnan(value) else format(value, fmt)


def format_row(row: Row, table: list[Row]) -> str:
    """One markdown line; the ratio is this row's records/s over its ``versus`` row's."""
    m = row.measure
    if row.name.startswith("start-up"):
        return (f"| {row.name} | | | | | | | | | | {m.note} | {m.seconds:.3f} s (target ≤ {STARTUP_TARGET} s) |")
    ratio = ""
    if row.versus is not None:
        other = next((r for r in table if r.name == row.versus), None)
        if other is not None:
            ratio = f"{m.rate / other.measure.rate:.2f}×"
            if row.name.startswith("memory"):
                ratio = f"{m.peak_mb / other.measure.peak_mb:.2f}× RSS"
        ratio += f" {row.target}" if row.target else ""
    latency_ms = (f"{m.p50_ms:.0f} / {m.p99_ms:.0f}" if m.p50_ms is not None and m.p99_ms is not None else "")
    mbs = _num(m.payload_bytes / m.seconds / 1e6 if m.payload_bytes else None, ".1f")
    name = f"{row.name} ({m.note})" if m.note else row.name
    busy = f"{m.busy:.0%}" if m.busy is not None and not math.isnan(m.busy) else ""
    per_million = m.cpu / m.records * 1e6 if m.records else None
    return (f"| {name} | {m.records:,} | {m.rate:,.0f} | {mbs} | {_num(m.peak_mb, ',.0f')} | "
            f"{_num(m.cpu, '.1f')} | {_num(per_million, '.2f')} | {busy} | {_num(m.load, '.2f')} | {latency_ms} | "
            f"{row.versus or ''} | {ratio} |")


def machine() -> str:
    """One line about the machine the bench ran on."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = cpu
    return (f"{os.cpu_count()} cores ({model}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"one Kafka broker and PostgreSQL on the same cores")


# --- running -----------------------------------------------------------------------------

SCENARIOS = ("csv_kafka", "sql_kafka", "csv_sight_machine", "latency", "scale_out", "memory", "startup", "api",
             "sparkplug", "mqtt", "opcua", "idle")


@contextmanager
def services(bench: Bench, kafka: bool, postgres: bool) -> Iterator[None]:
    """Start the Kafka broker and PostgreSQL the chosen scenarios need."""
    from tests.services.kafka import kafka_broker
    from tests.services.postgres import postgres_server

    with ExitStack() as stack:
        if kafka:
            broker = stack.enter_context(kafka_broker())
            bench.bootstrap = broker.bootstrap
        if postgres:
            pg = stack.enter_context(postgres_server())
            bench.pg_url, bench.pg_connection = pg.url, pg.connection()
        yield


def interleaved(bench: Bench, repeat: int, steps: list[tuple[str, Callable[[], Measure], str | None, str]]) -> None:
    """Run ``steps`` (a scenario and its limits) in turn ``repeat`` times, so a slow minute of
    the machine costs each alike, and add each one's median run (by records/s) to the table."""
    runs: list[list[Measure]] = [[] for _ in steps]
    for _ in range(repeat):
        for (_, measure, _, _), done in zip(steps, runs, strict=True):
            load = os.getloadavg()[0]
            done.append(measure())
            done[-1].load = load
    for (name, _, versus, target), done in zip(steps, runs, strict=True):
        middle = sorted(done, key=lambda m: m.rate)[len(done) // 2]
        if repeat > 1:
            middle.note = ", ".join(filter(None, (middle.note, f"median of {repeat}")))
        bench.add(Row(name, middle, versus, target))


def run(bench: Bench, only: set[str], latency_seconds: float, rate: int, small: int, repeat: int) -> None:
    """Run the chosen scenarios, printing each row as it is measured (the throughput
    scenarios and their limits: the median of ``repeat`` interleaved runs)."""
    csv = only & {"csv_kafka", "csv_sight_machine", "scale_out"}
    sql = only & {"sql_kafka", "scale_out", "memory"}
    kafka = only & {"csv_kafka", "sql_kafka", "scale_out", "latency", "memory"}
    with services(bench, bool(kafka), bool(sql or "latency" in only)):
        print(HEADER, flush=True)
        if csv:
            prepare_csv(bench)
        if sql:
            prepare_sql(bench, "nab", bench.rows)
        payload = bench.json_bytes
        if only & {"csv_kafka", "scale_out"}:
            # the transmit's default headers and the other choice, each beside its raw produce
            raw = {True: "limit: raw produce, 2 headers", False: "limit: raw produce, no headers"}
            default = bool(DEFAULT_HEADERS)
            interleaved(bench, repeat, [
                (raw[True], lambda: limit_produce(bench, "headers"), None, ""),
                (raw[False], lambda: limit_produce(bench, "plain"), None, ""),
                ("limit: produce_batch, no headers", lambda: limit_produce(bench, "batch"), None, ""),
                ("limit: kcat -P", lambda: limit_kcat(bench), None, ""),
                ("CSV → Kafka", lambda: _with_payload(csv_kafka(bench), payload), raw[default], "(target ≥ 0.9)"),
                (f"CSV → Kafka, headers {list(KAFKA_HEADERS) if not default else []}",
                 lambda: _with_payload(csv_kafka(bench, headers=[] if default else list(KAFKA_HEADERS)), payload),
                 raw[not default], ""),
                ("CSV → Kafka, exactly_once", lambda: _with_payload(csv_kafka(bench, guarantee="exactly_once"),
                                                                    payload), "CSV → Kafka", "(target ≥ 0.85)")])
        if sql:
            interleaved(bench, repeat, [
                ("limit: plain read", lambda: limit_read(bench), None, ""),
                ("PostgreSQL → Kafka", lambda: _with_payload(sql_kafka(bench), payload), "limit: plain read",
                 "(target ≥ 0.6)"),
                ("PostgreSQL → Kafka, exactly_once", lambda: _with_payload(
                    sql_kafka(bench, guarantee="exactly_once"), payload), "PostgreSQL → Kafka", "(target ≥ 0.85)")])
        if "csv_sight_machine" in only:
            interleaved(bench, repeat, [
                ("limit: BSON + gzip", lambda: limit_encode(bench), None, ""),
                ("CSV → Sight Machine", lambda: csv_sight_machine(bench), "limit: BSON + gzip", "")])
        if "latency" in only:
            bench.add(Row("insert → Kafka ack", latency(bench, latency_seconds, rate), None,
                          "(target p99 ≤ 1250 ms)"))
        if "scale_out" in only:  # without the broker first: what the job's own work scales to
            bench.add(Row("CSV → localfile (no broker)", csv_local(bench)))
            for label, workers, processes in (("-w 2", 2, 1), ("2 processes", 1, 2)):
                bench.add(Row(f"CSV → localfile, {label}", csv_local(bench, workers, processes),
                              "CSV → localfile (no broker)", "(target ≥ 1.5)"))
            for label, workers, processes in (("-w 2", 2, 1), ("2 processes", 1, 2)):
                bench.add(Row(f"CSV → Kafka, {label}",
                              _with_payload(csv_kafka(bench, workers, processes), payload), "CSV → Kafka"))
                bench.add(Row(f"PostgreSQL → Kafka, {label}",
                              _with_payload(sql_kafka(bench, workers, processes), payload),
                              "PostgreSQL → Kafka", "(target ≥ 1.5)"))
        if "memory" in only:
            prepare_sql(bench, "nab_small", small)
            base = sql_kafka(bench, table="nab_small", rows=small)
            bench.add(Row(f"memory: PostgreSQL → Kafka at {small:,}", base))
            big = next((r for r in bench.table if r.name == "PostgreSQL → Kafka"), None)
            if big is not None:
                bench.add(Row(f"memory: PostgreSQL → Kafka at {bench.rows:,}", big.measure,
                              f"memory: PostgreSQL → Kafka at {small:,}", "(target ≤ 2)"))
        if "sparkplug" in only:  # records are metrics here, per second of one core
            data, births = sparkplug.payloads(max(bench.rows // sparkplug.METRICS, 100))
            interleaved(bench, repeat, [
                ("limit: protobuf parse", lambda: sparkplug.limit_parse(data), None, ""),
                ("Sparkplug B decode", lambda: sparkplug.decode(data, births), "limit: protobuf parse",
                 "(target ≥ 500,000 metrics/s)"),
                ("Sparkplug B decode → frame", lambda: sparkplug.decode(data, births, frames=True),
                 "Sparkplug B decode", "")])
        if "mqtt" in only:  # records are QoS 1 messages drained from a persistent session's queue
            messages = max(bench.rows // 40, 10_000)
            with mqtt.broker() as port:
                interleaved(bench, repeat, [
                    ("limit: plain paho subscriber", lambda: mqtt.plain(port, messages), None, ""),
                    ("paho + a commit per message", lambda: mqtt.commit_each(port, messages),
                     "limit: plain paho subscriber", ""),
                    ("MQTT receive → buffer", lambda: mqtt.receiver(port, messages), "limit: plain paho subscriber",
                     "(target ≥ 0.9)")])
        if "opcua" in only:  # records are tag values; p50/p99 the lag behind the source timestamp
            # 10,000 every 100 ms is more than node-opcua offers on 2 cores (the plain client's
            # lag shows the server's backlog); every 400 ms it offers 25,000/s: the target's row
            for tags, period, target in ((2_000, 0.1, "(target ≥ 0.9)"), (10_000, 0.1, ""),
                                         (10_000, 0.4, "(target ≥ 0.9, ≥ 20,000/s, p99 < 1 s)")):
                (limit_name, limit), (name, measure) = opcua.subscribe_rows(tags, period)
                bench.add(Row(limit_name, limit))
                bench.add(Row(name, measure, limit_name, target))
            bench.add(Row("OPC UA browse, 100,000 nodes", opcua.browse_row(), None, "(target ≤ 10 s)"))
        if "idle" in only:  # records are streams; p50 the new row's arrival; CPU over the rest counted
            floor = idle.idle_streams(bench.work, 1)  # what the job costs at rest with one stream
            bench.add(Row("limit: 1 idle file stream (bytewax's worker loop)", floor))
            sizes = ((1_000, "(target < 5 % of a core, a new row ≤ 2 s)"), (10_000, "(cost per idle stream stated)"))
            for streams, target in sizes[:1] if bench.rows <= 100_000 else sizes:  # --quick: 1,000 only
                bench.add(Row(f"{streams:,} idle file streams", idle.idle_streams(bench.work, streams, floor=floor),
                              None, target))
        if "startup" in only:
            bench.add(Row("start-up (fixed)", startup()))
        if "api" in only:  # records are requests answered 200; the first row is the server's floor
            (floor_name, floor), *answers = api_under_load(bench.work)
            bench.add(Row(floor_name, floor))
            for name, measure in answers:
                bench.add(Row(name, measure, floor_name, "(p99 stated)"))


def _with_payload(measure: Measure, payload: int) -> Measure:
    measure.payload_bytes = payload
    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 records, 50 files, 10 s of latency")
    parser.add_argument("--rows", type=int, default=None, help="records (default 2,000,000)")
    parser.add_argument("--files", type=int, default=None, help="CSV files (default 500)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}")
    parser.add_argument("--rate", type=int, default=1000, help="latency: rows inserted per second")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs of each throughput scenario and limit, the median kept (default 3; 1 with --quick)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    only = set(args.only.split(","))
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if "csv_kafka" not in only and "scale_out" in only:
        only.add("csv_kafka")
    if "memory" in only:
        only.add("sql_kafka")
    rows = args.rows or (100_000 if args.quick else 2_000_000)
    files = args.files or (50 if args.quick else 500)
    started = time.perf_counter()
    if shutil.which("kcat") is None and only & {"csv_kafka", "scale_out"}:
        parser.error("kcat is not installed: bash scripts/setup.sh --test --services --bench")
    with tempfile.TemporaryDirectory(prefix="factoryflow-bench-") as work:
        bench = Bench(rows, files, Path(work))
        print(f"factoryflow bench: {rows:,} records over {LINES} streams, {files} CSV files; {machine()}",
              flush=True)
        run(bench, only, 10.0 if args.quick else 30.0, args.rate, 20_000,
            args.repeat or (1 if args.quick else 3))
    took = time.perf_counter() - started
    print(f"\nbench took {took:.0f} s")
    if args.markdown:
        lines = [f"{rows:,} records; {machine()}; {datetime.now(UTC):%Y-%m-%d}", "", HEADER]
        lines += [format_row(r, bench.table[:i + 1]) for i, r in enumerate(bench.table)]
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
